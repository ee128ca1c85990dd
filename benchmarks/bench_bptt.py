"""Backpropagation through time on the CPU: mlc's compiled `@grad` and `@train_step` (Adam) of the
two-layer LSTM encoder (tests/models/lstm_encoder.torchscript.onnx, mse loss; the backward is a
reverse graph Loop) against jax.jit of the same model written with lax.scan, in the same run.

    python benchmarks/bench_bptt.py [--batch 32] [--runs 20]

Both sides use the ONNX file's weights and the same batch in f32; the loss, every gradient (named
after the ONNX initializers) and one Adam step are compared before and after timing (JAX is an
independent oracle). Timed in alternating blocks (runtime.bench.block_medians), median per call. The
sequence length is the export's (7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "models" / "lstm_encoder.torchscript.onnx"
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def jax_loss(p: dict[str, Any], ids: Any, target: Any) -> Any:
    """The torch module the file was exported from: embedding, two LSTM layers (ONNX gate order
    i, o, f, c), the last step's state through a linear head; mean squared error."""
    import jax
    import jax.numpy as jnp

    def lstm(x: Any, w: Any, r: Any, b: Any) -> Any:
        hid = r.shape[-1]
        w, r, b = w[0], r[0], b[0]
        xw = x @ w.T + b[:4 * hid]

        def step(carry: Any, xt: Any) -> Any:
            h, c = carry
            g = xt + h @ r.T + b[4 * hid:]
            i, o, f, cc = jnp.split(g, 4, axis=-1)
            c2 = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(cc)
            h2 = jax.nn.sigmoid(o) * jnp.tanh(c2)
            return (h2, c2), h2

        z = jnp.zeros((x.shape[1], hid), x.dtype)
        return jax.lax.scan(step, (z, z), xw)[1]

    x = jnp.transpose(p["emb.weight"][ids], (1, 0, 2))  # (T, N, E)
    y = lstm(lstm(x, p["onnx::LSTM_195"], p["onnx::LSTM_196"], p["onnx::LSTM_197"]),
             p["onnx::LSTM_215"], p["onnx::LSTM_216"], p["onnx::LSTM_217"])
    out = y[-1] @ p["head.weight"].T + p["head.bias"]
    return jnp.mean((out - target) ** 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import onnx
    from mlc.frontend.onnx_import import import_onnx
    from mlc.ir.autodiff import Provenance, differentiable_constants, public_names
    from mlc.ir.graph import Function
    from mlc.passes.autodiff import Autodiff
    from mlc.passes.registry import PassContext
    from mlc.runtime.artifact import loads
    from mlc.runtime.bench import block_medians
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    proto = onnx.load(str(MODEL))
    m, consts = import_onnx(proto)
    out = Autodiff(loss="mse:target", optimizer="adam", lr=LR, beta1=B1, beta2=B2, eps=EPS).apply(
        m, PassContext(constants=consts))
    model = model_from_artifact(loads(build_module(with_memory_constants(out, consts), consts, "cpu").result.data),
                                "<bench>")
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 100, (a.batch, 7)), "target": rng.standard_normal((a.batch, 5)).astype(np.float32)}
    params = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    f = jax.jit(jax.value_and_grad(jax_loss))
    want_loss, want = f(params, feeds["ids"], feeds["target"])
    main_fn = out.get("main")
    assert isinstance(main_fn, Function)
    keys = differentiable_constants(main_fn, Provenance.of(out.meta, consts))
    pub = public_names(keys, [])
    assert set(keys) == set(params), (keys, sorted(params))  # every initializer, no folded piece

    def worst_error(got: dict[str, Any]) -> float:
        w = abs(float(got["loss"]) - float(want_loss)) / abs(float(want_loss))
        for k in keys:
            g, ref = np.asarray(got[f"grad_{pub[k]}"]), np.asarray(want[k])
            w = max(w, float(np.abs(g - ref).max() / (np.abs(ref).max() + 1e-12)))
        return w

    worst = worst_error(model.vm.run(feeds, "grad"))
    print(f"lstm_encoder batch {a.batch}: {len(keys)} gradients vs jax.grad, worst max-abs error / max-abs "
          f"{worst:.2e}", flush=True)
    if worst > 1e-3:
        print("gradients differ from JAX", flush=True)
        return 1
    args = (params, feeds["ids"], feeds["target"])

    @jax.jit
    def step(p: dict[str, Any], mom: dict[str, Any], vel: dict[str, Any], t: Any, ids: Any, target: Any) -> Any:
        loss, g = jax.value_and_grad(jax_loss)(p, ids, target)
        t = t + 1
        mom = {k: B1 * mom[k] + (1 - B1) * g[k] for k in p}
        vel = {k: B2 * vel[k] + (1 - B2) * g[k] ** 2 for k in p}
        return loss, {k: p[k] - LR * (mom[k] / (1 - B1 ** t)) / (jnp.sqrt(vel[k] / (1 - B2 ** t)) + EPS)
                      for k in p}, mom, vel, t

    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    t0 = np.zeros((), np.float32)
    ts_ins: dict[str, Any] = dict(feeds)
    for k in keys:
        ts_ins[pub[k]], ts_ins[f"m_{pub[k]}"], ts_ins[f"v_{pub[k]}"] = params[k], zeros[k], zeros[k]
    ts_ins["step"] = t0
    jargs = (params, zeros, zeros, t0, feeds["ids"], feeds["target"])

    def step_error(got: dict[str, Any]) -> float:
        _, new, _, _, _ = step(*jargs)
        return max(float(np.abs(np.asarray(got[f"new_{pub[k]}"]) - np.asarray(new[k])).max()
                         / (np.abs(params[k]).max() + 1e-12)) for k in keys)

    print(f"lstm_encoder batch {a.batch}: one Adam step vs JAX, worst max-abs error / max-abs weight "
          f"{step_error(model.vm.run(ts_ins, 'train_step')):.2e}", flush=True)

    def grad_jax() -> object:
        return jax.block_until_ready(f(*args))

    def grad_ours() -> object:
        return model.vm.run(feeds, "grad")

    def step_jax() -> object:
        return jax.block_until_ready(step(*jargs))

    def step_ours() -> object:
        return model.vm.run(ts_ins, "train_step")

    for what, pair in (("@grad", (grad_jax, grad_ours)), ("@train_step", (step_jax, step_ours))):
        t_jax, t_ours = block_medians(list(pair), runs=a.runs)
        print(f"lstm_encoder {what:11s} batch {a.batch}: jax.jit {t_jax * 1e3:8.3f} ms   mlc {t_ours * 1e3:8.3f} ms"
              f"   jax/mlc {t_jax / t_ours:5.2f}x", flush=True)
    # the replayed tapes compute what the first (walked) calls did
    after = max(worst_error(model.vm.run(feeds, "grad")), step_error(model.vm.run(ts_ins, "train_step")))
    print(f"after timing: worst relative error {after:.2e}", flush=True)
    return 0 if after <= 1e-3 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
