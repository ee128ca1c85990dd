"""Named external kernels (`call_extern "name"(...)`): library routines the graph may call.

The reference interpreter and the runtime both look kernels up here; codegen keeps the call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ExternFn = Callable[..., np.ndarray]
_EXTERNS: dict[str, ExternFn] = {}


def register_extern(name: str) -> Callable[[ExternFn], ExternFn]:
    def deco(fn: ExternFn) -> ExternFn:
        _EXTERNS[name] = fn
        return fn

    return deco


def get_extern(name: str) -> ExternFn | None:
    return _EXTERNS.get(name)


@register_extern("blas.matmul")
def _blas_matmul(a: np.ndarray, b: np.ndarray, **_: object) -> np.ndarray:
    """Batched matmul through numpy's BLAS."""
    return np.matmul(a, b)
