"""The cuda device's run-time half: device tensors and the `Runner` the one graph walk uses.

Values live in device memory; every `call_tensor` launches compiled kernels on the VM's stream
(`CudaRunner.launcher`) and its result lives in the arena of its memory-plan token (runtime/vm.py).
Kernel temporaries share one workspace, safe because launches are ordered on the stream. A replayed
tape allocates fresh results, since `run_device` hands them to the caller.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.interp import match_type
from mlc.ir.module import Module
from mlc.ir.types import TupleType

from .cuda import CUDA, cuda_context
from .tape import TapeEntry
from .vm import VM


class DeviceTensor:
    """A C-contiguous tensor in device memory (`owner` keeps its allocation alive)."""

    __slots__ = ("ptr", "shape", "dtype", "owner")

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, owner: Any):
        self.ptr, self.shape, self.dtype, self.owner = ptr, shape, dtype, owner

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def get(self) -> np.ndarray:
        import pycuda.driver as drv

        out = np.empty(self.shape, self.dtype)
        if out.nbytes:
            drv.memcpy_dtoh(out, self.ptr)
        return out


def to_device(a: np.ndarray) -> DeviceTensor:
    import pycuda.driver as drv

    a = np.require(a, requirements="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
    mem = drv.mem_alloc(max(1, a.nbytes))
    if a.nbytes:
        drv.memcpy_htod(mem, a)
    return DeviceTensor(int(mem), a.shape, a.dtype, mem)


def _to_host(v: Any) -> Any:
    if isinstance(v, DeviceTensor):
        return v.get()
    if isinstance(v, tuple):
        return tuple(_to_host(x) for x in v)
    return v


def _to_dev(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return to_device(v)
    if isinstance(v, tuple):
        return tuple(_to_dev(x) for x in v)
    return v


def match_device(val: Any, ty: Any, dims: dict[str, int], what: str, loc: Any) -> None:
    if isinstance(val, DeviceTensor):
        proxy = np.broadcast_to(np.zeros((), val.dtype), val.shape)  # shape and dtype only, no copy
        match_type(proxy, ty, dims, what, loc)
    elif isinstance(val, tuple) and isinstance(ty, TupleType):
        for k, (v, t) in enumerate(zip(val, ty.fields)):
            match_device(v, t, dims, f"{what}[{k}]", loc)
    else:
        match_type(val, ty, dims, what, loc)


class CudaRunner:
    """The graph walk's view of the GPU: device tensors, kernels launched on this VM's stream.
    Kernel temporaries share one workspace, safe because launches are ordered on the stream."""

    kind, host, records, fresh_results = "cuda", False, True, True

    def __init__(self) -> None:
        cuda_context()
        import pycuda.driver as drv

        self.stream = drv.Stream()
        self.generation = 0  # bumped when an arena or the workspace moves (tapes hold their addresses)
        self._ws: Any = None
        self._ws_size = 0

    def copy_in(self, a: np.ndarray) -> DeviceTensor:
        return to_device(np.asarray(a))

    def copy_out(self, v: Any) -> Any:
        return _to_host(v)

    def to_host(self, v: Any) -> Any:
        return _to_host(v)

    def from_host(self, v: Any) -> Any:
        return _to_dev(v)

    def match(self, val: Any, ty: Any, dims: dict[str, int], what: str, loc: Any) -> None:
        match_device(val, ty, dims, what, loc)

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        return CUDA.alloc(shape, dtype)

    def alloc_bytes(self, n: int) -> Any:
        import pycuda.driver as drv

        return drv.mem_alloc(n)

    def view(self, mem: Any, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        return DeviceTensor(int(mem), shape, dtype, mem)

    def address(self, t: DeviceTensor) -> int:
        return t.ptr

    def prepare_args(self, args: list[Any], func: str, loc: Any) -> list[Any]:
        for a in args:
            if not isinstance(a, DeviceTensor):
                raise MlcError(f"call_tensor @{func}: argument is not a tensor on the device", loc)
        return list(args)

    def _workspace(self, sizes: list[int]) -> list[int]:
        import pycuda.driver as drv

        aligned = [(s + 255) // 256 * 256 for s in sizes]
        total = sum(aligned)
        if total > self._ws_size:
            self._ws = drv.mem_alloc(total)
            self._ws_size = total
            self.generation += 1
        base, out = int(self._ws), []
        for s in aligned:
            out.append(base)
            base += s
        return out

    def launcher(self, kernel: Any, func: str, loc: Any) -> Callable[..., None]:
        stream, dims = self.stream, kernel.dims

        def launch(bufs: list[DeviceTensor], kd: list[int], timings: Any,
                   record: Callable[[TapeEntry, list[tuple[int, int]]], None] | None) -> None:
            rec: list[tuple[Any, ...]] | None = [] if record is not None else None
            kernel.launch([a.ptr for a in bufs], dict(zip(dims, kd)), stream, self._workspace, rec)
            if record is not None:
                for fnc, grid, block, shared, fmt, _nptr, args in rec or ():
                    record(TapeEntry(_launch_packed, list(args), (fnc, grid, block, shared, fmt, stream), [], func),
                           [(k, k) for k in range(len(bufs))])

        return launch

    def sync(self) -> None:
        self.stream.synchronize()


class CudaVM(VM):
    """The graph VM on the GPU: `run(inputs)` -> host outputs; `run_device(inputs)` keeps
    everything on the device (call `.get()` on its results)."""

    def __init__(self, module: Module, params: Mapping[str, np.ndarray], library: Any):
        super().__init__(module, params, library, CudaRunner())


def _launch_packed(args: list[int], extra: tuple[Any, ...]) -> None:
    fnc, grid, block, shared, fmt, stream = extra
    fnc._launch_kernel(grid, block, struct.pack(fmt, *args), shared, stream)
