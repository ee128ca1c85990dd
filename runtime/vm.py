"""The runtime for graph functions: the reference interpreter's walk, with compiled kernels.

Shape expressions are evaluated at run time from the inputs' dims, match_casts are checked, tensor
programs run as native kernels, and intermediates live in storage planned ahead of time
(`memory_plan`), so a call allocates one arena per storage token instead of one array per value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.graph import CallTensor, Function, Value
from mlc.ir.interp import Frame, Interpreter
from mlc.ir.module import Module
from mlc.ir.tir import PrimFunc
from mlc.ir.types import TensorType, TupleType

from .device import check_inputs
from .executor import Executor
from .guard import guarded_copy, side_from_env
from .memory_plan import MemoryPlan, plan_function

Kernel = Callable[[list[np.ndarray], dict[str, int]], None]


@dataclass(frozen=True)
class KernelTime:
    """One kernel's share of a profiled run: calls per run, median seconds per call, mean seconds per run."""

    func: str
    calls: float
    median: float
    per_run: float


class KernelProvider(Protocol):
    def kernel(self, name: str) -> Kernel: ...


class VM(Interpreter):
    """Runs graph functions, dispatching `call_tensor` to compiled kernels."""

    def __init__(self, module: Module, params: Mapping[str, np.ndarray], kernels: KernelProvider | None,
                 guard: str | None = None):
        super().__init__(module, params)
        self.kernels = kernels
        self.guard = guard or side_from_env()  # copy kernel arguments against guard pages (runtime/guard.py)
        self.plans: dict[str, MemoryPlan] = {
            f.name: plan_function(f) for f in module.functions if isinstance(f, Function)
        }
        self._arenas: dict[int, np.ndarray] = {}
        self._active_plan: MemoryPlan | None = None
        self._cache: dict[str, Kernel] = {}
        self._executors: dict[str, Executor] = {}

    def run(self, inputs: Mapping[str, np.ndarray], func: str = "main") -> dict[str, np.ndarray]:
        fn = check_inputs(self.module, inputs, func)
        names = [p.name for p in fn.params]
        self._active_plan = self.plans.get(func)
        args = [np.require(inputs[n], requirements="C") for n in names]
        try:
            if self.kernels is not None:
                ex = self._executors.get(func)
                if ex is None:
                    ex = self._executors[func] = Executor(self, fn)
                outs = ex.run(args)
            else:
                outs = self.call(func, args)
        finally:
            self._active_plan = None
        return {v.name: np.array(o, copy=True) if isinstance(o, np.ndarray) else o for v, o in zip(fn.body.results, outs)}

    def profile(self, inputs: Mapping[str, np.ndarray], runs: int = 50, func: str = "main") -> list[KernelTime]:
        """Each kernel's time inside whole runs of `func` (the calls a normal run makes, in its
        order and cache state), slowest first. Needs compiled kernels."""
        if self.kernels is None:
            raise MlcError("profile needs compiled kernels (an artifact), not the interpreter")
        self.run(inputs, func)  # prepares the executor and records its tape
        ex = self._executors[func]
        ex.timings = timings = {}
        n = max(1, runs)
        try:
            for _ in range(n):
                self.run(inputs, func)
        finally:
            ex.timings = None
        out = [KernelTime(k, len(ts) / n, float(np.median(ts)), sum(ts) / n) for k, ts in timings.items()]
        return sorted(out, key=lambda t: -t.per_run)

    def buffer(self, var: Value, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        plan = self._active_plan
        tok = plan.token_of.get(var.name) if plan is not None else None
        if tok is None:
            return np.empty(shape, dtype)
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arena = self._arenas.get(tok)
        if arena is None or arena.size < need:
            arena = np.empty(max(need, 1), np.uint8)
            self._arenas[tok] = arena
        return arena[:need].view(dtype).reshape(shape)

    def _call_tensor(self, n: CallTensor, var: Value, frame: Frame) -> Any:
        if self.kernels is None:
            return super()._call_tensor(n, var, frame)
        fn = self.module.get(n.func)
        if not isinstance(fn, PrimFunc):
            raise MlcError(f"@{n.func} is not a tensor program", n.loc)
        out_types = var.type.fields if isinstance(var.type, TupleType) else (var.type,)
        outs = []
        for t in out_types:
            assert isinstance(t, TensorType) and t.shape is not None
            shape = tuple(arith.evaluate(d, frame.dims) for d in t.shape)
            buf = self.buffer(var, shape, to_numpy(t.dtype)) if len(out_types) == 1 else np.empty(shape, to_numpy(t.dtype))
            outs.append(buf)
        args = [np.require(self._get(a, frame), requirements="C") for a in n.args]
        # the kernel reads buffer dims from the arrays; only explicit scalars are passed
        dims = {p.name: arith.evaluate(e, frame.dims) for p, e in zip(fn.scalar_params, n.sym_args)}
        k = self._cache.get(n.func)
        if k is None:
            k = self._cache[n.func] = self.kernels.kernel(n.func)
        if self.guard is None:
            k(args + outs, dims)
        else:
            copies = [guarded_copy(a, self.guard) for a in args + outs]
            k(copies, dims)
            for o, c in zip(outs, copies[len(args):]):
                o[...] = c
        return outs[0] if len(outs) == 1 else tuple(outs)
