"""One training step (forward, loss, backward, Adam update) of zoo models on the CPU: mlc's compiled
`@train_step` (mlc autodiff --optimizer adam) against jax.jit of the same step, in the same run.

    python benchmarks/bench_train_step.py [--models mlp gpt_block] [--batch 32] [--seq 16] [--runs 20] [--rounds 5]
                                          [--profile 15]

Both sides start from the same weights and batch, compute in f32 and take the step with the same
hyper-parameters; the first step's loss and updated weights are compared before timing. Timed in
alternating blocks (runtime.bench.block_medians), one block pair per round: the median over rounds, and
the quietest round of each side (on a machine shared with other jobs, which only add time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LOSS = {"mlp": "cross-entropy:labels", "gpt_block": "mse:target", "resnext": "cross-entropy:labels"}
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def _inputs(name: str, batch: int, seq: int, out_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = {"mlp": (batch, 64), "gpt_block": (batch, seq, 32), "resnext": (batch, 3, 16, 16)}[name]
    feeds = {"image" if name == "resnext" else "x": rng.standard_normal(x).astype(np.float32)}
    if LOSS[name].startswith("cross"):
        feeds["labels"] = rng.integers(0, out_shape[-1], out_shape[:-1])
    else:
        feeds["target"] = rng.standard_normal(out_shape).astype(np.float32)
    return feeds


def bench(name: str, batch: int, seq: int, runs: int, profile: int = 0, rounds: int = 5) -> None:
    import jax
    import jax.numpy as jnp
    from jax_graph import jax_forward
    from mlc.frontend.onnx_import import import_onnx
    from mlc.frontend.zoo import build
    from mlc.ir.graph import Function
    from mlc.ir.interp import run_function
    from mlc.passes.autodiff import Autodiff
    from mlc.passes.registry import PassContext
    from mlc.runtime.artifact import loads
    from mlc.runtime.bench import block_medians
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    m, consts = import_onnx(build(name))
    out = Autodiff(loss=LOSS[name], optimizer="adam", lr=LR, beta1=B1, beta2=B2, eps=EPS).apply(
        m, PassContext(constants=consts))
    probe = _inputs(name, 1, seq, (1,))
    first = next(iter(run_function(out, {k: v for k, v in probe.items() if k in ("x", "image")}, consts).values()))
    y_shape = (batch,) + first.shape[1:] if name != "gpt_block" else (batch, seq) + first.shape[2:]
    feeds = _inputs(name, batch, seq, y_shape)
    ts = out.get("train_step")
    assert isinstance(ts, Function)
    keys = [p.name for p in ts.params if p.name in consts]
    ins = dict(feeds)
    for p in ts.params:
        if p.name in consts:
            ins[p.name] = consts[p.name]
        elif p.name == "step":
            ins[p.name] = np.zeros((), np.float32)
        elif p.name not in ins:
            ins[p.name] = np.zeros_like(consts[p.name[2:]])
    model = model_from_artifact(loads(build_module(with_memory_constants(out, consts), consts, "cpu").result.data),
                                "<bench>")
    ours = model.vm.run(ins, "train_step")

    xs = {k: jnp.asarray(v) for k, v in feeds.items() if k in ("x", "image")}

    def loss_fn(params: dict[str, Any]) -> Any:
        y = jax_forward(m, xs, {**consts, **params})
        if "labels" in feeds:
            f = m.get("main")
            last = f.body.bindings[-1].node  # type: ignore[union-attr]
            logp = jnp.log(y) if getattr(last, "op", "") == "softmax" else jax.nn.log_softmax(y, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(feeds["labels"])[..., None], axis=-1))
        return jnp.mean((y - jnp.asarray(feeds["target"])) ** 2)

    @jax.jit
    def step(params: dict[str, Any], mom: dict[str, Any], vel: dict[str, Any], t: Any) -> Any:
        loss, g = jax.value_and_grad(loss_fn)(params)
        t = t + 1
        mom = {k: B1 * mom[k] + (1 - B1) * g[k] for k in params}
        vel = {k: B2 * vel[k] + (1 - B2) * g[k] ** 2 for k in params}
        new = {k: params[k] - LR * (mom[k] / (1 - B1 ** t)) / (jnp.sqrt(vel[k] / (1 - B2 ** t)) + EPS) for k in params}
        return loss, new, mom, vel, t

    p0 = {k: jnp.asarray(consts[k]) for k in keys}
    z = {k: jnp.zeros_like(v) for k, v in p0.items()}
    t0 = jnp.zeros((), jnp.float32)
    loss, new, _, _, _ = step(p0, z, z, t0)
    np.testing.assert_allclose(ours["loss"], np.asarray(loss), rtol=1e-4)
    for k in keys:
        np.testing.assert_allclose(ours[f"new_{k}"], np.asarray(new[k]), rtol=1e-3, atol=1e-5)

    def run_jax() -> None:
        jax.block_until_ready(step(p0, z, z, t0))

    def run_ours() -> None:
        model.vm.run(ins, "train_step")

    # one block pair per round: the median over rounds, and the quietest round's (other jobs on the
    # machine only ever add time, to whichever side they hit)
    per = [block_medians([run_jax, run_ours], runs=max(1, runs // rounds), rounds=1) for _ in range(rounds)]
    t_jax, t_ours = (float(np.median([p[k] for p in per])) for k in (0, 1))
    b_jax, b_ours = (min(p[k] for p in per) for k in (0, 1))
    print(f"{name:10s} batch {batch:3d}: jax.jit {t_jax * 1e3:8.3f} ms   mlc {t_ours * 1e3:8.3f} ms   "
          f"jax/mlc {t_jax / t_ours:5.2f}x   (quietest rounds: {b_jax * 1e3:.3f} / {b_ours * 1e3:.3f} ms, "
          f"{b_jax / b_ours:.2f}x)", flush=True)
    if profile:  # where mlc's step goes: the slowest kernels of @train_step
        # medians per call (times calls): a loaded machine's descheduled threads skew the means
        times = sorted(model.vm.profile(ins, runs, "train_step"), key=lambda t: -t.median * t.calls)
        total = sum(t.median * t.calls for t in times)
        for t in times[:profile]:
            us = t.median * t.calls
            print(f"    {us * 1e6:9.1f} us/step {100 * us / total:5.1f}%  {t.calls:4.1f} calls  {t.func}")
        print(f"    {total * 1e6:9.1f} us/step in all kernels (sum of medians)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "gpt_block"], choices=sorted(LOSS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=16, help="gpt_block's sequence length")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="alternating block pairs")
    ap.add_argument("--profile", type=int, default=0, metavar="K", help="also print mlc's K slowest kernels")
    a = ap.parse_args()
    for name in a.models:
        bench(name, a.batch, a.seq, a.runs, a.profile, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
