"""ANN benchmark on the shipped SIFT set (5,000 base, 100 queries), 64 bits per vector, beside faiss.

Prints, from one run: quantization error on held-out vectors (train on the first 4,000, measure
the last 1,000), 10-recall@10 and queries per second (100 queries over all 5,000 vectors), and
the recall/speed curves of the A-Tree and faiss IVFPQ with, at each IVFPQ operating point, the
A-Tree's q/s at the same recall (interpolated on its curve). Every timing, faiss and mlc alike, is
the wall time of one call on the whole batch of 100 queries, median of REPEAT calls after a warm-up;
the points of the two curves are timed in interleaved rounds (2 x REPEAT), so that load from other
processes on a shared machine falls on both alike.
faiss runs single-threaded, as mlc's kernels here do. Usage: python benchmarks/bench_ann.py
"""

from __future__ import annotations

import os

# single-threaded BLAS as well: OpenBLAS threads spinning beside faiss' OpenMP distort timings badly
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from mlc.ann.index import AnnIndex  # noqa: E402
from mlc.ann.io import read_vectors  # noqa: E402
from mlc.ann.metrics import k_recall_at_k  # noqa: E402
from mlc.ann.program import run_scan, run_search  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "ann"
M, NBITS, K, BEAM = 8, 8, 256, 8
REPEAT = 15
ATREE_BEAMS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def timed(fn: Callable[[], np.ndarray], repeat: int = REPEAT) -> tuple[np.ndarray, float]:
    out = fn()
    secs = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        secs.append(time.perf_counter() - t)
    return out, float(np.median(secs))


def timed_interleaved(fns: dict[str, Callable[[], np.ndarray]], repeat: int = 2 * REPEAT) -> dict[str, tuple[np.ndarray, float]]:
    """Median wall time of each fn, timed in rounds that call every fn once (order alternating), so
    load from other processes on a shared machine falls on all of them alike."""
    outs = {name: fn() for name, fn in fns.items()}
    secs: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            outs[name] = fns[name]()
            secs[name].append(time.perf_counter() - t)
    return {name: (outs[name], float(np.median(secs[name]))) for name in names}


def qps_at(curve: list[tuple[float, float]], recall: float) -> float | None:
    """q/s of a (recall, q/s) curve at `recall`, linear between its points; None beyond its best."""
    pts = sorted(curve)
    if recall <= pts[0][0]:
        return max(q for _, q in pts)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= recall <= r1:
            best_after = max(q for r, q in pts if r >= recall)  # a faster point of higher recall counts
            return max(best_after, q0 + (q1 - q0) * (recall - r0) / max(r1 - r0, 1e-12))
    return None


def main() -> None:
    faiss.omp_set_num_threads(1)
    base = read_vectors(DATA / "sift5k_base.fvecs")
    queries = read_vectors(DATA / "sift5k_query.fvecs")
    gt = read_vectors(DATA / "sift5k_groundtruth.ivecs")
    train, held = base[:4000], base[4000:]
    nq = len(queries)

    def faiss_err(index: faiss.Index) -> float:
        rec = index.sa_decode(index.sa_encode(held))
        return float(((held.astype(np.float64) - rec) ** 2).sum(1).mean())

    print("== quantization error on the last 1,000 vectors (trained on the first 4,000), 64 bits/vector ==")
    errs: dict[str, float] = {}
    f_pq = faiss.IndexPQ(128, M, NBITS)
    f_pq.train(train)
    errs["faiss PQ"] = faiss_err(f_pq)
    f_rq = faiss.IndexResidualQuantizer(128, M, NBITS)
    f_rq.rq.max_beam_size = BEAM
    t = time.perf_counter()
    f_rq.train(train)
    print(f"  (faiss RQ beam {BEAM} trained in {time.perf_counter() - t:.1f}s)")
    errs[f"faiss RQ beam {BEAM}"] = faiss_err(f_rq)
    ours: dict[str, AnnIndex] = {}
    for method, beam in (("pq", 1), ("rvq", 1), ("irvq", BEAM), ("da", BEAM)):
        t = time.perf_counter()
        idx = AnnIndex.build(base, method, M, K, beam=beam, train_size=4000)
        print(f"  (mlc {method} trained and encoded in {time.perf_counter() - t:.1f}s)")
        ours[method] = idx
        errs[f"mlc {method}" + (f" beam {beam}" if beam > 1 else "")] = idx.quantizer.quantization_error(held)
    for name, e in errs.items():
        print(f"  {name:22s} {e:10.1f}")
    ref = errs[f"faiss RQ beam {BEAM}"]
    print(f"  irvq / faiss RQ = {errs[f'mlc irvq beam {BEAM}'] / ref:.3f}   "
          f"da / irvq = {errs[f'mlc da beam {BEAM}'] / errs[f'mlc irvq beam {BEAM}']:.3f}")

    print("== search: 100 queries x 5,000 vectors, 10-recall@10 and queries/s (single thread) ==")
    rows: list[tuple[str, float, float]] = []

    def add(name: str, fn: Callable[[], np.ndarray]) -> None:
        ids, secs = timed(fn)
        rows.append((name, k_recall_at_k(ids, gt, 10), nq / secs))

    f_pq.add(base)
    add("faiss IndexPQ", lambda: f_pq.search(queries, 10)[1])
    f_rq.add(base)
    add(f"faiss RQ beam {BEAM}", lambda: f_rq.search(queries, 10)[1])
    pq = ours["pq"]
    add("mlc pq flat (numpy)", lambda: pq.search(queries, 10, "flat")[0])
    add("mlc pq ir (compiled)", lambda: pq.search(queries, 10, "ir")[0])
    add("mlc pq etree", lambda: pq.search(queries, 10, "etree")[0])
    for method in ("irvq", "da"):
        idx = ours[method]
        add(f"mlc {method} ir (compiled)", lambda idx=idx: idx.search(queries, 10, "ir")[0])
    hn = faiss.IndexHNSWFlat(128, 32)
    hn.add(base)
    for ef in (16, 64):
        hn.hnsw.efSearch = ef
        add(f"faiss HNSWFlat ef={ef} (raw vectors)", lambda: hn.search(queries, 10)[1])
    for name, r, qps in rows:
        print(f"  {name:36s} 10-R@10 {r:.3f}  {qps:10.0f} q/s")

    print("== compiled kernels on the PQ codes (LUTs given) vs faiss IndexPQ search (LUT+scan+top-k), 100 queries ==")
    luts = pq.quantizer.luts(queries)
    qb = pq.quantizer.query_bias(queries)
    _, t_scan = timed(lambda: run_scan(luts, pq.codes, None, qb, backend="jit"))
    _, t_fused = timed(lambda: run_search(luts, pq.codes, None, qb, 10))
    _, t_lut = timed(lambda: pq.quantizer.luts(queries))
    _, t_faiss = timed(lambda: f_pq.search(queries, 10))
    print(f"  mlc ann_scan {t_scan * 1e3:.2f} ms  mlc ann_search (scan+top-k) {t_fused * 1e3:.2f} ms  "
          f"mlc LUTs {t_lut * 1e3:.2f} ms  faiss IndexPQ {t_faiss * 1e3:.2f} ms  "
          f"faiss/(mlc LUT+search) {t_faiss / (t_fused + t_lut):.2f}")

    print("== recall/speed curves at 64-bit codes: A-Tree (irvq) vs faiss IVFPQ ==")
    quant = faiss.IndexFlatL2(128)
    ivf = faiss.IndexIVFPQ(quant, 128, 64, M, NBITS)
    ivf.train(train)
    ivf.add(base)
    at = ours["irvq"]
    tree = at.atree()

    def ivf_search(nprobe: int) -> np.ndarray:
        ivf.nprobe = nprobe
        return ivf.search(queries, 10)[1]

    fns = {f"faiss IVFPQ nlist=64 nprobe={p:3d}": (lambda p=p: ivf_search(p)) for p in (1, 2, 4, 8, 16, 64)}
    fns.update({f"mlc A-Tree irvq beam={b:4d}      ": (lambda b=b: at.search(queries, 10, "atree", b)[0])
                for b in ATREE_BEAMS})
    print(f"  (A-Tree descends {tree.depth} level(s) of {len(tree.tree.node_counts)}, "
          f"{tree.tree.node_counts[tree.depth - 1]} nodes there, codebooks in order {tree.tree.books}; "
          "all points timed in interleaved rounds)")
    faiss_curve, atree_curve = [], []
    for name, (ids, secs) in timed_interleaved(fns).items():
        point = (k_recall_at_k(ids, gt, 10), nq / secs)
        (faiss_curve if name.startswith("faiss") else atree_curve).append(point)
        print(f"  {name}  10-R@10 {point[0]:.3f}  {point[1]:9.0f} q/s")
    print("  at each IVFPQ operating point, the A-Tree's q/s at the same recall (same run):")
    for r, q in faiss_curve:
        a = qps_at(atree_curve, r)
        print(f"    10-R@10 {r:.3f}: IVFPQ {q:9.0f} q/s  A-Tree " +
              (f"{a:9.0f} q/s  A-Tree/IVFPQ {a / q:.2f}" if a is not None else "    (beyond its recall)"))


if __name__ == "__main__":
    main()
