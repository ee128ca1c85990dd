"""Evolutionary search over sampled traces, guided by the cost model, across a module's kernels.

Per round and task: candidates are fresh samples of the design space (the rules with random
decisions) and mutations of the best measured traces (one sampling decision re-sampled, the rest
replayed); the cost model ranks them, the top ones (plus a few random ones, to keep exploring)
are measured in the worker, added to the database and to the model's training set.

Task scheduling: each task first gets the default schedule and one round; after that every round
goes to the task with the most to gain, estimated as weight x best time (a kernel's share of the
model's run time), divided by how many rounds it already had (diminishing returns).
At the end each task's `confirm` fastest traces, and its default schedule, are measured twice more,
interleaved, and a trace is ranked by the median of its measurements: on a noisy machine the fastest
single measurement is as often luck as speed. Ctrl-C stops after the current measurement; everything measured is
already in the database.

With several workers (Ray, `tune/distributed.py`) a round measures max(batch, workers) candidates at once
and records each result as it arrives; sampling, the cost model and the database writes stay here, on
the driver, between rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from mlc.ir.arith import prime_factors
from mlc.ir.diagnostics import MlcError
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc
from mlc.passes.schedule.trace import SAMPLING, Trace
from mlc.passes.tune.database import Database, Record, mlc_version, workload_key
from mlc.passes.tune.space import design_space

from .cost_model import CostModel
from .features import extract
from .measure import Measurer, Result


@dataclass
class Task:
    func: PrimFunc
    weight: float = 1.0
    workload: str = ""
    trials: int = 0
    rounds: int = 0
    best: float = math.inf
    best_trace: Trace | None = None
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.workload = self.workload or workload_key(self.func)


@dataclass
class SearchConfig:
    trials: int = 64
    time_budget: float = math.inf
    batch: int = 8
    population: int = 48
    explore: float = 0.25
    seed: int = 0
    target: str = "cpu"
    confirm: int = 3  # at the end, re-measure each task's best `confirm` traces twice (0: off)


def local_decision(kind: str, inputs: tuple, decision: object, rng: np.random.Generator) -> object | None:
    """A neighbour of a decision (MetaSchedule's tile-size / categorical mutators): one prime factor
    of one tile level moved to another level, or another category; None when there is none."""
    if kind == "sample_perfect_tile" and isinstance(decision, list) and len(decision) > 1:
        d = [int(x) for x in decision]
        cap = int(inputs[2]) if len(inputs) > 2 and isinstance(inputs[2], int) else 1 << 30
        src = [i for i, x in enumerate(d) if x > 1]
        if not src:
            return None
        for _ in range(8):
            a = int(rng.choice(src))
            b = int(rng.choice([i for i in range(len(d)) if i != a]))
            p = int(rng.choice(prime_factors(d[a])))
            out = list(d)
            out[a] //= p
            out[b] *= p
            if out[-1] <= cap:
                return out
        return None
    if kind == "sample_categorical" and isinstance(decision, int) and inputs and isinstance(inputs[0], list):
        others = [i for i in range(len(inputs[0])) if i != decision]
        return int(rng.choice(others)) if others else None
    return None


def mutate(trace: Trace, func: PrimFunc, rng: np.random.Generator, local: float = 0.75,
           target: str | None = None) -> Trace | None:
    """Change one decision of `trace`; None if the result fails.

    With probability `local` the change is a small step from the current decision (so search
    refines around the best points), otherwise the decision is re-sampled from scratch. With a
    `target`, the trace is taken to come from the rules and they are re-run with the decisions
    (later structure follows the changed one); without, the trace is replayed."""
    idx = [i for i, x in enumerate(trace.insts) if x.kind in SAMPLING]
    if not idx:
        return None
    k = int(rng.integers(len(idx)))
    inst = trace.insts[idx[k]]
    new = local_decision(inst.kind, inst.inputs, inst.decision, rng) if rng.random() < local else None
    seed = int(rng.integers(1 << 31))
    try:
        if target is not None:
            decs = [trace.insts[i].decision for i in idx]
            decs[k] = new
            return design_space(target).sample(func, seed=seed, decisions=decs).trace
        return trace.with_decision(idx[k], new).replay(func, seed=seed).trace
    except MlcError:
        return None


class Tuner:
    """Tunes several tasks into one database; `on_progress(tasks, elapsed)` after each measurement."""

    def __init__(self, tasks: list[Task], db: Database, runner: Measurer, cfg: SearchConfig,
                 on_progress: Callable[[list[Task], float], None] | None = None):
        self.tasks, self.db, self.runner, self.cfg = tasks, db, runner, cfg
        self.model = CostModel()
        self.rng = np.random.default_rng(cfg.seed)
        self.xs: list[np.ndarray] = []
        self.ys: list[float] = []
        self.yt: list[int] = []
        self.on_progress = on_progress
        self.t0 = time.perf_counter()
        self.interrupted = False
        self.tkey = Target.parse(cfg.target).key
        self.space = design_space(cfg.target)
        for t in tasks:  # resume: what the database already knows counts
            for r in db.for_workload(t.workload, self.tkey):
                t.seen.add(r.trace.to_json())
                if r.ok and r.cost < t.best:
                    t.best, t.best_trace = r.cost, r.trace
                try:
                    self._learn(t, r.trace.apply(t.func), r.cost)
                except MlcError:
                    pass

    @property
    def trials_done(self) -> int:
        return sum(t.trials for t in self.tasks)

    def _out_of_budget(self) -> bool:
        return self.trials_done >= self.cfg.trials or time.perf_counter() - self.t0 >= self.cfg.time_budget

    def _learn(self, task: Task, func: PrimFunc, mean: float) -> None:
        self.xs.append(extract(func))
        self.ys.append(0.0 if not math.isfinite(mean) else 1.0 / mean)
        self.yt.append(self.tasks.index(task))

    def _refit(self) -> None:
        if len(self.xs) < 4:
            return
        y = np.asarray(self.ys)
        tid = np.asarray(self.yt)
        norm = np.zeros_like(y)
        for t in set(self.yt):  # throughput relative to the task's best
            m = tid == t
            top = y[m].max()
            norm[m] = y[m] / top if top > 0 else 0.0
        self.model.fit(np.asarray(self.xs), norm)

    def _candidates(self, task: Task) -> list[tuple[Trace, PrimFunc]]:
        cands: dict[str, tuple[Trace, PrimFunc]] = {}
        parents = [r.trace for r in self.db.best(task.workload, self.tkey, k=8)]
        tries = 0
        while len(cands) < self.cfg.population and tries < 4 * self.cfg.population:
            tries += 1
            if parents and self.rng.random() < 0.7:
                w = 1.0 / np.arange(1, len(parents) + 1)  # favour the best (rank-weighted)
                tr = mutate(parents[int(self.rng.choice(len(parents), p=w / w.sum()))], task.func, self.rng,
                            target=self.cfg.target)
            else:
                try:
                    tr = self.space.sample(task.func, seed=int(self.rng.integers(1 << 31))).trace
                except MlcError:
                    tr = None
            if tr is None:
                continue
            key = tr.to_json()
            if key in task.seen or key in cands:
                continue
            try:
                cands[key] = (tr, tr.apply(task.func))
            except MlcError:
                continue
        return list(cands.values())

    def _measure(self, task: Task, trace: Trace) -> Result:
        res = self.runner.measure(task.func, trace)
        self._record(task, trace, res)
        return res

    def _measure_all(self, task: Task, traces: list[Trace]) -> None:
        """Measure a batch (at once where the runner has several workers), recording each result as it
        arrives; stops early when the time budget runs out."""
        results = self.runner.measure_many(task.func, traces)
        try:
            for i, res in results:
                self._record(task, traces[i], res)
                if self._out_of_budget():
                    return
        finally:
            results.close()  # type: ignore[attr-defined]

    def _record(self, task: Task, trace: Trace, res: Result) -> None:
        """The driver alone writes the database: every result comes here, wherever it was measured."""
        task.trials += 1
        task.seen.add(trace.to_json())
        rec = Record(task.workload, self.tkey, mlc_version(), trace, res.times, task.func.name, res.error)
        self.db.add(rec)
        if rec.cost < task.best:
            task.best, task.best_trace = rec.cost, trace
        try:
            self._learn(task, trace.apply(task.func), rec.cost)
        except MlcError:
            pass
        if self.on_progress:
            self.on_progress(self.tasks, time.perf_counter() - self.t0)

    def _round(self, task: Task) -> None:
        task.rounds += 1
        if task.trials == 0 and not task.seen:
            default = self._default_trace(task)
            if default is not None:  # None: a program the rules cannot schedule: samples only
                self._measure(task, default)
        cands = self._candidates(task)
        if not cands:
            return
        self._refit()
        scores = self.model.predict(np.asarray([extract(f) for _, f in cands]))
        order = list(np.argsort(-scores))
        n = min(max(self.cfg.batch, self.runner.workers), len(cands))  # a batch keeps every worker busy
        n_rand = int(round(n * self.cfg.explore))
        pick = order[: n - n_rand]
        rest = order[n - n_rand:]
        if rest and n_rand:
            pick += list(self.rng.choice(rest, size=min(n_rand, len(rest)), replace=False))
        left = self.cfg.trials - self.trials_done
        if left > 0 and time.perf_counter() - self.t0 < self.cfg.time_budget:
            self._measure_all(task, [cands[int(i)][0] for i in pick][:left])

    def _default_trace(self, task: Task) -> Trace | None:
        try:
            return self.space.default(task.func).trace
        except MlcError:
            return None

    def _next_task(self) -> Task:
        fresh = [t for t in self.tasks if t.rounds == 0]
        if fresh:
            return fresh[0]
        return max(self.tasks, key=lambda t: (t.weight * (t.best if math.isfinite(t.best) else 1.0)) / t.rounds)

    def run(self) -> list[Task]:
        try:
            while not self._out_of_budget():
                before = self.trials_done
                self._round(self._next_task())
                if self.trials_done == before and all(t.rounds > 0 for t in self.tasks):
                    # nothing new to measure anywhere (tiny design spaces): stop instead of spinning
                    if all(not self._candidates(t) for t in self.tasks):
                        break
            self._confirm()
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self.runner.close()
        return self.tasks

    def _confirm(self) -> None:
        """Re-measure the leaders of every task (round-robin, so load drifts hit all alike)."""
        if self.cfg.confirm <= 0:
            return
        for task in self.tasks:
            leaders = [r.trace for r in self.db.best(task.workload, self.tkey, k=self.cfg.confirm)]
            default = self._default_trace(task)
            keys = {tr.to_json() for tr in leaders}
            if default is not None and default.to_json() not in keys \
                    and math.isfinite(self.db.trace_cost(task.workload, self.tkey, default)):
                leaders.append(default)  # the baseline competes too: search never settles for worse by luck
            if len(leaders) < 2:
                continue
            jobs = leaders * 2  # interleaved
            for i, res in self.runner.measure_many(task.func, jobs):
                self.db.add(Record(task.workload, self.tkey, mlc_version(), jobs[i], res.times, task.func.name,
                                   res.error))
            best = self.db.best(task.workload, self.tkey, k=1)
            if best:
                task.best_trace = best[0].trace
                task.best = self.db.trace_cost(task.workload, self.tkey, task.best_trace)
            if self.on_progress:
                self.on_progress(self.tasks, time.perf_counter() - self.t0)
