"""GEMM stages on the GPU: a `GemmCall` statement (lower-tir's form of a stage tensorized with a
`gemm_*` intrinsic, ir/tir_gemm.py recognises the pattern) becomes a tiled kernel, one of two templates: f16/bf16 operands use tensor
cores (wmma 16x16x16, f32 accumulators, a 3-stage cp.async pipeline through shared memory), f32 uses
register tiles of 8x8 per thread, exact f32. With $MLC_CUDA_TF32=1 at codegen (opt-in, as PyTorch's
`torch.backends.cuda.matmul.allow_tf32`), f32 GEMMs whose N and K are constant multiples of 8 use the
wmma template with TF32 fragments instead (m16n16k8: operands rounded to a 10-bit mantissa, f32
accumulation; relative error ~1e-3). The tile loops of the schedule only certify the pattern; the
template chooses its own block tile, which is what makes it fast on the hardware.
"""

from __future__ import annotations

import os

from ..ir import arith
from ..ir.expr import Bin, Const, Expr
from ..ir.tir import GemmCall, PrimFunc, Stmt
from ..ir.tir_gemm import SIMT_CONFIGS, TC_CONFIGS, GemmConfig, GemmInfo, gemm_info, on_tensor_cores, tensor_core_ok
from .cuda_expr import MEM_TYPE, ExprEmitter, buf_name
from .cuda_wgmma import (
    WGMMA_CONFIGS,
    WGMMA_PRELUDE,
    WGMMA_SMS,
    WGMMA_THREADS,
    wgmma_config,
    wgmma_loader,
    wgmma_ok,
    wgmma_smem_bytes,
)

TF32_ENV = "MLC_CUDA_TF32"


def tf32_enabled() -> bool:
    """$MLC_CUDA_TF32 is 1/true/on: f32 GEMMs may round their operands to TF32 on tensor cores."""
    return os.environ.get(TF32_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _gemm_config(g: GemmInfo, tensor_cores: bool) -> GemmConfig:
    """Default tile: big tiles when both matrix sides are large."""
    rows, n = arith.as_int(g.rows), arith.as_int(g.n)
    big = rows is not None and n is not None and rows >= 2048 and n >= 2048
    if not tensor_cores:
        return SIMT_CONFIGS[0]
    return TC_CONFIGS[0] if big else TC_CONFIGS[2]


def emit_gemm_stage(func: PrimFunc, stage: Stmt, config: GemmConfig | None = None, arch: str = "sm_90"
                    ) -> tuple[list[str], tuple[Expr, Expr, Expr], tuple[int, int, int], int] | None:
    """Kernel body, grid, block and dynamic shared bytes for a stage holding a tensorized GEMM.
    On sm_90a, f16/bf16 GEMMs use the wgmma template unless `config` is a wmma tile (`TC_CONFIGS`), with
    the producer `cuda_wgmma.wgmma_loader()` names (TMA or cp.async)."""
    if not isinstance(stage, GemmCall):
        return None
    g = gemm_info(stage)
    tf32 = g.a.dtype == "f32" and g.c.dtype == "f32" and tf32_enabled() and tensor_core_ok(g)
    tc = on_tensor_cores(g) or tf32
    if config is None and stage.tile is not None:  # the template tile the schedule chose
        config = stage.tile.as_tuple()
    accumulate = stage.accumulate
    if config is not None and (config in TC_CONFIGS or config in WGMMA_CONFIGS) != tc \
            or config is not None and not tc and config not in SIMT_CONFIGS:
        config = None  # a tile of the other template, or none of ours
    hopper = tc and wgmma_ok(g, arch) and config not in TC_CONFIGS
    if config in WGMMA_CONFIGS and not hopper:
        config = None  # a wgmma tile where that template cannot run
    bm, bn, bk, wm, wn, stages = config or (wgmma_config(g) if hopper else _gemm_config(g, tc))
    ex = ExprEmitter(lambda e: "0")
    rows, n, k, batch = ex(g.rows), ex(g.n), ex(g.k), g.batch
    sa = f"(long long)({rows}) * ({k})" if g.batched else "0"
    sb = f"(long long)({k}) * ({n})" if g.batched else "0"
    sc = f"(long long)({rows}) * ({n})" if g.batched else "0"
    a, b, c = buf_name(g.a), buf_name(g.b), buf_name(g.c)
    acc = "true" if accumulate else "false"
    tcty = MEM_TYPE[g.c.dtype]
    body = ["  const long long bz = blockIdx.z;"]
    if hopper:
        nthreads, smem = WGMMA_THREADS, wgmma_smem_bytes(bn, stages)
        body = [f"  mlc_wgmma_gemm<{MEM_TYPE[g.a.dtype]}, {tcty}, {bn}, {stages}>({a}, {b}, {c}, {sa}, {sb}, {sc}, "
                f"(int)({ex(batch)}), {rows}, {n}, {k}, {acc}, {'true' if wgmma_loader() == 'tma' else 'false'});"]
        tiles = arith.simplify(((g.n + (bn - 1)) // bn) * ((g.rows + (bm - 1)) // bm) * batch)
        return body, (arith.simplify(Bin("min", tiles, Const(WGMMA_SMS))), Const(1), Const(1)), (nthreads, 1, 1), smem
    if tc:
        nthreads = (bm // wm) * (bn // wn) * 32
        smem = max(stages * (bm * (bk + 8) + bk * (bn + 8)) * (4 if tf32 else 2), (nthreads // 32) * 16 * 20 * 4)
        body.append(f"  mlc_wmma_gemm<{MEM_TYPE[g.a.dtype]}, {tcty}, {bm}, {bn}, {bk}, {wm}, {wn}, {stages}>("
                    f"{a} + bz * {sa}, {b} + bz * {sb}, {c} + bz * {sc}, {rows}, {n}, {k}, {acc});")
    else:
        nthreads = (bm // wm) * (bn // wn)
        smem = 0
        body.append(f"  mlc_simt_gemm<{MEM_TYPE[g.a.dtype]}, {tcty}, {bm}, {bn}, {bk}, {wm}, {wn}>("
                    f"{a} + bz * {sa}, {b} + bz * {sb}, {c} + bz * {sc}, {rows}, {n}, {k}, {acc});")
    grid = (arith.simplify((g.n + (bn - 1)) // bn), arith.simplify((g.rows + (bm - 1)) // bm), batch)
    return body, grid, (nthreads, 1, 1), smem


_WMMA_PRELUDE = r"""#include <mma.h>
__device__ __forceinline__ void mlc_cp_async16(void* smem, const void* gmem, bool ok) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  int n = ok ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void mlc_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void mlc_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }
// the wmma fragment element type of an operand type: f32 operands go through TF32 fragments
template <typename T> struct mlc_wmma_elem { using type = T; };
template <> struct mlc_wmma_elem<float> { using type = nvcuda::wmma::precision::tf32; };
__device__ __forceinline__ float mlc_to_float(float v) { return v; }
__device__ __forceinline__ float mlc_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float mlc_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T mlc_from_float(float v);
template <> __device__ __forceinline__ float mlc_from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half mlc_from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 mlc_from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// dst[0..n) (+)= src[0..8) for n >= 8 as one vector store when nothing is added, else element by element
template <typename TC> __device__ __forceinline__ void mlc_store8(TC* dst, const float* src, int n, bool accumulate) {
  if (n >= 8 && !accumulate) {
    if constexpr (sizeof(TC) == 2) {
      __align__(16) TC v[8];
#pragma unroll
      for (int t = 0; t < 8; ++t) v[t] = mlc_from_float<TC>(src[t]);
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    } else {
#pragma unroll
      for (int t = 0; t < 8; t += 4)
        *reinterpret_cast<float4*>(dst + t) = make_float4(src[t], src[t + 1], src[t + 2], src[t + 3]);
    }
    return;
  }
  for (int t = 0; t < 8 && t < n; ++t) dst[t] = mlc_from_float<TC>(src[t] + (accumulate ? mlc_to_float(dst[t]) : 0.0f));
}

// C[M,N] (+)= A[M,K] B[K,N], row-major, f32 accumulation on tensor cores: f16/bf16 operands (m16n16k16), or f32
// operands rounded to TF32 in the fragments (m16n16k8; PyTorch's allow_tf32). Tiles move in 16-byte chunks.
template <typename TA, typename TC, int BM, int BN, int BK, int WM, int WN, int STAGES>
__device__ __forceinline__ void mlc_wmma_gemm(const TA* __restrict__ A, const TA* __restrict__ B, TC* __restrict__ C,
                                              int M, int N, int K, bool accumulate) {
  using namespace nvcuda;
  constexpr int WARPS_N = BN / WN, NT = (BM / WM) * (BN / WN) * 32;
  constexpr int LDA = BK + 8, LDB = BN + 8, FM = WM / 16, FN = WN / 16;
  constexpr bool TF32 = sizeof(TA) == 4;
  constexpr int KS = TF32 ? 8 : 16, VEC = 16 / (int)sizeof(TA);  // k per mma; elements per 16-byte chunk
  using FragT = typename mlc_wmma_elem<TA>::type;
  extern __shared__ __align__(128) unsigned char mlc_smem[];
  TA* As = reinterpret_cast<TA*>(mlc_smem);
  TA* Bs = As + STAGES * BM * LDA;
  const int tid = threadIdx.x, warp = tid >> 5, wm = warp / WARPS_N, wn = warp % WARPS_N;
  // grouped rasterization: 8 block rows walk the columns together, so A and B tiles are reused from L2
  const int gx = gridDim.x, bid = blockIdx.y * gx + blockIdx.x, group = bid / (8 * gx);
  const int rows_in_group = min((int)gridDim.y - group * 8, 8), in_group = bid % (8 * gx);
  const int bm = (group * 8 + in_group % rows_in_group) * BM, bn = (in_group / rows_in_group) * BN;
  wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  const int KT = (K + BK - 1) / BK;
  auto load_tile = [&](int stage, int kt) {
    const int k0 = kt * BK;
    TA* as = As + stage * BM * LDA;
    TA* bs = Bs + stage * BK * LDB;
#pragma unroll
    for (int c = tid; c < BM * BK / VEC; c += NT) {
      const int r = c / (BK / VEC), col = (c % (BK / VEC)) * VEC, gr = bm + r, gc = k0 + col;
      const bool ok = gr < M && gc < K;
      mlc_cp_async16(as + r * LDA + col, ok ? A + (size_t)gr * K + gc : A, ok);
    }
#pragma unroll
    for (int c = tid; c < BK * BN / VEC; c += NT) {
      const int r = c / (BN / VEC), col = (c % (BN / VEC)) * VEC, gr = k0 + r, gc = bn + col;
      const bool ok = gr < K && gc < N;
      mlc_cp_async16(bs + r * LDB + col, ok ? B + (size_t)gr * N + gc : B, ok);
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load_tile(s, s);
    mlc_cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    mlc_cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = kt + STAGES - 1;
    if (nk < KT) load_tile(nk % STAGES, nk);
    mlc_cp_async_commit();
    const TA* as = As + (kt % STAGES) * BM * LDA;
    const TA* bs = Bs + (kt % STAGES) * BK * LDB;
#pragma unroll
    for (int kk = 0; kk < BK; kk += KS) {
      wmma::fragment<wmma::matrix_a, 16, 16, KS, FragT, wmma::row_major> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, KS, FragT, wmma::row_major> fb[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(fa[i], as + (wm * WM + i * 16) * LDA + kk, LDA);
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(fb[j], bs + kk * LDB + wn * WN + j * 16, LDB);
      if constexpr (TF32) {  // round the f32 operands to TF32 (round to nearest), as cuBLAS does
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
#pragma unroll
        for (int j = 0; j < FN; ++j)
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  mlc_cp_async_wait<0>();
  __syncthreads();
  // epilogue: each warp stages one 16x16 accumulator at a time and writes rows of 8 (16/32-byte stores)
  float* Cw = reinterpret_cast<float*>(mlc_smem) + warp * 16 * 20;
  const int lane = tid & 31, er = lane >> 1, ec = (lane & 1) * 8;
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(Cw, acc[i][j], 20, wmma::mem_row_major);
      __syncwarp();
      const int gr = bm + wm * WM + i * 16 + er, gc = bn + wn * WN + j * 16 + ec;
      if (gr < M) mlc_store8<TC>(C + (size_t)gr * N + gc, Cw + er * 20 + ec, N - gc, accumulate);
      __syncwarp();
    }
}

// C[M,N] (+)= A[M,K] B[K,N] in f32 on CUDA cores (f16/bf16 operands widened as they are staged): TM x TN
// outputs per thread, tiles staged in shared memory.
template <typename TA, typename TC, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void mlc_simt_gemm(const TA* __restrict__ A, const TA* __restrict__ B, TC* __restrict__ C,
                                              int M, int N, int K, bool accumulate) {
  constexpr int NT = (BM / TM) * (BN / TN), TX = BN / TN;
  __shared__ __align__(16) float As[BK][BM + 4];
  __shared__ __align__(16) float Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int e = tid; e < BM * BK; e += NT) {
      const int r = e / BK, c = e % BK;
      As[c][r] = (bm + r < M && k0 + c < K) ? mlc_to_float(A[(size_t)(bm + r) * K + k0 + c]) : 0.0f;
    }
#pragma unroll
    for (int e = tid; e < BK * BN; e += NT) {
      const int r = e / BN, c = e % BN;
      Bs[r][c] = (k0 + r < K && bn + c < N) ? mlc_to_float(B[(size_t)(k0 + r) * N + bn + c]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; i += 4) *reinterpret_cast<float4*>(&a[i]) = *reinterpret_cast<const float4*>(&As[kk][ty * TM + i]);
#pragma unroll
      for (int j = 0; j < TN; j += 4) *reinterpret_cast<float4*>(&b[j]) = *reinterpret_cast<const float4*>(&Bs[kk][tx * TN + j]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int gr = bm + ty * TM + i, gc = bn + tx * TN + j;
      if (gr < M && gc < N) {
        const size_t o = (size_t)gr * N + gc;
        float v = acc[i][j];
        if (accumulate) v += mlc_to_float(C[o]);
        C[o] = mlc_from_float<TC>(v);
      }
    }
}
"""

GEMM_PRELUDE = _WMMA_PRELUDE + WGMMA_PRELUDE
