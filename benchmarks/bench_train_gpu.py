"""One training step (forward, loss, backward, Adam update) of zoo models on an NVIDIA GPU: mlc's
compiled `@train_step` in f32 and in mixed precision (`mlc amp --dtype f16` + dynamic loss scaling),
against the same model in PyTorch eager and under torch.compile, in the same run.

    source .device/prelude.sh; python3 benchmarks/bench_train_gpu.py [--models gpt_block resnext]
        [--batch 32] [--seq 64] [--iters 20] [--reps 7]

The PyTorch models (tests/train_zoo.py) are written by hand and read the mlc module's own weights,
with the same losses and Adam's hyper-parameters. Every input, weight and optimizer state stays on the
device; a step's time is the median over `--reps` batches of the mean over `--iters` consecutive steps,
from CUDA events on the stream each side launches on (launch overhead included, as a training loop
pays it). mlc's steps are replayed with the same inputs (its step has no hidden state); PyTorch's
update their parameters in place, which costs the same. Before timing, per model: the loss and
gradients of mlc's CUDA `@grad` against PyTorch autograd (f32), and the f32 step's loss against
PyTorch's. Each section runs alone and fails soft: an error is printed and the next one runs.
Needs pycuda, torch and onnx (the GPU machine has them after the prelude).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import train_zoo as tz  # noqa: E402


def _events_ms(fn: Callable[[], Any], record: Callable[[], Any], iters: int, reps: int) -> float:
    """Median over `reps` of the mean time of `iters` calls of `fn`; `record()` gives an event pair
    (start, end) recorded on the stream `fn` launches on, `elapsed(start, end)` in ms."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, stop, elapsed = record()
        start()
        for _ in range(iters):
            fn()
        stop()
        times.append(elapsed() / iters)
    return float(np.median(times))


def _pycuda_events(stream: Any) -> Callable[[], Any]:
    import pycuda.driver as drv

    def make() -> Any:
        a, b = drv.Event(), drv.Event()

        def elapsed() -> float:
            b.synchronize()
            return float(a.time_till(b))

        return (lambda: a.record(stream)), (lambda: b.record(stream)), elapsed

    return make


def _torch_events() -> Any:
    import torch

    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def elapsed() -> float:
        b.synchronize()
        return float(a.elapsed_time(b))

    return a.record, b.record, elapsed


class Mlc:
    """One mlc build of a zoo model's training module on the GPU, its inputs on the device."""

    def __init__(self, name: str, low: str | None, data: dict[str, np.ndarray]):
        from mlc.runtime.cuda_vm import to_device

        t0 = time.perf_counter()
        self.module, self.consts = tz.train_module(name, low)
        self.model = tz.compile_module(self.module, self.consts, "cuda")
        self.build_s = time.perf_counter() - t0
        self.keys = tz.weight_keys(self.module, self.consts)
        self.host = tz.step_inputs(self.module, self.consts, data)
        self.dev = {k: to_device(np.asarray(v)) for k, v in self.host.items()}
        grad = self.module.get("grad")
        self.grad_dev = {p.name: self.dev[p.name] for p in grad.params}

    def step(self) -> dict[str, Any]:
        return self.model.vm.run_device(self.dev, "train_step")

    def time_ms(self, iters: int, reps: int) -> float:
        return _events_ms(self.step, _pycuda_events(self.model.vm.runner.stream), iters, reps)


class Torch:
    """The same model and step in PyTorch: eager, or the loss under torch.compile and a compiled Adam step."""

    def __init__(self, name: str, weights: list[np.ndarray], data: dict[str, np.ndarray], compiled: bool,
                 device: str = "cuda"):
        import torch

        self.params = [torch.tensor(w, device=device, requires_grad=True) for w in weights]
        self.feeds = {k: torch.from_numpy(v).to(device) for k, v in data.items()}
        model = tz.forward(name, self.params)

        def loss_fn() -> Any:
            return tz.loss(name, model(self.feeds), self.feeds)

        self.opt = torch.optim.Adam(self.params, lr=tz.LR, betas=(tz.BETA1, tz.BETA2), eps=tz.EPS)
        self.loss_fn = torch.compile(loss_fn) if compiled else loss_fn
        self.opt_step = torch.compile(self.opt.step) if compiled else self.opt.step

    def step(self) -> Any:
        self.opt.zero_grad(set_to_none=True)
        out = self.loss_fn()
        out.backward()
        self.opt_step()
        return out

    def time_ms(self, iters: int, reps: int) -> float:
        return _events_ms(self.step, _torch_events, iters, reps)


def _section(title: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - one failing section must not hide the others
        print(f"  {title}: FAILED", flush=True)
        traceback.print_exc(limit=6)
        sys.stdout.flush()
        return None


def _grad_check(name: str, ours: Mlc, data: dict[str, np.ndarray]) -> None:
    import torch

    got = ours.model.vm.run_device(ours.grad_dev, "grad")
    got = {k: v.get() for k, v in got.items()}
    t = Torch(name, [ours.consts[k] for k in ours.keys], data, compiled=False)
    ref = tz.loss(name, tz.forward(name, t.params)(t.feeds), t.feeds)
    grads = torch.autograd.grad(ref, t.params)
    worst, where = 0.0, ""
    for k, g in zip(ours.keys, grads):
        want = g.detach().cpu().numpy()
        mine = got[f"grad_{k}"]
        err = float(np.abs(mine - want).max() / (np.abs(want).max() + 1e-12))
        if err > worst:
            worst, where = err, k
    lerr = abs(float(got["loss"]) - float(ref)) / abs(float(ref))
    print(f"  gradients: mlc CUDA @grad vs torch autograd (f32): loss rel. diff {lerr:.1e}, worst gradient "
          f"{worst:.1e} (max abs diff / max abs, {where}), {len(ours.keys)} weights", flush=True)


def bench(name: str, batch: int, seq: int, iters: int, reps: int) -> None:
    import torch

    data = tz.feeds(name, batch, seq)
    shape = "x".join(str(d) for d in next(iter(data.values())).shape)
    print(f"{name}, batch {batch} (input {shape}), Adam:", flush=True)
    times: dict[str, float] = {}

    f32 = _section("mlc f32 build", lambda: Mlc(name, None, data))
    if f32 is not None:
        print(f"  mlc f32 build {f32.build_s:.1f} s", flush=True)
        _section("gradient check", lambda: _grad_check(name, f32, data))
        weights = [f32.consts[k] for k in f32.keys]

        def first_step() -> None:
            ours = float(f32.step()["loss"].get())
            t = Torch(name, weights, data, compiled=False)
            theirs = float(t.step().detach().cpu())
            print(f"  first step loss: mlc {ours:.6f}, torch {theirs:.6f}", flush=True)

        _section("first step", first_step)
        times["mlc f32"] = _section("mlc f32 timing", lambda: f32.time_ms(iters, reps))
    amp = _section("mlc amp build", lambda: Mlc(name, "f16", data))
    if amp is not None:
        out = _section("mlc amp step", amp.step)
        if out is not None:
            print(f"  mlc amp f16 build {amp.build_s:.1f} s; first step loss {float(out['loss'].get()):.6f}, "
                  f"loss scale after it {float(out['new_loss_scale'].get()):g}", flush=True)
        times["mlc amp f16"] = _section("mlc amp timing", lambda: amp.time_ms(iters, reps))
    if f32 is None:
        m, consts = tz.train_module(name)
        weights = [consts[k] for k in tz.weight_keys(m, consts)]
    for compiled, label in ((False, "torch eager"), (True, "torch.compile")):
        def run(compiled: bool = compiled) -> float:
            t = Torch(name, weights, data, compiled)
            t0 = time.perf_counter()
            t.step()
            torch.cuda.synchronize()
            if compiled:
                print(f"  torch.compile first step (compiling) {time.perf_counter() - t0:.1f} s", flush=True)
            return t.time_ms(iters, reps)

        times[label] = _section(label, run)
    for k, v in times.items():
        if v is not None:
            print(f"  {k:14s} {v:9.3f} ms/step", flush=True)
    for ours in ("mlc f32", "mlc amp f16"):
        for peer in ("torch eager", "torch.compile"):
            if times.get(ours) and times.get(peer):
                print(f"  {peer} / {ours}: {times[peer] / times[ours]:.2f}x", flush=True)
    if times.get("mlc f32") and times.get("mlc amp f16"):
        print(f"  AMP speedup (mlc f32 / mlc amp f16): {times['mlc f32'] / times['mlc amp f16']:.2f}x", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gpt_block", "resnext"], choices=["gpt_block", "resnext", "mlp"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64, help="gpt_block's sequence length (at most 64)")
    ap.add_argument("--iters", type=int, default=20, help="steps per timed batch")
    ap.add_argument("--reps", type=int, default=7, help="timed batches (the median is reported)")
    a = ap.parse_args()
    import pycuda.driver as drv
    import torch
    from mlc.runtime.cuda import cuda_context

    torch.cuda.init()
    cuda_context()
    print(f"device: {drv.Device(0).name()} (torch {torch.__version__}, CUDA driver {drv.get_driver_version()})",
          flush=True)
    for name in a.models:
        _section(name, lambda name=name: bench(name, a.batch, a.seq, a.iters, a.reps))  # type: ignore[misc]
    return 0


if __name__ == "__main__":
    sys.exit(main())
