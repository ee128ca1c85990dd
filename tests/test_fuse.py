"""fuse: grouping rules, one PrimFunc per group, and whole zoo models against the un-lowered graph."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlc.frontend import zoo
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import (
    Binding,
    Block,
    BlockStmt,
    CallTensor,
    Const,
    For,
    Function,
    If,
    Module,
    OpCall,
    PrimFunc,
    Seq,
    Stmt,
    TensorType,
    UnknownType,
    Value,
    Var,
    arith,
    attrs_of,
)
from mlc.ir.dtype import to_numpy
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.passes.fuse import count_calls
from mlc.passes.registry import PassContext, get_pass

N = Var("n")
F32 = "f32"


def run_pass(name: str, m: Module, ctx: PassContext | None = None, **opts: Any) -> Module:
    info = get_pass(name)
    assert info is not None
    return info.fn(m, ctx or PassContext(), **info.validate_options(opts))


def t(*shape: Any) -> TensorType:
    return TensorType(tuple(d if isinstance(d, Var) else Const(d) for d in shape), F32)


def graph(params: tuple[Value, ...], ops: list[tuple[str, str, tuple[str, ...], dict[str, Any]]],
          results: tuple[str, ...]) -> Module:
    """A graph from (result, op, arg names, attrs) rows."""
    env = {p.name: p for p in params}
    bs = []
    for name, op, args, attrs in ops:
        v = Value(name, UnknownType())
        bs.append(Binding(v, OpCall(op, tuple(env[a] for a in args), attrs_of(attrs))))
        env[name] = v
    return run_pass("shape-infer", Module((Function("main", params, Block(tuple(bs), tuple(env[r] for r in results))),)))


def calls(m: Module) -> list[CallTensor]:
    return [b.node for b in m.get("main").body.bindings if isinstance(b.node, CallTensor)]  # type: ignore[union-attr]


def same_results(a: Module, b: Module, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None) -> None:
    want, got = run_function(a, inputs, consts), run_function(b, inputs, consts)
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].shape == got[k].shape and want[k].dtype == got[k].dtype
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


X = Value("x", t(N, 8))
W = Value("w", t(8, 6))
B = Value("b", t(6))


def test_matmul_epilogue_is_one_kernel_with_internal_buffer() -> None:
    m = graph((X, W, B), [("mm", "matmul", ("x", "w"), {}), ("y", "add", ("mm", "b"), {}),
                          ("z", "relu", ("y",), {})], ("z",))
    f = run_pass("fuse", m)
    (c,) = calls(f)
    pf = f.get(c.func)
    assert isinstance(pf, PrimFunc) and pf.name == "fused_matmul_add_relu"
    assert [v.name for v in c.args] == ["x", "w", "b"]
    assert isinstance(pf.body, BlockStmt) and [a.name for a in pf.body.alloc_buffers] == ["matmul"]
    assert len(_nests(pf.body)) == 2  # the matmul nest, then one epilogue nest (add and relu inlined)
    same_results(m, f, {"x": rand(3, 8), "w": rand(8, 6, seed=1), "b": rand(6, seed=2)})


def test_diamond_of_elementwise_ops_fuses_into_one_inlined_nest() -> None:
    m = graph((X,), [("e", "exp", ("x",), {}), ("a", "sin", ("e",), {}), ("c", "cos", ("e",), {}),
                     ("y", "add", ("a", "c"), {}), ("s", "sum", ("y",), {"axes": (1,), "keepdims": False})], ("s",))
    f = run_pass("fuse", m)
    (c,) = calls(f)
    pf = f.get(c.func)
    assert isinstance(pf, PrimFunc)
    # exp has two readers inside the group, so it is materialised once; the rest is inlined into the reduction
    assert len(_nests(pf.body)) == 2
    same_results(m, f, {"x": rand(4, 8)})


def test_value_used_outside_is_a_group_boundary() -> None:
    m = graph((X,), [("e", "exp", ("x",), {}), ("l", "log", ("e",), {})], ("e", "l"))
    f = run_pass("fuse", m)
    assert len(calls(f)) == 2
    same_results(m, f, {"x": rand(2, 8)})


def test_two_contractions_never_share_a_kernel() -> None:
    w2 = Value("w2", t(6, 6))
    m = graph((X, W, w2), [("a", "matmul", ("x", "w"), {}), ("r", "relu", ("a",), {}),
                           ("b", "matmul", ("r", "w2"), {}), ("c", "tanh", ("b",), {})], ("c",))
    f = run_pass("fuse", m)
    assert [c.func for c in calls(f)] == ["fused_matmul_relu", "fused_matmul_tanh"]
    same_results(m, f, {"x": rand(3, 8), "w": rand(8, 6, seed=1), "w2": rand(6, 6, seed=2)})


def test_elementwise_producer_and_layout_fuse_into_reduction_consumers() -> None:
    m = graph((X, W), [("s", "sigmoid", ("x",), {}), ("tr", "transpose", ("w",), {"perm": (1, 0)}),
                       ("tt", "transpose", ("tr",), {"perm": (1, 0)}), ("mm", "matmul", ("s", "tt"), {})], ("mm",))
    f = run_pass("fuse", m)
    assert len(calls(f)) == 1
    same_results(m, f, {"x": rand(5, 8), "w": rand(8, 6, seed=1)})


def test_elementwise_chain_stays_out_of_a_convolution_unless_asked() -> None:
    """A pre-activation (batch norm -> relu -> conv, DenseNet) would be recomputed at every reuse of
    the conv's input: it is its own kernel, while pad (moves data only) and the epilogue still fuse;
    `prologue=true` restores the fused form."""
    x = Value("x", t(N, 4, 6, 6))
    w, bias = Value("w", t(5, 4, 3, 3)), Value("bias", t(5, 1, 1))
    sc, sh, mu, var = (Value(nm, t(4)) for nm in ("sc", "sh", "mu", "var"))
    m = graph((x, w, bias, sc, sh, mu, var), [
        ("bn", "batch_norm", ("x", "sc", "sh", "mu", "var"), {}), ("r", "relu", ("bn",), {}),
        ("p", "pad", ("x",), {"pads": (0, 0, 1, 1, 0, 0, 1, 1)}),
        ("c", "conv2d", ("r", "w"), {"pads": (1, 1, 1, 1)}), ("c2", "conv2d", ("p", "w"), {}),
        ("y", "add", ("c", "c2"), {}), ("z", "add", ("y", "bias"), {})], ("z",))
    f = run_pass("fuse", m)
    assert [c.func for c in calls(f)] == ["fused_batch_norm_relu", "fused_pad_conv2d", "fused_conv2d_add_add"]
    g = run_pass("fuse", m, prologue=True)
    assert [c.func for c in calls(g)] == ["fused_pad_conv2d", "fused_batch_norm_relu_conv2d_add_add"]
    ins = {"x": rand(2, 4, 6, 6), "w": rand(5, 4, 3, 3, seed=1), "bias": rand(5, 1, 1, seed=2), "sc": rand(4, seed=3),
           "sh": rand(4, seed=4), "mu": rand(4, seed=5), "var": np.abs(rand(4, seed=6)) + 0.5}
    same_results(m, f, ins)
    same_results(m, g, ins)


def test_opaque_ops_stay_alone_and_stats_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    m = graph((X,), [("a", "exp", ("x",), {}), ("s", "softmax", ("a",), {"axis": -1}), ("y", "neg", ("s",), {})], ("y",))
    ctx = PassContext()
    f = run_pass("fuse", m, ctx)
    assert [c.func for c in calls(f)] == ["exp", "softmax", "neg"]
    assert [d.severity for d in ctx.diagnostics] == ["info"]
    assert ctx.diagnostics[0].message.startswith("fuse: 3 ops -> 3 kernels (")
    assert capsys.readouterr().err == ""  # info is for `mlc -v`, not printed by default
    same_results(m, f, {"x": rand(3, 8)})


def test_fused_module_round_trips_through_text() -> None:
    m = graph((X, W, B), [("mm", "matmul", ("x", "w"), {}), ("y", "add", ("mm", "b"), {}),
                          ("z", "gelu", ("y",), {})], ("z",))
    f = run_pass("fuse", m)
    text = print_module(f)
    assert parse_module(text) == f and print_module(parse_module(text)) == text


# ---- zoo models ----------------------------------------------------------------------------------

SETTINGS: dict[str, list[dict[str, int]]] = {
    "mlp": [{"N": 1}, {"N": 3}],
    "resnext": [{"N": 1}, {"N": 2}],
    "inception": [{"N": 1}, {"N": 2}],
    "seq2seq": [{"S": 1, "N": 2}, {"S": 4, "N": 1}],
    "gpt_block": [{"B": 1, "T": 1}, {"B": 2, "T": 5}],
    "graphsage": [{"V": 1}, {"V": 5}],
}
MODELS = [n for n in zoo.NAMES if n != "default"]


def _zoo(name: str) -> tuple[Module, dict[str, np.ndarray]]:
    m, consts = import_onnx(zoo.build(name))
    return run_pass("shape-infer", m, PassContext(constants=consts)), consts


def _inputs(m: Module, env: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    fn = m.get("main")
    assert isinstance(fn, Function)
    rng = np.random.default_rng(seed)
    out = {}
    for p in fn.params:
        assert isinstance(p.type, TensorType) and p.type.shape is not None
        shape = [arith.evaluate(d, env) for d in p.type.shape]
        dt = to_numpy(p.type.dtype)
        out[p.name] = rng.integers(0, 10, shape).astype(dt) if dt.kind in "iu" else rng.standard_normal(shape).astype(dt)
    return out


def test_zoo_settings_cover_every_model() -> None:
    assert set(SETTINGS) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_zoo_fuse_and_lower_match_the_graph(name: str) -> None:
    m, consts = _zoo(name)
    fused, lowered = run_pass("fuse", m, strict=True), run_pass("lower", m, strict=True)
    for low in (fused, lowered):
        assert count_calls(low).ops == 0
        for pf in low.prim_functions():
            _assert_fast_path_shape(pf)
    for k, env in enumerate(SETTINGS[name]):
        assert {v.name for v in m.get("main").sym_vars()} == set(env)  # type: ignore[union-attr]
        inputs = _inputs(m, env, k)
        same_results(m, fused, inputs, consts)
        same_results(m, lowered, inputs, consts)


@pytest.mark.parametrize("name", ["gpt_block", "resnext"])
def test_zoo_fusion_at_least_halves_the_kernel_count(name: str) -> None:
    m, _ = _zoo(name)
    ops = count_calls(m).ops
    kernels = count_calls(run_pass("fuse", m)).kernels
    assert 2 * kernels <= ops, f"{name}: {ops} ops -> {kernels} kernels"


def _nests(s: Stmt) -> list[Stmt]:
    if isinstance(s, BlockStmt) and s.name == "root" and not s.iters:
        return _nests(s.body)
    if isinstance(s, Seq):
        return list(s.stmts)
    return [s]


def _assert_fast_path_shape(pf: PrimFunc) -> None:
    """Every nest is a perfect loop nest around exactly one block (what the interpreter vectorises)."""
    for nest in _nests(pf.body):
        while isinstance(nest, For):
            nest = nest.body
        assert isinstance(nest, BlockStmt) and not nest.alloc_buffers, pf.name
        assert not isinstance(nest.body, Seq | For | BlockStmt), pf.name


# ---- FileCheck-style tests: tests/passes/*.ir -----------------------------------------------------

PASS_DIR = Path(__file__).parent / "passes"


def filecheck(text: str, checks: list[tuple[str, str]]) -> None:
    """CHECK (in order), CHECK-NEXT (the following line), CHECK-NOT (absent up to the next match)."""
    lines = text.splitlines()
    pos, banned = 0, []
    for kind, pat in checks:
        if kind == "CHECK-NOT":
            banned.append(pat)
            continue
        if kind == "CHECK-NEXT":
            assert pos < len(lines) and pat in lines[pos], f"CHECK-NEXT: {pat!r} not on line {pos + 1}:\n{text}"
            hit = pos
        else:
            hit = next((i for i in range(pos, len(lines)) if pat in lines[i]), -1)
            assert hit >= 0, f"CHECK: {pat!r} not found after line {pos}:\n{text}"
        for b in banned:
            assert not any(b in ln for ln in lines[pos:hit]), f"CHECK-NOT: {b!r} found:\n{text}"
        banned, pos = [], hit + 1
    for b in banned:
        assert not any(b in ln for ln in lines[pos:]), f"CHECK-NOT: {b!r} found:\n{text}"


@pytest.mark.parametrize("path", sorted(PASS_DIR.glob("*.ir")), ids=lambda p: p.name)
def test_pass_filecheck(path: Path) -> None:
    src = path.read_text()
    run = re.search(r"^# RUN: (.+)$", src, re.M)
    assert run, f"{path.name}: no RUN line"
    checks = re.findall(r"^# (CHECK(?:-NEXT|-NOT)?): (.*)$", src, re.M)
    m = parse_module(src, str(path))
    for step in run.group(1).split("|"):
        name, *opts = step.split()
        kw = dict(o.lstrip("-").split("=", 1) for o in opts)
        m = run_pass(name, m, **kw)
    filecheck(print_module(m), checks)


def test_ops_inside_if_branches_are_fused() -> None:
    x = Value("x", t(N, 8))
    c = Value("c", TensorType((), "bool"))
    a, b, r = Value("a", UnknownType()), Value("b", UnknownType()), Value("r", UnknownType())
    then = Block((Binding(a, OpCall("exp", (x,))), Binding(b, OpCall("neg", (a,)))), (b,))
    a2, b2 = Value("a2", UnknownType()), Value("b2", UnknownType())
    other = Block((Binding(a2, OpCall("sum", (x,), attrs_of({"axes": (1,)}))), Binding(b2, OpCall("mul", (x, a2)))), (b2,))
    m = run_pass("shape-infer", Module((Function("main", (x, c), Block((Binding(r, If(c, then, other)),), (r,))),)))
    f = run_pass("fuse", m, strict=True)
    node = f.get("main").body.bindings[0].node  # type: ignore[union-attr]
    assert isinstance(node, If)
    assert [bd.node.func for bd in node.then_block.bindings] == ["fused_exp_neg"]  # type: ignore[union-attr]
    assert [bd.node.func for bd in node.else_block.bindings] == ["fused_sum_mul"]  # type: ignore[union-attr]
    for cond in (True, False):
        same_results(m, f, {"x": rand(3, 8), "c": np.array(cond)})


def test_graph_symbols_named_like_loop_variables() -> None:
    """Dims called i, k, v_i or in must not be captured by generated loop, iterator or buffer names."""
    syms = [Var(s) for s in ("i", "k", "v_i", "in")]
    x = Value("x", TensorType(tuple(syms), F32))
    m = graph((x,), [("e", "exp", ("x",), {}), ("s", "sum", ("e",), {"axes": (1, 3), "keepdims": False})], ("s",))
    f = run_pass("fuse", m)
    same_results(m, f, {"x": rand(2, 3, 4, 5)})


def test_extern_ops_are_fusion_boundaries() -> None:
    m = graph((X, W, B), [("mm", "matmul", ("x", "w"), {}), ("y", "add", ("mm", "b"), {}),
                          ("z", "relu", ("y",), {})], ("z",))
    f = run_pass("fuse", m, extern="matmul=blas.matmul")
    kinds = [type(bd.node).__name__ for bd in f.get("main").body.bindings]  # type: ignore[union-attr]
    assert kinds == ["CallExtern", "CallTensor"]
    same_results(m, f, {"x": rand(3, 8), "w": rand(8, 6, seed=1), "b": rand(6, seed=2)})


def _random_graph(seed: int) -> Module:
    """A random DAG over (n, 6) tensors: unary, broadcasting binary, reductions, matmuls, softmax."""
    rng = np.random.default_rng(seed)
    x, w, v = Value("x", t(N, 6)), Value("w", t(6, 6)), Value("v", t(6))
    rows: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []
    pool = ["x"]
    for k in range(int(rng.integers(4, 10))):
        a = pool[int(rng.integers(len(pool)))]
        name = f"t{k}"
        kind = int(rng.integers(7))
        if kind == 0:
            rows.append((name, str(rng.choice(["tanh", "sigmoid", "neg", "abs"])), (a,), {}))
        elif kind == 1:
            rows.append((name, str(rng.choice(["add", "mul", "maximum"])), (a, pool[int(rng.integers(len(pool)))]), {}))
        elif kind == 2:
            rows.append((name, "sub", (a, "v"), {}))
        elif kind == 3:
            rows.append((f"{name}r", str(rng.choice(["sum", "max"])), (a,), {"axes": (-1,), "keepdims": True}))
            rows.append((name, "add", (a, f"{name}r"), {}))
        elif kind == 4:
            rows.append((name, "matmul", (a, "w"), {}))
        elif kind == 5:
            rows.append((f"{name}t", "transpose", (a,), {"perm": (1, 0)}))
            rows.append((name, "transpose", (f"{name}t",), {"perm": (1, 0)}))
        else:
            rows.append((name, "softmax", (a,), {"axis": -1}))
        pool.append(name)
    extra = tuple(p for p in pool[1:-1] if rng.random() < 0.25)
    return graph((x, w, v), rows, extra + (pool[-1],))


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_fuse_correctly(seed: int) -> None:
    m = _random_graph(seed)
    f = run_pass("fuse", m, strict=True)
    st = count_calls(f)
    assert st.ops == 0 and st.kernels <= count_calls(m).ops
    for n in (1, 3):
        same_results(m, f, {"x": rand(n, 6, seed=seed), "w": rand(6, 6, seed=seed + 1) * 0.5, "v": rand(6, seed=seed + 2)})
