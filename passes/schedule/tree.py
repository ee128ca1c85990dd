"""Statement-tree plumbing for schedule primitives: paths, lookups, copy nests.

A path is a tuple of child indices (`ir.tir_visit.kids`) from the PrimFunc body (the root block).
Primitives locate blocks and loops by name, rewrite the tree functionally and re-resolve names
afterwards, so handles stay valid across primitives. The generic traversal (walk, map_exprs, subst,
access regions, bounds) is ir/tir_visit.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Load, Var
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, Buffer, For, IterVar, Stmt, Store
from mlc.ir.tir_visit import Path, kids, walk, with_kids


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


def make_copy_nest(used: set[str], name: str, src: Buffer, dst: Buffer) -> Stmt:
    """`for ax...: block name: dst[v...] = src[v...]` over the whole buffer."""
    loops = [Var(fresh_name(f"ax{d}", used)) for d in range(len(dst.shape))]
    iters = tuple(IterVar(Var(f"v{d}"), ext, "S", lv) for d, (ext, lv) in enumerate(zip(dst.shape, loops)))
    idx = tuple(iv.var for iv in iters)
    stmt: Stmt = BlockStmt(name, iters, Store(dst, idx, Load(src, idx)))
    for lv, ext in reversed(list(zip(loops, dst.shape))):
        stmt = For(lv, Const(0), ext, stmt)
    return stmt
