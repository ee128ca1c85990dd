"""Statement-tree plumbing for schedule primitives: paths, lookups, rewrites, access regions.

A path is a tuple of child indices from the PrimFunc body (the root block). Primitives locate
blocks and loops by name, rewrite the tree functionally and re-resolve names afterwards, so
handles stay valid across primitives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, children, free_vars, substitute
from mlc.ir.tir import BlockStmt, Buffer, For, IfStmt, IterVar, Let, PrimFunc, Seq, Stmt, Store

Path = tuple[int, ...]


def kids(s: Stmt) -> tuple[Stmt, ...]:
    if isinstance(s, For | Let):
        return (s.body,)
    if isinstance(s, BlockStmt):
        return (s.body,)
    if isinstance(s, Seq):
        return s.stmts
    if isinstance(s, IfStmt):
        return (s.then,) if s.orelse is None else (s.then, s.orelse)
    return ()


def with_kids(s: Stmt, ks: tuple[Stmt, ...]) -> Stmt:
    if isinstance(s, For | Let | BlockStmt):
        return replace(s, body=ks[0])
    if isinstance(s, Seq):
        return replace(s, stmts=ks)
    if isinstance(s, IfStmt):
        return replace(s, then=ks[0], orelse=ks[1] if len(ks) > 1 else None)
    return s


def seq(stmts: list[Stmt]) -> Stmt:
    flat: list[Stmt] = []
    for s in stmts:
        flat.extend(s.stmts if isinstance(s, Seq) else (s,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def walk(s: Stmt, path: Path = ()) -> Iterator[tuple[Path, Stmt]]:
    yield path, s
    for i, k in enumerate(kids(s)):
        yield from walk(k, path + (i,))


def get(s: Stmt, path: Path) -> Stmt:
    for i in path:
        s = kids(s)[i]
    return s


def put(s: Stmt, path: Path, new: Stmt) -> Stmt:
    if not path:
        return new
    ks = list(kids(s))
    ks[path[0]] = put(ks[path[0]], path[1:], new)
    return with_kids(s, tuple(ks))


def ancestors(s: Stmt, path: Path) -> list[tuple[Path, Stmt]]:
    """(path, node) for every proper ancestor of `path`, outermost first."""
    out = []
    for d in range(len(path)):
        out.append((path[:d], s))
        s = kids(s)[path[d]]
    return out


def find_block(body: Stmt, name: str) -> Path:
    hits = [p for p, s in walk(body) if isinstance(s, BlockStmt) and s.name == name]
    if not hits:
        raise MlcError(f"schedule: no block named {name}")
    if len(hits) > 1:
        raise MlcError(f"schedule: block name {name} is not unique")
    return hits[0]


def find_loop(body: Stmt, name: str) -> Path:
    hits = [p for p, s in walk(body) if isinstance(s, For) and s.var.name == name]
    if not hits:
        raise MlcError(f"schedule: no loop named {name} (it may have been split, fused or removed)")
    if len(hits) > 1:
        raise MlcError(f"schedule: loop name {name} is not unique")
    return hits[0]


def blocks(s: Stmt) -> Iterator[tuple[Path, BlockStmt]]:
    for p, x in walk(s):
        if isinstance(x, BlockStmt):
            yield p, x


def used_names(func: PrimFunc) -> set[str]:
    """Every loop var, block and buffer name (fresh names avoid all of them)."""
    out = {b.name for b in func.params} | {v.name for v in func.scalar_params}
    for b in func.params:
        for d in b.shape:
            out |= {v.name for v in free_vars(d)}
    for _, s in walk(func.body):
        if isinstance(s, For):
            out.add(s.var.name)
        elif isinstance(s, BlockStmt):
            out.add(s.name)
            out |= {b.name for b in s.alloc_buffers}
    return out


def fresh(used: set[str], base: str) -> str:
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


# ---- expressions --------------------------------------------------------------------------------
def rewrite(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Bottom-up rewrite: children first, then `fn(node)` (None keeps the node)."""
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


def map_exprs(s: Stmt, fn: Callable[[Expr], Expr]) -> Stmt:
    """Apply `fn` to every expression held by the statement tree (not buffer shapes)."""
    if isinstance(s, For):
        return replace(s, start=fn(s.start), extent=fn(s.extent), body=map_exprs(s.body, fn))
    if isinstance(s, BlockStmt):
        iters = tuple(replace(iv, extent=fn(iv.extent), binding=fn(iv.binding)) for iv in s.iters)
        init = None if s.init is None else map_exprs(s.init, fn)
        return replace(s, iters=iters, init=init, body=map_exprs(s.body, fn))
    if isinstance(s, Store):
        return replace(s, indices=tuple(fn(i) for i in s.indices), value=fn(s.value))
    if isinstance(s, IfStmt):
        return replace(s, cond=fn(s.cond), then=map_exprs(s.then, fn),
                       orelse=None if s.orelse is None else map_exprs(s.orelse, fn))
    if isinstance(s, Let):
        return replace(s, value=fn(s.value), body=map_exprs(s.body, fn))
    if isinstance(s, Seq):
        return replace(s, stmts=tuple(map_exprs(x, fn) for x in s.stmts))
    return s


def subst(s: Stmt, mapping: dict[Var, Expr]) -> Stmt:
    return map_exprs(s, lambda e: simp(substitute(e, mapping)))


def map_buffers(s: Stmt, fn: Callable[[Buffer], Buffer], stores: bool = True, loads: bool = True) -> Stmt:
    """Replace buffers in loads and/or stores."""
    if loads:
        s = map_exprs(s, lambda e: rewrite(e, lambda x: Load(fn(x.buffer), x.indices, x.loc) if isinstance(x, Load) else None))
    if stores:
        s = map_stores(s, lambda st: replace(st, buffer=fn(st.buffer)))
    return s


def map_stores(s: Stmt, fn: Callable[[Store], Stmt]) -> Stmt:
    if isinstance(s, Store):
        return fn(s)
    if isinstance(s, BlockStmt) and s.init is not None:
        s = replace(s, init=map_stores(s.init, fn))
    ks = kids(s)
    return with_kids(s, tuple(map_stores(k, fn) for k in ks)) if ks else s


def loads_in(e: Expr) -> list[Load]:
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Load):
            out.append(x)
        stack.extend(reversed(children(x)))
    return out


def stmt_exprs(s: Stmt) -> list[Expr]:
    out: list[Expr] = []
    map_exprs(s, lambda e: out.append(e) or e)  # type: ignore[func-returns-value]
    return out


def stores_in(s: Stmt) -> list[Store]:
    out: list[Store] = []
    map_stores(s, lambda st: out.append(st) or st)  # type: ignore[func-returns-value]
    return out


def block_reads(b: BlockStmt) -> list[Buffer]:
    """Buffers a block loads, in order of first use, without the ones it writes (a reduction's own
    accumulator is not an input)."""
    written = {x.name for x in block_writes(b)}
    out: list[Buffer] = []
    for e in stmt_exprs(b.body):
        for ld in _preorder_loads(e):
            if ld.buffer.name not in written and all(o.name != ld.buffer.name for o in out):
                out.append(ld.buffer)
    return out


def _preorder_loads(e: Expr) -> list[Load]:
    out: list[Load] = []

    def go(x: Expr) -> None:
        if isinstance(x, Load):
            out.append(x)
        for c in children(x):
            go(c)

    go(e)
    return out


def block_writes(b: BlockStmt) -> list[Buffer]:
    out: list[Buffer] = []
    for st in stores_in(b.body) + (stores_in(b.init) if b.init is not None else []):
        if all(o.name != st.buffer.name for o in out):
            out.append(st.buffer)
    return out


def reads_buffer(b: BlockStmt, name: str) -> bool:
    exprs = stmt_exprs(b.body) + (stmt_exprs(b.init) if b.init is not None else [])
    return any(ld.buffer.name == name for e in exprs for ld in loads_in(e))


# ---- integer bounds -----------------------------------------------------------------------------
Interval = tuple[Expr, Expr]


def bound(e: Expr, ranges: dict[Var, Interval]) -> Interval | None:
    """Symbolic [lo, hi] of an index expression when vars in `ranges` vary (others are fixed)."""
    if isinstance(e, Var):
        return ranges.get(e, (e, e))
    if isinstance(e, Const):
        return (e, e)
    if not isinstance(e, Bin):
        return None if free_vars(e) & set(ranges) else (e, e)
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


def make_copy_nest(used: set[str], name: str, src: Buffer, dst: Buffer) -> Stmt:
    """`for ax...: block name: dst[v...] = src[v...]` over the whole buffer."""
    loops = [Var(fresh(used, f"ax{d}")) for d in range(len(dst.shape))]
    iters = tuple(IterVar(Var(f"v{d}"), ext, "S", lv) for d, (ext, lv) in enumerate(zip(dst.shape, loops)))
    idx = tuple(iv.var for iv in iters)
    stmt: Stmt = BlockStmt(name, iters, Store(dst, idx, Load(src, idx)))
    for lv, ext in reversed(list(zip(loops, dst.shape))):
        stmt = For(lv, Const(0), ext, stmt)
    return stmt
