"""`mlc.load(path)`: a compiled model as a Python callable, on the device it was built for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Function
from mlc.ir.interrupt import run_region
from mlc.ir.target import KINDS

from .artifact import Artifact, read
from .device import check_inputs, device
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
        self._entries: dict[tuple[str, ...], HostEntry] = {}  # input names -> the host fast path

    @property
    def input_names(self) -> list[str]:
        fn = self.module.get("main")
        assert isinstance(fn, Function)
        return [p.name for p in fn.params]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        names = tuple(inputs)
        entry = self._entries.get(names)
        if entry is not None:
            out = entry(inputs)
            if out is not None:
                return out
        out = self.vm.run(inputs)
        if entry is None and len(self._entries) < 16:
            made = host_entry(self.vm, inputs)
            if made is not None:
                self._entries[names] = made
        return out

    def profile(self, runs: int = 50, **inputs: np.ndarray) -> list[KernelTime]:
        """Per-kernel times inside `runs` whole runs on these inputs, slowest first."""
        if not hasattr(self.vm, "profile"):
            raise MlcError(f"profile is not supported on {self.device.kind}")
        return self.vm.profile(inputs, runs)

    def memory_plan(self, dims: dict[str, int]) -> tuple[int, int]:
        """(planned bytes, bytes without reuse) of `main`'s intermediates for these dims."""
        return self.vm.plans["main"].evaluate(dims)


@dataclass(frozen=True)
class HostEntry:
    """`VM.run` for host arrays passed by the names it has already checked, without its per-call
    work that such arrays do not need: no input check (done once for these names), no
    `np.require` copy-in (C-contiguous ndarrays are used as they are); the executor then finds the
    tape by shapes and dtypes and replays it natively. Anything else (another type, a strided
    view) returns None and takes `VM.run`. Results are fresh copies, as `VM.run` returns: a
    caller's earlier results are never overwritten."""

    names: tuple[str, ...]  # the function's parameters, in order
    results: tuple[str, ...]
    executor: Any
    copy_out: Any

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        args = [inputs[n] for n in self.names]
        for a in args:
            if type(a) is not np.ndarray or not a.flags.c_contiguous:
                return None
        with run_region():  # as VM.run: computes in memory only (the CLI's SIGINT may end it)
            outs = self.executor.run(args)
        copy_out = self.copy_out
        return {n: copy_out(o) for n, o in zip(self.results, outs)}


def host_entry(vm: Any, inputs: dict[str, np.ndarray]) -> HostEntry | None:
    """The fast path of `Model.__call__` for these input names, where the device is the host CPU
    and the VM replays tapes; None elsewhere."""
    runner = vm.runner
    if not (runner.host and runner.kind == "cpu" and runner.records and not runner.fresh_results):
        return None
    try:
        fn = check_inputs(vm.module, inputs)
    except MlcError:
        return None
    return HostEntry(tuple(p.name for p in fn.params), tuple(v.name for v in fn.body.results),
                     vm.executor(fn, nested=False), runner.copy_out)


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
