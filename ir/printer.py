"""The printer: any module (well-formed or not) to deterministic text that `parser` reads back.

Ill-formed IR (undefined names, type clashes, unknown node classes) still prints, so the output of a
failing stage can always be read; only well-formed IR is guaranteed to parse back to an equal module.
The grammar is in docs/ir.md.
"""

from __future__ import annotations

import math
from itertools import zip_longest
from typing import Any

from .dtype import DTYPES_ALL
from .expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var
from .graph import (
    Attrs,
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
    Node,
    OpCall,
    Scalar,
    Value,
)
from .lexer import escape_string, is_plain_ident, is_plain_pct
from .module import IR_VERSION, Module
from .sparse import Axis, SparseBuffer, SparseIteration
from .tir import (
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
from .tir_visit import StmtVisitor
from .types import ScalarType, TensorType, TupleType, Type, UnknownType

INFIX: dict[str, tuple[str, int]] = {
    "or": ("||", 1), "and": ("&&", 2),
    "eq": ("==", 3), "ne": ("!=", 3), "lt": ("<", 3), "le": ("<=", 3), "gt": (">", 3), "ge": (">=", 3),
    "add": ("+", 4), "sub": ("-", 4), "mul": ("*", 5), "div": ("/", 5),
}
FUNC_FORM: tuple[str, ...] = ("min", "max", "pow", "floordiv", "floormod")
PRIMARY = 6
DIM_PREC = 4  # dims inside tensor<...> parenthesize comparisons: '>' closes the type
# Words a bare scalar name must not be spelled as (they mean something else where names appear).
KEYWORDS: frozenset[str] = frozenset(
    ("x", "true", "false", "inf", "nan", "none", "in", "expr", "select", "cast", "call", "S", "R")
    + FUNC_FORM + DTYPES_ALL
)
INDENT = "  "
# Words that start a non-op binding node; an op named like one prints quoted.
NODE_WORDS = frozenset(("call_tensor", "call_extern", "call", "const", "scalar", "tuple", "match_cast", "if", "for"))


def _name(prefix: str, name: str) -> str:
    name = str(name)  # ill-formed IR may hold a non-string; it still prints
    return prefix + (name if is_plain_pct(name) else escape_string(name))


def value_ref(v: Value) -> str:
    return _name("%", v.name)


def func_ref(name: str) -> str:
    return _name("@", name)


def sym_name(name: str) -> str:
    name = str(name)
    return name if is_plain_ident(name) and name not in KEYWORDS else "$" + escape_string(name)


def word(s: str) -> str:
    """An identifier-like word (dtype, kind, attr key), quoted when it is not a plain identifier."""
    s = str(s)
    return s if is_plain_ident(s) else escape_string(s)


def literal_dtype(v: object) -> str:
    """The dtype a literal has without a suffix: 1 is i64, 1.5 is f32, true is bool."""
    if isinstance(v, bool):
        return "bool"
    return "i64" if isinstance(v, int) else "f32"


def number(v: object) -> str:
    """Python scalar literal: ints in full, floats by shortest round-tripping repr, inf/nan as words."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return f"<?{type(v).__name__}>"  # no repr: it may hold an address, and output must be deterministic


def _py_scalar(v: Any) -> Any:
    """numpy scalars print like the Python scalars they equal."""
    item = getattr(v, "item", None)
    if item is not None and type(v).__module__ == "numpy":
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


class _ExprPrinter:
    """Prints expressions; `bound` maps scalar names in scope to their Var so uses print short."""

    def __init__(self) -> None:
        self.bound: dict[str, Var] = {}

    def var(self, v: Var) -> str:
        s = sym_name(v.name)
        want = self.bound.get(v.name, Var(v.name))
        return s if want == v else f"{s}:{word(v.dtype)}"

    def expr(self, e: Expr, ctx: int = 0) -> str:
        s, prec = self._expr(e)
        return f"({s})" if prec < ctx else s

    def _expr(self, e: Expr) -> tuple[str, int]:
        if isinstance(e, Var):
            return self.var(e), PRIMARY
        if isinstance(e, Const):
            val = _py_scalar(e.value)
            s = number(val)
            if e.dtype != literal_dtype(val):
                s += ":" + word(e.dtype)
            return s, PRIMARY
        if isinstance(e, Bin):
            if e.op in INFIX:
                sym, p = INFIX[e.op]
                return f"{self.expr(e.a, p)} {sym} {self.expr(e.b, p + 1)}", p
            head = e.op if e.op in FUNC_FORM else "binop " + escape_string(e.op)
            return f"{head}({self.expr(e.a)}, {self.expr(e.b)})", PRIMARY
        if isinstance(e, Not):
            return "!" + self.expr(e.a, PRIMARY), PRIMARY
        if isinstance(e, Select):
            return f"select({self.expr(e.cond)}, {self.expr(e.t)}, {self.expr(e.f)})", PRIMARY
        if isinstance(e, Cast):
            return f"cast<{word(e.dtype)}>({self.expr(e.a)})", PRIMARY
        if isinstance(e, Call):
            head = e.name if is_plain_ident(e.name) and e.name not in KEYWORDS else "call " + escape_string(e.name)
            s = f"{head}({', '.join(self.expr(a) for a in e.args)})"
            if not e.args or _dtype_of(e.args[0]) != e.dtype:
                s += ":" + word(e.dtype)
            return s, PRIMARY
        if isinstance(e, Load):
            return f"{_name('%', e.buffer.name)}[{', '.join(self.expr(i) for i in e.indices)}]", PRIMARY
        return f"<?{type(e).__name__}>", PRIMARY


def _dtype_of(e: Expr) -> str | None:
    try:
        return e.dtype  # type: ignore[attr-defined]
    except AttributeError:
        return None


class Printer(_ExprPrinter, StmtVisitor):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.depth = 0

    def emit(self, s: str) -> None:
        self.lines.append(INDENT * self.depth + s)

    # ---- types and attributes
    def type(self, t: Type) -> str:
        if isinstance(t, TensorType):
            dims = "?" if t.shape is None else " x ".join(self.expr(d, DIM_PREC) for d in t.shape)
            return f"tensor<{dims + ' x ' if dims else ''}{word(t.dtype)}>"
        if isinstance(t, TupleType):
            return f"tuple<{', '.join(self.type(f) for f in t.fields)}>"
        if isinstance(t, ScalarType):
            return word(t.dtype)
        if isinstance(t, UnknownType):
            return "?"
        return f"<?{type(t).__name__}>"

    def buffer_type(self, b: Buffer) -> str:
        dims = " x ".join(self.expr(d, DIM_PREC) for d in b.shape)
        scope = "" if b.scope == "global" else f", {word(b.scope)}"
        return f"buffer<{dims + ' x ' if dims else ''}{word(b.dtype)}{scope}>"

    def attr_value(self, v: Any) -> str:
        v = _py_scalar(v)
        if v is None:
            return "none"
        if isinstance(v, str):
            return escape_string(v)
        if isinstance(v, bool | int | float):
            return number(v)
        if isinstance(v, tuple | list):
            inner = ", ".join(self.attr_value(x) for x in v)
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        if isinstance(v, Expr):
            s = self.expr(v)
            return f"expr({s})" if isinstance(v, Const) or s.startswith(("(", "-", "!")) else s
        return f"<?{type(v).__name__}>"

    def attrs(self, attrs: Attrs) -> str:
        try:
            items = [f"{word(str(k))} = {self.attr_value(v)}" for k, v in attrs]
        except (TypeError, ValueError):
            return "{<?malformed attrs>}"
        return "{" + ", ".join(items) + "}"

    # ---- graph level
    def node(self, n: Node) -> str:
        args = lambda vs: ", ".join(value_ref(v) for v in vs)  # noqa: E731
        if isinstance(n, OpCall):
            head = n.op if is_plain_ident(n.op) and n.op not in NODE_WORDS else escape_string(n.op)
            return f"{head}({args(n.args)})" + (f" {self.attrs(n.attrs)}" if n.attrs else "")
        if isinstance(n, CallTensor):
            s = f"call_tensor {func_ref(n.func)}({args(n.args)})"
            return s + (f" [{', '.join(self.expr(e) for e in n.sym_args)}]" if n.sym_args else "")
        if isinstance(n, CallExtern):
            s = f"call_extern {escape_string(n.name)}({args(n.args)})"
            return s + (f" {self.attrs(n.attrs)}" if n.attrs else "")
        if isinstance(n, CallGraph):
            return f"call {func_ref(n.func)}({args(n.args)})"
        if isinstance(n, Constant):
            return f"const {escape_string(n.key)}"
        if isinstance(n, Scalar):
            return f"scalar {self.expr(n.value)}"
        if isinstance(n, MakeTuple):
            return f"tuple({args(n.fields)})"
        if isinstance(n, GetItem):
            return f"{value_ref(n.tuple_value)}[{n.index}]"
        if isinstance(n, MatchCast):
            return f"match_cast {value_ref(n.value)}"
        return f"<?{type(n).__name__}>"

    def binding(self, b: Binding) -> None:
        head = f"{value_ref(b.var)}: {self.type(b.var.type)} = "
        n = b.node
        if isinstance(n, If):
            self.emit(f"{head}if {value_ref(n.cond)} {{")
            self.block(n.then_block, "yield")
            self.emit("} else {")
            self.block(n.else_block, "yield")
            self.emit("}")
        elif isinstance(n, Loop):
            carry = ", ".join(  # an arity mismatch (ill-formed) shows as '?'
                (f"{value_ref(c)}: {self.type(c.type)}" if c is not None else "?")
                + (f" = {value_ref(i)}" if i is not None else " = ?")
                for c, i in zip_longest(n.carried, n.inits)
            )
            idx = f"{value_ref(n.index)}: {self.type(n.index.type)}"
            self.emit(f"{head}for {idx} in 0..{self.expr(n.extent)}" + (f" carry({carry})" if carry else "") + " {")
            self.block(n.body, "yield")
            self.emit("}")
        else:
            self.emit(head + self.node(n))

    def block(self, blk: Block, word_: str) -> None:
        self.depth += 1
        for b in blk.bindings:
            self.binding(b)
        res = ", ".join(value_ref(v) for v in blk.results)
        self.emit(f"{word_} {res}" if res else word_)
        self.depth -= 1

    def function(self, f: Function) -> None:
        self.bound = {}
        params = ", ".join(f"{value_ref(p)}: {self.type(p.type)}" for p in f.params)
        attrs = f" attrs {self.attrs(f.attrs)}" if f.attrs else ""
        self.emit(f"graph {func_ref(f.name)}({params}){attrs} {{")
        self.block(f.body, "return")
        self.emit("}")

    # ---- tensor programs
    def bind_var(self, v: Var) -> tuple[str, Var | None]:
        """Spelling of a binding occurrence; returns the shadowed entry to restore later."""
        old = self.bound.get(v.name)
        self.bound[v.name] = v
        return sym_name(v.name) + ("" if v.dtype == "i64" else f": {word(v.dtype)}"), old

    def unbind(self, v: Var, old: Var | None) -> None:
        if old is None:
            self.bound.pop(v.name, None)
        else:
            self.bound[v.name] = old

    def body(self, s: Stmt) -> None:
        """Statements inside braces: a Seq of != 1 statements prints flat (see docs/ir.md)."""
        self.depth += 1
        if isinstance(s, Seq) and len(s.stmts) != 1:
            for x in s.stmts:
                self.stmt(x)
        else:
            self.stmt(s)
        self.depth -= 1

    def stmt(self, s: Stmt) -> None:
        self.visit(s)

    def visit_Store(self, s: Store) -> None:
        idx = ", ".join(self.expr(i) for i in s.indices)
        self.emit(f"{_name('%', s.buffer.name)}[{idx}] = {self.expr(s.value)}")

    def visit_Seq(self, s: Seq) -> None:
        self.emit("seq {")
        self.depth += 1
        for x in s.stmts:
            self.stmt(x)
        self.depth -= 1
        self.emit("}")

    def visit_For(self, s: For) -> None:
        start, ext = self.expr(s.start), self.expr(s.extent)
        rng = f"0..{ext}" if s.start == Const(0) else f"{start}..+{ext}"
        extra = ""
        if s.kind != "serial" or s.thread_tag:
            extra += " " + (word(s.kind) if s.kind != "annotations" else escape_string(s.kind))
        if s.thread_tag:
            extra += " " + escape_string(s.thread_tag)
        if s.annotations:
            extra += f" annotations {self.attrs(s.annotations)}"
        name, old = self.bind_var(s.var)
        self.emit(f"for {name} in {rng}{extra} {{")
        self.body(s.body)
        self.emit("}")
        self.unbind(s.var, old)

    def visit_BlockStmt(self, s: BlockStmt) -> None:
        self.block_stmt(s)

    def visit_IfStmt(self, s: IfStmt) -> None:
        self.emit(f"if {self.expr(s.cond)} {{")
        self.body(s.then)
        if s.orelse is not None:
            self.emit("} else {")
            self.body(s.orelse)
        self.emit("}")

    def visit_Let(self, s: Let) -> None:
        val = self.expr(s.value)
        name, old = self.bind_var(s.var)
        self.emit(f"let {name} = {val} {{")
        self.body(s.body)
        self.emit("}")
        self.unbind(s.var, old)

    def visit_Allocate(self, s: Allocate) -> None:
        self.emit(f"allocate {_name('%', s.buffer.name)}: {self.buffer_type(s.buffer)} {{")
        self.body(s.body)
        self.emit("}")

    def visit_AttrStmt(self, s: AttrStmt) -> None:
        self.emit(f"attr {escape_string(s.key)} {{")
        self.body(s.body)
        self.emit("}")

    def visit_ThreadAllReduce(self, s: ThreadAllReduce) -> None:
        self.emit(f"allreduce {word(s.op)} {_name('%', s.acc.name)}: {self.buffer_type(s.acc)} {{")
        self.body(s.loop)
        self.emit("} then {")
        self.body(s.result)
        self.emit("}")

    def visit_GemmCall(self, s: GemmCall) -> None:
        flags = (" accumulate" if s.accumulate else "") + (" batched" if s.batched else "")
        if s.tile is not None:
            flags += f" tile({', '.join(str(x) for x in s.tile.as_tuple())})"
        self.emit(f"gemm {_name('%', s.c.name)} = {_name('%', s.a.name)} * {_name('%', s.b.name)}{flags}")

    def generic_visit(self, s: Stmt) -> None:
        self.emit(f"<?{type(s).__name__}>")
    def block_stmt(self, s: BlockStmt) -> None:
        iters, saved = [], []
        for it in s.iters:
            binding, ext = self.expr(it.binding), self.expr(it.extent)
            name, old = self.bind_var(it.var)
            saved.append((it.var, old))
            iters.append(f"{word(it.kind)} {name} = {binding} in 0..{ext}")
        ann = f" annotations {self.attrs(s.annotations)}" if s.annotations else ""
        self.emit(f"block {escape_string(s.name)}({', '.join(iters)}){ann} {{")
        self.depth += 1
        for b in s.alloc_buffers:
            self.emit(f"alloc {_name('%', b.name)}: {self.buffer_type(b)}")
        if s.init is not None:
            self.emit("init {")
            self.body(s.init)
            self.emit("}")
        self.depth -= 1
        self.body(s.body)
        self.emit("}")
        for v, old in reversed(saved):
            self.unbind(v, old)

    def visit_SparseIteration(self, s: SparseIteration) -> None:
        iters, saved = [], []
        for it in s.iters:
            name, old = self.bind_var(it.var)
            saved.append((it.var, old))
            iters.append(f"{word(it.kind)} {name} in {sym_name(it.axis)}")
        self.emit(f"sp_iter {escape_string(s.name)}({', '.join(iters)}) {{")
        if s.init is not None:
            self.depth += 1
            self.emit("init {")
            self.body(s.init)
            self.emit("}")
            self.depth -= 1
        self.body(s.body)
        self.emit("}")
        for v, old in reversed(saved):
            self.unbind(v, old)

    def axis_decl(self, a: Axis) -> str:
        args = [] if not a.parent and a.kind == "dense_fixed" else [sym_name(a.parent)]
        args.append(self.expr(a.length))
        if a.kind != "dense_fixed":
            args.append(self.expr(a.nnz) if a.nnz is not None else "?")
        args += [_name("%", b.name) for b in (a.indptr, a.indices) if b is not None]
        return f"axis {sym_name(a.name)} = {word(a.kind)}({', '.join(args)})"

    def sparse_decl(self, sb: SparseBuffer) -> str:
        axes = ", ".join(sym_name(x) for x in sb.axes)
        return f"sparse {_name('%', sb.buffer.name)}: ({axes}) = {_name('%', sb.data.name)}"

    def prim_func(self, f: PrimFunc) -> None:
        self.bound = {}
        params = [f"{_name('%', b.name)}: {self.buffer_type(b)}" for b in f.params]
        for v in f.scalar_params:
            params.append(f"{sym_name(v.name)}: {word(v.dtype)}")
            self.bound[v.name] = v
        attrs = f" attrs {self.attrs(f.attrs)}" if f.attrs else ""
        self.emit(f"prim {func_ref(f.name)}({', '.join(params)}) outputs {f.num_outputs}{attrs} {{")
        self.depth += 1
        for a in f.axes:
            self.emit(self.axis_decl(a))
        for sb in f.sparse_buffers:
            self.emit(self.sparse_decl(sb))
        for v in f.views:
            self.emit(f"view {_name('%', v.buffer.name)}: {self.buffer_type(v.buffer)} = {_name('%', v.source.name)}")
        self.depth -= 1
        self.body(f.body)
        self.emit("}")

    def module(self, m: Module) -> None:
        self.emit(f"mlc.module v{IR_VERSION}")
        if m.meta:
            self.emit(f"meta {self.attrs(m.meta)}")
        if m.constants is not None:
            self.emit(f"constants {escape_string(m.constants.path)} sha256 {escape_string(m.constants.sha256)}")
        for f in m.functions:
            self.emit("")
            if isinstance(f, PrimFunc):
                self.prim_func(f)
            elif isinstance(f, Function):
                self.function(f)
            else:
                self.emit(f"<?{type(f).__name__}>")



def print_module(m: Module) -> str:
    p = Printer()
    p.module(m)
    return "\n".join(p.lines) + "\n"


def print_function(f: Function | PrimFunc) -> str:
    p = Printer()
    if isinstance(f, PrimFunc):
        p.prim_func(f)
    else:
        p.function(f)
    return "\n".join(p.lines) + "\n"


def print_expr(e: Expr) -> str:
    return _ExprPrinter().expr(e)


def print_type(t: Type) -> str:
    return Printer().type(t)
