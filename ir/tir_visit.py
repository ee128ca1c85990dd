"""The one traversal of tensor programs (TVM's stmt_functor): child access, visitor, mutator, helpers.

Every consumer of `ir/tir.py` statements (printer, verifier, interpreter, schedule primitives,
lowering, code generators) goes through `kids` / `with_kids` / `own_exprs` / `with_own_exprs`, so a
new statement kind is taught to every walker here, once.

`BlockStmt.init` IS visited: it is a statement of the tree that reads and writes buffers like any
other. It is the block's second child, after `body`, so that a path (a tuple of child indices, as
the schedule primitives use) to a block's body is the same whether or not the block has an init.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from . import arith
from .expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, children, free_vars, substitute
from .sparse import SparseIteration
from .tir import (
    Allocate,
    AttrStmt,
    BlockStmt,
    Buffer,
    For,
    GemmCall,
    IfStmt,
    IterVar,
    Let,
    PrimFunc,
    Seq,
    Stmt,
    Store,
    ThreadAllReduce,
)

Path = tuple[int, ...]


# ---- child access -------------------------------------------------------------------------------
def kids(s: Stmt) -> tuple[Stmt, ...]:
    """Child statements in a fixed order (a block: body, then init when present)."""
    if isinstance(s, For | Let | Allocate | AttrStmt):
        return (s.body,)
    if isinstance(s, BlockStmt | SparseIteration):
        return (s.body,) if s.init is None else (s.body, s.init)
    if isinstance(s, Seq):
        return s.stmts
    if isinstance(s, IfStmt):
        return (s.then,) if s.orelse is None else (s.then, s.orelse)
    if isinstance(s, ThreadAllReduce):
        return (s.loop, s.result)
    return ()


def with_kids(s: Stmt, ks: tuple[Stmt, ...]) -> Stmt:
    """`s` with its children replaced (same order as `kids`); `s` itself when nothing changed."""
    old = kids(s)
    if len(old) == len(ks) and all(a is b for a, b in zip(old, ks)):
        return s
    if isinstance(s, For | Let | Allocate | AttrStmt):
        return replace(s, body=ks[0])
    if isinstance(s, BlockStmt | SparseIteration):
        return replace(s, body=ks[0], init=ks[1] if len(ks) > 1 else None)
    if isinstance(s, Seq):
        return replace(s, stmts=ks)
    if isinstance(s, IfStmt):
        return replace(s, then=ks[0], orelse=ks[1] if len(ks) > 1 else None)
    if isinstance(s, ThreadAllReduce):
        assert isinstance(ks[0], For)
        return replace(s, loop=ks[0], result=ks[1])
    return s


def own_exprs(s: Stmt) -> tuple[Expr, ...]:
    """The expressions a statement holds itself (not its children's; not buffer shapes)."""
    if isinstance(s, For):
        return (s.start, s.extent)
    if isinstance(s, BlockStmt):
        return tuple(e for iv in s.iters for e in (iv.extent, iv.binding))
    if isinstance(s, Store):
        return (*s.indices, s.value)
    if isinstance(s, IfStmt):
        return (s.cond,)
    if isinstance(s, Let):
        return (s.value,)
    return ()


def with_own_exprs(s: Stmt, fn: Callable[[Expr], Expr]) -> Stmt:
    """`s` with `fn` applied to each of its own expressions (children untouched)."""
    if isinstance(s, For):
        return replace(s, start=fn(s.start), extent=fn(s.extent))
    if isinstance(s, BlockStmt):
        iters = tuple(replace(iv, extent=fn(iv.extent), binding=fn(iv.binding)) for iv in s.iters)
        return replace(s, iters=iters)
    if isinstance(s, Store):
        return replace(s, indices=tuple(fn(i) for i in s.indices), value=fn(s.value))
    if isinstance(s, IfStmt):
        return replace(s, cond=fn(s.cond))
    if isinstance(s, Let):
        return replace(s, value=fn(s.value))
    return s


# ---- traversal ----------------------------------------------------------------------------------
def walk(s: Stmt, path: Path = ()) -> Iterator[tuple[Path, Stmt]]:
    """(path, statement) in pre-order."""
    yield path, s
    for i, k in enumerate(kids(s)):
        yield from walk(k, path + (i,))


def nodes(s: Stmt) -> Iterator[Stmt]:
    """Every statement in pre-order."""
    stack = [s]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(reversed(kids(x)))


class StmtVisitor:
    """Pre-order visitor: `visit` dispatches to `visit_<Kind>` (e.g. `visit_For`) when defined, else
    `generic_visit`, which visits the statement's own expressions (`visit_expr`) and then its
    children. An override calls `self.generic_visit(s)` to descend."""

    def visit(self, s: Stmt) -> Any:
        """The handler's result (None for plain visitors; analyses may return a verdict)."""
        return getattr(self, f"visit_{type(s).__name__}", self.generic_visit)(s)

    def generic_visit(self, s: Stmt) -> Any:
        for e in own_exprs(s):
            self.visit_expr(e)
        for k in kids(s):
            self.visit(k)

    def visit_expr(self, e: Expr) -> None:
        pass


class StmtMutator:
    """Functional mutator: `visit` returns the (possibly new) statement. Dispatch as `StmtVisitor`;
    `generic_visit` maps `visit_expr` over the own expressions and `visit` over the children, and
    returns the same object when nothing changed."""

    def visit(self, s: Stmt) -> Stmt:
        out: Stmt = getattr(self, f"visit_{type(s).__name__}", self.generic_visit)(s)
        return out

    def generic_visit(self, s: Stmt) -> Stmt:
        if own_exprs(s):
            s = with_own_exprs(s, self.visit_expr)
        return with_kids(s, tuple(self.visit(k) for k in kids(s)))

    def visit_expr(self, e: Expr) -> Expr:
        return e


def seq(stmts: list[Stmt]) -> Stmt:
    """A statement of a list: nested Seqs flattened, one statement stands alone."""
    flat: list[Stmt] = []
    for s in stmts:
        flat.extend(s.stmts if isinstance(s, Seq) else (s,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def used_names(func: PrimFunc) -> set[str]:
    """Every param, dim, loop var, block and buffer name of a PrimFunc (fresh names avoid them)."""
    out = {b.name for b in func.params} | {v.name for v in func.scalar_params} | {v.buffer.name for v in func.views}
    for b in func.params:
        for d in b.shape:
            out |= {v.name for v in free_vars(d)}
    for s in nodes(func.body):
        if isinstance(s, For):
            out.add(s.var.name)
        elif isinstance(s, BlockStmt):
            out.add(s.name)
            out |= {b.name for b in s.alloc_buffers}
        elif isinstance(s, SparseIteration):
            out.add(s.name)  # its iterators vanish when it is lowered: their names are free again
        elif isinstance(s, Allocate):
            out.add(s.buffer.name)
        elif isinstance(s, ThreadAllReduce):
            out.add(s.acc.name)
    return out


# ---- expressions --------------------------------------------------------------------------------
def rewrite(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Bottom-up expression rewrite: children first, then `fn(node)` (None keeps the node)."""
    if isinstance(e, Bin):
        e = Bin(e.op, rewrite(e.a, fn), rewrite(e.b, fn), e.loc)
    elif isinstance(e, Not):
        e = Not(rewrite(e.a, fn), e.loc)
    elif isinstance(e, Cast):
        e = Cast(e.dtype, rewrite(e.a, fn), e.loc)
    elif isinstance(e, Select):
        e = Select(rewrite(e.cond, fn), rewrite(e.t, fn), rewrite(e.f, fn), e.loc)
    elif isinstance(e, Call):
        e = Call(e.name, tuple(rewrite(a, fn) for a in e.args), e.dtype, e.loc)
    elif isinstance(e, Load):
        e = Load(e.buffer, tuple(rewrite(a, fn) for a in e.indices), e.loc)
    r = fn(e)
    return e if r is None else r


def simp(e: Expr) -> Expr:
    """Simplify integer parts, including every load index."""
    e = rewrite(e, lambda x: Load(x.buffer, tuple(arith.simplify(i) for i in x.indices), x.loc) if isinstance(x, Load) else None)
    return arith.simplify(e)


def conjuncts(e: Expr) -> list[Expr]:
    """`a and b and c` as [a, b, c]."""
    if isinstance(e, Bin) and e.op == "and":
        return conjuncts(e.a) + conjuncts(e.b)
    return [e]


def loads_in(e: Expr) -> list[Load]:
    """Every load of an expression (including loads inside indices), in pre-order."""
    out: list[Load] = []
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Load):
            out.append(x)
        stack.extend(reversed(children(x)))
    return out


# ---- statements x expressions -------------------------------------------------------------------
def map_exprs(s: Stmt, fn: Callable[[Expr], Expr]) -> Stmt:
    """Apply `fn` to every expression held by the statement tree (not buffer shapes)."""

    class _M(StmtMutator):
        def visit_expr(self, e: Expr) -> Expr:
            return fn(e)

    return _M().visit(s)


def subst(s: Stmt, mapping: dict[Var, Expr]) -> Stmt:
    return map_exprs(s, lambda e: simp(substitute(e, mapping)))


def map_stores(s: Stmt, fn: Callable[[Store], Stmt]) -> Stmt:
    """Replace every Store by `fn(store)`."""

    class _M(StmtMutator):
        def visit_Store(self, st: Store) -> Stmt:
            return fn(st)

    return _M().visit(s)


def map_buffers(s: Stmt, fn: Callable[[Buffer], Buffer], stores: bool = True, loads: bool = True) -> Stmt:
    """Replace buffers in loads and/or stores."""
    if loads:
        s = map_exprs(s, lambda e: rewrite(e, lambda x: Load(fn(x.buffer), x.indices, x.loc) if isinstance(x, Load) else None))
    if stores:
        s = map_stores(s, lambda st: replace(st, buffer=fn(st.buffer)))
    return s


def stmt_exprs(s: Stmt) -> list[Expr]:
    """Every top-level expression of the tree, in pre-order of the statements."""
    return [e for x in nodes(s) for e in own_exprs(x)]


def stores_in(s: Stmt) -> list[Store]:
    return [x for x in nodes(s) if isinstance(x, Store)]


def stored_buffers(s: Stmt) -> set[str]:
    """Names of the buffers a tree writes (stores and GEMM outputs)."""
    out = {x.buffer.name for x in nodes(s) if isinstance(x, Store)}
    return out | {x.c.name for x in nodes(s) if isinstance(x, GemmCall)}


def buffers_used(s: Stmt) -> set[str]:
    """Names of the buffers a tree reads or writes."""
    names = stored_buffers(s) | {ld.buffer.name for e in stmt_exprs(s) for ld in loads_in(e)}
    return names | {b.name for x in nodes(s) if isinstance(x, GemmCall) for b in (x.a, x.b)}


def block_writes(b: BlockStmt) -> list[Buffer]:
    """Buffers a block stores to (body, then init), in order of first store."""
    out: list[Buffer] = []
    for st in stores_in(b.body) + (stores_in(b.init) if b.init is not None else []):
        if all(o.name != st.buffer.name for o in out):
            out.append(st.buffer)
    return out


def block_reads(b: BlockStmt) -> list[Buffer]:
    """Buffers a block's body loads, in order of first use, without the ones it writes (a reduction's
    own accumulator is not an input)."""
    written = {x.name for x in block_writes(b)}
    out: list[Buffer] = []
    for e in stmt_exprs(b.body):
        for ld in loads_in(e):
            if ld.buffer.name not in written and all(o.name != ld.buffer.name for o in out):
                out.append(ld.buffer)
    return out


def reads_buffer(b: BlockStmt, name: str) -> bool:
    """Whether the block's body or init loads `name`."""
    exprs = stmt_exprs(b.body) + (stmt_exprs(b.init) if b.init is not None else [])
    return any(ld.buffer.name == name for e in exprs for ld in loads_in(e))


def has_loop(s: Stmt) -> bool:
    return any(isinstance(x, For) for x in nodes(s))


# ---- integer bounds -----------------------------------------------------------------------------
Interval = tuple[Expr, Expr]


def bound(e: Expr, ranges: dict[Var, Interval]) -> Interval | None:
    """Symbolic [lo, hi] of an index expression when vars in `ranges` vary (others are fixed)."""
    if isinstance(e, Var):
        return ranges.get(e, (e, e))
    if isinstance(e, Const) or not free_vars(e) & set(ranges):  # invariant (a symbolic divisor too)
        return (e, e)
    if not isinstance(e, Bin):
        return None
    a, b = bound(e.a, ranges), bound(e.b, ranges)
    if a is None or b is None:
        return None
    if e.op == "add":
        return (simp(a[0] + b[0]), simp(a[1] + b[1]))
    if e.op == "sub":
        return (simp(a[0] - b[1]), simp(a[1] - b[0]))
    if e.op == "mul":
        for x, y in ((a, b), (b, a)):
            c = arith.as_int(y[0]) if arith.prove_equal(y[0], y[1]) else None
            if c is not None:
                lo, hi = simp(x[0] * c), simp(x[1] * c)
                return (lo, hi) if c >= 0 else (hi, lo)
        if arith.prove_equal(a[0], a[1]) and arith.prove_equal(b[0], b[1]):
            return (simp(e), simp(e))
        return None
    if e.op in ("floordiv", "floormod"):
        c = arith.as_int(b[0]) if arith.prove_equal(b[0], b[1]) else None
        if c is None or c <= 0:
            return None
        if e.op == "floordiv":
            return (simp(a[0] // c), simp(a[1] // c))
        if arith.prove_equal(a[0], a[1]):
            return (simp(a[0] % c), simp(a[0] % c))
        lo, hi = arith.as_int(a[0]), arith.as_int(a[1])
        if lo is not None and hi is not None and lo // c == hi // c:
            return (Const(lo % c), Const(hi % c))
        return (Const(0), Const(c - 1))
    if e.op in ("min", "max"):
        return (simp(Bin(e.op, a[0], b[0])), simp(Bin(e.op, a[1], b[1])))
    return None


def loop_ranges(loops: list[For]) -> dict[Var, Interval]:
    return {lp.var: (lp.start, simp(lp.start + lp.extent - 1)) for lp in loops}


def union(a: Interval | None, b: Interval | None) -> Interval | None:
    if a is None or b is None:
        return None
    return (simp(Bin("min", a[0], b[0])), simp(Bin("max", a[1], b[1])))


def clamp(iv: Interval | None, extent: Expr, outer: dict[Var, Interval]) -> Interval:
    """Intersect with [0, extent - 1] (bounds proved over the `outer` loop ranges); a failed
    analysis is the whole range."""
    last = simp(extent - 1)
    if iv is None:
        return (Const(0), last)
    lo, hi = iv
    lo_b, hi_b = bound(lo, outer), bound(hi, outer)
    if lo_b is None or not arith.prove_le(Const(0), lo_b[0]):
        lo = simp(Bin("max", lo, Const(0)))
    if hi_b is None or not arith.prove_le(hi_b[1], last):
        hi = simp(Bin("min", hi, last))
    return lo, hi


__all__ = [
    "Interval", "IterVar", "Path", "StmtMutator", "StmtVisitor", "block_reads", "block_writes", "bound",
    "buffers_used", "clamp", "conjuncts", "has_loop", "kids", "loads_in", "loop_ranges", "map_buffers",
    "map_exprs", "map_stores", "nodes", "own_exprs", "reads_buffer", "rewrite", "seq", "simp", "stmt_exprs",
    "stored_buffers", "stores_in", "subst", "union", "used_names", "walk", "with_kids", "with_own_exprs",
]
