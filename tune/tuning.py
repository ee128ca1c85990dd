"""Tuning a whole module: one task per unscheduled tensor program, weighted by its call sites;
the search (search.py) measures candidates and the database keeps them; each program then gets its
best record (or the target's default schedule). `mlc tune` (cli/tune.py) is the command around it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import CallTensor
from mlc.ir.module import Module
from mlc.ir.rewrite import walk_bindings
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc
from mlc.passes.tune.database import Database
from mlc.passes.tune.space import design_space

from .measure import Measurer
from .search import SearchConfig, Task, Tuner


def call_counts(module: Module) -> dict[str, int]:
    """How many call sites each tensor program has in the graph functions (a task's weight)."""
    counts: dict[str, int] = {}
    for g in module.graph_functions():
        for b in walk_bindings(g.body):
            if isinstance(b.node, CallTensor):
                counts[b.node.func] = counts.get(b.node.func, 0) + 1
    return counts


class Progress:
    """Live table: trials done / total, best time per task, elapsed and ETA (rich, to stderr)."""

    def __init__(self, total: int, budget: float, quiet: bool, runner: Measurer | None = None):
        self.total, self.budget, self.quiet, self.runner = total, budget, quiet, runner
        self.live = None
        if not quiet:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
            self.live.start()

    def __call__(self, tasks: list[Task], elapsed: float) -> None:
        if self.live is None:
            return
        from rich.table import Table

        done = sum(t.trials for t in tasks)
        eta = elapsed / done * (self.total - done) if done else math.inf
        if math.isfinite(self.budget):
            eta = min(eta, max(0.0, self.budget - elapsed))
        tab = Table(title=f"mlc tune: {done}/{self.total} trials, {elapsed:.0f}s elapsed, ETA {eta:.0f}s")
        for col in ("task", "weight", "trials", "best (us)"):
            tab.add_column(col)
        for t in tasks:
            tab.add_row(t.func.name, str(t.weight), str(t.trials),
                        f"{t.best * 1e6:.1f}" if math.isfinite(t.best) else "-")
        rates = self.runner.node_rates() if self.runner is not None else []
        if not rates:
            self.live.update(tab)
            return
        from rich.console import Group

        nodes = Table(title="measured per node")  # several workers (Ray): where the throughput comes from
        for col in ("node", "measured", "failed", "per minute"):
            nodes.add_column(col)
        for r in rates:
            nodes.add_row(r.node, str(r.done), str(r.failed), f"{r.per_minute:.1f}")
        self.live.update(Group(tab, nodes))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def unscheduled(module: Module) -> list[PrimFunc]:
    """The tensor programs of `module` that no schedule has been applied to: what `tune_module` tunes."""
    return [f for f in module.prim_functions() if not any(k == "schedule" for k, _ in f.attrs)]


def tune_module(module: Module, cfg: SearchConfig, db: Database, runner: Measurer, quiet: bool = True) -> Module:
    """Tune every unscheduled tensor program of `module`; the result uses the best records.

    `runner`: a local `Runner`, or a `distributed.RayRunner` (measurements on Ray actors; this
    process still searches and alone writes `db`). A module without any (not lowered, or already scheduled) is returned as it is."""
    weights = call_counts(module)
    funcs = unscheduled(module)
    if not funcs:
        return module
    tasks = [Task(f, float(weights.get(f.name, 1))) for f in funcs]
    progress = Progress(cfg.trials, cfg.time_budget, quiet, runner)
    try:
        tuner = Tuner(tasks, db, runner, cfg, progress)
        tuner.run()
    finally:
        progress.stop()
    if tuner.interrupted:
        print("mlc: tune interrupted; measured records are kept in the database", file=sys.stderr)
    for f in funcs:
        module = module.with_function(final_schedule(f, cfg.target, db))
    return module


def final_schedule(func: PrimFunc, target: str, db: Database) -> PrimFunc:
    """The database's best record for `func`, else the target's default schedule, marked as such."""
    from mlc.passes.schedule_pass import schedule_func

    if not Target.parse(target).gpu:
        return schedule_func(func, target, db)
    out = schedule_func(func, target, db, rules=False)
    if any(k == "schedule" for k, _ in out.attrs):
        return out
    from mlc.passes.schedule.gpu_rules import default_gpu_schedule

    attrs = tuple(sorted(dict(func.attrs, schedule="default").items()))
    return replace(default_gpu_schedule(func), attrs=attrs)


def check_target(target: str) -> None:
    """A known target whose candidates can be measured here (cuda: pycuda and a GPU), else MlcError."""
    if design_space(target).gpu:
        from mlc.runtime.cuda import cuda_unavailable

        reason = cuda_unavailable()
        if reason is not None:
            raise MlcError(f"tune: --target cuda measures candidates on the GPU, which needs pycuda and an NVIDIA GPU: "
                           f"{reason}")


__all__ = ["Progress", "call_counts", "check_target", "final_schedule", "tune_module", "unscheduled"]
