"""SIGINT stops a long run cleanly: exit 130, one line, no traceback, no output file (issue 19).

Each case starts the real `mlc run` on a module whose run never ends (a graph loop of 2^63-1 trips
in the interpreter and compiled, one compiled kernel with a 2^62-trip loop) and sends SIGINT once the
process has used more CPU than a whole short `mlc run` does (so it is inside the run, not starting
up): a condition, not a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

MLC = (sys.executable, "-m", "mlc.cli")

GRAPH_LOOP = """mlc.module v1

graph @main(%h0: tensor<4 x f32>) {
  %r: tensor<4 x f32> = for %i: i64 in 0..9223372036854775807 carry(%h: tensor<4 x f32> = %h0) {
    %h2: tensor<4 x f32> = mul(%h, %h)
    yield %h2
  }
  return %r
}
"""

KERNEL_LOOP = """mlc.module v1

prim @spin(%X: buffer<4 x f32>, %Y: buffer<4 x f32>) outputs 1 {
  for i in 0..4611686018427387904 {
    block "b"(R vi = i in 0..4611686018427387904) {
      %Y[0] = %Y[0] * 0.5 + %X[1]
    }
  }
}

graph @main(%h0: tensor<4 x f32>) {
  %r: tensor<4 x f32> = call_tensor @spin(%h0)
  return %r
}
"""

SHORT = """mlc.module v1

graph @main(%h0: tensor<4 x f32>) {
  %r: tensor<4 x f32> = mul(%h0, %h0)
  return %r
}
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_to_end_cpu(cwd: Path, argv: list[str]) -> float:
    """CPU seconds of a complete short run (interpreter start-up, parsing, a tiny run, the write)."""
    p = subprocess.Popen([*MLC, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    best = 0.0
    while p.poll() is None:
        try:
            best = max(best, _cpu_seconds(p.pid))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
        time.sleep(0.02)
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    return best


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    from click.testing import CliRunner
    from mlc.cli import commands  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli

    d = tmp_path_factory.mktemp("interrupt")
    np.savez(d / "in.npz", h0=np.ones(4, np.float32))
    for name, text in (("loop", GRAPH_LOOP), ("spin", KERNEL_LOOP), ("short", SHORT)):
        (d / f"{name}.ir").write_text(text)
        # in-process: a subprocess per build costs seconds of start-up on this machine
        r = CliRunner().invoke(cli, ["build", str(d / f"{name}.ir"), "-o", str(d / f"{name}.mlc")])
        assert r.exit_code == 0, r.output
    return d, _run_to_end_cpu(d, ["run", "short.mlc", "-i", "in.npz", "-o", "short.npz"])


def _interrupt(cwd: Path, module: str, startup: float) -> subprocess.CompletedProcess[str]:
    before = sorted(p.name for p in cwd.iterdir())
    p = subprocess.Popen([*MLC, "run", module, "-i", "in.npz", "-o", "out.npz"], cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _cpu_seconds(p.pid) < startup + 0.5:  # past everything a whole short run does
            assert p.poll() is None, f"the endless run ended by itself: {p.communicate()}"
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)  # a run that ignores SIGINT fails here, not hangs
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert sorted(x.name for x in cwd.iterdir()) == before, "the interrupted run left a file"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["loop.ir", "loop.mlc", "spin.mlc"],
                         ids=["interpreter-graph-loop", "compiled-graph-loop", "compiled-kernel-loop"])
def test_sigint_stops_an_endless_run(work: tuple[Path, float], module: str) -> None:
    d, startup = work
    r = _interrupt(d, module, startup)
    assert r.returncode == 130, r.stderr
    assert r.stderr == "mlc: interrupted\n"
    assert r.stdout == ""
