"""Contractions: matmul (numpy semantics: batch dims broadcast, 1-D operands promoted); ONNX MatMul and Gemm.

Declaration, shape rule, numpy reference, lowering (one pending sum reduction) and ONNX handlers
sit together; the gradient slot (`OpDef.grad`) stays None until autodiff fills it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arith import provably_different
from ..diagnostics import Loc, MlcError
from ..expr import Const, Expr
from ..graph import Value
from ..tir_builder import Builder, Index, Tensor, bcast_index
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_dtype, out_shape, product
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
    register_onnx,
    value_shape,
)
from .shapes import (
    ONE,
    Shape,
    assume_equal,
    broadcast_shapes,
    dims_str,
    same_dtype,
    shape_of,
    tensor,
)

# ---- matmul ----------------------------------------------------------------------------------
define("matmul", "out_ewise_fusable", 2, doc="numpy matmul: batch dims broadcast, 1-D operands promoted")


@register_infer("matmul")
def _matmul_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    ta, tb = tensor(args[0], loc), tensor(args[1], loc)
    dt = same_dtype([ta, tb], loc)
    a, b = shape_of(ta, loc), shape_of(tb, loc)
    if not a or not b:
        raise MlcError("matmul: operands must have rank >= 1", loc)
    a2 = (ONE,) + a if len(a) == 1 else a
    b2 = b + (ONE,) if len(b) == 1 else b
    if provably_different(a2[-1], b2[-2]):
        raise MlcError(
            f"matmul: contraction dims differ: ({dims_str(a)}) by ({dims_str(b)}): "
            f"{dims_str([a2[-1]])} vs {dims_str([b2[-2]])}", loc)
    assume_equal(a2[-1], b2[-2])
    batch = broadcast_shapes([a2[:-2], b2[:-2]], loc)
    out = batch + ((a2[-2],) if len(a) > 1 else ()) + ((b2[-1],) if len(b) > 1 else ())
    return TensorType(out, dt)


@ref("matmul")
def _matmul_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.matmul(args[0], args[1])


@register_lower("matmul")
def _matmul_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, y = as_tensor(args[0]), as_tensor(args[1])
    shp = out_shape(t)
    xa = x.shape if x.ndim > 1 else (Const(1),) + x.shape
    ya = y.shape if y.ndim > 1 else y.shape + (Const(1),)
    batch = len(shp) - (x.ndim > 1) - (y.ndim > 1)
    full = shp[:batch] + (xa[-2], ya[-1])

    def value(i: Index, r: Index) -> Expr:
        bi = i[:batch]
        m = i[batch] if x.ndim > 1 else Const(0)
        n = i[-1] if y.ndim > 1 else Const(0)
        xi = _bidx(bi, xa[:-2], full[:batch]) + (m, r[0])
        yi = _bidx(bi, ya[:-2], full[:batch]) + (r[0], n)
        return product(x.at(xi if x.ndim > 1 else xi[-1:]), y.at(yi if y.ndim > 1 else yi[-2:-1]), out_dtype(t))

    return b.reduce(shp, out_dtype(t), "add", (xa[-1],), value, "matmul")


def _bidx(bi: Index, in_batch: Shape, out_batch: Shape) -> Index:
    return bcast_index(bi, in_batch, out_batch) if in_batch else ()


@register_onnx("MatMul")
def _matmul_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("matmul", [ctx.input(0), ctx.input(1)], {}, node.output[0]))


@register_onnx("Gemm")
def _gemm_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
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


# ---- gradient rule (see registry.register_grad) --------------------------------------------------
def _swap_last(g: GradContext, v: Value) -> Value:
    r = len(value_shape(v))
    return g.emit("transpose", [v], {"perm": tuple(range(r - 2)) + (r - 1, r - 2)})


@register_grad("matmul")
def _matmul_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """da = d @ b^T, db = a^T @ d on the operands promoted to rank >= 2 (a 1-D a is a row, a
    1-D b a column, as numpy), summed over broadcast batch dims, then reshaped back."""
    a, b = c.args
    d = c.dout
    assert isinstance(d, Value)
    ra, rb = len(value_shape(a)), len(value_shape(b))
    a2 = g.emit("expand_dims", [a], {"axes": (0,)}) if ra == 1 else a
    b2 = g.emit("expand_dims", [b], {"axes": (1,)}) if rb == 1 else b
    if ra == 1:
        d = g.emit("expand_dims", [d], {"axes": (len(value_shape(d)) - (0 if rb == 1 else 1),)})
    if rb == 1:
        d = g.emit("expand_dims", [d], {"axes": (len(value_shape(d)),)})
    da = db = None
    if c.want(0):
        da = g.unbroadcast(g.emit("matmul", [d, _swap_last(g, b2)]), a2)
        if ra == 1:
            da = g.emit("reshape", [da], {"shape": value_shape(a)})
    if c.want(1):
        db = g.unbroadcast(g.emit("matmul", [_swap_last(g, a2), d]), b2)
        if rb == 1:
            db = g.emit("reshape", [db], {"shape": value_shape(b)})
    return [da, db]
