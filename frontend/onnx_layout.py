"""ONNX shape and layout ops, with shape arithmetic folded on symbolic values.

`Shape(x)` yields a tuple of `Expr`s; Gather/Concat/Slice/Unsqueeze/Squeeze/Reshape/Cast and integer
arithmetic on such tuples are evaluated at import time, so the targets of Reshape, Expand,
ConstantOfShape and Range stay symbolic (`(n, 4, 64)`) instead of becoming run-time tensors.
Applied to ordinary tensors, the same handlers emit the layout graph ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..ir.arith import as_int, simplify
from ..ir.dtype import from_numpy
from ..ir.expr import Const, Expr
from ..ir.ops.registry import value_dtype, value_shape
from ..ir.ops.shapes import BIG, broadcast_shapes, numel, resolve_reshape
from .onnx_ctx import Ctx, Handler, SymVal, onnx_dtype, registrar, sym_broadcast

LAYOUT: dict[str, Handler] = {}
handles = registrar(LAYOUT)

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
    if node.op_type == "Dropout" and ctx.opset < 7 and not attrs.get("is_test", 0) \
            and float(attrs.get("ratio", 0.5)) != 0.0:
        raise ctx.error("Dropout with is_test=0 (opset 6 training mode) and a ratio other than 0 is not supported "
                        "(random masks)")
    if node.op_type == "Dropout" and (t := ctx.opt_input(2)) is not None:
        c = ctx.const(t)
        if c is None:
            raise ctx.error("Dropout training_mode given at run time: it must be a constant")
        ratio = ctx.const(node.input[1]) if ctx.opt_input(1) is not None else np.array(0.5)
        if bool(c) and (ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0):
            raise ctx.error("Dropout in training mode with a ratio other than a constant 0 is not supported "
                            "(random masks)")
    for table in (ctx.vals, ctx.consts, ctx.syms):
        if src in table:
            table[node.output[0]] = table[src]  # type: ignore[index]
    if len(node.output) > 1 and node.output[1]:
        s = ctx.type_of(src).shape
        ctx.out(1, ctx.emit("full", [], {"shape": s, "value": True, "dtype": "bool"}, node.output[1]))


def _cast_to(ctx: Ctx, node: onnx.NodeProto, dt: str) -> None:
    """Shape values stay symbolic through integer casts; anything else becomes a `cast` (or nothing)."""
    s = ctx.sym(node.input[0])
    if s is not None and node.input[0] not in ctx.consts and dt in ("i32", "i64"):
        ctx.set_sym(node.output[0], SymVal(s.elems, s.scalar, dt))
        return
    x = ctx.input(0)
    ctx.out(0, x if value_dtype(x) == dt else ctx.emit("cast", [x], {"dtype": dt}, node.output[0]))


@handles("Cast")
def _cast(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _cast_to(ctx, node, onnx_dtype(int(attrs["to"]), ctx.where()))


@handles("CastLike")
def _cast_like(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Cast to the element type of the second input."""
    _cast_to(ctx, node, ctx.type_of(node.input[1]).dtype)


def norm_axis(a: int, rank: int) -> int:
    """A negative ONNX axis counted from the end. Unchecked (unlike ir/ops/shapes.norm_axis): Flatten's
    axis may equal the rank, and an axis out of range is reported by the graph op's shape rule,
    located at the node."""
    return a + rank if a < 0 else a


@handles("Unsqueeze")
def _unsqueeze(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axes = ctx.axes_input(node, attrs) or []
    s = ctx.sym(node.input[0])
    if s is not None and node.input[0] not in ctx.consts and s.scalar and axes in ([0], [-1]):
        ctx.set_sym(node.output[0], SymVal(s.elems, False, s.dtype))
        return
    ctx.out(0, ctx.emit("expand_dims", [ctx.input(0)], {"axes": tuple(axes)}, node.output[0]))


@handles("Squeeze")
def _squeeze(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    axes = ctx.axes_input(node, attrs)
    s = ctx.sym(node.input[0])
    if s is not None and node.input[0] not in ctx.consts and not s.scalar and len(s.elems) == 1:
        ctx.set_sym(node.output[0], SymVal(s.elems, True, s.dtype))
        return
    x = ctx.input(0)
    shape = value_shape(x)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if as_int(d) == 1]
    ctx.out(0, ctx.emit("squeeze", [x], {"axes": tuple(norm_axis(a, len(shape)) for a in axes)}, node.output[0]))


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


def _slice_params(ctx: Ctx, node: onnx.NodeProto, rank: int, attrs: dict[str, Any]
                  ) -> tuple[list[int], list[Any], list[Any], list[int]]:
    old = {1: "starts", 2: "ends", 3: "axes"}  # attributes before opset 10

    def known(i: int) -> list[Any] | None:
        if ctx.opset < 10:
            v = attrs.get(old.get(i, ""))
            return None if v is None else [int(x) for x in v]
        name = ctx.opt_input(i)
        if name is None:
            return None
        s = ctx.sym(name)
        if s is None:
            raise ctx.error(f"Slice input {i} ({('starts', 'ends', 'axes', 'steps')[i - 1]}) is given at run time "
                            "and determines the output shape: it must be a constant or a shape expression")
        return [as_int(e) if as_int(e) is not None else e for e in s.elems]

    starts, ends = known(1), known(2)
    assert starts is not None and ends is not None
    axes = known(3) or list(range(len(starts)))
    steps = known(4) or [1] * len(starts)
    if any(not isinstance(v, int) for v in axes + steps):
        raise ctx.error("Slice axes and steps must be constants")
    clamp = [max(min(v, BIG), -BIG) if isinstance(v, int) else v for v in ends]
    return [norm_axis(a, rank) for a in axes], starts, clamp, steps


@handles("Slice")
def _slice(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    s = ctx.sym(node.input[0])
    if s is not None and not s.scalar and node.input[0] not in ctx.consts:
        axes, starts, ends, steps = _slice_params(ctx, node, 1, attrs)
        if all(isinstance(v, int) for v in starts + ends):
            ctx.set_sym(node.output[0], SymVal(s.elems[slice(starts[0], ends[0], steps[0])], False, s.dtype))
            return
    x = ctx.input(0)
    axes, starts, ends, steps = _slice_params(ctx, node, len(value_shape(x)), attrs)
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
    s = value_shape(x)
    ax = norm_axis(int(attrs.get("axis", 1)), len(s))
    ctx.out(0, ctx.emit("reshape", [x], {"shape": (numel(s[:ax]), numel(s[ax:]))}, node.output[0]))


@handles("Expand")
def _expand(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    x = ctx.input(0)
    shape = broadcast_shapes([value_shape(x), _shape_input(ctx, node, 1)], ctx.loc)
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
        r = sym_broadcast(a, b, lambda x, y: Const(0))
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
    s = value_shape(x)
    ax = norm_axis(int(attrs.get("axis", 0)), len(s))
    n = len(node.output)
    if (name := ctx.opt_input(1)) is not None:
        c = ctx.const(name)
        if c is None:
            raise ctx.error("split sizes given at run time determine the output shapes: only constant sizes "
                            "are supported")
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


def _pad_piece(ctx: Ctx, x: Any, a: int, begin: int, end: int, step: int, reps: int, name: str) -> Any:
    """x[begin:end:step] along axis a, broadcast to `reps` along it when reps > 1 (edge padding)."""
    v = ctx.emit("strided_slice", [x], {"axes": (a,), "begin": (begin,), "end": (end,), "strides": (step,)}, name)
    if reps > 1:
        shape = list(value_shape(v))
        shape[a] = Const(reps)
        v = ctx.emit("broadcast_to", [v], {"shape": tuple(shape)}, name + "_rep")
    return v


def _pad_mode(ctx: Ctx, x: Any, full: list[int], mode: str, o: str) -> Any:
    """edge / reflect / wrap padding as slices of x concatenated around it, one axis at a time."""
    rank = len(value_shape(x))
    if any(p < 0 for p in full):
        raise ctx.error(f"Pad mode {mode} with negative pads is not supported")
    for a in range(rank):
        b, e = full[a], full[a + rank]
        if not b and not e:
            continue
        n = as_int(value_shape(x)[a])
        if mode == "reflect" and (n is None or b >= n or e >= n):
            raise ctx.error("Pad mode reflect needs a static dim larger than its pads")
        if mode == "wrap" and (n is None or b > n or e > n):
            raise ctx.error("Pad mode wrap needs a static dim at least as large as its pads")

        lo = {"edge": (0, 1, 1, b), "reflect": (b, 0, -1, 1), "wrap": (-b, BIG, 1, 1)}[mode]
        hi = {"edge": (-1, BIG, 1, e), "reflect": (-2, -2 - e, -1, 1), "wrap": (0, e, 1, 1)}[mode]
        parts = ([_pad_piece(ctx, x, a, *lo, f"{o}_lo{a}")] if b else []) + [x] + (
            [_pad_piece(ctx, x, a, *hi, f"{o}_hi{a}")] if e else [])
        x = ctx.emit("concat", parts, {"axis": a}, f"{o}_ax{a}")
    return x


@handles("Pad")
def _pad(ctx: Ctx, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    mode = str(attrs.get("mode", "constant"))
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise ctx.error(f"Pad mode {mode} is not supported")
    x = ctx.input(0)
    rank = len(value_shape(x))
    if ctx.opset < 11:  # pads and value are attributes
        p: np.ndarray | None = np.asarray(attrs["pads"], dtype=np.int64)
        value: Any = float(attrs.get("value", 0.0))
    else:
        p = ctx.const(node.input[1])
        if p is None:
            raise ctx.error("pads given at run time determine the output shape: only constant pads are supported")
        cv = ctx.opt_input(2)
        value = 0.0 if cv is None else ctx.const(cv)
        if value is None:
            raise ctx.error("constant_value must be a constant")
    assert p is not None
    axes = ctx.axes_input(node, {}, 3) or list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[norm_axis(a, rank)], full[norm_axis(a, rank) + rank] = int(p[i]), int(p[i + len(axes)])
    if mode != "constant":
        ctx.out(0, _pad_mode(ctx, x, full, mode, node.output[0]))
        return
    ctx.out(0, ctx.emit("pad", [x], {"pads": tuple(full), "value": np.asarray(value).item()}, node.output[0]))
