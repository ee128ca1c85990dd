"""What to compile for: one `Target`, parsed once from a spec string against configs/targets/*.yaml.

Every stage that depends on the machine (schedule rules, the tuning database's record keys, the
build pipeline, the code generators, the artifact's metadata) reads `target.kind` and the fields
here instead of re-parsing a string, so all accept the same spellings (`ALIASES`). A CUDA target
names its arch, so a CUDA artifact is built without asking a GPU; the cpu target's CPU facts are
read from the host lazily (through llvmlite, only when asked), as LLVM needs them to emit AVX2/AVX-512.

Spellings: a target file's name (`cpu`, `cuda-sm90`), an alias (`llvm`, `host`, `gpu`, ...), or
`cuda:sm_80` (the CUDA target with another arch).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources
from pathlib import Path

from .diagnostics import Loc, MlcError

# spelling -> target file (configs/targets/<name>.yaml); the one table of aliases
ALIASES: dict[str, str] = {
    "cpu": "cpu", "llvm": "cpu", "host": "cpu", "x86": "cpu", "x86_64": "cpu",
    "cuda": "cuda-sm90", "gpu": "cuda-sm90", "nvidia": "cuda-sm90",
}
KINDS = ("cpu", "cuda")
_ARCH = re.compile(r"sm_\d{2,3}a?")


@dataclass(frozen=True)
class CpuInfo:
    """A CPU as LLVM names it: triple, CPU name and feature string (`+avx2,+fma,...`)."""

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


@cache
def host_cpu() -> CpuInfo:
    """The machine we run on, with every feature LLVM detects (AVX2, FMA, AVX-512, ...)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # pragma: no cover - LLVM cannot read features on this host
        features = ""
    return CpuInfo(llvm.get_process_triple(), llvm.get_host_cpu_name(), features)


@dataclass(frozen=True)
class Target:
    """One target file's fields; `kind` is what code dispatches on (cpu | cuda)."""

    kind: str
    name: str  # the target file it came from (configs/targets/NAME.yaml)
    cpu: str = "host"  # cpu: only the host is supported (its CPU is detected, `cpu_info`)
    threads: str = "all"
    arch: str = ""  # cuda: sm_XY
    max_threads_per_block: int = 1024
    max_shared_bytes_per_block: int = 49152
    warp_size: int = 32
    tensor_cores: str = ""

    @staticmethod
    def parse(spec: str | Target | None, loc: Loc | None = None) -> Target:
        """A target from its spelling (None or "": cpu); an unknown one is an error listing the known ones."""
        if isinstance(spec, Target):
            return spec
        text = (spec or "cpu").strip().lower()
        base, _, arch = text.partition(":")
        configs = _configs()
        t = configs.get(ALIASES.get(base, base))
        if t is None or (arch and t.kind != "cuda"):
            known = sorted(set(ALIASES) | set(configs))
            raise MlcError(f"unknown target '{spec}' (known: {', '.join(known)}, or cuda:sm_XY)", loc)
        if arch:
            if not _ARCH.fullmatch(arch):
                raise MlcError(f"target '{spec}': CUDA arch must look like sm_80 or sm_90a", loc)
            t = replace(t, arch=arch)
        return t

    @property
    def gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def key(self) -> str:
        """Which machines measurements apply to (tuning records): `cpu:<llvm cpu name>`, `cuda:sm_XY`."""
        return f"cuda:{self.arch}" if self.gpu else f"cpu:{self.cpu_info().cpu}"

    @property
    def nvcc_arch(self) -> str:
        """The arch CUDA code is compiled for: Hopper's wgmma/setmaxnreg exist only in the arch-specific sm_90a."""
        return "sm_90a" if self.arch == "sm_90" else self.arch

    def cpu_info(self) -> CpuInfo:
        """The CPU code is generated for (the host's, detected on first use)."""
        if self.gpu:
            raise MlcError(f"target {self}: not a CPU target")
        return host_cpu()

    @property
    def cores(self) -> int:
        return (os.cpu_count() or 1) if self.threads == "all" else max(1, int(self.threads))

    def __str__(self) -> str:
        """The canonical spelling: parses back to this target."""
        default = _configs().get(self.name)
        return f"{self.kind}:{self.arch}" if self.gpu and default is not None and default.arch != self.arch else self.name


def targets_folder() -> Path:
    """configs/targets as package data (editable install or wheel alike)."""
    return Path(str(resources.files("mlc.configs").joinpath("targets")))


@cache
def _configs() -> dict[str, Target]:
    import yaml

    out: dict[str, Target] = {}
    known = {f.name for f in fields(Target)} - {"name"}
    for p in sorted(targets_folder().glob("*.yaml")):
        loc = Loc(str(p))
        doc = yaml.safe_load(p.read_text()) or {}
        if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
            raise MlcError(f"target file: 'kind' must be one of {', '.join(KINDS)}", loc)
        bad = sorted(set(doc) - known)
        if bad:
            raise MlcError(f"target file: unknown field(s) {', '.join(bad)}", loc)
        out[p.stem] = Target(name=p.stem, **{k: v if isinstance(v, int) and not isinstance(v, bool) else str(v)
                                             for k, v in doc.items()})
    return out


def known_targets() -> list[str]:
    """Every spelling `Target.parse` accepts (besides cuda:sm_XY)."""
    return sorted(set(ALIASES) | set(_configs()))
