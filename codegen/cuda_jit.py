"""Scheduled PrimFuncs -> CUDA C (`codegen.cuda`) -> a cubin, compiled by nvcc for the target's arch.

Nothing here needs a GPU or pycuda (only nvcc on PATH), so a CUDA artifact can be built on any
machine; loading and launching the cubin is the runtime's (runtime/cuda.py). Scheduling is not:
a tensor program must reach this backend already bound to GPU threads (the `schedule` pass of
the build-cuda pipeline, or `passes.schedule.gpu_rules.default_gpu_schedule`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..ir.diagnostics import MlcError
from ..ir.tir import BlockStmt, For, GemmCall, PrimFunc
from ..ir.tir_visit import nodes
from .cuda import CudaSource, lower_to_cuda

NVCC_OPTIONS = ("-O3", "-std=c++17", "-diag-suppress=177,550")


def nvcc_unavailable() -> str | None:
    """None when nvcc is on PATH (a CUDA build can compile), else the reason."""
    return None if shutil.which("nvcc") else "nvcc (the CUDA toolkit's compiler) is not on PATH"


def compile_source(src: CudaSource) -> bytes:
    """nvcc: CUDA C -> cubin for `src.arch` (cached on disk by source, arch and options)."""
    reason = nvcc_unavailable()
    if reason is not None:
        raise MlcError(f"codegen cuda: {reason}")
    # an arch-specific target (sm_90a) is built as compute_90a code for sm_90a
    gencode = f"arch=compute_{src.arch[3:]},code={src.arch}"
    opts = [*NVCC_OPTIONS, f"-gencode={gencode}"]
    key = hashlib.sha256("\0".join([src.source, *opts, _nvcc_version()]).encode()).hexdigest()
    cache = Path(tempfile.gettempdir()) / f"mlc-nvcc-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
    hit = cache / f"{key}.cubin"
    if hit.is_file():
        return hit.read_bytes()
    with tempfile.TemporaryDirectory(prefix="mlc-nvcc-") as tmp:
        cu, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.cubin"
        cu.write_text(src.source)
        r = subprocess.run(["nvcc", "-cubin", *opts, "-o", str(out), str(cu)], capture_output=True, text=True)
        if r.returncode != 0:
            raise MlcError(f"codegen cuda: nvcc failed: {(r.stderr or r.stdout)[:4000]}")
        cubin = out.read_bytes()
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / f"{key}.{os.getpid()}.part"
    part.write_bytes(cubin)
    part.replace(hit)
    return cubin


def _nvcc_version() -> str:
    return subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout


def check_scheduled(func: PrimFunc) -> None:
    """A PrimFunc with loops must have some bound to GPU threads or a tensorized (template GEMM)
    stage, in block form or lowered: this backend does not schedule, and an unbound nest would run
    on one GPU thread."""
    stmts = list(nodes(func.body))
    loops = [s for s in stmts if isinstance(s, For)]
    gemm = any(isinstance(s, GemmCall) or (isinstance(s, BlockStmt) and dict(s.annotations).get("tensor_intrin"))
               for s in stmts)
    if loops and not gemm and not any(s.kind == "thread" for s in loops):
        raise MlcError(f"codegen cuda of prim @{func.name}: no loop is bound to GPU threads; run the `schedule` "
                       f"pass with a cuda target first (mlc opt -p configs/pipelines/build-cuda.yaml, or "
                       f"passes.schedule.gpu_rules.default_gpu_schedule)", func.loc)


def build_cuda(funcs: Sequence[PrimFunc], arch: str, gemm_config: tuple[int, ...] | None = None
               ) -> tuple[CudaSource, bytes]:
    """Scheduled PrimFuncs -> CUDA C for `arch` (sm_XY) and its cubin."""
    for f in funcs:
        check_scheduled(f)
    src = lower_to_cuda(list(funcs), arch, gemm_config)
    return src, compile_source(src)
