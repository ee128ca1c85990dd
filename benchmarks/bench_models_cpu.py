"""Zoo models end to end on the CPU: `mlc build` artifacts against onnxruntime, same inputs, same run.

    python benchmarks/bench_models_cpu.py [--models gpt_block resnext ...] [--dim 8] [--runs 30]
                                          [--db tune.jsonl] [--tune TRIALS]

Prints per model the median latency of mlc and of onnxruntime and the ratio (onnxruntime / mlc:
above 1 means mlc is faster). Both run on all cores with their default settings, timed in alternating
blocks (runtime.bench.block_medians). `--tune N` first
runs `mlc tune` with N trials on the model's lowered module (configs/pipelines/lower.yaml, symbolic
dims measured at --dim) and prints the default and the tuned build, with the tuning wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner
from mlc.cli import commands  # noqa: F401
from mlc.cli.main import cli
from mlc.frontend import zoo
from mlc.runtime.bench import block_medians

import mlc

PIPELINES = Path(__file__).resolve().parent.parent / "configs" / "pipelines"


def feeds_for(model: onnx.ModelProto, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for inp in model.graph.input:
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dim for d in t.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        out[inp.name] = (rng.integers(0, 4, shape) if np.issubdtype(dt, np.integer) else rng.standard_normal(shape)).astype(dt)
    return out


def dim_names(model: onnx.ModelProto) -> list[str]:
    return sorted({d.dim_param for inp in model.graph.input for d in inp.type.tensor_type.shape.dim
                   if d.dim_param})


def invoke(args: list[str]) -> str | None:
    """Run an mlc command; None on success, else its message."""
    r = CliRunner().invoke(cli, args)
    return None if r.exit_code == 0 else (r.output.strip() or repr(r.exception))


def tuned_build(src: Path, proto: onnx.ModelProto, d: Path, trials: int, dim: int,
                time_budget: float | None = None) -> tuple[Path, float, Path] | str:
    """import -> lower -> tune (`--time-budget` if given) -> build --db: the artifact, the tuning seconds
    and the database, or an error."""
    name = src.stem
    lowered, db, art = d / f"{name}.lowered.ir", d / f"{name}.tune.jsonl", d / f"{name}.tuned.mlc"
    err = invoke(["import", str(src), "-o", str(d / f"{name}.ir")]) \
        or invoke(["opt", str(d / f"{name}.ir"), "-p", str(PIPELINES / "lower.yaml"), "-o", str(lowered)])
    if err:
        return err
    dims = [x for n in dim_names(proto) for x in ("--dim", f"{n}={dim}")]
    t0 = time.perf_counter()
    budget = ["--time-budget", str(time_budget)] if time_budget is not None else []
    err = invoke(["tune", str(lowered), "--trials", str(trials), *budget, "--db", str(db), "--quiet", *dims,
                  "-o", str(d / f"{name}.tuned.ir")])
    wall = time.perf_counter() - t0
    if err:
        return err
    err = invoke(["build", str(src), "-o", str(art), "--db", str(db)])
    return err if err else (art, wall, db)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=[n for n in zoo.NAMES if n != "default"])
    ap.add_argument("--dim", type=int, default=8, help="value of every dynamic dim")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--db", default=None)
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="also tune each model first")
    args = ap.parse_args()
    print(f"{'model':12s} {'build':>12s} {'mlc ms':>10s} {'ort ms':>10s} {'ort/mlc':>8s} {'tune s':>7s}")
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
            feeds = feeds_for(proto, args.dim)
            sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
            builds: list[tuple[str, Path, float]] = [("default" if not args.db else "db", art, 0.0)]
            if args.tune:
                t = tuned_build(src, proto, Path(d), args.tune, args.dim)
                if isinstance(t, str):
                    print(f"{name:12s} tuning failed: {t}")
                else:
                    builds.append((f"tuned {args.tune}", t[0], t[1]))
            for label, path, wall in builds:
                model = mlc.load(path)
                ours, peer = block_medians([lambda m=model, f=feeds: m(**f), lambda s=sess, f=feeds: s.run(None, f)],
                                           runs=args.runs)
                print(f"{name:12s} {label:>12s} {ours * 1e3:10.3f} {peer * 1e3:10.3f} "
                      f"{peer / ours:8.2f} {wall:7.0f}", flush=True)


if __name__ == "__main__":
    main()
