"""GEMM recognition for tensor programs, shared by the GPU schedule rules, lower-tir and CUDA codegen.

`match_gemm` recognises `C[.., i, j] += A[.., i, k] * B[.., k, j]` (row-major operands, either shared
leading dims = batch, or leading dims of A and C only = rows folded into M). The schedule tensorizes
such a tile with a `gemm_MxNxK_DTYPE[@BMxBNxBKxWMxWNxSTAGES]` intrinsic; `parse_gemm_intrin` is the one
reader of that name, and lower-tir turns the stage into a `GemmCall` carrying the tile as a typed
`GemmTile`. The template tiles a tuner may choose from are listed here, so that the schedule rules
need not import the code generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import arith
from .expr import Bin, Cast, Const, Expr, Load, Var
from .tir import BlockStmt, Buffer, GemmCall, GemmTile, Store

GemmConfig = tuple[int, int, int, int, int, int]  # (BM, BN, BK, WM, WN, STAGES); WM, WN per warp (TM, TN per thread for f32)
# the wmma tensor-core tiles a tuner may choose from
TC_CONFIGS: tuple[GemmConfig, ...] = (
    (128, 256, 32, 64, 64, 3), (128, 256, 32, 64, 64, 4), (128, 128, 32, 64, 32, 4), (256, 128, 32, 64, 64, 3),
    (128, 128, 64, 64, 32, 3), (64, 128, 32, 32, 64, 4),
)
SIMT_CONFIGS: tuple[GemmConfig, ...] = ((128, 128, 8, 8, 8, 1), (64, 64, 8, 4, 4, 1), (128, 64, 8, 8, 4, 1))
# the Hopper wgmma tiles: two consumer warpgroups of WM=64 rows, each the full BN width
WGMMA_CONFIGS: tuple[GemmConfig, ...] = (
    (128, 256, 64, 64, 256, 4), (128, 256, 64, 64, 256, 3), (128, 128, 64, 64, 128, 5),
    (128, 128, 64, 64, 128, 4),
)

GEMM_INTRIN = re.compile(r"gemm_(\d+)x(\d+)x(\d+)_(\w+?)(?:@((?:\d+x){5}\d+))?$")


@dataclass(frozen=True)
class GemmInfo:
    a: Buffer
    b: Buffer
    c: Buffer
    batched: bool  # A, B and C share leading dims (else B is 2-D and A's leading dims fold into M)

    @property
    def rows(self) -> Expr:
        """Rows of the folded A/C matrices (M times the leading dims unless batched)."""
        r: Expr = self.c.shape[-2]
        if not self.batched:
            for d in self.c.shape[:-2]:
                r = r * d
        return arith.simplify(r)

    @property
    def batch(self) -> Expr:
        n: Expr = Const(1)
        if self.batched:
            for d in self.c.shape[:-2]:
                n = n * d
        return arith.simplify(n)

    @property
    def n(self) -> Expr:
        return self.c.shape[-1]

    @property
    def k(self) -> Expr:
        return self.a.shape[-1]


def gemm_info(call: GemmCall) -> GemmInfo:
    return GemmInfo(call.a, call.b, call.c, call.batched)


def _strip(e: Expr) -> Expr:
    return e.a if isinstance(e, Cast) else e


def match_gemm(b: BlockStmt) -> GemmInfo | None:
    """The GEMM a single-store reduction block computes, or None."""
    st = b.body
    if not isinstance(st, Store) or not isinstance(st.value, Bin) or st.value.op != "add":
        return None
    me = Load(st.buffer, st.indices)
    v = st.value
    prod = v.b if v.a == me else v.a if v.b == me else None
    if not isinstance(prod, Bin) or prod.op != "mul":
        return None
    la, lb = _strip(prod.a), _strip(prod.b)
    if not (isinstance(la, Load) and isinstance(lb, Load)):
        return None
    red = [iv.var for iv in b.iters if iv.kind == "R"]
    if len(red) != 1 or len(st.indices) < 2 or len(la.indices) < 2 or len(lb.indices) < 2:
        return None
    k = red[0]
    ci, ai, bi = st.indices, la.indices, lb.indices
    if not all(isinstance(x, Var) for x in (*ci, *ai, *bi)):
        return None
    if not (ai[-1] == k and bi[-2] == k and ai[-2] == ci[-2] and bi[-1] == ci[-1] and ci[-2] != ci[-1]):
        return None
    a, bb, c = la.buffer, lb.buffer, st.buffer
    if a.dtype != bb.dtype or a.dtype not in ("f16", "bf16", "f32") or c.dtype not in ("f16", "bf16", "f32"):
        return None
    if len({a.name, bb.name, c.name}) != 3:
        return None
    lead_c, lead_a, lead_b = ci[:-2], ai[:-2], bi[:-2]
    same = _shapes_equal(c.shape[-2:-1], a.shape[-2:-1]) and _shapes_equal(a.shape[-1:], bb.shape[-2:-1]) \
        and _shapes_equal(c.shape[-1:], bb.shape[-1:])
    if not same or lead_a != lead_c or not _shapes_equal(a.shape[:-2], c.shape[:-2]):
        return None
    if not lead_b:
        return GemmInfo(a, bb, c, False)
    if lead_b == lead_c and _shapes_equal(bb.shape[:-2], c.shape[:-2]):
        return GemmInfo(a, bb, c, True)
    return None


def _shapes_equal(x: tuple[Expr, ...], y: tuple[Expr, ...]) -> bool:
    return len(x) == len(y) and all(arith.prove_equal(p, q) for p, q in zip(x, y))


def tensor_core_ok(g: GemmInfo) -> bool:
    """The wmma template moves 16-byte chunks: N and K must be constant multiples of 8."""
    n, k = arith.as_int(g.n), arith.as_int(g.k)
    return n is not None and k is not None and n % 8 == 0 and k % 8 == 0


def on_tensor_cores(g: GemmInfo) -> bool:
    """f16/bf16 GEMMs of tensor-core shapes run on the wgmma/wmma templates; the rest (f32 unless TF32
    is asked for at codegen, a symbolic or ragged N or K) on the register tile."""
    return g.a.dtype in ("f16", "bf16") and tensor_core_ok(g)


def parse_gemm_intrin(name: str) -> tuple[tuple[int, int, int, str], GemmTile | None] | None:
    """((M, N, K, dtype), tile or None) of a `gemm_...[@tile]` intrinsic name; None for other names."""
    m = GEMM_INTRIN.match(name)
    if m is None:
        return None
    tile = GemmTile(*(int(x) for x in m.group(5).split("x"))) if m.group(5) else None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)), tile
