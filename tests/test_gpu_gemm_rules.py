"""The GPU default schedule reaches the GEMM templates for matmuls with leading dims and for operands
read through a reshape (as ONNX exports write attention's output projection): the stage is tensorized
(lower-tir: one GemmCall), the schedule keeps the semantics (TIR interpreter vs numpy), nvcc accepts
the CUDA, and on a GPU the kernels match numpy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlc.codegen.cuda import lower_to_cuda
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Var
from mlc.ir.printer import print_function
from mlc.ir.tir import GemmCall, PrimFunc
from mlc.ir.tir_builder import build, cast, compute, placeholder, reduce_axis, rsum
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import walk
from mlc.passes.schedule.gpu_rules import default_gpu_schedule
from mlc.passes.schedule.schedule import Schedule
from mlc.runtime.cuda import cuda_unavailable

NVCC = shutil.which("nvcc")
B, T, H, D, N = Var("B"), Var("T"), 4, 16, 96  # K = H * D = 64
AH, AD = 2, 64  # attention's heads and head dim


def scores(dtype: str = "f32") -> PrimFunc:
    """Attention scores as exported: s[b, h, t, u] = sum_d q[b, t, h*D + d] * k[b, u, h*D + d], both
    heads read through a reshape + transpose, N = T symbolic (head dim AD = 64: the f32 template wants
    K >= 64)."""
    q, k = placeholder("q", (B, T, AH * AD), dtype), placeholder("k", (B, T, AH * AD), dtype)
    r = reduce_axis(AD, "d")
    return build(_name("scores", dtype), [q, k], [compute(
        "s", (B, AH, T, T), lambda b, h, t, u: rsum(q[b, t, h * AD + r] * k[b, u, h * AD + r], r))])


def mix(dtype: str = "f32") -> PrimFunc:
    """Attention's value mix: o[b, h, t, d] = sum_u p[b, h, t, u] * v[b, u, h*D + d] (K = T symbolic)."""
    p, v = placeholder("p", (B, AH, T, T), dtype), placeholder("v", (B, T, AH * AD), dtype)
    r = reduce_axis(T, "u")
    return build(_name("mix", dtype), [p, v], [compute(
        "o", (B, AH, T, AD), lambda b, h, t, d: rsum(p[b, h, t, r] * v[b, r, h * AD + d], r))])


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("make", [scores, mix])
def test_attention_matmuls_become_batched_gemms(make, dtype: str) -> None:  # type: ignore[no-untyped-def]
    """A symbolic N or K: the register-tile template guards every edge (f16 operands widened to f32), so
    these run as GEMMs (the transposed key is staged as k_re[b, h, d, u], the value as v_re[b, h, u, d])."""
    f = make(dtype)
    s = default_gpu_schedule(f)
    (g,) = _gemms(s)
    assert g.batched
    rng = np.random.default_rng(5)
    bt, t = 2, 7
    if f.name == "scores":
        q, k = (rng.standard_normal((bt, t, AH * AD)).astype(np.float32) for _ in range(2))
        qh, kh = (x.reshape(bt, t, AH, AD).transpose(0, 2, 1, 3) for x in (q, k))
        args, want = [q, k], qh @ kh.transpose(0, 1, 3, 2)
    else:
        p = rng.standard_normal((bt, AH, t, t)).astype(np.float32)
        v = rng.standard_normal((bt, t, AH * AD)).astype(np.float32)
        args, want = [p, v], p @ v.reshape(bt, t, AH, AD).transpose(0, 2, 1, 3)
    assert ("mlc_simt_gemm<float, float" if dtype == "f32" else "mlc_simt_gemm<__half, __half") in lower_to_cuda([s]).source
    if dtype == "f32":  # the interpreter computes in the buffers' dtype: f32 is the exact check
        out = np.full(want.shape, np.nan, np.float32)
        run_prim(s, [*args, out])
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def mixed() -> PrimFunc:
    """amp's matmul: f32 activations and master weights rounded to f16 inside the product, accumulated in
    f32 (what `mlc amp` + fuse give: y = sum_k f32(f16(x)) * f32(f16(w)))."""
    x, w = placeholder("x", (B, T, H * D), "f32"), placeholder("w", (H * D, N), "f32")
    r = reduce_axis(H * D, "k")

    def half(e):  # type: ignore[no-untyped-def]
        return cast("f32", cast("f16", e))

    return build("mixed", [x, w], [compute("y", (B, T, N), lambda i, j, n: rsum(half(x[i, j, r]) * half(w[r, n]), r))])


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_ragged_constant_width_takes_the_register_tile(dtype: str) -> None:
    """N = 100 (no tensor-core shape, no tile of 8 divides it): a tile of 1 along N still tensorizes,
    so the register-tile template (it guards every edge) runs the GEMM."""
    x, w = placeholder("x", (B, 64), dtype), placeholder("w", (64, 100), dtype)
    r = reduce_axis(64, "k")
    f = build("ragged", [x, w], [compute("y", (B, 100), lambda i, n: rsum(x[i, r] * w[r, n], r))])
    s = default_gpu_schedule(f)
    (g,) = _gemms(s)
    assert arith.as_int(g.b.shape[-1]) == 100
    assert "mlc_simt_gemm<" in lower_to_cuda([s]).source
    if dtype == "f32":
        rng = np.random.default_rng(8)
        xs, ws = rng.standard_normal((3, 64)).astype(np.float32), rng.standard_normal((64, 100)).astype(np.float32)
        y = np.full((3, 100), np.nan, np.float32)
        run_prim(s, [xs, ws, y])
        np.testing.assert_allclose(y, xs @ ws, rtol=1e-4, atol=1e-4)


def test_amp_matmul_stages_f16_operands_for_the_tensor_cores() -> None:
    """The rounding to f16 moves into the staging copies (x_re, w_re hold f16), so the block is the mixed
    GEMM f32 += f32(f16) * f32(f16): wgmma with f16 operands and an f32 C on sm_90a; same values."""
    f = mixed()
    s = default_gpu_schedule(f)
    (g,) = _gemms(s)
    assert (g.a.dtype, g.b.dtype, g.c.dtype) == ("f16", "f16", "f32") and {g.a.name, g.b.name} == {"x_re", "w_re"}
    assert "mlc_wgmma_gemm<__half, float" in lower_to_cuda([s], "sm_90a").source
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((2, 5, H * D)).astype(np.float32), rng.standard_normal((H * D, N)).astype(np.float32)
    want, got = (np.full((2, 5, N), np.nan, np.float32) for _ in range(2))
    run_prim(f, [x, w, want])
    run_prim(s, [x, w, got])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    x16, w16 = x.astype(np.float16).astype(np.float32), w.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(got, x16 @ w16, rtol=1e-4, atol=1e-4)


def _name(base: str, dtype: str) -> str:
    return base if dtype == "f32" else f"{base}_{dtype}"


def folded(dtype: str = "f32") -> PrimFunc:
    """y[b, t, n] = x[b, t, :] @ w[:, n] with symbolic b, t: A's leading dims fold into the GEMM rows."""
    x, w = placeholder("x", (B, T, H * D), dtype), placeholder("w", (H * D, N), dtype)
    r = reduce_axis(H * D, "k")
    return build(_name("fold", dtype), [x, w], [compute("y", (B, T, N), lambda i, j, n: rsum(x[i, j, r] * w[r, n], r))])


def heads(dtype: str = "f32") -> PrimFunc:
    """Attention's output projection as exported: the heads [b, h, t, d] are read through a
    transpose + reshape to [b, t, h*d] inside the matmul (y = concat_h(o[b, h, t, :]) @ w)."""
    o, w = placeholder("o", (B, H, T, D), dtype), placeholder("w", (H * D, N), dtype)
    r = reduce_axis(H * D, "k")
    return build(_name("proj", dtype), [o, w], [compute("y", (B, T, N), lambda i, j, n: rsum(o[i, r // D, j, r % D] * w[r, n], r))])


def scaled(dtype: str = "f32") -> PrimFunc:
    """An elementwise producer feeding a GEMM: inlining it would hide the GEMM from the template."""
    x, w = placeholder("x", (B, T, H * D), dtype), placeholder("w", (H * D, N), dtype)
    s = compute("s", (B, T, H * D), lambda i, j, k: x[i, j, k] * 2.0)
    r = reduce_axis(H * D, "k")
    return build(_name("scaled", dtype), [x, w], [compute("y", (B, T, N), lambda i, j, n: rsum(s[i, j, r] * w[r, n], r))])


def _inputs(f: PrimFunc, rng: np.random.Generator, b: int = 2, t: int = 5) -> list[np.ndarray]:
    shapes = {"fold": [(b, t, H * D), (H * D, N)], "proj": [(b, H, t, D), (H * D, N)],
              "scaled": [(b, t, H * D), (H * D, N)]}[f.name.split("_")[0]]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _want(name: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if name == "proj":
        x = x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], H * D)
    if name == "scaled":
        x = x * 2.0
    return x @ w


def _gemms(f: PrimFunc) -> list[GemmCall]:
    return [s for _, s in walk(lower_tir_func(f).body) if isinstance(s, GemmCall)]


@pytest.mark.parametrize("make", [folded, heads, scaled])
def test_default_schedule_tensorizes_and_keeps_semantics(make) -> None:  # type: ignore[no-untyped-def]
    f = make()
    s = default_gpu_schedule(f)
    (g,) = _gemms(s)
    assert not g.batched and g.b.name == "w"  # the leading dims fold into M; w is B as it is
    rng = np.random.default_rng(3)
    x, w = _inputs(f, rng)
    y = np.full((2, 5, N), np.nan, np.float32)
    run_prim(s, [x, w, y])
    np.testing.assert_allclose(y, _want(f.name, x, w), rtol=1e-4, atol=1e-4)
    assert "mlc_simt_gemm<float" in lower_to_cuda([s]).source


REINDEXED = """\
prim @proj(%o: buffer<B x 4 x T x 16 x f32>, %w: buffer<64 x 96 x f32>, %y: buffer<B x T x 96 x f32>) outputs 1 {
  block "root"() {
    alloc %o_re: buffer<B x T x 64 x f32>
    for ax0 in 0..B {
      for ax1 in 0..T {
        for ax2 in 0..64 {
          block "o_reindex"(S v_i = ax0 in 0..B, S v_j = ax1 in 0..T, S v_k = ax2 in 0..64) {
            %o_re[v_i, v_j, v_k] = %o[v_i, floordiv(v_k, 16), v_j, floormod(v_k, 16)]
          }
        }
      }
    }
    for i in 0..B {
      for j in 0..T {
        for n in 0..96 {
          for k in 0..64 {
            block "y"(S v_i = i in 0..B, S v_j = j in 0..T, S v_n = n in 0..96, R v_k = k in 0..64) {
              init {
                %y[v_i, v_j, v_n] = 0.0
              }
              %y[v_i, v_j, v_n] = %y[v_i, v_j, v_n] + %o_re[v_i, v_j, v_k] * %w[v_k, v_n]
            }
          }
        }
      }
    }
  }
}
"""


def test_reindex_stages_a_reshaped_operand() -> None:
    """Before: the matmul loads `%o[v_i, floordiv(v_k, 16), v_j, floormod(v_k, 16)]`; after: `%o_re[v_i,
    v_j, v_k]`, filled by a nest of its own before the matmul's (the transpose + reshape moved there)."""
    sch = Schedule(heads())
    blk = next(b for b in sch.get_blocks() if sch.get(b).name == "y")
    assert "+ %o[v_i, floordiv(v_k, 16), v_j, floormod(v_k, 16)] * %w[v_k, v_n]" in print_function(sch.func)
    sch.reindex(blk, 0)
    assert print_function(sch.func) == REINDEXED
    rng = np.random.default_rng(4)
    x, w = _inputs(sch.func, rng)
    y = np.full((2, 5, N), np.nan, np.float32)
    run_prim(sch.func, [x, w, y])
    np.testing.assert_allclose(y, _want("proj", x, w), rtol=1e-4, atol=1e-4)
    with pytest.raises(MlcError, match="already loads w by its iterators in that order"):
        sch.reindex(blk, 1, [1, 0])  # (k, n): nothing would change
    with pytest.raises(MlcError, match="not a permutation"):
        sch.reindex(blk, 1, [0, 0])



@pytest.mark.parametrize("make", [mixed, lambda: scores("f16")], ids=["mixed", "scores_f16"])
def test_staged_gemm_traces_replay_in_a_fresh_process(make) -> None:  # type: ignore[no-untyped-def]
    """A tuning record's trace (reindex, then a `gemm_1x16x16_f16f32@tile` / `gemm_1x1x16_f16@tile`
    intrinsic) replays where those intrinsics were never registered, as in a fresh tuner process:
    register_trace_intrins registers them from their names, and the replay equals the recorded schedule."""
    from mlc.passes.schedule import tensorize
    from mlc.passes.schedule.gpu_rules import default_gpu_trace, register_trace_intrins, sample_gpu_schedule
    from mlc.passes.schedule.trace import Trace

    f = make()
    for sch in (default_gpu_trace(f), sample_gpu_schedule(f, seed=0)):
        kinds = [i.kind for i in sch.trace.insts]
        assert kinds.count("reindex") == 2 and "tensorize" in kinds
        tr = Trace.from_json(sch.trace.to_json())
        for i in tr.insts:
            if i.kind == "tensorize":
                tensorize._INTRINS.pop(i.inputs[1], None)  # also the base: a fresh process has neither
                tensorize._INTRINS.pop(i.inputs[1].split("@")[0], None)
        with pytest.raises(MlcError, match="unknown tensor intrinsic"):
            tr.apply(f)
        register_trace_intrins(tr)
        assert tr.apply(f) == sch.func

@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_nvcc_accepts_the_staged_gemms(tmp_path: Path) -> None:
    prims = [default_gpu_schedule(make(dt)) for make in (folded, heads, scaled) for dt in ("f32", "f16")]
    prims += [default_gpu_schedule(make(dt)) for make in (scores, mix) for dt in ("f32", "f16")]
    prims.append(default_gpu_schedule(mixed()))
    (tmp_path / "k.cu").write_text(lower_to_cuda(prims, "sm_90a").source)
    r = subprocess.run([str(NVCC), "-cubin", "-arch=sm_90a", "-std=c++17", "-diag-suppress=177,550", "-o",
                        str(tmp_path / "k.cubin"), str(tmp_path / "k.cu")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


_WHY = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_staged_gemms_on_gpu_match_numpy(dtype: str) -> None:
    from mlc.runtime.cuda import compile_cuda

    npdt = np.float32 if dtype == "f32" else np.float16
    lib = compile_cuda([default_gpu_schedule(make(dtype)) for make in (folded, heads, scaled)])
    rng = np.random.default_rng(11)
    for make in (folded, heads, scaled):
        f = make(dtype)
        x, w = (a.astype(npdt) for a in _inputs(f, rng, b=3, t=37))
        y = np.full((3, 37, N), np.nan, npdt)
        lib.kernel(f.name)([x, w, y])
        want = _want(f.name.split("_")[0], x.astype(np.float32), w.astype(np.float32))
        tol = 1e-4 if dtype == "f32" else 2e-2
        np.testing.assert_allclose(y.astype(np.float32), want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=f.name)


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
def test_attention_gemms_on_gpu_match_numpy() -> None:
    from mlc.runtime.cuda import compile_cuda

    lib = compile_cuda([default_gpu_schedule(make(dt)) for make in (scores, mix) for dt in ("f32", "f16")]
                       + [default_gpu_schedule(mixed())])
    rng = np.random.default_rng(12)
    bt, t = 3, 77
    for dt, npdt, tol in (("f32", np.float32, 1e-4), ("f16", np.float16, 1e-2)):
        q, k, v = (rng.standard_normal((bt, t, AH * AD)).astype(npdt) for _ in range(3))
        s = np.full((bt, AH, t, t), np.nan, npdt)
        lib.kernel(_name("scores", dt))([q, k, s])
        qh, kh, vh = (x.astype(np.float32).reshape(bt, t, AH, AD).transpose(0, 2, 1, 3) for x in (q, k, v))
        want = qh @ kh.transpose(0, 1, 3, 2)
        np.testing.assert_allclose(s.astype(np.float32), want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=dt)
        o = np.full((bt, AH, t, AD), np.nan, npdt)
        lib.kernel(_name("mix", dt))([s, v, o])
        want = s.astype(np.float32) @ vh
        np.testing.assert_allclose(o.astype(np.float32), want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=dt)
    x, w = rng.standard_normal((3, t, H * D)).astype(np.float32), rng.standard_normal((H * D, N)).astype(np.float32)
    y = np.full((3, t, N), np.nan, np.float32)
    lib.kernel("mixed")([x, w, y])
    want = x.astype(np.float16).astype(np.float32) @ w.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
