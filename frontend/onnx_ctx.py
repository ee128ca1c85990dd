"""The ONNX import context: what one import knows about each ONNX name, and how handlers build IR.

`Ctx` implements `mlc.ir.ops.registry.ImportContext`, the protocol the op handlers of the ir/ops
family modules program against (they import nothing from frontend). It lives apart from the
driver (onnx_import.py) so that the driver and the handler tables import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..ir import ops
from ..ir.arith import as_int, prove_equal, prove_lt, simplify
from ..ir.diagnostics import Loc, MlcError
from ..ir.dtype import from_numpy, to_numpy
from ..ir.expr import Bin, Const, Expr
from ..ir.graph import Attrs, Binding, Constant, GetItem, Node, OpCall, Value, attrs_of
from ..ir.names import fresh_name, sanitize
from ..ir.types import TensorType, TupleType, Type

FOLD_LIMIT = 1 << 16  # fold constant ops only when the result stays small

# --- symbolic shape arithmetic (folded by Ctx.try_sym_binary) ---------------------------------------------------------------------
_SYM_BIN: dict[str, Callable[[Expr, Expr], Expr | None]] = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b, "Mod": lambda a, b: a % b,
    "Min": lambda a, b: Bin("min", a, b), "Max": lambda a, b: Bin("max", a, b),
}


def sym_broadcast(a: SymVal, b: SymVal, fn: Callable[[Expr, Expr], Expr | None]) -> SymVal | None:
    xa, xb = a.elems, b.elems
    if len(xa) != len(xb):
        if len(xa) == 1:
            xa = xa * len(xb)
        elif len(xb) == 1:
            xb = xb * len(xa)
        else:
            return None
    out = []
    for x, y in zip(xa, xb):
        r = fn(x, y)
        if r is None:
            return None
        out.append(simplify(r))
    return SymVal(tuple(out), a.scalar and b.scalar, a.dtype)


ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.FLOAT16: "f16",
    onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT16: "i16",
    onnx.TensorProto.INT32: "i32", onnx.TensorProto.INT64: "i64", onnx.TensorProto.UINT8: "u8",
    onnx.TensorProto.UINT16: "u16", onnx.TensorProto.UINT32: "u32", onnx.TensorProto.UINT64: "u64",
    onnx.TensorProto.BOOL: "bool",
}


def onnx_dtype(code: int, what: str, src: str | None = None) -> str:
    if code not in ONNX_DTYPES:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        raise MlcError(f"{what}: unsupported element type {name}", Loc(src) if src else None)
    return ONNX_DTYPES[code]


@dataclass(frozen=True)
class SymVal:
    """A 0-d or 1-d integer tensor known element-wise as symbolic expressions."""

    elems: tuple[Expr, ...]
    scalar: bool = False
    dtype: str = "i64"

    def ints(self) -> list[int] | None:
        vals = [as_int(e) for e in self.elems]
        return None if any(v is None for v in vals) else vals  # type: ignore[return-value]


@dataclass
class Ctx:
    """State of one import: known values per ONNX name, the bindings being built, the constants."""

    src: str
    opset: int
    vals: dict[str, Value] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    syms: dict[str, SymVal] = field(default_factory=dict)
    const_of: dict[str, np.ndarray] = field(default_factory=dict)  # IR value name -> array (Constant)
    const_tuples: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)  # folded tuple-valued ops
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # constant key -> array
    key_of: dict[str, str] = field(default_factory=dict)  # IR value name -> its constant's key
    # constant key -> (op, operand keys, attrs) of the fold that made it: autodiff differentiates a
    # folded weight (Gemm's transposed B) back to its initializer through this (module meta `derived`)
    derived: dict[str, tuple[str, tuple[str, ...], Attrs]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    reserved: set[str] = field(default_factory=set)  # graph output names, claimed by the first binding
    stack: list[list[Binding]] = field(default_factory=lambda: [[]])
    node: onnx.NodeProto | None = None

    # --- naming and errors -------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        base = sanitize(hint)
        if base in self.reserved and base not in self.names:
            self.names.add(base)
            return base
        return fresh_name(base, self.names, avoid=self.reserved)

    @property
    def loc(self) -> Loc:
        return Loc(self.src)

    def where(self) -> str:
        n = self.node
        return f"node {n.op_type} '{n.name or (n.output[0] if n.output else '?')}'" if n is not None else "graph"

    def error(self, msg: str) -> MlcError:
        return MlcError(f"{self.where()}: {msg}", self.loc)

    # --- building ------------------------------------------------------------------------------
    def bind(self, hint: str, node: Node, ty: Type, fresh: bool = True) -> Value:
        v = Value(self.fresh(hint) if fresh else hint, ty, self.loc)
        self.stack[-1].append(Binding(v, node, self.loc))
        return v

    def emit(self, op: str, args: Sequence[Value], attrs: dict[str, Any] | None, hint: str) -> Value:
        """Bind `op(args)`, inferring its type; all-constant small results fold to a constant."""
        a = {k: _plain(v) for k, v in (attrs or {}).items()}
        d = ops.get(op)
        assert d is not None and d.infer is not None and d.ref is not None, op
        try:
            ty = d.infer([x.type for x in args], a, self.loc)
        except MlcError as e:
            raise MlcError(f"{self.where()}: {e.message}", self.loc) from None
        foldable = all(x.name in self.const_of for x in args) and not _symbolic(a)
        if foldable and isinstance(ty, TensorType) and ty.shape is not None:
            dims = [as_int(s) for s in ty.shape]
            if None not in dims and int(np.prod(dims)) <= FOLD_LIMIT:  # type: ignore[arg-type]
                out = d.ref([self.const_of[x.name] for x in args], a, ty, {})
                c = self.constant(np.asarray(out), hint, dtype=ty.dtype)
                self.derived[self.key_of[c.name]] = (op, tuple(self.key_of[x.name] for x in args), attrs_of(a))
                return c
        v = self.bind(hint, OpCall(op, tuple(args), attrs_of(a), self.loc), ty)
        if foldable and isinstance(ty, TupleType):
            self.const_tuples[v.name] = tuple(d.ref([self.const_of[x.name] for x in args], a, ty, {}))
        return v

    def constant(self, arr: np.ndarray, hint: str, key: str | None = None, dtype: str | None = None) -> Value:
        """A Constant binding for `arr` under `key` (a fresh key, also the value's name, when None).
        `dtype` types it when numpy has no such type (bf16, held as f32)."""
        name = self.fresh(hint if key is not None or sanitize(hint) in self.reserved else "c_" + hint)
        while key is None and name in self.arrays:  # never shadow an initializer's key
            name = self.fresh(name)
        key = key or name
        arr = np.asarray(arr)
        self.arrays[key] = arr
        dt = "bf16" if dtype == "bf16" and arr.dtype == np.float32 else from_numpy(arr.dtype)
        ty = TensorType(tuple(Const(int(s)) for s in arr.shape), dt)
        v = self.bind(name, Constant(key, self.loc), ty, fresh=False)
        self.const_of[v.name] = arr
        self.key_of[v.name] = key
        return v

    def scalar_like(self, value: float, like: Value, hint: str) -> Value:
        assert isinstance(like.type, TensorType)
        return self.constant(np.array(value, dtype=to_numpy(like.type.dtype)), hint, dtype=like.type.dtype)

    def tuple_items(self, t: Value, n: int, hints: Sequence[str]) -> list[Value]:
        assert isinstance(t.type, TupleType)
        if t.name in self.const_tuples:  # the op binding becomes dead and is dropped
            return [self.constant(self.const_tuples[t.name][i], hints[i]) for i in range(n)]
        return [self.bind(hints[i], GetItem(t, i, self.loc), t.type.fields[i]) for i in range(n)]

    # --- what is known about an ONNX name ------------------------------------------------------
    def has(self, name: str) -> bool:
        return bool(name) and (name in self.vals or name in self.consts or name in self.syms)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.consts:
            return self.consts[name]
        s = self.syms.get(name)
        if s is not None and (ints := s.ints()) is not None:
            return np.array(ints[0] if s.scalar else ints, dtype=to_numpy(s.dtype))
        return None

    def sym(self, name: str) -> SymVal | None:
        if name in self.syms:
            return self.syms[name]
        c = self.consts.get(name)
        if c is not None and c.ndim <= 1 and np.issubdtype(c.dtype, np.integer):
            return SymVal(tuple(Const(int(x)) for x in c.reshape(-1)), c.ndim == 0, from_numpy(c.dtype))
        return None

    def set_sym(self, name: str, s: SymVal) -> None:
        ints = s.ints()
        if ints is not None:
            self.consts[name] = np.array(ints[0] if s.scalar else ints, dtype=to_numpy(s.dtype))
        else:
            self.syms[name] = s

    def type_of(self, name: str) -> TensorType:
        if name in self.vals:
            t = self.vals[name].type
            assert isinstance(t, TensorType)
            return t
        if name in self.consts:
            c = self.consts[name]
            return TensorType(tuple(Const(int(s)) for s in c.shape), from_numpy(c.dtype))
        if name in self.syms:
            s = self.syms[name]
            return TensorType(() if s.scalar else (Const(len(s.elems)),), s.dtype)
        raise self.error(f"input '{name}' is not defined")

    def value(self, name: str) -> Value:
        """The IR value of an ONNX name, materialising constants and symbolic values on demand."""
        if name in self.vals:
            return self.vals[name]
        if name in self.consts:
            v = self.constant(self.consts[name], name, key=name if name not in self.arrays else None)
        elif name in self.syms:
            s = self.syms[name]
            v = self.emit("shape_tensor", [], {"values": s.elems}, name + "_shape")
            if s.scalar:
                v = self.emit("reshape", [v], {"shape": ()}, name)
            if s.dtype != "i64":
                v = self.emit("cast", [v], {"dtype": s.dtype}, name)
        else:
            raise self.error(f"input '{name}' is not defined")
        self.vals[name] = v
        return v

    def input(self, i: int) -> Value:
        n = self.node
        assert n is not None
        if i >= len(n.input) or not n.input[i]:
            raise self.error(f"missing input {i}")
        return self.value(n.input[i])

    def opt_input(self, i: int) -> str | None:
        n = self.node
        assert n is not None
        return n.input[i] if i < len(n.input) and n.input[i] else None

    def out(self, i: int, v: Value) -> None:
        n = self.node
        assert n is not None
        if i < len(n.output) and n.output[i]:
            self.vals[n.output[i]] = v
            if v.name in self.const_of:  # folded: later shape arithmetic may read it as a constant
                self.consts[n.output[i]] = self.const_of[v.name]

    # --- shape values and constant operands used by the op handlers -------------------------------
    def try_sym_binary(self, node: onnx.NodeProto) -> bool:
        """Fold integer arithmetic on shape values symbolically; False when not applicable."""
        ins = [self.sym(i) for i in node.input]
        if len(ins) != 2 or None in ins or all(n in self.consts for n in node.input):
            return False
        a, b = ins
        assert a is not None and b is not None
        if node.op_type in _SYM_BIN:
            r = sym_broadcast(a, b, _SYM_BIN[node.op_type])
        elif node.op_type == "Equal":
            def eq(x: Expr, y: Expr) -> Expr | None:
                if prove_equal(x, y):
                    return Const(1)
                d = as_int(simplify(x - y))
                if d is not None or prove_lt(x, y) or prove_lt(y, x):  # shape symbols are >= 0: n != -1
                    return Const(0)
                return None
            r = sym_broadcast(a, b, eq)
            if r is not None:
                self.consts[node.output[0]] = np.array([bool(as_int(e)) for e in r.elems]).reshape(() if r.scalar else -1)
                return True
        else:
            return False
        if r is None:
            return False
        self.set_sym(node.output[0], r)
        return True


    def axes_input(self, node: onnx.NodeProto, attrs: dict[str, Any], idx: int = 1) -> list[int] | None:
        """Axes from the `axes` attribute (old opsets) or a constant input (new ones)."""
        if "axes" in attrs:
            return [int(a) for a in attrs["axes"]]
        name = self.opt_input(idx)
        if name is None:
            return None
        c = self.const(name)
        if c is None:
            raise self.error("axes given at run time (not an initializer or Constant) determine the output shape: "
                            "only constant axes are supported")
        return [int(a) for a in np.asarray(c).reshape(-1)]


def _plain(v: Any) -> Any:
    """Attribute values in their simplest form: constant Exprs as ints, tuples elementwise."""
    if isinstance(v, tuple | list):
        return tuple(_plain(x) for x in v)
    if isinstance(v, Expr):
        e = simplify(v)
        c = as_int(e)
        return c if c is not None else e
    if isinstance(v, np.generic):
        return v.item()
    return v


def _symbolic(v: Any) -> bool:
    """Whether an attribute value mentions a symbolic dim (then the op cannot be folded)."""
    if isinstance(v, dict):
        return any(_symbolic(x) for x in v.values())
    if isinstance(v, tuple | list):
        return any(_symbolic(x) for x in v)
    return isinstance(v, Expr)


Handler = Callable[["Ctx", onnx.NodeProto, dict[str, Any]], None]


def registrar(table: dict[str, Handler]) -> Callable[..., Callable[[Handler], Handler]]:
    """A decorator `@handles("Op", ...)` that files a handler in `table` under each ONNX op name."""

    def handles(*names: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            for n in names:
                table[n] = fn
            return fn

        return deco

    return handles


