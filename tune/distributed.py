"""Measuring candidates on a Ray cluster: measurement actors pinned to nodes, results streamed to the driver.

Each actor wraps one local `Runner` (its worker subprocess: the per-candidate timeout, crash
isolation and the build + timing of `worker.py`), and Ray runs one call of an actor at a time, so
an actor is one measurement at a time. Placement: the CPU target gets one actor per alive node by
default, pinned there (node affinity) and holding one Ray CPU, so one candidate per node is timed
at a time and nothing else we schedule shares it; `workers` above the node count puts several on a
node (round robin; they then share its cores, which tests on one machine need, and timings do not).
The CUDA target gets one actor per GPU (`num_gpus=1`: Ray sets CUDA_VISIBLE_DEVICES, so the worker's
"GPU 0" is that GPU alone). CPU actors on a node whose CPU is not the driver's (the target key of
the records differs) are not used: their timings would be filed under another machine's key.

Results come back to the driver as they finish (`ray.wait`), which alone writes the database. An
actor that dies (its process or node) costs its in-flight candidate: it is re-queued for another
actor, up to `attempts` times, then recorded as failed; a replacement actor is started on the same
node while that node is alive. Ray must be connected (`ray.init`) before a RayRunner is made.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlc.ir.diagnostics import MlcError
from mlc.ir.module import Module
from mlc.ir.printer import print_module
from mlc.ir.target import Target
from mlc.ir.tir import PrimFunc
from mlc.passes.schedule.trace import Trace

from .measure import NodeRate, Result, Runner

PLACE_TIMEOUT = 60.0  # seconds for the actors to start (an actor Ray cannot place is left out)


class MeasureActor:
    """The body of a measurement actor: a local Runner (a worker subprocess) on the actor's node."""

    def __init__(self, runner: Runner):
        import ray

        self.runner = runner
        self.node = ray.util.get_node_ip_address()

    def info(self) -> dict[str, Any]:
        """Where it runs and which records its timings make (the target key of this machine)."""
        return {"node": self.node, "key": Target.parse(self.runner.target).key, "pid": os.getpid()}

    def measure(self, module: str, trace: str) -> Result:
        return replace(self.runner.measure_text(module, trace), node=self.node)


@dataclass
class _Actor:
    handle: Any
    node_id: str | None  # the node it is pinned to (None: wherever Ray put it, GPU actors)
    node: str = ""


@dataclass
class RayRunner:
    """Measures on Ray actors built from `runner` (its timeout, repeats, dims, target); `workers` 0:
    one per node (CPU target) or one per GPU (CUDA)."""

    runner: Runner
    workers: int = 0  # 0: the default placement above; after start, the actors in use
    attempts: int = 3  # a candidate whose actor dies is measured again this often in all
    _actors: list[_Actor] = field(default_factory=list, init=False, repr=False)
    _idle: list[_Actor] = field(default_factory=list, init=False, repr=False)
    _rates: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)  # node: done, failed
    _t0: float = field(default_factory=time.perf_counter, init=False, repr=False)
    _respawns: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        import ray

        if not ray.is_initialized():
            raise MlcError("tune: the Ray runner needs a connected Ray instance (ray.init or --executor ray)")
        self._cls = ray.remote(MeasureActor)
        gpu = Target.parse(self.runner.target).gpu
        if gpu:
            count = self.workers or int(ray.cluster_resources().get("GPU", 0))
            if count < 1:
                raise MlcError("tune: --target cuda on Ray needs GPU nodes, and the cluster has no GPU")
            spots: list[str | None] = [None] * count
        else:
            nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
            count = self.workers or len(nodes)
            spots = [nodes[i % len(nodes)] for i in range(count)] if nodes else []
        starting = [self._spawn(s) for s in spots]
        infos = {a.handle.info.remote(): a for a in starting}
        ready, late = ray.wait(list(infos), num_returns=len(infos), timeout=PLACE_TIMEOUT) if infos else ([], [])
        want = Target.parse(self.runner.target).key
        other: list[str] = []
        for ref in ready:
            a = infos[ref]
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            a.node = info["node"]
            if info["key"] != want:
                other.append(f"{a.node} ({info['key']})")
                ray.kill(a.handle)
                continue
            self._actors.append(a)
        for ref in late:
            ray.kill(infos[ref].handle)
        if other:
            print(f"mlc: warning: tune: not measuring on {', '.join(other)}: not this machine's target {want}",
                  file=sys.stderr)
        if late:
            print(f"mlc: warning: tune: {len(late)} of {len(spots)} measurement workers could not be placed "
                  f"in {PLACE_TIMEOUT:g}s; measuring on {len(self._actors)}", file=sys.stderr)
        if not self._actors:
            raise MlcError(f"tune: no Ray node can measure for target {want}")
        self._idle = list(self._actors)
        self.workers = len(self._actors)
        self._t0 = time.perf_counter()

    def _spawn(self, node_id: str | None) -> _Actor:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if node_id is None:
            opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        else:
            opts = {"num_cpus": 1, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
        return _Actor(self._cls.options(max_restarts=0, max_concurrency=1, **opts).remote(self.runner), node_id)

    def measure(self, func: PrimFunc, trace: Trace) -> Result:
        return next(iter(self.measure_many(func, [trace])))[1]

    def measure_many(self, func: PrimFunc, traces: Sequence[Trace]) -> Iterator[tuple[int, Result]]:
        """(index, result) for each trace as its measurement finishes, on whichever actor was free."""
        import ray

        text = print_module(Module((func,)))
        jobs: deque[tuple[int, int]] = deque((i, 1) for i in range(len(traces)))  # (index, attempt)
        pending: dict[Any, tuple[int, int, _Actor]] = {}
        try:
            while jobs or pending:
                while jobs and self._idle:
                    i, attempt = jobs.popleft()
                    a = self._idle.pop(0)
                    pending[a.handle.measure.remote(text, traces[i].to_json())] = (i, attempt, a)
                if not pending:  # every actor is gone and none could be replaced
                    i, _ = jobs.popleft()
                    yield i, self._count(Result((), "no Ray measurement worker left"))
                    continue
                done, _ = ray.wait(list(pending), num_returns=1)
                i, attempt, a = pending.pop(done[0])
                try:
                    res = ray.get(done[0])
                except ray.exceptions.RayError as e:
                    self._lost(a)
                    if attempt < self.attempts:
                        jobs.appendleft((i, attempt + 1))  # to the next free actor
                        continue
                    res = Result((), f"lost its measurement worker {attempt} times: {type(e).__name__}", a.node)
                else:
                    self._idle.append(a)
                yield i, self._count(res)
        finally:  # abandoned calls still run first on their actor: still one measurement per actor at a time
            self._idle.extend(a for _, _, a in pending.values())

    def _count(self, res: Result) -> Result:
        rate = self._rates.setdefault(res.node or "-", [0, 0])
        rate[0] += 1
        rate[1] += bool(res.error)
        return res

    def _lost(self, a: _Actor) -> None:
        """A dead actor is dropped; a replacement starts on its node while that node is alive (a bounded number)."""
        import ray

        if a in self._actors:
            self._actors.remove(a)
        try:
            ray.kill(a.handle)
        except ray.exceptions.RayError:
            pass
        if a.node_id is None:  # a GPU actor: only while the cluster still has a GPU for it (else it would pend)
            placeable = ray.cluster_resources().get("GPU", 0) > len(self._actors)
        else:  # pinned: a node that died meanwhile fails the new actor's calls at once (hard affinity)
            placeable = a.node_id in {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        if self._respawns < 2 * self.workers and placeable:
            self._respawns += 1
            new = self._spawn(a.node_id)
            new.node = a.node
            self._actors.append(new)
            self._idle.append(new)

    def node_rates(self) -> list[NodeRate]:
        secs = time.perf_counter() - self._t0
        return [NodeRate(n, d, f, secs) for n, (d, f) in sorted(self._rates.items())]

    def close(self) -> None:
        import ray

        for a in self._actors:
            try:
                ray.kill(a.handle)
            except ray.exceptions.RayError:
                pass
        self._actors, self._idle = [], []


__all__ = ["MeasureActor", "RayRunner"]
