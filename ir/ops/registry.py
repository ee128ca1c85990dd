"""The op registry: one table of graph ops that every part of mlc reads.

An op is declared once (`define`) with its fusion pattern kind and attribute schema. Each aspect
of the op is attached by the module that owns that aspect, as TVM attaches FInferStructInfo and
FLegalize to an Op:

- shape/dtype inference  (`infer`)  - ir/ops/shapes.py   read by shape-infer, the importer, the verifier
- numpy reference        (`ref`)    - ir/ops/reference.py read by the reference interpreter
- lowering to a tensor program (`lower`) - passes/lower.py read by lower/fuse
- gradient               (`grad`)   - passes/autodiff.py  read by autodiff
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Fusion pattern kinds, ordered as in TVM's OpPatternKind: lower kinds fuse into higher ones.
KINDS: tuple[str, ...] = ("elementwise", "broadcast", "injective", "reduction", "out_ewise_fusable", "opaque")


@dataclass
class OpDef:
    name: str
    kind: str
    num_inputs: tuple[int, int]  # (min, max); max -1 = variadic
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> default (REQUIRED = no default)
    doc: str = ""
    pure: bool = True  # False: has an effect (a run-time check), so DCE keeps it
    infer: Callable[..., Any] | None = None
    ref: Callable[..., Any] | None = None
    lower: Callable[..., Any] | None = None
    grad: Callable[..., Any] | None = None


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
_OPS: dict[str, OpDef] = {}


def define(name: str, kind: str, num_inputs: int | tuple[int, int], attrs: dict[str, Any] | None = None, doc: str = "",
           pure: bool = True) -> OpDef:
    if name in _OPS:
        raise ValueError(f"op {name} defined twice")
    if kind not in KINDS:
        raise ValueError(f"op {name}: unknown kind {kind}")
    n = (num_inputs, num_inputs) if isinstance(num_inputs, int) else num_inputs
    op = OpDef(name, kind, n, dict(attrs or {}), doc, pure)
    _OPS[name] = op
    return op


def get(name: str) -> OpDef | None:
    return _OPS.get(name)


def all_ops() -> dict[str, OpDef]:
    return dict(_OPS)


def _attach(aspect: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        op = _OPS.get(name)
        if op is None:
            raise KeyError(f"register {aspect} for undefined op {name}")
        if getattr(op, aspect) is not None:
            raise ValueError(f"op {name}: {aspect} registered twice")
        setattr(op, aspect, fn)
        return fn

    return deco


def register_infer(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("infer", n)(fn)
        return fn

    return deco


def register_ref(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("ref", n)(fn)
        return fn

    return deco


def register_lower(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("lower", n)(fn)
        return fn

    return deco


def register_grad(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("grad", n)(fn)
        return fn

    return deco
