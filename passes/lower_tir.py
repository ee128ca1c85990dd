"""lower-tir: scheduled block-form tensor programs -> the loop-level subset the code generators consume.

The lowering itself, loop partition included, is ir/tir_lower.py (`lower_tir_func`), in ir/ so that
a code generator handed block form (a test or the tuner compiling a PrimFunc directly) lowers it
through the same function without importing passes/. This pass runs it over every PrimFunc of the
module; it is the last step of the build pipelines, so `mlc build --print-after-all` shows exactly
what codegen receives (and what the tuner measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mlc.ir.diagnostics import MlcError
from mlc.ir.module import Module
from mlc.ir.tir_lower import lower_tir_func

from .registry import ModulePass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class LowerTir(ModulePass):
    """Blocks to loops: iterators let-bound, init guarded, allocations explicit, cross-thread
    reductions and tensorized GEMMs explicit statements; then loops whose tile guards hold on a
    prefix are partitioned into a guard-free main part and a remainder (ir/loop_partition.py)."""

    name: ClassVar[str] = "lower-tir"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        for f in module.prim_functions():
            try:
                module = module.with_function(lower_tir_func(f))
            except MlcError as e:
                raise MlcError(f"lower-tir: @{f.name}: {e.message}", e.loc, e.source_line) from None
        return module
