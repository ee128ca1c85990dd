"""Random executable modules of both levels: the interpreter gives the same results after a text round trip."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mlc.ir import Binding, Block, Const, Function, Module, OpCall, TensorType, Value, Var, attrs_of
from mlc.ir.interp import run_function
from mlc.ir.ops.registry import get
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.verify import verify_module
from mlc.passes.registry import PassContext, get_pass

n = Var("n")
UNARY = ["relu", "tanh", "sigmoid", "neg", "abs", "exp"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


@st.composite
def graph_modules(draw: st.DrawFn) -> Module:
    x = Value("x", TensorType((n, Const(4)), "f32"))
    w = Value("w", TensorType((Const(4), Const(4)), "f32"))
    pool = [x, w]
    bindings: list[Binding] = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "sum", "softmax", "transpose"]))
        a = draw(st.sampled_from(pool))
        attrs: dict = {}
        if kind == "unary":
            op, args = draw(st.sampled_from(UNARY)), [a]
        elif kind == "binary":
            b = draw(st.sampled_from([p for p in pool if _bcast_ok(a, p)] or [a]))
            op, args = draw(st.sampled_from(BINARY)), [a, b]
        elif kind == "matmul":
            op, args = "matmul", [a, w]
        elif kind == "sum":
            op, args, attrs = "sum", [a], {"axes": (-1,), "keepdims": True}
        elif kind == "softmax":
            op, args, attrs = "softmax", [a], {"axis": -1}
        else:
            op, args = "transpose", [a]
        assert isinstance(a.type, TensorType)
        if op == "matmul" and a.type.shape is not None and len(a.type.shape) == 2 and a.type.shape[1] != Const(4):
            continue
        ty = get(op).infer([v.type for v in args], attrs, None)  # type: ignore[union-attr]
        v = Value(f"v{i}", ty)
        bindings.append(Binding(v, OpCall(op, tuple(args), attrs_of(attrs))))
        pool.append(v)
    if not bindings:
        bindings.append(Binding(Value("v0", x.type), OpCall("relu", (x,))))
        pool.append(bindings[-1].var)
    fn = Function("main", (x, w), Block(tuple(bindings), (pool[-1],)))
    return Module((fn,))


def _bcast_ok(a: Value, b: Value) -> bool:
    return a.type == b.type or (isinstance(b.type, TensorType) and b.type.shape is not None and len(b.type.shape) <= 1)


def _inputs(seed: int, nval: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((nval, 4)).astype("float32"), "w": rng.standard_normal((4, 4)).astype("float32")}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@settings(max_examples=40, deadline=None)
@given(graph_modules(), st.integers(0, 1000))
def test_graph_roundtrip_keeps_semantics(m: Module, seed: int) -> None:
    verify_module(m)
    back = parse_module(print_module(m), "rt.ir")
    assert back == m
    for nval in (1, 3):
        _same(run_function(m, _inputs(seed, nval)), run_function(back, _inputs(seed, nval)))


@settings(max_examples=25, deadline=None)
@given(graph_modules(), st.integers(0, 1000), st.sampled_from(["lower", "fuse"]))
def test_tensor_program_roundtrip_keeps_semantics(m: Module, seed: int, how: str) -> None:
    """Both levels: the random graph lowered to tensor programs, printed, parsed, run again."""
    ctx = PassContext()
    info = get_pass(how)
    assert info is not None
    low = info.fn(m, ctx, **info.validate_options({}))
    assert low.prim_functions()
    text = print_module(low)
    back = parse_module(text, "rt.ir")
    assert print_module(back) == text
    verify_module(back)
    for nval in (2, 5):
        want = run_function(m, _inputs(seed, nval))
        _same(run_function(low, _inputs(seed, nval)), run_function(back, _inputs(seed, nval)))
        for k in want:
            np.testing.assert_allclose(run_function(back, _inputs(seed, nval))[k], want[k], rtol=1e-5, atol=1e-5)
