"""bounds-check: no compiled access outside its buffer, whatever the tensor program says.

The verifier checks a program's structure, not its index values: `A[vi - 1]` at vi = 0,
`A[floordiv(vi, n - n)]` or a store at `vi * 100000` into 1000 elements are well-formed and used to
compile to out-of-bounds reads and writes. This pass, the step after fuse in the build pipelines,
proves each index of every load and store inside its dimension, from

- the ranges of the enclosing loops (symbolic intervals, ir/tir_visit.bound), with block iterators
  and `let` vars replaced by what they are bound to (a binding may leave its declared domain, so the
  domain itself is not trusted), and the fact that a loop's body runs only when its extent is >= 1;
- the conditions guarding the access: an enclosing `if` (its negation in the `else`), and the
  condition of a `select` whose arm holds the load (padding, concat and gather lowerings guard so);
- a `min` or `max` split into its two cases.

It runs before schedule, where every block is still bound to its own loops, so the proofs are about
plain loop ranges; the schedule primitives then keep each iterator's set of values (a split that
does not divide adds a guard), so what was proven stays true of the scheduled loops.

Sparse programs (stage I, before sparse-lower) are covered in two parts. Inside an `sp_iter` an
iterator means its coordinate, which sparse-lower clamps into [0, axis length) and reads through
`check_range` (a column out of range in `indices` fails the run), so the body's dense accesses are
proven or checked like any other with each iterator in [0, length - 1]; sparse-buffer accesses are
the iterators themselves (the verifier) and stay inside their clamped rows. What sparse-lower cannot
clamp is the arrays' declared shapes: `indptr` must have the parent's positions + 1 elements,
`indices` and the values the axes' positions (`sparse_requirements`). Each requirement not proven
from the symbolic dims is checked once before the function's body runs.

An index it cannot prove gets a run-time check: the access runs only when every unproven index is in
range (a load otherwise yields 0, a store is skipped), and the condition reads each such index
through `check_range`, so the run fails with a located error naming the kernel, the index value and
its range (the interpreter reports the same). An index too large to prove (past BIND_LIMIT nodes
once expanded, a fused gather's DAG) is checked without a proof attempt, referred to once through
a clamp, so the build stays linear in the DAG's size (see `Checker.access`). Proven accesses are
left as they are; in the zoo only
seq2seq's slices at the encoder loop's index and gpt_block's read of its 64 x 64 causal mask at T
are checked. `mlc -v` lists the checked accesses by buffer and index.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, children, subexprs, substitute
from mlc.ir.module import Module
from mlc.ir.printer import print_expr
from mlc.ir.sparse import Axis, SparseIteration, axis_table, folded_axes
from mlc.ir.tir import BlockStmt, Buffer, For, IfStmt, Let, PrimFunc, Stmt, Store
from mlc.ir.tir_builder import cst
from mlc.ir.tir_visit import Interval, StmtMutator, bound, conjuncts, rewrite, simp

from .registry import ModulePass, PassContext, register_pass

NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt"}


def facts_of(cond: Expr, holds: bool = True) -> list[Expr]:
    """What `cond` being true (false: `holds=False`) says, as expressions known to be >= 0: the
    comparisons of a conjunction (of a disjunction, negated, when it is false); others are dropped."""
    if not holds:
        if isinstance(cond, Not):
            return facts_of(cond.a)
        if isinstance(cond, Bin) and cond.op == "or":
            return facts_of(cond.a, False) + facts_of(cond.b, False)
        if isinstance(cond, Bin) and cond.op in NEGATED:
            return facts_of(Bin(NEGATED[cond.op], cond.a, cond.b))
        return []
    out: list[Expr] = []
    for c in conjuncts(cond):
        if isinstance(c, Not):
            out += facts_of(c.a, False)
            continue
        if not (isinstance(c, Bin) and c.op in ("lt", "le", "gt", "ge", "eq")):
            continue
        try:
            if c.a.dtype == "bool" or c.b.dtype == "bool" or not _is_int(c.a) or not _is_int(c.b):
                continue
        except AttributeError:
            continue
        a, b = _i64(c.a), _i64(c.b)
        if c.op == "lt":
            out.append(b - a - 1)
        elif c.op == "le":
            out.append(b - a)
        elif c.op == "gt":
            out.append(a - b - 1)
        elif c.op == "ge":
            out.append(a - b)
        else:
            out += [a - b, b - a]
    return out


BIND_LIMIT = 400  # nodes: a bound expression larger than this is not substituted (see Checker.bind)


def _expanded_size(e: Expr, sizes: dict[Var, int]) -> int:
    """Nodes of `e` once its vars are replaced by expressions of `sizes[var]` nodes (stops counting
    past BIND_LIMIT, so the cost is bounded too)."""
    total, stack = 0, [e]
    while stack and total <= BIND_LIMIT:
        x = stack.pop()
        total += sizes.get(x, 1) if isinstance(x, Var) else 1
        stack.extend(children(x))
    return total


def _remainders(e: Expr) -> list[Expr]:
    """`x - c * floordiv(x, c)` (>= 0) for each floordiv by a positive constant in `e`: the fact that
    proves `jo * 2 + ji < n` for jo < floordiv(n, 2), ji < 2 (BSR blocks)."""
    return [simp(x.a - x.b * x) for x in subexprs(e)
            if isinstance(x, Bin) and x.op == "floordiv" and isinstance(x.b, Const) and x.b.value > 0]


def extent_facts(n: Expr) -> list[Expr]:
    """What a loop or axis of extent `n` running its body says: n >= 1, and for `select(c, m, 0)`
    (an extent that is empty unless c) also c and m >= 1."""
    out = [simp(n - 1)]
    if isinstance(n, Select) and isinstance(n.f, Const) and n.f.value == 0:
        out += facts_of(n.cond) + [simp(n.t - 1)]
    return out


def _split_point(e: Expr) -> Expr | None:
    """The first min, max or integer select in `e`: a proof may go case by case over it."""
    for x in subexprs(e):
        if isinstance(x, Bin) and x.op in ("min", "max") or isinstance(x, Select) and _is_int(x):
            return x
    return None


def substitute_expr(e: Expr, old: Expr, new: Expr) -> Expr:
    """`e` with every occurrence of the subexpression `old` replaced by `new`."""
    return rewrite(e, lambda x: new if x == old else None)


def _is_int(e: Expr) -> bool:
    return e.dtype.startswith(("i", "u")) and e.dtype != "u1"


def _i64(e: Expr) -> Expr:
    return e if e.dtype == "i64" else Cast("i64", e)


@dataclass
class Checker(StmtMutator):
    """Walks one PrimFunc with the loop ranges, bindings and guard facts in scope."""

    ranges: dict[Var, Interval]
    binds: dict[Var, Expr]
    facts: list[Expr]
    checked: list[str]
    arms: list[Expr] = field(default_factory=list)  # conditions of the select arms around the expression
    sizes: dict[Var, int] = field(default_factory=dict)  # node count of each bound expression
    large: list[str] = field(default_factory=list)  # buffers with an index too large to prove: checked
    clamped: list[str] = field(default_factory=list)  # ... and inside large select arms: clamped, not reported
    memo: dict[tuple[int, tuple[int, ...]], tuple[Expr, Expr]] = field(default_factory=dict)  # see expr
    axes: dict[str, Axis] = field(default_factory=dict)  # a sparse program's axes, by name

    # ---- proving ----
    def nonneg(self, e: Expr, depth: int = 2) -> bool:
        """e >= 0 wherever it runs: from the loop ranges alone, or from one guard fact plus them;
        a min, max or select in `e` (else in its lower bound) is split into its two cases, each
        with the fact that selects it."""
        e = simp(e)
        lo: Expr | None = None
        for g in (None, *self.facts):
            b = bound(e if g is None else simp(e - g), self.ranges)
            if b is not None and arith.prove_le(Const(0), b[0]):
                return True
            if g is None and b is not None:
                lo = simp(b[0])
        if lo is not None and any(arith.prove_le(Const(0), simp(lo - r)) for r in _remainders(lo)):
            return True
        if depth == 0:
            return False
        m = _split_point(e)
        if m is None:  # the bound may hold the case split (a loop extent `select(c, n, 0)`)
            return lo is not None and lo != e and _split_point(lo) is not None and self.nonneg(lo, depth - 1)
        if isinstance(m, Select):
            cases = [(m.t, facts_of(m.cond)), (m.f, facts_of(m.cond, False))]
        else:
            a_wins = simp(m.a - m.b) if m.op == "max" else simp(m.b - m.a)  # >= 0 when the result is a
            cases = [(m.a, [a_wins]), (m.b, [simp(Const(0) - a_wins - 1)])]
        saved = self.facts
        try:
            for value, facts in cases:
                self.facts = saved + facts
                if not self.nonneg(substitute_expr(e, m, value), depth - 1):
                    return False
            return True
        finally:
            self.facts = saved

    def in_range(self, index: Expr, extent: Expr) -> bool:
        i = substitute(_i64(index), self.binds)
        return self.nonneg(i) and self.nonneg(extent - 1 - i)

    def access(self, buf: Buffer, indices: tuple[Expr, ...]) -> tuple[tuple[Expr, ...], Expr | None]:
        """The indices an access of `buf` uses and the condition it runs under (None: always).

        An index proven in range is kept. An unproven one is read through check_range (the report)
        in the condition, which also requires it in range. An index past BIND_LIMIT nodes (a fused
        gather's index arithmetic, a DAG of shared terms) is checked without a proof attempt:
        bounding it would walk the DAG as a tree (BERT's build went from seconds to hours), and so
        would every later pass if the check repeated it, so it is referred to once, replaced by
        `min(max(check_range(i, 0, n), 0), n - 1)` (in range by construction; a bad value still
        fails the run), the access running only when n >= 1 unless that is proven. Inside select
        arms whose conditions are past BIND_LIMIT, repeating them would grow the same way: an
        unproven index is then clamped without the report (memory-safe; the op lowerings that build
        such selects check their data-dependent indices themselves)."""
        out, small, conds, large, clamp, changed = list(indices), [], [], False, False, False
        taken = self.taken()
        big_arms = taken is not None and _expanded_size(taken, {}) > BIND_LIMIT
        for k, (i, n) in enumerate(zip(indices, buf.shape)):
            big = _expanded_size(i, self.sizes) > BIND_LIMIT
            if not big and self.in_range(i, n):
                continue
            large = large or big
            if not big and not big_arms:
                small.append((i, n))
                continue
            if big_arms:
                v, clamp = _i64(i), True
            else:
                idx, ext = self.when_taken(_i64(i), _i64(n))
                v = Call("check_range", (idx, Const(0), ext), "i64")
            out[k], changed = Bin("min", Bin("max", v, Const(0)), simp(_i64(n) - 1)), True
            if not self.nonneg(_i64(n) - 1):
                conds.append(Bin("ge", _i64(n), Const(1)))
        if clamp:
            self.clamped.append(f"%{buf.name}")
        if not small and not changed:
            return indices, None
        shown = (print_expr(i) if _expanded_size(i, {}) <= BIND_LIMIT else "..." for i in indices)
        self.checked.append(f"%{buf.name}[{', '.join(shown)}]")
        if large:
            self.large.append(f"%{buf.name}")
        cond = self.guard(small) if small else None
        for c in conds:
            cond = c if cond is None else Bin("and", cond, c)
        return tuple(out), cond

    def taken(self) -> Expr | None:
        """The conditions of the select arms around the expression being walked (None: no arm)."""
        taken: Expr | None = None
        for a in self.arms:
            taken = a if taken is None else Bin("and", taken, a)
        return taken

    def when_taken(self, i: Expr, n: Expr) -> tuple[Expr, Expr]:
        """Index and extent to check: inside select arms, (0, 1) when the arms are not taken, as
        code generators may evaluate both arms of a select and the arm not taken (concat's other
        input) may well compute an index out of range that nothing reads."""
        taken = self.taken()
        return (i, n) if taken is None else (Select(taken, i, Const(0)), Select(taken, n, Const(1)))

    def guard(self, bad: list[tuple[Expr, Expr]]) -> Expr:
        """In-range condition of the unproven indices, each read through check_range (the report)."""
        cond: Expr | None = None
        for i, n in bad:
            idx, ext = self.when_taken(_i64(i), n)
            v = Call("check_range", (idx, Const(0), ext), "i64")
            ok = Bin("and", Bin("ge", v, Const(0)), Bin("lt", idx, ext))
            cond = ok if cond is None else Bin("and", cond, ok)
        assert cond is not None
        taken = self.taken()
        return cond if taken is None else Bin("and", taken, cond)

    # ---- expressions ----
    def visit_expr(self, e: Expr) -> Expr:
        self.memo = {}
        return self.expr(e)

    def expr(self, e: Expr) -> Expr:
        """`e` with its unproven loads guarded. Expressions are DAGs (a fused gather's index shares
        its subterms), so results are kept per node and select context: a tree walk is exponential."""
        key = (id(e), tuple(id(a) for a in self.arms))
        hit = self.memo.get(key)
        if hit is not None and hit[0] is e:
            return hit[1]
        out = self.expr_once(e)
        self.memo[key] = (e, out)
        return out

    def expr_once(self, e: Expr) -> Expr:
        if isinstance(e, Select):
            c = self.expr(e.cond)
            saved, arms = self.facts, self.arms
            self.facts, self.arms = saved + facts_of(substitute(e.cond, self.binds)), arms + [c]
            try:
                t = self.expr(e.t)
            finally:
                self.facts, self.arms = saved, arms
            self.facts, self.arms = saved + facts_of(substitute(e.cond, self.binds), False), arms + [Not(c)]
            try:
                f = self.expr(e.f)
            finally:
                self.facts, self.arms = saved, arms
            return Select(c, t, f, e.loc)
        if isinstance(e, Load):
            indices, g = self.access(e.buffer, tuple(self.expr(i) for i in e.indices))
            ld = Load(e.buffer, indices, e.loc)
            return ld if g is None else Select(g, ld, cst(0, ld.buffer.dtype))
        if isinstance(e, Bin):
            return Bin(e.op, self.expr(e.a), self.expr(e.b), e.loc)
        if isinstance(e, Not):
            return Not(self.expr(e.a), e.loc)
        if isinstance(e, Cast):
            return Cast(e.dtype, self.expr(e.a), e.loc)
        if isinstance(e, Call):
            return Call(e.name, tuple(self.expr(a) for a in e.args), e.dtype, e.loc)
        return e

    # ---- statements ----
    def visit_For(self, s: For) -> Stmt:
        lo, extent = substitute(s.start, self.binds), substitute(s.extent, self.binds)
        self.ranges[s.var] = (lo, simp(lo + extent - 1))
        saved = self.facts
        self.facts = saved + extent_facts(extent)  # the body runs only when the loop does
        try:
            return self.generic_visit(s)
        finally:
            del self.ranges[s.var]
            self.facts = saved

    def bind(self, var: Var, value: Expr) -> None:
        """Prove through `var` with what it is bound to, unless that expression would grow past
        BIND_LIMIT nodes: chains of lets that read each other (a gather's index arithmetic) expand
        exponentially as a tree. `var` then stays opaque, so its accesses get run-time checks."""
        if _expanded_size(value, self.sizes) <= BIND_LIMIT:
            self.binds[var] = substitute(value, self.binds)
            self.sizes[var] = _expanded_size(self.binds[var], {})

    def unbind(self, var: Var) -> None:
        self.binds.pop(var, None)
        self.sizes.pop(var, None)

    def visit_BlockStmt(self, s: BlockStmt) -> Stmt:
        for it in s.iters:
            self.bind(it.var, it.binding)
        try:
            return self.generic_visit(s)
        finally:
            for it in s.iters:
                self.unbind(it.var)

    def visit_Let(self, s: Let) -> Stmt:
        self.memo = {}
        value = self.expr(s.value)
        self.bind(s.var, s.value)
        try:
            body = self.visit(s.body)
        finally:
            self.unbind(s.var)
        return s if value is s.value and body is s.body else replace(s, value=value, body=body)

    def visit_IfStmt(self, s: IfStmt) -> Stmt:
        self.memo = {}
        cond = self.expr(s.cond)
        saved = self.facts
        self.facts = saved + facts_of(substitute(s.cond, self.binds))
        try:
            then = self.visit(s.then)
        finally:
            self.facts = saved
        orelse = None
        if s.orelse is not None:
            self.facts = saved + facts_of(substitute(s.cond, self.binds), False)
            try:
                orelse = self.visit(s.orelse)
            finally:
                self.facts = saved
        return replace(s, cond=cond, then=then, orelse=orelse)

    def visit_SparseIteration(self, s: SparseIteration) -> Stmt:
        """The body with each iterator in [0, its axis length - 1] (its coordinate, see the module doc)."""
        saved = self.facts
        for it in s.iters:
            n = self.axes[it.axis].length
            self.ranges[it.var] = (Const(0), simp(n - 1))
            self.facts = self.facts + extent_facts(n)  # the body runs only when every axis has a position
        try:
            init = self.visit(s.init) if s.init is not None else None
            body = self.visit(s.body)
        finally:
            for it in s.iters:
                del self.ranges[it.var]
            self.facts = saved
        return s if init is s.init and body is s.body else replace(s, init=init, body=body)

    def visit_Store(self, s: Store) -> Stmt:
        self.memo = {}  # the ranges, bindings and facts a result was proven under end here
        idx, value = tuple(self.expr(i) for i in s.indices), self.expr(s.value)
        indices, g = self.access(s.buffer, idx)
        st = Store(s.buffer, indices, value, s.loc)
        return st if g is None else IfStmt(g, st, None, s.loc)


def sparse_requirements(f: PrimFunc) -> list[tuple[Buffer, int, Expr]]:
    """(array, dim, elements needed) for what sparse-lower's reads assume of a sparse program's
    arrays: indptr[p + 1] for every position p of the parent axis, indices and values at every flat
    position of their axes (ir/sparse.py's layout)."""
    axes = axis_table(f.axes)

    def positions(a: Axis) -> Expr:  # flat positions of `a` over all its parents' positions
        if a.kind == "dense_fixed":
            return a.length
        assert a.nnz is not None
        return positions(axes[a.parent]) * a.nnz if a.kind == "sparse_fixed" else a.nnz

    out: list[tuple[Buffer, int, Expr]] = []
    for a in f.axes:
        if a.indptr is not None:
            out.append((a.indptr, 0, positions(axes[a.parent]) + 1))
        if a.indices is not None and a.kind == "sparse_variable":
            out.append((a.indices, 0, positions(a)))
        if a.indices is not None and a.kind == "sparse_fixed":
            assert a.nnz is not None
            out += [(a.indices, 0, positions(axes[a.parent])), (a.indices, 1, a.nnz)]
    for sb in f.sparse_buffers:
        fold = folded_axes(sb)
        out.append((sb.data, 0, positions(axes[sb.axes[fold - 1]])))
        for k, name in enumerate(sb.axes[fold:], 1):
            a = axes[name]
            out.append((sb.data, k, a.nnz if a.kind == "sparse_fixed" and a.nnz is not None else a.length))
    return out


def _shape_checks(f: PrimFunc, c: Checker) -> Expr | None:
    """The sparse requirements not proven from the symbolic dims, as one condition: each needed
    count read through check_range against [0, dim + 1), so a short array fails the run."""
    cond: Expr | None = None
    for buf, k, need in sparse_requirements(f):
        have = buf.shape[k]
        if c.nonneg(_i64(have) - _i64(need)):
            continue
        c.checked.append(f"%{buf.name} dim {k} >= {print_expr(need)}")
        v = Call("check_range", (_i64(need), Const(0), _i64(have) + 1), "i64")
        ok = Bin("and", Bin("ge", v, Const(0)), Bin("le", _i64(need), _i64(have)))
        cond = ok if cond is None else Bin("and", cond, ok)
    return cond


def check_func(f: PrimFunc, large: list[str] | None = None) -> tuple[PrimFunc, list[str]]:
    """`f` with every access it cannot prove in bounds checked at run time, and those accesses
    (`large` collects the buffers of accesses checked because they were too large to prove)."""
    c = Checker({}, {}, [], [], axes=axis_table(f.axes))
    body = c.visit(f.body)
    if f.axes:
        shapes = _shape_checks(f, c)
        body = body if shapes is None else IfStmt(shapes, body, None, f.loc)
    if large is not None:
        large += sorted(set(c.large))
    return (replace(f, body=body) if c.checked else f), c.checked


@register_pass
@dataclass(frozen=True)
class BoundsCheck(ModulePass):
    """Prove every load and store of the tensor programs in bounds, or check it at run time."""

    name: ClassVar[str] = "bounds-check"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        for f in module.prim_functions():
            large: list[str] = []
            new, checked = check_func(f, large)
            if large:
                ctx.info(f"bounds-check: @{f.name}: index too large to prove, checked: {', '.join(large)}", f.loc)
            if checked:
                ctx.info(f"bounds-check: @{f.name}: checked at run time: {', '.join(checked)}", f.loc)
                module = module.with_function(new)
        return module
