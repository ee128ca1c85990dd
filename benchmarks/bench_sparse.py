"""Compiled SpMM / SDDMM / BSR-MM (CPU) vs scipy.sparse in the same run.

Graphs: R-MAT (a, b, c, d = 0.57, 0.19, 0.19, 0.05) with a fixed seed, duplicates merged, values 1, at
the node and edge counts of Cora (2708, 10556), Pubmed (19717, 88648) and ogbn-arxiv (169343, 1166243)
by default, Reddit (232965, 114615892) with `--graphs ...,reddit` (its generation takes minutes and
one scipy call seconds: not in `make bench-sparse`); features 32, 128 and 512. Our side is the callable
of `mlc.sparse.compile` (one native call per product). SDDMM's peer (scipy has none) is numpy: the
two rows of each nonzero gathered in chunks of 4096 nonzeros, `einsum("pk,pk->p")`, times the values.
`best` is SpMM in the fastest format of the tuner's format space (passes/sparse_format.FORMAT_SPACE:
csr, ell, hyb:C,K; ell only where padding stays under 4x nnz) timed here on the graph, against the
same scipy CSR product; the geomean line is the issue's figure (default CSR format, spmm + sddmm).
Pruned weight: 1024 x 4096 with 10% of its 16 x 16 blocks kept,
times a 4096 x 128 activation, as BSR (vs scipy's BSR product) and as CSR (vs scipy's CSR product).
Pruned linear layer (graph level, `mlc sparsify`): x (batch x 1024, batches 1, 8, 32, 128) @ W (1024 x 4096) with 10% of W's
16 x 16 blocks kept (`prune_blocks`), built twice through the CPU pipeline: the dense model with the
pruned weight (a dense mlc matmul) and the model after `sparsify --block 16 --density 0.1` (sparse_matmul:
W^T in CSR, the batch in parallel chunks of 16 lanes); peers numpy `x @ W` (dense BLAS) and scipy `x @ csr(W)`.
Peer and ours are timed in alternating blocks over 3 rounds (runtime.bench.block_medians), each figure
the median of up to `--runs` calls (fewer, at least 3, where a call is long: about `--budget` seconds
per figure); the ratio is peer / mlc (> 1: mlc faster).
Correctness against scipy is checked before timing. Usage: python benchmarks/bench_sparse.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

import mlc.sparse as msp

GRAPHS = {"cora": (2708, 10556), "pubmed": (19717, 88648), "arxiv": (169343, 1166243), "reddit": (232965, 114615892)}
BUDGET = [1.0]  # seconds of timed calls per figure (--budget)


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
    """Median of up to `runs` calls after a warm-up; at least 3, fewer than `runs` when the warm-up
    says they would take more than the budget."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    runs = max(3, min(runs, int(BUDGET[0] / max(first, 1e-9))))
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def pair_medians(peer, ours, runs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Peer and ours timed in alternating blocks (runtime.bench.block_medians: background load reaches
    both), up to `runs` calls each over 3 rounds, fewer (at least 3) where a call is long."""
    from mlc.runtime.bench import block_medians

    t = time.perf_counter()
    peer()
    ours()
    both = time.perf_counter() - t
    runs = max(3, min(runs, int(2 * BUDGET[0] / max(both, 1e-9))))
    tp, to = block_medians([peer, ours], runs=runs, rounds=3, settle=0.1, warm=0.0)
    return tp, to


def spmm_formats(a: sp.csr_matrix) -> list[str]:
    """The tuner's format space as mlc.sparse.compile takes it for spmm: csr, hyb:C,K, and ell where
    its padding stays under 4x the nonzeros (R-MAT hubs make ELL rows thousands wide)."""
    from mlc.passes.sparse_format import FORMAT_SPACE

    width = int(np.diff(a.indptr).max(initial=0))
    return [f for f in FORMAT_SPACE if not f.startswith("bsr") and (f != "ell" or a.shape[0] * width <= 4 * a.nnz)]


def make_cases(a: sp.csr_matrix, feat: int, rng: np.random.Generator, search: bool) -> list:  # type: ignore[type-arg]
    """(op, scipy call, mlc call) for one graph and width, both checked against each other first; with
    `search`, SpMM in each format of the space is timed and the fastest kept as `best:<format>`."""
    nodes = a.shape[0]
    b = rng.standard_normal((nodes, feat)).astype(np.float32)
    x = rng.standard_normal((nodes, feat)).astype(np.float32)
    spmm = msp.compile(a, "spmm", feat=feat)
    want = a @ b
    np.testing.assert_allclose(spmm(b), want, rtol=1e-4, atol=1e-4)
    rows = np.repeat(np.arange(nodes), np.diff(a.indptr))

    def scipy_sddmm() -> np.ndarray:  # scipy has no SDDMM: numpy's row-gather form, chunked to stay in cache
        out = np.empty(a.nnz, np.float32)
        for s in range(0, a.nnz, 4096):
            e = min(s + 4096, a.nnz)
            out[s:e] = np.einsum("pk,pk->p", x[rows[s:e]], b[a.indices[s:e]])
        return out * a.data

    sddmm = msp.compile(a, "sddmm", feat=feat)
    np.testing.assert_allclose(sddmm.run(x, b), scipy_sddmm(), rtol=1e-4, atol=1e-4)
    cases = [("spmm", lambda: a @ b, lambda: spmm.run(b)),
             ("sddmm", scipy_sddmm, lambda: sddmm.run(x, b))]
    if search:
        best, best_t = "csr", median_time(lambda: spmm.run(b), 10)
        for fmt in spmm_formats(a):
            if fmt == "csr":
                continue
            k = msp.compile(a, "spmm", feat=feat, format=fmt)
            np.testing.assert_allclose(k.run(b), want, rtol=1e-4, atol=1e-4)
            t = median_time(lambda k=k: k.run(b), 10)
            if t < best_t:
                best, best_t, spmm = fmt, t, k
        cases.append((f"best:{best}", lambda: a @ b, lambda: spmm.run(b)))
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
    return [("bsrmm", lambda: wb @ x, lambda: bsr.run(x)),
            ("spmm", lambda: w @ x, lambda: csr.run(x))], w.nnz


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
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per figure (at least 3 calls)")
    ap.add_argument("--graphs", default="cora,pubmed,arxiv", help=f"of {', '.join(GRAPHS)}")
    ap.add_argument("--feats", default="32,128,512")
    ap.add_argument("--no-search", action="store_true", help="skip the SpMM format search (the best:<format> rows)")
    ap.add_argument("--only-linear", action="store_true", help="only the pruned linear layer (graph level)")
    ap.add_argument("--linear-batches", default="1,8,32,128", help="batch sizes of the pruned linear layer")
    args = ap.parse_args()
    BUDGET[0] = args.budget
    if args.only_linear:
        pruned_linear(args.runs, [int(x) for x in args.linear_batches.split(",")])
        return
    graphs = [g for g in args.graphs.split(",") if g]
    if any(g not in GRAPHS for g in graphs):
        ap.error(f"unknown graph in {graphs} (known: {', '.join(GRAPHS)})")
    rng = np.random.default_rng(0)
    print(f"{'graph':8} {'op':14} {'feat':>4} {'nnz':>8} {'peer ms':>9} {'mlc ms':>8} {'ratio':>6}")
    ratios: dict[str, list[float]] = {"spmm": [], "sddmm": [], "best": []}
    for gname in graphs:
        a = rmat(*GRAPHS[gname])
        for feat in (int(x) for x in args.feats.split(",")):
            for op, peer, ours in make_cases(a, feat, rng, not args.no_search):
                tp, to = pair_medians(peer, ours, args.runs)
                ratios[op.split(":")[0]].append(tp / to)
                print(f"{gname:8} {op:14} {feat:4d} {a.nnz:8d} {tp * 1e3:9.3f} {to * 1e3:8.3f} {tp / to:6.2f}", flush=True)

    def geo(xs: list[float]) -> float:
        return float(np.exp(np.mean(np.log(xs))))

    print(f"geomean peer / mlc over {', '.join(graphs)} x feat {args.feats}: spmm + sddmm (CSR, the issue's figure) "
          f"{geo(ratios['spmm'] + ratios['sddmm']):.2f}; spmm {geo(ratios['spmm']):.2f}, sddmm {geo(ratios['sddmm']):.2f}"
          + (f"; spmm in the best format + sddmm {geo(ratios['best'] + ratios['sddmm']):.2f}" if ratios["best"] else ""))
    cases, nnz = pruned_cases(128, rng)
    for op, peer, ours in cases:
        tp, to = pair_medians(peer, ours, args.runs)
        print(f"{'pruned':8} {op:14} {128:4d} {nnz:8d} {tp * 1e3:9.3f} {to * 1e3:8.3f} {tp / to:6.2f}")
    pruned_linear(args.runs, [int(x) for x in args.linear_batches.split(",")])


if __name__ == "__main__":
    main()
