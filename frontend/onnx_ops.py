"""ONNX node handlers for math and neural-network ops, and the table of every handler.

Handlers read inputs through the context (`ctx.input(i)` materialises a Value; `ctx.const` gives
a statically known value) and set outputs with `ctx.out`. Shape/layout ops live in
onnx_layout.py, compositions in onnx_compose.py, LSTM/GRU in onnx_rnn.py; `HANDLERS` joins them.
docs/ops.md lists the limits each handler enforces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..ir.ops.registry import onnx_handler, onnx_op_types, value_dtype, value_shape
from ..ir.ops.shapes import numel
from .onnx_compose import COMPOSED
from .onnx_ctx import Ctx, Handler, registrar
from .onnx_layout import LAYOUT
from .onnx_rnn import gru, lstm

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)


@handles("TopK")
def _topk(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
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


@handles("Softmax", "LogSoftmax")
def _softmax(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
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


@handles("BatchNormalization")
def _bn(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
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


@handles("LayerNormalization")
def _ln(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
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


@handles("RMSNormalization")
def _rms_norm(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
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


def _versioned(op_type: str) -> Handler:
    """The handler the ir/ops family modules registered for `op_type` at the model's opset."""

    def run(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        fn = onnx_handler(op_type, ctx.opset)
        if fn is None:
            raise ctx.error(f"{op_type} is supported from opset {onnx_op_types()[op_type]}, "
                            f"the model has opset {ctx.opset}")
        fn(ctx, node, attrs)

    return run


for _t in onnx_op_types():
    HANDLERS[_t] = _versioned(_t)
HANDLERS["LSTM"] = lstm
HANDLERS["GRU"] = gru
HANDLERS.update(COMPOSED)
HANDLERS.update(LAYOUT)
