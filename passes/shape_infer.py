"""shape-infer: symbolic shape and dtype inference for every graph value.

Each op's `infer` (ir/ops/shapes.py) computes a result type from its arguments' types, as an
expression of the function's symbolic dims, simplified by `ir.arith`. Declared types are checked
against inferred ones: a provable clash is a located error; an unprovable difference (n vs m)
becomes a `match_cast`, a run-time check that names the dims when it fails.

Requires: nothing. Establishes: "shapes-inferred" (every value has a known type).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.graph import (
    Binding,
    Block,
    CallGraph,
    Function,
    GetItem,
    If,
    Loop,
    MakeTuple,
    MatchCast,
    OpCall,
    Scalar,
    Value,
    attrs_of,
)
from mlc.ir.module import Module
from mlc.ir.rewrite import remap_args
from mlc.ir.types import ScalarType, TensorType, TupleType, Type, UnknownType

from .registry import ModulePass, PassContext, register_pass


def _known(t: Type) -> bool:
    if isinstance(t, TensorType):
        return t.shape is not None
    if isinstance(t, TupleType):
        return all(_known(f) for f in t.fields)
    return not isinstance(t, UnknownType)


def _compare(declared: Type, inferred: Type, where: str, loc: object) -> bool:
    """True when the types provably agree; raises on a provable clash; False when unprovable."""
    if isinstance(declared, TensorType) and isinstance(inferred, TensorType):
        if declared.dtype != inferred.dtype:
            raise MlcError(f"{where}: declared dtype {declared.dtype}, but it computes {inferred.dtype}", loc)  # type: ignore[arg-type]
        if declared.shape is None or inferred.shape is None:
            return True
        if len(declared.shape) != len(inferred.shape):
            raise MlcError(f"{where}: declared rank {len(declared.shape)}, but it computes rank {len(inferred.shape)}", loc)  # type: ignore[arg-type]
        ok = True
        for i, (a, b) in enumerate(zip(declared.shape, inferred.shape)):
            if arith.provably_different(a, b):
                raise MlcError(f"{where}: dim {i} declared {_p(a)}, but it computes {_p(b)}", loc)  # type: ignore[arg-type]
            ok = ok and arith.prove_equal(a, b)
        return ok
    if isinstance(declared, TupleType) and isinstance(inferred, TupleType):
        if len(declared.fields) != len(inferred.fields):
            raise MlcError(f"{where}: declared {len(declared.fields)} tuple fields, it computes {len(inferred.fields)}", loc)  # type: ignore[arg-type]
        return all(_compare(d, i, f"{where}[{k}]", loc) for k, (d, i) in enumerate(zip(declared.fields, inferred.fields)))
    return True


def _p(e: object) -> str:
    from mlc.ir.printer import print_expr

    return print_expr(e)  # type: ignore[arg-type]


def _simplify_type(t: Type) -> Type:
    if isinstance(t, TensorType) and t.shape is not None:
        return TensorType(tuple(arith.simplify(d) for d in t.shape), t.dtype)
    if isinstance(t, TupleType):
        return TupleType(tuple(_simplify_type(f) for f in t.fields))
    return t


class _Inferer:
    def __init__(self, module: Module):
        self.module = module
        self.result_types: dict[str, Type] = {}
        self.counter = 0

    def fresh(self, base: str, taken: set[str]) -> str:
        while True:
            self.counter += 1
            name = f"{base}_mc{self.counter}"
            if name not in taken:
                return name

    def function(self, fn: Function) -> Function:
        env: dict[str, Value] = {p.name: p for p in fn.params}
        taken: set[str] = set(env)
        body = self.block(fn.body, env, taken)
        self.result_types[fn.name] = (
            body.results[0].type if len(body.results) == 1 else TupleType(tuple(r.type for r in body.results))
        )
        return dataclasses.replace(fn, body=body)

    def block(self, block: Block, env: dict[str, Value], taken: set[str]) -> Block:
        out: list[Binding] = []
        for b in block.bindings:
            taken.add(b.var.name)
            node = remap_args(b.node, lambda v: env.get(v.name, v))
            inferred: Type | None = None
            if isinstance(node, OpCall):
                node, inferred = self.op_type(node, b, out, taken)
            elif isinstance(node, MakeTuple):
                inferred = TupleType(tuple(f.type for f in node.fields))
            elif isinstance(node, GetItem):
                tt = node.tuple_value.type
                if isinstance(tt, TupleType):
                    if not 0 <= node.index < len(tt.fields):
                        raise MlcError(f"tuple index {node.index} out of range for {len(tt.fields)} fields", node.loc)
                    inferred = tt.fields[node.index]
            elif isinstance(node, Scalar):
                inferred = ScalarType("i64")
            elif isinstance(node, CallGraph):
                inferred = self.result_types.get(node.func)
            elif isinstance(node, If):
                node = dataclasses.replace(
                    node,
                    then_block=self.block(node.then_block, dict(env), taken),
                    else_block=self.block(node.else_block, dict(env), taken),
                )
                inferred = _block_type(node.then_block)
            elif isinstance(node, Loop):
                inner = dict(env)
                carried = tuple(
                    Value(c.name, i.type if not _known(c.type) else c.type, c.loc) for c, i in zip(node.carried, node.inits)
                )
                inner.update({c.name: c for c in carried})
                inner[node.index.name] = node.index
                taken.update(c.name for c in carried)
                taken.add(node.index.name)
                node = dataclasses.replace(node, carried=carried, body=self.block(node.body, inner, taken))
                inferred = _block_type(node.body)
            declared = b.var.type
            if inferred is None:
                var = b.var
            elif not _known(declared) or isinstance(node, MatchCast):
                var = Value(b.var.name, _simplify_type(inferred) if not isinstance(node, MatchCast) else declared, b.var.loc)
            elif _compare(declared, inferred, f"%{b.var.name}", b.loc):
                var = Value(b.var.name, declared, b.var.loc)
            else:
                # unprovable: compute with the inferred type, then check at run time
                tmp = Value(self.fresh(b.var.name, taken), _simplify_type(inferred), b.var.loc)
                taken.add(tmp.name)
                out.append(Binding(tmp, node, b.loc))
                node, var = MatchCast(tmp, b.loc), Value(b.var.name, declared, b.var.loc)
            env[b.var.name] = var
            out.append(Binding(var, node, b.loc))
        results = tuple(env.get(r.name, r) for r in block.results)
        return Block(tuple(out), results, block.loc)

    def op_type(self, node: OpCall, b: Binding, out: list[Binding], taken: set[str]) -> tuple[OpCall, Type | None]:
        """The op's result type. Equalities it needs but cannot prove become match_casts of its
        arguments, emitted into `out` before it, so the op (and its kernel) sees consistent dims."""
        from mlc.ir.ops.registry import get
        from mlc.ir.ops.shapes import infer_with_assumptions

        op = get(node.op)
        if op is None:
            raise MlcError(f"unknown op '{node.op}'", node.loc)
        if op.infer is None:
            return node, None
        if not all(_known(a.type) for a in node.args):
            unknown = [f"%{a.name}" for a in node.args if not _known(a.type)]
            raise MlcError(f"{node.op}: argument(s) {', '.join(unknown)} have no known type", node.loc)
        ty, assumed = infer_with_assumptions(op.infer, [a.type for a in node.args], dict(node.attrs), node.loc)
        if not assumed:
            return node, ty
        args = list(node.args)
        for asm in assumed:
            if asm.equal is None:
                chk = Value(self.fresh(b.var.name + "_check", taken), TensorType((), "bool"), b.var.loc)
                taken.add(chk.name)
                out.append(Binding(chk, OpCall("check", (), attrs_of({"cond": asm.cond, "message": asm.message}),
                                               node.loc), b.loc))
                continue
            want, have = asm.equal
            if arith.as_int(have) is not None and arith.as_int(want) is None:
                # cast the symbol to the constant, never the constant to the symbol: every dim equal to
                # that constant would become the symbol ([1, 3, 1, n] -> [n, 3, n, n], a miscompile)
                want, have = have, want
            for i, a in enumerate(args):
                t = a.type
                if isinstance(t, TensorType) and t.shape is not None and have in t.shape:
                    shape = tuple(want if d == have else d for d in t.shape)
                    cast = Value(self.fresh(a.name, taken), TensorType(shape, t.dtype), a.loc)
                    taken.add(cast.name)
                    out.append(Binding(cast, MatchCast(a, node.loc), b.loc))
                    args[i] = cast
                    break
        node = dataclasses.replace(node, args=tuple(args))
        return node, op.infer([a.type for a in node.args], dict(node.attrs), node.loc)


def _block_type(block: Block) -> Type:
    rs = block.results
    return rs[0].type if len(rs) == 1 else TupleType(tuple(r.type for r in rs))


@register_pass
@dataclasses.dataclass(frozen=True)
class ShapeInfer(ModulePass):
    """Infer symbolic shapes and dtypes of every graph value; insert run-time checks where unprovable."""

    name: ClassVar[str] = "shape-infer"

    def apply(self, module: Module, ctx: PassContext) -> Module:
        inf = _Inferer(module)
        fns = [inf.function(f) if isinstance(f, Function) else f for f in module.functions]
        return dataclasses.replace(module, functions=tuple(fns))
