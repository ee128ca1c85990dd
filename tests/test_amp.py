"""`mlc amp`: zoo models in mixed precision stay within f16's error of the f32 model (interpreted and
compiled), the rule table is overridable and checked, and autodiff differentiates through the casts
into the f32 master weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlc.cli.commands import cli
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import build
from mlc.ir.graph import Function, OpCall
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.ir.rewrite import walk_bindings
from mlc.ir.types import TensorType
from mlc.passes.amp import Amp
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext

INPUTS = {"mlp": {"x": (8, 64)}, "gpt_block": {"x": (2, 6, 32)}, "resnext": {"image": (2, 3, 16, 16)}}


def _ops(m: Module) -> list[tuple[str, str]]:
    f = m.get("main")
    assert isinstance(f, Function)
    return [(b.node.op, b.var.type.dtype) for b in walk_bindings(f.body)
            if isinstance(b.node, OpCall) and isinstance(b.var.type, TensorType)]


def _feeds(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in INPUTS[name].items()}


@pytest.mark.parametrize("name", ["mlp", "gpt_block", "resnext"])
def test_zoo_model_in_f16_is_close_to_f32(name: str) -> None:
    m, consts = import_onnx(build(name))
    low = Amp().apply(m, PassContext())
    ops = _ops(low)
    assert all(dt == "f16" for op, dt in ops if op in ("matmul", "conv2d"))
    assert all(dt == "f32" for op, dt in ops if op in ("exp", "softmax", "layer_norm", "sum", "mean"))
    f, g = low.get("main"), m.get("main")
    assert isinstance(f, Function) and isinstance(g, Function)
    assert [p.type for p in f.params] == [p.type for p in g.params]  # the signature does not change
    assert [r.name for r in f.body.results] == [r.name for r in g.body.results]  # outputs keep their names
    feeds = _feeds(name)
    ((key, want),) = run_function(m, feeds, consts).items()
    got = run_function(low, feeds, consts)[key]
    assert got.dtype == want.dtype
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, atol=2e-2 * scale, rtol=2e-2)
    assert not np.array_equal(got, want)  # it did compute in f16


def test_compiled_amp_model_matches_the_interpreter(tmp_path: Path) -> None:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module, with_memory_constants

    m, consts = import_onnx(build("mlp"))
    low = Amp().apply(m, PassContext())
    built = build_module(with_memory_constants(low, consts), consts, "cpu")
    model = model_from_artifact(loads(built.result.data), "amp")
    feeds = _feeds("mlp")
    (want,) = run_function(low, feeds, consts).values()
    (got,) = model(**feeds).values()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-2)


def test_rules_file_moves_ops(tmp_path: Path) -> None:
    m, _ = import_onnx(build("mlp"))
    rules = tmp_path / "r.yaml"
    rules.write_text("never: [matmul]\n")
    same = Amp(rules=str(rules)).apply(m, PassContext())
    assert all(dt == "f32" for _, dt in _ops(same))  # nothing is left to go low
    rules.write_text("always: [softmax]\n")
    soft = Amp(rules=str(rules)).apply(m, PassContext())
    assert ("softmax", "f16") in _ops(soft)


@pytest.mark.parametrize("text,message", [
    ("always: [no_such_op]\n", "'always' names unknown op 'no_such_op'"),
    ("always: [exp]\nnever: [exp]\n", "op 'exp' is in both 'always' and 'never'"),
    ("sometimes: [exp]\n", "expected a mapping with the lists always, never, follow"),
    ("always: exp\n", "'always' must be a list of op names"),
    ("always: [exp\n", "not YAML"),
])
def test_bad_rules_are_one_error(tmp_path: Path, text: str, message: str) -> None:
    m, consts = import_onnx(build("mlp"))
    from mlc.cli.io import write_module

    write_module(m, str(tmp_path / "m.ir"), new_constants=consts)
    (tmp_path / "r.yaml").write_text(text)
    r = CliRunner().invoke(cli, ["amp", str(tmp_path / "m.ir"), "--rules", str(tmp_path / "r.yaml"),
                                 "-o", str(tmp_path / "o.ir")])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "o.ir").exists()


def test_autodiff_after_amp_updates_f32_master_weights() -> None:
    m, consts = import_onnx(build("mlp"))
    low = Amp().apply(m, PassContext())
    feeds = _feeds("mlp")
    feeds["labels"] = np.arange(8) % 10
    g32 = run_function(Autodiff(loss="cross-entropy:labels").apply(m, PassContext()), feeds, consts, func="grad")
    g16 = run_function(Autodiff(loss="cross-entropy:labels").apply(low, PassContext()), feeds, consts, func="grad")
    assert g32.keys() == g16.keys()
    for k in g32:
        assert g16[k].dtype == consts[k[5:]].dtype == np.float32 if k.startswith("grad_") else True
        np.testing.assert_allclose(g16[k], g32[k], atol=3e-2 * float(np.abs(g32[k]).max()) + 1e-6, err_msg=k)
