"""`mlc remat`: the memory plan of a training step fits a budget it did not fit before, the
recomputed step gives bit-identical results (interpreted and compiled), and budgets it cannot reach,
missing dims and unfused input are one located error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlc.cli.commands import cli
from mlc.cli.io import write_module
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import GraphBuilder
from mlc.ir.graph import Function
from mlc.ir.memory_plan import plan_function
from mlc.ir.module import Module
from mlc.passes.autodiff import Autodiff
from mlc.passes.pipeline import load_pipeline, run_pipeline
from mlc.passes.registry import PassContext
from mlc.passes.remat import Remat
from mlc.runtime.artifact import loads
from mlc.runtime.model import model_from_artifact

from mlc.compiler import build_module, with_memory_constants

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"N": 32}


def _deep(layers: int = 5, width: int = 48) -> tuple[Module, dict[str, np.ndarray]]:
    """An MLP deep enough that its training step keeps many activations for the backward pass."""
    b = GraphBuilder("deep", seed=3)
    h = b.input("x", ["N", width])
    for _ in range(layers):
        h = b.n("Tanh", b.linear(h, width, width))
    b.node("MatMul", [h, b.weight((width, 10))], out="logits")
    b.output("logits", ["N", 10])
    m, consts = import_onnx(b.model())
    return Autodiff(loss="cross-entropy:labels", optimizer="sgd").apply(m, PassContext(constants=consts)), consts


@pytest.fixture(scope="module")
def fused() -> tuple[Module, dict[str, np.ndarray]]:
    m, consts = _deep()
    ctx = PassContext(constants=consts)
    m, _ = run_pipeline(with_memory_constants(m, consts), load_pipeline(ROOT / "configs/pipelines/lower.yaml"),
                        ctx, False, None, None)
    return m, ctx.constants or consts


def _plan(m: Module) -> int:
    f = m.get("train_step")
    assert isinstance(f, Function)
    return plan_function(f).evaluate(DIMS)[0]


def _feeds(consts: dict[str, np.ndarray], m: Module) -> dict[str, np.ndarray]:
    f = m.get("train_step")
    assert isinstance(f, Function)
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {"x": rng.standard_normal((32, 48)).astype(np.float32),
                                    "labels": rng.integers(0, 10, 32)}
    for p in f.params:
        if p.name not in feeds:
            feeds[p.name] = consts[p.name]
    return feeds


@pytest.mark.slow
def test_plan_fits_the_budget_and_results_are_bit_identical(fused: tuple[Module, dict[str, np.ndarray]],
                                                             tmp_path: Path) -> None:
    m, consts = fused
    before = _plan(m)
    budget = int(before * 0.7)
    ctx = PassContext()
    low = Remat(memory_budget=budget, dim="N=32").apply(m, ctx)
    assert _plan(low) <= budget < before
    assert any("remat: @train_step: memory plan" in d.message for d in ctx.diagnostics)
    f0, f1 = m.get("train_step"), low.get("train_step")
    assert isinstance(f0, Function) and isinstance(f1, Function)
    assert len(f1.body.bindings) > len(f0.body.bindings)  # kernels are called again
    feeds = _feeds(consts, m)
    # compiled: the steps of the CPU build after fuse, on both, then run both
    steps = yaml.safe_load((ROOT / "configs/pipelines/build-cpu.yaml").read_text())["passes"]
    rest = tmp_path / "rest.yaml"
    rest.write_text(yaml.safe_dump({"name": "rest", "passes": steps[steps.index("fuse") + 1:]}))
    outs = []
    for mod in (m, low):
        built = build_module(mod, consts, "cpu", pipeline=rest)
        model = model_from_artifact(loads(built.result.data), "remat")
        outs.append(model.vm.run(feeds, "train_step"))
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)


def test_unreachable_budget_missing_dims_and_unfused_input(fused: tuple[Module, dict[str, np.ndarray]],
                                                           tmp_path: Path) -> None:
    from mlc.ir.diagnostics import MlcError

    m, consts = fused
    with pytest.raises(MlcError, match=r"recomputing reached [\d,]+, above the budget of 10"):
        Remat(memory_budget=10, dim="N=32").apply(m, PassContext())
    with pytest.raises(MlcError, match="has symbolic dims N: give their values with --dim"):
        Remat(memory_budget=10**6).apply(m, PassContext())
    raw, raw_consts = _deep(2, 8)
    write_module(raw, str(tmp_path / "t.ir"), new_constants=raw_consts)
    r = CliRunner().invoke(cli, ["remat", str(tmp_path / "t.ir"), "--memory-budget", "1000", "--dim", "N=4",
                                 "-o", str(tmp_path / "o.ir")])
    assert r.exit_code == 1 and "calls no kernels yet: run it after fuse" in r.output, r.output
    r = CliRunner().invoke(cli, ["remat", str(tmp_path / "t.ir"), "-o", str(tmp_path / "o.ir")])
    assert r.exit_code == 1 and "--memory-budget BYTES is required" in r.output, r.output
    assert not (tmp_path / "o.ir").exists()
