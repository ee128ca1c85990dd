"""Small helpers to rebuild graph IR functionally (IR nodes are immutable).

`remap_args` swaps every Value operand of a node through a mapping; passes that change a value's
type or replace it call this on every later node. Nested blocks (If, Loop) are left to the caller,
which knows how it wants to treat scopes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from .graph import Binding, Block, If, Loop, Node, Value


def remap_args(node: Node, f: Callable[[Value], Value]) -> Node:
    """A copy of `node` whose direct Value operands are mapped through `f`."""
    changes = {}
    for fld in dataclasses.fields(node):
        v = getattr(node, fld.name)
        if isinstance(v, Value):
            changes[fld.name] = f(v)
        elif isinstance(v, tuple) and v and all(isinstance(x, Value) for x in v):
            changes[fld.name] = tuple(f(x) for x in v)
    return dataclasses.replace(node, **changes) if changes else node


def operands(node: Node) -> Iterator[Value]:
    """Direct Value operands of a node (not those inside nested blocks)."""
    for fld in dataclasses.fields(node):
        v = getattr(node, fld.name)
        if isinstance(v, Value):
            yield v
        elif isinstance(v, tuple):
            yield from (x for x in v if isinstance(x, Value))


def used_names(block: Block) -> set[str]:
    """Names a block reads, including from nested blocks (free or not)."""
    out = {r.name for r in block.results}
    for b in block.bindings:
        out.update(v.name for v in operands(b.node))
        if isinstance(b.node, If):
            out |= used_names(b.node.then_block) | used_names(b.node.else_block)
        elif isinstance(b.node, Loop):
            out |= used_names(b.node.body)
    return out


def walk_bindings(block: Block) -> Iterator[Binding]:
    """Every binding of a block, nested If/Loop blocks included, in order."""
    for b in block.bindings:
        yield b
        if isinstance(b.node, If):
            yield from walk_bindings(b.node.then_block)
            yield from walk_bindings(b.node.else_block)
        elif isinstance(b.node, Loop):
            yield from walk_bindings(b.node.body)
