"""Sparse lowering (SparseTIR's stages): coordinate space -> position space -> flat buffers.

- Stage I -> II (`to_position_space`): each `sp_iter` becomes loop nests over positions, one per
  axis in iteration order, around an ordinary block; an `init` becomes its own nest over the
  spatial axes, before the update nest (so rows without nonzeros are initialised too). In the block
  an iterator indexes sparse buffers by position and reads its coordinate from the index arrays
  elsewhere. Axes and sparse buffers stay declared: stage II still prints `%A[vi, vj]`.
- Stage II -> III (`to_flat`): sparse-buffer accesses become accesses of their value arrays at the
  flat offset (ir/sparse.py); the declarations go. What is left is an ordinary tensor program for
  schedule, lower-tir and the code generators.

Data-dependent reads are made safe here, once, for every later stage and target: a row's extent is
`max(min(indptr[p+1], nnz) - max(indptr[p], 0), 0)` capped by the axis length, and a coordinate is
clamped into [0, length). `check_range` reports the first bad value (indptr not monotone or past
nnz, a column out of range) as the run's error, so a bad input fails instead of reading other memory.
"""

from __future__ import annotations

from dataclasses import replace

from .diagnostics import MlcError
from .expr import Bin, Call, Const, Expr, Load, Select, Var, substitute
from .sparse import Axis, SparseBuffer, SparseIteration, axis_table, i64
from .tir import BlockStmt, For, IterVar, PrimFunc, Stmt, Store
from .tir_visit import StmtMutator, nodes, rewrite, seq, used_names

STAGES: tuple[int, ...] = (2, 3)


def is_sparse(func: PrimFunc) -> bool:
    return bool(func.axes or func.sparse_buffers)


def _min(a: Expr, b: Expr) -> Expr:
    return Bin("min", a, b)


def _max(a: Expr, b: Expr) -> Expr:
    return Bin("max", a, b)


def _checked(v: Expr, lo: Expr, hi: Expr) -> Expr:
    return Call("check_range", (v, lo, hi), "i64")


class Levels:
    """Per axis of an iteration: position var, flat position, coordinate and extent as expressions."""

    def __init__(self, func: PrimFunc):
        self.axes: dict[str, Axis] = axis_table(func.axes)
        self.views: dict[str, SparseBuffer] = {sb.buffer.name: sb for sb in func.sparse_buffers}

    def row_start(self, a: Axis, parent: Expr) -> Expr:
        assert a.indptr is not None
        return _max(i64(Load(a.indptr, (parent,))), Const(0))

    def extent(self, a: Axis, parent: Expr | None) -> Expr:
        if a.kind == "dense_fixed":
            return a.length
        if a.kind == "sparse_fixed":
            assert a.nnz is not None
            return Select(Bin("gt", a.length, Const(0)), a.nnz, Const(0))
        assert a.indptr is not None and a.nnz is not None and parent is not None
        lo = i64(Load(a.indptr, (parent,)))
        lo_ok = _max(_checked(lo, Const(0), a.nnz + 1), Const(0))
        hi = _checked(i64(Load(a.indptr, (parent + 1,))), lo_ok, _min(lo_ok + a.length, a.nnz) + 1)
        return _max(_min(_min(hi, a.nnz) - lo_ok, a.length), Const(0))

    def flat(self, a: Axis, parent: Expr | None, pos: Expr) -> Expr:
        if parent is None:
            return pos
        if a.variable:
            return self.row_start(a, parent) + pos
        assert a.nnz is not None
        return parent * a.nnz + pos

    def coord(self, a: Axis, parent: Expr | None, pos: Expr) -> Expr:
        if a.kind == "sparse_variable":
            assert a.indices is not None
            c = i64(Load(a.indices, (self.flat(a, parent, pos),)))
        elif a.kind == "sparse_fixed":
            assert a.indices is not None and parent is not None
            c = i64(Load(a.indices, (parent, pos)))
        else:
            return pos
        return _min(_max(_checked(c, Const(0), a.length), Const(0)), a.length - 1)

    def offset(self, sb: SparseBuffer, pos: tuple[Expr, ...]) -> tuple[Expr, ...]:
        """Index of `sb[pos]` in its value array (positions when it has one dim per axis)."""
        if len(sb.data.shape) == len(pos) > 1:
            return pos
        off: Expr | None = None
        for name, p in zip(sb.axes, pos):
            a = self.axes[name]
            if off is None:
                off = p
            elif a.variable:
                off = self.row_start(a, off) + p
            else:
                fixed = a.fixed_extent()
                assert fixed is not None
                off = off * fixed + p
        assert off is not None
        return (off,)


def _nest(s: SparseIteration, iters: list, body_of: str, body: Stmt, levels: Levels, used: set[str]) -> Stmt:  # type: ignore[type-arg]
    """Loops over the positions of `iters` around one block running `body` (a stage-I statement)."""
    loops: list[tuple[Var, Expr]] = []
    block_iters: list[IterVar] = []
    pos_of: dict[Var, Var] = {}
    coord_of: dict[Var, Expr] = {}
    loop_flat: dict[str, Expr] = {}
    block_flat: dict[str, Expr] = {}
    for it in iters:
        a = levels.axes[it.axis]
        lv, bv = Var(_fresh(it.var.name, used)), Var(_fresh("v" + it.var.name, used))
        lp = loop_flat.get(a.parent) if a.parent else None
        bp = block_flat.get(a.parent) if a.parent else None
        loops.append((lv, levels.extent(a, lp)))
        loop_flat[a.name], block_flat[a.name] = levels.flat(a, lp, lv), levels.flat(a, bp, bv)
        dom = a.length if a.variable else (a.fixed_extent() or a.length)
        block_iters.append(IterVar(bv, dom, it.kind, lv))
        pos_of[it.var], coord_of[it.var] = bv, levels.coord(a, bp, bv)
    views = set(levels.views)

    def positions(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer.name in views:
            return Load(e.buffer, tuple(pos_of.get(i, i) if isinstance(i, Var) else i for i in e.indices), e.loc)
        return None

    class _Sub(StmtMutator):
        def visit_Store(self, st: Store) -> Stmt:
            idx = st.indices
            if st.buffer.name in views:
                idx = tuple(pos_of.get(i, i) if isinstance(i, Var) else i for i in idx)
            else:
                idx = tuple(self.visit_expr(i) for i in idx)
            return replace(st, indices=idx, value=self.visit_expr(st.value))

        def visit_expr(self, e: Expr) -> Expr:
            return substitute(rewrite(e, positions), coord_of)

    stmt: Stmt = BlockStmt(body_of, tuple(block_iters), _Sub().visit(body), loc=s.loc)
    for v, ext in reversed(loops):
        stmt = For(v, Const(0), ext, stmt, loc=s.loc)
    return stmt


def _fresh(base: str, used: set[str]) -> str:
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def to_position_space(func: PrimFunc) -> PrimFunc:
    """Stage I -> II: every `sp_iter` as loop nests and blocks over positions (see module doc)."""
    levels = Levels(func)
    used = used_names(func) | {a.name for a in func.axes} | {sb.buffer.name for sb in func.sparse_buffers}

    class _Lower(StmtMutator):
        def visit_SparseIteration(self, s: SparseIteration) -> Stmt:
            spatial = [it for it in s.iters if it.kind == "S"]
            parts = []
            if s.init is not None:
                parts.append(_nest(s, spatial, _fresh(f"{s.name}_init", used), s.init, levels, used))
            parts.append(_nest(s, list(s.iters), s.name, s.body, levels, used))
            return seq(parts)

    return replace(func, body=_Lower().visit(func.body))


def to_flat(func: PrimFunc) -> PrimFunc:
    """Stage II -> III: sparse-buffer accesses read and write their value arrays; declarations go."""
    if any(isinstance(x, SparseIteration) for x in nodes(func.body)):
        raise MlcError(f"sparse-lower: @{func.name} still has sparse iterations (lower to stage 2 first)", func.loc)
    levels = Levels(func)
    views = levels.views

    def flat(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer.name in views:
            sb = views[e.buffer.name]
            return Load(sb.data, levels.offset(sb, e.indices), e.loc)
        return None

    class _Flat(StmtMutator):
        def visit_Store(self, st: Store) -> Stmt:
            value = self.visit_expr(st.value)
            idx = tuple(self.visit_expr(i) for i in st.indices)
            sb = views.get(st.buffer.name)
            if sb is None:
                return replace(st, indices=idx, value=value)
            return replace(st, buffer=sb.data, indices=levels.offset(sb, idx), value=value)

        def visit_expr(self, e: Expr) -> Expr:
            return rewrite(e, flat)

    return replace(func, body=_Flat().visit(func.body), axes=(), sparse_buffers=())


def lower_sparse(func: PrimFunc, stage: int = 3) -> PrimFunc:
    """`func` lowered to `stage` (2 or 3); a dense function is returned unchanged."""
    if stage not in STAGES:
        raise MlcError(f"sparse-lower: --stage must be 2 or 3, got {stage}")
    if not is_sparse(func):
        return func
    func = to_position_space(func)
    return to_flat(func) if stage == 3 else func


__all__ = ["STAGES", "Levels", "is_sparse", "lower_sparse", "to_flat", "to_position_space"]
