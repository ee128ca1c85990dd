"""Measurement worker process: reads one JSON job per line on stdin, answers one JSON line.

A job is `{"module": printed module text holding one PrimFunc, "trace": trace JSON, "dims": {...},
"repeat": n, "number": k}`; the worker replays the trace, compiles, runs on random inputs and
answers `{"times": [...]}` or `{"error": "..."}`. Running candidates here, not in the tuner,
means a candidate that crashes the process or never finishes costs only this worker.

A job with a `"target"` (a CUDA target's spelling, `Target.parse`) is compiled by the CUDA codegen +
nvcc for its arch (the GEMM template tile the schedule chose goes to the codegen) and timed on GPU 0 with CUDA events on a stream: warm-up
launches, one timed launch to size the batches, then `repeat` batches of launches. A CUDA error
leaves the process's context unusable, so its answer carries `"fatal": true` and the worker exits.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

import numpy as np


def _inputs(func, dims: dict[str, int]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    from mlc.ir import arith
    from mlc.ir.dtype import to_numpy

    rng = np.random.default_rng(0)
    out = []
    for b in func.params:
        shape = tuple(int(arith.evaluate(d, dims)) for d in b.shape)
        dt = to_numpy(b.dtype)
        if np.issubdtype(dt, np.floating):
            out.append(rng.standard_normal(shape).astype(dt))
        else:
            out.append(np.zeros(shape, dt))
    return out


def timed_program(base, func):  # type: ignore[no-untyped-def]
    """What the build runs of candidate `func` (the trace applied to `base`): without the packing nests
    of the parameters `base` marks constant (`tuning.CONSTANT_PARAMS`), which alter-layout folds into
    the constants at build time; timed with them, a trace that packs a weight paid a copy per call
    the built model never makes, and the search preferred traces that drop the pack (0.28-0.81x in
    the model: docs/performance.md, "Tuned CNN exports")."""
    from mlc.passes.alter_layout import pack_nests, without_packs
    from mlc.tune.tuning import CONSTANT_PARAMS

    fixed = set(dict(base.attrs).get(CONSTANT_PARAMS, ()))
    packs = [p for p in pack_nests(func) if p.param in fixed]
    return without_packs(func, packs) if packs else func


def run_job(job: dict) -> dict:  # type: ignore[type-arg]
    from mlc.runtime.cpu import compile_module

    func = timed_program(*_candidate(job))
    lib = compile_module([func])
    kernel = lib.kernel(func.name)
    dims = {str(k): int(v) for k, v in (job.get("dims") or {}).items()}
    args = _inputs(func, dims)
    scal = {v.name: dims[v.name] for v in func.scalar_params}
    # checked once, then timed as the runtime's executor calls kernels: the checked call's Python
    # argument handling costs tens of microseconds, as much as a small kernel, and timing it would
    # bury the differences between schedules in interpreter overhead and noise
    run = kernel.prepare(args, scal or None)
    run()  # warm-up
    number = max(1, int(job.get("number", 1)))
    times = []
    for _ in range(max(1, int(job.get("repeat", 3)))):
        t0 = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - t0) / number)
    return {"times": times}


def _candidate(job: dict):  # type: ignore[no-untyped-def,type-arg]
    from mlc.ir.parser import parse_module
    from mlc.passes.schedule.gpu_rules import register_trace_intrins
    from mlc.passes.schedule.trace import Trace

    func = parse_module(job["module"], "<candidate>").prim_functions()[0]
    trace = Trace.from_json(job["trace"])
    register_trace_intrins(trace)
    return func, trace.apply(func)


def run_cuda_job(job: dict) -> dict:  # type: ignore[type-arg]
    import pycuda.driver as drv
    from mlc.ir.target import Target
    from mlc.passes.schedule.gpu_rules import func_gemm_config
    from mlc.runtime.cuda import compile_cuda

    _, func = _candidate(job)
    arch = Target.parse(job["target"]).nvcc_arch  # the records' key names this arch
    kernel = compile_cuda([func], arch, gemm_config=func_gemm_config(func)).kernel(func.name)
    dims = {str(k): int(v) for k, v in (job.get("dims") or {}).items()}
    args = _inputs(func, dims)
    env = kernel.bind_dims([a.shape for a in args], {v.name: dims[v.name] for v in func.scalar_params} or None)
    bufs = [drv.to_device(np.ascontiguousarray(a)) if a.nbytes else drv.mem_alloc(1) for a in args]
    ptrs = [int(b) for b in bufs]
    held: list = []  # type: ignore[type-arg]

    def workspace(sizes: list[int]) -> list[int]:  # temporaries allocated once, reused by every launch
        if not held:
            held.extend(drv.mem_alloc(s) for s in sizes)
        return [int(h) for h in held]

    stream = drv.Stream()
    start, end = drv.Event(), drv.Event()

    def timed(n: int) -> float:
        start.record(stream)
        for _ in range(n):
            kernel.launch(ptrs, env, stream, workspace)
        end.record(stream)
        end.synchronize()
        return start.time_till(end) * 1e-3 / n

    for _ in range(3):  # warm-up: module load, clocks, caches; also surfaces launch errors early
        kernel.launch(ptrs, env, stream, workspace)
    stream.synchronize()
    one = max(timed(1), 1e-7)
    number = max(1, min(1000, int(float(job.get("min_seconds", 0.01)) / one)))
    times = [timed(number) for _ in range(max(1, int(job.get("repeat", 5))))]
    return {"times": times}


def main() -> None:
    for line in sys.stdin:
        fatal = False
        try:
            job = json.loads(line)
            out = run_cuda_job(job) if "target" in job else run_job(job)
        except Exception as e:  # noqa: BLE001 - any failure of a candidate is reported, not fatal
            out = {"error": f"{type(e).__name__}: {e}"[:500], "tb": traceback.format_exc()[-800:]}
            fatal = type(e).__module__.startswith("pycuda")  # a CUDA error: this context is lost
            out["fatal"] = fatal
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        if fatal:
            sys.exit(1)


if __name__ == "__main__":
    main()
