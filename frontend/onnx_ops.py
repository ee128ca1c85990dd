"""ONNX node handlers: one function per ONNX op type, mapping it onto graph ops.

Handlers read inputs through the context (`ctx.input(i)` materialises a Value; `ctx.sym` /
`ctx.const` give what is statically known) and set outputs with `ctx.out`, or record symbolic
/ constant results for shape arithmetic. Composite ONNX ops (Gemm, Flatten, Mean, ...) become
several graph ops. docs/ops.md lists the limits each handler enforces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from ..ir.arith import as_int, prove_equal, simplify
from ..ir.dtype import from_numpy
from ..ir.expr import Bin, Const, Expr
from ..ir.ops.shapes import BIG, broadcast_shapes, numel, resolve_reshape
from .onnx_compose import COMPOSED
from .onnx_import import Ctx, SymVal, onnx_dtype
from .onnx_rnn import gru, lstm

Handler = Callable[[Ctx, onnx.NodeProto, dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn

    return deco


def _simple(op: str, **fixed: Any) -> Handler:
    def run(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        args = [ctx.input(i) for i in range(len(node.input))]
        ctx.out(0, ctx.emit(op, args, dict(fixed), node.output[0]))

    return run


UNARY_MAP = {
    "Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Erf": "erf", "Neg": "neg", "Abs": "abs", "Relu": "relu",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil",
    "Round": "round", "Sin": "sin", "Cos": "cos", "Not": "logical_not",
}
BINARY_MAP = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal", "Less": "less",
    "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
    "And": "logical_and", "Or": "logical_or",
}
for _k, _v in UNARY_MAP.items():
    HANDLERS[_k] = _simple(_v)

# --- symbolic shape arithmetic ---------------------------------------------------------------------
_SYM_BIN: dict[str, Callable[[Expr, Expr], Expr | None]] = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b, "Mod": lambda a, b: a % b,
    "Min": lambda a, b: Bin("min", a, b), "Max": lambda a, b: Bin("max", a, b),
}


def _sym_broadcast(a: SymVal, b: SymVal, fn: Callable[[Expr, Expr], Expr | None]) -> SymVal | None:
    xa, xb = a.elems, b.elems
    if len(xa) != len(xb):
        if len(xa) == 1:
            xa = xa * len(xb)
        elif len(xb) == 1:
            xb = xb * len(xa)
        else:
            return None
    out = []
    for x, y in zip(xa, xb):
        r = fn(x, y)
        if r is None:
            return None
        out.append(simplify(r))
    return SymVal(tuple(out), a.scalar and b.scalar, a.dtype)


def _try_sym_binary(ctx: Ctx, node: onnx.NodeProto) -> bool:
    """Fold integer arithmetic on shape values symbolically; False when not applicable."""
    ins = [ctx.sym(i) for i in node.input]
    if len(ins) != 2 or None in ins or all(n in ctx.consts for n in node.input):
        return False
    a, b = ins
    assert a is not None and b is not None
    if node.op_type in _SYM_BIN:
        r = _sym_broadcast(a, b, _SYM_BIN[node.op_type])
    elif node.op_type == "Equal":
        def eq(x: Expr, y: Expr) -> Expr | None:
            if prove_equal(x, y):
                return Const(1)
            d = as_int(simplify(x - y))
            return Const(0) if d is not None else None
        r = _sym_broadcast(a, b, eq)
        if r is not None:
            ctx.consts[node.output[0]] = np.array([bool(as_int(e)) for e in r.elems]).reshape(() if r.scalar else -1)
            return True
    else:
        return False
    if r is None:
        return False
    ctx.set_sym(node.output[0], r)
    return True


def _binary(op: str) -> Handler:
    def run(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        if _try_sym_binary(ctx, node):
            return
        ctx.out(0, ctx.emit(op, [ctx.input(0), ctx.input(1)], {}, node.output[0]))

    return run


for _k, _v in BINARY_MAP.items():
    HANDLERS[_k] = _binary(_v)


@handles("Pow")
def _pow(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    a, b = ctx.input(0), ctx.input(1)
    if b.type.dtype != a.type.dtype:  # type: ignore[attr-defined]
        b = ctx.emit("cast", [b], {"dtype": a.type.dtype}, node.output[0] + "_exp")  # type: ignore[attr-defined]
    ctx.out(0, ctx.emit("pow", [a, b], {}, node.output[0]))


@handles("Min", "Max", "Sum", "Mean")
def _variadic(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if node.op_type in ("Min", "Max") and len(node.input) == 2 and _try_sym_binary(ctx, node):
        return
    op = {"Min": "minimum", "Max": "maximum", "Sum": "add", "Mean": "add"}[node.op_type]
    acc = ctx.input(0)
    for i in range(1, len(node.input)):
        acc = ctx.emit(op, [acc, ctx.input(i)], {}, node.output[0] + "_acc")
    if node.op_type == "Mean" and len(node.input) > 1:
        acc = ctx.emit("div", [acc, ctx.scalar_like(len(node.input), acc, "n")], {}, node.output[0])
    ctx.out(0, acc)


@handles("Shape")
def _shape(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    s = ctx.type_of(node.input[0]).shape
    assert s is not None
    r = len(s)
    start, end = int(attrs.get("start", 0)), int(attrs.get("end", r))
    ctx.set_sym(node.output[0], SymVal(tuple(s)[slice(start, end)]))


@handles("Size")
def _size(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    s = ctx.type_of(node.input[0]).shape
    assert s is not None
    ctx.set_sym(node.output[0], SymVal((numel(s),), scalar=True))


@handles("Constant")
def _constant(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if "value" in attrs:
        v = attrs["value"]
    elif "value_float" in attrs:
        v = np.array(attrs["value_float"], dtype=np.float32)
    elif "value_floats" in attrs:
        v = np.array(attrs["value_floats"], dtype=np.float32)
    elif "value_int" in attrs:
        v = np.array(attrs["value_int"], dtype=np.int64)
    elif "value_ints" in attrs:
        v = np.array(attrs["value_ints"], dtype=np.int64)
    else:
        raise ctx.error(f"unsupported Constant form {sorted(attrs)}")
    v = np.asarray(v)
    try:
        from_numpy(v.dtype)
    except ValueError:
        raise ctx.error(f"unsupported constant element type {v.dtype}") from None
    ctx.consts[node.output[0]] = v


@handles("Identity", "Dropout")
def _identity(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    src = node.input[0]
    if node.op_type == "Dropout" and (t := ctx.opt_input(2)) is not None:
        c = ctx.const(t)
        if c is None or bool(c):
            raise ctx.error("Dropout in training mode is not supported")
    for table in (ctx.vals, ctx.consts, ctx.syms):
        if src in table:
            table[node.output[0]] = table[src]  # type: ignore[index]
    if len(node.output) > 1 and node.output[1]:
        s = ctx.type_of(src).shape
        ctx.out(1, ctx.emit("full", [], {"shape": s, "value": True, "dtype": "bool"}, node.output[1]))


@handles("Cast")
def _cast(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    dt = onnx_dtype(int(attrs["to"]), ctx.where())
    s = ctx.sym(node.input[0])
    if s is not None and node.input[0] not in ctx.consts and dt in ("i32", "i64"):
        ctx.set_sym(node.output[0], SymVal(s.elems, s.scalar, dt))
        return
    x = ctx.input(0)
    ctx.out(0, x if x.type.dtype == dt else ctx.emit("cast", [x], {"dtype": dt}, node.output[0]))  # type: ignore[attr-defined]


def _axes_input(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any], idx: int = 1) -> list[int] | None:
    """Axes from the `axes` attribute (old opsets) or a constant input (new ones)."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    name = ctx.opt_input(idx)
    if name is None:
        return None
    c = ctx.const(name)
    if c is None:
        raise ctx.error("axes must be a constant")
    return [int(a) for a in np.asarray(c).reshape(-1)]


def _norm(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


@handles("Unsqueeze")
def _unsqueeze(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axes = _axes_input(ctx, node, attrs) or []
    s = ctx.sym(node.input[0])
    if s is not None and node.input[0] not in ctx.consts and s.scalar and axes in ([0], [-1]):
        ctx.set_sym(node.output[0], SymVal(s.elems, False, s.dtype))
        return
    ctx.out(0, ctx.emit("expand_dims", [ctx.input(0)], {"axes": tuple(axes)}, node.output[0]))


@handles("Squeeze")
def _squeeze(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axes = _axes_input(ctx, node, attrs)
    s = ctx.sym(node.input[0])
    if s is not None and node.input[0] not in ctx.consts and not s.scalar and len(s.elems) == 1:
        ctx.set_sym(node.output[0], SymVal(s.elems, True, s.dtype))
        return
    x = ctx.input(0)
    shape = x.type.shape  # type: ignore[attr-defined]
    if axes is None:
        axes = [i for i, d in enumerate(shape) if as_int(d) == 1]
    ctx.out(0, ctx.emit("squeeze", [x], {"axes": tuple(_norm(a, len(shape)) for a in axes)}, node.output[0]))


@handles("Gather")
def _gather(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axis = int(attrs.get("axis", 0))
    s, idx = ctx.sym(node.input[0]), ctx.const(node.input[1])
    if s is not None and idx is not None and not s.scalar and node.input[0] not in ctx.consts:
        n = len(s.elems)
        picks = [s.elems[int(i) + n if int(i) < 0 else int(i)] for i in idx.reshape(-1)]
        ctx.set_sym(node.output[0], SymVal(tuple(picks), idx.ndim == 0, s.dtype))
        return
    ctx.out(0, ctx.emit("take", [ctx.input(0), ctx.input(1)], {"axis": axis}, node.output[0]))


@handles("Concat")
def _concat(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    syms = [ctx.sym(i) for i in node.input]
    if all(s is not None and not s.scalar for s in syms) and not all(i in ctx.consts for i in node.input):
        elems = tuple(e for s in syms for e in s.elems)  # type: ignore[union-attr]
        ctx.set_sym(node.output[0], SymVal(elems, False, syms[0].dtype))  # type: ignore[union-attr]
        return
    args = [ctx.value(i) for i in node.input if i]
    ctx.out(0, ctx.emit("concat", args, {"axis": int(attrs["axis"])}, node.output[0]))


def _slice_params(ctx: Ctx, node: onnx.NodeProto, rank: int) -> tuple[list[int], list[Any], list[Any], list[int]]:
    def known(i: int) -> list[Any] | None:
        name = ctx.opt_input(i)
        if name is None:
            return None
        s = ctx.sym(name)
        if s is None:
            raise ctx.error(f"Slice input {i} must be a constant or a shape expression")
        return [as_int(e) if as_int(e) is not None else e for e in s.elems]

    starts, ends = known(1), known(2)
    assert starts is not None and ends is not None
    axes = known(3) or list(range(len(starts)))
    steps = known(4) or [1] * len(starts)
    if any(not isinstance(v, int) for v in axes + steps):
        raise ctx.error("Slice axes and steps must be constants")
    clamp = [max(min(v, BIG), -BIG) if isinstance(v, int) else v for v in ends]
    return [_norm(a, rank) for a in axes], starts, clamp, steps


@handles("Slice")
def _slice(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    s = ctx.sym(node.input[0])
    if s is not None and not s.scalar and node.input[0] not in ctx.consts:
        axes, starts, ends, steps = _slice_params(ctx, node, 1)
        if all(isinstance(v, int) for v in starts + ends):
            ctx.set_sym(node.output[0], SymVal(s.elems[slice(starts[0], ends[0], steps[0])], False, s.dtype))
            return
    x = ctx.input(0)
    axes, starts, ends, steps = _slice_params(ctx, node, len(x.type.shape))  # type: ignore[attr-defined]
    attrs2 = {"axes": tuple(axes), "begin": tuple(starts), "end": tuple(ends), "strides": tuple(steps)}
    ctx.out(0, ctx.emit("strided_slice", [x], attrs2, node.output[0]))


def _shape_input(ctx: Ctx, node: onnx.NodeProto, i: int) -> tuple[Expr, ...]:
    s = ctx.sym(node.input[i])
    if s is None:
        raise ctx.error("the target shape must be a constant or computed from shapes (data-dependent shapes "
                        "are not supported)")
    return s.elems


@handles("Reshape")
def _reshape(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    target = list(_shape_input(ctx, node, 1))
    s = ctx.sym(node.input[0])
    src_shape = ctx.type_of(node.input[0]).shape
    assert src_shape is not None
    if not attrs.get("allowzero", 0):
        target = [src_shape[i] if as_int(d) == 0 else d for i, d in enumerate(target)]
    shape = resolve_reshape(src_shape, target, ctx.loc)
    if s is not None and node.input[0] not in ctx.consts and len(shape) <= 1:
        ctx.set_sym(node.output[0], SymVal(s.elems, len(shape) == 0, s.dtype))
        return
    ctx.out(0, ctx.emit("reshape", [ctx.input(0)], {"shape": shape}, node.output[0]))


@handles("Flatten")
def _flatten(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    s = x.type.shape  # type: ignore[attr-defined]
    ax = _norm(int(attrs.get("axis", 1)), len(s))
    ctx.out(0, ctx.emit("reshape", [x], {"shape": (numel(s[:ax]), numel(s[ax:]))}, node.output[0]))


@handles("Expand")
def _expand(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    shape = broadcast_shapes([x.type.shape, _shape_input(ctx, node, 1)], ctx.loc)  # type: ignore[attr-defined]
    ctx.out(0, ctx.emit("broadcast_to", [x], {"shape": shape}, node.output[0]))


@handles("ConstantOfShape")
def _const_of_shape(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    shape = _shape_input(ctx, node, 0)
    v = np.asarray(attrs.get("value", np.zeros(1, np.float32))).reshape(-1)
    val = v[0].item()
    ctx.out(0, ctx.emit("full", [], {"shape": tuple(simplify(d) for d in shape), "value": val,
                                     "dtype": from_numpy(v.dtype)}, node.output[0]))


@handles("Range")
def _range(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    dt = ctx.type_of(node.input[0]).dtype
    vals: list[Any] = []
    for i in range(3):
        c = ctx.const(node.input[i])
        s = ctx.sym(node.input[i])
        if c is not None:
            vals.append(c.item())
        elif s is not None and s.scalar:
            vals.append(s.elems[0])
        else:
            raise ctx.error("Range bounds must be constants or shape expressions")
    ctx.out(0, ctx.emit("arange", [], {"start": vals[0], "stop": vals[1], "step": vals[2], "dtype": dt},
                        node.output[0]))


@handles("Where")
def _where(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    c, a, b = ctx.const(node.input[0]), ctx.sym(node.input[1]), ctx.sym(node.input[2])
    if c is not None and a is not None and b is not None and c.ndim <= 1 and not (
            node.input[1] in ctx.consts and node.input[2] in ctx.consts):
        r = _sym_broadcast(a, b, lambda x, y: Const(0))
        if r is not None:
            cs = np.broadcast_to(c, (len(r.elems),))
            xa = a.elems * len(r.elems) if len(a.elems) == 1 else a.elems
            xb = b.elems * len(r.elems) if len(b.elems) == 1 else b.elems
            ctx.set_sym(node.output[0], SymVal(tuple(x if k else y for k, x, y in zip(cs, xa, xb)), r.scalar, a.dtype))
            return
    ctx.out(0, ctx.emit("where", [ctx.input(i) for i in range(3)], {}, node.output[0]))


@handles("Transpose")
def _transpose(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    perm = attrs.get("perm")
    ctx.out(0, ctx.emit("transpose", [ctx.input(0)], {"perm": tuple(perm) if perm else None}, node.output[0]))


@handles("Split")
def _split(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    s = x.type.shape  # type: ignore[attr-defined]
    ax = _norm(int(attrs.get("axis", 0)), len(s))
    n = len(node.output)
    if (name := ctx.opt_input(1)) is not None:
        c = ctx.const(name)
        if c is None:
            raise ctx.error("split sizes must be constant")
        secs: list[Expr] = [Const(int(v)) for v in c.reshape(-1)]
    elif "split" in attrs:
        secs = [Const(int(v)) for v in attrs["split"]]
    else:
        n = int(attrs.get("num_outputs", n))
        d = as_int(s[ax])
        if d is None:
            secs = [simplify(s[ax] // n)] * n
        else:
            chunk = -(-d // n)
            secs = [Const(min(chunk, d - i * chunk)) for i in range(n)]
    t = ctx.emit("split", [x], {"axis": ax, "sections": tuple(secs)}, node.output[0] + "_parts")
    for i, v in enumerate(ctx.tuple_items(t, len(secs), list(node.output))):
        ctx.out(i, v)


@handles("Softmax", "LogSoftmax")
def _softmax(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    ctx.out(0, ctx.emit(op, [ctx.input(0)], {"axis": int(attrs.get("axis", -1))}, node.output[0]))


@handles("LeakyRelu")
def _leaky(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("leaky_relu", [ctx.input(0)], {"alpha": float(attrs.get("alpha", 0.01))}, node.output[0]))


@handles("Gelu")
def _gelu(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("gelu", [ctx.input(0)], {"approximate": str(attrs.get("approximate", "none"))},
                        node.output[0]))


@handles("Clip")
def _clip(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    bounds: list[float | int | None] = []
    for i in (1, 2):
        name = ctx.opt_input(i)
        c = None if name is None else ctx.const(name)
        if name is not None and c is None:
            raise ctx.error("Clip bounds must be constants")
        bounds.append(None if c is None else c.item())
    ctx.out(0, ctx.emit("clip", [ctx.input(0)], {"min": bounds[0], "max": bounds[1]}, node.output[0]))


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
    if len(x.type.shape) != 4:
        raise ctx.error(f"only 2-D (NCHW) inputs are supported, got rank {len(x.type.shape)}")


def _add_channel_bias(ctx: Ctx, y: Any, bname: str | None, out: str) -> Any:
    if bname is None:
        return y
    b = ctx.value(bname)
    b = ctx.emit("reshape", [b], {"shape": (b.type.shape[0], 1, 1)}, out + "_bias")
    return ctx.emit("add", [y, b], {}, out)


@handles("Conv", "ConvTranspose")
def _conv(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x, w = ctx.input(0), ctx.input(1)
    _check_2d(ctx, x)
    o = node.output[0]
    k = [as_int(v) for v in w.type.shape[2:]]  # type: ignore[attr-defined]
    s = [int(v) for v in attrs.get("strides", (1, 1))]
    d = [int(v) for v in attrs.get("dilations", (1, 1))]
    a: dict[str, Any] = {"strides": tuple(s), "dilations": tuple(d), "groups": int(attrs.get("group", 1))}
    if node.op_type == "Conv":
        a["pads"] = _spatial_pads(ctx, attrs, x.type.shape, k, s, d)  # type: ignore[arg-type,attr-defined]
        op = "conv2d"
    else:
        if "output_shape" in attrs or str(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            raise ctx.error("ConvTranspose with output_shape or SAME auto_pad is not supported")
        a["pads"] = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        a["output_padding"] = tuple(int(p) for p in attrs.get("output_padding", (0, 0)))
        op = "conv2d_transpose"
    y = ctx.emit(op, [x, w], a, o if ctx.opt_input(2) is None else o + "_conv")
    ctx.out(0, _add_channel_bias(ctx, y, ctx.opt_input(2), o))


@handles("MaxPool", "AveragePool")
def _pool(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    _check_2d(ctx, x)
    if len(node.output) > 1 and node.output[1]:
        raise ctx.error("MaxPool indices output is not supported")
    k = [int(v) for v in attrs["kernel_shape"]]
    s = [int(v) for v in attrs.get("strides", (1, 1))]
    d = [int(v) for v in attrs.get("dilations", (1, 1))]
    a: dict[str, Any] = {"kernel_shape": tuple(k), "strides": tuple(s), "ceil_mode": bool(attrs.get("ceil_mode", 0)),
                         "pads": _spatial_pads(ctx, attrs, x.type.shape, k, s, d)}  # type: ignore[attr-defined]
    if node.op_type == "MaxPool":
        a["dilations"] = tuple(d)
        op = "max_pool2d"
    else:
        if d != [1, 1]:
            raise ctx.error("AveragePool with dilations is not supported")
        a["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        op = "avg_pool2d"
    ctx.out(0, ctx.emit(op, [x], a, node.output[0]))


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    rank = len(x.type.shape)  # type: ignore[attr-defined]
    if node.op_type == "GlobalAveragePool" and rank == 4:
        ctx.out(0, ctx.emit("global_avg_pool2d", [x], {}, node.output[0]))
        return
    op = "mean" if node.op_type == "GlobalAveragePool" else "max"
    ctx.out(0, ctx.emit(op, [x], {"axes": tuple(range(2, rank)), "keepdims": True}, node.output[0]))


@handles("BatchNormalization")
def _bn(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("training_mode", 0) or any(o for o in node.output[1:]):
        raise ctx.error("BatchNormalization in training mode is not supported")
    args = [ctx.input(i) for i in range(5)]
    ctx.out(0, ctx.emit("batch_norm", args, {"epsilon": float(attrs.get("epsilon", 1e-5))}, node.output[0]))


@handles("LayerNormalization")
def _ln(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if any(o for o in node.output[1:]):
        raise ctx.error("LayerNormalization Mean/InvStdDev outputs are not supported")
    args = [ctx.input(0), ctx.input(1)] + ([ctx.input(2)] if ctx.opt_input(2) else [])
    a = {"axis": int(attrs.get("axis", -1)), "epsilon": float(attrs.get("epsilon", 1e-5))}
    ctx.out(0, ctx.emit("layer_norm", args, a, node.output[0]))


REDUCE_MAP = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


@handles(*REDUCE_MAP)
def _reduce(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axes = _axes_input(ctx, node, attrs)
    if not axes and attrs.get("noop_with_empty_axes", 0):
        ctx.out(0, ctx.input(0))
        return
    a = {"axes": tuple(axes) if axes else None, "keepdims": bool(attrs.get("keepdims", 1))}
    ctx.out(0, ctx.emit(REDUCE_MAP[node.op_type], [ctx.input(0)], a, node.output[0]))


@handles("ArgMax", "ArgMin")
def _argmax(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("select_last_index", 0):
        raise ctx.error("select_last_index=1 is not supported")
    a = {"axis": int(attrs.get("axis", 0)), "keepdims": bool(attrs.get("keepdims", 1))}
    ctx.out(0, ctx.emit(node.op_type.lower(), [ctx.input(0)], a, node.output[0]))


@handles("Pad")
def _pad(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if str(attrs.get("mode", "constant")) != "constant":
        raise ctx.error(f"Pad mode {attrs['mode']} is not supported (constant only)")
    x = ctx.input(0)
    rank = len(x.type.shape)  # type: ignore[attr-defined]
    p = ctx.const(node.input[1])
    if p is None:
        raise ctx.error("pads must be a constant")
    cv = ctx.opt_input(2)
    value = 0.0 if cv is None else ctx.const(cv)
    if value is None:
        raise ctx.error("constant_value must be a constant")
    axes = _axes_input(ctx, node, {}, 3) or list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[_norm(a, rank)], full[_norm(a, rank) + rank] = int(p[i]), int(p[i + len(axes)])
    ctx.out(0, ctx.emit("pad", [x], {"pads": tuple(full), "value": np.asarray(value).item()}, node.output[0]))


HANDLERS["LSTM"] = lstm
HANDLERS["GRU"] = gru
HANDLERS.update(COMPOSED)
