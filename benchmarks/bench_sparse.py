"""Compiled SpMM / SDDMM (CPU) vs scipy.sparse in the same run, on R-MAT graphs at Cora/Pubmed sizes.

SDDMM's peer (scipy has none) is numpy: gather the two rows of each nonzero, in chunks of 4096
nonzeros, `einsum("pk,pk->p")`, times the values. Graphs: R-MAT (a, b, c, d = 0.57, 0.19, 0.19, 0.05) with a fixed seed, duplicates merged, at the node
and edge counts of Cora (2708, 10556) and Pubmed (19717, 88648); features 32 and 128; values 1.
Each figure is the median of `--runs` timed calls after a warm-up; the ratio is scipy / mlc (> 1: mlc
faster). Correctness against scipy is checked before timing. Usage: python benchmarks/bench_sparse.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

import mlc.sparse as msp

GRAPHS = {"cora": (2708, 10556), "pubmed": (19717, 88648)}


def rmat(nodes: int, edges: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    scale = int(np.ceil(np.log2(nodes)))
    probs = np.array([0.57, 0.19, 0.19, 0.05])
    rows = np.zeros(edges, np.int64)
    cols = np.zeros(edges, np.int64)
    for _ in range(scale):
        q = rng.choice(4, size=edges, p=probs)
        rows = rows * 2 + (q >> 1)
        cols = cols * 2 + (q & 1)
    rows, cols = rows % nodes, cols % nodes
    a = sp.csr_matrix((np.ones(edges, np.float32), (rows, cols)), shape=(nodes, nodes))
    a.sum_duplicates()
    a.data[:] = 1.0
    return a


def median_time(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def make_cases(a: sp.csr_matrix, feat: int, rng: np.random.Generator) -> list:  # type: ignore[type-arg]
    """(op, scipy call, mlc call) for one graph and width, both checked against each other first."""
    nodes = a.shape[0]
    b = rng.standard_normal((nodes, feat)).astype(np.float32)
    x = rng.standard_normal((nodes, feat)).astype(np.float32)
    spmm = msp.compile(a, "spmm", feat=feat)
    np.testing.assert_allclose(spmm(b), a @ b, rtol=1e-4, atol=1e-4)
    rows = np.repeat(np.arange(nodes), np.diff(a.indptr))

    def scipy_sddmm() -> np.ndarray:  # scipy has no SDDMM: numpy's row-gather form, chunked to stay in cache
        out = np.empty(a.nnz, np.float32)
        for s in range(0, a.nnz, 4096):
            e = min(s + 4096, a.nnz)
            out[s:e] = np.einsum("pk,pk->p", x[rows[s:e]], b[a.indices[s:e]])
        return out * a.data

    sddmm = msp.compile(a, "sddmm", feat=feat)
    inputs = sddmm.inputs
    np.testing.assert_allclose(sddmm(x, b).data, scipy_sddmm(), rtol=1e-4, atol=1e-4)
    cases = [("spmm", lambda: a @ b, lambda: spmm.model(**spmm.inputs, B=b)),
             ("sddmm", scipy_sddmm, lambda: sddmm.model(**inputs, X=x, Y=b))]
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--feats", default="32,128")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'graph':8} {'op':6} {'feat':>4} {'nnz':>7} {'scipy ms':>9} {'mlc ms':>8} {'ratio':>6}")
    ratios = []
    for gname, (nodes, edges) in GRAPHS.items():
        a = rmat(nodes, edges)
        for feat in (int(x) for x in args.feats.split(",")):
            cases = make_cases(a, feat, rng)
            for op, peer, ours in cases:
                tp, to = median_time(peer, args.runs), median_time(ours, args.runs)
                ratios.append(tp / to)
                print(f"{gname:8} {op:6} {feat:4d} {a.nnz:7d} {tp * 1e3:9.3f} {to * 1e3:8.3f} {tp / to:6.2f}")
    print(f"geomean ratio (scipy / mlc): {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()
