"""Default CPU schedule of direct convolutions: vectors over output channels, a register tile over
output columns, the weight packed channel-innermost.

The generic multi-level tiling vectorizes the last spatial axis (the output width of NCHW), which
fails for convolutions: widths like 15, 31 or 55 have no vector-sized divisor, a stride makes the
input loads strided, and the padding test differs per lane. Here (as TVM's conv2d_NCHWc and oneDNN's
direct kernels do) the vector runs over `oc1` output channels, so per reduction step (ic, kh, kw)
the weights of `oc1` channels are one contiguous vector load of the packed weight
`Wp[oc // oc1, ic, kh, kw, oc % oc1]`, the input element is one broadcast shared by them, and the
padding test is uniform over the lanes. `ow1` output columns (unrolled) keep `ow1 x oc1/lanes`
vector accumulators in registers. The outer (batch, channel block, row, column block) nest runs in
parallel. With a constant weight, the pack nest is folded into the constant at build time
(passes/alter_layout.py), so no call repacks it. Grouped 1x1 convolutions whose channels per group
take no channel vector (ShuffleNet's 34 per group) run as a small GEMM per group instead, vectors
over the output columns (`column_plan`).
"""

from __future__ import annotations

import math

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import is_float
from mlc.ir.expr import Bin, Call, Const, Expr, Select, Var, free_vars, subexprs
from mlc.ir.tir import BlockStmt
from mlc.ir.tir_visit import block_reads, block_writes, loads_in, rewrite, stmt_exprs, stores_in

from .decisions import Decisions
from .schedule import Schedule
from .schedule import attempt as _try
from .scope import is_param
from .trace import BlockRV, LoopRV

# vector registers of the ISA by f32 lanes (AVX2: 16 ymm, AVX-512: 32 zmm); 3 stay free for the
# weight vectors and the broadcast
_REGS = {4: 16, 8: 16, 16: 32}
NARROW_COLUMNS, WIDE_COLUMNS = 14, 48  # output columns from which a reduction is chunked (`reduction_chunk`)
PLANE_POSITIONS = 64  # output positions (7x7, 8x8) up to which the reduction is chunked outside the plane
L1_BYTES = 24 * 1024  # bytes of L1 data cache a channel block's weights may take (32-48 KiB caches)
SHORT_STEPS = 288  # reduction steps (channels x taps) up to which a 3x3 conv takes `short_reduction`'s tile
SHORT_VECTORS, SHORT_COLUMNS = 4, 2  # that tile: 4 channel vectors x 2 columns (13 of AVX2's 16 ymm)
# lanes (AVX-512) at which `conv_plan` drops tiles that spill with two steps' weights in flight, and
# 4 vectors x 3+ columns, at every width (4 x 7 spilled in ResNet-50's 3x3s: 28 accumulators + 8
# weight vectors in LLVM's schedule); there a column-padded row that such a tile holds whole is taken
SPILL_ALL_WIDTHS: tuple[int, ...] = (16,)
DEPTHWISE = True  # `column_plan` also takes depthwise convolutions (stride 1, 2) without channel vectors
COLUMN_CHAINS = 8  # accumulators a `column_plan` tile takes output rows for, to hide the FMA latency
# output channels from which a count that is no multiple of the lanes (SqueezeNet's 1000-class 1x1)
# takes full-width channel vectors over the constant weight packed with zero channels up to a
# multiple of the vector (`conv_plan`'s `pad`), the last vector's write-back clipped; 0: off.
# SqueezeNet's 512->1000 1x1 at 13x13 (AVX-512, kernel medians, one process, load 1.3-2.1): 8-lane
# ymm 1 x 13 2147-2339 us -> 2 zmm x 13 over 1024 channels 1420-1621 us, as fast as a 1008-channel
# layer; DenseNet-121's 1024->1000 classifier at 1x1 unchanged (342 / 351 us)
PAD_CHANNELS = 64
PAD_WASTE = 32  # blocks of 2+ vectors: at most 1/32 of the channels padding (1000 -> 1024: 2.4%)


def _vars(e: Expr) -> set[str]:
    return {v.name for v in free_vars(e)}


def _uniform_over(e: Expr, var: str, block: int) -> bool:
    """Whether `e` takes one value across an aligned block of `block` values of `var`: it uses `var`
    only through `x // c` with `c` a multiple of `block` (grouped conv's group base)."""
    def strip(x: Expr) -> Expr | None:
        if isinstance(x, Bin) and x.op == "floordiv" and (arith.as_int(x.b) or 0) % block == 0 \
                and x.b is not None and (arith.as_int(x.b) or 0) > 0:
            return Const(0)
        return None

    return var not in _vars(rewrite(e, strip))


def conv_plan(b: BlockStmt, lanes: int, pad: bool = False) -> tuple[int, int, int, int, int, list[tuple[int, int]]] | None:
    """(channel iter, column iter, weight read index, oc1, ow1, followers) for a convolution-like
    block, else None; followers are the reads packed channel-innermost like the weight (`_follows`).
    With `pad`, only a channel count of `PAD_CHANNELS`+ that is no multiple of `lanes` qualifies,
    taken as rounded up to a multiple of `lanes` (the weight packed with zero channels past it, see
    `conv_tiling`), and only where no other read uses the channel.

    Convolution-like: a reduction whose spatial iterators include a channel `oc` (constant extent, a
    multiple of `lanes`) that indexes one parameter read (the weight) on a single axis, the plain
    iterator there, with no other spatial iterator in that read; every other read is uniform over
    `oc1` consecutive channels; the innermost other spatial iterator is the column."""
    spatial = [i for i, iv in enumerate(b.iters) if iv.kind == "S"]
    if len(spatial) < 3 or not any(iv.kind == "R" for iv in b.iters):
        return None
    names = [iv.var.name for iv in b.iters]
    s_names = {names[i] for i in spatial}
    out = {x.name for x in block_writes(b)}
    reads = block_reads(b)
    loads = [ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name not in out]
    for c in spatial:
        ext = arith.as_int(b.iters[c].extent)
        if ext is None or (not pad and ext % lanes) or pad and (not PAD_CHANNELS or ext < PAD_CHANNELS or ext % lanes == 0):
            continue
        full = ext
        cname = names[c]
        w_idx = None
        for idx, buf in enumerate(reads):
            lds = [ld for ld in loads if ld.buffer.name == buf.name]
            if not lds or any(ld.indices != lds[0].indices for ld in lds):
                continue
            ix = lds[0].indices
            at = [d for d, i in enumerate(ix) if isinstance(i, Var) and i.name == cname]
            if len(at) == 1 and not any(s_names & _vars(i) for d, i in enumerate(ix) if d != at[0]) \
                    and len(buf.shape) >= 2:
                w_idx = idx
                break
        if w_idx is None:
            continue
        w_name = reads[w_idx].name
        others = [ld for ld in loads if ld.buffer.name != w_name]
        if not others:
            continue
        follow = _follows(b, others, cname, reads)
        if pad and (follow or any(cname in _vars(i) for ld in others for i in ld.indices)):
            continue
        others = [ld for ld in others if ld.buffer.name not in {reads[i].name for i, _ in follow}]
        col = [i for i in spatial if i != c][-1]
        col_ext = arith.as_int(b.iters[col].extent)
        if col_ext is None or (follow and not _vector_depthwise(b, reads, follow, ext, col_ext, lanes)):
            continue
        best: tuple[float, bool, int, int, int] | None = None  # (cost, spills, -accumulators, loads, oc1)
        pick = (0, 0)
        budget = _REGS.get(lanes, 16) - 3
        red = math.prod(arith.as_int(iv.extent) or 1 for iv in b.iters if iv.kind == "R")
        # no column tile of 2-6: only 1 column or the whole width divide it (7, 13, 31); tiles with
        # a last partial tile (guarded columns) compete too (7: 2 x 4 columns, 13: still 1 x 13)
        prime = col_ext >= 7 and all(col_ext % d for d in range(2, 7))
        hoist = per_step_work(b)
        guard = wide_padded_taps(b, names[col])
        # on rows of up to 8 columns under 1-3 taps, a tie goes to the tile that fits the registers:
        # 2 x 6 instead of 4 x 3 (inception_v1's 6x6 stage: 192->384 3x3 1.40x, 832->384 1x1 1.43x,
        # one thread; the 5x5 48->128 there 0.87x, 12 and 15 columns 0.7-1.0x, so those keep 4 x 3)
        taps = [arith.as_int(iv.extent) or 0 for iv in b.iters if iv.kind == "R"]
        narrow = col_ext <= 8 and taps[-1] <= 3
        short = not prime and short_reduction(b, col_ext, hoist or bool(follow))
        # AVX-512 (`SPILL_ALL_WIDTHS`): no tile that spills with two steps' weights in flight, none of 4
        # vectors x 3+ columns; 1x1 convs that reduce the channels keep the cost model's tile
        fit = lanes in SPILL_ALL_WIDTHS and not (math.prod(taps[1:]) == 1 and red > ext)
        fold = fit and _padded_column(b, names[col])
        for v in (1, 2, 4, 8):  # vectors per channel block: LLVM splits other widths badly (48 lanes: scalar shuffles)
            if v > budget or v * lanes > 64:
                continue
            oc1 = v * lanes
            if pad:  # rounded up to the channel block; blocks of 2+ vectors with at most `PAD_WASTE` padding
                ext = -(-full // oc1) * oc1
                if v > 1 and (ext - full) * PAD_WASTE > full:
                    continue
            if ext % oc1 or not all(_uniform_over(i, cname, oc1) for ld in others for i in ld.indices):
                continue
            if any(arith.as_int(reads[i].shape[d]) is None or (arith.as_int(reads[i].shape[d]) or 0) % oc1
                   for i, d in follow):
                continue
            if short and v == SHORT_VECTORS:
                key = (-1.0, False, -v, 0, oc1)
                if best is None or key < best:
                    best, pick = key, (oc1, SHORT_COLUMNS)
                continue
            if hoist:  # the whole row under the reduction (`per_step_work`): the widest channel vector
                key = (0.0, False, -v, 0, oc1)
                if best is None or key < best:
                    best, pick = key, (oc1, col_ext)
                continue
            for ow1 in range(1, min(col_ext, budget // v, 16) + 1):  # 16: the unrolled tile's limit
                if col_ext % ow1 and not prime:
                    continue
                spill = narrow and ow1 > 1 and v * ow1 + v + 1 > _REGS.get(lanes, 16)
                if fit and ow1 > 1 and (v * ow1 + 2 * v + 1 > _REGS[lanes] or v >= 4 and ow1 > 2):
                    continue
                cost = 0.0 if fold and ow1 == col_ext else _step_cost(v, ow1, col_ext, lanes * 4 * v * red > L1_BYTES, guard)
                key = (cost, spill, -v * ow1, v + ow1, oc1)
                if best is None or key < best:
                    best, pick = key, (oc1, ow1)
        if best is not None:
            return c, col, w_idx, pick[0], pick[1], follow
    return None


def short_reduction(b: BlockStmt, cols: int, other_tile: bool) -> bool:
    """Whether a 3x3 convolution's reduction is short enough (`SHORT_STEPS`: SqueezeNet's stem and its
    3x3s at 55x55 and 27x27, 27-288 steps) that it takes 4 channel vectors x 2 columns, the last column
    tile guarded where 2 does not divide the width (a whole-row tile, as for prime widths). The cost
    model ranked 4 x 3 (17 registers: spills) or 2 x 5 first; single layers, same blocks, 4 x 2 /
    chosen us: 3->64 3x3/2 224->111 871-1426 / 1378-1668 (4 x 3), 16->64 at 55x55 779-886 / 1058-1782
    (2 x 5), 32->128 at 27x27 843 / 1210 (4 x 3). Longer reductions keep the cost model's tile (48->192
    at 13x13, 432 steps, read 1.35-1.54x but 64->256 there 0.74-1.63x; the spilling 4 x 3 at 27 columns
    and 432+ steps is tests/test_conv_spill.py's case); the 1x1s keep theirs (16->64 at 55x55: 0.91x).
    Not for depthwise or per-step-work convolutions (`other_tile`), nor prime widths, whose guarded
    tiles already compete in the cost model (32->128 at 7x7: 2 x 4)."""
    if other_tile or cols < 7:
        return False
    taps = [arith.as_int(iv.extent) for iv in b.iters if iv.kind == "R"]
    if len(taps) < 3 or any(t is None for t in taps) or taps[-1] != 3 or taps[-2] != 3:
        return False
    return math.prod(taps) <= SHORT_STEPS  # type: ignore[arg-type]


def _vector_depthwise(b: BlockStmt, reads: list, follow: list[tuple[int, int]], ext: int, cols: int,
                      lanes: int) -> bool:
    """Whether a depthwise conv gains from channel vectors, whose input is packed per call (a pool
    launch and a copy): measured on MobileNetV3/ShuffleNetV2 layers, yes for 5x5 kernels (240 ch 5x5
    at 4x4: 3.2x) and for 64+ channels at least a vector wide (96 ch 3x3 at 8x8: 1.3x); no for 24-48
    channels of 3x3 at 4x4-8x8 (2-3x slower) or when a stride makes the input 4x the output while the
    generic tiling has a full vector of output columns (48 ch 3x3/2 at 16x16: 1.9x slower)."""
    taps = math.prod(arith.as_int(iv.extent) or 1 for iv in b.iters if iv.kind == "R")
    if cols >= lanes and any(2 * (arith.as_int(reads[i].shape[-1]) or 0) > 3 * cols for i, _ in follow):
        return False
    return taps >= 25 or (ext >= 64 and cols >= lanes)


def _group_size(b: BlockStmt, cname: str, ext: int) -> int | None:
    """The channels per group of a grouped convolution: the largest proper divisor `g` of the
    channel extent in a read's `floordiv(.. oc .., g)`, else None."""
    out: int | None = None
    for e in stmt_exprs(b.body):
        for ld in loads_in(e):
            for i in ld.indices:
                for x in subexprs(i):
                    g = arith.as_int(x.b) if isinstance(x, Bin) and x.op == "floordiv" else None
                    if g and 1 < g < ext and ext % g == 0 and cname in _vars(x.a):
                        out = max(out or 0, g)
    return out


def _padded_column(b: BlockStmt, col: str) -> bool:
    """Whether the body tests padding on the column (a `select` whose condition uses it)."""
    return any(isinstance(x, Select) and col in _vars(x.cond) for e in stmt_exprs(b.body) for x in subexprs(e))


def wide_padded_taps(b: BlockStmt, col: str) -> bool:
    """Whether the body tests padding on the column (a `select` whose condition uses the column
    iterator) under a kernel of 7+ taps: LLVM unrolls a 3-tap loop and hoists each column's test out
    of the reduction, but keeps a 7-tap loop (the 7x7/2 stems of ResNet-50 and Inception) rolled,
    with two compares and branches per column and tap (`--emit asm`). 5x5 kernels are left out: the
    one whose tile this changed (32->128 at 13x13, 8 x 13 -> 32 x 2 columns) measured 0.84x."""
    taps = [arith.as_int(iv.extent) for iv in b.iters if iv.kind == "R"]
    return bool(taps) and (taps[-1] or 0) >= 7 and _padded_column(b, col)


def _step_cost(v: int, ow1: int, cols: int, from_l2: bool, guard: bool = False) -> float:
    """Estimated cycles per useful FMA of one reduction step of a `v` vectors x `ow1` columns
    register tile over `cols` output columns: v * ow1 FMAs on 2 ports, v + ow1 loads on 2 ports, 4
    cycles of FMA latency on each accumulator, and, when a channel block's weights do not stay in L1
    (`from_l2`), the weight vectors streamed from L2 at about one per cycle. A width that `ow1`
    does not divide ends in a partial tile whose guarded columns do no useful work. Prime widths:
    one column of 8 vectors streams a large weight from L2 once per column; 2 vectors x 4 columns
    over 7 (one guarded) measured 1.4x faster than 1 vector x the 7 columns. A column padding test
    left in the reduction (`guard`, `wide_padded_taps`) costs about half a cycle per column and step
    beyond that: the 3->64 7x7/2 stem at 224x224, one thread, 4 vectors x 2 columns 1.2-1.7x faster
    than 2 x 4 (4.3-4.4 vs 5.5-5.7 ms)."""
    cycles = max(v * ow1 / 2, (v + ow1) / 2, 4, v if from_l2 else 0) + (ow1 / 2 if guard else 0)
    useful = v * ow1 * cols / (-(-cols // ow1) * ow1)
    return round(cycles / useful, 4)


def _follows(b: BlockStmt, loads: list, cname: str, reads: list) -> list[tuple[int, int]]:
    """The reads indexed by the channel itself (a depthwise convolution's input: `x[n, oc + k, ..]`
    with `k` of extent 1) as (read index, axis): packed channel-innermost, they are vector loads
    like the weight. Reads using the channel otherwise are left to the uniformity test."""
    one = {iv.var.name for iv in b.iters if iv.kind == "R" and arith.as_int(iv.extent) == 1}
    names = [r.name for r in reads]
    out: list[tuple[int, int]] = []
    for ld in loads:
        at = [d for d, i in enumerate(ld.indices) if cname in _vars(i)]
        if len(at) == 1 and ld.buffer.name in names and _plus_zero(ld.indices[at[0]], cname, one) \
                and all(ld2.indices == ld.indices for ld2 in loads if ld2.buffer.name == ld.buffer.name):
            out.append((names.index(ld.buffer.name), at[0]))
    return sorted(set(out))


def _plus_zero(i: Expr, cname: str, one: set[str]) -> bool:
    """`i` is `c + k1 + k2 ..` with every k an iterator of extent 1 (always 0)."""
    if isinstance(i, Var):
        return i.name == cname or i.name in one
    return isinstance(i, Bin) and i.op == "add" and _plus_zero(i.a, cname, one) and _plus_zero(i.b, cname, one)


def per_step_work(b: BlockStmt) -> bool:
    """Whether the reduction body computes a division or an intrinsic (sqrt) from the reduction
    iterators alone: a pre-activation batch norm inlined before the convolution (DenseNet's
    BN-ReLU-conv: `scale[ic] / sqrt(var[ic] + eps)`). Under a register tile it runs once per
    reduction step of every tile, 8-12 FMAs, a sqrt and a division per step (224->128 1x1 at 56x56:
    5.7x slower than the plain conv); the schedule then runs the reduction outside the row's columns
    (see `conv_tiling`), so it runs once per step of a whole output row."""
    red = {iv.var.name for iv in b.iters if iv.kind == "R"}
    for e in stmt_exprs(b.body):
        for x in subexprs(e):
            if (isinstance(x, Call) or isinstance(x, Bin) and x.op == "div") and is_float(x.dtype) \
                    and _vars(x) and _vars(x) <= red:
                return True
    return False


def conv_tiling(sch: Schedule, block: BlockRV, lanes: int, ch: Decisions) -> bool:
    """Schedule a convolution-like block (see module doc); False (schedule untouched) if it is not one."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    # channels per group not a multiple of the vector (shufflenet's 68): half vectors still beat the
    # generic tiling's vectors over a short output width
    plan = conv_plan(b, lanes) or conv_plan(b, lanes, pad=True) or (conv_plan(b, lanes // 2) if lanes >= 8 else None)
    if plan is None:
        # not even half vectors (34 channels per group; 68 and 28 with 16 lanes): vectors over columns
        cols = column_plan(b, lanes)
        return cols is not None and column_tiling(sch, block, cols, ch)
    c, col, w_idx, oc1_want, ow1_want, follow = plan
    w_name = block_reads(b)[w_idx].name
    if not is_param(sch.func, w_name):
        return False
    if not ch.cat(sch, [0, 1], 1):  # the design space keeps the generic tiling as an alternative
        return False
    by_iter = _loops_by_iter(sch, block, b)
    if by_iter is None:
        return False
    oc_ext = arith.as_int(b.iters[c].extent)
    col_ext = arith.as_int(b.iters[col].extent)
    assert oc_ext is not None and col_ext is not None
    hoist = per_step_work(b)  # the row's columns under the reduction: the tile in L1
    grp = _group_size(b, b.iters[c].var.name, oc_ext)
    padded = oc_ext % oc1_want != 0  # `conv_plan`'s `pad`: the last channel vector guarded
    if padded:
        oc_f = [-(-oc_ext // oc1_want), oc1_want]
        oc0_, oc1 = sch.split(by_iter[c], [None, oc1_want])
        oc0 = [oc0_]
    elif grp is not None and grp % oc1_want == 0:
        # groups x blocks x lanes: `floordiv(oc, grp)` then provably takes one value across the
        # lanes (codegen broadcasts the input element instead of gathering it per lane)
        oc_f = ch.tile(sch, by_iter[c], 3, 64, [oc_ext // grp, grp // oc1_want, oc1_want])
    else:
        oc_f = ch.tile(sch, by_iter[c], 2, 64, [oc_ext // oc1_want, oc1_want])
    if not padded:
        *oc0, oc1 = sch.split(by_iter[c], oc_f)
    guarded = col_ext % ow1_want != 0 and sum(iv.kind == "S" for iv in b.iters) >= 3
    if guarded:
        ow_f = [-(-col_ext // ow1_want), ch.cat(sch, list(range(1, 17)), ow1_want)]
        ow0, ow1 = sch.split(by_iter[col], [None, ow_f[1]])
    else:
        ow_f = ch.tile(sch, by_iter[col], 2, max(16, col_ext) if hoist else 16, [col_ext // ow1_want, ow1_want])
        ow0, ow1 = sch.split(by_iter[col], ow_f)
    outer = [lp for i, iv in enumerate(b.iters) if iv.kind == "S"
             for lp in (oc0 if i == c else [ow0] if i == col else [by_iter[i]])]
    red = [by_iter[i] for i, iv in enumerate(b.iters) if iv.kind == "R"]
    plane = None if hoist or len(outer) < 3 else plane_chunk(b, oc_f[-1], c, col)
    # a tile whose accumulators, weight vectors and broadcast exceed the registers (4 x 3 on AVX2)
    # keeps one pass: chunks would reload the spilled tile at each chunk (inception_v1's 96->128 and
    # 128->192 3x3 at 27x27, one thread: one pass 1.13-1.56x faster)
    v = oc_f[-1] // lanes if oc_f[-1] >= lanes else 1
    spills = ow_f[1] > 1 and v * ow_f[1] + v + 1 > _REGS.get(lanes, 16)
    chunk = plane or (None if spills else reduction_chunk(b, oc_f[-1], col_ext, hoist))
    if plane is not None:
        # a small output plane: the chunk loop outside its rows too, so the chunk's input planes and
        # weights stay in L1 while every column tile of the plane reads them
        r_ext = arith.as_int(sch.get(red[0]).extent)  # type: ignore[union-attr]
        assert r_ext is not None
        r0, r1 = sch.split(red[0], ch.tile(sch, red[0], 2, r_ext, [r_ext // plane, plane]))
        sch.reorder(*outer[:-2], r0, outer[-2], outer[-1], r1, *red[1:], ow1, oc1)
        red = [r0, r1, *red[1:]]
    elif chunk is not None:
        # the channel block's weights do not fit L1: the input channels in chunks whose weights do,
        # each chunk's loop outside the row's column tiles (the row's accumulators in an L1 tile
        # between chunks), so a column tile reads the chunk's weights from L1, not all from L2
        r_ext = arith.as_int(sch.get(red[0]).extent)  # type: ignore[union-attr]
        assert r_ext is not None
        r0, r1 = sch.split(red[0], ch.tile(sch, red[0], 2, r_ext, [r_ext // chunk, chunk]))
        sch.reorder(*outer[:-1], r0, outer[-1], r1, *red[1:], ow1, oc1)
        red = [r0, r1, *red[1:]]
    else:
        sch.reorder(*outer, *red, ow1, oc1)
    row = guarded or chunk is not None  # the tile holds a whole row (a whole plane with `plane`)
    at = 3 if plane is not None else 2 if row else 1
    wb = _try(sch.cache_write, block, 0, "local")
    if isinstance(wb, BlockRV):
        for cons in sch.get_consumers(wb):  # elementwise epilogues fold into the write-back
            _try(sch.reverse_compute_inline, cons)
        _try(sch.reverse_compute_at, wb, outer[-at])
    init = _try(sch.decompose_reduction, block, red[0])
    _try(sch.vectorize, oc1)
    if 1 < ow_f[1] <= 16:
        _try(sch.unroll, ow1)
    par = outer[:1 - at] if at > 1 else outer
    fused = sch.fuse(*par) if len(par) > 1 else par[0]
    _try(sch.parallel, fused)
    # the accumulator tile with the channels last, so each vector of lanes is contiguous; the write-back
    # reads it channel vectors at a time too (a vector across columns would gather from the tile and
    # keeps LLVM from holding the accumulators in registers)
    nd = sum(iv.kind == "S" for iv in b.iters)
    w_ix = [st.indices for st in stores_in(b.body) if st.buffer.name in {x.name for x in block_writes(b)}]
    d = next((k for k, i in enumerate(w_ix[0]) if isinstance(i, Var) and i.name == b.iters[c].var.name), None) \
        if w_ix and len(w_ix[0]) == nd else None
    if isinstance(wb, BlockRV) and d is not None:
        _channels_inner(sch, wb, d)
    if isinstance(init, BlockRV):
        _channels_inner(sch, init, [i for i, iv in enumerate(b.iters) if iv.kind == "S"].index(c))
    _try(sch.compact, block, 0, [k for k in range(nd) if k != d] + [d] if d is not None else [])
    if _pack_weight(sch, block, w_name, c, oc_f[-1], padded) and padded:
        # the last channel vector's zero weight channels: the register tile computes all its lanes
        # (no guard, so no lane mask on every vector's FMAs), the write-back alone stays guarded;
        # only over a weight that is padded (the tile's other reads do not use the channel)
        for blk in (block, init):
            if isinstance(blk, BlockRV):
                _try(sch.unguard, blk)
    for idx, d in follow:  # after the weight: packing renumbers nothing but the packed read
        _pack_axis(sch, block, idx, d, oc_f[-1])
    return True


def plane_chunk(b: BlockStmt, oc1: int, c: int, col: int) -> int | None:
    """The input channels per chunk of a plane-chunked 1x1 convolution, or None: when an
    `oc1`-channel block's weights exceed L1 and the output plane is small (`PLANE_POSITIONS`), the
    largest divisor of the input channels whose weights and input planes take at most half of
    `L1_BYTES`. Row by row, a 7x7 plane's two column tiles each streamed the block's weights (2048 x
    16 lanes: 128 KiB) and an input line per step from L2; in ResNet-50's profile (same run, against
    one pass per row) 2048->512 at 7x7 1340 -> 696 us, 512->2048 1053 -> 723 us. 3x3 kernels at 7x7
    measured 0.87x (512->512, and the strided 14->7) and keep the row schedule."""
    sp = [arith.as_int(iv.extent) for i, iv in enumerate(b.iters) if iv.kind == "S" and i != c][-2:]
    red = [arith.as_int(iv.extent) for iv in b.iters if iv.kind == "R"]
    if any(e is None for e in sp + red) or len(sp) < 2 or not red:  # (a symbolic batch is fine)
        return None
    plane = sp[0] * sp[1]  # type: ignore[operator]
    per_w = 4 * oc1 * math.prod(red[1:])  # type: ignore[arg-type]
    if plane > PLANE_POSITIONS or per_w * red[0] <= L1_BYTES or math.prod(red[1:]) > 1:  # type: ignore[operator]
        return None
    per_in = 4 * _in_plane(b)
    fit = [d for d in range(1, red[0]) if red[0] % d == 0 and d * (per_w + per_in) <= L1_BYTES // 2]  # type: ignore[operator]
    return max(fit) if fit else None


def _in_plane(b: BlockStmt) -> int:
    """Elements per input channel plane (the largest read's last two axes)."""
    best = 0
    for buf in block_reads(b):
        dims = [arith.as_int(d) for d in buf.shape]
        if len(dims) >= 3 and all(d is not None for d in dims[-2:]):
            best = max(best, dims[-1] * dims[-2])  # type: ignore[operator]
    return best


def reduction_chunk(b: BlockStmt, oc1: int, cols: int, hoist: bool = False) -> int | None:
    """The input channels per chunk when an `oc1`-channel block's weights exceed L1 (3x3 convs from
    about 42 input channels at 16 lanes): the largest divisor of the first reduction extent whose
    weights take at most half of `L1_BYTES`; None when they fit, no chunk is smaller, or the row is not
    one where chunks measured faster: `NARROW_COLUMNS`+ columns (`WIDE_COLUMNS`+ for a whole-row tile of
    `per_step_work`), not a power of two. Same-run against one pass, single 3x3 layers (batch 1
    unless said): 56 columns 1.3-2.2x (128->32, 64->192, 64->64), 28 columns 1.4-1.7x (64->96,
    96->96, 128->128), 14 columns 1.0-1.3x (256->256, 192->256, 96->128); slower at 7 columns
    (512->512: 0.72x), at 16 and 32 (64->64, 16x16 batch 8 and 32x32: 0.3-0.8x, a 1-4 KiB channel
    plane, L1 set conflicts suspected) and, with the whole-row tile, at 28 and 14 (BN-ReLU 352->128
    and 704->128 1x1: 0.65x, 0.78x)."""
    red = [arith.as_int(iv.extent) for iv in b.iters if iv.kind == "R"]
    if cols < (WIDE_COLUMNS if hoist else NARROW_COLUMNS) or cols & (cols - 1) == 0 or not red or any(e is None for e in red):
        return None
    per = 4 * oc1 * math.prod(red[1:])  # type: ignore[arg-type]
    if per * red[0] <= L1_BYTES:  # type: ignore[operator]
        return None
    fit = [d for d in range(1, red[0]) if red[0] % d == 0 and d * per <= L1_BYTES // 2]  # type: ignore[operator]
    return max(fit) if fit else None


def _channels_inner(sch: Schedule, wb: BlockRV, d: int) -> None:
    """Move the write-back's loop over output axis `d` (the channels) innermost and vectorize it."""
    blk = sch.get(wb)
    if not isinstance(blk, BlockStmt) or len(blk.iters) <= d:
        return
    loops = [lp for lp in sch.get_loops(wb) if sch.get(lp).kind == "serial"]  # type: ignore[union-attr]
    feeds = {v.name for v in free_vars(blk.iters[d].binding)}
    chan = [lp for lp in loops if lp.name in feeds]
    if len(chan) != 1:
        return
    rest = [lp for lp in loops if lp != chan[0]]
    try:
        if rest:
            sch.reorder(*rest, chan[0])
    except MlcError:
        return
    _try(sch.vectorize, chan[0])


def _pack_weight(sch: Schedule, block: BlockRV, w_name: str, c: int, oc1: int, pad: bool = False) -> bool:
    """W[.., oc, ..] -> Wp[.., oc // oc1, .., oc % oc1]: the lanes' weights contiguous (`pad`: zero
    channels up to a multiple of `oc1`); whether it was packed."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    names = [x.name for x in block_reads(b)]
    if w_name not in names:
        return False
    w_idx = names.index(w_name)
    buf = block_reads(b)[w_idx]
    cname = b.iters[c].var.name
    ld = next(ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name == buf.name)
    d = next(k for k, i in enumerate(ld.indices) if isinstance(i, Var) and i.name == cname)
    if d != len(buf.shape) - 1 or pad:
        return _pack_axis(sch, block, w_idx, d, oc1, pad)
    return False


def _pack_axis(sch: Schedule, block: BlockRV, idx: int, d: int, oc1: int, pad: bool = False) -> bool:
    """Read `idx` of the block packed with axis `d` split by `oc1`, the `oc1` part innermost."""
    nd = len(block_reads(sch.get(block))[idx].shape)  # type: ignore[arg-type]
    tiles = [1] * nd
    tiles[d] = oc1
    order = [x for x in range(nd + 1) if x != d + 1] + [d + 1]
    if oc1 <= 1:
        return False
    pk = _try(sch.pack, block, idx, tiles, order, pad=True) if pad else _try(sch.pack, block, idx, tiles, order)
    if isinstance(pk, BlockRV):
        pl = sch.get_loops(pk)
        _try(sch.parallel, pl[0])
        _try(sch.vectorize, pl[-1])
    return isinstance(pk, BlockRV)


def column_plan(b: BlockStmt, lanes: int) -> tuple[int, int, int, int, int, int, int] | None:
    """(channel iter, row iter, column iter, rows, channels, vector lanes, vectors) of the register
    tile of a grouped 1x1 stride-1 convolution, else None: the vectors run over output columns, the
    tile's rows are channels of one group. `conv_tiling` asks for it where `conv_plan` finds no
    channel vector of `lanes` or `lanes // 2`.

    Such a conv is a small GEMM per group (ShuffleNet's 136->136 in 4 groups at 28x28: 34 x 34 x 784
    per group): the input row is contiguous, each channel's weight one broadcast per reduction step.
    Channel vectors give 34 or 28 channels per group none of 8 or 16 lanes (the generic tiling then
    recomputes the group's input channel per tile row and step: 7 GFLOP/s on AVX-512). The vector is
    the widest of `lanes`, `lanes // 2` (8 at least) dividing the width, else the widest width
    divisor between `lanes // 2` and `lanes` (14 or 7 lanes on 28 and 14 columns: LLVM pads the
    vector to a register), else 4 lanes. Single layers, AVX-512, same process (median / min us):
    odd 14 lanes against 4-lane vectors 1.3-1.6x faster (136->136 at 28x28 148 / 86 against 245 /
    131); 8-lane vectors at 56x56 over odd 14: 216 / 127 against 234 / 141. The tile takes the most
    accumulators of `mr` in 1, 2, 4 channels (a divisor of the group), `mh` output rows, `nv`
    vectors that fit the registers, with the fewest rows that give `COLUMN_CHAINS` accumulators.
    ShuffleNet's kernel medians, both builds in one process (AVX-512, 6 alternating rounds): 12.2 ->
    3.4 ms; 136->136 g4 at 28x28 13-14x, 112->112 g4 18x, 272->272 g4 at 14x14 2.1x. Not measured
    on an AVX2 machine (there 68 and 28 per group keep 4-lane channel vectors).

    Stride-1 depthwise convolutions that `conv_plan` leaves to the generic tiling (`DEPTHWISE`; the
    input's column `w + kw - pad`, the padding tested per lane) take the same tile, one channel per
    tile row: ShuffleNet's 136-channel 3x3 at 28x28 behind its channel shuffle 4.7x (3 calls 734 ->
    156 us per run), the model's kernel total 5.92 -> 5.40 ms (8 alternating rounds, load 1.0).
    Stride 2 too (strided vector loads of the input row): its 112-channel 3x3/2 at 56x56 320 -> 88
    us, the total 3.24 -> 2.90 ms (8 rounds, load 0.9). The small depthwise convs this also takes in
    mobilenet_v3_small and shufflenet_v2_x0_5 (16x16 to 4x4) measured 0.97-1.09x, kernel by kernel."""
    spatial = [i for i, iv in enumerate(b.iters) if iv.kind == "S"]
    red = [i for i, iv in enumerate(b.iters) if iv.kind == "R"]
    if len(spatial) < 4 or not red or per_step_work(b):
        return None
    exts = [arith.as_int(iv.extent) for iv in b.iters]
    if any(e is None for e in exts[1:]):
        return None
    dw = DEPTHWISE and exts[red[0]] == 1  # one input channel per output channel, any taps
    if any(exts[i] != 1 for i in red[1:]) and not dw:
        return None  # a 1x1 kernel: one channel reduction, the taps of extent 1
    names = [iv.var.name for iv in b.iters]
    out = {x.name for x in block_writes(b)}
    loads = [ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name not in out]
    col, row = spatial[-1], spatial[-2]
    cols, h_ext = exts[col], exts[row]
    if cols is None or h_ext is None:
        return None
    vl = next((v for v in (lanes, lanes // 2) if v >= 8 and cols % v == 0), None)
    if vl is None:
        vl = max([d for d in range(lanes // 2 + 1, lanes) if cols % d == 0] + [4 if cols % 4 == 0 else 0])
        if not vl:
            return None
    for c in spatial[:-2]:
        ext = exts[c]
        if ext is None:
            continue
        cname = names[c]
        grp = _group_size(b, cname, ext)
        if not dw and (grp is None or grp % lanes == 0):
            continue  # ungrouped, or `conv_plan`'s channel vectors
        wts = [ld for ld in loads if any(isinstance(i, Var) and i.name == cname for i in ld.indices)]
        ins = [ld for ld in loads if ld not in wts]
        if len({ld.buffer.name for ld in wts}) != 1 or not ins:
            continue
        # the weight: no spatial iterator but the channel; the input: the column itself (stride 1,
        # no padding) last, and the column nowhere else
        if any(_vars(i) & {names[i2] for i2 in spatial if i2 != c} for ld in wts for i in ld.indices):
            continue
        rnames = {names[i] for i in red}
        strides = (1, 2) if dw else (1,)  # depthwise stride 2: strided vector loads of the input row
        if not all(_column_plus_taps(ld.indices[-1], names[col], rnames, strides)
                   and not any(names[col] in _vars(i) for i in ld.indices[:-1]) for ld in ins):
            continue
        rows = [1] + [d for d in (2, 4) if (grp or ext) % d == 0
                      and all(_uniform_over(i, cname, d) for ld in ins for i in ld.indices)]
        vecs = [d for d in range(1, cols // vl + 1) if (cols // vl) % d == 0]
        hs = [d for d in range(1, min(8, h_ext) + 1) if h_ext % d == 0]
        regs = _REGS.get(lanes, 16)  # accumulators and the channels' broadcasts
        tiles = [(min(m * h * v, COLUMN_CHAINS), -h, m * h * v, v, h, m) for m in rows for v in vecs for h in hs
                 if m * h * v + m <= regs]
        *_, nv, mh, mr = max(tiles)
        return c, row, col, mh, mr, vl, nv
    return None


def _column_plus_taps(i: Expr, col: str, red: set[str], strides: tuple[int, ...]) -> bool:
    """`i` is the column times a stride of `strides` plus reduction iterators and constants (`w + kw
    - 1`, `2 * w + kw - 1`)."""
    for st in strides:
        rest = arith.simplify(Bin("sub", i, Bin("mul", Const(st, i.dtype), Var(col, i.dtype))))
        if col in _vars(i) and col not in _vars(rest) and _vars(rest) <= red:
            return True
    return False


def _loops_by_iter(sch: Schedule, block: BlockRV, b: BlockStmt) -> dict[int, LoopRV] | None:
    """The loop each block iterator is bound to (iterator index -> loop), or None unless every iterator
    is bound to exactly one of the block's loops (one loop each: the nest is still untransformed)."""
    loops = sch.get_loops(block)
    if len(loops) != len(b.iters):
        return None
    by_iter: dict[int, LoopRV] = {}
    for i, iv in enumerate(b.iters):
        vs = free_vars(iv.binding)
        if len(vs) != 1:
            return None
        hit = [lp for lp in loops if lp.name == next(iter(vs)).name]
        if not hit:
            return None
        by_iter[i] = hit[0]
    return by_iter


def column_tiling(sch: Schedule, block: BlockRV, plan: tuple[int, int, int, int, int, int, int],
                  ch: Decisions) -> bool:
    """Schedule a `column_plan` convolution: (batch, group, channel tile, row, column tile) in
    parallel, the reduction, then an unrolled `mr` channels x `mh` rows x `nv` vectors register tile,
    the vector lanes over the columns."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    c, row, col, mh, mr, vl, nv = plan
    if not ch.cat(sch, [0, 1], 1):
        return False
    by_iter = _loops_by_iter(sch, block, b)
    if by_iter is None:
        return False
    oc_ext, h_ext, w_ext = (arith.as_int(b.iters[i].extent) for i in (c, row, col))
    assert oc_ext is not None and h_ext is not None and w_ext is not None
    grp = _group_size(b, b.iters[c].var.name, oc_ext)
    if grp is not None:
        oc_f = ch.tile(sch, by_iter[c], 3, 64, [oc_ext // grp, grp // mr, mr])
    else:
        oc_f = ch.tile(sch, by_iter[c], 2, 64, [oc_ext // mr, mr])
    *oc0, oc1 = sch.split(by_iter[c], oc_f)
    h0, h1 = sch.split(by_iter[row], ch.tile(sch, by_iter[row], 2, 64, [h_ext // mh, mh]))
    w0, w1, w2 = sch.split(by_iter[col], ch.tile(sch, by_iter[col], 3, 64, [w_ext // (nv * vl), nv, vl]))
    outer = [lp for i, iv in enumerate(b.iters) if iv.kind == "S"
             for lp in (oc0 if i == c else [h0] if i == row else [w0] if i == col else [by_iter[i]])]
    red = [by_iter[i] for i, iv in enumerate(b.iters) if iv.kind == "R"]
    sch.reorder(*outer, *red, oc1, h1, w1, w2)
    wb = _try(sch.cache_write, block, 0, "local")
    if isinstance(wb, BlockRV):
        for cons in sch.get_consumers(wb):  # elementwise epilogues fold into the write-back
            _try(sch.reverse_compute_inline, cons)
        _try(sch.reverse_compute_at, wb, outer[-1])
    _try(sch.decompose_reduction, block, red[0])
    _try(sch.vectorize, w2)
    for lp in (oc1, h1, w1):
        if 1 < (arith.as_int(sch.get(lp).extent) or 0) <= 16:  # type: ignore[union-attr]
            _try(sch.unroll, lp)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    _try(sch.parallel, fused)
    if isinstance(wb, BlockRV):
        wl = sch.get_loops(wb)
        if wl:
            _try(sch.vectorize, wl[-1])
    _try(sch.compact, block, 0)
    return True
