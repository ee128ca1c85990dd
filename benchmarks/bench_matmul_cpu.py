"""Matmul on the CPU: mlc's default schedule and a hand-scheduled tensor program against numpy (OpenBLAS).

`default` is what an untuned `mlc build` gets: the default schedule rules (passes/schedule/rules.py)
applied to the n x n matmul, compiled per n. `hand` is a reference point for the rules; its schedule
is plain TIR, as schedule primitives would produce it: B is packed into panels of TN columns
(`Bp[jo, k, ji]`, contiguous per k) and A into strips of TM rows (`Ap[io, k, ii]`); each thread takes
strips and, for every panel, accumulates a TM x TN tile in a local buffer (cache_write; TM rows
unrolled, TN columns one `vectorized` loop, so the tile lives in vector registers) over the k loop of
broadcasts of Ap and vector loads of Bp, then writes the tile to C. One kernel serves every n that is
a multiple of TN (n is a runtime dim). Prints GFLOP/s of the three from the same run and the ratios.

    python benchmarks/bench_matmul_cpu.py [--sizes 256 512 1024 2048] [--repeat 9] [--threads N]

`--threads N` sets both mlc's pool and OpenBLAS (through OPENBLAS_NUM_THREADS, before numpy loads);
by default both use every CPU. Timings alternate blocks of runs of the two (runtime.bench.block_medians says why not call-by-call).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_tune, also when loaded by path (tests)

if __name__ == "__main__" and "--threads" in sys.argv:  # OpenBLAS reads this once, when numpy loads
    _t = sys.argv[sys.argv.index("--threads") + 1]
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _t

import numpy as np  # noqa: E402
from bench_tune import matmul  # noqa: E402
from mlc.codegen.cpu import host_target  # noqa: E402
from mlc.ir import Bin, BlockStmt, Buffer, Const, For, IterVar, Load, PrimFunc, Seq, Store, Var  # noqa: E402
from mlc.passes.schedule.rules import default_schedule  # noqa: E402
from mlc.runtime.bench import block_medians  # noqa: E402
from mlc.runtime.cpu import compile_module  # noqa: E402
from mlc.runtime.parallel import get_num_threads, set_num_threads  # noqa: E402

TM, TN = 8, 32  # register tile: 8 rows x 32 f32 columns = 16 AVX-512 accumulators (of 32 registers)
TM2, TN2 = 4, 16  # AVX2 (16 registers): 4 x 16 = 8 accumulators; 8 x 32 would spill


def scheduled_matmul(name: str = "matmul", tm: int = TM, tn: int = TN) -> PrimFunc:
    """C[n, n] = A[n, n] @ B[n, n] for n % tn == 0 and n % tm == 0, tiled, packed and parallel."""
    n = Var("n")
    A, B, C = Buffer("A", (n, n), "f32"), Buffer("B", (n, n), "f32"), Buffer("C", (n, n), "f32")
    panels = Bin("floordiv", n, Const(tn))
    Bp = Buffer("Bp", (panels, n, Const(tn)), "f32")
    jo, k, ji, io, ii = Var("jo"), Var("k"), Var("ji"), Var("io"), Var("ii")
    row = io * tm + ii
    col = jo * tn + ji

    strips = Bin("floordiv", n, Const(tm))
    Ap = Buffer("Ap", (strips, n, Const(tm)), "f32")
    pack_b = For(jo, Const(0), panels, For(k, Const(0), n, For(ji, Const(0), Const(tn),
                 Store(Bp, (jo, k, ji), Load(B, (k, col))), kind="vectorized")), kind="parallel")
    pack_a = For(io, Const(0), strips, For(k, Const(0), n, For(ii, Const(0), Const(tm),
                 Store(Ap, (io, k, ii), Load(A, (row, k))), kind="unrolled")), kind="parallel")

    # cache_write: the TM x TN tile accumulates in a local buffer (registers), then is written to C
    Cl = Buffer("C_local", (Const(tm), Const(tn)), "f32", scope="local")
    vi, vj, vk = Var("vi"), Var("vj"), Var("vk")
    zero = BlockStmt("C_init", (IterVar(vi, Const(tm), "S", ii), IterVar(vj, Const(tn), "S", ji)),
                     Store(Cl, (vi, vj), Const(0.0, "f32")))
    update = BlockStmt(
        "C_update",
        (IterVar(vi, n, "S", row), IterVar(vj, n, "S", col), IterVar(vk, n, "R", k)),
        Store(Cl, (Bin("floormod", vi, Const(tm)), Bin("floormod", vj, Const(tn))),
              Load(Cl, (Bin("floormod", vi, Const(tm)), Bin("floormod", vj, Const(tn))))
              + Load(Ap, (Bin("floordiv", vi, Const(tm)), vk, Bin("floormod", vi, Const(tm)))) * Load(Bp, (Bin("floordiv", vj, Const(tn)), vk, Bin("floormod", vj, Const(tn))))),
    )
    write = BlockStmt("C_write", (IterVar(vi, n, "S", row), IterVar(vj, n, "S", col)),
                      Store(C, (vi, vj), Load(Cl, (Bin("floormod", vi, Const(tm)), Bin("floormod", vj, Const(tn))))))

    def tile(body: BlockStmt) -> For:
        return For(ii, Const(0), Const(tm), For(ji, Const(0), Const(tn), body, kind="vectorized"), kind="unrolled")

    tile_block = BlockStmt("tile", (), Seq((tile(zero), For(k, Const(0), n, tile(update)), tile(write))),
                           alloc_buffers=(Cl,))
    compute = For(io, Const(0), strips, For(jo, Const(0), panels, tile_block),
                  kind="parallel")
    root = BlockStmt("root", (), Seq((pack_b, pack_a, compute)), alloc_buffers=(Bp, Ap))
    return PrimFunc(name, (A, B, C), 1, root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="threads for mlc and OpenBLAS (default: all CPUs)")
    args = ap.parse_args()
    if args.threads:
        set_num_threads(args.threads)
    tgt = host_target()
    t0 = time.perf_counter()
    tm, tn = (TM, TN) if tgt.vector_bits >= 512 else (TM2, TN2)
    lib = compile_module([scheduled_matmul(tm=tm, tn=tn)], tgt)
    print(f"target {tgt.cpu} ({tgt.vector_bits}-bit SIMD), hand tile {tm} x {tn}, threads {get_num_threads()}, "
          f"compile {time.perf_counter() - t0:.2f}s")
    print(f"{'n':>6} {'default GF/s':>12} {'hand GF/s':>10} {'numpy GF/s':>11} {'default/numpy':>14} {'hand/numpy':>11}")
    rng = np.random.default_rng(0)
    kernel = lib.kernel("matmul")
    for n in args.sizes:
        f = default_schedule(matmul(n)).func
        default = compile_module([f], tgt).kernel(f.name)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        cd, c, ref = (np.empty((n, n), np.float32) for _ in range(3))
        rep = max(3, args.repeat if n <= 1024 else args.repeat // 2)
        t_def, t_mlc, t_np = block_medians([partial(default, [a, b, cd]), partial(kernel, [a, b, c]),
                                            partial(np.matmul, a, b, out=ref)], rep)
        for name, out in (("default", cd), ("hand", c)):
            err = float(np.abs(out - ref).max()) / float(np.abs(ref).max())
            if err > 1e-4:
                raise SystemExit(f"mlc {name} result differs from numpy at n={n}: relative error {err:.2e}")
        flop = 2 * n**3 / 1e9
        print(f"{n:>6} {flop / t_def:>12.1f} {flop / t_mlc:>10.1f} {flop / t_np:>11.1f} {t_np / t_def:>14.2f} "
              f"{t_np / t_mlc:>11.2f}", flush=True)

if __name__ == "__main__":
    main()
