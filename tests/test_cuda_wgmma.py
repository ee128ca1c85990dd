"""The Hopper wgmma GEMM template (codegen/cuda_wgmma.py): chosen for f16 GEMMs on sm_90a only,
accepted by nvcc for sm_90a without spills with either producer (TMA, cp.async), and, on an sm_90 GPU,
equal to a float32 numpy GEMM for tile multiples, ragged edges, folded leading dims and a batched
GEMM, with each producer."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cuda_helpers import matmul
from mlc.codegen.cuda import lower_to_cuda
from mlc.codegen.cuda_gemm import TC_CONFIGS
from mlc.codegen.cuda_wgmma import (
    LOADER_ENV,
    WGMMA_CONFIGS,
    WGMMA_DEFAULT_LOADER,
    WGMMA_LOADERS,
    WGMMA_MAX_SHARED,
    WGMMA_SMS,
    WGMMA_THREADS,
    wgmma_sm_exclusive,
    wgmma_smem_bytes,
)
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Var
from mlc.ir.tir import BlockStmt, For, PrimFunc, Seq, Stmt
from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rsum
from mlc.passes.schedule.gpu_rules import default_gpu_schedule
from mlc.passes.schedule.schedule import Schedule
from mlc.runtime.cuda import cuda_unavailable

NVCC = shutil.which("nvcc")


def _gemm_line(src: str) -> str:
    return next(line for line in src.splitlines() if line.startswith("  mlc_") and "_gemm<" in line)




def _annotate(s: Stmt, name: str, intrin: str) -> Stmt:
    if isinstance(s, BlockStmt):
        if s.name == name:
            return dataclasses.replace(s, annotations=(*s.annotations, ("tensor_intrin", intrin)))
        return dataclasses.replace(s, body=_annotate(s.body, name, intrin))
    if isinstance(s, For):
        return dataclasses.replace(s, body=_annotate(s.body, name, intrin))
    if isinstance(s, Seq):
        return dataclasses.replace(s, stmts=tuple(_annotate(x, name, intrin) for x in s.stmts))
    return s


def _marked(f: PrimFunc) -> PrimFunc:
    """A GEMM with leading dims blockized whole and marked for the GEMM template by hand (its init a stage
    of its own): the template tested apart from the schedule (tests/test_gpu_gemm_rules.py tests that)."""
    sch = Schedule(f)
    blk = sch.get_blocks()[0]
    sch.decompose_reduction(blk, sch.get_loops(blk)[0])
    outer = sch.blockize(sch.get_loops(blk)[0])
    f = sch.func
    return dataclasses.replace(f, body=_annotate(f.body, sch.get(outer).name, "gemm_batched"))


def batched(nb: int, m: int, n: int, k: int) -> PrimFunc:
    """C[z] = A[z] @ B[z] (A, B and C share the leading dim)."""
    a, b = placeholder("A", (nb, m, k), "f16"), placeholder("B", (nb, k, n), "f16")
    r = reduce_axis(k, "k")
    return _marked(build("bmm", [a, b], [compute("C", (nb, m, n), lambda z, i, j: rsum(a[z, i, r] * b[z, r, j], r))]))


def _folded(dtype: str = "f16") -> PrimFunc:
    """C[b, i, j] = sum_k A[b, i, k] B[k, j]: A's leading dim folds into the GEMM rows."""
    bt = 5
    a, b = placeholder("A", (bt, 100, 72), dtype), placeholder("B", (72, 136), dtype)
    r = reduce_axis(72, "k")
    return _marked(build("fold", [a, b], [compute("C", (bt, 100, 136), lambda z, i, j: rsum(a[z, i, r] * b[r, j], r))]))


def test_wgmma_is_chosen_on_sm90a_only() -> None:
    f = default_gpu_schedule(matmul("h", 4096, 4096, 4096, "f16"))
    hopper = lower_to_cuda([f], "sm_90a")
    assert "mlc_wgmma_gemm<__half, __half, 256, 4>" in _gemm_line(hopper.source)
    (ln,) = hopper.funcs[0].launches
    assert ln.block == (WGMMA_THREADS, 1, 1) and ln.shared_bytes > 48 * 1024
    assert [arith.as_int(g) for g in ln.grid] == [WGMMA_SMS, 1, 1]  # persistent: 512 tiles over one block per SM
    for arch in ("sm_90", "sm_80", "sm_100a"):
        assert "mlc_wmma_gemm<" in _gemm_line(lower_to_cuda([f], arch).source)
    # a wmma tile asked for explicitly keeps the wmma template; a wgmma tile elsewhere falls back
    assert "mlc_wmma_gemm<" in _gemm_line(lower_to_cuda([f], "sm_90a", TC_CONFIGS[1]).source)
    assert "mlc_wgmma_gemm<__half, __half, 128, 5>" in _gemm_line(lower_to_cuda([f], "sm_90a", WGMMA_CONFIGS[2]).source)
    assert "mlc_wmma_gemm<" in _gemm_line(lower_to_cuda([f], "sm_80", WGMMA_CONFIGS[0]).source)
    # f32 stays on the register-tile template
    s = default_gpu_schedule(matmul("s", 512, 256, 128, "f32"))
    assert "mlc_simt_gemm<" in _gemm_line(lower_to_cuda([s], "sm_90a").source)


def test_narrow_and_symbolic_gemms() -> None:
    narrow = lower_to_cuda([default_gpu_schedule(matmul("n", 512, 128, 64, "f16"))], "sm_90a")
    assert ", 128, 4>(" in _gemm_line(narrow.source)
    sym = lower_to_cuda([default_gpu_schedule(matmul("m", Var("m"), 264, 40, "f16"))], "sm_90a")
    (ln,) = sym.funcs[0].launches
    assert arith.evaluate(ln.grid[0], {"m": 300}) == 2 * 3  # 2 x 3 tiles of 128 x 256
    bf = lower_to_cuda([_folded("bf16")], "sm_90a")
    assert "mlc_wgmma_gemm<__nv_bfloat16, __nv_bfloat16" in _gemm_line(bf.source)
    bl = lower_to_cuda([batched(3, 200, 136, 72)], "sm_90a")
    assert "mlc_wgmma_gemm<" in _gemm_line(bl.source)
    assert arith.as_int(bl.funcs[0].launches[-1].grid[0]) == 3 * 2 * 2  # batch x 2 x 2 tiles of 128 x 128


def test_loader_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer is a codegen choice (default, or $MLC_WGMMA_LOADER); every tile can use the TMA path's
    per-SM tensor-map slot because no two blocks of any tile fit on one SM."""
    f = default_gpu_schedule(matmul("h", 1024, 512, 256, "f16"))
    monkeypatch.delenv(LOADER_ENV, raising=False)
    want = "true);" if WGMMA_DEFAULT_LOADER == "tma" else "false);"
    assert _gemm_line(lower_to_cuda([f], "sm_90a").source).endswith(want)
    monkeypatch.setenv(LOADER_ENV, "tma")
    assert _gemm_line(lower_to_cuda([f], "sm_90a").source).endswith(", false, true);")
    monkeypatch.setenv(LOADER_ENV, "cp.async")
    assert _gemm_line(lower_to_cuda([f], "sm_90a").source).endswith(", false, false);")
    monkeypatch.setenv(LOADER_ENV, "bulk")
    with pytest.raises(MlcError, match="MLC_WGMMA_LOADER"):
        lower_to_cuda([f], "sm_90a")
    for _, bn, _, _, _, stages in WGMMA_CONFIGS:
        assert wgmma_sm_exclusive(bn, stages) and wgmma_smem_bytes(bn, stages) <= WGMMA_MAX_SHARED


def _nvcc(tmp_path: Path, src: str, *arch: str) -> str:
    (tmp_path / "k.cu").write_text(src)
    r = subprocess.run([str(NVCC), "-cubin", *arch, "-std=c++17", "-O3", "-diag-suppress=177,550", "-Xptxas", "-v",
                        "-o", str(tmp_path / "k.cubin"), str(tmp_path / "k.cu")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("loader", WGMMA_LOADERS)
def test_nvcc_builds_wgmma_for_sm90a_without_spills(tmp_path: Path, loader: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOADER_ENV, loader)
    prims = [default_gpu_schedule(matmul("big", 4096, 4096, 4096, "f16")),
             default_gpu_schedule(matmul("sym", Var("m"), 264, 40, "f16")),
             _folded("bf16"), batched(2, 64, 64, 64)]
    log = _nvcc(tmp_path, lower_to_cuda(prims, "sm_90a").source, "-gencode=arch=compute_90a,code=sm_90a")
    assert log.count("for 'sm_90a'") >= 4
    spills = re.findall(r"(\d+) bytes spill stores", log)
    assert spills and all(s == "0" for s in spills), log
    assert "C7508" not in log  # setmaxnreg was honoured
    # the same prelude still builds where wgmma does not exist (the template is compiled out)
    _nvcc(tmp_path, lower_to_cuda(prims[:1], "sm_80").source, "-arch=sm_80")


# ---- on a Hopper GPU --------------------------------------------------------------------------------
_WHY = cuda_unavailable()


def _hopper() -> bool:
    from mlc.runtime.cuda import device_arch

    return device_arch() == "sm_90a"


def _check(c: np.ndarray, want: np.ndarray) -> None:
    err = float(np.abs(c.astype(np.float32) - want).max() / max(np.abs(want).max(), 1e-6))
    assert err < 1e-2, err


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("loader", WGMMA_LOADERS)
@pytest.mark.parametrize("m,n,k,config", [(256, 256, 64, None), (300, 264, 40, None), (1000, 520, 136, None),
                                          (2048, 1024, 512, None), (777, 392, 200, WGMMA_CONFIGS[0]),
                                          (130, 136, 1000, WGMMA_CONFIGS[3])])
def test_wgmma_gemm_matches_numpy(m: int, n: int, k: int, config: tuple[int, ...] | None, loader: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shape twice through one kernel (a second M): the TMA path rebuilds its per-SM tensor maps per
    launch, so a stale map would show in the second result."""
    from mlc.runtime.cuda import compile_cuda

    if not _hopper():
        pytest.skip("needs an sm_90 GPU")
    monkeypatch.setenv(LOADER_ENV, loader)
    lib = compile_cuda([default_gpu_schedule(matmul("h", Var("m"), n, k, "f16"))], gemm_config=config)
    assert _gemm_line(lib.source).endswith("true);" if loader == "tma" else "false);")
    rng = np.random.default_rng(m + n + k)
    for rows in (m, m // 2 + 3):
        a = rng.standard_normal((rows, k)).astype(np.float16)
        b = rng.standard_normal((k, n)).astype(np.float16)
        c = np.full((rows, n), np.nan, np.float16)
        lib.kernel("h")([a, b, c])
        _check(c, a.astype(np.float32) @ b.astype(np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("loader", WGMMA_LOADERS)
def test_wgmma_batched_and_folded_gemms(loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlc.runtime.cuda import compile_cuda

    if not _hopper():
        pytest.skip("needs an sm_90 GPU")
    monkeypatch.setenv(LOADER_ENV, loader)
    rng = np.random.default_rng(7)
    lib = compile_cuda([batched(3, 200, 136, 72)])
    assert "mlc_wgmma_gemm<" in _gemm_line(lib.source)
    a = rng.standard_normal((3, 200, 72)).astype(np.float16)
    b = rng.standard_normal((3, 72, 136)).astype(np.float16)
    c = rng.standard_normal((3, 200, 136)).astype(np.float16)  # overwritten by the init stage
    lib.kernel("bmm")([a, b, c])
    _check(c, a.astype(np.float32) @ b.astype(np.float32))
    lib = compile_cuda([_folded()])
    a = rng.standard_normal((5, 100, 72)).astype(np.float16)
    b = rng.standard_normal((72, 136)).astype(np.float16)
    c = np.zeros((5, 100, 136), np.float16)
    lib.kernel("fold")([a, b, c])
    _check(c, a.astype(np.float32) @ b.astype(np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
def test_wgmma_tma_kernels_on_concurrent_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two TMA GEMMs of different shapes from one module, launched alternately on two streams: their
    blocks share the per-SM tensor-map scratch, which stays private only because they cannot share an SM."""
    import pycuda.driver as drv
    from mlc.runtime.cuda import compile_cuda

    if not _hopper():
        pytest.skip("needs an sm_90 GPU")
    monkeypatch.setenv(LOADER_ENV, "tma")
    lib = compile_cuda([default_gpu_schedule(matmul("p", 1024, 512, 256, "f16")),
                        default_gpu_schedule(matmul("q", 640, 264, 392, "f16"))])
    rng = np.random.default_rng(3)
    runs = []
    for name, (m, n, k) in (("p", (1024, 512, 256)), ("q", (640, 264, 392))):
        a = rng.standard_normal((m, k)).astype(np.float16)
        b = rng.standard_normal((k, n)).astype(np.float16)
        c = np.full((m, n), np.nan, np.float16)
        kern = lib.kernel(name)
        bufs = [drv.to_device(x) for x in (a, b, c)]
        runs.append((kern, bufs, kern.bind_dims([x.shape for x in (a, b, c)]), drv.Stream(), c,
                     a.astype(np.float32) @ b.astype(np.float32)))
    for _ in range(20):
        for kern, bufs, env, stream, _, _ in runs:
            kern.launch([int(x) for x in bufs], env, stream, lambda sizes: [])
    drv.Context.synchronize()
    for _, bufs, _, _, c, want in runs:
        drv.memcpy_dtoh(c, bufs[2])
        _check(c, want)
