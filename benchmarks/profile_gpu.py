"""Where a whole model's GPU time goes: the prepared models of bench_gpu.py (ResNet-50, BERT-base-shaped)
built for CUDA and profiled kernel by kernel (`VM.profile`: each launch waited for, so a kernel's time
includes one launch, a few microseconds), slowest first, with each kernel's share of the profiled run.

    source .device/prelude.sh; python3 benchmarks/profile_gpu.py [--models resnet50 bert_base] [--batch 1 32]
        [--f16] [--top 12] [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import MODEL_RUNS, build_model, load_model  # noqa: E402 - the shared model builders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODEL_RUNS), choices=list(MODEL_RUNS))
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--f16", action="store_true", help="after `mlc amp` (f16 matmul/conv)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    from mlc.runtime.cuda import compile_cuda
    from mlc.runtime.cuda_vm import CudaVM

    for name in a.models:
        mod0, consts0, _, _ = load_model(name)
        mod, consts = build_model(mod0, consts0, a.f16)
        vm = CudaVM(mod, consts, compile_cuda(mod.prim_functions()))
        _, inp, shape = MODEL_RUNS[name]
        for bsz in a.batch:
            x = np.random.default_rng(bsz).standard_normal((bsz, *shape)).astype(np.float32)
            t0 = time.perf_counter()
            prof = vm.profile({inp: x}, runs=a.runs)
            total = sum(k.per_run for k in prof)
            print(f"{name} {'f16' if a.f16 else 'f32'} batch {bsz}: {total * 1e3:.3f} ms in {len(prof)} kernels "
                  f"(profiled in {time.perf_counter() - t0:.0f} s); slowest:")
            for k in prof[: a.top]:
                print(f"  {k.per_run * 1e3:9.3f} ms  {100 * k.per_run / total:5.1f}%  x{k.calls:<4.0f} {k.func}")


if __name__ == "__main__":
    main()
