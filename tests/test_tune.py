"""Tuning: database round trip and resume, failing/hanging candidates, search, the `tune` command."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from mlc.cli.tune import tune_cmd
from mlc.ir import BlockStmt, Const, For, MlcError, PrimFunc, Var
from mlc.ir.module import Module
from mlc.ir.printer import print_module
from mlc.ir.target import Target
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_visit import walk
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.schedule import Trace
from mlc.passes.schedule.rules import TargetInfo, sample_schedule
from mlc.passes.tune.database import Database, Record, mlc_version, workload_key
from mlc.passes.tune.space import design_space
from mlc.tune.cost_model import CostModel
from mlc.tune.features import N_FEATURES, extract
from mlc.tune.measure import Result, Runner
from mlc.tune.search import SearchConfig, Task, Tuner
from test_tir_interp import matmul_func

CPU = TargetInfo(lanes=8, cores=2)


def _record(f: PrimFunc, seed: int, t: float) -> Record:
    return Record(workload_key(f), Target.parse("cpu").key, mlc_version(), sample_schedule(f, CPU, seed).trace, (t, t))


def test_database_round_trip_resume_and_truncated_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = matmul_func(16, 8, 16)
    p = tmp_path / "db.jsonl"
    db = Database(p)
    for s, t in ((0, 3e-3), (1, 1e-3), (2, 2e-3)):
        db.add(_record(f, s, t))
    db.add(Record(workload_key(f), Target.parse("cpu").key, mlc_version(), Trace(), (), f.name, "timed out"))
    with open(p, "a") as fh:
        fh.write('{"workload": "abc", "tra')  # an interrupted write
    again = Database(p)
    assert again.skipped == 1 and len(again.records) == 4
    assert [r.trace for r in again.records] == [r.trace for r in db.records]
    best = again.best(workload_key(f), Target.parse("cpu").key)
    assert best[0].mean == pytest.approx(1e-3) and not again.records[-1].ok
    # the key is structural: same program under another name, same key; another program, another key
    assert workload_key(f) == workload_key(PrimFunc("other", f.params, f.num_outputs, f.body))
    assert workload_key(f) != workload_key(matmul_func(16, 8, 8))
    (tmp_path / "bad.jsonl").write_text("garbage\n{}\n")
    with pytest.raises(MlcError, match="bad.jsonl:1:1"):
        Database(tmp_path / "bad.jsonl")


def test_torn_last_record_is_cut_before_the_next_append(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A kill mid-write leaves a torn last line: warned about and ignored, earlier records kept, and the next
    run's append cuts it off first, so the run after that reads a whole file (issue 19: it broke two runs)."""
    f = matmul_func(16, 8, 16)
    p = tmp_path / "db.jsonl"
    db = Database(p)
    for s, t in ((0, 3e-3), (1, 1e-3)):
        db.add(_record(f, s, t))
    whole = p.read_bytes()
    p.write_bytes(whole + whole.splitlines(keepends=True)[0][:37])  # torn inside a record
    again = Database(p)
    assert again.skipped == 1 and len(again.records) == 2
    assert "ignoring a torn last record" in capsys.readouterr().err
    again.add(_record(f, 2, 2e-3))
    third = Database(p)
    assert third.skipped == 0 and len(third.records) == 3 and p.read_bytes().startswith(whole)
    p.write_bytes(p.read_bytes()[:-1])  # a complete last record that lost only its newline
    fourth = Database(p)
    assert fourth.skipped == 0 and len(fourth.records) == 3
    fourth.add(_record(f, 3, 4e-3))
    assert len(Database(p).records) == 4 and p.read_bytes().endswith(b"\n")


def test_cost_model_learns_a_ranking() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((120, 6))
    y = np.exp(-3 * x[:, 0]) + 0.3 * x[:, 2]
    m = CostModel()
    m.fit(x[:90], y[:90])
    assert np.corrcoef(m.predict(x[90:]), y[90:])[0, 1] > 0.8
    assert extract(sample_schedule(matmul_func(16, 8, 16), CPU, 0).func).shape == (N_FEATURES,)


def _hanging(f: PrimFunc) -> PrimFunc:
    """The same program repeated 10^12 times: a candidate that never finishes."""
    root = f.body
    assert isinstance(root, BlockStmt)
    return replace(f, body=replace(root, body=For(Var("spin"), Const(0), Const(10**12), root.body)))


@pytest.mark.slow
def test_hanging_and_crashing_candidates_are_recorded_and_search_goes_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = matmul_func(32, 16, 32)
    runner = Runner(timeout=3.0, repeat=1)
    r = runner.measure(_hanging(f), Trace())
    assert r.error.startswith("timed out") and math.isinf(r.mean)
    ok = runner.measure(f, sample_schedule(f, CPU, 0).trace)
    assert not ok.error and ok.mean > 0  # the worker was restarted

    class Injecting(Runner):
        calls = 0

        def measure(self, func: PrimFunc, trace: Trace) -> Result:
            Injecting.calls += 1
            return super().measure(_hanging(func) if Injecting.calls == 2 else func, trace)

    db = Database(tmp_path / "db.jsonl")
    tasks = Tuner([Task(f)], db, Injecting(timeout=3.0, repeat=1), SearchConfig(trials=5, batch=4, confirm=0)).run()
    assert tasks[0].trials == 5 and math.isfinite(tasks[0].best)
    errs = [x.error for x in Database(tmp_path / "db.jsonl").records]
    assert sum(e.startswith("timed out") for e in errs) == 1 and errs.count("") == 4
    runner.close()


def test_tune_cli_resumes_and_schedule_pass_uses_db(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = matmul_func(32, 16, 32)
    src = tmp_path / "m.ir"
    src.write_text(print_module(Module((f,))))
    db, out = tmp_path / "tune.jsonl", tmp_path / "t.ir"
    args = [str(src), "--trials", "3", "--db", str(db), "-o", str(out), "--quiet", "--timeout", "20"]
    r = CliRunner().invoke(tune_cmd, args)
    assert r.exit_code == 0, r.output
    first = Database(db).records
    # 3 trials, then the 3 leaders measured twice more
    assert len({x.trace.to_json() for x in first}) == 3 and len(first) == 3 + 2 * 3
    r = CliRunner().invoke(tune_cmd, [*args[:2], "5", *args[3:], "--confirm", "0"])  # resume: 5 more, none repeated
    assert r.exit_code == 0, r.output
    recs = Database(db).records
    assert len({x.trace.to_json() for x in recs}) == 8 and len(recs) == 8 + 2 * 3
    from mlc.ir.parser import parse_module

    tuned = parse_module(out.read_text()).prim_functions()[0]
    assert dict(tuned.attrs)["schedule"] == "tuned"
    best = Database(db).best(workload_key(f), Target.parse("cpu").key)[0]
    assert tuned.body == best.trace.apply(f).body
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((32, 16)).astype(np.float32), rng.standard_normal((16, 32)).astype(np.float32)
    c = np.zeros((32, 32), np.float32)
    run_prim(tuned, [a, b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    # the schedule pass applies the database's best record
    info = get_pass("schedule")
    m = info.fn(Module((f,)), PassContext(), **info.validate_options({"db": str(db)}))  # type: ignore[union-attr]
    assert dict(m.prim_functions()[0].attrs)["schedule"] == "tuned"


def test_stale_record_is_a_warning_naming_the_instruction(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = matmul_func(16, 8, 16)
    tr = json.loads(sample_schedule(f, CPU, 0).trace.to_json())
    tr["insts"].insert(1, {"kind": "get_block", "inputs": ["no_such_block"], "attrs": {}, "outputs": []})
    rec = Record(workload_key(f), Target.parse("cpu").key, mlc_version(), Trace.from_json(json.dumps(tr)), (1e-6,))
    db = Database(tmp_path / "db.jsonl")
    db.add(rec)
    info = get_pass("schedule")
    m = info.fn(Module((f,)), PassContext(), **info.validate_options({"db": str(tmp_path / "db.jsonl")}))  # type: ignore[union-attr]
    assert dict(m.prim_functions()[0].attrs)["schedule"] == "default"
    err = capsys.readouterr().err
    assert "no longer replays" in err and "no_such_block" in err
    assert any(isinstance(s, For) and s.kind == "parallel" for _, s in walk(m.prim_functions()[0].body))


def test_records_of_another_version_are_not_applied_and_say_so(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = matmul_func(16, 8, 16)
    rec = Record(workload_key(f), Target.parse("cpu").key, "0.0.1", sample_schedule(f, CPU, 0).trace, (1e-6,))
    Database(tmp_path / "db.jsonl").add(rec)
    info = get_pass("schedule")
    m = info.fn(Module((f,)), PassContext(), **info.validate_options({"db": str(tmp_path / "db.jsonl")}))  # type: ignore[union-attr]
    assert dict(m.prim_functions()[0].attrs)["schedule"] == "default"
    err = capsys.readouterr().err
    assert "records of mlc 0.0.1 only" in err and mlc_version() in err
    Database(tmp_path / "db.jsonl").add(replace(rec, version=mlc_version()))
    m = info.fn(Module((f,)), PassContext(), **info.validate_options({"db": str(tmp_path / "db.jsonl")}))  # type: ignore[union-attr]
    assert dict(m.prim_functions()[0].attrs)["schedule"] == "tuned"
    assert "records of mlc" not in capsys.readouterr().err


def test_local_decision_moves_one_factor_and_keeps_constraints() -> None:
    from mlc.tune.search import local_decision

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        d = local_decision("sample_perfect_tile", ({"loop": "i"}, 4, 8), [4, 8, 8, 4], rng)
        assert isinstance(d, list) and math.prod(d) == 4 * 8 * 8 * 4 and d[-1] <= 8
        changed = [a != b for a, b in zip(d, [4, 8, 8, 4])]
        assert sum(changed) == 2  # one prime factor moved between two levels
        seen.add(tuple(d))
        c = local_decision("sample_categorical", ([1, 2, 3], [1.0, 1.0, 1.0]), 1, rng)
        assert c in (0, 2)
    assert len(seen) > 3
    assert local_decision("sample_perfect_tile", ({"loop": "i"}, 2, 8), [1, 1], rng) is None


def test_rule_mutation_rederives_structure_and_stays_correct() -> None:
    from mlc.tune.search import mutate
    from test_tir_interp import matmul_func

    f = matmul_func(32, 16, 32)
    base = sample_schedule(f, TargetInfo(lanes=8, cores=2), seed=3).trace
    rng = np.random.default_rng(0)
    a, b = np.random.default_rng(1).standard_normal((32, 16)), np.random.default_rng(2).standard_normal((16, 32))
    outs = set()
    for _ in range(6):
        tr = mutate(base, f, rng, target="cpu")
        if tr is None:
            continue
        outs.add(tr.to_json())
        g = Trace.from_json(tr.to_json()).apply(f)
        args = [a.astype(np.float32), b.astype(np.float32), np.zeros((32, 32), np.float32)]
        run_prim(g, args)
        np.testing.assert_allclose(args[2], a @ b, rtol=1e-4, atol=1e-4)
    assert len(outs) >= 2


def test_leaders_are_re_measured_and_a_lucky_measurement_does_not_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the fake machine: every trace really costs 2.0 except one that costs 1.5, but whichever trace
    # is measured third gets one lucky 0.5; ranking by the median of re-measurements picks the 1.5
    f = matmul_func(32, 16, 32)

    class Noisy(Runner):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.fast: str | None = None

        def measure(self, func: PrimFunc, trace: Trace) -> Result:
            self.n += 1
            key = trace.to_json()
            if self.n == 5:
                self.fast = key
            t = 0.5 if self.n == 3 else 1.5 if key == self.fast else 2.0
            return Result((t, t))

    runner = Noisy()
    db = Database(tmp_path / "db.jsonl")
    task = Tuner([Task(f)], db, runner, SearchConfig(trials=8, batch=4, confirm=3)).run()[0]
    assert runner.n == 8 + 2 * 3
    assert task.best_trace is not None and task.best_trace.to_json() == runner.fast and task.best == 1.5
    assert db.best(task.workload, Target.parse("cpu").key)[0].trace.to_json() == runner.fast


def test_the_default_schedule_is_re_measured_with_the_leaders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the default really costs 1.0 but its first measurement was unlucky (3.0), so it is not among the
    # leaders; the confirmation step re-measures it anyway and it wins on its median
    f = matmul_func(32, 16, 32)
    default = design_space("cpu").default(f).trace.to_json()

    class Unlucky(Runner):
        def __init__(self) -> None:
            super().__init__()
            self.default_runs = 0

        def measure(self, func: PrimFunc, trace: Trace) -> Result:
            if trace.to_json() == default:
                self.default_runs += 1
                t = 3.0 if self.default_runs == 1 else 1.0
            else:
                t = 2.0
            return Result((t, t))

    runner = Unlucky()
    db = Database(tmp_path / "db.jsonl")
    task = Tuner([Task(f)], db, runner, SearchConfig(trials=8, batch=4, confirm=1)).run()[0]
    assert runner.default_runs == 3
    assert task.best_trace is not None and task.best_trace.to_json() == default and task.best == 1.0


def test_cost_model_splits_features_with_infinite_values() -> None:
    # a split between a finite and an infinite value used to get an infinite threshold, sending
    # every sample left and fitting a leaf to nothing (nan predictions)
    x = np.array([[1.0, 0.0], [np.inf, 1.0], [2.0, np.nan], [np.inf, 3.0]] * 3)
    y = np.array([0.0, 1.0, 0.0, 1.0] * 3)
    m = CostModel(min_leaf=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.fit(x, y)
        p = m.predict(x)
    assert np.isfinite(p).all() and (p[1::2] > p[0::2]).all()
