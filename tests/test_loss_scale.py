"""Dynamic loss scaling in @train_step: with finite gradients the update is bit-identical to the
unscaled step (scales are powers of two); a step with a nan or inf gradient changes no weight or
moment and halves the scale; `scale_window` good steps double it, up to 2**24; `mlc train
--loss-scale` trains an f16 (amp) model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import build
from mlc.ir.autodiff import MAX_LOSS_SCALE
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext

F32 = np.float32


@pytest.fixture(scope="module")
def steps() -> tuple[Module, Module, dict[str, np.ndarray], dict[str, np.ndarray]]:
    m, c = import_onnx(build("mlp"))
    plain = Autodiff(loss="cross-entropy:labels", optimizer="adam").apply(m, PassContext(constants=c))
    scaled = Autodiff(loss="cross-entropy:labels", optimizer="adam", loss_scale=True, scale_window=3).apply(
        m, PassContext(constants=c))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((8, 64)).astype(F32), "labels": rng.integers(0, 10, 8)}
    f = plain.get("train_step")
    assert f is not None
    for p in f.params:  # type: ignore[union-attr]
        if p.name not in feeds:
            feeds[p.name] = c[p.name] if p.name in c else (
                np.zeros(c[p.name[2:]].shape, F32) if p.name[:2] in ("m_", "v_") else np.array(3, F32))
    return plain, scaled, c, feeds


def _run(m: Module, c: dict[str, np.ndarray], feeds: dict[str, np.ndarray], **extra: float) -> dict[str, np.ndarray]:
    return run_function(m, {**feeds, **{k: np.array(v, F32) for k, v in extra.items()}}, c, "train_step")


def test_finite_step_is_the_unscaled_step(steps) -> None:  # type: ignore[no-untyped-def]
    plain, scaled, c, feeds = steps
    want = _run(plain, c, feeds)
    got = _run(scaled, c, feeds, loss_scale=1024.0, good_steps=0.0)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert float(got["new_loss_scale"]) == 1024.0 and float(got["new_good_steps"]) == 1.0


def test_nonfinite_step_is_skipped_and_halves_the_scale(steps) -> None:  # type: ignore[no-untyped-def]
    _, scaled, c, feeds = steps
    x = feeds["x"].copy()
    x[0, 0] = np.nan
    with np.errstate(all="ignore"):
        got = _run(scaled, c, {**feeds, "x": x}, loss_scale=1024.0, good_steps=2.0)
    for k, v in feeds.items():
        if f"new_{k}" in got and k not in ("loss_scale", "good_steps"):
            np.testing.assert_array_equal(got[f"new_{k}"], v, err_msg=k)  # weights, moments, step count
    assert float(got["new_loss_scale"]) == 512.0 and float(got["new_good_steps"]) == 0.0


def test_scale_doubles_after_the_window_up_to_the_cap(steps) -> None:  # type: ignore[no-untyped-def]
    _, scaled, c, feeds = steps
    got = _run(scaled, c, feeds, loss_scale=1024.0, good_steps=2.0)
    assert float(got["new_loss_scale"]) == 2048.0 and float(got["new_good_steps"]) == 0.0
    got = _run(scaled, c, feeds, loss_scale=MAX_LOSS_SCALE, good_steps=2.0)
    assert float(got["new_loss_scale"]) == MAX_LOSS_SCALE


def test_train_amp_model_with_loss_scaling(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from mlc.cli.commands import cli
    from mlc.cli.io import write_module
    from mlc.passes.amp import Amp

    m, c = import_onnx(build("mlp"))
    write_module(Amp().apply(m, PassContext()), str(tmp_path / "m16.ir"), new_constants=c)
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((10, 64)).astype(F32) * 2
    y = rng.integers(0, 10, 256)
    np.savez(tmp_path / "d.npz", x=(centers[y] + rng.standard_normal((256, 64))).astype(F32), labels=y)
    r = CliRunner().invoke(cli, ["train", str(tmp_path / "m16.ir"), "--data", str(tmp_path / "d.npz"), "--epochs", "3",
                                 "--batch", "32", "--lr", "0.01", "--loss-scale", "--no-progress",
                                 "-o", str(tmp_path / "t.ir")])
    assert r.exit_code == 0, r.output
    import json

    metrics = [json.loads(line) for line in (tmp_path / "t.ir.train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 2, metrics
