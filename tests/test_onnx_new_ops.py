"""ONNX's own node tests of the ops added for real models (Sign, IsNaN, IsInf, GatherElements, GatherND,
CumSum, InstanceNormalization, LRN, Shrink, TopK, ScatterElements, ScatterND, ReduceL1/L2/SumSquare/LogSum/LogSumExp, Xor,
OneHot), on both paths of `mlc.backend`, in `make test`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mlc.backend as backend

PREFIXES = ("test_sign", "test_isnan", "test_isinf", "test_gather_elements", "test_gathernd", "test_cumsum",
            "test_instancenorm", "test_lrn", "test_shrink", "test_top_k", "test_scatter_elements",
            "test_scatter_with", "test_scatter_without", "test_scatternd", "test_reduce_l1", "test_reduce_l2",
            "test_reduce_sum_square", "test_reduce_log_sum", "test_xor", "test_onehot")


def _cases() -> list[object]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases() if c.name.startswith(PREFIXES)]


CASES = _cases()


@pytest.mark.parametrize("mode", [backend.Compiled, backend.Interpreted], ids=["compiled", "interpreted"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case, mode) -> None:  # type: ignore[no-untyped-def]
    rep = mode.prepare(case.model)
    for inputs, outputs in case.data_sets:
        got = rep.run(inputs)
        assert len(got) == len(outputs)
        for g, e in zip(got, outputs):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


def test_every_prefix_has_cases() -> None:
    assert {p for p in PREFIXES if any(c.name.startswith(p) for c in CASES)} == set(PREFIXES)


@pytest.mark.parametrize("mode", [backend.Compiled, backend.Interpreted], ids=["compiled", "interpreted"])
def test_reduce_log_sum_exp_does_not_overflow(mode) -> None:  # type: ignore[no-untyped-def]
    """Shifted by the max: exp(1000) overflows f32, the log-sum-exp of [1000, 1000] is 1000 + log 2."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("ReduceLogSumExp", ["x"], ["y"], axes=[1], keepdims=0)], "g", [x], [y])
    rep = mode.prepare(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    (got,) = rep.run([np.array([[1000.0, 1000.0], [-3.0, 2.0]], np.float32)])
    np.testing.assert_allclose(got, [1000 + np.log(2), np.log(np.exp(-3.0) + np.exp(2.0))], rtol=1e-6)


@pytest.mark.parametrize("mode", [backend.Compiled, backend.Interpreted], ids=["compiled", "interpreted"])
@pytest.mark.parametrize("opset", [9, 11])
def test_one_hot_opsets_with_constant_depth(mode, opset) -> None:  # type: ignore[no-untyped-def]
    """OneHot with depth an initializer (built once, no specialisation), int32 indices of rank 2;
    opset 11 adds negative indices (they count from depth; outside [-depth, depth) gives all off)."""
    from onnx import TensorProto, helper, numpy_helper

    ind = helper.make_tensor_value_info("i", TensorProto.INT32, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3])
    inits = [numpy_helper.from_array(np.array([4], np.int64), "depth"),
             numpy_helper.from_array(np.array([-1.0, 2.5], np.float32), "values")]
    node = helper.make_node("OneHot", ["i", "depth", "values"], ["y"], axis=1)
    g = helper.make_graph([node], "g", [ind], [y], inits)
    rep = mode.prepare(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))
    assert not rep.specialized_on
    x = np.array([[0, 3, 1], [2, 2, 0]] if opset == 9 else [[0, -1, 7], [-4, 2, -5]], np.int32)
    (got,) = rep.run([x])
    wrapped = np.where(x < 0, x + 4, x)
    want = np.where(np.arange(4).reshape(1, 4, 1) == wrapped[:, None, :], 2.5, -1.0).astype(np.float32)
    np.testing.assert_array_equal(got, want)
