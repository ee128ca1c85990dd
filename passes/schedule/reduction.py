"""Reduction primitives: decompose_reduction (split off the init) and rfactor (partial reductions)."""

from __future__ import annotations

from dataclasses import replace

from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Expr, Load, Var, free_vars, substitute
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, Buffer, For, IfStmt, IterVar, PrimFunc, Seq, Stmt, Store
from mlc.ir.tir_visit import block_reads, block_writes, conjuncts, loads_in, simp, used_names

from .scope import (
    named_block,
    root,
    top_index,
    tops,
    trivial_store_or_reduce,
    with_tops,
)
from .tree import ancestors, blocks, find_loop, get, put


def decompose_reduction(func: PrimFunc, block: str, loop: str) -> tuple[PrimFunc, str]:
    bpath, b = named_block(func, block)
    if b.init is None:
        raise MlcError(f"decompose_reduction: block {block} has no init")
    lpath = find_loop(func.body, loop)
    if bpath[: len(lpath)] != lpath:
        raise MlcError(f"decompose_reduction: loop {loop} is not an ancestor of block {block}")
    rvars = set().union(*(free_vars(iv.binding) for iv in b.iters if iv.kind == "R"))
    svars = set().union(*(free_vars(iv.binding) for iv in b.iters if iv.kind == "S"))
    chain = [(p, s) for p, s in ancestors(func.body, bpath) if len(p) >= len(lpath)]
    outer = [s for p, s in ancestors(func.body, lpath) if isinstance(s, For)]
    for s in outer:
        if s.var in rvars:
            raise MlcError(f"decompose_reduction: loop {loop} is inside reduction loop {s.var.name}")
    used = used_names(func)
    keep: list[tuple[For, Var]] = []
    dropped: set[Var] = set()
    guards: list[Expr] = []
    for _, s in chain:
        if isinstance(s, For):
            if s.var in rvars:
                if s.var in svars:
                    raise MlcError(f"decompose_reduction: loop {s.var.name} mixes spatial and reduce iterators")
                dropped.add(s.var)
            else:
                keep.append((s, Var(fresh_name(f"{s.var.name}_init", used), s.var.dtype)))
        elif isinstance(s, IfStmt):
            guards.append(s.cond)
    m: dict[Var, Expr] = {lp.var: nv for lp, nv in keep}
    iters = tuple(replace(iv, binding=simp(substitute(iv.binding, m))) for iv in b.iters if iv.kind == "S")
    init_name = fresh_name(f"{block}_init", used)
    stmt: Stmt = BlockStmt(init_name, iters, b.init, None, (), (), b.loc)
    conds = [c for g in guards for c in conjuncts(g) if not (free_vars(c) & dropped)]
    for c in reversed(conds):
        stmt = IfStmt(simp(substitute(c, m)), stmt)
    for lp, nv in reversed(keep):
        stmt = For(nv, subst_expr(lp.start, m), subst_expr(lp.extent, m), stmt, lp.kind, lp.thread_tag)
    func = replace(func, body=put(func.body, bpath, replace(b, init=None)))
    parent = get(func.body, lpath[:-1])
    if isinstance(parent, Seq):
        ks = list(parent.stmts)
        ks.insert(lpath[-1], stmt)
        return replace(func, body=put(func.body, lpath[:-1], Seq(tuple(ks)))), init_name
    lp = get(func.body, lpath)
    return replace(func, body=put(func.body, lpath, Seq((stmt, lp)))), init_name


def subst_expr(e: Expr, m: dict[Var, Expr]) -> Expr:
    return simp(substitute(e, m))


def rfactor(func: PrimFunc, block: str, loop: str, factor_axis: int = 0) -> tuple[PrimFunc, str]:
    """Split a reduction over `loop`: block `<name>_rf` accumulates partial results per value of the
    loop into a new buffer, and the original block then reduces those partials."""
    bpath, b = named_block(func, block)
    st = trivial_store_or_reduce(b, "rfactor")
    v = st.value
    if b.init is None or not isinstance(b.init, Store) or not isinstance(v, Bin) or v.op not in ("add", "mul", "max", "min") \
            or v.a != Load(st.buffer, st.indices) or any(ld.buffer.name == st.buffer.name for ld in loads_in(v.b)):
        raise MlcError(f"rfactor: block {block} must be `X[i] = X[i] op f(...)` with an init")
    lpath = find_loop(func.body, loop)
    if bpath[: len(lpath)] != lpath:
        raise MlcError(f"rfactor: loop {loop} is not an ancestor of block {block}")
    rvars = set().union(*(free_vars(iv.binding) for iv in b.iters if iv.kind == "R"))
    svars = set().union(*(free_vars(iv.binding) for iv in b.iters if iv.kind == "S"))
    rloops = [s for _, s in ancestors(func.body, bpath) if isinstance(s, For) and s.var in rvars]
    rf_loop = get(func.body, lpath)
    assert isinstance(rf_loop, For)
    if rf_loop.var not in rvars or rf_loop.var in svars:
        raise MlcError(f"rfactor: loop {loop} must be bound to reduce iterators only")
    for lp in rloops:
        if (free_vars(lp.extent) | free_vars(lp.start)) & rvars:
            raise MlcError(f"rfactor: bounds of loop {lp.var.name} depend on another reduction loop")
    ti = top_index(func, bpath)
    for _, x in blocks(tops(func)[ti]):
        if x.name != block and st.buffer.name in {y.name for y in block_reads(x) + block_writes(x)}:
            raise MlcError(f"rfactor: block {block} shares a loop nest with {x.name}, which accesses {st.buffer.name}")
    ndim = len(st.indices)
    if not 0 <= factor_axis <= ndim:
        raise MlcError(f"rfactor: factor_axis {factor_axis} out of range [0, {ndim}]")
    used = used_names(func)
    rf_buf = Buffer(fresh_name(f"{st.buffer.name}_rf", used), st.buffer.shape[:factor_axis] + (rf_loop.extent,)
                    + st.buffer.shape[factor_axis:], st.buffer.dtype, "global")
    new_iters = {lp.var: IterVar(Var(f"v_{lp.var.name}"), lp.extent, "S" if lp is rf_loop else "R",
                                 simp(lp.var - lp.start)) for lp in rloops}
    old_r = {iv.var: simp(substitute(iv.binding, {lp.var: new_iters[lp.var].var + lp.start for lp in rloops}))
             for iv in b.iters if iv.kind == "R"}
    vrf = new_iters[rf_loop.var].var
    rf_idx = tuple(st.indices[:factor_axis]) + (vrf,) + tuple(st.indices[factor_axis:])
    acc = Load(rf_buf, rf_idx)
    rf_block = BlockStmt(
        fresh_name(f"{block}_rf", used),
        tuple(iv for iv in b.iters if iv.kind == "S") + tuple(new_iters[lp.var] for lp in rloops),
        Store(rf_buf, rf_idx, Bin(v.op, acc, substitute(v.b, old_r))),
        Store(rf_buf, rf_idx, b.init.value), (), b.annotations, b.loc)
    # the original block now reduces the partials
    loops_s = [Var(fresh_name(f"ax{d}", used)) for d in range(ndim)]
    lrf = Var(fresh_name(f"{rf_loop.var.name}_rf", used))
    wb_iters = tuple(replace(iv, binding=lv) for iv, lv in zip(b.iters, loops_s)) \
        + (IterVar(Var(f"v_{rf_loop.var.name}"), rf_loop.extent, "R", lrf),)
    wb_idx = tuple(st.indices[:factor_axis]) + (wb_iters[-1].var,) + tuple(st.indices[factor_axis:])
    wb: Stmt = BlockStmt(block, wb_iters, Store(st.buffer, st.indices, Bin(v.op, v.a, Load(rf_buf, wb_idx))),
                         b.init, (), (), b.loc)
    for lv, ext in reversed(list(zip(loops_s + [lrf], [iv.extent for iv in wb_iters]))):
        wb = For(lv, Const(0), ext, wb)
    func = replace(func, body=put(func.body, bpath, rf_block))
    ts = tops(func)
    ts.insert(ti + 1, wb)
    return with_tops(func, ts, root(func).alloc_buffers + (rf_buf,)), rf_block.name
