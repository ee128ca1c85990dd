"""The verifier: well-formed modules pass; each broken rule fails at the offending node.

Modules are built both from text (so locations can be checked) and directly as dataclasses
(what passes produce, often without locations). Random well-formed tensor programs must verify,
and a single injected fault must then be caught.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlc.ir import (
    Bin,
    Binding,
    Block,
    BlockStmt,
    Buffer,
    CallGraph,
    CallTensor,
    Cast,
    Const,
    For,
    Function,
    If,
    IterVar,
    Let,
    Load,
    Loop,
    MlcError,
    Module,
    OpCall,
    PrimFunc,
    ScalarType,
    Seq,
    Store,
    TensorType,
    TupleType,
    UnknownType,
    Value,
    Var,
)
from mlc.ir.ops import registry
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.verify import type_clash, verify_function, verify_module

H = "mlc.module v1\n"


def _err(text: str) -> MlcError:
    with pytest.raises(MlcError) as info:
        verify_module(parse_module(text, "t.ir"), text)
    return info.value


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if needle in line)


def _ok(text: str) -> None:
    verify_module(parse_module(text, "t.ir"), text)


def f32(*dims: Any) -> TensorType:
    return TensorType(tuple(Const(d) if isinstance(d, int) else d for d in dims), "f32")


# ---------------------------------------------------------------- graph level
def test_symbolic_dims_are_not_clashes() -> None:
    _ok(H + "graph @main(%a: tensor<n x 8 x f32>, %b: tensor<m x 8 x f32>) {\n"
        "  %c: tensor<k x 8 x f32> = add(%a, %b)\n  %d: ? = relu(%c)\n  %e: tensor<? x f32> = exp(%d)\n  return %e\n}\n")


def test_type_clash_rules() -> None:
    n = Var("n")
    assert type_clash(f32(n, 4), f32(n, 5)) == "dim 1: 4 vs 5"
    assert type_clash(f32(n, 4), f32(Var("m"), 4)) is None
    assert type_clash(f32(n * 2), f32(n + n)) is None
    assert type_clash(f32(n * 2 + 1), f32(n + n)) is not None  # provably differ by 1
    assert type_clash(f32(4), TensorType((Const(4),), "f16")) == "dtype f32 vs f16"
    assert type_clash(TensorType(None, "f32"), f32(1, 2, 3)) is None
    assert type_clash(TupleType((f32(1),)), TupleType((f32(1), f32(2)))) is not None
    assert type_clash(ScalarType("i64"), f32(1)) == "scalar vs tensor"
    assert type_clash(UnknownType(), f32(1)) is None


def test_declared_type_checked_against_registered_infer() -> None:
    name = "test_verify_dup_rows"
    if registry.get(name) is None:
        registry.define(name, "injective", 1, {"times": 2})

        @registry.register_infer(name)
        def _infer(args: list[Any], attrs: dict[str, Any], loc: Any) -> Any:
            (t,) = args
            if attrs["times"] < 1:
                raise MlcError("times must be positive", loc)
            return TensorType((t.shape[0] * attrs["times"],) + t.shape[1:], t.dtype)

    _ok(H + f"graph @main(%a: tensor<n x 3 x f32>) {{\n  %b: tensor<n * 2 x 3 x f32> = {name}(%a)\n  return %b\n}}\n")
    _ok(H + f"graph @main(%a: tensor<4 x 3 x f32>) {{\n  %b: tensor<12 x 3 x f32> = {name}(%a) {{times = 3}}\n  return %b\n}}\n")
    text = H + f"graph @main(%a: tensor<4 x 3 x f32>) {{\n  %b: tensor<9 x 3 x f32> = {name}(%a)\n  return %b\n}}\n"
    e = _err(text)
    assert "dim 0: 9 vs 8" in e.message and e.loc is not None and e.loc.line == 3
    e = _err(text.replace("= " + name + "(%a)", "= " + name + "(%a) {times = 0}"))
    assert "times must be positive" in e.message and e.loc.line == 3  # type: ignore[union-attr]


def test_ssa_violations_built_directly() -> None:
    x = Value("x", f32(4))
    y = Value("y", f32(4))
    dup = Function("main", (x,), Block((Binding(y, OpCall("relu", (x,))), Binding(y, OpCall("relu", (x,)))), (y,)))
    with pytest.raises(MlcError, match="redefinition of %y"):
        verify_module(Module((dup,)))
    early = Function("main", (x,), Block((Binding(y, OpCall("relu", (y,))),), (y,)))
    with pytest.raises(MlcError, match="%y is undefined here"):
        verify_module(Module((early,)))
    clash = Function("main", (x,), Block((Binding(y, OpCall("relu", (Value("x", f32(5)),))),), (y,)))
    with pytest.raises(MlcError, match="does not match its definition"):
        verify_module(Module((clash,)))


def test_values_of_inner_blocks_stay_inside() -> None:
    c = Value("c", ScalarType("bool"))
    x, t, r = Value("x", f32(4)), Value("t", f32(4)), Value("r", f32(4))
    then = Block((Binding(t, OpCall("relu", (x,))),), (t,))
    iff = If(c, then, Block((), (x,)))
    f = Function("main", (x, c), Block((Binding(r, iff),), (t,)))
    with pytest.raises(MlcError, match="defined later or in an inner block"):
        verify_module(Module((f,)))
    ok = Function("main", (x, c), Block((Binding(r, iff),), (r,)))
    verify_module(Module((ok,)))
    e = pytest.raises(MlcError, verify_module, Module((f,))).value
    assert e.loc is None and e.render().startswith("mlc: error: @main:")  # no location known: still one line


def test_function_names_and_calls() -> None:
    x = Value("x", f32(4))
    f = Function("main", (x,), Block((), (x,)))
    with pytest.raises(MlcError, match="redefinition of function @main"):
        verify_module(Module((f, f)))
    y = Value("y", f32(4))
    call = Function("main", (x,), Block((Binding(y, CallGraph("g", (x,))),), (y,)))
    g = Function("g", (Value("a", f32(4)),), Block((), (Value("a", f32(4)),)))
    verify_module(Module((call, g)))
    bad = Function("g", (Value("a", f32(5)),), Block((), (Value("a", f32(5)),)))
    with pytest.raises(MlcError, match="does not fit"):
        verify_module(Module((call, bad)))
    verify_function(Module((call, g)), "main")


def test_call_tensor_signature() -> None:
    a, b = Buffer("A", (Var("n"),), "f32"), Buffer("B", (Var("n"),), "f32")
    k = PrimFunc("k", (a, b), 1, Seq(()), (Var("s"),))
    x, y = Value("x", f32(Var("n"))), Value("y", f32(Var("n")))

    def main(node: Any, ty: Any = None) -> Function:
        return Function("main", (x,), Block((Binding(Value("y", ty or y.type), node),), (y,)))

    verify_module(Module((main(CallTensor("k", (x,), (Const(3),))), k)))
    with pytest.raises(MlcError, match="2 symbolic args, it takes 1"):
        verify_module(Module((main(CallTensor("k", (x,), (Const(3), Const(4)))), k)))
    with pytest.raises(MlcError, match="2 inputs \\+ 1 outputs"):
        verify_module(Module((main(CallTensor("k", (x, x), (Const(3),))), k)))
    with pytest.raises(MlcError, match="is f32, got i32"):
        verify_module(Module((main(CallTensor("k", (x,), (Const(3),)), TensorType((Var("n"),), "i32")), k)))


@pytest.mark.parametrize("body, needle, message", [
    ("  %y: tensor<4 x f32> = relu(%x, %x)", "relu(", "takes 1 arguments, got 2"),
    ("  %y: tensor<4 x f32> = concat()  {axis = 0}", "concat", "takes 1.. arguments, got 0"),
    ("  %y: tensor<4 x f32> = softmax(%x) {dim = 0}", "softmax", "no attribute 'dim'"),
    ("  %y: tensor<2 x 2 x f32> = reshape(%x)", "reshape", "needs attribute 'shape'"),
    ("  %y: tensor<4 x f32> = nope(%x)", "nope", "unknown op 'nope'"),
    ("  %y: tensor<4 x i32> = relu(%x)", "relu", "dtype i32 vs f32"),
    ("  %y: tensor<4 x 1 x f32> = relu(%x)", "relu", "rank 2 vs rank 1"),
    ("  %y: tensor<8 x f32> = concat(%x, %x) {axis = 3}", "concat", "op concat:"),
    ("  %t: tuple<tensor<4 x f32>> = tuple(%x)\n  %y: tensor<5 x f32> = %t[0]", "%t[0]", "dim 0: 5 vs 4"),
    ("  %y: tensor<4 x f32> = const \"w\"", "const", "no constants file"),
    ("  %y: tensor<1.5 x f32> = relu(%x)", "%y", "dims must be integer expressions, got a f32 dim"),
    ("  %y: tensor<0 - 2 x f32> = relu(%x)", "%y", "negative dim -2"),
    ("  %y: tensor<4 x f32> = for %i: i64 in 0..3 carry(%h: tensor<4 x f32> = %x) {\n    %h2: tensor<4 x i8> = cast(%h) {dtype = \"i8\"}\n    yield %h2\n  }",
     "carry(", "yielded %h2 does not match carried %h"),
])
def test_graph_rule_violations_are_located(body: str, needle: str, message: str) -> None:
    text = H + "graph @main(%x: tensor<4 x f32>) {\n" + body + "\n  return %x\n}\n"
    e = _err(text)
    assert message in e.message
    assert e.loc is not None and e.loc.line == _line_of(text, needle)


# ---------------------------------------------------------------- tensor programs
P = H + "prim @f(%A: buffer<n x 8 x f32>, %B: buffer<n x 8 x f32>, %C: buffer<8 x i32>, k: i64) outputs 1 {\n"


@pytest.mark.parametrize("body, needle, message", [
    ("  %C[8] = 0:i32", "%C[8]", "out of bounds"),
    ("  %C[-1] = 0:i32", "%C[-1]", "out of bounds"),
    ("  %C[0, 0] = 0:i32", "%C[0, 0]", "has 1 dims, indexed with 2"),
    ("  %C[0] = 1.5", "%C[0]", "storing f32 into %C of dtype i32"),
    ("  %C[0.5] = 0:i32", "%C[0.5]", "must be an integer"),
    ("  for i in 0..8 {\n    for i in 0..8 {\n    }\n  }", "    for i", "already bound"),
    ("  for i in 0..8 {\n  }\n  %C[i] = 0:i32", "%C[i]", "i is not bound here"),
    ("  let q = 2 {\n    block \"b\"(S v = k * 0 + q in 0..8) {\n    }\n  }", "block", "which is not an enclosing loop variable"),
    ("  for i in 0..4 {\n    block \"b\"(S v = i in 0..4) {\n      alloc %T: buffer<4 x f32>\n      %T[v] = 0.0\n    }\n  }\n  %B[0, 0] = %T[0]",
     "%B[0, 0]", "undefined buffer %T"),
    ("  for i in 0..4 {\n    block \"b\"(R v = i in 0..4) {\n      init {\n        %C[9] = 0:i32\n      }\n    }\n  }", "%C[9]", "out of bounds"),
    ("  block \"b\"(S v = 9 in 0..8) {\n  }", "block", "outside [0, 8)"),
    ("  block \"b\"(Q v = 0 in 0..8) {\n  }", "block", "must be S or R"),
    ("  for i in 0..8 thread \"threadIdx.x\" {\n    let j: i32 = i {\n    }\n  }", "let", "bound to a i64 value"),
    ("  for i in 0..8 {\n    if i < 2 && i {\n    }\n  }", "if i", "differ in dtype: bool vs i64"),
    ("  for i in 0..8 {\n    %C[i] = cast<i32>(select(i, 1.0, 2.0))\n  }", "select", "select condition must be bool"),
    ("  for i in 0..8.0 {\n  }", "for i", "loop extent must be an integer"),
    ("  for i in 0..8 parallel \"threadIdx.x\" {\n  }", "for i", "thread tag"),
    ("  %C[0] = cast<i32>(!%A[0, 0])", "%C[0]", "! needs a bool operand"),
    ("  %C[0] = floordiv(1.0, 2.0)", "%C[0]", "floordiv needs integer operands"),
])
def test_prim_rule_violations_are_located(body: str, needle: str, message: str) -> None:
    text = P + body + "\n}\n"
    e = _err(text)
    assert message in e.message, e.render()
    assert e.loc is not None and e.loc.line == _line_of(text, needle), e.render()


def test_nested_blocks_may_bind_outer_iterators() -> None:
    _ok(P + "  for io in 0..2 {\n    block \"outer\"(S vo = io in 0..2) {\n      for ii in 0..4 {\n"
        "        block \"inner\"(S vi = vo * 4 + ii in 0..8) {\n          %C[vi] = cast<i32>(k)\n        }\n      }\n"
        "    }\n  }\n}\n")


def test_prim_built_directly_without_locations() -> None:
    a = Buffer("A", (Const(4),), "f32")
    i = Var("i")
    good = PrimFunc("f", (a,), 1, For(i, Const(0), Const(4), Store(a, (i,), Const(0.0, "f32"))))
    verify_module(Module((good,)))
    bad = PrimFunc("f", (a,), 1, For(i, Const(0), Const(4), Store(a, (i + 4,), Const(0.0, "f32"))))
    verify_module(Module((bad,)))  # i + 4 is not a constant: not provably out of bounds
    worse = PrimFunc("f", (a,), 1, Store(a, (Const(4),), Const(0.0, "f32")))
    with pytest.raises(MlcError, match="out of bounds"):
        verify_module(Module((worse,)))
    other = Buffer("A", (Const(5),), "f32")
    mismatch = PrimFunc("f", (a,), 1, Store(other, (Const(0),), Const(0.0, "f32")))
    with pytest.raises(MlcError, match="does not match its declaration"):
        verify_module(Module((mismatch,)))


# ---------------------------------------------------------------- random well-formed programs
DT = ("f32", "f64", "i32", "i64")


@st.composite
def kernels(draw: Any) -> PrimFunc:
    """A random elementwise or reduction kernel: loops, a block, loads, an expression, a store."""
    rank = draw(st.integers(1, 3))
    dims = tuple(draw(st.sampled_from([Const(draw(st.integers(1, 6))), Var("n"), Var("m")])) for _ in range(rank))
    dt = draw(st.sampled_from(DT))
    ins = tuple(Buffer(f"in{j}", dims, dt) for j in range(draw(st.integers(1, 3))))
    reduce = draw(st.booleans()) and rank > 1
    out_dims = dims[:-1] if reduce else dims
    out = Buffer("out", out_dims, dt)
    loops = [Var(f"i{d}") for d in range(rank)]
    iters = tuple(
        IterVar(Var(f"v{d}"), dims[d], "R" if reduce and d == rank - 1 else "S", loops[d]) for d in range(rank)
    )
    vs = [it.var for it in iters]
    val: Any = Load(ins[0], tuple(vs))
    for b in ins[1:]:
        op = draw(st.sampled_from(["add", "sub", "mul", "max", "min"]))
        val = Bin(op, val, Load(b, tuple(vs)))
    if draw(st.booleans()):
        val = Bin("add", val, Cast(dt, Bin("floormod", vs[0], Const(3))))
    out_idx = tuple(vs[:-1] if reduce else vs)
    init = Store(out, out_idx, Const(0, dt)) if reduce else None
    if reduce:
        val = Bin("add", Load(out, out_idx), val)
    body: Any = BlockStmt("k", iters, Store(out, out_idx, val), init)
    for d in reversed(range(rank)):
        kind = draw(st.sampled_from(["serial", "parallel", "unrolled"]))
        body = For(loops[d], Const(0), dims[d], body, kind)
    if draw(st.booleans()):
        body = Let(Var("t"), Const(1), Seq((body,)))
    return PrimFunc("kernel", ins + (out,), 1, body)


@settings(max_examples=40, deadline=None)
@given(kernels(), st.integers(0, 2))
def test_random_kernels_verify_and_faults_are_caught(f: PrimFunc, fault: int) -> None:
    m = Module((f,))
    verify_module(m)
    text = print_module(m)
    assert parse_module(text) == m
    verify_module(parse_module(text, "k.ir"), text)
    if fault == 0:  # a store of the wrong dtype
        dt = f.params[-1].dtype
        bad = text.replace(f"{dt}>) outputs", f"{'i8' if dt != 'i8' else 'f32'}>) outputs", 1)
    elif fault == 1:  # a constant index out of bounds
        bad = text.replace("%in0[v0", "%in0[-1", 1)
    else:  # an iterator bound to a name that is not a loop variable
        bad = text.replace("= i0 in", "= zz in", 1)
    if bad == text:
        return
    with pytest.raises(MlcError) as info:
        verify_module(parse_module(bad, "k.ir"), bad)
    assert info.value.loc is not None and info.value.loc.line > 0


@st.composite
def graph_programs(draw: Any) -> Function:
    """A random graph function over registered elementwise ops, with if/else and a carried loop."""
    n = Var("n")
    t = TensorType((n, Const(4)), "f32")
    x, c = Value("x", t), Value("c", ScalarType("bool"))
    k = 0

    def fresh() -> Value:
        nonlocal k
        k += 1
        return Value(f"v{k}", t)

    def block(scope: list[Value], depth: int, size: int) -> tuple[list[Binding], list[Value]]:
        scope = list(scope)
        out: list[Binding] = []
        for _ in range(size):
            kind = draw(st.sampled_from(["unary", "binary", "binary"] + (["if", "loop"] if depth else [])))
            v = fresh()
            if kind == "unary":
                node: Any = OpCall(draw(st.sampled_from(["relu", "exp", "tanh", "neg"])), (draw(st.sampled_from(scope)),))
            elif kind == "binary":
                node = OpCall(draw(st.sampled_from(["add", "mul", "sub", "maximum"])),
                              (draw(st.sampled_from(scope)), draw(st.sampled_from(scope))))
            elif kind == "if":
                tb, tr = block(scope, depth - 1, draw(st.integers(0, 2)))
                eb, er = block(scope, depth - 1, draw(st.integers(0, 2)))
                node = If(c, Block(tuple(tb), (draw(st.sampled_from(tr or scope)),)),
                          Block(tuple(eb), (draw(st.sampled_from(er or scope)),)))
            else:
                idx, h = Value(f"i{k}", ScalarType("i64")), Value(f"h{k}", t)
                lb, lr = block(scope + [h], depth - 1, draw(st.integers(0, 2)))
                node = Loop(idx, Const(draw(st.integers(1, 4))), (h,), (draw(st.sampled_from(scope)),),
                            Block(tuple(lb), (draw(st.sampled_from(lr or [h])),)))
            out.append(Binding(v, node))
            scope.append(v)
        return out, [b.var for b in out]

    bindings, defined = block([x], 2, draw(st.integers(1, 5)))
    return Function("main", (x, c), Block(tuple(bindings), (defined[-1],)))


@settings(max_examples=40, deadline=None)
@given(graph_programs())
def test_random_graph_programs_verify_and_type_faults_are_caught(f: Function) -> None:
    m = Module((f,))
    verify_module(m)
    text = print_module(m)
    assert parse_module(text) == m
    lines = text.split("\n")
    ops = [i for i, line in enumerate(lines) if re.match(r"\s*%v\d+: tensor<n x 4 x f32> = [a-z]+\(%", line)]
    if not ops:
        return
    target = ops[len(ops) // 2]
    lines[target] = lines[target].replace("tensor<n x 4 x f32>", "tensor<n x 5 x f32>", 1)
    bad = "\n".join(lines)
    with pytest.raises(MlcError, match="dim 1: 5 vs 4") as info:
        verify_module(parse_module(bad, "g.ir"), bad)
    assert info.value.loc is not None and info.value.loc.line == target + 1


def test_errors_without_source_text_read_the_named_file(tmp_path: Any) -> None:
    path = tmp_path / "bad.ir"
    text = H + "graph @main(%x: tensor<4 x f32>) {\n  %y: tensor<4 x i8> = relu(%x)\n  return %y\n}\n"
    path.write_text(text)
    with pytest.raises(MlcError) as info:
        verify_module(parse_module(text, str(path)))
    assert info.value.render() == (
        f"{path}:3:24: error: @main: declared type of op relu result contradicts its inferred type: dtype i8 vs f32\n"
        "  %y: tensor<4 x i8> = relu(%x)\n"
        "                       ^"
    )
