"""The verifier: run after every stage, it rejects ill-formed modules at the offending node's loc.

Graph level: SSA (one definition per name, uses after definitions and in scope), calls that
reference existing functions with the right arity, ops that exist with legal arity/attrs, and
declared types that do not provably contradict the op's inferred type. Tensor programs: loops
and blocks well nested, every scalar and buffer in scope, index counts and provable bounds,
dtype agreement. A symbolic mismatch (`n` vs `m`) is not an error: only provable ones are.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .arith import as_int, provably_different, prove_equal
from .diagnostics import UNKNOWN, Loc, MlcError
from .dtype import DTYPES_ALL, is_float, is_int
from .expr import BIN_OPS, INTRINSICS, Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, children, free_vars
from .flatten import flat_size
from .graph import (
    Binding,
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
    OpCall,
    Scalar,
    Value,
)
from .module import Module
from .printer import print_expr
from .sparse import AXIS_KINDS, SparseIteration, axis_table, folded_axes
from .tir import (
    ATTR_KEYS,
    FOR_KINDS,
    REDUCE_OPS,
    Allocate,
    AttrStmt,
    BlockStmt,
    Buffer,
    For,
    GemmCall,
    IfStmt,
    Let,
    PrimFunc,
    Seq,
    Stmt,
    Store,
    ThreadAllReduce,
)
from .tir_visit import loads_in, nodes, own_exprs
from .types import ScalarType, TensorType, TupleType, Type, UnknownType

_LOGIC = ("and", "or")


def _registry() -> Any:
    """The op registry, loaded with every op definition available now (imported lazily)."""
    try:
        return importlib.import_module(f"{__package__}.ops")
    except ImportError:
        return importlib.import_module(f"{__package__}.ops.registry")


def type_clash(declared: Type, actual: Type) -> str | None:
    """Why two types provably differ, or None (unknown parts and symbolic dims never clash)."""
    if isinstance(declared, UnknownType) or isinstance(actual, UnknownType):
        return None
    if type(declared) is not type(actual):
        return f"{_kind(declared)} vs {_kind(actual)}"
    if isinstance(declared, TupleType) and isinstance(actual, TupleType):
        if len(declared.fields) != len(actual.fields):
            return f"tuple of {len(declared.fields)} vs tuple of {len(actual.fields)}"
        for i, (a, b) in enumerate(zip(declared.fields, actual.fields)):
            why = type_clash(a, b)
            if why:
                return f"field {i}: {why}"
        return None
    if isinstance(declared, ScalarType) and isinstance(actual, ScalarType):
        return None if declared.dtype == actual.dtype else f"dtype {declared.dtype} vs {actual.dtype}"
    if isinstance(declared, TensorType) and isinstance(actual, TensorType):
        if declared.dtype != actual.dtype:
            return f"dtype {declared.dtype} vs {actual.dtype}"
        if declared.shape is None or actual.shape is None:
            return None
        if len(declared.shape) != len(actual.shape):
            return f"rank {len(declared.shape)} vs rank {len(actual.shape)}"
        for i, (a, b) in enumerate(zip(declared.shape, actual.shape)):
            if _provably_different(a, b):
                return f"dim {i}: {as_int(a)} vs {as_int(b)}"
    return None


def _provably_different(a: Expr, b: Expr) -> bool:
    try:
        return provably_different(a, b)
    except (TypeError, ValueError, AttributeError, ZeroDivisionError):
        return False


def _kind(t: Type) -> str:
    return {TensorType: "tensor", TupleType: "tuple", ScalarType: "scalar"}.get(type(t), type(t).__name__)


def _dtype(e: Expr) -> str:
    try:
        return str(e.dtype)  # type: ignore[attr-defined]
    except AttributeError:
        return "?"


class Verifier:
    def __init__(self, m: Module, source: str | None):
        self.m = m
        self.lines = source.split("\n") if source is not None else None
        self.funcs: dict[str, Function | PrimFunc] = {}
        self.ops: Any = None

    def fail(self, msg: str, *locs: Loc) -> None:
        loc = next((x for x in locs if x is not None and x.line), None) or next(
            (x for x in locs if x is not None and x is not UNKNOWN), UNKNOWN
        )
        if self.lines is None and loc.line:
            self.lines = _read_lines(loc.file)
        line = None
        if self.lines is not None and 0 < loc.line <= len(self.lines):
            line = self.lines[loc.line - 1]
        raise MlcError(msg, loc if loc is not UNKNOWN else None, line)

    # ---- module
    def module(self) -> None:
        for f in self.m.functions:
            if not isinstance(f, Function | PrimFunc):
                self.fail(f"not a function: {type(f).__name__}", self.m.loc)
            if f.name in self.funcs:
                self.fail(f"redefinition of function @{f.name}", f.loc, self.m.loc)
            self.funcs[f.name] = f
        for f in self.m.functions:
            if isinstance(f, Function):
                GraphVerifier(self, f).run()
            else:
                PrimVerifier(self, f).run()

    def op_registry(self) -> Any:
        if self.ops is None:
            self.ops = _registry()
        return self.ops


class GraphVerifier:
    """SSA scoping and typing of one graph function."""

    def __init__(self, v: Verifier, f: Function):
        self.v, self.f = v, f
        self.scopes: list[dict[str, Value]] = [{}]
        self.defined: set[str] = set()

    def fail(self, msg: str, *locs: Loc) -> None:
        self.v.fail(f"@{self.f.name}: {msg}", *locs, self.f.loc)

    def define(self, val: Value, loc: Loc) -> None:
        if val.name in self.defined:
            self.fail(f"redefinition of %{val.name}", val.loc, loc)
        self._check_type(val.type, val.loc, loc)
        self.defined.add(val.name)
        self.scopes[-1][val.name] = val

    def _check_type(self, t: Type, *locs: Loc) -> None:
        if isinstance(t, TensorType | ScalarType) and t.dtype not in DTYPES_ALL:
            self.fail(f"unknown dtype {t.dtype}", *locs)
        if isinstance(t, TensorType) and t.shape is not None:
            for d in t.shape:
                if not is_int(_dtype(d)):
                    self.fail(f"dims must be integer expressions, got a {_dtype(d)} dim", *locs)
                c = as_int(d)
                if c is not None and c < 0:
                    self.fail(f"negative dim {c}", *locs)
        if isinstance(t, TupleType):
            for x in t.fields:
                self._check_type(x, *locs)
        elif not isinstance(t, TensorType | ScalarType | UnknownType | TupleType):
            self.fail(f"not a type: {type(t).__name__}", *locs)

    def use(self, val: Value, loc: Loc) -> None:
        for scope in reversed(self.scopes):
            d = scope.get(val.name)
            if d is not None:
                if d != val:
                    self.fail(f"use of %{val.name} does not match its definition (type {d.type} vs {val.type})", loc)
                return
        why = "defined later or in an inner block" if val.name in self.defined else "undefined"
        self.fail(f"%{val.name} is {why} here", loc)

    @contextmanager
    def scope(self) -> Iterator[None]:
        self.scopes.append({})
        try:
            yield
        finally:
            self.scopes.pop()

    def run(self) -> None:
        for p in self.f.params:
            self.define(p, self.f.loc)
        self.block(self.f.body)

    def block(self, b: Block) -> None:
        for bd in b.bindings:
            self.binding(bd)
        for r in b.results:
            self.use(r, b.loc)

    def binding(self, b: Binding) -> None:
        n = b.node
        loc = getattr(n, "loc", UNKNOWN)
        locs = (loc, b.loc)
        ty = b.var.type
        self._check_type(ty, b.var.loc, b.loc)
        if isinstance(n, OpCall | CallTensor | CallExtern | CallGraph):
            for a in n.args:
                self.use(a, loc)
        if isinstance(n, OpCall):
            self.op_call(n, ty, locs)
        elif isinstance(n, CallTensor):
            self.call_tensor(n, ty, locs)
        elif isinstance(n, CallGraph):
            callee = self.v.funcs.get(n.func)
            if not isinstance(callee, Function):
                self.fail(f"call of @{n.func}: no graph function of that name", *locs)
            if len(n.args) != len(callee.params):
                self.fail(f"call of @{n.func}: {len(n.args)} arguments, it takes {len(callee.params)}", *locs)
            for a, p in zip(n.args, callee.params):
                why = type_clash(p.type, a.type)
                if why:
                    self.fail(f"call of @{n.func}: argument %{a.name} does not fit %{p.name}: {why}", *locs)
            self.expect(ty, self._results_type(callee.body.results), f"call of @{n.func}", locs)
        elif isinstance(n, CallExtern):
            if not n.name:
                self.fail("call_extern with an empty kernel name", *locs)
        elif isinstance(n, Constant):
            if self.v.m.constants is None:
                self.fail(f"const \"{n.key}\": the module names no constants file", *locs)
        elif isinstance(n, Scalar):
            if not isinstance(ty, ScalarType | UnknownType):
                self.fail("a scalar binding needs a scalar type", *locs)
            if not is_int(_dtype(n.value)) and _dtype(n.value) != "bool" and not is_float(_dtype(n.value)):
                self.fail(f"scalar of dtype {_dtype(n.value)}", *locs)
        elif isinstance(n, MakeTuple):
            for a in n.fields:
                self.use(a, loc)
            self.expect(ty, TupleType(tuple(a.type for a in n.fields)), "tuple", locs)
        elif isinstance(n, GetItem):
            self.get_item(n, ty, locs)
        elif isinstance(n, MatchCast):
            self.use(n.value, loc)
            if isinstance(n.value.type, TensorType) and isinstance(ty, TensorType):
                if n.value.type.dtype != ty.dtype:
                    self.fail(f"match_cast cannot change dtype {n.value.type.dtype} to {ty.dtype}", *locs)
        elif isinstance(n, If):
            self.if_node(n, ty, locs)
        elif isinstance(n, Loop):
            self.loop(n, ty, locs)
        else:
            self.fail(f"unknown node {type(n).__name__}", *locs)
        self.define(b.var, b.loc)

    def expect(self, declared: Type, actual: Type, what: str, locs: tuple[Loc, ...]) -> None:
        why = type_clash(declared, actual)
        if why:
            self.fail(f"declared type of {what} result contradicts its inferred type: {why}", *locs)

    def op_call(self, n: OpCall, ty: Type, locs: tuple[Loc, ...]) -> None:
        ops = self.v.op_registry()
        d = ops.get(n.op)
        if d is None:
            self.fail(f"unknown op '{n.op}'", *locs)
        lo, hi = d.num_inputs
        if len(n.args) < lo or (hi >= 0 and len(n.args) > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{'' if hi < 0 else hi}"
            self.fail(f"op {n.op} takes {want} arguments, got {len(n.args)}", *locs)
        given = dict(n.attrs)
        for k in given:
            if k not in d.attrs:
                known = ", ".join(sorted(d.attrs)) or "none"
                self.fail(f"op {n.op} has no attribute '{k}' (known: {known})", *locs)
        required = getattr(ops, "REQUIRED", None)
        attrs: dict[str, Any] = {}
        for k, default in d.attrs.items():
            if k in given:
                attrs[k] = given[k]
            elif required is not None and default is required:
                self.fail(f"op {n.op} needs attribute '{k}'", *locs)
            else:
                attrs[k] = default
        if d.infer is None or any(isinstance(a.type, UnknownType) for a in n.args):
            return
        try:
            inferred = d.infer([a.type for a in n.args], attrs, locs[0] if locs[0].line else locs[1])
        except MlcError as e:
            self.fail(f"op {n.op}: {e.message}", *locs)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
            self.fail(f"op {n.op}: bad arguments or attributes ({type(e).__name__}: {e})", *locs)
        self.expect(ty, inferred, f"op {n.op}", locs)

    def call_tensor(self, n: CallTensor, ty: Type, locs: tuple[Loc, ...]) -> None:
        callee = self.v.funcs.get(n.func)
        if not isinstance(callee, PrimFunc):
            self.fail(f"call_tensor of @{n.func}: no tensor program of that name", *locs)
        outs = list(ty.fields) if isinstance(ty, TupleType) else [ty]
        if len(n.args) + len(outs) != len(callee.params):
            self.fail(
                f"call_tensor of @{n.func}: {len(n.args)} inputs + {len(outs)} outputs, "
                f"it takes {len(callee.params)} buffers", *locs,
            )
        if len(outs) != callee.num_outputs:
            self.fail(f"call_tensor of @{n.func}: {len(outs)} results, it writes {callee.num_outputs}", *locs)
        if len(n.sym_args) != len(callee.scalar_params):
            self.fail(
                f"call_tensor of @{n.func}: {len(n.sym_args)} symbolic args, it takes {len(callee.scalar_params)}",
                *locs,
            )
        for e in n.sym_args:
            if not is_int(_dtype(e)):
                self.fail(f"call_tensor of @{n.func}: symbolic args must be integers, got {_dtype(e)}", *locs)
        for i, (t, buf) in enumerate(zip([a.type for a in n.args] + outs, callee.params)):
            if isinstance(t, TensorType):
                if t.dtype != buf.dtype:
                    self.fail(f"call_tensor of @{n.func}: buffer {i} (%{buf.name}) is {buf.dtype}, got {t.dtype}", *locs)
                if t.shape is not None and len(t.shape) != len(buf.shape):
                    self.fail(
                        f"call_tensor of @{n.func}: buffer {i} (%{buf.name}) has rank {len(buf.shape)}, "
                        f"got rank {len(t.shape)}", *locs,
                    )
            elif not isinstance(t, UnknownType):
                self.fail(f"call_tensor of @{n.func}: argument {i} is not a tensor", *locs)

    def get_item(self, n: GetItem, ty: Type, locs: tuple[Loc, ...]) -> None:
        self.use(n.tuple_value, locs[0])
        tt = n.tuple_value.type
        if isinstance(tt, UnknownType):
            return
        if not isinstance(tt, TupleType):
            self.fail(f"%{n.tuple_value.name} is not a tuple", *locs)
        if not 0 <= n.index < len(tt.fields):
            self.fail(f"index {n.index} out of range for a tuple of {len(tt.fields)}", *locs)
        self.expect(ty, tt.fields[n.index], "tuple item", locs)

    def _results_type(self, vals: tuple[Value, ...]) -> Type:
        if not vals:
            return TupleType(())
        return vals[0].type if len(vals) == 1 else TupleType(tuple(v.type for v in vals))

    def if_node(self, n: If, ty: Type, locs: tuple[Loc, ...]) -> None:
        self.use(n.cond, locs[0])
        ct = n.cond.type
        ok = isinstance(ct, UnknownType) or (isinstance(ct, ScalarType | TensorType) and ct.dtype == "bool")
        if isinstance(ct, TensorType) and ct.shape is not None and len(ct.shape) != 0:
            ok = False
        if not ok:
            self.fail(f"if condition %{n.cond.name} must be a bool scalar", *locs)
        for blk in (n.then_block, n.else_block):
            with self.scope():
                self.block(blk)
        if len(n.then_block.results) != len(n.else_block.results):
            self.fail(
                f"if branches yield {len(n.then_block.results)} and {len(n.else_block.results)} values", *locs
            )
        for blk in (n.then_block, n.else_block):
            self.expect(ty, self._results_type(blk.results), "if", (blk.loc,) + locs)

    def loop(self, n: Loop, ty: Type, locs: tuple[Loc, ...]) -> None:
        if not is_int(_dtype(n.extent)):
            self.fail("loop extent must be an integer expression", *locs)
        if len(n.carried) != len(n.inits):
            self.fail(f"loop carries {len(n.carried)} values but has {len(n.inits)} initial values", *locs)
        for c, i in zip(n.carried, n.inits):
            self.use(i, locs[0])
            why = type_clash(c.type, i.type)
            if why:
                self.fail(f"carried %{c.name} and its initial value %{i.name} differ: {why}", c.loc, *locs)
        with self.scope():
            self.define(n.index, locs[0])
            for c in n.carried:
                self.define(c, locs[0])
            self.block(n.body)
        if len(n.body.results) != len(n.carried):
            self.fail(f"loop body yields {len(n.body.results)} values, it carries {len(n.carried)}", n.body.loc, *locs)
        for c, r in zip(n.carried, n.body.results):
            why = type_clash(c.type, r.type)
            if why:
                self.fail(f"yielded %{r.name} does not match carried %{c.name}: {why}", n.body.loc, *locs)
        if n.carried:
            self.expect(ty, self._results_type(n.carried), "loop", locs)


class PrimVerifier:
    """Scoping, nesting, indexing and dtypes of one tensor program."""

    def __init__(self, v: Verifier, f: PrimFunc):
        self.v, self.f = v, f
        self.vars: dict[str, Var] = {}
        self.buffers: dict[str, Buffer] = {}
        self.loop_vars: list[Var] = []  # enclosing loops, innermost last
        self.views_of: dict[str, list[Buffer]] = {}  # a global allocation -> its flat views

    def fail(self, msg: str, *locs: Loc) -> None:
        self.v.fail(f"@{self.f.name}: {msg}", *locs, self.f.loc)

    def run(self) -> None:
        f = self.f
        if not 0 <= f.num_outputs <= len(f.params):
            self.fail(f"outputs {f.num_outputs}: the function has {len(f.params)} buffers", f.loc)
        for v in f.scalar_params:
            if v.name in self.vars:
                self.fail(f"duplicate scalar parameter {v.name}", v.loc)
            if not is_int(v.dtype):
                self.fail(f"scalar parameter {v.name} must be an integer, not {v.dtype}", v.loc)
            self.vars[v.name] = v
        for b in f.params:
            self.declare_buffer(b, f.loc, params=True)
        self.sparse_decls()
        self.view_decls()
        self.stmt(f.body, f.loc)

    def view_decls(self) -> None:
        """Each flat view is 1-D over a parameter or a global-scope allocation, of its dtype and scope
        and as many elements; it is in scope where its source is."""
        params = {b.name: b for b in self.f.params}
        allocs = {x.buffer.name: x.buffer for x in nodes(self.f.body) if isinstance(x, Allocate)}
        for v in self.f.views:
            here = (v.loc, self.f.loc)
            src, buf = v.source, v.buffer
            if params.get(src.name) != src and (allocs.get(src.name) != src or src.scope != "global"):
                self.fail(f"view %{buf.name}: %{src.name} is neither a buffer parameter nor a global allocation", *here)
            if any(w.buffer.name == buf.name for w in self.f.views if w is not v) or buf.name in params:
                self.fail(f"redefinition of buffer %{buf.name}", *here)
            if len(buf.shape) != 1 or buf.dtype != src.dtype or buf.scope != src.scope:
                self.fail(f"view %{buf.name} must be a 1-D buffer of %{src.name}'s dtype and scope", *here)
            n = buf.shape[0]
            whole = flat_size(src.shape)
            if n != whole and not prove_equal(n, whole):
                self.fail(f"view %{buf.name} has {print_expr(n)} elements, %{src.name} has {print_expr(whole)}", *here)
            if src.name in params:
                self.declare_buffer(buf, self.f.loc)
            else:
                self.views_of.setdefault(src.name, []).append(buf)

    # ---- sparse programs (ir/sparse.py)
    def sparse_decls(self) -> None:
        """Axes name declared parents and index arrays among the params; sparse buffers list each
        dependent axis directly after its parent and store values in a parameter."""
        f, seen = self.f, {}
        params = {b.name: b for b in f.params}
        for a in f.axes:
            here = (a.loc, f.loc)
            if a.name in seen:
                self.fail(f"redefinition of axis {a.name}", *here)
            if a.kind not in AXIS_KINDS:
                self.fail(f"axis {a.name}: unknown kind {a.kind} (known: {', '.join(AXIS_KINDS)})", *here)
            if (a.kind == "dense_fixed") != (not a.parent):
                self.fail(f"axis {a.name}: a {a.kind} axis " + ("has no parent" if a.parent else "needs a parent axis"), *here)
            if a.parent and a.parent not in seen:
                self.fail(f"axis {a.name}: parent {a.parent} is not an axis declared before it", *here)
            for e in (a.length, a.nnz):
                if e is not None:
                    self.int_expr(e, here, f"extent of axis {a.name}")
            want = {"dense_variable": (1, 0), "sparse_fixed": (0, 2), "sparse_variable": (1, 1)}.get(a.kind, (0, 0))
            for what, b, rank in (("indptr", a.indptr, want[0]), ("indices", a.indices, want[1])):
                if (b is not None) != bool(rank):
                    self.fail(f"axis {a.name}: a {a.kind} axis " + (f"has no {what}" if b is not None else f"needs {what}"), *here)
                if b is None:
                    continue
                if params.get(b.name) != b:
                    self.fail(f"axis {a.name}: {what} %{b.name} is not a parameter", *here)
                if not is_int(b.dtype) or len(b.shape) != rank:
                    self.fail(f"axis {a.name}: {what} %{b.name} must be a {rank}-d integer buffer", *here)
            seen[a.name] = a
        for sb in f.sparse_buffers:
            here, name = (sb.loc, f.loc), sb.buffer.name
            for k, x in enumerate(sb.axes):
                if x not in seen:
                    self.fail(f"sparse buffer %{name}: undefined axis {x}", *here)
                p = seen[x].parent
                if p and (k == 0 or sb.axes[k - 1] != p):
                    where = f"follows {sb.axes[k - 1]}" if k else "comes first"
                    self.fail(f"sparse buffer %{name}: axis {x} must directly follow its parent {p}, but {where}", *here)
            if params.get(sb.data.name) != sb.data:
                self.fail(f"sparse buffer %{name}: values %{sb.data.name} are not a parameter", *here)
            fold = folded_axes(sb)
            if not 1 <= fold <= len(sb.axes) or any(seen[x].variable for x in sb.axes[fold:]):
                last = max((k for k, x in enumerate(sb.axes) if seen[x].variable), default=0)
                self.fail(f"sparse buffer %{name}: values %{sb.data.name} have {len(sb.data.shape)} dims; they need "
                          f"1 to {len(sb.axes) - last} (one for the axes up to {sb.axes[last]}, one per later axis)", *here)
            if sb.buffer.dtype != sb.data.dtype or tuple(sb.buffer.shape) != tuple(seen[x].length for x in sb.axes):
                self.fail(f"sparse buffer %{name} does not match its axes and values", *here)
            self.declare_buffer(sb.buffer, sb.loc)

    def stmt_SparseIteration(self, s: SparseIteration, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        axes, where = axis_table(self.f.axes), f"sp_iter \"{s.name}\""
        walked: dict[str, str] = {}
        by_var: dict[str, str] = {}
        for it in s.iters:
            here = (it.loc,) + locs
            if it.kind not in ("S", "R"):
                self.fail(f"{where}: iterator kind must be S or R, not {it.kind}", *here)
            a = axes.get(it.axis)
            if a is None:
                self.fail(f"{where}: undefined axis {it.axis}", *here)
            if it.axis in walked:
                self.fail(f"{where}: axis {it.axis} is iterated twice", *here)
            if a.parent and a.parent not in walked:
                self.fail(f"{where}: axis {it.axis} is iterated before its parent {a.parent}", *here)
            if a.parent and it.kind == "S" and walked[a.parent] == "R":
                self.fail(f"{where}: spatial axis {it.axis} depends on reduce axis {a.parent}", *here)
            walked[it.axis] = it.kind
            by_var[it.var.name] = it.axis
        if s.init is not None and "R" not in walked.values():
            self.fail(f"{where} has an init but no reduce (R) iterator", *locs)
        views = {sb.buffer.name: sb for sb in self.f.sparse_buffers}
        inner_stmts = [s.body] + ([s.init] if s.init is not None else [])
        for x in (n for st in inner_stmts for n in nodes(st)):
            if isinstance(x, SparseIteration):
                self.fail(f"{where}: sparse iterations do not nest", getattr(x, "loc", UNKNOWN), *locs)
            accesses = [(ld.buffer.name, ld.indices) for e in own_exprs(x) for ld in loads_in(e)]
            if isinstance(x, Store):
                accesses.append((x.buffer.name, x.indices))
            for name, idx in accesses:
                sb = views.get(name)
                if sb is None:
                    continue
                for k, (i, want) in enumerate(zip(idx, sb.axes)):
                    got = by_var.get(i.name) if isinstance(i, Var) else None
                    if got != want:
                        what = f"{i.name} (axis {got})" if got else "not an iterator"
                        self.fail(f"{where}: sparse buffer %{name} is over ({', '.join(sb.axes)}): index {k} "
                                  f"must iterate {want}, got {what}", getattr(x, "loc", UNKNOWN), *locs)
        saved = dict(self.vars)
        try:
            for it in s.iters:
                if it.var.name in self.vars:
                    self.fail(f"{where}: {it.var.name} is already bound in an enclosing scope", it.loc, *locs)
                self.vars[it.var.name] = it.var
            inner = loc if loc.line else parent
            if s.init is not None:
                self.stmt(s.init, inner)
            self.stmt(s.body, inner)
        finally:
            self.vars = saved

    def declare_buffer(self, b: Buffer, loc: Loc, params: bool = False) -> None:
        if b.name in self.buffers:
            self.fail(f"redefinition of buffer %{b.name}", b.loc, loc)
        if b.dtype not in DTYPES_ALL:
            self.fail(f"buffer %{b.name}: unknown dtype {b.dtype}", b.loc, loc)
        if b.scope not in ("global", "local", "shared"):
            self.fail(f"buffer %{b.name}: unknown scope {b.scope}", b.loc, loc)
        for d in b.shape:
            if params:  # dims of parameter buffers bind their symbols
                for x in free_vars(d):
                    self.vars.setdefault(x.name, x)
            self.int_expr(d, (b.loc, loc), f"dim of %{b.name}")
            c = as_int(d)
            if c is not None and c < 0:
                self.fail(f"buffer %{b.name} has a negative dim {c}", b.loc, loc)
        self.buffers[b.name] = b

    @contextmanager
    def bind(self, var: Var, loc: Loc) -> Iterator[None]:
        if var.name in self.vars:
            self.fail(f"{var.name} is already bound in an enclosing scope", var.loc, loc)
        self.vars[var.name] = var
        try:
            yield
        finally:
            del self.vars[var.name]

    def int_expr(self, e: Expr, locs: tuple[Loc, ...], what: str) -> None:
        self.expr(e, locs)
        if not is_int(_dtype(e)):
            self.fail(f"{what} must be an integer expression, got {_dtype(e)}", getattr(e, "loc", UNKNOWN), *locs)

    def expr(self, e: Expr, locs: tuple[Loc, ...]) -> None:
        """Scoping and dtype rules of one expression tree (iterative: trees may be deep)."""
        stack = [e]
        while stack:
            x = stack.pop()
            here = (getattr(x, "loc", UNKNOWN),) + locs
            if isinstance(x, Var):
                bound = self.vars.get(x.name)
                if bound is None:
                    self.fail(f"{x.name} is not bound here", *here)
                if bound != x:
                    self.fail(f"{x.name} is used as {x.dtype} but bound as {bound.dtype}", *here)
            elif isinstance(x, Const):
                if x.dtype not in DTYPES_ALL:
                    self.fail(f"unknown dtype {x.dtype}", *here)
            elif isinstance(x, Bin):
                self._bin(x, here)
            elif isinstance(x, Not):
                if _dtype(x.a) != "bool":
                    self.fail(f"! needs a bool operand, got {_dtype(x.a)}", *here)
            elif isinstance(x, Select):
                if _dtype(x.cond) != "bool":
                    self.fail(f"select condition must be bool, got {_dtype(x.cond)}", *here)
                if _dtype(x.t) != _dtype(x.f):
                    self.fail(f"select branches differ in dtype: {_dtype(x.t)} vs {_dtype(x.f)}", *here)
            elif isinstance(x, Cast):
                if x.dtype not in DTYPES_ALL:
                    self.fail(f"cast to unknown dtype {x.dtype}", *here)
            elif isinstance(x, Call):
                if x.name not in INTRINSICS:
                    self.fail(f"unknown intrinsic {x.name} (known: {', '.join(INTRINSICS)})", *here)
                if x.dtype not in DTYPES_ALL:
                    self.fail(f"unknown dtype {x.dtype}", *here)
                if x.name == "check_range" and (len(x.args) != 3 or not all(is_int(_dtype(a)) for a in x.args)):
                    self.fail("check_range takes 3 integer arguments (value, lo, hi)", *here)
            elif isinstance(x, Load):
                self.access(x.buffer, x.indices, here)
            else:
                self.fail(f"unknown expression {type(x).__name__}", *here)
            stack.extend(children(x))

    def _bin(self, x: Bin, here: tuple[Loc, ...]) -> None:
        if x.op not in BIN_OPS:
            self.fail(f"unknown binary op {x.op}", *here)
        da, db = _dtype(x.a), _dtype(x.b)
        if da != db:
            self.fail(f"operands of {x.op} differ in dtype: {da} vs {db} (insert a cast)", *here)
        if x.op in _LOGIC and da != "bool":
            self.fail(f"{x.op} needs bool operands, got {da}", *here)
        if x.op in ("floordiv", "floormod") and not is_int(da):
            self.fail(f"{x.op} needs integer operands, got {da}", *here)

    def access(self, buf: Buffer, indices: tuple[Expr, ...], here: tuple[Loc, ...]) -> None:
        declared = self.buffers.get(buf.name)
        if declared is None:
            self.fail(f"buffer %{buf.name} is not in scope", *here)
        if declared != buf:
            self.fail(f"buffer %{buf.name} does not match its declaration", *here)
        if len(indices) != len(buf.shape):
            self.fail(f"%{buf.name} has {len(buf.shape)} dims, indexed with {len(indices)}", *here)
        for k, (i, d) in enumerate(zip(indices, buf.shape)):
            if not is_int(_dtype(i)):
                self.fail(f"index {k} of %{buf.name} must be an integer, got {_dtype(i)}", *here)
            ci, cd = as_int(i), as_int(d)
            if ci is not None and (ci < 0 or (cd is not None and ci >= cd)):
                self.fail(f"index {k} of %{buf.name} is {ci}, out of bounds [0, {cd if cd is not None else d})", *here)

    def stmt(self, s: Stmt, parent: Loc) -> None:
        """Dispatch on the statement kind (`stmt_<Kind>`), with its location and the enclosing one."""
        loc = getattr(s, "loc", UNKNOWN)
        locs = (loc, parent)
        getattr(self, f"stmt_{type(s).__name__}", self.stmt_unknown)(s, loc, locs, parent)

    def stmt_Store(self, s: Store, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.access(s.buffer, s.indices, locs)
        for i in s.indices:
            self.expr(i, locs)
        self.expr(s.value, locs)
        if _dtype(s.value) != s.buffer.dtype:
            self.fail(f"storing {_dtype(s.value)} into %{s.buffer.name} of dtype {s.buffer.dtype}", *locs)

    def stmt_Seq(self, s: Seq, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        for x in s.stmts:
            self.stmt(x, loc if loc.line else parent)

    def stmt_For(self, s: For, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.int_expr(s.start, locs, "loop start")
        self.int_expr(s.extent, locs, "loop extent")
        if s.kind not in FOR_KINDS:
            self.fail(f"unknown loop kind {s.kind} (known: {', '.join(FOR_KINDS)})", *locs)
        if (s.kind == "thread") != bool(s.thread_tag):
            self.fail("thread loops, and only they, carry a thread tag", *locs)
        if not is_int(s.var.dtype):
            self.fail(f"loop variable {s.var.name} must be an integer", *locs)
        with self.bind(s.var, loc):
            self.loop_vars.append(s.var)
            self.stmt(s.body, loc if loc.line else parent)
            self.loop_vars.pop()

    def stmt_BlockStmt(self, s: BlockStmt, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.block(s, locs)

    def stmt_IfStmt(self, s: IfStmt, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.expr(s.cond, locs)
        if _dtype(s.cond) != "bool":
            self.fail(f"if condition must be bool, got {_dtype(s.cond)}", *locs)
        self.stmt(s.then, loc if loc.line else parent)
        if s.orelse is not None:
            self.stmt(s.orelse, loc if loc.line else parent)

    def stmt_Let(self, s: Let, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.expr(s.value, locs)
        if _dtype(s.value) != s.var.dtype:
            self.fail(f"let {s.var.name}: {s.var.dtype} bound to a {_dtype(s.value)} value", *locs)
        with self.bind(s.var, loc):
            self.stmt(s.body, loc if loc.line else parent)

    def stmt_Allocate(self, s: Allocate, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        views = tuple(self.views_of.get(s.buffer.name, ()))
        self.scoped_buffers((s.buffer, *views), s.body, loc if loc.line else parent, locs)

    def stmt_AttrStmt(self, s: AttrStmt, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        if s.key not in ATTR_KEYS:
            self.fail(f"unknown attribute key {s.key!r} (known: {', '.join(ATTR_KEYS)})", *locs)
        self.stmt(s.body, loc if loc.line else parent)

    def stmt_ThreadAllReduce(self, s: ThreadAllReduce, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.allreduce(s, locs)

    def stmt_GemmCall(self, s: GemmCall, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.gemm(s, locs)

    def stmt_unknown(self, s: Stmt, loc: Loc, locs: tuple[Loc, ...], parent: Loc) -> None:
        self.fail(f"unknown statement {type(s).__name__}", *locs)
    def scoped_buffers(self, bufs: tuple[Buffer, ...], body: Stmt, inner: Loc, locs: tuple[Loc, ...]) -> None:
        saved = dict(self.buffers)
        try:
            for b in bufs:
                self.declare_buffer(b, locs[0])
            self.stmt(body, inner)
        finally:
            self.buffers = saved

    def allreduce(self, s: ThreadAllReduce, locs: tuple[Loc, ...]) -> None:
        if s.op not in REDUCE_OPS:
            self.fail(f"allreduce: unknown reduction op {s.op} (known: {', '.join(REDUCE_OPS)})", *locs)
        if s.acc.scope != "local" or len(s.acc.shape) != 1 or as_int(s.acc.shape[0]) != 1:
            self.fail(f"allreduce: accumulator %{s.acc.name} must be a local buffer of 1 element", *locs)
        if s.loop.kind != "thread" or s.loop.thread_tag != "threadIdx.x":
            self.fail("allreduce: its loop must be bound to threadIdx.x", *locs)
        inner = locs[0] if locs[0].line else locs[1]
        self.scoped_buffers((s.acc,), Seq((s.loop, s.result)), inner, locs)

    def gemm(self, s: GemmCall, locs: tuple[Loc, ...]) -> None:
        for b in (s.a, s.b, s.c):
            declared = self.buffers.get(b.name)
            if declared is None or declared != b:
                self.fail(f"gemm: buffer %{b.name} is not in scope", *locs)
        if len({s.a.name, s.b.name, s.c.name}) != 3:
            self.fail("gemm: A, B and C must be three different buffers", *locs)
        if s.a.dtype != s.b.dtype or s.a.dtype not in ("f16", "bf16", "f32") or s.c.dtype not in ("f16", "bf16", "f32"):
            self.fail(f"gemm: operands must be f16/bf16/f32 of one dtype, got {s.a.dtype}, {s.b.dtype} -> {s.c.dtype}", *locs)
        if min(len(s.a.shape), len(s.b.shape), len(s.c.shape)) < 2:
            self.fail("gemm: A, B and C need at least 2 dims", *locs)

    def block(self, s: BlockStmt, locs: tuple[Loc, ...]) -> None:
        loop_names = {v.name for v in self.loop_vars}
        for it in s.iters:
            here = (it.loc,) + locs
            if it.kind not in ("S", "R"):
                self.fail(f"block \"{s.name}\": iterator kind must be S or R, not {it.kind}", *here)
            self.int_expr(it.extent, here, "iterator extent")
            self.int_expr(it.binding, here, "iterator binding")
            for x in free_vars(it.binding):
                if x.name not in loop_names and x not in self.f.scalar_params and not self._is_param_dim(x):
                    self.fail(
                        f"block \"{s.name}\": iterator {it.var.name} is bound to {x.name}, "
                        "which is not an enclosing loop variable", *here,
                    )
            b, e = as_int(it.binding), as_int(it.extent)
            if b is not None and e is not None and not 0 <= b < e:
                self.fail(f"block \"{s.name}\": iterator {it.var.name} bound to {b}, outside [0, {e})", *here)
        if s.init is not None and not any(it.kind == "R" for it in s.iters):
            self.fail(f"block \"{s.name}\" has an init but no reduce (R) iterator", *locs)
        saved_buffers = dict(self.buffers)
        bound: list[Var] = []
        try:
            for it in s.iters:
                if it.var.name in self.vars:
                    self.fail(f"block \"{s.name}\": {it.var.name} is already bound in an enclosing scope", it.loc, *locs)
                self.vars[it.var.name] = it.var
                bound.append(it.var)
            for b in s.alloc_buffers:
                self.declare_buffer(b, locs[0])
            inner = locs[0] if locs[0].line else locs[1]
            if s.init is not None:
                self.stmt(s.init, inner)
            self.loop_vars.extend(bound)  # nested blocks may bind to this block's iterators
            self.stmt(s.body, inner)
            del self.loop_vars[len(self.loop_vars) - len(bound):]
        finally:
            for v in bound:
                self.vars.pop(v.name, None)
            self.buffers = saved_buffers

    def _is_param_dim(self, x: Var) -> bool:
        return any(x in free_vars(d) for b in self.f.params for d in b.shape)


def _read_lines(file: str) -> list[str] | None:
    """The source of a location when no text was given: the file it names, if it is one."""
    try:
        p = Path(file)
        if p.is_file() and p.stat().st_size < 256 << 20:
            return p.read_text(encoding="utf-8", errors="replace").split("\n")
    except (OSError, ValueError):
        pass
    return None


def verify_module(m: Module, source: str | None = None) -> None:
    """Raise MlcError at the first ill-formed node; `source` (the text) adds the offending line."""
    Verifier(m, source).module()


def verify_function(m: Module, name: str, source: str | None = None) -> None:
    """Verify one function of `m` (calls are checked against the whole module)."""
    v = Verifier(m, source)
    for f in m.functions:
        v.funcs.setdefault(f.name, f)
    f = m.get(name)
    if isinstance(f, Function):
        GraphVerifier(v, f).run()
    else:
        PrimVerifier(v, f).run()
