"""The numpy reference interpreter for graph functions: the semantics oracle of every stage.

It walks bindings in order, evaluating op calls through the registry's `ref` functions and tensor
programs through `tir_interp`. Symbolic dims are bound from the inputs' shapes, and every value is
checked against its declared type, so an unprovable shape mismatch fails here with the dims named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import arith
from .diagnostics import Loc, MlcError
from .dtype import to_numpy
from .expr import Expr, Var
from .graph import (
    Block,
    CallExtern,
    CallGraph,
    CallTensor,
    Constant,
    Function,
    GetItem,
    If,
    Loop,
    MakeTuple,
    MatchCast,
    Node,
    OpCall,
    Scalar,
    Value,
)
from .interrupt import run_region
from .limits import check_bytes, nbytes
from .module import Module
from .tir import PrimFunc
from .types import ScalarType, TensorType, TupleType, Type


@dataclass
class Frame:
    values: dict[str, Any] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)


def match_type(val: Any, ty: Type, dims: dict[str, int], what: str, loc: Loc | None) -> None:
    """Check `val` against `ty`, binding symbols seen for the first time (match_cast semantics)."""
    if isinstance(ty, TensorType):
        if not isinstance(val, np.ndarray):
            raise MlcError(f"{what}: expected a tensor, got {type(val).__name__}", loc)
        if val.dtype != to_numpy(ty.dtype):  # bf16 values are carried as f32 (compiled code stores them so)
            want = "bf16 (as float32)" if ty.dtype == "bf16" else ty.dtype
            raise MlcError(f"{what}: expected dtype {want}, got {val.dtype}", loc)
        if ty.shape is None:
            return
        if val.ndim != len(ty.shape):
            raise MlcError(f"{what}: expected rank {len(ty.shape)}, got shape {val.shape}", loc)
        pending = []
        for i, (d, actual) in enumerate(zip(ty.shape, val.shape)):
            if isinstance(d, Var) and d.name not in dims:
                dims[d.name] = int(actual)
            else:
                pending.append((i, d, actual))
        for i, d, actual in pending:
            try:
                want = arith.evaluate(d, dims)
            except ValueError:
                continue  # a dim that only a later binding determines
            if want != actual:
                says = _fmt(d) if _fmt(d) == str(want) else f"{_fmt(d)} = {want}"
                raise MlcError(f"{what}: dim {i} is {actual}, but the type says {says}", loc)
    elif isinstance(ty, TupleType):
        if not isinstance(val, tuple) or len(val) != len(ty.fields):
            raise MlcError(f"{what}: expected a tuple of {len(ty.fields)}", loc)
        for k, (v, t) in enumerate(zip(val, ty.fields)):
            match_type(v, t, dims, f"{what}[{k}]", loc)


def _concrete_type(a: Any) -> Type:
    from .dtype import from_numpy
    from .expr import Const

    if isinstance(a, np.ndarray):
        return TensorType(tuple(Const(int(d)) for d in a.shape), from_numpy(a.dtype))
    if isinstance(a, tuple):
        return TupleType(tuple(_concrete_type(x) for x in a))
    return ScalarType("i64")


def _fmt(d: Expr) -> str:
    try:
        from .printer import print_expr

        return print_expr(d)
    except ImportError:
        return repr(d)


class Interpreter:
    def __init__(self, module: Module, constants: Mapping[str, np.ndarray] | None = None):
        self.module = module
        self.constants = constants or {}

    def call(self, name: str, args: list[Any], loc: Loc | None = None) -> list[Any]:
        try:
            fn = self.module.get(name)
        except KeyError:
            raise MlcError(f"no function @{name} in the module", loc) from None
        if not isinstance(fn, Function):
            raise MlcError(f"@{name} is a tensor program, not a graph function", loc)
        if len(args) != len(fn.params):
            raise MlcError(f"@{name} takes {len(fn.params)} arguments, got {len(args)}", loc)
        frame = Frame()
        for p, a in zip(fn.params, args):
            match_type(a, p.type, frame.dims, f"argument %{p.name} of @{name}", p.loc)
            frame.values[p.name] = a
        return self.block(fn.body, frame)

    def block(self, block: Block, frame: Frame) -> list[Any]:
        for b in block.bindings:
            val = self.node(b.node, b.var, frame)
            if not isinstance(b.node, Loop | If):
                match_type(val, b.var.type, frame.dims, f"%{b.var.name}", b.loc)
            frame.values[b.var.name] = val
            if isinstance(b.var.type, ScalarType):
                frame.dims[b.var.name] = int(val)
        return [self._get(r, frame) for r in block.results]

    def _get(self, v: Value, frame: Frame) -> Any:
        try:
            return frame.values[v.name]
        except KeyError:
            raise MlcError(f"%{v.name} is not defined", v.loc) from None

    def node(self, n: Node, var: Value, frame: Frame) -> Any:
        from .ops.registry import get

        if isinstance(n, OpCall | CallTensor):
            _check_result_size(var, frame, n.loc)
        if isinstance(n, OpCall):
            op = get(n.op)
            if op is None or op.ref is None:
                raise MlcError(f"op '{n.op}' has no reference semantics", n.loc)
            args = [self._get(a, frame) for a in n.args]
            if op.infer is not None:
                # the op's shape rules on the actual shapes: an unprovable clash of symbols fails here, named
                op.infer([_concrete_type(a) for a in args], dict(n.attrs), n.loc)
            try:
                return op.ref(args, dict(n.attrs), var.type, frame.dims)
            except MlcError as e:
                if e.loc is None:
                    raise MlcError(e.message, n.loc) from None
                raise
        if isinstance(n, Constant):
            if n.key not in self.constants:
                raise MlcError(f"constant '{n.key}' is not in the constants file", n.loc)
            return self.constants[n.key]
        if isinstance(n, Scalar):
            return arith.evaluate(n.value, frame.dims)
        if isinstance(n, MakeTuple):
            return tuple(self._get(a, frame) for a in n.fields)
        if isinstance(n, GetItem):
            return self._get(n.tuple_value, frame)[n.index]
        if isinstance(n, MatchCast):
            val = self._get(n.value, frame)
            match_type(val, var.type, frame.dims, f"match_cast of %{n.value.name}", n.loc)
            return val
        if isinstance(n, CallGraph):
            out = self.call(n.func, [self._get(a, frame) for a in n.args], n.loc)
            return out[0] if len(out) == 1 else tuple(out)
        if isinstance(n, CallTensor):
            return self._call_tensor(n, var, frame)
        if isinstance(n, CallExtern):
            from .externs import get_extern

            fn = get_extern(n.name)
            if fn is None:
                raise MlcError(f"unknown external kernel '{n.name}'", n.loc)
            return fn(*[self._get(a, frame) for a in n.args], **dict(n.attrs))
        if isinstance(n, If):
            cond = bool(np.asarray(self._get(n.cond, frame)))
            sub = Frame(dict(frame.values), frame.dims)
            out = self.block(n.then_block if cond else n.else_block, sub)
            return out[0] if len(out) == 1 else tuple(out)
        if isinstance(n, Loop):
            return self._loop(n, frame)
        raise MlcError(f"cannot interpret {type(n).__name__}", getattr(n, "loc", None))

    def _loop(self, n: Loop, frame: Frame) -> Any:
        extent = arith.evaluate(n.extent, frame.dims)
        carried = [self._get(v, frame) for v in n.inits]
        for i in range(extent):
            sub = Frame(dict(frame.values), frame.dims)
            sub.values[n.index.name] = i
            sub.dims[n.index.name] = i
            for cv, val in zip(n.carried, carried):
                sub.values[cv.name] = val
            carried = self.block(n.body, sub)
            frame.dims.pop(n.index.name, None)
        return carried[0] if len(carried) == 1 else tuple(carried)

    def _call_tensor(self, n: CallTensor, var: Value, frame: Frame) -> Any:
        from .tir_interp import run_prim

        try:
            fn = self.module.get(n.func)
        except KeyError:
            raise MlcError(f"no tensor program @{n.func} in the module", n.loc) from None
        if not isinstance(fn, PrimFunc):
            raise MlcError(f"@{n.func} is not a tensor program", n.loc)
        out_types = var.type.fields if isinstance(var.type, TupleType) else (var.type,)
        outs = []
        for t in out_types:
            if not isinstance(t, TensorType) or t.shape is None:
                raise MlcError(f"call_tensor result needs a known tensor shape, got {t}", n.loc)
            shape = tuple(arith.evaluate(d, frame.dims) for d in t.shape)
            outs.append(np.zeros(shape, dtype=to_numpy(t.dtype)))
        args = [self._get(a, frame) for a in n.args]
        scalars = {p.name: arith.evaluate(e, frame.dims) for p, e in zip(fn.scalar_params, n.sym_args)}
        run_prim(fn, [np.require(a, requirements="C") for a in args] + outs, scalars)
        return outs[0] if len(outs) == 1 else tuple(outs)


def _check_result_size(var: Value, frame: Frame, loc: Loc) -> None:
    """Refuse, before computing it, a result larger than memory (its shape is known from its type)."""
    need = 0
    for t in var.type.fields if isinstance(var.type, TupleType) else (var.type,):
        if isinstance(t, TensorType) and t.shape is not None:
            try:
                need += nbytes([arith.evaluate(d, frame.dims) for d in t.shape], to_numpy(t.dtype))
            except (MlcError, KeyError, ValueError, TypeError):
                return  # a dim known only once the op runs (data-dependent): the op checks its own size
    check_bytes(need, f"%{var.name}", loc)


def run_function(
    module: Module,
    inputs: Mapping[str, np.ndarray],
    constants: Mapping[str, np.ndarray] | None = None,
    func: str = "main",
) -> dict[str, np.ndarray]:
    """Run graph function `func` on named inputs; returns outputs keyed by result names."""
    try:
        fn = module.get(func)
    except KeyError:
        raise MlcError(f"no function @{func} in the module") from None
    if not isinstance(fn, Function):
        raise MlcError(f"@{func} is not a graph function")
    names = [p.name for p in fn.params]
    missing = [k for k in names if k not in inputs]
    extra = [k for k in inputs if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown input(s) {', '.join(extra)}")
        raise MlcError(f"@{func}: {'; '.join(parts)} (parameters: {', '.join(names)})")
    with run_region():
        outs = Interpreter(module, constants).call(func, [inputs[k] for k in names])
    result: dict[str, np.ndarray] = {}
    for v, o in zip(fn.body.results, outs):
        result[v.name] = o
    return result


def bind_dims(func: Function, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Values of a function's symbolic dims for these inputs (used by runtimes and benchmarks)."""
    dims: dict[str, int] = {}
    for p in func.params:
        if p.name in inputs:
            match_type(inputs[p.name], p.type, dims, f"argument %{p.name}", p.loc)
    return dims
