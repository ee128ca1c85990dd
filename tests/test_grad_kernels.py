"""The backward ops of ir/ops/conv_pool.py and normalization.py (conv2d_grad_data, conv2d_grad_weight,
max_pool2d_grad, avg_pool2d_grad, layer_norm_grad) and the gradient rules of those two families.

Oracles, each independent of the code under test:
- every backward op's numpy reference against central finite differences (float64) of the forward
  op's reference: sum(f(x + e) * dy) - sum(f(x - e) * dy), one coordinate at a time;
- every lowering against the reference (the TIR interpreter, symbolic batch), and the CPU kernels
  (`build_module`, LLVM) against the graph interpreter;
- the gradient rules through the autodiff pass against finite differences of the forward graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlc.ir.ops as ops
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlc.ir import MlcError
from mlc.ir.expr import Const
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module
from mlc.ir.types import TensorType
from test_lower import N, check_op, rand, run_pass

# ---- helpers -----------------------------------------------------------------------------------


def ref(op: str, attrs: dict[str, Any], *arrays: np.ndarray) -> np.ndarray:
    """The op's numpy reference on float64 arrays (its type inferred by its own shape rule)."""
    d = ops.get(op)
    assert d is not None and d.infer is not None and d.ref is not None
    t = d.infer([TensorType(tuple(Const(int(n)) for n in a.shape), "f64") for a in arrays], attrs, None)
    return d.ref(list(arrays), attrs, t, {})


def fd_vjp(f: Callable[..., np.ndarray], args: list[np.ndarray], i: int, dy: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d sum(f(args) * dy) / d args[i] by central differences."""
    g = np.zeros_like(args[i])
    for idx in np.ndindex(args[i].shape):
        hi, lo = [a.copy() for a in args], [a.copy() for a in args]
        hi[i][idx] += eps
        lo[i][idx] -= eps
        g[idx] = (np.sum(f(*hi) * dy) - np.sum(f(*lo) * dy)) / (2 * eps)
    return g


def close(got: np.ndarray, want: np.ndarray, tol: float = 1e-6) -> None:
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def f32(*arrays: np.ndarray) -> list[np.ndarray]:
    return [a.astype(np.float32) for a in arrays]


CONV = [  # (x shape, weight shape, attrs)
    ((2, 4, 7, 6), (6, 4, 3, 3), {}),
    ((2, 4, 7, 6), (6, 4, 3, 2), {"strides": (2, 2), "pads": (1, 0, 1, 1)}),
    ((1, 4, 8, 7), (6, 2, 2, 3), {"groups": 2, "dilations": (2, 1), "strides": (1, 2), "pads": (1, 2, 0, 1)}),
    ((2, 3, 6, 6), (3, 1, 3, 3), {"groups": 3, "strides": (2, 2), "pads": (1, 1, 1, 1)}),  # depthwise
    ((1, 2, 7, 5), (4, 2, 1, 1), {"strides": (3, 2)}),  # 1x1, rows the stride skips
]

POOL = [  # (x shape, attrs); dilations only apply to max
    ((2, 3, 7, 6), {"kernel_shape": (2, 2), "strides": (2, 2)}),
    ((1, 2, 6, 7), {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)}),
    ((2, 2, 7, 6), {"kernel_shape": (3, 2), "strides": (2, 2), "pads": (1, 0, 1, 1), "ceil_mode": True}),
    ((1, 3, 7, 6), {"kernel_shape": (3, 3), "strides": (2, 1), "pads": (1, 1, 1, 1), "ceil_mode": True,
                    "count_include_pad": True, "dilations": (1, 2)}),
]


def pool_attrs(op: str, attrs: dict[str, Any]) -> dict[str, Any]:
    drop = "dilations" if op.startswith("avg") else "count_include_pad"
    return {k: v for k, v in attrs.items() if k != drop}


def conv_case(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict[str, Any], seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    return x, w, rng.standard_normal(ref("conv2d", attrs, x, w).shape)


# ---- numpy references against finite differences of the forward reference ----------------------


@pytest.mark.parametrize("xs,ws,attrs", CONV)
def test_conv2d_grad_references_match_finite_differences(xs: tuple[int, ...], ws: tuple[int, ...],
                                                         attrs: dict[str, Any]) -> None:
    x, w, dy = conv_case(xs, ws, attrs)
    fwd = lambda x, w: ref("conv2d", attrs, x, w)  # noqa: E731
    close(ref("conv2d_grad_data", {**attrs, "input_size": xs[2:]}, dy, w), fd_vjp(fwd, [x, w], 0, dy))
    close(ref("conv2d_grad_weight", {**attrs, "kernel_shape": ws[2:]}, x, dy), fd_vjp(fwd, [x, w], 1, dy))


@pytest.mark.parametrize("xs,attrs", POOL)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_grad_references_match_finite_differences(op: str, xs: tuple[int, ...], attrs: dict[str, Any]) -> None:
    a = pool_attrs(op, attrs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs)
    dy = rng.standard_normal(ref(op, a, x).shape)
    want = fd_vjp(lambda x: ref(op, a, x), [x], 0, dy)
    got = ref("max_pool2d_grad", a, x, dy) if op == "max_pool2d" else ref("avg_pool2d_grad", {**a, "input_size": xs[2:]}, dy)
    close(got, want)


def test_max_pool_grad_routes_ties_to_the_first_maximum() -> None:
    """On a tie the window's dy goes to its first maximum in row-major order (PyTorch and JAX do
    the same), not split and not duplicated; the compiled kernel agrees (test_compiled_kernels)."""
    x = np.array([[[[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]]]])
    dy = np.array([[[[10.0, 20.0]]]])
    got = ref("max_pool2d_grad", {"kernel_shape": (2, 2), "strides": (1, 1)}, x, dy)
    np.testing.assert_array_equal(got, [[[[0.0, 30.0, 0.0], [0.0, 0.0, 0.0]]]])


@pytest.mark.parametrize("axis,sshape,bias", [(-1, (5,), True), (1, (4, 5), False), (1, (1, 5), True)])
def test_layer_norm_grad_reference_matches_finite_differences(axis: int, sshape: tuple[int, ...], bias: bool) -> None:
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 5))
    scale = rng.standard_normal(sshape)
    rest = [rng.standard_normal(sshape)] if bias else []
    a = {"axis": axis, "epsilon": 1e-3}
    want = fd_vjp(lambda x: ref("layer_norm", a, x, scale, *rest), [x], 0, dy)
    close(ref("layer_norm_grad", a, x, dy, scale), want)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_conv2d_grads_random_shapes(data: st.DataObject) -> None:
    """Random strides, pads, dilations and groups; the data gradient's reference against finite
    differences, the weight gradient through the adjoint identity <dy, conv(x, dw)> = <dw, grad_w(x, dy)>
    (conv2d is linear in w, so that identity is exact and independent of conv2d_grad_weight's code)."""
    d = data.draw
    g = d(st.sampled_from([1, 2]))
    c, o = g * d(st.integers(1, 2)), g * d(st.integers(1, 2))
    k = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    s = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    dl = (d(st.integers(1, 2)), d(st.integers(1, 2)))
    p = tuple(d(st.integers(0, 2)) for _ in range(4))
    hw = tuple(d(st.integers(dl[i] * (k[i] - 1) + 1, 7)) for i in range(2))
    attrs = {"strides": s, "pads": p, "dilations": dl, "groups": g}
    x, w, dy = conv_case((1, c) + hw, (o, c // g) + k, attrs, seed=d(st.integers(0, 99)))
    fwd = lambda x, w: ref("conv2d", attrs, x, w)  # noqa: E731
    close(ref("conv2d_grad_data", {**attrs, "input_size": hw}, dy, w), fd_vjp(fwd, [x, w], 0, dy))
    dw = ref("conv2d_grad_weight", {**attrs, "kernel_shape": k}, x, dy)
    probe = np.random.default_rng(0).standard_normal(w.shape)
    assert np.isclose(np.sum(dw * probe), np.sum(dy * fwd(x, probe)), rtol=1e-9)


# ---- lowerings against the references (TIR interpreter) ---------------------------------------


@pytest.mark.parametrize("xs,ws,attrs", CONV)
def test_conv2d_grad_lowerings(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict[str, Any]) -> None:
    x, w, dy = f32(*conv_case(xs, ws, attrs))
    check_op("conv2d_grad_data", [dy, w], {**attrs, "input_size": xs[2:]}, sym={0: (0, N)})
    check_op("conv2d_grad_weight", [x, dy], {**attrs, "kernel_shape": ws[2:]}, sym={0: (0, N), 1: (0, N)})


@pytest.mark.parametrize("xs,attrs", POOL)
def test_pool_grad_lowerings(xs: tuple[int, ...], attrs: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs)
    for op in ("max_pool2d", "avg_pool2d"):
        a = pool_attrs(op, attrs)
        dy = rng.standard_normal(ref(op, a, x).shape)
        if op == "max_pool2d":
            check_op("max_pool2d_grad", f32(x, dy), a, sym={0: (0, N), 1: (0, N)})
        else:
            check_op("avg_pool2d_grad", f32(dy), {**a, "input_size": xs[2:]}, sym={0: (0, N)})


def test_layer_norm_grad_lowering() -> None:
    x, dy = rand(2, 4, 6), rand(2, 4, 6, seed=1)
    check_op("layer_norm_grad", [x, dy, rand(6, seed=2)], {"axis": -1}, sym={0: (0, N), 1: (0, N)})
    check_op("layer_norm_grad", [x, dy, rand(4, 6, seed=2)], {"axis": 1, "epsilon": 1e-3})


SYMBOLIC = """mlc.module v1

graph @main(%x: tensor<n x 2 x h x w x f32>, %k: tensor<4 x 2 x 3 x 3 x f32>,
            %dy: tensor<n x 4 x floordiv(h - 1, 2) + 1 x floordiv(w - 1, 2) + 1 x f32>) {
  %dx: tensor<n x 2 x h x w x f32> = conv2d_grad_data(%dy, %k) {strides = (2, 2), pads = (1, 1, 1, 1), input_size = (h, w)}
  %dk: tensor<4 x 2 x 3 x 3 x f32> = conv2d_grad_weight(%x, %dy) {strides = (2, 2), pads = (1, 1, 1, 1), kernel_shape = (3, 3)}
  %pm: tensor<n x 2 x floordiv(h - 1, 2) + 1 x floordiv(w - 1, 2) + 1 x f32> = max_pool2d(%dx) {kernel_shape = (3, 3), strides = (2, 2), pads = (1, 1, 1, 1)}
  %dp: tensor<n x 2 x h x w x f32> = max_pool2d_grad(%dx, %pm) {kernel_shape = (3, 3), strides = (2, 2), pads = (1, 1, 1, 1)}
  %da: tensor<n x 2 x h x w x f32> = avg_pool2d_grad(%pm) {kernel_shape = (3, 3), strides = (2, 2), pads = (1, 1, 1, 1), input_size = (h, w)}
  return %dk, %dp, %da
}
"""


def test_symbolic_spatial_dims_in_text() -> None:
    """input_size holds the forward input's symbolic (h, w): the module parses, types check (a
    stride-2 window's floordiv dims), lowers, and runs at two sizes, one odd and one even."""
    m = run_pass("shape-infer", parse_module(SYMBOLIC))
    low = run_pass("lower", m, strict=True)
    for h, w in ((7, 6), (4, 5)):
        ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        feeds = {"x": rand(2, 2, h, w), "k": rand(4, 2, 3, 3, seed=1), "dy": rand(2, 4, ho, wo, seed=2)}
        want, got = run_function(m, feeds), run_function(low, feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op,shapes,attrs,message", [
    ("conv2d_grad_data", [(1, 4, 3, 3), (4, 2, 3, 3)], {"input_size": (9, 5)}, "dy dim 2 vs conv2d's result: 3 vs 7"),
    ("conv2d_grad_data", [(1, 4, 3, 3), (4, 2, 3, 3)], {"input_size": (5,)}, "input_size needs 2 values"),
    ("conv2d_grad_weight", [(1, 3, 5, 5), (1, 4, 3, 3)], {"kernel_shape": (3, 3), "groups": 2},
     "input channels 3 not divisible by groups 2"),
    ("max_pool2d_grad", [(1, 2, 6, 6), (1, 2, 2, 3)], {"kernel_shape": (2, 2), "strides": (2, 2)},
     "dy dim 2 vs the pool's result: 2 vs 3"),
    ("avg_pool2d_grad", [(1, 2, 3, 3)], {"kernel_shape": (2, 2), "strides": (2, 2), "input_size": (6, 8)},
     "dy dim 3 vs the pool's result: 3 vs 4"),
])
def test_shape_rules_reject_inconsistent_shapes(op: str, shapes: list[tuple[int, ...]], attrs: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(MlcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ref(op, attrs, *[np.zeros(s) for s in shapes])


# ---- compiled CPU kernels against the interpreter -----------------------------------------------


def graph(params: dict[str, np.ndarray], nodes: list[tuple[str, str, list[str], dict[str, Any]]],
          batch: set[str]) -> Any:
    """A module of `nodes` (name, op, operand names, attrs) returning every node; axis 0 of the
    params in `batch` is the symbolic n."""
    from mlc.ir import Binding, Block, Function, Module, OpCall, UnknownType, Value, Var, attrs_of
    from mlc.ir.dtype import from_numpy

    vals = {k: Value(k, TensorType(tuple(Var("n") if k in batch and i == 0 else Const(d) for i, d in enumerate(a.shape)),
                                   from_numpy(a.dtype))) for k, a in params.items()}
    binds = []
    for name, op, args, attrs in nodes:
        vals[name] = Value(name, UnknownType())
        binds.append(Binding(vals[name], OpCall(op, tuple(vals[a] for a in args), attrs_of(attrs))))
    fn = Function("main", tuple(vals[k] for k in params), Block(tuple(binds), tuple(vals[n[0]] for n in nodes)))
    return run_pass("shape-infer", Module((fn,)))


def test_compiled_kernels_match_the_interpreter() -> None:
    """One CPU build (LLVM) of every backward op over the conv and pool cases, symbolic batch,
    against the graph interpreter; includes tied maxima (integer-valued input)."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    import mlc.compiler as C

    params: dict[str, np.ndarray] = {}
    nodes: list[tuple[str, str, list[str], dict[str, Any]]] = []
    # every configuration runs through the TIR interpreter above; here the grouped dilated conv (gather
    # with divisibility tests) and the strided depthwise one (per-phase, padded); the CNN below has the rest
    for i, (xs, ws, attrs) in enumerate(CONV[2:4]):
        x, w, dy = f32(*conv_case(xs, ws, attrs, seed=i))
        params.update({f"x{i}": x, f"w{i}": w, f"dy{i}": dy})
        nodes.append((f"dx{i}", "conv2d_grad_data", [f"dy{i}", f"w{i}"], {**attrs, "input_size": xs[2:]}))
        nodes.append((f"dw{i}", "conv2d_grad_weight", [f"x{i}", f"dy{i}"], {**attrs, "kernel_shape": ws[2:]}))
    rng = np.random.default_rng(4)
    for i, (xs, attrs) in enumerate(POOL[2:]):  # stride 2 with ceil_mode; stride (2, 1) with ties
        x = rng.integers(0, 3, xs).astype(np.float32) if i % 2 else rng.standard_normal(xs).astype(np.float32)
        params[f"px{i}"] = x
        for op in ("max_pool2d", "avg_pool2d"):
            a = pool_attrs(op, attrs)
            params[f"{op}_dy{i}"] = rng.standard_normal(ref(op, a, x.astype(np.float64)).shape).astype(np.float32)
        nodes.append((f"mg{i}", "max_pool2d_grad", [f"px{i}", f"max_pool2d_dy{i}"], pool_attrs("max_pool2d", attrs)))
        nodes.append((f"ag{i}", "avg_pool2d_grad", [f"avg_pool2d_dy{i}"], {**pool_attrs("avg_pool2d", attrs),
                                                                            "input_size": xs[2:]}))
    params.update({"lx": rand(2, 3, 8), "ldy": rand(2, 3, 8, seed=1), "ls": rand(8, seed=2)})
    nodes.append(("lg", "layer_norm_grad", ["lx", "ldy", "ls"], {"axis": -1}))
    m = graph(params, nodes, batch={k for k in params if params[k].shape[0] == 2})
    want = run_function(m, params)
    built = C.build_module(C.with_memory_constants(m, {}), {})
    got = model_from_artifact(loads(built.result.data), "<test>")(**params)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)


# ---- the gradient rules through the autodiff pass ----------------------------------------------


def fd_check(m: Any, g: Any, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray],
             cot: dict[str, np.ndarray] | None = None, coords: int = 40) -> None:
    """Every grad_<name> of @grad against central differences of @main's loss (sum of the result,
    or of result * cotangent) in float64, at up to `coords` random coordinates per tensor."""
    got = run_function(g, {**inputs, **(cot or {})}, consts, func="grad")

    def loss(ins: dict[str, np.ndarray], cs: dict[str, np.ndarray]) -> float:
        out = run_function(m, ins, cs)
        return float(sum(np.sum(v * (cot or {}).get(f"d_{k}", 1.0)) for k, v in out.items()))

    rng = np.random.default_rng(0)
    grads = {k[len("grad_"):]: v for k, v in got.items() if k.startswith("grad_")}
    assert grads
    for name, gv in grads.items():
        src = inputs if name in inputs else consts
        base = src[name]
        assert gv.shape == base.shape, name
        flat = rng.permutation(base.size)[:coords]
        for f in flat:
            idx = np.unravel_index(f, base.shape)
            vals = []
            for e in (1e-6, -1e-6):
                moved = base.copy()
                moved[idx] += e
                vals.append(loss({**inputs, name: moved}, consts) if src is inputs else loss(inputs, {**consts, name: moved}))
            want = (vals[0] - vals[1]) / 2e-6
            assert abs(gv[idx] - want) <= 1e-5 * (1 + abs(want)), (name, idx, gv[idx], want)


def one_op_vjp(op: str, arrays: list[np.ndarray], attrs: dict[str, Any]) -> None:
    """@grad of a one-op graph (a VJP: cotangent d_y) against finite differences for every input."""
    from test_lower import one_op

    m = run_pass("shape-infer", one_op(op, [a.shape for a in arrays], ["f64"] * len(arrays), attrs))
    g = run_pass("autodiff", m, wrt="none", wrt_inputs=",".join(f"a{i}" for i in range(len(arrays))))
    inputs = {f"a{i}": a for i, a in enumerate(arrays)}
    y = run_function(m, inputs)["y"]
    fd_check(m, g, inputs, {}, {"d_y": np.random.default_rng(5).standard_normal(y.shape)})


@pytest.mark.parametrize("xs,ws,attrs", CONV[1:4])
def test_conv2d_rule(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict[str, Any]) -> None:
    x, w, _ = conv_case(xs, ws, attrs)
    one_op_vjp("conv2d", [x, w], attrs)


@pytest.mark.parametrize("attrs", [{}, {"strides": (2, 1), "pads": (1, 0, 0, 1), "groups": 2, "dilations": (1, 2),
                                        "output_padding": (1, 0)}])
def test_conv2d_transpose_rule(attrs: dict[str, Any]) -> None:
    rng = np.random.default_rng(6)
    one_op_vjp("conv2d_transpose", [rng.standard_normal((1, 4, 3, 4)), rng.standard_normal((4, 3, 2, 3))], attrs)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("xs,attrs", POOL[2:])
def test_pool_rules(op: str, xs: tuple[int, ...], attrs: dict[str, Any]) -> None:
    one_op_vjp(op, [np.random.default_rng(7).standard_normal(xs)], pool_attrs(op, attrs))


def test_global_avg_pool_softmax_log_softmax_rules() -> None:
    rng = np.random.default_rng(8)
    one_op_vjp("global_avg_pool2d", [rng.standard_normal((2, 3, 4, 5))], {})
    for op in ("softmax", "log_softmax"):
        one_op_vjp(op, [rng.standard_normal((3, 4, 5))], {"axis": 1})


def test_batch_norm_rule_all_five_operands() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4, 2))
    one_op_vjp("batch_norm", [x, rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3),
                              rng.uniform(0.5, 1.5, 3)], {"epsilon": 1e-3})


@pytest.mark.parametrize("axis,sshape,bias", [(-1, (5,), True), (1, (1, 5), True), (1, (4, 5), False)])
def test_layer_norm_rule(axis: int, sshape: tuple[int, ...], bias: bool) -> None:
    rng = np.random.default_rng(10)
    args = [rng.standard_normal((2, 4, 5)), rng.standard_normal(sshape)] + ([rng.standard_normal(sshape)] if bias else [])
    one_op_vjp("layer_norm", args, {"axis": axis, "epsilon": 1e-3})


def small_cnn(training: bool, double: bool = True) -> Any:
    """conv (stride 2, pads, bias) -> batch norm (inference, or training: the batch's statistics)
    -> relu -> max pool -> flatten -> gemm, as ONNX with a dynamic batch N."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dt, npdt = (TensorProto.DOUBLE, np.float64) if double else (TensorProto.FLOAT, np.float32)
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 2, 3, 3)) * 0.5, "b": rng.standard_normal(4) * 0.1,
             "gamma": 1 + 0.1 * rng.standard_normal(4), "beta": 0.1 * rng.standard_normal(4),
             "rmean": 0.1 * rng.standard_normal(4), "rvar": rng.uniform(0.5, 1.5, 4),
             "fw": rng.standard_normal((3, 36)) * 0.3, "fb": rng.standard_normal(3) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "rmean", "rvar"], ["bn"], epsilon=1e-3,
                              training_mode=int(training)),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", dt, ["N", 2, 8, 8])],
                          [helper.make_tensor_value_info("y", dt, ["N", 3])],
                          [numpy_helper.from_array(v.astype(npdt), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("training", [False, True])
def test_small_cnn_gradients_match_finite_differences(training: bool) -> None:
    """`mlc autodiff --wrt all --wrt-inputs x --loss sum` on conv -> bn -> relu -> pool -> gemm:
    every parameter's gradient (running mean and variance too, in inference form) and the input's."""
    from mlc.frontend.onnx_import import import_onnx

    m, consts = import_onnx(small_cnn(training))
    g = run_pass("autodiff", m, wrt="all", wrt_inputs="x", loss="sum")
    names = set(run_function(g, {"x": np.zeros((2, 2, 8, 8))}, consts, func="grad"))
    assert {"grad_x", "grad_w", "grad_gamma", "grad_beta", "grad_fb"} <= names
    assert ({"grad_rmean", "grad_rvar"} <= names) != training  # training form: the batch's statistics
    fd_check(m, g, {"x": np.random.default_rng(1).standard_normal((2, 2, 8, 8))}, consts, coords=25)


def test_small_cnn_compiled_gradients_match_the_interpreter() -> None:
    """The @grad of the training-form CNN (f32) built for the CPU, batch N = 3 at run time, against
    the graph interpreter: the backward ops and the rules' compositions compile and agree."""
    import dataclasses

    from mlc.frontend.onnx_import import import_onnx
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    import mlc.compiler as C

    m, consts = import_onnx(small_cnn(True, double=False))
    g = run_pass("autodiff", m, wrt="all", wrt_inputs="x", loss="sum")
    only = dataclasses.replace(g, functions=(dataclasses.replace(g.get("grad"), name="main"),))
    x = np.random.default_rng(1).standard_normal((3, 2, 8, 8)).astype(np.float32)
    want = run_function(only, {"x": x}, consts)
    got = model_from_artifact(loads(C.build_module(C.with_memory_constants(only, consts), consts).result.data),
                              "<test>")(x=x)
    assert sorted(got) == sorted(want) and "grad_w" in got
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_global_avg_pool_rule_with_symbolic_spatial_dims() -> None:
    """H and W unknown until run time: 1 / (H * W) comes from the shape (shape_tensor), at two sizes."""
    from mlc.ir import Var
    from test_lower import one_op

    m = run_pass("shape-infer", one_op("global_avg_pool2d", [(2, 3, Var("h"), Var("w"))], ["f64"], {}))
    g = run_pass("autodiff", m, wrt="none", wrt_inputs="a0")
    assert "shape_tensor" in {b.node.op for b in g.get("grad").body.bindings if hasattr(b.node, "op")}
    rng = np.random.default_rng(11)
    for h, w in ((3, 4), (5, 1)):
        fd_check(m, g, {"a0": rng.standard_normal((2, 3, h, w))}, {}, {"d_y": rng.standard_normal((2, 3, 1, 1))})


def test_conv2d_transpose_rule_refuses_output_padding_past_the_stride() -> None:
    from test_lower import one_op

    m = run_pass("shape-infer", one_op("conv2d_transpose", [(1, 2, 3, 3), (2, 2, 2, 2)], ["f64", "f64"],
                                       {"output_padding": (1, 0)}))
    with pytest.raises(MlcError, match="conv2d_transpose: no gradient with output_padding >= strides"):
        run_pass("autodiff", m, wrt="none", wrt_inputs="a0")


# ---- JAX: jax.vjp of lax.conv_general_dilated / reduce_window against the backward ops ---------


def _jax_pool(op: str, x: Any, attrs: dict[str, Any], out: tuple[int, ...]) -> Any:
    """max_pool2d / avg_pool2d written with lax.reduce_window (avg: window sums over window counts)."""
    import jax.numpy as jnp
    from jax import lax

    k = tuple(int(v) for v in attrs["kernel_shape"])
    s, p, d = attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)), attrs.get("dilations", (1, 1))
    extra = [max(0, (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - (x.shape[2 + i] + p[i] + p[i + 2])) for i in range(2)]
    pads = ((0, 0), (0, 0), (p[0], p[2] + extra[0]), (p[1], p[3] + extra[1]))
    win, st, dil = (1, 1) + k, (1, 1) + tuple(s), (1, 1) + tuple(d)
    if op == "max_pool2d":
        return lax.reduce_window(x, -jnp.inf, lax.max, win, st, pads, window_dilation=dil)
    total = lax.reduce_window(x, 0.0, lax.add, win, st, pads)
    ones = jnp.ones((1, 1) + x.shape[2:], x.dtype)
    if attrs.get("count_include_pad"):
        ones = jnp.pad(ones, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=1.0)
        pads = ((0, 0), (0, 0), (0, extra[0]), (0, extra[1]))
    return total / lax.reduce_window(ones, 0.0, lax.add, win, st, pads)


def test_backward_ops_match_jax_vjp() -> None:
    """The references of the backward ops against jax.vjp in float64, ties included (JAX routes a
    tied window's cotangent to its first maximum too)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from jax import lax

    for xs, ws, attrs in CONV[2:4]:  # groups, dilation, stride 2, depthwise (each jax.vjp compiles: ~1 s)
        x, w, dy = conv_case(xs, ws, attrs)
        s, p, d = attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)), attrs.get("dilations", (1, 1))

        def conv(x: Any, w: Any, s: Any = s, p: Any = p, d: Any = d, g: int = attrs.get("groups", 1)) -> Any:
            return lax.conv_general_dilated(x, w, s, [(p[0], p[2]), (p[1], p[3])], rhs_dilation=d,
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=g)

        y, back = jax.vjp(conv, x, w)
        close(np.asarray(y), ref("conv2d", attrs, x, w), 1e-9)
        jx, jw = back(dy)
        close(ref("conv2d_grad_data", {**attrs, "input_size": xs[2:]}, dy, w), np.asarray(jx), 1e-9)
        close(ref("conv2d_grad_weight", {**attrs, "kernel_shape": ws[2:]}, x, dy), np.asarray(jw), 1e-9)
    rng = np.random.default_rng(12)
    for i, (xs, attrs) in enumerate(POOL[2:]):  # ceil_mode, stride 2, count_include_pad
        x = rng.integers(0, 3, xs).astype(np.float64) if i % 2 else rng.standard_normal(xs)  # ties in the second
        for op in ("max_pool2d", "avg_pool2d")[: 1 + i]:  # each jax.vjp compiles: avg once (count_include_pad)
            a = {k: v for k, v in pool_attrs(op, attrs).items() if k != "dilations"}  # jax: no VJP with dilation
            y = ref(op, a, x)
            dy = rng.standard_normal(y.shape)
            jy, back = jax.vjp(lambda x, op=op, a=a, out=y.shape[2:]: _jax_pool(op, x, a, out), x)
            close(np.asarray(jy), y, 1e-9)
            got = ref("max_pool2d_grad", a, x, dy) if op == "max_pool2d" else \
                ref("avg_pool2d_grad", {**a, "input_size": xs[2:]}, dy)
            close(got, np.asarray(back(dy)[0]), 1e-9)
    x, dy, scale = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 5)), rng.standard_normal((4, 5))

    def ln(x: Any) -> Any:
        mu = x.mean(axis=(1, 2), keepdims=True)
        return (x - mu) / jax.numpy.sqrt(((x - mu) ** 2).mean(axis=(1, 2), keepdims=True) + 1e-3) * scale

    close(ref("layer_norm_grad", {"axis": 1, "epsilon": 1e-3}, x, dy, scale), np.asarray(jax.vjp(ln, x)[1](dy)[0]), 1e-9)


def _onnx_1d_3d_cases() -> dict[str, tuple[Any, tuple[int, ...]]]:
    """ONNX models whose conv / pool the importer lifts onto the 2-D ops (1-D over a unit axis, 3-D
    as sums of 2-D convs over depth slices and two 2-D pools): (model, input shape)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(13)

    def model(nodes: list[Any], xs: tuple[int, ...], ys: tuple[int, ...], inits: dict[str, np.ndarray]) -> Any:
        g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, xs)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ys)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), xs

    n = helper.make_node
    return {
        "conv1d_maxpool1d": model([n("Conv", ["x", "w"], ["c"], kernel_shape=[3], strides=[2], pads=[1, 1]),
                                   n("MaxPool", ["c"], ["y"], kernel_shape=[2], strides=[2])], (2, 3, 9), (2, 4, 2),
                                  {"w": rng.standard_normal((4, 3, 3))}),
        "conv3d": model([n("Conv", ["x", "w"], ["y"], kernel_shape=[2, 3, 3], strides=[1, 2, 1],
                           pads=[1, 1, 0, 0, 1, 1])], (1, 2, 4, 5, 5), (1, 3, 4, 3, 4),
                        {"w": rng.standard_normal((3, 2, 2, 3, 3))}),
        "avgpool3d": model([n("AveragePool", ["x"], ["y"], kernel_shape=[2, 2, 2], strides=[2, 1, 2],
                              pads=[1, 0, 0, 0, 1, 1], count_include_pad=1)], (1, 2, 4, 5, 5), (1, 2, 2, 5, 3), {}),
        "convtranspose1d": model([n("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 0])],
                                 (1, 2, 5), (1, 3, 10), {"w": rng.standard_normal((2, 3, 3))}),
        "gap_layernorm": model([n("GlobalAveragePool", ["x"], ["g"]), n("Flatten", ["g"], ["f"]),
                                n("LayerNormalization", ["f", "s", "b"], ["y"], axis=-1)], (2, 4, 3, 3), (2, 4),
                               {"s": rng.standard_normal(4), "b": rng.standard_normal(4)}),
    }


@pytest.mark.parametrize("name", sorted(_onnx_1d_3d_cases()))
def test_1d_and_3d_conv_and_pool_gradients(name: str) -> None:
    from mlc.frontend.onnx_import import import_onnx

    model, xs = _onnx_1d_3d_cases()[name]
    m, consts = import_onnx(model)
    g = run_pass("autodiff", m, wrt="all", wrt_inputs="x", loss="sum")
    fd_check(m, g, {"x": np.random.default_rng(14).standard_normal(xs)}, consts, coords=20)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_backward_lowerings_random_windows(data: st.DataObject) -> None:
    """Random kernel, strides (the per-phase path at stride > 1 without dilation, the divisibility
    test with it), pads, dilations, groups and ceil_mode: every backward op's lowering against its
    reference in the TIR interpreter."""
    d = data.draw
    k = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    s = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    dl = (d(st.integers(1, 2)), d(st.integers(1, 2)))
    p = tuple(d(st.integers(0, k[i % 2] - 1)) for i in range(4))
    hw = tuple(d(st.integers(dl[i] * (k[i] - 1) + 1, 7)) for i in range(2))
    g = d(st.sampled_from([1, 2]))
    attrs = {"strides": s, "pads": p, "dilations": dl, "groups": g}
    x, w, dy = f32(*conv_case((1, 2 * g) + hw, (2 * g, 2) + k, attrs, seed=d(st.integers(0, 99))))
    check_op("conv2d_grad_data", [dy, w], {**attrs, "input_size": hw})
    check_op("conv2d_grad_weight", [x, dy], {**attrs, "kernel_shape": k})
    pool = {"kernel_shape": k, "strides": s, "pads": p, "ceil_mode": d(st.booleans())}
    py = ref("max_pool2d", {**pool, "dilations": dl}, x.astype(np.float64))
    check_op("max_pool2d_grad", [x, rand(*py.shape, seed=1)], {**pool, "dilations": dl})
    avg = {**pool, "count_include_pad": d(st.booleans())}
    ay = ref("avg_pool2d", avg, x.astype(np.float64))
    check_op("avg_pool2d_grad", [rand(*ay.shape, seed=2)], {**avg, "input_size": hw})


@pytest.mark.parametrize("xs,ws,attrs", CONV[1:3])
def test_second_order_rules_of_the_linear_backward_ops(xs: tuple[int, ...], ws: tuple[int, ...],
                                                       attrs: dict[str, Any]) -> None:
    """conv2d_grad_data, conv2d_grad_weight and avg_pool2d_grad are differentiable again (double
    backward: gradient penalties, Hessian-vector products), each against finite differences."""
    x, w, dy = conv_case(xs, ws, attrs, seed=15)
    one_op_vjp("conv2d_grad_data", [dy, w], {**attrs, "input_size": xs[2:]})
    one_op_vjp("conv2d_grad_weight", [x, dy], {**attrs, "kernel_shape": ws[2:]})
    a = pool_attrs("avg_pool2d", POOL[3][1])
    px = np.random.default_rng(16).standard_normal(POOL[3][0])
    one_op_vjp("avg_pool2d_grad", [np.random.default_rng(17).standard_normal(ref("avg_pool2d", a, px).shape)],
               {**a, "input_size": POOL[3][0][2:]})


@pytest.mark.parametrize("op,shapes,attrs", [
    ("max_pool2d_grad", [(1, 1, 4, 4), (1, 1, 2, 2)], {"kernel_shape": (2, 2), "strides": (2, 2)}),
    ("layer_norm_grad", [(2, 3), (2, 3), (3,)], {"axis": -1}),
])
def test_backward_ops_without_a_gradient_say_so(op: str, shapes: list[tuple[int, ...]], attrs: dict[str, Any]) -> None:
    from test_lower import one_op

    m = run_pass("shape-infer", one_op(op, shapes, ["f64"] * len(shapes), attrs))
    with pytest.raises(MlcError, match=f"cannot differentiate through {op}: it has no gradient"):
        run_pass("autodiff", m, wrt="none", wrt_inputs="a0")


@pytest.mark.conformance
@pytest.mark.parametrize("name", ["resnet18.dynamo.onnx", "mobilenet_v3_small.torchscript.onnx"])
def test_torchvision_export_gradients(name: str) -> None:
    """torch.onnx exports of torchvision CNNs (tests/models; stride-2 7x7 and 3x3 convs, max pool,
    depthwise convs, squeeze-excitation, global average pool, batch norm folded or not): `@grad` with
    --wrt all --loss sum, compiled for the CPU at batch 2 and 64x64, against the interpreter, and the
    interpreter's gradient of the first weight against finite differences at a few coordinates.
    40-110 s of compilation each, so not in `make test`."""
    import dataclasses

    from mlc.frontend.onnx_import import import_onnx
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact
    from models import load

    import mlc.compiler as C

    m, consts = import_onnx(load(name))
    g = run_pass("autodiff", m, wrt="all", loss="sum")
    only = dataclasses.replace(g, functions=(dataclasses.replace(g.get("grad"), name="main"),))
    (p,) = m.get("main").params
    x = np.random.default_rng(18).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want = run_function(only, {p.name: x}, consts)
    got = model_from_artifact(loads(C.build_module(C.with_memory_constants(only, consts), consts).result.data),
                              name)(**{p.name: x})
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-4 * float(np.abs(want[k]).max()), err_msg=k)
    # finite differences in f64 (the same model with its weights and types widened): an f32 step wide
    # enough to rise above rounding crosses relu and max-pool kinks
    m64, c64 = import_onnx(_as_double(load(name)))
    key = next(k for k, v in c64.items() if v.ndim == 4)
    g64 = run_pass("autodiff", m64, wrt="all", loss="sum")
    x64 = x.astype(np.float64)
    grads = run_function(g64, {p.name: x64}, c64, func="grad")
    gname = "grad_" + "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key)  # sanitized as imported
    rng = np.random.default_rng(19)
    for idx in (tuple(int(rng.integers(0, n)) for n in c64[key].shape) for _ in range(3)):
        vals = []
        for e in (1e-6, -1e-6):
            moved = {**c64, key: c64[key].copy()}
            moved[key][idx] += e
            vals.append(sum(float(v.sum()) for v in run_function(m64, {p.name: x64}, moved).values()))
        fd = (vals[0] - vals[1]) / 2e-6
        assert abs(grads[gname][idx] - fd) <= 1e-4 * (1 + abs(fd)), (key, idx, grads[gname][idx], fd)


def _as_double(model: Any) -> Any:
    """The ONNX model with float32 initializers, inputs and outputs made float64 (enough for the
    torchvision exports above: no casts or float constants in them)."""
    from onnx import TensorProto, numpy_helper

    for i, t in enumerate(model.graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model
