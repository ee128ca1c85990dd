"""The default GPU schedule of sparse tensor programs (stage III of sparse-lower), and its pass.

The default GPU rules (gpu_rules.py) fuse and tile loop nests whose extents are fixed when the kernel
starts; a sparse nest's inner extents are read from indptr, so they leave it unbound. Here each nest
that sparse-lower produced (a top-level loop nest with a loop extent or a `let` read from a buffer)
is scheduled through the ordinary primitives:

- CSR SpMM and SDDMM nests first run over chunks of equal nonzeros instead of rows
  (split_rows_by_nonzeros): on a power-law graph one warp per row left the kernel as long as its
  longest row's chain of dependent gathers (Reddit-sized R-MAT: 93k nonzeros in one row). The chunk
  loop is then the nest's row loop below; its rows' column checks run in a loop of their own
  (checks_first), so nvcc unrolls the nonzero loop with its gathers in flight together;
- rows: the leading loops over rows (spatial, extent known at launch) are fused and bound to
  `blockIdx.x`, with `ROW_THREADS // lanes` rows per block on `threadIdx.y` (guarded as a whole,
  so a row past the end reads no indptr entry);
- lanes: a block's innermost loop of constant extent goes to `threadIdx.x`. A spatial one (SpMM's,
  BSR's and segment-mm's feature dim) gives each thread its own columns of the row: B and C are read
  and written coalesced, the nonzero loop stays serial per thread, and the accumulation goes to the
  same address every nonzero (nvcc keeps it in a register: C is `__restrict__`). A reduction (SDDMM's
  dot product over features) gets a warp per nonzero, combined with warp shuffles (lower-tir's
  cross-thread reduction); its init block is folded into the update block first, so thread 0 writes
  the total without reading C;
- the rest of the function (dense stages of a fused kernel) gets the default GPU rules.

The function is marked `schedule = "sparse-gpu"` so the schedule pass leaves it alone. A nest this
schedule does not recognise is left to the default rules (and, unbound, refused by codegen).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Call, Cast, Const, Expr, Load, Select, Var, free_vars, subexprs, substitute
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.sparse import i64
from mlc.ir.target import Target
from mlc.ir.tir import Allocate, BlockStmt, Buffer, For, IfStmt, IterVar, Let, PrimFunc, Seq, Stmt, Store
from mlc.ir.tir_lower import update_op
from mlc.ir.tir_visit import StmtMutator, loads_in, map_stores, nodes, rewrite, seq, stores_in, subst, used_names

from ..registry import ModulePass, PassContext, option, register_pass
from .gpu_rules import is_bound, schedule_gpu
from .schedule import Schedule
from .trace import BlockRV, LoopRV
from .tree import ancestors, find_block, get, put

ROW_THREADS = 128  # threads per block of a row-parallel nest: rows (threadIdx.y) x feature lanes (threadIdx.x)
WARP = 32
MAX_BLOCK_THREADS = 1024
MAX_UNROLL = 16  # an outer feature loop this short is unrolled (its accumulators become registers)


def _reads_memory(e: Expr) -> bool:
    return any(isinstance(x, Load) for x in subexprs(e))


def is_sparse_nest(stage: Stmt) -> bool:
    """A loop nest whose shape depends on data: a loop extent or a `let` read from a buffer (what
    sparse-lower produces for index arrays)."""
    for x in nodes(stage):
        if isinstance(x, For) and _reads_memory(x.extent):
            return True
        if isinstance(x, Let) and _reads_memory(x.value):
            return True
    return False


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


# ---- init folding ------------------------------------------------------------------------------
def fold_reduction_inits(func: PrimFunc) -> PrimFunc:
    """`block X_init {C[p] = v}; for k.. { block X(.., R vk) {C[p] = C[p] + ..} }` -> the update block
    with `init {C[p] = v}`, where the init's iterators are the update's spatial ones (same bindings)
    and every loop between them feeds only reduction iterators. Same semantics (a block's init runs at
    the first reduction point); lets the GPU reduce across threads without reading C first."""

    class _Fold(StmtMutator):
        def visit_Seq(self, s: Seq) -> Stmt:
            kids = [self.visit(k) for k in s.stmts]
            out: list[Stmt] = []
            i = 0
            while i < len(kids):
                if i + 1 < len(kids) and isinstance(kids[i], BlockStmt):
                    merged = _merge(kids[i], kids[i + 1])  # type: ignore[arg-type]
                    if merged is not None:
                        out.append(merged)
                        i += 2
                        continue
                out.append(kids[i])
                i += 1
            return seq(out) if len(out) != 1 else out[0]

    return replace(func, body=_Fold().visit(func.body))


def _merge(init: BlockStmt, nest: Stmt) -> Stmt | None:
    loops: list[For] = []
    x = nest
    while isinstance(x, For):
        loops.append(x)
        x = x.body
    if not loops or not isinstance(x, BlockStmt) or x.init is not None or init.init is not None:
        return None
    upd = x
    if not isinstance(init.body, Store) or not isinstance(upd.body, Store) or init.iters == () \
            or any(iv.kind != "S" for iv in init.iters):
        return None
    spatial = [iv for iv in upd.iters if iv.kind == "S"]
    if len(spatial) != len(init.iters) or any(a.binding != b.binding for a, b in zip(init.iters, spatial)):
        return None
    loop_vars = {lp.var for lp in loops}
    if any(free_vars(iv.binding) & loop_vars for iv in spatial) or any(_reads_memory(lp.extent) for lp in loops):
        return None
    if not any(iv.kind == "R" for iv in upd.iters):
        return None
    body = subst(init.body, {a.var: b.var for a, b in zip(init.iters, spatial)})
    assert isinstance(body, Store)
    if body.buffer != upd.body.buffer or body.indices != upd.body.indices:
        return None
    new: Stmt = replace(upd, init=body)
    for lp in reversed(loops):
        new = replace(lp, body=new)
    return new


def launch_extents(func: PrimFunc) -> PrimFunc:
    """`for v in 0..select(c, e, 0) { body }` -> `for v in 0..e { if c { body } }`: sparse-lower guards
    fixed extents by a condition on the dims (an empty matrix), which a launch grid cannot carry."""

    class _M(StmtMutator):
        def visit_For(self, lp: For) -> Stmt:
            body = self.visit(lp.body)
            e = lp.extent
            if isinstance(e, Select) and arith.as_int(e.f) == 0 and not _reads_memory(e):
                return replace(lp, extent=e.t, body=IfStmt(e.cond, body, None, lp.loc))
            return replace(lp, body=body)

    return replace(func, body=_M().visit(func.body))


# ---- rows split by nonzeros ---------------------------------------------------------------------
MIN_CHUNK = 32  # nonzeros per chunk at least (one warp's serial work)
MAX_CHUNKS = 16384  # chunks at most: about two waves of warps on an H100; sizes the partial-sum workspace
SEARCH_LEVELS = 15  # 4-ary steps of the row search below its first binary one: 2**30 + 4**15 - 1 = 2**31 - 1 rows


@dataclass(frozen=True)
class CsrNest:
    """`for i in 0..M { pre; for j in 0..extent(indptr[i], indptr[i + 1]) { let col = indices[..] {..} } }`."""

    row: For
    inner: For  # the loop over the row's nonzeros
    pre: tuple[Stmt, ...]  # statements before it in the row (SpMM's init of C's row)
    indptr: Buffer
    nnz: Expr  # the indices array's length


def csr_nest(stage: Stmt) -> CsrNest | None:
    """The CSR row nest of a top-level stage, when it has exactly that shape (CSR SpMM and SDDMM)."""
    if not isinstance(stage, For) or arith.as_int(stage.start) != 0 or _reads_memory(stage.extent):
        return None
    kids = list(stage.body.stmts) if isinstance(stage.body, Seq) else [stage.body]
    inner = kids[-1]
    if not isinstance(inner, For) or arith.as_int(inner.start) != 0 or not isinstance(inner.body, Let):
        return None
    if any(_reads_memory(e) for k in kids[:-1] for x in nodes(k) if isinstance(x, For | Let)
           for e in ((x.extent,) if isinstance(x, For) else (x.value,))):
        return None
    i = stage.var
    ptrs = {ld.buffer for ld in loads_in(inner.extent)}
    if len(ptrs) != 1:
        return None
    ptr = next(iter(ptrs))
    rows = {arith.simplify(ld.indices[0] - i) for ld in loads_in(inner.extent)}
    if len(ptr.shape) != 1 or {arith.as_int(r) for r in rows} != {0, 1}:
        return None
    cols = [ld.buffer for ld in loads_in(inner.body.value) if ld.buffer != ptr and len(ld.buffer.shape) == 1
            and inner.var in free_vars(ld.indices[0])]
    if len(cols) != 1:
        return None
    return CsrNest(stage, inner, tuple(kids[:-1]), ptr, cols[0].shape[0])


def first_row(ptr: Buffer, m: Expr, pred: Callable[[Expr], Expr], name: str, used: set[str]
               ) -> tuple[list[tuple[Var, Expr]], Expr]:
    """(lets, r): r = the number of leading rows r' in [0, m] with pred(indptr[r']) (indptr sorted: the
    first row where pred fails), clamped to m. One binary step of 2**30, then 4-ary steps (3 reads
    each, independent: half the dependent loads of a binary search); steps stay below 2**31 (i32
    index arithmetic), reads inside indptr, and a step past m reads nothing (`&&` short-circuits)."""
    lets: list[tuple[Var, Expr]] = []
    pos: Expr = Const(0)
    for n, (step, ways) in enumerate([(1 << 30, 2)] + [(4 ** lv, 4) for lv in range(SEARCH_LEVELS - 1, -1, -1)]):
        hits: Expr | None = None
        for k in range(1, ways):
            at = pos + Const(step * k)
            hit = Select(Bin("and", Bin("le", at, m), pred(i64(Load(ptr, (Bin("min", at, m),))))), Const(1), Const(0))
            hits = hit if hits is None else hits + hit
        assert hits is not None
        v = Var(fresh_name(f"{name}_{n}", used))
        lets.append((v, pos + Const(step) * hits))
        pos = v
    return lets, Bin("min", Select(pred(i64(Load(ptr, (pos,)))), pos + 1, pos), m)


def checks_first(loop: For, used: set[str]) -> Stmt:
    """`for j { let col = f(check_range(x)) {..} }` -> `for j { chk = f(check_range(x)) }; for j { let col =
    f(x) {..} }`: every column is still checked (and clamped), in a loop of its own. In the nonzero loop
    the check's reporting branch split each iteration in two, so nvcc issued one gather at a time
    (load the column, branch, load B, wait for it in the FMA); without it an unrolled iteration's
    loads go out together."""
    let = loop.body
    if not isinstance(let, Let) or not any(isinstance(x, Call) and x.name == "check_range" for x in subexprs(let.value)):
        return loop
    plain = rewrite(let.value, lambda e: e.args[0] if isinstance(e, Call) and e.name == "check_range" else None)
    chk = Buffer(fresh_name("checked", used), (Const(1),), let.value.dtype, "local", let.loc)
    jv = Var(fresh_name(loop.var.name, used), loop.var.dtype)
    check = For(jv, loop.start, loop.extent, Store(chk, (Const(0),), substitute(let.value, {loop.var: jv}), let.loc),
                loc=loop.loc)
    return seq([Allocate(chk, check, let.loc), replace(loop, body=replace(let, value=plain))])


def _renamed_blocks(s: Stmt, used: set[str]) -> Stmt:
    """A copy of `s` whose blocks have fresh names (the schedule names blocks uniquely)."""

    class _R(StmtMutator):
        def visit_BlockStmt(self, b: BlockStmt) -> Stmt:
            b = replace(b, body=self.visit(b.body), init=None if b.init is None else self.visit(b.init))
            return replace(b, name=fresh_name(b.name, used))

    return _R().visit(s)


def split_rows_by_nonzeros(func: PrimFunc, min_chunk: int = MIN_CHUNK, max_chunks: int = MAX_CHUNKS) -> PrimFunc:
    """Each CSR row nest (csr_nest) runs over chunks of equal nonzeros instead of rows, so one long row
    (a power-law graph's hub: 93k of Reddit's 79M nonzeros) is spread over many warps instead of
    serialising one warp. Chunk w owns positions [w K, w K + K): G = min(ceil(nnz / min_chunk),
    max_chunks) chunks, K = ceil(nnz / G), both from nnz at launch; a
    binary search over indptr finds its rows, and each row runs its nonzeros inside the chunk.

    Where every store is at a nonzero (SDDMM), that is all. Where a row accumulates (SpMM: C's row
    is initialised, then summed over the row's nonzeros), a row inside one chunk runs as before; a
    row crossing a chunk boundary sums its part into a workspace P[w, 0 or 1] (the chunk's first or
    last row), and a second nest over rows writes C = init + sum of its chunks' parts, and the init of
    empty rows. No atomics, and each C element is written by one thread."""
    body = func.body
    root = body if isinstance(body, BlockStmt) and not body.iters and body.name == "root" else None
    stages = list(_stages(body))
    used = used_names(func)
    temps: list[Buffer] = []
    out: list[Stmt] = []
    for st in stages:
        nest = csr_nest(st)
        new = None if nest is None else _split_nest(nest, used, temps, min_chunk, max_chunks)
        out.extend(new if new is not None else [st])
    if not temps and out == stages:
        return func
    allocs = (root.alloc_buffers if root is not None else ()) + tuple(temps)
    new_root = BlockStmt("root", (), seq(out), alloc_buffers=allocs, loc=func.loc)
    return replace(func, body=new_root)


def _split_nest(nest: CsrNest, used: set[str], temps: list[Buffer], min_chunk: int, max_chunks: int
                ) -> list[Stmt] | None:
    row, inner, ptr, nnz = nest.row, nest.inner, nest.indptr, nest.nnz
    i, m, loc = row.var, row.extent, row.loc
    outside = [x for k in nest.pre for x in nodes(k) if isinstance(x, Store)]
    partial = None
    if outside:  # a row accumulation: every store is C[vi, x] with vi bound to the row
        c = outside[0].buffer
        for x in nodes(row.body):
            if isinstance(x, BlockStmt):
                vi = [iv.var for iv in x.iters if iv.binding == i]
                if len(vi) != 1 or not all(isinstance(st, Store) and st.buffer == c and len(st.indices) == 2
                                           and st.indices[0] == vi[0] for st in stores_in(x.body)):
                    return None
            elif isinstance(x, Store) and not any(x is s for b in nodes(row.body) if isinstance(b, BlockStmt)
                                                  for s in stores_in(b.body)):
                return None
        width = arith.as_int(c.shape[1]) if len(c.shape) == 2 else None
        if width is None:
            return None
        partial = c
    g = Bin("min", Bin("floordiv", nnz + (min_chunk - 1), Const(min_chunk)), Const(max_chunks))
    k = Bin("max", Bin("floordiv", nnz + g - 1, Bin("max", g, Const(1))), Const(1))
    w = Var(fresh_name("chunk", used))
    lo, hi = Var(fresh_name("chunk_lo", used)), Var(fresh_name("chunk_hi", used))
    # the row's first position and length, evaluated once (in the loop's bound nvcc re-ran its checks
    # every iteration and did not unroll)
    start, ext = Var(fresh_name("row_start", used)), Var(fresh_name("row_nnz", used))
    jlo = Bin("max", lo - start, Const(0))
    jn = Bin("max", Bin("min", ext, hi - start) - jlo, Const(0))
    restricted = checks_first(replace(inner, start=jlo, extent=jn), used)  # j keeps its name: blocks bind to it
    fixup: Stmt | None = None
    if partial is None:
        row_body: Stmt = restricted
    else:
        c = partial
        width = arith.as_int(c.shape[1])
        assert width is not None
        pbuf = Buffer(fresh_name(f"{c.name}_part", used), (Bin("max", g, Const(1)), Const(2), Const(width)), c.dtype,
                      "global", loc)
        temps.append(pbuf)
        slot = Select(Bin("lt", start, lo), Const(0), Const(1))

        def to_part(s: Store) -> Stmt:
            if s.buffer != c:
                return s
            at = (w, slot, s.indices[1])
            return replace(s, buffer=pbuf, indices=at, value=rewrite(s.value, lambda e: Load(pbuf, at, e.loc) if (
                isinstance(e, Load) and e.buffer == c and e.indices == s.indices) else None))

        part = _renamed_blocks(map_stores(seq([*nest.pre, restricted]), to_part), used)
        full = Bin("and", Bin("ge", start, lo), Bin("le", start + ext, hi))
        whole = seq([*nest.pre, checks_first(replace(inner, extent=ext), used)])
        row_body = IfStmt(Bin("gt", ext, Const(0)), IfStmt(full, whole, part, loc), None, loc)
        fixup = _fixup(nest, c, pbuf, g, k, used)
    r_lets, r_lo = first_row(ptr, m, lambda v: Bin("le", v, lo), "row_lo", used)
    e_lets, r_end = first_row(ptr, m, lambda v: Bin("lt", v, hi), "row_end", used)
    first, last = Var(fresh_name("first_row", used)), Var(fresh_name("end_row", used))
    row_body = Let(ext, inner.extent, row_body, loc)
    row_body = Let(start, Bin("max", i64(Load(ptr, (i,))), Const(0)), row_body, loc)
    rows: Stmt = For(i, first, Bin("max", Bin("min", last, m) - first, Const(0)), row_body, loc=loc)
    rows = Let(last, r_end, rows, loc)
    rows = Let(first, Bin("max", r_lo - 1, Const(0)), rows, loc)
    for v, e in reversed(r_lets + e_lets):
        rows = Let(v, e, rows, loc)
    rows = Let(hi, Bin("min", w * k + k, nnz), rows, loc)
    rows = Let(lo, Bin("min", w * k, nnz), rows, loc)
    chunks: Stmt = For(w, Const(0), g, rows, loc=loc)
    return [chunks] if fixup is None else [chunks, fixup]


def _fixup(nest: CsrNest, c: Buffer, pbuf: Buffer, g: Expr, k: Expr, used: set[str]) -> Stmt:
    """`for i in rows { if row i crosses a chunk boundary { init; C[i] += P[w, slot] over its chunks }
    else if it is empty { init } }` (rows inside one chunk were written by the chunk nest)."""
    row, inner, ptr = nest.row, nest.inner, nest.indptr
    i, loc = row.var, row.loc
    start = Bin("max", i64(Load(ptr, (i,))), Const(0))
    ext = inner.extent
    last = Bin("max", g - 1, Const(0))
    w0 = Bin("min", Bin("floordiv", start, k), last)
    w1 = Bin("min", Bin("floordiv", start + ext - 1, k), last)
    t = Var(fresh_name("part", used))
    lane = Var(fresh_name("pk", used))
    width = pbuf.shape[2]
    vi, vt, vk = (Var(fresh_name(n, used)) for n in ("vi", "vpart", "vk"))
    at = w0 + vt
    slot = Select(Bin("lt", start, at * k), Const(0), Const(1))
    add = Store(c, (vi, vk), Bin("add", Load(c, (vi, vk)), Load(pbuf, (at, slot, vk))), loc)
    blk = BlockStmt(fresh_name("sum_parts", used), (IterVar(vi, row.extent, "S", i),
                                                    IterVar(vt, Bin("max", g, Const(1)), "R", t),
                                                    IterVar(vk, width, "S", lane)), subst(add, {i: vi}), loc=loc)
    sums = For(t, Const(0), Bin("max", w1 - w0 + 1, Const(0)), For(lane, Const(0), width, blk, loc=loc), loc=loc)
    split = seq([_renamed_blocks(p, used) for p in nest.pre] + [sums])
    empty = seq([_renamed_blocks(p, used) for p in nest.pre])
    body = IfStmt(Bin("gt", ext, Const(0)), IfStmt(Bin("ne", w0, w1), split, None, loc), empty, loc)
    i2 = Var(fresh_name(i.name, used), i.dtype)
    return For(i2, Const(0), row.extent, subst(body, {i: i2}), loc=loc)


# ---- the schedule ------------------------------------------------------------------------------
def _iter_kinds(blk: BlockStmt, var: Var) -> set[str]:
    return {iv.kind for iv in blk.iters if var in free_vars(iv.binding)}


@dataclass
class _Nest:
    """One top-level sparse nest: its blocks and its shared leading row loops."""

    blocks: list[BlockRV]
    rows: list[LoopRV]


def _row_loops(sch: Schedule, blocks: list[BlockRV]) -> list[LoopRV]:
    """The leading loops every block of the nest shares that are spatial for all of them, perfectly
    nested and of an extent known at launch (rows, chunks x rows, hyb bucket rows)."""
    per = [sch.get_loops(b) for b in blocks]
    out: list[LoopRV] = []
    for d in range(min(len(p) for p in per)):
        names = {p[d].name for p in per}
        if len(names) != 1:
            break
        lp = sch.get(per[0][d])
        assert isinstance(lp, For)
        if lp.kind != "serial" or _reads_memory(lp.extent) or free_vars(lp.extent) & {
                sch.get(o).var for o in out}:  # type: ignore[union-attr]
            break
        if any("R" in _iter_kinds(sch.get(b), lp.var) for b in blocks):  # type: ignore[arg-type]
            break
        if out and not isinstance(sch.get(out[-1]).body, For):  # type: ignore[union-attr]
            break  # not perfectly nested: fuse would refuse
        out.append(per[0][d])
    return out


def _lanes(sch: Schedule, b: BlockRV) -> tuple[LoopRV, str, int] | None:
    """The innermost loop of a block when it runs over a constant extent (features): loop, kind, extent."""
    loops = sch.get_loops(b)
    if not loops:
        return None
    lp = sch.get(loops[-1])
    assert isinstance(lp, For)
    ext = arith.as_int(arith.simplify(lp.extent))
    kinds = _iter_kinds(sch.get(b), lp.var)  # type: ignore[arg-type]
    if ext is None or lp.kind != "serial" or len(kinds) != 1 or arith.as_int(lp.start) != 0:
        return None
    return loops[-1], kinds.pop(), ext


def _inner_rows(sch: Schedule, nest: _Nest, lanes: dict[str, tuple[LoopRV, str, int] | None], t: int
                ) -> list[LoopRV] | None:
    """Per block, its one spatial loop of constant extent between the rows and the lanes (BSR's rows in a
    block row), when every block of the nest has one of the same extent: they go to threadIdx.y, so a
    thread owns the same rows of C in the init and the update. None otherwise."""
    out: list[LoopRV] = []
    extents = set()
    rows = {r.name for r in nest.rows}
    for b in nest.blocks:
        blk = sch.get(b)
        assert isinstance(blk, BlockStmt)
        lane = lanes[b.name]
        found = []
        for lp in sch.get_loops(b):
            st = sch.get(lp)
            assert isinstance(st, For)
            if lp.name in rows or (lane is not None and lp.name == lane[0].name) or _iter_kinds(blk, st.var) != {"S"}:
                continue
            ext = arith.as_int(arith.simplify(st.extent))
            if ext is None:
                return None
            found.append((lp, ext))
        if len(found) != 1:
            return None
        out.append(found[0][0])
        extents.add(found[0][1])
    if len(extents) != 1 or next(iter(extents)) * t > MAX_BLOCK_THREADS:
        return None
    return out


def _schedule_nest(sch: Schedule, nest: _Nest) -> tuple[Var, Var, Expr, int] | None:
    """Bind one nest (see the module doc); returns (block-row var, thread-row var, rows, rows per
    block) for the row guard, or None when rows are one per block."""
    lanes = {b.name: _lanes(sch, b) for b in nest.blocks}
    reduce = any(v is not None and v[1] == "R" for v in lanes.values())
    widths = [v[2] for v in lanes.values() if v is not None]
    t = WARP if reduce else min(WARP, _pow2_at_least(max(widths, default=1)))
    inner = None if reduce or not widths else _inner_rows(sch, nest, lanes, t)
    rows_per_block = 1 if not widths or inner else max(1, ROW_THREADS // t)  # a reduction: 4 warps, one row each
    guard = None
    if nest.rows:
        row = sch.fuse(*nest.rows) if len(nest.rows) > 1 else nest.rows[0]
        extent = sch.get(row).extent  # type: ignore[union-attr]
        if rows_per_block > 1:
            bo, bi = sch.split(row, [None, rows_per_block])
            sch.bind(bo, "blockIdx.x")
            sch.bind(bi, "threadIdx.y")
            guard = (sch.get(bo).var, sch.get(bi).var, extent, rows_per_block)  # type: ignore[union-attr]
        else:
            sch.bind(row, "blockIdx.x")
    for lp in inner or []:  # BSR's rows within a block row: one block per block row
        sch.bind(lp, "threadIdx.y")
    for b in nest.blocks:
        found = lanes[b.name]
        if found is None:
            continue
        lp, kind, ext = found
        if kind == "S":
            if ext <= t:
                sch.bind(lp, "threadIdx.x")
                continue
            lo, li = sch.split(lp, [None, t])
            sch.bind(li, "threadIdx.x")
            if -(-ext // t) <= MAX_UNROLL:
                sch.unroll(lo)
        else:  # a warp-wide reduction over features: lower-tir combines the lanes with shuffles
            lo, li = sch.split(lp, [None, WARP])
            sch.reorder(li, lo)
            sch.bind(li, "threadIdx.x")
    return guard


def _guard_rows(func: PrimFunc, guards: list[tuple[Var, Var, Expr, int]]) -> PrimFunc:
    """`if bo * R + bi < rows` around the body of each threadIdx.y row loop: loop extents inside read
    indptr at the row, which the split's block-level guards do not cover."""
    by_var = {g[1]: g for g in guards}

    class _G(StmtMutator):
        def visit_For(self, lp: For) -> Stmt:
            body = self.visit(lp.body)
            g = by_var.get(lp.var)
            if g is not None:
                bo, bi, rows, r = g
                body = IfStmt(Bin("lt", bo * Const(r) + bi, rows), body, None, lp.loc)
            return replace(lp, body=body)

    return replace(func, body=_G().visit(func.body))


# ---- accumulators in registers ----------------------------------------------------------------
MAX_ACC = 16  # accumulator elements per thread (registers); a larger one is left in memory


def accumulate_in_registers(func: PrimFunc, name: str) -> PrimFunc:
    """The update block `name` (`C[idx] = C[idx] + f`) accumulates in a per-thread local buffer over its
    reduction loops. With L the outermost loop feeding a reduction iterator: the thread loops between L
    and the block move above L (an interchange: each thread owns its elements of C), and there
    `acc = C[idx]`, L with `acc += f`, `C[idx] = acc`. idx may depend only on loops outside L and on
    spatial loops inside it (thread loops, and serial ones of constant extent that index acc: a few
    registers). nvcc does not keep the repeated read-modify-write of global C in a register itself
    (checked in the PTX); this is cache_write + compute_at for a C that has an init writer as well.
    f16 accumulates in f32, rounded once when stored. Returns `func` unchanged when the pattern does
    not hold."""
    body = func.body
    path = find_block(body, name)
    blk = get(body, path)
    assert isinstance(blk, BlockStmt)
    st = blk.body
    if not isinstance(st, Store) or blk.init is not None or update_op(st) != "add":
        return func
    if sum(1 for x in subexprs(st.value) if isinstance(x, Load) and x.buffer == st.buffer) != 1:
        return func
    red = {v for iv in blk.iters if iv.kind == "R" for v in free_vars(iv.binding)}
    chain = ancestors(body, path)
    at = next((k for k, (_, n) in enumerate(chain) if isinstance(n, For) and n.var in red), None)
    if at is None or any(not isinstance(n, For | Let | IfStmt) or (isinstance(n, IfStmt) and n.orelse is not None)
                         for _, n in chain[at:]):
        return func  # only loops, lets and one-armed ifs between L and the block: a single chain
    inside = [n for _, n in chain[at:]]
    bind = {iv.var: iv.binding for iv in blk.iters}
    idx = tuple(substitute(i, bind) for i in st.indices)
    idx_vars = set().union(*(free_vars(i) for i in idx)) if idx else set()
    defined = {n.var for n in inside if isinstance(n, For | Let)}
    threads = [(p, n) for p, n in chain[at:] if isinstance(n, For) and n.kind == "thread"]
    acc_loops = [n for n in inside if isinstance(n, For) and n.kind != "thread" and n.var in idx_vars]
    mine = {n.var for _, n in threads} | {lp.var for lp in acc_loops}
    conds = [n.cond for n in inside if isinstance(n, IfStmt)]
    if (idx_vars & defined) - mine or any(free_vars(c) & defined - mine for c in conds) or mine & red:
        return func
    if any(free_vars(n.extent) & defined or arith.as_int(n.start) != 0 for _, n in threads):
        return func
    shape = [arith.as_int(arith.simplify(lp.extent)) for lp in acc_loops]
    if any(x is None or arith.as_int(lp.start) != 0 for x, lp in zip(shape, acc_loops)) or \
            math.prod(x or 0 for x in shape) > MAX_ACC:
        return func
    c = st.buffer
    dt = "f32" if c.dtype in ("f16", "bf16") else c.dtype
    used = used_names(func)
    acc = Buffer(fresh_name("acc", used), tuple(Const(x) for x in shape if x is not None) or (Const(1),), dt, "local",
                 blk.loc)
    hoisted: dict[Var, Expr] = {n.var: Var(fresh_name(n.var.name, used), n.var.dtype) for _, n in threads}

    def cast(e: Expr, to: str) -> Expr:
        return e if e.dtype == to else Cast(to, e)

    def nest(store: Callable[[dict[Var, Expr]], Stmt]) -> Stmt:
        m: dict[Var, Expr] = {lp.var: Var(fresh_name(lp.var.name, used), lp.var.dtype) for lp in acc_loops}
        m.update(hoisted)
        out = store(m)
        for cond in reversed(conds):
            out = IfStmt(substitute(cond, m), out, None, blk.loc)
        for lp in reversed(acc_loops):
            nv = m[lp.var]
            assert isinstance(nv, Var)
            out = For(nv, lp.start, lp.extent, out, lp.kind, lp.thread_tag, lp.annotations, lp.loc)
        return out

    def acc_at(m: dict[Var, Expr]) -> tuple[Expr, ...]:
        return tuple(m.get(lp.var, lp.var) for lp in acc_loops) or (Const(0),)

    load = nest(lambda m: Store(acc, acc_at(m), cast(Load(c, tuple(substitute(i, m) for i in idx)), dt), blk.loc))
    save = nest(lambda m: Store(c, tuple(substitute(i, m) for i in idx), cast(Load(acc, acc_at(m)), c.dtype), blk.loc))
    here = acc_at({})
    assert isinstance(st.value, Bin)
    rhs = st.value.b if st.value.a == Load(c, st.indices) else st.value.a
    upd: Stmt = Store(acc, here, Bin("add", Load(acc, here), cast(rhs, dt)), st.loc)
    for iv in reversed(blk.iters):
        upd = Let(iv.var, iv.binding, upd, iv.loc)
    body = put(body, path, upd)
    for p, n in reversed(threads):  # deepest first: the paths of the outer ones stay valid
        cur = get(body, p)
        assert isinstance(cur, For)
        body = put(body, p, subst(cur.body, {n.var: hoisted[n.var]}))
    red_path = chain[at][0]
    out: Stmt = Allocate(acc, seq([load, get(body, red_path), save]), blk.loc)
    for _, n in reversed(threads):
        nv = hoisted[n.var]
        assert isinstance(nv, Var)
        out = For(nv, n.start, n.extent, out, n.kind, n.thread_tag, n.annotations, n.loc)
    return replace(func, body=put(body, red_path, out))


def sparse_gpu_schedule(func: PrimFunc, chunks: tuple[int, int] = (MIN_CHUNK, MAX_CHUNKS)) -> PrimFunc:
    """The default GPU schedule of a lowered sparse function (module doc); marks it scheduled.
    `chunks`: (min_chunk, max_chunks) of split_rows_by_nonzeros (tests take small ones)."""
    if is_bound(func):
        return func
    sch = Schedule(launch_extents(fold_reduction_inits(split_rows_by_nonzeros(func, *chunks))))
    root = sch.func.body
    assert isinstance(root, BlockStmt)
    stages = root.body.stmts if isinstance(root.body, Seq) else (root.body,)
    nests: list[_Nest] = []
    for st in stages:
        if not isinstance(st, For) or not is_sparse_nest(st):
            continue
        names = {x.name for x in nodes(st) if isinstance(x, BlockStmt)}
        bs = [b for b in sch.get_blocks() if b.name in names]
        if bs:
            nests.append(_Nest(bs, []))
    for nest in nests:
        nest.rows = _row_loops(sch, nest.blocks)
    guards = [g for nest in nests if (g := _schedule_nest(sch, nest)) is not None]
    # dense stages of the function (a transpose around the kernel, ...), while the sparse updates are
    # still blocks (the rules' inlining sees every reader and writer)
    out = schedule_gpu(sch.func).func
    out = _guard_rows(out, guards)
    for nest in nests:
        for b in nest.blocks:
            out = accumulate_in_registers(out, b.name)
    attrs = tuple(sorted(dict(out.attrs, schedule="sparse-gpu").items()))
    return replace(out, attrs=attrs)


@register_pass
@dataclass(frozen=True)
class SparseGpuSchedule(ModulePass):
    """Give lowered sparse tensor programs the default GPU schedule (rows to blocks, features to
    lanes, warp-shuffle reductions); other functions are left to the schedule pass."""

    name: ClassVar[str] = "sparse-gpu-schedule"
    min_chunk: int = option(MIN_CHUNK, "nonzeros per chunk at least, where CSR rows are split by nonzeros")
    max_chunks: int = option(MAX_CHUNKS, "chunks at most (sizes the partial-sum workspace)")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if self.min_chunk < 1 or self.max_chunks < 1:
            raise MlcError(f"sparse-gpu-schedule: min_chunk and max_chunks must be >= 1, got {self.min_chunk}, "
                           f"{self.max_chunks}")
        if Target.parse(ctx.target).kind != "cuda":
            return module
        for f in module.prim_functions():
            if any(k == "schedule" for k, _ in f.attrs) or not any(
                    is_sparse_nest(s) for s in _stages(f.body)):
                continue
            try:
                new = sparse_gpu_schedule(f, (self.min_chunk, self.max_chunks))
            except MlcError as e:
                raise MlcError(f"sparse-gpu-schedule: @{f.name}: {e.message}", e.loc or f.loc, e.source_line) from None
            module = module.with_function(new)
        return module


def _stages(body: Stmt) -> list[Stmt]:
    if isinstance(body, BlockStmt) and not body.iters:
        body = body.body
    return list(body.stmts) if isinstance(body, Seq) else [body]


__all__ = ["MAX_CHUNKS", "MIN_CHUNK", "ROW_THREADS", "SparseGpuSchedule", "checks_first", "csr_nest", "first_row",
           "fold_reduction_inits", "is_sparse_nest", "sparse_gpu_schedule", "split_rows_by_nonzeros"]
