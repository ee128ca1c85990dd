"""Rematerialization, measured as RAF reports it: under a fixed memory budget, the largest batch a
training step fits with and without `remat`, and its throughput (samples/s) at that batch.

Model: an MLP of 8 tanh layers, 256 wide, Adam step (deep enough that the backward pass keeps many
activations). Budget: the memory plan of the step at batch 128 without remat. Run:
    python benchmarks/bench_remat.py [--layers 8] [--width 256] [--base 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _step_module(layers: int, width: int, optimizer: str):  # type: ignore[no-untyped-def]
    from mlc.frontend.onnx_import import import_onnx
    from mlc.frontend.zoo import GraphBuilder
    from mlc.passes.autodiff import Autodiff
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext

    from mlc.compiler import with_memory_constants

    b = GraphBuilder("deep", seed=3)
    h = b.input("x", ["N", width])
    for _ in range(layers):
        h = b.n("Tanh", b.linear(h, width, width))
    b.node("MatMul", [h, b.weight((width, 10))], out="logits")
    b.output("logits", ["N", 10])
    m, consts = import_onnx(b.model())
    m = Autodiff(loss="cross-entropy:labels", optimizer=optimizer).apply(m, PassContext(constants=consts))
    ctx = PassContext(constants=consts)
    m, _ = run_pipeline(with_memory_constants(m, consts), load_pipeline(ROOT / "configs/pipelines/lower.yaml"),
                        ctx, False, None, None)
    return m, ctx.constants or consts


def _plan(m, n: int) -> int:  # type: ignore[no-untyped-def]
    from mlc.ir.memory_plan import plan_function

    return plan_function(m.get("train_step")).evaluate({"N": n})[0]


def _remat(m, budget: int, n: int):  # type: ignore[no-untyped-def]
    from mlc.ir.diagnostics import MlcError
    from mlc.passes.registry import PassContext
    from mlc.passes.remat import Remat

    try:
        return Remat(memory_budget=budget, dim=f"N={n}").apply(m, PassContext(sink=None))
    except MlcError:
        return None


def _largest(fits, lo: int) -> int:  # type: ignore[no-untyped-def]
    """The largest batch (a multiple of 8) for which fits(batch) holds, fits(lo) being true."""
    hi = lo
    while fits(hi * 2):
        hi *= 2
    lo, hi = hi, hi * 2
    while hi - lo > 8:
        mid = (lo + hi) // 2 // 8 * 8
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _throughput(m, consts, n: int, width: int, runs: int = 15) -> float:  # type: ignore[no-untyped-def]
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module

    steps = yaml.safe_load((ROOT / "configs/pipelines/build-cpu.yaml").read_text())["passes"]
    with tempfile.TemporaryDirectory() as d:
        rest = Path(d) / "rest.yaml"
        rest.write_text(yaml.safe_dump({"name": "rest", "passes": steps[steps.index("fuse") + 1:]}))
        built = build_module(m, consts, "cpu", pipeline=rest)
    vm = model_from_artifact(loads(built.result.data), "bench").vm
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((n, width)).astype(np.float32), "labels": rng.integers(0, 10, n)}
    for p in m.get("train_step").params:
        if p.name not in feeds:
            feeds[p.name] = consts[p.name] if p.name in consts else np.zeros(
                consts[p.name[2:]].shape if p.name[:2] in ("m_", "v_") else (), np.float32)
    vm.run(feeds, "train_step")
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        vm.run(feeds, "train_step")
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--base", type=int, default=128)
    ap.add_argument("--optimizer", action="append", choices=["sgd", "adam"], help="default: both")
    a = ap.parse_args(argv)
    for opt in a.optimizer or ["sgd", "adam"]:
        m, consts = _step_module(a.layers, a.width, opt)
        budget = _plan(m, a.base)
        plain = _largest(lambda n, m=m, budget=budget: _plan(m, n) <= budget, a.base)
        with_remat = _largest(lambda n, m=m, budget=budget: _remat(m, budget, n) is not None, plain)
        rm = _remat(m, budget, with_remat)
        t_plain = _throughput(m, consts, plain, a.width)
        t_remat = _throughput(rm, consts, with_remat, a.width)
        added = len(rm.get("train_step").body.bindings) - len(m.get("train_step").body.bindings)
        print(f"MLP {a.layers}x{a.width}, {opt} step, budget {budget / 2**20:.2f} MiB (the plan at batch {a.base})")
        print(f"  without remat: largest batch {plain:5d}, {t_plain:9.0f} samples/s")
        print(f"  with remat:    largest batch {with_remat:5d}, {t_remat:9.0f} samples/s, {added} kernel calls added")
        print(f"  batch x{with_remat / plain:.2f} at {t_remat / t_plain:.2f}x the throughput "
              "(RAF's goal: 2x at >= 0.9x)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
