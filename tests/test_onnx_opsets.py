"""Import fixes found by the ONNX conformance suite: opsets 7..28 with their per-version forms
(attributes that became inputs, Softmax's old 2-D coercion), bounds and k given as run-time inputs,
unsigned element types, LayerNormalization's Mean/InvStdDev, ArgMax/ArgMin select_last_index.
Each model runs through both mlc.backend paths against onnx's reference evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from mlc.ir.diagnostics import MlcError
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import mlc.backend

F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(7)
NP2ONNX = {np.dtype(k): v for k, v in [("float32", F), ("int64", I64), ("int32", TensorProto.INT32),
                                       ("uint8", TensorProto.UINT8), ("uint16", TensorProto.UINT16),
                                       ("uint32", TensorProto.UINT32), ("uint64", TensorProto.UINT64),
                                       ("bool", TensorProto.BOOL)]}


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def model(op: str, inputs: dict[str, np.ndarray], opset: int, attrs: dict[str, Any] | None = None,
          consts: dict[str, np.ndarray] | None = None, order: list[str] | None = None, n_out: int = 1) -> onnx.ModelProto:
    consts = consts or {}
    names = order if order is not None else list(inputs) + list(consts)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    ins = [helper.make_tensor_value_info(k, NP2ONNX[v.dtype], list(v.shape)) for k, v in inputs.items()]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    g = helper.make_graph([node], "t", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 21 else 8
    m = onnx.shape_inference.infer_shapes(m)
    for o in m.graph.output:  # a shape the inference could not give: the first input's rank, dims unknown
        if not o.type.tensor_type.HasField("shape"):
            rank = len(next(iter(inputs.values())).shape)
            o.type.CopyFrom(helper.make_tensor_type_proto(o.type.tensor_type.elem_type or F,
                                                          [f"{o.name}_{i}" for i in range(rank)]))
    return m


def check(m: onnx.ModelProto, inputs: dict[str, np.ndarray], modes: tuple[str, ...] = ("interpreted", "compiled"),
          rtol: float = 1e-5, atol: float = 1e-6, ref: str = "onnx") -> None:
    if ref == "ort":
        import onnxruntime as ort

        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    else:
        want = ReferenceEvaluator(m).run(None, inputs)
    for mode in modes:
        got = mlc.backend.BACKENDS[mode].prepare(m).run(list(inputs.values()))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (mode, g.shape, w.shape, g.dtype, w.dtype)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=mode)


@pytest.mark.parametrize("opset", [7, 11, 12])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_before_13_coerces_to_2d(op: str, opset: int) -> None:
    """onnxruntime is the reference here: onnx's ReferenceEvaluator applies opset-13 semantics."""
    x = r(2, 3, 4)
    check(model(op, {"x": x}, opset), {"x": x}, ref="ort")  # default axis 1: normalised over 3 * 4 values
    check(model(op, {"x": x}, opset, {"axis": 0}), {"x": x}, ("interpreted",), ref="ort")
    check(model(op, {"x": x}, opset, {"axis": -1}), {"x": x}, ("interpreted",), ref="ort")


def test_old_opset_attribute_forms() -> None:
    x = r(3, 4)
    check(model("Clip", {"x": x}, 7, {"min": -0.5, "max": 0.25}), {"x": x})
    check(model("Pad", {"x": x}, 7, {"pads": [0, 1, 2, 0], "value": 1.5}), {"x": x})
    check(model("Slice", {"x": x}, 9, {"starts": [1, 0], "ends": [3, -1], "axes": [0, 1]}), {"x": x})
    check(model("ReduceSum", {"x": x}, 11, {"axes": [1], "keepdims": 0}), {"x": x}, ("interpreted",))
    check(model("Split", {"x": x}, 11, {"axis": 1, "split": [1, 3]}, n_out=2), {"x": x}, ("interpreted",))
    check(model("Unsqueeze", {"x": x}, 11, {"axes": [0, -1]}), {"x": x}, ("interpreted",))


@pytest.mark.parametrize("opset", [22, 24, 28])
def test_new_opsets_accepted(opset: int) -> None:
    x = r(3, 4)
    check(model("Relu", {"x": x}, opset), {"x": x})
    check(model("Flatten", {"x": r(2, 3, 4)}, opset), {"x": r(2, 3, 4)}, ("interpreted",))


def test_opset_below_7_refused() -> None:
    with pytest.raises(MlcError, match="opset 6 is not supported"):
        mlc.backend.Interpreted.prepare(model("Relu", {"x": r(2)}, 6))


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_clip_bounds_as_runtime_inputs(dtype: str) -> None:
    x = (r(3, 5) * 4).astype(dtype)
    lo, hi = np.array(-1, dtype), np.array(2, dtype)
    check(model("Clip", {"x": x, "lo": lo, "hi": hi}, 13), {"x": x, "lo": lo, "hi": hi})
    check(model("Clip", {"x": x, "hi": hi}, 13, order=["x", "", "hi"]), {"x": x, "hi": hi}, ("interpreted",))
    # min > max: every element becomes max, as ONNX
    check(model("Clip", {"x": x, "lo": hi, "hi": lo}, 13), {"x": x, "lo": hi, "hi": lo}, ("interpreted",))


@pytest.mark.parametrize("upper", [0, 1])
def test_trilu_k_as_runtime_input(upper: int) -> None:
    x = r(2, 4, 5)
    for k in (-1, 0, 2):
        kk = np.array(k, np.int64)
        check(model("Trilu", {"x": x, "k": kk}, 14, {"upper": upper}), {"x": x, "k": kk},
              ("interpreted", "compiled") if k == 2 else ("interpreted",))


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_unsigned_types(dtype: str) -> None:
    a = RNG.integers(0, 1000, (3, 4)).astype(dtype)
    b = RNG.integers(1, 1000, (3, 4)).astype(dtype)
    check(model("Add", {"a": a, "b": b}, 14), {"a": a, "b": b}, ("interpreted",))
    check(model("Div", {"a": a, "b": b}, 14), {"a": a, "b": b}, ("interpreted",))
    x = r(2, 3) * 100
    check(model("Cast", {"x": np.abs(x)}, 21, {"to": NP2ONNX[np.dtype(dtype)]}), {"x": np.abs(x)}, ("interpreted",))


@pytest.mark.parametrize("axis", [-1, 1])
def test_layernorm_mean_and_invstddev(axis: int) -> None:
    x, g, b = r(2, 3, 4), r(*((3, 4) if axis == 1 else (4,))), r(*((3, 4) if axis == 1 else (4,)))
    check(model("LayerNormalization", {"x": x, "g": g, "b": b}, 17, {"axis": axis, "epsilon": 1e-3}, n_out=3),
          {"x": x, "g": g, "b": b}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_arg_select_last_index(op: str, keepdims: int) -> None:
    x = np.array([[2, 2, 1, 2], [0, 3, 3, 0], [1, 1, 1, 1]], np.float32)
    for axis in (0, 1, -1):
        check(model(op, {"x": x}, 13, {"axis": axis, "keepdims": keepdims, "select_last_index": 1}), {"x": x},
              ("interpreted", "compiled") if axis == 1 else ("interpreted",))


def test_shape_determining_runtime_inputs_are_refused_clearly() -> None:
    x = r(3, 4)
    with pytest.raises(MlcError, match="axes given at run time"):
        mlc.backend.Interpreted.prepare(model("ReduceSum", {"x": x, "axes": np.array([1], np.int64)}, 13))
    with pytest.raises(MlcError, match="split sizes given at run time"):
        mlc.backend.Interpreted.prepare(model("Split", {"x": x, "s": np.array([1, 3], np.int64)}, 13,
                                              {"axis": 1}, n_out=2))
    with pytest.raises(MlcError, match="pads given at run time"):
        mlc.backend.Interpreted.prepare(model("Pad", {"x": x, "p": np.array([0, 1, 0, 1], np.int64)}, 13))
