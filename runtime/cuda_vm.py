"""The cuda device's run-time half: device tensors and the `Runner` the one graph walk uses.

Values live in device memory; every `call_tensor` launches compiled kernels on the VM's stream
(`CudaRunner.launcher`) and its result lives in the arena of its memory-plan token (runtime/vm.py).
Kernel temporaries share one workspace, safe because launches are ordered on the stream. A replayed
tape allocates fresh results, since `run_device` hands them to the caller.

CUDA graphs: a tape (the launches of a straight-line function for one set of dims) is captured once
into a CUDA graph and replayed with one `cuGraphLaunch` instead of one Python launch per kernel. The
graph reads its inputs from and writes its results to staging buffers of its own (a graph's addresses
are fixed; the caller's are not): a replay is the inputs copied in, the graph, the results copied out
to fresh buffers, all asynchronous on the VM's stream (no host synchronization; the weights, arenas
and workspace the graph names stay device-resident). $MLC_CUDA_GRAPHS=0 turns it off; a capture the
driver refuses falls back to replaying the tape launch by launch. pycuda has no graph API: the driver's
graph calls are made through ctypes (`GraphDriver`).

Index checks: kernels that call `check_range` record a failure in their module's device error word;
`CudaRunner.sync`, which the VM calls once at the end of a run, reads the word of every such library
(one 40-byte copy, no host synchronization per kernel) and raises the CPU's error.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.interp import match_type
from mlc.ir.module import Module
from mlc.ir.types import TupleType

from .cuda import CUDA, cuda_context
from .tape import INPUT, Tape, TapeEntry
from .vm import VM

GRAPHS_ENV = "MLC_CUDA_GRAPHS"
MAX_GRAPHS = 32  # captured tapes kept per runner (the VM keeps at most 8 tapes per function)


def graphs_enabled() -> bool:
    """CUDA graphs are on unless $MLC_CUDA_GRAPHS is 0/false/no/off."""
    return os.environ.get(GRAPHS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


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


class GraphDriver:
    """The driver calls of stream capture and graph launch (libcuda through ctypes)."""

    CAPTURE_MODE_RELAXED = 2

    def __init__(self) -> None:
        lib = ctypes.CDLL("libcuda.so.1")  # the driver pycuda has loaded
        vp, pvp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        self._begin = _fn(lib, "cuStreamBeginCapture_v2", [vp, ctypes.c_int])
        self._end = _fn(lib, "cuStreamEndCapture", [vp, pvp])
        self._instantiate = _fn(lib, "cuGraphInstantiateWithFlags", [pvp, vp, ctypes.c_ulonglong])
        self._launch = _fn(lib, "cuGraphLaunch", [vp, vp])
        self._destroy_exec = _fn(lib, "cuGraphExecDestroy", [vp])
        self._destroy_graph = _fn(lib, "cuGraphDestroy", [vp])

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise MlcError(f"CUDA graph: {what} failed (CUresult {rc})")

    def capture(self, stream: int, launches: Callable[[], None]) -> int:
        """The executable graph of what `launches()` enqueues on `stream` (nothing runs now)."""
        self._check(self._begin(ctypes.c_void_p(stream), self.CAPTURE_MODE_RELAXED), "cuStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            launches()
        finally:
            rc = self._end(ctypes.c_void_p(stream), ctypes.byref(graph))
        self._check(rc, "cuStreamEndCapture")
        exe = ctypes.c_void_p()
        try:
            self._check(self._instantiate(ctypes.byref(exe), graph, 0), "cuGraphInstantiate")
        finally:
            self._destroy_graph(graph)  # the executable graph does not need its template
        return int(exe.value or 0)

    def launch(self, exe: int, stream: int) -> None:
        self._check(self._launch(ctypes.c_void_p(exe), ctypes.c_void_p(stream)), "cuGraphLaunch")

    def destroy(self, exe: int) -> None:
        self._destroy_exec(ctypes.c_void_p(exe))


def _fn(lib: Any, name: str, argtypes: list[Any]) -> Any:
    f = getattr(lib, name)
    f.argtypes, f.restype = argtypes, ctypes.c_int
    return f


@dataclass
class CapturedTape:
    """A tape captured as a graph: its executable, and the staging buffers (argument index, memory,
    bytes) its inputs are copied into and its results out of."""

    tape: Tape
    exe: int
    ins: list[tuple[int, Any, int]]
    outs: list[tuple[int, Any, int]]


def graphable(tape: Tape) -> bool:
    """Only kernel launches (no host work, no native loops) can be captured."""
    return bool(tape.entries) and all(e.fn is launch_packed and not e.inner and e.check is None for e in tape.entries)


class GraphCache:
    """Captured tapes of one stream, and their replay. `mem` supplies device memory: alloc(n) ->
    allocation, addr(allocation) -> int, copy(dst, src, n) asynchronous on the stream."""

    def __init__(self, driver: Any, stream: int, alloc: Callable[[int], Any], copy: Callable[[int, int, int], None],
                 sync: Callable[[], None]):
        self.driver, self.stream, self.alloc, self.copy, self.sync = driver, stream, alloc, copy, sync
        self.graphs: dict[int, CapturedTape | Tape] = {}  # id(tape) -> its capture, or the tape if refused
        self.launches = 0  # graph launches so far (tests check the path is taken)

    def replay(self, tape: Tape, args: Sequence[DeviceTensor], fresh: Sequence[DeviceTensor]) -> bool:
        """Run `tape` as a graph (captured on first use); False when it cannot be (the caller replays it)."""
        got = self.graphs.get(id(tape))
        if got is None or (got.tape if isinstance(got, CapturedTape) else got) is not tape:
            for key in [key for key, g in self.graphs.items()
                        if (g.tape if isinstance(g, CapturedTape) else g).generation != tape.generation]:
                self.drop(key)  # recorded on memory that has moved since: never replayed again
            got = self._capture(tape, args, fresh)
            if len(self.graphs) >= MAX_GRAPHS:
                self.drop(next(iter(self.graphs)))
            self.graphs[id(tape)] = got
        if not isinstance(got, CapturedTape):
            return False
        for k, mem, n in got.ins:
            self.copy(int(mem), args[k].ptr, n)
        try:
            self.driver.launch(got.exe, self.stream)
        except Exception:  # noqa: BLE001 - a graph the driver will not launch: replayed launch by launch from now on
            self.drop(id(tape))
            self.graphs[id(tape)] = tape
            return False
        for k, mem, n in got.outs:
            self.copy(fresh[k].ptr, int(mem), n)
        self.launches += 1
        return True

    def drop(self, key: int) -> None:
        old = self.graphs.pop(key)
        if isinstance(old, CapturedTape):
            self.driver.destroy(old.exe)

    def _capture(self, tape: Tape, args: Sequence[DeviceTensor], fresh: Sequence[DeviceTensor]) -> CapturedTape | Tape:
        if not graphable(tape):
            return tape
        used: dict[tuple[int, int], Any] = {}
        for e in tape.entries:
            for pos, which, k in e.slots:
                key = (which, k)
                if key not in used:
                    t = args[k] if which == INPUT else fresh[k]
                    used[key] = (self.alloc(max(1, t.nbytes)), t.nbytes)
                e.args[pos] = int(used[key][0])
        entries = tape.entries
        self.sync()  # once per capture: nothing of an earlier run is in flight on the stream

        def launches() -> None:
            for e in entries:
                e.fn(e.args, e.extra)

        try:
            exe = self.driver.capture(self.stream, launches)
        except Exception:  # noqa: BLE001 - a capture the driver refuses: this tape replays launch by launch
            self.sync()
            return tape
        ins = [(k, m, n) for (w, k), (m, n) in sorted(used.items()) if w == INPUT and n]
        outs = [(k, m, n) for (w, k), (m, n) in sorted(used.items()) if w != INPUT and n]
        return CapturedTape(tape, exe, ins, outs)


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
        self._graphs: GraphCache | None = None
        self._checks: dict[Callable[[], None], None] = {}  # each checking library's error-word read, once

    @property
    def graph_cache(self) -> GraphCache:
        if self._graphs is None:
            import pycuda.driver as drv

            stream = self.stream
            self._graphs = GraphCache(GraphDriver(), int(stream.handle), drv.mem_alloc,
                                      lambda dst, src, n: drv.memcpy_dtod_async(dst, src, n, stream), stream.synchronize)
        return self._graphs

    def replay_tape(self, tape: Tape, args: list[DeviceTensor], fresh: list[DeviceTensor],
                    timings: dict[str, list[float]] | None) -> None:
        """A recorded tape again: as a CUDA graph where it can be (module doc), else launch by launch
        (always while profiling, each launch then waited for, so its time is the kernel's plus one launch)."""
        if timings is None and graphs_enabled() and self.graph_cache.replay(tape, args, fresh):
            return
        tape.replay([a.ptr for a in args], [o.ptr for o in fresh], timings,
                    None if timings is None else self.stream.synchronize)

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
        if kernel.check is not None:
            self._checks[kernel.check] = None

        def launch(bufs: list[DeviceTensor], kd: list[int], timings: Any,
                   record: Callable[[TapeEntry, list[tuple[int, int]]], None] | None) -> None:
            rec: list[tuple[Any, ...]] | None = [] if record is not None else None
            kernel.launch([a.ptr for a in bufs], dict(zip(dims, kd)), stream, self._workspace, rec)
            if record is not None:
                for fnc, grid, block, shared, fmt, _nptr, args in rec or ():
                    record(TapeEntry(launch_packed, list(args), (fnc, grid, block, shared, fmt, stream), [], func),
                           [(k, k) for k in range(len(bufs))])

        return launch

    def sync(self) -> None:
        """Wait for the stream, then report a failed index check of any kernel run so far (the
        VM syncs once at the end of a run: one read of each error word per run, graphs included)."""
        self.stream.synchronize()
        for check in self._checks:
            check()


class CudaVM(VM):
    """The graph VM on the GPU: `run(inputs)` -> host outputs; `run_device(inputs)` keeps
    everything on the device (call `.get()` on its results)."""

    def __init__(self, module: Module, params: Mapping[str, np.ndarray], library: Any):
        super().__init__(module, params, library, CudaRunner())


def launch_packed(args: list[int], extra: tuple[Any, ...]) -> None:
    fnc, grid, block, shared, fmt, stream = extra
    fnc._launch_kernel(grid, block, struct.pack(fmt, *args), shared, stream)
