"""ONNX ops imported as compositions of graph ops (activations, Trilu, Tile, InstanceNormalization,
LRN, Shrink).

These have no graph op of their own: fusion turns the few elementwise ops back into one kernel,
so a dedicated op would only add lowering and gradient work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..ir.arith import as_int
from ..ir.dtype import is_float
from ..ir.expr import Const
from ..ir.graph import Value
from ..ir.ops.registry import value_dtype, value_shape
from .onnx_ctx import Ctx, Handler, registrar

COMPOSED: dict[str, Handler] = {}
composes = registrar(COMPOSED)


def _negative_part(ctx: Ctx, x: Value, neg: Value, o: str) -> Value:
    """where(x < 0, neg, x)."""
    lt = ctx.emit("less", [x, ctx.scalar_like(0.0, x, "zero")], {}, o + "_neg")
    return ctx.emit("where", [lt, neg, x], {}, o)


@composes("PRelu")
def _prelu(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Before opset 7 a 1-D slope of C elements is per channel (axis 1): reshaped to (C, 1, ...)."""
    x, slope = ctx.input(0), ctx.input(1)
    o = node.output[0]
    xs, ss = value_shape(x), value_shape(slope)
    if ctx.opset < 7 and len(ss) == 1 and len(xs) > 2 and as_int(ss[0]) not in (None, 1):
        slope = ctx.emit("reshape", [slope], {"shape": (ss[0],) + (1,) * (len(xs) - 2)}, o + "_slope")
    ctx.out(0, _negative_part(ctx, x, ctx.emit("mul", [x, slope], {}, o + "_scaled"), o))


def _expm1_scaled(ctx: Ctx, x: Value, alpha: float, o: str) -> Value:
    e = ctx.emit("sub", [ctx.emit("exp", [x], {}, o + "_exp"), ctx.scalar_like(1.0, x, "one")], {}, o + "_em1")
    return ctx.emit("mul", [e, ctx.scalar_like(alpha, x, "alpha")], {}, o + "_aem1")


@composes("Elu")
def _elu(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x, o = ctx.input(0), node.output[0]
    ctx.out(0, _negative_part(ctx, x, _expm1_scaled(ctx, x, float(attrs.get("alpha", 1.0)), o), o))


@composes("Selu")
def _selu(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x, o = ctx.input(0), node.output[0]
    alpha = float(attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(attrs.get("gamma", 1.05070102214813232421875))
    inner = _negative_part(ctx, x, _expm1_scaled(ctx, x, alpha, o), o + "_elu")
    ctx.out(0, ctx.emit("mul", [inner, ctx.scalar_like(gamma, x, "gamma")], {}, o))


def _hard_sigmoid(ctx: Ctx, x: Value, alpha: float, beta: float, o: str) -> Value:
    lin = ctx.emit("add", [ctx.emit("mul", [x, ctx.scalar_like(alpha, x, "alpha")], {}, o + "_ax"),
                           ctx.scalar_like(beta, x, "beta")], {}, o + "_lin")
    return ctx.emit("clip", [lin], {"min": 0.0, "max": 1.0}, o)


@composes("HardSigmoid")
def _hsig(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    a, b = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    ctx.out(0, _hard_sigmoid(ctx, ctx.input(0), a, b, node.output[0]))


@composes("HardSwish")
def _hswish(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x, o = ctx.input(0), node.output[0]
    ctx.out(0, ctx.emit("mul", [x, _hard_sigmoid(ctx, x, 1 / 6, 0.5, o + "_hs")], {}, o))


@composes("Softplus")
def _softplus(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large |x|
    x, o = ctx.input(0), node.output[0]
    t = ctx.emit("exp", [ctx.emit("neg", [ctx.emit("abs", [x], {}, o + "_abs")], {}, o + "_nabs")], {}, o + "_e")
    t = ctx.emit("log", [ctx.emit("add", [t, ctx.scalar_like(1.0, x, "one")], {}, o + "_1pe")], {}, o + "_log")
    ctx.out(0, ctx.emit("add", [ctx.emit("relu", [x], {}, o + "_relu"), t], {}, o))


@composes("Softsign")
def _softsign(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x, o = ctx.input(0), node.output[0]
    den = ctx.emit("add", [ctx.emit("abs", [x], {}, o + "_abs"), ctx.scalar_like(1.0, x, "one")], {}, o + "_den")
    ctx.out(0, ctx.emit("div", [x, den], {}, o))


@composes("Trilu")
def _trilu(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Keep j - i <= k (lower) or j - i >= k (upper) over the last two axes; others become 0."""
    x, o = ctx.input(0), node.output[0]
    kk: Value | None = None
    if (kn := ctx.opt_input(1)) is not None:
        c = ctx.const(kn)
        if c is None:  # k given at run time: a scalar (or 1-element) i64 input
            kk = ctx.value(kn)
            if len(value_shape(kk)) != 0:
                kk = ctx.emit("reshape", [kk], {"shape": ()}, o + "_k")
        else:
            kk = ctx.constant(np.array(int(np.asarray(c).reshape(-1)[0]), dtype=np.int64), "k")
    if kk is None:
        kk = ctx.constant(np.array(0, dtype=np.int64), "k")
    rows, cols = value_shape(x)[-2:]
    i = ctx.emit("arange", [], {"start": 0, "stop": rows, "step": 1, "dtype": "i64"}, o + "_rows")
    i = ctx.emit("expand_dims", [i], {"axes": (1,)}, o + "_rows2")
    j = ctx.emit("arange", [], {"start": 0, "stop": cols, "step": 1, "dtype": "i64"}, o + "_cols")
    d = ctx.emit("sub", [j, i], {}, o + "_diag")
    keep = ctx.emit("greater_equal" if attrs.get("upper", 1) else "less_equal", [d, kk], {}, o + "_keep")
    ctx.out(0, ctx.emit("where", [keep, x, ctx.scalar_like(0, x, "zero")], {}, o))


@composes("Tile")
def _tile(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """tile = broadcast each axis to (repeats, dim) then merge: expand_dims, broadcast_to, reshape."""
    x, o = ctx.input(0), node.output[0]
    reps = ctx.const(node.input[1])
    if reps is None:
        raise ctx.error("Tile repeats given at run time determine the output shape: only constant repeats "
                        "are supported")
    shape = list(value_shape(x))
    rank = len(shape)
    rep = [int(v) for v in reps.reshape(-1)]
    if len(rep) != rank:
        raise ctx.error(f"Tile repeats has {len(rep)} values for rank {rank}")
    y = ctx.emit("expand_dims", [x], {"axes": tuple(2 * a for a in range(rank))}, o + "_ex")
    big = tuple(v for a in range(rank) for v in (Const(rep[a]), shape[a]))
    y = ctx.emit("broadcast_to", [y], {"shape": big}, o + "_bc")
    ctx.out(0, ctx.emit("reshape", [y], {"shape": tuple(shape[a] * rep[a] for a in range(rank))}, o))


@composes("Mod")
def _mod(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """r = a - trunc(a / b) * b (C fmod; `div` truncates integers toward zero); with fmod=0 a non-zero
    r whose sign differs from b's gets b added, so r takes b's sign (Python %)."""
    a, b, o = ctx.input(0), ctx.input(1), node.output[0]
    dt = value_dtype(a)
    q = ctx.emit("div", [a, b], {}, o + "_q")
    if is_float(dt):
        neg = ctx.emit("less", [q, ctx.scalar_like(0, q, "zero")], {}, o + "_qneg")
        q = ctx.emit("where", [neg, ctx.emit("ceil", [q], {}, o + "_qc"), ctx.emit("floor", [q], {}, o + "_qf")], {},
                     o + "_qt")
    r = ctx.emit("sub", [a, ctx.emit("mul", [q, b], {}, o + "_qb")], {}, o + "_r")
    if is_float(dt):  # |a| < |b|: r is a itself (also for b = +-inf, where q * b would be nan)
        q0 = ctx.emit("equal", [q, ctx.scalar_like(0, q, "zero")], {}, o + "_q0")
        r = ctx.emit("where", [q0, a, r], {}, o + "_rf")
    if attrs.get("fmod", 0) or dt.startswith("u"):
        ctx.out(0, r)
        return
    zero = ctx.scalar_like(0, r, "zero")
    differ = ctx.emit("logical_not", [ctx.emit("equal", [ctx.emit("less", [r, zero], {}, o + "_rneg"),
                                                         ctx.emit("less", [b, zero], {}, o + "_bneg")], {}, o + "_same")],
                      {}, o + "_differ")
    nonzero = ctx.emit("logical_not", [ctx.emit("equal", [r, zero], {}, o + "_rzero")], {}, o + "_rnz")
    fix = ctx.emit("logical_and", [differ, nonzero], {}, o + "_fix")
    ctx.out(0, ctx.emit("where", [fix, ctx.emit("add", [r, b], {}, o + "_rb"), r], {}, o))


@composes("InstanceNormalization")
def _instance_norm(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """(x - mean) / sqrt(var + eps) * scale + bias, statistics per sample and channel over the
    spatial axes; scale and bias (C,) broadcast as (C, 1, ..., 1)."""
    x, scale, bias, o = ctx.input(0), ctx.input(1), ctx.input(2), node.output[0]
    rank = len(value_shape(x))
    axes = tuple(range(2, rank))
    mean = ctx.emit("mean", [x], {"axes": axes, "keepdims": True}, o + "_mean")
    centred = ctx.emit("sub", [x, mean], {}, o + "_centred")
    var = ctx.emit("mean", [ctx.emit("mul", [centred, centred], {}, o + "_sq")], {"axes": axes, "keepdims": True},
                   o + "_var")
    eps = ctx.scalar_like(float(attrs.get("epsilon", 1e-5)), x, "eps")
    inv = ctx.emit("reciprocal", [ctx.emit("sqrt", [ctx.emit("add", [var, eps], {}, o + "_ve")], {}, o + "_std")],
                   {}, o + "_inv")
    per_channel = {"axes": tuple(range(1, rank - 1))}
    s = ctx.emit("expand_dims", [scale], per_channel, o + "_s")
    b = ctx.emit("expand_dims", [bias], per_channel, o + "_b")
    normed = ctx.emit("mul", [centred, ctx.emit("mul", [inv, s], {}, o + "_is")], {}, o + "_normed")
    ctx.out(0, ctx.emit("add", [normed, b], {}, o))


@composes("LRN")
def _lrn(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """x / (bias + alpha / size * sum of x**2 over a window of `size` channels) ** beta; the window
    runs from c - (size - 1) // 2 to c + ceil((size - 1) / 2), zero-padded at the edges."""
    x, o = ctx.input(0), node.output[0]
    size = int(attrs["size"])
    rank = len(value_shape(x))
    channels = value_shape(x)[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = ctx.emit("mul", [x, x], {}, o + "_sq")
    pads = [0] * (2 * rank)
    pads[1], pads[rank + 1] = lo, hi
    padded = ctx.emit("pad", [sq], {"pads": tuple(pads)}, o + "_padded")
    total: Value | None = None
    for k in range(size):
        part = ctx.emit("strided_slice", [padded], {"axes": (1,), "begin": (k,), "end": (channels + k,)}, o + f"_w{k}")
        total = part if total is None else ctx.emit("add", [total, part], {}, o + f"_sum{k}")
    assert total is not None
    scaled = ctx.emit("mul", [total, ctx.scalar_like(float(attrs.get("alpha", 1e-4)) / size, x, "alpha")], {},
                      o + "_scaled")
    base = ctx.emit("add", [scaled, ctx.scalar_like(float(attrs.get("bias", 1.0)), x, "bias")], {}, o + "_base")
    denom = ctx.emit("pow", [base, ctx.scalar_like(float(attrs.get("beta", 0.75)), x, "beta")], {}, o + "_denom")
    ctx.out(0, ctx.emit("div", [x, denom], {}, o))


@composes("Shrink")
def _shrink(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """x + bias where x < -lambd, x - bias where x > lambd, else 0."""
    x, o = ctx.input(0), node.output[0]
    lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
    below = ctx.emit("less", [x, ctx.scalar_like(-lambd, x, "neg_lambd")], {}, o + "_below")
    above = ctx.emit("greater", [x, ctx.scalar_like(lambd, x, "lambd")], {}, o + "_above")
    up = ctx.emit("add", [x, ctx.scalar_like(bias, x, "bias")], {}, o + "_up")
    down = ctx.emit("sub", [x, ctx.scalar_like(bias, x, "bias")], {}, o + "_down")
    zero = ctx.scalar_like(0.0, x, "zero")
    inner = ctx.emit("where", [above, down, zero], {}, o + "_inner")
    ctx.out(0, ctx.emit("where", [below, up, inner], {}, o))
