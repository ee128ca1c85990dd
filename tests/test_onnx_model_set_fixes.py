"""Import fixes found by ONNX's model sets (tests/conformance_models.py): opset 6 as shipped (legacy
`broadcast` / `axis`, PRelu's per-channel slope, BatchNormalization / Dropout `is_test`) and 3-D Conv
as 2-D convs over the kernel depth; both paths, against numpy or onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from mlc.ir.diagnostics import MlcError
from onnx import TensorProto, helper, numpy_helper

import mlc.backend

MODES = ("interpreted", "compiled")


def r(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def one_node(op: str, inputs: dict[str, np.ndarray], opset: int, attrs: dict[str, Any] | None = None,
             consts: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A model of one node: `inputs` are graph inputs, `consts` initializers (after them, in order);
    the output has the first input's rank, its dims named (old IR versions need a shape)."""
    consts = consts or {}
    node = helper.make_node(op, list(inputs) + list(consts), ["y"], **(attrs or {}))
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs.items()]
    rank = next(iter(inputs.values())).ndim
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
    if opset < 7:  # IR version 3: every initializer is also a graph input
        ins += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in consts.items()]
    g = helper.make_graph([node], "g", ins, [out], [numpy_helper.from_array(a, n) for n, a in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 3 if opset < 7 else 8
    return m


def run_both(m: onnx.ModelProto, feeds: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {mode: mlc.backend.BACKENDS[mode].prepare(m).run(feeds)[0] for mode in MODES}


def ort_ref(m: onnx.ModelProto, feeds: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip([i.name for i in sess.get_inputs()], feeds)))[0]


# --- opset 6 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("a_shape", "b_shape", "axis", "b_view"), [
    ((2, 3), (3,), 1, (3,)),               # trailing: numpy's rule
    ((2, 3, 4, 5), (3,), 1, (3, 1, 1)),    # channel-wise: the pytorch exporter's form
    ((2, 3, 4, 5), (3, 4), 1, (3, 4, 1)),
    ((2, 3, 4, 5), (4,), -2, (4, 1)),
])
def test_opset6_legacy_broadcast_axis(a_shape: tuple[int, ...], b_shape: tuple[int, ...], axis: int,
                                      b_view: tuple[int, ...]) -> None:
    a, b = r(*a_shape), r(*b_shape, seed=1)
    for op, fn in (("Add", np.add), ("Mul", np.multiply), ("Sub", np.subtract)):
        m = one_node(op, {"a": a, "b": b}, 6, {"broadcast": 1, "axis": axis})
        for mode, y in run_both(m, [a, b]).items():
            np.testing.assert_allclose(y, fn(a, b.reshape(b_view)), rtol=1e-6, err_msg=f"{op} {mode}")


def test_opset6_prelu_slope_is_per_channel() -> None:
    x, slope = r(2, 3, 4, 5), np.array([0.1, 0.2, 0.3], np.float32)
    m = one_node("PRelu", {"x": x}, 6, consts={"slope": slope})
    want = np.where(x < 0, x * slope.reshape(3, 1, 1), x)
    for y in run_both(m, [x]).values():
        np.testing.assert_allclose(y, want, rtol=1e-6)


def test_opset6_batchnorm_is_test_and_gemm_broadcast() -> None:
    x, s, b, mu, v = r(2, 3, 4, 4), r(3, seed=1), r(3, seed=2), r(3, seed=3), np.abs(r(3, seed=4)) + 0.5
    m = one_node("BatchNormalization", {"x": x}, 6, {"epsilon": 1e-5, "is_test": 1, "momentum": 0.9},
                 consts={"s": s, "b": b, "m": mu, "v": v})
    c = (3, 1, 1)
    want = (x - mu.reshape(c)) / np.sqrt(v.reshape(c) + 1e-5) * s.reshape(c) + b.reshape(c)
    for y in run_both(m, [x]).values():
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(MlcError, match="is_test=0"):
        mlc.backend.Interpreted.prepare(one_node("BatchNormalization", {"x": x}, 6, {},
                                                 consts={"s": s, "b": b, "m": mu, "v": v}))
    a, w, bias = r(4, 5), r(6, 5, seed=1), r(6, seed=2)
    m = one_node("Gemm", {"a": a}, 6, {"broadcast": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
                 consts={"w": w, "c": bias})
    for y in run_both(m, [a]).values():
        np.testing.assert_allclose(y, 0.5 * a @ w.T + 2.0 * bias, rtol=1e-5, atol=1e-5)


def test_opsets_below_6_still_refused_when_ops_changed() -> None:
    x = r(2, 3)
    with pytest.raises(MlcError, match=r"opset 5 is not supported \(supported: 6\.\.28\)"):
        mlc.backend.Interpreted.prepare(one_node("Add", {"a": x, "b": x}, 5))


# --- 3-D Conv ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs", [
    {},
    {"strides": [2, 1, 2], "pads": [1, 0, 2, 1, 1, 0]},
    {"dilations": [2, 1, 2], "pads": [2, 1, 1, 0, 1, 2]},
    {"group": 2, "strides": [1, 2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2, 2]},
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv3d_as_2d_convs_over_depth(attrs: dict[str, Any], bias: bool) -> None:
    g = int(attrs.get("group", 1))
    x, w, b = r(2, 4, 5, 6, 7), r(6, 4 // g, 3, 2, 3, seed=1), r(6, seed=2)
    m = one_node("Conv", {"x": x}, 13, attrs, consts={"w": w, **({"b": b} if bias else {})})
    want = ort_ref(m, [x])
    for mode, y in run_both(m, [x]).items():
        assert y.shape == want.shape, mode
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4, err_msg=mode)
