"""The one backend protocol: what a target kind provides to build and run an artifact.

As TVM's DeviceAPI + runtime.Module and tinygrad's Compiler + Program, each kind (`cpu` in
runtime/cpu.py, `cuda` in runtime/cuda.py) implements a small interface: `compile(prims)` ->
artifact sections, `load(artifact)` -> a `Library` of kernels, `vm(...)` -> the graph runtime that
calls them, and `alloc`/`copy_in`/`copy_out`/`sync` for its memory. Everything else (the artifact
writer in build.py, the `Model` in model.py, the kernel cache and metadata lookup below, the input
check) is written once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Function
from mlc.ir.module import Module
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc

if TYPE_CHECKING:
    from .artifact import Artifact


@dataclass
class Compiled:
    """A device's code for an artifact: its sections, metadata entries and listings (--emit)."""

    sections: dict[str, bytes]
    meta: dict[str, object] = field(default_factory=dict)
    llvm_ir: str = ""
    asm: str = ""


class Library:
    """Kernels loaded on a device with their JSON metadata (`codegen.abi.kernel_metadata`, or the
    CUDA codegen's): one lookup, each kernel made once."""

    def __init__(self, metadata: str | bytes, what: str):
        try:
            self.metadata: dict[str, dict[str, Any]] = {k["name"]: k for k in json.loads(metadata)["kernels"]}
        except (ValueError, KeyError, TypeError) as e:
            raise MlcError(f"corrupt kernel metadata in {what}: {e}") from None
        self.cache: dict[str, Any] = {}

    @property
    def names(self) -> list[str]:
        return list(self.metadata)

    def kernel(self, name: str) -> Any:
        k = self.cache.get(name)
        if k is None:
            meta = self.metadata.get(name)
            if meta is None:
                raise MlcError(f"no kernel named {name!r} (have: {', '.join(self.metadata) or 'none'})")
            k = self.cache[name] = self.make_kernel(name, meta)
        return k

    def make_kernel(self, name: str, meta: dict[str, Any]) -> Any:
        raise NotImplementedError


class Device(Protocol):
    """One target kind's compiler, loader and memory."""

    kind: str

    def compile(self, prims: Sequence[PrimFunc], target: Target, emit: tuple[str, ...] = (),
                opt_level: int = 3) -> Compiled: ...

    def load(self, art: Artifact, name: str) -> Library | None: ...

    def vm(self, module: Module, params: Mapping[str, np.ndarray], library: Library | None,
           guard: str | None = None) -> Any: ...

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...

    def copy_in(self, a: np.ndarray) -> Any: ...

    def copy_out(self, t: Any) -> np.ndarray: ...

    def sync(self) -> None: ...


def device(kind: str) -> Device:
    """The device of a target kind (imported on first use: cuda needs pycuda only to load and run)."""
    if kind == "cpu":
        from .cpu import CPU

        return CPU
    if kind == "cuda":
        from .cuda import CUDA

        return CUDA
    raise MlcError(f"unknown device {kind!r} (mlc runs on cpu or cuda)")


def check_inputs(module: Module, inputs: Mapping[str, Any], func: str = "main") -> Function:
    """`func` of `module`, when `inputs` names exactly its parameters; else the error listing them."""
    fn = module.get(func)
    if not isinstance(fn, Function):
        raise MlcError(f"@{func} is not a graph function")
    names = [p.name for p in fn.params]
    missing = [n for n in names if n not in inputs]
    unknown = [n for n in inputs if n not in names]
    if missing or unknown:
        raise MlcError(f"@{func} takes inputs {', '.join(names)}"
                       + (f"; missing {', '.join(missing)}" if missing else "")
                       + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    return fn
