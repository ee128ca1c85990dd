"""Loop primitives as pure functions PrimFunc -> PrimFunc: split, fuse, reorder, loop kinds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Expr, Var, free_vars
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, For, IfStmt, PrimFunc, Stmt, Store
from mlc.ir.tir_visit import StmtMutator, block_writes, bound, conjuncts, kids, simp, subst, used_names, with_kids

from .tree import ancestors, blocks, find_block, find_loop, get, put

THREAD_TAGS = tuple(f"{k}.{a}" for k in ("blockIdx", "threadIdx", "vthread") for a in "xyz")


def _zero_start(lp: For, what: str) -> None:
    if arith.as_int(lp.start) != 0:
        raise MlcError(f"{what}: loop {lp.var.name} must start at 0")


def guard_leaves(s: Stmt, cond: Expr) -> Stmt:
    """Wrap every block (and bare store) below `s` in `if cond` (TensorIR block predicates)."""

    class _Guard(StmtMutator):
        def visit_BlockStmt(self, x: BlockStmt) -> Stmt:
            return IfStmt(cond, x)

        visit_Store = visit_BlockStmt

        def visit_IfStmt(self, x: IfStmt) -> Stmt:
            if x.orelse is None and isinstance(x.then, BlockStmt | Store):
                return IfStmt(Bin("and", x.cond, cond), x.then, None, x.loc)
            return with_kids(x, tuple(self.visit(k) for k in kids(x)))

    return _Guard().visit(s)


def split(func: PrimFunc, loop: str, factors: Sequence[int | None]) -> tuple[PrimFunc, list[str]]:
    path = find_loop(func.body, loop)
    lp = get(func.body, path)
    assert isinstance(lp, For)
    _zero_start(lp, "split")
    if len(factors) < 2:
        raise MlcError("split: give at least two factors")
    if sum(f is None for f in factors) > 1:
        raise MlcError("split: at most one factor may be None (inferred)")
    if any(f is not None and int(f) <= 0 for f in factors):
        raise MlcError(f"split: factors must be positive, got {list(factors)}")
    known = math.prod(int(f) for f in factors if f is not None)
    exts: list[Expr] = []
    for f in factors:
        exts.append(simp((lp.extent + (known - 1)) // known) if f is None else Const(int(f)))
    total = simp(math.prod(exts[1:], start=exts[0]))  # type: ignore[arg-type]
    if None not in factors:
        n = arith.as_int(lp.extent)
        if n is None:
            raise MlcError(f"split: loop {loop} has symbolic extent {lp.extent!r}; leave one factor None")
        if known < n:
            raise MlcError(f"split: factors {list(factors)} multiply to {known} < extent {n} of loop {loop}")
    used = used_names(func)
    names = [fresh_name(f"{loop}_{i}", used) for i in range(len(factors))]
    vars_ = [Var(nm, lp.var.dtype) for nm in names]
    value: Expr = Const(0)
    for i, v in enumerate(vars_):
        stride = math.prod(exts[i + 1:], start=Const(1))  # type: ignore[arg-type]
        value = value + v * stride
    value = simp(value)
    body = subst(lp.body, {lp.var: value})
    if not arith.prove_equal(total, lp.extent):
        body = guard_leaves(body, Bin("lt", value, lp.extent))
    nest: Stmt = body
    for v, e in reversed(list(zip(vars_, exts))):
        nest = For(v, Const(0), e, nest, loc=lp.loc)
    return replace(func, body=put(func.body, path, nest)), names


def unguard(func: PrimFunc, block: str) -> PrimFunc:
    """Drop the `if` (a split's guard) that directly wraps `block`, so the block runs on the iterations
    past the split loop's extent too. Only for a block that writes nothing but `local` buffers (a
    register tile whose extra lanes no one reads back); the caller vouches that its reads stay in
    bounds there (conv_tiling: a weight packed with zero channels up to the split's multiple)."""
    path = find_block(func.body, block)
    b = get(func.body, path)
    assert isinstance(b, BlockStmt)
    if any(buf.scope != "local" for buf in block_writes(b)):
        raise MlcError(f"unguard: block {block} writes a buffer that is not local")
    if not path or not isinstance(up := get(func.body, path[:-1]), IfStmt) or up.orelse is not None:
        raise MlcError(f"unguard: block {block} has no guard")
    # each test of the guard is an iterator's domain test (`binding < extent`); that iterator's
    # domain widens to what its binding takes over the enclosing loops
    ranges = {lp.var: (lp.start, simp(lp.start + lp.extent - 1)) for _, lp in ancestors(func.body, path) if isinstance(lp, For)}
    iters = list(b.iters)
    for t in conjuncts(up.cond):
        hit = [k for k, iv in enumerate(iters) if isinstance(t, Bin) and t.op == "lt" and t.a == iv.binding
               and arith.prove_equal(t.b, iv.extent)]
        rng = bound(t.a, ranges) if hit else None
        hi = arith.as_int(rng[1]) if rng is not None else None
        if not hit or rng is None or hi is None or arith.as_int(rng[0]) != 0:
            raise MlcError(f"unguard: the guard of block {block} is not a domain test of its iterators")
        iters[hit[0]] = replace(iters[hit[0]], extent=Const(hi + 1, iters[hit[0]].extent.dtype))
    return replace(func, body=put(func.body, path[:-1], replace(b, iters=tuple(iters))))


def fuse(func: PrimFunc, loops: Sequence[str]) -> tuple[PrimFunc, str]:
    if not loops:
        raise MlcError("fuse: give at least one loop")
    path = find_loop(func.body, loops[0])
    chain = [get(func.body, path)]
    for nm in loops[1:]:
        nxt = chain[-1].body  # type: ignore[attr-defined]
        if not (isinstance(nxt, For) and nxt.var.name == nm):
            raise MlcError(f"fuse: loop {nm} is not directly nested in loop {chain[-1].var.name}")  # type: ignore[attr-defined]
        chain.append(nxt)
    fors: list[For] = chain  # type: ignore[assignment]
    own = {lp.var for lp in fors}
    for lp in fors:
        _zero_start(lp, "fuse")
        if free_vars(lp.extent) & own:
            raise MlcError(f"fuse: extent of loop {lp.var.name} depends on a fused loop")
    used = used_names(func)
    fv = Var(fresh_name("_".join(loops) + "_fused", used), fors[0].var.dtype)
    mapping: dict[Var, Expr] = {}
    stride: Expr = Const(1)
    for i in range(len(fors) - 1, -1, -1):
        e: Expr = fv if i == len(fors) - 1 else fv // stride
        mapping[fors[i].var] = e if i == 0 else e % fors[i].extent
        stride = simp(stride * fors[i].extent)
    body = subst(fors[-1].body, mapping)
    new = For(fv, Const(0), stride, body, loc=fors[0].loc)
    return replace(func, body=put(func.body, path, new)), fv.name


def reorder(func: PrimFunc, loops: Sequence[str]) -> PrimFunc:
    if len(set(loops)) != len(loops):
        raise MlcError(f"reorder: loops repeat in {list(loops)}")
    paths = {nm: find_loop(func.body, nm) for nm in loops}
    top = min(paths.values(), key=len)
    deepest = max(paths.values(), key=len)
    for p in paths.values():
        if deepest[: len(p)] != p:
            raise MlcError(f"reorder: loops {list(loops)} are not in one loop nest")
    chain: list[For] = [get(func.body, top)]  # type: ignore[list-item]
    while chain[-1].var.name != get(func.body, deepest).var.name:  # type: ignore[attr-defined]
        nxt = chain[-1].body
        if not isinstance(nxt, For):
            raise MlcError(f"reorder: loops between {chain[0].var.name} and the innermost given loop are not perfectly nested")
        chain.append(nxt)
    own = {lp.var for lp in chain}
    for lp in chain:
        if (free_vars(lp.extent) | free_vars(lp.start)) & own:
            raise MlcError(f"reorder: bounds of loop {lp.var.name} depend on another loop of the nest")
    given = iter([get(func.body, paths[nm]) for nm in loops])
    order = [next(given) if lp.var.name in paths else lp for lp in chain]
    nest: Stmt = chain[-1].body
    for lp in reversed(order):
        nest = replace(lp, body=nest)  # type: ignore[arg-type]
    return replace(func, body=put(func.body, top, nest))


def _check_spatial(func: PrimFunc, lp: For, what: str) -> None:
    for _, b in blocks(lp.body):
        for iv in b.iters:
            if iv.kind == "R" and lp.var in free_vars(iv.binding):
                raise MlcError(f"{what}: loop {lp.var.name} is bound to reduce iterator {iv.var.name} of block {b.name}")


def set_kind(func: PrimFunc, loop: str, kind: str, thread_tag: str = "") -> PrimFunc:
    path = find_loop(func.body, loop)
    lp = get(func.body, path)
    assert isinstance(lp, For)
    # threads of one block may share a reduction (cross-thread reduction); grid-level loops may not
    cross_thread = kind == "thread" and thread_tag.startswith("threadIdx")
    if kind in ("parallel", "vectorized", "thread") and not cross_thread:
        _check_spatial(func, lp, {"parallel": "parallel", "vectorized": "vectorize", "thread": "bind"}[kind])
    if kind == "thread" and thread_tag not in THREAD_TAGS:
        raise MlcError(f"bind: unknown thread tag {thread_tag!r}; expected one of {', '.join(THREAD_TAGS)}")
    if lp.kind == "thread" and kind != "thread":
        raise MlcError(f"loop {loop} is bound to {lp.thread_tag}")
    return replace(func, body=put(func.body, path, replace(lp, kind=kind, thread_tag=thread_tag)))
