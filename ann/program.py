"""The index search as a tensor program of the toolchain.

Three PrimFuncs are emitted for an index: `ann_lut` (query -> lookup tables: -2 <q, c> for
additive quantizers, sub-vector squared distances for PQ, on already rotated queries),
`ann_scan` (table sums over the codes in codebook order, then + vector bias + query bias:
one block with a reduce iterator over the codebooks, then an epilogue block) and
`ann_search` (the same sums fused with a top-k insertion, so no n-wide distance row is ever
written). They are printed as the index's text IR and run by `codegen.jit.compile_module`
(native code, the same lowering every other tensor program gets) or, where that is
unavailable, by the reference interpreter `ir.tir_interp.run_prim` (scan) or numpy (top-k).
Search mode `ir` runs `ann_search` compiled; the lookup tables are computed by numpy (BLAS),
`ann_lut` is checked against them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..ir.diagnostics import MlcError
from ..ir.expr import Cast, Var
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
        from ..codegen.jit import compile_module

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


def search_func(m: int, k: int, topk: int, code_dtype: str = "u8", candidates: bool = False) -> PrimFunc:
    """Fused scan + top-k: each distance is computed in a register and inserted into a sorted
    k-list when it beats the current k-th (ties keep the smaller id first, as search.topk).

    The insertion walks j = k-1 .. 0: slot j takes slot j-1's entry if that one is larger than
    d (a shift), else takes (d, i) if its own entry is larger than d, else stays; reading only
    slots not yet written, so one backward pass inserts in place. With `candidates`, only the
    base ids listed per query in `cand[q, c]` (ascending, -1 padding) are scored (A-Tree).
    """
    from ..ir.expr import Bin, Const, Load, Select
    from ..ir.tir import Buffer, For, IfStmt, Let, Seq, Store

    lut = Buffer("lut", (NQ, Const(m), Const(k)), "f32")
    codes = Buffer("codes", (N, Const(m)), code_dtype)
    vbias, qbias = Buffer("vbias", (N,), "f32"), Buffer("qbias", (NQ,), "f32")
    best_d = Buffer("best_d", (NQ, Const(topk)), "f32")
    best_i = Buffer("best_i", (NQ, Const(topk)), "i64")
    q, jj, t, c = Var("q"), Var("jj"), Var("t"), Var("c")
    i = Var("i")
    cand = Buffer("cand", (NQ, Var("nc")), "i64")
    d = Var("d", "f32")
    # d = ((sum_m lut[q, m, codes[i, m]]) + vbias[i]) + qbias[q], summed in codebook order
    total = Load(lut, (q, Const(0), Cast("i64", Load(codes, (i, Const(0))))))
    for j_ in range(1, m):
        total = Bin("add", total, Load(lut, (q, Const(j_), Cast("i64", Load(codes, (i, Const(j_)))))))
    total = Bin("add", Bin("add", total, Load(vbias, (i,))), Load(qbias, (q,)))
    j = Bin("sub", Const(topk - 1), jj)
    prev = Bin("max", Bin("sub", j, Const(1)), Const(0))
    shift = Bin("and", Bin("gt", j, Const(0)), Bin("gt", Load(best_d, (q, prev)), d))
    place = Bin("gt", Load(best_d, (q, j)), d)
    insert = For(jj, Const(0), Const(topk), Seq((
        Store(best_i, (q, j), Select(shift, Load(best_i, (q, prev)), Select(place, i, Load(best_i, (q, j))))),
        Store(best_d, (q, j), Select(shift, Load(best_d, (q, prev)), Select(place, d, Load(best_d, (q, j))))),
    )))
    visit = Let(d, total, IfStmt(Bin("lt", d, Load(best_d, (q, Const(topk - 1)))), insert))
    if candidates:
        scan = For(c, Const(0), Var("nc"), Let(i, Load(cand, (q, c)), IfStmt(Bin("ge", i, Const(0)), visit)))
    else:
        scan = For(i, Const(0), N, visit)
    init = For(t, Const(0), Const(topk), Seq((Store(best_d, (q, t), Const(float("inf"), "f32")),
                                               Store(best_i, (q, t), Const(-1)))))
    body = For(q, Const(0), NQ, Seq((init, scan)))
    if candidates:
        return PrimFunc("ann_search_candidates", (lut, codes, vbias, qbias, cand, best_d, best_i), 2, body)
    return PrimFunc("ann_search", (lut, codes, vbias, qbias, best_d, best_i), 2, body)


@lru_cache(maxsize=16)
def _compiled_search(m: int, k: int, topk: int, code_dtype: str, candidates: bool):  # noqa: ANN202
    try:
        from ..codegen.jit import compile_module

        f = search_func(m, k, topk, code_dtype, candidates)
        return compile_module([f]).kernel(f.name)
    except (ImportError, MlcError, NotImplementedError):
        return None


def run_search(luts: np.ndarray, codes: np.ndarray, vbias: np.ndarray | None, qbias: np.ndarray,
               topk: int, cand: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-k ids and distances by the compiled fused program (over `cand` (nq, C) ascending ids,
    -1 padded, when given); None where codegen cannot build it."""
    nq, m, k = luts.shape
    cdt = "u8" if codes.dtype == np.uint8 else "u16"
    kern = _compiled_search(m, k, topk, cdt, cand is not None)
    if kern is None:
        return None
    bd = np.empty((nq, topk), np.float32)
    bi = np.empty((nq, topk), np.int64)
    vb = np.zeros(len(codes), np.float32) if vbias is None else np.ascontiguousarray(vbias, np.float32)
    args = [np.ascontiguousarray(luts, np.float32), np.ascontiguousarray(codes), vb,
            np.ascontiguousarray(qbias, np.float32)]
    if cand is not None:
        args.append(np.ascontiguousarray(cand, np.int64))
    kern([*args, bd, bi])
    return bi, bd
