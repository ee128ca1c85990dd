"""Per-op lowerings to the te layer (ir/tir_builder.py), registered in the op registry.

Each lowering is `fn(b, args, attrs, out_type) -> Tensor | list[Tensor]`: `args` are Tensors (or a
scalar `Expr` for ScalarType operands), `out_type` the inferred result type. Elementwise and layout
ops return virtual tensors (inlined by consumers); reductions, matmul, conv and pools return pending
reductions; softmax/log_softmax/layer_norm chain several. Semantics follow ir/ops/reference.py.
"""

from __future__ import annotations

from typing import Any

from mlc.ir import arith
from mlc.ir.expr import Bin, Call, Const, Expr, Select, reduction_identity
from mlc.ir.ops.lowering import Args, Attrs, as_tensor, out_shape
from mlc.ir.ops.registry import register_lower
from mlc.ir.ops.shapes import norm_axis
from mlc.ir.tir_builder import (
    Builder,
    CannotLower,
    Index,
    Tensor,
    all_of,
    as_dtype,
    cst,
)
from mlc.ir.types import Type

# ---- elementwise -------------------------------------------------------------------------------


# ---- reductions --------------------------------------------------------------------------------


# ---- contractions ------------------------------------------------------------------------------


# ---- multi-stage normalisations ----------------------------------------------------------------


# ---- layout ------------------------------------------------------------------------------------


@register_lower("take")
def _take(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, ind = as_tensor(args[0]), as_tensor(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    k = ind.ndim

    def fn(i: Index) -> Expr:
        """ONNX: indices in [-n, n), negative ones from the end; any other index fails the run."""
        w, ok = _checked_index(ind.at(i[ax:ax + k]), x.shape[ax])
        return Select(ok, x.at(i[:ax] + (w,) + i[ax + k:]), cst(0, x.dtype))

    return b.compute(out_shape(t), x.dtype, fn, "take")


def _checked_index(raw: Expr, n: Expr) -> tuple[Expr, Expr]:
    """An index read from data: (wrapped index, in-range condition). Outside [-n, n) the run fails
    (`check_range`); the condition guards the load it addresses, so that never faults either."""
    v = Call("check_range", (as_dtype(raw, "i64"), Const(0) - n, n), "i64")
    w = Select(Bin("lt", v, Const(0)), v + n, v)
    return w, Bin("and", Bin("ge", w, Const(0)), Bin("lt", w, n))


@register_lower("topk_indices")
def _topk(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """rank[i] = #{m: x[m] beats x[i]} + #{m < i: x[m] == x[i]} (a permutation of 0..n-1), then
    out[j] = the i whose rank is j: two reductions over the axis, O(n^2) per line."""
    x = as_tensor(args[0])
    ax = norm_axis(attrs.get("axis", -1), x.ndim)
    beats = "gt" if attrs.get("largest", True) else "lt"

    def at(i: Index, m: Expr) -> Expr:
        return x.at(i[:ax] + (m,) + i[ax + 1:])

    def beaten_by(i: Index, r: Index) -> Expr:
        m, xi, xm = r[0], at(i, i[ax]), at(i, r[0])
        wins = Bin("or", Bin(beats, xm, xi), Bin("and", Bin("lt", m, i[ax]), Bin("eq", xm, xi)))
        return Select(wins, Const(1), Const(0))

    rank = b.reduce(x.shape, "i64", "add", (x.shape[ax],), beaten_by, "rank")
    n = x.shape[ax]
    return b.reduce(out_shape(t), "i64", "add", (n,),
                    lambda j, r: Select(Bin("eq", rank.at(j[:ax] + (r[0],) + j[ax + 1:]), j[ax]), r[0], Const(0)),
                    "topk")


@register_lower("scatter_elements")
def _scatter_elements(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Gather-style: out[p] combines data[p] with every updates[u] whose position (u, axis replaced by
    its index) is p; u runs over the indices' axis with p's other coordinates (which must lie inside
    the indices' shape). Under 'none' the last such u wins: a max-reduction finds it."""
    x, ind, upd = as_tensor(args[0]), as_tensor(args[1]), as_tensor(args[2])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    red = str(attrs.get("reduction", "none"))
    n = ind.shape[ax]

    def at(p: Index, u: Expr) -> Index:
        return p[:ax] + (u,) + p[ax + 1:]

    def inside(p: Index) -> Expr:
        conds = [Bin("lt", p[d], ind.shape[d]) for d in range(x.ndim) if d != ax]
        return all_of(*conds)

    def hits(p: Index, u: Expr) -> Expr:
        w, ok = _checked_index(ind.at(at(p, u)), x.shape[ax])
        return Bin("and", ok, Bin("eq", w, p[ax]))

    def guarded(p: Index, u: Expr, v: Expr, other: Expr) -> Expr:
        return Select(inside(p), Select(hits(p, u), v, other), other)

    if red == "none":
        last = b.reduce(x.shape, "i64", "max", (n,), lambda p, r: guarded(p, r[0], r[0], Const(-1)), "scatter_last")
        return b.compute(x.shape, x.dtype, lambda p: Select(
            Bin("ge", last.at(p), Const(0)), upd.at(at(p, Bin("max", last.at(p), Const(0)))), x.at(p)),
            "scatter_elements")
    comb = {"add": "add", "mul": "mul", "max": "max", "min": "min"}[red]
    ident = reduction_identity(comb, x.dtype)
    acc = b.reduce(x.shape, x.dtype, comb, (n,), lambda p, r: guarded(p, r[0], upd.at(at(p, r[0])), ident),
                   "scatter_" + red)
    join = {"add": lambda a, c: a + c, "mul": lambda a, c: a * c, "max": lambda a, c: Bin("max", a, c),
            "min": lambda a, c: Bin("min", a, c)}[red]
    return b.compute(x.shape, x.dtype, lambda p: join(x.at(p), acc.at(p)), "scatter_elements")


@register_lower("scatter_nd")
def _scatter_nd(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Gather-style, as scatter_elements: out[p] combines data[p] with every updates[u, p[k:]] whose
    indices[u] equal p[:k] (u over all of the indices' leading dims; the last one wins under 'none',
    found by a max-reduction of u's row-major number)."""
    x, ind, upd = as_tensor(args[0]), as_tensor(args[1]), as_tensor(args[2])
    red = str(attrs.get("reduction", "none"))
    k = arith.as_int(ind.shape[-1])
    assert k is not None
    lead = ind.shape[:-1]

    def hits(p: Index, u: Index) -> Expr:
        conds = []
        for j in range(k):
            w, ok = _checked_index(ind.at(tuple(u) + (Const(j),)), x.shape[j])
            conds += [ok, Bin("eq", w, p[j])]
        return all_of(*conds)

    if red == "none":
        def number(u: Index) -> Expr:
            out: Expr = Const(0)
            for d, e in zip(u, lead):
                out = out * e + d
            return out

        def unnumber(v: Expr) -> Index:
            out, rest = [], v
            for e in reversed(lead):
                out.append(Bin("floormod", rest, e))
                rest = Bin("floordiv", rest, e)
            return tuple(reversed(out))

        last = b.reduce(x.shape, "i64", "max", lead, lambda p, u: Select(hits(p, u), number(u), Const(-1)),
                        "scatter_last")
        return b.compute(x.shape, x.dtype, lambda p: Select(
            Bin("ge", last.at(p), Const(0)), upd.at(unnumber(Bin("max", last.at(p), Const(0))) + tuple(p[k:])),
            x.at(p)), "scatter_nd")
    ident = reduction_identity(red, x.dtype)
    acc = b.reduce(x.shape, x.dtype, red, lead,
                   lambda p, u: Select(hits(p, u), upd.at(tuple(u) + tuple(p[k:])), ident), "scatter_" + red)
    join = {"add": lambda a, c: a + c, "mul": lambda a, c: a * c, "max": lambda a, c: Bin("max", a, c),
            "min": lambda a, c: Bin("min", a, c)}[red]
    return b.compute(x.shape, x.dtype, lambda p: join(x.at(p), acc.at(p)), "scatter_nd")


@register_lower("gather_elements")
def _gather_elements(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, ind = as_tensor(args[0]), as_tensor(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)

    def fn(i: Index) -> Expr:
        w, ok = _checked_index(ind.at(i), x.shape[ax])
        return Select(ok, x.at(i[:ax] + (w,) + i[ax + 1:]), cst(0, x.dtype))

    return b.compute(out_shape(t), x.dtype, fn, "gather_elements")


@register_lower("gather_nd")
def _gather_nd(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, ind = as_tensor(args[0]), as_tensor(args[1])
    bd = int(attrs.get("batch_dims", 0))
    k = arith.as_int(ind.shape[-1])
    assert k is not None
    q = ind.ndim - 1  # output dims taken from indices (batch dims included)

    def fn(i: Index) -> Expr:
        pos, conds = [], []
        for j in range(k):
            w, ok = _checked_index(ind.at(i[:q] + (Const(j),)), x.shape[bd + j])
            pos.append(w)
            conds.append(ok)
        load = x.at(i[:bd] + tuple(pos) + i[q:])
        return Select(all_of(*conds), load, cst(0, x.dtype)) if conds else load

    return b.compute(out_shape(t), x.dtype, fn, "gather_nd")


def _scalar(x: Any) -> Expr:
    if isinstance(x, Tensor):
        if x.ndim:
            raise CannotLower("index operand must be a scalar")
        return as_dtype(x.at(()), "i64")
    return x


@register_lower("dynamic_slice")
def _dyn_slice(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, start = as_tensor(args[0]), _scalar(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    return b.compute(out_shape(t), x.dtype, lambda i: x.at(i[:ax] + (i[ax] + start,) + i[ax + 1:]), "dynamic_slice")


@register_lower("dynamic_update_slice")
def _dyn_update(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, u, start = as_tensor(args[0]), as_tensor(args[1]), _scalar(args[2])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)

    def fn(i: Index) -> Expr:
        rel = i[ax] - start
        inside = Bin("and", Bin("ge", rel, Const(0)), Bin("lt", rel, u.shape[ax]))
        return Select(inside, u.at(i[:ax] + (rel,) + i[ax + 1:]), x.at(i))

    return b.compute(out_shape(t), x.dtype, fn, "dynamic_update_slice")
