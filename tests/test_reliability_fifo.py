"""A FIFO that nobody writes (or, as `-o`, nobody reads) under any input-path option of any
subcommand is one located error at once, not a hang (issue 19).

Each FIFO lives outside the case directories (test_bad_input's runner snapshots those by reading
every file). The cases run through test_bad_input's runner (one forked child per case) with an
alarm armed in each child: a command still blocked on its FIFO after CASE_S seconds dies of
SIGALRM, which fails its case by name instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import test_bad_input
from test_bad_input import HEAD, Case, Result, S, Shared, run_all

F = "{F}"  # the FIFO directory, substituted below
CASE_S = 30  # generous on a loaded 2-core machine: every case answers in about a second


def _fifo(name: str) -> str:
    return f"{F}/{name}"


# (id, argv); every argv names one FIFO (`NAME=` before it for --dense), whose file name the error line must mention
CASES: list[tuple[str, tuple[str, ...]]] = [
    ("import", ("import", _fifo("a.onnx"), "-o", "o.ir")),
    ("verify", ("verify", _fifo("a.ir"))),
    ("opt", ("opt", _fifo("a.ir"), "-p", f"{S}/p.yaml", "-o", "o.ir")),
    ("opt --pipeline", ("opt", f"{S}/m.ir", "-p", _fifo("p.yaml"), "-o", "o.ir")),
    ("shape-infer", ("shape-infer", _fifo("a.ir"), "-o", "o.ir")),
    ("codegen", ("codegen", _fifo("a.ir"), "-o", "o.mlc")),
    ("build onnx", ("build", _fifo("a.onnx"), "-o", "o.mlc")),
    ("build ir", ("build", _fifo("a.ir"), "-o", "o.mlc")),
    ("build --pipeline", ("build", f"{S}/mlp.onnx", "-p", _fifo("p.yaml"), "-o", "o.mlc")),
    ("build --db", ("build", f"{S}/mlp.onnx", "--db", _fifo("t.jsonl"), "-o", "o.mlc")),
    ("run ir", ("run", _fifo("a.ir"))),
    ("run artifact", ("run", _fifo("a.mlc"))),
    ("run --inputs", ("run", f"{S}/mlp.mlc", "--inputs", _fifo("in.npz"), "-o", "o.npz")),
    ("bench", ("bench", _fifo("a.mlc"))),
    ("bench --onnx", ("bench", f"{S}/mlp.mlc", "--onnx", _fifo("a.onnx"))),
    ("tune", ("tune", _fifo("a.ir"), "--trials", "1", "-o", "o.ir")),
    ("tune --db", ("tune", f"{S}/m.ir", "--db", _fifo("t.jsonl"), "--trials", "1", "-o", "o.ir")),
    ("schedule --db", ("schedule", f"{S}/m.ir", "--db", _fifo("t.jsonl"), "-o", "o.ir")),
    ("schedule --trace", ("schedule", f"{S}/m.ir", "--trace", _fifo("t.json"), "-o", "o.ir")),
    ("amp --rules", ("amp", f"{S}/m.ir", "--rules", _fifo("r.yaml"), "-o", "o.ir")),
    ("export", ("export", _fifo("a.ir"), "--onnx", f"{S}/mlp.onnx", "-o", "o.onnx")),
    ("export --onnx", ("export", f"{S}/m.ir", "--onnx", _fifo("a.onnx"), "-o", "o.onnx")),
    ("train", ("train", _fifo("a.ir"), "--data", f"{S}/in.npz", "-o", "o.ir")),
    ("train --data", ("train", f"{S}/m.ir", "--data", _fifo("d.npz"), "-o", "o.ir")),
    ("train --val", ("train", f"{S}/m.ir", "--data", f"{S}/d.npz", "--val", _fifo("v.npz"), "-o", "o.ir")),
    ("sparse-format --db", ("sparse-format", f"{S}/sk.ir", "--format", "auto", "--db", _fifo("t.jsonl"), "-o", "o.ir")),
    ("sparse-inputs --dense", ("sparse-inputs", f"{S}/a.npz", "--dense", "B=" + _fifo("b.npy"), "-o", "o.npz")),
    ("sparse-inputs", ("sparse-inputs", _fifo("a.npz"), "--format", "csr", "-o", "o.npz")),
    ("ann-index build", ("ann-index", "build", _fifo("b.npy"), "-M", "2", "-K", "16", "--no-progress", "-o", "i.bin")),
    ("ann-index search", ("ann-index", "search", _fifo("i.bin"), f"{S}/q.npy", "-o", "r.npy")),
    ("ann-index search queries", ("ann-index", "search", f"{S}/idx.bin", _fifo("q.npy"), "-o", "r.npy")),
    ("ann-index eval", ("ann-index", "eval", _fifo("i.bin"), f"{S}/q.npy", f"{S}/gt.npy")),
    ("ann-index eval groundtruth", ("ann-index", "eval", f"{S}/idx.bin", f"{S}/q.npy", _fifo("g.npy"))),
    # outputs: a FIFO nobody reads
    ("-o shape-infer", ("shape-infer", f"{S}/m.ir", "-o", _fifo("o.ir"))),
    ("-o run", ("run", f"{S}/m.ir", "--inputs", f"{S}/in.npz", "-o", _fifo("o.npz"))),
    ("-o build", ("build", f"{S}/mlp.onnx", "-o", _fifo("o.mlc"))),
]


def _materials(d: Path) -> Shared:
    from click.testing import CliRunner
    from mlc.cli import commands  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli
    from mlc.frontend import zoo

    s = Shared(d)
    (d / "mlp.onnx").write_bytes(zoo.build("mlp").SerializeToString())
    rng = np.random.default_rng(0)
    np.save(d / "base.npy", rng.standard_normal((256, 8)).astype(np.float32))
    np.save(d / "q.npy", rng.standard_normal((4, 8)).astype(np.float32))
    np.save(d / "gt.npy", rng.integers(0, 256, (4, 10)).astype(np.int32))
    np.savez(d / "in.npz", x=rng.standard_normal((3, 64)).astype(np.float32))
    (d / "p.yaml").write_text("name: t\npasses:\n  - shape-infer\n")
    np.savez(d / "d.npz", x=rng.standard_normal((8, 64)).astype(np.float32), labels=rng.integers(0, 10, 8))
    import scipy.sparse as sp

    sp.save_npz(d / "a.npz", sp.random(5, 6, density=0.4, format="csr", dtype=np.float32, random_state=0))
    with contextlib.chdir(d):
        for argv in (["import", "mlp.onnx", "-o", "m.ir"], ["codegen", "m.ir", "-o", "mlp.mlc"],
                     ["sparse-kernel", "spmm", "--format", "csr", "-o", "sk.ir"],
                     ["ann-index", "build", "base.npy", "-M", "2", "-K", "16", "--no-progress", "-o", "idx.bin"]):
            r = CliRunner().invoke(cli, argv)
            assert r.exit_code == 0, (argv, r.output)
    return s


def _alarmed_runner() -> str:
    """test_bad_input's zygote with an alarm armed in each case's child before it runs the command."""
    z = test_bad_input.ZYGOTE
    head, child = "import json, os, runpy, sys\n", "    code = 3\n"
    assert z.count(head) == 1 and z.count(child) == 1, "test_bad_input.ZYGOTE changed: update the anchors"
    return z.replace(head, "import json, os, runpy, signal, sys\n").replace(child, child + f"    signal.alarm({CASE_S})\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    shared = _materials(tmp_path_factory.mktemp("fifo-shared"))
    fdir = tmp_path_factory.mktemp("fifos")
    cases = []
    for i, argv in CASES:
        sub = fdir / _dirname(i)
        sub.mkdir()
        argv = tuple(a.replace(F, str(sub)) for a in argv)
        os.mkfifo(_fifo_path(argv, str(sub)))
        cases.append(Case(i, argv))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_bad_input, "ZYGOTE", _alarmed_runner())
        return run_all(cases, shared, tmp_path_factory.mktemp("fifo-cases"))


def _fifo_path(argv: tuple[str, ...], fifos: str) -> Path:
    return next(Path(a.split("=", 1)[-1]) for a in argv if fifos in a)


def _dirname(case_id: str) -> str:
    return case_id.replace(" ", "_").replace("-", "")


@pytest.mark.parametrize("case_id", [i for i, _ in CASES])
def test_fifo_is_one_error_not_a_hang(case_id: str, results: dict[str, Result]) -> None:
    r = results[case_id]
    argv = dict(CASES)[case_id]
    name = _fifo_path(argv, F).name
    where = f"{case_id}: exit {r.rc}\n{r.stderr}"
    assert r.rc != -signal.SIGALRM, f"blocked: still running after {CASE_S} s (killed)\n" + where
    lines = r.stderr.rstrip("\n").split("\n")
    assert r.rc == 1 and "Traceback" not in r.stderr, where
    assert len(lines) in (1, 3) and HEAD.match(lines[0]) and name in lines[0], where
    assert r.after == r.before, f"files changed: {sorted(set(r.after) ^ set(r.before))}\n" + where
