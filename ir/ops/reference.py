"""Helpers the ops' numpy references share (the references sit beside their ops in the family modules).

A reference (ONNX semantics, read by the reference interpreter and the importer's constant folding)
takes the evaluated arguments, the op's attributes, the inferred result type and `env` (symbolic
dim name -> run-time value, for attributes that hold `Expr`s). `ref` registers one and casts its
result to the inferred dtype, so numpy's promotion rules never leak into the IR's types.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..arith import evaluate
from ..dtype import to_numpy
from ..expr import Expr
from ..types import TensorType, TupleType, Type
from .registry import register_ref

Env = dict[str, int]
Ref = Callable[[list[Any], dict[str, Any], Type, Env], Any]

@functools.cache
def _vectorized_erf() -> Callable[[Any], Any]:
    try:
        from scipy.special import erf as vectorized
    except ImportError:  # pragma: no cover
        return np.vectorize(math.erf, otypes=[np.float64])
    return vectorized  # type: ignore[no-any-return]


def erf(x: Any) -> Any:
    """scipy's vectorized erf, imported on first use (it costs every CLI start ~0.2 s otherwise);
    math.erf elementwise where scipy is absent (it is optional at run time)."""
    return _vectorized_erf()(x)


def ev(v: Any, env: Env) -> int:
    """An attribute value as a Python int (symbolic dims evaluated in env)."""
    return evaluate(v, env) if isinstance(v, Expr) else int(v)


def _cast_out(res: Any, t: Type) -> Any:
    if isinstance(t, TupleType):
        return tuple(_cast_out(r, f) for r, f in zip(res, t.fields))
    if isinstance(t, TensorType):
        return np.asarray(res, dtype=to_numpy(t.dtype))
    return res


def ref(*names: str) -> Callable[[Ref], Ref]:
    """Register `fn` as the reference of `names`, casting its result to the inferred type."""

    def deco(fn: Ref) -> Ref:
        def wrapped(args: list[Any], attrs: dict[str, Any], out_type: Type, env: Env) -> Any:
            return _cast_out(fn(args, attrs, out_type, env), out_type)

        wrapped.__name__ = fn.__name__
        wrapped.__doc__ = fn.__doc__
        register_ref(*names)(wrapped)
        return fn

    return deco


def round_bf16(x: np.ndarray) -> np.ndarray:
    """f32 values rounded to bfloat16 precision (nearest, ties to even; NaN stays NaN), kept as f32."""
    f = np.asarray(x, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return np.where(np.isnan(f), f, u.view(np.float32))


def windows(xp: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
             out: tuple[int, int]) -> np.ndarray:
    """Stack of strided views (N, C, kh*kw, Ho, Wo) of a padded NCHW tensor."""
    cols = []
    for i in range(k[0]):
        for j in range(k[1]):
            cols.append(xp[:, :, i * d[0]: i * d[0] + s[0] * (out[0] - 1) + 1: s[0],
                           j * d[1]: j * d[1] + s[1] * (out[1] - 1) + 1: s[1]])
    return np.stack(cols, axis=2)


def out_hw(t: Type) -> tuple[int, int]:
    assert isinstance(t, TensorType) and t.shape is not None
    return t.shape[2], t.shape[3]  # type: ignore[return-value]
