"""Compiled SpMM / SDDMM / BSR-MM (CPU) vs scipy.sparse in the same run.

Graphs: R-MAT (a, b, c, d = 0.57, 0.19, 0.19, 0.05) with a fixed seed, duplicates merged, values 1, at
the node and edge counts of Cora (2708, 10556) and Pubmed (19717, 88648); features 32 and 128. SDDMM's
peer (scipy has none) is numpy: the two rows of each nonzero gathered in chunks of 4096 nonzeros,
`einsum("pk,pk->p")`, times the values. `hyb` is SpMM in hyb:2,3 (two column parts, ELL buckets of
widths 1, 2, 4, 8 and a CSR rest) against the same scipy CSR product. Pruned weight: 1024 x 4096 with 10% of its 16 x 16 blocks kept,
times a 4096 x 128 activation, as BSR (vs scipy's BSR product) and as CSR (vs scipy's CSR product).
Pruned linear layer (graph level, `mlc sparsify`): x (batch x 1024, batches 1, 8, 32, 128) @ W (1024 x 4096) with 10% of W's
16 x 16 blocks kept (`prune_blocks`), built twice through the CPU pipeline: the dense model with the
pruned weight (a dense mlc matmul) and the model after `sparsify --block 16 --density 0.1` (sparse_matmul:
W^T in CSR, the batch in parallel chunks of 16 lanes); peers numpy `x @ W` (dense BLAS) and scipy `x @ csr(W)`.
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
    hyb = msp.compile(a, "spmm", feat=feat, format="hyb:2,3")
    np.testing.assert_allclose(hyb(b), a @ b, rtol=1e-4, atol=1e-4)
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
             ("hyb", lambda: a @ b, lambda: hyb.model(**hyb.inputs, B=b)),
             ("sddmm", scipy_sddmm, lambda: sddmm.model(**inputs, X=x, Y=b))]
    return cases


def block_sparse(rows: int, cols: int, size: int, density: float, seed: int = 0) -> sp.csr_matrix:
    """A pruned weight: `density` of its size x size blocks kept (random values), the rest zero."""
    rng = np.random.default_rng(seed)
    keep = rng.random((rows // size, cols // size)) < density
    w = np.kron(keep, np.ones((size, size))) * rng.standard_normal((rows, cols))
    return sp.csr_matrix(w.astype(np.float32))


def pruned_cases(feat: int, rng: np.random.Generator) -> list:  # type: ignore[type-arg]
    """The 90%-block-sparse 1024 x 4096 weight (16 x 16 blocks) times a 4096 x feat activation: BSR vs
    scipy's BSR product, and the same weight as CSR vs scipy's CSR product."""
    w = block_sparse(1024, 4096, 16, 0.1)
    x = rng.standard_normal((4096, feat)).astype(np.float32)
    wb = w.tobsr(blocksize=(16, 16))
    bsr = msp.compile(w, "bsrmm", feat=feat, format="bsr:16")
    csr = msp.compile(w, "spmm", feat=feat)
    np.testing.assert_allclose(bsr(x), w @ x, rtol=1e-3, atol=1e-3)
    return [("bsrmm", lambda: wb @ x, lambda: bsr.model(**bsr.inputs, B=x)),
            ("spmm", lambda: w @ x, lambda: csr.model(**csr.inputs, B=x))], w.nnz


def pruned_linear(runs: int, batches: list[int]) -> None:
    """The pruned-transformer path: dense mlc matmul vs sparsified mlc vs numpy and scipy, one run per batch
    (both models built once, with a symbolic batch)."""
    from mlc.frontend.onnx_import import import_onnx
    from mlc.frontend.zoo import GraphBuilder
    from mlc.passes.registry import PassContext
    from mlc.passes.sparsify import Sparsify, prune_blocks
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    rng = np.random.default_rng(1)
    w = prune_blocks(rng.standard_normal((1024, 4096)).astype(np.float32) / 32, 16, 0.1)
    b = GraphBuilder("linear", seed=0)
    b.node("MatMul", [b.input("x", ["N", 1024]), b.const(w, "w")], out="y")
    b.output("y", ["N", 4096])
    module, consts = import_onnx(b.model())

    def build(m, c):  # type: ignore[no-untyped-def]
        return model_from_artifact(loads(build_module(with_memory_constants(m, c), c, "cpu").result.data), "bench")

    dense = build(module, consts)
    ctx = PassContext(constants=dict(consts), sink=None)
    sparse = build(Sparsify(block=16, density=0.1).apply(module, ctx), ctx.constants or {})
    ws = sp.csr_matrix(w)
    print(f"pruned linear 1024x4096, 10% of 16x16 blocks ({ws.nnz} nonzeros), median ms; ratio = peer / mlc sparse")
    print(f"{'batch':>5} {'numpy':>8} {'scipy':>8} {'mlc dense':>9} {'mlc sparse':>10} {'/dense':>7} {'/numpy':>7} {'/scipy':>7}")
    for n in batches:
        x = rng.standard_normal((n, 1024)).astype(np.float32)
        want = x @ w
        for f in (dense, sparse):
            np.testing.assert_allclose(f(x=x)["y"], want, rtol=1e-4, atol=1e-4)
        calls = (lambda x=x: x @ w, lambda x=x: x @ ws, lambda x=x: dense(x=x), lambda x=x: sparse(x=x))
        t = [median_time(fn, runs) for fn in calls]
        print(f"{n:5d} {t[0] * 1e3:8.3f} {t[1] * 1e3:8.3f} {t[2] * 1e3:9.3f} {t[3] * 1e3:10.3f} "
              f"{t[2] / t[3]:7.2f} {t[0] / t[3]:7.2f} {t[1] / t[3]:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--feats", default="32,128")
    ap.add_argument("--only-linear", action="store_true", help="only the pruned linear layer (graph level)")
    ap.add_argument("--linear-batches", default="1,8,32,128", help="batch sizes of the pruned linear layer")
    args = ap.parse_args()
    if args.only_linear:
        pruned_linear(args.runs, [int(x) for x in args.linear_batches.split(",")])
        return
    rng = np.random.default_rng(0)
    print(f"{'graph':8} {'op':6} {'feat':>4} {'nnz':>7} {'scipy ms':>9} {'mlc ms':>8} {'ratio':>6}")
    ratios = []
    for gname, (nodes, edges) in GRAPHS.items():
        a = rmat(nodes, edges)
        for feat in (int(x) for x in args.feats.split(",")):
            cases = make_cases(a, feat, rng)
            for op, peer, ours in cases:
                tp, to = median_time(peer, args.runs), median_time(ours, args.runs)
                if op != "hyb":  # the figure: SpMM and SDDMM in their default format (CSR)
                    ratios.append(tp / to)
                print(f"{gname:8} {op:6} {feat:4d} {a.nnz:7d} {tp * 1e3:9.3f} {to * 1e3:8.3f} {tp / to:6.2f}")
    print(f"geomean ratio over the graphs, spmm and sddmm (scipy / mlc): {float(np.exp(np.mean(np.log(ratios)))):.2f}")
    cases, nnz = pruned_cases(128, rng)
    for op, peer, ours in cases:
        tp, to = median_time(peer, args.runs), median_time(ours, args.runs)
        print(f"{'pruned':8} {op:6} {128:4d} {nnz:7d} {tp * 1e3:9.3f} {to * 1e3:8.3f} {tp / to:6.2f}")
    pruned_linear(args.runs, [int(x) for x in args.linear_batches.split(",")])


if __name__ == "__main__":
    main()
