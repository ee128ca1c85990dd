"""schedule: give every tensor program of the module a schedule.

Per PrimFunc, in order of precedence: the trace file's trace for it, the tuning database's best
record for its workload (on this target and mlc version), else the default rules. A function that
already carries a `schedule` attribute is left alone, so the pass is idempotent. A database record
that no longer replays (the program or the primitives changed) is a warning naming the failing
instruction, and the next-best source is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from mlc.ir.diagnostics import MlcError
from mlc.ir.files import read_bytes
from mlc.ir.module import Module
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_lower import is_lowered
from mlc.ir.tir_visit import has_loop

from .registry import ModulePass, PassContext, option, register_pass
from .schedule.trace import Trace


def load_traces(path: str) -> dict[str, Trace] | Trace:
    """A trace file: one trace (for every function) or {"function name": trace, ...}."""
    text = read_bytes(path, f"trace file '{path}'").decode(errors="replace")  # bounded; a FIFO is not waited on
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MlcError(f"{path}:{e.lineno}:{e.colno}: error: invalid JSON: {e.msg}") from None
    if isinstance(data, dict) and "insts" in data:
        return Trace.from_json(text)
    if not isinstance(data, dict):
        raise MlcError(f"{path}: error: expected a trace or an object of function name -> trace")
    return {str(k): Trace.from_json(json.dumps(v)) for k, v in data.items()}


def _mark(func: PrimFunc, how: str) -> PrimFunc:
    attrs = tuple(sorted(dict(func.attrs, schedule=how).items()))
    return replace(func, attrs=attrs)


def schedule_func(func: PrimFunc, target: str | Target, db: object | None = None, trace: Trace | None = None,
                  rules: bool = True, ctx: PassContext | None = None) -> PrimFunc:
    """One function's schedule from a trace, the database, or the rules (see module doc); a record
    that no longer replays is a warning through `ctx` (a fresh context's default sink without one)."""
    from .tune.database import Database, workload_key

    ctx = ctx or PassContext()
    if trace is not None:
        return _mark(trace.apply(func), "trace")
    if isinstance(db, Database):
        for rec in db.best(workload_key(func), Target.parse(target).key, k=3):
            try:
                return _mark(rec.trace.apply(func), "tuned")
            except MlcError as e:
                ctx.warning(f"schedule: tuning record for {func.name} no longer replays: {e.message}")
    if rules:
        from .tune.space import design_space

        return _mark(design_space(target).default(func).func, "default")
    return func


@register_pass
@dataclass(frozen=True)
class SchedulePass(ModulePass):
    """Apply schedules: trace file, else tuning database, else default per-target rules."""

    name: ClassVar[str] = "schedule"
    target: str = option("", "a target (cpu, cuda, cuda:sm_80, ...; default: the pipeline's)")
    db: str = option("", "tuning database (JSON lines) whose best records to apply")
    trace: str = option("", "trace JSON file: one trace, or an object function name -> trace")
    rules: bool = option(True, "schedule functions without a trace or record by the default rules")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        return schedule_module(module, Target.parse(self.target or ctx.target), self.db, self.trace, self.rules, ctx)


def schedule_module(module: Module, tgt: Target, db: str, trace: str, rules: bool, ctx: PassContext) -> Module:
    """Schedule every PrimFunc not yet scheduled (a `schedule` attribute marks the done ones)."""
    from .tune.database import Database, mlc_version

    traces = load_traces(trace) if trace else {}
    database = Database(db) if db and Path(db).exists() else None
    stale = database.stale_versions(tgt.key) if database is not None else []
    if stale:  # a database that silently did nothing would look like a tuning that did not help
        ctx.warning(f"schedule: {db} holds records of mlc {', '.join(stale)} only; "
                    f"mlc {mlc_version()} does not apply them (re-run mlc tune)")
    for f in module.prim_functions():
        if any(k == "schedule" for k, _ in f.attrs) or (is_lowered(f) and not has_loop(f.body)):
            continue  # scheduled already, or nothing to schedule
        if is_lowered(f):  # schedules act on blocks: marking it 'default' would claim what did not happen
            raise MlcError(f"schedule: @{f.name} is loop-level IR (lower-tir has run): schedule block-form "
                           "tensor programs, before lower-tir", f.loc)
        tr = traces if isinstance(traces, Trace) else traces.get(f.name)
        try:
            new = schedule_func(f, tgt, database, tr, rules, ctx)
        except MlcError as e:
            raise MlcError(f"schedule: @{f.name}: {e.message}", e.loc, e.source_line) from None
        module = module.with_function(new)
    return module

