"""Scalar expressions, shared by symbolic shapes and tensor-program bodies.

One expression language serves both levels (as TVM's PrimExpr does): a symbolic dim `n` in a
graph type is the same `Var` that a tensor program takes as a kernel argument. Nodes are frozen
dataclasses; `loc` never takes part in equality or hashing, so `==` is structural equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

from .diagnostics import UNKNOWN, Loc

if TYPE_CHECKING:
    from .tir import Buffer


@dataclass(frozen=True)
class Expr:
    """Base of scalar expressions. Subclasses set `dtype`."""

    # operator sugar so passes and tests can write `n * 2 + 1`
    def __add__(self, o: ExprLike) -> Expr:
        return Bin("add", self, const(o))

    def __radd__(self, o: ExprLike) -> Expr:
        return Bin("add", const(o), self)

    def __sub__(self, o: ExprLike) -> Expr:
        return Bin("sub", self, const(o))

    def __rsub__(self, o: ExprLike) -> Expr:
        return Bin("sub", const(o), self)

    def __mul__(self, o: ExprLike) -> Expr:
        return Bin("mul", self, const(o))

    def __rmul__(self, o: ExprLike) -> Expr:
        return Bin("mul", const(o), self)

    def __floordiv__(self, o: ExprLike) -> Expr:
        return Bin("floordiv", self, const(o))

    def __mod__(self, o: ExprLike) -> Expr:
        return Bin("floormod", self, const(o))

    def __neg__(self) -> Expr:
        return Bin("sub", const(0), self)


@dataclass(frozen=True)
class Var(Expr):
    """A named scalar: a symbolic dim, a loop variable, a block iterator or a scalar param."""

    name: str
    dtype: str = "i64"
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Const(Expr):
    value: int | float | bool
    dtype: str = "i64"
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


BIN_OPS: tuple[str, ...] = (
    "add", "sub", "mul", "div", "floordiv", "floormod", "min", "max", "pow",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or",
)
CMP_OPS: tuple[str, ...] = ("eq", "ne", "lt", "le", "gt", "ge", "and", "or")


@dataclass(frozen=True)
class Bin(Expr):
    """A binary operation; comparison and logic ops have dtype bool."""

    op: str
    a: Expr
    b: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return "bool" if self.op in CMP_OPS else self.a.dtype


@dataclass(frozen=True)
class Not(Expr):
    a: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)
    dtype: str = field(default="bool", init=False)


@dataclass(frozen=True)
class Select(Expr):
    cond: Expr
    t: Expr
    f: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.t.dtype


@dataclass(frozen=True)
class Cast(Expr):
    dtype: str
    a: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


# Intrinsics callable from tensor programs; the reference interpreter and every codegen read this.
INTRINSICS: tuple[str, ...] = (
    "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "abs", "neg", "floor", "ceil",
    "round", "sin", "cos", "isnan",
    "check_range",  # check_range(v, lo, hi) = v; the run fails with a located error unless lo <= v < hi
)


@dataclass(frozen=True)
class Call(Expr):
    """An intrinsic call (`exp(x)`); result dtype equals `dtype`."""

    name: str
    args: tuple[Expr, ...]
    dtype: str
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Load(Expr):
    """`buffer[indices]` inside a tensor program."""

    buffer: Buffer
    indices: tuple[Expr, ...]
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.buffer.dtype


ExprLike = Union[Expr, int, float, bool]


def reduction_identity(op: str, dtype: str) -> Const:
    """The identity of a reduction combiner in `dtype`: 0 for add, 1 for mul, and the lowest (max) or
    highest (min) value of the type. The one definition every lowering, interpreter and codegen uses."""
    import numpy as np

    from .dtype import is_float, to_numpy

    if op not in ("add", "mul", "max", "min"):
        raise ValueError(f"no identity for reduction {op!r}")
    if op in ("add", "mul"):
        v = int(op == "mul")
        return Const(float(v) if is_float(dtype) else bool(v) if dtype == "bool" else v, dtype)
    if is_float(dtype):
        return Const(float("-inf") if op == "max" else float("inf"), dtype)
    if dtype == "bool":
        return Const(op == "min", "bool")
    info = np.iinfo(to_numpy(dtype))
    return Const(int(info.min if op == "max" else info.max), dtype)


def const(v: ExprLike, dtype: str | None = None) -> Expr:
    """Lift a Python number to a `Const` (expressions pass through)."""
    if isinstance(v, Expr):
        return v
    if isinstance(v, bool):
        return Const(v, dtype or "bool")
    if isinstance(v, int):
        return Const(v, dtype or "i64")
    if isinstance(v, float):
        return Const(v, dtype or "f32")
    raise TypeError(f"cannot make an expression of {type(v).__name__}")


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Bin):
        return (e.a, e.b)
    if isinstance(e, Not | Cast):
        return (e.a,)
    if isinstance(e, Select):
        return (e.cond, e.t, e.f)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Load):
        return e.indices
    return ()


def subexprs(e: Expr) -> list[Expr]:
    """`e` and every expression below it, each occurrence once (pre-order, right child first)."""
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        out.append(x)
        stack.extend(children(x))
    return out


def free_vars(e: Expr) -> set[Var]:
    """Every `Var` an expression mentions."""
    out: set[Var] = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Var):
            out.add(x)
        stack.extend(children(x))
    return out


def substitute(e: Expr, mapping: dict[Var, Expr]) -> Expr:
    """Replace vars by expressions (no simplification; call `arith.simplify` after)."""
    if not mapping:
        return e
    if isinstance(e, Var):
        return mapping.get(e, e)
    if isinstance(e, Const):
        return e
    if isinstance(e, Bin):
        return Bin(e.op, substitute(e.a, mapping), substitute(e.b, mapping), e.loc)
    if isinstance(e, Not):
        return Not(substitute(e.a, mapping), e.loc)
    if isinstance(e, Cast):
        return Cast(e.dtype, substitute(e.a, mapping), e.loc)
    if isinstance(e, Select):
        return Select(substitute(e.cond, mapping), substitute(e.t, mapping), substitute(e.f, mapping), e.loc)
    if isinstance(e, Call):
        return Call(e.name, tuple(substitute(a, mapping) for a in e.args), e.dtype, e.loc)
    if isinstance(e, Load):
        return Load(e.buffer, tuple(substitute(a, mapping) for a in e.indices), e.loc)
    raise TypeError(f"unknown expression {type(e).__name__}")
