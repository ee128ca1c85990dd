"""Indexing ops: a tensor addressed by the values of another (one_hot).

Everything about each op sits together: its declaration, shape rule, numpy reference, lowering to
a tensor program, ONNX import handler(s) and the gradient slot (None until autodiff fills it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arith import as_int
from ..diagnostics import Loc, MlcError
from ..expr import Bin, Cast, Const, Expr, Select
from ..tir_builder import Builder, Index, Tensor
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_shape
from .reference import Env, ref
from .registry import REQUIRED, ImportContext, OnnxNode, define, register_infer, register_lower, register_onnx
from .shapes import norm_axis, shape_of, tensor

# ---- one_hot -------------------------------------------------------------------------------------
define("one_hot", "injective", 2, {"depth": REQUIRED, "axis": -1},
       "ONNX OneHot: args indices, values = [off, on]; a new axis of size depth at `axis` holds `on` where "
       "it equals the index (negative indices count from depth; out of [-depth, depth): all `off`)")


@register_infer("one_hot")
def _one_hot_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    s = shape_of(args[0], loc, "indices")
    vals = tensor(args[1], loc, "values")
    if vals.shape is None or len(vals.shape) != 1 or as_int(vals.shape[0]) != 2:
        raise MlcError(f"one_hot: values must be a tensor of 2 elements [off, on], got {vals}", loc)
    depth = int(attrs["depth"])
    if depth < 1:
        raise MlcError(f"one_hot: depth must be positive, got {depth}", loc)
    ax = norm_axis(attrs.get("axis", -1), len(s), loc, extra=1)
    return TensorType(s[:ax] + (Const(depth),) + s[ax:], vals.dtype)


@ref("one_hot")
def _one_hot_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    ind, vals, depth = np.asarray(args[0]), np.asarray(args[1]), int(attrs["depth"])
    ax = norm_axis(attrs.get("axis", -1), ind.ndim, extra=1)
    i = np.expand_dims(ind.astype(np.int64), ax)
    i = np.where(i < 0, i + depth, i)
    hot = i == np.arange(depth).reshape((1,) * ax + (depth,) + (1,) * (ind.ndim - ax))
    return np.where(hot, vals[1], vals[0])


@register_lower("one_hot")
def _one_hot_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    ind, vals = as_tensor(args[0]), as_tensor(args[1])
    depth = Const(int(attrs["depth"]))
    ax = norm_axis(attrs.get("axis", -1), ind.ndim, extra=1)

    def fn(i: Index) -> Expr:
        raw = Cast("i64", ind.at(i[:ax] + i[ax + 1:]))  # float indices truncate, as ONNX casts them
        w = Select(Bin("lt", raw, Const(0)), raw + depth, raw)
        return Select(Bin("eq", w, i[ax]), vals.at((Const(1),)), vals.at((Const(0),)))

    return b.compute(out_shape(t), vals.dtype, fn, "one_hot")


@register_onnx("OneHot", since=9)
def _one_hot_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Opset 9; opset 11 only allowed negative indices (which wrap), so this handler serves both."""
    depth = ctx.const(node.input[1])
    if depth is None or depth.size != 1:
        raise ctx.error("OneHot: depth must be a constant (it fixes the output shape)")
    ctx.out(0, ctx.emit("one_hot", [ctx.input(0), ctx.input(2)],
                        {"depth": int(depth.reshape(-1)[0]), "axis": int(attrs.get("axis", -1))}, node.output[0]))
