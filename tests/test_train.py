"""`mlc train`: a short run lowers the loss; a run stopped by SIGINT or SIGKILL resumes from its
checkpoint and ends bit-identical to an uninterrupted run; bad datasets and options are one located
error with nothing written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlc.cli.commands import cli
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import build
from mlc.ir.constants import read_npz

from mlc.plot import loss_curve, png_bytes
from mlc.training import Schedule, TrainState, batch_order, train

MLC = [sys.executable, "-m", "mlc.cli"]
CENTERS = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten Gaussian classes in 64 dimensions: what the zoo mlp (64 -> 10) can learn in a few steps."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 10, n)
    return (CENTERS[y] + 1.5 * r.standard_normal((n, 64))).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("train")
    from mlc.cli.io import write_module

    module, consts = import_onnx(build("mlp"))
    write_module(module, str(d / "mlp.ir"), new_constants=consts)
    x, y = _blobs(256, 1)
    np.savez(d / "d.npz", x=x, labels=y)
    x, y = _blobs(96, 2)
    np.savez(d / "v.npz", x=x, labels=y)
    return d


def _cmd(files: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [*MLC, "train", str(files / "mlp.ir"), "--data", str(files / "d.npz"), "--val", str(files / "v.npz"),
            "--epochs", str(epochs), "--batch", "16", "--lr", "0.003", "--no-progress", "-o", str(out), *extra]


def _weights(out: Path) -> dict[str, np.ndarray]:
    (side,) = out.parent.glob(out.stem + ".*weights.npz")
    return read_npz(side, "weights")


def test_short_run_learns_and_its_weights_run(files: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.ir"
    p = subprocess.run(_cmd(files, out, 3), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    metrics = [json.loads(line) for line in (tmp_path / "t.ir.train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 2 and metrics[-1]["val_accuracy"] > 0.9, metrics
    assert (tmp_path / "t.ir.train" / "loss.png").read_bytes().startswith(b"\x89PNG")
    # the initializer trained, and the transposed copy the importer folded from it follows it
    w, w0 = _weights(out), read_npz(next(files.glob("mlp.*weights.npz")), "weights")
    assert not np.allclose(w["w_1"], w0["w_1"]) and np.array_equal(w["c_gemm_3_bT"], w["w_1"].T)
    # the trained module runs in the interpreter and classifies the validation set as training reported
    x, y = _blobs(96, 2)
    np.savez(tmp_path / "in.npz", x=x)
    r = CliRunner().invoke(cli, ["run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")])
    assert r.exit_code == 0, r.output
    probs = np.load(tmp_path / "o.npz")["probs"]
    assert np.mean(probs.argmax(-1) == y) == pytest.approx(metrics[-1]["val_accuracy"], abs=0.02)


def test_folded_constant_named_in_wrt_keeps_its_trained_value(files: Path, tmp_path: Path) -> None:
    """`--wrt c_gemm_3_bT` trains the importer's fold itself; writing the module must not refold it
    from the untrained initializer (it did: the trained value was silently replaced by w_1.T)."""
    out = tmp_path / "t.ir"
    p = subprocess.run(_cmd(files, out, 1, "--wrt", "c_gemm_3_bT"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    w, w0 = _weights(out), read_npz(next(files.glob("mlp.*weights.npz")), "weights")
    trained = read_npz(tmp_path / "t.ir.train" / "checkpoint.npz", "checkpoint")["weight/c_gemm_3_bT"]
    assert not np.allclose(trained, w0["c_gemm_3_bT"])
    np.testing.assert_array_equal(w["c_gemm_3_bT"], trained)
    np.testing.assert_array_equal(w["w_1"], w0["w_1"])


@pytest.fixture(scope="module")
def reference(files: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The weights of an uninterrupted 40-epoch run."""
    out = tmp_path_factory.mktemp("ref") / "t.ir"
    p = subprocess.run(_cmd(files, out, 40), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return _weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.conformance),
                                 pytest.param(signal.SIGKILL, marks=pytest.mark.conformance)], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_bit_identical(files: Path, tmp_path: Path, reference: dict[str, np.ndarray],
                                               sig: signal.Signals) -> None:
    out = tmp_path / "t.ir"
    ckpt = tmp_path / "t.ir.train" / "checkpoint.npz"
    cmd = _cmd(files, out, 40, "--checkpoint-every", "7")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # until it has trained and checkpointed at least once
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err.decode()
    assert not out.exists()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "resuming from" in p.stderr, p.stderr
    got = _weights(out)
    assert got.keys() == reference.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], reference[k], err_msg=k)
    steps = [json.loads(line)["step"] for line in (tmp_path / "t.ir.train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [16 * (e + 1) for e in range(40)]


def test_loop_resumes_where_it_stopped() -> None:
    """The loop itself, on a numpy step: epochs split over two calls give the one-call result."""
    rng = np.random.default_rng(3)
    data = {"x": rng.standard_normal((50, 4))}

    def step(b: dict[str, np.ndarray], w: dict[str, np.ndarray], s: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
        g = b["x"].mean(0) - w["w"]
        return float(g @ g), {"w": w["w"] + 0.1 * g}, {"n": s["n"] + 1}

    def fresh() -> TrainState:
        return TrainState({"w": np.zeros(4)}, {"n": np.zeros(())})

    once = train(step, data, fresh(), Schedule(3, 8, seed=1))
    half = train(step, data, fresh(), Schedule(2, 8, seed=1))
    half.batch = 0
    twice = train(step, data, half, Schedule(3, 8, seed=1))
    np.testing.assert_array_equal(once.weights["w"], twice.weights["w"])
    assert once.step == twice.step == 18 and int(twice.opt_state["n"]) == 18
    assert [len(b) for b in batch_order(50, 8, 1, 0)] == [8] * 6  # the partial batch is dropped
    assert sorted(np.concatenate(batch_order(48, 8, 1, 0))) == list(range(48))


def test_loss_curve_png() -> None:
    data = loss_curve([3.0, 2.0, 1.5, 1.0, float("nan"), 0.5])
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IHDR" in data and data.endswith(b"IEND\xaeB`\x82")
    img = np.zeros((2, 3, 3), np.uint8)
    assert png_bytes(img)[16:24] == b"\x00\x00\x00\x03\x00\x00\x00\x02"  # width 3, height 2


@pytest.mark.parametrize("case,args,message", [
    ("missing array", ["--data", "nolabels.npz"], "no array 'labels'"),
    ("rows disagree", ["--data", "rows.npz"], "disagree on the number of rows"),
    ("wrong width", ["--data", "wide.npz"], "has shape (32, 65)"),
    ("float labels", ["--data", "flabels.npz"], "'labels' is float32"),
    ("unknown weight", ["--wrt", "nope"], "has no constant 'nope'"),
    ("target of another shape", ["--loss", "mse:labels"], "'labels' has rank 1, the model's input has rank 2 (tensor<N x 10 x f32>)"),
    ("bad loss", ["--loss", "hinge"], "unknown loss 'hinge'"),
])
def test_bad_input_is_one_error_and_nothing_written(files: Path, tmp_path: Path, case: str, args: list[str],
                                                    message: str) -> None:
    x, y = _blobs(32, 5)
    np.savez(tmp_path / "nolabels.npz", x=x)
    np.savez(tmp_path / "rows.npz", x=x, labels=y[:-1])
    np.savez(tmp_path / "wide.npz", x=np.zeros((32, 65), np.float32), labels=y)
    np.savez(tmp_path / "flabels.npz", x=x, labels=y.astype(np.float32))
    argv = ["train", str(files / "mlp.ir"), "--data", str(files / "d.npz"), "-o", str(tmp_path / "t.ir")]
    for i, a in enumerate(args):
        if a.endswith(".npz"):
            args[i] = str(tmp_path / a)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(cli, [*argv, *args])
    assert r.exit_code == 1, (case, r.output)
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_checkpoint_of_another_run_is_refused(files: Path, tmp_path: Path) -> None:
    from mlc.training import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, TrainState({"w": np.zeros(2, np.float32)}, {}), "another")
    r = CliRunner().invoke(cli, ["train", str(files / "mlp.ir"), "--data", str(files / "d.npz"), "--checkpoint",
                                 str(run), "-o", str(tmp_path / "t.ir")])
    assert r.exit_code == 1 and "belongs to another training run" in r.output, r.output
    assert not (tmp_path / "t.ir").exists()
