"""The parser: IR text to a `Module`, every node located, every failure a located `MlcError`.

Names resolve while parsing: `%x` becomes the defining `Value` (or `Buffer` inside a tensor
program), bare scalar names become the `Var` bound by the enclosing loop/block/let/param, or one
interned `Var` per name for the whole module (so a symbolic dim `n` is the same object in graph
types and tensor programs). Nesting is bounded so no input can exhaust the Python stack.
The grammar is in docs/ir.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn, TypeVar

from .diagnostics import Loc, MlcError
from .dtype import DTYPES_ALL
from .expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var
from .graph import (
    Attrs,
    AttrValue,
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
from .lexer import Token, tokenize
from .module import IR_VERSION, ConstantsRef, Module
from .printer import DIM_PREC, FUNC_FORM, INFIX, NODE_WORDS, literal_dtype
from .sparse import AXIS_KINDS, Axis, SparseBuffer, SparseIteration, SparseIterVar, sparse_view
from .tir import (
    ATTR_KEYS,
    REDUCE_OPS,
    Allocate,
    AttrStmt,
    BlockStmt,
    Buffer,
    BufferView,
    For,
    GemmCall,
    GemmTile,
    IfStmt,
    IterVar,
    Let,
    PrimFunc,
    Seq,
    Stmt,
    Store,
    ThreadAllReduce,
)
from .tir_visit import nodes
from .types import ScalarType, TensorType, TupleType, Type, UnknownType

MAX_NESTING = 100  # brackets, blocks and types inside one another
MAX_EXPR_DEPTH = 128  # depth of one expression tree (long operator chains nest too)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_BINARY: dict[str, tuple[str, int]] = {sym: (op, p) for op, (sym, p) in INFIX.items()}
_LITERAL_WORDS = ("true", "false", "inf", "nan")
_ATTR_END = (",", ")", "}")
T = TypeVar("T")


class Parser:
    def __init__(self, text: str, filename: str):
        self.file = filename
        self.toks, self.lines = tokenize(text, filename)
        self.i = 0
        self.nesting = 0
        self.free: dict[tuple[str, str], Var] = {}  # interned symbols, module-wide
        self.syms: dict[str, Var] = {}  # scalar names bound in scope
        self.scopes: list[dict[str, Value]] = []  # graph values in scope
        self.defined: set[str] = set()  # every value name of the current function (SSA)
        self.buffers: dict[str, Buffer] = {}
        self.axes: dict[str, Axis] = {}  # sparse axes of the current tensor program

    # ---- token helpers
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def loc(self, t: Token | None = None) -> Loc:
        t = t or self.tok
        return Loc(self.file, t.line, t.col)

    def error(self, msg: str, t: Token | None = None) -> NoReturn:
        t = t or self.tok
        raise MlcError(msg, self.loc(t), self.lines[t.line - 1] if 0 < t.line <= len(self.lines) else None)

    def describe(self, t: Token) -> str:
        if t.kind == "eof":
            return "end of input"
        if t.kind == "pct":
            return f"'%{t.text}'"
        if t.kind == "at":
            return f"'@{t.text}'"
        if t.kind == "string":
            return "a string"
        return f"'{t.text}'"

    def at(self, text: str) -> bool:
        t = self.tok
        return t.kind in ("punct", "ident") and t.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str = "") -> Token:
        if not self.at(text):
            self.error(f"expected '{text}'{what}, found {self.describe(self.tok)}")
        self.i += 1
        return self.toks[self.i - 1]

    def take(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            self.error(f"expected {what}, found {self.describe(self.tok)}")
        self.i += 1
        return self.toks[self.i - 1]

    @contextmanager
    def nest(self) -> Iterator[None]:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            self.error(f"nesting deeper than {MAX_NESTING} levels")
        try:
            yield
        finally:
            self.nesting -= 1

    def comma_list(self, close: str, item: Callable[[], T]) -> list[T]:
        """Items separated by commas up to `close` (consumed)."""
        out: list[T] = []
        if self.accept(close):
            return out
        while True:
            out.append(item())
            if self.accept(close):
                return out
            if not self.at(","):
                self.error(f"expected ',' or '{close}', found {self.describe(self.tok)}")
            self.i += 1

    # ---- literals, names, dtypes
    def int_lit(self, neg: bool = False) -> int:
        t = self.take("int", "an integer")
        if len(t.text.lstrip("0")) > 19:  # before int(): Python refuses to convert huge digit strings
            self.error("integer literal out of the i64 range", t)
        v = -int(t.text) if neg else int(t.text)
        if not INT64_MIN <= v <= INT64_MAX:
            self.error("integer literal out of the i64 range", t)
        return v

    def float_lit(self, neg: bool = False) -> float:
        t = self.take("float", "a float")
        v = float(t.text)
        if math.isinf(v):
            self.error("float literal out of range (write inf)", t)
        return -v if neg else v

    def word(self, what: str) -> str:
        t = self.tok
        if t.kind in ("ident", "string"):
            self.i += 1
            return t.text
        self.error(f"expected {what}, found {self.describe(t)}")

    def dtype(self) -> str:
        t = self.tok
        name = self.word("a dtype")
        if name not in DTYPES_ALL:
            self.error(f"unknown dtype '{name}' (known: {', '.join(DTYPES_ALL)})", t)
        return name

    def sym_token(self) -> Token:
        if self.tok.kind not in ("ident", "qident"):
            self.error(f"expected a scalar name, found {self.describe(self.tok)}")
        self.i += 1
        return self.toks[self.i - 1]

    def intern(self, name: str, dtype: str, t: Token) -> Var:
        v = self.free.get((name, dtype))
        if v is None:
            v = self.free[(name, dtype)] = Var(name, dtype, self.loc(t))
        return v

    def bind_sym(self) -> tuple[Var, Var | None]:
        """`name [: dtype]` at a binding site; returns the var and what it shadows."""
        t = self.sym_token()
        dt = self.dtype() if self.accept(":") else "i64"
        v = Var(t.text, dt, self.loc(t))
        old = self.syms.get(t.text)
        self.syms[t.text] = v
        return v, old

    def unbind_sym(self, v: Var, old: Var | None) -> None:
        if old is None:
            self.syms.pop(v.name, None)
        else:
            self.syms[v.name] = old

    # ---- expressions
    def expr(self) -> Expr:
        return self._expr(0)[0]

    def _expr(self, min_prec: int) -> tuple[Expr, int]:
        left, depth = self.primary()
        while True:
            t = self.tok
            if t.kind != "punct" or t.text not in _BINARY:
                return left, depth
            op, prec = _BINARY[t.text]
            if prec < min_prec:
                return left, depth
            self.i += 1
            right, rd = self._expr(prec + 1)
            depth = max(depth, rd) + 1
            if depth > MAX_EXPR_DEPTH:
                self.error(f"expression nested deeper than {MAX_EXPR_DEPTH} levels", t)
            left = Bin(op, left, right, self.loc(t))

    def _args(self) -> tuple[list[Expr], int]:
        self.expect("(")
        depths: list[int] = []

        def one() -> Expr:
            e, d = self._expr(0)
            depths.append(d)
            return e

        args = self.comma_list(")", one)
        return args, max(depths, default=0) + 1

    def _suffix(self, default: str) -> str:
        return self.dtype() if self.accept(":") else default

    def primary(self) -> tuple[Expr, int]:
        self.nesting += 1  # inline `nest()`: this is the hottest path
        try:
            if self.nesting > MAX_NESTING:
                self.error(f"nesting deeper than {MAX_NESTING} levels")
            return self._primary()
        finally:
            self.nesting -= 1

    def _primary(self) -> tuple[Expr, int]:
        t = self.tok
        loc = self.loc(t)
        if t.kind in ("int", "float") or (t.kind == "ident" and t.text in _LITERAL_WORDS) or self.at("-"):
            val = self.literal()
            return Const(val, self._suffix(literal_dtype(val)), loc), 1
        if self.accept("("):
            e, d = self._expr(0)
            self.expect(")")
            return e, d
        if self.accept("!"):
            e, d = self.primary()
            return Not(e, loc), d + 1
        if t.kind == "pct":
            self.i += 1
            buf = self.buffers.get(t.text)
            if buf is None:
                self.error(f"undefined buffer %{t.text}", t)
            self.expect("[")
            idx, d = self._index_list()
            return Load(buf, tuple(idx), loc), d
        if t.kind == "qident":
            self.i += 1
            return self._var(t), 1
        if t.kind != "ident":
            self.error(f"expected an expression, found {self.describe(t)}")
        self.i += 1
        name = t.text
        if name == "select" and self.at("("):
            args, d = self._args()
            if len(args) != 3:
                self.error("select takes 3 arguments (cond, then, else)", t)
            return Select(args[0], args[1], args[2], loc), d
        if name == "cast" and self.at("<"):
            self.i += 1
            dt = self.dtype()
            self.expect(">")
            args, d = self._args()
            if len(args) != 1:
                self.error("cast takes 1 argument", t)
            return Cast(dt, args[0], loc), d
        if name in FUNC_FORM and self.at("("):
            args, d = self._args()
            if len(args) != 2:
                self.error(f"{name} takes 2 arguments", t)
            return Bin(name, args[0], args[1], loc), d
        if name == "call" and self.tok.kind == "string":
            name = self.tok.text
            self.i += 1
        elif not self.at("("):
            return self._var(t), 1
        args, d = self._args()
        if args:
            dt = self._suffix(args[0].dtype)
        elif self.at(":"):
            dt = self._suffix("")
        else:
            self.error(f"call of {name} without arguments needs a result dtype: {name}():f32", t)
        return Call(name, tuple(args), dt, loc), d

    def _index_list(self) -> tuple[list[Expr], int]:
        depths: list[int] = []

        def one() -> Expr:
            e, d = self._expr(0)
            depths.append(d)
            return e

        idx = self.comma_list("]", one)
        return idx, max(depths, default=0) + 1

    def _var(self, t: Token) -> Var:
        if self.accept(":"):
            return self.intern(t.text, self.dtype(), t)
        bound = self.syms.get(t.text)
        return bound if bound is not None else self.intern(t.text, "i64", t)

    def literal(self) -> int | float | bool:
        neg = self.accept("-")
        t = self.tok
        if t.kind == "int":
            return self.int_lit(neg)
        if t.kind == "float":
            return self.float_lit(neg)
        if t.kind == "ident" and t.text == "inf":
            self.i += 1
            return -math.inf if neg else math.inf
        if not neg and t.kind == "ident" and t.text in _LITERAL_WORDS:
            self.i += 1
            return {"true": True, "false": False, "nan": math.nan}[t.text]
        self.error(f"expected a number after '-', found {self.describe(t)} (write 0 - x to negate)")

    # ---- attributes
    def attrs(self) -> Attrs:
        self.expect("{")
        seen: set[str] = set()

        def item() -> tuple[str, AttrValue]:
            t = self.tok
            key = self.word("an attribute name")
            if key in seen:
                self.error(f"duplicate attribute '{key}'", t)
            seen.add(key)
            self.expect("=")
            return key, self.attr_value()

        with self.nest():
            return tuple(self.comma_list("}", item))

    def attr_value(self) -> AttrValue:
        t = self.tok
        if t.kind == "string":
            self.i += 1
            return t.text
        if self.at("none"):
            self.i += 1
            return None
        if self.at("("):
            self.i += 1
            with self.nest():
                return self._attr_tuple()
        if self.at("expr") and self.peek().text == "(" and self.peek().kind == "punct":
            self.i += 1
            self.expect("(")
            e = self.expr()
            self.expect(")")
            return e
        is_lit = t.kind in ("int", "float") or (t.kind == "ident" and t.text in _LITERAL_WORDS)
        k = 1 + (self.at("-"))
        if self.at("-"):
            nt = self.peek()
            is_lit = nt.kind in ("int", "float") or (nt.kind == "ident" and nt.text == "inf")
        after = self.peek(k)
        if is_lit and after.kind == "punct" and after.text in _ATTR_END:
            return self.literal()
        return self.expr()

    def _attr_tuple(self) -> tuple[AttrValue, ...]:
        out: list[AttrValue] = []
        while not self.accept(")"):
            out.append(self.attr_value())
            if self.accept(","):
                continue
            if len(out) == 1:
                self.error("a one-element tuple needs a trailing comma: (x,)")
            self.expect(")")
            break
        return tuple(out)

    # ---- types
    def type(self) -> Type:
        with self.nest():
            t = self.tok
            if self.accept("?"):
                return UnknownType()
            if t.kind == "ident" and t.text in ("tensor", "tuple") and self.peek().text == "<":
                self.i += 2
                if t.text == "tuple":
                    return TupleType(tuple(self.comma_list(">", self.type)))
                if self.accept("?"):
                    self.expect("x", " after '?' in tensor<? x DTYPE>")
                    dt = self.dtype()
                    self.expect(">")
                    return TensorType(None, dt)
                dims, dt = self._dims()
                self.expect(">")
                return TensorType(dims, dt)
            if t.kind == "ident" and t.text in DTYPES_ALL:
                self.i += 1
                return ScalarType(t.text)
            self.error(f"expected a type, found {self.describe(t)}")

    def _dims(self) -> tuple[tuple[Expr, ...], str]:
        """`d0 x d1 x ... x dtype` (dims are expressions; the dtype is the last word)."""
        dims: list[Expr] = []
        while not (self.tok.kind == "ident" and self.tok.text in DTYPES_ALL):
            t = self.tok
            dims.append(self._expr(DIM_PREC)[0])  # '>' closes the type: comparisons need parens
            if isinstance(dims[-1], Var) and self.at(">") or self.at(","):
                self.error(f"unknown dtype '{t.text}' (known: {', '.join(DTYPES_ALL)})", t)
            self.expect("x", " between dims (write tensor<n x 4 x f32>)")
        return tuple(dims), self.dtype()

    def buffer_type(self, name: str, t: Token) -> Buffer:
        self.expect("buffer")
        self.expect("<")
        with self.nest():
            dims, dt = self._dims()
            scope = self.word("a buffer scope") if self.accept(",") else "global"
            self.expect(">")
        return Buffer(name, dims, dt, scope, self.loc(t))

    # ---- graph functions
    def lookup(self, t: Token) -> Value:
        for scope in reversed(self.scopes):
            v = scope.get(t.text)
            if v is not None:
                return v
        if t.text in self.defined:
            self.error(f"%{t.text} is not in scope here (it is defined inside an inner block)", t)
        self.error(f"undefined value %{t.text}", t)

    def value_use(self) -> Value:
        return self.lookup(self.take("pct", "a value (%name)"))

    def define(self, t: Token, ty: Type) -> Value:
        if t.text in self.defined:
            self.error(f"redefinition of %{t.text}", t)
        self.defined.add(t.text)
        v = Value(t.text, ty, self.loc(t))
        self.scopes[-1][t.text] = v
        return v

    def graph_function(self) -> Function:
        start = self.expect("graph")
        name = self.take("at", "a function name (@name)").text
        self.scopes, self.defined, self.syms = [{}], set(), {}
        self.expect("(")

        def param() -> Value:
            t = self.take("pct", "a parameter (%name: type)")
            self.expect(":")
            return self.define(t, self.type())

        params = tuple(self.comma_list(")", param))
        attrs = self.attrs() if self.accept("attrs") else ()
        body = self.block("return")
        return Function(name, params, body, attrs, self.loc(start))

    def block(self, end: str) -> Block:
        """`{ bindings END values }` in a new scope."""
        start = self.expect("{")
        with self.nest():
            self.scopes.append({})
            bindings: list[Binding] = []
            while self.tok.kind == "pct":
                bindings.append(self.binding())
            if not self.at(end):
                self.error(f"expected a binding (%name: type = ...) or '{end}', found {self.describe(self.tok)}")
            self.i += 1
            results: list[Value] = []
            while self.tok.kind == "pct":
                results.append(self.value_use())
                if not self.accept(","):
                    break
            self.expect("}")
            self.scopes.pop()
        return Block(tuple(bindings), tuple(results), self.loc(start))

    def binding(self) -> Binding:
        t = self.take("pct", "a value name")
        self.expect(":", f" and a type after %{t.text} (a binding reads %name: TYPE = NODE)")
        ty = self.type()
        self.expect("=")
        if t.text in self.defined:
            self.error(f"redefinition of %{t.text}", t)
        node = self.node()
        return Binding(self.define(t, ty), node, self.loc(t))

    def values(self) -> tuple[Value, ...]:
        self.expect("(")
        return tuple(self.comma_list(")", self.value_use))

    def node(self) -> Node:
        t = self.tok
        loc = self.loc(t)
        if t.kind == "pct":
            tup = self.value_use()
            self.expect("[")
            neg = self.accept("-")
            idx = self.int_lit(neg)
            self.expect("]")
            return GetItem(tup, idx, loc)
        if t.kind == "string" or (t.kind == "ident" and t.text not in NODE_WORDS):
            self.i += 1
            if not self.at("("):
                self.error(f"unknown node '{t.text}' (an op call needs arguments: {t.text}(%a, ...))", t)
            args = self.values()
            return OpCall(t.text, args, self.attrs() if self.at("{") else (), loc)
        word = self.word("an op call or node")
        if word == "tuple":
            return MakeTuple(self.values(), loc)
        if word == "call_tensor":
            func = self.take("at", "a function name (@name)").text
            args = self.values()
            sym: list[Expr] = []
            if self.accept("["):
                with self.nest():
                    sym = self.comma_list("]", self.expr)
            return CallTensor(func, args, tuple(sym), loc)
        if word == "call_extern":
            name = self.take("string", "an extern kernel name (a string)").text
            args = self.values()
            return CallExtern(name, args, self.attrs() if self.at("{") else (), loc)
        if word == "call":
            func = self.take("at", "a function name (@name)").text
            return CallGraph(func, self.values(), loc)
        if word == "const":
            return Constant(self.take("string", "a constant key (a string)").text, loc)
        if word == "scalar":
            return Scalar(self.expr(), loc)
        if word == "match_cast":
            return MatchCast(self.value_use(), loc)
        if word == "if":
            cond = self.value_use()
            then = self.block("yield")
            self.expect("else")
            return If(cond, then, self.block("yield"), loc)
        return self.loop(loc)

    def loop(self, loc: Loc) -> Loop:
        it = self.take("pct", "a loop index (%i: i64)")
        self.expect(":")
        ity = self.type()
        self.expect("in")
        if self.tok.kind != "int" or self.tok.text != "0":
            self.error("graph loops start at 0 (write 0..EXTENT)")
        self.i += 1
        self.expect("..")
        extent = self.expr()
        carry: list[tuple[Token, Type, Value]] = []
        if self.accept("carry"):
            self.expect("(")

            def one() -> tuple[Token, Type, Value]:
                ct = self.take("pct", "a carried value (%h: type = %init)")
                self.expect(":")
                cty = self.type()
                self.expect("=")
                return ct, cty, self.value_use()

            carry = self.comma_list(")", one)
        self.scopes.append({})
        index = self.define(it, ity)
        carried = tuple(self.define(ct, cty) for ct, cty, _ in carry)
        body = self.block("yield")
        self.scopes.pop()
        return Loop(index, extent, carried, tuple(init for _, _, init in carry), body, loc)

    # ---- tensor programs
    def prim_function(self) -> PrimFunc:
        start = self.expect("prim")
        name = self.take("at", "a function name (@name)").text
        self.syms, self.buffers, self.axes = {}, {}, {}
        self.expect("(")
        buffers: list[Buffer] = []
        scalars: list[Var] = []

        def param() -> None:
            t = self.tok
            if t.kind == "pct":
                self.i += 1
                self.expect(":")
                if t.text in self.buffers:
                    self.error(f"redefinition of buffer %{t.text}", t)
                b = self.buffer_type(t.text, t)
                self.buffers[t.text] = b
                buffers.append(b)
            else:
                st = self.sym_token()
                self.expect(":")
                if any(v.name == st.text for v in scalars):
                    self.error(f"duplicate scalar parameter {st.text}", st)
                scalars.append(self.intern(st.text, self.dtype(), st))  # the graph's symbol `n` is this `n`

        self.comma_list(")", param)
        for v in scalars:
            self.syms[v.name] = v
        self.expect("outputs")
        nt = self.tok
        n_out = self.int_lit()
        if not 0 <= n_out <= len(buffers):
            self.error(f"outputs {n_out}: the function has {len(buffers)} buffer parameters", nt)
        attrs = self.attrs() if self.accept("attrs") else ()
        bt = self.expect("{")
        sparse: list[SparseBuffer] = []
        views: list[BufferView] = []
        with self.nest():
            while self.at("axis") or self.at("sparse"):
                if self.accept("axis"):
                    self.axis_decl()
                else:
                    self.expect("sparse")
                    sparse.append(self.sparse_decl())
            pending: list[tuple[Buffer, Token]] = []
            while self.accept("view"):
                views.append(self.view_decl(pending))
            stmts = self.stmts()
        body = stmts[0] if len(stmts) == 1 else Seq(tuple(stmts), self.loc(bt))
        if pending:  # views of global-scope allocations name a buffer the body allocates
            allocs = {x.buffer.name: x.buffer for x in nodes(body) if isinstance(x, Allocate)}
            where = {id(b): t for b, t in pending}
            for k, v in enumerate(views):
                if id(v.source) in where:
                    src = allocs.get(v.source.name)
                    if src is None:
                        self.error(f"undefined buffer %{v.source.name}", where[id(v.source)])
                    views[k] = replace(v, source=src)
        return PrimFunc(name, tuple(buffers), n_out, body, tuple(scalars), attrs, self.loc(start),
                        tuple(self.axes.values()), tuple(sparse), tuple(views))

    def view_decl(self, pending: list[tuple[Buffer, Token]]) -> BufferView:
        """`view %A_flat: buffer<...> = %A`: declares the flat view %A_flat of %A, a parameter or a
        global-scope allocation of the body (resolved once the body is parsed: `pending`)."""
        bt = self.take("pct", "a view name")
        if bt.text in self.buffers:
            self.error(f"redefinition of buffer %{bt.text}", bt)
        self.expect(":")
        buf = self.buffer_type(bt.text, bt)
        self.expect("=")
        st = self.take("pct", "a buffer name")
        src = self.buffers.get(st.text)
        if src is None:
            src = Buffer(st.text, (), buf.dtype, "global", self.loc(st))  # placeholder until the body is parsed
            pending.append((src, st))
        self.buffers[bt.text] = buf
        return BufferView(buf, src, self.loc(bt))

    def axis_ref(self) -> Axis:
        t = self.sym_token()
        a = self.axes.get(t.text)
        if a is None:
            self.error(f"undefined axis {t.text}", t)
        return a

    def axis_decl(self) -> None:
        """`axis NAME = KIND(args)` (ir/sparse.py); the parent must be declared before."""
        nt = self.sym_token()
        if nt.text in self.axes:
            self.error(f"redefinition of axis {nt.text}", nt)
        self.expect("=")
        kt = self.tok
        kind = self.word("an axis kind")
        if kind not in AXIS_KINDS:
            self.error(f"unknown axis kind {kind} (known: {', '.join(AXIS_KINDS)})", kt)
        self.expect("(")
        with self.nest():
            parent = "" if kind == "dense_fixed" else self.axis_ref().name
            if parent:
                self.expect(",")
            length = self.expr()
            nnz = indptr = indices = None
            if kind != "dense_fixed":
                self.expect(",")
                nnz = self.expr()
            if kind in ("dense_variable", "sparse_variable"):
                self.expect(",")
                indptr = self.buffer_ref()
            if kind in ("sparse_fixed", "sparse_variable"):
                self.expect(",")
                indices = self.buffer_ref()
            self.expect(")")
        self.axes[nt.text] = Axis(nt.text, kind, length, parent, nnz, indptr, indices, self.loc(nt))

    def sparse_decl(self) -> SparseBuffer:
        """`sparse %A: (I, J) = %data`: declares the view %A."""
        bt = self.take("pct", "a sparse buffer name")
        if bt.text in self.buffers:
            self.error(f"redefinition of buffer %{bt.text}", bt)
        self.expect(":")
        self.expect("(")
        with self.nest():
            axes = tuple(self.comma_list(")", self.axis_ref))
        self.expect("=")
        data = self.buffer_ref()
        sb = sparse_view(bt.text, axes, data, self.loc(bt))
        self.buffers[bt.text] = sb.buffer
        return sb

    def sp_iter(self, loc: Loc) -> SparseIteration:
        name = self.take("string", "a sparse iteration name (a string)").text
        self.expect("(")
        saved: list[tuple[Var, Var | None]] = []

        def iter_var() -> SparseIterVar:
            kt = self.tok
            kind = self.word("an iterator kind (S or R)")
            vt = self.sym_token()
            self.expect("in")
            axis = self.axis_ref().name
            var = Var(vt.text, "i64", self.loc(vt))
            saved.append((var, self.syms.get(var.name)))
            self.syms[var.name] = var
            return SparseIterVar(var, axis, kind, self.loc(kt))

        with self.nest():
            iters = tuple(self.comma_list(")", iter_var))
        self.expect("{")
        init: Stmt | None = None
        with self.nest():
            if self.accept("init"):
                init = self.stmt_block()
            start = self.tok
            stmts = self.stmts()
        body = stmts[0] if len(stmts) == 1 else Seq(tuple(stmts), self.loc(start))
        for var, old in reversed(saved):
            self.unbind_sym(var, old)
        return SparseIteration(name, iters, body, init, loc)

    def stmt_block(self) -> Stmt:
        """`{ stmts }`: one statement stands alone, any other count makes a Seq."""
        start = self.expect("{")
        with self.nest():
            stmts = self.stmts()
        return stmts[0] if len(stmts) == 1 else Seq(tuple(stmts), self.loc(start))

    def stmts(self) -> list[Stmt]:
        out: list[Stmt] = []
        while not self.accept("}"):
            out.append(self.stmt())
        return out

    def stmt(self) -> Stmt:
        t = self.tok
        loc = self.loc(t)
        if t.kind == "pct":
            self.i += 1
            if self.at(":"):
                self.error("expected a statement (graph bindings belong in graph functions)", t)
            buf = self.buffers.get(t.text)
            if buf is None:
                self.error(f"undefined buffer %{t.text}", t)
            self.expect("[")
            with self.nest():
                idx = self._index_list()[0]
            self.expect("=")
            return Store(buf, tuple(idx), self.expr(), loc)
        if t.kind != "ident":
            self.error(f"expected a statement, found {self.describe(t)}")
        self.i += 1
        if t.text == "seq":
            self.expect("{")
            with self.nest():
                return Seq(tuple(self.stmts()), loc)
        if t.text == "for":
            return self.for_stmt(loc)
        if t.text == "block":
            return self.block_stmt(loc)
        if t.text == "sp_iter":
            return self.sp_iter(loc)
        if t.text == "if":
            cond = self.expr()
            then = self.stmt_block()
            orelse = self.stmt_block() if self.accept("else") else None
            return IfStmt(cond, then, orelse, loc)
        if t.text == "let":
            st = self.tok
            self.sym_token()
            dt = self.dtype() if self.accept(":") else "i64"
            self.expect("=")
            value = self.expr()
            var = Var(st.text, dt, self.loc(st))
            old = self.syms.get(var.name)
            self.syms[var.name] = var
            body = self.stmt_block()
            self.unbind_sym(var, old)
            return Let(var, value, body, loc)
        if t.text == "allocate":
            buf = self.new_buffer()
            body = self.stmt_block()
            del self.buffers[buf.name]
            return Allocate(buf, body, loc)
        if t.text == "attr":
            key = self.take("string", "an attribute key (a string)")
            if key.text not in ATTR_KEYS:
                self.error(f"unknown attribute key {key.text!r} (known: {', '.join(ATTR_KEYS)})", key)
            return AttrStmt(key.text, self.stmt_block(), loc)
        if t.text == "allreduce":
            op = self.tok
            if op.kind != "ident" or op.text not in REDUCE_OPS:
                self.error(f"expected a reduction op ({', '.join(REDUCE_OPS)}), found {self.describe(op)}")
            self.i += 1
            acc = self.new_buffer()
            lt = self.tok
            loop = self.stmt_block()
            if not isinstance(loop, For):
                self.error("allreduce holds one thread loop", lt)
            self.expect("then")
            result = self.stmt_block()
            del self.buffers[acc.name]
            return ThreadAllReduce(op.text, acc, loop, result, loc)
        if t.text == "gemm":
            c = self.buffer_ref()
            self.expect("=")
            a = self.buffer_ref()
            self.expect("*")
            b = self.buffer_ref()
            accumulate, batched = self.accept("accumulate"), self.accept("batched")
            tile = None
            if self.accept("tile"):
                self.expect("(")
                with self.nest():
                    vals = self.comma_list(")", self.int_lit)
                if len(vals) != 6:
                    self.error(f"a GEMM tile has 6 numbers (BM, BN, BK, WM, WN, STAGES), got {len(vals)}")
                tile = GemmTile(*vals)
            return GemmCall(c, a, b, accumulate, batched, tile, loc)
        self.error(f"expected a statement (store, for, block, sp_iter, if, let, seq, allocate, attr, allreduce, gemm), "
                   f"found {self.describe(t)}", t)

    def new_buffer(self) -> Buffer:
        """`%name: buffer<...>` declaring a buffer in scope (the caller removes it after the body)."""
        bt = self.take("pct", "a buffer name")
        self.expect(":")
        if bt.text in self.buffers:
            self.error(f"redefinition of buffer %{bt.text}", bt)
        b = self.buffer_type(bt.text, bt)
        self.buffers[bt.text] = b
        return b

    def buffer_ref(self) -> Buffer:
        t = self.take("pct", "a buffer name")
        buf = self.buffers.get(t.text)
        if buf is None:
            self.error(f"undefined buffer %{t.text}", t)
        return buf

    def for_stmt(self, loc: Loc) -> For:
        vt = self.sym_token()
        dt = self.dtype() if self.accept(":") else "i64"
        self.expect("in")
        start = self.expr()
        dots = self.expect("..")
        if self.accept("+"):
            extent = self.expr()
        else:
            if start != Const(0):
                self.error("a range a..b must start at 0; write START..+EXTENT", dots)
            extent = self.expr()
        kind, tag = "serial", ""
        if self.tok.kind == "string" or (self.tok.kind == "ident" and self.tok.text != "annotations"):
            kind = self.word("a loop kind")
            if self.tok.kind == "string":
                tag = self.word("a thread tag")
        ann = self.attrs() if self.accept("annotations") else ()
        var = Var(vt.text, dt, self.loc(vt))
        old = self.syms.get(var.name)
        self.syms[var.name] = var
        body = self.stmt_block()
        self.unbind_sym(var, old)
        return For(var, start, extent, body, kind, tag, ann, loc)

    def block_stmt(self, loc: Loc) -> BlockStmt:
        name = self.take("string", "a block name (a string)").text
        self.expect("(")
        saved: list[tuple[Var, Var | None]] = []

        def iter_var() -> IterVar:
            kt = self.tok
            kind = self.word("an iterator kind (S or R)")
            vt = self.sym_token()
            dt = self.dtype() if self.accept(":") else "i64"
            self.expect("=")
            binding = self.expr()
            self.expect("in")
            if self.tok.kind != "int" or self.tok.text != "0":
                self.error("block iterator domains start at 0 (write 0..EXTENT)")
            self.i += 1
            self.expect("..")
            extent = self.expr()
            var = Var(vt.text, dt, self.loc(vt))
            saved.append((var, self.syms.get(var.name)))
            self.syms[var.name] = var
            return IterVar(var, extent, kind, binding, self.loc(kt))

        iters = tuple(self.comma_list(")", iter_var))
        ann = self.attrs() if self.accept("annotations") else ()
        start = self.expect("{")
        outer_buffers = dict(self.buffers)
        allocs: list[Buffer] = []
        init: Stmt | None = None
        with self.nest():
            while self.at("alloc"):
                self.i += 1
                bt = self.take("pct", "a buffer name")
                self.expect(":")
                if bt.text in self.buffers:
                    self.error(f"redefinition of buffer %{bt.text}", bt)
                b = self.buffer_type(bt.text, bt)
                self.buffers[bt.text] = b
                allocs.append(b)
            if self.accept("init"):
                init = self.stmt_block()
            stmts = self.stmts()
        body = stmts[0] if len(stmts) == 1 else Seq(tuple(stmts), self.loc(start))
        self.buffers = outer_buffers
        for var, old in reversed(saved):
            self.unbind_sym(var, old)
        return BlockStmt(name, iters, body, init, tuple(allocs), ann, loc)

    # ---- module
    def module(self) -> Module:
        head = self.tok
        if not (head.kind == "ident" and head.text == "mlc.module"):
            self.error(f"expected the header 'mlc.module v{IR_VERSION}', found {self.describe(head)}")
        self.i += 1
        vt = self.tok
        if vt.kind != "ident" or not re.fullmatch(r"v[0-9]{1,9}", vt.text):
            self.error(f"expected a version (v{IR_VERSION}) after 'mlc.module'")
        if int(vt.text[1:]) != IR_VERSION:
            self.error(f"unsupported IR version {vt.text} (this mlc reads v{IR_VERSION})", vt)
        self.i += 1
        meta = self.attrs() if self.accept("meta") else ()
        constants = None
        if self.accept("constants"):
            path = self.take("string", "the constants file path (a string)").text
            self.expect("sha256")
            ht = self.take("string", "the sha256 hex digest (a string)")
            constants = ConstantsRef(path, ht.text)
        functions: list[Function | PrimFunc] = []
        names: set[str] = set()
        while self.tok.kind != "eof":
            t = self.tok
            if self.at("graph"):
                f: Function | PrimFunc = self.graph_function()
            elif self.at("prim"):
                f = self.prim_function()
            else:
                self.error(f"expected 'graph' or 'prim', found {self.describe(t)}")
            if f.name in names:
                self.error(f"redefinition of function @{f.name}", t)
            names.add(f.name)
            functions.append(f)
        return Module(tuple(functions), meta, constants, self.loc(head))


def _decode(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        line_start = before.rfind(b"\n") + 1
        col = len(before[line_start:].decode("utf-8", "replace")) + 1
        end = data.find(b"\n", e.start)
        text = data[line_start: end if end >= 0 else len(data)].decode("utf-8", "replace")
        raise MlcError("invalid UTF-8 byte in input", Loc(filename, line, col), text) from None


def _run(text: str | bytes, filename: str, fn: Callable[[Parser], Any]) -> Any:
    if isinstance(text, bytes):
        text = _decode(text, filename)
    if text.startswith("\ufeff"):  # a byte-order mark some editors write; keep columns as they were
        text = " " + text[1:]
    p = Parser(text, filename)
    try:
        return fn(p)
    except RecursionError:  # a safety net: nesting is bounded well below the stack limit
        p.error("input nested too deeply")


def parse_module(text: str | bytes, filename: str = "<stdin>") -> Module:
    """Parse a whole module; raises MlcError (and nothing else) on bad input."""

    return _run(text, filename, Parser.module)


def parse_expr(text: str, filename: str = "<expr>") -> Expr:
    """Parse one scalar expression (free names become i64 symbols)."""

    def go(p: Parser) -> Expr:
        e = p.expr()
        if p.tok.kind != "eof":
            p.error(f"unexpected {p.describe(p.tok)} after the expression")
        return e

    return _run(text, filename, go)


def parse_type(text: str, filename: str = "<type>") -> Type:
    def go(p: Parser) -> Type:
        t = p.type()
        if p.tok.kind != "eof":
            p.error(f"unexpected {p.describe(p.tok)} after the type")
        return t

    return _run(text, filename, go)
