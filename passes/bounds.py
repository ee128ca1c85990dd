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
does not divide adds a guard), so what was proven stays true of the scheduled loops. Sparse
iterations are left to sparse-lower (their structure is checked when loaded).

An index it cannot prove gets a run-time check: the access runs only when every unproven index is in
range (a load otherwise yields 0, a store is skipped), and the condition reads each such index
through `check_range`, so the run fails with a located error naming the kernel, the index value and
its range (the interpreter reports the same). Proven accesses are left as they are; in the zoo only
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
from mlc.ir.sparse import SparseIteration
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
    skipped: list[str] = field(default_factory=list)  # buffers with an index too large to prove or check
    memo: dict[tuple[int, tuple[int, ...]], tuple[Expr, Expr]] = field(default_factory=dict)  # see expr

    # ---- proving ----
    def nonneg(self, e: Expr, depth: int = 2) -> bool:
        """e >= 0 wherever it runs: from the loop ranges alone, or from one guard fact plus them;
        a min or max in `e` is split into its two cases (each with the fact that selects it)."""
        e = simp(e)
        for g in (None, *self.facts):
            b = bound(e if g is None else simp(e - g), self.ranges)
            if b is not None and arith.prove_le(Const(0), b[0]):
                return True
        m = next((x for x in subexprs(e) if isinstance(x, Bin) and x.op in ("min", "max")), None)
        if m is None or depth == 0:
            return False
        a_wins = simp(m.a - m.b) if m.op == "max" else simp(m.b - m.a)  # >= 0 when the result is a
        saved = self.facts
        try:
            self.facts = saved + [a_wins]
            if not self.nonneg(substitute_expr(e, m, m.a), depth - 1):
                return False
            self.facts = saved + [simp(Const(0) - a_wins - 1)]
            return self.nonneg(substitute_expr(e, m, m.b), depth - 1)
        finally:
            self.facts = saved

    def in_range(self, index: Expr, extent: Expr) -> bool:
        i = substitute(_i64(index), self.binds)
        return self.nonneg(i) and self.nonneg(extent - 1 - i)

    def unproven(self, buf: Buffer, indices: tuple[Expr, ...]) -> list[tuple[Expr, Expr]]:
        """Indices not proven in range. An index past BIND_LIMIT nodes (a fused gather's index
        arithmetic, a DAG of shared terms) is neither proven nor checked: a check repeats the index,
        and every later pass walks it as a tree (BERT's build went from seconds to hours). Such
        indices come from op lowerings, which check their data-dependent parts themselves."""
        out = []
        for i, n in zip(indices, buf.shape):
            if _expanded_size(i, self.sizes) > BIND_LIMIT:
                self.skipped.append(f"%{buf.name}")
            elif not self.in_range(i, n):
                out.append((i, n))
        return out

    def guard(self, buf: Buffer, indices: tuple[Expr, ...], bad: list[tuple[Expr, Expr]]) -> Expr | None:
        """In-range condition of the unproven indices, each read through check_range (the report).

        Inside select arms the check reports only when the arms are taken: code generators may
        evaluate both arms of a select, and the arm not taken (concat's other input) may well
        compute an index out of range that nothing reads."""
        shown = (print_expr(i) if _expanded_size(i, {}) <= BIND_LIMIT else "..." for i in indices)
        self.checked.append(f"%{buf.name}[{', '.join(shown)}]")
        taken: Expr | None = None
        for a in self.arms:
            taken = a if taken is None else Bin("and", taken, a)
        if taken is not None and _expanded_size(taken, {}) > BIND_LIMIT:
            self.checked.pop()
            self.skipped.append(f"%{buf.name}")
            return None  # the arms' conditions are too large to repeat (see unproven)
        cond: Expr | None = None
        for i, n in bad:
            idx, ext = (_i64(i), n) if taken is None else (Select(taken, _i64(i), Const(0)), Select(taken, n, Const(1)))
            v = Call("check_range", (idx, Const(0), ext), "i64")
            ok = Bin("and", Bin("ge", v, Const(0)), Bin("lt", idx, ext))
            cond = ok if cond is None else Bin("and", cond, ok)
        assert cond is not None
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
            ld = Load(e.buffer, tuple(self.expr(i) for i in e.indices), e.loc)
            bad = self.unproven(ld.buffer, ld.indices)
            g = self.guard(ld.buffer, ld.indices, bad) if bad else None
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
        self.facts = saved + [simp(extent - 1)]  # the body runs only when the loop does
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
        """Left to sparse-lower: the sparse structure is checked when it is loaded (`sparse-inputs`)."""
        return s

    def visit_Store(self, s: Store) -> Stmt:
        self.memo = {}  # the ranges, bindings and facts a result was proven under end here
        st = Store(s.buffer, tuple(self.expr(i) for i in s.indices), self.expr(s.value), s.loc)
        bad = self.unproven(st.buffer, st.indices)
        g = self.guard(st.buffer, st.indices, bad) if bad else None
        return st if g is None else IfStmt(g, st, None, s.loc)


def check_func(f: PrimFunc, skipped: list[str] | None = None) -> tuple[PrimFunc, list[str]]:
    """`f` with every access it cannot prove in bounds checked at run time, and those accesses
    (`skipped` collects the buffers of accesses too large to prove or check)."""
    c = Checker({}, {}, [], [])
    body = c.visit(f.body)
    if skipped is not None:
        skipped += sorted(set(c.skipped))
    return (replace(f, body=body) if c.checked else f), c.checked


@register_pass
@dataclass(frozen=True)
class BoundsCheck(ModulePass):
    """Prove every load and store of the tensor programs in bounds, or check it at run time."""

    name: ClassVar[str] = "bounds-check"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        for f in module.prim_functions():
            skipped: list[str] = []
            new, checked = check_func(f, skipped)
            if skipped:
                ctx.info(f"bounds-check: @{f.name}: index too large to prove or check: {', '.join(skipped)}", f.loc)
            if checked:
                ctx.info(f"bounds-check: @{f.name}: checked at run time: {', '.join(checked)}", f.loc)
                module = module.with_function(new)
        return module
