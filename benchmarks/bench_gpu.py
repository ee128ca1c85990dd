"""GPU benchmark, one run: mlc kernels beside PyTorch (cuBLAS / eager / torch.compile) on the same GPU.

Sections (each runs alone, `python benchmarks/bench_gpu.py rows`, and fails soft: an error is printed
and the next section runs):
- gemm: GEMM f16 at 1024^3, 2048^3 and 4096^3: TFLOP/s (median of 5 timed batches) of mlc's default GPU
  schedule (on sm_90a the wgmma template with its default producer), the best wgmma tile with each
  producer (TMA, cp.async; $MLC_BENCH_LOADERS, space-separated, narrows them), the best wmma tile, and
  torch.matmul (cuBLAS), with ratios to cuBLAS; f32 at 1024^3 and 4096^3: default and best register
  tile vs cuBLAS. Every variant is compiled first, nvcc runs in parallel.
- tf32: f32 GEMM at 1024^3 and 4096^3 on the TF32 tensor-core path ($MLC_CUDA_TF32=1) vs cuBLAS with
  allow_tf32, beside strict f32 (mlc and cuBLAS) and the errors against an fp64 reference.
- bandwidth: a fused GELU and a row softmax written in TIR: achieved GB/s (minimal traffic: read the
  input once, write the output once) vs torch.
- rows: the graph ops softmax, log_softmax and layer_norm over the last axis (one kernel each, f32 and
  f16, rows x 1024 / 4096 / 50257): GB/s vs torch.
- gpt: gpt_block (the zoo model) per-call latency at B=1 and B=8, device-resident inputs: mlc with CUDA
  graphs and without, the same block in PyTorch eager and under torch.compile(mode="reduce-overhead").
- models: whole models built for CUDA (f32 and f16) vs the same architecture and weights in PyTorch
  eager and torch.compile; needs artifacts made where onnx is installed: `python benchmarks/bench_gpu.py
  prepare` (no GPU needed, writes build/gpu_models/), carried to the GPU machine.
Needs pycuda, torch and an NVIDIA GPU (prepare: onnx, onnxruntime, nvcc). Run:
python benchmarks/bench_gpu.py [gemm] [tf32] [bandwidth] [rows] [gpt] [models] (no argument: all of them).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlc.passes.schedule.gpu_rules import default_gpu_schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _events_ms(fn, iters: int, stream, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Median over `reps` batches of the mean time per call in a batch of `iters` calls."""
    import pycuda.driver as drv

    for _ in range(3):
        fn()
    start, end = drv.Event(), drv.Event()
    times = []
    for _ in range(reps):
        start.record(stream)
        for _ in range(iters):
            fn()
        end.record(stream)
        end.synchronize()
        times.append(start.time_till(end) / iters)
    return float(np.median(times))


def _launcher(k, ptrs, env, stream, ws):  # type: ignore[no-untyped-def]
    return lambda: k.launch(ptrs, env, stream, ws)


def _torch_ms(fn, iters: int, *args, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    import torch

    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        s.record()
        for _ in range(iters):
            fn(*args)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / iters)
    return float(np.median(times))


def _device_args(lib_kernel, arrays):  # type: ignore[no-untyped-def]
    import pycuda.driver as drv

    bufs = [drv.to_device(a) for a in arrays]
    env = lib_kernel.bind_dims([a.shape for a in arrays])
    held: list = []

    def ws(sizes: list[int]) -> list[int]:
        if not held:
            held.extend(drv.mem_alloc(s) for s in sizes)
        return [int(h) for h in held]

    return bufs, env, ws


@contextlib.contextmanager
def _env(key: str, value: str | None):  # type: ignore[no-untyped-def]
    """$key set to `value` inside (None: left as it is)."""
    old = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _loader(name: str | None):  # type: ignore[no-untyped-def]
    """Codegen with the wgmma producer `name` (None: the default)."""
    from mlc.codegen.cuda_wgmma import LOADER_ENV

    return _env(LOADER_ENV, name)


def _build_all(jobs: list[tuple[int, str, object, str | None]], tf32: bool = False) -> dict:  # type: ignore[type-arg]
    """{(n, dtype, tile, loader): kernel or the exception} for GEMM variants: lowered here, nvcc in threads
    (`tf32`: f32 GEMMs on the TF32 tensor-core path, $MLC_CUDA_TF32=1 at codegen)."""
    from concurrent.futures import ThreadPoolExecutor

    from cuda_helpers import matmul
    from mlc.codegen.cuda import lower_to_cuda
    from mlc.codegen.cuda_gemm import TF32_ENV
    from mlc.codegen.cuda_jit import compile_source
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule
    from mlc.runtime.cuda import CudaLibrary, device_arch

    arch, srcs = device_arch(), {}
    for n, dt, cfg, ld in jobs:
        with _loader(ld), _env(TF32_ENV, "1" if tf32 else "0"):
            srcs[(n, dt, cfg, ld)] = lower_to_cuda([default_gpu_schedule(matmul("mm", n, n, n, dt))], arch, cfg)  # type: ignore[arg-type]

    def build(key):  # type: ignore[no-untyped-def]
        try:
            return key, compile_source(srcs[key])
        except Exception as e:  # noqa: BLE001 - one broken tile must not hide the others
            return key, e

    out: dict = {}  # type: ignore[type-arg]
    with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as pool:
        for key, cubin in pool.map(build, list(srcs)):
            try:
                out[key] = cubin if isinstance(cubin, Exception) else \
                    CudaLibrary(cubin, srcs[key].metadata(), srcs[key].source).kernel("mm")
            except Exception as e:  # noqa: BLE001
                out[key] = e
    return out


def _time_gemm(k, a: np.ndarray, b: np.ndarray, stream):  # type: ignore[no-untyped-def]
    """(ms per call, result) of one compiled GEMM kernel (raises what building it raised)."""
    import pycuda.driver as drv

    if isinstance(k, Exception):
        raise k
    n = a.shape[0]
    c = np.zeros((n, n), a.dtype)
    bufs, env, ws = _device_args(k, [a, b, c])
    ms = _events_ms(_launcher(k, [int(x) for x in bufs], env, stream, ws), 20 if n == 4096 else 100, stream)
    drv.memcpy_dtoh(c, bufs[2])
    return ms, c


def _best(built: dict, keys: list, a: np.ndarray, b: np.ndarray, stream):  # type: ignore[no-untyped-def, type-arg]
    """(ms, tile) of the fastest variant among `keys`, skipping those that fail to build or launch."""
    best: tuple[float, object] = (math.inf, None)
    for key in keys:
        try:
            best = min(best, (_time_gemm(built[key], a, b, stream)[0], key[2]), key=lambda x: x[0])
        except Exception as e:  # noqa: BLE001 - one broken tile must not hide the others
            print(f"    tile {key[2]} ({key[3] or 'default'} producer) failed: {type(e).__name__}: {str(e)[:200]}")
    return best


def _tf(flops: float, ms: float) -> str:
    return f"{flops / ms / 1e9:9.1f}" if math.isfinite(ms) else f"{'-':>9}"


def bench_gemm() -> None:
    import pycuda.driver as drv
    import torch
    from mlc.codegen.cuda_gemm import SIMT_CONFIGS, TC_CONFIGS
    from mlc.codegen.cuda_wgmma import WGMMA_CONFIGS, WGMMA_LOADERS, wgmma_loader
    from mlc.runtime.cuda import device_arch

    stream = drv.Stream()
    arch = device_arch()
    loaders = [x for x in os.environ.get("MLC_BENCH_LOADERS", " ".join(WGMMA_LOADERS)).split() if x in WGMMA_LOADERS]
    cases = (("f16", np.float16, (1024, 2048, 4096)), ("f32", np.float32, (1024, 4096)))
    jobs: list[tuple[int, str, object, str | None]] = []
    for dt, _, sizes in cases:
        for n in sizes:
            jobs.append((n, dt, None, None))
            if dt == "f16" and arch == "sm_90a":
                jobs += [(n, dt, cfg, ld) for ld in loaders for cfg in WGMMA_CONFIGS]
            jobs += [(n, dt, cfg, None) for cfg in (TC_CONFIGS if dt == "f16" else SIMT_CONFIGS)]
    t0 = time.perf_counter()
    built = _build_all(jobs)
    print(f"GEMM (C = A @ B, square, {arch}), TFLOP/s, median of 5 timed batches; ratios are to cuBLAS (torch.matmul);"
          f" {len(jobs)} variants built in {time.perf_counter() - t0:.0f} s; default wgmma producer: {wgmma_loader()}")
    lcols = "".join(f" {'wg-' + ld + '*':>12}" for ld in loaders)
    print(f"  {'dtype':5} {'size':>5} {'default':>9}{lcols} {'wmma*':>9} {'cuBLAS':>9} {'default/cuBLAS':>15} "
          f"{'best/cuBLAS':>12}  (* best tile; max err = max|C - fp32 ref| / max|ref| of the default)")
    for dt, np_dt, sizes in cases:
        for n in sizes:
            rng = np.random.default_rng(0)
            a = rng.standard_normal((n, n)).astype(np_dt)
            b = rng.standard_normal((n, n)).astype(np_dt)
            default_ms, c = _time_gemm(built[(n, dt, None, None)], a, b, stream)
            hopper = dt == "f16" and arch == "sm_90a"
            wg = {ld: _best(built, [(n, dt, cfg, ld) for cfg in WGMMA_CONFIGS], a, b, stream) if hopper
                  else (math.inf, None) for ld in loaders}
            mm = _best(built, [(n, dt, cfg, None) for cfg in (TC_CONFIGS if dt == "f16" else SIMT_CONFIGS)], a, b, stream)
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            ref = (ta.float() @ tb.float()).cpu().numpy()
            err = float(np.abs(c.astype(np.float32) - ref).max() / np.abs(ref).max())
            tms = _torch_ms(torch.matmul, 20 if n == 4096 else 100, ta, tb)
            fl = 2.0 * n ** 3
            best = min(*wg.values(), mm, (default_ms, None), key=lambda x: x[0])
            wcols = "".join(f" {_tf(fl, wg[ld][0]):>12}" for ld in loaders)
            tiles = "; ".join(f"best wgmma-{ld} tile {wg[ld][1]}" + (f" ({tms / wg[ld][0]:.3f}x)" if hopper else "")
                              for ld in loaders)
            print(f"  {dt:5} {n:5d} {_tf(fl, default_ms)}{wcols} {_tf(fl, mm[0])} {_tf(fl, tms)} {tms / default_ms:14.3f}x "
                  f"{tms / best[0]:11.3f}x  max err {err:.1e}; {tiles}; best {'wmma' if dt == 'f16' else 'simt'}"
                  f" tile {mm[1]}; ms: default {default_ms:.3f}, cuBLAS {tms:.3f}")


def bench_tf32() -> None:
    """f32 GEMM on the TF32 tensor-core path ($MLC_CUDA_TF32=1) vs cuBLAS with allow_tf32, and strict f32."""
    import pycuda.driver as drv
    import torch
    from mlc.codegen.cuda_gemm import TC_CONFIGS
    from mlc.runtime.cuda import device_arch

    stream = drv.Stream()
    sizes = (1024, 4096)
    jobs = [(n, "f32", cfg, None) for n in sizes for cfg in (None, *TC_CONFIGS)]
    t0 = time.perf_counter()
    built, strict = _build_all(jobs, tf32=True), _build_all([(n, "f32", None, None) for n in sizes])
    print(f"f32 GEMM, TF32 tensor cores ({device_arch()}), TFLOP/s, median of 5 timed batches; cuBLAS with "
          f"torch.backends.cuda.matmul.allow_tf32=True; {len(jobs) + len(sizes)} variants built in "
          f"{time.perf_counter() - t0:.0f} s; err = max|C - fp64 ref| / max|ref|")
    print(f"  {'size':>5} {'mlc tf32':>9} {'best tile':>9} {'cuBLAS tf32':>12} {'ratio':>7} {'best ratio':>11} "
          f"{'mlc strict':>11} {'cuBLAS f32':>11}  errors")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for n in sizes:
            rng = np.random.default_rng(0)
            a = rng.standard_normal((n, n)).astype(np.float32)
            b = rng.standard_normal((n, n)).astype(np.float32)
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            ref = (ta.double() @ tb.double()).cpu().numpy()
            scale = float(np.abs(ref).max())
            ms, c = _time_gemm(built[(n, "f32", None, None)], a, b, stream)
            best = _best(built, [(n, "f32", cfg, None) for cfg in TC_CONFIGS], a, b, stream)
            sms, sc = _time_gemm(strict[(n, "f32", None, None)], a, b, stream)
            iters = 20 if n == 4096 else 100
            torch.backends.cuda.matmul.allow_tf32 = True
            tms = _torch_ms(torch.matmul, iters, ta, tb)
            terr = float(np.abs(torch.matmul(ta, tb).cpu().numpy() - ref).max()) / scale
            torch.backends.cuda.matmul.allow_tf32 = False
            tms32 = _torch_ms(torch.matmul, iters, ta, tb)
            fl = 2.0 * n ** 3
            print(f"  {n:5d} {_tf(fl, ms)} {_tf(fl, best[0])} {_tf(fl, tms):>12} {tms / ms:6.3f}x {tms / best[0]:10.3f}x "
                  f"{_tf(fl, sms):>11} {_tf(fl, tms32):>11}  mlc tf32 {np.abs(c - ref).max() / scale:.1e}, cuBLAS tf32 "
                  f"{terr:.1e}, mlc strict {np.abs(sc - ref).max() / scale:.1e}; best tile {best[1]}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


ROW_CASES = ((8192, 1024), (8192, 4096), (1024, 50257))
ROW_OPS = ("softmax", "log_softmax", "layer_norm")


def _row_inputs(op: str, rows: int, c: int, np_dt: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, c)).astype(np_dt)
    extra = [rng.standard_normal(c).astype(np_dt), rng.standard_normal(c).astype(np_dt)] if op == "layer_norm" else []
    return [x, *extra, np.zeros_like(x)]


def _time_row(k, arrays: list[np.ndarray], stream) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    """(ms per call, the output) of row kernel `k` on `arrays` (inputs, then the output)."""
    import pycuda.driver as drv

    bufs, env, ws = _device_args(k, arrays)
    ms = _events_ms(_launcher(k, [int(b) for b in bufs], env, stream, ws), 20, stream)
    got = np.empty_like(arrays[-1])
    drv.memcpy_dtoh(got, bufs[-1])
    return ms, got


def bench_rows() -> None:
    """softmax, log-softmax and layernorm over the last axis (one kernel per op) vs torch, f32 and f16;
    then every thread count of the row-chain schedule (its one decision), to pick the defaults from."""
    import pycuda.driver as drv
    import torch
    import torch.nn.functional as F
    from cuda_helpers import row_op_func
    from mlc.ir.expr import Var
    from mlc.passes.schedule.gpu_rules import ROW_THREAD_CHOICES, sample_gpu_schedule
    from mlc.runtime.cuda import compile_cuda

    cases = [(op, dt, c) for dt in ("f32", "f16") for op in ROW_OPS for c in sorted({c for _, c in ROW_CASES})]
    t0 = time.perf_counter()
    lib = compile_cuda([default_gpu_schedule(row_op_func(op, (Var("rows"), c), dt, f"{op}_{dt}_{c}"))
                        for op, dt, c in cases])
    print(f"row reductions over the last axis, GB/s of minimal traffic (read x once, write y once), "
          f"median of 5 timed batches; built in {time.perf_counter() - t0:.0f} s")
    stream = drv.Stream()
    tfn = {"softmax": lambda x, g, b: torch.softmax(x, -1), "log_softmax": lambda x, g, b: torch.log_softmax(x, -1),
           "layer_norm": lambda x, g, b: F.layer_norm(x, (x.shape[-1],), g, b, 1e-5)}
    torch_ms: dict[tuple[str, str, int], float] = {}
    for dt in ("f32", "f16"):
        np_dt = np.float32 if dt == "f32" else np.float16
        for op in ROW_OPS:
            for rows, c in ROW_CASES:
                name = f"{op}_{dt}_{c}"
                try:
                    k = lib.kernel(name)
                    nlaunch = len(k.launches)
                    arrays = _row_inputs(op, rows, c, np_dt)
                    ms, got = _time_row(k, arrays, stream)
                    targs = [torch.from_numpy(v).cuda() for v in arrays[:-1]] + [None] * (4 - len(arrays))
                    want = tfn[op](*targs)
                    err = float(np.abs(got.astype(np.float32) - want.float().cpu().numpy()).max())
                    tms = torch_ms[(op, dt, c)] = _torch_ms(tfn[op], 20, *targs)
                    nbytes = 2 * arrays[0].nbytes
                    print(f"  {op:11} {dt} {rows:5d} x {c:5d}: mlc {nbytes / ms / 1e6:7.0f} GB/s ({ms:.3f} ms, "
                          f"{nlaunch} kernel{'s' if nlaunch != 1 else ''})   torch {nbytes / tms / 1e6:7.0f} GB/s "
                          f"({tms:.3f} ms)   ratio {tms / ms:.2f}x   max abs diff {err:.1e}")
                except Exception as e:  # noqa: BLE001 - one case must not hide the others
                    print(f"  {op:11} {dt} {rows:5d} x {c:5d}: failed: {type(e).__name__}: {str(e)[:300]}")
    # the sweep: ratio to torch per thread count (threads per row), * marks the default
    t0 = time.perf_counter()
    sweep = compile_cuda([sample_gpu_schedule(row_op_func(op, (Var("rows"), c), dt, f"{op}_{dt}_{c}_t{t}"),
                                              decisions=[i]).func
                          for op, dt, c in cases for i, t in enumerate(ROW_THREAD_CHOICES)])
    print(f"  threads per row (the row-chain schedule's decision): ratio torch/mlc for each; built in "
          f"{time.perf_counter() - t0:.0f} s")
    for dt in ("f32", "f16"):
        np_dt = np.float32 if dt == "f32" else np.float16
        for op in ROW_OPS:
            for rows, c in ROW_CASES:
                try:
                    arrays = _row_inputs(op, rows, c, np_dt)
                    default = lib.kernel(f"{op}_{dt}_{c}").launches[0].block[0]
                    cells = []
                    for t in ROW_THREAD_CHOICES:
                        ms, _ = _time_row(sweep.kernel(f"{op}_{dt}_{c}_t{t}"), arrays, stream)
                        cells.append(f"{t:4d}{'*' if t == default else ' '} {torch_ms[(op, dt, c)] / ms:5.2f}x")
                    print(f"  {op:11} {dt} {rows:5d} x {c:5d}: " + "  ".join(cells))
                except Exception as e:  # noqa: BLE001 - one case must not hide the others
                    print(f"  {op:11} {dt} {rows:5d} x {c:5d}: sweep failed: {type(e).__name__}: {str(e)[:300]}")


def _gelu_func(rows: int, cols: int):  # type: ignore[no-untyped-def]
    from mlc.ir.expr import Call
    from mlc.ir.tir_builder import build, compute, placeholder

    x = placeholder("x", (rows, cols))
    y = compute("y", (rows, cols), lambda i, j: x[i, j] * 0.5 * (Call("erf", (x[i, j] * (1 / math.sqrt(2)),), "f32") + 1.0))
    return build("gelu", [x], [y])


def _softmax_func(rows: int, cols: int):  # type: ignore[no-untyped-def]
    from mlc.ir.expr import Bin, Call
    from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rmax, rsum

    x = placeholder("x", (rows, cols))
    r1, r2 = reduce_axis(cols, "r1"), reduce_axis(cols, "r2")
    mx = compute("mx", (rows,), lambda i: rmax(x[i, r1], r1))
    e = compute("e", (rows, cols), lambda i, j: Call("exp", (x[i, j] - mx[i],), "f32"))
    s = compute("s", (rows,), lambda i: rsum(e[i, r2], r2))
    y = compute("y", (rows, cols), lambda i, j: Bin("div", e[i, j], s[i]))
    return build("softmax", [x], [y])


def bench_bandwidth() -> None:
    import pycuda.driver as drv
    import torch
    from mlc.runtime.cuda import compile_cuda

    rows, cols = 8192, 4096
    nbytes = 2 * rows * cols * 4
    print(f"memory-bound kernels, f32 {rows}x{cols}, GB/s of minimal traffic (read x + write y = {nbytes / 2**20:.0f} MiB)")
    stream = drv.Stream()
    x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    tx = torch.from_numpy(x).cuda()
    cases = (("gelu (1 kernel)", _gelu_func(rows, cols), torch.nn.functional.gelu, (tx,)),
             ("softmax (4 kernels)", _softmax_func(rows, cols), torch.softmax, (tx, -1)))
    for name, f, tfn, targs in cases:
        lib = compile_cuda([default_gpu_schedule(f)])
        k = lib.kernel(f.name)
        y = np.zeros_like(x)
        bufs, env, ws = _device_args(k, [x, y])
        ptrs = [int(b) for b in bufs]
        ms = _events_ms(_launcher(k, ptrs, env, stream, ws), 50, stream)
        got = np.empty_like(y)
        drv.memcpy_dtoh(got, bufs[1])
        err = float(np.abs(got - tfn(*targs).cpu().numpy()).max())
        tms = _torch_ms(tfn, 50, *targs)
        print(f"  {name:20} mlc {nbytes / ms / 1e6:8.0f} GB/s ({ms:.3f} ms)   torch {nbytes / tms / 1e6:8.0f} GB/s "
              f"({tms:.3f} ms)   ratio {tms / ms:.2f}x   max abs diff {err:.1e}")


def _float_consts(consts: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The float weights of a zoo.GraphBuilder model (named `<role>_<n>`, n in creation order), in order."""
    keys = sorted((k for k, w in consts.items() if w.dtype == np.float32 and w.ndim >= 1),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    return [np.ascontiguousarray(consts[k]) for k in keys]


def _torch_gpt(consts: dict[str, np.ndarray], d: int = 32, heads: int = 4, t_max: int = 64,
               dtype: str = "float32"):  # type: ignore[no-untyped-def]
    """zoo.gpt_layer stacked (the zoo gpt_block: one layer) written in PyTorch eager, with the model's
    weights (12 per layer in creation order: LN1, QKV, out-proj, LN2, MLP up, MLP down)."""
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, dtype)
    fl = [torch.from_numpy(w).cuda().to(dt) for w in _float_consts(consts)]
    layers = [fl[i:i + 12] for i in range(0, len(fl), 12)]
    mask = torch.tril(torch.ones(t_max, t_max, dtype=torch.bool, device="cuda"))
    neg = torch.tensor(-1e9 if dt == torch.float32 else -3e4, device="cuda", dtype=dt)

    def layer(x, w):  # type: ignore[no-untyped-def]
        g1, b1, wqkv, bqkv, wo, bo, g2, b2, w1, bb1, w2, bb2 = w
        bsz, t, _ = x.shape
        h = F.layer_norm(x, (d,), g1, b1, 1e-5)
        q, k, v = (h @ wqkv + bqkv).split(d, dim=-1)
        q, k, v = (z.reshape(bsz, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)
        att = torch.where(mask[:t, :t], att, neg)
        y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(bsz, t, d)
        x1 = x + (y @ wo + bo)
        m = F.layer_norm(x1, (d,), g2, b2, 1e-5) @ w1 + bb1
        gelu = m * (torch.erf(m / math.sqrt(2)) + 1.0) * 0.5
        return x1 + (gelu @ w2 + bb2)

    def run(x):  # type: ignore[no-untyped-def]
        for w in layers:
            x = layer(x, w)
        return x

    return run


def bench_gpt_block() -> None:
    """gpt_block per-call latency: mlc with CUDA graphs (the default) and without ($MLC_CUDA_GRAPHS=0),
    torch eager and torch.compile(mode="reduce-overhead") (CUDA graphs too), the same weights."""
    import torch
    from cuda_helpers import zoo_module
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import GRAPHS_ENV, CudaVM, to_device

    mod, consts = zoo_module("gpt_block")
    lib = compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()])
    vm, vm_eager = CudaVM(mod, consts, lib), CudaVM(mod, consts, lib)
    tgpt = _torch_gpt(consts)
    try:
        tcomp = torch.compile(tgpt, mode="reduce-overhead")
    except Exception as e:  # noqa: BLE001 - torch.compile is optional (needs triton)
        tcomp, why = None, f"{type(e).__name__}: {str(e)[:200]}"
    print("gpt_block latency (device-resident input, wall time per call incl. launch overhead and a stream sync; "
          "ratios: peer time / mlc time)")
    for bsz, t in ((1, 64), (8, 64)):
        x = np.random.default_rng(1).standard_normal((bsz, t, 32)).astype(np.float32)
        dx, tx = to_device(x), torch.from_numpy(x).cuda()
        with _env(GRAPHS_ENV, "1"):
            ours = vm.run_device({"x": dx})["y"].get()
            ms = _wall_ms(_run_mlc, vm, dx)
            graphs = vm.runner.graph_cache.launches if vm.runner._graphs is not None else 0
        with _env(GRAPHS_ENV, "0"):
            ems = _wall_ms(_run_mlc, vm_eager, dx)
        with torch.no_grad():
            ref = tgpt(tx).cpu().numpy()
            tms = _wall_ms(_run_torch, tgpt, tx)
            cms, cnote = math.inf, ""
            if tcomp is not None:
                try:
                    for _ in range(3):
                        tcomp(tx)  # compiles and records its graphs
                    cms = _wall_ms(_run_torch, tcomp, tx)
                except Exception as e:  # noqa: BLE001
                    cnote = f" (torch.compile failed: {type(e).__name__}: {str(e)[:200]})"
            else:
                cnote = f" (torch.compile unavailable: {why})"
        cstr = f"{cms * 1e3:8.1f} us ({cms / ms:.2f}x)" if math.isfinite(cms) else f"{'-':>8}"
        print(f"  B={bsz} T={t}: mlc graphs {ms * 1e3:8.1f} us ({graphs} graph launches)   mlc no graphs "
              f"{ems * 1e3:8.1f} us ({ems / ms:.2f}x)   torch eager {tms * 1e3:8.1f} us ({tms / ms:.2f}x)   "
              f"torch.compile reduce-overhead {cstr}   (max abs diff vs torch {np.abs(ours - ref).max():.1e}){cnote}")


def _run_mlc(vm, dx) -> None:  # type: ignore[no-untyped-def]
    vm.run_device({"x": dx})
    vm.synchronize()


def _run_torch(fn, tx) -> None:  # type: ignore[no-untyped-def]
    import torch

    fn(tx)
    torch.cuda.synchronize()


def _wall_ms(fn, *args, iters: int = 200) -> float:  # type: ignore[no-untyped-def]
    for _ in range(10):
        fn(*args)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


# ---- whole models ---------------------------------------------------------------------------------
MODELS_DIR = Path(__file__).resolve().parent / "gpu_models"
SMALL = 4096  # constants up to this many elements are stored; larger ones are regenerated from their scale
MODEL_RUNS = {"resnet50": ((1, 32), "x", (3, 224, 224)), "bert_base": ((1, 32), "x", (128, 768))}


def _resnet50_onnx():  # type: ignore[no-untyped-def]
    """ResNet-50 (v1.5: stride on the 3x3) at 224x224 with batch norms, built with zoo.GraphBuilder."""
    from mlc.frontend.zoo import GraphBuilder

    b = GraphBuilder("resnet50", seed=50)
    y = b.conv_bn(b.input("x", ["N", 3, 224, 224]), 3, 64, 7, stride=2)
    y = b.n("MaxPool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            h = b.conv_bn(b.conv_bn(y, c_in, width, 1), width, width, 3, stride=s)
            h = b.conv_bn(h, width, width * 4, 1, relu=False)
            sc = b.conv_bn(y, c_in, width * 4, 1, stride=s, relu=False) if i == 0 else y
            y, c_in = b.n("Relu", b.n("Add", h, sc)), width * 4
    y = b.n("Flatten", b.n("GlobalAveragePool", y), axis=1)
    b.node("Gemm", [y, b.weight((1000, 2048)), b.weight((1000,), scale=0.1)], out="y", transB=1)
    b.output("y", ["N", 1000])
    return b.model()


def _bert_base_onnx():  # type: ignore[no-untyped-def]
    """A BERT-base-shaped stack: 12 zoo.gpt_layer layers (d 768, 12 heads, MLP 3072; the layer's causal mask)."""
    from mlc.frontend.zoo import GraphBuilder, gpt_layer

    b = GraphBuilder("bert_base", seed=12)
    x = b.input("x", ["B", "T", 768])
    for i in range(12):
        x = gpt_layer(b, x, 768, 12, 128, out="y" if i == 11 else None)
    b.output("y", ["B", "T", 768])
    return b.model()


def _regenerate(meta: dict, small: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    """The model's constants: the stored small ones, the large ones drawn again from their scale."""
    consts = dict(small)
    for i, (key, (shape, dtype, mean, std)) in enumerate(sorted(meta["large"].items())):
        consts[key] = np.random.default_rng(1000 + i).normal(mean, std, shape).astype(dtype)
    return consts


def _ref_input(name: str) -> np.ndarray:
    """The batch-1 input onnxruntime's reference output is for (bert_base: T = 16)."""
    _, _, shape = MODEL_RUNS[name]
    return np.random.default_rng(7).standard_normal((1, 16, shape[-1]) if name == "bert_base" else (1, *shape)
                                                    ).astype(np.float32)


def prepare_models() -> None:
    """Where onnx and onnxruntime are (no GPU needed): each model imported to mlc IR, written with its
    small constants, the scale of its large ones and onnxruntime's output for a batch-1 input on the
    regenerated weights, to benchmarks/gpu_models/ (the GPU machine has no onnx)."""
    import json

    import onnxruntime as ort
    from mlc.frontend.onnx_import import import_onnx
    from mlc.ir.printer import print_module
    from onnx import numpy_helper

    MODELS_DIR.mkdir(exist_ok=True)
    for name, make in (("resnet50", _resnet50_onnx), ("bert_base", _bert_base_onnx)):
        t0 = time.perf_counter()
        model = make()
        mod, consts = import_onnx(model)
        small = {k: v for k, v in consts.items() if v.size <= SMALL or v.dtype.kind != "f"}
        meta = {"large": {k: [list(v.shape), str(v.dtype), float(v.mean()), float(v.std())]
                          for k, v in consts.items() if k not in small}}
        regen = _regenerate(meta, small)
        by_name = {t.name: t for t in model.graph.initializer}
        for key, arr in regen.items():  # onnx initializer names are the constants' keys for these builders
            if key in by_name and key in meta["large"]:
                by_name[key].CopyFrom(numpy_helper.from_array(arr, key))
        inp = MODEL_RUNS[name][1]
        x = _ref_input(name)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {inp: x})[0]
        (MODELS_DIR / f"{name}.ir").write_text(print_module(mod))
        (MODELS_DIR / f"{name}.json").write_text(json.dumps(meta, indent=0, sort_keys=True))
        np.savez_compressed(MODELS_DIR / f"{name}.npz", **{f"c_{k}": v for k, v in small.items()},
                            ref_out=want)
        print(f"{name}: {len(consts)} constants ({len(meta['large'])} regenerated), ref output {want.shape}, "
              f"{time.perf_counter() - t0:.0f} s -> {MODELS_DIR}")


def load_model(name: str) -> tuple[Any, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(module, constants, reference input, onnxruntime's output) of a prepared model."""
    import json

    from mlc.ir.parser import parse_module

    path = MODELS_DIR / f"{name}.ir"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `python benchmarks/bench_gpu.py prepare` where onnx is installed")
    data = np.load(MODELS_DIR / f"{name}.npz", allow_pickle=False)
    small = {k[2:]: data[k] for k in data.files if k.startswith("c_")}
    meta = json.loads((MODELS_DIR / f"{name}.json").read_text())
    return parse_module(path.read_text()), _regenerate(meta, small), _ref_input(name), data["ref_out"]


def build_model(mod: Any, consts: dict[str, np.ndarray], f16: bool) -> tuple[Any, dict[str, np.ndarray]]:
    """The build-cuda pipeline (after `mlc amp` for f16) -> (scheduled module, its constants)."""
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext, get_pass

    from mlc.compiler import default_pipeline, with_memory_constants

    mod = with_memory_constants(mod, consts)
    ctx = PassContext(constants=dict(consts), search_dirs=[Path.cwd()], target="cuda")
    if f16:
        info = get_pass("amp")
        assert info is not None
        mod = info.fn(mod, ctx, **info.validate_options({}))
    mod, _ = run_pipeline(mod, load_pipeline(default_pipeline("build-cuda")), ctx, verify_each=False)
    return mod, ctx.constants or consts


def _torch_resnet50(consts: dict[str, np.ndarray], dtype: str):  # type: ignore[no-untyped-def]
    """_resnet50_onnx in PyTorch with the same weights (conv, then the batch norm's four, per conv_bn)."""
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, dtype)
    fl = iter([torch.from_numpy(w).cuda().to(dt) for w in _float_consts(consts)])

    def conv_bn(stride: int, relu: bool = True):  # type: ignore[no-untyped-def]
        w, g, be, mu, var = (next(fl) for _ in range(5))
        return lambda x: (F.relu if relu else (lambda z: z))(
            F.batch_norm(F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2), mu, var, g, be, False, 0.0, 1e-5))

    stem = conv_bn(2)
    blocks = []
    for _width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            s = stride if i == 0 else 1
            c1, c2, c3 = conv_bn(1), conv_bn(s), conv_bn(1, relu=False)
            sc = conv_bn(s, relu=False) if i == 0 else None
            blocks.append((c1, c2, c3, sc))
    fw, fb = next(fl), next(fl)

    def run(x):  # type: ignore[no-untyped-def]
        y = F.max_pool2d(stem(x), 3, 2, 1)
        for c1, c2, c3, sc in blocks:
            y = F.relu(c3(c2(c1(y))) + (sc(y) if sc is not None else y))
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1), fw, fb)

    return run


def bench_models() -> None:
    """Prepared whole models (prepare_models) built for CUDA, f32 and f16 (`mlc amp`; ResNet-50 also f32
    with TF32 GEMMs), vs the same architecture and weights in torch eager and torch.compile;
    $MLC_BENCH_MODELS narrows the names, $MLC_BENCH_VARIANTS the variants (f32, f16, f32_tf32), and
    $MLC_BENCH_COMPILE=0 leaves torch.compile out."""
    import torch
    from mlc.ir.tir import GemmCall
    from mlc.ir.tir_visit import walk
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM, to_device

    names = os.environ.get("MLC_BENCH_MODELS", " ".join(MODEL_RUNS)).split()
    print("whole models, per-call latency (device-resident input, wall time incl. a stream sync), ratios: peer / mlc; "
          "err: mlc f32 vs onnxruntime at batch 1 (max abs diff / max |ref|); f16 vs mlc f32; torch's f32 convolutions "
          f"{'may use TF32 (cudnn.allow_tf32)' if torch.backends.cudnn.allow_tf32 else 'are strict f32'}; mlc's f32 is strict, "
          "'f32 tf32' runs its GEMMs on TF32 tensor cores ($MLC_CUDA_TF32=1)")
    for name in names:
        try:
            mod0, consts0, ref_in, ref_out = load_model(name)
        except Exception as e:  # noqa: BLE001
            print(f"  {name}: {type(e).__name__}: {e}")
            continue
        batches, _inp, shape = MODEL_RUNS[name]
        out32 = None
        variants = [("f32", False, "0"), ("f16", True, "0")]
        if name == "resnet50":  # torch's f32 convolutions may run on TF32 tensor cores: mlc's like-for-like build
            variants.append(("f32 tf32", False, "1"))
        keep = os.environ.get("MLC_BENCH_VARIANTS")  # e.g. "f32 f16": narrows the variants (a short GPU call)
        variants = [v for v in variants if keep is None or v[0].replace(" ", "_") in keep.split()]
        for tag, f16, tf32 in variants:
            label = f"{name} {tag}"
            try:
                t0 = time.perf_counter()
                with _env("MLC_CUDA_TF32", tf32):  # read when the GEMM stages are emitted
                    mod, consts = build_model(mod0, consts0, f16)
                    vm = CudaVM(mod, consts, compile_cuda(mod.prim_functions()))
                built_s = time.perf_counter() - t0
                tdt = "float16" if f16 else "float32"
                tm = _torch_resnet50(consts0, tdt) if name == "resnet50" else _torch_gpt(consts0, 768, 12, 128, tdt)
                got = vm.run({"x": ref_in})["y"]
                if f16:
                    err = (float(np.abs(got.astype(np.float32) - out32).max() / np.abs(out32).max())
                           if out32 is not None else math.nan)
                else:
                    out32 = got if out32 is None else out32
                    err = float(np.abs(got - ref_out).max() / np.abs(ref_out).max())
                gemms = sum(any(isinstance(s, GemmCall) for _, s in walk(f.body)) for f in mod.prim_functions())
                print(f"  {label}: built in {built_s:.0f} s, {len(mod.prim_functions())} kernels' programs "
                      f"({gemms} on a GEMM template), err {err:.1e}")
            except Exception as e:  # noqa: BLE001
                print(f"  {label}: failed to build or run: {type(e).__name__}: {str(e)[:300]}")
                continue
            try:
                if os.environ.get("MLC_BENCH_COMPILE", "1") == "0":  # skip torch.compile (tens of seconds a variant)
                    raise RuntimeError("skipped ($MLC_BENCH_COMPILE=0)")
                tc = torch.compile(tm)
            except Exception as e:  # noqa: BLE001
                tc = None
                print(f"    torch.compile unavailable: {type(e).__name__}: {str(e)[:200]}")
            for bsz in batches:
                x = np.random.default_rng(bsz).standard_normal((bsz, *shape)).astype(np.float32)
                dx, tx = to_device(x), torch.from_numpy(x).cuda().to(getattr(torch, tdt))
                try:
                    ms = _wall_ms(_run_mlc, vm, dx, iters=30)
                    with torch.no_grad():
                        tms = _wall_ms(_run_torch, tm, tx, iters=30)
                        cms, note = math.inf, ""
                        if tc is not None:
                            try:
                                cms = _wall_ms(_run_torch, tc, tx, iters=30)
                            except Exception as e:  # noqa: BLE001
                                note = f" (torch.compile failed: {type(e).__name__}: {str(e)[:150]})"
                    cstr = f"{cms:8.3f} ms ({cms / ms:.2f}x)" if math.isfinite(cms) else f"{'-':>8}"
                    print(f"    batch {bsz:3d}: mlc {ms:8.3f} ms   torch eager {tms:8.3f} ms ({tms / ms:.2f}x)   "
                          f"torch.compile {cstr}{note}")
                except Exception as e:  # noqa: BLE001
                    print(f"    batch {bsz:3d}: failed: {type(e).__name__}: {str(e)[:300]}")


def main(argv: list[str]) -> None:
    if argv == ["prepare"]:
        prepare_models()
        return
    parts = {"gemm": bench_gemm, "tf32": bench_tf32, "bandwidth": bench_bandwidth, "rows": bench_rows,
             "gpt": bench_gpt_block, "models": bench_models}
    unknown = [a for a in argv if a not in parts]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(parts)} (or prepare, alone)")
    import pycuda.driver as drv
    import torch
    from mlc.runtime.cuda import cuda_context

    torch.cuda.init()
    cuda_context()
    print(f"device: {drv.Device(0).name()} (torch {torch.__version__}, CUDA driver {drv.get_driver_version()})")
    for name in argv or list(parts):
        t0 = time.perf_counter()
        try:
            parts[name]()
        except Exception as e:  # noqa: BLE001 - report and go on with the other parts
            import traceback

            print(f"  {name} failed: {type(e).__name__}: {e}")
            traceback.print_exc(limit=4)
        print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
