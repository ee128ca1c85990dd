"""numpy reference semantics of the graph ops (ONNX semantics), read by the reference interpreter.

Each function takes the evaluated arguments, the op's attributes, the inferred result type and
`env` (symbolic dim name -> run-time value, for attributes that hold `Expr`s). Results are cast
to the inferred dtype, so numpy's promotion rules never leak into the IR's types.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..arith import evaluate
from ..diagnostics import MlcError
from ..dtype import to_numpy
from ..expr import Expr
from ..types import TensorType, TupleType, Type
from .registry import register_ref
from .shapes import norm_axis

Env = dict[str, int]
Ref = Callable[[list[Any], dict[str, Any], Type, Env], Any]

try:  # scipy is optional at run time; math.erf is the exact fallback
    from scipy.special import erf
except ImportError:  # pragma: no cover
    erf = np.vectorize(math.erf, otypes=[np.float64])


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


@ref("take")
def _take(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, ind, ax = args[0], np.asarray(args[1]).astype(np.int64), int(attrs.get("axis", 0))
    n = np.shape(x)[ax]
    bad = (ind < -n) | (ind >= n)
    if np.any(bad):  # as the compiled kernel reports it (check_range)
        raise MlcError(f"take: index {int(ind[bad].flat[0])} out of range [{-n}, {n})")
    return np.take(x, ind, axis=ax)


def _checked(ind: np.ndarray, n: int, op: str) -> np.ndarray:
    """Indices in [-n, n), negative ones wrapped, as the compiled kernels check them (check_range)."""
    ind = np.asarray(ind).astype(np.int64)
    bad = (ind < -n) | (ind >= n)
    if np.any(bad):
        raise MlcError(f"{op}: index {int(ind[bad].flat[0])} out of range [{-n}, {n})")
    return np.where(ind < 0, ind + n, ind)


@ref("topk_indices")
def _topk(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    """Stable: equal values keep their order, lower index first, for largest too (sorting the reversed
    axis ascending and reversing back keeps ties in index order without negating, which would wrap)."""
    x = np.asarray(args[0])
    ax, k = int(attrs.get("axis", -1)) % x.ndim, int(attrs["k"])
    n = x.shape[ax]
    if attrs.get("largest", True):
        order = n - 1 - np.flip(np.argsort(np.flip(x, ax), axis=ax, kind="stable"), ax)
    else:
        order = np.argsort(x, axis=ax, kind="stable")
    return np.take(order, np.arange(k), axis=ax).astype(np.int64)


@ref("scatter_elements")
def _scatter_elements(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, upd = np.array(args[0], copy=True), np.asarray(args[2])
    ax = int(attrs.get("axis", 0)) % x.ndim
    ind = _checked(args[1], x.shape[ax], "scatter_elements")
    red = attrs.get("reduction", "none")
    for u in np.ndindex(*ind.shape):  # in order: under 'none' the last duplicate wins
        p = u[:ax] + (int(ind[u]),) + u[ax + 1:]
        v = upd[u]
        x[p] = v if red == "none" else {"add": x[p] + v, "mul": x[p] * v, "max": max(x[p], v),
                                        "min": min(x[p], v)}[red]
    return x


@ref("scatter_nd")
def _scatter_nd(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, ind, upd = np.array(args[0], copy=True), np.asarray(args[1]).astype(np.int64), np.asarray(args[2])
    k, red = ind.shape[-1], attrs.get("reduction", "none")
    cols = [_checked(ind[..., j], x.shape[j], "scatter_nd") for j in range(k)]
    for u in np.ndindex(*ind.shape[:-1]):  # in order: under 'none' the last duplicate wins
        p = tuple(int(c[u]) for c in cols)
        v = upd[u]
        x[p] = v if red == "none" else {"add": x[p] + v, "mul": x[p] * v, "max": np.maximum(x[p], v),
                                        "min": np.minimum(x[p], v)}[red]
    return x


@ref("gather_elements")
def _gather_elements(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = np.asarray(args[0])
    ax = int(attrs.get("axis", 0)) % x.ndim
    return np.take_along_axis(x, _checked(args[1], x.shape[ax], "gather_elements"), axis=ax)


@ref("gather_nd")
def _gather_nd(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, ind, b = np.asarray(args[0]), np.asarray(args[1]).astype(np.int64), int(attrs.get("batch_dims", 0))
    k = ind.shape[-1]
    cols = [_checked(ind[..., j], x.shape[b + j], "gather_nd") for j in range(k)]
    batch = np.indices(ind.shape[:b]) if b else ()
    grids = tuple(g.reshape(g.shape + (1,) * (ind.ndim - 1 - b)) for g in batch)
    return x[grids + tuple(cols)]


@ref("dynamic_slice")
def _dyn_slice(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, i = args[0], int(args[1])
    idx: list[slice] = [slice(None)] * x.ndim
    idx[norm_axis(attrs.get("axis", 0), x.ndim)] = slice(i, i + ev(attrs.get("size", 1), env))
    return x[tuple(idx)]


@ref("dynamic_update_slice")
def _dyn_update(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, u, i = args[0], args[1], int(args[2])
    out = np.array(x, copy=True)
    idx: list[slice] = [slice(None)] * x.ndim
    idx[norm_axis(attrs.get("axis", 0), x.ndim)] = slice(i, i + u.shape[norm_axis(attrs.get("axis", 0), x.ndim)])
    out[tuple(idx)] = u
    return out


@ref("check")
def _check(args: list[Any], attrs: dict[str, Any], out_type: Any, env: dict[str, int]) -> np.ndarray:
    from ..arith import evaluate_bool
    from ..diagnostics import MlcError

    try:
        ok = evaluate_bool(attrs["cond"], env)
    except ValueError as e:
        raise MlcError(f"check: {e}") from None
    if not ok:
        vals = ", ".join(f"{k} = {v}" for k, v in sorted(env.items()) if not k.startswith("_"))
        raise MlcError(f"run-time shape check failed: {attrs.get('message') or 'condition'} (with {vals})")
    return np.array(True)
