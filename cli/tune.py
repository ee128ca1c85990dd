"""`mlc tune M.ir --target cpu|cuda --trials N --time-budget S --db tune.jsonl -o t.ir`.

The search itself is library code (`mlc.tune`); this is the command around it. A module
that has no tensor programs yet (an imported graph) is lowered first with the `lower` pipeline
(configs/pipelines/lower.yaml), said on stderr; the pipeline flags (--print-after-all, --timing, ...)
apply to that lowering.

With `--target cuda` candidates come from the GPU rules and are measured on GPU 0 (pycuda + nvcc);
without a usable GPU the command fails up front with one message (the design space itself and the
CUDA source need no GPU, see tests/test_tune_cuda.py).

`--executor ray[:ADDRESS]` measures on Ray actors (`mlc.tune.distributed`; docs/distributed.md): it
joins or starts Ray through the index build's helper (`mlc.ann.executor`, the one place that calls
ray.init), and this process still searches and alone writes the database.
"""

from __future__ import annotations

import math
from typing import Any

import click
from mlc.ir.diagnostics import MlcError
from mlc.ir.module import Module

from .dims import dims_option
from .io import Source, read_module, write_module
from .main import Instrumentation, executor_option, handle_errors, parse_target, pipeline_options, target_option

DEFAULT_DIM = 64


@click.command("tune")
@click.argument("module_path", metavar="M.ir")
@target_option
@click.option("--trials", default=64, show_default=True, type=click.IntRange(min=0), help="measurements in all")
@click.option("--time-budget", default=math.inf, type=float, help="stop after this many seconds")
@click.option("--db", "db_path", default="tune.jsonl", show_default=True, help="tuning database (JSON lines)")
@dims_option("--dim", "dims", kind="int",
             help=f"value of a symbolic dim for measuring (default {DEFAULT_DIM}); repeatable")
@click.option("--timeout", default=20.0, show_default=True, help="seconds per candidate before it counts as failed")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--confirm", default=3, show_default=True, type=click.IntRange(min=0),
              help="at the end, re-measure each program's N fastest schedules twice; rank by the median (0: off)")
@click.option("--quiet", is_flag=True, help="no progress table")
@executor_option("where candidates are measured (Ray: actors, one per node or GPU)")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="with --executor ray: measurement actors (0: one per node for cpu, one per GPU for cuda)")
@click.option("-o", "--output", default="-", help="scheduled module (default: stdout)")
@pipeline_options
@handle_errors
def tune_cmd(module_path: str, target: str, trials: int, time_budget: float, db_path: str, dims: dict[str, int],
             timeout: float, seed: int, confirm: int, quiet: bool, executor: str, workers: int, output: str,
             instrument: Instrumentation) -> None:
    """Search schedules for every tensor program, measuring real builds; write the best-scheduled module.

    A module without tensor programs (not lowered yet) is first lowered with the `lower` pipeline."""
    from mlc.ann.executor import make_executor, parse_executor, require_ray
    from mlc.ir.expr import free_vars
    from mlc.ir.target import Target
    from mlc.passes.tune.database import Database
    from mlc.tune.measure import Measurer, Runner
    from mlc.tune.search import SearchConfig
    from mlc.tune.tuning import check_target, tune_module, unscheduled

    on_ray = parse_executor(executor)[0] == "ray"
    if workers and not on_ray:
        raise click.UsageError("--workers applies to --executor ray only (local measures one candidate at a time)")
    if on_ray:
        require_ray()  # without Ray installed, say so at once
    src = read_module(module_path, verify=instrument.verify_each)
    target = str(parse_target(target))
    if not on_ray:  # on Ray the GPUs are the cluster's, checked when the actors are placed
        check_target(target)
    db = Database(db_path)  # a bad database is an error before any work or note
    module, new_constants, lowered = src.module, None, None
    if not module.prim_functions():
        module, new_constants, lowered = _lower(src, instrument)
    prims = module.prim_functions()
    syms = {v.name for f in prims for b in f.params for d in b.shape for v in free_vars(d)}
    syms |= {v.name for f in prims for v in f.scalar_params}
    unknown = sorted(set(dims) - syms)
    if unknown:  # a typo must not silently measure another size
        raise MlcError(f"tune: --dim {', '.join(unknown)}: no such symbolic dim in {src.filename}'s tensor programs "
                       f"(theirs: {', '.join(sorted(syms)) or 'none, all static'})")
    if lowered is not None:  # said once the command's input is known to be good
        click.echo(f"mlc tune: {src.filename} had no tensor programs (not lowered): lowered it first with the "
                   f"'lower' pipeline ({', '.join(name for name, _ in lowered)})", err=True)
        instrument.report(lowered)
    if not unscheduled(module):
        click.echo(f"mlc tune: nothing to tune: {src.filename} has no unscheduled tensor programs", err=True)
    gpu = Target.parse(target).gpu
    runner = Runner(timeout=timeout, dims={s: dims.get(s, DEFAULT_DIM) for s in syms}, target=target,
                    repeat=7 if gpu else 3, min_seconds=0.01 if gpu else 0.02)
    cfg = SearchConfig(trials=trials, time_budget=time_budget, seed=seed, target=target, confirm=confirm)
    measurer: Measurer = runner
    if on_ray and unscheduled(module):
        from mlc.tune.distributed import RayRunner

        make_executor(executor)  # joins or starts Ray (one error line for an unreachable head)
        measurer = RayRunner(runner, workers=workers)
    out = tune_module(module, cfg, db, measurer, quiet=quiet)
    write_module(out, output, src, new_constants)


def _lower(src: Source, instrument: Instrumentation) -> tuple[Module, Any, list[tuple[str, float]]]:
    """The `lower` pipeline (the one `mlc opt -p configs/pipelines/lower.yaml` runs) over an imported module:
    the module, its constants if folding changed them (else None) and the passes' timings."""
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext

    from mlc.compiler import default_pipeline

    path = default_pipeline("lower")
    steps = load_pipeline(path)
    ctx = PassContext(search_dirs=src.search_dirs)
    if any(s.info.needs_constants for s in steps):
        ctx.constants = src.constants()
    module, report = run_pipeline(src.module, steps, ctx, **instrument.run_kwargs())
    return module, (ctx.constants if ctx.constants_changed else None), report.timings
