"""Asymmetric distance computation (ADC): table sums over codes, top-k and exact re-ranking.

The distance of query q to coded vector x is  sum_m LUT[q][m, code_m(x)]  summed in codebook
order m = 0..M-1 in float32, then + vector bias + query bias. The encoding trees (etree.py)
sum in exactly this order, which is what makes their results bit-identical to this scan.
"""

from __future__ import annotations

import numpy as np

_Q_CHUNK = 256


def table_sum(luts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(nq, M, K) tables, (n, M) codes -> (nq, n) float32 sums in codebook order."""
    nq, m_total, k = luts.shape
    flat = luts.reshape(nq, m_total * k)
    idx = codes.astype(np.intp) + (np.arange(m_total, dtype=np.intp) * k)[None, :]
    out = np.empty((nq, len(codes)), np.float32)
    for s in range(0, nq, _Q_CHUNK):
        f = flat[s:s + _Q_CHUNK]
        acc = f[:, idx[:, 0]]
        for m in range(1, m_total):
            acc += f[:, idx[:, m]]
        out[s:s + _Q_CHUNK] = acc
    return out


def add_biases(dist: np.ndarray, query_bias: np.ndarray, vector_bias: np.ndarray | None,
               ids: np.ndarray | None = None) -> np.ndarray:
    """dist (nq, n) + vector_bias[ids] + query_bias, in that order (in place)."""
    if vector_bias is not None:
        dist += vector_bias[None, :] if ids is None else vector_bias[ids]
    dist += query_bias[:, None]
    return dist


def topk(dist: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest per row, ascending, ties broken by smaller id; pads with id -1 / +inf."""
    nq, n = dist.shape
    if ids is None:
        ids = np.broadcast_to(np.arange(n, dtype=np.int64), dist.shape)
    kk = min(k, n)
    out_i = np.full((nq, k), -1, np.int64)
    out_d = np.full((nq, k), np.inf, np.float32)
    if kk == 0:
        return out_i, out_d
    part = np.argpartition(dist, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), (nq, n))
    pd = np.take_along_axis(dist, part, 1)
    pid = np.take_along_axis(ids, part, 1)
    order = np.lexsort((pid, pd), axis=1)
    sel_i, sel_d = np.take_along_axis(pid, order, 1), np.take_along_axis(pd, order, 1)
    # A tie at the k-th distance may have been cut arbitrarily by argpartition: redo those rows exactly.
    if kk < n:
        tied = np.flatnonzero((dist <= sel_d[:, -1:]).sum(axis=1) > kk)
        for r in tied:
            o = np.lexsort((ids[r], dist[r]))[:kk]
            sel_i[r], sel_d[r] = ids[r][o], dist[r][o]
    out_i[:, :kk], out_d[:, :kk] = sel_i, sel_d
    return out_i, out_d


def rerank(queries: np.ndarray, base: np.ndarray, shortlist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared L2 re-ranking of a shortlist (nq, s) of base ids (-1 = empty slot)."""
    safe = np.where(shortlist < 0, 0, shortlist)
    diff = base[safe].astype(np.float32) - queries[:, None, :].astype(np.float32)
    d = np.einsum("qsd,qsd->qs", diff, diff)
    d[shortlist < 0] = np.inf
    return topk(d, k, shortlist)
