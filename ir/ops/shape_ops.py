"""Shape and layout ops: concat, split, reshape, transpose, squeeze, expand_dims, strided_slice,
broadcast_to, pad, and the creation ops full, arange, shape_tensor.

Their lowerings are index remappings (virtual tensors, inlined into consumers). Their ONNX handlers
fold shape arithmetic symbolically at import and stay in frontend/onnx_layout.py. Declaration, shape
rule, numpy reference and lowering of each op sit together; the gradient slot (`OpDef.grad`) stays
None until autodiff fills it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import arith
from ..arith import as_int, simplify
from ..diagnostics import Loc, MlcError
from ..expr import Bin, Const, Expr, Select
from ..graph import Value
from ..tir_builder import Builder, CannotLower, Index, Tensor, all_of, as_dtype, broadcast, cst
from ..types import TensorType, TupleType, Type
from .lowering import Args, Attrs, as_tensor, in_range, out_dtype, out_shape
from .reference import Env, ev, ref
from .registry import (
    REQUIRED,
    GradCall,
    GradContext,
    define,
    register_grad,
    register_infer,
    register_lower,
    value_shape,
)
from .shapes import (
    ONE,
    Shape,
    check_dim,
    dim,
    dims_str,
    ints_attr,
    norm_axis,
    resolve_reshape,
    same_dtype,
    shape_of,
    slice_len,
    slice_start,
    tensor,
)

# ---- concat, split ---------------------------------------------------------------------------
define("concat", "injective", (1, -1), {"axis": REQUIRED}, "join along axis")


@register_infer("concat")
def _concat_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    ts = [tensor(a, loc) for a in args]
    dt = same_dtype(ts, loc)
    shapes = [shape_of(t, loc) for t in ts]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise MlcError("concat: operands have different ranks", loc)
    ax = norm_axis(attrs["axis"], rank, loc)
    for i in range(rank):
        if i != ax:
            for s in shapes[1:]:
                check_dim(shapes[0][i], s[i], f"concat: dim {i} differs", loc)
    total: Expr = Const(0)
    for s in shapes:
        total = total + s[ax]
    out = list(shapes[0])
    out[ax] = simplify(total)
    return TensorType(tuple(out), dt)


@ref("concat")
def _concat_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.concatenate(args, axis=int(attrs["axis"]))


@register_lower("concat")
def _concat_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    xs = [as_tensor(a) for a in args]
    shp = out_shape(t)
    ax = norm_axis(attrs["axis"], len(shp))

    def fn(i: Index) -> Expr:
        offs: list[Expr] = [Const(0)]
        for x in xs[:-1]:
            offs.append(arith.simplify(offs[-1] + x.shape[ax]))
        val = xs[-1].at(i[:ax] + (i[ax] - offs[-1],) + i[ax + 1:])
        for x, off, nxt in reversed(list(zip(xs[:-1], offs[:-1], offs[1:]))):
            val = Select(Bin("lt", i[ax], nxt), x.at(i[:ax] + (i[ax] - off,) + i[ax + 1:]), val)
        return val

    return b.compute(shp, out_dtype(t), fn, "concat")


define("split", "injective", 1, {"axis": 0, "sections": REQUIRED}, "split into pieces of the given sizes (a tuple)")


@register_infer("split")
def _split_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    ax = norm_axis(attrs.get("axis", 0), len(s), loc)
    secs = [dim(v) for v in attrs["sections"]]
    total: Expr = Const(0)
    for d in secs:
        total = total + d
    check_dim(simplify(total), s[ax], "split: sections do not add up to the axis length", loc)
    return TupleType(tuple(TensorType(s[:ax] + (d,) + s[ax + 1:], t.dtype) for d in secs))


@ref("split")
def _split_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    bounds = np.cumsum([ev(v, env) for v in attrs["sections"]])[:-1]
    return tuple(np.split(x, bounds, axis=ax))


@register_lower("split")
def _split_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> list[Tensor]:
    x = as_tensor(args[0])
    if not isinstance(t, TupleType):
        raise CannotLower("split result is not a tuple")
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    outs, off = [], Const(0)
    for ft in t.fields:
        shp = out_shape(ft)
        o = off
        outs.append(b.compute(shp, x.dtype, lambda i, o=o: x.at(i[:ax] + (i[ax] + o,) + i[ax + 1:]), "split"))
        off = arith.simplify(off + shp[ax])
    return outs


# ---- reshape, squeeze, expand_dims -----------------------------------------------------------
define("reshape", "injective", 1, {"shape": REQUIRED}, "new shape (explicit dims; -1 allowed once)")

define("squeeze", "injective", 1, {"axes": REQUIRED}, "drop the given size-1 axes")

define("expand_dims", "injective", 1, {"axes": REQUIRED}, "insert size-1 axes at the given output positions")


@register_infer("reshape")
def _reshape_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    return TensorType(resolve_reshape(shape_of(t, loc), attrs["shape"], loc), t.dtype)


@register_infer("squeeze")
def _squeeze_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    axes = {norm_axis(a, len(s), loc) for a in attrs["axes"]}
    for a in axes:
        check_dim(s[a], ONE, f"squeeze: axis {a} is not 1", loc)
    return TensorType(tuple(d for i, d in enumerate(s) if i not in axes), t.dtype)


@register_infer("expand_dims")
def _expand_dims_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = list(shape_of(t, loc))
    n = len(s) + len(attrs["axes"])
    axes = sorted({norm_axis(a, n, loc) for a in attrs["axes"]})
    for a in axes:
        s.insert(a, ONE)
    return TensorType(tuple(s), t.dtype)


@ref("reshape")
def _reshape_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.reshape(args[0], [ev(v, env) for v in attrs["shape"]])


@ref("squeeze")
def _squeeze_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.squeeze(args[0], axis=tuple(int(a) for a in attrs["axes"]))


@ref("expand_dims")
def _expand_dims_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.expand_dims(args[0], axis=tuple(int(a) for a in attrs["axes"]))


def reshape_index(i: Index, src: Shape, dst: Shape) -> Index:
    """The source index of destination index `i` (row-major), keeping provably equal outer and inner dims."""
    lo = 0
    while lo < min(len(src), len(dst)) and arith.prove_equal(src[lo], dst[lo]):
        lo += 1
    hi = 0
    while hi < min(len(src), len(dst)) - lo and arith.prove_equal(src[-1 - hi], dst[-1 - hi]):
        hi += 1
    mid_s, mid_d = src[lo:len(src) - hi], dst[lo:len(dst) - hi]
    flat: Expr = Const(0)
    for e, d in zip(i[lo:len(dst) - hi], mid_d):
        flat = flat * d + e
    flat = arith.simplify(flat)
    mid: list[Expr] = []
    stride: Expr = Const(1)
    for d in reversed(mid_s):
        q = flat if arith.as_int(stride) == 1 else Bin("floordiv", flat, stride)
        mid.append(q if len(mid) == len(mid_s) - 1 else Bin("floormod", q, d))
        stride = arith.simplify(stride * d)
    return tuple(i[:lo]) + tuple(reversed(mid)) + tuple(i[len(dst) - hi:])


@register_lower("reshape", "squeeze", "expand_dims")
def _reshape_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    shp = out_shape(t)
    return b.compute(shp, x.dtype, lambda i: x.at(reshape_index(i, x.shape, shp)), "reshape")


# ---- transpose -------------------------------------------------------------------------------
define("transpose", "injective", 1, {"perm": None}, "permute axes (None reverses them)")


@register_infer("transpose")
def _transpose_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    perm = attrs.get("perm")
    p = list(range(len(s)))[::-1] if perm is None else [norm_axis(a, len(s), loc) for a in perm]
    if sorted(p) != list(range(len(s))):
        raise MlcError(f"transpose: perm {tuple(p)} is not a permutation of {len(s)} axes", loc)
    return TensorType(tuple(s[i] for i in p), t.dtype)


@ref("transpose")
def _transpose_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    perm = attrs.get("perm")
    return np.transpose(args[0], None if perm is None else [int(a) for a in perm])


@register_lower("transpose")
def _transpose_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    perm = attrs.get("perm")
    p = list(range(x.ndim))[::-1] if perm is None else [norm_axis(a, x.ndim) for a in perm]
    inv = [p.index(d) for d in range(x.ndim)]
    return b.compute(out_shape(t), x.dtype, lambda i: x.at(tuple(i[inv[d]] for d in range(x.ndim))), "transpose")


# ---- strided_slice ---------------------------------------------------------------------------
define("strided_slice", "injective", 1, {"axes": REQUIRED, "begin": REQUIRED, "end": REQUIRED, "strides": None},
       "ONNX Slice: per axis begin/end/stride, clamped, negative indices wrap")


@register_infer("strided_slice")
def _slice_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = list(shape_of(t, loc))
    axes = attrs["axes"]
    strides = attrs.get("strides") or (1,) * len(axes)
    if not len(axes) == len(attrs["begin"]) == len(attrs["end"]) == len(strides):
        raise MlcError("strided_slice: axes, begin, end and strides differ in length", loc)
    for a, b, e, st in zip(axes, attrs["begin"], attrs["end"], strides):
        if int(st) == 0:
            raise MlcError("strided_slice: stride 0", loc)
        ax = norm_axis(a, len(s), loc)
        s[ax] = slice_len(s[ax], b, e, int(st))
    return TensorType(tuple(s), t.dtype)


@ref("strided_slice")
def _slice_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    idx: list[slice] = [slice(None)] * x.ndim
    strides = attrs.get("strides") or (1,) * len(attrs["axes"])
    for a, b, e, st in zip(attrs["axes"], attrs["begin"], attrs["end"], strides):
        idx[norm_axis(a, x.ndim)] = slice(ev(b, env), ev(e, env), int(st))
    return x[tuple(idx)]


@register_lower("strided_slice")
def _strided_slice_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    strides = attrs.get("strides") or (1,) * len(attrs["axes"])
    starts: dict[int, tuple[Expr, int]] = {}
    for a, bg, st in zip(attrs["axes"], attrs["begin"], strides):
        ax = norm_axis(a, x.ndim)
        starts[ax] = (arith.simplify(slice_start(x.shape[ax], bg, int(st))), int(st))  # end: in the type

    def fn(i: Index) -> Expr:
        return x.at(tuple(starts[d][0] + e * starts[d][1] if d in starts else e for d, e in enumerate(i)))

    return b.compute(out_shape(t), x.dtype, fn, "strided_slice")


# ---- broadcast_to ----------------------------------------------------------------------------
define("broadcast_to", "broadcast", 1, {"shape": REQUIRED}, "numpy broadcast_to")


@register_infer("broadcast_to")
def _broadcast_to_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    target = tuple(dim(v) for v in attrs["shape"])
    if len(target) < len(s):
        raise MlcError(f"broadcast_to: target ({dims_str(target)}) has lower rank than ({dims_str(s)})", loc)
    for d, td in zip(s[::-1], target[::-1]):
        if as_int(d) != 1:
            check_dim(d, td, "broadcast_to: dim cannot broadcast", loc)
    return TensorType(target, t.dtype)


@ref("broadcast_to")
def _broadcast_to_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.broadcast_to(args[0], [ev(v, env) for v in attrs["shape"]])


@register_lower("broadcast_to")
def _broadcast_to_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    shp = out_shape(t)
    return b.compute(shp, out_dtype(t), broadcast(as_tensor(args[0]), shp), "broadcast_to")


# ---- pad -------------------------------------------------------------------------------------
define("pad", "injective", 1, {"pads": REQUIRED, "value": 0.0},
       "constant padding; pads = (begin_0.., end_0..) as ONNX")


@register_infer("pad")
def _pad_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = shape_of(t, loc)
    p = ints_attr(attrs["pads"], 2 * len(s), "pads", loc)
    return TensorType(tuple(simplify(d + p[i] + p[i + len(s)]) for i, d in enumerate(s)), t.dtype)


@ref("pad")
def _pad_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    p = [int(v) for v in attrs["pads"]]
    return np.pad(x, [(p[i], p[i + x.ndim]) for i in range(x.ndim)], constant_values=attrs.get("value", 0.0))


@register_lower("pad")
def _pad_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x = as_tensor(args[0])
    p = [int(v) for v in attrs["pads"]]
    fill = cst(attrs.get("value", 0.0), x.dtype)

    def fn(i: Index) -> Expr:
        src = tuple(e - p[d] for d, e in enumerate(i))
        conds = [c for d, e in enumerate(src) if p[d] or p[d + x.ndim] for c in in_range(e, x.shape[d])]
        return Select(all_of(*conds), x.at(src), fill) if conds else x.at(src)

    return b.compute(out_shape(t), x.dtype, fn, "pad")


# ---- full, arange, shape_tensor --------------------------------------------------------------
define("full", "injective", 0, {"shape": REQUIRED, "value": 0.0, "dtype": "f32"}, "tensor filled with value")


@register_infer("full")
def _full_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    return TensorType(tuple(dim(v) for v in attrs["shape"]), str(attrs.get("dtype", "f32")))


@ref("full")
def _full_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.full([ev(v, env) for v in attrs["shape"]], attrs.get("value", 0.0))


@register_lower("full")
def _full_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    v = cst(attrs.get("value", 0.0), out_dtype(t))
    return b.compute(out_shape(t), out_dtype(t), lambda i: v, "full")


define("arange", "injective", 0, {"start": 0, "stop": REQUIRED, "step": 1, "dtype": "i64"}, "ONNX Range")


@register_infer("arange")
def _arange_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    start, stop, step = (attrs.get("start", 0), attrs["stop"], attrs.get("step", 1))
    dt = str(attrs.get("dtype", "i64"))
    if all(isinstance(v, int | float) for v in (start, stop, step)):
        if step == 0:
            raise MlcError("arange: step 0", loc)
        return TensorType((Const(max(0, math.ceil((stop - start) / step))),), dt)
    st = as_int(dim(step))
    if st is None or st == 0:
        raise MlcError("arange: a symbolic range needs a constant non-zero integer step", loc)
    n = (dim(stop) - dim(start) + (st - 1)) // st if st > 0 else (dim(start) - dim(stop) + (-st - 1)) // (-st)
    return TensorType((simplify(Bin("max", Const(0), n)),), dt)


@ref("arange")
def _arange_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    vals = [attrs.get("start", 0), attrs["stop"], attrs.get("step", 1)]
    start, stop, step = (ev(v, env) if isinstance(v, Expr) else v for v in vals)
    n = max(0, math.ceil((stop - start) / step))
    return start + step * np.arange(n)


@register_lower("arange")
def _arange_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    dt = out_dtype(t)

    def num(v: Any) -> Expr:
        return as_dtype(dim(v), dt) if isinstance(v, Expr) else cst(v, dt)

    start, step = num(attrs.get("start", 0)), num(attrs.get("step", 1))
    return b.compute(out_shape(t), dt, lambda i: start + as_dtype(i[0], dt) * step, "arange")


define("shape_tensor", "injective", 0, {"values": REQUIRED},
       "1-D i64 tensor of symbolic values (a shape used as data)")


@register_infer("shape_tensor")
def _shape_tensor_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    return TensorType((Const(len(attrs["values"])),), "i64")


@ref("shape_tensor")
def _shape_tensor_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.array([ev(v, env) for v in attrs["values"]], dtype=np.int64)


@register_lower("shape_tensor")
def _shape_tensor_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    vals = [dim(v) for v in attrs["values"]]

    def fn(i: Index) -> Expr:
        out = vals[-1]
        for k in range(len(vals) - 2, -1, -1):
            out = Select(Bin("eq", i[0], Const(k)), vals[k], out)
        return out

    return b.compute(out_shape(t), "i64", fn, "shape_tensor")


# ---- gradient rules (see registry.register_grad) -------------------------------------------------
def _dout(c: GradCall) -> Value:
    assert isinstance(c.dout, Value)
    return c.dout


@register_grad("reshape", "squeeze", "expand_dims")
def _reshape_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    return [g.emit("reshape", [_dout(c)], {"shape": value_shape(c.args[0])})]


@register_grad("transpose")
def _transpose_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    r = len(value_shape(c.args[0]))
    perm = [int(p) for p in (c.attrs["perm"] or range(r - 1, -1, -1))]
    inv = [0] * r
    for i, p in enumerate(perm):
        inv[p % r] = i
    return [g.emit("transpose", [_dout(c)], {"perm": tuple(inv)})]


@register_grad("broadcast_to")
def _broadcast_to_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    return [g.unbroadcast(_dout(c), c.args[0])]


@register_grad("concat")
def _concat_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    r = len(value_shape(c.args[0]))
    ax = norm_axis(c.attrs["axis"], r)
    out: list[Value | None] = []
    off: Expr = Const(0)
    for i, a in enumerate(c.args):
        end = simplify(off + value_shape(a)[ax])
        out.append(g.emit("strided_slice", [_dout(c)], {"axes": (ax,), "begin": (off,), "end": (end,),
                                                       "strides": (1,)}) if c.want(i) else None)
        off = end
    return out


@register_grad("split")
def _split_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """The pieces' cotangents joined again (zeros for pieces nothing used)."""
    assert isinstance(c.dout, tuple)
    parts = [d if d is not None else g.zeros_like(g.item(c.out, i)) for i, d in enumerate(c.dout)]
    return [g.emit("concat", parts, {"axis": c.attrs["axis"]})]


def _pad_axis(g: GradContext, v: Value, ax: int, before: int, after: int) -> Value:
    """`v` padded with zeros along `ax` (a negative amount cuts instead)."""
    if after < 0:
        n = value_shape(v)[ax]
        v = g.emit("strided_slice", [v], {"axes": (ax,), "begin": (0,), "end": (simplify(n + after),), "strides": (1,)})
        after = 0
    if before == after == 0:
        return v
    r = len(value_shape(v))
    pads = [0] * (2 * r)
    pads[ax], pads[ax + r] = before, after
    return g.emit("pad", [v], {"pads": tuple(pads), "value": 0.0})


@register_grad("strided_slice")
def _slice_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """The cotangent scattered back into zeros: interleaved with stride - 1 zeros, then padded to
    the input's length. Needs constant dims and positive strides on the sliced axes."""
    (x,) = c.args
    xs, d = value_shape(x), _dout(c)
    strides = c.attrs["strides"] or (1,) * len(c.attrs["axes"])
    if all(int(st) == -1 and arith.prove_equal(value_shape(d)[norm_axis(a, len(xs))], xs[norm_axis(a, len(xs))])
           for a, st in zip(c.attrs["axes"], strides)):  # whole-axis reversals (RNN reverse directions),
        return [g.emit("strided_slice", [d], dict(c.attrs))]  # symbolic dims too: their own inverse
    for a, bg, st in zip(c.attrs["axes"], c.attrs["begin"], strides):
        ax, st = norm_axis(a, len(xs)), int(st)
        n, start, ln = as_int(xs[ax]), as_int(slice_start(xs[ax], bg, st)), as_int(value_shape(d)[ax])
        if n is None or start is None or ln is None or st < 0:
            raise g.error("strided_slice: gradient needs constant dims and a positive stride on the sliced axes")
        if st > 1:
            e = g.emit("expand_dims", [d], {"axes": (ax + 1,)})
            e = _pad_axis(g, e, ax + 1, 0, st - 1)
            ds = value_shape(d)
            d = g.emit("reshape", [e], {"shape": tuple(ds[:ax]) + (ln * st,) + tuple(ds[ax + 1:])})
        d = _pad_axis(g, d, ax, start, n - start - ln * st)
    return [d]


@register_grad("pad")
def _pad_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    xs = value_shape(c.args[0])
    p = [int(v) for v in c.attrs["pads"]]
    r = len(xs)
    if any(v < 0 for v in p):
        raise g.error("pad: gradient of a negative pad (a crop) is not supported")
    return [g.emit("strided_slice", [_dout(c)], {"axes": tuple(range(r)), "begin": tuple(p[:r]),
                                                  "end": tuple(simplify(p[i] + xs[i]) for i in range(r)),
                                                  "strides": (1,) * r})]
