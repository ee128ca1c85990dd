"""compute_at / reverse_compute_at: move a block under a loop of its consumer (producer), computing
only the region needed there, found by interval analysis of the index expressions."""

from __future__ import annotations

from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Expr, Var, substitute
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, Buffer, For, PrimFunc, Stmt
from mlc.ir.tir_visit import (
    Interval,
    Path,
    block_reads,
    bound,
    clamp,
    loads_in,
    loop_ranges,
    seq,
    simp,
    stmt_exprs,
    stores_in,
    union,
    used_names,
    walk,
)

from .scope import (
    alone_at_root,
    check_between,
    check_per_iteration,
    is_param,
    loops_between,
    named_block,
    readers,
    top_index,
    tops,
    trivial_store_or_reduce,
    with_tops,
    writers,
)
from .tree import ancestors, find_loop, get, put


def _access_region(func: PrimFunc, loop_path: Path, bpath: Path, b: BlockStmt, idx: tuple[Expr, ...],
                   dims: tuple[Expr, ...]) -> list[Interval | None]:
    """Region of `idx` (in b's iterators) touched while the loops below `loop_path` run."""
    loops = loops_between(func, loop_path, bpath)
    ranges = loop_ranges(loops)
    vmap = {iv.var: iv.binding for iv in b.iters}
    return [bound(simp(substitute(i, vmap)), ranges) for i in idx]


def _region(func: PrimFunc, loop_path: Path, users: list[tuple[Path, BlockStmt]], buf: Buffer,
            loads: bool) -> list[Interval]:
    acc: list[Interval | None] | None = None
    for bp, b in users:
        if loads:
            exprs = stmt_exprs(b.body) + (stmt_exprs(b.init) if b.init is not None else [])
            idxs = [ld.indices for e in exprs for ld in loads_in(e) if ld.buffer.name == buf.name]
        else:
            idxs = [st.indices for st in stores_in(b.body) if st.buffer.name == buf.name]
        for idx in idxs:
            r = _access_region(func, loop_path, bp, b, idx, buf.shape)
            acc = r if acc is None else [union(x, y) for x, y in zip(acc, r)]
    assert acc is not None
    outer = loop_ranges([s for _, s in ancestors(func.body, loop_path) if isinstance(s, For)] + [get(func.body, loop_path)])
    return [clamp(r, d, outer) for r, d in zip(acc, buf.shape)]


def _regenerate(b: BlockStmt, ranges: dict[Var, Interval], used: set[str], loop_names: dict[Var, str]) -> Stmt:
    """A loop nest running block `b` with iterator v over ranges[v] (full domain when absent)."""
    loops: list[tuple[Var, Expr]] = []
    iters = []
    for iv in b.iters:
        lo, hi = ranges.get(iv.var, (Const(0), simp(iv.extent - 1)))
        ext = simp(hi - lo + 1)
        if arith.as_int(ext) == 1:
            iters.append(replace(iv, binding=lo))
            continue
        lv = Var(fresh_name(loop_names.get(iv.var, f"ax_{iv.var.name}"), used), iv.binding.dtype)
        loops.append((lv, ext))
        iters.append(replace(iv, binding=simp(lo + lv)))
    stmt: Stmt = replace(b, iters=tuple(iters))
    for lv, ext in reversed(loops):
        stmt = For(lv, Const(0), ext, stmt)
    return stmt


def _old_loop_names(b: BlockStmt) -> dict[Var, str]:
    """Regenerated loops reuse the names of the loops a block was bound to."""
    return {iv.var: iv.binding.name for iv in b.iters if isinstance(iv.binding, Var)}


def _move(func: PrimFunc, src_top: int, loop: str, nest: Stmt, at_end: bool) -> PrimFunc:
    ts = tops(func)
    del ts[src_top]
    func = with_tops(func, ts)
    lp_path = find_loop(func.body, loop)
    lp = get(func.body, lp_path)
    assert isinstance(lp, For)
    body = seq([lp.body, nest] if at_end else [nest, lp.body])
    return replace(func, body=put(func.body, lp_path, replace(lp, body=body)))


def compute_at(func: PrimFunc, block: str, loop: str) -> PrimFunc:
    bpath, b = named_block(func, block)
    st = trivial_store_or_reduce(b, "compute_at")
    buf = st.buffer
    if is_param(func, buf.name):
        raise MlcError(f"compute_at: block {block} writes the function output {buf.name}; only intermediates can move")
    ti = alone_at_root(func, bpath, b, "compute_at")
    lpath = find_loop(func.body, loop)
    if top_index(func, lpath) == ti:
        raise MlcError(f"compute_at: loop {loop} belongs to block {block} itself")
    if top_index(func, lpath) < ti:
        raise MlcError(f"compute_at: loop {loop} runs before block {block}")
    consumers = readers(func, buf.name)
    if not consumers:
        raise MlcError(f"compute_at: block {block} has no consumers")
    for p, c in consumers:
        if p[: len(lpath)] != lpath:
            raise MlcError(f"compute_at: consumer {c.name} of {buf.name} is not under loop {loop}")
    check_between(func, ti + 1, top_index(func, lpath), {c.name for _, c in consumers}, b, "compute_at")
    check_per_iteration(func, lpath, b, loop, "compute_at", {c.name for _, c in consumers})
    region = _region(func, lpath, consumers, buf, loads=True)
    ranges = {iv.var: r for iv, r in zip(b.iters, region)}
    used = used_names(func) - {lp.var.name for _, lp in walk(tops(func)[ti]) if isinstance(lp, For)}
    nest = _regenerate(b, ranges, used, _old_loop_names(b))
    return _move(func, ti, loop, nest, at_end=False)


def reverse_compute_at(func: PrimFunc, block: str, loop: str) -> PrimFunc:
    bpath, c = named_block(func, block)
    if any(iv.kind == "R" for iv in c.iters) or c.init is not None:
        raise MlcError(f"reverse_compute_at: block {block} is a reduction")
    ti = alone_at_root(func, bpath, c, "reverse_compute_at")
    lpath = find_loop(func.body, loop)
    if top_index(func, lpath) >= ti:
        raise MlcError(f"reverse_compute_at: loop {loop} does not run before block {block}")
    candidates = []
    for buf in block_reads(c):
        ws = writers(func, buf.name)
        if ws and any(p[: len(lpath)] == lpath for p, _ in ws):
            for p, w in ws:
                if p[: len(lpath)] != lpath:
                    raise MlcError(f"reverse_compute_at: producer {w.name} of {buf.name} is not under loop {loop}")
            candidates.append((buf, ws))
    if len(candidates) != 1:
        raise MlcError(f"reverse_compute_at: block {block} must consume exactly one buffer produced under loop {loop}, "
                       f"found {len(candidates)}")
    buf, producers = candidates[0]
    lds = [ld for e in stmt_exprs(c.body) for ld in loads_in(e) if ld.buffer.name == buf.name]
    idx = lds[0].indices
    ivars = {iv.var for iv in c.iters}
    if any(ld.indices != idx for ld in lds) or not all(isinstance(i, Var) and i in ivars for i in idx) \
            or len(set(idx)) != len(idx):
        raise MlcError(f"reverse_compute_at: block {block} must read {buf.name} at distinct iterators")
    check_between(func, top_index(func, lpath), ti - 1, {w.name for _, w in producers}, c, "reverse_compute_at")
    check_per_iteration(func, lpath, c, loop, "reverse_compute_at", {w.name for _, w in producers})
    region = _region(func, lpath, producers, buf, loads=False)
    ranges = {i: r for i, r in zip(idx, region)}  # type: ignore[misc]
    used = used_names(func) - {lp.var.name for _, lp in walk(tops(func)[ti]) if isinstance(lp, For)}
    nest = _regenerate(c, ranges, used, _old_loop_names(c))  # type: ignore[arg-type]
    return _move(func, ti, loop, nest, at_end=True)
