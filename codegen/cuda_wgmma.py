"""Hopper (sm_90a) GEMM template: persistent, warp-specialized `wgmma.mma_async` with an mbarrier pipeline.

A block of 384 threads computes 128 x BN tiles of C (grid: one block per SM, tiles taken round-robin in
grouped order). Warpgroup 0 is the producer (`setmaxnreg` down to 64 registers): it streams A (128x64,
K-major) and B (64xBN, N-major) tiles into a ring of shared-memory stages laid out in the 128-byte
swizzle that wgmma's matrix descriptors describe, completing on the stage's "full" mbarrier, and it
runs ahead into the next tile while the consumers store the last one. Warpgroups 1 and 2 (216 registers) each own 64 rows:
they wait on "full", issue four m64nBNk16 wgmmas from shared-memory descriptors (B is N-major in the
descriptor, so nothing is transposed), keep one wgmma group in flight, release the previous stage on
its "empty" mbarrier, and store C with 16-byte stores after a quad shuffle of the accumulators.

Two producers, chosen at codegen (`wgmma_loader`): "tma" (the default; 0.93x cuBLAS at 4096^3 on an
H100 against 0.69x), where one thread issues bulk tensor copies (`cp.async.bulk.tensor.3d`, zero fill
past the edges) that complete on "full" by transaction count, and "cp.async", where 128 threads issue
16-byte copies (zero-filled at the edges) that complete with `cp.async.mbarrier.arrive.noinc`.
The TMA path keeps the kernel ABI (plain pointers and dims): a tensor map embeds the global address,
so instead of encoding one on the host per launch, warp 0 of the producer builds both maps (A: box
64x128, B: box 64x64, dims [K|N, rows, batch]) in shared memory at kernel start from zeros with
`tensormap.replace` (every field: address, rank, boxes, dims, strides, element strides, type, swizzle,
fill), publishes them to a per-SM slot of a module-global scratch with `tensormap.cp_fenceproxy`
(release) and `fence.proxy.tensormap::generic.acquire`. A per-SM slot is private because every tile
needs more than half an SM's shared memory, so no two wgmma blocks (of any launch, any stream) share
an SM; a block on an SM id past the scratch, or a batch with a shared operand, takes the cp.async path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.tir_gemm import WGMMA_CONFIGS

if TYPE_CHECKING:
    from ..ir.tir_gemm import GemmInfo

WGMMA_ARCH = "sm_90a"
WGMMA_THREADS = 384
WGMMA_SMS = 132  # persistent grid: one block per SM of an H100 SXM / H200 (fewer SMs only cost a partial wave)
WGMMA_LOADERS = ("tma", "cp.async")
WGMMA_DEFAULT_LOADER = "tma"  # H100, 4096^3 f16: 685 TFLOP/s vs 511 with cp.async (cuBLAS 736)
LOADER_ENV = "MLC_WGMMA_LOADER"  # overrides the default loader at codegen (benchmarks, experiments)
WGMMA_MAX_SHARED = 227 * 1024  # dynamic shared memory a Hopper block may have
_SM_SHARED = 228 * 1024  # shared memory per SM: a tile above half of it runs alone on its SM


def wgmma_loader() -> str:
    """The producer the template is emitted with: $MLC_WGMMA_LOADER if set, else the default."""
    got = os.environ.get(LOADER_ENV, WGMMA_DEFAULT_LOADER)
    if got not in WGMMA_LOADERS:
        raise MlcError(f"{LOADER_ENV}={got!r}: choose one of {', '.join(WGMMA_LOADERS)}")
    return got


def wgmma_ok(g: GemmInfo, arch: str) -> bool:
    """The template needs sm_90a, f16/bf16 operands and N, K constant multiples of 8 (16-byte chunks)."""
    n, k = arith.as_int(g.n), arith.as_int(g.k)
    return (arch == WGMMA_ARCH and g.a.dtype in ("f16", "bf16") and n is not None and k is not None
            and n % 8 == 0 and k % 8 == 0)


def wgmma_config(g: GemmInfo) -> tuple[int, int, int, int, int, int]:
    """128x256 tiles when there are enough of them to fill most SMs, else 128x128 (more blocks; measured
    faster at 1024^3, slower at 2048^3 on an H100)."""
    n = arith.as_int(g.n) or 0
    rows = arith.as_int(g.rows)
    small = n <= 128 or (rows is not None and rows * n < 96 * 128 * 256)
    return WGMMA_CONFIGS[3] if small else WGMMA_CONFIGS[0]


def wgmma_smem_bytes(bn: int, stages: int) -> int:
    """Stages of A (128x64) and B (64xBN) halves, 128 bytes of mbarriers, two 128-byte tensor maps,
    and slack to align to 1024 bytes."""
    assert 2 * stages * 8 <= 128
    return stages * (128 * 64 + 64 * bn) * 2 + 128 + 256 + 1024


def wgmma_sm_exclusive(bn: int, stages: int) -> bool:
    """True when a block of this tile needs more than half an SM's shared memory (the per-SM tensor-map
    slot of the TMA path relies on it)."""
    return 2 * wgmma_smem_bytes(bn, stages) > _SM_SHARED



def _wgmma_instr(n: int, ty: str, ctype: str) -> str:
    regs = n // 2
    outs = ", ".join(f"%{i}" for i in range(regs))
    binds = ", ".join(f'"+f"(d[{i}])' for i in range(regs))
    return (f"template <> __device__ __forceinline__ void mlc_wgmma<{n}, {ctype}>(float* d, unsigned long long da, "
            f"unsigned long long db) {{\n"
            f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + 2}, 0;\\n"\n'
            f'    "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} {{{outs}}}, %{regs}, %{regs + 1}, p, 1, 1, 0, 1;\\n}}\\n"\n'
            f'    : {binds}\n    : "l"(da), "l"(db), "r"(1));\n}}\n')


_TEMPLATE = r"""
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void mlc_mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mlc_mbar_wait(unsigned bar, unsigned parity) {
  unsigned done = 0;
  while (!done)
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void mlc_mbar_arrive(unsigned bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" :: "r"(bar) : "memory");
}
__device__ __forceinline__ void mlc_cp_async16_to(unsigned dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
// ---- TMA: tensor maps built on the device (see cuda_wgmma.py), one pair per SM in module scratch ----
#define MLC_TMA_SLOTS 256
__device__ __align__(128) unsigned char mlc_tma_maps[MLC_TMA_SLOTS * 256];
// a rank-3 tiled map of 2-byte elements, 128-byte swizzle, zero fill, into zeroed shared memory at `m`
__device__ __forceinline__ void mlc_tm_build(unsigned m, const void* g, unsigned d0, unsigned d1, unsigned d2,
                                             unsigned long long s1, unsigned long long s2, unsigned b0, unsigned b1) {
  asm volatile("tensormap.replace.tile.global_address.shared::cta.b1024.b64 [%0], %1;\n" :: "r"(m), "l"(g) : "memory");
  asm volatile("tensormap.replace.tile.rank.shared::cta.b1024.b32 [%0], 2;\n" :: "r"(m) : "memory");  // rank - 1
  asm volatile("tensormap.replace.tile.box_dim.shared::cta.b1024.b32 [%0], 0, %1;\n" :: "r"(m), "r"(b0) : "memory");
  asm volatile("tensormap.replace.tile.box_dim.shared::cta.b1024.b32 [%0], 1, %1;\n" :: "r"(m), "r"(b1) : "memory");
  asm volatile("tensormap.replace.tile.box_dim.shared::cta.b1024.b32 [%0], 2, 1;\n" :: "r"(m) : "memory");
  asm volatile("tensormap.replace.tile.global_dim.shared::cta.b1024.b32 [%0], 0, %1;\n" :: "r"(m), "r"(d0) : "memory");
  asm volatile("tensormap.replace.tile.global_dim.shared::cta.b1024.b32 [%0], 1, %1;\n" :: "r"(m), "r"(d1) : "memory");
  asm volatile("tensormap.replace.tile.global_dim.shared::cta.b1024.b32 [%0], 2, %1;\n" :: "r"(m), "r"(d2) : "memory");
  asm volatile("tensormap.replace.tile.global_stride.shared::cta.b1024.b64 [%0], 0, %1;\n" :: "r"(m), "l"(s1) : "memory");
  asm volatile("tensormap.replace.tile.global_stride.shared::cta.b1024.b64 [%0], 1, %1;\n" :: "r"(m), "l"(s2) : "memory");
  asm volatile("tensormap.replace.tile.element_stride.shared::cta.b1024.b32 [%0], 0, 1;\n" :: "r"(m) : "memory");
  asm volatile("tensormap.replace.tile.element_stride.shared::cta.b1024.b32 [%0], 1, 1;\n" :: "r"(m) : "memory");
  asm volatile("tensormap.replace.tile.element_stride.shared::cta.b1024.b32 [%0], 2, 1;\n" :: "r"(m) : "memory");
  asm volatile("tensormap.replace.tile.elemtype.shared::cta.b1024.b32 [%0], 1;\n" :: "r"(m) : "memory");  // .u16: bytes move as is
  asm volatile("tensormap.replace.tile.interleave_layout.shared::cta.b1024.b32 [%0], 0;\n" :: "r"(m) : "memory");
  asm volatile("tensormap.replace.tile.swizzle_mode.shared::cta.b1024.b32 [%0], 3;\n" :: "r"(m) : "memory");  // 128 B
  asm volatile("tensormap.replace.tile.fill_mode.shared::cta.b1024.b32 [%0], 0;\n" :: "r"(m) : "memory");     // zeros
}
// warp-wide: copy the map at shared `m` to global `g`, releasing it to the tensormap proxy
__device__ __forceinline__ void mlc_tm_publish(void* g, unsigned m) {
  asm volatile("tensormap.cp_fenceproxy.global.shared::cta.tensormap::generic.release.gpu.sync.aligned [%0], [%1], 128;\n"
               :: "l"((unsigned long long)__cvta_generic_to_global(g)), "r"(m) : "memory");
}
__device__ __forceinline__ void mlc_tm_acquire(const void* g) {
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" :: "l"(g) : "memory");
  asm volatile("prefetch.tensormap [%0];\n" :: "l"(g) : "memory");
}
__device__ __forceinline__ void mlc_tma_load(unsigned dst, const void* map, int c0, int c1, int c2, unsigned bar) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
               :: "r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
__device__ __forceinline__ void mlc_mbar_expect(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
// shared-memory matrix descriptor, 128-byte swizzle (start, leading and stride byte offsets in 16-byte units)
__device__ __forceinline__ unsigned long long mlc_wg_desc(unsigned addr, unsigned lbo, unsigned sbo) {
  return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16)
       | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
template <int N, typename T> __device__ __forceinline__ void mlc_wgmma(float* d, unsigned long long da, unsigned long long db);
%WGMMA%
template <typename TC> __device__ __forceinline__ void mlc_store2(TC* p, float x, float y, bool accumulate) {
  if (accumulate) { x += mlc_to_float(p[0]); y += mlc_to_float(p[1]); }
  if constexpr (sizeof(TC) == 4) {
    *reinterpret_cast<float2*>(p) = make_float2(x, y);
  } else {
    __align__(4) TC v[2] = {mlc_from_float<TC>(x), mlc_from_float<TC>(y)};
    *reinterpret_cast<unsigned*>(p) = *reinterpret_cast<const unsigned*>(v);
  }
}

// quad-transpose the f16/bf16 pairs of two 8-column chunks so that each thread stores 16 contiguous bytes:
// thread q of a quad holds p[i] = (row r + 8 (i & 1), chunk j + (i >> 1), columns 2q, 2q+1) and stores combination q
template <typename TC> __device__ __forceinline__ void mlc_store_quad(TC* C, const float* d, int row, int c0, int M,
                                                                      int N, int lane) {
  unsigned p[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __align__(4) TC v[2] = {mlc_from_float<TC>(d[(i >> 1) * 4 + (i & 1) * 2]), mlc_from_float<TC>(d[(i >> 1) * 4 + (i & 1) * 2 + 1])};
    p[i] = *reinterpret_cast<const unsigned*>(v);
  }
  const int q = lane & 3;
  unsigned got[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // round i: send p[(q + i) & 3], receive from quad lane (q - i) & 3
    const int k = (q + i) & 3;
    const unsigned send = k == 0 ? p[0] : k == 1 ? p[1] : k == 2 ? p[2] : p[3];
    got[i] = __shfl_sync(0xffffffffu, send, (lane & ~3) | ((q - i) & 3));
  }
  uint4 out;  // column pair s came from quad lane s, i.e. in round (q - s) & 3
  unsigned* o = reinterpret_cast<unsigned*>(&out);
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const int i = (q - s) & 3;
    o[s] = i == 0 ? got[0] : i == 1 ? got[1] : i == 2 ? got[2] : got[3];
  }
  const int r = row + 8 * (q & 1), c = c0 + 8 * (q >> 1);
  if (r < M && c < N) *reinterpret_cast<uint4*>(C + (size_t)r * N + c) = out;
}

// C[z] (+)= A[z] B[z] for z < batch (strides sa, sb, sc; 0 for a shared operand), row-major [M,K] x [K,N],
// f16/bf16 operands, f32 accumulators in registers. Persistent: block b takes tiles b, b + gridDim.x, ...;
// the producer runs ahead into the next tile while the consumers store the last one (see cuda_wgmma.py).
// `use_tma`: the producer is one thread issuing bulk tensor copies, else 128 threads issuing cp.async.
template <typename TA, typename TC, int BN, int STAGES>
__device__ __forceinline__ void mlc_wgmma_gemm(const TA* __restrict__ A, const TA* __restrict__ B, TC* __restrict__ C,
                                               long long sa, long long sb, long long sc, int batch,
                                               int M, int N, int K, bool accumulate, bool use_tma = false) {
  constexpr int BM = 128, BK = 64, A_BYTES = BM * BK * 2, B_BYTES = BK * BN * 2, STAGE = A_BYTES + B_BYTES;
  static_assert(2 * (STAGES * STAGE + 1024) > 228 * 1024, "one block per SM: the per-SM tensor-map slot is private");
  extern __shared__ unsigned char mlc_wg_smem[];
  const unsigned raw = (unsigned)__cvta_generic_to_shared(mlc_wg_smem);
  const unsigned base = (raw + 1023u) & ~1023u;  // the swizzle pattern repeats every 1024 bytes
  const unsigned bars = base + STAGES * STAGE;    // full[s] at bars + 8 s, empty[s] at bars + 8 (STAGES + s)
  const unsigned maps = bars + 128;               // the A and B tensor maps being built (128-byte aligned)
  const int tid = threadIdx.x, wg = tid >> 7, t = tid & 127;
  unsigned smid;
  asm("mov.u32 %0, %%smid;\n" : "=r"(smid));
  // the same for every thread of the block: the TMA path needs a scratch slot and per-operand batch strides
  const bool tma = use_tma && smid < MLC_TMA_SLOTS && (batch == 1 || (sa != 0 && sb != 0));
  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN, per_z = tiles_m * tiles_n;
  const int total = per_z * batch, KT = (K + BK - 1) / BK;
  // tile -> (z, block row, block column); grouped: GROUP block rows walk the columns together (L2 reuse of A and B)
  constexpr int GROUP = 8;
  auto place = [&](int tile, int& z, int& bm, int& bn) {
    z = tile / per_z;
    const int tt = tile - z * per_z, group = tt / (GROUP * tiles_n), first = group * GROUP;
    const int rows_in_group = min(tiles_m - first, GROUP), in_group = tt - group * GROUP * tiles_n;
    bm = (first + in_group % rows_in_group) * BM;
    bn = (in_group / rows_in_group) * BN;
  };
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mlc_mbar_init(bars + 8 * s, tma ? 1 : 128);  // the expected bytes landed / every producer thread's copies
      mlc_mbar_init(bars + 8 * (STAGES + s), 8);   // every consumer warp is done reading
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 64;\n");
    if (tma) {
      if (t >= 32) return;
      unsigned char* gmaps = mlc_tma_maps + smid * 256;
      asm volatile("st.shared.v2.u32 [%0], {%1, %1};\n" :: "r"(maps + 8 * t), "r"(0) : "memory");
      __syncwarp();
      if (t == 0) {
        const long long za = batch > 1 ? sa : (long long)M * K, zb = batch > 1 ? sb : (long long)K * N;
        mlc_tm_build(maps, A, K, M, batch, 2ull * K, 2ull * za, BK, BM);
        mlc_tm_build(maps + 128, B, N, K, batch, 2ull * N, 2ull * zb, 64, BK);
      }
      __syncwarp();
      mlc_tm_publish(gmaps, maps);
      mlc_tm_publish(gmaps + 128, maps + 128);
      if (t != 0) return;
      mlc_tm_acquire(gmaps);
      mlc_tm_acquire(gmaps + 128);
      int it = 0;
      for (int tile = blockIdx.x; tile < total; tile += gridDim.x) {
        int z, bm, bn;
        place(tile, z, bm, bn);
        for (int kt = 0; kt < KT; ++kt, ++it) {
          const int s = it % STAGES;
          mlc_mbar_wait(bars + 8 * (STAGES + s), ((it / STAGES) & 1) ^ 1);
          const unsigned full = bars + 8 * s, sa_ = base + s * STAGE;
          mlc_mbar_expect(full, STAGE);  // boxes past the edges are zero-filled and still count in full
          mlc_tma_load(sa_, gmaps, kt * BK, bm, z, full);
#pragma unroll
          for (int j = 0; j < BN / 64; ++j) mlc_tma_load(sa_ + A_BYTES + j * (BK * 128), gmaps + 128, bn + 64 * j, kt * BK, z, full);
        }
      }
      return;
    }
    constexpr int BCH = BN / 8, BRP = 128 / BCH;  // B: 16-byte chunks per row, rows per pass of 128 threads
    const int ac = t & 7, ar = t >> 3, bc = t % BCH, br = t / BCH;
    const unsigned a_off = ar * 128 + ((ac ^ (ar & 7)) << 4), b_off = (bc >> 3) * (BK * 128);
    int it = 0;
    for (int tile = blockIdx.x; tile < total; tile += gridDim.x) {
      int z, bm, bn;
      place(tile, z, bm, bn);
      const TA* ap = A + z * sa + (size_t)(bm + ar) * K + ac * 8;
      const TA* bp = B + z * sb + (size_t)br * N + bn + bc * 8;
      const bool bcol = bn + bc * 8 < N;
      for (int kt = 0; kt < KT; ++kt, ++it) {
        const int s = it % STAGES, k0 = kt * BK;
        mlc_mbar_wait(bars + 8 * (STAGES + s), ((it / STAGES) & 1) ^ 1);
        const unsigned sa_ = base + s * STAGE, sb_ = sa_ + A_BYTES;
        const bool acol = k0 + ac * 8 < K;
#pragma unroll
        for (int i = 0; i < BM / 16; ++i) {
          const bool ok = acol && bm + ar + 16 * i < M;
          mlc_cp_async16_to(sa_ + a_off + i * 16 * 128, ok ? ap + (size_t)(16 * i) * K + k0 : A, ok);
        }
#pragma unroll
        for (int i = 0; i < BK / BRP; ++i) {
          const int r = br + BRP * i;
          const bool ok = bcol && k0 + r < K;
          mlc_cp_async16_to(sb_ + b_off + r * 128 + (((bc & 7) ^ (r & 7)) << 4), ok ? bp + (size_t)(k0 + BRP * i) * N : B, ok);
        }
        asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" :: "r"(bars + 8 * s) : "memory");
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 216;\n");
    const int cw = wg - 1, lane = t & 31, warp = t >> 5;
    int it = 0;
    for (int tile = blockIdx.x; tile < total; tile += gridDim.x) {
      int z, bm, bn;
      place(tile, z, bm, bn);
      float d[BN / 2];
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) d[i] = 0.0f;
      for (int kt = 0; kt < KT; ++kt, ++it) {
        const int s = it % STAGES;
        mlc_mbar_wait(bars + 8 * s, (it / STAGES) & 1);
        if (!tma) asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // cp.async wrote, the tensor cores read
        const unsigned sa_ = base + s * STAGE + cw * 64 * 128, sb_ = base + s * STAGE + A_BYTES;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk)
          mlc_wgmma<BN, TA>(d, mlc_wg_desc(sa_ + kk * 32, 16, 1024), mlc_wg_desc(sb_ + kk * 16 * 128, BK * 128, 1024));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        if (kt > 0 && lane == 0) mlc_mbar_arrive(bars + 8 * (STAGES + (it - 1) % STAGES));
      }
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      if (lane == 0) mlc_mbar_arrive(bars + 8 * (STAGES + (it - 1) % STAGES));
      // accumulator layout of m64nBN: thread (warp, lane) holds rows warp*16 + lane/4 (+8), columns 8j + 2(lane%4) (+1)
      TC* Cz = C + z * sc;
      const int row = bm + cw * 64 + warp * 16 + (lane >> 2), col = bn + (lane & 3) * 2;
      if (sizeof(TC) == 2 && !accumulate) {
#pragma unroll
        for (int j = 0; j < BN / 8; j += 2) mlc_store_quad<TC>(Cz, d + 4 * j, row, bn + 8 * j, M, N, lane);
      } else {
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int c = col + 8 * j;
          if (c < N) {
            if (row < M) mlc_store2<TC>(Cz + (size_t)row * N + c, d[4 * j], d[4 * j + 1], accumulate);
            if (row + 8 < M) mlc_store2<TC>(Cz + (size_t)(row + 8) * N + c, d[4 * j + 2], d[4 * j + 3], accumulate);
          }
        }
      }
    }
  }
}
#endif
"""

WGMMA_PRELUDE = _TEMPLATE.replace("%WGMMA%", "".join(
    _wgmma_instr(n, ty, ctype) for n in (128, 256) for ty, ctype in (("f16", "__half"), ("bf16", "__nv_bfloat16"))))
