"""activation-layout (passes/activation_layout.py): activations between tensor programs stored
channels-last where every access is a channel vector or scalar.

Oracles: onnxruntime on the same ONNX graphs (random shapes, batch 1-3, strides, residual adds,
pools); the same build without the pass; and the program-level rewrite against the reference
interpreter on the NCHW program with transposed inputs and outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import arith
from mlc.ir.expr import Const
from mlc.ir.graph import CallTensor
from mlc.ir.module import Module
from mlc.ir.printer import print_module
from mlc.ir.tir_interp import run_prim
from mlc.ir.types import TensorType
from mlc.passes import activation_layout as al
from mlc.passes.activation_layout import Access, accesses, channels_last, nhwc, rescheduled, with_nhwc_params
from onnx import TensorProto, helper, numpy_helper

import mlc
from mlc.compiler import build_module, with_memory_constants


def _graph(c: int, k: int, hw: int, batch: int | str = "batch", stride: int = 1, pool: bool = False,
           seed: int = 0) -> onnx.ModelProto:
    """A bottleneck: 1x1 (c->k) + relu -> 3x3/stride (k->k) + relu -> 1x1 (k->c) + residual
    (1x1/stride of x when strided) + relu [-> 3x3/2 max pool] -> global average pool."""
    rng = np.random.default_rng(seed)

    def w(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)

    inits = {"w1": w(k, c, 1, 1), "b1": w(k), "w2": w(k, k, 3, 3), "b2": w(k), "w3": w(c, k, 1, 1), "wd": w(c, c, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, strides=[stride] * 2),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("Conv", ["r2", "w3"], ["c3"])]
    res = "x"
    if stride > 1:
        nodes.append(helper.make_node("Conv", ["x", "wd"], ["d"], strides=[stride] * 2))
        res = "d"
    nodes += [helper.make_node("Add", ["c3", res], ["a"]), helper.make_node("Relu", ["a"], ["r3"])]
    last = "r3"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r3"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
        last = "p"
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _build(proto: onnx.ModelProto, on: bool = True):  # type: ignore[no-untyped-def]
    keep = al.ActivationLayout.apply
    if not on:
        al.ActivationLayout.apply = lambda self, m, ctx: m  # type: ignore[method-assign]
    try:
        return mlc.compile(proto)
    finally:
        al.ActivationLayout.apply = keep  # type: ignore[method-assign]


def _check(proto: onnx.ModelProto, x: np.ndarray) -> None:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    m = _build(proto)
    got = list(m(**{m.input_names[0]: x}).values())[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_bottleneck_is_stored_channels_last_and_matches_onnxruntime() -> None:
    proto = _graph(64, 32, 56, batch=1)
    m = _build(proto)
    main = m.module.graph_functions()[0]
    text = str(main)
    # the 56x56 activations between the convolutions are (N, H, W, C) tensors, and their producers
    # and consumers are clones taking them so
    assert any(isinstance(b.var.type, TensorType) and [arith.as_int(d) for d in b.var.type.shape or ()] == [1, 56, 56, 32]
               for b in main.body.bindings), text
    calls = [b.node.func for b in main.body.bindings if isinstance(b.node, CallTensor)]
    assert any(f.endswith("_nhwc") for f in calls), calls
    for f in m.module.prim_functions():
        if f.name.endswith("_nhwc"):
            assert any(len(p.shape) == 4 and arith.as_int(p.shape[1]) == 56 for p in f.params), f.name
    # the returned value keeps NCHW (the graph's result type is what the caller gets)
    x = np.random.default_rng(1).standard_normal((1, 64, 56, 56)).astype(np.float32)
    _check(proto, x)
    off = _build(proto, on=False)
    np.testing.assert_allclose(list(m(**{m.input_names[0]: x}).values())[0],
                               list(off(**{off.input_names[0]: x}).values())[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [
    (16, 16, 9, 1, 1, False), (32, 48, 13, 2, 2, True), (64, 32, 57, 1, 1, True), (48, 64, 20, 3, 2, False),
    (128, 64, 16, 1, 1, False), (24, 40, 11, 2, 1, True), (256, 64, 56, 1, 2, False), (64, 96, 58, 2, 1, True),
])
def test_random_shapes_match_onnxruntime(case: tuple[int, int, int, int, int, bool]) -> None:
    c, k, hw, n, stride, pool = case
    proto = _graph(c, k, hw, stride=stride, pool=pool, seed=hw)
    x = np.random.default_rng(hw).standard_normal((n, c, hw, hw)).astype(np.float32)
    _check(proto, x)


def _stem(c: int, hw: int, concat: bool = False, seed: int = 0, batch: int | str = "batch") -> onnx.ModelProto:
    """A stem: 3x3/2 conv (3->c) + relu -> 3x3/2 max pool [-> concat with a 1x1 branch] -> 1x1 conv
    + relu -> global average pool (ResNet's and SqueezeNet's stems feed a max pool)."""
    rng = np.random.default_rng(seed)
    inits = {"w0": rng.standard_normal((c, 3, 3, 3)).astype(np.float32),
             "wb": rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 0.1,
             "w1": rng.standard_normal((16, 2 * c if concat else c, 1, 1)).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p"], kernel_shape=[3, 3], strides=[2, 2])]
    last = "p"
    if concat:
        nodes += [helper.make_node("Conv", ["p", "wb"], ["b"]), helper.make_node("Concat", ["p", "b"], ["cat"], axis=1)]
        last = "cat"
    nodes += [helper.make_node("Conv", [last, "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
              helper.make_node("GlobalAveragePool", ["r1"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("case", [(32, 57, 1, False), (64, 40, 2, False), (32, 33, 1, True), (48, 64, 3, True)])
def test_stem_pool_rescheduled_for_channels_last(case: tuple[int, int, int, bool]) -> None:
    """The max pool (and the concatenation) after a stem, vectorized over the width by their default
    schedule, are scheduled again over channel vectors (`rescheduled`), so the stem's result is
    stored channels-last; everything agrees with onnxruntime."""
    c, hw, n, concat = case
    proto = _stem(c, hw, concat, seed=hw)
    m = _build(proto)
    main = m.module.graph_functions()[0]
    calls = [b.node.func for b in main.body.bindings if isinstance(b.node, CallTensor)]
    assert any("max_pool" in f and f.endswith("_nhwc") for f in calls), calls
    x = np.random.default_rng(hw).standard_normal((n, 3, hw, hw)).astype(np.float32)
    _check(proto, x)


def test_rescheduled_programs_match_interpreter() -> None:
    """Every program `rescheduled` takes (max pools, the concatenation, the global pool) computes what
    its default schedule does, in the reference interpreter."""
    seen = _stages(_stem(32, 33, concat=True, batch=1))
    rng = np.random.default_rng(0)
    done = 0
    for f in seen["alter-layout"].prim_functions():
        r = rescheduled(f, 16)
        if r is None:
            continue
        a = [rng.standard_normal([arith.as_int(d) for d in p.shape]).astype(np.float32) for p in f.params]
        b = [x.copy() for x in a]
        run_prim(f, a)
        run_prim(r, b)
        np.testing.assert_array_equal(a[-1], b[-1], err_msg=f.name)
        done += 1
    assert done >= 1


def test_pool_of_an_nchw_input_keeps_its_schedule() -> None:
    """A max pool reading the graph's input (NCHW, never rewritten) would gather in its rescheduled
    form: it is banned, keeps its schedule, and its result stays NCHW though a 1x1 conv reads it."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 41, 41])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(rng.standard_normal((64, 32, 1, 1)).astype(np.float32), "w")])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    main = _build(proto).module.graph_functions()[0]
    pool = [b for b in main.body.bindings if isinstance(b.node, CallTensor) and "max_pool" in b.node.func]
    assert pool and not pool[0].node.func.endswith("_nhwc"), str(main)  # type: ignore[attr-defined]
    assert [arith.as_int(d) for d in pool[0].var.type.shape] == [1, 32, 20, 20]  # type: ignore[union-attr]
    _check(proto, np.random.default_rng(1).standard_normal((1, 32, 41, 41)).astype(np.float32))


def test_pool_result_returned_stays_nchw() -> None:
    """A bottleneck's max pool reads its channels-last input rescheduled; what is returned stays NCHW."""
    proto = _graph(64, 32, 56, batch=1, pool=True)
    main = _build(proto).module.graph_functions()[0]
    pool = [b for b in main.body.bindings if isinstance(b.node, CallTensor) and "max_pool" in b.node.func]
    assert pool and pool[0].node.func.endswith("_nhwc"), str(main)  # type: ignore[attr-defined]
    for r in main.body.results:
        assert [arith.as_int(d) for d in r.type.shape] == [1, 64, 1, 1]  # type: ignore[union-attr]
    _check(proto, np.random.default_rng(2).standard_normal((1, 64, 56, 56)).astype(np.float32))


def test_channels_last_rule() -> None:
    big = tuple(Const(v) for v in (1, 64, 56, 56))
    small = tuple(Const(v) for v in (1, 64, 14, 14))
    vec, scalar, win = Access(16, False), Access(None, False), Access(None, True)
    assert channels_last(big, [[vec], [scalar]])
    assert not channels_last(big, [[scalar], [scalar]])  # nothing gains
    assert not channels_last(big, [[vec], None])  # an unfriendly consumer
    assert not channels_last(big, [[vec], [win]])  # a windowed conv reads it
    assert channels_last(small, [[vec], [scalar, vec]])
    keep = al.WINDOWED_READS
    al.WINDOWED_READS = True
    try:
        assert channels_last(big, [[vec], [win]])
    finally:
        al.WINDOWED_READS = keep


def _stages(proto: onnx.ModelProto) -> dict[str, Module]:
    """The module after each pass of the CPU build (block form up to lower-tir)."""
    module, consts = import_onnx(proto)
    seen: dict[str, Module] = {}
    build_module(with_memory_constants(module, consts), consts, "cpu",
                 print_after=lambda name, mod: seen.__setitem__(name, mod))
    return seen


def test_before_after_ir() -> None:
    """The graph before and after the pass: the 3x3's result, read by the last 1x1, changes type to
    (N, H, W, C) and its producer and consumer become `_nhwc` clones; the first 1x1's result, read by
    the (windowed) 3x3, and the returned value keep theirs."""
    seen = _stages(_graph(64, 32, 56, batch=1))
    before, after = (print_module(seen[p]).split("\nprim ")[0] for p in ("alter-layout", "activation-layout"))
    assert before.count("tensor<1 x 32 x 56 x 56 x f32> = call_tensor") == 2 and "_nhwc" not in before, before
    assert after.count("tensor<1 x 32 x 56 x 56 x f32> = call_tensor") == 1, after
    assert after.count("tensor<1 x 56 x 56 x 32 x f32> = call_tensor") == 1, after
    assert "_nhwc(" in after
    sig = [ln for ln in after.splitlines() if ln.startswith("graph @main")]
    assert sig and sig == [ln for ln in before.splitlines() if ln.startswith("graph @main")]  # signature unchanged


def test_program_rewrite_matches_interpreter() -> None:
    """Each scheduled program with its 4-D parameters rewritten channels-last (128 channels: padded
    positions) computes, in the reference interpreter, what the NCHW program does on the transposed
    values."""
    seen = _stages(_graph(128, 32, 9, batch=1))
    rng = np.random.default_rng(0)
    for f in seen["alter-layout"].prim_functions():
        four = {i for i, p in enumerate(f.params) if len(p.shape) == 4 and arith.as_int(p.shape[2]) == 9}
        if not four:
            continue
        arrays = [rng.standard_normal([arith.as_int(d) for d in p.shape]).astype(np.float32) for p in f.params]
        want = [a.copy() for a in arrays]
        run_prim(f, want)
        got = []
        for i, a in enumerate(arrays):
            if i in four:
                b = np.full([arith.as_int(d) for d in nhwc(f.params[i]).shape], np.nan, np.float32)
                b[..., :a.shape[1]] = a.transpose(0, 2, 3, 1)
                got.append(b)
            else:
                got.append(a.copy())
        run_prim(with_nhwc_params(f, four, f.name + "_nhwc"), got)
        for i in range(len(f.params) - f.num_outputs, len(f.params)):
            res = got[i][..., :want[i].shape[1]].transpose(0, 3, 1, 2) if i in four else got[i]
            np.testing.assert_allclose(res, want[i], rtol=1e-6, atol=1e-6, err_msg=f.name)


def test_accesses_classify_scheduled_programs() -> None:
    for f in _stages(_graph(64, 32, 56, batch=1, pool=True))["alter-layout"].prim_functions():
        out = accesses(f, len(f.params) - 1)
        if "conv2d" in f.name:  # a channel-vector write-back
            assert out is not None and any(a.width for a in out), f.name
        if "max_pool" in f.name:  # vectors over the width
            assert accesses(f, 0) is None and accesses(f, 1) is None
