"""Normalisations: softmax, log_softmax, batch_norm (inference), layer_norm and layer_norm_grad
(layer norm's input gradient); ONNX RMSNormalization composes.

Multi-stage ops: their lowerings chain pending reductions (reductions.reduce_op) and an in-place
update (softmax stores exp(x - max) once). Declaration, shape rule, numpy reference, lowering,
gradient rule and ONNX handlers of each op sit together. The gradients of softmax, log_softmax and
batch_norm are compositions of existing ops (elementwise products and per-channel sums, which
fuse); layer norm's input gradient needs four reductions over the normalised axes (the forward's
mean and variance, then the means of g and g * xhat), so it is an op of its own: one kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..diagnostics import Loc, MlcError
from ..expr import Bin, Call, Const, Expr
from ..graph import Value
from ..tir_builder import Builder, Index, Tensor, broadcast, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor
from .reductions import reduce_op
from .reference import Env, ref
from .registry import (
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
    broadcast_shapes,
    check_dim,
    dims_str,
    norm_axis,
    numel,
    same_as_input,
    shape_of,
    tensor,
)

# ---- softmax, log_softmax --------------------------------------------------------------------
define("softmax", "opaque", 1, {"axis": -1}, "exp(x - max) / sum along axis")

define("log_softmax", "opaque", 1, {"axis": -1}, "log of softmax along axis")

register_infer("softmax", "log_softmax")(same_as_input)


def _softmax_parts_np(args: list[Any], attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = args[0]
    ax = norm_axis(attrs.get("axis", -1), x.ndim)
    z = x - np.max(x, axis=ax, keepdims=True)
    e = np.exp(z)
    return z, e, np.sum(e, axis=ax, keepdims=True)


@ref("softmax")
def _softmax_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    _, e, s = _softmax_parts_np(args, attrs)
    return e / s


@ref("log_softmax")
def _log_softmax_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    z, _, s = _softmax_parts_np(args, attrs)
    return z - np.log(s)


def _softmax_parts_expr(b: Builder, x: Tensor, axis: Any) -> tuple[Callable[[Index], Expr], Tensor]:
    ax = norm_axis(axis, x.ndim)
    kshape = tuple(Const(1) if d == ax else s for d, s in enumerate(x.shape))
    mx = reduce_op(b, x, "max", [ax], True, kshape, x.dtype)

    def z(i: Index) -> Expr:
        return x.at(i) - mx.at(tuple(Const(0) if d == ax else e for d, e in enumerate(i)))

    def ez(i: Index) -> Expr:
        return Call("exp", (z(i),), x.dtype)

    kept = lambda i: tuple(Const(0) if d == ax else e for d, e in enumerate(i))  # noqa: E731
    e = b.compute(x.shape, x.dtype, ez, "exp")
    ssum = reduce_op(b, e, "sum", [ax], True, kshape, x.dtype)
    return z, b.compute(x.shape, x.dtype, lambda i: ssum.at(kept(i)), "expsum")


@register_lower("softmax")
def _softmax_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """exp(x - max) is stored once (in the result's own buffer), summed from there and divided in place."""
    x = as_tensor(args[0])
    ax = norm_axis(attrs.get("axis", -1), x.ndim)
    kshape = tuple(Const(1) if d == ax else s for d, s in enumerate(x.shape))
    kept = lambda i: tuple(Const(0) if d == ax else e for d, e in enumerate(i))  # noqa: E731
    mx = reduce_op(b, x, "max", [ax], True, kshape, x.dtype)
    e = b.compute(x.shape, x.dtype, lambda i: Call("exp", (x.at(i) - mx.at(kept(i)),), x.dtype), "exp")
    ssum = reduce_op(b, e, "sum", [ax], True, kshape, x.dtype)
    return b.in_place(e, lambda i, v: Bin("div", v, ssum.at(kept(i))), "softmax")


@register_lower("log_softmax")
def _log_softmax_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    z, s = _softmax_parts_expr(b, x, attrs.get("axis", -1))
    return b.compute(x.shape, x.dtype, lambda i: z(i) - Call("log", (s.at(i),), x.dtype), "log_softmax")


@register_onnx("Softmax", "LogSoftmax")
def _softmax_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Opset 13+: over one axis. Before 13 (axis default 1) the input is coerced to 2-D
    (dims before `axis` x dims from it) and normalised over the second: a reshape around it."""
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    x, o = ctx.input(0), node.output[0]
    if ctx.opset >= 13:
        ctx.out(0, ctx.emit(op, [x], {"axis": int(attrs.get("axis", -1))}, o))
        return
    s = value_shape(x)
    ax = int(attrs.get("axis", 1))
    ax = ax + len(s) if ax < 0 else ax
    if ax >= len(s) - 1:
        ctx.out(0, ctx.emit(op, [x], {"axis": -1}, o))
        return
    flat = ctx.emit("reshape", [x], {"shape": (numel(s[:ax]), numel(s[ax:]))}, o + "_2d")
    y = ctx.emit(op, [flat], {"axis": -1}, o + "_sm")
    ctx.out(0, ctx.emit("reshape", [y], {"shape": tuple(s)}, o))


# ---- batch_norm ------------------------------------------------------------------------------
define("batch_norm", "broadcast", 5, {"epsilon": 1e-5},
       "inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias, args x, scale, bias, mean, var; channel axis 1")


@register_infer("batch_norm")
def _bn_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    if len(s) < 2:
        raise MlcError("batch_norm: input needs a channel axis (rank >= 2)", loc)
    for name, a in zip(("scale", "bias", "mean", "var"), args[1:]):
        ps = shape_of(a, loc, name)
        if len(ps) != 1:
            raise MlcError(f"batch_norm: {name} must be 1-D, got ({dims_str(ps)})", loc)
        check_dim(ps[0], s[1], f"batch_norm: {name} length vs channels", loc)
    return TensorType(s, t.dtype)


@ref("batch_norm")
def _bn_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, scale, bias, mean, var = args
    shp = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    return (x - mean.reshape(shp)) * inv.reshape(shp) + bias.reshape(shp)


@register_lower("batch_norm")
def _batch_norm_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, scale, bias, mean, var = (as_tensor(a) for a in args)
    eps = cst(float(attrs.get("epsilon", 1e-5)), x.dtype)

    def fn(i: Index) -> Expr:
        c = (i[1],)
        inv = Bin("div", scale.at(c), Call("sqrt", (var.at(c) + eps,), x.dtype))
        return (x.at(i) - mean.at(c)) * inv + bias.at(c)

    return b.compute(x.shape, x.dtype, fn, "batch_norm")


@register_onnx("BatchNormalization")
def _bn_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Inference: batch_norm. Training mode (opset 14+): normalise with the batch's own mean and
    (population) variance over every axis but 1, and output the running mean / var updated with
    `momentum`, as ONNX."""
    args = [ctx.input(i) for i in range(5)]
    eps, o = float(attrs.get("epsilon", 1e-5)), node.output[0]
    if ctx.opset < 9 and not attrs.get("spatial", 1):
        raise ctx.error("BatchNormalization with spatial=0 (per-activation statistics) is not supported")
    if ctx.opset < 7 and not attrs.get("is_test", 0):
        raise ctx.error("BatchNormalization with is_test=0 (opset 6 training mode) is not supported")
    if not attrs.get("training_mode", 0):
        if any(node.output[1:]):
            raise ctx.error("BatchNormalization running mean / var outputs need training_mode=1")
        ctx.out(0, ctx.emit("batch_norm", args, {"epsilon": eps}, o))
        return
    if ctx.opset < 14:
        raise ctx.error("BatchNormalization in training mode is supported from opset 14")
    x = args[0]
    rank = len(value_shape(x))
    axes = tuple(a for a in range(rank) if a != 1)
    mean_k = ctx.emit("mean", [x], {"axes": axes, "keepdims": True}, o + "_bmean_k")
    d = ctx.emit("sub", [x, mean_k], {}, o + "_centered")
    var = ctx.emit("mean", [ctx.emit("mul", [d, d], {}, o + "_sq")], {"axes": axes, "keepdims": False}, o + "_bvar")
    mean = ctx.emit("reshape", [mean_k], {"shape": (value_shape(x)[1],)}, o + "_bmean")
    ctx.out(0, ctx.emit("batch_norm", [x, args[1], args[2], mean, var], {"epsilon": eps}, o))
    m = float(attrs.get("momentum", 0.9))
    for i, (run, cur) in enumerate(((args[3], mean), (args[4], var)), start=1):
        if i < len(node.output) and node.output[i]:
            a = ctx.emit("mul", [run, ctx.scalar_like(m, run, "momentum")], {}, node.output[i] + "_old")
            b = ctx.emit("mul", [cur, ctx.scalar_like(1 - m, cur, "one_minus_momentum")], {}, node.output[i] + "_new")
            ctx.out(i, ctx.emit("add", [a, b], {}, node.output[i]))


# ---- layer_norm ------------------------------------------------------------------------------
define("layer_norm", "opaque", (2, 3), {"axis": -1, "epsilon": 1e-5},
       "normalise over axes axis..rank-1, then * scale (+ bias)")


@register_infer("layer_norm")
def _ln_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    ax = norm_axis(attrs.get("axis", -1), len(s), loc)
    norm = s[ax:]
    for name, a in zip(("scale", "bias"), args[1:]):
        ps = shape_of(a, loc, name)
        try:
            broadcast_shapes([norm, ps], loc)
        except MlcError:
            raise MlcError(f"layer_norm: {name} ({dims_str(ps)}) does not match normalised dims ({dims_str(norm)})",
                           loc) from None
    return TensorType(s, t.dtype)


def _ln_normalized_np(x: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(x - mean) / sqrt(var + eps), 1 / sqrt(var + eps) and the normalised axes."""
    ax = tuple(range(norm_axis(attrs.get("axis", -1), x.ndim), x.ndim))
    mu = x.mean(axis=ax, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axis=ax, keepdims=True) + float(attrs.get("epsilon", 1e-5)))
    return (x - mu) * rstd, rstd, ax


@ref("layer_norm")
def _ln_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    y = _ln_normalized_np(args[0], attrs)[0] * args[1]
    return y + args[2] if len(args) > 2 else y


class _LnStats:
    """Layer norm's statistics in a program being built: the mean is stored, the centred input is
    virtual, the variance a pending reduction over the normalised axes."""

    def __init__(self, b: Builder, x: Tensor, attrs: Attrs):
        ax = norm_axis(attrs.get("axis", -1), x.ndim)
        self.b, self.x, self.axes = b, x, list(range(ax, x.ndim))
        self.kshape = tuple(Const(1) if d in self.axes else s for d, s in enumerate(x.shape))
        mu = b.materialize(self.mean(x))
        self.cen = b.compute(x.shape, x.dtype, lambda i: x.at(i) - mu.at(self.kept(i)), "centered")
        sq = b.compute(x.shape, x.dtype, lambda i: self.cen.at(i) * self.cen.at(i), "sq")
        self.var = self.mean(sq)
        self.eps = cst(float(attrs.get("epsilon", 1e-5)), x.dtype)

    def kept(self, i: Index) -> Index:
        """The index of a per-row statistic (normalised axes at 0)."""
        return tuple(Const(0) if d in self.axes else e for d, e in enumerate(i))

    def mean(self, t: Tensor) -> Tensor:
        return reduce_op(self.b, t, "mean", self.axes, True, self.kshape, self.x.dtype)

    def std(self, i: Index) -> Expr:
        return Call("sqrt", (self.var.at(self.kept(i)) + self.eps,), self.x.dtype)


@register_lower("layer_norm")
def _layer_norm_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    st = _LnStats(b, x, attrs)
    scale = broadcast(as_tensor(args[1]), x.shape)
    bias = broadcast(as_tensor(args[2]), x.shape) if len(args) > 2 else None

    def fn(i: Index) -> Expr:
        y = Bin("div", st.cen.at(i), st.std(i)) * scale(i)
        return y + bias(i) if bias is not None else y

    return b.compute(x.shape, x.dtype, fn, "layer_norm")


# ---- layer_norm_grad -------------------------------------------------------------------------
define("layer_norm_grad", "opaque", 3, {"axis": -1, "epsilon": 1e-5},
       "layer norm's input gradient: args x, dy, scale; (dy * scale - mean(dy * scale) - xhat * "
       "mean(dy * scale * xhat)) / std over the normalised axes, xhat = (x - mean) / std")


@register_infer("layer_norm_grad")
def _ln_grad_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = _ln_infer([args[0], args[2]], attrs, loc)
    dy, xs = tensor(args[1], loc, "dy"), shape_of(t, loc)
    if len(shape_of(dy, loc, "dy")) != len(xs) or dy.dtype != tensor(t, loc).dtype:
        raise MlcError(f"layer_norm_grad: dy {dy} must have x's type {t}", loc)
    for a, (p, q) in enumerate(zip(xs, shape_of(dy, loc, "dy"))):
        check_dim(q, p, f"layer_norm_grad: dy dim {a} vs x", loc)
    return t


@ref("layer_norm_grad")
def _ln_grad_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, dy, scale = args
    xhat, rstd, ax = _ln_normalized_np(x, attrs)
    gh = dy * scale
    return rstd * (gh - gh.mean(axis=ax, keepdims=True) - xhat * (gh * xhat).mean(axis=ax, keepdims=True))


@register_lower("layer_norm_grad")
def _layer_norm_grad_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Four reductions over the normalised axes (mean, variance, mean(g), mean(g * xhat)), then one
    elementwise pass; g = dy * scale and xhat stay virtual."""
    x, dy = as_tensor(args[0]), as_tensor(args[1])
    st = _LnStats(b, x, attrs)
    scale = broadcast(as_tensor(args[2]), x.shape)
    gh = b.compute(x.shape, x.dtype, lambda i: dy.at(i) * scale(i), "dxhat")
    xhat = b.compute(x.shape, x.dtype, lambda i: Bin("div", st.cen.at(i), st.std(i)), "xhat")
    m1 = st.mean(gh)
    m2 = st.mean(b.compute(x.shape, x.dtype, lambda i: gh.at(i) * xhat.at(i), "dxhat_xhat"))

    def fn(i: Index) -> Expr:
        k = st.kept(i)
        return Bin("div", gh.at(i) - m1.at(k) - xhat.at(i) * m2.at(k), st.std(i))

    return b.compute(x.shape, x.dtype, fn, "layer_norm_grad")


# ---- gradient rules (registry.register_grad) -------------------------------------------------
def _dout(c: GradCall) -> Value:
    assert isinstance(c.dout, Value)
    return c.dout


@register_grad("softmax")
def _softmax_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """y * (dy - sum(dy * y)) along the axis."""
    y, dy = c.out, _dout(c)
    s = g.emit("sum", [g.emit("mul", [dy, y])], {"axes": (int(c.attrs["axis"]),), "keepdims": True})
    return [g.emit("mul", [y, g.emit("sub", [dy, s])])]


@register_grad("log_softmax")
def _log_softmax_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """dy - exp(y) * sum(dy) along the axis (exp(y) is the softmax)."""
    dy = _dout(c)
    s = g.emit("sum", [dy], {"axes": (int(c.attrs["axis"]),), "keepdims": True})
    return [g.emit("sub", [dy, g.emit("mul", [g.emit("exp", [c.out]), s])])]


@register_grad("batch_norm")
def _batch_norm_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """All five operands, as per-channel sums and elementwise products. Training-mode batch norm
    (the importer passes the batch's own mean and variance) is differentiated through those too,
    so this one rule serves both forms. With r = 1 / sqrt(var + eps):
    dx = dy * scale * r, dbias = sum(dy), dscale = sum(dy * (x - mean)) * r,
    dmean = -dbias * scale * r, dvar = -sum(dy * (x - mean)) * scale * r^3 / 2."""
    x, scale, _, mean, var = c.args
    dy = _dout(c)
    xs = value_shape(x)
    axes = {"axes": tuple(a for a in range(len(xs)) if a != 1), "keepdims": False}

    def per_channel(v: Value) -> Value:  # (C,) -> (C, 1, ...) against (N, C, ...)
        return g.emit("reshape", [v], {"shape": (xs[1],) + (1,) * (len(xs) - 2)})

    r = g.emit("reciprocal", [g.emit("sqrt", [g.emit("add", [var, g.scalar(float(c.attrs["epsilon"]), var)])])])
    inv = g.emit("mul", [scale, r])
    out: list[Value | None] = [None] * 5
    if c.want(0):
        out[0] = g.emit("mul", [dy, per_channel(inv)])
    dbias = g.emit("sum", [dy], axes) if c.want(2) or c.want(3) else None
    out[2] = dbias if c.want(2) else None
    if c.want(3):
        assert dbias is not None
        out[3] = g.emit("neg", [g.emit("mul", [dbias, inv])])
    if c.want(1) or c.want(4):
        s1 = g.emit("sum", [g.emit("mul", [dy, g.emit("sub", [x, per_channel(mean)])])], axes)
        if c.want(1):
            out[1] = g.emit("mul", [s1, r])
        if c.want(4):
            half_r2 = g.emit("mul", [g.emit("mul", [r, r]), g.scalar(-0.5, r)])
            out[4] = g.emit("mul", [g.emit("mul", [s1, inv]), half_r2])
    return out


@register_grad("layer_norm")
def _layer_norm_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """dx by layer_norm_grad; dscale = dy * xhat and dbias = dy, each summed over the axes scale
    and bias were broadcast along. xhat is layer_norm itself with a unit scale (recomputed, not
    stored: the forward keeps no statistics)."""
    x, scale = c.args[0], c.args[1]
    dy = _dout(c)
    a = {"axis": int(c.attrs["axis"]), "epsilon": float(c.attrs["epsilon"])}
    out: list[Value | None] = [g.emit("layer_norm_grad", [x, dy, scale], a) if c.want(0) else None]
    if c.want(1):
        xhat = g.emit("layer_norm", [x, g.scalar(1.0, x)], a)
        out.append(g.unbroadcast(g.emit("mul", [dy, xhat]), scale))
    else:
        out.append(None)
    if len(c.args) > 2:
        out.append(g.unbroadcast(dy, c.args[2]) if c.want(2) else None)
    return out


register_no_grad("layer_norm_grad")  # no second-order gradients yet


@register_onnx("LayerNormalization")
def _ln_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Y is `layer_norm`; the optional Mean and InvStdDev outputs (shape: dims before `axis`, then
    1s) are computed beside it with mean / sub / mul / sqrt / reciprocal, in the input's type."""
    x, o = ctx.input(0), node.output[0]
    args = [x, ctx.input(1)] + ([ctx.input(2)] if ctx.opt_input(2) else [])
    axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
    ctx.out(0, ctx.emit("layer_norm", args, {"axis": axis, "epsilon": eps}, o))
    if not any(node.output[1:]):
        return
    rank = len(value_shape(x))
    axes = tuple(range(axis + rank if axis < 0 else axis, rank))
    mu = ctx.emit("mean", [x], {"axes": axes, "keepdims": True}, o + "_mean")
    ctx.out(1, mu)
    if len(node.output) > 2 and node.output[2]:
        d = ctx.emit("sub", [x, mu], {}, o + "_centered")
        var = ctx.emit("mean", [ctx.emit("mul", [d, d], {}, o + "_sq")], {"axes": axes, "keepdims": True}, o + "_var")
        var = ctx.emit("add", [var, ctx.scalar_like(eps, var, "eps")], {}, o + "_vareps")
        ctx.out(2, ctx.emit("reciprocal", [ctx.emit("sqrt", [var], {}, o + "_std")], {}, o + "_invstd"))


@register_onnx("RMSNormalization")
def _rms_norm_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """X / sqrt(mean(X * X over axis..rank-1) + epsilon) * scale, computed in f32 (stash_type 1) for
    narrower inputs and cast back, as ONNX."""
    x, scale, o = ctx.input(0), ctx.input(1), node.output[0]
    dt = value_dtype(x)
    stash = "f32" if int(attrs.get("stash_type", 1)) == 1 and dt in ("f16", "bf16") else dt
    if stash != dt:
        x = ctx.emit("cast", [x], {"dtype": stash}, o + "_x32")
    rank = len(value_shape(x))
    axis = int(attrs.get("axis", -1))
    axes = tuple(range(axis + rank if axis < 0 else axis, rank))
    ms = ctx.emit("mean", [ctx.emit("mul", [x, x], {}, o + "_sq")], {"axes": axes, "keepdims": True}, o + "_ms")
    ms = ctx.emit("add", [ms, ctx.scalar_like(float(attrs.get("epsilon", 1e-5)), ms, "eps")], {}, o + "_mse")
    y = ctx.emit("div", [x, ctx.emit("sqrt", [ms], {}, o + "_rms")], {}, o + "_norm")
    if stash != dt:
        y = ctx.emit("cast", [y], {"dtype": dt}, o + "_back")
    ctx.out(0, ctx.emit("mul", [y, scale], {}, o))
