"""Real CNN exports (torchvision, random weights; tests/models) compiled by mlc against onnxruntime on
the CPU, same inputs, same run (issue 17).

    python benchmarks/bench_cnn_cpu.py [--models squeezenet1_1 resnet18 ...] [--batch 1 8] [--runs 9]
                                       [--profile] [--base REV] [--tune TRIALS [--time-budget S]]
    python benchmarks/bench_cnn_cpu.py --convs 1,32,128,7,3,1,1,1 ... [--base REV]

Each export (3x64x64 input, symbolic batch) is compiled once with default schedules (`mlc.compile`,
the build-cpu pipeline), checked against onnxruntime at every batch (max |diff| relative to the
output's scale, printed), then both are timed in alternating blocks (runtime.bench.block_medians:
medians over rounds, 0.5 s idle before each block). Prints per model and batch: mlc ms, ort ms,
ort/mlc (above 1: mlc faster). `--profile` adds mlc's per-kernel table (as `mlc bench --profile`): the
kernels' medians per run and the `--top` kernels. `--base REV` also builds each model with the
convolution schedule (passes/schedule/conv_tiling.py) of git revision REV and times it in the same
blocks: a before/after of the schedule alone, on the same loaded machine. `--tune N` also builds each
model after `mlc tune` (bench_models_cpu.tuned_build: import -> lower -> tune N trials, `--time-budget`
seconds at most, measured at batch 1 -> `mlc build --db`), checks it against onnxruntime and times it
in the same blocks: a "tuned" row beside the "default" one at every batch, with the tuning seconds and
the trials actually run (distinct measured schedules in the database; `--confirm` re-measures excluded).
`--convs` times single Conv + bias + Relu layers (batch, in/out channels, square size, kernel, padding,
stride, groups) instead, each build checked against a numpy convolution.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from mlc.runtime.bench import block_medians

import mlc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_models_cpu import tuned_build  # noqa: E402 - benchmarks/ is on sys.path when run as a script
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


def trials_in(db: Path) -> int:
    """Schedules measured by a tuning run: distinct (workload, trace) records in its fresh database."""
    recs = [json.loads(line) for line in db.read_text().splitlines() if line.strip()]
    return len({(r["workload"], json.dumps(r["trace"], sort_keys=True)) for r in recs})


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
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                    help="also build each model after `mlc tune` with this many trials (measured at batch 1)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="S", help="`mlc tune --time-budget`")
    ap.add_argument("--convs", nargs="*", metavar="N,C,K,HW,KH,PAD,S,G",
                    help="time these single conv layers instead of the models")
    args = ap.parse_args()
    base = conv_tiling_of(args.base) if args.base else None
    if args.convs:
        return bench_convs(args.convs, base, args.runs, args.rounds)
    print(f"{'model':20s} {'batch':>5s} {'build':>8s} {'build s':>8s} {'mlc ms':>9s} {'ort ms':>9s} {'ort/mlc':>8s}"
          f" {'max rel err':>11s} {'trials':>6s}" + (f" {'base ms':>9s} {'ort/base':>8s}" if base else ""))
    tmp = Path(tempfile.mkdtemp())
    for name in args.models:
        proto = load(f"{name}.torchscript.onnx")
        t0 = time.perf_counter()
        model = compile_with(proto, None)
        builds = [("default", model, time.perf_counter() - t0, "")]
        if args.tune:
            src = tmp / f"{name}.onnx"
            onnx.save(proto, src)
            dim = {d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim if d.dim_param}
            assert dim == {"batch"}, dim  # tuned_build measures every symbolic dim at 1
            t = tuned_build(src, proto, tmp, args.tune, 1, args.time_budget)
            if isinstance(t, str):
                print(f"{name:20s} tuning failed: {t}", flush=True)
            else:
                builds.append(("tuned", mlc.load(t[0]), t[1], str(trials_in(t[2]))))
        models = [m for _, m, _, _ in builds] + ([compile_with(proto, base)] if base else [])
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        in_name = proto.graph.input[0].name
        for n in args.batch:
            x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
            want = sess.run(None, {in_name: x})[0]
            errs = [float(np.abs(list(m(**{m.input_names[0]: x}).values())[0] - want).max()
                          / max(float(np.abs(want).max()), 1e-30)) for m in models]
            ts = block_medians([lambda m=m, f={m.input_names[0]: x}: m(**f) for m in models]
                               + [lambda s=sess, f={in_name: x}: s.run(None, f)], runs=args.runs, rounds=args.rounds)
            peer = ts[-1]
            for i, (label, _, secs, trials) in enumerate(builds):
                line = (f"{name:20s} {n:5d} {label:>8s} {secs:8.1f} {ts[i] * 1e3:9.3f} {peer * 1e3:9.3f} "
                        f"{peer / ts[i]:8.2f} {errs[i]:11.1e} {trials:>6s}")
                if base and i == 0:
                    line += f" {ts[-2] * 1e3:9.3f} {peer / ts[-2]:8.2f} (base err {errs[-1]:.1e})"
                print(line, flush=True)
            if args.profile:
                for label, m, _, _ in builds:
                    print(f"    {label}:")
                    print_profile(m, {m.input_names[0]: x}, args.runs, args.top)


if __name__ == "__main__":
    main()
