"""The index search as a tensor program of the toolchain.

Two PrimFuncs are emitted for an index: `ann_lut` (query -> lookup tables: -2 <q, c> for
additive quantizers, sub-vector squared distances for PQ, on already rotated queries) and
`ann_scan` (table sums over the codes in codebook order, then + vector bias + query bias:
one block with a reduce iterator over the codebooks, then an epilogue block). They are
printed as the index's text IR and run by `codegen.jit.compile_module` (native code, the same
lowering every other tensor program gets) or, where that is unavailable, by the reference
interpreter `ir.tir_interp.run_prim`. Top-k selection stays in numpy (search.topk).
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


def search_module(method: str, dim: int, m: int, k: int, code_dtype: str = "u8") -> Module:
    return Module((lut_func(method, dim, m, k), scan_func(m, k, code_dtype)))


def search_ir_text(method: str, dim: int, m: int, k: int, code_dtype: str = "u8") -> str:
    from ..ir.printer import print_module

    return print_module(search_module(method, dim, m, k, code_dtype))


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
