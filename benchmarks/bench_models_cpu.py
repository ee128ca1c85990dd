"""Zoo models end to end on the CPU: `mlc build` artifacts against onnxruntime, same inputs, same run.

    python benchmarks/bench_models_cpu.py [--models gpt_block resnext ...] [--dim 8] [--runs 30] [--db tune.jsonl]

Prints per model the median latency of mlc and of onnxruntime and the ratio (onnxruntime / mlc:
above 1 means mlc is faster). Both run on all cores with their default settings.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner
from mlc.cli import commands  # noqa: F401
from mlc.cli.main import cli
from mlc.frontend import zoo
from mlc.runtime.bench import time_fn

import mlc


def feeds_for(model: onnx.ModelProto, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for inp in model.graph.input:
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dim for d in t.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        out[inp.name] = (rng.integers(0, 4, shape) if np.issubdtype(dt, np.integer) else rng.standard_normal(shape)).astype(dt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=[n for n in zoo.NAMES if n != "default"])
    ap.add_argument("--dim", type=int, default=8, help="value of every dynamic dim")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    print(f"{'model':12s} {'mlc ms':>10s} {'ort ms':>10s} {'ort/mlc':>8s}")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            proto = zoo.build(name)
            src = Path(d) / f"{name}.onnx"
            onnx.save(proto, src)
            art = Path(d) / f"{name}.mlc"
            cmd = ["build", str(src), "-o", str(art)] + (["--db", args.db] if args.db else [])
            r = CliRunner().invoke(cli, cmd)
            if r.exit_code != 0:
                print(f"{name:12s} build failed: {r.output.strip()}")
                continue
            model = mlc.load(art)
            feeds = feeds_for(proto, args.dim)
            sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
            ours = time_fn(lambda m=model, f=feeds: m(**f), runs=args.runs)
            peer = time_fn(lambda s=sess, f=feeds: s.run(None, f), runs=args.runs)
            print(f"{name:12s} {ours.median_ms:10.3f} {peer.median_ms:10.3f} {peer.median_ms / ours.median_ms:8.2f}")


if __name__ == "__main__":
    main()
