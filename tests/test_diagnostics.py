"""One diagnostic channel: passes report through the PassContext, the CLI prints by its -v/-q policy.

A pass's warning (schedule: a tuning database holding only another mlc version's records) reaches
the CLI's stderr once, escaped; `-q` silences it. A pass's info (fuse's statistics) is printed only
with `-v`. Through the Python API the same diagnostics are collected in `ctx.diagnostics`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from mlc.cli.main import cli
from mlc.ir.parser import parse_module
from mlc.ir.target import Target
from mlc.passes.registry import Diagnostic, PassContext, get_pass
from mlc.passes.schedule.trace import Trace
from mlc.passes.tune.database import Database, Record

STALE = "holds records of mlc 0.0.1 only"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    from mlc.cli import commands  # noqa: F401  (registers subcommands)

    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """mlp imported (graph IR) and fused (tensor programs to schedule)."""
    d = tmp_path_factory.mktemp("diag")
    assert invoke("zoo", "mlp", "-o", str(d)).exit_code == 0
    r = invoke("import", str(d / "mlp.onnx"), "-o", str(d / "m.ir"))
    assert r.exit_code == 0, r.output
    r = invoke("fuse", str(d / "m.ir"), "-o", str(d / "f.ir"))
    assert r.exit_code == 0, r.output
    return d / "m.ir", d / "f.ir"


def _stale_db(path: Path) -> Path:
    Database(path).add(Record("w", Target.parse("cpu").key, "0.0.1", Trace([]), (1e-6,)))
    return path


def test_fuse_statistics_only_with_verbose(fused: tuple[Path, Path], tmp_path: Path) -> None:
    m, _ = fused
    quiet = invoke("fuse", str(m), "-o", str(tmp_path / "a.ir"))
    loud = invoke("-v", "fuse", str(m), "-o", str(tmp_path / "b.ir"))
    assert quiet.exit_code == 0 and loud.exit_code == 0
    assert "fuse:" not in quiet.stderr
    lines = [ln for ln in loud.stderr.splitlines() if "fuse:" in ln]
    assert len(lines) == 1 and lines[0].startswith("mlc: info: fuse: ") and " ops -> " in lines[0]
    assert (tmp_path / "a.ir").read_text() == (tmp_path / "b.ir").read_text()  # -v changes only stderr


def test_schedule_warning_reaches_stderr_once_escaped(fused: tuple[Path, Path], tmp_path: Path) -> None:
    _, f = fused
    db = _stale_db(tmp_path / "db\x1b[31m.jsonl")  # a terminal escape in the file name
    r = invoke("schedule", str(f), "--db", str(db), "-o", str(tmp_path / "s.ir"))
    assert r.exit_code == 0, r.output
    assert r.stderr.count(STALE) == 1
    line = next(ln for ln in r.stderr.splitlines() if STALE in ln)
    assert line.startswith("mlc: warning: schedule: ") and "\x1b" not in r.stderr and "db\\x1b[31m.jsonl" in line
    assert invoke("-v", "schedule", str(f), "--db", str(db), "-o", str(tmp_path / "t.ir")).stderr.count(STALE) == 1
    q = invoke("-q", "schedule", str(f), "--db", str(db), "-o", str(tmp_path / "u.ir"))
    assert q.exit_code == 0 and q.stderr == ""


def test_build_pipeline_warning_once_with_verbose_info(fused: tuple[Path, Path], tmp_path: Path) -> None:
    m, _ = fused
    db = _stale_db(tmp_path / "db.jsonl")
    r = invoke("-v", "opt", str(m), "-p", "configs/pipelines/lower.yaml", "-o", str(tmp_path / "l.ir"))
    assert r.exit_code == 0, r.output
    assert sum(ln.startswith("mlc: info: fuse: ") for ln in r.stderr.splitlines()) == 1
    r = invoke("build", str(m), "--db", str(db), "-o", str(tmp_path / "m.mlc"))
    assert r.exit_code == 0, r.output
    assert r.stderr.count(STALE) == 1 and "mlc: info:" not in r.stderr


def test_python_api_collects_without_printing(fused: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, f = fused
    info = get_pass("schedule")
    assert info is not None
    ctx = PassContext(sink=None)
    info.fn(parse_module(f.read_text(), str(f)), ctx, **info.validate_options({"db": str(_stale_db(tmp_path / "d.jsonl"))}))
    assert [d.severity for d in ctx.diagnostics] == ["warning"] and STALE in ctx.diagnostics[0].message
    assert capsys.readouterr().err == ""
    # the default sink (no CLI): warnings on stderr, info kept quiet
    ctx = PassContext()
    ctx.info("nothing to see")
    ctx.warning("look \x07here")
    assert capsys.readouterr().err == "mlc: warning: look \\x07here\n"
    assert ctx.diagnostics == [Diagnostic("info", "nothing to see"), Diagnostic("warning", "look \x07here")]
