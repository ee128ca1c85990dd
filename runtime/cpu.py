"""Compile tensor programs to native code and call them on numpy arrays.

`compile_module` lowers PrimFuncs to LLVM IR, optimises it with the O3 pipeline for the host CPU,
emits a relocatable object file and loads it with llvmlite's MCJIT (`add_object_file`), so the
bytes kept in `CompiledLibrary.object_code` are exactly what runs; `link_object` loads such bytes
later without recompiling. Kernels are self-describing (the `__mlc_kernels` JSON in the object), so
a loaded object needs no IR. Calls go through ctypes, which releases the GIL.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import llvmlite.binding as llvm
import numpy as np

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.dtype import to_numpy
from ..ir.expr import Expr, Var
from ..ir.tir import PrimFunc
from .abi import INDEX_ERROR_SYMBOL, META_SYMBOL, expr_from_json
from .cpu import CpuTarget, host_target, init_llvm
from .llvm import lower_to_llvm
from .parallel import LAUNCH_SYMBOL, launcher_address

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


class CompiledLibrary:
    """Native code of a module of kernels, loaded into this process."""

    def __init__(self, object_code: bytes, target: CpuTarget, module: llvm.ModuleRef | None = None):
        init_llvm()
        self.object_code = object_code
        self.target = target
        self._module = module
        self._tm = target.target_machine()
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self._tm)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
        self._engine.finalize_object()
        meta_addr = self._engine.get_global_value_address(META_SYMBOL)
        launch_addr = self._engine.get_global_value_address(LAUNCH_SYMBOL)
        if not meta_addr or not launch_addr:
            raise MlcError("object code is not an mlc kernel library (no kernel metadata)")
        ctypes.c_void_p.from_address(launch_addr).value = launcher_address()
        err_addr = self._engine.get_global_value_address(INDEX_ERROR_SYMBOL)
        self.index_error = (ctypes.c_int64 * 4).from_address(err_addr) if err_addr else None
        try:
            meta = json.loads(ctypes.string_at(meta_addr).decode())
            self._kernels = {k["name"]: k for k in meta["kernels"]}
        except (ValueError, KeyError, TypeError) as e:
            raise MlcError(f"corrupt kernel metadata in object code: {e}") from None
        self._cache: dict[str, Kernel] = {}

    @property
    def names(self) -> list[str]:
        return list(self._kernels)

    def kernel(self, name: str) -> Kernel:
        k = self._cache.get(name)
        if k is not None:
            return k
        meta = self._kernels.get(name)
        if meta is None:
            raise MlcError(f"no kernel named {name!r} (have: {', '.join(self._kernels) or 'none'})")
        addr = self._engine.get_function_address(name)
        params = tuple(ParamInfo(p["name"], p["dtype"], tuple(expr_from_json(d) for d in p["shape"]))
                       for p in meta["params"])
        k = Kernel(name, params, tuple(meta["dims"]), int(meta["num_outputs"]), bool(meta.get("checks", False)),
                   _KERNEL_CFUNC(addr), self)
        self._cache[name] = k
        return k

    def llvm_ir(self) -> str:
        """The optimised LLVM IR (only for libraries compiled in this process)."""
        if self._module is None:
            raise MlcError("LLVM IR is not available for a library loaded from object code")
        return str(self._module)

    def emit_asm(self) -> str:
        """Assembly of the optimised module, as the target machine prints it."""
        if self._module is None:
            raise MlcError("assembly is not available for a library loaded from object code")
        return self._tm.emit_assembly(self._module)


def optimize(mod: llvm.ModuleRef, target: CpuTarget, opt_level: int) -> None:
    """Run LLVM's standard O<level> pipeline (with loop and SLP vectorizers) on `mod` in place."""
    tm = target.target_machine(opt_level)
    pto = llvm.PipelineTuningOptions(speed_level=opt_level)
    pto.loop_vectorization = opt_level >= 2
    pto.slp_vectorization = opt_level >= 2
    pto.loop_unrolling = opt_level >= 2
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def compile_ir(text: str, target: CpuTarget, opt_level: int = 3) -> tuple[llvm.ModuleRef, bytes]:
    """Parse, verify, optimise LLVM IR text and emit an object file."""
    init_llvm()
    mod = llvm.parse_assembly(text)
    mod.verify()
    optimize(mod, target, opt_level)
    return mod, target.target_machine(opt_level).emit_object(mod)


def compile_module(funcs: Sequence[PrimFunc], target: CpuTarget | None = None, opt_level: int = 3) -> CompiledLibrary:
    """Compile PrimFuncs to native code for `target` (the host by default) and load it."""
    target = target or host_target()
    mod, obj = compile_ir(lower_to_llvm(list(funcs), target), target, opt_level)
    return CompiledLibrary(obj, target, mod)


def link_object(obj_bytes: bytes, target: CpuTarget | None = None) -> CompiledLibrary:
    """Load object code emitted earlier (`CompiledLibrary.object_code`) without recompiling."""
    return CompiledLibrary(bytes(obj_bytes), target or host_target())
