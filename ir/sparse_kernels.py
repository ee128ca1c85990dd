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
from .expr import Bin, Call, Const, Expr, Load, Select, Var
from .graph import Binding, Block, CallTensor, Function, Value
from .module import Module
from .sparse import Axis, SparseIteration, SparseIterVar, i64, sparse_view
from .tir import Buffer, PrimFunc, Seq, Store
from .types import TensorType

OPS: tuple[str, ...] = ("spmm", "sddmm", "bsrmm", "segment-mm")
DTYPES: tuple[str, ...] = ("f32", "f16")


def parse_format(fmt: str) -> tuple[str, int]:
    """`csr` -> ("csr", 0); `ell:W` -> ("ell", W); `bsr:S` -> ("bsr", S)."""
    if fmt == "csr":
        return "csr", 0
    kind, _, num = fmt.partition(":")
    if kind in ("ell", "bsr") and num.isdigit() and 0 < int(num) <= 4096:
        return kind, int(num)
    raise MlcError(f"unknown sparse format {fmt!r} (known: csr, ell:W, bsr:S with 0 < W, S <= 4096)")


def parse_hyb(fmt: str) -> tuple[int, int] | None:
    """`hyb:C,K` -> (C, K): columns in C partitions, rows in ELL buckets of widths 1, 2, ..., 2**K."""
    kind, _, rest = fmt.partition(":")
    if kind != "hyb":
        return None
    c, _, k = rest.partition(",")
    if not (c.isdigit() and k.isdigit() and 1 <= int(c) <= 64 and int(k) <= 12):
        raise MlcError(f"bad hyb format {fmt!r} (hyb:C,K with 1 <= C <= 64 column parts, 0 <= K <= 12)")
    return int(c), int(k)


def hyb_tags(c: int, k: int) -> list[tuple[str, int]]:
    """(tag, ELL width) of every bucket, then (tag, 0) of each partition's CSR rest (rows longer than 2**K)."""
    return [(f"p{p}_b{b}", 2 ** b) for p in range(c) for b in range(k + 1)] + [(f"p{p}_rest", 0) for p in range(c)]


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
    """spmm with A split (composable formats): columns in `c` parts, each part's rows bucketed by length
    into ELL buckets of widths 1, 2, ..., 2**k plus a CSR rest for longer rows; one sparse iteration per
    bucket adds its rows' products into C (rows named by a row map), after one that zeroes C."""
    mp1, n, F = Var("mp1"), Var("n"), Const(feat)
    m: Expr = mp1 - 1
    indptr = Buffer("indptr", (mp1,), "i32")  # A's CSR indptr: only its length (rows + 1) is used
    B, C = Buffer("B", (n, F), dtype), Buffer("C", (m, F), dtype)
    I, K = Axis("I", "dense_fixed", m), Axis("K", "dense_fixed", F)  # noqa: E741
    i, kk = Var("i"), Var("k")
    params: list[Buffer] = [indptr]
    axes, views, iterations = [I, K], [], [SparseIteration("zero", (SparseIterVar(i, "I", "S"), SparseIterVar(kk, "K", "S")),
                                                            Store(C, (i, kk), Const(0.0, dtype)))]
    for tag, width in hyb_tags(c, k):
        r, j = Var(f"r_{tag}"), Var(f"j_{tag}")
        if width:
            count = Var(f"rows_{tag}")
            rows = Buffer(f"rows_{tag}", (count,), "i32")
            idx = Buffer(f"indices_{tag}", (count, Const(width)), "i32")
            dat = Buffer(f"data_{tag}", (count, Const(width)), dtype)
            R = Axis(f"R_{tag}", "dense_fixed", Select(Bin("gt", m, Const(0)), count, Const(0)))
            J = Axis(f"J_{tag}", "sparse_fixed", n, R.name, Const(width), None, idx)
            params += [rows, idx, dat]
        else:
            rp1, nz = Var(f"rp1_{tag}"), Var(f"nnz_{tag}")
            ptr = Buffer(f"indptr_{tag}", (rp1,), "i32")
            rows = Buffer(f"rows_{tag}", (rp1 - 1,), "i32")
            idx, dat = Buffer(f"indices_{tag}", (nz,), "i32"), Buffer(f"data_{tag}", (nz,), dtype)
            R = Axis(f"R_{tag}", "dense_fixed", Select(Bin("gt", m, Const(0)), rp1 - 1, Const(0)))
            J = Axis(f"J_{tag}", "sparse_variable", n, R.name, nz, ptr, idx)
            params += [ptr, rows, idx, dat]
        A = sparse_view(f"A_{tag}", (R, J), dat)
        out = Bin("min", Bin("max", Call("check_range", (i64(Load(rows, (r,))), Const(0), m), "i64"), Const(0)), m - 1)
        body = Store(C, (out, kk), Load(C, (out, kk)) + Load(A.buffer, (r, j)) * Load(B, (j, kk)))
        iters = (SparseIterVar(r, R.name, "S"), SparseIterVar(j, J.name, "R"), SparseIterVar(kk, "K", "S"))
        axes += [R, J]
        views.append(A)
        iterations.append(SparseIteration(f"bucket_{tag}", iters, body))
    params.append(B)
    prim = PrimFunc("spmm", (*params, C), 1, Seq(tuple(iterations)), axes=tuple(axes), sparse_buffers=tuple(views))
    return _with_main(prim, tuple(params), C, f"mlc sparse-kernel spmm --format {fmt} --feat {feat} --dtype {dtype}")


def _with_main(prim: PrimFunc, ins: tuple[Buffer, ...], out: Buffer, source: str) -> Module:
    """`prim` and a `graph @main` that takes its inputs and returns its result."""
    params = tuple(Value(b.name, TensorType(b.shape, b.dtype)) for b in ins)
    res = Value(out.name, TensorType(out.shape, out.dtype))
    main = Function("main", params, Block((Binding(res, CallTensor(prim.name, params)),), (res,)), (("entry", True),))
    return Module((main, prim), (("source", source),))


__all__ = ["DTYPES", "OPS", "hyb_tags", "parse_format", "parse_hyb", "sparse_kernel"]
