"""ONNX's backend node tests through mlc.backend, on the interpreter and the compiled CPU path.

The default run (`make test`) takes the cases of a few core ops (FAST_OPS, well under a minute) and
fails when a case listed as passing in tests/data/conformance_expected.json no longer passes; a case
that passes but is not listed is reported as a warning (re-record the list with
`python -m tests.conformance --record tests/data/conformance_expected.json`). The whole node suite
is `test_full_suite`, marked `conformance` and run only when selected (`pytest -m conformance`) or
with MLC_CONFORMANCE=1. See tests/conformance.py for the classification.
"""

from __future__ import annotations

import os
from typing import Any

import conformance as conf
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

# Core ops of the fast subset: every node test whose ops all lie in this set runs in `make test`.
FAST_OPS = {"Abs", "Add", "Sub", "Mul", "Relu", "Sigmoid", "Tanh", "MatMul", "Gemm", "Softmax", "Reshape",
            "Transpose", "Concat", "ReduceSum", "ReduceMean", "Gather", "Where", "Unsqueeze", "Squeeze",
            "Clip", "Split", "LayerNormalization", "Constant", "Sqrt", "Neg"}


def _selected(config: Any) -> bool:
    return "conformance" in (config.getoption("-m") or "") or os.environ.get("MLC_CONFORMANCE") == "1"


@pytest.fixture(scope="module")
def fast_cases() -> list[conf.Case]:
    return conf.load_cases(op_types=FAST_OPS)


@pytest.mark.parametrize("mode", conf.MODES)
def test_fast_subset(fast_cases: list[conf.Case], mode: str) -> None:
    assert len(fast_cases) > 50
    results = conf.run_cases(fast_cases, mode, jobs=2, timeout=60)
    conf.check_expected(results, conf.load_expected().get(mode, []), mode, "case(s)", conf.EXPECTED.name)
    assert conf.counts(results)["pass"] > 0


@pytest.mark.conformance
@pytest.mark.parametrize("mode", conf.MODES)
def test_full_suite(request: pytest.FixtureRequest, mode: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if not _selected(request.config):
        pytest.skip("the whole ONNX node suite: run with -m conformance (or MLC_CONFORMANCE=1)")
    results = conf.run_cases(conf.load_cases(), mode, jobs=2, timeout=60)
    print(mode, conf.counts(results))
    conf.check_expected(results, conf.load_expected().get(mode, []), mode, "case(s)", conf.EXPECTED.name)


# --- the harness and the backend themselves --------------------------------------------------------
def _model(op: str, dtype: int = TensorProto.FLOAT, **attrs: Any) -> onnx.ModelProto:
    node = helper.make_node(op, ["x.0", "y/1"], ["out:0", "out2"] if op == "Split" else ["out:0"], **attrs)
    ins = [helper.make_tensor_value_info("x.0", dtype, [2, 3]), helper.make_tensor_value_info("y/1", dtype, [2, 3])]
    outs = [helper.make_tensor_value_info("out:0", dtype, [2, 3])]
    return helper.make_model(helper.make_graph([node], "g", ins, outs), opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", conf.MODES)
def test_backend_positional_inputs(mode: str) -> None:
    import mlc.backend

    x, y = np.ones((2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    rep = mlc.backend.BACKENDS[mode].prepare(_model("Sub"))
    (out,) = rep.run([x, y])
    np.testing.assert_array_equal(out, x - y)
    (out,) = rep.run({"x.0": x, "y/1": y})
    np.testing.assert_array_equal(out, x - y)
    (out,) = mlc.backend.run_model(_model("Sub"), [y, x], mode=mode)
    np.testing.assert_array_equal(out, y - x)


def test_backend_devices_and_errors() -> None:
    from mlc.ir.diagnostics import MlcError

    import mlc.backend

    assert mlc.backend.Compiled.supports_device("CPU")
    assert not mlc.backend.Interpreted.supports_device("CUDA")
    with pytest.raises(MlcError, match="CPU only"):
        mlc.backend.Interpreted.prepare(_model("Add"), "CUDA")
    with pytest.raises(MlcError, match="unsupported ONNX ops"):
        mlc.backend.Interpreted.prepare(_model("Einsum", equation="ij,ij->ij"))
    with pytest.raises(MlcError, match="takes 2 input"):
        mlc.backend.Interpreted.prepare(_model("Add")).run([np.ones((2, 3), np.float32)])


def test_harness_classifies_each_outcome() -> None:
    """pass, wrong, refused and excluded, on hand-made cases (no worker crash is staged here)."""
    x = np.ones((2, 3), np.float32)
    ok = conf.Case("t_ok", _model("Add").SerializeToString(), [([x, x], [x + x])], 1e-3, 1e-7, ("Add",))
    bad = conf.Case("t_bad", _model("Add").SerializeToString(), [([x, x], [x])], 1e-3, 1e-7, ("Add",))
    ref = conf.Case("t_ref", _model("Einsum", equation="ij,ij->ij").SerializeToString(), [([x, x], [x])],
                    1e-3, 1e-7, ("Add",))
    out = conf.Case("t_out", _model("Einsum").SerializeToString(), [], 1e-3, 1e-7, ("Einsum",))
    res = conf.run_cases([ok, bad, ref, out], "interpreted", jobs=1, timeout=60)
    assert [res[n]["status"] for n in ("t_ok", "t_bad", "t_ref", "t_out")] == ["pass", "wrong", "refused", "excluded"]
    assert conf.compare_expected(res, ["t_ok", "t_bad"]) == (["t_bad"], [])
