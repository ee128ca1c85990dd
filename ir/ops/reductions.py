"""Reductions: sum/mean/max/min/prod over axes, argmax/argmin, and the running sum (cumsum).

Everything about each op sits together (JAX style): declaration, shape rule, numpy reference,
lowering (a pending reduction of ir/tir_builder.py; `reduce_op` is shared with pooling and the
normalisations) and ONNX import handlers. The gradient slot (`OpDef.grad`) stays None until autodiff
fills it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import arith
from ..arith import as_int
from ..diagnostics import Loc
from ..dtype import is_float
from ..expr import Bin, Cast, Const, Expr, Select
from ..graph import Value
from ..tir_builder import Builder, Index, Tensor, as_dtype, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_dtype, out_shape
from .reference import Env, Ref, ref
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
    BIG,
    ONE,
    Shape,
    norm_axis,
    reduce_axes,
    shape_of,
    tensor,
)

# ---- sum, mean, max, min, prod ---------------------------------------------------------------
REDUCE: dict[str, str] = {
    "sum": "sum", "mean": "arithmetic mean", "max": "maximum", "min": "minimum", "prod": "product",
}

_RED_ATTRS = {"axes": None, "keepdims": True}  # axes None = all axes

for _n, _d in REDUCE.items():
    define(_n, "reduction", 1, _RED_ATTRS, doc=f"{_d} over `axes` (all when None)")


@register_infer(*REDUCE)
def _reduce_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    axes = reduce_axes(attrs.get("axes"), len(s), loc)
    keep = bool(attrs.get("keepdims", True))
    out = [ONE if i in axes else d for i, d in enumerate(s)] if keep else [d for i, d in enumerate(s) if i not in axes]
    return TensorType(tuple(out), t.dtype)


_RED: dict[str, Callable[..., np.ndarray]] = {
    "sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod,
}

assert set(_RED) == set(REDUCE)


def _reduce_ref(fn: Callable[..., np.ndarray]) -> Ref:
    def run(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
        x = args[0]
        ax = tuple(reduce_axes(attrs.get("axes"), x.ndim))
        kw: dict[str, Any] = {}
        if x.size == 0 and fn in (np.max, np.min):  # over an empty set: the identity (-inf / +inf), as ONNX
            lo = fn is np.max
            if x.dtype == np.bool_:
                kw["initial"] = not lo
            elif np.issubdtype(x.dtype, np.integer):
                kw["initial"] = np.iinfo(x.dtype).min if lo else np.iinfo(x.dtype).max
            else:
                kw["initial"] = -np.inf if lo else np.inf
        return fn(x, axis=ax, keepdims=bool(attrs.get("keepdims", True)), **kw)

    return run


for _n, _r in _RED.items():
    ref(_n)(_reduce_ref(_r))


def _scatter(i: Index, r: Index, axes: list[int], rank: int, keep: bool) -> Index:
    """The input index of output index `i` and reduce index `r` (reduced axes in order)."""
    out: list[Expr] = []
    ri, si = iter(r), 0
    for d in range(rank):
        if d in axes:
            out.append(next(ri))
            if keep:
                si += 1
        else:
            out.append(i[si])
            si += 1
    return tuple(out)


_COMBINER = {"sum": "add", "mean": "add", "max": "max", "min": "min", "prod": "mul"}

assert set(_COMBINER) == set(REDUCE)


def reduce_op(b: Builder, x: Tensor, op: str, axes: list[int], keep: bool, shp: Shape, dtype: str) -> Tensor:
    """`op` in sum/mean/max/min/prod of `x` over `axes` (mean divides after summing). Over no axes
    (a rank-0 tensor) each is the identity: a block with an init but no reduce iterator is not a reduction."""
    if not axes:
        return b.compute(shp, dtype, lambda i: as_dtype(x.at(i), dtype), op)
    ext = tuple(x.shape[a] for a in axes)
    acc = dtype
    red = b.reduce(shp, acc, _COMBINER[op], ext, lambda i, r: x.at(_scatter(i, r, axes, x.ndim, keep)),
                   "sum" if op == "mean" else op)
    if op != "mean":
        return red
    count: Expr = Const(1)
    for e in ext:
        count = count * e
    n = Cast(dtype, arith.simplify(count)) if is_float(dtype) else arith.simplify(count)
    return b.compute(shp, dtype, lambda i: Bin("div", red.at(i), n), "mean")


def _lower_reduce(op: str) -> Callable[..., Tensor]:
    def lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
        x = as_tensor(args[0])
        axes = reduce_axes(attrs.get("axes"), x.ndim)
        return reduce_op(b, x, op, axes, bool(attrs.get("keepdims", True)), out_shape(t), out_dtype(t))

    return lower


for _op in REDUCE:
    register_lower(_op)(_lower_reduce(_op))

REDUCE_MAP = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


# reductions composed of one before, one reduction and one after (None: nothing), on the input's dtype
COMPOSED_REDUCE = {
    "ReduceL1": ("abs", "sum", None), "ReduceL2": ("square", "sum", "sqrt"), "ReduceSumSquare": ("square", "sum", None),
    "ReduceLogSum": (None, "sum", "log"), "ReduceLogSumExp": ("exp", "sum", "log"),  # shifted by the max below
}


@register_onnx(*REDUCE_MAP, *COMPOSED_REDUCE)
def _reduce_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    axes = ctx.axes_input(node, attrs)
    x, o = ctx.input(0), node.output[0]
    before, red, after = COMPOSED_REDUCE.get(node.op_type, (None, REDUCE_MAP.get(node.op_type), None))
    a = {"axes": tuple(axes) if axes else None, "keepdims": bool(attrs.get("keepdims", 1))}
    if node.op_type == "ReduceLogSumExp" and (axes or not attrs.get("noop_with_empty_axes", 0)):
        # log(sum(exp(x - max))) + max: exp of a large x overflows where the result does not
        top = ctx.emit("max", [x], {**a, "keepdims": True}, o + "_max")
        x = ctx.emit("sub", [x, top], {}, o + "_shifted")
        top = top if a["keepdims"] else ctx.emit("max", [ctx.input(0)], a, o + "_maxout")
        lse = ctx.emit("log", [ctx.emit("sum", [ctx.emit("exp", [x], {}, o + "_exp")], a, o + "_sum")], {}, o + "_log")
        ctx.out(0, ctx.emit("add", [lse, top], {}, o))
        return
    if before == "square":
        x = ctx.emit("mul", [x, x], {}, o + "_sq")
    elif before is not None:
        x = ctx.emit(before, [x], {}, o + "_" + before)
    if not axes and attrs.get("noop_with_empty_axes", 0):
        ctx.out(0, x if after is None else ctx.emit(after, [x], {}, o))
        return
    r = ctx.emit(red, [x], a, o if after is None else o + "_" + red)
    ctx.out(0, r if after is None else ctx.emit(after, [r], {}, o))


# ---- argmax, argmin --------------------------------------------------------------------------
define("argmax", "reduction", 1, {"axis": 0, "keepdims": True}, "index of the first maximum along axis (i64)")

define("argmin", "reduction", 1, {"axis": 0, "keepdims": True}, "index of the first minimum along axis (i64)")


@register_infer("argmax", "argmin")
def _argreduce_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    s = shape_of(args[0], loc)
    ax = norm_axis(attrs.get("axis", 0), len(s), loc)
    keep = bool(attrs.get("keepdims", True))
    out = [ONE if i == ax else d for i, d in enumerate(s)] if keep else [d for i, d in enumerate(s) if i != ax]
    return TensorType(tuple(out), "i64")


def _arg_ref(fn: Callable[..., np.ndarray]) -> Ref:
    def run(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
        x = args[0]
        return fn(x, axis=norm_axis(attrs.get("axis", 0), x.ndim), keepdims=bool(attrs.get("keepdims", True)))

    return run


ref("argmax")(_arg_ref(np.argmax))

ref("argmin")(_arg_ref(np.argmin))


def _lower_arg(op: str) -> Callable[..., Tensor]:
    def lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
        x = as_tensor(args[0])
        ax = norm_axis(attrs.get("axis", 0), x.ndim)
        keep = bool(attrs.get("keepdims", True))
        shp = out_shape(t)
        comb = "max" if op == "argmax" else "min"
        ext = (x.shape[ax],)
        best = b.reduce(shp, x.dtype, comb, ext, lambda i, r: x.at(_scatter(i, r, [ax], x.ndim, keep)), op + "_v")
        b.materialize(best)
        big = Cast("i64", x.shape[ax])

        def first(i: Index, r: Index) -> Expr:
            hit = Bin("eq", x.at(_scatter(i, r, [ax], x.ndim, keep)), best.at(i))
            return Select(hit, r[0], big)

        return b.reduce(shp, "i64", "min", ext, first, op)

    return lower


for _op in ("argmax", "argmin"):
    register_lower(_op)(_lower_arg(_op))


@register_onnx("ArgMax", "ArgMin")
def _argmax_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """select_last_index=1: the first extremum of the reversed axis, counted from the end."""
    x, o = ctx.input(0), node.output[0]
    rank = len(value_shape(x))
    ax = int(attrs.get("axis", 0))
    ax = ax + rank if ax < 0 else ax
    a = {"axis": ax, "keepdims": bool(attrs.get("keepdims", 1))}
    if not attrs.get("select_last_index", 0):
        ctx.out(0, ctx.emit(node.op_type.lower(), [x], a, o))
        return
    n = value_shape(x)[ax]
    rev = ctx.emit("strided_slice", [x], {"axes": (ax,), "begin": (-1,), "end": (-BIG,), "strides": (-1,)},
                   o + "_rev")
    i = ctx.emit(node.op_type.lower(), [rev], a, o + "_revidx")
    if as_int(n) is not None:
        last = ctx.constant(np.array(as_int(n) - 1, dtype=np.int64), o + "_last")
    else:
        last = ctx.emit("shape_tensor", [], {"values": (n - 1,)}, o + "_last")
        last = ctx.emit("reshape", [last], {"shape": ()}, o + "_last")
    ctx.out(0, ctx.emit("sub", [last, i], {}, o))


# ---- cumsum ----------------------------------------------------------------------------------
define("cumsum", "opaque", 1, {"axis": REQUIRED, "exclusive": False, "reverse": False},
       "running sum along axis (ONNX CumSum: exclusive leaves out the element itself, reverse runs from the end)")


@register_infer("cumsum")
def _cumsum_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    norm_axis(attrs["axis"], len(shape_of(t, loc)), loc)
    return TensorType(t.shape, t.dtype)


@ref("cumsum")
def _cumsum_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = np.asarray(args[0])
    ax = int(attrs["axis"]) % x.ndim
    y = np.flip(x, ax) if attrs.get("reverse") else x
    out = np.cumsum(y, axis=ax, dtype=x.dtype)
    if attrs.get("exclusive"):
        out = out - y
    return np.flip(out, ax) if attrs.get("reverse") else out


@register_lower("cumsum")
def _cumsum_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """out[i] = sum of x[k] over k <= i along the axis (k < i when exclusive; k >= i, k > i reversed):
    a reduction over the whole axis with the other terms masked, O(n^2) per line but one kernel."""
    x = as_tensor(args[0])
    ax = norm_axis(attrs["axis"], x.ndim)
    cmp = {(False, False): "le", (True, False): "lt", (False, True): "ge", (True, True): "gt"}[
        (bool(attrs.get("exclusive")), bool(attrs.get("reverse")))]

    def term(i: Index, r: Index) -> Expr:
        return Select(Bin(cmp, r[0], i[ax]), x.at(i[:ax] + (r[0],) + i[ax + 1:]), cst(0, x.dtype))

    return b.reduce(x.shape, x.dtype, "add", (x.shape[ax],), term, "cumsum")


@register_onnx("CumSum")
def _cumsum_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    axis = ctx.const(node.input[1])
    if axis is None or axis.size != 1:
        raise ctx.error("CumSum: the axis must be a constant scalar")
    flags = {"axis": int(axis.reshape(-1)[0]), "exclusive": bool(attrs.get("exclusive", 0)),
             "reverse": bool(attrs.get("reverse", 0))}
    ctx.out(0, ctx.emit("cumsum", [ctx.input(0)], flags, node.output[0]))


# ---- gradient rules (see registry.register_grad) -------------------------------------------------
def _kept(g: GradContext, x: Value, v: Value, axes: list[int], keepdims: bool) -> Value:
    """`v` (a reduction's output or its cotangent) reshaped to keep the reduced axes as 1, then
    broadcast to `x`'s shape."""
    xs = value_shape(x)
    if not keepdims:
        v = g.emit("reshape", [v], {"shape": tuple(1 if i in axes else d for i, d in enumerate(xs))})
    return g.emit("broadcast_to", [v], {"shape": xs})


def _count(g: GradContext, x: Value, axes: list[int]) -> Value:
    """How many elements each output of a reduction over `axes` reads (a tensor when symbolic)."""
    xs = value_shape(x)
    n = 1
    for a in axes:
        k = as_int(xs[a])
        if k is None:  # symbolic: sum ones (the count is then known only at run time)
            ones = g.emit("broadcast_to", [g.scalar(1.0, x)], {"shape": xs})
            return g.emit("sum", [ones], {"axes": tuple(axes), "keepdims": True})
        n *= k
    return g.scalar(float(n), x)


@register_grad("sum", "mean", "max", "min", "prod")
def _reduce_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """sum/mean spread the cotangent; max/min send it to the extremes (split evenly among ties,
    as JAX); prod: d * out / x (undefined where x is 0)."""
    (x,) = c.args
    assert isinstance(c.dout, Value)
    axes = reduce_axes(c.attrs["axes"], len(value_shape(x)))
    keep = bool(c.attrs["keepdims"])
    d = _kept(g, x, c.dout, axes, keep)
    if c.op == "sum":
        return [d]
    if c.op == "mean":
        return [g.emit("div", [d, _count(g, x, axes)])]
    out = _kept(g, x, c.out, axes, keep)
    if c.op == "prod":
        return [g.emit("div", [g.emit("mul", [d, out]), x])]
    hit = g.emit("cast", [g.emit("equal", [x, out])], {"dtype": value_dtype(x)})
    ties = g.emit("sum", [hit], {"axes": tuple(axes), "keepdims": True})
    return [g.emit("mul", [d, g.emit("div", [hit, ties])])]


@register_grad("cumsum")
def _cumsum_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """The transpose of a running sum is the running sum the other way."""
    a = dict(c.attrs)
    a["reverse"] = not bool(a["reverse"])
    assert isinstance(c.dout, Value)
    return [g.emit("cumsum", [c.dout], a)]


register_no_grad("argmax", "argmin")
