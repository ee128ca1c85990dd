"""alter-layout: fold the layout transforms of constant operands into the constants, at build time.

The CPU schedules pack an operand into a blocked layout inside the kernel (`Schedule.pack`: a
convolution's weight to `Wp[oc // 32, ic, kh, kw, oc % 32]`, a dense weight to column panels). For a
weight that is a graph constant, that copy is the same on every call, and costs as much as the
kernel itself for small batches (mobilenet's 576x1024 classifier: 2.4 MB repacked per call). This
pass runs after `schedule`: where every caller of a tensor program passes constants for a packed
parameter, the packing nest is run once here, by the TIR interpreter, on each such constant; the
program takes the packed buffer as its parameter instead, and the callers pass the packed constants
(TVM's AlterOpLayout + FoldConstant, for the layouts the schedule chose). Programs with a non-constant
caller keep their in-kernel packing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from mlc.ir import arith
from mlc.ir.expr import Const, Load, Select
from mlc.ir.graph import Binding, Block, CallTensor, Constant, Function, Value
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.rewrite import walk_bindings
from mlc.ir.tir import BlockStmt, Buffer, For, PrimFunc, Stmt, Store
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_visit import loads_in
from mlc.ir.types import TensorType

from .canonicalize import DCE
from .registry import ModulePass, PassContext, register_pass
from .schedule.scope import readers, root, tops, with_tops, writers


@dataclass(frozen=True)
class PackNest:
    """A root-level nest copying parameter `src` into the root-allocated buffer `dst`."""

    index: int  # position among the root's top statements
    param: int  # position of `src` among the program's parameters
    src: Buffer
    dst: Buffer
    nest: Stmt


def _leaf(s: Stmt) -> BlockStmt | None:
    while isinstance(s, For):
        s = s.body
    return s if isinstance(s, BlockStmt) else None


def pack_nests(func: PrimFunc) -> list[PackNest]:
    """The packing nests of a block-form program whose source parameter nothing else reads."""
    if not isinstance(func.body, BlockStmt):
        return []
    allocs = {b.name: b for b in root(func).alloc_buffers}
    inputs = {b.name: i for i, b in enumerate(func.params[:len(func.params) - func.num_outputs])}
    out = []
    ts = tops(func)
    for k, s in enumerate(ts):
        b = _leaf(s)
        if b is None or b.init is not None or not isinstance(b.body, Store):
            continue
        st, ld = b.body, b.body.value
        if isinstance(ld, Select) and isinstance(ld.f, Const) and ld.f.value == 0 and not loads_in(ld.cond):
            ld = ld.t  # a padded pack (`Schedule.pack(pad=True)`): zeros past the source's extent
        if not isinstance(ld, Load):
            continue
        if st.buffer.name not in allocs or ld.buffer.name not in inputs or st.buffer.dtype != ld.buffer.dtype:
            continue
        if any(iv.kind != "S" for iv in b.iters) or st.indices != tuple(iv.var for iv in b.iters):
            continue
        if [arith.as_int(iv.extent) for iv in b.iters] != [arith.as_int(d) for d in st.buffer.shape] \
                or any(arith.as_int(d) is None for d in st.buffer.shape):
            continue
        if [x.name for _, x in readers(func, ld.buffer.name)] != [b.name] or writers(func, ld.buffer.name):
            continue
        out.append(PackNest(k, inputs[ld.buffer.name], ld.buffer, st.buffer, s))
    return out


def run_pack(func: PrimFunc, p: PackNest, value: np.ndarray) -> np.ndarray:
    """The packed copy of `value` (the parameter `p.src`), computed by the interpreter on the nest."""
    prog = PrimFunc(f"{func.name}_prepack", (p.src, p.dst), 1, BlockStmt("root", (), p.nest))
    out = np.empty([arith.as_int(d) for d in p.dst.shape], dtype=value.dtype)
    run_prim(prog, [np.ascontiguousarray(value), out])
    return out


def without_packs(func: PrimFunc, packs: list[PackNest]) -> PrimFunc:
    """The program taking each packed buffer as its parameter, its packing nests gone."""
    by_param = {p.param: p.dst for p in packs}
    params = tuple(by_param.get(i, b) for i, b in enumerate(func.params))
    drop = {p.index for p in packs}
    dsts = {p.dst.name for p in packs}
    f = with_tops(func, [s for k, s in enumerate(tops(func)) if k not in drop],
                  tuple(b for b in root(func).alloc_buffers if b.name not in dsts))
    return dataclasses.replace(f, params=params)


def constant_params(module: Module, known: Container[str] | None = None) -> dict[str, set[int]]:
    """Per called tensor program, the parameters every call passes a graph constant bound at the
    top level of the calling function (with `known`: a constant whose key is in it): the operands
    whose packing this pass folds. The tuner reads it too, so that it times candidates without the
    packs the build removes (tune/worker.py)."""
    out: dict[str, set[int]] = {}
    for g in module.graph_functions():
        consts = {b.var.name for b in g.body.bindings
                  if isinstance(b.node, Constant) and (known is None or b.node.key in known)}
        top = set(map(id, g.body.bindings))
        for b in walk_bindings(g.body):
            if isinstance(b.node, CallTensor):
                here = {i for i, a in enumerate(b.node.args) if id(b) in top and a.name in consts}
                out[b.node.func] = out[b.node.func] & here if b.node.func in out else here
    return out


@register_pass
@dataclass(frozen=True)
class AlterLayout(ModulePass):
    """Pack constant operands once at build time where a schedule packs them per call."""

    name: ClassVar[str] = "alter-layout"
    needs_constants: ClassVar[bool] = True

    def apply(self, module: Module, ctx: PassContext) -> Module:
        consts = dict(ctx.constants or {})
        plans = {f.name: pack_nests(f) for f in module.prim_functions()}
        plans = {k: v for k, v in plans.items() if v}
        if not plans:
            return module
        # every call site of a program must pass known constants for all its packed parameters
        fixed = constant_params(module, consts)
        plans = {k: v for k, v in plans.items() if k in fixed and all(p.param in fixed[k] for p in v)}
        const_of: dict[tuple[str, str], str] = {}  # (graph function, value) -> constant key
        for g in module.graph_functions():
            for b in g.body.bindings:
                if isinstance(b.node, Constant) and b.node.key in consts:
                    const_of[(g.name, b.var.name)] = b.node.key
        if not plans:
            return module
        funcs = {f.name: f for f in module.prim_functions()}
        packed: dict[tuple[str, str, int], tuple[str, TensorType]] = {}  # (func, key, param) -> new
        for name, packs in plans.items():
            module = module.with_function(without_packs(funcs[name], packs))

        def rewrite_fn(g: Function) -> Function:
            out: list[Binding] = []
            used = {b.var.name for b in walk_bindings(g.body)} | {p.name for p in g.params}
            for b in g.body.bindings:
                node = b.node
                if isinstance(node, CallTensor) and node.func in plans:
                    args = list(node.args)
                    for p in plans[node.func]:
                        key = const_of[(g.name, args[p.param].name)]
                        if (node.func, key, p.param) not in packed:
                            new_key = f"{key}.packed.{node.func}.{p.param}"
                            consts[new_key] = run_pack(funcs[node.func], p, consts[key])
                            ty = TensorType(tuple(Const(int(d)) for d in consts[new_key].shape), p.dst.dtype)
                            packed[(node.func, key, p.param)] = (new_key, ty)
                        new_key, ty = packed[(node.func, key, p.param)]
                        vname = fresh_name(f"{args[p.param].name}_packed", used)
                        v = Value(vname, ty, args[p.param].loc)
                        out.append(Binding(v, Constant(new_key, node.loc), b.loc))
                        args[p.param] = v
                    node = dataclasses.replace(node, args=tuple(args))
                out.append(Binding(b.var, node, b.loc))
            return dataclasses.replace(g, body=Block(tuple(out), g.body.results, g.body.loc))

        module = dataclasses.replace(module, functions=tuple(
            rewrite_fn(f) if isinstance(f, Function) else f for f in module.functions))
        module = DCE().apply(module, ctx)
        keys = {b.node.key for f in module.graph_functions() for b in walk_bindings(f.body)
                if isinstance(b.node, Constant)}
        ctx.set_constants({k: v for k, v in consts.items() if k in keys})
        return module


__all__ = ["AlterLayout", "PackNest", "constant_params", "pack_nests", "run_pack", "without_packs"]
