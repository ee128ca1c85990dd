"""Exact round trip of the textual IR: print(parse(t)) == t and parse(print(m)) == m.

Random modules of both levels come from a hypothesis-driven generator that uses every node kind,
awkward names (quoting), every dtype, literal edge cases and shadowed scalar names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlc.ir import (
    Bin,
    Binding,
    Block,
    BlockStmt,
    Buffer,
    Call,
    CallExtern,
    CallGraph,
    CallTensor,
    Cast,
    Const,
    Constant,
    ConstantsRef,
    For,
    Function,
    GetItem,
    If,
    IfStmt,
    IterVar,
    Let,
    Load,
    Loop,
    MakeTuple,
    MatchCast,
    MlcError,
    Module,
    Not,
    OpCall,
    PrimFunc,
    Scalar,
    ScalarType,
    Select,
    Seq,
    Store,
    TensorType,
    TupleType,
    UnknownType,
    Value,
    Var,
)
from mlc.ir.dtype import DTYPES_ALL
from mlc.ir.expr import BIN_OPS, INTRINSICS
from mlc.ir.parser import parse_expr, parse_module, parse_type
from mlc.ir.printer import print_expr, print_function, print_module, print_type
from mlc.ir.tir import FOR_KINDS

CORPUS = Path(__file__).parent / "ir_corpus" / "valid"
INT_DTYPES = ("i8", "i16", "i32", "i64", "u8")
# names that need quoting or clash with keywords, next to ordinary ones
NAMES = ("n", "m", "x", "in", "f32", "true", "a b", "x.1", "0", "ü", "", "tensor", "for", "select", "S", "R")
# scalar names that are keywords somewhere in the grammar (or look like them)
TRICKY = ("x", "in", "true", "nan", "inf", "f32", "S", "R", "carry", "annotations", "parallel", "exp", "none", "expr",
          "seq", "for", "block", "alloc", "init", "outputs", "tensor", "select", "call", "min")
OP_NAMES = ("relu", "add", "nn.conv2d", "if", "tuple", "call", "weird op", "scalar", "x")


def _roundtrip(m: Module) -> str:
    text = print_module(m)
    m2 = parse_module(text, "gen.ir")
    assert m2 == m, text
    assert print_module(m2) == text
    return text


# ---------------------------------------------------------------- corpus
@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.ir")), ids=lambda p: p.name)
def test_valid_corpus_roundtrips_and_verifies(path: Path) -> None:
    from mlc.ir.verify import verify_module

    text = path.read_text()
    m = parse_module(text, str(path))
    assert print_module(m) == text
    assert parse_module(print_module(m)) == m
    verify_module(m, text)


def test_corpus_has_examples() -> None:
    assert len(list(CORPUS.glob("*.ir"))) >= 3


def test_every_node_carries_its_location() -> None:
    text = (CORPUS / "prim_all.ir").read_text()
    lines = text.split("\n")
    m = parse_module(text, "p.ir")
    f = m.get("misc")
    assert isinstance(f, PrimFunc)
    line = lines.index(next(x for x in lines if x.startswith("prim @misc"))) + 1
    assert (f.loc.file, f.loc.line, f.loc.col) == ("p.ir", line, 1)
    loop = f.body.stmts[0]  # type: ignore[attr-defined]
    assert isinstance(loop, For) and (loop.loc.line, loop.loc.col) == (line + 1, 3)
    assert (loop.var.loc.line, loop.var.loc.col) == (line + 1, 7)
    let = loop.body
    assert isinstance(let, Let) and let.loc.line == line + 2 and let.value.loc.line == line + 2
    assert let.value.loc.col == lines[line + 1].index("%A[i]") + 1 + len("%A[i] ")  # the '+'
    text = (CORPUS / "graph_all.ir").read_text()
    lines = text.split("\n")
    g = parse_module(text, "g.ir").get("main")
    assert isinstance(g, Function)
    b = g.body.bindings[2]
    line = next(i for i, x in enumerate(lines) if "= relu(%p)" in x)
    assert (b.loc.line, b.loc.col) == (line + 1, 3)
    assert b.node.loc.col == lines[line].index("relu") + 1  # type: ignore[attr-defined]
    assert b.var.loc == b.loc


def test_symbols_are_shared_between_levels() -> None:
    m = parse_module((CORPUS / "graph_all.ir").read_text())
    g, p = m.get("main"), m.get("scale")
    assert isinstance(g, Function) and isinstance(p, PrimFunc)
    n_graph = g.params[0].type.shape[0]  # type: ignore[union-attr]
    n_prim = p.params[0].shape[0]
    assert isinstance(n_graph, Var) and n_graph is n_prim
    text = ("mlc.module v1\ngraph @g(%x: tensor<k x f32>) {\n  %y: tensor<k x f32> = call_tensor @p(%x) [k]\n"
            "  return %y\n}\nprim @p(%A: buffer<k x f32>, %B: buffer<k x f32>, k: i64) outputs 1 {\n"
            "  for i in 0..k {\n    %B[i] = %A[i]\n  }\n}\n")
    m2 = parse_module(text)
    g2, p2 = m2.get("g"), m2.get("p")
    k = g2.params[0].type.shape[0]  # type: ignore[union-attr]
    assert k is p2.scalar_params[0] is p2.params[0].shape[0] is p2.body.extent  # type: ignore[union-attr]
    assert g2.body.bindings[0].node.sym_args[0] is k  # type: ignore[union-attr]


def test_names_resolve_to_definitions() -> None:
    m = parse_module((CORPUS / "mlp.ir").read_text())
    g = m.get("main")
    assert isinstance(g, Function)
    y = g.body.bindings[1].var
    relu = g.body.bindings[2].node
    assert isinstance(relu, OpCall) and relu.args[0] is y
    mm = m.get("matmul")
    assert isinstance(mm, PrimFunc)
    store = mm.body.body.body.body.body  # type: ignore[attr-defined]
    assert isinstance(store, Store) and store.buffer is mm.params[2]


# ---------------------------------------------------------------- literals and spelling
@given(st.floats(allow_nan=False))
def test_float_constants_roundtrip_exactly(v: float) -> None:
    for dt in ("f32", "f64", "f16", "i32"):
        e = Const(v, dt)
        back = parse_expr(print_expr(e))
        assert isinstance(back, Const) and back.dtype == dt
        assert back.value == v and math.copysign(1, back.value) == math.copysign(1, v)
        assert isinstance(back.value, float)


@given(st.integers(-(2**63), 2**63 - 1), st.sampled_from(DTYPES_ALL))
def test_int_constants_roundtrip(v: int, dt: str) -> None:
    back = parse_expr(print_expr(Const(v, dt)))
    assert back == Const(v, dt) and type(back.value) is int  # type: ignore[attr-defined]


def test_nan_and_infinities() -> None:
    for v, s in ((math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")):
        assert print_expr(Const(v, "f32")) == s
        back = parse_expr(s)
        assert isinstance(back, Const) and back.dtype == "f32"
        assert (math.isnan(back.value) if math.isnan(v) else back.value == v)
    assert print_expr(Const(math.nan, "f64")) == "nan:f64"


def test_expression_spelling() -> None:
    n, m = Var("n"), Var("m")
    cases = {
        "n * 2 + 1": n * 2 + 1,
        "(n + 1) * 2": (n + 1) * 2,
        "n - (m - 1)": Bin("sub", n, Bin("sub", m, Const(1))),
        "n - -1": Bin("sub", n, Const(-1)),
        "floordiv(n, 4)": n // 4,
        "floormod(n, 4)": n % 4,
        "min(n, m)": Bin("min", n, m),
        "!(n < m) || n == m": Bin("or", Not(Bin("lt", n, m)), Bin("eq", n, m)),
        "select(n > 0, 1.5, 2.5:f64)": Select(Bin("gt", n, Const(0)), Const(1.5, "f32"), Const(2.5, "f64")),
        "cast<f16>(n)": Cast("f16", n),
        "exp(1.0)": Call("exp", (Const(1.0, "f32"),), "f32"),
        "isnan(1.0):bool": Call("isnan", (Const(1.0, "f32"),), "bool"),
        'call "min"(n):f32': Call("min", (n,), "f32"),
        "n:i32 + 1:i32": Bin("add", Var("n", "i32"), Const(1, "i32")),
        '$"x" + $"a b"': Bin("add", Var("x"), Var("a b")),
        "true:i64": Const(True, "i64"),
    }
    for text, e in cases.items():
        assert print_expr(e) == text
        assert parse_expr(text) == e


def test_type_spelling() -> None:
    n = Var("n")
    cases = {
        "tensor<n x 4 x f32>": TensorType((n, Const(4)), "f32"),
        "tensor<? x bf16>": TensorType(None, "bf16"),
        "tensor<i8>": TensorType((), "i8"),
        "tensor<(n > 2) x bool>": TensorType((Bin("gt", n, Const(2)),), "bool"),
        "tuple<tensor<n x f32>, i64, ?>": TupleType((TensorType((n,), "f32"), ScalarType("i64"), UnknownType())),
        "tuple<>": TupleType(()),
    }
    for text, t in cases.items():
        assert print_type(t) == text
        assert parse_type(text) == t


def test_statement_sequences_keep_their_shape() -> None:
    a = Buffer("A", (Const(4),), "f32")
    st1 = Store(a, (Const(0),), Const(1.0))
    bodies = [Seq(()), Seq((st1,)), Seq((st1, st1)), Seq((Seq((st1, st1)), st1)), st1, Seq((Seq(()),))]
    for body in bodies:
        f = PrimFunc("f", (a,), 1, For(Var("i"), Const(0), Const(4), body))
        _roundtrip(Module((f,)))


def test_shadowed_scalars_print_with_dtype() -> None:
    a = Buffer("A", (Const(4),), "i32")
    i32, i64 = Var("i", "i32"), Var("i")
    inner = For(i32, Const(0, "i32"), Const(4, "i32"), Store(a, (i64,), Cast("i32", i32)))
    f = PrimFunc("f", (a,), 1, For(i64, Const(0), Const(4), inner))
    text = _roundtrip(Module((f,)))
    assert "%A[i:i64] = cast<i32>(i)" in text


def test_ill_formed_modules_still_print() -> None:
    """Undefined names, clashing types and foreign objects print; the text is readable, not parseable."""
    ghost = Value("ghost", TensorType((Const(3),), "f32"))
    x = Value("x", TensorType((Const(4),), "f32"))
    f = Function("main", (x,), Block((Binding(Value("y", TensorType((Const(9),), "i8")), OpCall("add", (x, ghost))),), (ghost,)))

    class Alien:
        pass

    b = Buffer("B", (), "weird dtype")
    p = PrimFunc("p", (b,), 7, Seq((Store(b, (), Const(object())),)), attrs=(("k", Alien()),))  # type: ignore[arg-type]
    text = print_module(Module((f, p, f)))
    assert text == print_module(Module((f, p, f)))
    assert "%y: tensor<9 x i8> = add(%x, %ghost)" in text and "return %ghost" in text
    assert '%B: buffer<"weird dtype">' in text and "%B[] = <?object>" in text and "{k = <?Alien>}" in text
    with pytest.raises(MlcError):
        parse_module(text)
    assert print_function(f).startswith("graph @main(")


# ---------------------------------------------------------------- random modules
Draw = Callable[[st.SearchStrategy[Any]], Any]


class Gen:
    """Builds random IR. Names are made unique with a counter so definitions never collide."""

    def __init__(self, draw: Draw):
        self.draw = draw
        self.k = 0
        self.syms = [Var("n"), Var("m"), Var("batch", "i32"), Var("a b")] + [Var(w) for w in TRICKY]

    def pick(self, xs: Any) -> Any:
        return self.draw(st.sampled_from(list(xs)))

    def chance(self, p: float = 0.5) -> bool:
        return self.draw(st.floats(0, 1)) < p

    def fresh(self, base: str | None = None) -> str:
        self.k += 1
        return f"{base if base is not None else self.pick(NAMES)}_{self.k}"

    # -- scalars
    def const(self) -> Const:
        kind = self.pick(("int", "float", "bool"))
        dt = self.pick(DTYPES_ALL)
        if kind == "int":
            return Const(self.draw(st.integers(-(2**63), 2**63 - 1)), dt)
        if kind == "float":
            return Const(self.draw(st.floats(allow_nan=False)), dt)
        return Const(self.draw(st.booleans()), dt)

    def expr(self, scope: list[Var], buffers: list[Buffer], depth: int = 3) -> Any:
        leaf = depth <= 0 or self.chance(0.3)
        if leaf:
            r = self.pick(("const", "sym", "bound") if scope else ("const", "sym"))
            if r == "const":
                return self.const()
            if r == "sym":
                return self.pick(self.syms)
            return self.pick(scope)
        kind = self.pick(("bin", "bin", "not", "select", "cast", "call", "load"))
        sub = lambda: self.expr(scope, buffers, depth - 1)  # noqa: E731
        if kind == "bin":
            return Bin(self.pick(BIN_OPS), sub(), sub())
        if kind == "not":
            return Not(sub())
        if kind == "select":
            return Select(sub(), sub(), sub())
        if kind == "cast":
            return Cast(self.pick(DTYPES_ALL), sub())
        if kind == "call":
            name = self.pick(INTRINSICS + ("min", "my.fn", "a b", "cast"))
            args = tuple(sub() for _ in range(self.draw(st.integers(0, 2))))
            return Call(name, args, self.pick(DTYPES_ALL))
        if not buffers:
            return sub()
        b = self.pick(buffers)
        return Load(b, tuple(sub() for _ in range(self.draw(st.integers(0, 3)))))

    def dim_expr(self) -> Any:
        return self.expr([], [], 2)

    def attr_value(self, depth: int = 2) -> Any:
        kind = self.pick(("int", "float", "str", "bool", "none", "expr", "tuple") if depth else ("int", "str"))
        if kind == "int":
            return self.draw(st.integers(-(2**63), 2**63 - 1))
        if kind == "float":
            return self.draw(st.floats(allow_nan=False))
        if kind == "str":
            return self.draw(st.text(max_size=6))
        if kind == "bool":
            return self.draw(st.booleans())
        if kind == "none":
            return None
        if kind == "expr":
            return self.dim_expr()
        return tuple(self.attr_value(depth - 1) for _ in range(self.draw(st.integers(0, 3))))

    def attrs(self) -> tuple[tuple[str, Any], ...]:
        keys = self.draw(st.lists(st.text(max_size=5), max_size=3, unique=True))
        return tuple((k, self.attr_value()) for k in keys)

    # -- graph level
    def type(self, depth: int = 2) -> Any:
        kind = self.pick(("tensor", "tensor", "unknown_rank", "tuple", "scalar", "unknown") if depth else ("tensor",))
        if kind == "tensor":
            return TensorType(tuple(self.dim_expr() for _ in range(self.draw(st.integers(0, 3)))), self.pick(DTYPES_ALL))
        if kind == "unknown_rank":
            return TensorType(None, self.pick(DTYPES_ALL))
        if kind == "tuple":
            return TupleType(tuple(self.type(depth - 1) for _ in range(self.draw(st.integers(0, 3)))))
        if kind == "scalar":
            return ScalarType(self.pick(DTYPES_ALL))
        return UnknownType()

    def value(self) -> Value:
        return Value(self.fresh(), self.type())

    def block(self, scope: list[Value], funcs: list[str], depth: int) -> Block:
        scope = list(scope)
        bindings = []
        for _ in range(self.draw(st.integers(0, 4))):
            node = self.node(scope, funcs, depth)
            v = self.value()
            bindings.append(Binding(v, node))
            scope.append(v)
        results = tuple(self.pick(scope) for _ in range(self.draw(st.integers(0, 2)))) if scope else ()
        return Block(tuple(bindings), results)

    def node(self, scope: list[Value], funcs: list[str], depth: int) -> Any:
        kinds = ["const", "scalar", "tuple"]
        if scope:
            kinds += ["op", "op", "call_tensor", "extern", "call", "get", "match"]
            if depth > 0:
                kinds += ["if", "loop"]
        kind = self.pick(kinds)
        args = lambda: tuple(self.pick(scope) for _ in range(self.draw(st.integers(0, 3))))  # noqa: E731
        if kind == "const":
            return Constant(self.draw(st.text(max_size=8)))
        if kind == "scalar":
            return Scalar(self.dim_expr())
        if kind == "tuple":
            return MakeTuple(args() if scope else ())
        if kind == "op":
            return OpCall(self.pick(OP_NAMES), args(), self.attrs())
        if kind == "call_tensor":
            return CallTensor(self.pick(funcs), args(), tuple(self.dim_expr() for _ in range(self.draw(st.integers(0, 2)))))
        if kind == "extern":
            return CallExtern(self.draw(st.text(max_size=8)), args(), self.attrs())
        if kind == "call":
            return CallGraph(self.pick(funcs), args())
        if kind == "get":
            return GetItem(self.pick(scope), self.draw(st.integers(-3, 5)))
        if kind == "match":
            return MatchCast(self.pick(scope))
        if kind == "if":
            return If(self.pick(scope), self.block(scope, funcs, depth - 1), self.block(scope, funcs, depth - 1))
        n = self.draw(st.integers(0, 2))
        index, carried = self.value(), tuple(self.value() for _ in range(n))
        inits = tuple(self.pick(scope) for _ in range(n))
        body = self.block(scope + [index, *carried], funcs, depth - 1)
        return Loop(index, self.dim_expr(), carried, inits, body)

    def function(self, name: str, funcs: list[str]) -> Function:
        params = tuple(self.value() for _ in range(self.draw(st.integers(0, 3))))
        return Function(name, params, self.block(list(params), funcs, 2), self.attrs() if self.chance(0.3) else ())

    # -- tensor programs
    def buffer(self, scope_names: set[str] | None = None) -> Buffer:
        shape = tuple(self.dim_expr() for _ in range(self.draw(st.integers(0, 3))))
        return Buffer(self.fresh(), shape, self.pick(DTYPES_ALL), self.pick(("global", "local", "shared", "x")))

    def bind_var(self, scope: list[Var]) -> Var:
        if scope and self.chance(0.2):
            name = self.pick([v.name for v in scope])  # shadowing
        else:
            name = self.pick(TRICKY) if self.chance(0.2) else self.fresh("v")
        return Var(name, self.pick(INT_DTYPES))

    def stmt(self, scope: list[Var], buffers: list[Buffer], depth: int) -> Any:
        kinds = ["store", "seq"] + (["for", "for", "block", "if", "let"] if depth > 0 else [])
        kind = self.pick(kinds)
        ex = lambda: self.expr(scope, buffers, 2)  # noqa: E731
        if kind == "store":
            if not buffers:
                return Seq(())
            b = self.pick(buffers)
            return Store(b, tuple(ex() for _ in range(self.draw(st.integers(0, 3)))), ex())
        if kind == "seq":
            return Seq(tuple(self.stmt(scope, buffers, depth - 1) for _ in range(self.draw(st.integers(0, 3)))))
        if kind == "for":
            start = Const(0) if self.chance() else ex()
            ext = ex()
            k = self.pick(FOR_KINDS + ("annotations",))
            tag = self.pick(("threadIdx.x", "blockIdx.y", "")) if k == "thread" or self.chance(0.1) else ""
            ann = self.attrs() if self.chance(0.3) else ()
            v = self.bind_var(scope)
            return For(v, start, ext, self.stmt(scope + [v], buffers, depth - 1), k, tag, ann)
        if kind == "if":
            orelse = self.stmt(scope, buffers, depth - 1) if self.chance() else None
            return IfStmt(ex(), self.stmt(scope, buffers, depth - 1), orelse)
        if kind == "let":
            value = ex()
            v = self.bind_var(scope)
            return Let(v, value, self.stmt(scope + [v], buffers, depth - 1))
        iters, inner = [], list(scope)
        for _ in range(self.draw(st.integers(0, 3))):
            binding, extent = self.expr(inner, buffers, 2), self.expr(inner, buffers, 1)
            v = self.bind_var(inner)
            iters.append(IterVar(v, extent, self.pick(("S", "R")), binding))
            inner.append(v)
        ann = self.attrs() if self.chance(0.3) else ()
        allocs = tuple(self.buffer() for _ in range(self.draw(st.integers(0, 2))))
        inner_bufs = buffers + list(allocs)
        init = self.stmt(inner, inner_bufs, depth - 1) if self.chance() else None
        body = self.stmt(inner, inner_bufs, depth - 1)
        return BlockStmt(self.draw(st.text(max_size=6)), tuple(iters), body, init, allocs, ann)

    def prim_func(self, name: str) -> PrimFunc:
        params = tuple(self.buffer() for _ in range(self.draw(st.integers(0, 3))))
        scalars = tuple(Var(self.fresh(), self.pick(INT_DTYPES)) for _ in range(self.draw(st.integers(0, 2))))
        body = self.stmt(list(scalars), list(params), 3)
        n_out = self.draw(st.integers(0, len(params)))
        return PrimFunc(name, params, n_out, body, scalars, self.attrs() if self.chance(0.3) else ())

    def module(self, graphs: int, prims: int) -> Module:
        names = [self.fresh(self.pick(("main", "f", "a b", "fused.add", "9"))) for _ in range(graphs + prims)]
        fs: list[Any] = [self.function(n, names) for n in names[:graphs]]
        fs += [self.prim_func(n) for n in names[graphs:]]
        fs = self.draw(st.permutations(fs))
        meta = self.attrs()
        consts = ConstantsRef(self.draw(st.text(max_size=10)), self.draw(st.text("0123456789abcdef", max_size=64)))
        return Module(tuple(fs), meta, consts if self.chance() else None)


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.data())
def test_random_graph_modules_roundtrip(data: st.DataObject) -> None:
    g = Gen(data.draw)
    _roundtrip(g.module(graphs=data.draw(st.integers(1, 3)), prims=0))


@_SETTINGS
@given(st.data())
def test_random_prim_modules_roundtrip(data: st.DataObject) -> None:
    g = Gen(data.draw)
    _roundtrip(g.module(graphs=0, prims=data.draw(st.integers(1, 3))))


@_SETTINGS
@given(st.data())
def test_random_mixed_modules_roundtrip(data: st.DataObject) -> None:
    g = Gen(data.draw)
    _roundtrip(g.module(graphs=data.draw(st.integers(1, 2)), prims=data.draw(st.integers(1, 2))))


def test_examples_in_the_docs_parse() -> None:
    from mlc.ir.verify import verify_module

    doc = (Path(__file__).parent.parent / "docs" / "ir.md").read_text()
    blocks = [b for b in doc.split("```") if b.startswith("\nmlc.module") or b.startswith("\nprim")]
    assert len(blocks) >= 3
    for b in blocks:
        text = b.lstrip("\n") if b.startswith("\nmlc.module") else "mlc.module v1\n" + b.lstrip("\n")
        m = parse_module(text, "doc.ir")
        assert parse_module(print_module(m)) == m
        if "@helper" not in text:  # the graph example calls functions it does not define
            verify_module(m, text)


def test_structurally_broken_objects_still_print() -> None:
    """Wrong Python types in fields (a pass bug) print as markers instead of crashing the printer."""
    x = Value(None, None)  # type: ignore[arg-type]
    ty = TensorType((Var(None, None), None), None)  # type: ignore[arg-type]
    f = Function(3, (x,), Block((Binding(Value("y", ty), OpCall(None, (x,), (("k", [1, 2]),))),), (x,)))  # type: ignore[arg-type]
    b = Buffer("B", (None,), None, None)  # type: ignore[arg-type]
    p = PrimFunc("p", (b,), None, Seq((Store(b, (None,), Call(None, (), None)), None, For(Var("i"), None, None, None))))  # type: ignore[arg-type]
    text = print_module(Module((f, p), (("a", object()),)))
    assert "graph @3(%None: <?NoneType>)" in text and "<?object>" in text and "%B[<?NoneType>]" in text
