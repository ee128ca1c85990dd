"""Normalisations: softmax, log_softmax, batch_norm (inference), layer_norm; ONNX RMSNormalization composes.

Multi-stage ops: their lowerings chain pending reductions (reductions.reduce_op) and an in-place
update (softmax stores exp(x - max) once). Declaration, shape rule, numpy reference, lowering and
ONNX handlers of each op sit together; the gradient slot (`OpDef.grad`) stays None until autodiff
fills it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..diagnostics import Loc, MlcError
from ..expr import Bin, Call, Const, Expr
from ..tir_builder import Builder, Index, Tensor, broadcast, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor
from .reductions import reduce_op
from .reference import Env, ref
from .registry import (
    ImportContext,
    OnnxNode,
    define,
    register_infer,
    register_lower,
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


@ref("layer_norm")
def _ln_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    ax = tuple(range(norm_axis(attrs.get("axis", -1), x.ndim), x.ndim))
    mu = x.mean(axis=ax, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=ax, keepdims=True)
    y = (x - mu) / np.sqrt(var + float(attrs.get("epsilon", 1e-5))) * args[1]
    return y + args[2] if len(args) > 2 else y


@register_lower("layer_norm")
def _layer_norm_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    ax = norm_axis(attrs.get("axis", -1), x.ndim)
    axes = list(range(ax, x.ndim))
    kshape = tuple(Const(1) if d in axes else s for d, s in enumerate(x.shape))
    kept = lambda i: tuple(Const(0) if d in axes else e for d, e in enumerate(i))  # noqa: E731
    mu = reduce_op(b, x, "mean", axes, True, kshape, x.dtype)
    b.materialize(mu)
    cen = b.compute(x.shape, x.dtype, lambda i: x.at(i) - mu.at(kept(i)), "centered")
    sq = b.compute(x.shape, x.dtype, lambda i: cen.at(i) * cen.at(i), "sq")
    var = reduce_op(b, sq, "mean", axes, True, kshape, x.dtype)
    eps = cst(float(attrs.get("epsilon", 1e-5)), x.dtype)
    scale = broadcast(as_tensor(args[1]), x.shape)
    bias = broadcast(as_tensor(args[2]), x.shape) if len(args) > 2 else None

    def fn(i: Index) -> Expr:
        y = Bin("div", cen.at(i), Call("sqrt", (var.at(kept(i)) + eps,), x.dtype)) * scale(i)
        return y + bias(i) if bias is not None else y

    return b.compute(x.shape, x.dtype, fn, "layer_norm")


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
