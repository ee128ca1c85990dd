"""Sparse kernels on the GPU, one run: mlc (sparse-lower + sparse-gpu-schedule, build-cuda) beside cuSPARSE
(through torch.sparse) and PyTorch Geometric on the same GPU.

- spmm: C = A @ B, A an R-MAT graph (benchmarks/bench_sparse.rmat, fixed seed, values 1) at the node and
  edge counts of Cora, Pubmed, ogbn-arxiv and Reddit, B dense with 32, 128 and 512 features, f32; peer
  torch.sparse.mm on a CSR tensor (cuSPARSE SpMM).
- sddmm: C[p] = A[i,j] * dot(X[i], Y[j]) per nonzero, same graphs and widths; peer
  torch.sparse.sampled_addmm(A, X, Y^T, beta=0) (cuSPARSE SDDMM; A's values are 1, so the two agree).
- bsr: a 1024 x 4096 f16 weight with 10% of its 16 x 16 blocks kept (bench_sparse.block_sparse) times a
  4096 x N activation (N = 128, 512); mlc bsrmm (bsr:16) vs torch BSR (W.to_sparse_bsr(16) @ X) and vs the
  dense pruned weight through cuBLAS (torch.matmul).
- sage: one GraphSAGE layer (mean aggregation, 128 -> 128, no bias) on the Reddit-sized graph: mlc =
  X @ W_root + A_mean @ (X @ W_neigh) (two mlc GEMMs, mlc SpMM over the row-normalised CSR, an mlc add);
  peer torch_geometric.nn.SAGEConv(aggr="mean", bias=False) with the same weights, given the adjacency as a
  torch sparse CSR tensor.
Every figure is GPU time from CUDA events: the mean per call over a batch of back-to-back calls, median
of 5 batches, inputs resident on the device; ratio = peer / mlc (> 1: mlc faster). mlc's calls replay
launches packed once (Device.replay, as its runtime replays a tape); torch's are its Python API calls. A
call whose host cost exceeds its GPU time (Cora-sized cases) is timed at the host's rate on both sides. Each case is checked against scipy.sparse /
numpy first (rows sampled on the large graphs). Each section runs alone and a failing case or section is
reported and skipped. Needs pycuda, torch (and torch_geometric for sage) and an NVIDIA GPU.
Run: python benchmarks/bench_sparse_gpu.py [spmm] [sddmm] [bsr] [sage] [--graphs cora,pubmed,arxiv,reddit]
[--feats 32,128,512] (no section: all).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sparse import block_sparse, rmat  # noqa: E402 - the shared generators

GRAPHS = {"cora": (2708, 10556), "pubmed": (19717, 88648), "arxiv": (169343, 1166243),
          "reddit": (232965, 114615892)}
NP = {"f32": np.float32, "f16": np.float16}
REPS = 5
CHUNKS: dict[str, int] = {}  # sparse-gpu-schedule's options, from --chunks


def graph(name: str) -> sp.csr_matrix:
    """The R-MAT graph of `name`'s size, cached under the temp dir (Reddit's takes a minute to generate)."""
    nodes, edges = GRAPHS[name]
    path = Path(tempfile.gettempdir()) / f"mlc-bench-rmat-{nodes}-{edges}.npz"
    if path.is_file():
        return sp.load_npz(path).tocsr()
    a = rmat(nodes, edges)
    a.sort_indices()
    sp.save_npz(path, a, compressed=False)
    return a


# ---- mlc kernels on the device ------------------------------------------------------------------
class Device:
    """pycuda context, one stream, device buffers and event timing for mlc's kernels."""

    def __init__(self) -> None:
        import pycuda.driver as drv
        from mlc.runtime.cuda import cuda_context, device_arch

        cuda_context()
        self.drv, self.stream, self.arch = drv, drv.Stream(), device_arch()

    def put(self, a: np.ndarray) -> Any:
        return self.drv.to_device(np.ascontiguousarray(a)) if a.nbytes else self.drv.mem_alloc(1)

    def get(self, buf: Any, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(like)
        if out.nbytes:
            self.drv.memcpy_dtoh(out, buf)
        return out

    def launcher(self, kernel: Any, arrays: list[np.ndarray]) -> tuple[Any, list[Any]]:
        """(a call launching `kernel` on device copies of `arrays`, the device buffers)."""
        bufs = [self.put(a) for a in arrays]
        env = kernel.bind_dims([a.shape for a in arrays])
        held: list[Any] = []

        def ws(sizes: list[int]) -> list[int]:
            if not held:
                held.extend(self.drv.mem_alloc(max(1, s)) for s in sizes)
            return [int(h) for h in held]

        ptrs = [int(b) for b in bufs]
        run = self.replay(lambda tape: kernel.launch(ptrs, env, self.stream, ws, tape))
        run.held = held  # type: ignore[attr-defined] - the workspace lives as long as the call
        return run, bufs

    def replay(self, launch_all: Any) -> Any:
        """A call that re-issues the launches `launch_all(tape)` made once, their arguments packed then:
        what mlc's runtime does (runtime/cuda_vm.py replays a tape, as a CUDA graph), so the timed mlc
        call carries no Python argument packing or grid evaluation; torch's calls keep theirs, which
        are its API's own per-call cost."""
        import struct

        tape: list[tuple[Any, ...]] = []
        launch_all(tape)
        packed = [(fn, grid, block, struct.pack(fmt, *args), shared) for fn, grid, block, shared, fmt, _, args in tape]
        stream = self.stream

        def run() -> None:
            for fn, grid, block, buf, shared in packed:
                fn._launch_kernel(grid, block, buf, shared, stream)

        return run

    def time_ms(self, fn: Any, iters: int) -> float:
        drv = self.drv
        for _ in range(2):
            fn()
        start, end = drv.Event(), drv.Event()
        times = []
        for _ in range(REPS):
            start.record(self.stream)
            for _ in range(iters):
                fn()
            end.record(self.stream)
            end.synchronize()
            times.append(start.time_till(end) / iters)
        return float(np.median(times))


def compile_prims(dev: Device, module: Any) -> tuple[Any, list[Any]]:
    """The build-cuda pipeline (sparse-lower, sparse-gpu-schedule, schedule, lower-tir) and nvcc: the
    loaded library and the scheduled functions."""
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext
    from mlc.runtime.cuda import compile_cuda

    from mlc.compiler import default_pipeline

    ctx = PassContext(target=f"cuda:{dev.arch}", sink=None)
    steps = load_pipeline(default_pipeline("build-cuda"))
    for st in steps:  # --chunks: split_rows_by_nonzeros's (min_chunk, max_chunks)
        if st.info.name == "sparse-gpu-schedule":
            st.options.update(CHUNKS)
    module, _ = run_pipeline(module, steps, ctx, True)
    prims = list(module.prim_functions())
    return compile_cuda(prims, dev.arch), prims


def sparse_kernel(dev: Device, op: str, fmt: str, feat: int, dtype: str) -> Any:
    from mlc.ir.sparse_kernels import sparse_kernel as stage_one

    lib, prims = compile_prims(dev, stage_one(op, fmt, feat, dtype))
    return lib.kernel(prims[0].name)


def dense_kernels(dev: Device, k: int, h: int) -> tuple[Any, Any]:
    """mlc's f32 GEMM (N x K @ K x H) and elementwise add (N x H), default GPU schedules."""
    from mlc.ir.expr import Var
    from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rsum
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule
    from mlc.runtime.cuda import compile_cuda

    nv = Var("N")
    a, w = placeholder("A", (nv, k)), placeholder("W", (k, h))
    r = reduce_axis(k, "k")
    mm = build("gemm", [a, w], [compute("C", (nv, h), lambda i, j: rsum(a[i, r] * w[r, j], r))])
    x, y = placeholder("X", (nv, h)), placeholder("Y", (nv, h))
    add = build("add", [x, y], [compute("Z", (nv, h), lambda i, j: x[i, j] + y[i, j])])
    lib = compile_cuda([default_gpu_schedule(mm), default_gpu_schedule(add)], dev.arch)
    return lib.kernel("gemm"), lib.kernel("add")


def iters_for(work: float) -> int:
    """Calls per timed batch: about 20 ms of work at ~1e11 units/s, 5..200."""
    return int(min(200, max(5, 2e9 / max(work, 1.0))))


def sample_rows(a: sp.csr_matrix, rng: np.random.Generator, k: int = 256) -> np.ndarray:
    m = a.shape[0]
    dense = int(np.argmax(np.diff(a.indptr)))
    empty = np.flatnonzero(np.diff(a.indptr) == 0)[:4]
    return np.unique(np.concatenate([rng.choice(m, size=min(k, m), replace=False), [dense], empty]))


def ratio(peer: float, ours: float) -> str:
    return f"{peer / ours:6.2f}x" if math.isfinite(peer) and math.isfinite(ours) and ours > 0 else "     -"


def geomean(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x) and x > 0]
    return float(np.exp(np.mean(np.log(xs)))) if xs else math.nan


# ---- sections -----------------------------------------------------------------------------------
def bench_spmm(dev: Device, graphs: list[str], feats: list[int]) -> None:
    import torch

    print("spmm (C = A @ B, f32, CSR): ms per call; peer = cuSPARSE via torch.sparse.mm; ratio = peer / mlc")
    print(f"  {'graph':8} {'nodes':>7} {'nnz':>10} {'feat':>5} {'mlc':>9} {'cuSPARSE':>9} {'ratio':>7}  max rel err")
    ratios = []
    kernels = {f: sparse_kernel(dev, "spmm", "csr", f, "f32") for f in feats}
    for g in graphs:
        a = graph(g)
        m, n = a.shape
        ta = torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64)),
                                     torch.from_numpy(a.data.astype(np.float32)), size=a.shape).cuda()
        for f in feats:
            try:
                rng = np.random.default_rng(f)
                b = rng.standard_normal((n, f)).astype(np.float32)
                c = np.zeros((m, f), np.float32)
                arrays = [a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(np.float32), b, c]
                run, bufs = dev.launcher(kernels[f], arrays)
                it = iters_for(a.nnz * f)
                ours = dev.time_ms(run, it)
                got = dev.get(bufs[-1], c)
                rows = sample_rows(a, rng)
                want = a[rows] @ b
                err = float(np.abs(got[rows] - want).max() / max(1e-6, np.abs(want).max()))
                if err > 1e-4:
                    raise AssertionError(f"mlc spmm differs from scipy: max rel err {err:.2e}")
                tb = torch.from_numpy(b).cuda()
                peer = torch_ms(lambda: torch.sparse.mm(ta, tb), it)  # noqa: B023 - called at once
                ratios.append(peer / ours)
                print(f"  {g:8} {m:7d} {a.nnz:10d} {f:5d} {ours:9.3f} {peer:9.3f} {ratio(peer, ours):>7}  {err:.1e}")
                del bufs
            except Exception as e:  # noqa: BLE001 - one case must not hide the others
                print(f"  {g:8} feat {f}: failed: {type(e).__name__}: {str(e)[:300]}")
    print(f"  geomean ratio (cuSPARSE / mlc) over {len(ratios)} cases: {geomean(ratios):.2f}x (goal >= 1.1x)")


def torch_ms(fn: Any, iters: int) -> float:
    import torch

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPS):
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / iters)
    return float(np.median(times))


def bench_sddmm(dev: Device, graphs: list[str], feats: list[int]) -> None:
    import torch

    print("sddmm (C[p] = A[i,j] * dot(X[i], Y[j]), f32, CSR): ms per call; peer = torch.sparse.sampled_addmm "
          "(cuSPARSE SDDMM); ratio = peer / mlc")
    print(f"  {'graph':8} {'nodes':>7} {'nnz':>10} {'feat':>5} {'mlc':>9} {'cuSPARSE':>9} {'ratio':>7}  max rel err")
    ratios = []
    kernels = {f: sparse_kernel(dev, "sddmm", "csr", f, "f32") for f in feats}
    for g in graphs:
        a = graph(g)
        m, n = a.shape
        ta = torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64)),
                                     torch.from_numpy(a.data.astype(np.float32)), size=a.shape).cuda()
        lens = np.diff(a.indptr)
        for f in feats:
            try:
                rng = np.random.default_rng(f + 1)
                x = rng.standard_normal((m, f)).astype(np.float32)
                y = rng.standard_normal((n, f)).astype(np.float32)
                c = np.zeros(a.nnz, np.float32)
                arrays = [a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(np.float32), x, y, c]
                run, bufs = dev.launcher(kernels[f], arrays)
                it = iters_for(a.nnz * f)
                ours = dev.time_ms(run, it)
                got = dev.get(bufs[-1], c)
                p = np.unique(np.concatenate([rng.choice(a.nnz, size=min(4096, a.nnz), replace=False),
                                              np.arange(a.indptr[np.argmax(lens)], a.indptr[np.argmax(lens) + 1])]))
                rows = np.searchsorted(a.indptr, p, side="right") - 1
                want = a.data[p] * np.einsum("pk,pk->p", x[rows], y[a.indices[p]])
                err = float(np.abs(got[p] - want).max() / max(1e-6, np.abs(want).max()))
                if err > 1e-4:
                    raise AssertionError(f"mlc sddmm differs from numpy: max rel err {err:.2e}")
                tx, tyt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda().t()
                peer = torch_ms(lambda: torch.sparse.sampled_addmm(ta, tx, tyt, beta=0.0), it)  # noqa: B023
                ratios.append(peer / ours)
                print(f"  {g:8} {m:7d} {a.nnz:10d} {f:5d} {ours:9.3f} {peer:9.3f} {ratio(peer, ours):>7}  {err:.1e}")
                del bufs
            except Exception as e:  # noqa: BLE001
                print(f"  {g:8} feat {f}: failed: {type(e).__name__}: {str(e)[:300]}")
    print(f"  geomean ratio (cuSPARSE / mlc) over {len(ratios)} cases: {geomean(ratios):.2f}x (goal >= 1.0x)")


def bench_bsr(dev: Device, widths: tuple[int, ...] = (128, 512)) -> None:
    import torch

    print("bsr (W @ X, W 1024 x 4096 f16 with 10% of its 16 x 16 blocks, X 4096 x N f16): ms per call; "
          "ratios = peer / mlc")
    print(f"  {'N':>5} {'mlc bsr':>9} {'torch bsr':>10} {'cuBLAS':>9} {'bsr/mlc':>8} {'cuBLAS/mlc':>11}  max rel err")
    w = block_sparse(1024, 4096, 16, 0.1)
    wb = w.tobsr(blocksize=(16, 16))
    wb.sort_indices()
    for nf in widths:
        try:
            k = sparse_kernel(dev, "bsrmm", "bsr:16", nf, "f16")
            rng = np.random.default_rng(nf)
            x = rng.standard_normal((4096, nf)).astype(np.float16)
            c = np.zeros((1024, nf), np.float16)
            arrays = [wb.indptr.astype(np.int32), wb.indices.astype(np.int32), wb.data.astype(np.float16), x, c]
            run, bufs = dev.launcher(k, arrays)
            it = 200
            ours = dev.time_ms(run, it)
            got = dev.get(bufs[-1], c).astype(np.float32)
            # the f16 weight's values, checked in f32 (scipy.sparse has no float16)
            want = w.toarray().astype(np.float16).astype(np.float32) @ x.astype(np.float32)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            if err > 2e-2:
                raise AssertionError(f"mlc bsrmm differs from scipy: max rel err {err:.2e}")
            tw = torch.from_numpy(w.toarray().astype(np.float16)).cuda()
            tx = torch.from_numpy(x).cuda()
            dense = torch_ms(lambda: tw @ tx, it)  # noqa: B023
            try:
                tbsr = tw.to_sparse_bsr((16, 16))
                bsr = torch_ms(lambda: tbsr @ tx, it)  # noqa: B023
            except Exception as e:  # noqa: BLE001 - torch's f16 BSR product may be missing
                print(f"    torch bsr f16 unavailable: {type(e).__name__}: {str(e)[:200]}")
                bsr = math.nan
            print(f"  {nf:5d} {ours:9.3f} {bsr:10.3f} {dense:9.3f} {ratio(bsr, ours):>8} {ratio(dense, ours):>11}  {err:.1e}")
        except Exception as e:  # noqa: BLE001
            print(f"  N {nf}: failed: {type(e).__name__}: {str(e)[:300]}")


def bench_sage(dev: Device, g: str = "reddit", fin: int = 128, fout: int = 128) -> None:
    import torch

    print(f"sage (one GraphSAGE layer, mean aggregation, {fin} -> {fout}, f32, {g}-sized R-MAT graph): ms per call; "
          "peer = torch_geometric SAGEConv; ratio = peer / mlc")
    from torch_geometric.nn import SAGEConv

    a = graph(g)
    m = a.shape[0]
    deg = np.diff(a.indptr)
    norm = sp.csr_matrix((np.repeat(1.0 / np.maximum(deg, 1), deg).astype(np.float32), a.indices, a.indptr), shape=a.shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, fin)).astype(np.float32)
    w_root = (rng.standard_normal((fin, fout)) / np.sqrt(fin)).astype(np.float32)
    w_neigh = (rng.standard_normal((fin, fout)) / np.sqrt(fin)).astype(np.float32)
    gemm, add = dense_kernels(dev, fin, fout)
    spmm = sparse_kernel(dev, "spmm", "csr", fout, "f32")
    p, q, r, out = (np.zeros((m, fout), np.float32) for _ in range(4))
    xb, wrb, wnb = dev.put(x), dev.put(w_root), dev.put(w_neigh)
    pb, qb, rb, ob = dev.put(p), dev.put(q), dev.put(r), dev.put(out)
    ipb, ixb, vb = dev.put(norm.indptr.astype(np.int32)), dev.put(norm.indices.astype(np.int32)), dev.put(norm.data)
    env_g = gemm.bind_dims([x.shape, w_root.shape, p.shape])
    env_s = spmm.bind_dims([norm.indptr.shape, norm.indices.shape, norm.data.shape, q.shape, r.shape])
    env_a = add.bind_dims([p.shape, r.shape, out.shape])

    held: list[Any] = []

    def ws(sizes: list[int]) -> list[int]:  # the SpMM's partial sums (rows split by nonzeros), allocated once
        if not held:
            held.extend(dev.drv.mem_alloc(max(1, n)) for n in sizes)
        return [int(h) for h in held]

    s = dev.stream

    def layer(tape: list[tuple[Any, ...]]) -> None:
        gemm.launch([int(xb), int(wrb), int(pb)], env_g, s, ws, tape)
        gemm.launch([int(xb), int(wnb), int(qb)], env_g, s, ws, tape)
        spmm.launch([int(ipb), int(ixb), int(vb), int(qb), int(rb)], env_s, s, ws, tape)
        add.launch([int(pb), int(rb), int(ob)], env_a, s, ws, tape)

    ours = dev.time_ms(dev.replay(layer), 20)
    got = dev.get(ob, out)
    rows = sample_rows(a, rng)
    want = x[rows] @ w_root + (norm[rows] @ x) @ w_neigh
    err = float(np.abs(got[rows] - want).max() / np.abs(want).max())
    if err > 1e-3:
        raise AssertionError(f"mlc GraphSAGE layer differs from numpy: max rel err {err:.2e}")
    conv = SAGEConv(fin, fout, aggr="mean", bias=False).cuda()
    with torch.no_grad():
        conv.lin_l.weight.copy_(torch.from_numpy(w_neigh.T.copy()))
        conv.lin_r.weight.copy_(torch.from_numpy(w_root.T.copy()))
    tx = torch.from_numpy(x).cuda()
    adj = torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64)),
                                  torch.ones(a.nnz), size=a.shape).cuda()
    with torch.no_grad():
        try:
            ref = conv(tx, adj)
            how = "adj_t = torch sparse CSR"
            peer = torch_ms(lambda: conv(tx, adj), 20)
        except Exception as e:  # noqa: BLE001 - older PyG: edge_index (its scatter path)
            print(f"    SAGEConv with a sparse CSR adjacency failed ({type(e).__name__}: {str(e)[:120]}); using edge_index")
            coo = a.tocoo()
            ei = torch.from_numpy(np.stack([coo.col, coo.row]).astype(np.int64)).cuda()  # messages j -> i
            ref = conv(tx, ei)
            how = "edge_index"
            peer = torch_ms(lambda: conv(tx, ei), 20)
    perr = float(np.abs(ref.cpu().numpy()[rows] - want).max() / np.abs(want).max())
    print(f"  mlc {ours:.3f} ms (max rel err {err:.1e}); PyG SAGEConv ({how}) {peer:.3f} ms (max rel err {perr:.1e}); "
          f"ratio {ratio(peer, ours).strip()} (goal >= 1.2x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sections", nargs="*", help="spmm, sddmm, bsr, sage (default: all)")
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--feats", default="32,128,512")
    ap.add_argument("--chunks", default="", help="MIN,MAX: sparse-gpu-schedule's min_chunk, max_chunks (a sweep)")
    args = ap.parse_args()
    if args.chunks:
        try:
            lo, hi = (int(x) for x in args.chunks.split(","))
        except ValueError:
            ap.error(f"--chunks wants MIN,MAX (two integers), got {args.chunks!r}")
        CHUNKS.update(min_chunk=lo, max_chunks=hi)
        print(f"chunks: min_chunk {lo}, max_chunks {hi}")
    sections = args.sections or ["spmm", "sddmm", "bsr", "sage"]
    graphs = [g for g in args.graphs.split(",") if g]
    feats = [int(f) for f in args.feats.split(",") if f]
    unknown = [g for g in graphs if g not in GRAPHS] + [x for x in sections if x not in ("spmm", "sddmm", "bsr", "sage")]
    if unknown:
        ap.error(f"unknown sections or graphs {unknown} (graphs: {', '.join(GRAPHS)})")
    dev = Device()
    import torch

    print(f"device: {torch.cuda.get_device_name()} ({dev.arch}); torch {torch.__version__}")
    t0 = time.perf_counter()
    for name in sections:
        try:
            {"spmm": lambda: bench_spmm(dev, graphs, feats), "sddmm": lambda: bench_sddmm(dev, graphs, feats),
             "bsr": lambda: bench_bsr(dev), "sage": lambda: bench_sage(dev)}[name]()
        except Exception as e:  # noqa: BLE001 - one section must not hide the others
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:400]}")
            traceback.print_exc(limit=3)
        print(f"  ({time.perf_counter() - t0:.0f} s so far)", flush=True)


if __name__ == "__main__":
    main()
