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
        mlc.backend.Interpreted.prepare(model("ReduceSum", {"x": x, "axes": np.array([1], np.int64)}, 13), specialize=False)
    with pytest.raises(MlcError, match="split sizes given at run time"):
        mlc.backend.Interpreted.prepare(model("Split", {"x": x, "s": np.array([1, 3], np.int64)}, 13,
                                              {"axis": 1}, n_out=2), specialize=False)
    with pytest.raises(MlcError, match="pads given at run time"):
        mlc.backend.Interpreted.prepare(model("Pad", {"x": x, "p": np.array([0, 1, 0, 1], np.int64)}, 13), specialize=False)


def test_folded_values_feed_shape_arithmetic() -> None:
    """A Cast of a constant folds to a constant that a later Range / ConstantOfShape reads as a bound."""
    n = helper.make_node
    nodes = [n("Constant", [], ["four"], value=numpy_helper.from_array(np.array(4.0, np.float32))),
             n("Cast", ["four"], ["four_i"], to=I64),
             n("Range", ["zero", "four_i", "one"], ["idx"]),
             n("Unsqueeze", ["four_i", "ax0"], ["shp"]),
             n("ConstantOfShape", ["shp"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
             n("Cast", ["idx"], ["idx_f"], to=F), n("Add", ["idx_f", "ones"], ["s"]), n("Mul", ["s", "x"], ["y0"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [4])],
                          [helper.make_tensor_value_info("y0", F, [4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = r(4)
    check(m, {"x": x})


def test_reduce_max_min_over_an_empty_axis() -> None:
    x = np.zeros((2, 0, 4), np.float32)
    for op in ("ReduceMax", "ReduceMin"):
        check(model(op, {"x": x}, 18, {"keepdims": 1}, consts={"axes": np.array([1], np.int64)}), {"x": x},
              ("interpreted",))


def test_cast_to_bfloat16_rounds_to_nearest_even() -> None:
    import ml_dtypes
    from mlc.ir.ops.reference import round_bf16

    x = np.array([1.0, 1.00390625, 1.01171875, -3.14159, 1e30, np.inf, -np.inf, np.nan, 0.0], np.float32)
    np.testing.assert_array_equal(round_bf16(x), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    m = model("Cast", {"x": x}, 21, {"to": TensorProto.BFLOAT16})
    for mode in ("interpreted", "compiled"):
        (y,) = mlc.backend.BACKENDS[mode].prepare(m).run([x])
        assert y.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(y.astype(np.float32), x.astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "MaxPool", "AveragePool"])
def test_one_d_conv_and_pools(op: str) -> None:
    x = r(2, 3, 11)
    if op in ("Conv", "ConvTranspose"):
        w = r(4, 3, 3) if op == "Conv" else r(3, 4, 3)
        m = model(op, {"x": x}, 17, {"strides": [2], "pads": [1, 0], "dilations": [1]}, consts={"w": w, "b": r(4)})
    else:
        m = model(op, {"x": x}, 17, {"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attrs", [{"output_shape": [10, 8], "strides": [3, 2]}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                                   {"auto_pad": "SAME_LOWER", "strides": [2, 2]}])
def test_conv_transpose_output_shape_and_same(attrs: dict[str, Any]) -> None:
    x = r(1, 1, 3, 3)
    check(model("ConvTranspose", {"x": x}, 17, attrs, consts={"w": r(1, 2, 3, 3)}), {"x": x}, rtol=1e-4, atol=1e-5)


def test_backend_specializes_on_shape_fixing_inputs() -> None:
    x = r(3, 4)
    m = model("ReduceSum", {"x": x, "axes": np.array([1], np.int64)}, 13, {"keepdims": 0})
    for mode in ("interpreted", "compiled"):
        rep = mlc.backend.BACKENDS[mode].prepare(m)
        assert rep.specialized_on == ["axes"]
        np.testing.assert_allclose(rep.run([x, np.array([1], np.int64)])[0], x.sum(1), rtol=1e-5)
        np.testing.assert_allclose(rep.run([x, np.array([0], np.int64)])[0], x.sum(0), rtol=1e-5)
        assert len(rep._cache) == 2
    with pytest.raises(MlcError, match="axes given at run time"):
        mlc.backend.Interpreted.prepare(m, specialize=False)


@pytest.mark.parametrize("mode", ["edge", "reflect", "wrap"])
def test_pad_modes(mode: str) -> None:
    x = r(3, 4, 5)
    check(model("Pad", {"x": x}, 19, {"mode": mode}, consts={"p": np.array([1, 0, 2, 2, 3, 1], np.int64)}), {"x": x})
    check(model("Pad", {"x": x}, 18, {"mode": mode},
                consts={"p": np.array([2, 1], np.int64), "v": np.array(0, np.float32), "ax": np.array([-1], np.int64)}),
          {"x": x}, ("interpreted",))


def test_batchnorm_training_mode_outputs_running_stats() -> None:
    x, s, b, m, v = r(2, 3, 4, 5), r(3), r(3), r(3), np.abs(r(3)) + 0.5
    mdl = model("BatchNormalization", {"x": x, "s": s, "b": b, "m": m, "v": v}, 15,
                {"training_mode": 1, "momentum": 0.8, "epsilon": 1e-3}, n_out=3)
    check(mdl, {"x": x, "s": s, "b": b, "m": m, "v": v}, rtol=1e-4, atol=1e-5)


def test_old_opset_of_unchanged_ops_and_zero_ratio_dropout() -> None:
    x = r(3, 4) > 0
    check(model("Not", {"x": x}, 1), {"x": x})  # Not is unchanged since opset 1
    with pytest.raises(MlcError, match="opset 5"):  # Relu changed at 6: opset 5 keeps its old form
        mlc.backend.Interpreted.prepare(model("Relu", {"x": r(2)}, 5))
    y = r(3, 4)
    m = model("Dropout", {"y": y}, 13, {"seed": 0}, n_out=2,
              consts={"ratio": np.array(0.0, np.float32), "t": np.array(True)})
    check(m, {"y": y})
    with pytest.raises(MlcError, match="random masks"):
        mlc.backend.Interpreted.prepare(model("Dropout", {"y": y}, 13, consts={"ratio": np.array(0.5, np.float32),
                                                                                "t": np.array(True)}))


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
def test_mod_signs(fmod: int, dtype: str) -> None:
    if dtype.startswith("int"):
        a = np.array([-7, 7, -7, 7, 0, 5, -5, 9], dtype)
        b = np.array([2, -2, -2, 2, 3, 7, 7, -4], dtype)
    else:
        a = np.array([-7.5, 7.5, -7.5, 7.5, 0.0, 3.0, -3.0, 1.0, -1.0], dtype)
        b = np.array([2.0, -2.0, -2.0, 2.0, 3.0, np.inf, np.inf, -np.inf, -np.inf], dtype)
    if fmod == 0 and dtype == "float32":
        want = np.mod(a, b)  # numpy: the sign of the divisor, as ONNX
    else:
        want = np.fmod(a, b) if fmod else np.mod(a, b)
    m = model("Mod", {"a": a, "b": b}, 13, {"fmod": fmod})
    for mode in ("interpreted", "compiled"):
        (got,) = mlc.backend.BACKENDS[mode].prepare(m).run([a, b])
        np.testing.assert_array_equal(got, want.astype(dtype), err_msg=mode)


def test_castlike() -> None:
    x, like = r(3, 4) * 10, np.zeros((1,), np.int32)
    check(model("CastLike", {"x": x, "like": like}, 21), {"x": x, "like": like})


def test_bf16_constants_keep_their_type() -> None:
    """Folded casts and scalar constants next to a bf16 tensor are typed bf16 (numpy holds them as f32)."""
    import ml_dtypes

    x = np.array([-2.0, -0.5, 0.0, 1.5, 3.0], np.float32).astype(ml_dtypes.bfloat16)
    n = helper.make_node
    nodes = [n("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
             n("CastLike", ["two", "x"], ["two_bf"]), n("Mul", ["x", "two_bf"], ["x2"]), n("Elu", ["x2"], ["y0"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [5])],
                          [helper.make_tensor_value_info("y0", TensorProto.BFLOAT16, [5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    xf = x.astype(np.float32) * 2
    want = np.where(xf < 0, np.expm1(xf), xf)
    for mode in ("interpreted", "compiled"):
        (y,) = mlc.backend.BACKENDS[mode].prepare(m).run([x])
        assert y.dtype == ml_dtypes.bfloat16
        np.testing.assert_allclose(y.astype(np.float32), want, rtol=1e-2, atol=1e-2, err_msg=mode)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 3, 2], "strides": [1, 2, 1], "pads": [1, 0, 1, 0, 1, 1], "dilations": [2, 1, 1]}),
    ("MaxPool", {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3, 2, 3], "strides": [2, 1, 2], "pads": [1, 1, 0, 1, 0, 1]}),
    ("AveragePool", {"kernel_shape": [3, 2, 3], "strides": [2, 1, 2], "pads": [1, 1, 0, 1, 0, 1], "count_include_pad": 1}),
])
def test_three_d_pools_as_two_2d_pools(op: str, attrs: dict[str, Any]) -> None:
    x = r(2, 3, 7, 6, 8)
    check(model(op, {"x": x}, 19, attrs), {"x": x}, rtol=1e-5, atol=1e-6, ref="ort")


@pytest.mark.parametrize("axis", [-1, 1])
def test_rms_normalization(axis: int) -> None:
    x = r(2, 3, 4)
    scale = r(*((3, 4) if axis == 1 else (4,)))
    check(model("RMSNormalization", {"x": x, "scale": scale}, 23, {"axis": axis, "epsilon": 1e-3}),
          {"x": x, "scale": scale}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_peepholes(direction: str) -> None:
    nd, h, seq, batch, inp = (2 if direction == "bidirectional" else 1), 3, 4, 2, 5
    x = r(seq, batch, inp)
    consts = {"W": r(nd, 4 * h, inp), "R": r(nd, 4 * h, h), "B": r(nd, 8 * h)}
    m = model("LSTM", {"x": x}, 14, {"hidden_size": h, "direction": direction},
              consts={**consts, "P": r(nd, 3 * h)}, order=["x", "W", "R", "B", "", "", "", "P"], n_out=3)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5, ref="ort")


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 2], "strides": [1, 2], "dilations": [2, 2]},
    {"kernel_shape": [2, 3], "strides": [2, 1], "dilations": [2, 3], "pads": [1, 0, 1, 2]},
    {"kernel_shape": [2, 3], "strides": [2, 1], "dilations": [2, 3], "pads": [1, 0, 1, 2], "count_include_pad": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
])
def test_dilated_average_pool(attrs: dict[str, Any]) -> None:
    x = r(2, 3, 9, 10)
    check(model("AveragePool", {"x": x}, 19, attrs), {"x": x}, rtol=1e-5, atol=1e-6, ref="ort")
