"""`mlc.load(path)`: a compiled model as a Python callable, on the device it was built for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Function
from mlc.ir.target import KINDS

from .artifact import Artifact, read
from .device import device
from .vm import KernelTime


class Model:
    """`outputs = model(x=array, ...)`: runs the artifact's `main` with its compiled kernels (inputs
    and outputs are host arrays on every device)."""

    def __init__(self, art: Artifact, name: str = "<artifact>", guard: str | None = None):
        from mlc.ir.parser import parse_module

        self.meta = art.meta
        self.device = device(str(art.meta.get("target", "cpu")))
        try:
            program = art.sections["program"].decode()
        except (KeyError, UnicodeDecodeError):
            raise MlcError(f"{name}: artifact has no readable program section") from None
        self.module = parse_module(program, f"{name}:program")
        self.library = self.device.load(art, name)
        self.params = art.params()
        self.vm = self.device.vm(self.module, self.params, self.library, guard)

    @property
    def input_names(self) -> list[str]:
        fn = self.module.get("main")
        assert isinstance(fn, Function)
        return [p.name for p in fn.params]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.vm.run(inputs)

    def profile(self, runs: int = 50, **inputs: np.ndarray) -> list[KernelTime]:
        """Per-kernel times inside `runs` whole runs on these inputs, slowest first."""
        if not hasattr(self.vm, "profile"):
            raise MlcError(f"profile is not supported on {self.device.kind}")
        return self.vm.profile(inputs, runs)

    def memory_plan(self, dims: dict[str, int]) -> tuple[int, int]:
        """(planned bytes, bytes without reuse) of `main`'s intermediates for these dims."""
        return self.vm.plans["main"].evaluate(dims)


def load(path: str | Path, device: str | None = None) -> Model:
    """The artifact as a callable `Model` on the device it was built for."""
    return model_from_artifact(read(path), str(path), device)


def model_from_artifact(art: Artifact, name: str, device: str | None = None) -> Model:
    """A `Model` for an artifact already in memory; `device` must be the kind it was built for."""
    target = str(art.meta.get("target", "cpu"))
    if target not in KINDS:
        raise MlcError(f"{name}: unknown target {target!r} in the artifact (mlc builds for {' or '.join(KINDS)})")
    want = device or target
    if want != target:
        raise MlcError(f"{name}: built for {target}, cannot run on {want} (rebuild with --target {want})")
    return Model(art, name)
