"""Every supported ONNX op, imported as a one-node model and run through the reference interpreter,
against onnxruntime; plus shape inference on symbolic dims and import error handling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import mlc.ir.ops as ops
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlc.frontend.onnx_import import import_onnx, sanitize
from mlc.ir.arith import prove_equal
from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.expr import Const, Var
from mlc.ir.interp import run_function
from mlc.ir.types import TensorType
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(42)
F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
NP2ONNX = {np.dtype("float32"): F, np.dtype("int64"): I64, np.dtype("bool"): B, np.dtype("int32"): TensorProto.INT32}


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def pos(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape).astype(np.float32)


def i64(*vals: Any) -> np.ndarray:
    return np.array(vals, dtype=np.int64)


@dataclass
class Case:
    op: str
    inputs: dict[str, np.ndarray]  # graph inputs (fed at run time)
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # initializers
    order: list[str] | None = None  # node input order ("" = omitted); default inputs then consts
    n_out: int = 1
    opset: int = 17
    dims: dict[str, list[str]] = field(default_factory=dict)  # input -> dim_params (None = fixed)
    id: str = ""


def model_of(c: Case) -> onnx.ModelProto:
    names = c.order if c.order is not None else list(c.inputs) + list(c.consts)
    outs = [f"out{i}" for i in range(c.n_out)]
    node = helper.make_node(c.op, names, outs, name="n0", **c.attrs)
    ins = []
    for k, v in c.inputs.items():
        shape: list[Any] = list(v.shape)
        for i, d in enumerate(c.dims.get(k, [])):
            if d is not None:
                shape[i] = d
        ins.append(helper.make_tensor_value_info(k, NP2ONNX[v.dtype], shape))
    inits = [numpy_helper.from_array(v, k) for k, v in c.consts.items()]
    g = helper.make_graph([node], "t", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", c.opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)  # fills the output types ort needs
    for o in m.graph.output:
        if not o.type.HasField("tensor_type"):
            o.type.CopyFrom(helper.make_tensor_type_proto(F, None))
    return m


def check(c: Case, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    m = model_of(c)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, c.inputs)
    mod, consts = import_onnx(m)
    got = run_function(mod, {sanitize(k): v for k, v in c.inputs.items()}, consts)
    for i, w in enumerate(want):
        g = got[f"out{i}"]
        assert g.shape == w.shape, (c.op, i, g.shape, w.shape)
        assert g.dtype == w.dtype, (c.op, i, g.dtype, w.dtype)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=c.op)


a35 = r(3, 1, 5)
CASES: list[Case] = [
    *[Case(op, {"a": a35, "b": r(4, 1)}, id=f"{op}-broadcast") for op in ("Add", "Sub", "Mul")],
    Case("Div", {"a": r(2, 3), "b": pos(3)}),
    Case("Div", {"a": i64(-7, 7, -7, 9, 0), "b": i64(2, -2, -2, 4, 3)}, id="Div-int-trunc"),
    Case("Pow", {"a": pos(2, 3), "b": r(3)}),
    Case("Pow", {"a": pos(2, 3)}, consts={"e": np.array(2, np.int64)}, id="Pow-int-exponent"),
    Case("Min", {"a": r(2, 3), "b": r(3), "c": r(1, 1)}), Case("Max", {"a": r(2, 3), "b": r(3)}),
    Case("Sum", {"a": r(2, 3), "b": r(3), "c": r(2, 1)}), Case("Mean", {"a": r(2, 3), "b": r(3), "c": r(2, 1)}),
    *[Case(op, {"a": np.round(r(3, 4)), "b": np.round(r(4))}) for op in
      ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")],
    *[Case(op, {"a": r(3, 4) > 0, "b": r(4) > 0}) for op in ("And", "Or")],
    Case("Not", {"a": r(3, 4) > 0}),
    *[Case(op, {"x": r(3, 4)}) for op in ("Exp", "Erf", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Floor", "Ceil",
                                           "Sin", "Cos")],
    *[Case(op, {"x": pos(3, 4)}) for op in ("Sqrt", "Log", "Reciprocal")],
    Case("Round", {"x": np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1.2, -2.7], np.float32)}),
    Case("LeakyRelu", {"x": r(3, 4)}, {"alpha": 0.2}),
    Case("Gelu", {"x": r(3, 4)}, opset=20), Case("Gelu", {"x": r(3, 4)}, {"approximate": "tanh"}, opset=20,
                                                 id="Gelu-tanh"),
    Case("Clip", {"x": r(3, 4)}, consts={"lo": np.array(-0.5, np.float32), "hi": np.array(0.3, np.float32)}),
    Case("Clip", {"x": r(3, 4)}, consts={"lo": np.array(-0.5, np.float32)}, id="Clip-min-only"),
    Case("Cast", {"x": r(3, 4) * 5}, {"to": TensorProto.INT32}, id="Cast-f2i"),
    Case("Cast", {"x": i64(1, -3, 0)}, {"to": F}, id="Cast-i2f"),
    Case("Cast", {"x": np.array([0.0, 1.5, -2.0], np.float32)}, {"to": B}, id="Cast-f2b"),
    Case("Softmax", {"x": r(2, 3, 4)}, {"axis": 1}), Case("Softmax", {"x": r(2, 3, 4)}, id="Softmax-default"),
    Case("LogSoftmax", {"x": r(2, 3, 4)}, {"axis": -2}),
    Case("MatMul", {"a": r(3, 4), "b": r(4, 5)}), Case("MatMul", {"a": r(2, 1, 3, 4), "b": r(5, 4, 6)}, id="MatMul-bc"),
    Case("MatMul", {"a": r(4), "b": r(2, 4, 3)}, id="MatMul-vec"),
    Case("Gemm", {"a": r(4, 3), "b": r(5, 4), "c": r(5)}, {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}),
    Case("Gemm", {"a": r(3, 4), "b": r(4, 5)}, id="Gemm-noC"),
    Case("Conv", {"x": r(2, 4, 9, 8)}, {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2], "group": 2},
         consts={"w": r(6, 2, 3, 3), "b": r(6)}),
    Case("Conv", {"x": r(1, 3, 7, 7)}, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, consts={"w": r(4, 3, 4, 4)},
         id="Conv-same"),
    Case("ConvTranspose", {"x": r(2, 4, 5, 4)}, {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0],
                                                  "group": 2}, consts={"w": r(4, 3, 3, 3), "b": r(6)}),
    Case("MaxPool", {"x": r(2, 3, 9, 8)}, {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1],
                                            "ceil_mode": 1, "dilations": [1, 2]}),
    Case("MaxPool", {"x": r(1, 2, 6, 6)}, {"kernel_shape": [2, 2], "strides": [2, 2]}, id="MaxPool-plain"),
    Case("AveragePool", {"x": r(2, 3, 7, 8)}, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("AveragePool", {"x": r(2, 3, 7, 8)}, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                                "count_include_pad": 1}, id="AveragePool-incl"),
    Case("AveragePool", {"x": r(1, 2, 8, 8)}, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
         id="AveragePool-ceil"),
    Case("GlobalAveragePool", {"x": r(2, 3, 5, 4)}), Case("GlobalMaxPool", {"x": r(2, 3, 5, 4)}),
    Case("BatchNormalization", {"x": r(2, 3, 4, 5)}, {"epsilon": 1e-3},
         consts={"s": r(3), "b": r(3), "m": r(3), "v": pos(3)}),
    Case("LayerNormalization", {"x": r(2, 3, 4)}, consts={"g": r(4), "b": r(4)}),
    Case("LayerNormalization", {"x": r(2, 3, 4)}, {"axis": 1}, consts={"g": r(3, 4)}, id="LayerNorm-axis1"),
    Case("Concat", {"a": r(2, 3), "b": r(2, 1), "c": r(2, 2)}, {"axis": -1}),
    Case("Split", {"x": r(2, 7)}, {"axis": -1}, consts={"s": i64(2, 5)}, n_out=2),
    Case("Split", {"x": r(6, 2)}, n_out=3, id="Split-equal"),
    Case("Split", {"x": r(7, 2)}, {"num_outputs": 3}, n_out=3, opset=18, id="Split-num-outputs"),
    Case("Reshape", {"x": r(2, 3, 4)}, consts={"s": i64(0, -1, 2)}),
    Case("Transpose", {"x": r(2, 3, 4)}, {"perm": [2, 0, 1]}), Case("Transpose", {"x": r(2, 3, 4)}, id="T-rev"),
    Case("Squeeze", {"x": r(2, 1, 3, 1)}, consts={"ax": i64(-1)}),
    Case("Squeeze", {"x": r(2, 1, 3, 1)}, id="Squeeze-all"),
    Case("Unsqueeze", {"x": r(2, 3)}, consts={"ax": i64(0, -1)}),
    Case("Flatten", {"x": r(2, 3, 4)}, {"axis": 2}), Case("Flatten", {"x": r(2, 3, 4)}, {"axis": 0}, id="Flatten0"),
    Case("Gather", {"x": r(4, 5, 3)}, {"axis": -2}, consts={"i": i64([[0, -1], [3, 2]])}),
    Case("Gather", {"x": r(4, 5)}, consts={"i": np.array(-2, np.int64)}, id="Gather-scalar"),
    Case("Gather", {"x": r(4, 5), "i": i64(3, 0, 1)}, id="Gather-runtime-idx"),
    Case("Slice", {"x": r(6, 7, 5)}, consts={"st": i64(-2, 1), "en": i64(-100, 100), "ax": i64(0, -1),
                                             "sp": i64(-1, 2)}),
    Case("Slice", {"x": r(6, 7)}, consts={"st": i64(1), "en": i64(-1)}, id="Slice-defaults"),
    Case("Slice", {"x": r(6, 7)}, consts={"st": i64(1, -1), "en": i64(2**63 - 1, -(2**63)), "ax": i64(0, 1),
                                          "sp": i64(2, -1)}, dims={"x": ["n", "m"]}, id="Slice-dynamic"),
    Case("Expand", {"x": r(3, 1)}, consts={"s": i64(2, 1, 4)}),
    Case("Where", {"c": r(3, 1) > 0, "a": r(1, 4), "b": r(4)}),
    Case("ReduceSum", {"x": r(2, 3, 4)}, {"keepdims": 0}, consts={"ax": i64(-1, 0)}),
    Case("ReduceSum", {"x": r(2, 3, 4)}, id="ReduceSum-all"),
    Case("ReduceSum", {"x": r(2, 3, 4)}, {"noop_with_empty_axes": 1}, id="ReduceSum-noop"),
    Case("ReduceMean", {"x": r(2, 3, 4)}, {"axes": [1]}, opset=13),
    Case("ReduceMax", {"x": r(2, 3, 4)}, {"keepdims": 0}, consts={"ax": i64(-2)}, opset=18),
    Case("ReduceMin", {"x": r(2, 3, 4)}, {"axes": [0, 2]}),
    Case("ReduceProd", {"x": pos(2, 3)}, {"axes": [1]}),
    Case("ArgMax", {"x": r(3, 4, 5)}, {"axis": -1, "keepdims": 0}), Case("ArgMin", {"x": r(3, 4)}, {"axis": 0}),
    Case("Pad", {"x": r(2, 3)}, consts={"p": i64(1, 0, 2, 3), "v": np.array(1.5, np.float32)}),
    Case("Identity", {"x": r(2, 3)}), Case("Dropout", {"x": r(2, 3)}),
    Case("PRelu", {"x": r(2, 3, 4)}, consts={"s": r(3, 1)}),
    *[Case(op, {"x": r(3, 4) * 3}) for op in ("Elu", "Selu", "HardSigmoid", "HardSwish", "Softsign")],
    Case("Softplus", {"x": np.array([-100, -3, -0.5, 0, 0.5, 3, 50], np.float32)}),
    Case("Elu", {"x": r(3, 4)}, {"alpha": 0.3}, id="Elu-alpha"),
    Case("Trilu", {"x": r(2, 4, 5)}), Case("Trilu", {"x": r(4, 5)}, {"upper": 0}, consts={"k": np.array(-1, np.int64)},
                                           id="Trilu-lower"),
    Case("Trilu", {"x": r(3, 5)}, dims={"x": ["m", "n"]}, id="Trilu-dynamic"),
    Case("Tile", {"x": r(2, 3)}, consts={"r": i64(3, 2)}),
    Case("Tile", {"x": r(2, 3)}, consts={"r": i64(2, 1)}, dims={"x": ["n", None]}, id="Tile-dynamic"),
    Case("Relu", {"x": r(3, 4)}, dims={"x": ["n", None]}, id="Relu-dynamic"),
    Case("Pad", {"x": r(2, 3, 4)}, consts={"p": i64(1, 2, 0, 1), "v": np.array(0.0, np.float32), "ax": i64(0, -1)},
         opset=18, id="Pad-axes"),
    Case("Add", {"a": r(2, 3), "b": r(3)}, opset=21, id="Add-opset21"),
    Case("Squeeze", {"x": r(2, 1, 3)}, consts={"ax": i64(1)}, opset=13, id="Squeeze-opset13"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id or c.op for c in CASES])
def test_op_matches_onnxruntime(case: Case) -> None:
    check(case)


def test_imported_modules_print_parse_and_verify() -> None:
    import dataclasses

    from mlc.ir.module import ConstantsRef
    from mlc.ir.parser import parse_module
    from mlc.ir.printer import print_module
    from mlc.ir.verify import verify_module

    for c in CASES + RNN_CASES:
        mod, _ = import_onnx(model_of(c))
        mod = dataclasses.replace(mod, constants=ConstantsRef("c.npz", "0" * 64))
        verify_module(mod)
        text = print_module(mod)
        assert parse_module(text) == mod, c.id or c.op


def test_every_graph_op_has_infer_and_ref() -> None:
    missing = [n for n, d in ops.all_ops().items() if d.infer is None or d.ref is None]
    assert not missing


def _consts_only(op: str, attrs: dict[str, Any], consts: dict[str, np.ndarray], order: list[str],
                 x: np.ndarray, opset: int = 17) -> Case:
    return Case(op, {"x": x}, attrs, consts, ["x"] + order, opset=opset)


def test_constant_range_constantofshape_shape_size() -> None:
    # Shape/Size/Range/ConstantOfShape chained in one graph, with a dynamic dim
    x = helper.make_tensor_value_info("x", F, ["n", 3])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Size", ["x"], ["size"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Constant", [], ["one"], value_int=1),
        helper.make_node("Gather", ["s", "zero"], ["n"]),
        helper.make_node("Range", ["zero", "n", "one"], ["rng"]),
        helper.make_node("ConstantOfShape", ["s"], ["cos"], value=numpy_helper.from_array(np.array([2.5], np.float32))),
        helper.make_node("Shape", ["x"], ["s1"], start=-1),
    ]
    outs = [helper.make_tensor_value_info("rng", I64, ["n"]), helper.make_tensor_value_info("cos", F, ["n", 3]),
            helper.make_tensor_value_info("s", I64, [2]), helper.make_tensor_value_info("size", I64, []),
            helper.make_tensor_value_info("s1", I64, [1])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)])
    mod, consts = import_onnx(m)
    for n in (1, 4):
        xv = r(n, 3)
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
        got = run_function(mod, {"x": xv}, consts)
        for o, w in zip(("rng", "cos", "s", "size", "s1"), want):
            np.testing.assert_array_equal(got[o], w)


def _rnn_case(op: str, gates: int, direction: str, with_init: bool, with_bias: bool, layout: int = 0,
              seq_lens: bool = False, **attrs: Any) -> Case:
    ndir = 2 if direction == "bidirectional" else 1
    seq, batch, inp, hid = 5, 3, 4, 6
    consts = {"W": r(ndir, gates * hid, inp) * 0.5, "R": r(ndir, gates * hid, hid) * 0.5}
    order = ["X", "W", "R"]
    if with_bias:
        consts["B"] = r(ndir, 2 * gates * hid) * 0.3
    order.append("B" if with_bias else "")
    xs, hs = ((seq, batch, inp), (ndir, batch, hid)) if not layout else ((batch, seq, inp), (batch, ndir, hid))
    inputs = {"X": r(*xs)}
    if seq_lens:
        consts["L"] = np.full(batch, seq, np.int32)
    order.append("L" if seq_lens else "")
    if with_init:
        order += ["h0"]
        inputs["h0"] = r(*hs)
        if op == "LSTM":
            order.append("c0")
            inputs["c0"] = r(*hs)
    n_out = 3 if op == "LSTM" else 2
    if layout:
        attrs["layout"] = 1
        dims = {"X": [None, "seq", None]}
    else:
        dims = {"X": ["seq", "batch", None], "h0": [None, "batch", None], "c0": [None, "batch", None]}
    return Case(op, inputs, {"hidden_size": hid, "direction": direction, **attrs}, consts, order, n_out,
                dims={} if seq_lens else dims, id=f"{op}-{direction}-{with_init}-{with_bias}-{seq_lens}-{attrs}")


RNN_CASES = [
    _rnn_case("LSTM", 4, "forward", False, True), _rnn_case("LSTM", 4, "reverse", True, False),
    _rnn_case("LSTM", 4, "bidirectional", True, True),
    _rnn_case("GRU", 3, "forward", True, True), _rnn_case("GRU", 3, "bidirectional", False, True),
    _rnn_case("GRU", 3, "reverse", True, True, linear_before_reset=1),
    _rnn_case("GRU", 3, "forward", False, False, linear_before_reset=1),
    _rnn_case("GRU", 3, "reverse", True, False, seq_lens=True),
]


@pytest.mark.parametrize("case", RNN_CASES, ids=[c.id for c in RNN_CASES])
def test_rnn_matches_onnxruntime(case: Case) -> None:
    check(case, rtol=1e-4)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3)])
def test_rnn_batch_first_layout(op: str, gates: int) -> None:
    """onnxruntime has no layout=1 kernels: compare with its layout=0 run on transposed data."""
    c1 = _rnn_case(op, gates, "bidirectional", True, True, layout=1)
    c0 = Case(c1.op, {k: np.swapaxes(v, 0, 1) for k, v in c1.inputs.items()},
              {k: v for k, v in c1.attrs.items() if k != "layout"}, c1.consts, c1.order, c1.n_out)
    m0 = model_of(c0)
    want = ort.InferenceSession(m0.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, c0.inputs)
    mod, consts = import_onnx(model_of(c1))
    got = run_function(mod, c1.inputs, consts)
    np.testing.assert_allclose(got["out0"], np.transpose(want[0], (2, 0, 1, 3)), rtol=1e-4, atol=1e-5)
    for i in range(1, c1.n_out):
        np.testing.assert_allclose(got[f"out{i}"], np.swapaxes(want[i], 0, 1), rtol=1e-4, atol=1e-5)


def test_rnn_partial_sequence_lens_rejected() -> None:
    c = _rnn_case("LSTM", 4, "forward", False, True, seq_lens=True)
    c.consts["L"] = np.array([5, 2, 5], np.int32)
    with pytest.raises(MlcError, match="sequence_lens"):
        import_onnx(model_of(c))


def test_rnn_is_a_loop_over_the_dynamic_sequence() -> None:
    from mlc.ir.graph import Loop

    mod, _ = import_onnx(model_of(RNN_CASES[0]))
    loops = [b.node for b in mod.get("main").body.bindings if isinstance(b.node, Loop)]
    assert len(loops) == 1 and loops[0].extent == Var("seq")
    # a different sequence length runs through the same module
    c = RNN_CASES[0]
    for seq in (1, 8):
        c2 = Case(c.op, {"X": r(seq, 3, 4)}, c.attrs, c.consts, c.order, c.n_out, dims=c.dims)
        check(c2, rtol=1e-4)


def test_dynamic_reshape_target_stays_symbolic() -> None:
    x = helper.make_tensor_value_info("x", F, ["n", 256])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n0"], axis=0),
        helper.make_node("Concat", ["n0", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(i64(0), "i0"), numpy_helper.from_array(i64(4, 64), "tail")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", F, ["n", 4, 64])], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    mod, consts = import_onnx(m)
    (b,) = [b for b in mod.get("main").body.bindings if getattr(b.node, "op", "") == "reshape"]
    assert b.node.attr("shape") == (Var("n"), 4, 64)
    assert b.var.type == TensorType((Var("n"), Const(4), Const(64)), "f32")
    xv = r(3, 256)
    np.testing.assert_array_equal(run_function(mod, {"x": xv}, consts)["y"], xv.reshape(3, 4, 64))


def test_dims_override_renames_and_fixes() -> None:
    c = Case("Relu", {"x": r(2, 3)}, dims={"x": ["batch", "feat"]})
    mod, _ = import_onnx(model_of(c), dims={"batch": "b", "x:1": "3"})
    assert mod.get("main").params[0].type == TensorType((Var("b"), Const(3)), "f32")


# --- shape inference on symbolic dims -----------------------------------------------------------------
n, m = Var("n"), Var("m")


def infer(op: str, *types: TensorType, **attrs: Any) -> Any:
    d = ops.get(op)
    assert d is not None and d.infer is not None
    return d.infer(list(types), attrs, Loc("t.ir", 3, 5))


def test_matmul_provable_mismatch_names_dims() -> None:
    with pytest.raises(MlcError) as e:
        infer("matmul", TensorType((n, Const(64)), "f32"), TensorType((Const(32), Const(8)), "f32"))
    assert "64" in e.value.message and "32" in e.value.message and e.value.loc == Loc("t.ir", 3, 5)


def test_symbolic_broadcast_and_unprovable_mismatch() -> None:
    t = infer("add", TensorType((n, Const(1), Const(4)), "f32"), TensorType((Const(3), Const(4)), "f32"))
    assert t.shape == (n, Const(3), Const(4))
    assert infer("add", TensorType((n,), "f32"), TensorType((m,), "f32")).shape == (n,)  # left to run time
    with pytest.raises(MlcError):
        infer("add", TensorType((Const(2),), "f32"), TensorType((Const(3),), "f32"))


def test_symbolic_reshape_conv_concat() -> None:
    assert infer("reshape", TensorType((n, Const(256)), "f32"), shape=(-1, 4, 64)).shape == (n, Const(4), Const(64))
    t = infer("conv2d", TensorType((n, Const(4), m, Const(9)), "f32"), TensorType((Const(8), Const(2), Const(3),
                                                                                   Const(3)), "f32"),
              strides=(2, 2), pads=(1, 1, 1, 1), groups=2)
    assert t.shape[:2] == (n, Const(8)) and t.shape[3] == Const(5)
    cat = infer("concat", TensorType((n, Const(2)), "f32"), TensorType((m, Const(2)), "f32"), axis=0)
    assert prove_equal(cat.shape[0], m + n)
    with pytest.raises(MlcError):
        infer("conv2d", TensorType((n, Const(4), m, m), "f32"), TensorType((Const(8), Const(3), Const(3),
                                                                            Const(3)), "f32"))


# --- errors --------------------------------------------------------------------------------------------
def _graph_model(nodes: list[onnx.NodeProto], opset: int = 17, domain_opsets: list[Any] | None = None
                 ) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, [2, 3])
    y = helper.make_tensor_value_info(nodes[-1].output[0], F, [2, 3])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", opset)] + (domain_opsets or []))


def test_unsupported_ops_are_all_listed() -> None:
    m = _graph_model([
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Einsum", ["a"], ["b"], name="e1", equation="ij->ji"),
        helper.make_node("Hardmax", ["b"], ["c"], name="h1"),
        helper.make_node("Einsum", ["c"], ["d"], name="e2", equation="ij->ji"),
        helper.make_node("MyOp", ["d"], ["z"], name="custom", domain="my.domain"),
    ], domain_opsets=[helper.make_opsetid("my.domain", 1)])
    with pytest.raises(MlcError) as e:
        import_onnx(m)
    msg = e.value.message
    for s in ("Einsum", "Hardmax", "'e1'", "'e2'", "'h1'", "MyOp", "'custom'"):
        assert s in msg
    assert "Relu" not in msg


def test_corrupt_bytes(tmp_path: Any) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07\x12\xff\xff\xff garbage \x00\x01")
    with pytest.raises(MlcError) as e:
        import_onnx(str(p))
    assert "bad.onnx" in str(e.value)
    good = model_of(CASES[0]).SerializeToString()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(MlcError):
        import_onnx(p)
    with pytest.raises(MlcError):
        import_onnx(tmp_path / "missing.onnx")


def test_malformed_graph_and_opset() -> None:
    with pytest.raises(MlcError, match="malformed"):
        import_onnx(_graph_model([helper.make_node("Add", ["x", "nope"], ["y"])]))
    with pytest.raises(MlcError, match="opset 5"):  # Relu changed at 6, so opset 5 is refused
        import_onnx(_graph_model([helper.make_node("Relu", ["x"], ["y"])], opset=5))


def test_import_shape_error_names_node() -> None:
    w = numpy_helper.from_array(r(4, 5), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", F, ["n", 3])],
                          [helper.make_tensor_value_info("y", F, ["n", 5])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(MlcError) as e:
        import_onnx(m)
    assert "'mm'" in e.value.message and "3" in e.value.message and "4" in e.value.message


def test_gelu_reference_formula() -> None:
    x = np.linspace(-4, 4, 17).astype(np.float32)
    got = ops.get("gelu").ref([x], {"approximate": "none"}, TensorType((Const(17),), "f32"), {})
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_docs_list_every_supported_onnx_op() -> None:
    import re
    from pathlib import Path

    from mlc.frontend.onnx_ops import HANDLERS

    text = (Path(__file__).resolve().parents[1] / "docs" / "ops.md").read_text()
    table = set(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", text))
    assert sorted(set(HANDLERS) - table) == []
    for name in ops.all_ops():
        assert re.search(rf"\b{name}\b", text), name


def test_import_from_file_with_external_weights(tmp_path: Any) -> None:
    from mlc.frontend import zoo

    m = zoo.build("mlp")
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.weights", size_threshold=0)
    mod, consts = import_onnx(tmp_path / "m.onnx")
    ref_mod, ref_consts = import_onnx(zoo.build("mlp"))
    assert mod.get("main") == ref_mod.get("main")
    assert all(np.array_equal(consts[k], ref_consts[k]) for k in ref_consts)
    (tmp_path / "m.weights").unlink()
    with pytest.raises(MlcError):
        import_onnx(tmp_path / "m.onnx")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=4), min_size=1, max_size=3))
def test_broadcast_inference_agrees_with_numpy(shapes: list[list[int]]) -> None:
    from mlc.ir.ops.shapes import broadcast_shapes

    try:
        want: tuple[int, ...] | None = np.broadcast_shapes(*[tuple(s) for s in shapes])
    except ValueError:
        want = None
    try:
        got = broadcast_shapes([tuple(Const(d) for d in s) for s in shapes], Loc())
    except MlcError:
        assert want is None
        return
    assert want is not None and tuple(d.value for d in got) == want


def test_names_are_sanitized_and_results_named_after_outputs() -> None:
    x = helper.make_tensor_value_info("input:0", F, ["batch size", 3])
    nodes = [helper.make_node("Relu", ["input:0"], ["/act/Relu_output.0"]),
             helper.make_node("Identity", ["w"], ["weights_out"])]
    outs = [helper.make_tensor_value_info("/act/Relu_output.0", F, ["batch size", 3]),
            helper.make_tensor_value_info("weights_out", F, [3]),
            helper.make_tensor_value_info("input:0", F, ["batch size", 3])]
    w = numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")
    m = helper.make_model(helper.make_graph(nodes, "g", [x], outs, [w]), opset_imports=[helper.make_opsetid("", 17)])
    mod, consts = import_onnx(m)
    fn = mod.get("main")
    assert [p.name for p in fn.params] == ["input_0"]
    assert fn.params[0].type.shape[0] == Var("batch_size")
    assert [r.name for r in fn.body.results] == ["act_Relu_output_0", "weights_out", "input_0"]
    xv = r(2, 3)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input:0": xv})
    got = run_function(mod, {"input_0": xv}, consts)
    for k, w_ in zip(("act_Relu_output_0", "weights_out", "input_0"), want):
        np.testing.assert_array_equal(got[k], w_)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9), st.integers(-12, 12), st.integers(-12, 12), st.sampled_from([-3, -2, -1, 1, 2, 3]),
       st.booleans(), st.booleans())
def test_slice_length_agrees_with_numpy(n: int, b: int, e: int, step: int, big_b: bool, big_e: bool) -> None:
    from mlc.ir.ops.shapes import BIG, slice_len

    lo, hi = (-BIG, BIG) if step > 0 else (BIG, -BIG)
    b, e = (lo if big_b else b), (hi if big_e else e)
    want = len(np.arange(n)[b:e:step])
    assert slice_len(Const(n), b, e, step) == Const(want)
    # the symbolic form agrees wherever the bounds are in range (its stated assumption)
    in_range = all(-n <= v <= n for v, big in ((b, big_b), (e, big_e)) if not big) and (
        step > 0 or all(v < n for v, big in ((b, big_b),) if not big))
    if in_range and want > 0:
        from mlc.ir.arith import evaluate

        assert evaluate(slice_len(Var("n"), b, e, step), {"n": n}) == want
