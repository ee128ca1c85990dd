"""Loop partition (TVM's LoopPartition), the last step of the lowering (ir/tir_lower.py
`lower_tir_func`) on the loop-level form: every consumer (the lower-tir pass, the code generators
handed block form, the tuner's measurements) runs it through that one function.

A loop split by a factor that need not divide its extent (symbolic, or a constant such as 55
columns in 8-lane vectors, when the test is a lane mask) guards its tile with a test such as
`4 * o + r < N` (r the unrolled tile rows): every statement of the register tile then sits under
a branch (or a lane mask), and guarded accumulator updates cannot live in registers. Such a test
holds for every iteration of a prefix of the outer loop, `o < floordiv(N, 4)`, whatever the inner
loops do. The loop becomes two: the main part over that prefix, with those tests dropped (and tile
extents clipped by `min(4 * o + 3, N - 1)` taken unclipped), and the remainder, the original body
over the rest. Nothing is proved by search: the prefix end P is solved from the test's upper bound
over the inner loops, written `F * g(o) + C` with g(o) = o or floordiv(o, c), so that
`F * g(o) + C < rhs` for every o < P by construction.

A `select(k < C, a, b)` whose test depends on the loop var alone (a concat read through its index
mapping: `select(c < 256, A[c], B[c - 256])` in a convolution's channel reduction) splits the loop
the same way, except that both parts lose the select: the main part keeps `a`, the rest `b`. Each
part then reads one buffer at an affine index instead of selecting between two loads per element.
"""

from __future__ import annotations

from dataclasses import replace

from . import arith
from .expr import Bin, Const, Expr, Load, Select, Var, free_vars, subexprs, substitute
from .tir import For, IfStmt, Let, PrimFunc, Seq, Stmt
from .tir_visit import (
    StmtMutator,
    bound,
    conjuncts,
    kids,
    nodes,
    own_exprs,
    rewrite,
    seq,
    simp,
    with_kids,
    with_own_exprs,
)


def partition_loops(func: PrimFunc) -> PrimFunc:
    """`func` with every partitionable serial/parallel loop (see module doc) split in two. GPU
    kernels (thread-bound loops) are left as they are: their tiles' guards are per thread, and
    their schedules were measured with them."""
    if any(isinstance(s, For) and s.kind == "thread" for s in nodes(func.body)):
        return func
    body = LoopPartitioner().visit(func.body)
    return func if body is func.body else replace(func, body=body)


class LoopPartitioner(StmtMutator):
    """Partitions the outermost loop each guard allows, then looks inside the main part again."""

    def visit_Seq(self, s: Seq) -> Stmt:
        new = [self.visit(x) for x in s.stmts]
        return s if all(a is b for a, b in zip(new, s.stmts)) else seq(new)  # a split loop's parts join s

    def visit_For(self, s: For) -> Stmt:
        if s.kind in ("serial", "parallel"):
            probe = _Guards(s.var, None)  # one walk finds both the guards' and the selects' ends
            probe.walk(s.body, {}, {})
            if probe.ends and arith.as_int(s.start) == 0:
                parts = partition(s, probe.ends[0])
                if parts is not None:
                    main, tail = parts
                    return seq([replace(main, body=self.visit(main.body)), tail])
            split = split_selects(s, probe.select_ends)
            if split is not None:  # both parts may hold further selects (a concat of three inputs)
                return seq([self.visit(p) for p in split])
        return self.generic_visit(s)


def _normalize(c: Expr) -> tuple[Expr, Expr] | None:
    """`lhs < rhs` form of an integer comparison, else None."""
    if not isinstance(c, Bin):
        return None
    if c.op == "lt":
        return c.a, c.b
    if c.op == "le":
        return c.a, Bin("add", c.b, Const(1))
    if c.op == "gt":
        return c.b, c.a
    if c.op == "ge":
        return c.b, Bin("add", c.a, Const(1))
    return None


def prefix_end(lhs: Expr, rhs: Expr, var: Var, ranges: dict[Var, tuple[Expr, Expr]],
               inner: set[Var], lane_mask: bool = False) -> Expr | None:
    """The end P of the prefix of `var`'s range on which `lhs < rhs` holds for every value of the
    inner loops (their `ranges`), or None when the test is not of the partitionable form. A
    constant bound counts only for a `lane_mask` (the test varies across a vectorized loop's lanes):
    the partial last tile of a constant extent would otherwise mask every vector iteration's loads
    and stores (masked stores are microcoded on AMD Zen: a 111 -> 55 max pool took 3 ms instead of
    0.4), or for a select's test (both parts lose the select); other constant tails (a conv's
    unrolled column tiles) stay with the codegen."""
    if (not free_vars(rhs) and not lane_mask) or free_vars(rhs) & (inner | {var}) or var not in free_vars(lhs):
        return None
    hi_lo = bound(simp(lhs), ranges)
    if hi_lo is None:
        return None
    hi = simp(hi_lo[1])
    if free_vars(hi) & inner:
        return None
    x = Var("%lp_x", var.dtype)
    divs = {e.b.value for e in _floordivs_of(hi, var)}
    if len(divs) > 1:
        return None
    step = divs.pop() if divs else 1
    if step > 1:
        hx = rewrite(hi, lambda e: x if _is_floordiv_of(e, var) else None)
    else:
        hx = substitute(hi, {var: x})
    if var in free_vars(hx):
        return None
    c0 = simp(substitute(hx, {x: Const(0, var.dtype)}))
    f = arith.as_int(simp(Bin("sub", substitute(hx, {x: Const(1, var.dtype)}), c0)))
    if f is None or f <= 0 or x in free_vars(c0) or not arith.prove_equal(hx, Bin("add", Bin("mul", Const(f), x), c0)):
        return None
    # F * g + C < rhs  <=>  g <= floordiv(rhs - C - 1, F)  <=>  g < floordiv(rhs - C - 1 + F, F)
    num = simp(Bin("add", Bin("sub", rhs, c0), Const(f - 1)))
    q = num if f == 1 else simp(Bin("floordiv", num, Const(f)))
    if not arith.prove_le(Const(0), num):
        q = Bin("max", q, Const(0))
    return q if step == 1 else simp(Bin("mul", Const(step), q))


def _is_floordiv_of(e: Expr, var: Var) -> bool:
    return isinstance(e, Bin) and e.op == "floordiv" and e.a == var and isinstance(e.b, Const) \
        and isinstance(e.b.value, int) and e.b.value > 0


def _floordivs_of(e: Expr, var: Var) -> list[Bin]:
    out: list[Bin] = []
    rewrite(e, lambda x: out.append(x) if _is_floordiv_of(x, var) else None)  # type: ignore[func-returns-value]
    return out


class _Guards:
    """Walks a loop body, tracking the inner loops' ranges and let-bound values, collecting the
    prefix end of each removable test (`end` None) or dropping the tests whose end is `end`."""

    def __init__(self, var: Var, end: Expr | None, side: bool | None = None) -> None:
        """`side` None: guards (collect or drop); True/False: selects ending at `end` take their true
        (main part) or false (rest) arm, guards stay."""
        self.var, self.end, self.side = var, end, side
        self.ends: list[Expr] = []
        self.select_ends: list[Expr] = []
        self.lanes: set[Var] = set()  # vectorized loop vars met so far (names are unique in a func)

    def walk(self, s: Stmt, ranges: dict[Var, tuple[Expr, Expr]], env: dict[Var, Expr],
             inner: frozenset[Var] = frozenset()) -> Stmt:
        """`inner`: every var bound inside the loop so far (a loop without a known range included)."""
        if isinstance(s, For):
            ext = s.extent
            if s.kind == "vectorized":
                self.lanes.add(s.var)
            if self.end is not None:
                ext = self.unclip(ext, ranges, set(inner))
            r = dict(ranges)
            start, end = expand(s.start, env), expand(ext, env)
            if start is not None and end is not None:
                r[s.var] = (start, simp(Bin("sub", Bin("add", start, end), Const(1))))
            body = self.walk(s.body, r, env, inner | {s.var})
            return s if body is s.body and ext is s.extent else replace(s, extent=ext, body=body)
        if isinstance(s, Let):
            if self.side is not None or self.end is None:
                s = self.selects(s, ranges, env, inner)
                assert isinstance(s, Let)
            e = dict(env)
            e[s.var] = s.value  # expanded only where a test needs it (eager expansion can blow up)
            body = self.walk(s.body, ranges, e, inner | {s.var})
            return s if body is s.body else replace(s, body=body)
        if self.side is not None or self.end is None:
            s = self.selects(s, ranges, env, inner)
        if isinstance(s, IfStmt) and s.orelse is None and self.side is None:
            keep = []
            for c in conjuncts(s.cond):
                n = _normalize(c)
                lhs, rhs = (None, None) if n is None else (expand(n[0], env), expand(n[1], env))
                p = None if lhs is None or rhs is None else prefix_end(
                    lhs, rhs, self.var, ranges, set(inner), bool(free_vars(lhs) & self.lanes))
                if p is not None and self.end is None:
                    self.ends.append(p)
                if p is None or self.end is None or not arith.prove_equal(p, self.end) and p != self.end:
                    keep.append(c)
            then = self.walk(s.then, ranges, env, inner)
            if len(keep) == len(conjuncts(s.cond)):
                return s if then is s.then else replace(s, then=then)
            if not keep:
                return then
            cond = keep[0]
            for c in keep[1:]:
                cond = Bin("and", cond, c)
            return replace(s, cond=cond, then=then)
        ks = kids(s)
        new = tuple(self.walk(k, ranges, env, inner) for k in ks)
        return s if all(a is b for a, b in zip(new, ks)) else with_kids(s, new)

    def selects(self, s: Stmt, ranges: dict[Var, tuple[Expr, Expr]], env: dict[Var, Expr],
                inner: frozenset[Var]) -> Stmt:
        """`s`'s own expressions with each select whose test `lhs < rhs` depends on the loop var and
        no inner var collected (probe) or resolved to the arm of `side` (its end is `end`)."""
        changed = False

        def fn(e: Expr) -> Expr | None:
            nonlocal changed
            n = _normalize(e.cond) if isinstance(e, Select) else None
            if n is None:
                return None
            assert isinstance(e, Select)
            lhs, rhs = expand(n[0], env), expand(n[1], env)
            if lhs is None or rhs is None or free_vars(lhs) & inner:
                return None
            # a constant bound pays here as it does for a lane mask: both parts drop the select
            p = prefix_end(lhs, rhs, self.var, ranges, set(inner), True)
            if p is None:
                return None
            if self.end is None:
                self.select_ends.append(p)
                return None
            if p == self.end or arith.prove_equal(p, self.end):
                changed = True
                return e.t if self.side else e.f
            return None

        if not any(isinstance(x, Select) for e in own_exprs(s) for x in subexprs(e)):
            return s
        new = with_own_exprs(s, lambda e: rewrite(e, fn))
        return new if changed else s

    def unclip(self, ext: Expr, ranges: dict[Var, tuple[Expr, Expr]], inner: set[Var]) -> Expr:
        """A tile extent clipped by `min(a, b)` where a <= b on the main part: `a`."""
        assert self.end is not None

        def fn(e: Expr) -> Expr | None:
            if isinstance(e, Bin) and e.op == "min":
                for a, b in ((e.a, e.b), (e.b, e.a)):
                    p = prefix_end(a, Bin("add", b, Const(1)), self.var, ranges, inner)
                    if p is not None and (p == self.end or arith.prove_equal(p, self.end)):
                        return a
            return None

        return simp(rewrite(ext, fn))


MAX_EXPANDED = 64  # nodes: a test or extent larger than this once its lets are expanded is left alone


def expand(e: Expr, env: dict[Var, Expr]) -> Expr | None:
    """`e` with the let-bound vars of `env` replaced by their values (transitively), None when that
    reads memory or grows past MAX_EXPANDED nodes (such a test is not a tile guard)."""
    for _ in range(len(env) + 1):
        hit = {v: env[v] for v in free_vars(e) if v in env}
        if not hit:
            return simp(e)
        e = substitute(e, hit)
        if sum(1 for _ in subexprs(e)) > MAX_EXPANDED or any(isinstance(x, Load) for x in subexprs(e)):
            return None
    return None


def _le(a: Expr, b: Expr) -> bool:
    """a <= b for the forms loop ends take: c * floordiv(x, F) <= c * floordiv(y, F) when x <= y."""
    if arith.prove_le(a, b):
        return True

    def parts(e: Expr) -> tuple[int, Expr, int] | None:
        c = 1
        if isinstance(e, Bin) and e.op == "mul" and arith.as_int(e.a) is not None:
            c, e = arith.as_int(e.a) or 0, e.b
        if isinstance(e, Bin) and e.op == "floordiv" and arith.as_int(e.b) is not None:
            return c, e.a, arith.as_int(e.b) or 0
        return None

    pa, pb = parts(a), parts(b)
    return pa is not None and pb is not None and pa[0] == pb[0] > 0 and pa[2] == pb[2] > 0 \
        and arith.prove_le(pa[1], pb[1])


def partition(s: For, end: Expr) -> tuple[For, For] | None:
    """(main, remainder) of loop `s` (starting at 0) at `end`, the end of the prefix where one of its
    guards holds (`_Guards` probe), or None when no guard drops there."""
    main_end = end if _le(end, s.extent) else simp(Bin("min", end, s.extent))
    body = _Guards(s.var, end).walk(s.body, {}, {})
    if body is s.body:
        return None
    main = replace(s, extent=main_end, body=body)
    tail = replace(s, start=main_end, extent=simp(Bin("sub", s.extent, main_end)))
    return main, tail


def split_selects(s: For, ends: list[Expr]) -> tuple[For, ...] | None:
    """Loop `s` split at the first of `ends` (the ends of the prefixes where its selects' tests hold,
    `_Guards` probe; module doc) that splits it, each part with that select resolved (one part when
    the test holds on all of `s` or on none of it), or None."""
    start = s.start
    stop = simp(Bin("add", start, s.extent))
    for end in ends:
        never = arith.prove_le(end, start)
        if never or _le(stop, end):  # the test fails (holds) on every iteration
            body = _Guards(s.var, end, not never).walk(s.body, {}, {})
            if body is not s.body:
                return (replace(s, body=body),)
            continue
        if not arith.prove_le(start, end):  # the test may fail from the first iteration: left alone
            continue
        main_end = end if _le(end, stop) else simp(Bin("min", end, stop))
        main_body = _Guards(s.var, end, True).walk(s.body, {}, {})
        rest_body = _Guards(s.var, end, False).walk(s.body, {}, {})
        if main_body is s.body or rest_body is s.body:
            continue
        main = replace(s, extent=simp(Bin("sub", main_end, start)), body=main_body)
        rest = replace(s, start=main_end, extent=simp(Bin("sub", stop, main_end)), body=rest_body)
        return main, rest
    return None


__all__ = ["LoopPartitioner", "partition", "partition_loops", "prefix_end", "split_selects"]
