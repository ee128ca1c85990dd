"""cache_read / cache_write (staging copies in another memory scope) and storage_align."""

from __future__ import annotations

from dataclasses import replace

from mlc.ir.diagnostics import MlcError
from mlc.ir.names import fresh_name
from mlc.ir.tir import Buffer, PrimFunc, Seq
from mlc.ir.tir_visit import map_buffers, used_names

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
