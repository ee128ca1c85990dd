"""Measurement worker process: reads one JSON job per line on stdin, answers one JSON line.

A job is `{"module": printed module text holding one PrimFunc, "trace": trace JSON, "dims": {...},
"repeat": n, "number": k}`; the worker replays the trace, compiles, runs on random inputs and
answers `{"times": [...]}` or `{"error": "..."}`. Running candidates here, not in the tuner,
means a candidate that crashes the process or never finishes costs only this worker.
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


def run_job(job: dict) -> dict:  # type: ignore[type-arg]
    from mlc.codegen.jit import compile_module
    from mlc.ir.parser import parse_module
    from mlc.passes.schedule.trace import Trace

    func = parse_module(job["module"], "<candidate>").prim_functions()[0]
    func = Trace.from_json(job["trace"]).apply(func)
    lib = compile_module([func])
    kernel = lib.kernel(func.name)
    dims = {str(k): int(v) for k, v in (job.get("dims") or {}).items()}
    args = _inputs(func, dims)
    scal = {v.name: dims[v.name] for v in func.scalar_params}
    kernel(args, scal or None)  # warm-up
    number = max(1, int(job.get("number", 1)))
    times = []
    for _ in range(max(1, int(job.get("repeat", 3)))):
        t0 = time.perf_counter()
        for _ in range(number):
            kernel(args, scal or None)
        times.append((time.perf_counter() - t0) / number)
    return {"times": times}


def main() -> None:
    for line in sys.stdin:
        try:
            out = run_job(json.loads(line))
        except Exception as e:  # noqa: BLE001 - any failure of a candidate is reported, not fatal
            out = {"error": f"{type(e).__name__}: {e}"[:500], "tb": traceback.format_exc()[-800:]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
