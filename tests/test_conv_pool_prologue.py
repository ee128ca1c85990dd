"""No elementwise prologue in a max pool (`OpDef.reuses_inputs` on max_pool2d, as on conv2d): a 3x3/2
window reads each input about 2.25 times, so a fused chain before it (inception_v1's LRN: squares,
channel window sum, pow, division) ran once per window element. The chain is its own kernel; pad and
epilogues still fuse. Oracles: the graph interpreter on the unfused module, onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlc.ir import Value
from onnx import TensorProto, helper
from test_fuse import N, calls, graph, rand, run_pass, same_results, t

import mlc


def test_elementwise_chain_stays_out_of_a_max_pool_unless_asked() -> None:
    x = Value("x", t(N, 4, 9, 9))
    m = graph((x,), [("sq", "mul", ("x", "x"), {}), ("e", "exp", ("sq",), {}), ("d", "div", ("x", "e"), {}),
                     ("p", "max_pool2d", ("d",), {"kernel_shape": (3, 3), "strides": (2, 2)}),
                     ("r", "relu", ("p",), {})], ("r",))
    f = run_pass("fuse", m)
    assert [c.func for c in calls(f)] == ["fused_mul_exp_div", "fused_max_pool2d_relu"]
    g = run_pass("fuse", m, prologue=True)
    assert [c.func for c in calls(g)] == ["fused_mul_exp_div_max_pool2d_relu"]
    ins = {"x": rand(2, 4, 9, 9)}
    same_results(m, f, ins)
    same_results(m, g, ins)


def test_lrn_then_max_pool_matches_onnxruntime() -> None:
    # inception_v1's conv2 -> LRN -> 3x3/2 max pool (ceil), small
    nodes = [helper.make_node("LRN", ["x"], ["l"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
             helper.make_node("MaxPool", ["l"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12, 15, 15])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12, 7, 7])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model = mlc.compile(proto)
    assert len(list(model.module.prim_functions())) == 2  # the LRN, then the pool
    x = (rand(2, 12, 15, 15, seed=3) * 20).astype(np.float32)  # large enough for the LRN to matter
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = list(model(**{model.input_names[0]: x}).values())[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
