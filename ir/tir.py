"""Tensor programs (TensorIR-style): buffers, loop nests, blocks with typed iterators.

A `PrimFunc` takes buffers (inputs then outputs, destination-passing style) and symbolic
scalars; its body is a statement tree. A `BlockStmt` is the unit schedules reason about: an
iteration domain of spatial ("S") and reduce ("R") iterators bound to loop expressions, an
optional `init` run at the first reduce iteration, and a body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import UNKNOWN, Loc
from .expr import Expr, Var
from .graph import Attrs


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[Expr, ...]
    dtype: str
    scope: str = "global"  # global | local | shared
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Stmt:
    pass


FOR_KINDS: tuple[str, ...] = ("serial", "parallel", "vectorized", "unrolled", "thread")


@dataclass(frozen=True)
class For(Stmt):
    """`for %i in start..start+extent` with a kind; `thread` loops carry a `thread_tag`."""

    var: Var
    start: Expr
    extent: Expr
    body: Stmt
    kind: str = "serial"
    thread_tag: str = ""  # blockIdx.x, threadIdx.y, ... when kind == "thread"
    annotations: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class IterVar:
    """A block iterator: its var, domain extent [0, extent), kind S/R and loop binding."""

    var: Var
    extent: Expr
    kind: str  # "S" spatial | "R" reduce
    binding: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class BlockStmt(Stmt):
    name: str
    iters: tuple[IterVar, ...]
    body: Stmt
    init: Stmt | None = None
    alloc_buffers: tuple[Buffer, ...] = ()
    annotations: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Seq(Stmt):
    stmts: tuple[Stmt, ...]
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class IfStmt(Stmt):
    cond: Expr
    then: Stmt
    orelse: Stmt | None = None
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Let(Stmt):
    var: Var
    value: Expr
    body: Stmt
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class PrimFunc:
    """`prim @name(buffers..., scalars...) { body }`.

    `params` are the buffers in call order (inputs, then outputs); `num_outputs` says how many
    trailing ones are outputs. `scalar_params` are symbolic ints passed explicitly (dims that no
    buffer shape determines). Dims that appear in buffer shapes are bound from the buffers.
    """

    name: str
    params: tuple[Buffer, ...]
    num_outputs: int
    body: Stmt
    scalar_params: tuple[Var, ...] = ()
    attrs: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)
