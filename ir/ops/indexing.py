"""Indexing ops: a tensor addressed by the values of another. Gathers (take, gather_elements,
gather_nd), scatters (scatter_elements, scatter_nd), topk_indices, one_hot.

Indices read from data are checked at run time (outside [-n, n) fails the run, as the reference
interpreter does). Everything about each op sits together: declaration, shape rule, numpy reference,
lowering to a tensor program, ONNX import handler(s) and the gradient slot (None until autodiff fills
it). one_hot is the worked example of docs/adding-an-op.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import arith
from ..arith import as_int
from ..diagnostics import Loc, MlcError
from ..expr import Bin, Call, Cast, Const, Expr, Select, reduction_identity
from ..graph import Value
from ..tir_builder import Builder, Index, Tensor, all_of, as_dtype, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_shape
from .reference import Env, ref
from .registry import (
    REQUIRED,
    GradCall,
    GradContext,
    ImportContext,
    OnnxNode,
    define,
    register_grad,
    register_infer,
    register_lower,
    register_no_grad,
    register_onnx,
    value_dtype,
    value_shape,
)
from .shapes import (
    data_and_indices,
    dims_str,
    norm_axis,
    shape_of,
    tensor,
)

# ---- take (ONNX Gather folds shape values: frontend/onnx_layout.py) ---------------------------------------------
define("take", "injective", 2, {"axis": 0}, "gather: data[..., indices, ...] along axis (negative indices wrap)")


@register_infer("take")
def _take_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t, idx = data_and_indices(args, "take", loc)
    s = shape_of(t, loc)
    ax = norm_axis(attrs.get("axis", 0), len(s), loc)
    return TensorType(s[:ax] + shape_of(idx, loc) + s[ax + 1:], t.dtype)


def _checked(ind: np.ndarray, n: int, op: str) -> np.ndarray:
    """Indices in [-n, n), negative ones wrapped, as the compiled kernels check them (check_range)."""
    ind = np.asarray(ind).astype(np.int64)
    bad = (ind < -n) | (ind >= n)
    if np.any(bad):
        raise MlcError(f"{op}: index {int(ind[bad].flat[0])} out of range [{-n}, {n})")
    return np.where(ind < 0, ind + n, ind)


@ref("take")
def _take_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, ind, ax = args[0], np.asarray(args[1]).astype(np.int64), int(attrs.get("axis", 0))
    n = np.shape(x)[ax]
    bad = (ind < -n) | (ind >= n)
    if np.any(bad):  # as the compiled kernel reports it (check_range)
        raise MlcError(f"take: index {int(ind[bad].flat[0])} out of range [{-n}, {n})")
    return np.take(x, ind, axis=ax)


def _checked_index(raw: Expr, n: Expr) -> tuple[Expr, Expr]:
    """An index read from data: (wrapped index, in-range condition). Outside [-n, n) the run fails
    (`check_range`); the condition guards the load it addresses, so that never faults either."""
    v = Call("check_range", (as_dtype(raw, "i64"), Const(0) - n, n), "i64")
    w = Select(Bin("lt", v, Const(0)), v + n, v)
    return w, Bin("and", Bin("ge", w, Const(0)), Bin("lt", w, n))


@register_lower("take")
def _take_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, ind = as_tensor(args[0]), as_tensor(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    k = ind.ndim

    def fn(i: Index) -> Expr:
        """ONNX: indices in [-n, n), negative ones from the end; any other index fails the run."""
        w, ok = _checked_index(ind.at(i[ax:ax + k]), x.shape[ax])
        return Select(ok, x.at(i[:ax] + (w,) + i[ax + k:]), cst(0, x.dtype))

    return b.compute(out_shape(t), x.dtype, fn, "take")


# ---- gather_elements, gather_nd --------------------------------------------------------------
define("gather_elements", "injective", 2, {"axis": 0},
       "out[i] = data[i with axis replaced by indices[i]] (ONNX GatherElements; negative indices wrap)")


@register_infer("gather_elements")
def _gather_elements_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t, idx = data_and_indices(args, "gather_elements", loc)
    s, si = shape_of(t, loc), shape_of(idx, loc, "indices")
    if len(s) != len(si):
        raise MlcError(f"gather_elements: indices have rank {len(si)}, data {len(s)}", loc)
    norm_axis(attrs.get("axis", 0), len(s), loc)
    return TensorType(si, t.dtype)


@ref("gather_elements")
def _gather_elements_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = np.asarray(args[0])
    ax = int(attrs.get("axis", 0)) % x.ndim
    return np.take_along_axis(x, _checked(args[1], x.shape[ax], "gather_elements"), axis=ax)


@register_lower("gather_elements")
def _gather_elements_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, ind = as_tensor(args[0]), as_tensor(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)

    def fn(i: Index) -> Expr:
        w, ok = _checked_index(ind.at(i), x.shape[ax])
        return Select(ok, x.at(i[:ax] + (w,) + i[ax + 1:]), cst(0, x.dtype))

    return b.compute(out_shape(t), x.dtype, fn, "gather_elements")


@register_onnx("GatherElements")
def _gather_elements_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("gather_elements", [ctx.input(0), ctx.input(1)], {"axis": int(attrs.get("axis", 0))},
                        node.output[0]))


define("gather_nd", "injective", 2, {"batch_dims": 0},
       "ONNX GatherND: the last axis of indices addresses leading axes of data after batch_dims")


@register_infer("gather_nd")
def _gather_nd_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t, idx = data_and_indices(args, "gather_nd", loc)
    s, si = shape_of(t, loc), shape_of(idx, loc, "indices")
    b = int(attrs.get("batch_dims", 0))
    k = as_int(si[-1]) if si else None
    if k is None or not 0 <= b < min(len(s), len(si)) or b + k > len(s):
        raise MlcError(f"gather_nd: indices ({dims_str(si)}) with batch_dims {b} cannot address "
                       f"data ({dims_str(s)}); the last indices dim must be a constant", loc)
    return TensorType(si[:-1] + s[b + k:], t.dtype)


@ref("gather_nd")
def _gather_nd_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, ind, b = np.asarray(args[0]), np.asarray(args[1]).astype(np.int64), int(attrs.get("batch_dims", 0))
    k = ind.shape[-1]
    cols = [_checked(ind[..., j], x.shape[b + j], "gather_nd") for j in range(k)]
    batch = np.indices(ind.shape[:b]) if b else ()
    grids = tuple(g.reshape(g.shape + (1,) * (ind.ndim - 1 - b)) for g in batch)
    return x[grids + tuple(cols)]


@register_lower("gather_nd")
def _gather_nd_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
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


@register_onnx("GatherND")
def _gather_nd_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("gather_nd", [ctx.input(0), ctx.input(1)], {"batch_dims": int(attrs.get("batch_dims", 0))},
                        node.output[0]))


# ---- scatter_elements, scatter_nd ------------------------------------------------------------
define("scatter_elements", "opaque", 3, {"axis": 0, "reduction": "none"},
       "data with updates[u] written (or combined: add/mul/max/min) at u with axis replaced by indices[u]; "
       "ONNX ScatterElements (duplicates under 'none': the last one wins)")


@register_infer("scatter_elements")
def _scatter_elements_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t, idx = data_and_indices(args, "scatter_elements", loc)
    upd = tensor(args[2], loc, "updates")
    s, si, su = shape_of(t, loc), shape_of(idx, loc, "indices"), shape_of(upd, loc, "updates")
    if len(si) != len(s) or len(su) != len(si) or upd.dtype != t.dtype:
        raise MlcError(f"scatter_elements: data ({dims_str(s)}), indices ({dims_str(si)}) and updates "
                       f"({dims_str(su)}) need one rank, updates the data's dtype", loc)
    norm_axis(attrs.get("axis", 0), len(s), loc)
    if attrs.get("reduction", "none") not in ("none", "add", "mul", "max", "min"):
        raise MlcError(f"scatter_elements: unknown reduction {attrs.get('reduction')!r}", loc)
    return TensorType(t.shape, t.dtype)


@ref("scatter_elements")
def _scatter_elements_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, upd = np.array(args[0], copy=True), np.asarray(args[2])
    ax = int(attrs.get("axis", 0)) % x.ndim
    ind = _checked(args[1], x.shape[ax], "scatter_elements")
    red = attrs.get("reduction", "none")
    for u in np.ndindex(*ind.shape):  # in order: under 'none' the last duplicate wins
        p = u[:ax] + (int(ind[u]),) + u[ax + 1:]
        v = upd[u]
        x[p] = v if red == "none" else {"add": x[p] + v, "mul": x[p] * v, "max": max(x[p], v),
                                        "min": min(x[p], v)}[red]
    return x


@register_lower("scatter_elements")
def _scatter_elements_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
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


@register_onnx("ScatterElements", "Scatter")
def _scatter_elements_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    flags = {"axis": int(attrs.get("axis", 0)), "reduction": str(attrs.get("reduction", "none"))}
    ctx.out(0, ctx.emit("scatter_elements", [ctx.input(0), ctx.input(1), ctx.input(2)], flags, node.output[0]))


define("scatter_nd", "opaque", 3, {"reduction": "none"},
       "ONNX ScatterND: updates[u] written (or combined) at the data position indices[u] (a prefix of "
       "the data's axes); duplicates under 'none': the last one wins")


@register_infer("scatter_nd")
def _scatter_nd_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t, idx = data_and_indices(args, "scatter_nd", loc)
    upd = tensor(args[2], loc, "updates")
    s, si, su = shape_of(t, loc), shape_of(idx, loc, "indices"), shape_of(upd, loc, "updates")
    k = as_int(si[-1]) if si else None
    if k is None or k > len(s) or len(su) != len(si) - 1 + len(s) - k or upd.dtype != t.dtype:
        raise MlcError(f"scatter_nd: indices ({dims_str(si)}) and updates ({dims_str(su)}) do not fit data "
                       f"({dims_str(s)}); the last indices dim must be a constant", loc)
    if attrs.get("reduction", "none") not in ("none", "add", "mul", "max", "min"):
        raise MlcError(f"scatter_nd: unknown reduction {attrs.get('reduction')!r}", loc)
    return TensorType(t.shape, t.dtype)


@ref("scatter_nd")
def _scatter_nd_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, ind, upd = np.array(args[0], copy=True), np.asarray(args[1]).astype(np.int64), np.asarray(args[2])
    k, red = ind.shape[-1], attrs.get("reduction", "none")
    cols = [_checked(ind[..., j], x.shape[j], "scatter_nd") for j in range(k)]
    for u in np.ndindex(*ind.shape[:-1]):  # in order: under 'none' the last duplicate wins
        p = tuple(int(c[u]) for c in cols)
        v = upd[u]
        x[p] = v if red == "none" else {"add": x[p] + v, "mul": x[p] * v, "max": np.maximum(x[p], v),
                                        "min": np.minimum(x[p], v)}[red]
    return x


@register_lower("scatter_nd")
def _scatter_nd_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
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
    if not lead:  # one index tuple (a rank-0 take's gradient): nothing to reduce over
        acc = b.compute(x.shape, x.dtype, lambda p: Select(hits(p, ()), upd.at(tuple(p[k:])), ident), "scatter_one")
    else:
        acc = b.reduce(x.shape, x.dtype, red, lead,
                       lambda p, u: Select(hits(p, u), upd.at(tuple(u) + tuple(p[k:])), ident), "scatter_" + red)
    join = {"add": lambda a, c: a + c, "mul": lambda a, c: a * c, "max": lambda a, c: Bin("max", a, c),
            "min": lambda a, c: Bin("min", a, c)}[red]
    return b.compute(x.shape, x.dtype, lambda p: join(x.at(p), acc.at(p)), "scatter_nd")


@register_onnx("ScatterND")
def _scatter_nd_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("scatter_nd", [ctx.input(0), ctx.input(1), ctx.input(2)],
                        {"reduction": str(attrs.get("reduction", "none"))}, node.output[0]))


# ---- topk_indices (ONNX TopK: + gather_elements for the values) ------------------------------
define("topk_indices", "opaque", 1, {"k": REQUIRED, "axis": -1, "largest": True},
       "indices (i64) of the k largest (smallest) values along axis, in order; equal values by lower index first")


@register_infer("topk_indices")
def _topk_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = list(shape_of(t, loc))
    ax = norm_axis(attrs.get("axis", -1), len(s), loc)
    k = int(attrs["k"])
    n = as_int(s[ax])
    if k < 0 or (n is not None and k > n):
        raise MlcError(f"topk: k = {k} is outside [0, {s[ax] if n is None else n}]", loc)
    s[ax] = Const(k)
    return TensorType(tuple(s), "i64")


@ref("topk_indices")
def _topk_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    """Stable: equal values keep their order, lower index first, for largest too (sorting the reversed
    axis ascending and reversing back keeps ties in index order without negating, which would wrap)."""
    x = np.asarray(args[0])
    ax, k = int(attrs.get("axis", -1)) % x.ndim, int(attrs["k"])
    n = x.shape[ax]
    if attrs.get("largest", True):
        order = n - 1 - np.flip(np.argsort(np.flip(x, ax), axis=ax, kind="stable"), ax)
    else:
        order = np.argsort(x, axis=ax, kind="stable")
    return np.take(order, np.arange(k), axis=ax).astype(np.int64)


@register_lower("topk_indices")
def _topk_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
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


@register_onnx("TopK")
def _topk_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Indices by a rank computation (sorted, ties by lower index), values gathered with them."""
    k = ctx.const(node.input[1]) if len(node.input) > 1 else None
    if k is None and "k" in attrs:  # opset < 10: an attribute
        k = np.array(attrs["k"])
    if k is None or k.size != 1:
        raise ctx.error("TopK: K must be a constant")
    x = ctx.input(0)
    flags = {"k": int(k.reshape(-1)[0]), "axis": int(attrs.get("axis", -1)), "largest": bool(attrs.get("largest", 1))}
    idx = ctx.emit("topk_indices", [x], flags, node.output[1] if len(node.output) > 1 and node.output[1] else "topk_idx")
    if len(node.output) > 1 and node.output[1]:
        ctx.out(1, idx)
    ctx.out(0, ctx.emit("gather_elements", [x, idx], {"axis": flags["axis"]}, node.output[0]))


# ---- one_hot -------------------------------------------------------------------------------------
define("one_hot", "injective", 2, {"depth": REQUIRED, "axis": -1},
       "ONNX OneHot: args indices, values = [off, on]; a new axis of size depth at `axis` holds `on` where "
       "it equals the index (negative indices count from depth; out of [-depth, depth): all `off`)")


@register_infer("one_hot")
def _one_hot_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    s = shape_of(args[0], loc, "indices")
    vals = tensor(args[1], loc, "values")
    if vals.shape is None or len(vals.shape) != 1 or as_int(vals.shape[0]) != 2:
        raise MlcError(f"one_hot: values must be a tensor of 2 elements [off, on], got {vals}", loc)
    depth = int(attrs["depth"])
    if depth < 1:
        raise MlcError(f"one_hot: depth must be positive, got {depth}", loc)
    ax = norm_axis(attrs.get("axis", -1), len(s), loc, extra=1)
    return TensorType(s[:ax] + (Const(depth),) + s[ax:], vals.dtype)


@ref("one_hot")
def _one_hot_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    ind, vals, depth = np.asarray(args[0]), np.asarray(args[1]), int(attrs["depth"])
    ax = norm_axis(attrs.get("axis", -1), ind.ndim, extra=1)
    i = np.expand_dims(ind.astype(np.int64), ax)
    i = np.where(i < 0, i + depth, i)
    hot = i == np.arange(depth).reshape((1,) * ax + (depth,) + (1,) * (ind.ndim - ax))
    return np.where(hot, vals[1], vals[0])


@register_lower("one_hot")
def _one_hot_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    ind, vals = as_tensor(args[0]), as_tensor(args[1])
    depth = Const(int(attrs["depth"]))
    ax = norm_axis(attrs.get("axis", -1), ind.ndim, extra=1)

    def fn(i: Index) -> Expr:
        raw = Cast("i64", ind.at(i[:ax] + i[ax + 1:]))  # float indices truncate, as ONNX casts them
        w = Select(Bin("lt", raw, Const(0)), raw + depth, raw)
        return Select(Bin("eq", w, i[ax]), vals.at((Const(1),)), vals.at((Const(0),)))

    return b.compute(out_shape(t), vals.dtype, fn, "one_hot")


@register_onnx("OneHot", since=9)
def _one_hot_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Opset 9; opset 11 only allowed negative indices (which wrap), so this handler serves both."""
    depth = ctx.const(node.input[1])
    if depth is None or depth.size != 1:
        raise ctx.error("OneHot: depth must be a constant (it fixes the output shape)")
    ctx.out(0, ctx.emit("one_hot", [ctx.input(0), ctx.input(2)],
                        {"depth": int(depth.reshape(-1)[0]), "axis": int(attrs.get("axis", -1))}, node.output[0]))


# ---- gradient rules (see registry.register_grad) -------------------------------------------------
# Gathers scatter-add their cotangent back; indices get none.
def _dout(c: GradCall) -> Value:
    assert isinstance(c.dout, Value)
    return c.dout


@register_grad("take")
def _take_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """scatter_nd-add along the taken axis, moved to the front and back (repeated indices add up)."""
    data, idx = c.args
    r, ni = len(value_shape(data)), len(value_shape(idx))
    ax = norm_axis(c.attrs["axis"], r)
    d = _dout(c)
    front = tuple(range(ax, ax + ni)) + tuple(range(ax)) + tuple(range(ax + ni, ax + ni + r - ax - 1))
    if front != tuple(range(len(front))):
        d = g.emit("transpose", [d], {"perm": front})
    ds = value_shape(data)
    zero = g.emit("full", [], {"shape": (ds[ax],) + ds[:ax] + ds[ax + 1:], "value": 0.0,
                               "dtype": value_dtype(data)})
    acc = g.emit("scatter_nd", [zero, g.emit("expand_dims", [idx], {"axes": (ni,)}), d], {"reduction": "add"})
    if ax:
        acc = g.emit("transpose", [acc], {"perm": tuple(range(1, ax + 1)) + (0,) + tuple(range(ax + 1, r))})
    return [acc, None]


@register_grad("gather_elements")
def _gather_elements_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    data, idx = c.args
    return [g.emit("scatter_elements", [g.zeros_like(data), idx, _dout(c)],
                   {"axis": c.attrs["axis"], "reduction": "add"}), None]


@register_grad("gather_nd")
def _gather_nd_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    data, idx = c.args
    if int(c.attrs["batch_dims"]):
        raise g.error("gather_nd: gradient with batch_dims > 0 is not supported")
    return [g.emit("scatter_nd", [g.zeros_like(data), idx, _dout(c)], {"reduction": "add"}), None]


@register_grad("scatter_elements", "scatter_nd")
def _scatter_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """'none': the overwritten data positions get no cotangent, each update reads its position's
    (duplicate indices: every duplicate reads it, though only the last was kept); 'add': data
    passes it whole. Other reductions have no rule."""
    data, idx, upd = c.args
    red = c.attrs["reduction"]
    d = _dout(c)
    el = c.op == "scatter_elements"
    ax = {"axis": c.attrs["axis"]} if el else {}
    if red not in ("none", "add"):
        raise g.error(f"{c.op} with reduction '{red}' has no gradient rule")
    dd = d
    if red == "none" and c.want(0):
        dd = g.emit(c.op, [d, idx, g.zeros_like(upd)], {**ax, "reduction": "none"})
    du = g.emit("gather_elements" if el else "gather_nd", [d, idx], ax) if c.want(2) else None
    return [dd, None, du]


register_no_grad("topk_indices", "one_hot")
