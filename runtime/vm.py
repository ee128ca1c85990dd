"""The runtime for graph functions on any device: one walk (executor.py), the device's runner.

Shape expressions are evaluated at run time from the inputs' dims, match_casts are checked, tensor
programs run as compiled kernels started through the device's `Runner` (runtime/device.py), and
intermediates live in storage planned ahead of time (`memory_plan`), so a call allocates one arena
per storage token instead of one buffer per value (arenas persist across calls; one that grows
voids the tapes recorded on the old addresses). Inputs are copied to the device once at entry and
results back once at exit. Graph nodes without a kernel (an op left at graph level, an external
call) run on the host, their operands copied over and the result copied back where the device is
not the host. Without compiled kernels, tensor programs run in the reference interpreter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.graph import CallExtern, Constant, Function, MatchCast, OpCall, Value
from mlc.ir.interp import Frame, Interpreter
from mlc.ir.interrupt import run_region
from mlc.ir.memory_plan import MemoryPlan, plan_function
from mlc.ir.module import Module

from .device import Library, Runner, check_inputs
from .executor import Executor
from .tape import Tape


@dataclass(frozen=True)
class KernelTime:
    """One kernel's share of a profiled run: calls per run, median seconds per call, mean seconds per run."""

    func: str
    calls: float
    median: float
    per_run: float


class VM(Interpreter):
    """`run(inputs)` -> host outputs; `run_device(inputs)` takes and returns device values."""

    MAX_TAPES = 8

    def __init__(self, module: Module, params: Mapping[str, np.ndarray], library: Library | None, runner: Runner):
        super().__init__(module, params)
        self.library = library
        self.runner = runner
        self.plans: dict[str, MemoryPlan] = {f.name: plan_function(f) for f in module.functions if isinstance(f, Function)}
        self.device_constants: dict[str, Any] = {}
        self.tapes: dict[tuple[Any, ...], Tape] = {}  # (function, dims) -> recorded launches
        self.timings: dict[str, list[float]] | None = None  # kernel -> seconds per call, while profiling
        self._arenas: dict[int, Any] = {}
        self._arena_size: dict[int, int] = {}
        self._executors: dict[tuple[str, bool], Executor] = {}
        self._checked: dict[tuple[str, ...], Function] = {}  # (function, input names) that check_inputs accepted

    @property
    def _tapes(self) -> dict[tuple[Any, ...], Tape]:
        return self.tapes

    # ---- entry points -------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, np.ndarray], func: str = "main") -> dict[str, Any]:
        with run_region():  # computes in memory only: the CLI's SIGINT may end it inside a kernel (ir/interrupt)
            key = (func, *inputs)
            fn = self._checked.get(key)
            if fn is None:
                fn = check_inputs(self.module, inputs, func)
                if len(self._checked) < 16:
                    self._checked[key] = fn
            runner = self.runner
            outs = self.executor(fn, nested=False).run([runner.copy_in(inputs[p.name]) for p in fn.params])
            runner.sync()
            return {v.name: runner.copy_out(o) for v, o in zip(fn.body.results, outs)}

    def run_device(self, inputs: Mapping[str, Any], func: str = "main") -> dict[str, Any]:
        """Run with device-resident inputs; results stay on the device."""
        fn = check_inputs(self.module, inputs, func)
        outs = self.executor(fn, nested=False).run([inputs[p.name] for p in fn.params])
        return {v.name: o for v, o in zip(fn.body.results, outs)}

    def synchronize(self) -> None:
        self.runner.sync()

    def profile(self, inputs: Mapping[str, np.ndarray], runs: int = 50, func: str = "main") -> list[KernelTime]:
        """Each kernel's time inside whole runs of `func` (the calls a normal run makes, in its
        order and cache state), slowest first. Needs compiled kernels; on the GPU each launch is waited
        for (its time includes one launch's overhead, a few microseconds)."""
        if self.library is None:
            raise MlcError("profile needs compiled kernels (an artifact), not the interpreter")
        for _ in range(2):  # sizes the arenas, then records the tape a normal run replays
            self.run(inputs, func)
        self.timings = timings = {}
        n = max(1, runs)
        try:
            for _ in range(n):
                self.run(inputs, func)
        finally:
            self.timings = None
        out = [KernelTime(k, len(ts) / n, float(np.median(ts)), sum(ts) / n) for k, ts in timings.items()]
        return sorted(out, key=lambda t: -t.per_run)

    # ---- the walk's services ------------------------------------------------------------------
    def executor(self, fn: Function, nested: bool) -> Executor:
        """The cached walk of `fn` (its tape and native replay live there; `Model`'s host entry uses it)."""
        ex = self._executors.get((fn.name, nested))
        if ex is None:
            ex = self._executors[(fn.name, nested)] = Executor(self, fn, None if nested else self.plans.get(fn.name))
        return ex

    def call(self, name: str, args: list[Any], loc: Loc | None = None) -> list[Any]:
        """A nested `call_graph`: the callee's own walk, on fresh memory (a bad call: the
        interpreter's error)."""
        fn = next((f for f in self.module.functions if f.name == name), None)
        if not isinstance(fn, Function) or len(args) != len(fn.params):
            return super().call(name, args, loc)
        return self.executor(fn, nested=True).invoke(args)

    def buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype, plan: MemoryPlan | None) -> Any:
        """Storage for value `name`: a view of its plan token's arena, else a fresh allocation."""
        tok = plan.token_of.get(name) if plan is not None else None
        if tok is None:
            return self.runner.alloc(shape, dtype)
        need = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        if self._arena_size.get(tok, 0) < need:
            self._arenas[tok] = self.runner.alloc_bytes(need)
            self._arena_size[tok] = need
            self.runner.generation += 1
        return self.runner.view(self._arenas[tok], shape, dtype)

    def node(self, n: Any, var: Value, frame: Frame) -> Any:
        runner = self.runner
        if isinstance(n, Constant):
            d = self.device_constants.get(n.key)
            if d is None:
                if n.key not in self.constants:
                    raise MlcError(f"constant '{n.key}' is not in the constants file", n.loc)
                d = runner.copy_in(np.asarray(self.constants[n.key]))
                runner.match(d, var.type, dict(frame.dims), f"constant '{n.key}'", n.loc)
                self.device_constants[n.key] = d
            return d
        if isinstance(n, MatchCast):
            val = self._get(n.value, frame)
            runner.match(val, var.type, frame.dims, f"match_cast of %{n.value.name}", n.loc)
            return val
        if isinstance(n, OpCall | CallExtern) and not runner.host:
            vals = {a.name: self._get(a, frame) for a in n.args}
            if vals:
                runner.sync()
            host = Frame({k: runner.to_host(v) for k, v in vals.items()}, frame.dims)
            return runner.from_host(super().node(n, var, host))
        return super().node(n, var, frame)
