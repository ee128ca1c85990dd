"""ONNX node handlers for math and neural-network ops, and the table of every handler.

Handlers read inputs through the context (`ctx.input(i)` materialises a Value; `ctx.const` gives
a statically known value) and set outputs with `ctx.out`. Shape/layout ops live in
onnx_layout.py, compositions in onnx_compose.py, LSTM/GRU in onnx_rnn.py; `HANDLERS` joins them.
docs/ops.md lists the limits each handler enforces.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from ..ir.arith import as_int
from ..ir.dtype import to_numpy
from ..ir.expr import Const, Expr
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


@handles("MatMul")
def _matmul(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("matmul", [ctx.input(0), ctx.input(1)], {}, node.output[0]))


@handles("Gemm")
def _gemm(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    o = node.output[0]
    a, b = ctx.input(0), ctx.input(1)
    if attrs.get("transA", 0):
        a = ctx.emit("transpose", [a], {"perm": (1, 0)}, o + "_aT")
    if attrs.get("transB", 0):
        b = ctx.emit("transpose", [b], {"perm": (1, 0)}, o + "_bT")
    y = ctx.emit("matmul", [a, b], {}, o + "_mm")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        y = ctx.emit("mul", [y, ctx.scalar_like(alpha, y, "alpha")], {}, o + "_alpha")
    if (cname := ctx.opt_input(2)) is not None and beta != 0.0:
        c = ctx.value(cname)
        if beta != 1.0:
            c = ctx.emit("mul", [c, ctx.scalar_like(beta, c, "beta")], {}, o + "_beta")
        y = ctx.emit("add", [y, c], {}, o)
    ctx.out(0, y)


def _spatial_pads(ctx: Ctx, attrs: dict[str, Any], shape: tuple[Expr, ...], k: list[int], s: list[int],
                  d: list[int]) -> tuple[int, ...]:
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        return tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    if auto == "VALID":
        return (0, 0, 0, 0)
    begin, end = [], []
    for i in range(2):
        n = as_int(shape[2 + i])
        if n is None:
            raise ctx.error(f"auto_pad={auto} needs constant spatial dims")
        total = max(0, (math.ceil(n / s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - n)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return tuple(begin + end)


def _check_2d(ctx: Ctx, x: Any) -> None:
    if len(value_shape(x)) != 4:
        raise ctx.error(f"only 1-D (NCL) and 2-D (NCHW) inputs are supported, got rank {len(value_shape(x))}")


def _lift_1d(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any], weight: bool) -> tuple[Any, Any, dict[str, Any]]:
    """A 1-D (N, C, L) conv or pool as a 2-D one over (N, C, 1, L): x (and the weight) get a unit
    axis 2; spatial attributes get a leading 1 (pads a 0 per side). Returns (x, w or None, attrs)."""
    x = ctx.input(0)
    if len(value_shape(x)) != 3:
        return x, ctx.input(1) if weight else None, attrs
    o = node.output[0]
    x = ctx.emit("expand_dims", [x], {"axes": (2,)}, o + "_x2d")
    w = ctx.emit("expand_dims", [ctx.input(1)], {"axes": (2,)}, o + "_w2d") if weight else None
    a = dict(attrs)
    for k, v in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("output_padding", 0), ("output_shape", 1)):
        if k in a:
            a[k] = [v] + [int(t) for t in a[k]]
    if "pads" in a:
        p = [int(t) for t in a["pads"]]
        a["pads"] = [0, p[0], 0, p[1]]
    return x, w, a


def _squeeze_1d(ctx: Ctx, node: onnx.NodeProto, y: Any, lifted: bool) -> Any:
    if not lifted:
        return y
    return ctx.emit("squeeze", [y], {"axes": (2,)}, node.output[0])


def _add_channel_bias(ctx: Ctx, y: Any, bname: str | None, out: str) -> Any:
    if bname is None:
        return y
    b = ctx.value(bname)
    b = ctx.emit("reshape", [b], {"shape": (value_shape(b)[0], 1, 1)}, out + "_bias")
    return ctx.emit("add", [y, b], {}, out)


def _transpose_pads(ctx: Ctx, attrs: dict[str, Any], shape: tuple[Expr, ...], k: list[int | None], s: list[int],
                    d: list[int], op: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ConvTranspose pads (and output padding) giving `output_shape`, or input * stride for SAME auto_pad:
    the total padding is split begin/end as ONNX says (SAME_UPPER puts the extra one at the end);
    a negative total becomes extra output padding."""
    upper = str(attrs.get("auto_pad", "NOTSET")) != "SAME_LOWER"
    begin, end, extra = [], [], []
    for i in range(2):
        n, ki = as_int(shape[2 + i]), k[i]
        if n is None or ki is None:
            raise ctx.error("ConvTranspose output_shape / SAME auto_pad needs constant spatial dims")
        out = int(attrs["output_shape"][-2 + i]) if "output_shape" in attrs else n * s[i]
        total = s[i] * (n - 1) + op[i] + (ki - 1) * d[i] + 1 - out
        extra.append(op[i] + max(0, -total))
        total = max(0, total)
        lo = total // 2 if upper else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return tuple(begin + end), tuple(extra)


def _conv3d(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """A 3-D Conv (N, C, D, H, W) as a sum of 2-D ones over the kernel's depth: for each kernel
    slice kd the input depths kd * dilation + t * stride (t < D_out) are folded into the batch
    ((N * D_out, C, H, W), after padding D) and convolved with w[:, :, kd]; the sums come back as
    (N, O, D_out, H_out, W_out). Groups, strides, dilations and pads carry over per axis."""
    x, w, o = ctx.input(0), ctx.input(1), node.output[0]
    n, c, dd, hh, ww = value_shape(x)
    kd, kh, kw = (as_int(v) for v in value_shape(w)[2:])
    st = [int(v) for v in attrs.get("strides", (1, 1, 1))]
    dl = [int(v) for v in attrs.get("dilations", (1, 1, 1))]
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if kd is None or kh is None or kw is None:
        raise ctx.error("3-D Conv needs a constant kernel shape")
    if auto in ("NOTSET", ""):
        p = [int(v) for v in attrs.get("pads", (0,) * 6)]
    elif auto == "VALID":
        p = [0] * 6
    else:
        p = [0] * 6
        for i, (size, k) in enumerate(zip((dd, hh, ww), (kd, kh, kw))):
            sz = as_int(size)
            if sz is None:
                raise ctx.error(f"auto_pad={auto} needs constant spatial dims")
            total = max(0, (math.ceil(sz / st[i]) - 1) * st[i] + (k - 1) * dl[i] + 1 - sz)
            p[i] = total // 2 if auto == "SAME_UPPER" else total - total // 2
            p[i + 3] = total - p[i]
    d_in = as_int(dd)
    if d_in is None:
        raise ctx.error("3-D Conv needs a constant depth (input dim 2)")
    d_out = (d_in + p[0] + p[3] - dl[0] * (kd - 1) - 1) // st[0] + 1
    if d_out < 1:
        raise ctx.error(f"3-D Conv: the kernel ({kd}, dilation {dl[0]}) is deeper than the padded input ({d_in})")
    xt = x
    if p[0] or p[3]:
        xt = ctx.emit("pad", [xt], {"pads": (0, 0, p[0], 0, 0, 0, 0, p[3], 0, 0), "value": 0.0}, o + "_dpad")
    xt = ctx.emit("transpose", [xt], {"perm": (0, 2, 1, 3, 4)}, o + "_ndchw")
    a2 = {"strides": (st[1], st[2]), "dilations": (dl[1], dl[2]), "groups": int(attrs.get("group", 1)),
          "pads": (p[1], p[2], p[4], p[5])}
    acc = None
    for k in range(kd):
        b = k * dl[0]
        xs = ctx.emit("strided_slice", [xt], {"axes": (1,), "begin": (b,), "end": (b + (d_out - 1) * st[0] + 1,),
                                               "strides": (st[0],)}, o + f"_d{k}")
        xs = ctx.emit("reshape", [xs], {"shape": (n * d_out, c, hh, ww)}, o + f"_d{k}_2d")
        wk = ctx.emit("strided_slice", [w], {"axes": (2,), "begin": (k,), "end": (k + 1,), "strides": (1,)}, o + f"_w{k}")
        wk = ctx.emit("squeeze", [wk], {"axes": (2,)}, o + f"_w{k}_2d")
        y = ctx.emit("conv2d", [xs, wk], a2, o + f"_c{k}")
        acc = y if acc is None else ctx.emit("add", [acc, y], {}, o + f"_acc{k}")
    assert acc is not None
    oc, ho, wo = value_shape(acc)[1:]
    y = ctx.emit("reshape", [acc], {"shape": (n, d_out, oc, ho, wo)}, o + "_nd")
    y = ctx.emit("transpose", [y], {"perm": (0, 2, 1, 3, 4)}, o if ctx.opt_input(2) is None else o + "_conv")
    if (bname := ctx.opt_input(2)) is not None:
        b = ctx.value(bname)
        y = ctx.emit("add", [y, ctx.emit("reshape", [b], {"shape": (value_shape(b)[0], 1, 1, 1)}, o + "_bias")], {}, o)
    ctx.out(0, y)


@handles("Conv", "ConvTranspose")
def _conv(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if node.op_type == "Conv" and len(ctx.type_of(node.input[0]).shape or ()) == 5:
        _conv3d(ctx, node, attrs)
        return
    lifted = len(ctx.type_of(node.input[0]).shape or ()) == 3
    x, w, attrs = _lift_1d(ctx, node, attrs, True)
    _check_2d(ctx, x)
    o = node.output[0] + ("_2d" if lifted else "")
    k = [as_int(v) for v in value_shape(w)[2:]]
    s = [int(v) for v in attrs.get("strides", (1, 1))]
    d = [int(v) for v in attrs.get("dilations", (1, 1))]
    a: dict[str, Any] = {"strides": tuple(s), "dilations": tuple(d), "groups": int(attrs.get("group", 1))}
    if node.op_type == "Conv":
        a["pads"] = _spatial_pads(ctx, attrs, value_shape(x), k, s, d)
        op = "conv2d"
    else:
        auto = str(attrs.get("auto_pad", "NOTSET"))
        a["pads"] = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0))) if auto in ("NOTSET", "") else (0, 0, 0, 0)
        a["output_padding"] = tuple(int(p) for p in attrs.get("output_padding", (0, 0)))
        if "output_shape" in attrs or auto.startswith("SAME"):
            a["pads"], a["output_padding"] = _transpose_pads(ctx, attrs, value_shape(x), k, s, d, a["output_padding"])
        op = "conv2d_transpose"
    y = ctx.emit(op, [x, w], a, o if ctx.opt_input(2) is None else o + "_conv")
    ctx.out(0, _squeeze_1d(ctx, node, _add_channel_bias(ctx, y, ctx.opt_input(2), o), lifted))


def _avg_pool_dilated(ctx: Ctx, x: Any, k: list[int], st: list[int], p: list[int], dl: list[int], ceil: bool,
                      include_pad: bool, o: str) -> Any:
    """A dilated 2-D average pool as two depthwise convolutions with a ones kernel (conv2d has
    dilations): the window sums of x over the window counts (the same convolution over a ones mask
    of the input, or of the padded input when pads count). Extra end padding for ceil_mode windows
    is never counted, as avg_pool2d. Needs static spatial dims."""
    from ..ir.ops.shapes import window_out

    n, c, hh, ww = value_shape(x)
    hw = [as_int(hh), as_int(ww)]
    if None in hw or as_int(c) is None:
        raise ctx.error("AveragePool with dilations needs static channels and spatial dims")
    ends = []
    for i in range(2):
        size = hw[i]
        assert size is not None
        out = as_int(window_out(Const(size), p[i] + p[i + 2], k[i], st[i], dl[i], ceil))
        assert out is not None
        if ceil and (out - 1) * st[i] >= size + p[i]:
            out -= 1
        extra = max(0, (out - 1) * st[i] + dl[i] * (k[i] - 1) + 1 - (size + p[i] + p[i + 2]))
        ends.append(p[i + 2] + extra)
    pads = (p[0], p[1], ends[0], ends[1])
    conv = {"strides": tuple(st), "dilations": tuple(dl), "pads": pads}
    dt = value_dtype(x)
    ones_k = ctx.constant(np.ones((int(as_int(c) or 1), 1, k[0], k[1]), to_numpy(dt)), o + "_ones_k")
    total = ctx.emit("conv2d", [x, ones_k], {**conv, "groups": int(as_int(c) or 1)}, o + "_sum")
    mask = np.ones((1, 1, hw[0], hw[1]), to_numpy(dt))  # type: ignore[arg-type]
    cpads = pads
    if include_pad:  # the declared pads count, the extra ceil_mode padding does not
        mask = np.pad(mask, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=1)
        cpads = (0, 0, ends[0] - p[2], ends[1] - p[3])
    cnt = ctx.emit("conv2d", [ctx.constant(mask, o + "_mask"), ctx.constant(np.ones((1, 1, k[0], k[1]), to_numpy(dt)),
                                                                             o + "_ones1")],
                   {**conv, "pads": cpads, "groups": 1}, o + "_count")
    return ctx.emit("div", [total, cnt], {}, o)


def _pool3d(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """A 3-D (N, C, D, H, W) pool as two 2-D ones: over (H, W) with D folded into the channels, then
    over D with H * W as the width. Max and average windows are boxes, so both split exactly (an
    average's valid-element count is the product of the per-axis counts)."""
    x, o = ctx.input(0), node.output[0]
    if str(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID", ""):
        raise ctx.error("3-D pooling with SAME auto_pad is not supported")
    n, c, dd, hh, ww = value_shape(x)
    k = [int(v) for v in attrs["kernel_shape"]]
    st = [int(v) for v in attrs.get("strides", (1, 1, 1))]
    dl = [int(v) for v in attrs.get("dilations", (1, 1, 1))]
    p = [int(v) for v in attrs.get("pads", (0,) * 6)] if str(attrs.get("auto_pad", "NOTSET")) != "VALID" else [0] * 6
    common: dict[str, Any] = {"ceil_mode": bool(attrs.get("ceil_mode", 0))}
    if node.op_type == "MaxPool":
        op = "max_pool2d"
        hw_extra: dict[str, Any] = {"dilations": (dl[1], dl[2])}
        d_extra: dict[str, Any] = {"dilations": (dl[0], 1)}
    else:
        op = "avg_pool2d"
        hw_extra = d_extra = {"count_include_pad": bool(attrs.get("count_include_pad", 0))}
    dilated_avg = op == "avg_pool2d" and dl != [1, 1, 1]
    y = ctx.emit("reshape", [x], {"shape": (n, c * dd, hh, ww)}, o + "_hw_in")
    if dilated_avg:
        y = _avg_pool_dilated(ctx, y, k[1:], st[1:], [p[1], p[2], p[4], p[5]], dl[1:], common["ceil_mode"],
                              hw_extra["count_include_pad"], o + "_hw")
    else:
        y = ctx.emit(op, [y], {"kernel_shape": (k[1], k[2]), "strides": (st[1], st[2]),
                               "pads": (p[1], p[2], p[4], p[5]), **common, **hw_extra}, o + "_hw")
    ho, wo = value_shape(y)[2:]
    y = ctx.emit("reshape", [y], {"shape": (n, c, dd, ho * wo)}, o + "_d_in")
    if dilated_avg:
        y = _avg_pool_dilated(ctx, y, [k[0], 1], [st[0], 1], [p[0], 0, p[3], 0], [dl[0], 1], common["ceil_mode"],
                              d_extra["count_include_pad"], o + "_d")
    else:
        y = ctx.emit(op, [y], {"kernel_shape": (k[0], 1), "strides": (st[0], 1), "pads": (p[0], 0, p[3], 0),
                               **common, **d_extra}, o + "_d")
    ctx.out(0, ctx.emit("reshape", [y], {"shape": (n, c, value_shape(y)[2], ho, wo)}, o))


@handles("MaxPool", "AveragePool")
def _pool(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if len(ctx.type_of(node.input[0]).shape or ()) == 5 and not (len(node.output) > 1 and node.output[1]):
        _pool3d(ctx, node, attrs)
        return
    lifted = len(ctx.type_of(node.input[0]).shape or ()) == 3
    x, _, attrs = _lift_1d(ctx, node, attrs, False)
    _check_2d(ctx, x)
    if len(node.output) > 1 and node.output[1]:
        raise ctx.error("MaxPool indices output is not supported")
    k = [int(v) for v in attrs["kernel_shape"]]
    s = [int(v) for v in attrs.get("strides", (1, 1))]
    d = [int(v) for v in attrs.get("dilations", (1, 1))]
    a: dict[str, Any] = {"kernel_shape": tuple(k), "strides": tuple(s), "ceil_mode": bool(attrs.get("ceil_mode", 0)),
                         "pads": _spatial_pads(ctx, attrs, value_shape(x), k, s, d)}
    if node.op_type == "MaxPool":
        a["dilations"] = tuple(d)
        op = "max_pool2d"
    else:
        a["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        if d != [1, 1]:
            y = _avg_pool_dilated(ctx, x, k, s, list(a["pads"]), d, a["ceil_mode"], a["count_include_pad"],
                                  node.output[0] + ("_2d" if lifted else ""))
            ctx.out(0, _squeeze_1d(ctx, node, y, lifted))
            return
        op = "avg_pool2d"
    y = ctx.emit(op, [x], a, node.output[0] + ("_2d" if lifted else ""))
    ctx.out(0, _squeeze_1d(ctx, node, y, lifted))


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    rank = len(value_shape(x))
    if node.op_type == "GlobalAveragePool" and rank == 4:
        ctx.out(0, ctx.emit("global_avg_pool2d", [x], {}, node.output[0]))
        return
    op = "mean" if node.op_type == "GlobalAveragePool" else "max"
    ctx.out(0, ctx.emit(op, [x], {"axes": tuple(range(2, rank)), "keepdims": True}, node.output[0]))


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
