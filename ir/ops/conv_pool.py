"""Windowed ops over NCHW tensors: conv2d, conv2d_transpose, max/avg pooling, global average pooling,
and the backward ops of conv and pooling (conv2d_grad_data, conv2d_grad_weight, max_pool2d_grad,
avg_pool2d_grad), which need kernels of their own.

They share window attributes (strides, pads, dilations: shapes.conv_attrs / window_out), and their
ONNX handlers share the lifting of 1-D and 3-D variants onto the 2-D ops. A window reads input
position o * stride - pad + r * dilation; the backward ops gather through its inverse
(`_window_source`: which windows read position i, and at which kernel offsets), so every gradient is a
gather-reduction with no scatter and no atomics. Declaration, shape rule, numpy reference, lowering,
gradient rule and ONNX handlers of each op sit together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import arith
from ..arith import as_int, simplify
from ..diagnostics import Loc, MlcError
from ..dtype import to_numpy
from ..expr import Bin, Const, Expr, Select, reduction_identity
from ..graph import Value
from ..tir_builder import Builder, CannotLower, Index, Tensor, all_of, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, in_range, out_dtype, out_shape, product
from .reductions import reduce_op
from .reference import Env, ev, ref, windows
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
    ONE,
    check_dim,
    conv_attrs,
    dim,
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


def _window_read(x: Tensor, n: Expr, ch: Expr, out: Index, r: Index, s: tuple[int, ...], p: tuple[int, ...],
                 d: tuple[int, ...]) -> tuple[Expr, Expr]:
    """x[n, ch] at kernel offset r of output window `out`, and whether that position is inside x
    (not padding). The load belongs in a Select arm: codegen guards arms, not conditions."""
    h = out[0] * s[0] - p[0] + r[0] * d[0]
    w = out[1] * s[1] - p[1] + r[1] * d[1]
    return x.at((n, ch, h, w)), all_of(*in_range(h, x.shape[2]), *in_range(w, x.shape[3]))


def _source_extents(k: tuple[int, ...], s: tuple[int, ...], d: tuple[int, ...]) -> tuple[Expr, Expr]:
    """The reduction extents of a gather through `_window_source`: per axis ceil(k / stride) when
    the stride's phases can be enumerated directly (stride > 1, dilation 1), else k."""
    return tuple(Const(-(-k[a] // s[a]) if s[a] > 1 and d[a] == 1 else k[a]) for a in range(2))  # type: ignore[return-value]


def _window_source(pos: Index, j: Index, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                   d: tuple[int, ...], out: Index, phase: Index | None = None) -> tuple[Index, Index, Expr]:
    """The output window (oh, ow) and kernel offset (rh, rw) through which input position `pos` was
    read, for the j-th candidate (j over `_source_extents`), and whether that pair exists: the
    inverse of `_window_read`, through which transposed convolution and the gradients of the
    windowed ops gather. pos + pad - r * dilation must be a non-negative multiple of the stride
    below the output size. With dilation 1 and stride s only the offsets r = (pos + pad) mod s + s * j
    qualify, so j enumerates them (window (pos + pad) div s - j): s times fewer iterations per
    axis than trying every offset and testing divisibility. With `phase`, the position is
    s * pos + phase, and the window index is affine in pos (a vector loop over it loads contiguously)."""
    wins, offs, conds = [], [], []
    for a in range(2):
        at = pos[a] if phase is None else pos[a] * s[a] + phase[a]
        if s[a] > 1 and d[a] == 1:
            e = at + p[a] if phase is None else phase[a] + p[a]
            r = Bin("floormod", e, Const(s[a])) + j[a] * s[a]
            o = Bin("floordiv", e, Const(s[a])) - j[a]
            if phase is not None:
                o = pos[a] + o
            conds += [Bin("ge", o, Const(0)), Bin("lt", o, out[a])]
            if k[a] % s[a]:
                conds.append(Bin("lt", r, Const(k[a])))
        else:
            r = j[a]
            t = at + p[a] - r * d[a]
            o = t if s[a] == 1 else Bin("floordiv", t, Const(s[a]))
            conds += [Bin("ge", t, Const(0)), Bin("lt", o, out[a])]
            if s[a] != 1:
                conds.append(Bin("eq", Bin("floormod", t, Const(s[a])), Const(0)))
        wins.append(o)
        offs.append(r)
    return tuple(wins), tuple(offs), all_of(*conds)


def _unwindow(cols: np.ndarray, padded_hw: tuple[int, int], k: tuple[int, ...], s: tuple[int, ...],
              d: tuple[int, ...]) -> np.ndarray:
    """The adjoint of reference.windows: adds each element of (N, C, kh*kw, Ho, Wo) back onto the
    position of the padded (N, C, Hp, Wp) tensor it was read from (the references of the backward
    ops and of the transposed convolution)."""
    n, c, _, ho, wo = cols.shape
    out = np.zeros((n, c) + tuple(padded_hw), cols.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0],
                j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]] += cols[:, :, i * k[1] + j]
    return out


def _size_attr(attrs: dict[str, Any], name: str, loc: Loc) -> tuple[Expr, Expr]:
    """A 2-value size attribute (ints or symbolic dims: the forward input's H, W)."""
    v = attrs.get(name)
    if v is None or len(v) != 2:
        raise MlcError(f"attribute {name} needs 2 values (H, W), got {v!r}", loc)
    return dim(v[0]), dim(v[1])


# ---- conv2d ----------------------------------------------------------------------------------
define("conv2d", "out_ewise_fusable", 2, _CONV_ATTRS,
       "NCHW x OIHW grouped convolution; pads = (top, left, bottom, right)", reuses_inputs=True)


@register_infer("conv2d")
def _conv2d_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    x, w = nchw(args[0], loc), nchw(args[1], loc)
    dt = same_dtype([tensor(args[0], loc), tensor(args[1], loc)], loc)
    g = int(attrs.get("groups", 1))
    check_dim(x[1], simplify(w[1] * g), f"conv2d: input channels vs weight channels x groups ({g})", loc)
    hw = pool_dims(x, attrs, loc, _conv_kernel("conv2d", w, g, loc), False)
    return TensorType((x[0], w[0]) + hw, dt)


def _conv_kernel(op: str, w: tuple[Expr, ...], g: int, loc: Loc) -> tuple[int, int]:
    """The (kh, kw) of a conv weight (O, C/g, kh, kw), which must be constant, checking O % groups."""
    wo = as_int(w[0])
    if wo is not None and wo % g:
        raise MlcError(f"{op}: output channels {wo} not divisible by groups {g}", loc)
    kh, kw = as_int(w[2]), as_int(w[3])
    if kh is None or kw is None:
        raise MlcError(f"{op}: kernel size must be constant", loc)
    return kh, kw


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
        ch = c if g == 1 else Bin("floordiv", o, og) * cg + c
        xv, inside = _window_read(x, n, ch, (oh, ow), (ih, iw), s, p, d)
        val = product(xv, w.at((o, c, ih, iw)), out_dtype(t))
        return Select(inside, val, cst(0, val.dtype)) if padded else val

    return b.reduce(shp, out_dtype(t), "add", (cg, kh, kw), value, "conv2d")


# ---- im2col ----------------------------------------------------------------------------------
define("im2col", "injective", 1, {"kernel_shape": REQUIRED, "strides": (1, 1), "pads": (0, 0, 0, 0),
                                  "dilations": (1, 1), "pad_k": 0},
       "NCHW -> (N, OH*OW, kh*kw*C + pad_k): row oh*OW+ow holds the window of output (oh, ow), column "
       "(i*kw + j)*C + c its tap (i, j) of channel c, zeros for padding and the pad_k extra columns (passes/conv_gemm.py)")


@register_infer("im2col")
def _im2col_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = nchw(t, loc)
    k = ints_attr(attrs["kernel_shape"], 2, "kernel_shape", loc)
    extra = int(attrs.get("pad_k", 0))
    if min(k) < 1 or extra < 0:
        raise MlcError(f"im2col: kernel_shape must be positive and pad_k non-negative, got {k}, {extra}", loc)
    oh, ow = pool_dims(s, attrs, loc, k, False)
    return TensorType((s[0], simplify(oh * ow), simplify(s[1] * (k[0] * k[1]) + extra)), t.dtype)


@ref("im2col")
def _im2col_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    s, p, d, _ = conv_attrs(attrs)
    k = tuple(int(v) for v in attrs["kernel_shape"])
    n, c, h, wd = x.shape
    ho = (h + p[0] + p[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (wd + p[1] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    cols = windows(xp, k, s, d, (ho, wo)).transpose(0, 3, 4, 2, 1).reshape(n, ho * wo, k[0] * k[1] * c)  # type: ignore[arg-type]
    return np.pad(cols, ((0, 0), (0, 0), (0, int(attrs.get("pad_k", 0)))))


@register_lower("im2col")
def _im2col_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Stored, not virtual: the GEMM that reads it (passes/conv_gemm.py) needs plain operand loads
    for its template (a fused elementwise prologue is then computed once per column, not per use).
    Channels are the minor column index: a warp's consecutive columns read consecutive channels of
    one input pixel, contiguous where the input is a fused epilogue of the previous convolution's GEMM
    (whose rows are pixels, columns channels)."""
    x = as_tensor(args[0])
    s, p, d, _ = conv_attrs(attrs)
    kh, kw = (int(v) for v in attrs["kernel_shape"])
    shp = out_shape(t)
    ow = window_out(x.shape[3], p[1] + p[3], kw, s[1], d[1])
    taps = kh * kw
    real = simplify(x.shape[1] * taps)  # columns past it are pad_k's zeros
    extra = int(attrs.get("pad_k", 0)) > 0

    def fn(i: Index) -> Expr:
        n, row, col = i
        c = x.shape[1]
        ch = col if taps == 1 else Bin("floormod", col, c)
        tap = Bin("floordiv", col, c)
        r: tuple[Expr, Expr] = (Bin("floordiv", tap, Const(kw)) if kh > 1 else Const(0),
                                Bin("floormod", tap, Const(kw)) if kw > 1 else Const(0))
        if extra:  # a pad_k column's channel (one tap) or kernel row is past the end: clamped, so that
            # its masked load is provably in bounds (the clamp is last: CUDA's floordiv takes no min)
            if taps == 1:
                ch = Bin("min", ch, simplify(c - 1))
            elif kh > 1:
                r = (Bin("min", r[0], Const(kh - 1)), r[1])
        xv, inside = _window_read(x, n, ch, (Bin("floordiv", row, ow), Bin("floormod", row, ow)), r, s, p, d)
        conds = ([inside] if any(p) else []) + ([Bin("lt", col, real)] if extra else [])
        return Select(all_of(*conds), xv, cst(0, x.dtype)) if conds else xv

    return b.materialize(b.compute(shp, x.dtype, fn, "im2col"))


register_no_grad("im2col")  # made by conv-to-gemm in build pipelines, after `mlc autodiff` has run


# ---- conv2d_transpose ------------------------------------------------------------------------
define("conv2d_transpose", "out_ewise_fusable", 2, {**_CONV_ATTRS, "output_padding": (0, 0)},
       "transposed convolution; weight (C_in, C_out/groups, kh, kw)", reuses_inputs=True)


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


def _transposed_np(x: np.ndarray, w: np.ndarray, s: tuple[int, ...], d: tuple[int, ...], g: int,
                   full_hw: tuple[int, int]) -> np.ndarray:
    """Transposed convolution of x (N, C, H, W) with w (C, O/g, kh, kw) onto an unpadded canvas of
    `full_hw` (at least the windows' span; the caller crops the pads)."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    xg = x.reshape(n, g, c // g, h, wd)
    wg = w.reshape(g, c // g, og, kh * kw)
    cols = np.einsum("ngchw,gcok->ngokhw", xg, wg, optimize=True).reshape(n, g * og, kh * kw, h, wd)
    return _unwindow(cols, full_hw, (kh, kw), s, d)


@ref("conv2d_transpose")
def _conv2d_t_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, w = args
    s, p, d, g = conv_attrs(attrs)
    op = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
    h, wd = x.shape[2:]
    kh, kw = w.shape[2:]
    hf = s[0] * (h - 1) + d[0] * (kh - 1) + 1 + op[0]
    wf = s[1] * (wd - 1) + d[1] * (kw - 1) + 1 + op[1]
    out = _transposed_np(x, w, s, d, g, (hf, wf))
    return out[:, :, p[0]: hf - p[2], p[1]: wf - p[3]]


def _transposed_lower(b: Builder, args: Args, attrs: Attrs, t: Type, name: str) -> Tensor:
    """out[n, o, y, x] = sum over the input channels c of o's group and the kernel offsets r of
    x[n, c, window of (y, x) at r] * w[c, o mod og, r]: a gather through `_window_source`. The data
    gradient of conv2d is this with dy for x and conv2d's own weight.

    Strided without dilation, the sum is computed per stride phase, whose loads are affine in the
    inner positions, then interleaved into (N, O, H, W): with static dims one stride-1 convolution
    per phase (`_split_phases`), else one reduction over all phases (`_per_phase`). Gathering
    straight into (H, W) put floordiv/floormod of the vector lane into every load: at 3x3 stride 2,
    64 -> 128 channels @56, batch 4: 540 ms straight, 158 per phase, 70 split (jax.jit ~47)."""
    x, w = as_tensor(args[0]), as_tensor(args[1])
    s, p, d, g = conv_attrs(attrs)
    shp = out_shape(t)
    og = w.shape[1]
    k = (as_int(w.shape[2]), as_int(w.shape[3]))
    if k[0] is None or k[1] is None:
        raise CannotLower(f"{name}: kernel size must be constant")
    cg = arith.simplify(Bin("floordiv", x.shape[1], Const(g)))
    dt = out_dtype(t)
    phased = d == (1, 1) and max(s) > 1

    def value(i: Index, r: Index) -> Expr:
        n, o = i[:2]
        ch = r[0] if g == 1 else Bin("floordiv", o, og) * cg + r[0]
        pos, phase = (i[4:], i[2:4]) if phased else (i[2:], None)
        (hy, hx), (ih, iw), cond = _window_source(pos, r[1:], k, s, p, d, x.shape[2:], phase)  # type: ignore[arg-type]
        wo = o if g == 1 else Bin("floormod", o, og)
        val = product(x.at((n, ch, hy, hx)), w.at((ch, wo, ih, iw)), dt)
        return Select(cond, val, cst(0, val.dtype))

    ext = (cg,) + _source_extents(k, s, d)  # type: ignore[arg-type]
    if not phased:
        return b.reduce(shp, dt, "add", ext, value, name)
    pads = _phase_pads(k, s, p, _phase_quotients(shp, s), x.shape[2:])  # type: ignore[arg-type]
    if pads is not None:
        return _split_phases(b, x, w, k, s, p, g, cg, pads, shp, dt, name)  # type: ignore[arg-type]
    return _per_phase(b, shp, dt, ext, s, value, name)


def _phase_quotients(shp: Index, s: tuple[int, ...]) -> Index:
    return tuple(arith.simplify(Bin("floordiv", shp[2 + a] + (s[a] - 1), Const(s[a]))) for a in range(2))


def _per_phase(b: Builder, shp: Index, dt: str, ext: Index, s: tuple[int, ...],
               value: Callable[[Index, Index], Expr], name: str) -> Tensor:
    """A gather-reduction into (N, C, H, W) computed per stride phase: reduced over (N, C, sh, sw,
    ceil(H / sh), ceil(W / sw)), where `value(i, r)` sees (n, c, phase_h, phase_w, q_h, q_w) and
    position s * q + phase, then read back into (N, C, H, W). The summand's loads are then affine
    in the vector lane q_w; gathering straight into (H, W) puts floordiv/floormod of the lane into
    every load."""
    red = b.reduce(shp[:2] + (Const(s[0]), Const(s[1])) + _phase_quotients(shp, s), dt, "add", ext, value,
                   name + "_phases")

    def split(i: Index) -> Index:
        ph = tuple(Bin("floormod", i[2 + a], Const(s[a])) if s[a] > 1 else Const(0) for a in range(2))
        q = tuple(Bin("floordiv", i[2 + a], Const(s[a])) if s[a] > 1 else i[2 + a] for a in range(2))
        return i[:2] + ph + q

    return b.compute(shp, dt, lambda i: red.at(split(i)), name)


def _phase_pads(k: tuple[int, int], s: tuple[int, ...], p: tuple[int, ...], quot: Index, size: Index
                ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(low, high) zero padding per axis that keeps every read of the per-phase transposed
    convolution inside its input, or None when a dim is symbolic. The window index
    q + (phase + pad) div s - j spans [pad div s - (J - 1), Q - 1 + (s - 1 + pad) div s]."""
    out = []
    for a in range(2):
        n, q = as_int(size[a]), as_int(quot[a])
        if n is None or q is None:
            return None
        jn = -(-k[a] // s[a]) if s[a] > 1 else k[a]
        cmin, cmax = (p[a] // s[a], (s[a] - 1 + p[a]) // s[a]) if s[a] > 1 else (p[a], p[a])
        out.append((max(0, jn - 1 - cmin), max(0, q - 1 + cmax - (n - 1))))
    return out[0], out[1]


def _split_phases(b: Builder, x: Tensor, w: Tensor, k: tuple[int, int], s: tuple[int, ...], p: tuple[int, ...],
                  g: int, cg: Expr, pads: tuple[tuple[int, int], ...], shp: Index, dt: str, name: str) -> Tensor:
    """The strided transposed convolution with static dims as one stride-1 convolution per phase
    (sub-pixel decomposition): phase (ph, pw) gathers exactly the kernel offsets r = (phase + pad)
    mod s + s * j below k, from a zero-bordered copy of x (`pads`), into (N, C, H/sh, W/sw) with no
    bounds test in the summand; the result interleaves the phases. One reduction of ceil(k / s)^2
    offsets for every phase would do 16 multiply-adds per output where a 3x3 stride-2 kernel has 9."""
    (lh, hh), (lw, hw) = pads
    xs, og = x.shape, w.shape[1]
    xp = b.materialize(b.compute(
        (xs[0], xs[1], xs[2] + (lh + hh), xs[3] + (lw + hw)), x.dtype,
        lambda i: Select(all_of(*in_range(i[2] - lh, xs[2]), *in_range(i[3] - lw, xs[3])),
                         x.at((i[0], i[1], i[2] - lh, i[3] - lw)), cst(0, x.dtype)), "padded"))
    quot = _phase_quotients(shp, s)
    parts: dict[tuple[int, int], Tensor] = {}
    for ph in ((a, c) for a in range(s[0]) for c in range(s[1])):
        r0 = tuple((ph[a] + p[a]) % s[a] for a in range(2))
        shift = tuple((ph[a] + p[a]) // s[a] + (lh, lw)[a] for a in range(2))
        taps = tuple(-(-(k[a] - r0[a]) // s[a]) for a in range(2))
        if min(taps) <= 0:  # no kernel offset of this phase lands on the input
            parts[ph] = b.compute(shp[:2] + quot, dt, lambda i: cst(0, dt), f"{name}_zero")
            continue

        def value(i: Index, r: Index, r0: tuple[int, ...] = r0, shift: tuple[int, ...] = shift) -> Expr:
            n, o, qh, qw = i
            ch = r[0] if g == 1 else Bin("floordiv", o, og) * cg + r[0]
            wo = o if g == 1 else Bin("floormod", o, og)
            return product(xp.at((n, ch, qh + shift[0] - r[1], qw + shift[1] - r[2])),
                           w.at((ch, wo, r[1] * s[0] + r0[0], r[2] * s[1] + r0[1])), dt)

        parts[ph] = b.reduce(shp[:2] + quot, dt, "add", (cg, Const(taps[0]), Const(taps[1])), value, f"{name}_phase")

    def interleave(i: Index) -> Expr:
        at = i[:2] + tuple(Bin("floordiv", i[2 + a], Const(s[a])) if s[a] > 1 else i[2 + a] for a in range(2))
        out: Expr | None = None
        for ph, part in reversed(list(parts.items())):
            if out is None:
                out = part.at(at)
                continue
            hit = all_of(*(Bin("eq", Bin("floormod", i[2 + a], Const(s[a])), Const(ph[a])) for a in range(2) if s[a] > 1))
            out = Select(hit, part.at(at), out)
        assert out is not None
        return out

    return b.compute(shp, dt, interleave, name)


@register_lower("conv2d_transpose")
def _conv2d_t_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    return _transposed_lower(b, args, attrs, t, "conv2d_transpose")


# ---- conv2d_grad_data, conv2d_grad_weight ----------------------------------------------------
define("conv2d_grad_data", "out_ewise_fusable", 2, {**_CONV_ATTRS, "input_size": REQUIRED},
       "gradient of conv2d wrt its input: args dy, w (conv2d's weight); input_size = (H, W) of conv2d's "
       "input, which strides alone do not fix", reuses_inputs=True)

define("conv2d_grad_weight", "out_ewise_fusable", 2, {**_CONV_ATTRS, "kernel_shape": REQUIRED},
       "gradient of conv2d wrt its weight: args x, dy (conv2d's input, the cotangent of its result); "
       "kernel_shape = the weight's (kh, kw)", reuses_inputs=True)


def _check_conv_out(op: str, dy: tuple[Expr, ...], x: tuple[Expr, ...], attrs: dict[str, Any],
                    k: tuple[int, int], loc: Loc) -> None:
    """dy's spatial dims must be what conv2d gives for an input shaped `x`."""
    hw = pool_dims(x, attrs, loc, k, False)
    for a in range(2):
        check_dim(dy[2 + a], hw[a], f"{op}: dy dim {2 + a} vs conv2d's result", loc)


@register_infer("conv2d_grad_data")
def _conv_grad_data_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    dt = same_dtype([tensor(args[0], loc, "dy"), tensor(args[1], loc, "w")], loc)
    dy, w = nchw(args[0], loc), nchw(args[1], loc)
    g = int(attrs.get("groups", 1))
    check_dim(dy[1], w[0], "conv2d_grad_data: dy channels vs weight output channels", loc)
    k = _conv_kernel("conv2d_grad_data", w, g, loc)
    x = (dy[0], simplify(w[1] * g)) + _size_attr(attrs, "input_size", loc)
    _check_conv_out("conv2d_grad_data", dy, x, attrs, k, loc)
    return TensorType(x, dt)


@ref("conv2d_grad_data")
def _conv_grad_data_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    dy, w = args
    s, p, d, g = conv_attrs(attrs)
    h, wd = _hw(t, env)
    full = _transposed_np(dy, w, s, d, g, (h + p[0] + p[2], wd + p[1] + p[3]))
    return full[:, :, p[0]: p[0] + h, p[1]: p[1] + wd]


@register_lower("conv2d_grad_data")
def _conv_grad_data_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    return _transposed_lower(b, args, attrs, t, "conv2d_grad_data")


@register_infer("conv2d_grad_weight")
def _conv_grad_weight_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    dt = same_dtype([tensor(args[0], loc, "x"), tensor(args[1], loc, "dy")], loc)
    x, dy = nchw(args[0], loc), nchw(args[1], loc)
    g = int(attrs.get("groups", 1))
    k = ints_attr(attrs["kernel_shape"], 2, "kernel_shape", loc)
    check_dim(dy[0], x[0], "conv2d_grad_weight: batch of dy vs x", loc)
    for what, c in (("input", x[1]), ("output", dy[1])):
        n = as_int(c)
        if n is not None and n % g:
            raise MlcError(f"conv2d_grad_weight: {what} channels {n} not divisible by groups {g}", loc)
    _check_conv_out("conv2d_grad_weight", dy, x, attrs, (k[0], k[1]), loc)
    return TensorType((dy[1], simplify(Bin("floordiv", x[1], Const(g))), Const(k[0]), Const(k[1])), dt)


@ref("conv2d_grad_weight")
def _conv_grad_weight_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, dy = args
    s, p, d, g = conv_attrs(attrs)
    k = tuple(int(v) for v in attrs["kernel_shape"])
    n, c = x.shape[:2]
    o, ho, wo = dy.shape[1:]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    cols = windows(xp, k, s, d, (ho, wo)).reshape(n, g, c // g, k[0] * k[1], ho, wo)  # type: ignore[arg-type]
    dw = np.einsum("ngckhw,ngohw->gock", cols, dy.reshape(n, g, o // g, ho, wo), optimize=True)
    return dw.reshape(o, c // g, k[0], k[1])


@register_lower("conv2d_grad_weight")
def _conv_grad_weight_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """dw[o, c, r] = sum over the batch and the output positions of x[window at r] * dy: conv2d's
    window read with the batch and output positions as the reduction."""
    x, dy = as_tensor(args[0]), as_tensor(args[1])
    s, p, d, g = conv_attrs(attrs)
    shp = out_shape(t)
    og = arith.simplify(Bin("floordiv", dy.shape[1], Const(g)))

    def value(i: Index, r: Index) -> Expr:
        o, c, ih, iw = i
        n, oh, ow = r
        ch = c if g == 1 else Bin("floordiv", o, og) * shp[1] + c
        xv, inside = _window_read(x, n, ch, (oh, ow), (ih, iw), s, p, d)
        val = product(xv, dy.at((n, o, oh, ow)), out_dtype(t))
        return Select(inside, val, cst(0, val.dtype)) if any(p) else val

    return b.reduce(shp, out_dtype(t), "add", (x.shape[0], dy.shape[2], dy.shape[3]), value, "conv2d_grad_weight")


# ---- max_pool2d, avg_pool2d ------------------------------------------------------------------
define("max_pool2d", "out_ewise_fusable", 1, {**_POOL_ATTRS, "dilations": (1, 1)}, "NCHW max pooling, pads with -inf",
       reuses_inputs=True)  # overlapping windows would recompute a fused prologue (LRN: 9x per 3x3/2 window)

define("avg_pool2d", "out_ewise_fusable", 1, {**_POOL_ATTRS, "count_include_pad": False}, "NCHW average pooling")


@register_infer("max_pool2d", "avg_pool2d")
def _pool_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = nchw(t, loc)
    k = ints_attr(attrs["kernel_shape"], 2, "kernel_shape", loc)
    return TensorType(s[:2] + pool_dims(s, attrs, loc, k, bool(attrs.get("ceil_mode", False))), t.dtype)


def _pool_setup(hw: tuple[int, ...], attrs: dict[str, Any], out: tuple[int, ...]
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(kernel, strides, dilations, pads + extra end padding) of a pool of input (H, W) with output
    `out`: the extra padding keeps ceil_mode windows in bounds and is never counted as real padding."""
    k = tuple(int(v) for v in attrs["kernel_shape"])
    s, p, d, _ = conv_attrs(attrs)
    extra = tuple(max(0, (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - (hw[i] + p[i] + p[i + 2])) for i in range(2))
    return k, s, d, p + extra


def _hw(t: Type, env: Env) -> tuple[int, int]:
    assert isinstance(t, TensorType) and t.shape is not None
    return ev(t.shape[2], env), ev(t.shape[3], env)


def _np_pads(p: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """np.pad widths of an NCHW tensor for pads + extra end padding (see `_pool_setup`)."""
    return (0, 0), (0, 0), (p[0], p[2] + p[4]), (p[1], p[3] + p[5])


def _max_windows(x: np.ndarray, k: tuple[int, ...], s: tuple[int, ...], d: tuple[int, ...], out: tuple[int, ...],
                 p: tuple[int, ...]) -> np.ndarray:
    lo = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    return windows(np.pad(x, _np_pads(p), constant_values=lo), k, s, d, out)  # type: ignore[arg-type]


def _avg_count(hw: tuple[int, ...], attrs: dict[str, Any], k: tuple[int, ...], s: tuple[int, ...],
               d: tuple[int, ...], out: tuple[int, ...], p: tuple[int, ...], dtype: Any) -> np.ndarray:
    """What each average window divides by, (1, 1, Ho, Wo): its real elements, or with
    count_include_pad also the declared pads (never ceil_mode's extra end padding)."""
    mask = np.ones((1, 1) + tuple(hw), dtype=dtype)
    pads = _np_pads(p)
    if attrs.get("count_include_pad", False):
        mask = np.pad(mask, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=1)
        pads = ((0, 0), (0, 0), (0, p[4]), (0, p[5]))
    return windows(np.pad(mask, pads), k, s, d, out).sum(axis=2)  # type: ignore[arg-type]


@ref("max_pool2d")
def _maxpool_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    out = _hw(t, env)
    k, s, d, p = _pool_setup(x.shape[2:], attrs, out)
    return _max_windows(x, k, s, d, out, p).max(axis=2)


@ref("avg_pool2d")
def _avgpool_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    out = _hw(t, env)
    k, s, d, p = _pool_setup(x.shape[2:], attrs, out)
    total = windows(np.pad(x, _np_pads(p)), k, s, d, out).sum(axis=2)  # type: ignore[arg-type]
    return total / _avg_count(x.shape[2:], attrs, k, s, d, out, p, x.dtype)


def _pool_window(attrs: Attrs) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    k = tuple(int(v) for v in attrs["kernel_shape"])
    s, p, d, _ = conv_attrs(attrs)
    return k, s, p, d


def _max_value(x: Tensor, s: tuple[int, ...], p: tuple[int, ...], d: tuple[int, ...]) -> Callable[[Index, Index], Expr]:
    """The element of max pooling's window at kernel offset r (padding: the max identity, -inf)."""
    def value(i: Index, r: Index) -> Expr:
        xv, inside = _window_read(x, i[0], i[1], i[2:], r, s, p, d)
        return Select(inside, xv, reduction_identity("max", x.dtype))

    return value


@register_lower("max_pool2d")
def _max_pool_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    k, s, p, d = _pool_window(attrs)
    return b.reduce(out_shape(t), x.dtype, "max", (Const(k[0]), Const(k[1])), _max_value(x, s, p, d), "max_pool2d")


def _pool_count(b: Builder, hw: Index, out: Index, attrs: Attrs, dtype: str) -> Tensor:
    """The (Ho, Wo) divisors of average pooling: positions of each window inside the input, or with
    count_include_pad inside the declared pads (a reduction over the window, as `_avg_count`)."""
    k, s, p, d = _pool_window(attrs)
    incl = bool(attrs.get("count_include_pad", False))

    def counted(i: Index, r: Index) -> Expr:
        h, w = i[0] * s[0] - p[0] + r[0] * d[0], i[1] * s[1] - p[1] + r[1] * d[1]
        if not incl:
            return all_of(*in_range(h, hw[0]), *in_range(w, hw[1]))
        return all_of(Bin("ge", h, Const(-p[0])), Bin("lt", h, hw[0] + p[2]),
                      Bin("ge", w, Const(-p[1])), Bin("lt", w, hw[1] + p[3]))

    return b.reduce(out, dtype, "add", (Const(k[0]), Const(k[1])),
                    lambda i, r: Select(counted(i, r), cst(1, dtype), cst(0, dtype)), "pool_count")


@register_lower("avg_pool2d")
def _avg_pool_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Window sum over real elements divided by a count (of real or of padded positions)."""
    x = as_tensor(args[0])
    k, s, p, d = _pool_window(attrs)
    shp = out_shape(t)
    zero = cst(0, x.dtype)

    def real(i: Index, r: Index) -> Expr:
        xv, inside = _window_read(x, i[0], i[1], i[2:], r, s, p, d)
        return Select(inside, xv, zero)

    total = b.reduce(shp, x.dtype, "add", (Const(k[0]), Const(k[1])), real, "pool_sum")
    count = _pool_count(b, x.shape[2:], shp[2:], attrs, x.dtype)
    return b.compute(shp, x.dtype, lambda i: Bin("div", total.at(i), count.at(i[2:])), "avg_pool2d")


# ---- max_pool2d_grad, avg_pool2d_grad --------------------------------------------------------
define("max_pool2d_grad", "out_ewise_fusable", 2, {**_POOL_ATTRS, "dilations": (1, 1)},
       "gradient of max_pool2d: args x, dy (max_pool2d's input, the cotangent of its result); each "
       "window's dy goes to its first maximum in row-major order, as PyTorch and JAX route it")

define("avg_pool2d_grad", "out_ewise_fusable", 1, {**_POOL_ATTRS, "count_include_pad": False, "input_size": REQUIRED},
       "gradient of avg_pool2d: arg dy; input_size = (H, W) of the pool's input; each window's dy / count "
       "goes to every position it averaged")


def _check_pool_grad(op: str, dy: Type, x: tuple[Expr, ...], attrs: dict[str, Any], loc: Loc) -> None:
    """dy must have the shape the forward pool gives for an input shaped `x`."""
    ds = nchw(dy, loc)
    k = ints_attr(attrs["kernel_shape"], 2, "kernel_shape", loc)
    want = x[:2] + pool_dims(x, attrs, loc, k, bool(attrs.get("ceil_mode", False)))
    for a in range(4):
        check_dim(ds[a], want[a], f"{op}: dy dim {a} vs the pool's result", loc)


@register_infer("max_pool2d_grad")
def _max_pool_grad_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    dt = same_dtype([tensor(args[0], loc, "x"), tensor(args[1], loc, "dy")], loc)
    x = nchw(args[0], loc)
    _check_pool_grad("max_pool2d_grad", args[1], x, attrs, loc)
    return TensorType(x, dt)


@register_infer("avg_pool2d_grad")
def _avg_pool_grad_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    dy = tensor(args[0], loc, "dy")
    x = nchw(dy, loc)[:2] + _size_attr(attrs, "input_size", loc)
    _check_pool_grad("avg_pool2d_grad", dy, x, attrs, loc)
    return TensorType(x, dy.dtype)


@ref("max_pool2d_grad")
def _max_pool_grad_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, dy = args
    hw, out = x.shape[2:], dy.shape[2:]
    k, s, d, p = _pool_setup(hw, attrs, out)
    first = _max_windows(x, k, s, d, out, p).argmax(axis=2)
    hot = np.arange(k[0] * k[1]).reshape(1, 1, -1, 1, 1) == first[:, :, None]
    full = _unwindow(np.where(hot, dy[:, :, None], 0).astype(dy.dtype),
                     (hw[0] + p[0] + p[2] + p[4], hw[1] + p[1] + p[3] + p[5]), k, s, d)
    return full[:, :, p[0]: p[0] + hw[0], p[1]: p[1] + hw[1]]


@ref("avg_pool2d_grad")
def _avg_pool_grad_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    dy = args[0]
    hw, out = _hw(t, env), dy.shape[2:]
    k, s, d, p = _pool_setup(hw, attrs, out)
    share = dy / _avg_count(hw, attrs, k, s, d, out, p, dy.dtype)
    cols = np.broadcast_to(share[:, :, None], share.shape[:2] + (k[0] * k[1],) + tuple(out))
    full = _unwindow(cols, (hw[0] + p[0] + p[2] + p[4], hw[1] + p[1] + p[3] + p[5]), k, s, d)
    return full[:, :, p[0]: p[0] + hw[0], p[1]: p[1] + hw[1]]


@register_lower("max_pool2d_grad")
def _max_pool_grad_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Three stages: the window maxima, the kernel offset of each window's first maximum, then per
    input position the sum of dy over the windows whose first maximum it is (a gather over the
    kernel offsets through `_window_source`)."""
    x, dy = as_tensor(args[0]), as_tensor(args[1])
    k, s, p, d = _pool_window(attrs)
    win = (Const(k[0]), Const(k[1]))
    none = Const(k[0] * k[1])
    y = b.materialize(b.reduce(dy.shape, x.dtype, "max", win, _max_value(x, s, p, d), "pool_max"))

    def first_value(i: Index, r: Index) -> Expr:
        xv, inside = _window_read(x, i[0], i[1], i[2:], r, s, p, d)
        return Select(inside, Select(Bin("eq", xv, y.at(i)), r[0] * k[1] + r[1], none), none)

    first = b.reduce(dy.shape, "i64", "min", win, first_value, "pool_first_max")
    zero = cst(0, dy.dtype)

    phased = d == (1, 1) and max(s) > 1

    def value(i: Index, j: Index) -> Expr:
        pos, phase = (i[4:], i[2:4]) if phased else (i[2:], None)
        (oh, ow), r, exists = _window_source(pos, j, k, s, p, d, dy.shape[2:], phase)
        w = (i[0], i[1], oh, ow)
        return Select(exists, Select(Bin("eq", first.at(w), r[0] * k[1] + r[1]), dy.at(w), zero), zero)

    if phased:
        return _per_phase(b, out_shape(t), dy.dtype, _source_extents(k, s, d), s, value, "max_pool2d_grad")
    return b.reduce(out_shape(t), dy.dtype, "add", _source_extents(k, s, d), value, "max_pool2d_grad")


@register_lower("avg_pool2d_grad")
def _avg_pool_grad_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    """Per input position, the sum of dy / count over the windows that averaged it."""
    dy = as_tensor(args[0])
    k, s, p, d = _pool_window(attrs)
    shp = out_shape(t)
    count = _pool_count(b, shp[2:], dy.shape[2:], attrs, dy.dtype)
    zero = cst(0, dy.dtype)

    phased = d == (1, 1) and max(s) > 1

    def value(i: Index, j: Index) -> Expr:
        pos, phase = (i[4:], i[2:4]) if phased else (i[2:], None)
        (oh, ow), _, exists = _window_source(pos, j, k, s, p, d, dy.shape[2:], phase)
        return Select(exists, Bin("div", dy.at((i[0], i[1], oh, ow)), count.at((oh, ow))), zero)

    if phased:
        return _per_phase(b, shp, dy.dtype, _source_extents(k, s, d), s, value, "avg_pool2d_grad")
    return b.reduce(shp, dy.dtype, "add", _source_extents(k, s, d), value, "avg_pool2d_grad")


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


# ---- gradient rules (registry.register_grad) -------------------------------------------------
def _window_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes a convolution shares with its gradient ops (not output_padding / sizes)."""
    return {k: attrs[k] for k in ("strides", "pads", "dilations", "groups") if k in attrs}


# Each convolution's VJP is a pair of the family's ops (all four are linear in each operand, so the
# adjoint of an adjoint is the map itself): per input, (op, first operand, second operand, the
# argument whose spatial dims fix input_size / kernel_shape or None); "d" is the result's cotangent.
_CONV_VJP: dict[str, tuple[tuple[str, Any, Any, int | None], ...]] = {
    "conv2d": (("conv2d_grad_data", "d", 1, 0), ("conv2d_grad_weight", 0, "d", 1)),
    "conv2d_transpose": (("conv2d", "d", 1, None), ("conv2d_grad_weight", "d", 0, 1)),
    "conv2d_grad_data": (("conv2d", "d", 1, None), ("conv2d_grad_weight", "d", 0, 1)),
    "conv2d_grad_weight": (("conv2d_grad_data", 1, "d", 0), ("conv2d", 0, "d", None)),
}


@register_grad(*_CONV_VJP)
def _conv_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """conv2d's input gradient is conv2d_grad_data (a transposed convolution) and its weight
    gradient conv2d_grad_weight; conv2d_transpose is conv2d_grad_data with an output padding, so
    its gradients are conv2d and conv2d_grad_weight with x and dy swapped; second order follows
    from <G, A^T dy> = <A G, dy> (`_CONV_VJP`)."""
    if c.op == "conv2d_transpose" and any(int(o) >= st for o, st in zip(c.attrs.get("output_padding", (0, 0)),
                                                                         conv_attrs(c.attrs)[0])):
        raise g.error("conv2d_transpose: no gradient with output_padding >= strides (those rows never see the input)")
    out: list[Value | None] = []
    for i, (op, first, second, like) in enumerate(_CONV_VJP[c.op]):
        if not c.want(i):
            out.append(None)
            continue
        operands = [c.dout if v == "d" else c.args[v] for v in (first, second)]
        size = {} if like is None else {"input_size" if op == "conv2d_grad_data" else "kernel_shape":
                                        value_shape(c.args[like])[2:]}
        out.append(g.emit(op, operands, {**_window_attrs(c.attrs), **size}))  # type: ignore[arg-type]
    return out


@register_grad("max_pool2d")
def _max_pool_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    assert isinstance(c.dout, Value)
    return [g.emit("max_pool2d_grad", [c.args[0], c.dout], dict(c.attrs))]


@register_grad("avg_pool2d")
def _avg_pool_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    assert isinstance(c.dout, Value)
    return [g.emit("avg_pool2d_grad", [c.dout], {**c.attrs, "input_size": value_shape(c.args[0])[2:]})]


@register_grad("global_avg_pool2d")
def _gap_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """dy / (H * W) at every position; the average pool's gradient with the whole plane as window
    when H and W are constants, else dy times 1 / (H * W) read from the shape at run time."""
    x, dy = c.args[0], c.dout
    assert isinstance(dy, Value)
    h, w = value_shape(x)[2:]
    if as_int(h) is not None and as_int(w) is not None:
        share = g.emit("mul", [dy, g.scalar(1.0 / (as_int(h) * as_int(w)), dy)])  # type: ignore[operator]
    else:
        hw = g.emit("cast", [g.emit("shape_tensor", [], {"values": (simplify(h * w),)})], {"dtype": value_dtype(dy)})
        share = g.emit("div", [dy, g.emit("reshape", [hw], {"shape": ()})])
    return [g.emit("broadcast_to", [share], {"shape": value_shape(x)})]


# Second order of the average pool: its gradient is linear in dy, with the pool itself as adjoint.
@register_grad("avg_pool2d_grad")
def _avg_pool_grad_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    assert isinstance(c.dout, Value)
    return [g.emit("avg_pool2d", [c.dout], {k: v for k, v in c.attrs.items() if k != "input_size"})]


# max_pool2d_grad would need a gather at each window's first maximum, an op of its own: not yet.
register_no_grad("max_pool2d_grad")


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
