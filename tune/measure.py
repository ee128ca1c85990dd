"""Build and time candidates in a worker subprocess with a time limit per candidate.

The worker (worker.py) is started once and reused; a candidate that exceeds the limit or kills
the worker is recorded as failed (`times` empty, `error` set), the worker is restarted, and the
search goes on. On CPU the runner sizes the batch from a first run (two round trips); on a GPU
(`target="cuda"`) the worker compiles with nvcc, warms up and sizes its CUDA-event timed batches
itself (one round trip: nvcc dominates), and a CUDA error (which poisons the worker's context)
makes the worker exit after answering, so the next candidate gets a fresh one.

`measure_many` is what search calls: here one candidate after another, in order; on Ray
(`tune/distributed.py`) the same jobs go to measurement actors and come back as they finish.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mlc.ir.module import Module
from mlc.ir.printer import print_module
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc
from mlc.passes.schedule.trace import Trace


@dataclass(frozen=True)
class Result:
    times: tuple[float, ...]
    error: str = ""
    node: str = ""  # where it was measured (Ray: the node's address; local: empty)

    @property
    def mean(self) -> float:
        return sum(self.times) / len(self.times) if self.times and not self.error else math.inf


@dataclass(frozen=True)
class NodeRate:
    """Measurements one node finished (and how many failed) over `seconds`: a row of the progress table."""

    node: str
    done: int
    failed: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return 60.0 * self.done / self.seconds if self.seconds > 0 else 0.0


class Measurer(Protocol):
    """What search needs from whatever measures candidates: this process's worker or Ray actors."""

    workers: int

    def measure(self, func: PrimFunc, trace: Trace) -> Result: ...

    def measure_many(self, func: PrimFunc, traces: Sequence[Trace]) -> Iterator[tuple[int, Result]]: ...

    def node_rates(self) -> list[NodeRate]: ...

    def close(self) -> None: ...


@dataclass
class Runner:
    """Times `trace` applied to `func` in a worker process; `timeout` seconds per candidate."""

    timeout: float = 20.0
    repeat: int = 3
    min_seconds: float = 0.02  # repeat a fast kernel inside one sample so timer noise is small
    dims: dict[str, int] = field(default_factory=dict)
    target: str = "cpu"
    _proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._proc = subprocess.Popen([sys.executable, "-m", "mlc.tune.worker"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        return self._proc

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _ask(self, job: dict, timeout: float) -> dict:  # type: ignore[type-arg]
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return {"error": "worker died"}
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        if not ready:
            self.close()
            return {"error": f"timed out after {timeout:g}s"}
        line = proc.stdout.readline()
        if not line:
            code = proc.poll()
            self.close()
            return {"error": f"worker crashed (exit {code})"}
        out = json.loads(line)
        if out.get("fatal"):
            self.close()
        return out

    workers: int = field(default=1, init=False)  # candidates measured at once (search sizes its batches by it)

    def measure(self, func: PrimFunc, trace: Trace) -> Result:
        return self.measure_text(print_module(Module((func,))), trace.to_json())

    def measure_many(self, func: PrimFunc, traces: Sequence[Trace]) -> Iterator[tuple[int, Result]]:
        """(index into traces, result) for each trace as it is measured: here in order, one at a time."""
        for i, trace in enumerate(traces):
            yield i, self.measure(func, trace)

    def node_rates(self) -> list[NodeRate]:
        return []  # one machine: the table's trial counts say it all

    def measure_text(self, module: str, trace: str) -> Result:
        """Time one candidate given as printed module text and trace JSON (what a remote measurer receives)."""
        job = {"module": module, "trace": trace, "dims": self.dims, "repeat": 1, "number": 1}
        target = Target.parse(self.target)
        if target.gpu:
            job |= {"target": str(target), "repeat": max(1, self.repeat), "min_seconds": self.min_seconds}
            out = self._ask(job, self.timeout)
            if "error" in out:
                return Result((), str(out["error"]))
            return Result(tuple(float(t) for t in out["times"]))
        t0 = time.perf_counter()
        first = self._ask(job, self.timeout)
        if "error" in first:
            return Result((), str(first["error"]))
        one = max(first["times"][0], 1e-7)
        job["number"] = max(1, min(1000, int(self.min_seconds / one)))
        job["repeat"] = self.repeat
        left = max(1.0, self.timeout - (time.perf_counter() - t0))
        out = self._ask(job, left)
        if "error" in out:
            return Result((), str(out["error"]))
        return Result(tuple(float(t) for t in out["times"]))
