"""Types of graph-level values: tensors with symbolic shapes, tuples, scalars.

A dim is an integer `Expr` mixing constants and symbolic vars (`n`, `2*n`, `n*m/4`).
`TensorType.shape is None` means the rank is unknown (before shape inference).
"""

from __future__ import annotations

from dataclasses import dataclass

from .expr import Expr


@dataclass(frozen=True)
class Type:
    pass


@dataclass(frozen=True)
class TensorType(Type):
    shape: tuple[Expr, ...] | None
    dtype: str

    @property
    def ndim(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass(frozen=True)
class TupleType(Type):
    fields: tuple[Type, ...]


@dataclass(frozen=True)
class ScalarType(Type):
    """A host scalar (a loop counter, a condition, a shape value)."""

    dtype: str


@dataclass(frozen=True)
class UnknownType(Type):
    """Not yet inferred; `shape-infer` replaces it."""
