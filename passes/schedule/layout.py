"""Data-layout primitives: `pack` (a re-tiled copy of an input) and `compact` (shrink an allocation
to the tile a loop touches, allocated under that loop).

`pack` is `cache_read` with a layout map restricted to split-and-permute of the axes (TVM's
`transform_layout` on a staged copy): B[k, j] packed with tiles (1, 32) and order (1, 0, 2) becomes
Bp[j // 32, k, j % 32], so the 32 columns a register tile reads at each k are contiguous instead of
a row stride apart. `compact` is what turns a whole-buffer `cache_write` accumulator into a
register tile: after `reverse_compute_at`, every access of C_local lies in an aligned 8 x 32 tile,
so it can be an 8 x 32 stack array indexed `[v_i % 8, v_j % 32]`, alive only inside the tile loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.dtype import is_float
from mlc.ir.expr import Bin, Const, Expr, Load, Select, Var, substitute
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, Buffer, For, IterVar, PrimFunc, Stmt, Store
from mlc.ir.tir_builder import all_of
from mlc.ir.tir_visit import (
    Path,
    bound,
    loads_in,
    loop_ranges,
    map_exprs,
    map_stores,
    rewrite,
    simp,
    stmt_exprs,
    stores_in,
    union,
    used_names,
)

from .scope import (
    block_buffer,
    leaf_blocks,
    loops_between,
    readers,
    root,
    top_index,
    tops,
    with_tops,
    writers,
)
from .tree import ancestors, blocks, get, put


# ---- pack -------------------------------------------------------------------------------------
def _packed_axes(buf: Buffer, tiles: Sequence[int], pad: bool = False) -> list[tuple[int, str, Expr]]:
    """(source dim, "o" | "i" | "", extent) per packed axis, before the permutation; with `pad`, a
    constant extent that a tile does not divide is rounded up to a multiple of it."""
    out: list[tuple[int, str, Expr]] = []
    for d, (ext, t) in enumerate(zip(buf.shape, tiles)):
        if t == 1:
            out.append((d, "", ext))
            continue
        if not arith.prove_equal(simp(Bin("floormod", ext, Const(t))), Const(0)):
            n = arith.as_int(ext)
            if not pad or n is None:
                raise MlcError(f"pack: axis {d} of {buf.name} (extent {arith.simplify(ext)}) is not a multiple of tile {t}")
            ext = Const(-(-n // t) * t)
        out += [(d, "o", simp(Bin("floordiv", ext, Const(t)))), (d, "i", Const(t))]
    return out


def _packed_index(idx: Sequence[Expr], axes: list[tuple[int, str, Expr]], tiles: Sequence[int],
                  order: Sequence[int]) -> tuple[Expr, ...]:
    def one(a: tuple[int, str, Expr]) -> Expr:
        d, part, _ = a
        if part == "":
            return idx[d]
        return simp(Bin("floordiv" if part == "o" else "floormod", idx[d], Const(tiles[d])))

    return tuple(one(axes[p]) for p in order)


def pack(func: PrimFunc, block: str, index: int, tiles: Sequence[int], order: Sequence[int],
         pad: bool = False) -> tuple[PrimFunc, str]:
    """Stage read buffer `index` of `block` into a packed copy (every reader switches to it). With
    `pad`, a constant axis that its tile does not divide is packed rounded up, the elements past its
    extent zero (a readers' index past the extent then reads a zero, not out of bounds)."""
    _, b, buf = block_buffer(func, block, index, "pack", writes=False)
    tiles = [int(t) for t in tiles]
    if len(tiles) != len(buf.shape) or any(t < 1 for t in tiles):
        raise MlcError(f"pack: need one tile >= 1 per axis of {buf.name} ({len(buf.shape)} axes), got {tiles}")
    axes = _packed_axes(buf, tiles, pad)
    order = [int(o) for o in order]
    if sorted(order) != list(range(len(axes))):
        raise MlcError(f"pack: order {order} is not a permutation of the {len(axes)} packed axes of {buf.name}")
    consumers = readers(func, buf.name)
    first = min(top_index(func, p) for p, _ in consumers)
    for p, w in writers(func, buf.name):
        if top_index(func, p) >= first:
            raise MlcError(f"pack: producer {w.name} of {buf.name} shares a loop nest with, or follows, its first consumer")
    used = used_names(func)
    name = fresh_name(f"{buf.name}_pack", used)
    used.add(name)
    new = Buffer(fresh_name(f"{buf.name}_packed", used), tuple(axes[p][2] for p in order), buf.dtype, "global")

    def redirect(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer.name == buf.name:
            return Load(new, _packed_index(e.indices, axes, tiles, order))
        return None

    body = func.body
    for p, c in consumers:
        body = put(body, p, map_exprs(c, lambda e: rewrite(e, redirect)))
    func = replace(func, body=body)
    loops = [Var(fresh_name(f"ax{n}", used)) for n in range(len(order))]
    for lv in loops:
        used.add(lv.name)
    ivs = tuple(IterVar(Var(f"v{n}"), axes[p][2], "S", lv) for n, (p, lv) in enumerate(zip(order, loops)))
    by_axis = {p: iv.var for p, iv in zip(order, ivs)}
    src: list[Expr] = []
    pos = 0
    for t in tiles:
        if t == 1:
            src.append(by_axis[pos])
            pos += 1
        else:
            src.append(simp(by_axis[pos] * Const(t) + by_axis[pos + 1]))
            pos += 2
    value: Expr = Load(buf, tuple(src))
    past = [Bin("lt", i, ext) for i, ext, t in zip(src, buf.shape, tiles)
            if t > 1 and not arith.prove_equal(simp(Bin("floormod", ext, Const(t))), Const(0))]
    if past:  # padded axes: zero past the extent
        value = Select(all_of(*past), value, Const(0.0 if is_float(buf.dtype) else 0, buf.dtype))
    stmt: Stmt = BlockStmt(name, ivs, Store(new, tuple(iv.var for iv in ivs), value))
    for lv, iv in reversed(list(zip(loops, ivs))):
        stmt = For(lv, Const(0), iv.extent, stmt)
    ts = tops(func)
    ts.insert(first, stmt)
    return with_tops(func, ts, root(func).alloc_buffers + (new,)), name


# ---- compact ----------------------------------------------------------------------------------
def _accesses(b: BlockStmt, name: str) -> list[tuple[Expr, ...]]:
    exprs = stmt_exprs(b.body) + (stmt_exprs(b.init) if b.init is not None else [])
    idx = [ld.indices for e in exprs for ld in loads_in(e) if ld.buffer.name == name]
    stores = stores_in(b.body) + (stores_in(b.init) if b.init is not None else [])
    return idx + [st.indices for st in stores if st.buffer.name == name]


def _lca_loop(func: PrimFunc, paths: list[Path]) -> Path | None:
    """The innermost loop enclosing every path (None: only the root encloses them all)."""
    common = paths[0]
    for p in paths[1:]:
        n = 0
        while n < min(len(common), len(p)) and common[n] == p[n]:
            n += 1
        common = common[:n]
    best: Path | None = None
    chain = ancestors(func.body, common)
    if not isinstance(get(func.body, common), BlockStmt):
        chain.append((common, get(func.body, common)))
    for p, s in chain:
        if isinstance(s, For):
            best = p
        elif isinstance(s, BlockStmt) and p:
            best = None  # allocations stay outside an inner block boundary
    return best


def _tile_extent(lo: Expr, hi: Expr) -> int | None:
    """A constant extent covering [lo, hi]: hi - lo + 1, or its bound when a tile over a symbolic
    axis is clipped at the end (hi = min(lo + 3, N - 1), joined by max with unclipped users)."""
    ext = arith.as_int(simp(hi - lo + 1))
    if ext is not None or not isinstance(hi, Bin) or hi.op not in ("min", "max"):
        return ext
    arms = [_tile_extent(lo, hi.a), _tile_extent(lo, hi.b)]
    known = [x for x in arms if x is not None]
    if hi.op == "min":
        return min(known) if known else None
    return max(known) if len(known) == 2 else None


def compact(func: PrimFunc, block: str, index: int, order: Sequence[int] = ()) -> tuple[PrimFunc, str]:
    """Allocate write buffer `index` of `block` under the innermost loop enclosing all its uses,
    shrunk to the (constant, aligned) tile they touch there, its axes permuted by `order` (default:
    kept; a convolution's tile puts the vector of output channels last, so lanes are contiguous);
    returns the new allocating block."""
    _, b, buf = block_buffer(func, block, index, "compact", writes=True, allocated=True)
    if all(x.name != buf.name for x in root(func).alloc_buffers):
        raise MlcError(f"compact: {buf.name} is not allocated at the root block")
    users = [(p, x) for p, x in leaf_blocks(func.body) if p and _accesses(x, buf.name)]
    for _, x in blocks(func.body):
        if x.name != "root" and any(True for _ in blocks(x.body)) and _accesses(x, buf.name):
            raise MlcError(f"compact: {buf.name} is accessed by the outer block {x.name}")
    lca = _lca_loop(func, [p for p, _ in users])
    if lca is None:
        raise MlcError(f"compact: no loop encloses every access of {buf.name}")
    lp = get(func.body, lca)
    assert isinstance(lp, For)
    region: list[tuple[Expr, Expr] | None] = [None] * len(buf.shape)
    for p, x in users:
        ranges = loop_ranges(loops_between(func, lca, p))
        vmap = {iv.var: iv.binding for iv in x.iters}
        for idx in _accesses(x, buf.name):
            for d, i in enumerate(idx):
                r = bound(simp(substitute(i, vmap)), ranges)
                if r is None:
                    raise MlcError(f"compact: cannot bound index {d} of {buf.name} in block {x.name}")
                cur = region[d]
                same = cur is not None and arith.prove_equal(cur[0], r[0]) and arith.prove_equal(cur[1], r[1])
                region[d] = r if cur is None or same else union(cur, r)
    shape: list[Expr] = []
    for d, r in enumerate(region):
        ext = None if r is None else _tile_extent(r[0], r[1])
        if ext is None or ext < 1:
            raise MlcError(f"compact: the region of {buf.name} along axis {d} has no constant extent")
        assert r is not None
        if not arith.prove_equal(simp(Bin("floormod", r[0], Const(ext))), Const(0)):
            raise MlcError(f"compact: the tile of {buf.name} along axis {d} is not aligned to its extent {ext}")
        shape.append(Const(ext))
    perm = [int(o) for o in order] if order else list(range(len(shape)))
    if sorted(perm) != list(range(len(shape))):
        raise MlcError(f"compact: order {perm} is not a permutation of the {len(shape)} axes of {buf.name}")
    used = used_names(func)
    new = Buffer(fresh_name(f"{buf.name}_tile", used), tuple(shape[p] for p in perm), buf.dtype, buf.scope)
    full_ext = [arith.as_int(x) for x in buf.shape]

    def idx_map(idx: Sequence[Expr]) -> tuple[Expr, ...]:
        tile = [i if full_ext[d] == arith.as_int(shape[d]) else simp(Bin("floormod", i, shape[d]))
                for d, i in enumerate(idx)]
        return tuple(tile[p] for p in perm)

    def fn(x: Expr) -> Expr | None:
        if isinstance(x, Load) and x.buffer.name == buf.name:
            return Load(new, idx_map(x.indices))
        return None

    body = map_exprs(lp.body, lambda e: rewrite(e, fn))
    body = map_stores(body, lambda st: replace(st, buffer=new, indices=idx_map(st.indices))
                       if st.buffer.name == buf.name else st)
    name = fresh_name(f"{buf.name}_tile_scope", used)
    func = replace(func, body=put(func.body, lca, replace(lp, body=BlockStmt(name, (), body, alloc_buffers=(new,)))))
    r0 = root(func)
    return with_tops(func, tops(func), tuple(x for x in r0.alloc_buffers if x.name != buf.name)), name


__all__ = ["compact", "pack"]
