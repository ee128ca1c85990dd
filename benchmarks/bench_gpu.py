"""GPU benchmark, one run: mlc kernels beside PyTorch (cuBLAS / eager) on the same GPU.

- GEMM f16 at 1024^3, 2048^3 and 4096^3: TFLOP/s (median of 5 timed batches) of mlc's default GPU
  schedule (on sm_90a the wgmma template with its default producer), the best wgmma tile with each
  producer (TMA, cp.async; $MLC_BENCH_LOADERS, space-separated, narrows them), the best wmma tile, and
  torch.matmul (cuBLAS), with ratios to cuBLAS; f32 at 1024^3 and 4096^3: default and best register
  tile vs cuBLAS. Every variant is compiled first, nvcc runs in parallel.
- Memory-bound kernels: a fused GELU (one kernel) and a row softmax: achieved GB/s (minimal traffic:
  read the input once, write the output once) vs torch.
- gpt_block (the zoo model) latency, device-resident inputs, vs the same block in PyTorch eager.
Needs pycuda, torch and an NVIDIA GPU. Run: python benchmarks/bench_gpu.py [gemm] [bandwidth] [gpt]
(no argument: every section).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

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
def _loader(name: str | None):  # type: ignore[no-untyped-def]
    """Codegen with the wgmma producer `name` (None: the default)."""
    from mlc.codegen.cuda_wgmma import LOADER_ENV

    old = os.environ.get(LOADER_ENV)
    if name is not None:
        os.environ[LOADER_ENV] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(LOADER_ENV, None)
        else:
            os.environ[LOADER_ENV] = old


def _build_all(jobs: list[tuple[int, str, object, str | None]]) -> dict:  # type: ignore[type-arg]
    """{(n, dtype, tile, loader): kernel or the exception} for GEMM variants: lowered here, nvcc in threads."""
    from concurrent.futures import ThreadPoolExecutor

    from cuda_helpers import matmul
    from mlc.codegen.cuda import lower_to_cuda
    from mlc.codegen.cuda_jit import compile_source
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule
    from mlc.runtime.cuda import CudaLibrary, device_arch

    arch, srcs = device_arch(), {}
    for n, dt, cfg, ld in jobs:
        with _loader(ld):
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


def _torch_gpt(consts: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """The zoo gpt_block written in PyTorch eager, with the model's weights (constants named
    `<role>_<n>` with n in creation order: LN1, QKV, out-proj, LN2, MLP up, MLP down)."""
    import torch
    import torch.nn.functional as F

    keys = sorted((k for k, w in consts.items() if w.dtype == np.float32 and w.ndim >= 1),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    fl = [torch.from_numpy(np.ascontiguousarray(consts[k])).cuda() for k in keys]
    g1, b1, wqkv, bqkv, wo, bo, g2, b2, w1, bb1, w2, bb2 = fl
    mask = torch.tril(torch.ones(64, 64, dtype=torch.bool, device="cuda"))

    def run(x):  # type: ignore[no-untyped-def]
        bsz, t, d = x.shape
        h = F.layer_norm(x, (d,), g1, b1, 1e-5)
        q, k, v = (h @ wqkv + bqkv).split(d, dim=-1)
        q, k, v = (z.reshape(bsz, t, 4, d // 4).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // 4)
        att = torch.where(mask[:t, :t], att, torch.tensor(-1e9, device="cuda"))
        y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(bsz, t, d)
        x1 = x + (y @ wo + bo)
        m = F.layer_norm(x1, (d,), g2, b2, 1e-5) @ w1 + bb1
        gelu = m * (torch.erf(m / math.sqrt(2)) + 1.0) * 0.5
        return x1 + (gelu @ w2 + bb2)

    return run


def bench_gpt_block() -> None:
    import torch
    from cuda_helpers import zoo_module
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM, to_device

    mod, consts = zoo_module("gpt_block")
    vm = CudaVM(mod, consts, compile_cuda([default_gpu_schedule(f) for f in mod.prim_functions()]))
    tgpt = _torch_gpt(consts)
    print("gpt_block latency (device-resident input, wall time per call incl. launch overhead)")
    for bsz, t in ((1, 64), (8, 64)):
        x = np.random.default_rng(1).standard_normal((bsz, t, 32)).astype(np.float32)
        dx, tx = to_device(x), torch.from_numpy(x).cuda()
        ours = vm.run_device({"x": dx})["y"].get()
        with torch.no_grad():
            ref = tgpt(tx).cpu().numpy()

            ms = _wall_ms(_run_mlc, vm, dx)
            tms = _wall_ms(_run_torch, tgpt, tx)
        print(f"  B={bsz} T={t}: mlc {ms * 1e3:8.1f} us   torch eager {tms * 1e3:8.1f} us   ratio {tms / ms:.2f}x"
              f"   (max abs diff vs torch {np.abs(ours - ref).max():.1e})")


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


def main(argv: list[str]) -> None:
    import pycuda.driver as drv
    import torch
    from mlc.runtime.cuda import cuda_context

    torch.cuda.init()
    cuda_context()
    print(f"device: {drv.Device(0).name()} (torch {torch.__version__}, CUDA driver {drv.get_driver_version()})")
    parts = {"gemm": bench_gemm, "bandwidth": bench_bandwidth, "gpt": bench_gpt_block}
    unknown = [a for a in argv if a not in parts]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(parts)}")
    for name in argv or list(parts):
        try:
            parts[name]()
        except Exception as e:  # noqa: BLE001 - report and go on with the other parts
            print(f"  {name} failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
