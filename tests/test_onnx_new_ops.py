"""ONNX's own node tests of the ops added for real models (Sign, IsNaN, IsInf, GatherElements, GatherND,
CumSum, InstanceNormalization, LRN, Shrink, TopK, ScatterElements, ScatterND), on both paths of `mlc.backend`, in `make test`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mlc.backend as backend

PREFIXES = ("test_sign", "test_isnan", "test_isinf", "test_gather_elements", "test_gathernd", "test_cumsum",
            "test_instancenorm", "test_lrn", "test_shrink", "test_top_k", "test_scatter_elements",
            "test_scatter_with", "test_scatter_without", "test_scatternd")


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
