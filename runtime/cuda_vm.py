"""Graph functions on the GPU: device-resident values, planned device memory, kernels on one stream.

Inputs are copied to the device once at entry and results back once at exit; every `call_tensor`
launches compiled kernels on the VM's stream and its result lives in device memory, in the arena of
its memory-plan token (arenas persist across calls, so steady-state runs allocate nothing). Kernel
temporaries share one workspace, safe because launches are ordered on the stream. Graph nodes
without a kernel (an op left at graph level, an external call) run on the host with their operands
copied over and their result copied back: correct, and visible in a profile.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.graph import (
    Block,
    CallExtern,
    CallTensor,
    Constant,
    Function,
    GetItem,
    If,
    Loop,
    MakeTuple,
    MatchCast,
    OpCall,
    Value,
)
from mlc.ir.interp import Frame, Interpreter, match_type
from mlc.ir.module import Module
from mlc.ir.tir import PrimFunc
from mlc.ir.types import ScalarType, TensorType, TupleType

from .cuda import CUDA, cuda_context
from .device import check_inputs
from .memory_plan import MemoryPlan, plan_function
from .tape import INPUT, OUTPUT, Tape, TapeEntry


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


class CudaVM(Interpreter):
    """`run(inputs)` -> host outputs; `run_device(inputs)` keeps everything on the GPU."""

    def __init__(self, module: Module, params: Mapping[str, np.ndarray], library: Any):
        cuda_context()
        import pycuda.driver as drv

        super().__init__(module, params)
        self.library = library
        self.stream = drv.Stream()
        self.plans: dict[str, MemoryPlan] = {f.name: plan_function(f) for f in module.functions if isinstance(f, Function)}
        self._consts: dict[str, DeviceTensor] = {}
        self._arenas: dict[int, Any] = {}
        self._arena_size: dict[int, int] = {}
        self._ws: Any = None
        self._ws_size = 0
        self._plan: MemoryPlan | None = None
        self._sites: dict[int, tuple[Any, ...]] = {}
        self._tapes: dict[tuple[Any, ...], Tape] = {}
        self._recording: list[tuple[Any, ...]] | None = None
        self._keep: list[Any] = []
        self._generation = 0  # bumped when an arena or the workspace moves (tapes hold their addresses)

    # ---- entry points -------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray], func: str = "main") -> dict[str, np.ndarray]:
        fn = check_inputs(self.module, inputs, func)
        dev = {k: to_device(np.asarray(v)) for k, v in inputs.items()}
        outs = self.run_device(dev, func)
        self.stream.synchronize()
        return {k: _to_host(v) if not isinstance(v, np.ndarray) else v for k, v in outs.items()} if fn else {}

    def run_device(self, inputs: Mapping[str, DeviceTensor], func: str = "main") -> dict[str, Any]:
        """Run with device-resident inputs; results stay on the device (call `.get()`)."""
        fn = check_inputs(self.module, inputs, func)
        frame = Frame()
        for p in fn.params:
            match_device(inputs[p.name], p.type, frame.dims, f"argument %{p.name} of @{func}", p.loc)
            frame.values[p.name] = inputs[p.name]
        key = (func, tuple(sorted(frame.dims.items())))
        tape = self._tapes.get(key)
        if tape is not None and tape.generation == self._generation:
            in_names, results = tape.results
            outs = [CUDA.alloc(shape, dtype) for _, shape, dtype in results]
            tape.replay([inputs[n].ptr for n in in_names], [o.ptr for o in outs])
            return {name: o for (name, _, _), o in zip(results, outs)}
        # replayable: kernels, constants, tuple plumbing, and ops of the dims only (checks), which the
        # recording evaluated for exactly these dims
        straight = all(isinstance(b.node, Constant | CallTensor | GetItem | MakeTuple)
                       or (isinstance(b.node, OpCall) and not b.node.args) for b in fn.body.bindings)
        self._plan = self.plans.get(func)
        self._recording, self._keep = ([] if straight else None), []
        gen = self._generation
        try:
            outs = self.block(fn.body, frame)
        finally:
            self._plan = None
            rec, keep, self._recording, self._keep = self._recording, self._keep, None, []
        result = {v.name: o for v, o in zip(fn.body.results, outs)}
        if rec is not None and gen == self._generation:
            tape = record_tape(rec, keep, fn, inputs, result, self._generation, self.stream)
            if tape is not None:
                self._tapes[key] = tape
        return result

    def synchronize(self) -> None:
        self.stream.synchronize()

    # ---- graph walk -------------------------------------------------------------------------
    def block(self, block: Block, frame: Frame) -> list[Any]:
        for b in block.bindings:
            val = self.node(b.node, b.var, frame)
            # kernel results are allocated from their type's shape, constants are checked once at upload
            if not isinstance(b.node, Loop | If | CallTensor | Constant):
                match_device(val, b.var.type, frame.dims, f"%{b.var.name}", b.loc)
            frame.values[b.var.name] = val
            if isinstance(b.var.type, ScalarType):
                frame.dims[b.var.name] = int(_to_host(val))
        return [self._get(r, frame) for r in block.results]

    def node(self, n: Any, var: Value, frame: Frame) -> Any:
        if isinstance(n, Constant):
            d = self._consts.get(n.key)
            if d is None:
                if n.key not in self.constants:
                    raise MlcError(f"constant '{n.key}' is not in the constants file", n.loc)
                d = to_device(np.asarray(self.constants[n.key]))
                match_device(d, var.type, {}, f"constant '{n.key}'", n.loc)
                self._consts[n.key] = d
            return d
        if isinstance(n, CallTensor):
            return self._call_tensor(n, var, frame)
        if isinstance(n, MatchCast):
            val = self._get(n.value, frame)
            match_device(val, var.type, frame.dims, f"match_cast of %{n.value.name}", n.loc)
            return val
        if isinstance(n, If):
            cond = bool(np.asarray(_to_host(self._get(n.cond, frame))))
            sub = Frame(dict(frame.values), frame.dims)
            out = self.block(n.then_block if cond else n.else_block, sub)
            return out[0] if len(out) == 1 else tuple(out)
        if isinstance(n, OpCall | CallExtern):
            vals = {a.name: self._get(a, frame) for a in n.args}
            if any(isinstance(v, DeviceTensor | tuple) for v in vals.values()):
                self.stream.synchronize()
            host = Frame({k: _to_host(v) for k, v in vals.items()}, frame.dims)
            return _to_dev(super().node(n, var, host))
        return super().node(n, var, frame)

    # ---- kernels ----------------------------------------------------------------------------
    def _alloc(self, var: Value, shape: tuple[int, ...], dtype: np.dtype, planned: bool) -> DeviceTensor:
        import pycuda.driver as drv

        need = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        tok = self._plan.token_of.get(var.name) if (planned and self._plan is not None) else None
        if tok is None:
            t = CUDA.alloc(shape, dtype)
            self._keep.append(t.owner)
            return t
        if self._arena_size.get(tok, 0) < need:
            self._arenas[tok] = drv.mem_alloc(need)
            self._arena_size[tok] = need
            self._generation += 1
        mem = self._arenas[tok]
        return DeviceTensor(int(mem), shape, dtype, mem)

    def _workspace(self, sizes: list[int]) -> list[int]:
        import pycuda.driver as drv

        aligned = [(s + 255) // 256 * 256 for s in sizes]
        total = sum(aligned)
        if total > self._ws_size:
            self._ws = drv.mem_alloc(total)
            self._ws_size = total
            self._generation += 1
        base, out = int(self._ws), []
        for s in aligned:
            out.append(base)
            base += s
        return out

    def _call_tensor(self, n: CallTensor, var: Value, frame: Frame) -> Any:
        site = self._sites.get(id(n))
        if site is None:
            site = self._sites[id(n)] = self._prepare(n, var)
        kernel, out_shapes, out_dtypes, sources, scalar_fns = site
        dims = frame.dims
        shapes = [tuple(f(dims) for f in fs) for fs in out_shapes]
        single = len(shapes) == 1
        outs = [self._alloc(var, sh, dt, single) for sh, dt in zip(shapes, out_dtypes)]
        args = [self._get(a, frame) for a in n.args]
        for a in args:
            if not isinstance(a, DeviceTensor):
                raise MlcError(f"call_tensor @{n.func}: argument is not a tensor on the device", n.loc)
        every = args + outs
        env = {d: every[src[0]].shape[src[1]] if src is not None else scalar_fns[d](dims)
               for d, src in zip(kernel.dims, sources)}
        kernel.launch([a.ptr for a in every], env, self.stream, self._workspace, self._recording)
        return outs[0] if single else tuple(outs)

    def _prepare(self, n: CallTensor, var: Value) -> tuple[Any, ...]:
        """Per call site, once: the kernel, output shape closures, and where each kernel dim comes from."""
        from .executor import compile_int

        fn = self.module.get(n.func)
        if not isinstance(fn, PrimFunc):
            raise MlcError(f"@{n.func} is not a tensor program", n.loc)
        out_types = var.type.fields if isinstance(var.type, TupleType) else (var.type,)
        shapes, dtypes = [], []
        for t in out_types:
            if not isinstance(t, TensorType) or t.shape is None:
                raise MlcError(f"call_tensor result needs a known tensor shape, got {t}", n.loc)
            shapes.append([compile_int(arith.simplify(d)) for d in t.shape])
            dtypes.append(to_numpy(t.dtype))
        kernel = self.library.kernel(n.func)
        scalars = {p.name: compile_int(arith.simplify(e)) for p, e in zip(fn.scalar_params, n.sym_args)}
        sources = kernel.dim_sources()
        for d, src in zip(kernel.dims, sources):
            if src is None and d not in scalars:
                raise MlcError(f"kernel {n.func}: value of {d} not given and not a buffer dim", n.loc)
        return kernel, shapes, dtypes, sources, scalars


def _launch_packed(args: list[int], extra: tuple[Any, ...]) -> None:
    fnc, grid, block, shared, fmt, stream = extra
    fnc._launch_kernel(grid, block, struct.pack(fmt, *args), shared, stream)


def record_tape(rec: list[tuple[Any, ...]], keep: list[Any], fn: Function, inputs: Mapping[str, DeviceTensor],
                result: dict[str, Any], generation: int, stream: Any) -> Tape | None:
    """The recorded launches of one call as a `Tape` (None when not replayable).

    Arenas, constants, the workspace and the recording's own scratch allocations (`keep`) are at
    fixed addresses; only the inputs and the results (allocated per call) are patched."""
    in_names = [p.name for p in fn.params]
    slot_of: dict[int, tuple[int, int]] = {inputs[n].ptr: (INPUT, i) for i, n in enumerate(in_names)}
    results = []
    for j, (name, t) in enumerate(result.items()):
        if not isinstance(t, DeviceTensor) or t.ptr in slot_of or not any(t.owner is k for k in keep):
            return None  # a result that is an input, a constant or a tuple: not replayable
        slot_of[t.ptr] = (OUTPUT, j)
        results.append((name, t.shape, t.dtype))
    out_mems = {id(result[n].owner) for n, _, _ in results}
    entries = [TapeEntry(_launch_packed, list(args), (fnc, grid, block, shared, fmt, stream),
                         [(k, *slot_of[a]) for k, a in enumerate(args[:nptr]) if a in slot_of], "")
               for fnc, grid, block, shared, fmt, nptr, args in rec]
    return Tape(entries, (in_names, results), generation, [k for k in keep if id(k) not in out_mems])
