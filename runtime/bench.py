"""Latency measurement of a compiled model beside onnxruntime on the same inputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import to_numpy
from mlc.ir.graph import Function
from mlc.ir.types import TensorType


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    runs: int


def time_fn(fn: Callable[[], object], warmup: int = 3, runs: int = 20, min_seconds: float = 0.0) -> Timing:
    """Median wall time of `fn` after warm-up (more runs if `min_seconds` asks for them)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    t_start = time.perf_counter()
    while len(samples) < runs or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(float(np.median(samples)) * 1e3, float(np.min(samples)) * 1e3, len(samples))


def block_medians(fns: list[Callable[[], object]], runs: int = 9, rounds: int = 3, settle: float = 0.5,
                  warm: float = 0.02) -> list[float]:
    """Median seconds per function, timed in blocks: each round runs every function `runs` times in a
    row after warming up, and rounds alternate so background load reaches all of them.

    Not call-by-call interleaving: a BLAS or onnxruntime thread pool keeps its workers spinning for a
    while after a call returns, and on a small machine those spinners steal the cores of whatever
    runs next, so interleaving measures the previous library's spin as much as the next one's speed.
    The spin outlasts short pauses: on the 2-core dev machine a 1024 matmul of mlc ran at 139 GFLOP/s
    right after an OpenBLAS call, 160 after 50 ms, 235 after 300 ms; hence `settle` = 0.5 s.
    The idle pause has its own after-effect (clocks, a virtual CPU's wake-up, sleeping pool workers):
    the first 512 matmul after it took 6-8 ms, the next 1.2-1.7, so a block warms up for `warm`
    seconds (at least one call) before timing.
    """
    samples: list[list[float]] = [[] for _ in fns]
    per_round = max(1, -(-runs // rounds))
    for _ in range(rounds):
        for fn, ts in zip(fns, samples):
            time.sleep(settle)
            end = time.perf_counter() + warm
            fn()
            while time.perf_counter() < end:
                fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in samples]


def random_inputs(fn: Function, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for `fn` with symbolic dims set from `dims` (unset or unknown ones are an error naming them)."""
    from mlc.ir.expr import free_vars

    known = {v.name for p in fn.params if isinstance(p.type, TensorType) and p.type.shape is not None
             for d in p.type.shape for v in free_vars(d)}
    unknown = sorted(set(dims) - known)
    if unknown:  # a typo in --shape must not silently time a different size
        raise MlcError(f"unknown dim(s) {', '.join(unknown)}; the inputs' dims are {', '.join(sorted(known)) or 'all static'}")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for p in fn.params:
        t = p.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise MlcError(f"input %{p.name} has no known tensor shape")
        try:
            shape = tuple(arith.evaluate(d, dims) for d in t.shape)
        except ValueError as e:
            raise MlcError(f"input %{p.name}: {e}; give it with --shape NAME=VALUE") from None
        dt = to_numpy(t.dtype)
        if np.issubdtype(dt, np.integer):
            out[p.name] = rng.integers(0, 4, shape).astype(dt)
        elif dt == np.bool_:
            out[p.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[p.name] = rng.standard_normal(shape).astype(dt)
    return out
