"""Tuning on Ray: measurement actors, a worker killed mid-search, an interrupted driver, and the errors.

The Ray tests run a 2-CPU instance on this machine (module fixture) and skip, with the reason,
where Ray is not installed. Workloads are one small matmul and a few trials, so the file stays short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlc.cli.tune import tune_cmd
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.target import Target
from mlc.passes.tune.database import Database, mlc_version, workload_key
from mlc.tune.measure import Result, Runner
from mlc.tune.search import SearchConfig, Task, Tuner
from ray_helpers import NO_RAY, local_ray
from test_tir_interp import matmul_func

MLC = [sys.executable, "-m", "mlc.cli"]


@pytest.fixture(scope="module")
def module_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("tune_dist") / "m.ir"
    p.write_text(print_module(Module((matmul_func(32, 16, 32),))))
    return p


def test_executor_argument_errors(tmp_path: Path, module_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "t.ir")
    r = CliRunner().invoke(tune_cmd, [str(module_file), "--executor", "dask", "-o", out])
    assert r.exit_code == 2 and "ray:ADDRESS" in r.output
    r = CliRunner().invoke(tune_cmd, [str(module_file), "--workers", "2", "-o", out])
    assert r.exit_code == 2 and "--workers applies to --executor ray only" in r.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = CliRunner().invoke(tune_cmd, [str(module_file), "--executor", "ray", "--db", str(tmp_path / "db"), "-o", out])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith("mlc: error:") and "pip install 'mlc[distributed]'" in lines[0]
    assert not list(tmp_path.iterdir())


def test_unreachable_cluster_is_one_error(tmp_path: Path, module_file: Path) -> None:
    pytest.importorskip("ray", reason=NO_RAY)
    p = subprocess.run([*MLC, "tune", str(module_file), "--executor", "ray:127.0.0.1:1", "--db", str(tmp_path / "db"),
                        "-o", str(tmp_path / "t.ir")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "mlc: error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"], p.stderr
    assert not list(tmp_path.iterdir())


# --- on Ray -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    yield from local_ray(__name__)


def _wait_for_free_cpus(n: int = 2) -> None:
    """Until the actors of an earlier test (or its killed driver) are gone."""
    import ray

    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_two_workers_give_a_database_a_local_build_applies(tmp_path: Path, module_file: Path,
                                                           ray_address: str) -> None:
    """`mlc tune --executor ray` on 2 actors; `mlc schedule --db` (local) applies its best record."""
    _wait_for_free_cpus()
    db, out, sched = tmp_path / "db.jsonl", tmp_path / "t.ir", tmp_path / "s.ir"
    p = subprocess.run([*MLC, "tune", str(module_file), "--executor", f"ray:{ray_address}", "--workers", "2",
                        "--trials", "6", "--confirm", "2", "--db", str(db), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "measured per node" in p.stderr  # the progress table's per-node throughput
    f = parse_module(module_file.read_text()).prim_functions()[0]
    recs = Database(db).records
    # then the 2 leaders (and the default schedule, unless it is one) measured twice more
    assert len({r.trace.to_json() for r in recs}) == 6 and len(recs) in (6 + 2 * 2, 6 + 2 * 3)
    assert {(r.workload, r.target, r.version) for r in recs} == {(workload_key(f), Target.parse("cpu").key,
                                                                  mlc_version())}
    assert all(r.ok for r in recs)
    p = subprocess.run([*MLC, "schedule", str(module_file), "--target", "cpu", "--db", str(db), "-o", str(sched)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    applied = parse_module(sched.read_text()).prim_functions()[0]
    assert dict(applied.attrs)["schedule"] == "tuned"
    assert applied.body == parse_module(out.read_text()).prim_functions()[0].body


class DyingRunner(Runner):
    """Kills its actor's process (no cleanup, as a crash) on the first measurement anywhere (the trace is
    written to `marker`), and with `always` on every later measurement of that same trace."""

    def __init__(self, marker: str, always: bool = False, **kw: object):
        super().__init__(**kw)  # type: ignore[arg-type]
        self.marker, self.always = marker, always

    def measure_text(self, module: str, trace: str) -> Result:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if self.always and Path(self.marker).read_text() == trace:
                os._exit(1)
            return super().measure_text(module, trace)
        os.write(fd, trace.encode())
        os.close(fd)
        os._exit(1)


def _tune_on_ray(runner: Runner, tmp_path: Path, trials: int) -> tuple[list[Task], Database]:
    from mlc.tune.distributed import RayRunner

    _wait_for_free_cpus()
    db = Database(tmp_path / "db.jsonl")
    tasks = [Task(matmul_func(32, 16, 32))]
    ray_runner = RayRunner(runner, workers=2)
    assert ray_runner.workers == 2
    Tuner(tasks, db, ray_runner, SearchConfig(trials=trials, batch=4, confirm=0)).run()
    return tasks, Database(tmp_path / "db.jsonl")


def test_worker_killed_mid_search(tmp_path: Path, ray_address: str) -> None:
    """An actor dies during its first measurement: the candidate is measured again elsewhere, the search completes."""
    marker = tmp_path / "died"
    tasks, db = _tune_on_ray(DyingRunner(str(marker), timeout=20.0, repeat=1), tmp_path, 6)
    assert marker.exists() and tasks[0].trials == 6
    assert len(db.records) == 6 and all(r.ok for r in db.records)  # the lost candidate was retried, not lost


def test_candidate_that_always_kills_its_worker_is_recorded_failed(tmp_path: Path, ray_address: str) -> None:
    """A candidate that kills every actor it reaches costs 3 attempts, then is a failed record; the rest go on."""
    marker = tmp_path / "deadly"
    tasks, db = _tune_on_ray(DyingRunner(str(marker), always=True, timeout=20.0, repeat=1), tmp_path, 6)
    assert tasks[0].trials == 6
    (failed,) = [r for r in db.records if not r.ok]
    assert failed.error.startswith("lost its measurement worker 3 times") and failed.trace.to_json() == marker.read_text()
    assert len(db.records) == 6


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.conformance),
                                 pytest.param(signal.SIGKILL, marks=pytest.mark.conformance)], ids=["SIGINT", "SIGKILL"])
def test_driver_interrupted_leaves_complete_records(tmp_path: Path, module_file: Path, ray_address: str,
                                                    sig: signal.Signals) -> None:
    """Interrupting `mlc tune --executor ray` mid-search leaves whole records (no torn line breaks the next
    run), and the next run resumes from them."""
    _wait_for_free_cpus()
    db = tmp_path / "db.jsonl"
    cmd = [*MLC, "tune", str(module_file), "--executor", f"ray:{ray_address}", "--workers", "2", "--quiet",
           "--db", str(db), "-o", str(tmp_path / "t.ir")]
    p = subprocess.Popen([*cmd, "--trials", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while (not db.exists() or db.read_text().count("\n") < 3) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until measurements stream in
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if sig == signal.SIGINT:  # the search stops after its current measurement and writes the best module
        assert p.returncode == 0 and "tune interrupted" in err.decode(), err.decode()
    else:
        assert p.returncode == -signal.SIGKILL
    kept = Database(db)
    assert kept.skipped == 0 or sig == signal.SIGKILL  # a SIGKILL may tear the last line; it is ignored
    n = len(kept.records)
    assert 3 <= n < 500
    done = subprocess.run([*cmd, "--trials", "2", "--confirm", "0"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    again = Database(db)
    assert again.skipped == 0 and len(again.records) >= n + 2  # resumed: the earlier records counted
