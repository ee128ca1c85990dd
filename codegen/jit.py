"""Tensor programs to native object code: LLVM IR from `codegen.llvm`, optimised with the O3
pipeline for the target CPU, emitted as a relocatable object file.

Only generation lives here; loading the object into the process and calling its kernels is the
runtime's (runtime/cpu.py), so the bytes an artifact keeps are exactly what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llvmlite.binding as llvm

from ..ir.diagnostics import MlcError
from ..ir.tir import PrimFunc
from .cpu import CpuTarget, host_target, init_llvm
from .llvm import lower_to_llvm


@dataclass
class CpuObject:
    """An object file of kernels, with the optimised module it came from (for listings)."""

    object_code: bytes
    target: CpuTarget
    module: llvm.ModuleRef | None = None

    def llvm_ir(self) -> str:
        """The optimised LLVM IR (only for objects compiled in this process)."""
        if self.module is None:
            raise MlcError("LLVM IR is not available for a library loaded from object code")
        return str(self.module)

    def emit_asm(self) -> str:
        """Assembly of the optimised module, as the target machine prints it."""
        if self.module is None:
            raise MlcError("assembly is not available for a library loaded from object code")
        return self.target.target_machine().emit_assembly(self.module)


def optimize(mod: llvm.ModuleRef, target: CpuTarget, opt_level: int) -> None:
    """Run LLVM's standard O<level> pipeline (with loop and SLP vectorizers) on `mod` in place."""
    tm = target.target_machine(opt_level)
    pto = llvm.PipelineTuningOptions(speed_level=opt_level)
    pto.loop_vectorization = opt_level >= 2
    pto.slp_vectorization = opt_level >= 2
    pto.loop_unrolling = opt_level >= 2
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def compile_ir(text: str, target: CpuTarget, opt_level: int = 3) -> tuple[llvm.ModuleRef, bytes]:
    """Parse, verify, optimise LLVM IR text and emit an object file."""
    init_llvm()
    mod = llvm.parse_assembly(text)
    mod.verify()
    optimize(mod, target, opt_level)
    return mod, target.target_machine(opt_level).emit_object(mod)


def compile_object(funcs: Sequence[PrimFunc], target: CpuTarget | None = None, opt_level: int = 3) -> CpuObject:
    """PrimFuncs -> an object file for `target` (the host by default)."""
    target = target or host_target()
    mod, obj = compile_ir(lower_to_llvm(list(funcs), target), target, opt_level)
    return CpuObject(obj, target, mod)
