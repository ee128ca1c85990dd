"""blockize: wrap a tile (the nest under a loop) in an outer block, the unit tensorize matches."""

from __future__ import annotations

from dataclasses import replace

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Expr, Var, free_vars, substitute
from mlc.ir.names import fresh_name
from mlc.ir.tir import BlockStmt, For, IfStmt, IterVar, Let, PrimFunc, Seq, Stmt
from mlc.ir.tir_visit import bound, conjuncts, loop_ranges, simp, used_names

from .tree import ancestors, blocks, find_loop, get, put


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
        vo = Var(fresh_name(f"{iv.var.name}_o", used), iv.var.dtype)
        outer_iters.append(IterVar(vo, simp(iv.extent // e), iv.kind, simp(outer // e)))
    # the inner block keeps its loop-variable bindings, so later primitives may still move it freely
    new_lp = lp
    name = fresh_name(f"{b.name}_o", used)
    new: Stmt = BlockStmt(name, tuple(outer_iters), new_lp)
    # guards of imperfect splits that only test outer loops also guard the outer block
    conds = [c for g in chain if isinstance(g, IfStmt) for c in conjuncts(g.cond) if not free_vars(c) & ivars]
    for c in reversed(conds):
        new = IfStmt(c, new)
    return replace(func, body=put(func.body, lpath, new)), name
