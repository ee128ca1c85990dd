"""Host CPU description for LLVM code generation.

LLVM only emits AVX2/FMA/AVX-512 instructions when told the CPU name and feature string, so the
target is detected once from the running machine (`host_target`) and can be overridden for
cross-compiling an object file for another x86 machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
    """What to compile for: triple, CPU name, LLVM feature string and worker threads."""

    triple: str
    cpu: str
    features: str
    num_threads: int = field(default=1)

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
def host_target(num_threads: int | None = None) -> CpuTarget:
    """The machine we run on; `num_threads` defaults to the CPUs this process may use."""
    init_llvm()
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            num_threads = os.cpu_count() or 1
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # pragma: no cover - LLVM cannot read features on this host
        features = ""
    return CpuTarget(llvm.get_process_triple(), llvm.get_host_cpu_name(), features, max(1, num_threads))
