"""Windowed ops over NCHW tensors: conv2d, conv2d_transpose, max/avg pooling, global average pooling.

They share window attributes (strides, pads, dilations: shapes.conv_attrs / window_out), and their
ONNX handlers share the lifting of 1-D and 3-D variants onto the 2-D ops. Declaration, shape rule,
numpy reference, lowering and ONNX handlers of each op sit together; the gradient slot
(`OpDef.grad`) stays None until autodiff fills it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import arith
from ..arith import as_int, simplify
from ..diagnostics import Loc, MlcError
from ..dtype import to_numpy
from ..expr import Bin, Const, Expr, Select, reduction_identity
from ..tir_builder import Builder, Index, Tensor, all_of, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, in_range, out_dtype, out_shape, product
from .reductions import reduce_op
from .reference import Env, ev, ref, windows
from .registry import (
    REQUIRED,
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
    ONE,
    check_dim,
    conv_attrs,
    ints_attr,
    nchw,
    pool_dims,
    same_dtype,
    tensor,
    window_out,
)

# ---- declarations ----------------------------------------------------------------------------
_CONV_ATTRS = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "groups": 1}

_POOL_ATTRS = {"kernel_shape": REQUIRED, "strides": (1, 1), "pads": (0, 0, 0, 0), "ceil_mode": False}


# ---- conv2d ----------------------------------------------------------------------------------
define("conv2d", "out_ewise_fusable", 2, _CONV_ATTRS,
       "NCHW x OIHW grouped convolution; pads = (top, left, bottom, right)")


@register_infer("conv2d")
def _conv2d_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    x, w = nchw(args[0], loc), nchw(args[1], loc)
    dt = same_dtype([tensor(args[0], loc), tensor(args[1], loc)], loc)
    g = int(attrs.get("groups", 1))
    check_dim(x[1], simplify(w[1] * g), f"conv2d: input channels vs weight channels x groups ({g})", loc)
    wo = as_int(w[0])
    if wo is not None and wo % g:
        raise MlcError(f"conv2d: output channels {wo} not divisible by groups {g}", loc)
    k = (as_int(w[2]), as_int(w[3]))
    if None in k:
        raise MlcError("conv2d: kernel size must be constant", loc)
    hw = pool_dims(x, attrs, loc, k, False)  # type: ignore[arg-type]
    return TensorType((x[0], w[0]) + hw, dt)


@ref("conv2d")
def _conv2d_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, w = args
    s, p, d, g = conv_attrs(attrs)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (wd + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    cols = windows(xp, (kh, kw), s, d, (ho, wo)).reshape(n, g, cg, kh * kw, ho, wo)
    wg = w.reshape(g, o // g, cg, kh * kw)
    return np.einsum("ngckhw,gock->ngohw", cols, wg, optimize=True).reshape(n, o, ho, wo)


@register_lower("conv2d")
def _conv2d_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, w = as_tensor(args[0]), as_tensor(args[1])
    s, p, d, g = conv_attrs(attrs)
    shp = out_shape(t)
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    og = arith.simplify(Bin("floordiv", w.shape[0], Const(g)))
    padded = any(p)

    def value(i: Index, r: Index) -> Expr:
        n, o, oh, ow = i
        c, ih, iw = r
        h = oh * s[0] - p[0] + ih * d[0]
        wd = ow * s[1] - p[1] + iw * d[1]
        ch = c if g == 1 else Bin("floordiv", o, og) * cg + c
        val = product(x.at((n, ch, h, wd)), w.at((o, c, ih, iw)), out_dtype(t))
        if not padded:
            return val
        cond = all_of(*in_range(h, x.shape[2]), *in_range(wd, x.shape[3]))
        return Select(cond, val, cst(0, val.dtype))

    return b.reduce(shp, out_dtype(t), "add", (cg, kh, kw), value, "conv2d")


# ---- conv2d_transpose ------------------------------------------------------------------------
define("conv2d_transpose", "out_ewise_fusable", 2, {**_CONV_ATTRS, "output_padding": (0, 0)},
       "transposed convolution; weight (C_in, C_out/groups, kh, kw)")


@register_infer("conv2d_transpose")
def _conv2d_t_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    x, w = nchw(args[0], loc), nchw(args[1], loc)
    dt = same_dtype([tensor(args[0], loc), tensor(args[1], loc)], loc)
    g = int(attrs.get("groups", 1))
    check_dim(x[1], w[0], "conv2d_transpose: input channels vs weight dim 0", loc)
    strides = ints_attr(attrs.get("strides", (1, 1)), 2, "strides", loc)
    pads = ints_attr(attrs.get("pads", (0, 0, 0, 0)), 4, "pads", loc)
    dil = ints_attr(attrs.get("dilations", (1, 1)), 2, "dilations", loc)
    opad = ints_attr(attrs.get("output_padding", (0, 0)), 2, "output_padding", loc)
    hw = []
    for i in range(2):
        k = as_int(w[2 + i])
        if k is None:
            raise MlcError("conv2d_transpose: kernel size must be constant", loc)
        hw.append(simplify(strides[i] * (x[2 + i] - 1) + opad[i] + (k - 1) * dil[i] + 1 - pads[i] - pads[i + 2]))
    return TensorType((x[0], simplify(w[1] * g), hw[0], hw[1]), dt)


@ref("conv2d_transpose")
def _conv2d_t_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, w = args
    s, p, d, g = conv_attrs(attrs)
    op = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    hf = s[0] * (h - 1) + d[0] * (kh - 1) + 1 + op[0]
    wf = s[1] * (wd - 1) + d[1] * (kw - 1) + 1 + op[1]
    out = np.zeros((n, g, og, hf, wf), dtype=np.result_type(x, w))
    xg = x.reshape(n, g, c // g, h, wd)
    wg = w.reshape(g, c // g, og, kh, kw)
    for i in range(kh):
        for j in range(kw):
            contrib = np.einsum("ngchw,gco->ngohw", xg, wg[:, :, :, i, j], optimize=True)
            out[:, :, :, i * d[0]: i * d[0] + s[0] * (h - 1) + 1: s[0],
                j * d[1]: j * d[1] + s[1] * (wd - 1) + 1: s[1]] += contrib
    out = out.reshape(n, g * og, hf, wf)
    return out[:, :, p[0]: hf - p[2], p[1]: wf - p[3]]


@register_lower("conv2d_transpose")
def _conv2d_t_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, w = as_tensor(args[0]), as_tensor(args[1])
    s, p, d, g = conv_attrs(attrs)
    shp = out_shape(t)
    og, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    cg = arith.simplify(Bin("floordiv", x.shape[1], Const(g)))

    def value(i: Index, r: Index) -> Expr:
        n, o, oy, ox = i
        c, ih, iw = r
        grp = Bin("floordiv", o, og)
        ch = grp * cg + c
        ty = oy + p[0] - ih * d[0]
        tx = ox + p[1] - iw * d[1]
        hy, hx = Bin("floordiv", ty, Const(s[0])), Bin("floordiv", tx, Const(s[1]))
        conds = [Bin("ge", ty, Const(0)), Bin("eq", Bin("floormod", ty, Const(s[0])), Const(0)),
                 Bin("lt", hy, x.shape[2])]
        conds += [Bin("ge", tx, Const(0)), Bin("eq", Bin("floormod", tx, Const(s[1])), Const(0)),
                  Bin("lt", hx, x.shape[3])]
        cond = all_of(*conds)
        val = product(x.at((n, ch, hy, hx)), w.at((ch, Bin("floormod", o, og), ih, iw)), out_dtype(t))
        return Select(cond, val, cst(0, val.dtype))

    return b.reduce(shp, out_dtype(t), "add", (cg, kh, kw), value, "conv2d_transpose")


# ---- max_pool2d, avg_pool2d ------------------------------------------------------------------
define("max_pool2d", "out_ewise_fusable", 1, {**_POOL_ATTRS, "dilations": (1, 1)}, "NCHW max pooling, pads with -inf")

define("avg_pool2d", "out_ewise_fusable", 1, {**_POOL_ATTRS, "count_include_pad": False}, "NCHW average pooling")


@register_infer("max_pool2d", "avg_pool2d")
def _pool_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = nchw(t, loc)
    k = ints_attr(attrs["kernel_shape"], 2, "kernel_shape", loc)
    return TensorType(s[:2] + pool_dims(s, attrs, loc, k, bool(attrs.get("ceil_mode", False))), t.dtype)


def _pool_setup(x: np.ndarray, attrs: dict[str, Any], t: Type, env: Env
                ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, ...]]:
    k = tuple(int(v) for v in attrs["kernel_shape"])
    s, p, d, _ = conv_attrs(attrs)
    assert isinstance(t, TensorType) and t.shape is not None
    out = (ev(t.shape[2], env), ev(t.shape[3], env))
    # extra end padding so ceil_mode windows stay in bounds (never counted as real padding)
    extra = tuple(max(0, (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - (x.shape[2 + i] + p[i] + p[i + 2]))
                  for i in range(2))
    return k, s, d, out, p + extra  # type: ignore[return-value]


@ref("max_pool2d")
def _maxpool_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    k, s, d, out, p = _pool_setup(x, attrs, t, env)
    lo = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2] + p[4]), (p[1], p[3] + p[5])), constant_values=lo)
    return windows(xp, k, s, d, out).max(axis=2)


@ref("avg_pool2d")
def _avgpool_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    k, s, d, out, p = _pool_setup(x, attrs, t, env)
    pads = ((0, 0), (0, 0), (p[0], p[2] + p[4]), (p[1], p[3] + p[5]))
    total = windows(np.pad(x, pads), k, s, d, out).sum(axis=2)
    mask = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    if attrs.get("count_include_pad", False):
        mask = np.pad(mask, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=1)
        pads = ((0, 0), (0, 0), (0, p[4]), (0, p[5]))
    count = windows(np.pad(mask, pads), k, s, d, out).sum(axis=2)
    return total / count


def _pool_window(attrs: Attrs) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    k = tuple(int(v) for v in attrs["kernel_shape"])
    s, p, d, _ = conv_attrs(attrs)
    return k, s, p, d


@register_lower("max_pool2d")
def _max_pool_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    k, s, p, d = _pool_window(attrs)

    def value(i: Index, r: Index) -> Expr:
        h = i[2] * s[0] - p[0] + r[0] * d[0]
        w = i[3] * s[1] - p[1] + r[1] * d[1]
        cond = all_of(*in_range(h, x.shape[2]), *in_range(w, x.shape[3]))
        return Select(cond, x.at((i[0], i[1], h, w)), reduction_identity("max", x.dtype))

    return b.reduce(out_shape(t), x.dtype, "max", (Const(k[0]), Const(k[1])), value, "max_pool2d")


@register_lower("avg_pool2d")
def _avg_pool_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Window sum over real elements divided by a count (of real or of padded positions)."""
    x = as_tensor(args[0])
    k, s, p, d = _pool_window(attrs)
    shp = out_shape(t)
    incl = bool(attrs.get("count_include_pad", False))

    def pos(i: Index, r: Index) -> tuple[Expr, Expr]:
        return i[2] * s[0] - p[0] + r[0] * d[0], i[3] * s[1] - p[1] + r[1] * d[1]

    def real(i: Index, r: Index) -> Expr:
        h, w = pos(i, r)
        return all_of(*in_range(h, x.shape[2]), *in_range(w, x.shape[3]))

    def counted(i: Index, r: Index) -> Expr:
        if not incl:
            return real(i, r)
        h, w = pos(i, r)
        return all_of(Bin("ge", h, Const(-p[0])), Bin("lt", h, x.shape[2] + p[2]),
                      Bin("ge", w, Const(-p[1])), Bin("lt", w, x.shape[3] + p[3]))

    win = (Const(k[0]), Const(k[1]))
    zero = cst(0, x.dtype)
    total = b.reduce(shp, x.dtype, "add", win,
                     lambda i, r: Select(real(i, r), x.at((i[0], i[1]) + pos(i, r)), zero), "pool_sum")
    count = b.reduce(shp[2:], x.dtype, "add", win,
                     lambda i, r: Select(counted((Const(0), Const(0)) + i, r), cst(1, x.dtype), zero), "pool_count")
    return b.compute(shp, x.dtype, lambda i: Bin("div", total.at(i), count.at(i[2:])), "avg_pool2d")


# ---- global_avg_pool2d -----------------------------------------------------------------------
define("global_avg_pool2d", "reduction", 1, doc="mean over H and W, keeping them as 1")


@register_infer("global_avg_pool2d")
def _gap_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = nchw(t, loc)
    return TensorType(s[:2] + (ONE, ONE), t.dtype)


@ref("global_avg_pool2d")
def _gap_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.mean(args[0], axis=(2, 3), keepdims=True)


@register_lower("global_avg_pool2d")
def _gap_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    return reduce_op(b, x, "mean", [2, 3], True, out_shape(t), x.dtype)


# ---- ONNX handlers (Conv, ConvTranspose, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool) ----
def _spatial_pads(ctx: ImportContext, attrs: dict[str, Any], shape: tuple[Expr, ...], k: list[int], s: list[int],
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


def _check_2d(ctx: ImportContext, x: Any) -> None:
    if len(value_shape(x)) != 4:
        raise ctx.error(f"only 1-D (NCL) and 2-D (NCHW) inputs are supported, got rank {len(value_shape(x))}")


def _lift_1d(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any], weight: bool) -> tuple[Any, Any, dict[str, Any]]:
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


def _squeeze_1d(ctx: ImportContext, node: OnnxNode, y: Any, lifted: bool) -> Any:
    if not lifted:
        return y
    return ctx.emit("squeeze", [y], {"axes": (2,)}, node.output[0])


def _add_channel_bias(ctx: ImportContext, y: Any, bname: str | None, out: str) -> Any:
    if bname is None:
        return y
    b = ctx.value(bname)
    b = ctx.emit("reshape", [b], {"shape": (value_shape(b)[0], 1, 1)}, out + "_bias")
    return ctx.emit("add", [y, b], {}, out)


def _transpose_pads(ctx: ImportContext, attrs: dict[str, Any], shape: tuple[Expr, ...], k: list[int | None], s: list[int],
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


def _conv3d(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
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


@register_onnx("Conv", "ConvTranspose")
def _conv_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
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


def _avg_pool_dilated(ctx: ImportContext, x: Any, k: list[int], st: list[int], p: list[int], dl: list[int], ceil: bool,
                      include_pad: bool, o: str) -> Any:
    """A dilated 2-D average pool as two depthwise convolutions with a ones kernel (conv2d has
    dilations): the window sums of x over the window counts (the same convolution over a ones mask
    of the input, or of the padded input when pads count). Extra end padding for ceil_mode windows
    is never counted, as avg_pool2d. Needs static spatial dims."""
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


def _pool3d(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
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


@register_onnx("MaxPool", "AveragePool")
def _pool_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
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


@register_onnx("GlobalAveragePool", "GlobalMaxPool")
def _global_pool_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    rank = len(value_shape(x))
    if node.op_type == "GlobalAveragePool" and rank == 4:
        ctx.out(0, ctx.emit("global_avg_pool2d", [x], {}, node.output[0]))
        return
    op = "mean" if node.op_type == "GlobalAveragePool" else "max"
    ctx.out(0, ctx.emit(op, [x], {"axes": tuple(range(2, rank)), "keepdims": True}, node.output[0]))
