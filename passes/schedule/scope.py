"""The root scope and block bookkeeping shared by block primitives: statements at the root,
producers/consumers of a buffer, dependence checks for moving blocks, removal of a block."""

from __future__ import annotations

from dataclasses import replace

from mlc.ir.diagnostics import MlcError
from mlc.ir.tir import BlockStmt, Buffer, For, IfStmt, PrimFunc, Seq, Stmt, Store
from mlc.ir.tir_visit import Path, block_reads, block_writes, kids, reads_buffer, seq

from .tree import ancestors, blocks, find_block, get, put


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


def named_block(func: PrimFunc, name: str) -> tuple[Path, BlockStmt]:
    p = find_block(func.body, name)
    if not p:
        raise MlcError("schedule: the root block cannot be scheduled")
    b = get(func.body, p)
    assert isinstance(b, BlockStmt)
    return p, b


def block_buffer(func: PrimFunc, block: str, index: int, what: str, writes: bool,
                 allocated: bool = False) -> tuple[Path, BlockStmt, Buffer]:
    """Block `block` and its `index`-th written (or read) buffer, with the located errors every
    primitive taking a buffer index gives; `allocated`: the buffer must not be a parameter."""
    path, b = named_block(func, block)
    bufs = block_writes(b) if writes else block_reads(b)
    if not 0 <= index < len(bufs):
        raise MlcError(f"{what}: block {block} {'writes' if writes else 'reads'} {len(bufs)} buffers; "
                       f"index {index} is out of range")
    if allocated and is_param(func, bufs[index].name):
        raise MlcError(f"{what}: {bufs[index].name} is a function parameter, not an allocated buffer")
    return path, b, bufs[index]


def leaf_blocks(s: Stmt) -> list[tuple[Path, BlockStmt]]:
    """Blocks holding no other block (outer blocks from blockize only summarise their inner one)."""
    return [(p, b) for p, b in blocks(s) if not any(True for _ in blocks(b.body))]


def writers(func: PrimFunc, buf: str) -> list[tuple[Path, BlockStmt]]:
    return [(p, b) for p, b in leaf_blocks(func.body) if p and any(w.name == buf for w in block_writes(b))]


def readers(func: PrimFunc, buf: str) -> list[tuple[Path, BlockStmt]]:
    """Consumers of `buf`: blocks reading it without writing it (an accumulator is not consumed)."""
    return [(p, b) for p, b in leaf_blocks(func.body)
            if p and reads_buffer(b, buf) and all(w.name != buf for w in block_writes(b))]


def is_param(func: PrimFunc, buf: str) -> bool:
    return any(b.name == buf for b in func.params)


def alone_at_root(func: PrimFunc, path: Path, b: BlockStmt, what: str) -> int:
    ti = top_index(func, path)
    nest = tops(func)[ti]
    if [x.name for _, x in blocks(nest)] != [b.name]:
        raise MlcError(f"{what}: block {b.name} must be alone in a loop nest at the root scope")
    return ti


def loops_between(func: PrimFunc, outer: Path, inner: Path) -> list[For]:
    """For loops strictly below `outer` and above `inner`."""
    return [s for p, s in ancestors(func.body, inner) if len(p) > len(outer) and isinstance(s, For)]


def trivial_store(b: BlockStmt, what: str) -> Store:
    """The block's single store, which must write at exactly its spatial iterators."""
    if b.init is not None or any(iv.kind == "R" for iv in b.iters):
        raise MlcError(f"{what}: block {b.name} is a reduction")
    if not isinstance(b.body, Store):
        raise MlcError(f"{what}: block {b.name} must be a single store")
    st = b.body
    if list(st.indices) != [iv.var for iv in b.iters]:
        raise MlcError(f"{what}: block {b.name} must store at exactly its iterators, in order")
    return st


def check_between(func: PrimFunc, lo: int, hi: int, skip: set[str], b: BlockStmt, what: str) -> None:
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


def check_per_iteration(func: PrimFunc, lpath: Path, b: BlockStmt, loop: str, what: str,
                        partners: set[str]) -> None:
    """Under `loop`, `b` runs once per iteration, interleaved with the blocks already there. The
    region analysis covers only its traffic with `partners` (its consumers, or its producers); any
    other block there must not write what `b` reads, nor touch what `b` writes. (A softmax that divides
    its exp in place broke this: the sum reading the exp was recomputed per row after rows were divided.)"""
    reads = {x.name for x in block_reads(b)}
    writes = {x.name for x in block_writes(b)}
    for _, x in leaf_blocks(get(func.body, lpath)):
        if x.name == b.name:
            continue
        xw, xr = {y.name for y in block_writes(x)}, {y.name for y in block_reads(x)}
        clash = (xw & reads) | (xw & writes) | (xr & writes)
        if x.name in partners:
            clash -= writes if what == "compute_at" else reads
            if what == "reverse_compute_at":
                clash -= xw & writes  # an in-place consumer rewrites exactly the region just produced
        if clash:
            raise MlcError(f"{what}: block {b.name} would run once per iteration of loop {loop}, "
                           f"interleaved with block {x.name}, which also accesses {', '.join(sorted(clash))}")


def trivial_store_or_reduce(b: BlockStmt, what: str) -> Store:
    if not isinstance(b.body, Store):
        raise MlcError(f"{what}: block {b.name} must be a single store")
    st = b.body
    spatial = [iv.var for iv in b.iters if iv.kind == "S"]
    if list(st.indices) != spatial or b.iters[: len(spatial)] != tuple(iv for iv in b.iters if iv.kind == "S"):
        raise MlcError(f"{what}: block {b.name} must store at exactly its spatial iterators, in order")
    return st


def remove_block(func: PrimFunc, path: Path) -> PrimFunc:
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


def drop_alloc(func: PrimFunc, name: str) -> PrimFunc:
    for p, b in blocks(func.body):
        if any(x.name == name for x in b.alloc_buffers):
            nb = replace(b, alloc_buffers=tuple(x for x in b.alloc_buffers if x.name != name))
            return replace(func, body=put(func.body, p, nb))
    return func
