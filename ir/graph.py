"""Graph functions: SSA dataflow over tensors with symbolic shapes, plus control flow.

A function body is a `Block`: ordered `Binding`s (`%v = node`) and the returned values.
Nodes are the things a binding may compute: op calls (looked up in the op registry),
cross-level calls of tensor programs, external kernels and other graph functions,
constants from the side file, tuples, if/else, loops and run-time shape checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .diagnostics import UNKNOWN, Loc
from .expr import Expr, Var
from .types import Type


@dataclass(frozen=True)
class Value:
    """An SSA value `%name` of a graph function."""

    name: str
    type: Type
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


# attribute values: numbers, strings, symbolic exprs, lists of these
AttrValue = Union[int, float, str, bool, Expr, None, tuple["AttrValue", ...]]
Attrs = tuple[tuple[str, AttrValue], ...]  # sorted (name, value) pairs; hashable


def attrs_of(d: dict[str, AttrValue]) -> Attrs:
    return tuple(sorted(d.items()))


@dataclass(frozen=True)
class Node:
    pass


@dataclass(frozen=True)
class OpCall(Node):
    """`op(args) {attrs}`: a graph op from the registry (`ir.ops`)."""

    op: str
    args: tuple[Value, ...]
    attrs: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    def attr(self, name: str, default: AttrValue = None) -> AttrValue:
        for k, v in self.attrs:
            if k == name:
                return v
        return default


@dataclass(frozen=True)
class CallTensor(Node):
    """Cross-level call of a tensor program in destination-passing style.

    The callee's params are the args' buffers followed by one output buffer per result; the
    binding's type says the result shapes. `sym_args` pass extra symbolic ints the callee needs.
    """

    func: str
    args: tuple[Value, ...]
    sym_args: tuple[Expr, ...] = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class CallExtern(Node):
    """A call of a named external kernel (a library routine registered with the runtime)."""

    name: str
    args: tuple[Value, ...]
    attrs: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class CallGraph(Node):
    """A call of another graph function of the module."""

    func: str
    args: tuple[Value, ...]
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Constant(Node):
    """A tensor stored in the module's side file under `key`."""

    key: str
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Scalar(Node):
    """A host scalar computed from a symbolic expression (`%k = scalar n * 2`)."""

    value: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class MakeTuple(Node):
    fields: tuple[Value, ...]
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class GetItem(Node):
    tuple_value: Value
    index: int
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class MatchCast(Node):
    """Run-time check that `value` has the binding's type; binds the type's new symbols."""

    value: Value
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Block:
    bindings: tuple[Binding, ...]
    results: tuple[Value, ...]
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class If(Node):
    """`if %cond { ... yield } else { ... yield }`; the binding gets the yielded value(s)."""

    cond: Value
    then_block: Block
    else_block: Block
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Loop(Node):
    """A counted loop with loop-carried values.

    `for %i in 0..extent carry(%h = %h0, ...) { body; yield %h' ... }`. `index` and `carried`
    are bound inside the body; `inits` give the first values; the binding gets the last ones
    (one value, or a tuple when several are carried).
    """

    index: Value
    extent: Expr
    carried: tuple[Value, ...]
    inits: tuple[Value, ...]
    body: Block
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Binding:
    var: Value
    node: Node
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Function:
    """`graph @name(params) -> result types { body }`."""

    name: str
    params: tuple[Value, ...]
    body: Block
    attrs: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    def sym_vars(self) -> list[Var]:
        """Symbolic dims named by the parameter types, in first-seen order."""
        from .expr import free_vars
        from .types import TensorType

        seen: list[Var] = []
        for p in self.params:
            if isinstance(p.type, TensorType) and p.type.shape is not None:
                for d in p.type.shape:
                    for v in sorted(free_vars(d), key=lambda v: v.name):
                        if v not in seen:
                            seen.append(v)
        return seen
