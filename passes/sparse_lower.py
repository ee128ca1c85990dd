"""sparse-lower: sparse tensor programs (stage I, coordinate space) -> position space -> flat buffers.

The lowering is ir/sparse_lower.py; this pass runs it over every PrimFunc (dense ones are left as
they are, so the pass is a no-op on dense modules and sits in every CPU build). With `schedule`
(on in configs/pipelines/build-cpu.yaml), each stage-III function the lowering produced gets the
default sparse CPU schedule through the schedule primitives: the outer loop of every nest (rows, or
with `parts` the parts of rows of equal nonzeros) in parallel, the innermost loop vectorized when it is spatial with a constant extent (the feature
dim). The default rules' tiling reorders loops, which a row extent read from indptr forbids, so a
function scheduled here is marked `schedule = "sparse"` and the schedule pass leaves it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Var
from mlc.ir.module import Module
from mlc.ir.sparse_lower import is_sparse, lower_sparse
from mlc.ir.tir import BlockStmt, PrimFunc

from .registry import ModulePass, PassContext, option, register_pass


def sparse_cpu_schedule(func: PrimFunc) -> PrimFunc:
    """Rows in parallel, the feature loop vectorized (see module doc); marks the function scheduled."""
    from .schedule.schedule import Schedule

    sch = Schedule(func)
    for rv in sch.get_blocks():
        loops = sch.get_loops(rv)
        if not loops:
            continue
        block = sch.get(rv)
        assert isinstance(block, BlockStmt)
        kinds = {iv.binding.name: iv.kind for iv in block.iters if isinstance(iv.binding, Var)}
        outer, inner = sch.get(loops[0]), sch.get(loops[-1])
        if outer.kind != "parallel" and kinds.get(outer.var.name, "S") == "S":  # type: ignore[union-attr]
            sch.parallel(loops[0])  # rows, or parts of rows (bound to no iterator)
        if len(loops) > 1 and kinds.get(inner.var.name) == "S" and arith.as_int(inner.extent) is not None:  # type: ignore[union-attr]
            sch.vectorize(loops[-1])
    attrs = tuple(sorted(dict(sch.func.attrs, schedule="sparse").items()))
    return replace(sch.func, attrs=attrs)


@register_pass
@dataclass(frozen=True)
class SparseLower(ModulePass):
    """Lower sparse tensor programs: sparse iterations to position-space loops (stage 2), then to
    flat value arrays (stage 3); dense programs are left as they are."""

    name: ClassVar[str] = "sparse-lower"
    stage: int = option(3, "stop after stage 2 (position space: loops, blocks, sparse buffers) or 3 (flat buffers)")
    schedule: bool = option(False, "give the stage-3 result the default sparse CPU schedule (rows parallel, "
                                   "feature dim vectorized)")
    parts: int = option(0, "split the rows of CSR iterations into this many parts of equal nonzeros "
                           "(0: one loop over rows; a program's `sparse_parts` attribute, set by a tuned "
                           "sparse-format, overrides it)")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if self.stage not in (2, 3):
            raise MlcError(f"sparse-lower: --stage must be 2 or 3, got {self.stage}")
        if not 0 <= self.parts <= 4096:
            raise MlcError(f"sparse-lower: --parts must be in [0, 4096], got {self.parts}")
        for f in module.prim_functions():
            if not is_sparse(f):
                continue
            try:
                parts = dict(f.attrs).get("sparse_parts", self.parts)  # a tuned program's own (sparse-format auto)
                new = lower_sparse(f, self.stage, int(parts) if isinstance(parts, int) else self.parts)
                if self.schedule and self.stage == 3:
                    new = sparse_cpu_schedule(new)
            except MlcError as e:
                raise MlcError(f"sparse-lower: @{f.name}: {e.message}", e.loc or f.loc, e.source_line) from None
            module = module.with_function(new)
        return module
