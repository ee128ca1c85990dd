"""A graph function prepared once for fast repeated calls.

The reference interpreter re-derives everything per binding (shape expressions, dim binding,
argument checks). For compiled models that overhead dominates small kernels, so the executor
does that work once: shape expressions become small closures, each kernel's dims are read straight
from known argument axes, outputs come from the memory plan's arenas, and the native function is
called with a pointer array. Inputs are checked once at entry, against the parameter types, and
every kernel argument's shape then follows from the verified types.
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Callable
from time import perf_counter
from typing import Any

import numpy as np
from mlc.ir.arith import prove_equal
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.expr import Bin, Const, Expr, Var, substitute
from mlc.ir.graph import Block, CallTensor, Constant, Function, GetItem, If, Loop, OpCall
from mlc.ir.interp import Frame, match_type
from mlc.ir.tir import PrimFunc
from mlc.ir.types import ScalarType, TensorType, TupleType, Type

from .guard import guarded_copy
from .tape import INPUT, Tape, TapeEntry

IntFn = Callable[[dict[str, int]], int]
_OPS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
    "floormod": operator.mod, "min": min, "max": max,
}


def compile_int(e: Expr) -> IntFn:
    """An integer shape expression as a closure over the dims dict (no eval)."""
    if isinstance(e, Const):
        v = int(e.value)
        return lambda _d: v
    if isinstance(e, Var):
        name = e.name
        return lambda d: d[name]
    if isinstance(e, Bin) and e.op in _OPS:
        f, a, b = _OPS[e.op], compile_int(e.a), compile_int(e.b)
        return lambda d: f(a(d), b(d))
    raise MlcError(f"shape expression {e!r} cannot be evaluated at run time")


class Executor:
    MAX_TAPES = 8

    def __init__(self, vm: Any, fn: Function):
        self.vm = vm
        self.fn = fn
        self._param_index = {p.name: i for i, p in enumerate(fn.params)}
        self._recording: list[TapeEntry] | None = None
        self._fast = {}
        self._tapes: dict[tuple[tuple[str, int], ...], Tape] = {}
        # kernel name -> seconds of each call, while profiling (`Model.profile`); None: not timing
        self.timings: dict[str, list[float]] | None = None
        self.body = self._block(fn.body)
        # a straight-line function of kernel calls and constants can be replayed as a tape per dims
        # (checks depend only on dims, the tape's key: one that passed once passes on replay)
        self._replayable = vm.guard is None and all(
            isinstance(b.node, Constant | GetItem) or (isinstance(b.node, CallTensor) and self._fast.get(b.var.name))
            or (isinstance(b.node, OpCall) and b.node.op == "check")
            for b in fn.body.bindings
        )

    def run(self, args: list[np.ndarray]) -> list[Any]:
        frame = Frame()
        for p, a in zip(self.fn.params, args):
            match_type(a, p.type, frame.dims, f"argument %{p.name} of @{self.fn.name}", p.loc)
            frame.values[p.name] = a
        if not self._replayable:
            return self.body(frame)
        key = tuple(sorted(frame.dims.items()))
        tape = self._tapes.get(key)
        if tape is not None:
            tape.replay([a.ctypes.data for a in args], (), self.timings)
            return [args[pi] if pi >= 0 else arr for pi, arr in tape.results]
        self._recording = []
        try:
            outs = self.body(frame)
        finally:
            entries, self._recording = self._recording, None
        if len(self._tapes) < self.MAX_TAPES:
            results = [(self._param_index.get(r.name, -1), frame.values[r.name]) for r in self.fn.body.results]
            self._tapes[key] = Tape(entries, results)  # results: (parameter index or -1, array)
        return outs

    _fast: dict[str, bool]

    def _block(self, block: Block) -> Callable[[Frame], list[Any]]:
        steps = [self._step(b) for b in block.bindings]
        results = [r.name for r in block.results]

        def run(frame: Frame) -> list[Any]:
            for step in steps:
                step(frame)
            return [frame.values[n] for n in results]

        return run

    def _step(self, b: Any) -> Callable[[Frame], None]:
        node = b.node
        if isinstance(node, CallTensor):
            fast = self._kernel_step(b)
            if fast is not None:
                return fast
        if isinstance(node, Loop):
            return self._loop_step(b)
        if isinstance(node, If):
            return self._if_step(b)
        vm, var, loc = self.vm, b.var, b.loc
        scalar = isinstance(var.type, ScalarType)

        def generic(frame: Frame) -> None:
            val = vm.node(node, var, frame)
            match_type(val, var.type, frame.dims, f"%{var.name}", loc)
            frame.values[var.name] = val
            if scalar:
                frame.dims[var.name] = int(val)

        return generic

    def _loop_step(self, b: Any) -> Callable[[Frame], None]:
        node: Loop = b.node
        body = self._block(node.body)
        extent = compile_int(node.extent)
        inits = [v.name for v in node.inits]
        carried = [v.name for v in node.carried]
        index, out = node.index.name, b.var.name

        def step(frame: Frame) -> None:
            vals = [frame.values[n] for n in inits]
            sub = Frame(dict(frame.values), dict(frame.dims))
            for i in range(extent(frame.dims)):
                sub.values[index] = i
                sub.dims[index] = i
                for n, v in zip(carried, vals):
                    sub.values[n] = v
                vals = body(sub)
            frame.values[out] = vals[0] if len(vals) == 1 else tuple(vals)

        return step

    def _if_step(self, b: Any) -> Callable[[Frame], None]:
        node: If = b.node
        then_b, else_b = self._block(node.then_block), self._block(node.else_block)
        cond, out = node.cond.name, b.var.name

        def step(frame: Frame) -> None:
            sub = Frame(dict(frame.values), frame.dims)
            vals = (then_b if bool(np.asarray(frame.values[cond])) else else_b)(sub)
            frame.values[out] = vals[0] if len(vals) == 1 else tuple(vals)

        return step

    def _kernel_step(self, b: Any) -> Callable[[Frame], None] | None:
        vm, node, var = self.vm, b.node, b.var
        out_types = _out_types(var.type)
        if vm.kernels is None or out_types is None:
            return None
        prim = vm.module.get(node.func)
        if not isinstance(prim, PrimFunc) or not hasattr(vm.kernels, "kernel"):
            return None
        kernel = vm.kernels.kernel(node.func)
        raw = getattr(kernel, "raw", None)
        if raw is None:
            return None
        # where each kernel dim comes from: an axis of an argument, or an explicit scalar
        getters: list[Callable[[list[np.ndarray], dict[str, int]], int]] = []
        scalar_fns = {p.name: compile_int(e) for p, e in zip(prim.scalar_params, node.sym_args)}
        for dname in kernel.dims:
            src = next(((i, ax) for i, p in enumerate(kernel.params) for ax, d in enumerate(p.shape)
                        if isinstance(d, Var) and d.name == dname), None)
            if src is not None:
                i, ax = src
                getters.append(lambda arrs, _d, i=i, ax=ax: arrs[i].shape[ax])
            elif dname in scalar_fns:
                f = scalar_fns[dname]
                getters.append(lambda _a, d, f=f: f(d))
            else:
                return None
        checks = self._unproven_dims(node, out_types, kernel)
        outs_spec = [([compile_int(d) for d in t.shape or ()], to_numpy(t.dtype)) for t in out_types]
        single = not isinstance(var.type, TupleType)
        names = [a.name for a in node.args]
        n_ptr = len(names) + len(out_types)
        ptr_t, dim_t = ctypes.c_void_p * n_ptr, ctypes.c_int64 * max(1, len(getters))
        out_name, func = var.name, node.func
        alloc, guard = vm.buffer, vm.guard
        check = kernel.raise_failed_check if getattr(kernel, "checks", False) else None

        check_dims = _dim_checker(checks, kernel.dims, node, b.loc)
        from_params = [(slot, INPUT, self._param_index[n]) for slot, n in enumerate(names) if n in self._param_index]

        def step(frame: Frame) -> None:
            vals, dims = frame.values, frame.dims
            arrs = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in (vals[n] for n in names)]
            if single:
                fns, dt = outs_spec[0]
                outs = [alloc(var, tuple(f(dims) for f in fns), dt)]
            else:
                outs = [np.empty(tuple(f(dims) for f in fns), dt) for fns, dt in outs_spec]
            arrs.extend(outs)
            kd = [g(arrs, dims) for g in getters]
            if checks:
                check_dims(arrs, kd)
            if guard is not None:
                run_guarded(raw, arrs, len(outs), dim_t(*kd), guard)
                if check is not None:
                    check()
                vals[out_name] = outs[0] if single else tuple(outs)
                return
            ptrs, dvals = ptr_t(*[a.ctypes.data for a in arrs]), dim_t(*kd)
            timings = self.timings
            if timings is None:
                raw(ptrs, dvals)
            else:
                t0 = perf_counter()
                raw(ptrs, dvals)
                timings.setdefault(func, []).append(perf_counter() - t0)
            if check is not None:
                check()
            vals[out_name] = outs[0] if single else tuple(outs)
            if self._recording is not None:
                self._recording.append(TapeEntry(raw, ptrs, dvals, from_params, func, check, arrs))

        self._fast[var.name] = True
        return step

    def _unproven_dims(self, node: CallTensor, out_types: list[TensorType], kernel: Any) -> list[tuple[int, int, Expr]]:
        """Kernel argument dims the graph types do not prove; they are checked at every call.

        The kernel's dims are bound from argument axes; every other axis of its params must then
        equal the param's shape expression. Where the graph's types make that provable (the usual
        case after shape-infer), no run-time check is needed.
        """
        types = [a.type for a in node.args] + list(out_types)
        graph_dim: dict[str, Expr] = {}
        for dname in kernel.dims:
            for i, p in enumerate(kernel.params):
                for ax, d in enumerate(p.shape):
                    if isinstance(d, Var) and d.name == dname and dname not in graph_dim:
                        t = types[i]
                        if isinstance(t, TensorType) and t.shape is not None and ax < len(t.shape):
                            graph_dim[dname] = t.shape[ax]
        out: list[tuple[int, int, Expr]] = []
        for i, p in enumerate(kernel.params):
            t = types[i]
            if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != len(p.shape):
                out.extend((i, ax, d) for ax, d in enumerate(p.shape))
                continue
            for ax, d in enumerate(p.shape):
                want = substitute(d, {Var(k): v for k, v in graph_dim.items()})
                if not prove_equal(want, t.shape[ax]):
                    out.append((i, ax, d))
        return out


def _dim_checker(checks: list[tuple[int, int, Expr]], dim_names: tuple[str, ...], node: CallTensor,
                 loc: Any) -> Callable[[list[np.ndarray], list[int]], None]:
    fns = [(i, ax, compile_int(d), d) for i, ax, d in checks]
    names = [a.name for a in node.args] + ["result"] * 8

    def check(arrs: list[np.ndarray], kd: list[int]) -> None:
        env = dict(zip(dim_names, kd))
        for i, ax, f, d in fns:
            want, got = f(env), arrs[i].shape[ax] if ax < arrs[i].ndim else None
            if want != got:
                raise MlcError(f"@{node.func}: %{names[i]} dim {ax} is {got}, but the kernel needs {d!r} = {want}", loc)

    return check


def _out_types(t: Type) -> list[TensorType] | None:
    """A kernel call's result tensors (one, or a tuple), when all shapes are known."""
    fields = t.fields if isinstance(t, TupleType) else (t,)
    if all(isinstance(f, TensorType) and f.shape is not None for f in fields):
        return list(fields)  # type: ignore[arg-type]
    return None


def run_guarded(raw: Any, arrs: list[np.ndarray], n_out: int, dims: Any, side: str) -> None:
    """One kernel call on copies of its buffers placed against guard pages; outputs copied back."""
    copies = [guarded_copy(a, side) for a in arrs]
    raw((ctypes.c_void_p * len(copies))(*[c.ctypes.data for c in copies]), dims)
    for a, c in zip(arrs[len(arrs) - n_out:], copies[len(arrs) - n_out:]):
        a[...] = c
