"""lower: every graph op call becomes a `call_tensor` of a tensor program in TensorIR block form.

One PrimFunc per distinct program: lowering the same (op, attrs, argument types) twice gives
structurally equal PrimFuncs, which are emitted once. Symbolic dims in buffer shapes are the graph's
own `Var`s; dims a program needs but no buffer shape binds become scalar params passed through
`sym_args`. Ops named in `extern` (`matmul=blas.matmul,...`) become `call_extern`s instead. Ops
without a lowering stay op calls; `strict` turns that into an error naming them. Each op's lowering
sits beside the op in its ir/ops family module; `fuse` reuses `GroupLowerer` to lower several ops
into one program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Expr, Load, Var, free_vars
from mlc.ir.externs import get_extern
from mlc.ir.graph import Binding, Block, CallExtern, CallTensor, Function, If, Loop, OpCall, Value
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.ops.registry import get as get_op
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_builder import Builder, CannotLower, Tensor
from mlc.ir.types import ScalarType, TensorType, TupleType, Type

from .registry import ModulePass, PassContext, option, register_pass


def parse_externs(spec: str) -> dict[str, str]:
    """`"matmul=blas.matmul, conv2d=dnn.conv"` -> {op: kernel}; unknown ops or kernels are errors."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        op, eq, kernel = item.partition("=")
        op, kernel = op.strip(), kernel.strip()
        if not eq or not op or not kernel:
            raise MlcError(f"lower: bad extern mapping '{item}' (expected OP=KERNEL)")
        if get_op(op) is None:
            raise MlcError(f"lower: extern mapping names unknown op '{op}'")
        if get_extern(kernel) is None:
            raise MlcError(f"lower: unknown external kernel '{kernel}' for op '{op}'")
        out[op] = kernel
    return out


def _type_vars(t: Type) -> set[str]:
    if isinstance(t, TensorType) and t.shape is not None:
        return {v.name for d in t.shape for v in free_vars(d)}
    if isinstance(t, TupleType):
        return set().union(*(_type_vars(f) for f in t.fields)) if t.fields else set()
    return set()


def _attr_vars(v: Any) -> set[str]:
    if isinstance(v, Expr):
        return {x.name for x in free_vars(v)}
    if isinstance(v, tuple):
        return set().union(*(_attr_vars(x) for x in v)) if v else set()
    return set()


def known(t: Type) -> bool:
    if isinstance(t, TensorType):
        return t.shape is not None
    if isinstance(t, TupleType):
        return all(known(f) for f in t.fields)
    return isinstance(t, ScalarType)


def lowerable(b: Binding) -> bool:
    """An op call with a registered lowering and fully known operand and result types."""
    n = b.node
    if not isinstance(n, OpCall):
        return False
    op = get_op(n.op)
    return op is not None and op.lower is not None and known(b.var.type) and all(known(a.type) for a in n.args)


@dataclasses.dataclass
class Lowered:
    func: PrimFunc
    args: tuple[Value, ...]
    sym_args: tuple[Expr, ...]


def lower_group(bindings: Sequence[Binding], outputs: Sequence[Value], name: str) -> Lowered:
    """One PrimFunc computing `outputs` from the bindings' external operands (in first-use order).

    Intermediates stay virtual (inlined) unless a reduction produces them or several members read
    them, in which case they live in buffers allocated inside the program.
    """
    taken: set[str] = set()
    for b in bindings:
        taken |= _type_vars(b.var.type)
        assert isinstance(b.node, OpCall)
        for a in b.node.args:
            taken |= _type_vars(a.type) | {a.name}
        for _, v in b.node.attrs:
            taken |= _attr_vars(v)
    bld = Builder(taken)
    produced = {b.var.name for b in bindings}
    uses: dict[str, int] = {}
    for b in bindings:
        assert isinstance(b.node, OpCall)
        for name in {a.name for a in b.node.args}:  # readers, not operand slots
            uses[name] = uses.get(name, 0) + 1
    env: dict[str, Any] = {}
    args: list[Value] = []
    scalars: dict[Var, Expr] = {}
    for b in bindings:
        assert isinstance(b.node, OpCall)
        vals: list[Any] = []
        for a in b.node.args:
            if a.name not in env:
                if a.name in produced:
                    raise CannotLower(f"%{a.name} is used before it is computed")
                if isinstance(a.type, TensorType) and a.type.shape is not None:
                    env[a.name] = bld.placeholder(a.type.shape, a.type.dtype, "in")
                    args.append(a)
                elif isinstance(a.type, ScalarType):
                    v = Var(bld.fresh("s"), "i64")
                    scalars[v] = Var(a.name, "i64")
                    env[a.name] = v
                else:
                    raise CannotLower(f"operand %{a.name} is not a tensor or scalar")
            vals.append(env[a.name])
        op = get_op(b.node.op)
        if op is None or op.lower is None:
            raise CannotLower(f"op {b.node.op} has no lowering")
        res = op.lower(bld, vals, dict(b.node.attrs), b.var.type)
        if isinstance(res, Tensor) and uses.get(b.var.name, 0) > 1 and not _cheap(res):
            bld.materialize(res)
        env[b.var.name] = res
    for o in outputs:
        res = env[o.name]
        for k, t in enumerate(res if isinstance(res, list) else [res]):
            if not isinstance(t, Tensor):
                raise CannotLower(f"result %{o.name} is not a tensor")
            want = o.type.fields[k] if isinstance(o.type, TupleType) else o.type
            assert isinstance(want, TensorType) and want.shape is not None
            t.shape = want.shape  # the graph's spelling of the dims (same values)
            bld.output(t, "out")
    func = bld.build(name)
    return Lowered(func, tuple(args), tuple(scalars.get(v, v) for v in func.scalar_params))


def _cheap(t: Tensor) -> bool:
    """A virtual tensor worth recomputing per reader: a plain load from a buffer."""
    if not t.is_virtual:
        return True
    probe = tuple(Var(f"_p{i}") for i in range(t.ndim))
    try:
        return isinstance(t.at(probe), Load)
    except CannotLower:
        return False


class GroupLowerer:
    """Lowers groups of bindings into the module, deduplicating structurally equal PrimFuncs."""

    def __init__(self, module: Module):
        self.module = module
        self.names = {f.name for f in module.functions}
        self.new: list[PrimFunc] = []
        self.cache: dict[tuple[Any, ...], str] = {}
        self.failed: dict[str, str] = {}  # op -> reason

    def lower(self, bindings: Sequence[Binding], outputs: Sequence[Value], base: str) -> CallTensor:
        low = lower_group(bindings, outputs, base)
        f = low.func
        key = (f.params, f.num_outputs, f.body, f.scalar_params)
        name = self.cache.get(key)
        if name is None:
            name = fresh_name(base, self.names)
            self.cache[key] = name
            self.new.append(dataclasses.replace(f, name=name))
        loc = bindings[-1].loc
        return CallTensor(name, low.args, low.sym_args, loc)

    def single(self, b: Binding) -> Binding | None:
        """`b` as a call_tensor, or None (reason recorded) when its op cannot be lowered."""
        assert isinstance(b.node, OpCall)
        if not lowerable(b):
            op = get_op(b.node.op)
            if op is None or op.pure:  # effectful ops (run-time checks) run on the host by design
                self.failed.setdefault(b.node.op, "no lowering or unknown operand types")
            return None
        try:
            call = self.lower([b], [b.var], b.node.op)
        except CannotLower as e:
            self.failed.setdefault(b.node.op, str(e))
            return None
        return Binding(b.var, call, b.loc)

    def finish(self, fns: list[Function | PrimFunc], strict: bool, what: str) -> Module:
        if strict and self.failed:
            detail = "; ".join(f"{op} ({why})" for op, why in sorted(self.failed.items()))
            raise MlcError(f"{what}: cannot lower op(s): {detail}")
        return dataclasses.replace(self.module, functions=tuple(fns) + tuple(self.new))


def map_blocks(fn: Function, f: Any) -> Function:
    """Apply `f(block) -> block` to a function body and, first, to every nested If/Loop block."""

    def walk(block: Block) -> Block:
        out = []
        for b in block.bindings:
            n = b.node
            if isinstance(n, If):
                n = dataclasses.replace(n, then_block=walk(n.then_block), else_block=walk(n.else_block))
            elif isinstance(n, Loop):
                n = dataclasses.replace(n, body=walk(n.body))
            out.append(Binding(b.var, n, b.loc) if n is not b.node else b)
        return f(Block(tuple(out), block.results, block.loc))

    return dataclasses.replace(fn, body=walk(fn.body))


def to_externs(block: Block, externs: dict[str, str]) -> Block:
    if not externs:
        return block
    out = []
    for b in block.bindings:
        n = b.node
        if isinstance(n, OpCall) and n.op in externs:
            b = Binding(b.var, CallExtern(externs[n.op], n.args, n.attrs, n.loc), b.loc)
        out.append(b)
    return Block(tuple(out), block.results, block.loc)


@dataclass(frozen=True)
class LowerOptions(ModulePass):
    """The options `lower` and `fuse` share."""

    extern: str = option("", "keep ops as external kernel calls: OP=KERNEL[,OP=KERNEL...]")
    strict: bool = option(False, "fail (naming them) when some ops cannot be lowered")


@register_pass
@dataclass(frozen=True)
class Lower(LowerOptions):
    """Lower every graph op call to a call_tensor of its own tensor program (deduplicated)."""

    name: ClassVar[str] = "lower"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        externs = parse_externs(self.extern)
        gl = GroupLowerer(module)

        def block(blk: Block) -> Block:
            out = []
            for b in to_externs(blk, externs).bindings:
                nb = gl.single(b) if isinstance(b.node, OpCall) else None
                out.append(nb or b)
            return Block(tuple(out), blk.results, blk.loc)

        fns = [map_blocks(f, block) if isinstance(f, Function) else f for f in module.functions]
        res = gl.finish(fns, self.strict, "lower")
        ctx.info(f"lower: {len(gl.new)} tensor programs")
        return res
