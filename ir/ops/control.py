"""Ops of control flow and run-time checks: dynamic_slice / dynamic_update_slice (indexed by a scalar
run-time value, a loop counter: the bodies of Loop / Scan / RNNs read and write one step with them)
and check (a run-time check of a condition on symbolic dims, inserted by shape-infer).

Declaration, shape rule, numpy reference and lowering of each op sit together; the gradient slot
(`OpDef.grad`) stays None until autodiff fills it. check has no lowering by design: it is effectful
and runs on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arith import evaluate_bool
from ..diagnostics import Loc, MlcError
from ..expr import Bin, Const, Expr, Select
from ..graph import Value
from ..tir_builder import Builder, CannotLower, Index, Tensor, as_dtype
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_shape
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
    check_dim,
    dim,
    dims_str,
    norm_axis,
    same_dtype,
    scalar_index,
    shape_of,
    tensor,
)

# ---- dynamic_slice, dynamic_update_slice -----------------------------------------------------
define("dynamic_slice", "injective", 2, {"axis": 0, "size": 1},
       "data[index:index+size] along axis; index is a ScalarType run-time value (a loop counter)")

define("dynamic_update_slice", "injective", 3, {"axis": 0},
       "copy of data with update written at index along axis; index is a ScalarType value")


@register_infer("dynamic_slice")
def _dyn_slice_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = tensor(args[0], loc)
    s = list(shape_of(t, loc))
    scalar_index(args[1], loc)
    ax = norm_axis(attrs.get("axis", 0), len(s), loc)
    s[ax] = dim(attrs.get("size", 1))
    return TensorType(tuple(s), t.dtype)


@register_infer("dynamic_update_slice")
def _dyn_update_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t, u = tensor(args[0], loc), tensor(args[1], loc, "update")
    s, us = shape_of(t, loc), shape_of(u, loc, "update")
    scalar_index(args[2], loc)
    if len(s) != len(us):
        raise MlcError(f"dynamic_update_slice: update ({dims_str(us)}) and data ({dims_str(s)}) ranks differ", loc)
    ax = norm_axis(attrs.get("axis", 0), len(s), loc)
    for i, (a, b) in enumerate(zip(s, us)):
        if i != ax:
            check_dim(a, b, f"dynamic_update_slice: dim {i} differs", loc)
    same_dtype([t, u], loc)
    return TensorType(s, t.dtype)


@ref("dynamic_slice")
def _dyn_slice_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, i = args[0], int(args[1])
    idx: list[slice] = [slice(None)] * x.ndim
    idx[norm_axis(attrs.get("axis", 0), x.ndim)] = slice(i, i + ev(attrs.get("size", 1), env))
    return x[tuple(idx)]


@ref("dynamic_update_slice")
def _dyn_update_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, u, i = args[0], args[1], int(args[2])
    out = np.array(x, copy=True)
    idx: list[slice] = [slice(None)] * x.ndim
    idx[norm_axis(attrs.get("axis", 0), x.ndim)] = slice(i, i + u.shape[norm_axis(attrs.get("axis", 0), x.ndim)])
    out[tuple(idx)] = u
    return out


def _scalar(x: Any) -> Expr:
    if isinstance(x, Tensor):
        if x.ndim:
            raise CannotLower("index operand must be a scalar")
        return as_dtype(x.at(()), "i64")
    return x


@register_lower("dynamic_slice")
def _dyn_slice_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, start = as_tensor(args[0]), _scalar(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    return b.compute(out_shape(t), x.dtype, lambda i: x.at(i[:ax] + (i[ax] + start,) + i[ax + 1:]), "dynamic_slice")


@register_lower("dynamic_update_slice")
def _dyn_update_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, u, start = as_tensor(args[0]), as_tensor(args[1]), _scalar(args[2])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)

    def fn(i: Index) -> Expr:
        rel = i[ax] - start
        inside = Bin("and", Bin("ge", rel, Const(0)), Bin("lt", rel, u.shape[ax]))
        return Select(inside, u.at(i[:ax] + (rel,) + i[ax + 1:]), x.at(i))

    return b.compute(out_shape(t), x.dtype, fn, "dynamic_update_slice")


# ---- check -----------------------------------------------------------------------------------
define("check", "opaque", 0, {"cond": REQUIRED, "message": ""},
       "run-time check of a condition on symbolic dims (inserted by shape-infer); fails with `message`",
       pure=False)


@register_infer("check")
def _check_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    return TensorType((), "bool")


@ref("check")
def _check_ref(args: list[Any], attrs: dict[str, Any], out_type: Any, env: dict[str, int]) -> np.ndarray:
    try:
        ok = evaluate_bool(attrs["cond"], env)
    except ValueError as e:
        raise MlcError(f"check: {e}") from None
    if not ok:
        vals = ", ".join(f"{k} = {v}" for k, v in sorted(env.items()) if not k.startswith("_"))
        raise MlcError(f"run-time shape check failed: {attrs.get('message') or 'condition'} (with {vals})")
    return np.array(True)


# ---- gradient rules (see registry.register_grad) -------------------------------------------------
@register_grad("dynamic_slice")
def _dynamic_slice_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """The window's cotangent written into zeros at the same index."""
    x, i = c.args
    assert isinstance(c.dout, Value)
    return [g.emit("dynamic_update_slice", [g.zeros_like(x), c.dout, i], {"axis": c.attrs["axis"]}), None]


@register_grad("dynamic_update_slice")
def _dynamic_update_slice_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    x, u, i = c.args
    d = c.dout
    assert isinstance(d, Value)
    ax = norm_axis(c.attrs["axis"], len(value_shape(x)))
    dx = g.emit("dynamic_update_slice", [d, g.zeros_like(u), i], {"axis": ax}) if c.want(0) else None
    du = g.emit("dynamic_slice", [d, i], {"axis": ax, "size": value_shape(u)[ax]}) if c.want(1) else None
    return [dx, du, None]
