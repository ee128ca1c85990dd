"""Helpers the per-op lowerings share (the lowerings themselves sit beside their ops).

A lowering is `fn(b, args, attrs, out_type) -> Tensor | list[Tensor]` registered with
`register_lower`: `b` is the ir/tir_builder.py `Builder` of the program being built, `args` are its
Tensors (or a scalar `Expr` for ScalarType operands), `out_type` the inferred result type.
Elementwise and layout ops return virtual tensors (inlined by consumers); reductions return pending
ones; an op or configuration without a lowering raises `CannotLower` (the op stays a graph op).
"""

from __future__ import annotations

from typing import Any

from ..expr import Bin, Const, Expr
from ..tir_builder import CannotLower, Shape, Tensor, as_dtype
from ..types import TensorType, Type

Args = list[Any]
Attrs = dict[str, Any]


def out_shape(t: Type) -> Shape:
    if not isinstance(t, TensorType) or t.shape is None:
        raise CannotLower("result has no known tensor type")
    return t.shape


def out_dtype(t: Type) -> str:
    if not isinstance(t, TensorType):
        raise CannotLower("result is not a tensor")
    return t.dtype


def as_tensor(x: Any) -> Tensor:
    """A tensor operand (a scalar where a tensor is needed has no lowering)."""
    if not isinstance(x, Tensor):
        raise CannotLower("expected a tensor operand")
    return x


def in_range(e: Expr, hi: Expr) -> list[Expr]:
    """The conditions 0 <= e < hi (a window or padded index that may fall outside its tensor)."""
    return [Bin("ge", e, Const(0)), Bin("lt", e, hi)]


def product(a: Expr, b: Expr, dtype: str) -> Expr:
    """One term of a contraction (matmul, conv) of `dtype` operands.

    Products of f16/bf16 operands are formed in f32, where they are exact (11 + 11 and 8 + 8
    significand bits fit in 24), and summed there (Builder.reduce accumulates f16/bf16 sums in f32
    and rounds once): numpy's f16 matmul/dot, hence ONNX's reference MatMul and Conv (im2col +
    matmul), and tensor-core GEMMs with f32 accumulators do the same. Rounding each product to f16
    first (`cast<f32>(a * b)`) left ~20% of the compiled f16 attention outputs 1-2 ulp from the
    reference. Only the product itself is widened: an elementwise producer fused into an operand
    (Q * scale) still rounds to f16, as its graph op does.
    """
    acc = "f32" if dtype in ("f16", "bf16") else dtype
    return as_dtype(a, acc) * as_dtype(b, acc)
