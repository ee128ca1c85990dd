"""ONNX's shipped model sets (light, simple, pytorch-converted, pytorch-operator) through mlc.backend,
on the interpreter and the compiled CPU path (tests/conformance_models.py loads and classifies them).

The default run (`make test`) takes a sample of the small sets (`fast_sample`: all of simple and
pytorch-operator, at most two models per layer family of pytorch-converted; about 40 s on 2 busy
cores) and fails when a model listed as passing in tests/data/model_sets_expected.json no longer
passes; a model that passes but is not listed is reported as a warning (re-record the list with
`python -m tests.conformance_models --record tests/data/model_sets_expected.json`). All four sets,
the `light` ImageNet networks included, are `test_all_model_sets`, marked `conformance` and run only
when selected (`pytest -m conformance`, `make conformance`) or with MLC_CONFORMANCE=1.
"""

from __future__ import annotations

import os
import re
from typing import Any

import conformance as conf
import conformance_models as cm
import numpy as np
import pytest

FAST_SETS = ("simple", "pytorch-operator", "pytorch-converted")
PER_FAMILY = 2  # pytorch-converted models per layer family (Conv2d, PReLU, ...) in the fast sample


def fast_sample(cases: list[conf.Case]) -> list[conf.Case]:
    """Every model of the sets but pytorch-converted, whose first PER_FAMILY per family (the test name
    up to its variant: test_Conv2d_groups -> Conv2d) are kept."""
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        if cm.set_of(c.name) == "pytorch-converted":
            m = re.match(r"[^/]+/test_([A-Za-z]+\d*d?)", c.name)
            fam = m.group(1) if m else c.name
            seen[fam] = seen.get(fam, 0) + 1
            if seen[fam] > PER_FAMILY:
                continue
        out.append(c)
    return out


def _selected(config: Any) -> bool:
    return "conformance" in (config.getoption("-m") or "") or os.environ.get("MLC_CONFORMANCE") == "1"


@pytest.fixture(scope="module")
def fast_models() -> list[conf.Case]:
    return fast_sample(cm.load_model_cases(FAST_SETS))


@pytest.mark.parametrize("mode", conf.MODES)
def test_fast_model_sets(fast_models: list[conf.Case], mode: str) -> None:
    results = cm.run_models(fast_models, mode, jobs=2, timeout=60)
    conf.check_expected(results, cm.load_expected().get(mode, []), mode, "model(s)", cm.EXPECTED.name)
    assert cm.counts_by_set(results)["all"]["pass"] > 0


@pytest.mark.conformance
@pytest.mark.parametrize("mode", conf.MODES)
def test_all_model_sets(request: pytest.FixtureRequest, mode: str) -> None:
    if not _selected(request.config):
        pytest.skip("the whole ONNX model sets: run with -m conformance (or MLC_CONFORMANCE=1)")
    results = cm.run_models(cm.load_model_cases(), mode, jobs=2, timeout=60, light_timeout=900)
    print(mode, cm.counts_by_set(results))
    conf.check_expected(results, cm.load_expected().get(mode, []), mode, "model(s)", cm.EXPECTED.name)


# --- the loader itself ------------------------------------------------------------------------------
def test_loader_reads_every_set_as_backend_test_does() -> None:
    cases = {c.name: c for c in cm.load_model_cases()}
    per_set = {s: sum(1 for n in cases if cm.set_of(n) == s) for s in cm.SETS}
    assert per_set["light"] == 9 and per_set["simple"] >= 20
    assert per_set["pytorch-converted"] >= 80 and per_set["pytorch-operator"] >= 30
    light = cases["light/test_resnet50"]
    ((ins, outs),) = light.data_sets
    # BackendTest's dummy input: arange(n) / n over the declared shape, float32
    assert ins[0].shape == (1, 3, 224, 224) and ins[0].dtype == np.float32
    assert ins[0].flat[1] == np.float32(1 / ins[0].size) and outs[0].shape == (1, 1000)
    assert (light.rtol, light.atol) == (1e-3, 1e-7)
    assert cases["light/test_densenet121"].rtol == 2e-3  # its data.json
    relu = cases["simple/test_single_relu_model"]
    assert relu.ops == ("Relu",) and len(relu.data_sets) >= 1
    handled = conf.handled_ops()
    assert "StringNormalizer" in (conf.exclusion(cases["simple/test_strnorm_model_nostopwords_nochangecase"], handled)
                                  or "")
    assert conf.exclusion(cases["light/test_resnet50"], handled) is None


def test_fast_sample_keeps_every_family() -> None:
    cases = cm.load_model_cases(["pytorch-converted"])
    fast = fast_sample(cases)
    assert 40 <= len(fast) < len(cases)
    assert {"pytorch-converted/test_Conv3d", "pytorch-converted/test_PReLU_1d", "pytorch-converted/test_Softsign"} \
        <= {c.name for c in fast}


def test_only_filter_and_expected_file() -> None:
    cases = cm.load_model_cases(["simple", "pytorch-operator"], only=r"relu|operator_view$")
    assert {c.name for c in cases} == {"simple/test_single_relu_model", "pytorch-operator/test_operator_view"}
    exp = cm.load_expected()
    assert set(exp) == set(conf.MODES)
    assert all(n.split("/", 1)[0] in cm.SETS for m in conf.MODES for n in exp[m])
