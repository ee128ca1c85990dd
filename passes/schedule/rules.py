"""Schedule rules: the design space of a tensor program, and its deterministic default point.

As in MetaSchedule, a design space is what the rules write into a `Schedule` with sampling
instructions (`sample_perfect_tile`, `sample_categorical`) where a choice is open: the trace of one
run is one point, and search mutates its decisions and replays. `default_schedule` runs the same
rules but passes each sampling instruction a hand-picked decision, so its trace is a valid starting
point for search too. Rules, in order, per block:

- auto-inline: elementwise blocks writing intermediates fold into their consumers;
- convolution tiling (conv_tiling.py): convolutions get vectors over output channels, a packed
  weight and a register tile of output columns;
- multi-level tiling: other blocks with a reduction and data reuse (matmul, dense, conv) get SSRSRS tiles,
  an accumulator in a local buffer
  written back under the tile (where elementwise epilogues then fold in); by default constant axes
  get inner tiles and a symbolic row axis its row tile (guarded in block form; lower-tir partitions
  the row loop so that only the remainder keeps the guard, passes/loop_partition.py), a transposed
  operand is packed into column panels, and a block whose contiguous axis is symbolic keeps its
  plain nest;
- random compute location: producers without reuse (softmax/layernorm statistics) move under
  their consumer's outer loop;
- parallel-vectorize-unroll: outer spatial loops fused and run in parallel, the innermost spatial
  loop vectorized (a symbolic one whole: the codegen strip-mines it, where a split would mask every
  lane), small register tiles unrolled; a short reduction unrolled inside a symbolic vector loop
  (attention scores), a reduction over leading rows (weight/bias gradients) outside it.
These are the CPU rules; the GPU design space is passes/schedule/gpu_rules.py.
Every primitive a rule tries is checked by the primitive itself; a rule that does not apply leaves
the schedule as it was (primitives are atomic), so rules compose on any program `lower` emits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Expr, Var, free_vars, subexprs, substitute
from mlc.ir.target import Target
from mlc.ir.tir import BlockStmt, PrimFunc
from mlc.ir.tir_visit import block_reads, block_writes, loads_in, rewrite, stmt_exprs, walk

from .conv_tiling import conv_tiling
from .decisions import Decisions
from .schedule import Schedule
from .schedule import attempt as _try
from .scope import is_param
from .trace import BlockRV, LoopRV
from .tree import blocks

RULES: tuple[str, ...] = ("auto-inline", "multi-level-tiling", "random-compute-location", "parallel-vectorize-unroll")


@dataclass(frozen=True)
class TargetInfo:
    """What the rules need to know about a CPU target: vector lanes (f32) and cores."""

    lanes: int = 8
    cores: int = 2


def target_info(target: str | Target | TargetInfo | None = None) -> TargetInfo:
    """What the rules read of a target (`ir.target.Target`): lanes from the CPU's features, cores."""
    if isinstance(target, TargetInfo):
        return target
    t = Target.parse(target)
    if t.gpu:
        raise MlcError(f"schedule: the CPU rules do not schedule for {t} (the GPU rules are passes/schedule/gpu_rules.py)")
    return TargetInfo(lanes=t.cpu_info().lanes(32), cores=t.cores)


# ---- program analysis -------------------------------------------------------------------------
def _const(e: object) -> int | None:
    return arith.as_int(e)  # type: ignore[arg-type]


def _loop_kinds(sch: Schedule, block: BlockRV, loops: list[LoopRV]) -> list[str]:
    """Per loop: "S" if it only feeds spatial iterators, "R" if it feeds a reduce one, "" if none."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    out = []
    for lp in loops:
        v = Var(lp.name)
        kinds = {iv.kind for iv in b.iters if v in {Var(x.name) for x in free_vars(iv.binding)}}
        out.append("R" if "R" in kinds else "S" if kinds else "")
    return out


def _is_reduction(b: BlockStmt) -> bool:
    return any(iv.kind == "R" for iv in b.iters)


def needs_tiling(b: BlockStmt) -> bool:
    """A reduction with reuse: some input is not indexed by every (non-unit) spatial iterator."""
    if not _is_reduction(b):
        return False
    spatial = {iv.var.name for iv in b.iters if iv.kind == "S" and _const(iv.extent) != 1}
    if len(spatial) < 2:
        return False
    out = {x.name for x in block_writes(b)}
    reads = [ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name not in out]
    if len({ld.buffer.name for ld in reads}) < 2:
        return False
    return any(not spatial <= {v.name for i in ld.indices for v in free_vars(i)} for ld in reads)


def _leaf_blocks(sch: Schedule) -> list[BlockRV]:
    return [rv for rv in sch.get_blocks() if not any(isinstance(s, BlockStmt) for s in _stmts(sch.get(rv).body))]


def _exists(sch: Schedule, rv: BlockRV) -> bool:
    """Whether a block is still there (an earlier rule may have inlined it); records nothing."""
    return any(b.name == rv.name for _, b in blocks(sch.func.body))


def _stmts(s: object) -> list[object]:
    return [x for _, x in walk(s)]  # type: ignore[arg-type]


# ---- sampling helpers: a decision given (default) or left to the schedule's rng (design space) --
def _perfect(ext: int, levels: int, inner: Sequence[int]) -> list[int]:
    """A perfect tiling with the given inner factors (each reduced to a divisor), the rest outermost."""
    out = [1] * levels
    rest = ext
    for pos, want in zip(range(levels - 1, 0, -1), reversed(inner)):
        f = math.gcd(rest, want) if want else 1
        out[pos] = f
        rest //= f
    out[0] = rest
    return out


# ---- rules ------------------------------------------------------------------------------------
def auto_inline(sch: Schedule) -> None:
    """Fold elementwise intermediates into their consumers (producers first, to a fixed point)."""
    changed = True
    while changed:
        changed = False
        for rv in _leaf_blocks(sch):
            b = sch.get(rv)
            assert isinstance(b, BlockStmt)
            if _is_reduction(b) or any(is_param(sch.func, x.name) for x in block_writes(b)):
                continue
            if _try(sch.compute_inline, rv) is not None or rv not in sch.get_blocks():
                changed = True
                break


def _row_axis(b: BlockStmt, loops: list[LoopRV], kinds: list[str]) -> int:
    """The loop of the register tile's rows: the innermost spatial loop that the operand read along
    the vector (last spatial) loop does not depend on, so one vector load of it feeds every row
    (matmul: i, as B[k, j] ignores i; NCHW conv: the output channel, not an output row, whose
    input vectors differ per row). Falls back to the spatial loop before the last."""
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    if len(spatial) < 2:
        return -1
    loop_of = {lp.name: i for i, lp in enumerate(loops)}
    env = {iv.var: iv.binding for iv in b.iters}
    out = {x.name for x in block_writes(b)}

    def loops_in(e: Expr) -> set[int]:
        e = substitute(e, env)
        # a loop seen only through `x // c` (c >= 8; grouped conv's group base) is uniform over an
        # aligned 8-row tile
        coarse = [x for x in subexprs(e) if isinstance(x, Bin) and x.op == "floordiv"
                  and (_const(x.b) or 0) >= 8]
        fine = free_vars(rewrite(e, lambda x: Const(0) if x in coarse else None)) if coarse else free_vars(e)
        return {loop_of[v.name] for v in fine if v.name in loop_of}

    last = spatial[-1]
    vec_reads = [ld for e in stmt_exprs(b.body) for ld in loads_in(e)
                 if ld.buffer.name not in out and ld.indices and last in loops_in(ld.indices[-1])]
    used = set().union(*(loops_in(i) for ld in vec_reads for i in ld.indices)) if vec_reads else set()
    free = [i for i in spatial[:-1] if i not in used]
    return free[-1] if free else spatial[-2]


def _narrow_row_axis(exts: list[int | None], kinds: list[str], tgt: TargetInfo, row: int) -> int:
    """The register tile's row axis when the chosen one is symbolic (no row tile without guards) and
    the contiguous axis is too narrow for a one-row tile of enough accumulators (attention's
    [B, heads, T, 8] products: one vector, one FMA chain latency-bound): the innermost constant
    spatial axis (the heads), whose rows then accumulate side by side."""
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    if row < 0 or exts[row] is not None or not spatial or exts[spatial[-1]] is None:
        return row
    if exts[spatial[-1]] >= 4 * tgt.lanes:  # type: ignore[operator]
        return row
    const = [i for i in spatial[:-1] if (exts[i] or 0) >= 2]
    return const[-1] if const else row


def symbolic_rows(exts: list[int | None], kinds: list[str], tgt: TargetInfo, row: int) -> int:
    """Rows of the register tile over a symbolic row axis: `row_tile` when the columns are a
    multiple of the vector, else 1 (the one-row tile then takes up to eight vectors of an odd row
    whole: mlp's 10 logits; with 4 rows LLVM split each <10 x f32> accumulator into scalars,
    re-inserted every step, 7 -> 8-12 us at N = 64)."""
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    if row < 0 or exts[row] is not None or not spatial or exts[spatial[-1]] is None:
        return 1
    last = exts[spatial[-1]]
    assert last is not None
    return row_tile(tgt) if last % tgt.lanes == 0 else 1


def _default_tiles(exts: list[int | None], kinds: list[str], tgt: TargetInfo, row: int | None = None
                   ) -> list[list[int] | None]:
    """Default SSRSRS factors per loop (None: symbolic, inner factors only via `_inner_plan`).

    The contiguous (last spatial) axis gets a vector tile two registers wide, the `row` axis (default:
    the one before it) an 8-row register tile; every other row tile of that axis stays in S1 (one core
    streams a panel of B through its caches across them) unless the outer spatial loops give too
    little parallel work.
    """
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    last = spatial[-1] if spatial else -1
    if row is None:
        row = spatial[-2] if len(spatial) > 1 else -1
    # rows x one vector pair: eight accumulators hide the FMA latency, and each loaded vector of B
    # feeds every row (a symbolic row axis gets its row tile from `_inner_plan`); with no row axis,
    # four vector pairs of columns
    sym = row >= 0 and exts[row] is None
    cols = 1 if row >= 0 and (not sym or symbolic_rows(exts, kinds, tgt, row) > 1) else 4
    out: list[list[int] | None] = []
    for pos, (ext, kind) in enumerate(zip(exts, kinds)):
        if ext is None:
            out.append(None)
        elif kind == "R":
            out.append([ext, 1])
        elif pos == last and ext % tgt.lanes and ext <= 2 * cols * tgt.lanes:
            # a narrow row that is no multiple of the vector (mlp's 10 logits) is one vector tile
            # whole (the codegen splits <10 x f32> into a vector and a rest), not gcd(10, 16) = 2 lanes
            out.append([1, 1, 1, ext])
        elif pos == last:
            out.append(_perfect(ext, 4, [1, cols, 2 * tgt.lanes]))
        elif pos == row:
            out.append(_perfect(ext, 4, [ext, row_tile(tgt), 1]))
        else:
            out.append([ext, 1, 1, 1])
    par = math.prod(t[0] for t in out if t is not None and len(t) == 4)
    if row >= 0 and out[row] is not None:
        t = out[row]
        assert t is not None
        for d in range(1, t[1] + 1):
            if t[1] % d == 0 and (par * d >= 4 * tgt.cores or d == t[1]):
                out[row] = [d, t[1] // d, t[2], t[3]]
                break
    return out


def row_tile(tgt: TargetInfo) -> int:
    """Rows of the register tile: with one vector pair of columns, 8 or 16 accumulators."""
    return 8 if tgt.lanes >= 16 else 4


def _inner_plan(kind: str, rows: int = 1) -> list[int]:
    """Default inner factors of a symbolic-extent loop (the outermost takes the rest): the register
    tile's `rows` for the row axis, else 1.

    A factor that need not divide the extent guards every statement of the register tile, and
    guarded accumulator updates cannot live in registers (on the gpt_block kernels such 8-row tiles
    ran 1.7-6x slower than tiles on the constant axes alone). lower-tir's loop partition
    (passes/loop_partition.py) runs the tiles of the first floor(N / rows) * rows rows without the
    guard and only the remainder guarded, so the row axis gets its tile.
    """
    return [1] if kind == "R" else [1, rows, 1]


def multi_level_tiling(sch: Schedule, block: BlockRV, tgt: TargetInfo, ch: Decisions) -> LoopRV | None:
    """SSRSRS tiling with a local accumulator; returns the loop it writes back under."""
    loops = sch.get_loops(block)
    kinds = _loop_kinds(sch, block, loops)
    if "" in kinds:
        return None
    s_levels, r_levels = 4, 2
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    last_s = spatial[-1] if spatial else -1
    per_level_s: list[list[LoopRV]] = [[] for _ in range(s_levels)]
    per_level_r: list[list[LoopRV]] = [[] for _ in range(r_levels)]
    exts = [_const(sch.get(lp).extent) for lp in loops]  # type: ignore[union-attr]
    if ch.default and (last_s < 0 or exts[last_s] is None):
        # no vector register tile without guards: the plain nest (reduction innermost, which LLVM
        # vectorizes along contiguous operands) is faster by default; search still samples tilings
        return None
    b0 = sch.get(block)
    assert isinstance(b0, BlockStmt)
    row = _narrow_row_axis(exts, kinds, tgt, _row_axis(b0, loops, kinds))
    wants = _default_tiles(exts, kinds, tgt, row)
    for pos, (lp, kind) in enumerate(zip(loops, kinds)):
        n = s_levels if kind == "S" else r_levels
        want = wants[pos]
        if exts[pos] is not None:
            fac: list[int | None] = list(ch.tile(sch, lp, n, 64 if kind == "S" else 16, want))
        else:  # symbolic extent: sample the inner factors, the outermost takes the rest
            plan = _inner_plan(kind, symbolic_rows(exts, kinds, tgt, row) if pos == row else 1)
            cands = [1, 2, 4, 8, 16, 32, 64]
            fac = [None] + [ch.cat(sch, cands, p if p in cands else 1) for p in plan]
        parts = sch.split(lp, fac) if n > 1 else [lp]
        levels = per_level_s if kind == "S" else per_level_r
        for lvl, part in enumerate(parts):
            levels[lvl].append(part)
    order_spec = "SSRSRS"
    order: list[LoopRV] = []
    si = ri = 0
    for c in order_spec:
        if c == "S":
            order += per_level_s[si]
            si += 1
        else:
            order += per_level_r[ri]
            ri += 1
    sch.reorder(*order)
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    if not b.iters or not per_level_s[0]:
        return None
    # accumulate a tile in a local buffer, written back after the reduction of the tile
    at = per_level_s[1][-1]
    wb = _try(sch.cache_write, block, 0, "local")
    if isinstance(wb, BlockRV):
        for c in sch.get_consumers(wb):  # elementwise epilogues fold into the write-back first
            _try(sch.reverse_compute_inline, c)
        _try(sch.reverse_compute_at, wb, at)
    if per_level_r[0]:
        _try(sch.decompose_reduction, block, per_level_r[0][0])
    # inner register tile: unroll the row level, vectorize the contiguous level
    if kinds[last_s] == "S" and per_level_s[3]:
        _try(sch.vectorize, per_level_s[3][-1])
    for lp in per_level_s[2]:
        ext = _const(sch.get(lp).extent)  # type: ignore[union-attr]
        if ext is not None and 1 < ext <= 16:
            _try(sch.unroll, lp)
    outer = per_level_s[0]
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    _try(sch.parallel, fused)
    _vectorize_write_back(sch)
    _try(sch.compact, block, 0)  # the accumulator shrinks to the register tile
    _pack_inputs(sch, block, loops, kinds, per_level_s, ch)
    return at


def _pack_plans(sch: Schedule, block: BlockRV, loops: list[LoopRV], kinds: list[str],
                levels: list[list[LoopRV]]) -> list[tuple[int, list[int], list[int], bool]]:
    """(read index, tiles, order, strided) per input worth packing: a read whose innermost axis is
    indexed by the contiguous (last) spatial iterator gets panels of the vector tile's width,
    contiguous per reduction step (B -> Bp[j // w, k, j % w]); so does one that has that iterator on
    another axis (strided: the vector would be a gather); one indexed by the row iterator and not the
    contiguous one gets strips of the row tile (A -> Ap[i // h, k, i % h])."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    spatial = [iv.var for iv in b.iters if iv.kind == "S"]
    if len(spatial) < 2 or len(levels) < 4:
        return []

    def tile(v: Var) -> int:  # inner tile extent of the loops bound to iterator v
        pos = [i for i, iv in enumerate(b.iters) if iv.var == v][0]
        if kinds[pos] != "S" or len(levels[2]) <= pos or len(levels[3]) <= pos:
            return 1
        exts = [_const(sch.get(levels[lvl][pos]).extent) for lvl in (2, 3)]  # type: ignore[union-attr]
        return math.prod(e for e in exts if e is not None)

    col, row = spatial[-1], spatial[-2]
    spatial_names = {v.name for v in spatial}
    reduce_names = {iv.var.name for iv in b.iters if iv.kind == "R"}
    if len([k for k in kinds if k == "S"]) != len(spatial):
        return []
    out = []
    for idx, buf in enumerate(block_reads(b)):
        lds = [ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name == buf.name]
        if not lds or any(ld.indices != lds[0].indices for ld in lds) or len(buf.shape) < 2:
            continue
        ix = list(lds[0].indices)
        names = [i.name if isinstance(i, Var) else None for i in ix]
        nd = len(ix)
        if names[-1] == col.name and col.name not in names[:-1] and tile(col) > 1:
            if tile(col) == _const(buf.shape[-1]):  # one panel: the packed copy is the operand itself
                continue
            tiles = [1] * (nd - 1) + [tile(col)]
            order = [nd - 1] + list(range(nd - 1)) + [nd]
            strided = False
        elif names.count(col.name) == 1 and tile(col) > 1 and not _mentions(ix[-1], col):
            # a transposed operand (B[j, k], dQ = dS @ K's K^T): the lanes would gather a row
            # stride apart; the panel Bp[j // w, k, j % w] makes them one vector load
            d = names.index(col.name)
            tiles = [1] * nd
            tiles[d] = tile(col)
            order = [d] + [x if x < d else x + 1 for x in range(nd) if x != d] + [d + 1]
            strided = True
        elif (col.name not in names and names[-1] in spatial_names and tile(Var(names[-1])) == 1
              and any(n in reduce_names for n in names[:-1])):
            # a broadcast operand read down its columns (dV = P^T @ dO's P[b, h, k, i], the reduction
            # k a row apart): rows a power-of-two stride apart thrash the cache's sets; the packed
            # copy swaps the two axes, so the reduction reads it contiguously
            d = max(x for x, n in enumerate(names[:-1]) if n in reduce_names)
            order = list(range(nd))
            order[d], order[-1] = order[-1], order[d]
            tiles = [1] * nd
            strided = True
        elif row.name in names and col.name not in names and tile(row) > 1 and names[-1] != row.name:
            d = names.index(row.name)
            tiles = [1] * nd
            tiles[d] = tile(row)
            rest = [x if x < d else x + 1 for x in range(nd) if x != d]  # packed axes other than d's
            order = [d] + rest + [d + 1]
            strided = False
        else:
            continue
        out.append((idx, tiles, order, strided))
    return out


def _mentions(e: Expr, v: Var) -> bool:
    return v in free_vars(e)


def _pack_inputs(sch: Schedule, block: BlockRV, loops: list[LoopRV], kinds: list[str],
                 levels: list[list[LoopRV]], ch: Decisions) -> None:
    """Sampled per input: pack it (the packing nest parallel, its inner axis vectorized/unrolled)."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    names = [x.name for x in block_reads(b)]
    for idx, tiles, order, strided in _pack_plans(sch, block, loops, kinds, levels):
        # default: pack column panels (B) only; row strips (A) are read as broadcasts of a few
        # rows, which the prefetchers stream well: packing them cost 1.3-1.5x at n=512..2048
        # (benchmarks/bench_tune.py decisions, block-wise medians on the 2-core znver4)
        if not ch.cat(sch, [0, 1], 1 if tiles[-1] > 1 or strided else 0):
            continue
        cur = [x.name for x in block_reads(sch.get(block))]  # type: ignore[arg-type]
        if cur[idx] != names[idx]:
            continue
        pk = _try(sch.pack, block, idx, tiles, order)
        if not isinstance(pk, BlockRV):
            continue
        pl = sch.get_loops(pk)
        _try(sch.parallel, pl[0])
        inner = pl[-1]
        if order[-1] == len(order) - 1:  # the source's contiguous axis: vector loads and stores
            _try(sch.vectorize, inner)
        elif 1 < (_const(sch.get(inner).extent) or 0) <= 16:  # type: ignore[union-attr]
            _try(sch.unroll, inner)


def _vectorize_write_back(sch: Schedule) -> None:
    for rv in sch.get_blocks():
        if rv.name.endswith("_wb"):
            loops = sch.get_loops(rv)
            if loops and sch.get(loops[-1]).kind == "serial":  # type: ignore[union-attr]
                _try(sch.vectorize, loops[-1])


def random_compute_location(sch: Schedule, block: BlockRV, ch: Decisions) -> bool:
    """Move a producer under its consumer's outer loop (choice: root, or the first k consumer loops)."""
    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        return False
    c_loops = sch.get_loops(consumers[0])
    if not c_loops:
        return False
    cands = list(range(min(2, len(c_loops)) + 1))  # 0: stay at root, i: under consumer loop i-1
    pick = ch.cat(sch, cands, 1)
    if pick == 0 or not _indexes_by(sch, consumers[0], block, c_loops[pick - 1]):
        return False
    return _try(sch.compute_at, block, c_loops[pick - 1]) is not None


def _indexes_by(sch: Schedule, consumer: BlockRV, producer: BlockRV, loop: LoopRV) -> bool:
    """Whether the consumer's reads of the producer's output move with `loop`. When they do not (a
    softmax over axis 0, consumed by rows), the producer would be recomputed whole per iteration."""
    c = sch.get(consumer)
    lv = sch.get(loop)
    assert isinstance(c, BlockStmt) and not isinstance(lv, BlockStmt)
    out = {b.name for b in block_writes(sch.get(producer))}  # type: ignore[arg-type]
    bindings = {iv.var: iv.binding for iv in c.iters}
    return any(lv.var in free_vars(substitute(i, bindings))
               for e in stmt_exprs(c.body) for ld in loads_in(e) if ld.buffer.name in out for i in ld.indices)


def parallel_vectorize_unroll(sch: Schedule, block: BlockRV, tgt: TargetInfo, ch: Decisions) -> None:
    """Fuse and parallelize the outer spatial loops of a block; vectorize its innermost spatial loop."""
    loops = sch.get_loops(block)
    if not loops or any(sch.get(lp).kind != "serial" for lp in loops):  # type: ignore[union-attr]
        return
    kinds = _loop_kinds(sch, block, loops)
    n_outer = 0
    while n_outer < len(loops) and kinds[n_outer] == "S":
        n_outer += 1
    if n_outer == len(loops) and n_outer >= 1:  # elementwise: the last loop is the vector loop
        loops = _vectorize_last(sch, loops, tgt, ch)
        n_outer = len(loops) - 1 if len(loops) > 1 else n_outer
    elif 1 <= n_outer < len(loops) and all(k == "R" for k in kinds[n_outer:]):
        if _reduce_outside_vector(sch, block, loops, n_outer, tgt, ch):
            loops = sch.get_loops(block)
            n_outer -= 1
        else:
            n_outer = _reduce_down_columns(sch, block, loops, n_outer, tgt, ch)
            loops = sch.get_loops(block)
    if n_outer == 0:
        return
    # fuse just enough outer loops for every core to get work
    k = 1
    prod = _const(sch.get(loops[0]).extent)  # type: ignore[union-attr]
    while k < n_outer and prod is not None and prod < 4 * tgt.cores:
        e = _const(sch.get(loops[k]).extent)  # type: ignore[union-attr]
        prod = None if e is None else prod * e
        k += 1
    fused = sch.fuse(*loops[:k]) if k > 1 else loops[0]
    if _const(sch.get(fused).extent) != 1:  # type: ignore[union-attr]
        _try(sch.parallel, fused)


def _reduce_outside_vector(sch: Schedule, block: BlockRV, loops: list[LoopRV], n_outer: int, tgt: TargetInfo,
                           ch: Decisions) -> bool:
    """A short constant reduction innermost under a spatial loop (attention scores: q.k over a head
    dim of 8, T keys): move the reduce loops outside the last spatial loop and unroll them, and
    vectorize that loop, so each lane accumulates one output. An input read across lanes with a
    stride (the keys, [T, heads*dim]) is packed so the lanes read it contiguously."""
    r_loops, s_last = loops[n_outer:], loops[n_outer - 1]
    r_ext = [_const(sch.get(lp).extent) for lp in r_loops]  # type: ignore[union-attr]
    if any(e is None for e in r_ext) or math.prod(r_ext) > 32:  # type: ignore[arg-type]
        return False
    w = ch.cat(sch, [0, tgt.lanes, 2 * tgt.lanes], tgt.lanes)
    if not w:
        return False
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    if ch.default and _strided_without_reuse(b, s_last):
        return False
    if _const(sch.get(s_last).extent) is None:  # type: ignore[union-attr]
        return _reduce_inside_vector(sch, block, r_loops, s_last, ch)
    try:
        sch.reorder(*r_loops, s_last)
    except MlcError:
        return False
    init = _try(sch.decompose_reduction, block, r_loops[0])
    for lp in r_loops:
        _try(sch.unroll, lp)
    _pack_lane_strided(sch, block, s_last, ch)
    for rv, lp in ((block, s_last), (init, None)):
        if not isinstance(rv, BlockRV):
            continue
        nest = sch.get_loops(rv)
        target = lp if lp is not None else (nest[-1] if nest else None)
        if target is None:
            continue
        ext = _const(sch.get(target).extent)  # type: ignore[union-attr]
        parts = _try(sch.split, target, [None, w]) if ext is None or ext > w else [target]
        if isinstance(parts, list):
            _try(sch.vectorize, parts[-1])
    return True


def _strided_without_reuse(b: BlockStmt, lane_loop: LoopRV) -> bool:
    """Whether an input read a row apart per lane is indexed by every spatial iterator: its packed
    copy would be read once (layer-norm statistics over [B, T, C] rows, the lanes over T), so the
    pack costs a full transposition and gains nothing; the plain row reduction is faster by default
    (gpt_block's layer norms under their consumer's batch loop: 83 -> 37 us at B=32, T=64)."""
    lane = {iv.var.name for iv in b.iters if Var(lane_loop.name) in free_vars(iv.binding)}
    spatial = {iv.var.name for iv in b.iters if iv.kind == "S" and _const(iv.extent) != 1}
    out = {x.name for x in block_writes(b)}
    for ld in (ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name not in out):
        ix = ld.indices
        at = [d for d, i in enumerate(ix) if isinstance(i, Var) and i.name in lane]
        if len(at) == 1 and at[0] < len(ix) - 1 and spatial <= {v.name for i in ix for v in free_vars(i)}:
            return True
    return False


def _reduce_inside_vector(sch: Schedule, block: BlockRV, r_loops: list[LoopRV], s_last: LoopRV,
                          ch: Decisions) -> bool:
    """The symbolic-extent form of `_reduce_outside_vector`: the short reduction stays inside the
    lane loop, unrolled, and the lane loop is vectorized whole (the codegen strip-mines it with a
    scalar tail), so each vector of outputs accumulates in a register across the unrolled steps;
    splitting it instead would guard every step with a lane mask and keep the sums in memory."""
    init = _try(sch.decompose_reduction, block, r_loops[0])
    for lp in r_loops:
        _try(sch.unroll, lp)
    _pack_lane_strided(sch, block, s_last, ch)
    if _try(sch.vectorize, s_last) is None and sch.get(s_last).kind != "vectorized":  # type: ignore[union-attr]
        return False
    if isinstance(init, BlockRV):
        nest = sch.get_loops(init)
        if nest and nest[-1].name != s_last.name:
            _try(sch.vectorize, nest[-1])
    return True


def _reduce_down_columns(sch: Schedule, block: BlockRV, loops: list[LoopRV], n_outer: int, tgt: TargetInfo,
                         ch: Decisions) -> int:
    """A reduction over leading axes of inputs whose last (contiguous) axis is the output's last
    (weight gradients summed over batch and time, bias gradients, column sums): the reduce loops move
    between the outer and the inner (vector) part of the last spatial loop, so each output vector is
    one register accumulator fed by contiguous loads down the rows, instead of a serial walk a row
    stride apart per output element. Returns how many outer spatial loops the block then has."""
    r_loops, s_last = loops[n_outer:], loops[n_outer - 1]
    ext = _const(sch.get(s_last).extent)  # type: ignore[union-attr]
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    if ext is not None and ext < 2:
        return n_outer
    env = {iv.var: iv.binding for iv in b.iters}
    out = {x.name for x in block_writes(b)}
    lane, rvars = Var(s_last.name), {Var(lp.name) for lp in r_loops}
    reads = [ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name not in out and ld.indices]
    along = 0  # reads contiguous along the lanes; the others must be the same in every lane
    for ld in reads:
        ix = [free_vars(substitute(i, env)) for i in ld.indices]
        if any(lane in x for x in ix[:-1]) or lane in ix[-1] and ix[-1] & rvars:
            return n_outer
        along += lane in ix[-1]
    if not along:
        return n_outer
    w = ch.cat(sch, [0, tgt.lanes, 2 * tgt.lanes, 4 * tgt.lanes], 2 * tgt.lanes)
    if not w:
        return n_outer
    # a symbolic lane loop is vectorized whole (the codegen strip-mines it)
    parts = _try(sch.split, s_last, [None, w]) if ext is not None and ext > w else [s_last]
    if not isinstance(parts, list):
        return n_outer
    try:
        sch.reorder(*r_loops, parts[-1])
    except MlcError:
        return n_outer - 1 + len(parts)
    init = _try(sch.decompose_reduction, block, r_loops[0])
    _try(sch.vectorize, parts[-1])
    if isinstance(init, BlockRV):
        _try(sch.vectorize, sch.get_loops(init)[-1])
    return n_outer - 2 + len(parts)


def _pack_lane_strided(sch: Schedule, block: BlockRV, lane_loop: LoopRV, ch: Decisions) -> None:
    """Sampled: pack each input whose index along `lane_loop` is a plain iterator on a non-last axis
    (a row stride apart per lane) so that axis becomes the last, contiguous one."""
    b = sch.get(block)
    assert isinstance(b, BlockStmt)
    lane = {iv.var.name for iv in b.iters if Var(lane_loop.name) in free_vars(iv.binding)}
    names = [x.name for x in block_reads(b)]
    for idx, name in enumerate(names):
        lds = [ld for e in stmt_exprs(b.body) for ld in loads_in(e) if ld.buffer.name == name]
        if not lds or len(lds[0].indices) < 2 or any(ld.indices != lds[0].indices for ld in lds):
            continue
        ix = lds[0].indices
        at = [d for d, i in enumerate(ix) if isinstance(i, Var) and i.name in lane]
        if len(at) != 1 or at[0] == len(ix) - 1 or any(lane & {v.name for v in free_vars(i)} for i in ix[at[0] + 1:]):
            continue
        if not ch.cat(sch, [0, 1], 1):
            continue
        d = at[0]
        order = [x for x in range(len(ix)) if x != d] + [d]
        pk = _try(sch.pack, block, idx, [1] * len(ix), order)
        if isinstance(pk, BlockRV):
            pl = sch.get_loops(pk)
            if pl:
                _try(sch.parallel, pl[0])


def _vectorize_last(sch: Schedule, loops: list[LoopRV], tgt: TargetInfo, ch: Decisions) -> list[LoopRV]:
    """Vectorize an all-spatial nest's last loop, split by a sampled width (symbolic or long extents
    get a guarded tail); returns the nest's loops after the split."""
    last = loops[-1]
    ext = _const(sch.get(last).extent)  # type: ignore[union-attr]
    w = ch.cat(sch, [0, tgt.lanes, 2 * tgt.lanes, 4 * tgt.lanes], tgt.lanes)
    # a symbolic extent is vectorized whole: the codegen strip-mines it with a scalar tail, where a
    # split would put a lane mask on every access
    if w and ext is not None and ext > w:
        parts = _try(sch.split, last, [None, w])
        if isinstance(parts, list):
            loops = loops[:-1] + parts
            # a few vectors per row run unrolled: each copy's lanes then sit at a constant offset, so
            # lane-dependent index terms fold (a concat's floordiv(j, 8) and branch tests become
            # uniform: contiguous loads instead of gathers; gpt_block's q/k/v concat 423 -> 60 us)
            if ext // w <= 16:
                _try(sch.unroll, parts[0])
    if w:
        _try(sch.vectorize, loops[-1])
    return loops


# ---- driving the rules ------------------------------------------------------------------------
def apply_rules(func: PrimFunc, target: str | TargetInfo | None = None, seed: int = 0, default: bool = False,
                rules: Sequence[str] = RULES, decisions: Sequence[Any] = ()) -> Schedule:
    """Run the rules on `func`: a random point of the design space, or the default one; `decisions`
    (the n-th for the n-th sampling instruction, None: sample) steer a random point."""
    tgt = target_info(target)
    unknown = set(rules) - set(RULES)
    if unknown:
        raise MlcError(f"schedule: unknown rules {', '.join(sorted(unknown))} (known: {', '.join(RULES)})")
    sch = Schedule(func, seed=seed)
    ch = Decisions(default, tuple(decisions))
    if "auto-inline" in rules:
        auto_inline(sch)
    done: set[str] = set()
    if "multi-level-tiling" in rules:
        for rv in _leaf_blocks(sch):
            if not _exists(sch, rv):
                continue
            b = sch.get(rv)
            if isinstance(b, BlockStmt) and needs_tiling(b):
                before = {x.name for x in sch.get_blocks()}
                if conv_tiling(sch, rv, tgt.lanes, ch) or multi_level_tiling(sch, rv, tgt, ch) is not None:
                    done |= {x.name for x in sch.get_blocks()} - before | {rv.name}
                    done |= {x.name for x in sch.get_blocks() if x.name.startswith(rv.name)}
    moved: set[str] = set()
    if "random-compute-location" in rules:
        for rv in _leaf_blocks(sch):
            if not _exists(sch, rv):
                continue
            b = sch.get(rv)
            if rv.name in done or not isinstance(b, BlockStmt) or any(is_param(sch.func, x.name)
                                                                     for x in block_writes(b)):
                continue
            if random_compute_location(sch, rv, ch):
                moved.add(rv.name)
    if "parallel-vectorize-unroll" in rules:
        _parallel_roots(sch, tgt, ch, done | moved)
    return sch


def _parallel_roots(sch: Schedule, tgt: TargetInfo, ch: Decisions, skip: set[str]) -> None:
    """Parallelize every root-level nest not already scheduled (blocks moved under another nest go with it)."""
    for rv in _leaf_blocks(sch):
        if rv.name in skip or not _exists(sch, rv):
            continue
        loops = sch.get_loops(rv)
        # a nest holding several blocks (after compute_at): parallelize its shared outer loop only
        outer = loops[0] if loops else None
        if outer is None:
            continue
        shared = [x for x in _leaf_blocks(sch) if x.name != rv.name and sch.get_loops(x)[:1] == [outer]]
        if shared:
            k = _loop_kinds(sch, rv, [outer])[0]
            if k == "S" and sch.get(outer).kind == "serial":  # type: ignore[union-attr]
                _try(sch.parallel, outer)
            # each elementwise member still gets its vector loop
            for member in [rv, *shared]:
                nest = sch.get_loops(member)
                inner, kinds = nest[1:], _loop_kinds(sch, member, nest)
                if not inner or any(sch.get(x).kind != "serial" for x in inner):  # type: ignore[union-attr]
                    continue
                n_s = next((i for i, k in enumerate(kinds) if k != "S"), len(kinds))
                if n_s == len(kinds):
                    _vectorize_last(sch, inner, tgt, ch)
                elif n_s >= 2 and all(k == "R" for k in kinds[n_s:]):
                    _reduce_outside_vector(sch, member, nest, n_s, tgt, ch)
            skip |= {x.name for x in shared}
            continue
        parallel_vectorize_unroll(sch, rv, tgt, ch)


def default_schedule(func: PrimFunc, target: str | TargetInfo | None = None) -> Schedule:
    """Deterministic good defaults: tiled + vectorized + parallel matmul/conv, parallel rows elsewhere."""
    return apply_rules(func, target, default=True)


def sample_schedule(func: PrimFunc, target: str | TargetInfo | None = None, seed: int = 0,
                    rules: Sequence[str] = RULES, decisions: Sequence[Any] = ()) -> Schedule:
    """One random point of the design space (its trace is what search mutates); `decisions` fix the
    sampling instructions in order (None or an invalid one: sampled)."""
    return apply_rules(func, target, seed=seed, default=False, rules=rules, decisions=decisions)


__all__ = ["RULES", "TargetInfo", "apply_rules", "default_schedule", "needs_tiling", "sample_schedule",
           "target_info", "block_reads"]
