"""Real CNN exports (torchvision, random weights; tests/models) compiled by mlc against onnxruntime on
the CPU, same inputs, same run (issue 17).

    python benchmarks/bench_cnn_cpu.py [--models squeezenet1_1 resnet18 ...] [--batch 1 8] [--runs 9]
                                       [--profile] [--base REV]
    python benchmarks/bench_cnn_cpu.py --convs 1,32,128,7,3,1,1,1 ... [--base REV]

Each export (3x64x64 input, symbolic batch) is compiled once with default schedules (`mlc.compile`,
the build-cpu pipeline), checked against onnxruntime at every batch (max |diff| relative to the
output's scale, printed), then both are timed in alternating blocks (runtime.bench.block_medians:
medians over rounds, 0.5 s idle before each block). Prints per model and batch: mlc ms, ort ms,
ort/mlc (above 1: mlc faster). `--profile` adds mlc's per-kernel table (as `mlc bench --profile`): the
kernels' medians per run and the `--top` kernels. `--base REV` also builds each model with the
convolution schedule (passes/schedule/conv_tiling.py) of git revision REV and times it in the same
blocks: a before/after of the schedule alone, on the same loaded machine. `--convs` times single
Conv + bias + Relu layers (batch, in/out channels, square size, kernel, padding, stride, groups)
instead, each build checked against a numpy convolution.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from mlc.runtime.bench import block_medians

import mlc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from models import load  # noqa: E402 - the exports' loader lives with the tests

MODELS = ("squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18")
ROOT = Path(__file__).resolve().parent.parent


def conv_tiling_of(rev: str) -> Any:
    """passes/schedule/conv_tiling.py as of git revision `rev`, imported as a module of the package: a
    same-run baseline of the convolution schedule alone (everything else as checked out)."""
    src = subprocess.run(["git", "show", f"{rev}:passes/schedule/conv_tiling.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "conv_tiling_base.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("mlc.passes.schedule.conv_tiling_base", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compile_with(proto: Any, conv_tiling: Any | None) -> Any:
    """`mlc.compile(proto)`, with the schedule rules calling `conv_tiling.conv_tiling` if given."""
    from mlc.passes.schedule import rules

    keep = rules.conv_tiling
    try:
        if conv_tiling is not None:
            rules.conv_tiling = conv_tiling.conv_tiling
        return mlc.compile(proto)
    finally:
        rules.conv_tiling = keep


def print_profile(model: Any, feeds: dict[str, np.ndarray], runs: int, top: int) -> None:
    """The kernels' medians per run and the `top` kernels with their parameters' shapes (medians: on
    shared cores the means are dominated by a few preempted calls)."""
    from mlc.ir import arith

    prof = sorted(model.profile(runs, **feeds), key=lambda t: -t.calls * t.median)
    total = sum(t.calls * t.median for t in prof)
    funcs = {f.name: f for f in model.module.prim_functions()}
    print(f"    {len(prof)} kernels, {total * 1e6:.1f} us per run in kernel medians")
    for t in prof[:top]:
        f = funcs.get(t.func)
        shapes = " ".join("x".join(str(arith.as_int(d) or d) for d in b.shape) for b in f.params) if f else ""
        print(f"    {t.func[:40]:40s} {t.calls:4.3g} calls {t.median * 1e6:9.1f} us/call "
              f"{100 * t.calls * t.median / total:5.1f}%  {shapes[:90]}")


def bench_convs(specs: list[str], base: Any | None, runs: int, rounds: int) -> None:
    """Single Conv + bias + Relu layers (`N,C,K,HW,KH,PAD,STRIDE,GROUP`, constant weights): mlc, the
    `--base` schedule and onnxruntime in the same blocks, each checked against a numpy convolution."""
    from test_conv_schedules import conv_model, np_conv  # the tests' layer builder and oracle

    print(f"{'conv N,C,K,HW,KH,PAD,S,G':26s} {'mlc us':>9s} {'ort us':>9s} {'ort/mlc':>8s}"
          + (f" {'base us':>9s} {'base/mlc':>8s}" if base else ""))
    for spec in specs:
        n, c, k, hw, kh, pad, st, g = (int(v) for v in spec.split(","))
        proto, w, b = conv_model(n, c, k, hw, kh, pad, st, g)
        x = np.random.default_rng(0).standard_normal((n, c, hw, hw)).astype(np.float32)
        models = [compile_with(proto, None)] + ([compile_with(proto, base)] if base else [])
        for m in models:
            got = list(m(**{m.input_names[0]: x}).values())[0]
            np.testing.assert_allclose(got, np_conv(x, w, b, pad, st, g), rtol=1e-4, atol=1e-4)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ts = block_medians([lambda m=m, x=x: m(**{m.input_names[0]: x}) for m in models]
                           + [lambda s=sess, x=x: s.run(None, {"x": x})], runs=runs, rounds=rounds)
        line = f"{spec:26s} {ts[0] * 1e6:9.1f} {ts[-1] * 1e6:9.1f} {ts[-1] / ts[0]:8.2f}"
        print(line + (f" {ts[1] * 1e6:9.1f} {ts[1] / ts[0]:8.2f}" if base else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=8, help="kernels listed by --profile")
    ap.add_argument("--base", metavar="REV", help="also time a build whose convolution schedule is "
                    "passes/schedule/conv_tiling.py of git revision REV (same run; base ms, ort/base)")
    ap.add_argument("--convs", nargs="*", metavar="N,C,K,HW,KH,PAD,S,G",
                    help="time these single conv layers instead of the models")
    args = ap.parse_args()
    base = conv_tiling_of(args.base) if args.base else None
    if args.convs:
        return bench_convs(args.convs, base, args.runs, args.rounds)
    print(f"{'model':20s} {'batch':>5s} {'build s':>8s} {'mlc ms':>9s} {'ort ms':>9s} {'ort/mlc':>8s} {'max rel err':>11s}"
          + (f" {'base ms':>9s} {'ort/base':>8s}" if base else ""))
    for name in args.models:
        proto = load(f"{name}.torchscript.onnx")
        t0 = time.perf_counter()
        model = compile_with(proto, None)
        build = time.perf_counter() - t0
        models = [model] + ([compile_with(proto, base)] if base else [])
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        in_name = proto.graph.input[0].name
        for n in args.batch:
            x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
            ours_feeds = {model.input_names[0]: x}
            want = sess.run(None, {in_name: x})[0]
            errs = [float(np.abs(list(m(**ours_feeds).values())[0] - want).max()
                          / max(float(np.abs(want).max()), 1e-30)) for m in models]
            ts = block_medians([lambda m=m, f=ours_feeds: m(**f) for m in models]
                               + [lambda s=sess, f={in_name: x}: s.run(None, f)], runs=args.runs, rounds=args.rounds)
            ours, peer = ts[0], ts[-1]
            line = f"{name:20s} {n:5d} {build:8.1f} {ours * 1e3:9.3f} {peer * 1e3:9.3f} {peer / ours:8.2f} {max(errs):11.1e}"
            if base:
                line += f" {ts[1] * 1e3:9.3f} {peer / ts[1]:8.2f}"
            print(line, flush=True)
            if args.profile:
                print_profile(model, ours_feeds, args.runs, args.top)


if __name__ == "__main__":
    main()
