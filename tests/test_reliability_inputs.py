"""Endless inputs are one located error, not a hang (issue 19).

Every file mlc reads whole (text IR, an ONNX model, an artifact, an inputs .npz) goes through the
bounded reader (ir/files.read_bytes): /dev/zero under any name and a FIFO that never ends.
MLC_MAX_BYTES keeps the endless cases to a few MB here; the limits themselves are checked in
tests/test_limits.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

LIMIT = 4 << 20


def _invoke(*args: str) -> tuple[int, str]:
    from mlc.cli import commands  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli

    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stderr if hasattr(r, "stderr") else r.output


@pytest.fixture()
def d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLC_MAX_BYTES", str(LIMIT))
    monkeypatch.chdir(tmp_path)
    for name in ("z.onnx", "z.mlc", "z.npz", "z.ir"):
        os.symlink("/dev/zero", tmp_path / name)
    np.savez(tmp_path / "x.npz", x=np.ones(4, np.float32))
    (tmp_path / "m.ir").write_text("mlc.module v1\n\ngraph @main(%x: tensor<4 x f32>) {\n"
                                   "  %y: tensor<4 x f32> = relu(%x)\n  return %y\n}\n")
    return tmp_path


CASES = [
    (("import", "z.onnx", "-o", "o.ir"), "z.onnx: error: cannot read ONNX model: more than"),
    (("import", "/dev/zero", "-o", "o.ir"), "/dev/zero: error: cannot read ONNX model: more than"),
    (("build", "z.onnx", "-o", "o.mlc"), "cannot read ONNX model: more than"),
    (("run", "z.mlc"), "mlc: error: cannot read 'z.mlc': more than"),
    (("bench", "z.mlc"), "mlc: error: cannot read 'z.mlc': more than"),
    (("run", "m.ir", "--inputs", "z.npz"), "mlc: error: cannot read inputs 'z.npz': more than"),
    (("run", "m.ir", "--inputs", "/dev/zero"), "cannot read inputs '/dev/zero': more than"),
    (("run", "z.ir"), "cannot read 'z.ir': more than"),
    (("verify", "/dev/zero"), "cannot read '/dev/zero': more than"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_dev_zero_is_an_error(d: Path, argv: tuple[str, ...], message: str) -> None:
    before = sorted(p.name for p in d.iterdir())
    code, err = _invoke(*argv)
    assert code == 1, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in d.iterdir()) == before


@pytest.mark.parametrize("argv,what", [
    (("import", "f.onnx", "-o", "o.ir"), "ONNX model"), (("run", "f.mlc"), "'f.mlc'"),
    (("run", "m.ir", "--inputs", "f.npz"), "inputs 'f.npz'"), (("run", "f.ir"), "'f.ir'")])
def test_endless_fifo_is_an_error(d: Path, argv: tuple[str, ...], what: str) -> None:
    fifo = d / argv[1 if argv[0] == "import" or argv[1] != "m.ir" else 3]
    os.mkfifo(fifo)
    stop = threading.Event()
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer from the start (the reader's open does not wait)

    def writer() -> None:  # zeros forever, until the test is done
        while not stop.is_set():
            try:
                os.write(fd, bytes(1 << 16))
            except BlockingIOError:
                stop.wait(0.001)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        code, err = _invoke(*argv)
    finally:
        stop.set()
        t.join(10)
        os.close(fd)
    assert code == 1 and f"cannot read {what}: more than" in err and "Traceback" not in err, err
