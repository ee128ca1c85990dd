"""The ready-made sparse kernels (`mlc sparse-kernel`, `mlc.sparse.compile`) as stage-I modules.

Each kernel is one `prim` in coordinate space plus a `graph @main` calling it, so the module builds
and runs like any other (`mlc build K.ir`, `mlc run K.mlc --inputs g.npz`). Parameter names are the
interface (docs/sparse.md):

- spmm  C[i, k] = sum_j A[i, j] * B[j, k]         inputs indptr, indices, data, B; result C (rows x feat)
- sddmm C[p]    = A[i, j] * sum_k X[i, k] * Y[j, k] for each nonzero p = (i, j) of A
                                                    inputs indptr, indices, data, X, Y; result C (nnz values)
- bsrmm C = A @ B with A in blocks (BSR: four axes, block rows and block columns sparse, the two
  in-block axes dense)                             inputs indptr, indices, data, B; result C
- segment-mm C[r] = X[r] @ W[s] for the rows r of segment s (rows indptr[s]..indptr[s+1]: a
  dense_variable axis)                             inputs indptr, X (rows x feat), W (segments x feat x
                                                    feat); result C (rows x feat)

Formats: `csr` (indptr: rows+1, indices and data: nnz), `ell:W` (indices and data: rows x W, a
padded entry has value 0 and any column in range) and, for bsrmm only, `bsr:S` (S x S blocks:
indptr: block rows + 1, indices: nnzb block columns, data: nnzb x S x S, scipy's bsr_matrix.data;
B's row count must be a multiple of S). Row counts come from the arrays: `mp1` is indptr's length.
"""

from __future__ import annotations

from .diagnostics import MlcError
from .expr import Bin, Const, Expr, Load, Var
from .graph import Binding, Block, CallTensor, Function, Value
from .module import Module
from .sparse import Axis, SparseIteration, SparseIterVar, sparse_view
from .sparse_format import decompose, find_csr, hyb_buckets, parse_format, parse_hyb
from .tir import Buffer, PrimFunc, Store
from .types import TensorType

OPS: tuple[str, ...] = ("spmm", "sddmm", "bsrmm", "segment-mm")
DTYPES: tuple[str, ...] = ("f32", "f16")


def sparse_kernel(op: str, fmt: str, feat: int = 32, dtype: str = "f32") -> Module:
    """The stage-I module of `op` on a sparse matrix in `fmt` with `feat` features."""
    hyb = parse_hyb(fmt)
    if hyb is not None:
        if op != "spmm":
            raise MlcError(f"--format {fmt} is for spmm")
        if dtype not in DTYPES or feat <= 0:
            raise MlcError(f"unsupported dtype {dtype!r} or --feat {feat}")
        return _hyb_spmm(*hyb, feat, dtype, fmt)
    kind, width = parse_format(fmt)
    if op not in OPS:
        raise MlcError(f"unknown sparse kernel {op!r} (known: {', '.join(OPS)})")
    if dtype not in DTYPES:
        raise MlcError(f"unsupported dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if feat <= 0:
        raise MlcError(f"--feat must be positive, got {feat}")
    if op == "bsrmm" and kind != "bsr":
        raise MlcError(f"bsrmm takes --format bsr:S (block size S), not {fmt}")
    if kind == "bsr" and op != "bsrmm":
        raise MlcError(f"--format {fmt} is for bsrmm (spmm and sddmm take csr or ell:W)")
    n, nnz, F = Var("n"), Var("nnz"), Const(feat)
    if kind == "bsr":
        return _bsrmm(width, feat, dtype, fmt)
    if op == "segment-mm":
        if kind != "csr":
            raise MlcError(f"segment-mm takes no --format (its segments are CSR-like offsets), got {fmt}")
        return _segment_mm(feat, dtype)
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


def _bsrmm(bs: int, feat: int, dtype: str, fmt: str) -> Module:
    """C[io*S + ii, k] += A[io, jo, ii, ji] * B[jo*S + ji, k] over the stored blocks (jo, the block column)."""
    n, nnzb, mp1, S, F = Var("n"), Var("nnzb"), Var("mp1"), Const(bs), Const(feat)
    indptr = Buffer("indptr", (mp1,), "i32")
    indices = Buffer("indices", (nnzb,), "i32")
    data = Buffer("data", (nnzb, S, S), dtype)  # scipy's bsr_matrix.data
    B = Buffer("B", (n, F), dtype)
    C = Buffer("C", ((mp1 - 1) * S, F), dtype)
    IO = Axis("IO", "dense_fixed", mp1 - 1)
    JO = Axis("JO", "sparse_variable", Bin("floordiv", n, S), "IO", nnzb, indptr, indices)
    II, JI, K = Axis("II", "dense_fixed", S), Axis("JI", "dense_fixed", S), Axis("K", "dense_fixed", F)
    A = sparse_view("A", (IO, JO, II, JI), data)
    io, jo, ii, ji, k = (Var(x) for x in ("io", "jo", "ii", "ji", "k"))
    iters = tuple(SparseIterVar(v, ax, kd) for v, ax, kd in
                  ((io, "IO", "S"), (jo, "JO", "R"), (ii, "II", "S"), (ji, "JI", "R"), (k, "K", "S")))
    row, col = io * S + ii, jo * S + ji
    init = Store(C, (row, k), Const(0.0, dtype))
    body = Store(C, (row, k), Load(C, (row, k)) + Load(A.buffer, (io, jo, ii, ji)) * Load(B, (col, k)))
    prim = PrimFunc("bsrmm", (indptr, indices, data, B, C), 1, SparseIteration("bsrmm", iters, body, init),
                    axes=(IO, JO, II, JI, K), sparse_buffers=(A,))
    return _with_main(prim, (indptr, indices, data, B), C, f"mlc sparse-kernel bsrmm --format {fmt} --feat {feat} --dtype {dtype}")


def _segment_mm(feat: int, dtype: str) -> Module:
    """C[indptr[s] + r, n] = sum_k X[indptr[s] + r, k] * W[s, k, n]: rows grouped in ragged segments."""
    rows, sp1, F = Var("rows"), Var("sp1"), Const(feat)
    indptr = Buffer("indptr", (sp1,), "i32")
    X, W = Buffer("X", (rows, F), dtype), Buffer("W", (sp1 - 1, F, F), dtype)
    C = Buffer("C", (rows, F), dtype)
    SEG = Axis("SEG", "dense_fixed", sp1 - 1)  # S and R are iterator-kind keywords in the text
    ROW = Axis("ROW", "dense_variable", rows, "SEG", rows, indptr)
    K, N = Axis("K", "dense_fixed", F), Axis("N", "dense_fixed", F)
    xs, cs = sparse_view("Xs", (SEG, ROW, K), X), sparse_view("Cs", (SEG, ROW, N), C)
    s, r, k, n = (Var(x) for x in ("s", "r", "k", "n"))
    iters = tuple(SparseIterVar(v, ax, kd) for v, ax, kd in
                  ((s, "SEG", "S"), (r, "ROW", "S"), (k, "K", "R"), (n, "N", "S")))
    init = Store(cs.buffer, (s, r, n), Const(0.0, dtype))
    body = Store(cs.buffer, (s, r, n), Load(cs.buffer, (s, r, n)) + Load(xs.buffer, (s, r, k)) * Load(W, (s, k, n)))
    prim = PrimFunc("segment_mm", (indptr, X, W, C), 1, SparseIteration("segment_mm", iters, body, init),
                    axes=(SEG, ROW, K, N), sparse_buffers=(xs, cs))
    return _with_main(prim, (indptr, X, W), C, f"mlc sparse-kernel segment-mm --feat {feat} --dtype {dtype}")


def _hyb_spmm(c: int, k: int, feat: int, dtype: str, fmt: str) -> Module:
    """spmm in hyb(c, k): the CSR kernel decomposed (ir/sparse_format.py) with every bucket's arrays as
    inputs of symbolic sizes (`count_T` rows; a split bucket `nsub_T` sub-rows)."""
    csr = sparse_kernel("spmm", "csr", feat, dtype)
    f = csr.get("spmm")
    assert isinstance(f, PrimFunc)
    site = find_csr(f)
    assert site is not None

    def shapes(name: str) -> tuple[Expr, ...]:
        kind, _, tag = name.partition("_")
        b = next(b for b in hyb_buckets(c, k) if b.tag == tag)
        count = Var(f"count_{tag}")
        if kind == "rows":
            return (count,)
        if kind == "subptr":
            return (count + 1,)
        return (Var(f"nsub_{tag}") if b.split else count, Const(b.width))

    prim = decompose(f, site, fmt, shapes)
    return _with_main(prim, prim.params[:-1], prim.params[-1], f"mlc sparse-kernel spmm --format {fmt} --feat {feat} --dtype {dtype}")


def _with_main(prim: PrimFunc, ins: tuple[Buffer, ...], out: Buffer, source: str) -> Module:
    """`prim` and a `graph @main` that takes its inputs and returns its result."""
    params = tuple(Value(b.name, TensorType(b.shape, b.dtype)) for b in ins)
    res = Value(out.name, TensorType(out.shape, out.dtype))
    main = Function("main", params, Block((Binding(res, CallTensor(prim.name, params)),), (res,)), (("entry", True),))
    return Module((main, prim), (("source", source),))


__all__ = ["DTYPES", "OPS", "parse_format", "parse_hyb", "sparse_kernel"]
