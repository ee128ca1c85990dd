"""The default GPU schedule of sparse tensor programs (stage III of sparse-lower), and its pass.

The default GPU rules (gpu_rules.py) fuse and tile loop nests whose extents are fixed when the kernel
starts; a sparse nest's inner extents are read from indptr, so they leave it unbound. Here each nest
that sparse-lower produced (a top-level loop nest with a loop extent or a `let` read from a buffer)
is scheduled through the ordinary primitives:

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

from dataclasses import dataclass, replace
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Expr, Load, Select, Var, free_vars, subexprs
from mlc.ir.module import Module
from mlc.ir.target import Target
from mlc.ir.tir import BlockStmt, For, IfStmt, Let, PrimFunc, Seq, Stmt, Store
from mlc.ir.tir_visit import StmtMutator, nodes, seq, subst

from ..registry import ModulePass, PassContext, register_pass
from .gpu_rules import is_bound, schedule_gpu
from .schedule import Schedule
from .trace import BlockRV, LoopRV

ROW_THREADS = 128  # threads per block of a row-parallel nest: rows (threadIdx.y) x feature lanes (threadIdx.x)
WARP = 32
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


def _schedule_nest(sch: Schedule, nest: _Nest) -> tuple[Var, Var, Expr, int] | None:
    """Bind one nest (see the module doc); returns (block-row var, thread-row var, rows, rows per
    block) for the row guard, or None when rows are one per block."""
    lanes = {b.name: _lanes(sch, b) for b in nest.blocks}
    reduce = any(v is not None and v[1] == "R" for v in lanes.values())
    widths = [v[2] for v in lanes.values() if v is not None]
    t = WARP if reduce else min(WARP, _pow2_at_least(max(widths, default=1)))
    rows_per_block = 1 if reduce or not widths else max(1, ROW_THREADS // t)
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


def sparse_gpu_schedule(func: PrimFunc) -> PrimFunc:
    """The default GPU schedule of a lowered sparse function (module doc); marks it scheduled."""
    if is_bound(func):
        return func
    sch = Schedule(launch_extents(fold_reduction_inits(func)))
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
    out = _guard_rows(sch.func, guards)
    out = schedule_gpu(out).func  # dense stages of the function (a transpose around the kernel, ...)
    attrs = tuple(sorted(dict(out.attrs, schedule="sparse-gpu").items()))
    return replace(out, attrs=attrs)


@register_pass
@dataclass(frozen=True)
class SparseGpuSchedule(ModulePass):
    """Give lowered sparse tensor programs the default GPU schedule (rows to blocks, features to
    lanes, warp-shuffle reductions); other functions are left to the schedule pass."""

    name: ClassVar[str] = "sparse-gpu-schedule"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if Target.parse(ctx.target).kind != "cuda":
            return module
        for f in module.prim_functions():
            if any(k == "schedule" for k, _ in f.attrs) or not any(
                    is_sparse_nest(s) for s in _stages(f.body)):
                continue
            try:
                new = sparse_gpu_schedule(f)
            except MlcError as e:
                raise MlcError(f"sparse-gpu-schedule: @{f.name}: {e.message}", e.loc or f.loc, e.source_line) from None
            module = module.with_function(new)
        return module


def _stages(body: Stmt) -> list[Stmt]:
    if isinstance(body, BlockStmt) and not body.iters:
        body = body.body
    return list(body.stmts) if isinstance(body, Seq) else [body]


__all__ = ["ROW_THREADS", "SparseGpuSchedule", "fold_reduction_inits", "is_sparse_nest", "sparse_gpu_schedule"]
