"""Graph-level clean-ups: dead-code elimination, common-subexpression elimination, constant folding.

All three are pure rewrites of graph functions: ops are side-effect free, so a binding nobody
reads can go, and two bindings computing the same node from the same operands are one value.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import Binding, Block, CallExtern, Constant, Function, If, Loop, Node, OpCall, Scalar, Value
from mlc.ir.module import Module
from mlc.ir.rewrite import operands, remap_args, used_names, walk_bindings

from .registry import ModulePass, PassContext, option, register_pass


def _map_functions(module: Module, f) -> Module:  # type: ignore[no-untyped-def]
    return dataclasses.replace(
        module, functions=tuple(f(fn) if isinstance(fn, Function) else fn for fn in module.functions)
    )


def dce_block(block: Block) -> Block:
    live = {r.name for r in block.results}
    kept: list[Binding] = []
    for b in reversed(block.bindings):
        node = b.node
        # a scalar stays: after lowering, kernels read it through sym_args (symbols), not operands
        if b.var.name not in live and not isinstance(node, CallExtern | Scalar) and not _effectful(node):
            continue
        if isinstance(node, If):
            node = dataclasses.replace(node, then_block=dce_block(node.then_block), else_block=dce_block(node.else_block))
            live |= used_names(node.then_block) | used_names(node.else_block)
        elif isinstance(node, Loop):
            node = dataclasses.replace(node, body=dce_block(node.body))
            live |= used_names(node.body)
        live.update(v.name for v in operands(node))
        kept.append(Binding(b.var, node, b.loc))
    return Block(tuple(reversed(kept)), block.results, block.loc)


def _effectful(node: Node) -> bool:
    """Op calls with an effect (run-time checks) stay even when nobody reads their value."""
    if not isinstance(node, OpCall):
        return False
    from mlc.ir.ops.registry import get

    op = get(node.op)
    return op is not None and not op.pure


@register_pass
@dataclasses.dataclass(frozen=True)
class DCE(ModulePass):
    """Remove bindings whose values are never used."""

    name: ClassVar[str] = "dce"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        return _map_functions(module, lambda fn: dataclasses.replace(fn, body=dce_block(fn.body)))


def _cse_key(node: Node) -> tuple | None:
    if isinstance(node, If | Loop | CallExtern):
        return None
    fields = []
    for fld in dataclasses.fields(node):
        if fld.name == "loc":
            continue
        v = getattr(node, fld.name)
        if isinstance(v, Value):
            v = ("%", v.name)
        elif isinstance(v, tuple):
            v = tuple(("%", x.name) if isinstance(x, Value) else x for x in v)
        fields.append(v)
    return (type(node).__name__, *fields)


def cse_block(block: Block, env: dict[str, Value], seen: dict[tuple, Value]) -> Block:
    """A result keeps its binding (and name) even when an earlier one computes the same: the names of
    a function's results are its outputs' names (two ONNX outputs of equal value once became one)."""
    out: list[Binding] = []
    results = {r.name for r in block.results}
    for b in block.bindings:
        node = remap_args(b.node, lambda v: env.get(v.name, v))
        if isinstance(node, If):
            node = dataclasses.replace(
                node,
                then_block=cse_block(node.then_block, dict(env), dict(seen)),
                else_block=cse_block(node.else_block, dict(env), dict(seen)),
            )
        elif isinstance(node, Loop):
            node = dataclasses.replace(node, body=cse_block(node.body, dict(env), dict(seen)))
        key = _cse_key(node)
        try:
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in seen and seen[key].type == b.var.type and b.var.name not in results:
            env[b.var.name] = seen[key]
            continue
        if key is not None and key not in seen:
            seen[key] = b.var
        out.append(Binding(b.var, node, b.loc))
    return Block(tuple(out), tuple(env.get(r.name, r) for r in block.results), block.loc)


@register_pass
@dataclasses.dataclass(frozen=True)
class CSE(ModulePass):
    """Merge bindings that compute the same node from the same operands."""

    name: ClassVar[str] = "cse"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        return _map_functions(module, lambda fn: dataclasses.replace(fn, body=cse_block(fn.body, {}, {})))


@register_pass
@dataclasses.dataclass(frozen=True)
class FoldConstants(ModulePass):
    """Evaluate ops whose operands are all constants at compile time; results join the side file."""

    name: ClassVar[str] = "fold-constants"
    needs_constants: ClassVar[bool] = True
    max_elements: int = option(1 << 20, "Largest result (elements) worth folding.")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        return fold_constants(module, ctx, self.max_elements)


def fold_constants(module: Module, ctx: PassContext, max_elements: int) -> Module:
    from mlc.ir.ops.registry import get

    consts = dict(ctx.constants or {})
    changed = False

    def fold_fn(fn: Function) -> Function:
        nonlocal changed
        known: dict[str, np.ndarray] = {}
        out: list[Binding] = []
        for b in fn.body.bindings:
            node = b.node
            if isinstance(node, Constant) and node.key in consts:
                known[b.var.name] = consts[node.key]
            elif isinstance(node, OpCall) and node.args and all(a.name in known for a in node.args):
                op = get(node.op)
                if op is not None and op.ref is not None:
                    try:
                        val = op.ref([known[a.name] for a in node.args], dict(node.attrs), b.var.type, {})
                    except (ValueError, MlcError):
                        val = None  # depends on run-time dims; leave it
                    if isinstance(val, np.ndarray) and val.size <= max_elements:
                        key = f"{fn.name}.{b.var.name}.folded"
                        consts[key] = val
                        known[b.var.name] = val
                        changed = True
                        out.append(Binding(b.var, Constant(key, node.loc), b.loc))
                        continue
            out.append(b)
        return dataclasses.replace(fn, body=Block(tuple(out), fn.body.results, fn.body.loc))

    module = _map_functions(module, fold_fn)
    if changed:
        module = DCE().apply(module, ctx)
        used = {b.node.key for f in module.graph_functions() for b in walk_bindings(f.body) if isinstance(b.node, Constant)}
        ctx.set_constants({k: v for k, v in consts.items() if k in used})
    return module
