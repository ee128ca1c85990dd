"""`mlc tune` as a command: errors go through handle_errors (one message, exit 1/2/3, no traceback, nothing
written), and a module that is not lowered yet is lowered first with the `lower` pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlc.cli.main import cli

MLC = [sys.executable, "-m", "mlc.cli"]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    from mlc.cli import commands  # noqa: F401  (registers subcommands)

    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp as imported: graph ops only, no tensor programs."""
    d = tmp_path_factory.mktemp("imported")
    assert invoke("zoo", "mlp", "-o", str(d)).exit_code == 0
    r = invoke("import", str(d / "mlp.onnx"), "-o", str(d / "m.ir"))
    assert r.exit_code == 0, r.output
    assert "prim @" not in (d / "m.ir").read_text()
    return d / "m.ir"


def one_error(r, code: int, mention: str) -> None:  # type: ignore[no-untyped-def]
    where = f"exit {r.exit_code}\n{r.output}"
    assert r.exit_code == code, where
    assert "Traceback" not in r.output and r.stdout == "", where
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlc: ") and mention in lines[0], where
    assert "Error: mlc: error" not in r.output, where  # not wrapped twice


def test_missing_input_is_one_error_exit_1(tmp_path: Path) -> None:
    r = invoke("tune", str(tmp_path / "nothere.ir"), "--db", str(tmp_path / "db.jsonl"), "-o", str(tmp_path / "t.ir"))
    one_error(r, 1, "nothere.ir")
    assert list(tmp_path.iterdir()) == []


def test_real_process_missing_input(tmp_path: Path) -> None:
    p = subprocess.run([*MLC, "tune", "nothere.ir", "-o", "t.ir"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.strip() == "mlc: error: cannot read 'nothere.ir': No such file or directory"
    assert list(tmp_path.iterdir()) == []


def test_unknown_target_and_unknown_dim(imported: Path, tmp_path: Path) -> None:
    out, db = str(tmp_path / "t.ir"), str(tmp_path / "db.jsonl")
    one_error(invoke("tune", str(imported), "--target", "tpu", "--quiet", "--db", db, "-o", out), 1, "unknown target 'tpu'")
    one_error(invoke("tune", str(imported), "--dim", "Q=8", "--quiet", "--db", db, "-o", out), 1, "--dim Q")
    assert list(tmp_path.iterdir()) == []


def test_negative_trials_are_a_usage_error(imported: Path, tmp_path: Path) -> None:
    for flag in ("--trials", "--confirm"):
        r = invoke("tune", str(imported), flag, "-1", "-o", str(tmp_path / "t.ir"))
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_internal_error_is_exit_3_without_traceback(imported: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("mlc.tune.tuning.tune_module", boom)
    r = invoke("tune", str(imported), "--quiet", "--db", str(tmp_path / "db.jsonl"), "-o", str(tmp_path / "t.ir"))
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    assert "mlc: internal error: RuntimeError: kaboom" in r.stderr
    assert not (tmp_path / "t.ir").exists()


def test_not_lowered_module_is_lowered_first(imported: Path, tmp_path: Path) -> None:
    """Once `ValueError: max() arg is an empty sequence` in the search; now: lowered, said on stderr, tuned."""
    out, db = tmp_path / "t.ir", tmp_path / "db.jsonl"
    r = invoke("tune", str(imported), "--trials", "1", "--confirm", "0", "--timeout", "60", "--quiet", "--dim", "N=8",
               "--db", str(db), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "had no tensor programs (not lowered): lowered it first with the 'lower' pipeline" in r.stderr
    assert "fuse" in r.stderr and r.stdout == ""
    text = out.read_text()
    assert "prim @" in text and "schedule" in text
    assert db.is_file() and db.read_text().strip()  # one candidate measured and recorded
    assert invoke("verify", str(out)).exit_code == 0
    # an already-scheduled module: nothing to tune, written as it is
    r = invoke("tune", str(out), "--trials", "1", "--quiet", "--db", str(db), "-o", str(tmp_path / "again.ir"))
    assert r.exit_code == 0, r.output
    assert "nothing to tune" in r.stderr
    assert (tmp_path / "again.ir").read_text() == text


def test_lowering_takes_the_pipeline_flags(imported: Path, tmp_path: Path) -> None:
    r = invoke("tune", str(imported), "--trials", "0", "--quiet", "--print-after-all", "--timing",
               "--ir-dump-dir", str(tmp_path / "dump"), "--db", str(tmp_path / "db.jsonl"), "-o", str(tmp_path / "t.ir"))
    assert r.exit_code == 0, r.output
    assert "// ----- IR dump after fuse -----" in r.stderr and "pass timing" in r.stderr
    assert sorted(p.name for p in (tmp_path / "dump").iterdir())[-1] == "05-fuse.ir"
