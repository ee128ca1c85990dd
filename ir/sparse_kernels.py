"""The ready-made sparse kernels (`mlc sparse-kernel`, `mlc.sparse.compile`) as stage-I modules.

Each kernel is one `prim` in coordinate space plus a `graph @main` calling it, so the module builds
and runs like any other (`mlc build K.ir`, `mlc run K.mlc --inputs g.npz`). Parameter names are the
interface (docs/sparse.md):

- spmm  C[i, k] = sum_j A[i, j] * B[j, k]         inputs indptr, indices, data, B; result C (rows x feat)
- sddmm C[p]    = A[i, j] * sum_k X[i, k] * Y[j, k] for each nonzero p = (i, j) of A
                                                    inputs indptr, indices, data, X, Y; result C (nnz values)

Formats: `csr` (indptr: rows+1, indices and data: nnz) and `ell:W` (indices and data: rows x W, a
padded entry has value 0 and any column in range). Row counts come from the arrays: `mp1` is
indptr's length (rows + 1) in CSR.
"""

from __future__ import annotations

from .diagnostics import MlcError
from .expr import Const, Expr, Load, Var
from .graph import Binding, Block, CallTensor, Function, Value
from .module import Module
from .sparse import Axis, SparseIteration, SparseIterVar, sparse_view
from .tir import Buffer, PrimFunc, Store
from .types import TensorType

OPS: tuple[str, ...] = ("spmm", "sddmm")
DTYPES: tuple[str, ...] = ("f32", "f16")


def parse_format(fmt: str) -> tuple[str, int]:
    """`csr` -> ("csr", 0); `ell:W` -> ("ell", W)."""
    if fmt == "csr":
        return "csr", 0
    if fmt.startswith("ell:") and fmt[4:].isdigit() and int(fmt[4:]) > 0:
        return "ell", int(fmt[4:])
    raise MlcError(f"unknown sparse format {fmt!r} (known: csr, ell:W with W > 0)")


def sparse_kernel(op: str, fmt: str, feat: int = 32, dtype: str = "f32") -> Module:
    """The stage-I module of `op` on a sparse matrix in `fmt` with `feat` features."""
    kind, width = parse_format(fmt)
    if op not in OPS:
        raise MlcError(f"unknown sparse kernel {op!r} (known: {', '.join(OPS)})")
    if dtype not in DTYPES:
        raise MlcError(f"unsupported dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if feat <= 0:
        raise MlcError(f"--feat must be positive, got {feat}")
    n, nnz, F = Var("n"), Var("nnz"), Const(feat)
    if kind == "csr":
        mp1 = Var("mp1")
        m: Expr = mp1 - 1
        indptr = Buffer("indptr", (mp1,), "i32")
        indices = Buffer("indices", (nnz,), "i32")
        data = Buffer("data", (nnz,), dtype)
        index_params = (indptr, indices)
        I = Axis("I", "dense_fixed", m)  # noqa: E741 - SparseTIR's axis names
        J = Axis("J", "sparse_variable", n, "I", nnz, indptr, indices)
    else:
        m = Var("m")
        indices = Buffer("indices", (m, Const(width)), "i32")
        data = Buffer("data", (m, Const(width)), dtype)
        index_params = (indices,)
        I = Axis("I", "dense_fixed", m)  # noqa: E741
        J = Axis("J", "sparse_fixed", n, "I", Const(width), None, indices)
    K = Axis("K", "dense_fixed", F)
    A = sparse_view("A", (I, J), data)
    i, j, k = Var("i"), Var("j"), Var("k")
    zero = Const(0.0, dtype)
    if op == "spmm":
        B = Buffer("B", (n, F), dtype)
        C = Buffer("C", (m, F), dtype)
        ins = (*index_params, data, B)
        out = C
        iters = (SparseIterVar(i, "I", "S"), SparseIterVar(j, "J", "R"), SparseIterVar(k, "K", "S"))
        init = Store(C, (i, k), zero)
        body = Store(C, (i, k), Load(C, (i, k)) + Load(A.buffer, (i, j)) * Load(B, (j, k)))
        views = (A,)
    else:
        X = Buffer("X", (m, F), dtype)
        Y = Buffer("Y", (n, F), dtype)
        out = Buffer("C", data.shape, dtype)
        O = sparse_view("O", (I, J), out)  # noqa: E741
        ins = (*index_params, data, X, Y)
        iters = (SparseIterVar(i, "I", "S"), SparseIterVar(j, "J", "S"), SparseIterVar(k, "K", "R"))
        init = Store(O.buffer, (i, j), zero)
        body = Store(O.buffer, (i, j), Load(O.buffer, (i, j)) + Load(A.buffer, (i, j)) * Load(X, (i, k)) * Load(Y, (j, k)))
        views = (A, O)
    prim = PrimFunc(op, (*ins, out), 1, SparseIteration(op, iters, body, init), (), (), axes=(I, J, K),
                    sparse_buffers=views)
    params = tuple(Value(b.name, TensorType(b.shape, b.dtype)) for b in ins)
    res = Value(out.name, TensorType(out.shape, out.dtype))
    main = Function("main", params, Block((Binding(res, CallTensor(op, params)),), (res,)), (("entry", True),))
    return Module((main, prim), (("source", f"mlc sparse-kernel {op} --format {fmt} --feat {feat} --dtype {dtype}"),))


__all__ = ["DTYPES", "OPS", "parse_format", "sparse_kernel"]
