"""Block primitives as pure functions PrimFunc -> PrimFunc: caching, compute location, inlining,
reduction decomposition and storage alignment.

Blocks are moved between loop nests only from (or to) the root scope, where each block sits
alone in its own loop nest; regions are computed by interval analysis of the index expressions.
"""

from __future__ import annotations

from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Expr, Load, Var, free_vars, substitute
from mlc.ir.tir import BlockStmt, Buffer, For, IfStmt, IterVar, Let, PrimFunc, Seq, Stmt, Store

from .tree import (
    Interval,
    Path,
    ancestors,
    block_reads,
    block_writes,
    blocks,
    bound,
    clamp,
    find_block,
    find_loop,
    fresh,
    get,
    kids,
    loads_in,
    loop_ranges,
    make_copy_nest,
    map_buffers,
    map_exprs,
    put,
    reads_buffer,
    rewrite,
    seq,
    simp,
    stmt_exprs,
    stores_in,
    union,
    used_names,
    walk,
)

SCOPES = ("global", "shared", "local")


# ---- root-scope helpers -------------------------------------------------------------------------
def root(func: PrimFunc) -> BlockStmt:
    assert isinstance(func.body, BlockStmt)
    return func.body


def tops(func: PrimFunc) -> list[Stmt]:
    b = root(func).body
    return list(b.stmts) if isinstance(b, Seq) else [b]


def top_index(func: PrimFunc, path: Path) -> int:
    return path[1] if isinstance(root(func).body, Seq) else 0


def with_tops(func: PrimFunc, stmts: list[Stmt], allocs: tuple[Buffer, ...] | None = None) -> PrimFunc:
    r = root(func)
    r = replace(r, body=seq(stmts), alloc_buffers=r.alloc_buffers if allocs is None else allocs)
    return replace(func, body=r)


def _block(func: PrimFunc, name: str) -> tuple[Path, BlockStmt]:
    p = find_block(func.body, name)
    if not p:
        raise MlcError("schedule: the root block cannot be scheduled")
    b = get(func.body, p)
    assert isinstance(b, BlockStmt)
    return p, b


def leaf_blocks(s: Stmt) -> list[tuple[Path, BlockStmt]]:
    """Blocks holding no other block (outer blocks from blockize only summarise their inner one)."""
    return [(p, b) for p, b in blocks(s) if not any(True for _ in blocks(b.body))]


def _writers(func: PrimFunc, buf: str) -> list[tuple[Path, BlockStmt]]:
    return [(p, b) for p, b in leaf_blocks(func.body) if p and any(w.name == buf for w in block_writes(b))]


def _readers(func: PrimFunc, buf: str) -> list[tuple[Path, BlockStmt]]:
    """Consumers of `buf`: blocks reading it without writing it (an accumulator is not consumed)."""
    return [(p, b) for p, b in leaf_blocks(func.body)
            if p and reads_buffer(b, buf) and all(w.name != buf for w in block_writes(b))]


def _is_param(func: PrimFunc, buf: str) -> bool:
    return any(b.name == buf for b in func.params)


def _alone_at_root(func: PrimFunc, path: Path, b: BlockStmt, what: str) -> int:
    ti = top_index(func, path)
    nest = tops(func)[ti]
    if [x.name for _, x in blocks(nest)] != [b.name]:
        raise MlcError(f"{what}: block {b.name} must be alone in a loop nest at the root scope")
    return ti


def _loops_between(func: PrimFunc, outer: Path, inner: Path) -> list[For]:
    """For loops strictly below `outer` and above `inner`."""
    return [s for p, s in ancestors(func.body, inner) if len(p) > len(outer) and isinstance(s, For)]


def _trivial_store(b: BlockStmt, what: str) -> Store:
    """The block's single store, which must write at exactly its spatial iterators."""
    if b.init is not None or any(iv.kind == "R" for iv in b.iters):
        raise MlcError(f"{what}: block {b.name} is a reduction")
    if not isinstance(b.body, Store):
        raise MlcError(f"{what}: block {b.name} must be a single store")
    st = b.body
    if list(st.indices) != [iv.var for iv in b.iters]:
        raise MlcError(f"{what}: block {b.name} must store at exactly its iterators, in order")
    return st


# ---- cache_read / cache_write -------------------------------------------------------------------
def cache_read(func: PrimFunc, block: str, index: int, scope: str) -> tuple[PrimFunc, str]:
    _, b = _block(func, block)
    reads = block_reads(b)
    if not 0 <= index < len(reads):
        raise MlcError(f"cache_read: block {block} reads {len(reads)} buffers; index {index} is out of range")
    if scope not in SCOPES:
        raise MlcError(f"cache_read: unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    buf = reads[index]
    used = used_names(func)
    new = Buffer(fresh(used, f"{buf.name}_{scope}"), buf.shape, buf.dtype, scope)
    consumers = _readers(func, buf.name)
    first = min(top_index(func, p) for p, _ in consumers)
    for p, w in _writers(func, buf.name):
        if top_index(func, p) >= first:
            raise MlcError(f"cache_read: producer {w.name} of {buf.name} shares a loop nest with, or follows, its first consumer")
    body = func.body
    for p, c in consumers:
        body = put(body, p, map_buffers(c, lambda x: new if x.name == buf.name else x, stores=False))
    ts = tops(replace(func, body=body))
    ts.insert(first, make_copy_nest(used, new.name, buf, new))
    return with_tops(func, ts, root(func).alloc_buffers + (new,)), new.name


def cache_write(func: PrimFunc, block: str, index: int, scope: str) -> tuple[PrimFunc, str]:
    path, b = _block(func, block)
    writes = block_writes(b)
    if not 0 <= index < len(writes):
        raise MlcError(f"cache_write: block {block} writes {len(writes)} buffers; index {index} is out of range")
    if scope not in SCOPES:
        raise MlcError(f"cache_write: unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    buf = writes[index]
    if len(_writers(func, buf.name)) > 1:
        raise MlcError(f"cache_write: {buf.name} has several writers")
    ti = top_index(func, path)
    for p, r in _readers(func, buf.name):
        if r.name != block and top_index(func, p) == ti:
            raise MlcError(f"cache_write: consumer {r.name} shares a loop nest with {block}")
    used = used_names(func)
    new = Buffer(fresh(used, f"{buf.name}_{scope}"), buf.shape, buf.dtype, scope)
    nb = map_buffers(b, lambda x: new if x.name == buf.name else x)
    ts = tops(func)
    ts[ti] = put(ts[ti], path[2:] if isinstance(root(func).body, Seq) else path[1:], nb)
    wb = fresh(used, f"{buf.name}_{scope}_wb")
    ts.insert(ti + 1, make_copy_nest(used, wb, new, buf))
    return with_tops(func, ts, root(func).alloc_buffers + (new,)), wb


# ---- compute_at / reverse_compute_at ------------------------------------------------------------
def _access_region(func: PrimFunc, loop_path: Path, bpath: Path, b: BlockStmt, idx: tuple[Expr, ...],
                   dims: tuple[Expr, ...]) -> list[Interval | None]:
    """Region of `idx` (in b's iterators) touched while the loops below `loop_path` run."""
    loops = _loops_between(func, loop_path, bpath)
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
        lv = Var(fresh(used, loop_names.get(iv.var, f"ax_{iv.var.name}")), iv.binding.dtype)
        loops.append((lv, ext))
        iters.append(replace(iv, binding=simp(lo + lv)))
    stmt: Stmt = replace(b, iters=tuple(iters))
    for lv, ext in reversed(loops):
        stmt = For(lv, Const(0), ext, stmt)
    return stmt


def _old_loop_names(func: PrimFunc, bpath: Path, b: BlockStmt) -> dict[Var, str]:
    return {iv.var: iv.binding.name for iv in b.iters if isinstance(iv.binding, Var)}


def _check_between(func: PrimFunc, lo: int, hi: int, skip: set[str], b: BlockStmt, what: str) -> None:
    """Moving `b` across root statements lo..hi must not reorder it with a dependent block."""
    reads = {x.name for x in block_reads(b)}
    writes = {x.name for x in block_writes(b)}
    for t in tops(func)[lo: hi + 1]:
        for _, x in leaf_blocks(t):
            if x.name in skip or x.name == b.name:
                continue
            xw = {y.name for y in block_writes(x)}
            xr = {y.name for y in block_reads(x)}
            clash = (xw & reads) | (xw & writes) | (xr & writes)
            if clash:
                raise MlcError(f"{what}: block {b.name} cannot move across block {x.name}, "
                               f"which also accesses {', '.join(sorted(clash))}")


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
    bpath, b = _block(func, block)
    st = _trivial_store_or_reduce(b, "compute_at")
    buf = st.buffer
    if _is_param(func, buf.name):
        raise MlcError(f"compute_at: block {block} writes the function output {buf.name}; only intermediates can move")
    ti = _alone_at_root(func, bpath, b, "compute_at")
    lpath = find_loop(func.body, loop)
    if top_index(func, lpath) == ti:
        raise MlcError(f"compute_at: loop {loop} belongs to block {block} itself")
    if top_index(func, lpath) < ti:
        raise MlcError(f"compute_at: loop {loop} runs before block {block}")
    consumers = _readers(func, buf.name)
    if not consumers:
        raise MlcError(f"compute_at: block {block} has no consumers")
    for p, c in consumers:
        if p[: len(lpath)] != lpath:
            raise MlcError(f"compute_at: consumer {c.name} of {buf.name} is not under loop {loop}")
    _check_between(func, ti + 1, top_index(func, lpath), {c.name for _, c in consumers}, b, "compute_at")
    region = _region(func, lpath, consumers, buf, loads=True)
    ranges = {iv.var: r for iv, r in zip(b.iters, region)}
    used = used_names(func) - {lp.var.name for _, lp in walk(tops(func)[ti]) if isinstance(lp, For)}
    nest = _regenerate(b, ranges, used, _old_loop_names(func, bpath, b))
    return _move(func, ti, loop, nest, at_end=False)


def _trivial_store_or_reduce(b: BlockStmt, what: str) -> Store:
    if not isinstance(b.body, Store):
        raise MlcError(f"{what}: block {b.name} must be a single store")
    st = b.body
    spatial = [iv.var for iv in b.iters if iv.kind == "S"]
    if list(st.indices) != spatial or b.iters[: len(spatial)] != tuple(iv for iv in b.iters if iv.kind == "S"):
        raise MlcError(f"{what}: block {b.name} must store at exactly its spatial iterators, in order")
    return st


def reverse_compute_at(func: PrimFunc, block: str, loop: str) -> PrimFunc:
    bpath, c = _block(func, block)
    if any(iv.kind == "R" for iv in c.iters) or c.init is not None:
        raise MlcError(f"reverse_compute_at: block {block} is a reduction")
    ti = _alone_at_root(func, bpath, c, "reverse_compute_at")
    lpath = find_loop(func.body, loop)
    if top_index(func, lpath) >= ti:
        raise MlcError(f"reverse_compute_at: loop {loop} does not run before block {block}")
    candidates = []
    for buf in block_reads(c):
        ws = _writers(func, buf.name)
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
    _check_between(func, top_index(func, lpath), ti - 1, {w.name for _, w in producers}, c, "reverse_compute_at")
    region = _region(func, lpath, producers, buf, loads=False)
    ranges = {i: r for i, r in zip(idx, region)}  # type: ignore[misc]
    used = used_names(func) - {lp.var.name for _, lp in walk(tops(func)[ti]) if isinstance(lp, For)}
    nest = _regenerate(c, ranges, used, _old_loop_names(func, bpath, c))  # type: ignore[arg-type]
    return _move(func, ti, loop, nest, at_end=True)


# ---- inlining ------------------------------------------------------------------------------------
def _remove_block(func: PrimFunc, path: Path) -> PrimFunc:
    """Delete a block and the loops/guards that held nothing else."""
    cut = path
    for p, s in reversed(ancestors(func.body, path)):
        if isinstance(s, For | IfStmt) and len(kids(s)) == 1 and p:
            cut = p
        else:
            break
    parent = get(func.body, cut[:-1])
    ks = list(kids(parent))
    del ks[cut[-1]]
    if isinstance(parent, Seq):
        new_parent = seq(ks) if ks else Seq(())
    elif not ks:
        new_parent = Seq(())
    else:
        raise MlcError("schedule: cannot remove the block from its parent")
    return replace(func, body=put(func.body, cut[:-1], new_parent))


def _drop_alloc(func: PrimFunc, name: str) -> PrimFunc:
    for p, b in blocks(func.body):
        if any(x.name == name for x in b.alloc_buffers):
            nb = replace(b, alloc_buffers=tuple(x for x in b.alloc_buffers if x.name != name))
            return replace(func, body=put(func.body, p, nb))
    return func


def compute_inline(func: PrimFunc, block: str) -> PrimFunc:
    path, b = _block(func, block)
    st = _trivial_store(b, "compute_inline")
    buf = st.buffer
    if _is_param(func, buf.name):
        raise MlcError(f"compute_inline: block {block} writes the function output {buf.name}")
    if len(_writers(func, buf.name)) != 1:
        raise MlcError(f"compute_inline: {buf.name} has several writers")
    if any(ld.buffer.name == buf.name for ld in loads_in(st.value)):
        raise MlcError(f"compute_inline: block {block} reads its own output")
    consumers = _readers(func, buf.name)
    if consumers:
        last = max(top_index(func, p) for p, _ in consumers)
        _check_between(func, top_index(func, path) + 1, last, {c.name for _, c in consumers}, b, "compute_inline")
    ivars = [iv.var for iv in b.iters]

    def inline(e: Expr) -> Expr:
        def fn(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.buffer.name == buf.name:
                return substitute(st.value, dict(zip(ivars, x.indices)))
            return None

        return rewrite(e, fn)

    func = _remove_block(func, path)
    func = replace(func, body=map_exprs(func.body, lambda e: _simp_loads(inline(e))))
    return _drop_alloc(func, buf.name)


def _simp_loads(e: Expr) -> Expr:
    return rewrite(e, lambda x: Load(x.buffer, tuple(arith.simplify(i) for i in x.indices), x.loc) if isinstance(x, Load) else None)


def reverse_compute_inline(func: PrimFunc, block: str) -> PrimFunc:
    cpath, c = _block(func, block)
    if any(iv.kind == "R" for iv in c.iters) or c.init is not None or not isinstance(c.body, Store):
        raise MlcError(f"reverse_compute_inline: block {block} must be a single spatial store")
    cands = [buf for buf in block_reads(c) if not _is_param(func, buf.name) and len(_writers(func, buf.name)) == 1]
    if len(cands) != 1:
        raise MlcError(f"reverse_compute_inline: block {block} must read exactly one intermediate with one producer, "
                       f"found {[x.name for x in cands]}")
    buf = cands[0]
    ppath, p = _writers(func, buf.name)[0]
    pst = _trivial_store(p, "reverse_compute_inline")
    if [r.name for _, r in _readers(func, buf.name)] != [block]:
        raise MlcError(f"reverse_compute_inline: {buf.name} has consumers other than {block}")
    lds = [ld for e in stmt_exprs(c.body) for ld in loads_in(e) if ld.buffer.name == buf.name]
    idx = lds[0].indices
    civ = [iv.var for iv in c.iters]
    if any(ld.indices != idx for ld in lds) or sorted(map(repr, idx)) != sorted(map(repr, civ)) \
            or len(idx) != len(civ):
        raise MlcError(f"reverse_compute_inline: block {block} must read {buf.name} at exactly its iterators")
    _check_between(func, top_index(func, ppath), top_index(func, cpath) - 1, {p.name}, c, "reverse_compute_inline")
    m = dict(zip(idx, pst.indices))  # consumer iterator -> producer index expression
    cst = c.body

    def fn(x: Expr) -> Expr | None:
        return pst.value if isinstance(x, Load) and x.buffer.name == buf.name else None

    value = rewrite(substitute(cst.value, m), fn)  # type: ignore[arg-type]
    new_store = Store(cst.buffer, tuple(simp(substitute(i, m)) for i in cst.indices), value, cst.loc)  # type: ignore[arg-type]
    func = replace(func, body=put(func.body, ppath, replace(p, body=new_store)))
    func = _remove_block(func, find_block(func.body, block))
    return _drop_alloc(func, buf.name)


# ---- reductions, storage -------------------------------------------------------------------------
def decompose_reduction(func: PrimFunc, block: str, loop: str) -> tuple[PrimFunc, str]:
    bpath, b = _block(func, block)
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
                keep.append((s, Var(fresh(used, f"{s.var.name}_init"), s.var.dtype)))
        elif isinstance(s, IfStmt):
            guards.append(s.cond)
    m: dict[Var, Expr] = {lp.var: nv for lp, nv in keep}
    iters = tuple(replace(iv, binding=simp(substitute(iv.binding, m))) for iv in b.iters if iv.kind == "S")
    init_name = fresh(used, f"{block}_init")
    stmt: Stmt = BlockStmt(init_name, iters, b.init, None, (), (), b.loc)
    conds = [c for g in guards for c in _conjuncts(g) if not (free_vars(c) & dropped)]
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


def _conjuncts(e: Expr) -> list[Expr]:
    if isinstance(e, Bin) and e.op == "and":
        return _conjuncts(e.a) + _conjuncts(e.b)
    return [e]


def storage_align(func: PrimFunc, block: str, index: int, axis: int, factor: int, offset: int) -> PrimFunc:
    path, b = _block(func, block)
    writes = block_writes(b)
    if not 0 <= index < len(writes):
        raise MlcError(f"storage_align: block {block} writes {len(writes)} buffers; index {index} is out of range")
    buf = writes[index]
    if _is_param(func, buf.name):
        raise MlcError(f"storage_align: {buf.name} is a function parameter, not an allocated buffer")
    if not -len(buf.shape) <= axis < len(buf.shape):
        raise MlcError(f"storage_align: axis {axis} out of range for {buf.name} with {len(buf.shape)} dims")
    if factor <= 0 or not 0 <= offset < factor:
        raise MlcError(f"storage_align: need factor > 0 and 0 <= offset < factor, got {factor}, {offset}")
    ann = dict(b.annotations)
    prev = ann.get("storage_align", ())
    entry = (buf.name, axis % len(buf.shape), factor, offset)
    ann["storage_align"] = tuple(x for x in prev if x[:2] != entry[:2]) + (entry,)  # type: ignore[union-attr,index]
    return replace(func, body=put(func.body, path, replace(b, annotations=tuple(sorted(ann.items())))))



def rfactor(func: PrimFunc, block: str, loop: str, factor_axis: int = 0) -> tuple[PrimFunc, str]:
    """Split a reduction over `loop`: block `<name>_rf` accumulates partial results per value of the
    loop into a new buffer, and the original block then reduces those partials."""
    bpath, b = _block(func, block)
    st = _trivial_store_or_reduce(b, "rfactor")
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
    rf_buf = Buffer(fresh(used, f"{st.buffer.name}_rf"), st.buffer.shape[:factor_axis] + (rf_loop.extent,)
                    + st.buffer.shape[factor_axis:], st.buffer.dtype, "global")
    new_iters = {lp.var: IterVar(Var(f"v_{lp.var.name}"), lp.extent, "S" if lp is rf_loop else "R",
                                 simp(lp.var - lp.start)) for lp in rloops}
    old_r = {iv.var: simp(substitute(iv.binding, {lp.var: new_iters[lp.var].var + lp.start for lp in rloops}))
             for iv in b.iters if iv.kind == "R"}
    vrf = new_iters[rf_loop.var].var
    rf_idx = tuple(st.indices[:factor_axis]) + (vrf,) + tuple(st.indices[factor_axis:])
    acc = Load(rf_buf, rf_idx)
    rf_block = BlockStmt(
        fresh(used, f"{block}_rf"),
        tuple(iv for iv in b.iters if iv.kind == "S") + tuple(new_iters[lp.var] for lp in rloops),
        Store(rf_buf, rf_idx, Bin(v.op, acc, substitute(v.b, old_r))),
        Store(rf_buf, rf_idx, b.init.value), (), b.annotations, b.loc)
    # the original block now reduces the partials
    loops_s = [Var(fresh(used, f"ax{d}")) for d in range(ndim)]
    lrf = Var(fresh(used, f"{rf_loop.var.name}_rf"))
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


def blockize(func: PrimFunc, loop: str) -> tuple[PrimFunc, str]:
    """Wrap the nest under `loop` (holding one block) in an outer block whose iterators are the outer
    parts of the inner block's bindings (binding = outer * E + inner, inner in [0, E)): the tile unit
    that tensorize and codegen see."""
    lpath = find_loop(func.body, loop)
    lp = get(func.body, lpath)
    assert isinstance(lp, For)
    inside = list(blocks(lp))
    if len(inside) != 1:
        raise MlcError(f"blockize: loop {loop} must hold exactly one block, found {[b.name for _, b in inside]}")
    rel, b = inside[0]
    bpath = lpath + rel
    chain = [s for p, s in ancestors(func.body, bpath) if len(p) >= len(lpath)]
    if any(isinstance(s, Seq | Let) for s in chain):
        raise MlcError(f"blockize: the loops under {loop} are not perfectly nested")
    inner_loops = [s for s in chain if isinstance(s, For)]
    ivars = {s.var for s in inner_loops}
    ranges = loop_ranges(inner_loops)
    zero: dict[Var, Expr] = {v: Const(0) for v in ivars}
    outer_iters = []
    used = used_names(func)
    for iv in b.iters:
        outer = simp(substitute(iv.binding, zero))
        inner = simp(iv.binding - outer)
        rng = bound(inner, ranges)
        if free_vars(outer) & ivars or not free_vars(inner) <= ivars or rng is None \
                or arith.as_int(rng[0]) != 0 or arith.as_int(rng[1]) is None:
            raise MlcError(f"blockize: binding of {iv.var.name} in block {b.name} does not split into "
                           f"an outer part and an inner part starting at 0")
        e = int(arith.as_int(rng[1])) + 1  # type: ignore[arg-type]
        if not arith.prove_equal((outer // e) * e, outer) or not arith.prove_equal((iv.extent // e) * e, iv.extent):
            raise MlcError(f"blockize: iterator {iv.var.name} of block {b.name} is not tiled evenly by {e}")
        vo = Var(fresh(used, f"{iv.var.name}_o"), iv.var.dtype)
        outer_iters.append(IterVar(vo, simp(iv.extent // e), iv.kind, simp(outer // e)))
    # the inner block keeps its loop-variable bindings, so later primitives may still move it freely
    new_lp = lp
    name = fresh(used, f"{b.name}_o")
    new: Stmt = BlockStmt(name, tuple(outer_iters), new_lp)
    # guards of imperfect splits that only test outer loops also guard the outer block
    conds = [c for g in chain if isinstance(g, IfStmt) for c in _conjuncts(g.cond) if not free_vars(c) & ivars]
    for c in reversed(conds):
        new = IfStmt(c, new)
    return replace(func, body=put(func.body, lpath, new)), name
