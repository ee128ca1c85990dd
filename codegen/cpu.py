"""Host CPU description for LLVM code generation.

LLVM only emits AVX2/FMA/AVX-512 instructions when told the CPU name and feature string, so the
target is detected once from the running machine (`host_target`) and can be overridden for
cross-compiling an object file for another x86 machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm


@cache
def init_llvm() -> None:
    """Initialise LLVM's native target, asm printer and parser once per process."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


@dataclass(frozen=True)
class CpuTarget:
    """What to compile for: triple, CPU name and LLVM feature string (threads are a run-time setting)."""

    triple: str
    cpu: str
    features: str

    @property
    def feature_set(self) -> frozenset[str]:
        return frozenset(f[1:] for f in self.features.split(",") if f.startswith("+"))

    def has(self, feature: str) -> bool:
        return feature in self.feature_set

    @property
    def vector_bits(self) -> int:
        """Widest native SIMD register: 512 with AVX-512F, 256 with AVX, else 128 (SSE/NEON)."""
        if self.has("avx512f"):
            return 512
        if self.has("avx") or self.has("avx2"):
            return 256
        return 128

    def lanes(self, elem_bits: int = 32) -> int:
        """Elements of `elem_bits` per native vector register."""
        return max(1, self.vector_bits // elem_bits)

    def target_machine(self, opt_level: int = 3) -> llvm.TargetMachine:
        init_llvm()
        tgt = llvm.Target.from_triple(self.triple)
        # PIC so that an emitted object file can be linked into a shared library or loaded by the JIT.
        return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=opt_level, reloc="pic",
                                         codemodel="default")


@cache
def host_target() -> CpuTarget:
    """The machine we run on, with every feature LLVM detects (AVX2, FMA, AVX-512, ...)."""
    init_llvm()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # pragma: no cover - LLVM cannot read features on this host
        features = ""
    return CpuTarget(llvm.get_process_triple(), llvm.get_host_cpu_name(), features)
