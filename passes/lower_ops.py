"""Per-op lowerings to the te layer (ir/tir_builder.py), registered in the op registry.

Each lowering is `fn(b, args, attrs, out_type) -> Tensor | list[Tensor]`: `args` are Tensors (or a
scalar `Expr` for ScalarType operands), `out_type` the inferred result type. Elementwise and layout
ops return virtual tensors (inlined by consumers); reductions, matmul, conv and pools return pending
reductions; softmax/log_softmax/layer_norm chain several. Semantics follow ir/ops/reference.py.
"""

from __future__ import annotations

from typing import Any

from mlc.ir.expr import Bin, Const, Expr, Select
from mlc.ir.ops.lowering import Args, Attrs, as_tensor, out_shape
from mlc.ir.ops.registry import register_lower
from mlc.ir.ops.shapes import norm_axis
from mlc.ir.tir_builder import (
    Builder,
    CannotLower,
    Index,
    Tensor,
    as_dtype,
)
from mlc.ir.types import Type

# ---- elementwise -------------------------------------------------------------------------------


# ---- reductions --------------------------------------------------------------------------------


# ---- contractions ------------------------------------------------------------------------------


# ---- multi-stage normalisations ----------------------------------------------------------------


# ---- layout ------------------------------------------------------------------------------------


def _scalar(x: Any) -> Expr:
    if isinstance(x, Tensor):
        if x.ndim:
            raise CannotLower("index operand must be a scalar")
        return as_dtype(x.at(()), "i64")
    return x


@register_lower("dynamic_slice")
def _dyn_slice(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, start = as_tensor(args[0]), _scalar(args[1])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)
    return b.compute(out_shape(t), x.dtype, lambda i: x.at(i[:ax] + (i[ax] + start,) + i[ax + 1:]), "dynamic_slice")


@register_lower("dynamic_update_slice")
def _dyn_update(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, u, start = as_tensor(args[0]), as_tensor(args[1]), _scalar(args[2])
    ax = norm_axis(attrs.get("axis", 0), x.ndim)

    def fn(i: Index) -> Expr:
        rel = i[ax] - start
        inside = Bin("and", Bin("ge", rel, Const(0)), Bin("lt", rel, u.shape[ax]))
        return Select(inside, u.at(i[:ax] + (rel,) + i[ax + 1:]), x.at(i))

    return b.compute(out_shape(t), x.dtype, fn, "dynamic_update_slice")
