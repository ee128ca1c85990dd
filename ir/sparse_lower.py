"""Sparse lowering (SparseTIR's stages): coordinate space -> position space -> flat buffers.

- Stage I -> II (`to_position_space`): each `sp_iter` becomes loops over positions, one per axis in
  iteration order, around ordinary blocks. An `init` gets its own block over the spatial axes,
  sharing the leading spatial loops that every store indexes (spmm: per row, zero it, then add the
  row's nonzeros), so rows without nonzeros are initialised too. In a block an iterator indexes
  sparse buffers by position; elsewhere it means its coordinate, read once per position into a
  `let` outside the inner loops. Optionally (`row_parts`) the rows of a CSR-like iteration are split
  into parts of equal nonzeros for a parallel loop. Axes and sparse buffers stay declared: stage II
  still prints `%A[vi, vj]`.
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
from .expr import Bin, Call, Const, Expr, Load, Select, Var, free_vars, substitute
from .names import fresh_name
from .sparse import Axis, SparseBuffer, SparseIteration, SparseIterVar, axis_table, folded_axes, i64
from .tir import BlockStmt, For, IterVar, Let, PrimFunc, Stmt, Store
from .tir_visit import StmtMutator, nodes, rewrite, seq, used_names

STAGES: tuple[int, ...] = (2, 3)
_RADIX, _SEARCH_LEVELS = 4, 16  # the row search: 4**16 > 2**31 (any i32 indptr), 3 reads per step


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
        """Index of `sb[pos]` in its value array: the folded leading axes' flat offset, then the
        positions of the others (ir/sparse.py)."""
        fold = folded_axes(sb)
        off: Expr | None = None
        for name, p in zip(sb.axes[:fold], pos[:fold]):
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
        return (off, *pos[fold:])


class _IterLowering:
    """One `sp_iter` in position space: loops (shared by the init and update nests over the leading
    spatial iterators), blocks, and the body with positions and coordinates substituted."""

    def __init__(self, s: SparseIteration, levels: Levels, used: set[str], row_parts: int):
        self.s, self.levels, self.used, self.row_parts = s, levels, used, row_parts
        self.loop_var: dict[Var, Var] = {}  # sparse iterator -> its loop variable
        self.loop_flat: dict[str, Expr] = {}  # axis -> flat position over loop variables
        self.coord_var: dict[Var, tuple[Var, Expr]] = {}  # sparse iterator -> its coordinate's let, value

    def lower(self) -> Stmt:
        s = self.s
        iters = list(s.iters)
        k = 0
        if s.init is not None:  # the leading spatial iterators every store indexes: init and update share them
            stores = [x for st in (s.body, s.init) for x in nodes(st) if isinstance(x, Store)]
            while k < len(iters) and iters[k].kind == "S" and all(
                    any(iters[k].var in free_vars(i) for i in x.indices) for x in stores):
                k += 1
        prefix, rest = iters[:k], iters[k:]
        loops = [self.loop(it) for it in prefix]
        parts: list[Stmt] = []
        if s.init is not None:
            init_iters = prefix + [it for it in rest if it.kind == "S"]
            parts.append(self.nest(init_iters, [it for it in rest if it.kind == "S"], fresh_name(f"{s.name}_init", self.used), s.init))
        parts.append(self.nest(iters, rest, s.name, s.body))
        return self.wrap(loops, seq(parts))

    def loop(self, it: SparseIterVar) -> tuple[SparseIterVar, Var, Expr]:
        a = self.levels.axes[it.axis]
        lv = Var(fresh_name(it.var.name, self.used))
        parent = self.loop_flat.get(a.parent) if a.parent else None
        self.loop_var[it.var] = lv
        self.loop_flat[a.name] = self.levels.flat(a, parent, lv)
        if a.sparse:  # read (and checked) once per position, not in every inner iteration
            self.coord_var[it.var] = (Var(fresh_name(f"{it.var.name}_col", self.used)), self.levels.coord(a, parent, lv))
        return it, lv, self.levels.extent(a, parent)

    def wrap(self, loops: list[tuple[SparseIterVar, Var, Expr]], body: Stmt) -> Stmt:
        for it, lv, ext in reversed(loops):
            a = self.levels.axes[it.axis]
            if it.var in self.coord_var:
                cv, value = self.coord_var[it.var]
                body = Let(cv, value, body, loc=self.s.loc)
            if self.row_parts and it is self.s.iters[0] and self.balanced_rows(a):
                body = self.row_partition(a, lv, body)
            else:
                body = For(lv, Const(0), ext, body, loc=self.s.loc)
        return body

    def balanced_rows(self, a: Axis) -> bool:
        """A root axis whose positions own rows of a CSR-like axis: split by nonzeros, not by rows."""
        return a.kind == "dense_fixed" and any(
            self.levels.axes[it.axis].variable and self.levels.axes[it.axis].parent == a.name for it in self.s.iters)

    def row_partition(self, a: Axis, lv: Var, body: Stmt) -> Stmt:
        """`for t in 0..P { let r0, r1 (rows of part t) { for i in r0..+(r1 - r0) } }` with parts of equal
        nonzeros: r(t) = first row whose indptr reaches ceil(t * nnz / P), found by a 4-ary search."""
        child = next(self.levels.axes[it.axis] for it in self.s.iters
                     if self.levels.axes[it.axis].variable and self.levels.axes[it.axis].parent == a.name)
        assert child.indptr is not None and child.nnz is not None
        P, m, nnz = Const(self.row_parts), a.length, child.nnz
        t = Var(fresh_name("part", self.used))
        r0, r1 = Var(fresh_name(f"{lv.name}_begin", self.used)), Var(fresh_name(f"{lv.name}_end", self.used))
        inner: Stmt = For(lv, r0, r1 - r0, body, loc=self.s.loc)
        end_target = Select(Bin("eq", t + 1, P), nnz + 1, Bin("floordiv", (t + 1) * nnz + P - 1, P))
        stmt = self.search(child, m, end_target, r1, inner, r0)
        stmt = self.search(child, m, Bin("floordiv", t * nnz + P - 1, P), r0, stmt, None)
        return For(t, Const(0), P, stmt, loc=self.s.loc)

    def search(self, child: Axis, m: Expr, target: Expr, out: Var, body: Stmt, after: Var | None) -> Stmt:
        """`let out = first row r in [0, m] with indptr[r] >= target { body }` by a 4-ary search, one Let
        per step, each read clamped into indptr and each step kept <= m whatever indptr holds. With
        `after`, out is checked to be >= after (a part ending before it begins is a bad indptr)."""
        assert child.indptr is not None
        ptr = child.indptr
        goal = Var(fresh_name(f"{out.name}_nnz", self.used))
        steps: list[tuple[Var, Expr]] = [(goal, target)]
        target = goal
        pos: Expr = Const(0)
        levels = _SEARCH_LEVELS
        for level in range(levels - 1, -1, -1):  # RADIX**levels > 2**31: any i32 indptr
            total: Expr | None = None
            for k in range(1, _RADIX):
                at = pos + Const(_RADIX ** level * k)
                hit = Select(Bin("and", Bin("le", at, m), Bin("lt", i64(Load(ptr, (_min(at, m),))), target)), Const(1), Const(0))
                total = hit if total is None else total + hit
            assert total is not None
            v = Var(fresh_name(f"{out.name}_{levels - 1 - level}", self.used))
            steps.append((v, pos + Const(_RADIX ** level) * total))
            pos = v
        found = _min(Select(Bin("lt", i64(Load(ptr, (pos,))), target), pos + 1, pos), m)
        if after is not None:
            found = _checked(found, after, m + 1)
        stmt: Stmt = Let(out, found, body, loc=self.s.loc)
        for v, e in reversed(steps):
            stmt = Let(v, e, stmt, loc=self.s.loc)
        return stmt

    def nest(self, block_iters: list[SparseIterVar], own: list[SparseIterVar], name: str, body: Stmt) -> Stmt:
        """Loops over `own` (inside the shared ones) around the block of `block_iters` running `body`."""
        saved = dict(self.loop_var), dict(self.loop_flat), dict(self.coord_var)
        loops = [self.loop(it) for it in own]
        pos_of: dict[Var, Var] = {}
        coord_of: dict[Var, Expr] = {}
        block_flat: dict[str, Expr] = {}
        ivs: list[IterVar] = []
        for it in block_iters:
            a = self.levels.axes[it.axis]
            bv = Var(fresh_name("v" + it.var.name, self.used))
            bp = block_flat.get(a.parent) if a.parent else None
            block_flat[a.name] = self.levels.flat(a, bp, bv)
            dom = a.length if a.variable else (a.fixed_extent() or a.length)
            ivs.append(IterVar(bv, dom, it.kind, self.loop_var[it.var]))
            pos_of[it.var] = bv
            coord_of[it.var] = self.coord_var[it.var][0] if it.var in self.coord_var else bv
        views = set(self.levels.views)

        def positions(e: Expr) -> Expr | None:
            if isinstance(e, Load) and e.buffer.name in views:
                return Load(e.buffer, tuple(pos_of.get(i, i) if isinstance(i, Var) else i for i in e.indices), e.loc)
            return None

        class _Sub(StmtMutator):
            def visit_Store(self, st: Store) -> Stmt:
                if st.buffer.name in views:
                    idx = tuple(pos_of.get(i, i) if isinstance(i, Var) else i for i in st.indices)
                else:
                    idx = tuple(self.visit_expr(i) for i in st.indices)
                return replace(st, indices=idx, value=self.visit_expr(st.value))

            def visit_expr(self, e: Expr) -> Expr:
                return substitute(rewrite(e, positions), coord_of)

        stmt = self.wrap(loops, BlockStmt(name, tuple(ivs), _Sub().visit(body), loc=self.s.loc))
        self.loop_var, self.loop_flat, self.coord_var = saved
        return stmt


def to_position_space(func: PrimFunc, row_parts: int = 0) -> PrimFunc:
    """Stage I -> II: every `sp_iter` as loop nests and blocks over positions (see module doc).
    `row_parts` > 0 splits the rows of a CSR-like iteration into that many parts of equal nonzeros
    (the outer loop then runs over parts; a schedule runs it in parallel)."""
    levels = Levels(func)
    used = used_names(func) | {a.name for a in func.axes} | {sb.buffer.name for sb in func.sparse_buffers}

    class _Lower(StmtMutator):
        def visit_SparseIteration(self, s: SparseIteration) -> Stmt:
            return _IterLowering(s, levels, used, row_parts).lower()

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


def lower_sparse(func: PrimFunc, stage: int = 3, row_parts: int = 0) -> PrimFunc:
    """`func` lowered to `stage` (2 or 3); a dense function is returned unchanged. `row_parts`: see
    `to_position_space`."""
    if stage not in STAGES:
        raise MlcError(f"sparse-lower: --stage must be 2 or 3, got {stage}")
    if not is_sparse(func):
        return func
    if row_parts < 0:
        raise MlcError(f"sparse-lower: row parts must be >= 0, got {row_parts}")
    func = to_position_space(func, row_parts)
    return to_flat(func) if stage == 3 else func


__all__ = ["STAGES", "Levels", "is_sparse", "lower_sparse", "to_flat", "to_position_space"]
