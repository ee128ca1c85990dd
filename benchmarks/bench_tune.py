"""fp32 matmul GFLOP/s: default schedule, tuned (64 and 256 trials), numpy, ratios and tuning time.

    python benchmarks/bench_tune.py [--sizes 512 1024 2048] [--trials 64 256] [--quick]

`--quick`: sizes 512 1024, trials 16 and 32. Tuning continues one search across the trial counts
(the 256-trial figure includes the first 64), with a fresh temporary database per size.
Timings alternate blocks of mlc and numpy runs (see runtime.bench.block_medians for why not
call-by-call interleaving: OpenBLAS workers keep spinning after a call).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rsum
from mlc.passes.schedule.rules import default_schedule
from mlc.passes.tune.database import Database
from mlc.runtime.bench import block_medians
from mlc.runtime.cpu import compile_module
from mlc.tune.measure import Runner
from mlc.tune.search import SearchConfig, Task, Tuner


def matmul(n: int) -> PrimFunc:
    a, b = placeholder("A", (n, n)), placeholder("B", (n, n))
    k = reduce_axis(n, "k")
    return build("matmul", [a, b], [compute("C", (n, n), lambda i, j: rsum(a[i, k] * b[k, j], k))])


def gflops(func: PrimFunc, n: int, repeat: int) -> tuple[float, float]:
    """(mlc, numpy) GFLOP/s from block-wise median times (runtime.bench.block_medians); checks mlc's result against numpy."""
    kernel = compile_module([func]).kernel(func.name)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    c, ref = np.empty((n, n), np.float32), np.empty((n, n), np.float32)
    fns = [partial(kernel, [a, b, c]), partial(np.matmul, a, b, out=ref)]
    for fn in fns:
        fn()
    err = float(np.abs(c - ref).max() / np.abs(ref).max())
    if err > 1e-4:
        raise SystemExit(f"mlc result differs from numpy at n={n}: relative error {err:.2e}")
    t_mlc, t_np = block_medians(fns, repeat)
    flop = 2 * n**3 / 1e9
    return flop / t_mlc, flop / t_np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[512, 1024, 2048])
    ap.add_argument("--trials", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.trials = [512, 1024], [16, 32]
    print(f"{'n':>5} {'schedule':>14} {'mlc GF/s':>9} {'numpy GF/s':>10} {'ratio':>6} {'tune s':>7}")
    for n in args.sizes:
        f = matmul(n)
        rep = args.repeat if n <= 1024 else max(3, args.repeat // 2)
        g, gnp = gflops(default_schedule(f).func, n, rep)
        print(f"{n:>5} {'default':>14} {g:>9.1f} {gnp:>10.1f} {g / gnp:>6.2f} {0:>7.0f}", flush=True)
        with tempfile.TemporaryDirectory() as d:
            db = Database(Path(d) / "tune.jsonl")
            t0 = time.perf_counter()
            done = 0
            for trials in sorted(args.trials):
                # a new Tuner resumes from the database; it runs only the trials not yet done
                cfg = SearchConfig(trials=trials - done, seed=n + trials)
                tasks = Tuner([Task(f)], db, Runner(timeout=60), cfg).run()
                done = trials
                best = tasks[0].best_trace
                wall = time.perf_counter() - t0
                if best is None:
                    print(f"{n:>5} {f'tuned {trials}':>14} {'failed':>9}")
                    continue
                g, gnp = gflops(best.apply(f), n, rep)
                print(f"{n:>5} {f'tuned {trials}':>14} {g:>9.1f} {gnp:>10.1f} {g / gnp:>6.2f} {wall:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
