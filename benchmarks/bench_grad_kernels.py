"""The backward kernels of conv, pooling and layer norm on the CPU (default schedule) beside jax.jit, same run.

    python benchmarks/bench_grad_kernels.py [--batch 8] [--runs 9]

Per layer (ResNet-style shapes): conv2d forward, conv2d_grad_data, conv2d_grad_weight, then
max_pool2d / max_pool2d_grad and layer_norm / layer_norm_grad (4 x batch rows of 128 x 256), each one
compiled kernel (`build_module` of a one-op graph) against
the same computation under jax.jit on the CPU (for the gradients, jax.vjp of lax.conv_general_dilated /
reduce_window; XLA drops the unused forward). Prints the median milliseconds of both and the ratio
jax / mlc (above 1: mlc is faster), timed in alternating blocks (runtime.bench.block_medians).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from mlc.ir import Binding, Block, Const, Function, Module, OpCall, TensorType, UnknownType, Value, attrs_of
from mlc.passes.registry import PassContext, get_pass
from mlc.runtime.artifact import loads
from mlc.runtime.bench import block_medians
from mlc.runtime.model import model_from_artifact

import mlc.compiler as C

# name, x (N omitted), weight, conv attrs
LAYERS = [
    ("3x3 s1 64->64 @28", (64, 28, 28), (64, 64, 3, 3), {"pads": (1, 1, 1, 1)}),
    ("3x3 s2 64->128 @56", (64, 56, 56), (128, 64, 3, 3), {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ("3x3 dw s1 128 @28", (128, 28, 28), (128, 1, 3, 3), {"pads": (1, 1, 1, 1), "groups": 128}),
]
POOL = ("max 3x3 s2 64 @56", (64, 56, 56), {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)})


def compiled(op: str, arrays: list[np.ndarray], attrs: dict[str, Any]) -> Callable[[], object]:
    params = tuple(Value(f"a{i}", TensorType(tuple(Const(d) for d in a.shape), "f32")) for i, a in enumerate(arrays))
    out = Value("y", UnknownType())
    m = Module((Function("main", params, Block((Binding(out, OpCall(op, params, attrs_of(attrs))),), (out,))),))
    info = get_pass("shape-infer")
    assert info is not None
    m = info.fn(m, PassContext(), **info.validate_options({}))
    model = model_from_artifact(loads(C.build_module(C.with_memory_constants(m, {}), {}).result.data), op)
    feeds = {f"a{i}": a for i, a in enumerate(arrays)}
    return lambda: model(**feeds)


def conv_fn(attrs: dict[str, Any]) -> Callable[[Any, Any], Any]:
    s, p, g = attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)), attrs.get("groups", 1)
    return lambda x, w: lax.conv_general_dilated(x, w, s, [(p[0], p[2]), (p[1], p[3])],
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=g)


def jitted(fn: Callable[..., Any], *arrays: np.ndarray) -> Callable[[], object]:
    f = jax.jit(fn)
    args = [jnp.asarray(a) for a in arrays]
    return lambda: f(*args).block_until_ready()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows: list[tuple[str, Callable[[], object], Callable[[], object]]] = []
    for name, xs, ws, attrs in LAYERS:
        x = rng.standard_normal((args.batch,) + xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        f = conv_fn(attrs)
        dy = rng.standard_normal(jax.eval_shape(f, x, w).shape).astype(np.float32)
        rows.append((f"{name} conv2d", compiled("conv2d", [x, w], attrs), jitted(f, x, w)))
        rows.append((f"{name} grad_data", compiled("conv2d_grad_data", [dy, w], {**attrs, "input_size": xs[1:]}),
                     jitted(lambda x, w, dy, f=f: jax.vjp(f, x, w)[1](dy)[0], x, w, dy)))
        rows.append((f"{name} grad_weight", compiled("conv2d_grad_weight", [x, dy], {**attrs, "kernel_shape": ws[2:]}),
                     jitted(lambda x, w, dy, f=f: jax.vjp(f, x, w)[1](dy)[1], x, w, dy)))
    name, xs, attrs = POOL
    x = rng.standard_normal((args.batch,) + xs).astype(np.float32)
    k, s, p = attrs["kernel_shape"], attrs["strides"], attrs["pads"]

    def pool(x: Any) -> Any:
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1) + k, (1, 1) + s, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))

    dy = rng.standard_normal(jax.eval_shape(pool, x).shape).astype(np.float32)
    rows.append((f"{name} max_pool2d", compiled("max_pool2d", [x], attrs), jitted(pool, x)))
    rows.append((f"{name} max_pool2d_grad", compiled("max_pool2d_grad", [x, dy], attrs),
                 jitted(lambda x, dy: jax.vjp(pool, x)[1](dy)[0], x, dy)))
    x = rng.standard_normal((args.batch * 4, 128, 256)).astype(np.float32)
    dy, scale = rng.standard_normal(x.shape).astype(np.float32), rng.standard_normal(256).astype(np.float32)

    def ln(x: Any) -> Any:
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * scale

    rows.append((f"layer_norm {x.shape[0]}x128x256", compiled("layer_norm", [x, scale], {"axis": -1}), jitted(ln, x)))
    rows.append((f"layer_norm_grad {x.shape[0]}x128x256", compiled("layer_norm_grad", [x, dy, scale], {"axis": -1}),
                 jitted(lambda x, dy: jax.vjp(ln, x)[1](dy)[0], x, dy)))
    print(f"batch {args.batch}; median ms (jax {jax.__version__} jit on CPU, mlc default CPU schedule)")
    print(f"{'kernel':<40} {'mlc':>9} {'jax':>9} {'jax/mlc':>8}")
    for label, ours, peer in rows:
        t_ours, t_peer = block_medians([ours, peer], runs=args.runs)
        print(f"{label:<40} {t_ours * 1e3:9.2f} {t_peer * 1e3:9.2f} {t_peer / t_ours:8.2f}")


if __name__ == "__main__":
    main()
