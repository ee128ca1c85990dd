"""`mlc tune M.ir --target cpu|cuda --trials N --time-budget S --db tune.jsonl -o t.ir`.

With `--target cuda` candidates come from the GPU rules and are measured on GPU 0 (pycuda + nvcc);
without a usable GPU the command fails up front with one message (the design space itself and the
CUDA source need no GPU, see tests/test_tune_cuda.py).
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import click
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import CallTensor
from mlc.ir.module import Module
from mlc.ir.rewrite import walk_bindings
from mlc.ir.tir import PrimFunc

from .database import Database
from .measure import Runner
from .search import SearchConfig, Task, Tuner
from .space import design_space, is_gpu


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

    def __init__(self, total: int, budget: float, quiet: bool):
        self.total, self.budget, self.quiet = total, budget, quiet
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
        self.live.update(tab)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def tune_module(module: Module, cfg: SearchConfig, db: Database, runner: Runner, quiet: bool = True) -> Module:
    """Tune every unscheduled tensor program of `module`; the result uses the best records."""
    weights = call_counts(module)
    funcs = [f for f in module.prim_functions() if not any(k == "schedule" for k, _ in f.attrs)]
    tasks = [Task(f, float(weights.get(f.name, 1))) for f in funcs]
    progress = Progress(cfg.trials, cfg.time_budget, quiet)
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
    from ..schedule_pass import schedule_func

    if not is_gpu(target):
        return schedule_func(func, target, db)
    out = schedule_func(func, target, db, rules=False)
    if any(k == "schedule" for k, _ in out.attrs):
        return out
    from ..schedule.gpu_rules import default_gpu_schedule

    attrs = tuple(sorted(dict(func.attrs, schedule="default").items()))
    return replace(default_gpu_schedule(func), attrs=attrs)


def check_target(target: str) -> None:
    """A known target whose candidates can be measured here (cuda: pycuda and a GPU), else MlcError."""
    design_space(target)
    if is_gpu(target):
        from mlc.codegen.cuda_jit import cuda_unavailable

        reason = cuda_unavailable()
        if reason is not None:
            raise MlcError(f"tune: --target cuda measures candidates on the GPU, which needs pycuda and an NVIDIA GPU: "
                           f"{reason}")


def parse_dims(items: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for it in items:
        k, eq, v = it.partition("=")
        if not eq or not v.strip().lstrip("-").isdigit():
            raise MlcError(f"tune: bad --dim '{it}' (expected NAME=INT)")
        out[k.strip()] = int(v)
    return out


@click.command("tune")
@click.argument("module_path", metavar="M.ir")
@click.option("--target", default="cpu", show_default=True, help="cpu (the host) or cuda")
@click.option("--trials", default=64, show_default=True, type=int, help="measurements in all")
@click.option("--time-budget", default=math.inf, type=float, help="stop after this many seconds")
@click.option("--db", "db_path", default="tune.jsonl", show_default=True, help="tuning database (JSON lines)")
@click.option("--dim", "dims", multiple=True, help="value of a symbolic dim for measuring, NAME=INT (default 64)")
@click.option("--timeout", default=20.0, show_default=True, help="seconds per candidate before it counts as failed")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--confirm", default=3, show_default=True, type=int,
              help="at the end, re-measure each program's N fastest schedules twice; rank by the median (0: off)")
@click.option("--quiet", is_flag=True, help="no progress table")
@click.option("-o", "--output", default="-", help="scheduled module (default: stdout)")
def tune_cmd(module_path: str, target: str, trials: int, time_budget: float, db_path: str, dims: tuple[str, ...],
             timeout: float, seed: int, confirm: int, quiet: bool, output: str) -> None:
    """Search schedules for every tensor program, measuring real builds; write the best-scheduled module."""
    from mlc.cli.io import read_module, write_module
    from mlc.ir.expr import free_vars

    try:
        src = read_module(module_path)
        if trials < 0 or confirm < 0:
            raise MlcError("tune: --trials and --confirm must be >= 0")
        check_target(target)
        given = parse_dims(dims)
        syms = {v.name for f in src.module.prim_functions() for b in f.params for d in b.shape for v in free_vars(d)}
        syms |= {v.name for f in src.module.prim_functions() for v in f.scalar_params}
        gpu = is_gpu(target)
        runner = Runner(timeout=timeout, dims={s: given.get(s, 64) for s in syms}, target=target,
                        repeat=7 if gpu else 3, min_seconds=0.01 if gpu else 0.02)
        cfg = SearchConfig(trials=trials, time_budget=time_budget, seed=seed, target=target, confirm=confirm)
        out = tune_module(src.module, cfg, Database(db_path), runner, quiet=quiet)
        write_module(out, output, src)
    except MlcError as e:
        raise click.ClickException(str(e)) from None


__all__ = ["tune_cmd", "tune_module", "call_counts", "check_target", "final_schedule"]
