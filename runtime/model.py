"""`mlc.load(path)`: a compiled model as a Python callable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Function

from .artifact import Artifact, read
from .vm import VM, KernelTime

_OBJECT_MAGICS = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\x64\x86", b"\x64\xaa")  # ELF, Mach-O, COFF


class Model:
    """`outputs = model(x=array, ...)`: runs the artifact's `main` with its compiled kernels."""

    def __init__(self, art: Artifact, name: str = "<artifact>", guard: str | None = None):
        from mlc.codegen.jit import link_object
        from mlc.ir.parser import parse_module

        try:
            program = art.sections["program"].decode()
        except (KeyError, UnicodeDecodeError):
            raise MlcError(f"{name}: artifact has no readable program section") from None
        self.module = parse_module(program, f"{name}:program")
        self.meta = art.meta
        obj = art.sections.get("object", b"")
        if obj and not obj.startswith(_OBJECT_MAGICS):  # llvmlite would crash the process on it
            raise MlcError(f"{name}: artifact's object section is not native object code")
        if obj:
            check_host(art.meta, name)
        self.library = link_object(obj) if obj else None
        self.params = art.params()
        self.vm = VM(self.module, self.params, self.library, guard)

    @property
    def input_names(self) -> list[str]:
        fn = self.module.get("main")
        assert isinstance(fn, Function)
        return [p.name for p in fn.params]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.vm.run(inputs)

    def profile(self, runs: int = 50, **inputs: np.ndarray) -> list[KernelTime]:
        """Per-kernel times inside `runs` whole runs on these inputs, slowest first."""
        return self.vm.profile(inputs, runs)

    def memory_plan(self, dims: dict[str, int]) -> tuple[int, int]:
        """(planned bytes, bytes without reuse) of `main`'s intermediates for these dims."""
        return self.vm.plans["main"].evaluate(dims)


def load(path: str | Path, device: str | None = None) -> Any:
    """The artifact as a callable: a `Model` (CPU) or a `CudaModel`, by the target it was built for."""
    return model_from_artifact(read(path), str(path), device)


def check_host(meta: dict[str, Any], name: str) -> None:
    """Native code runs only where it was built for: another architecture aborted inside LLVM, and a
    missing CPU feature (AVX512-FP16, say) killed the process with SIGILL at the first call."""
    from mlc.codegen.cpu import host_target

    host = host_target()
    triple = meta.get("triple")
    if isinstance(triple, str) and triple.split("-")[0] != host.triple.split("-")[0]:
        raise MlcError(f"{name}: built for {triple}, this machine is {host.triple} (rebuild it here with mlc build)")
    need = meta.get("cpu_features")
    if isinstance(need, list):
        missing = sorted(set(map(str, need)) - host.feature_set)
        if missing:
            raise MlcError(f"{name}: built for a CPU ({meta.get('cpu', '?')}) with features this one "
                           f"({host.cpu}) lacks: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} "
                           f"(rebuild it here with mlc build)")


def model_from_artifact(art: Artifact, name: str, device: str | None = None) -> Any:
    """A `Model` (CPU) or a `CudaModel` for an artifact already in memory, by the target it was built for."""
    target = str(art.meta.get("target", "cpu"))
    if target not in ("cpu", "cuda"):
        raise MlcError(f"{name}: unknown target {target!r} in the artifact (mlc builds for cpu or cuda)")
    want = device or target
    if want != target:
        raise MlcError(f"{name}: built for {target}, cannot run on {want} (rebuild with --target {want})")
    if target == "cuda":
        from .cuda_build import CudaModel

        return CudaModel(art, name)
    return Model(art, name)
