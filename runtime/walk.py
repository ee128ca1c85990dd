"""Visiting every binding of a graph block, nested blocks included."""

from __future__ import annotations

from collections.abc import Iterator

from mlc.ir.graph import Binding, Block, If, Loop


def walk_bindings(block: Block) -> Iterator[Binding]:
    for b in block.bindings:
        yield b
        if isinstance(b.node, If):
            yield from walk_bindings(b.node.then_block)
            yield from walk_bindings(b.node.else_block)
        elif isinstance(b.node, Loop):
            yield from walk_bindings(b.node.body)
