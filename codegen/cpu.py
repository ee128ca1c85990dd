"""The host CPU as LLVM's target machine.

LLVM only emits AVX2/FMA/AVX-512 instructions when told the CPU name and feature string; what the
CPU is comes from the target (`ir.target`, detected from the running machine), and this module
adds what only code generation needs: an LLVM `TargetMachine` for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm

from ..ir.target import CpuInfo, Target


@cache
def init_llvm() -> None:
    """Initialise LLVM's native target, asm printer and parser once per process."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


@dataclass(frozen=True)
class CpuTarget(CpuInfo):
    """A CPU to compile for (triple, CPU name, feature string; threads are a run-time setting)."""

    def target_machine(self, opt_level: int = 3) -> llvm.TargetMachine:
        init_llvm()
        tgt = llvm.Target.from_triple(self.triple)
        # PIC so that an emitted object file can be linked into a shared library or loaded by the JIT.
        return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=opt_level, reloc="pic",
                                         codemodel="default")


@cache
def host_target() -> CpuTarget:
    """The machine we run on (the cpu target's CPU), with every feature LLVM detects (AVX2, FMA, AVX-512, ...)."""
    info = Target.parse("cpu").cpu_info()
    return CpuTarget(info.triple, info.cpu, info.features)
