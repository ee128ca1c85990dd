"""The index search as a tensor program of the toolchain.

Three PrimFuncs are emitted for an index: `ann_lut` (query -> lookup tables: -2 <q, c> for
additive quantizers, sub-vector squared distances for PQ, on already rotated queries),
`ann_scan` (table sums over the codes in codebook order, then + vector bias + query bias:
one block with a reduce iterator over the codebooks, then an epilogue block) and
`ann_search` (the same sums fused with a top-k insertion, so no n-wide distance row is ever
written). They are printed as the index's text IR and run by `runtime.cpu.compile_module`
(native code, the same lowering every other tensor program gets) or, where that is
unavailable, by the reference interpreter `ir.tir_interp.run_prim` (scan) or numpy (top-k).
Search mode `ir` runs `ann_search` compiled; the lookup tables are computed by numpy (BLAS),
`ann_lut` is checked against them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..ir.diagnostics import MlcError
from ..ir.expr import Cast, Expr, Var
from ..ir.module import Module
from ..ir.tir import PrimFunc
from ..ir.tir_builder import build, compute, fconst, placeholder, reduce_axis, rsum

NQ, N = Var("nq"), Var("n")


def scan_func(m: int, k: int, code_dtype: str = "u8") -> PrimFunc:
    """dist[q, i] = (sum_m LUT[q, m, codes[i, m]]) + vbias[i] + qbias[q]."""
    lut = placeholder("lut", (NQ, m, k), "f32")
    codes = placeholder("codes", (N, m), code_dtype)
    vbias = placeholder("vbias", (N,), "f32")
    qbias = placeholder("qbias", (NQ,), "f32")
    j = reduce_axis(m, "m")
    sums = compute("sums", (NQ, N), lambda q, i: rsum(lut[q, j.var, Cast("i64", codes[i, j.var])], j))
    dist = compute("dist", (NQ, N), lambda q, i: sums[q, i] + vbias[i] + qbias[q])
    return build("ann_scan", [lut, codes, vbias, qbias], [dist])


def lut_func(method: str, dim: int, m: int, k: int) -> PrimFunc:
    """Lookup tables of (rotated) queries against the codebooks."""
    qs = placeholder("queries", (NQ, dim), "f32")
    if method == "pq":
        ds = dim // m
        cb = placeholder("codebooks", (m, k, ds), "f32")
        t = reduce_axis(ds, "t")

        def sq(q, mm, kk):  # noqa: ANN001, ANN202
            diff = qs[q, mm * ds + t.var] - cb[mm, kk, t.var]
            return rsum(diff * diff, t)

        lut = compute("lut", (NQ, m, k), sq)
    else:
        cb = placeholder("codebooks", (m, k, dim), "f32")
        t = reduce_axis(dim, "t")
        ip = compute("ip", (NQ, m, k), lambda q, mm, kk: rsum(qs[q, t.var] * cb[mm, kk, t.var], t))
        lut = compute("lut", (NQ, m, k), lambda q, mm, kk: ip[q, mm, kk] * fconst(-2.0))
    return build("ann_lut", [qs, cb], [lut])


def search_module(method: str, dim: int, m: int, k: int, code_dtype: str = "u8", topk: int = 10) -> Module:
    return Module((lut_func(method, dim, m, k), scan_func(m, k, code_dtype), search_func(m, k, topk, code_dtype)))


def search_ir_text(method: str, dim: int, m: int, k: int, code_dtype: str = "u8", topk: int = 10) -> str:
    from ..ir.printer import print_module

    return print_module(search_module(method, dim, m, k, code_dtype, topk))


@lru_cache(maxsize=8)
def _compiled(m: int, k: int, code_dtype: str):  # noqa: ANN202
    """The native scan kernel, or None where codegen cannot build it (then the interpreter runs)."""
    try:
        from ..runtime.cpu import compile_module

        return compile_module([scan_func(m, k, code_dtype)]).kernel("ann_scan")
    except (ImportError, MlcError, NotImplementedError):
        return None


def run_scan(luts: np.ndarray, codes: np.ndarray, vbias: np.ndarray | None = None, qbias: np.ndarray | None = None,
             backend: str = "auto") -> np.ndarray:
    """(nq, n) distances by the emitted program: compiled (`jit`), interpreted (`interp`) or `auto`."""
    nq, m, k = luts.shape
    cdt = "u8" if codes.dtype == np.uint8 else "u16"
    args = [np.ascontiguousarray(luts, np.float32), np.ascontiguousarray(codes),
            np.zeros(len(codes), np.float32) if vbias is None else np.ascontiguousarray(vbias, np.float32),
            np.zeros(nq, np.float32) if qbias is None else np.ascontiguousarray(qbias, np.float32)]
    out = np.empty((nq, len(codes)), np.float32)
    kern = _compiled(m, k, cdt) if backend in ("auto", "jit") else None
    if kern is not None:
        kern([*args, out])
        return out
    if backend == "jit":
        raise MlcError("the scan program could not be compiled by codegen on this machine")
    from ..ir.tir_interp import run_prim

    run_prim(scan_func(m, k, cdt), [*args, out])
    return out


def run_lut(method: str, queries: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Lookup tables computed by interpreting `ann_lut` (checked against Quantizer.luts)."""
    from ..ir.tir_interp import run_prim

    m, k = codebooks.shape[:2]
    out = np.empty((len(queries), m, k), np.float32)
    run_prim(lut_func(method, queries.shape[1], m, k), [np.ascontiguousarray(queries, np.float32),
                                                         np.ascontiguousarray(codebooks, np.float32), out])
    return out


def _insert(best_d, best_i, q: Var, d: Var, i: Expr, topk: int | None, by_id: bool,  # noqa: ANN001, ANN202
            width: Expr | None = None):
    """Insert (d, i) into the sorted k-list of query q when it beats the k-th entry.

    The insertion walks j = k-1 .. 0: slot j takes slot j-1's entry if that one is after (d, i)
    (a shift), else takes (d, i) if its own entry is after it, else stays; reading only slots not
    yet written, so one backward pass inserts in place (branch-free; measured faster here than
    counting the position and shifting only the tail). `by_id` orders entries by (d, id), so the
    result does not depend on the visiting order; otherwise ties keep the earlier visited first.
    """
    from ..ir.expr import Bin, Const, Load, Select
    from ..ir.tir import For, IfStmt, Seq, Store

    def after(slot: Expr) -> Expr:  # the entry in `slot` comes after (d, i)
        gt = Bin("gt", Load(best_d, (q, slot)), d)
        if not by_id:
            return gt
        tie = Bin("and", Bin("eq", Load(best_d, (q, slot)), d), Bin("gt", Load(best_i, (q, slot)), i))
        return Bin("or", gt, tie)

    jj = Var("jj")
    width = Const(topk) if width is None else width
    last = Bin("sub", width, Const(1))
    j = Bin("sub", last, jj)
    prev = Bin("max", Bin("sub", j, Const(1)), Const(0))
    shift = Bin("and", Bin("gt", j, Const(0)), after(prev))
    place = after(j)
    insert = For(jj, Const(0), width, Seq((
        Store(best_i, (q, j), Select(shift, Load(best_i, (q, prev)), Select(place, i, Load(best_i, (q, j))))),
        Store(best_d, (q, j), Select(shift, Load(best_d, (q, prev)), Select(place, d, Load(best_d, (q, j))))),
    )))
    return IfStmt(after(last), insert)


def _adc_total(lut, codes, vbias, qbias, q: Var, r: Var, m: int):  # noqa: ANN001, ANN202
    """((sum_m lut[q, m, codes[r, m]]) + vbias[r]) + qbias[q], summed in codebook order."""
    from ..ir.expr import Bin, Const, Load

    total = Load(lut, (q, Const(0), Cast("i64", Load(codes, (r, Const(0))))))
    for j_ in range(1, m):
        total = Bin("add", total, Load(lut, (q, Const(j_), Cast("i64", Load(codes, (r, Const(j_)))))))
    return Bin("add", Bin("add", total, Load(vbias, (r,))), Load(qbias, (q,)))


def _init(best_d, best_i, q: Var, width: Expr, name: str):  # noqa: ANN001, ANN202
    from ..ir.expr import Const
    from ..ir.tir import For, Seq, Store

    t = Var(name)
    return For(t, Const(0), width, Seq((Store(best_d, (q, t), Const(float("inf"), "f32")),
                                         Store(best_i, (q, t), Const(-1)))))


def search_func(m: int, k: int, topk: int, code_dtype: str = "u8") -> PrimFunc:
    """Fused scan + top-k: each distance is computed in a register and inserted into a sorted
    k-list when it beats the current k-th (ties keep the smaller id first, as search.topk)."""
    from ..ir.expr import Const
    from ..ir.tir import Buffer, For, Let, Seq

    lut = Buffer("lut", (NQ, Const(m), Const(k)), "f32")
    codes = Buffer("codes", (N, Const(m)), code_dtype)
    vbias, qbias = Buffer("vbias", (N,), "f32"), Buffer("qbias", (NQ,), "f32")
    best_d = Buffer("best_d", (NQ, Const(topk)), "f32")
    best_i = Buffer("best_i", (NQ, Const(topk)), "i64")
    q, i, d = Var("q"), Var("i"), Var("d", "f32")
    scan = For(i, Const(0), N, Let(d, _adc_total(lut, codes, vbias, qbias, q, i, m),
                                   _insert(best_d, best_i, q, d, i, topk, False)))
    body = For(q, Const(0), NQ, Seq((_init(best_d, best_i, q, Const(topk), "t"), scan)))
    return PrimFunc("ann_search", (lut, codes, vbias, qbias, best_d, best_i), 2, body)


def _decoded_total(lut, queries, cbs, codes, vbias, qbias, acc, q: Var, r: Var, m: int, dim: int,  # noqa: ANN001, ANN202
                   book: int, body_of):  # noqa: ANN001
    """d = ((lut[q, 0, codes[r, book]] + (-2 <q, sum_{m != book} C_m[codes[r, m]]>)) + vbias[r]) + qbias[q]:
    the ADC distance of an additive code with one table (the tree's codebook `book`, already
    computed to choose the nodes) and the other codewords summed in vector lanes (`acc`)."""
    from ..ir.expr import Bin, Const, Load
    from ..ir.tir import For, Let, Seq, Store

    lanes = _lanes(dim)
    cw = [Var(f"c{j}") for j in range(m)]
    l_, s_ = Var("l"), Var("sx")
    t = Bin("add", Bin("mul", s_, Const(lanes)), l_)
    rest = [j for j in range(m) if j != book]
    x = Load(cbs, (Const(rest[0]), cw[rest[0]], t)) if rest else Const(0.0, "f32")
    for j in rest[1:]:
        x = Bin("add", x, Load(cbs, (Const(j), cw[j], t)))
    step = Store(acc, (l_,), Bin("add", Load(acc, (l_,)), Bin("mul", Load(queries, (q, t)), x)))
    dot = Load(acc, (Const(0),))
    for j in range(1, lanes):
        dot = Bin("add", dot, Load(acc, (Const(j),)))
    d = Var("d", "f32")
    table = Load(lut, (q, Const(0), cw[book]))
    total = Bin("add", Bin("add", Bin("add", table, Bin("mul", dot, Const(-2.0, "f32"))), Load(vbias, (r,))),
                Load(qbias, (q,)))
    stmt = Seq((For(l_, Const(0), Const(lanes), Store(acc, (l_,), Const(0.0, "f32")), "vectorized"),
                For(s_, Const(0), Const(dim // lanes), For(l_, Const(0), Const(lanes), step, "vectorized")),
                Let(d, total, body_of(d))))
    for j in reversed(range(m)):
        stmt = Let(cw[j], Cast("i64", Load(codes, (r, Const(j)))), stmt)
    return stmt


def _lanes(dim: int) -> int:
    """Vector lanes of the decoded dot product (a divisor of the dimension)."""
    return next(w for w in (16, 8, 4, 2, 1) if dim % w == 0)


def atree_func(m: int, k: int, topk: int, level: int, code_dtype: str = "u8", select: bool = True,
               dim: int = 0) -> PrimFunc:
    """The last level of an A-Tree search, fused: `ann_search_atree`.

    Per query, the children of its kept parents (`parents[q, p]`, -1: none; a parent's partial
    sum `part[q, p]`; children child_start[p] .. child_start[p+1]) are scored
    (part + lut[q, level, node_code]) + node_bias and the best `nb` kept by (score, node) in
    `node_d`/`node_i`; then the rows of those nodes (row_start[node] .. row_start[node+1] of the
    codes, vector biases and base ids, all stored in tree order, so nothing is padded) are
    scored by their ADC sums and the best `topk` kept by (distance, id), as search.topk orders.
    Without `select` (`ann_search_nodes`), the nodes `node_i` are given: each insertion into the
    node list walks the whole list, so wide beams choose their nodes outside (a partition) faster.
    With `dim` (`ann_search_atree_decoded`, additive codes, depth 1), `lut` holds only the table of
    the tree's codebook `level` and the rows are scored from it and from the other codewords `cbs`
    and the `queries` directly: a narrow beam reaches too few rows to pay for all M tables.
    """
    from ..ir.expr import Bin, Const, Load
    from ..ir.tir import Buffer, For, IfStmt, Let, Seq

    lut = Buffer("lut", (NQ, Const(1 if dim else m), Const(k)), "f32")
    codes = Buffer("codes", (N, Const(m)), code_dtype)
    vbias, qbias = Buffer("vbias", (N,), "f32"), Buffer("qbias", (NQ,), "f32")
    ids = Buffer("ids", (N,), "i64")
    row_start = Buffer("row_start", (Var("nr"),), "i64")
    parents, part = Buffer("parents", (NQ, Var("np")), "i64"), Buffer("part", (NQ, Var("np")), "f32")
    child_start = Buffer("child_start", (Var("ncs"),), "i64")
    node_code, node_bias = Buffer("node_code", (Var("nn"),), "i32"), Buffer("node_bias", (Var("nn"),), "f32")
    nb = Var("nb")
    node_d, node_i = Buffer("node_d", (NQ, nb), "f32"), Buffer("node_i", (NQ, nb), "i64")
    best_d = Buffer("best_d", (NQ, Const(topk)), "f32")
    best_i = Buffer("best_i", (NQ, Const(topk)), "i64")
    q, p, c, b, r = Var("q"), Var("p"), Var("c"), Var("b"), Var("r")
    par, nd, i = Var("par"), Var("nd"), Var("i")
    s, d = Var("s", "f32"), Var("d", "f32")

    def span(buf: Buffer, x: Var, var: Var, body: object) -> For:  # var over buf[x] .. buf[x+1]
        lo = Load(buf, (x,))
        return For(var, lo, Bin("sub", Load(buf, (Bin("add", x, Const(1)),)), lo), body)

    plane = Const(0 if dim else level)
    score = Bin("add", Bin("add", Load(part, (q, p)), Load(lut, (q, plane, Cast("i64", Load(node_code, (c,)))))),
                Load(node_bias, (c,)))
    choose = For(p, Const(0), Var("np"), Let(par, Load(parents, (q, p)), IfStmt(
        Bin("ge", par, Const(0)),
        span(child_start, par, c, Let(s, score, _insert(node_d, node_i, q, s, c, None, True, nb))))))
    if dim:
        queries, cbs = Buffer("queries", (NQ, Const(dim)), "f32"), Buffer("cbs", (Const(m), Const(k), Const(dim)), "f32")
        acc = Buffer("acc", (Const(_lanes(dim)),), "f32")
        score_row = _decoded_total(lut, queries, cbs, codes, vbias, qbias, acc, q, r, m, dim, level,
                                   lambda dd: _insert(best_d, best_i, q, dd, i, topk, True))
    else:
        score_row = Let(d, _adc_total(lut, codes, vbias, qbias, q, r, m), _insert(best_d, best_i, q, d, i, topk, True))
    rows = span(row_start, nd, r, Let(i, Load(ids, (r,)), score_row))
    scan = For(b, Const(0), nb, Let(nd, Load(node_i, (q, b)), IfStmt(Bin("ge", nd, Const(0)), rows)))
    if not select:
        body = For(q, Const(0), NQ, Seq((_init(best_d, best_i, q, Const(topk), "t"), scan)))
        return PrimFunc("ann_search_nodes", (lut, codes, vbias, ids, row_start, qbias, node_i, best_d, best_i), 2, body)
    body = For(q, Const(0), NQ, Seq((_init(node_d, node_i, q, nb, "u"), _init(best_d, best_i, q, Const(topk), "t"),
                                     choose, scan)))
    params = (lut, codes, vbias, ids, row_start, qbias, parents, part, child_start, node_code, node_bias)
    if dim:
        return PrimFunc("ann_search_atree_decoded", (*params, queries, cbs, node_d, node_i, acc, best_d, best_i), 5,
                        body)
    return PrimFunc("ann_search_atree", (*params, node_d, node_i, best_d, best_i), 4, body)


@lru_cache(maxsize=32)
def _compiled_search(m: int, k: int, topk: int, code_dtype: str, level: int, select: bool = True,  # noqa: ANN202
                     dim: int = 0):
    """The fused flat search (level < 0) or A-Tree last level; None where codegen cannot build it."""
    try:
        from ..runtime.cpu import compile_module

        f = search_func(m, k, topk, code_dtype) if level < 0 else atree_func(m, k, topk, level, code_dtype, select,
                                                                               dim)
        return compile_module([f]).kernel(f.name)
    except (ImportError, MlcError, NotImplementedError):
        return None


def _code_dtype(codes: np.ndarray) -> str:
    return "u8" if codes.dtype == np.uint8 else "u16"


def run_search(luts: np.ndarray, codes: np.ndarray, vbias: np.ndarray | None, qbias: np.ndarray,
               topk: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-k ids and distances by the compiled fused program; None where codegen cannot build it."""
    nq, m, k = luts.shape
    kern = _compiled_search(m, k, topk, _code_dtype(codes), -1)
    if kern is None:
        return None
    bd = np.empty((nq, topk), np.float32)
    bi = np.empty((nq, topk), np.int64)
    vb = np.zeros(len(codes), np.float32) if vbias is None else np.ascontiguousarray(vbias, np.float32)
    kern([np.ascontiguousarray(luts, np.float32), np.ascontiguousarray(codes), vb,
          np.ascontiguousarray(qbias, np.float32), bd, bi])
    return bi, bd


def run_atree(luts: np.ndarray, qbias: np.ndarray, topk: int, beam: int, level: int,
              rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
              nodes: tuple[np.ndarray, np.ndarray, np.ndarray], parents: np.ndarray,
              part: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`ann_search_atree`: rows = (codes, vbias, ids, row_start) in tree order, nodes = (child_start,
    node_code, node_bias) of the level; None where codegen cannot build it."""
    nq, m, k = luts.shape
    kern = _compiled_search(m, k, topk, _code_dtype(rows[0]), level)
    if kern is None:
        return None
    out = [np.empty((nq, beam), np.float32), np.empty((nq, beam), np.int64),
           np.empty((nq, topk), np.float32), np.empty((nq, topk), np.int64)]
    kern([np.ascontiguousarray(luts, np.float32), *rows, np.ascontiguousarray(qbias, np.float32),
          np.ascontiguousarray(parents, np.int64), np.ascontiguousarray(part, np.float32), *nodes, *out])
    return out[3], out[2]


def run_nodes(luts: np.ndarray, qbias: np.ndarray, topk: int, rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
              nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`ann_search_nodes`: the rows of the given nodes (nq, B) (-1: none); None without codegen."""
    nq, m, k = luts.shape
    kern = _compiled_search(m, k, topk, _code_dtype(rows[0]), 0, False)
    if kern is None:
        return None
    bd, bi = np.empty((nq, topk), np.float32), np.empty((nq, topk), np.int64)
    kern([np.ascontiguousarray(luts, np.float32), *rows, np.ascontiguousarray(qbias, np.float32),
          np.ascontiguousarray(nodes, np.int64), bd, bi])
    return bi, bd


def run_atree_decoded(lut0: np.ndarray, queries: np.ndarray, codebooks: np.ndarray, qbias: np.ndarray, topk: int,
                      beam: int, book: int, rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                      nodes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """`ann_search_atree_decoded` on a depth-1 tree: lut0 (nq, K) is the table of its codebook `book`,
    codebooks (M, K, d) additive; None where codegen cannot build it."""
    nq, dim = queries.shape
    m, k = codebooks.shape[:2]
    kern = _compiled_search(m, k, topk, _code_dtype(rows[0]), book, True, dim)
    if kern is None:
        return None
    out = [np.empty((nq, beam), np.float32), np.empty((nq, beam), np.int64), np.empty(_lanes(dim), np.float32),
           np.empty((nq, topk), np.float32), np.empty((nq, topk), np.int64)]
    kern([np.ascontiguousarray(lut0, np.float32).reshape(nq, 1, k), *rows, np.ascontiguousarray(qbias, np.float32),
          np.zeros((nq, 1), np.int64), np.zeros((nq, 1), np.float32), *nodes, np.ascontiguousarray(queries, np.float32),
          np.ascontiguousarray(codebooks, np.float32), *out])
    return out[4], out[3]
