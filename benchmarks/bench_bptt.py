"""Backpropagation through time on the CPU: mlc's compiled `@grad` of the two-layer LSTM encoder
(tests/models/lstm_encoder.torchscript.onnx, mse loss; the backward is a reverse graph Loop) against
jax.jit(jax.value_and_grad) of the same model written with lax.scan, in the same run.

    python benchmarks/bench_bptt.py [--batch 32] [--runs 20]

Both sides use the ONNX file's weights and the same batch in f32; the loss and every gradient are
compared before timing (JAX is an independent oracle of the gradients). Timed in alternating blocks
(runtime.bench.block_medians), median per call. The sequence length is the export's (7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "models" / "lstm_encoder.torchscript.onnx"


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
    out = Autodiff(loss="mse:target").apply(m, PassContext(constants=consts))
    model = model_from_artifact(loads(build_module(with_memory_constants(out, consts), consts, "cpu").result.data),
                                "<bench>")
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 100, (a.batch, 7)), "target": rng.standard_normal((a.batch, 5)).astype(np.float32)}
    params = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    f = jax.jit(jax.value_and_grad(jax_loss))
    want_loss, want = f(params, feeds["ids"], feeds["target"])
    got = model.vm.run(feeds, "grad")
    main_fn = out.get("main")
    assert isinstance(main_fn, Function)
    keys = differentiable_constants(main_fn, Provenance.of(out.meta, consts))
    pub = public_names(keys, [])
    worst = abs(float(got["loss"]) - float(want_loss)) / abs(float(want_loss))
    for k in keys:
        g = np.asarray(got[f"grad_{pub[k]}"])
        if k in want:
            ref = np.asarray(want[k])
        else:  # a bias half the importer folded: c_<lstm>_d0_Wb / _Rb (both get dL/dB's same half)
            layer = "onnx::LSTM_197" if "LSTM_output" in k else "onnx::LSTM_217"
            ref = np.asarray(want[layer])[0].reshape(2, -1)[0 if k.endswith("Wb") else 1]
        worst = max(worst, float(np.abs(g - ref).max() / (np.abs(ref).max() + 1e-12)))
    print(f"lstm_encoder batch {a.batch}: {len(keys)} gradients vs jax.grad, worst max-abs error / max-abs "
          f"{worst:.2e}", flush=True)
    if worst > 1e-3:
        print("gradients differ from JAX", flush=True)
        return 1
    args = (params, feeds["ids"], feeds["target"])

    def run_jax() -> object:
        return jax.block_until_ready(f(*args))

    def run_ours() -> object:
        return model.vm.run(feeds, "grad")

    t_jax, t_ours = block_medians([run_jax, run_ours], runs=a.runs)
    print(f"lstm_encoder @grad batch {a.batch}: jax.jit {t_jax * 1e3:8.3f} ms   mlc {t_ours * 1e3:8.3f} ms   "
          f"jax/mlc {t_jax / t_ours:5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
