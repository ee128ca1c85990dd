"""The cpu device: native object code loaded into this process and called on numpy arrays.

`CompiledLibrary` loads an object file (from `codegen.jit.compile_object`, or an artifact) with
llvmlite's MCJIT (`add_object_file`), so the bytes an artifact keeps are exactly what runs, and
points the kernels' parallel-loop launcher at the thread pool (runtime/parallel.py). Kernels are
self-describing (the `__mlc_kernels` JSON in the object), so a loaded object needs no IR. Calls go
through ctypes, which releases the GIL.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any

import llvmlite.binding as llvm
import numpy as np
from mlc.codegen.abi import INDEX_ERROR_SYMBOL, META_SYMBOL, expr_from_json
from mlc.codegen.cpu import CpuTarget, host_target, init_llvm
from mlc.codegen.jit import CpuObject, compile_object
from mlc.codegen.parallel import LAUNCH_SYMBOL
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.expr import Expr, Var
from mlc.ir.interp import match_type
from mlc.ir.module import Module
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc

from .device import Compiled, Library
from .guard import guarded_copy, side_from_env
from .parallel import launcher_address
from .tape import TapeEntry

if TYPE_CHECKING:
    from .artifact import Artifact

_KERNEL_CFUNC = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64))


@dataclass(frozen=True)
class ParamInfo:
    name: str
    dtype: str
    shape: tuple[Expr, ...]


@dataclass
class Kernel:
    """One compiled PrimFunc: `kernel(arrays, dims)` runs it in place on numpy arrays."""

    name: str
    params: tuple[ParamInfo, ...]
    dims: tuple[str, ...]
    num_outputs: int
    checks: bool  # may fail a `check_range`: the caller runs `raise_failed_check` after each call
    _fn: ctypes._CFuncPtr = field(repr=False)
    _lib: CompiledLibrary = field(repr=False)
    _checks: list[tuple[int, int, int | str | Expr]] = field(init=False, repr=False)
    _np_dtypes: list[np.dtype] = field(init=False, repr=False)
    _bound: dict[tuple, list[int]] = field(init=False, repr=False)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        # per axis: a constant to compare, a dim name to bind/compare, or an expression to evaluate last
        self._checks = []
        for p_idx, p in enumerate(self.params):
            for axis, d in enumerate(p.shape):
                c = arith.as_int(d)
                self._checks.append((p_idx, axis, c if c is not None else d.name if isinstance(d, Var) else d))
        self._checks.sort(key=lambda c: isinstance(c[2], Expr))
        self._np_dtypes = [to_numpy(p.dtype) for p in self.params]
        self._bound = {}

    def bind_dims(self, arrays: Sequence[np.ndarray], dims: Mapping[str, int] | None = None) -> list[int]:
        """Dim values in ABI order: given ones, else read from array shapes; every shape is checked."""
        env: dict[str, int] = {k: int(v) for k, v in dims.items()} if dims else {}
        for p_idx, axis, want in self._checks:
            shape = arrays[p_idx].shape
            if len(shape) != len(self.params[p_idx].shape):
                self._shape_error(p_idx, shape, env)
            got = shape[axis]
            if isinstance(want, str):
                if env.setdefault(want, got) != got:
                    self._shape_error(p_idx, shape, env)
            elif isinstance(want, int):
                if want != got:
                    self._shape_error(p_idx, shape, env)
            else:
                try:
                    ok = arith.evaluate(want, env) == got
                except ValueError:
                    ok = False
                if not ok:
                    self._shape_error(p_idx, shape, env)
        try:
            return [env[d] for d in self.dims]
        except KeyError:
            missing = [d for d in self.dims if d not in env]
            raise MlcError(f"kernel {self.name}: value of {', '.join(missing)} not given and not a buffer dim") from None

    def _shape_error(self, p_idx: int, shape: tuple[int, ...], env: dict[str, int]) -> None:
        p = self.params[p_idx]
        try:
            want = str(tuple(arith.evaluate(d, env) for d in p.shape))
        except ValueError:
            want = "(" + ", ".join(d.name if isinstance(d, Var) else str(arith.as_int(d) or d) for d in p.shape) + ")"
        raise MlcError(f"kernel {self.name}: {p.name} must have shape {want}, got {tuple(shape)}")

    @property
    def param_shapes(self) -> list[tuple[Expr, ...]]:
        return [p.shape for p in self.params]

    @property
    def raw(self) -> ctypes._CFuncPtr:
        """The native entry `(void **buffers, int64_t *dims)`, unchecked: for runtimes whose types
        already guarantee every argument's dtype, shape and contiguity."""
        return self._fn

    def __call__(self, arrays: Sequence[np.ndarray], dims: Mapping[str, int] | None = None) -> None:
        self.prepare(arrays, dims)()
        if self.checks:
            self.raise_failed_check()

    def raise_failed_check(self) -> None:
        """Raise the located error of a `check_range` that failed in the last call (and clear it)."""
        slot = self._lib.index_error
        if slot is not None and slot[0]:
            v, lo, hi = slot[1], slot[2], slot[3]
            ctypes.memset(slot, 0, ctypes.sizeof(slot))
            raise MlcError(f"kernel {self.name}: index {v} out of range [{lo}, {hi})")

    def prepare(self, arrays: Sequence[np.ndarray], dims: Mapping[str, int] | None = None) -> Callable[[], None]:
        """Check the arguments once; return a call of the native entry on them, for loops that run
        a kernel many times on the same buffers (the checks cost microseconds, as a small kernel does)."""
        if len(arrays) != len(self.params):
            raise MlcError(f"kernel {self.name} takes {len(self.params)} buffers, got {len(arrays)}")
        first_out = len(self.params) - self.num_outputs
        for k, (dt, a) in enumerate(zip(self._np_dtypes, arrays, strict=True)):
            if not isinstance(a, np.ndarray) or a.dtype != dt:
                got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                raise MlcError(f"kernel {self.name}: {self.params[k].name} must be a {dt} array, got {got}")
            if not a.flags.c_contiguous:
                raise MlcError(f"kernel {self.name}: {self.params[k].name} must be C-contiguous")
            if k >= first_out and not a.flags.writeable:
                raise MlcError(f"kernel {self.name}: output {self.params[k].name} is read-only")
        # shapes repeat from call to call: the checked binding is computed once per shape set
        key = (tuple(a.shape for a in arrays), tuple(sorted(dims.items())) if dims else ())
        vals = self._bound.get(key)
        if vals is None:
            vals = self.bind_dims(arrays, dims)
            if len(self._bound) < 64:
                self._bound[key] = vals
        ptrs = (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])
        dvals = (ctypes.c_int64 * max(1, len(vals)))(*vals)
        return partial(_call_native, self._fn, ptrs, dvals, tuple(arrays))


def _call_native(fn: ctypes._CFuncPtr, ptrs: Any, dims: Any, keep: tuple[np.ndarray, ...]) -> None:
    """`keep`: the arrays the pointers name, held alive as long as the prepared call is."""
    fn(ptrs, dims)


class CompiledLibrary(Library):
    """Native code of a module of kernels, loaded into this process."""

    def __init__(self, obj: CpuObject):
        init_llvm()
        self.obj = obj
        self.object_code = obj.object_code
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), obj.target.target_machine())
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj.object_code))
        self._engine.finalize_object()
        meta_addr = self._engine.get_global_value_address(META_SYMBOL)
        launch_addr = self._engine.get_global_value_address(LAUNCH_SYMBOL)
        if not meta_addr or not launch_addr:
            raise MlcError("object code is not an mlc kernel library (no kernel metadata)")
        ctypes.c_void_p.from_address(launch_addr).value = launcher_address()
        err_addr = self._engine.get_global_value_address(INDEX_ERROR_SYMBOL)
        self.index_error = (ctypes.c_int64 * 4).from_address(err_addr) if err_addr else None
        super().__init__(ctypes.string_at(meta_addr), "object code")

    def make_kernel(self, name: str, meta: dict[str, Any]) -> Kernel:
        try:
            params = tuple(ParamInfo(p["name"], p["dtype"], tuple(expr_from_json(d) for d in p["shape"]))
                           for p in meta["params"])
            dims, n_out = tuple(meta["dims"]), int(meta["num_outputs"])
        except (KeyError, TypeError, ValueError) as e:
            raise MlcError(f"corrupt kernel metadata in object code: {e}") from None
        addr = self._engine.get_function_address(name)
        return Kernel(name, params, dims, n_out, bool(meta.get("checks", False)), _KERNEL_CFUNC(addr), self)

    def llvm_ir(self) -> str:
        return self.obj.llvm_ir()

    def emit_asm(self) -> str:
        return self.obj.emit_asm()


def compile_module(funcs: Sequence[PrimFunc], target: CpuTarget | None = None, opt_level: int = 3) -> CompiledLibrary:
    """Compile PrimFuncs to native code for `target` (the host by default) and load it."""
    return CompiledLibrary(compile_object(funcs, target, opt_level))


def link_object(obj_bytes: bytes, target: CpuTarget | None = None) -> CompiledLibrary:
    """Load object code emitted earlier (`CompiledLibrary.object_code`) without recompiling."""
    return CompiledLibrary(CpuObject(bytes(obj_bytes), target or host_target()))


_OBJECT_MAGICS = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\x64\x86", b"\x64\xaa")  # ELF, Mach-O, COFF


@dataclass(frozen=True)
class CpuDevice:
    """The host: code is an object file in the artifact's `object` section, memory is numpy's."""

    kind: str = "cpu"

    def compile(self, prims: Sequence[PrimFunc], target: Target, emit: tuple[str, ...] = (),
                opt_level: int = 3) -> Compiled:
        info = target.cpu_info()
        cpu = CpuTarget(info.triple, info.cpu, info.features)
        obj = compile_object(prims, cpu, opt_level) if prims else None
        out = Compiled({"object": obj.object_code if obj else b""},
                       {"triple": cpu.triple, "cpu": cpu.cpu, "cpu_features": sorted(cpu.feature_set)})
        if obj is not None and "llvm" in emit:
            out.llvm_ir = obj.llvm_ir()
        if obj is not None and "asm" in emit:
            out.asm = obj.emit_asm()
        return out

    def load(self, art: Artifact, name: str) -> CompiledLibrary | None:
        obj = art.sections.get("object", b"")
        if not obj:
            return None
        if not obj.startswith(_OBJECT_MAGICS):  # llvmlite would crash the process on it
            raise MlcError(f"{name}: artifact's object section is not native object code")
        check_host(art.meta, name)
        return link_object(obj)

    def vm(self, module: Module, params: Mapping[str, np.ndarray], library: Library | None,
           guard: str | None = None) -> Any:
        from .vm import VM

        return VM(module, params, library, CpuRunner(guard or side_from_env()))

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def copy_in(self, a: np.ndarray) -> np.ndarray:
        return np.require(a, requirements="C")

    def copy_out(self, t: np.ndarray) -> np.ndarray:
        return np.array(t, copy=True)

    def sync(self) -> None:
        pass


CPU = CpuDevice()


class CpuRunner:
    """The graph walk's view of the host: numpy arrays, kernels called through ctypes (which
    releases the GIL); with `guard`, every call works on copies against guard pages."""

    kind, host, fresh_results = "cpu", True, False

    def __init__(self, guard: str | None = None):
        self.guard = guard
        self.records = guard is None
        self.generation = 0

    def copy_in(self, a: np.ndarray) -> np.ndarray:
        return np.require(a, requirements="C")

    def copy_out(self, v: Any) -> Any:
        return np.array(v, copy=True) if isinstance(v, np.ndarray) else v

    def to_host(self, v: Any) -> Any:
        return v

    def from_host(self, v: Any) -> Any:
        return v

    def match(self, val: Any, ty: Any, dims: dict[str, int], what: str, loc: Any) -> None:
        match_type(val, ty, dims, what, loc)

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def alloc_bytes(self, n: int) -> np.ndarray:
        return np.empty(n, np.uint8)

    def view(self, mem: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return mem[:int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)

    def address(self, t: np.ndarray) -> int:
        return t.ctypes.data

    def prepare_args(self, args: list[Any], func: str, loc: Any) -> list[Any]:
        return [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in args]

    def launcher(self, kernel: Kernel, func: str, loc: Any) -> Callable[..., None]:
        raw, guard, n_out = kernel.raw, self.guard, kernel.num_outputs
        check = kernel.raise_failed_check if kernel.checks else None
        ptr_t = ctypes.c_void_p * len(kernel.params)
        dim_t = ctypes.c_int64 * max(1, len(kernel.dims))
        entry = ctypes.cast(raw, ctypes.c_void_p).value or 0
        slot = kernel._lib.index_error
        err = ctypes.addressof(slot) if check is not None and slot is not None else 0

        def launch(bufs: list[np.ndarray], kd: list[int], timings: dict[str, list[float]] | None,
                   record: Callable[[TapeEntry, list[tuple[int, int]]], None] | None) -> None:
            dvals = dim_t(*kd)
            if guard is not None:
                run_guarded(raw, bufs, n_out, dvals, guard)
                if check is not None:
                    check()
                return
            ptrs = ptr_t(*[a.ctypes.data for a in bufs])
            if timings is None:
                raw(ptrs, dvals)
            else:
                t0 = perf_counter()
                raw(ptrs, dvals)
                timings.setdefault(func, []).append(perf_counter() - t0)
            if check is not None:
                check()
            if record is not None:
                native = (entry, ctypes.addressof(ptrs), ctypes.addressof(dvals), err)
                record(TapeEntry(raw, ptrs, dvals, [], func, check, native=native), [(k, k) for k in range(len(bufs))])

        return launch

    def sync(self) -> None:
        pass


def run_guarded(raw: Any, arrs: list[np.ndarray], n_out: int, dims: Any, side: str) -> None:
    """One kernel call on copies of its buffers placed against guard pages; outputs copied back."""
    copies = [guarded_copy(a, side) for a in arrs]
    raw((ctypes.c_void_p * len(copies))(*[c.ctypes.data for c in copies]), dims)
    for a, c in zip(arrs[len(arrs) - n_out:], copies[len(arrs) - n_out:]):
        a[...] = c


def check_host(meta: Mapping[str, Any], name: str) -> None:
    """Native code runs only where it was built for: another architecture aborted inside LLVM, and a
    missing CPU feature (AVX512-FP16, say) killed the process with SIGILL at the first call."""
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
