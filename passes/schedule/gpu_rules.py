"""GPU schedules written with the `Schedule` primitives: the default schedule and the tuner's design space.

Per leaf block of a tensor program (each top-level loop nest holding one block):
- elementwise blocks feeding other blocks are inlined into them first (`compute_inline`);
- a GEMM (`match_gemm`) is tiled and its inner tile tensorized with a `gemm_*` intrinsic; the CUDA
  codegen emits that stage as a tensor-core (f16/bf16) or register-tiled (f32) template. The template
  tile (`ir.tir_gemm.TC_CONFIGS` / `SIMT_CONFIGS`) is a sampled choice, recorded in the intrinsic's name
  as `gemm_1x16x16_f16@BMxBNxBKxWMxWNxSTAGES` (no suffix: the template's default tile);
- another reduction with data reuse and constant extents (conv, small matmul) may be given SSSRRSRS
  multi-level tiling (a sampled choice; off by default): S0 -> blockIdx.x, S1 serial (virtual threads,
  run by each thread in turn), S2 -> threadIdx.x, S3/S4 a per-thread register tile accumulated in a
  local buffer, R0/R1/R2 serial, all factors from `sample_perfect_tile`;
- a reduction over >= 32 elements becomes a cross-thread reduction: spatial loops fused and bound to
  `blockIdx.x`, reduce loops fused, split and the inner part bound to `threadIdx.x` (the codegen
  combines partial results with warp shuffles), its width from `sample_categorical`;
- everything else is fused, split and bound to blockIdx.x/threadIdx.x, the threads per block and the
  outputs per thread (1 unless the grid stays large) from `sample_categorical`;
- a row chain (softmax, log-softmax, layernorm: every stage has the same leading row loops, at least
  one reduces the rest of the row, at least one writes a whole row; no GEMM) binds every stage alike:
  rows -> blockIdx.x, the rest of the row split over the same threadIdx.x width, so the CUDA codegen
  (codegen/cuda.py `row_groups`) can run the stages as one kernel, a barrier between them.
Every choice is a sampling instruction; the default schedule passes each one its hand-picked decision,
so the default trace is a point of the design space too, and search mutates decisions and re-runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Expr, Var, free_vars
from mlc.ir.tir import BlockStmt, For, PrimFunc, Store
from mlc.ir.tir_gemm import (
    SIMT_CONFIGS,
    TC_CONFIGS,
    WGMMA_CONFIGS,
    GemmInfo,
    match_gemm,
    on_tensor_cores,
    parse_gemm_intrin,
)
from mlc.ir.tir_lower import is_lowered
from mlc.ir.tir_visit import block_reads, walk

from .cache import load_iterators
from .decisions import Decisions
from .schedule import Schedule, attempt
from .tensorize import MIXED, gemm_intrin, get_intrin, register_intrin
from .trace import BlockRV, LoopRV, Trace
from .tree import blocks

THREAD_CHOICES = (64, 128, 256, 512)
PER_THREAD_CHOICES = (1, 2, 4, 8)  # outputs per thread of an elementwise nest
MIN_BLOCKS = 4096  # more outputs per thread only while the grid keeps at least this many blocks
REDUCE_THREAD_CHOICES = (32, 64, 128, 256)
MAX_THREADS = 1024


def is_bound(func: PrimFunc) -> bool:
    return any(isinstance(s, For) and s.kind == "thread" for _, s in walk(func.body))


def schedule_gpu(func: PrimFunc, sample: bool = False, seed: int = 0, decisions: Sequence[Any] = ()) -> Schedule:
    """Apply the GPU rules to every block of `func` (blocks already bound to threads are left alone):
    the default point (`sample=False`) or a random one, steered by `decisions` (n-th for n-th call)."""
    sch = Schedule(func, seed)
    ch = Decisions(not sample, tuple(decisions))
    for b in sch.get_blocks():
        _inline(sch, b)
    chain = _row_chain(sch)
    if chain is not None:
        _schedule_row_chain(sch, chain, ch)
        return sch
    for b in sch.get_blocks():
        _schedule_block(sch, b, ch)
    return sch


def default_gpu_schedule(func: PrimFunc) -> PrimFunc:
    """The deterministic default schedule (what a build uses without tuning records); a function
    already bound to threads, or already lowered to loops (lower-tir), is returned as it is."""
    if is_bound(func) or is_lowered(func):
        return func
    return schedule_gpu(func).func


def default_gpu_trace(func: PrimFunc) -> Schedule:
    """The default schedule with its trace (a starting point for search)."""
    return schedule_gpu(func)


def sample_gpu_schedule(func: PrimFunc, seed: int = 0, decisions: Sequence[Any] = ()) -> Schedule:
    """One random point of the GPU design space; `decisions` fix the sampling calls in order."""
    return schedule_gpu(func, sample=True, seed=seed, decisions=decisions)


def _inline(sch: Schedule, b: BlockRV) -> None:
    """Inline an elementwise block into its consumers (one kernel and one round trip to memory fewer);
    `compute_inline` refuses what it cannot do (reductions, outputs of the function, ...)."""
    blk = sch.get(b)
    if not isinstance(blk, BlockStmt) or any(iv.kind == "R" for iv in blk.iters) or blk.init is not None:
        return
    consumers = sch.get_consumers(b)
    if not consumers or any(_gemm_fits(sch.get(c)) for c in consumers):
        return  # a GEMM keeps plain operand loads, so that its template can run: the producer is a stage
    try:
        sch.compute_inline(b)
    except MlcError:
        pass


def _loop_kinds(sch: Schedule, b: BlockRV, loops: list[LoopRV]) -> list[str] | None:
    """'S' or 'R' per loop (by the iterators it feeds), None if some loop feeds both kinds."""
    blk = sch.get(b)
    assert isinstance(blk, BlockStmt)
    kinds = []
    for lp in loops:
        st = sch.get(lp)
        assert isinstance(st, For)
        feeds = {iv.kind for iv in blk.iters if st.var in free_vars(iv.binding)}
        if len(feeds) > 1:
            return None
        kinds.append(feeds.pop() if feeds else "S")
    return kinds


def _alone(sch: Schedule, loops: list[LoopRV]) -> bool:
    """The outermost loop holds just this block (the nest is a stage of its own)."""
    top = sch.get(loops[0])
    return len([1 for _ in blocks(top)]) == 1


def _schedule_block(sch: Schedule, b: BlockRV, ch: Decisions) -> None:
    loops = sch.get_loops(b)
    if not loops or any(_is_thread(sch, lp) for lp in loops) or not _alone(sch, loops):
        return
    kinds = _loop_kinds(sch, b, loops)
    if kinds is None:
        return
    n_s = kinds.index("R") if "R" in kinds else len(kinds)
    if any(k == "S" for k in kinds[n_s:]):
        return  # reduce loops are not innermost
    if "R" in kinds and _try_gemm(sch, b, loops, ch):
        return
    if "R" in kinds and n_s > 0 and _tiling_applies(sch, b, loops) and ch.cat(sch, [0, 1], 0):
        _multi_level_tiling(sch, b, loops, n_s, ch)
        return
    red_c = arith.as_int(arith.simplify(_extent_product(sch, loops[n_s:])))
    if n_s < len(loops) and (red_c is None or red_c >= 32 or n_s == 0):  # a full reduction needs threads
        _cross_thread(sch, loops[:n_s], loops[n_s:], red_c, ch)
        return
    _bind_spatial(sch, loops[:n_s], ch)


def _is_thread(sch: Schedule, lp: LoopRV) -> bool:
    st = sch.get(lp)
    return isinstance(st, For) and st.kind == "thread"


def _extent_product(sch: Schedule, loops: list[LoopRV]) -> Expr:
    e: Expr = Const(1)
    for lp in loops:
        st = sch.get(lp)
        assert isinstance(st, For)
        e = e * st.extent
    return e


def _choices(base: tuple[int, ...], want: int) -> list[int]:
    return sorted(set(base) | {want})


def _bind_spatial(sch: Schedule, spatial: list[LoopRV], ch: Decisions) -> None:
    if not spatial:
        return
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    ext = arith.as_int(_extent_product(sch, [fused]))
    want = 256 if ext is None else max(32, min(256, (ext + 31) // 32 * 32))  # no more threads than work
    t = ch.cat(sch, _choices(THREAD_CHOICES, want), want)
    # several outputs per thread, a block's width apart (loads stay coalesced, and a thread has that
    # many independent loads in flight); only where the grid still has thousands of blocks
    per = [u for u in PER_THREAD_CHOICES if u == 1 or (ext is not None and ext % (u * t) == 0)]
    u_want = max((u for u in per if ext is not None and ext >= u * t * MIN_BLOCKS), default=1)
    u = ch.cat(sch, per, u_want)
    if u == 1:
        bx, tx = sch.split(fused, [None, t])
    else:
        bx, ux, tx = sch.split(fused, [None, u, t])
        sch.unroll(ux)
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _cross_thread(sch: Schedule, spatial: list[LoopRV], reduce: list[LoopRV], red_c: int | None,
                  ch: Decisions) -> None:
    if spatial:
        fs = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.bind(fs, "blockIdx.x")
    fr = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    want = 64 if red_c is None else 32 if red_c <= 256 else 128 if red_c <= 4096 else 256
    t = ch.cat(sch, _choices(REDUCE_THREAD_CHOICES, want), want)
    ro, ri = sch.split(fr, [None, t])
    sch.reorder(ri, ro)
    sch.bind(ri, "threadIdx.x")  # a cross-thread reduction: the codegen combines the partial results


# ---- row chains (one kernel per row: softmax, log-softmax, layernorm) ----------------------------
ROW_THREAD_CHOICES = (32, 64, 128, 256, 512, 1024)
ROW_MIN = 32  # shorter rows keep the per-stage schedules (one thread per row is better there)


@dataclass(frozen=True)
class RowChain:
    """The stages of a row chain: per stage (block, its row loops, the rest of its loops), row length."""

    stages: tuple[tuple[BlockRV, tuple[LoopRV, ...], tuple[LoopRV, ...]], ...]
    length: int | None


def _row_chain(sch: Schedule) -> RowChain | None:
    """The function as a row chain, or None. Rows: a reduction's leading spatial loops (trailing extent-1
    ones dropped); every stage starts with loops of those extents, reductions reduce `length` elements
    (after extent-1 spatial loops), elementwise stages cover 1 or `length` elements per row."""
    info = []
    for b in sch.get_blocks():
        loops = sch.get_loops(b)
        blk = sch.get(b)
        if not loops or not isinstance(blk, BlockStmt) or any(_is_thread(sch, lp) for lp in loops) \
                or not _alone(sch, loops) or match_gemm(blk) is not None:
            return None
        kinds = _loop_kinds(sch, b, loops)
        if kinds is None:
            return None
        n_s = kinds.index("R") if "R" in kinds else len(kinds)
        if any(k == "S" for k in kinds[n_s:]):
            return None
        info.append((b, loops, n_s, [sch.get(lp).extent for lp in loops]))  # type: ignore[union-attr]
    reds = [x for x in info if x[2] < len(x[1])]
    if len(info) < 2 or not reds:
        return None
    b0, _, n0, ext0 = reds[0]
    r = n0
    while r > 0 and arith.as_int(ext0[r - 1]) == 1:
        r -= 1
    if r == 0:
        return None
    rows = ext0[:r]
    length = _extent_product(sch, reds[0][1][n0:])
    stages, full = [], False
    for b, loops, n_s, ext in info:
        if len(loops) <= r or not all(arith.prove_equal(a, c) for a, c in zip(ext[:r], rows)):
            return None
        if n_s < len(loops):  # a reduction: extent-1 spatial loops, then `length` reduced elements
            if any(arith.as_int(e) != 1 for e in ext[r:n_s]) or \
                    not arith.prove_equal(_extent_product(sch, loops[n_s:]), length):
                return None
            stages.append((b, tuple(loops[:n_s]), tuple(loops[n_s:])))  # extent-1 loops join the rows
            continue
        else:
            n = _extent_product(sch, loops[r:])
            if arith.prove_equal(n, length):
                full = True
            elif arith.as_int(n) != 1:
                return None
        stages.append((b, tuple(loops[:r]), tuple(loops[r:])))
    c = arith.as_int(arith.simplify(length))
    if not full or (c is not None and c < ROW_MIN):
        return None
    return RowChain(tuple(stages), c)


def _schedule_row_chain(sch: Schedule, chain: RowChain, ch: Decisions) -> None:
    """Rows -> blockIdx.x, the rest of each row split over one threadIdx.x width: a reduction becomes a
    cross-thread reduction, an elementwise stage a loop of coalesced steps across the row."""
    c = chain.length
    want = 256 if c is None else 32 if c <= 128 else 64 if c <= 512 else 128 if c <= 2048 \
        else 256 if c <= 16384 else 512
    t = ch.cat(sch, list(ROW_THREAD_CHOICES), want)
    for _, rows, rest in chain.stages:
        fr = sch.fuse(*rows) if len(rows) > 1 else rows[0]
        sch.bind(fr, "blockIdx.x")
        fi = sch.fuse(*rest) if len(rest) > 1 else rest[0]
        lo, ti = sch.split(fi, [None, t])
        sch.reorder(ti, lo)
        sch.bind(ti, "threadIdx.x")  # a reduction: cross-thread (the codegen combines partial results)


# ---- multi-level tiling -------------------------------------------------------------------------
def _tiling_applies(sch: Schedule, b: BlockRV, loops: list[LoopRV]) -> bool:
    from .rules import needs_tiling

    blk = sch.get(b)
    consts = [arith.as_int(sch.get(lp).extent) for lp in loops]  # type: ignore[union-attr]
    return isinstance(blk, BlockStmt) and needs_tiling(blk) and all(c is not None for c in consts)


def _multi_level_tiling(sch: Schedule, b: BlockRV, loops: list[LoopRV], n_s: int, ch: Decisions) -> None:
    """SSSRRSRS tiles (see the module doc); a sample with more than 1024 threads is refused (MlcError)."""
    s_lv: list[list[LoopRV]] = [[] for _ in range(5)]
    r_lv: list[list[LoopRV]] = [[] for _ in range(3)]
    for pos, lp in enumerate(loops):
        ext = arith.as_int(sch.get(lp).extent)  # type: ignore[union-attr]
        assert ext is not None
        if pos < n_s:
            want = [1, 1, math.gcd(ext, 32 if pos == n_s - 1 else 1), 1, 1]
            want[0] = ext // want[2]
            fac = ch.tile(sch, lp, 5, 4, want)
            for lvl, part in enumerate(sch.split(lp, fac)):
                s_lv[lvl].append(part)
        else:
            fac = ch.tile(sch, lp, 3, 8, [ext, 1, 1])
            for lvl, part in enumerate(sch.split(lp, fac)):
                r_lv[lvl].append(part)
    threads = math.prod(arith.as_int(sch.get(x).extent) or 1 for x in s_lv[2])  # type: ignore[union-attr]
    if threads > MAX_THREADS:
        raise MlcError(f"gpu tiling: {threads} threads per block (max {MAX_THREADS})")
    order = [x for spec in ("S0", "S1", "S2", "R0", "R1", "S3", "R2", "S4")
             for x in (s_lv if spec[0] == "S" else r_lv)[int(spec[1])]]
    sch.reorder(*order)
    wb = _try_rv(sch.cache_write, b, 0, "local")
    if wb is not None:
        try:
            sch.reverse_compute_at(wb, s_lv[2][-1])
        except MlcError:
            pass
    sch.decompose_reduction(b, r_lv[0][0])
    for lvl, tag in ((0, "blockIdx.x"), (2, "threadIdx.x")):
        fused = sch.fuse(*s_lv[lvl]) if len(s_lv[lvl]) > 1 else s_lv[lvl][0]
        sch.bind(fused, tag)
    for lp in s_lv[3] + r_lv[2] + s_lv[4]:  # the per-thread tile: unrolled, so its registers are named
        if 1 < (arith.as_int(sch.get(lp).extent) or 0) <= 16:  # type: ignore[union-attr]
            sch.unroll(lp)
    if wb is not None:
        try:
            sch.compact(b, 0)  # the accumulator shrinks to the per-thread tile (registers)
        except MlcError:
            pass


def _try_rv(fn: Any, *args: Any) -> BlockRV | None:
    try:
        out = fn(*args)
    except MlcError:
        return None
    return out if isinstance(out, BlockRV) else None


# ---- GEMM -----------------------------------------------------------------------------------------
def gemm_configs(tensor_cores: bool) -> tuple[tuple[int, ...], ...]:
    """The template tiles a tuner may pick (ir/tir_gemm.py lists them for schedule and codegen)."""
    # wgmma tiles apply where that template runs (sm_90a); elsewhere codegen falls back to its default
    return tuple(WGMMA_CONFIGS + TC_CONFIGS if tensor_cores else SIMT_CONFIGS)


def gemm_intrin_with_config(base: str, config: Sequence[int] | None) -> str:
    """`base` or `base@BMxBNx...`: the same tensor intrinsic, naming the template tile to use."""
    if not config:
        return base
    name = f"{base}@{'x'.join(str(int(c)) for c in config)}"
    register_intrin(name, get_intrin(base))
    return name


def intrin_config(intrin: str) -> tuple[int, ...] | None:
    """The template tile named by a tensor intrinsic (`...@BMxBNxBKxWMxWNxSTAGES`), None if none."""
    parsed = parse_gemm_intrin(intrin)
    return parsed[1].as_tuple() if parsed is not None and parsed[1] is not None else None


def func_gemm_config(func: PrimFunc) -> tuple[int, ...] | None:
    """The template tile chosen for the (first) tensorized GEMM of `func`, if the schedule chose one."""
    for _, s in walk(func.body):
        if isinstance(s, BlockStmt):
            cfg = intrin_config(str(dict(s.annotations).get("tensor_intrin", "")))
            if cfg is not None:
                return cfg
    return None


def register_trace_intrins(trace: Trace) -> None:
    """Register the parametric `gemm_*` intrinsics a stored trace tensorizes with, so that it replays in a
    fresh process (intrinsics are registered on first use, by the rules that sample them)."""
    for inst in trace.insts:
        if inst.kind != "tensorize" or len(inst.inputs) < 2 or not isinstance(inst.inputs[1], str):
            continue
        parsed = parse_gemm_intrin(inst.inputs[1])
        if parsed is None or parsed[0][3] not in ("f16", "bf16", "f32", *MIXED):
            continue
        base = gemm_intrin(*parsed[0])
        if parsed[1] is not None:
            gemm_intrin_with_config(base, parsed[1].as_tuple())


def _gemm_fits(blk: Any) -> GemmInfo | None:
    """The GEMM `blk` computes if a template can run it (f16/bf16 of tensor-core shapes, C in the same
    type or f32 (amp): wgmma or wmma; otherwise the register tile, which wants N, K >= 64 or symbolic),
    else None."""
    g = match_gemm(blk) if isinstance(blk, BlockStmt) else None
    if g is None:
        return None
    n, k = arith.as_int(g.n), arith.as_int(g.k)
    if on_tensor_cores(g):
        return g if g.c.dtype in (g.a.dtype, "f32") else None
    # the register-tile template (f16/bf16 widened to f32) guards every edge: symbolic N or K (attention's T)
    # is fine; small constant ones are left to the other rules
    ok = (n is None or n >= 64) and (k is None or k >= 64) and g.c.dtype in (g.a.dtype, "f32")
    return g if ok else None


def _operand_order(blk: BlockStmt, buf: str) -> list[int] | None:
    """The reindex order that stages a product operand of a one-reduction block as a GEMM reads it: the
    iterators it uses in block order, the reduction last for A, or the reduction then C's last index for
    B; None for a buffer that is not such an operand (the accumulator, a bias)."""
    red = [iv.var for iv in blk.iters if iv.kind == "R"]
    st = blk.body
    if len(red) != 1 or not isinstance(st, Store) or not st.indices or not isinstance(st.indices[-1], Var):
        return None
    try:
        _, its = load_iterators(blk, buf)
    except MlcError:
        return None
    pos = [iv.var for iv in its]
    k, j = red[0], st.indices[-1]
    if buf == st.buffer.name or k not in pos:
        return None
    tail = [k, j] if j in pos else [k]
    return [pos.index(v) for v in pos if v not in tail] + [pos.index(v) for v in tail]


def _try_gemm(sch: Schedule, b: BlockRV, loops: list[LoopRV], ch: Decisions) -> bool:
    """Tile a GEMM block and tensorize its inner tile; False (schedule untouched) when it does not fit."""

    if len(loops) < 3:
        return False
    trial = sch.copy()
    g = _gemm_fits(trial.get(b))
    staged: list[BlockRV] = []
    if g is None:  # operands read through a reshape or transpose: stage them as A[.., i, k] / B[.., k, j]
        blk = trial.get(b)
        assert isinstance(blk, BlockStmt)
        for i, buf in enumerate(block_reads(blk)):
            order = _operand_order(blk, buf.name)
            rv = attempt(trial.reindex, b, i, order) if order is not None else None
            if isinstance(rv, BlockRV):
                staged.append(rv)
        g = _gemm_fits(trial.get(b))
        if g is None or not staged:
            return False
    n, k = arith.as_int(g.n), arith.as_int(g.k)
    # the tile only has to divide (the template takes the whole stage): 1 along a symbolic or ragged dim
    nt = 16 if n is not None and n % 16 == 0 else 8 if n is not None and n % 8 == 0 else 1
    kt = 16 if k is not None and k % 16 == 0 else 8 if k is not None and k % 8 == 0 else 1
    used = ch.n
    try:
        *lead, i, j, kk = trial.get_loops(b)
        io, ii = trial.split(i, [None, 1])
        jo, ji = trial.split(j, [None, nt])
        ko, ki = trial.split(kk, [None, kt])
        trial.reorder(io, jo, ko, ii, ji, ki)
        trial.decompose_reduction(b, ko)
        configs = gemm_configs(on_tensor_cores(g))
        pick = ch.cat(trial, list(range(len(configs) + 1)), 0)  # 0: the template's default tile
        base = gemm_intrin(1, nt, kt, g.a.dtype if g.c.dtype == g.a.dtype else g.a.dtype + g.c.dtype)
        trial.tensorize(ii, gemm_intrin_with_config(base, configs[pick - 1] if pick else None))
    except MlcError:
        ch.n = used
        return False
    sch.func, sch.trace, sch._rv = trial.func, trial.trace, trial._rv
    for rv in staged:  # the staging copies are elementwise nests of their own
        _schedule_block(sch, rv, ch)
    return True


__all__ = ["default_gpu_schedule", "default_gpu_trace", "func_gemm_config", "gemm_configs",
           "gemm_intrin_with_config", "intrin_config", "is_bound", "register_trace_intrins", "sample_gpu_schedule",
           "schedule_gpu"]
