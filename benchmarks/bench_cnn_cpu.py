"""Real CNN exports (torchvision, random weights; tests/models) compiled by mlc against onnxruntime on
the CPU, same inputs, same run (issue 17).

    python benchmarks/bench_cnn_cpu.py [--models squeezenet1_1 resnet18 ...] [--batch 1 8] [--runs 9]
                                       [--profile]

Each export (3x64x64 input, symbolic batch) is compiled once with default schedules (`mlc.compile`,
the build-cpu pipeline), checked against onnxruntime at every batch (max |diff| relative to the
output's scale, printed), then both are timed in alternating blocks (runtime.bench.block_medians:
medians over rounds, 0.5 s idle before each block). Prints per model and batch: mlc ms, ort ms,
ort/mlc (above 1: mlc faster). `--profile` adds mlc's per-kernel table (as `mlc bench --profile`): the time in kernels per run and
the `--top` kernels by time per run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlc.runtime.bench import block_medians

import mlc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from models import load  # noqa: E402 - the exports' loader lives with the tests

MODELS = ("squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=8, help="kernels listed by --profile")
    args = ap.parse_args()
    print(f"{'model':20s} {'batch':>5s} {'build s':>8s} {'mlc ms':>9s} {'ort ms':>9s} {'ort/mlc':>8s} {'max rel err':>11s}")
    for name in args.models:
        proto = load(f"{name}.torchscript.onnx")
        t0 = time.perf_counter()
        model = mlc.compile(proto)
        build = time.perf_counter() - t0
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        in_name = proto.graph.input[0].name
        for n in args.batch:
            x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
            ours_feeds = {model.input_names[0]: x}
            got = list(model(**ours_feeds).values())[0]
            want = sess.run(None, {in_name: x})[0]
            err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
            ours, peer = block_medians([lambda m=model, f=ours_feeds: m(**f),
                                        lambda s=sess, f={in_name: x}: s.run(None, f)],
                                       runs=args.runs, rounds=args.rounds)
            print(f"{name:20s} {n:5d} {build:8.1f} {ours * 1e3:9.3f} {peer * 1e3:9.3f} {peer / ours:8.2f} "
                  f"{err:11.1e}", flush=True)
            if args.profile:
                prof = sorted(model.profile(args.runs, **ours_feeds), key=lambda t: -t.per_run)
                total = sum(t.per_run for t in prof)
                print(f"    kernels: {len(prof)}, {total * 1e6:.1f} us per run in kernels")
                for t in prof[:args.top]:
                    print(f"    {t.func[:44]:44s} {t.calls:4.3g} calls {t.median * 1e6:9.1f} us/call "
                          f"{t.per_run * 1e6:9.1f} us/run {100 * t.per_run / total:5.1f}%")


if __name__ == "__main__":
    main()
