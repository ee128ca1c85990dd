"""The opt-in TF32 tensor-core path of f32 GEMMs ($MLC_CUDA_TF32=1, codegen/cuda_gemm.py): which template
the codegen picks, that every tile compiles with nvcc; with a GPU, the error against numpy in f64 is
within TF32's (operands rounded to 10 mantissa bits) and the default stays strict f32."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import matmul
from mlc.codegen.cuda import lower_to_cuda
from mlc.codegen.cuda_gemm import TC_CONFIGS, TF32_ENV, tf32_enabled
from mlc.codegen.cuda_jit import compile_source, nvcc_unavailable
from mlc.ir.expr import Var
from mlc.passes.schedule.gpu_rules import default_gpu_schedule
from mlc.runtime.cuda import cuda_unavailable


def _source(n: int, k: int, cfg: tuple[int, ...] | None = None) -> str:
    return lower_to_cuda([default_gpu_schedule(matmul("mm", Var("m"), n, k, "f32"))], "sm_90a", cfg).source


def test_tf32_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TF32_ENV, raising=False)
    assert not tf32_enabled()
    assert "mlc_simt_gemm<float" in _source(256, 128) and "mlc_wmma_gemm<float" not in _source(256, 128)
    for off in ("0", "", "no"):
        monkeypatch.setenv(TF32_ENV, off)
        assert not tf32_enabled()
    monkeypatch.setenv(TF32_ENV, "1")
    assert "mlc_wmma_gemm<float, float" in _source(256, 128)
    assert "mlc_wmma_gemm<float, float" not in _source(260, 128)  # N not a multiple of 8: no 16-byte chunks


@pytest.mark.skipif(nvcc_unavailable() is not None, reason=f"{nvcc_unavailable()}")
def test_tf32_tiles_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TF32_ENV, "1")
    tiles = (TC_CONFIGS[0], TC_CONFIGS[4])  # BK 32 and 64 (every tile: benchmarks/bench_gpu.py tf32 builds them)
    funcs = [default_gpu_schedule(matmul(f"mm{i}", Var("m"), 512, 256, "f32")) for i in range(len(tiles))]
    from mlc.codegen.cuda import CudaSource, lower_func
    from mlc.codegen.cuda_expr import PRELUDE
    from mlc.codegen.cuda_gemm import GEMM_PRELUDE
    from mlc.ir.tir_lower import lower_tir_func

    lines, out = [PRELUDE, GEMM_PRELUDE], []
    for f, cfg in zip(funcs, tiles):
        cf, src = lower_func(lower_tir_func(f), cfg, "sm_90a")
        out.append(cf)
        lines += src
    src_all = CudaSource("\n".join(lines), tuple(out), "sm_90a")
    assert src_all.source.count("mlc_wmma_gemm<float, float") == len(tiles)
    assert compile_source(src_all)


_WHY = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("m,n,k", [(300, 256, 128), (1024, 1024, 1024), (2048, 512, 1024)])
def test_tf32_gemm_error_is_tf32s(monkeypatch: pytest.MonkeyPatch, m: int, n: int, k: int) -> None:
    from mlc.runtime.cuda import compile_cuda

    rng = np.random.default_rng(3)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    monkeypatch.setenv(TF32_ENV, "1")
    lib = compile_cuda([default_gpu_schedule(matmul("t", Var("m"), n, k, "f32"))])
    assert "mlc_wmma_gemm<float, float" in lib.source
    c = np.zeros((m, n), np.float32)
    lib.kernel("t")([a, b, c])
    err = float(np.abs(c - ref).max() / np.abs(ref).max())
    assert err < 2e-3, f"TF32 GEMM {m}x{n}x{k}: max error {err:.2e} of max|C|"
    np.testing.assert_allclose(c, ref, rtol=0, atol=2e-3 * np.sqrt(k) * 4)
    monkeypatch.setenv(TF32_ENV, "0")  # strict f32 again: the register-tile template, f32-exact sums
    strict = compile_cuda([default_gpu_schedule(matmul("s", Var("m"), n, k, "f32"))])
    assert "mlc_simt_gemm<float" in strict.source
    c2 = np.zeros((m, n), np.float32)
    strict.kernel("s")([a, b, c2])
    assert float(np.abs(c2 - ref).max() / np.abs(ref).max()) < 1e-5
