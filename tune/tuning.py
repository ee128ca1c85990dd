"""Tuning a whole module: one task per unscheduled tensor program, weighted by its call sites;
the search (search.py) measures candidates and the database keeps them; each program then gets its
best record (or the target's default schedule). `mlc tune` (cli/tune.py) is the command around it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Any

from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import CallTensor
from mlc.ir.module import Module
from mlc.ir.rewrite import walk_bindings
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc
from mlc.passes.alter_layout import constant_params
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


CONSTANT_PARAMS = "constant_params"  # program attribute: parameters every call passes a graph constant


def with_constant_params(func: PrimFunc, params: set[int]) -> PrimFunc:
    """`func` carrying `CONSTANT_PARAMS` (for the measuring worker), if any."""
    if not params:
        return func
    return replace(func, attrs=tuple(sorted(dict(func.attrs, **{CONSTANT_PARAMS: tuple(sorted(params))}).items())))


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
    # candidates are timed without the packs of constant operands that alter-layout folds in the
    # build (tune/worker.py); which operands are constant rides along as a program attribute,
    # which the workload key leaves out
    fixed = constant_params(module)
    tasks = [Task(with_constant_params(f, fixed.get(f.name, set())), float(weights.get(f.name, 1))) for f in funcs]
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


def tune_sparse_formats(module: Module, constants: dict[str, Any], db: Database, trials: int = 8,
                        target: str = "cpu", seed: int = 0, dims: dict[str, int] | None = None) -> tuple[Module, dict[str, Any]]:
    """Search the format space (passes/sparse_format.FORMAT_SPACE x PARTS_SPACE: format, bucket widths,
    column parts, block size, and the schedule's row parts) of every stage-I CSR program with constant
    arrays (a module after fuse): the default point and random others, `trials` in all per program,
    each converted, lowered, compiled and timed on the real structure (dense operands random, symbolic
    dims from `dims`, else 64). Every measurement is a database record (a point that does not apply,
    e.g. a block size not dividing the matrix: its error). Returns the module in each program's best
    point and its constants, which `sparse-format --format auto --db` reproduces from the database."""
    import numpy as np
    from mlc.passes.registry import PassContext
    from mlc.passes.sparse_format import (
        DEFAULT_POINT,
        FORMAT_SPACE,
        PARTS_SPACE,
        apply_points,
        csr_constants,
        format_trace,
        format_workload,
        tuned_points,
    )
    from mlc.passes.tune.database import Record, mlc_version

    if Target.parse(target).gpu:
        raise MlcError("tune: the sparse format search measures on the CPU only")
    rng = np.random.default_rng(seed)
    space = [(f, p) for f in FORMAT_SPACE for p in PARTS_SPACE]
    for name, (keys, _) in csr_constants(module, constants).items():
        func = module.get(name)
        assert isinstance(func, PrimFunc)
        key = format_workload(func, tuple(constants[k] for k in keys[:2]))
        others = [space[i] for i in rng.permutation(len(space)) if space[i] != DEFAULT_POINT]
        for point in [DEFAULT_POINT, *others][:max(trials, 1)]:
            trace = format_trace(*point)
            if trace.to_json() in db.measured(key, target):
                continue
            try:
                times, error = _time_point(module, constants, name, point, dims or {}), ""
            except MlcError as e:
                times, error = (), e.message
            db.add(Record(key, target, mlc_version(), trace, times, name, error))
    ctx = PassContext(constants=dict(constants), sink=None)
    out = apply_points(module, ctx, tuned_points(module, constants, db, target))
    return out, dict(ctx.constants or {})


def _time_point(module: Module, constants: dict[str, Any], name: str, point: tuple[str, int],
                dims: dict[str, int]) -> tuple[float, ...]:
    """Seconds per call of program `name` in `point` (format, row parts), 5 samples: its constant
    arrays as they are, other inputs random."""
    import time

    import numpy as np
    from mlc.ir import arith
    from mlc.ir.dtype import to_numpy
    from mlc.ir.expr import Var, free_vars
    from mlc.ir.graph import Constant
    from mlc.ir.sparse_lower import lower_sparse
    from mlc.passes.registry import PassContext
    from mlc.passes.sparse_format import apply_points
    from mlc.passes.sparse_lower import sparse_cpu_schedule
    from mlc.runtime.cpu import compile_module

    ctx = PassContext(constants=dict(constants), sink=None)
    m = apply_points(module, ctx, {name: point})
    consts = ctx.constants or {}
    f = m.get(name)
    call = next(b.node for g in m.graph_functions() for b in walk_bindings(g.body)
                if isinstance(b.node, CallTensor) and b.node.func == name)
    assert isinstance(f, PrimFunc) and isinstance(call, CallTensor)
    const_of = {b.var.name: b.node.key for g in m.graph_functions() for b in walk_bindings(g.body)
                if isinstance(b.node, Constant)}
    env = dict(dims)
    for p, a in zip(f.params, call.args):
        if a.name in const_of:
            env.update({d.name: n for d, n in zip(p.shape, consts[const_of[a.name]].shape) if isinstance(d, Var)})
    env.update({v.name: 64 for p in f.params for d in p.shape for v in free_vars(d) if v.name not in env})
    rng = np.random.default_rng(0)
    args = []
    for k, p in enumerate(f.params):
        shape = tuple(int(arith.evaluate(d, env)) for d in p.shape)
        if k < len(call.args) and call.args[k].name in const_of:
            args.append(consts[const_of[call.args[k].name]])
        else:
            args.append(rng.standard_normal(shape).astype(to_numpy(p.dtype)))
    g = sparse_cpu_schedule(lower_sparse(f, 3, point[1]))
    run = compile_module([g]).kernel(g.name).prepare(args)
    run()
    t0 = time.perf_counter()
    run()
    number = max(1, int(0.01 / max(time.perf_counter() - t0, 1e-7)))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(number):
            run()
        samples.append((time.perf_counter() - t0) / number)
    return tuple(samples)


__all__ = ["Progress", "call_counts", "check_target", "final_schedule", "tune_module", "tune_sparse_formats", "unscheduled"]
