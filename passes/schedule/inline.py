"""compute_inline / reverse_compute_inline: fold an elementwise block into its consumers (producer)."""

from __future__ import annotations

from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Expr, Load, substitute
from mlc.ir.tir import PrimFunc, Store
from mlc.ir.tir_visit import block_reads, loads_in, map_exprs, rewrite, simp, stmt_exprs

from .scope import (
    check_between,
    drop_alloc,
    is_param,
    named_block,
    readers,
    remove_block,
    top_index,
    trivial_store,
    writers,
)
from .tree import find_block, put


def compute_inline(func: PrimFunc, block: str) -> PrimFunc:
    path, b = named_block(func, block)
    st = trivial_store(b, "compute_inline")
    buf = st.buffer
    if is_param(func, buf.name):
        raise MlcError(f"compute_inline: block {block} writes the function output {buf.name}")
    if len(writers(func, buf.name)) != 1:
        raise MlcError(f"compute_inline: {buf.name} has several writers")
    if any(ld.buffer.name == buf.name for ld in loads_in(st.value)):
        raise MlcError(f"compute_inline: block {block} reads its own output")
    consumers = readers(func, buf.name)
    if consumers:
        last = max(top_index(func, p) for p, _ in consumers)
        check_between(func, top_index(func, path) + 1, last, {c.name for _, c in consumers}, b, "compute_inline")
    ivars = [iv.var for iv in b.iters]

    def inline(e: Expr) -> Expr:
        def fn(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.buffer.name == buf.name:
                return substitute(st.value, dict(zip(ivars, x.indices)))
            return None

        return rewrite(e, fn)

    func = remove_block(func, path)
    func = replace(func, body=map_exprs(func.body, lambda e: _simp_loads(inline(e))))
    return drop_alloc(func, buf.name)


def _simp_loads(e: Expr) -> Expr:
    return rewrite(e, lambda x: Load(x.buffer, tuple(arith.simplify(i) for i in x.indices), x.loc) if isinstance(x, Load) else None)


def reverse_compute_inline(func: PrimFunc, block: str) -> PrimFunc:
    cpath, c = named_block(func, block)
    if any(iv.kind == "R" for iv in c.iters) or c.init is not None or not isinstance(c.body, Store):
        raise MlcError(f"reverse_compute_inline: block {block} must be a single spatial store")
    cands = [buf for buf in block_reads(c) if not is_param(func, buf.name) and len(writers(func, buf.name)) == 1]
    if len(cands) != 1:
        raise MlcError(f"reverse_compute_inline: block {block} must read exactly one intermediate with one producer, "
                       f"found {[x.name for x in cands]}")
    buf = cands[0]
    ppath, p = writers(func, buf.name)[0]
    pst = trivial_store(p, "reverse_compute_inline")
    if [r.name for _, r in readers(func, buf.name)] != [block]:
        raise MlcError(f"reverse_compute_inline: {buf.name} has consumers other than {block}")
    lds = [ld for e in stmt_exprs(c.body) for ld in loads_in(e) if ld.buffer.name == buf.name]
    idx = lds[0].indices
    civ = [iv.var for iv in c.iters]
    if any(ld.indices != idx for ld in lds) or sorted(map(repr, idx)) != sorted(map(repr, civ)) \
            or len(idx) != len(civ):
        raise MlcError(f"reverse_compute_inline: block {block} must read {buf.name} at exactly its iterators")
    check_between(func, top_index(func, ppath), top_index(func, cpath) - 1, {p.name}, c, "reverse_compute_inline")
    m = dict(zip(idx, pst.indices))  # consumer iterator -> producer index expression
    cst = c.body

    def fn(x: Expr) -> Expr | None:
        return pst.value if isinstance(x, Load) and x.buffer.name == buf.name else None

    value = rewrite(substitute(cst.value, m), fn)  # type: ignore[arg-type]
    new_store = Store(cst.buffer, tuple(simp(substitute(i, m)) for i in cst.indices), value, cst.loc)  # type: ignore[arg-type]
    func = replace(func, body=put(func.body, ppath, replace(p, body=new_store)))
    func = remove_block(func, find_block(func.body, block))
    return drop_alloc(func, buf.name)
