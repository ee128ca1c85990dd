"""cache_read / cache_write (staging copies in another memory scope), reindex and storage_align."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Cast, Const, Expr, Load, Var, children, free_vars, substitute
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, Buffer, For, IterVar, PrimFunc, Seq, Stmt, Store
from mlc.ir.tir_visit import map_buffers, map_exprs, rewrite, stmt_exprs, used_names

from .scope import (
    block_buffer,
    readers,
    root,
    top_index,
    tops,
    with_tops,
    writers,
)
from .tree import make_copy_nest, put

SCOPES = ("global", "shared", "local")


def cache_read(func: PrimFunc, block: str, index: int, scope: str) -> tuple[PrimFunc, str]:
    _, _, buf = block_buffer(func, block, index, "cache_read", writes=False)
    if scope not in SCOPES:
        raise MlcError(f"cache_read: unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    used = used_names(func)
    new = Buffer(fresh_name(f"{buf.name}_{scope}", used), buf.shape, buf.dtype, scope)
    consumers = readers(func, buf.name)
    first = min(top_index(func, p) for p, _ in consumers)
    for p, w in writers(func, buf.name):
        if top_index(func, p) >= first:
            raise MlcError(f"cache_read: producer {w.name} of {buf.name} shares a loop nest with, or follows, its first consumer")
    body = func.body
    for p, c in consumers:
        body = put(body, p, map_buffers(c, lambda x: new if x.name == buf.name else x, stores=False))
    ts = tops(replace(func, body=body))
    ts.insert(first, make_copy_nest(used, new.name, buf, new))
    return with_tops(func, ts, root(func).alloc_buffers + (new,)), new.name


def load_iterators(b: BlockStmt, buf: str) -> tuple[Expr, list[IterVar]]:
    """What `b` reads `buf` through (one expression: the load inside all but the outermost of the casts
    around it, so amp's `f32(f16(x))` stages `f16(x)`) and the iterators it uses, in the block's order."""
    found: set[Expr] = set()

    def visit(e: Expr, casts: list[Cast]) -> None:
        if isinstance(e, Cast):
            visit(e.a, [*casts, e])
        elif isinstance(e, Load) and e.buffer.name == buf:
            staged: Expr = e
            for c in reversed(casts[1:]):
                staged = Cast(c.dtype, staged)
            found.add(staged)
        else:
            for x in children(e):
                visit(x, [])

    for e in stmt_exprs(b.body):
        visit(e, [])
    if len(found) != 1:
        raise MlcError(f"reindex: block {b.name} reads {buf} through {len(found)} different expressions; expected one")
    staged = found.pop()
    used_vars = free_vars(staged)
    its = [iv for iv in b.iters if iv.var in used_vars]
    if len(used_vars) != len(its):
        raise MlcError(f"reindex: the indices of {buf} in block {b.name} use variables that are not its iterators")
    return staged, its


def reindex(func: PrimFunc, block: str, index: int, order: Sequence[int] = ()) -> tuple[PrimFunc, str]:
    """Stage read buffer `index` of `block` in a new global buffer indexed by the block iterators its
    load uses (TVM's `reindex`), in the block's iterator order or in `order` (a permutation of those
    iterators' positions): `A[b, k // 64, i, k % 64]` read by a block over (b, i, j, k) becomes
    `A_re[b, i, k]`, copied by a new nest before the block's. A matmul whose operand went through a
    reshape or transpose thus loads it plainly, as a GEMM template needs; a narrowing cast inside the
    read (amp's `f32(f16(x))`) moves into the copy, so A_re holds f16. Refused when the load is
    already the staged form (nothing would change)."""
    path, b, buf = block_buffer(func, block, index, "reindex", writes=False)
    staged, its = load_iterators(b, buf.name)
    if order:
        if sorted(order) != list(range(len(its))):
            raise MlcError(f"reindex: order {list(order)} is not a permutation of the {len(its)} iterators "
                           f"{buf.name}'s load uses")
        its = [its[i] for i in order]
    if isinstance(staged, Load) and staged.indices == tuple(iv.var for iv in its):
        raise MlcError(f"reindex: block {block} already loads {buf.name} by its iterators in that order")
    ti = top_index(func, path)
    if any(top_index(func, p) >= ti for p, _ in writers(func, buf.name)):
        raise MlcError(f"reindex: {buf.name} is written in or after the loop nest of {block}")
    used = used_names(func)
    dtype = staged.dtype if isinstance(staged, Cast) else buf.dtype
    new = Buffer(fresh_name(f"{buf.name}_re", used), tuple(iv.extent for iv in its), dtype, "global")
    name = fresh_name(f"{buf.name}_reindex", used)
    loops = [Var(fresh_name(f"ax{d}", used), iv.var.dtype) for d, iv in enumerate(its)]
    cvars = {iv.var: Var(fresh_name(iv.var.name, used), iv.var.dtype) for iv in its}
    cit = tuple(IterVar(cvars[iv.var], iv.extent, "S", lv) for iv, lv in zip(its, loops))
    src = substitute(staged, cvars)
    nest: Stmt = BlockStmt(name, cit, Store(new, tuple(cvars[iv.var] for iv in its), src))
    for lv, iv in reversed(list(zip(loops, its))):
        nest = For(lv, Const(0), iv.extent, nest)
    plain = tuple(iv.var for iv in its)
    nb = map_exprs(b, lambda e: rewrite(e, lambda x: Load(new, plain, x.loc) if x == staged else None))
    assert isinstance(nb, BlockStmt)
    ts = tops(func)
    ts[ti] = put(ts[ti], path[2:] if isinstance(root(func).body, Seq) else path[1:], nb)
    ts.insert(ti, nest)
    return with_tops(func, ts, root(func).alloc_buffers + (new,)), name


def cache_write(func: PrimFunc, block: str, index: int, scope: str) -> tuple[PrimFunc, str]:
    path, b, buf = block_buffer(func, block, index, "cache_write", writes=True)
    if scope not in SCOPES:
        raise MlcError(f"cache_write: unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    if len(writers(func, buf.name)) > 1:
        raise MlcError(f"cache_write: {buf.name} has several writers")
    ti = top_index(func, path)
    for p, r in readers(func, buf.name):
        if r.name != block and top_index(func, p) == ti:
            raise MlcError(f"cache_write: consumer {r.name} shares a loop nest with {block}")
    used = used_names(func)
    new = Buffer(fresh_name(f"{buf.name}_{scope}", used), buf.shape, buf.dtype, scope)
    nb = map_buffers(b, lambda x: new if x.name == buf.name else x)
    ts = tops(func)
    ts[ti] = put(ts[ti], path[2:] if isinstance(root(func).body, Seq) else path[1:], nb)
    wb = fresh_name(f"{buf.name}_{scope}_wb", used)
    ts.insert(ti + 1, make_copy_nest(used, wb, new, buf))
    return with_tops(func, ts, root(func).alloc_buffers + (new,)), wb


def storage_align(func: PrimFunc, block: str, index: int, axis: int, factor: int, offset: int) -> PrimFunc:
    path, b, buf = block_buffer(func, block, index, "storage_align", writes=True, allocated=True)
    if not -len(buf.shape) <= axis < len(buf.shape):
        raise MlcError(f"storage_align: axis {axis} out of range for {buf.name} with {len(buf.shape)} dims")
    if factor <= 0 or not 0 <= offset < factor:
        raise MlcError(f"storage_align: need factor > 0 and 0 <= offset < factor, got {factor}, {offset}")
    ann = dict(b.annotations)
    prev = ann.get("storage_align", ())
    entry = (buf.name, axis % len(buf.shape), factor, offset)
    ann["storage_align"] = tuple(x for x in prev if x[:2] != entry[:2]) + (entry,)  # type: ignore[union-attr,index]
    return replace(func, body=put(func.body, path, replace(b, annotations=tuple(sorted(ann.items())))))
