"""The one backend protocol: what a target kind provides to build and run an artifact.

As TVM's DeviceAPI + runtime.Module and tinygrad's Compiler + Program, each kind (`cpu` in
runtime/cpu.py, `cuda` in runtime/cuda.py) implements a small interface: `compile(prims)` ->
artifact sections, `load(artifact)` -> a `Library` of kernels, `vm(...)` -> the graph runtime that
calls them, and `alloc`/`copy_in`/`copy_out`/`sync` for its memory; per VM, a `Runner` holds the
device's run-time state (a stream, a workspace) and supplies allocation, copies and kernel launch
to the one graph walk (runtime/executor.py, runtime/vm.py). Everything else (the artifact writer in
build.py, the `Model` in model.py, the kernel cache and metadata lookup below, the input check, the
walk, memory plan and tape) is written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
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
    from .tape import TapeEntry


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


class Launch(Protocol):
    """Starts one kernel on `bufs` (arguments then outputs) with dim values `kd`; adds each call's
    seconds to `timings[name]` when given; with `record`, hands each launch to it as a `TapeEntry`
    plus its (argument position, buffer index) pairs, so that the walk can patch inputs and outputs."""

    def __call__(self, bufs: list[Any], kd: list[int], timings: dict[str, list[float]] | None,
                 record: Callable[[TapeEntry, list[tuple[int, int]]], None] | None) -> None: ...


class Runner(Protocol):
    """What the graph walk needs from a device, per VM."""

    kind: str
    host: bool  # values are numpy arrays of this process (no copies around host-only nodes)
    records: bool  # straight-line runs may be recorded as tapes
    fresh_results: bool  # a replayed tape allocates new outputs (else it reuses the recorded ones)
    generation: int  # bumped when memory a tape may point to moves

    def copy_in(self, a: np.ndarray) -> Any: ...

    def copy_out(self, v: Any) -> Any: ...

    def to_host(self, v: Any) -> Any: ...

    def from_host(self, v: Any) -> Any: ...

    def match(self, val: Any, ty: Any, dims: dict[str, int], what: str, loc: Any) -> None: ...

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...

    def alloc_bytes(self, n: int) -> Any: ...

    def view(self, mem: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any: ...

    def address(self, t: Any) -> int: ...

    def prepare_args(self, args: list[Any], func: str, loc: Any) -> list[Any]: ...

    def launcher(self, kernel: Any, func: str, loc: Any) -> Launch: ...

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
