"""A graph function evaluated with jax.numpy, op by op: the JAX side of the autodiff tests and of
benchmarks/bench_train_step.py (an oracle written apart from the gradient rules; only the ops the zoo
models use)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mlc.ir import Function, GetItem, Module, OpCall, TensorType, Var


def jax_forward(m: Module, feeds: dict[str, Any], params: dict[str, Any]) -> Any:
    """@main's (first) result: inputs from `feeds`, constants by key from `params`."""
    import jax.numpy as jnp
    from mlc.ir.graph import Constant

    f = m.get("main")
    assert isinstance(f, Function)
    recipes = {r[0]: r[1:] for k, v in m.meta if k == "derived" for r in v}  # type: ignore[union-attr]

    def constant(key: str) -> Any:
        """A constant by key; one the importer folded from initializers is folded again here, from
        `params` (so JAX differentiates the initializers, as `mlc autodiff --wrt all` does)."""
        if key not in recipes:
            return params[key]
        op, args, attrs = recipes[key]
        return apply(str(op), [constant(a) for a in args], dict(attrs))

    def apply(op: str, a: list[Any], at: dict[str, Any]) -> Any:
        return _apply(op, a, at, f, feeds)

    env: dict[str, Any] = {p.name: jnp.asarray(feeds[p.name]) for p in f.params}
    for b in f.body.bindings:
        n = b.node
        if isinstance(n, Constant):
            env[b.var.name] = constant(n.key)
            continue
        if isinstance(n, GetItem):
            env[b.var.name] = env[n.tuple_value.name][n.index]
            continue
        assert isinstance(n, OpCall), n
        env[b.var.name] = apply(n.op, [env[v.name] for v in n.args], dict(n.attrs))
    return env[f.body.results[0].name]


def _apply(op: str, a: list[Any], at: dict[str, Any], f: Function, feeds: dict[str, Any]) -> Any:
    import jax
    import jax.numpy as jnp

    if op in ("add", "sub", "mul", "div", "matmul", "where", "erf", "relu", "reshape", "transpose"):
        fn = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide, "matmul": jnp.matmul,
              "where": jnp.where, "erf": jax.scipy.special.erf, "relu": jax.nn.relu}.get(op)
        if op == "reshape":
            r = a[0].reshape([dim_value(d, f, feeds) for d in at["shape"]])
        elif op == "transpose":
            r = jnp.transpose(a[0], at.get("perm"))
        else:
            assert fn is not None
            r = fn(*a)
    elif op == "softmax":
        r = jax.nn.softmax(a[0], axis=int(at.get("axis", -1)))
    elif op == "layer_norm":
        mu = a[0].mean(-1, keepdims=True)
        var = ((a[0] - mu) ** 2).mean(-1, keepdims=True)
        r = (a[0] - mu) / jnp.sqrt(var + float(at.get("epsilon", 1e-5))) * a[1] + (a[2] if len(a) > 2 else 0)
    elif op == "split":
        secs = np.cumsum([int(s) for s in at["sections"]])[:-1]
        r = tuple(jnp.split(a[0], secs, axis=int(at.get("axis", 0))))
    elif op == "strided_slice":
        idx = [slice(None)] * a[0].ndim
        for ax, bg, e in zip(at["axes"], at["begin"], at["end"]):
            idx[int(ax)] = slice(dim_value(bg, f, feeds), dim_value(e, f, feeds))
        r = a[0][tuple(idx)]
    elif op == "conv2d":
        p = [int(x) for x in at.get("pads", (0, 0, 0, 0))]
        r = jax.lax.conv_general_dilated(a[0], a[1], tuple(int(s) for s in at.get("strides", (1, 1))),
                                         [(p[0], p[2]), (p[1], p[3])],
                                         rhs_dilation=tuple(int(s) for s in at.get("dilations", (1, 1))),
                                         feature_group_count=int(at.get("groups", 1)))
    elif op == "batch_norm":
        sh = (1, -1, 1, 1)
        r = (a[0] - a[3].reshape(sh)) / jnp.sqrt(a[4].reshape(sh) + float(at.get("epsilon", 1e-5))) \
            * a[1].reshape(sh) + a[2].reshape(sh)
    elif op == "global_avg_pool2d":
        r = a[0].mean(axis=(2, 3), keepdims=True)
    else:
        raise AssertionError(f"the JAX oracle has no {op}")
    return r


def dim_value(d: Any, f: Function, feeds: dict[str, Any]) -> int:
    """A dim attribute (an int or an expression of the inputs' symbolic dims) for these feeds."""
    from mlc.ir.arith import evaluate

    env: dict[str, int] = {}
    for p in f.params:
        assert isinstance(p.type, TensorType) and p.type.shape is not None
        for e, n in zip(p.type.shape, np.shape(feeds[p.name])):
            if isinstance(e, Var):
                env[e.name] = int(n)
    return int(evaluate(d, env)) if not isinstance(d, int) else d
