"""autodiff: every gradient rule against central finite differences of the reference interpreter
(float64), the zoo models' loss gradients against JAX and finite differences, compiled against
interpreted @grad, random graphs (hypothesis), a few training steps, and the CLI's bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax_graph import jax_forward
from mlc.ir import Binding, Block, Const, Function, GetItem, Module, OpCall, TensorType, UnknownType, Value, Var
from mlc.ir.arith import as_int
from mlc.ir.autodiff import Loss, Spec, grad_function
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import from_numpy
from mlc.ir.graph import attrs_of
from mlc.ir.interp import run_function
from mlc.ir.ops import all_ops
from mlc.ir.ops.registry import NO_GRAD
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext

RNG = np.random.default_rng(0)


def _module(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], items: int = 0,
            sym: dict[int, tuple[int, Var]] | None = None) -> Module:
    """`@main(a0, a1, ...) = op(...)`; `items` > 0: the op returns a tuple, returned field by field."""
    shapes = [[Const(d) for d in a.shape] for a in arrays]
    for i, (ax, v) in (sym or {}).items():
        shapes[i][ax] = v
    params = tuple(Value(f"a{i}", TensorType(tuple(s), from_numpy(a.dtype))) for i, (s, a) in enumerate(zip(shapes, arrays)))
    y = Value("y", UnknownType())
    bs = [Binding(y, OpCall(op, params, attrs_of(attrs)))]
    results = [y]
    if items:
        results = [Value(f"y{i}", UnknownType()) for i in range(items)]
        bs += [Binding(r, GetItem(y, i)) for i, r in enumerate(results)]
    return Module((Function("main", params, Block(tuple(bs), tuple(results))),))


def _autodiff(m: Module, consts: dict[str, np.ndarray] | None = None, **opts: Any) -> Module:
    """The pass; with `consts`, folded constants are traced back to their initializers (module meta)."""
    return Autodiff(**opts).apply(m, PassContext(constants=consts))


def check_vjp(op: str, arrays: list[np.ndarray], attrs: dict[str, Any] | None = None, items: int = 0,
              sym: dict[int, tuple[int, Var]] | None = None, h: float = 1e-6, tol: float = 1e-6) -> None:
    """@grad's VJP of `op` equals central differences of <dout, op(x)> in every float input element."""
    feeds = {f"a{i}": a for i, a in enumerate(arrays)}
    floats = [k for k, a in feeds.items() if a.dtype.kind == "f"]
    m = _autodiff(_module(op, arrays, attrs or {}, items, sym), wrt="none", wrt_inputs=",".join(floats))
    ys = run_function(m, feeds)
    rng = np.random.default_rng(1)
    douts = {f"d_{k}": rng.standard_normal(np.shape(v)) for k, v in ys.items()}
    got = run_function(m, {**feeds, **douts}, func="grad")

    def objective(f: dict[str, np.ndarray]) -> float:
        outs = run_function(m, f)
        return float(sum((np.asarray(outs[k]) * douts[f"d_{k}"]).sum() for k in outs))

    for k in floats:
        x = feeds[k]
        fd = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            for sign in (1, -1):
                xp = x.copy()
                xp[idx] += sign * h
                fd[idx] += sign * objective({**feeds, k: xp}) / (2 * h)
        np.testing.assert_allclose(got[f"grad_{k}"], fd, rtol=1e-5, atol=tol, err_msg=f"{op}: d/d{k}")


def f64(*shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return RNG.uniform(lo, hi, shape)


def away(*shape: int, gap: float = 0.2) -> np.ndarray:
    """Values at least `gap` from 0 (kinks of relu/abs at 0, no ties)."""
    x = f64(*shape)
    return np.where(np.abs(x) < gap, np.sign(x + 1e-12) * gap + x, x)


def distinct(*shape: int) -> np.ndarray:
    """Distinct values spaced at least 0.1 apart (max/min/sort without ties)."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) * 0.1 - n * 0.05).reshape(shape)


POS = (3, 4)
CASES: list[tuple[str, str, list[np.ndarray], dict[str, Any]]] = [
    # unary
    ("sqrt", "sqrt", [f64(*POS, lo=0.5)], {}),
    ("exp", "exp", [f64(*POS)], {}),
    ("log", "log", [f64(*POS, lo=0.5)], {}),
    ("erf", "erf", [f64(*POS)], {}),
    ("neg", "neg", [f64(*POS)], {}),
    ("abs", "abs", [away(*POS)], {}),
    ("relu", "relu", [away(*POS)], {}),
    ("sigmoid", "sigmoid", [f64(*POS)], {}),
    ("tanh", "tanh", [f64(*POS)], {}),
    ("reciprocal", "reciprocal", [f64(*POS, lo=0.5)], {}),
    ("sin", "sin", [f64(*POS)], {}),
    ("cos", "cos", [f64(*POS)], {}),
    ("leaky_relu", "leaky_relu", [away(*POS)], {"alpha": 0.2}),
    ("gelu", "gelu", [f64(*POS)], {}),
    ("gelu_tanh", "gelu", [f64(*POS)], {"approximate": "tanh"}),
    ("clip", "clip", [np.array([[-1.5, -0.3, 0.2, 1.2], [0.7, -0.8, 0.05, 1.9]])], {"min": -0.5, "max": 0.6}),
    ("cast", "cast", [f64(*POS)], {"dtype": "f64"}),
    # binary, with broadcasting
    ("add", "add", [f64(3, 4), f64(4)], {}),
    ("add_bcast_both", "add", [f64(3, 1), f64(1, 4)], {}),
    ("sub", "sub", [f64(2, 3, 1), f64(3, 4)], {}),
    ("mul", "mul", [f64(3, 1), f64(2, 1, 4)], {}),
    ("div", "div", [f64(3, 4), f64(4, lo=0.5)], {}),
    ("pow", "pow", [f64(3, 4, lo=0.5), f64(4)], {}),
    ("pow_scalar_exp", "pow", [f64(3, 4, lo=0.5), np.array(2.0)], {}),
    ("minimum", "minimum", [distinct(3, 4), distinct(4) + 0.033], {}),
    ("maximum", "maximum", [distinct(3, 4), distinct(3, 1) + 0.033], {}),
    ("where", "where", [RNG.random((3, 4)) < 0.5, f64(3, 4), f64(4)], {}),
    # reductions
    ("sum", "sum", [f64(2, 3, 4)], {"axes": (1,), "keepdims": False}),
    ("sum_all", "sum", [f64(2, 3)], {"axes": None, "keepdims": True}),
    ("mean", "mean", [f64(2, 3, 4)], {"axes": (0, 2), "keepdims": False}),
    ("max", "max", [distinct(3, 4)], {"axes": (1,), "keepdims": True}),
    ("min", "min", [distinct(3, 4)], {"axes": None, "keepdims": False}),
    ("prod", "prod", [f64(2, 3, lo=0.5)], {"axes": (1,), "keepdims": False}),
    ("cumsum", "cumsum", [f64(3, 4)], {"axis": 1}),
    ("cumsum_rev_excl", "cumsum", [f64(3, 4)], {"axis": 0, "exclusive": True, "reverse": True}),
    # matmul: batched, broadcast batch dims, 1-D operands
    ("matmul", "matmul", [f64(3, 4), f64(4, 2)], {}),
    ("matmul_batch", "matmul", [f64(2, 3, 4), f64(4, 5)], {}),
    ("matmul_bcast", "matmul", [f64(2, 1, 3, 4), f64(3, 4, 2)], {}),
    ("matmul_vec_left", "matmul", [f64(4), f64(2, 4, 3)], {}),
    ("matmul_vec_right", "matmul", [f64(3, 4), f64(4)], {}),
    ("matmul_dot", "matmul", [f64(4), f64(4)], {}),
    # shape ops
    ("reshape", "reshape", [f64(2, 6)], {"shape": (3, 4)}),
    ("squeeze", "squeeze", [f64(3, 1, 4)], {"axes": (1,)}),
    ("expand_dims", "expand_dims", [f64(3, 4)], {"axes": (0, 2)}),
    ("transpose", "transpose", [f64(2, 3, 4)], {"perm": (2, 0, 1)}),
    ("transpose_rev", "transpose", [f64(2, 3, 4)], {"perm": None}),
    ("broadcast_to", "broadcast_to", [f64(3, 1)], {"shape": (2, 3, 4)}),
    ("concat", "concat", [f64(2, 3), f64(2, 1), f64(2, 2)], {"axis": 1}),
    ("strided_slice", "strided_slice", [f64(5, 6)], {"axes": (0, 1), "begin": (1, -4), "end": (4, 100)}),
    ("strided_slice_step", "strided_slice", [f64(7, 3)], {"axes": (0,), "begin": (1,), "end": (7,), "strides": (2,)}),
    ("pad", "pad", [f64(2, 3)], {"pads": (1, 0, 0, 2), "value": 1.5}),
    # indexing
    ("take", "take", [f64(4, 3), np.array([[0, 3], [3, -1]])], {"axis": 0}),
    ("take_axis1", "take", [f64(2, 4, 3), np.array([2, 0, 2])], {"axis": 1}),
    ("gather_elements", "gather_elements", [f64(3, 4), np.array([[0, 1, 0, 2], [2, 2, 1, 0]])], {"axis": 0}),
    ("gather_nd", "gather_nd", [f64(3, 4), np.array([[0, 1], [2, 3], [0, 1]])], {}),
    ("scatter_elements", "scatter_elements", [f64(3, 4), np.array([[0, 2, 1, 0]]), f64(1, 4)], {"axis": 0}),
    ("scatter_elements_add", "scatter_elements", [f64(3, 4), np.array([[0, 2, 1, 0], [0, 1, 1, 2]]), f64(2, 4)],
     {"axis": 0, "reduction": "add"}),
    ("scatter_nd", "scatter_nd", [f64(3, 4), np.array([[2], [0]]), f64(2, 4)], {}),
    # normalization, conv and pooling (rules in conv_pool.py / normalization.py, checked here end to end)
    ("softmax", "softmax", [f64(3, 4)], {"axis": -1}),
    ("log_softmax", "log_softmax", [f64(2, 3, 4)], {"axis": 1}),
    ("layer_norm", "layer_norm", [f64(2, 3, 4), f64(4), f64(4)], {"axis": -1}),
    ("batch_norm", "batch_norm", [f64(2, 3, 2, 2), f64(3), f64(3), f64(3), f64(3, lo=0.5)], {}),
    ("conv2d", "conv2d", [f64(1, 2, 5, 5), f64(4, 1, 3, 3)],
     {"strides": (2, 2), "pads": (1, 0, 1, 1), "groups": 2}),
    ("conv2d_dilated", "conv2d", [f64(1, 1, 5, 5), f64(2, 1, 2, 2)], {"dilations": (2, 1)}),
    ("conv2d_transpose", "conv2d_transpose", [f64(1, 2, 3, 3), f64(2, 1, 2, 2)], {"strides": (2, 2)}),
    ("max_pool2d", "max_pool2d", [distinct(1, 2, 4, 4)], {"kernel_shape": (2, 2), "strides": (2, 2)}),
    ("avg_pool2d", "avg_pool2d", [f64(1, 1, 5, 5)], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ("global_avg_pool2d", "global_avg_pool2d", [f64(2, 3, 2, 3)], {}),
]


@pytest.mark.parametrize("name,op,arrays,attrs", CASES, ids=[c[0] for c in CASES])
def test_rule_matches_finite_differences(name: str, op: str, arrays: list[np.ndarray], attrs: dict[str, Any]) -> None:
    check_vjp(op, arrays, attrs)


def test_split_rule_with_an_unused_piece() -> None:
    """A tuple result: each used piece's cotangent goes back, the unused one contributes zeros."""
    x = f64(2, 6)
    m = _autodiff(_module("split", [x], {"axis": 1, "sections": (1, 2, 3)}, items=3), wrt="none", wrt_inputs="a0")
    g = run_function(m, {"a0": x, "d_y0": np.ones((2, 1)), "d_y1": 2 * np.ones((2, 2)), "d_y2": 3 * np.ones((2, 3))},
                     func="grad")
    np.testing.assert_array_equal(g["grad_a0"], [[1, 2, 2, 3, 3, 3]] * 2)
    check_vjp("split", [x], {"axis": 1, "sections": (2, 4)}, items=2)


def test_symbolic_dims_broadcast() -> None:
    """n x 3 + 3, n unknown until run time: the bias cotangent sums over n."""
    n = Var("n")
    x, b = f64(5, 3), f64(3)
    check_vjp("add", [x, b], sym={0: (0, n)})
    check_vjp("mean", [x], {"axes": (0,), "keepdims": False}, sym={0: (0, n)})
    check_vjp("matmul", [x, f64(3, 2)], sym={0: (0, n)})


def test_every_op_declares_its_gradient() -> None:
    """Every op with inputs has a rule or says it has none (register_no_grad)."""
    missing = [n for n, d in all_ops().items() if d.grad is None and d.num_inputs[1] != 0]
    assert missing == []
    for n in ("floor", "argmax", "equal", "topk_indices"):
        assert all_ops()[n].grad is NO_GRAD


def test_no_gradient_op_on_the_path_is_a_located_error() -> None:
    x = f64(3)
    y = Value("y", UnknownType())
    z = Value("z", UnknownType())
    p = Value("x", TensorType((Const(3),), "f64"))
    from mlc.ir.diagnostics import Loc

    loc = Loc("m.ir", 7, 3)
    fn = Function("main", (p,), Block((Binding(y, OpCall("floor", (p,)), loc), Binding(z, OpCall("mul", (y, p)))), (z,)))
    with pytest.raises(MlcError) as e:
        _autodiff(Module((fn,)), wrt="none", wrt_inputs="x", loss="sum")
    assert "floor" in e.value.message and "%y" in e.value.message and e.value.loc.line == 7
    # off the path (a bool mask from a comparison) is fine: relu written with where
    w = Value("w", UnknownType())
    fn2 = Function("main", (p,), Block((
        Binding(y, OpCall("greater", (p, p))), Binding(w, OpCall("where", (y, p, p))),), (w,)))
    g = run_function(_autodiff(Module((fn2,)), wrt="none", wrt_inputs="x", loss="sum"), {"x": x}, func="grad")
    np.testing.assert_allclose(g["grad_x"], np.ones(3))


def test_grad_function_direct_api_names() -> None:
    x = f64(2, 3)
    m = _autodiff(_module("tanh", [x], {}), wrt="none", wrt_inputs="a0")
    f = grad_function(m.get("main"), Spec((), ("a0",), Loss("mean")))  # type: ignore[arg-type]
    assert [r.name for r in f.body.results] == ["loss", "grad_a0"]
    assert [p.name for p in f.params] == ["a0"]


_UN = ("tanh", "sigmoid", "sin", "cos", "neg")
_BIN = ("add", "sub", "mul", "matmul")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_UN + _BIN), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=6),
       st.integers(0, 2**31 - 1))
def test_random_graphs_gradient_matches_finite_differences(steps: list[tuple[str, int, int]], seed: int) -> None:
    """Random elementwise/matmul graphs over x, w (3x3), b (3), broadcasting: the `sum` loss's gradient."""
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.uniform(-1, 1, (3, 3)), "w": rng.uniform(-1, 1, (3, 3)), "b": rng.uniform(-1, 1, (3,))}
    params = tuple(Value(k, TensorType(tuple(Const(d) for d in v.shape), "f64")) for k, v in feeds.items())
    vals: list[Value] = list(params)
    bs: list[Binding] = []
    for i, (op, j, k) in enumerate(steps):
        a = vals[j % len(vals)]
        if op == "matmul":
            args: tuple[Value, ...] = (a, params[1])
        elif op in _BIN:
            args = (a, vals[k % len(vals)])
        else:
            args = (a,)
        v = Value(f"v{i}", UnknownType())
        bs.append(Binding(v, OpCall(op, args)))
        vals.append(v)
    m = Module((Function("main", params, Block(tuple(bs), (vals[-1],))),))
    m = _autodiff(m, wrt="none", wrt_inputs="x,w,b", loss="sum")
    got = run_function(m, feeds, func="grad")
    h = 1e-6
    for name, x in feeds.items():
        fd = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            for sign in (1, -1):
                xp = x.copy()
                xp[idx] += sign * h
                fd[idx] += sign * run_function(m, {**feeds, name: xp}, func="grad")["loss"] / (2 * h)
        np.testing.assert_allclose(got[f"grad_{name}"], fd, rtol=1e-5, atol=1e-6)


# ---- zoo models: JAX, finite differences, compiled vs interpreted, training ----------------------
def _zoo(name: str) -> tuple[Module, dict[str, np.ndarray]]:
    from mlc.frontend.onnx_import import import_onnx
    from mlc.frontend.zoo import build

    return import_onnx(_small_cnn() if name == "small_cnn" else build(name))


def _to_f64(m: Module, consts: dict[str, np.ndarray]) -> tuple[Module, dict[str, np.ndarray]]:
    """The same module computing in float64 (for finite differences and a tight JAX comparison)."""
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module

    m64 = parse_module(print_module(m).replace("f32", "f64"))
    return m64, {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in consts.items()}


def _needs_rules(m: Module) -> None:
    from mlc.ir.rewrite import walk_bindings

    f = m.get("main")
    assert isinstance(f, Function)
    missing = sorted({b.node.op for b in walk_bindings(f.body)
                      if isinstance(b.node, OpCall) and all_ops()[b.node.op].grad is None})
    if missing:
        pytest.skip(f"no gradient rule yet for {', '.join(missing)} (ir/ops/conv_pool.py, normalization.py)")


ZOO_LOSS = {"mlp": ("cross-entropy:labels", (6, 64)), "resnext": ("cross-entropy:labels", (2, 3, 16, 16)),
            "gpt_block": ("mse:target", (2, 5, 32))}


def _zoo_inputs(name: str, out_shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    loss, xs = ZOO_LOSS[name]
    feeds = {"image" if len(xs) == 4 else "x": rng.standard_normal(xs)}
    if loss.startswith("cross"):
        feeds["labels"] = rng.integers(0, out_shape[-1], out_shape[:-1])
    else:
        feeds["target"] = rng.standard_normal(out_shape)
    return feeds


@pytest.mark.parametrize("name", ["mlp", "gpt_block", "small_cnn",
                                  pytest.param("resnext", marks=pytest.mark.conformance)])
def test_zoo_loss_gradients_match_jax(name: str) -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    m, consts = _zoo(name)
    _needs_rules(m)
    loss = ZOO_LOSS[name][0]
    m64, c64 = _to_f64(m, consts)
    out = _autodiff(m64, c64, loss=loss)
    probe = _zoo_inputs(name, (1,))
    shape = run_function(out, {k: v for k, v in probe.items() if k in ("x", "image")}, c64)
    feeds = _zoo_inputs(name, next(iter(shape.values())).shape)
    got = run_function(out, feeds, c64, func="grad")
    grad_f = out.get("grad")
    assert isinstance(grad_f, Function)
    keys = [r.name[len("grad_"):] for r in grad_f.body.results[1:]]
    inputs = {k: v for k, v in feeds.items() if k in ("x", "image")}

    def loss_fn(params: dict[str, Any]) -> Any:
        y = jax_forward(m64, inputs, {**c64, **params})
        if "labels" in feeds:  # the zoo models end in a softmax (mlp) or give logits (resnext)
            f = m64.get("main")
            assert isinstance(f, Function)
            ends_in_softmax = isinstance(f.body.bindings[-1].node, OpCall) and f.body.bindings[-1].node.op == "softmax"
            logp = jnp.log(y) if ends_in_softmax else jax.nn.log_softmax(y, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, feeds["labels"][..., None], axis=-1))
        return jnp.mean((y - feeds["target"]) ** 2)

    params = {k: jnp.asarray(c64[k]) for k in keys}
    want_loss, want = jax.jit(jax.value_and_grad(loss_fn))(params)
    np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-10)
    for k in keys:
        np.testing.assert_allclose(got[f"grad_{k}"], want[k], rtol=1e-7, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("name", ["mlp", "gpt_block", "small_cnn", "resnext"])
def test_zoo_loss_gradients_match_finite_differences(name: str) -> None:
    """Directional derivatives of the f64 loss along random weight directions (a small step, so that
    no relu kink is crossed)."""
    m, consts = _zoo(name)
    _needs_rules(m)
    m64, c64 = _to_f64(m, consts)
    out = _autodiff(m64, c64, loss=ZOO_LOSS[name][0])
    probe = _zoo_inputs(name, (1,))
    shape = next(iter(run_function(out, {k: v for k, v in probe.items() if k in ("x", "image")}, c64).values())).shape
    feeds = _zoo_inputs(name, shape)
    got = run_function(out, feeds, c64, func="grad")
    rng = np.random.default_rng(3)
    keys = [k[len("grad_"):] for k in got if k.startswith("grad_")]
    for _ in range(2):
        v = {k: rng.standard_normal(c64[k].shape) for k in keys}
        h = 1e-7

        def at(s: float, v: dict[str, np.ndarray] = v) -> float:
            return float(run_function(out, feeds, {**c64, **{k: c64[k] + s * v[k] for k in keys}}, func="grad")["loss"])

        fd = (at(h) - at(-h)) / (2 * h)
        an = sum(float((got[f"grad_{k}"] * v[k]).sum()) for k in keys)
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)


def _build(m: Module, consts: dict[str, np.ndarray]) -> Any:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    built = build_module(with_memory_constants(m, consts), consts, "cpu")
    return model_from_artifact(loads(built.result.data), "<test>")


def _train_inputs(out: Module, consts: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """@train_step's first inputs: the batch, the weights from the constants, zero optimizer state."""
    f = out.get("train_step")
    assert isinstance(f, Function)
    ins = dict(feeds)
    for p in f.params:
        if p.name in ins:
            continue
        if p.name in consts:
            ins[p.name] = consts[p.name]
        elif p.name == "step":
            ins[p.name] = np.zeros((), np.float32)
        else:  # m_<key>, v_<key>
            ins[p.name] = np.zeros_like(consts[p.name[2:]])
    return ins


def _advance(ins: dict[str, np.ndarray], outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next step's inputs: every `new_<name>` result replaces input `<name>`."""
    return {**ins, **{k[len("new_"):]: v for k, v in outs.items() if k.startswith("new_")}}


def _f32_feeds(name: str, out: Module, consts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    probe = {k: v.astype(np.float32) for k, v in _zoo_inputs(name, (1,)).items() if k in ("x", "image")}
    shape = next(iter(run_function(out, probe, consts).values())).shape
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in _zoo_inputs(name, shape).items()}


def _small_cnn() -> Any:
    """conv (grouped, strided) -> batch norm -> relu -> global pool -> gemm: the resnext block's ops, small."""
    from mlc.frontend.zoo import GraphBuilder

    b = GraphBuilder("small_cnn", seed=7)
    y = b.conv_bn(b.input("image", ["N", 4, 8, 8]), 4, 8, 3, stride=2, groups=2)
    y = b.n("Flatten", b.n("GlobalAveragePool", y), axis=1)
    b.node("Gemm", [y, b.weight((10, 8)), b.weight((10,), scale=0.1)], out="logits", transB=1)
    b.output("logits", ["N", 10])
    return b.model()


ZOO_LOSS["small_cnn"] = ("cross-entropy:labels", (2, 4, 8, 8))


@pytest.mark.parametrize("name", ["mlp", "small_cnn", pytest.param("resnext", marks=pytest.mark.conformance)])
def test_compiled_grad_and_train_step_match_the_interpreter(name: str) -> None:
    """One CPU build of @main, @grad and @train_step (adam): compiled equals interpreted, and a few
    compiled training steps on one batch lower the loss. (resnext's build takes about a minute here.)"""
    m, consts = _zoo(name)
    _needs_rules(m)
    out = _autodiff(m, consts, loss=ZOO_LOSS[name][0], optimizer="adam", lr=0.01)
    feeds = _f32_feeds(name, out, consts)
    want = run_function(out, feeds, consts, func="grad")
    model = _build(out, consts)
    got = model.vm.run(feeds, "grad")
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-5, err_msg=k)
    ins = _train_inputs(out, consts, feeds)
    first = run_function(out, ins, consts, func="train_step")
    step = model.vm.run(ins, "train_step")
    for k in first:
        np.testing.assert_allclose(step[k], first[k], rtol=2e-4, atol=1e-5, err_msg=k)
    losses = [float(step["loss"])]
    for _ in range(4):
        ins = _advance(ins, step)
        step = model.vm.run(ins, "train_step")
        losses.append(float(step["loss"]))
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
    assert float(ins["step"]) == 4.0


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_train_step_optimizers_against_numpy(opt: str) -> None:
    """One interpreted step of each optimizer equals its update written in numpy from @grad's gradient,
    with weight decay; and repeated steps lower the loss (smoke training)."""
    m, consts = _zoo("mlp")
    hp = {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "weight_decay": 0.01}
    out = _autodiff(m, consts, loss="cross-entropy:labels", optimizer=opt, **hp)
    feeds = _f32_feeds("mlp", out, consts)
    ins = _train_inputs(out, consts, feeds)
    rng = np.random.default_rng(5)
    for k in list(ins):  # non-zero state, so the state's update is checked too
        if k.startswith(("m_", "v_")):
            ins[k] = np.abs(rng.standard_normal(ins[k].shape)).astype(np.float32) * 0.01
    if opt == "adam":
        ins["step"] = np.array(3.0, np.float32)
    g = run_function(out, feeds, consts, func="grad")
    got = run_function(out, ins, consts, func="train_step")
    np.testing.assert_allclose(got["loss"], g["loss"], rtol=1e-6)
    keys = [k[len("grad_"):] for k in g if k.startswith("grad_")]
    for k in keys:
        w = consts[k].astype(np.float64)
        gr = g[f"grad_{k}"] + hp["weight_decay"] * w
        if opt == "sgd":
            new = w - hp["lr"] * gr
        elif opt == "momentum":
            mm = hp["beta1"] * ins[f"m_{k}"] + gr
            np.testing.assert_allclose(got[f"new_m_{k}"], mm, rtol=1e-5, atol=1e-7)
            new = w - hp["lr"] * mm
        else:
            t = 4.0
            mm = hp["beta1"] * ins[f"m_{k}"] + (1 - hp["beta1"]) * gr
            vv = hp["beta2"] * ins[f"v_{k}"] + (1 - hp["beta2"]) * gr * gr
            np.testing.assert_allclose(got[f"new_v_{k}"], vv, rtol=1e-4, atol=1e-8)
            new = w - hp["lr"] * (mm / (1 - hp["beta1"] ** t)) / (np.sqrt(vv / (1 - hp["beta2"] ** t)) + 1e-8)
        np.testing.assert_allclose(got[f"new_{k}"], new, rtol=1e-4, atol=1e-6, err_msg=k)
    losses = []
    for _ in range(5):
        got = run_function(out, ins, consts, func="train_step")
        losses.append(float(got["loss"]))
        ins = _advance(ins, got)
    assert losses[-1] < losses[0], losses


# ---- the command line --------------------------------------------------------------------------
_BAD_IR = """mlc.module v1

graph @main(%x: tensor<N x 4 x f32>, %t: tensor<N x 3 x f32>) {
  %f: tensor<N x 4 x f32> = floor(%x)
  %y: tensor<N x 4 x f32> = mul(%f, %x)
  return %y
}
"""
_GOOD_IR = _BAD_IR.replace("floor(%x)", "tanh(%x)")


def _mlc(*argv: str, cwd: Path) -> Any:
    """`mlc ARGV` in-process through the command group (no interpreter start per call), in `cwd`."""
    from click.testing import CliRunner
    from mlc.cli import commands  # noqa: F401  (registers the subcommands)
    from mlc.cli.main import cli

    monkey = pytest.MonkeyPatch()
    monkey.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(argv))
    finally:
        monkey.undo()


@pytest.mark.parametrize("args,message", [
    (("--wrt", "none", "--wrt-inputs", "x", "--loss", "sum"),
     "m.ir:4:3: error: cannot differentiate through floor: it has no gradient, and %f lies on the path"),
    (("--wrt", "none", "--wrt-inputs", "x", "--loss", "mse:t"),
     "m.ir:3:1: error: --loss mse:t: the loss would not be a scalar: the result %y is f32[N x 4] but the target "
     "'t' is f32[N x 3]"),
    (("--wrt", "none", "--wrt-inputs", "x,nope"), "m.ir:3:1: error: --wrt-inputs: @main has no input 'nope'"),
    (("--wrt", "w"), "m.ir:3:1: error: --wrt: @main has no constant 'w'"),
    (("--wrt", "none", "--wrt-inputs", "x", "--loss", "cross-entropy"), "needs the name of its new input"),
    (("--wrt", "none", "--wrt-inputs", "x", "--optimizer", "adam"), "--optimizer needs --loss"),
])
def test_cli_bad_input_is_one_located_error_and_no_output(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """In-process through the command group (tests/test_bad_input.py runs the real executable)."""
    src = _BAD_IR if "floor" in message else _GOOD_IR
    (tmp_path / "m.ir").write_text(src)
    r = _mlc("autodiff", "m.ir", *args, "-o", "out.ir", cwd=tmp_path)
    assert r.exit_code == 1, r.output
    assert message in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ir"]


def test_cli_autodiff_then_run_grad(tmp_path: Path) -> None:
    """`mlc autodiff` writes @grad beside @main; `mlc run --func grad` runs it in the interpreter."""
    (tmp_path / "m.ir").write_text(_GOOD_IR)
    r = _mlc("autodiff", "m.ir", "--wrt", "none", "--wrt-inputs", "x", "--loss", "mse:t2", "-o", "g.ir", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "g.ir").read_text()
    assert "graph @main(" in text and "graph @grad(%x: tensor<N x 4 x f32>, %t: tensor<N x 3 x f32>, %t2: " in text
    x, t2 = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), np.ones((2, 4), np.float32)
    np.savez(tmp_path / "in.npz", x=x, t=np.zeros((2, 3), np.float32), t2=t2)
    r = _mlc("run", "g.ir", "--func", "grad", "--inputs", "in.npz", "-o", "out.npz", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "out.npz") as z:
        y = np.tanh(x) * x
        np.testing.assert_allclose(z["loss"], np.mean((y - t2) ** 2), rtol=1e-5)
        dy = 2 * (y - t2) / y.size
        np.testing.assert_allclose(z["grad_x"], dy * (x * (1 - np.tanh(x) ** 2) + np.tanh(x)), rtol=1e-5, atol=1e-7)


def _linear_onnx() -> Any:
    """y = x @ W^T + b as torch.nn.Linear exports it: Gemm transB=1, initializers `fc.weight`, `fc.bias`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc.weight")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "fc.bias")
    g = helper.make_graph([helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)], "lin",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_wrt_all_traces_folded_weights_back_to_initializers() -> None:
    """The importer folds Gemm's transposed weight into a constant; `--wrt all` differentiates and
    `@train_step` updates the initializer `fc.weight` itself (named fc_weight, sanitized as the importer
    does), checked against the closed-form gradient of the mean squared error."""
    from mlc.frontend.onnx_import import import_onnx

    m, consts = import_onnx(_linear_onnx())
    main = m.get("main")
    assert isinstance(main, Function)
    assert [b.node.key for b in main.body.bindings if hasattr(b.node, "key")] == ["c_y_bT", "fc.bias"]
    assert "fc.weight" in consts
    out = _autodiff(m, consts, loss="mse:t", optimizer="sgd", lr=0.5)
    grad = out.get("grad")
    step = out.get("train_step")
    assert isinstance(grad, Function) and isinstance(step, Function)
    assert [r.name for r in grad.body.results] == ["loss", "grad_fc_weight", "grad_fc_bias"]
    assert [p.name for p in step.params] == ["x", "t", "fc_weight", "fc_bias"]
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    w, b = consts["fc.weight"].astype(np.float64), consts["fc.bias"].astype(np.float64)
    r = x @ w.T + b - t
    g = run_function(out, {"x": x, "t": t}, consts, func="grad")
    np.testing.assert_allclose(g["grad_fc_weight"], 2 * r.T @ x / r.size, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["grad_fc_bias"], 2 * r.sum(0) / r.size, rtol=1e-5, atol=1e-6)
    s = run_function(out, {"x": x, "t": t, "fc_weight": consts["fc.weight"], "fc_bias": consts["fc.bias"]}, consts,
                     func="train_step")
    np.testing.assert_allclose(s["new_fc_weight"], w - 0.5 * g["grad_fc_weight"], rtol=1e-5, atol=1e-6)
    # without the provenance (no constants given), the folded constant itself is the parameter
    plain = _autodiff(m, loss="mse:t").get("grad")
    assert isinstance(plain, Function)
    assert [r.name for r in plain.body.results] == ["loss", "grad_c_y_bT", "grad_fc_bias"]


@pytest.mark.parametrize("name", ["inception", "graphsage"])
def test_more_zoo_models_mean_loss_matches_finite_differences(name: str) -> None:
    """The other zoo models with a single result (concat of pooled branches; dense graph layers):
    gradients of the mean of the result along random weight directions, in f64."""
    m, consts = _zoo(name)
    m64, c64 = _to_f64(m, consts)
    out = _autodiff(m64, c64, loss="mean")
    main = out.get("main")
    assert isinstance(main, Function)
    rng = np.random.default_rng(0)
    dims = {"N": 2, "V": 5}
    feeds = {p.name: rng.standard_normal([dims[d.name] if isinstance(d, Var) else as_int(d)
                                          for d in p.type.shape]) for p in main.params}  # type: ignore[union-attr]
    got = run_function(out, feeds, c64, func="grad")
    keys = [k[len("grad_"):] for k in got if k.startswith("grad_")]
    assert keys
    for seed in range(1):
        v = {k: np.random.default_rng(seed).standard_normal(c64[k].shape) for k in keys}
        h = 1e-7

        def at(s: float, v: dict[str, np.ndarray] = v) -> float:
            return float(run_function(out, feeds, {**c64, **{k: c64[k] + s * v[k] for k in keys}}, func="grad")["loss"])

        fd = (at(h) - at(-h)) / (2 * h)
        an = sum(float((got[f"grad_{k}"] * v[k]).sum()) for k in keys)
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)
