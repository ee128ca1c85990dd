"""The reference interpreter against plain numpy/scipy, on both its vectorised and scalar paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlc.ir import BlockStmt, Const, For, IfStmt, IterVar, Load, MlcError, PrimFunc, Seq, Store, Var
from mlc.ir.expr import INTRINSICS, Bin, Call, Cast, Select
from mlc.ir.tir import Buffer, Let
from mlc.ir.tir_builder import (
    all_of,
    build,
    call,
    cast,
    cmp,
    compute,
    div,
    exp,
    fconst,
    maximum,
    placeholder,
    reduce_axis,
    rmax,
    rmin,
    rprod,
    rsum,
    select,
)
from mlc.ir.tir_interp import run_prim

RNG = np.random.default_rng(0)


def matmul_func(n: object = 32, k: int = 24, m: int = 16) -> PrimFunc:
    A = placeholder("A", (n, k))
    B = placeholder("B", (k, m))
    r = reduce_axis(k, "k")
    C = compute("C", (n, m), lambda i, j: rsum(A[i, r] * B[r, j], r))
    return build("matmul", [A, B], [C])


def conv_func(N: int = 2, C: int = 3, H: int = 7, W: int = 6, K: int = 4, R: int = 3) -> PrimFunc:
    data = placeholder("data", (N, C, H, W))
    weight = placeholder("weight", (K, C, R, R))
    p = R // 2
    pad = compute("pad", (N, C, H + 2 * p, W + 2 * p), lambda n, c, h, w: select(
        all_of(cmp("ge", h, p), cmp("lt", h, H + p), cmp("ge", w, p), cmp("lt", w, W + p)),
        data[n, c, h - p, w - p], fconst(0.0)))
    rc, rh, rw = reduce_axis(C, "rc"), reduce_axis(R, "rh"), reduce_axis(R, "rw")
    conv = compute("conv", (N, K, H, W), lambda n, k, h, w: rsum(pad[n, rc, h + rh, w + rw] * weight[k, rc, rh, rw], [rc, rh, rw]))
    out = compute("relu", (N, K, H, W), lambda n, k, h, w: maximum(conv[n, k, h, w], fconst(0.0)))
    return build("conv2d", [data, weight], [out])


def softmax_func(n: object = 8, m: object = 10) -> PrimFunc:
    X = placeholder("X", (n, m))
    k1, k2 = reduce_axis(m, "k"), reduce_axis(m, "k")
    mx = compute("mx", (n,), lambda i: rmax(X[i, k1], k1))
    e = compute("e", (n, m), lambda i, j: exp(X[i, j] - mx[i]))
    s = compute("s", (n,), lambda i: rsum(e[i, k2], k2))
    y = compute("y", (n, m), lambda i, j: div(e[i, j], s[i]))
    return build("softmax", [X], [y])


def np_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    p = w.shape[2] // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    H, W = x.shape[2:]
    out = np.zeros((x.shape[0], w.shape[0], H, W), np.float64)
    for a in range(w.shape[2]):
        for b in range(w.shape[3]):
            out += np.einsum("nchw,kc->nkhw", xp[:, :, a:a + H, b:b + W], w[:, :, a, b])
    return np.maximum(out, 0)


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("vectorize", [True, False])
def test_matmul(vectorize: bool) -> None:
    a, b = RNG.standard_normal((32, 24), np.float32), RNG.standard_normal((24, 16), np.float32)
    c = np.zeros((32, 16), np.float32)
    run_prim(matmul_func(), [a, b, c], vectorize=vectorize)
    assert c.dtype == np.float32
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


def test_matmul_256_is_fast_enough() -> None:
    a, b = RNG.standard_normal((256, 256), np.float32), RNG.standard_normal((256, 256), np.float32)
    c = np.zeros((256, 256), np.float32)
    run_prim(matmul_func(256, 256, 256), [a, b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("vectorize", [True, False])
def test_conv2d_nchw(vectorize: bool) -> None:
    f = conv_func() if vectorize else conv_func(1, 2, 4, 3, 2)
    x = RNG.standard_normal(tuple(int(d.value) for d in f.params[0].shape), np.float32)  # type: ignore[attr-defined]
    w = RNG.standard_normal(tuple(int(d.value) for d in f.params[1].shape), np.float32)  # type: ignore[attr-defined]
    out = np.zeros((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), np.float32)
    run_prim(f, [x, w, out], vectorize=vectorize)
    np.testing.assert_allclose(out, np_conv(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vectorize", [True, False])
def test_softmax_symbolic_two_sizes(vectorize: bool) -> None:
    n, m = Var("n"), Var("m")
    f = softmax_func(n, m)
    for shape in [(3, 5), (6, 2)]:
        x = RNG.standard_normal(shape, np.float32)
        y = np.zeros(shape, np.float32)
        run_prim(f, [x, y], vectorize=vectorize)
        np.testing.assert_allclose(y, np_softmax(x), rtol=1e-5, atol=1e-6)


def test_symbolic_dim_mismatch_names_the_dim() -> None:
    f = matmul_func(Var("n"), 4, 3)
    a, b = np.zeros((5, 4), np.float32), np.zeros((4, 3), np.float32)
    with pytest.raises(MlcError, match=r"buffer C dim 0: n = 4 but A says n = 5"):
        run_prim(f, [a, b, np.zeros((4, 3), np.float32)])
    with pytest.raises(MlcError, match="expected dtype f32"):
        run_prim(f, [a.astype(np.float64), b, np.zeros((5, 3), np.float32)])
    with pytest.raises(MlcError, match="takes 3 buffers"):
        run_prim(f, [a, b])


@pytest.mark.parametrize("op", ["sum", "max", "min", "prod"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_reductions(op: str, vectorize: bool) -> None:
    X = placeholder("X", (4, 5, 6))
    r0, r2 = reduce_axis(4, "r0"), reduce_axis(6, "r2")
    red = {"sum": rsum, "max": rmax, "min": rmin, "prod": rprod}[op]
    Y = compute("Y", (5,), lambda j: red(X[r0, j, r2], [r0, r2]))
    f = build("red", [X], [Y])
    x = RNG.uniform(0.5, 1.5, (4, 5, 6)).astype(np.float32)
    y = np.zeros(5, np.float32)
    run_prim(f, [x, y], vectorize=vectorize)
    want = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[op](x, axis=(0, 2))
    np.testing.assert_allclose(y, want, rtol=1e-5)


def test_integer_reduction_with_init_and_floor_semantics() -> None:
    X = placeholder("X", (7, 3), "i32")
    r = reduce_axis(3, "r")
    Y = compute("Y", (7,), lambda i: rsum(X[i, r] // 3 + X[i, r] % 4, r, init=Const(5, "i32")), "i32")
    f = build("ired", [X], [Y])
    x = RNG.integers(-20, 20, (7, 3)).astype(np.int32)
    y = np.zeros(7, np.int32)
    run_prim(f, [x, y])
    want = np.array([5 + sum(int(v) // 3 + int(v) % 4 for v in row) for row in x])
    np.testing.assert_array_equal(y, want)


def test_int_div_truncates_and_float_div_is_true_division() -> None:
    X = placeholder("X", (6,), "i64")
    Y = compute("Y", (6,), lambda i: div(X[i], Const(4)))
    F = placeholder("F", (6,))
    G = compute("G", (6,), lambda i: div(F[i], fconst(4.0)))
    f, g = build("idiv", [X], [Y]), build("fdiv", [F], [G])
    x = np.array([-9, -4, -1, 0, 5, 9], np.int64)
    y = np.zeros(6, np.int64)
    run_prim(f, [x, y])
    np.testing.assert_array_equal(y, [math.trunc(v / 4) for v in x])
    fx, gy = x.astype(np.float32), np.zeros(6, np.float32)
    run_prim(g, [fx, gy])
    np.testing.assert_allclose(gy, fx / 4)


@pytest.mark.parametrize("name", [n for n in INTRINSICS if n != "check_range"])  # that one: test_index_checks.py
def test_intrinsics(name: str) -> None:
    x = np.array([-2.5, -0.5, 0.25, 0.5, 1.5, 2.5, 3.0], np.float32)
    if name in ("log", "sqrt", "rsqrt"):
        x = np.abs(x) + np.float32(0.1)
    X = placeholder("X", (7,))
    Y = compute("Y", (7,), lambda i: call(name, X[i]), "f32")
    y = np.zeros(7, np.float32)
    run_prim(build("intr", [X], [Y]), [x, y])
    ref = {
        "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda v: 1 / np.sqrt(v), "tanh": np.tanh,
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "erf": np.vectorize(math.erf), "abs": np.abs, "neg": np.negative,
        "floor": np.floor, "ceil": np.ceil, "round": np.vectorize(lambda v: math.copysign(math.floor(abs(v) + 0.5), v)),
        "sin": np.sin, "cos": np.cos, "isnan": np.isnan,
    }[name](x.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def _prefix_sum() -> PrimFunc:
    """Y[i] = Y[i-1] + X[i] with a guard: a loop-carried dependency the vector path must not batch."""
    X, Y = Buffer("X", (Const(10),), "f32"), Buffer("Y", (Const(10),), "f32")
    i, v = Var("i"), Var("vi")
    upd = Store(Y, (v,), Bin("add", Load(Y, (Bin("sub", v, Const(1)),)), Load(X, (v,))))
    body = IfStmt(Bin("eq", v, Const(0)), Store(Y, (v,), Load(X, (v,))), upd)
    blk = BlockStmt("scan", (IterVar(v, Const(10), "S", i),), body)
    return PrimFunc("scan", (X, Y), 1, BlockStmt("root", (), For(i, Const(0), Const(10), blk)))


@pytest.mark.parametrize("vectorize", [True, False])
def test_loop_carried_dependency_falls_back(vectorize: bool) -> None:
    x, y = RNG.standard_normal(10).astype(np.float32), np.zeros(10, np.float32)
    run_prim(_prefix_sum(), [x, y], vectorize=vectorize)
    np.testing.assert_allclose(y, np.cumsum(x), rtol=1e-5, atol=1e-6)


def test_repeated_writes_keep_the_last_and_let_and_guard() -> None:
    X, Y = Buffer("X", (Const(12),), "f32"), Buffer("Y", (Const(3),), "f32")
    i, t = Var("i"), Var("t")
    st = Store(Y, (Bin("floormod", i, Const(3)),), Bin("mul", Var("t", "f32"), Const(2.0, "f32")))
    body = For(i, Const(0), Const(12), IfStmt(Bin("lt", i, Const(11)), Let(Var("t", "f32"), Load(X, (i,)), st)))
    f = PrimFunc("last", (X, Y), 1, body)
    assert t.name == "t"
    for vec in (True, False):
        x, y = np.arange(12, dtype=np.float32), np.zeros(3, np.float32)
        run_prim(f, [x, y], vectorize=vec)
        np.testing.assert_array_equal(y, [18.0, 20.0, 16.0])  # i = 9, 10, 8 are the last writes below 11


def test_out_of_bounds_names_buffer_and_index() -> None:
    X = placeholder("X", (4,))
    Y = compute("Y", (4,), lambda i: X[i + 1])
    f = build("oob", [X], [Y])
    for vec in (True, False):
        with pytest.raises(MlcError, match=r"buffer X dim 0 index 4 not in \[0, 4\)"):
            run_prim(f, [np.zeros(4, np.float32), np.zeros(4, np.float32)], vectorize=vec)


def test_scalar_params_and_casts() -> None:
    n, s = Var("n"), Var("s")
    X = placeholder("X", (n,), "i32")
    Y = compute("Y", (n,), lambda i: cast("f32", X[i] * cast("i32", s)) + fconst(0.5))
    f = build("scale", [X], [Y], scalars=[s])
    x, y = np.arange(5, dtype=np.int32), np.zeros(5, np.float32)
    run_prim(f, [x, y], {"s": 3})
    np.testing.assert_allclose(y, x * 3 + 0.5)
    with pytest.raises(MlcError, match="missing value for scalar parameter s"):
        run_prim(f, [x, y])


def test_padding_select_does_not_trip_bounds() -> None:
    X = placeholder("X", (5,))
    Y = compute("Y", (7,), lambda i: select(all_of(cmp("ge", i, 1), cmp("le", i, 5)), X[i - 1], fconst(-1.0)))
    x, y = np.arange(5, dtype=np.float32), np.zeros(7, np.float32)
    run_prim(build("pad1", [X], [Y]), [x, y])
    np.testing.assert_array_equal(y, [-1, 0, 1, 2, 3, 4, -1])


def test_chunked_large_domain_matches() -> None:
    import mlc.ir.tir_interp as ti

    old = ti.CHUNK
    ti.CHUNK = 64  # force chunking of outer loops and scalar outer iteration
    try:
        a, b = RNG.standard_normal((32, 24), np.float32), RNG.standard_normal((24, 16), np.float32)
        c = np.zeros((32, 16), np.float32)
        run_prim(matmul_func(), [a, b, c])
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)
    finally:
        ti.CHUNK = old


def test_seq_of_blocks_and_exp_max_relu() -> None:
    X = placeholder("X", (3, 4))
    E = compute("E", (3, 4), lambda i, j: exp(X[i, j]))
    R = compute("R", (3, 4), lambda i, j: maximum(E[i, j] - fconst(2.0), fconst(0.0)))
    f = build("ew", [X], [R])
    assert isinstance(f.body, BlockStmt) and isinstance(f.body.body, Seq) and f.body.alloc_buffers[0].name == "E"
    x, r = RNG.standard_normal((3, 4), np.float32), np.zeros((3, 4), np.float32)
    run_prim(f, [x, r])
    np.testing.assert_allclose(r, np.maximum(np.exp(x) - 2, 0), rtol=1e-6)
    assert Call("exp", (Const(1.0, "f32"),), "f32").dtype == "f32"


def test_rank_generic_compute_and_zero_dim_output() -> None:
    X = placeholder("X", (2, 3, 4))
    Y = compute("Y", (2, 3, 4), lambda *idx: X[idx] * fconst(2.0))
    r = [reduce_axis(d, f"r{d}") for d in (2, 3, 4)]
    Z = compute("Z", (), lambda: rsum(Y[r[0], r[1], r[2]], r))
    f = build("total", [X], [Z])
    x, z = RNG.standard_normal((2, 3, 4)).astype(np.float32), np.zeros((), np.float32)
    for vec in (True, False):
        run_prim(f, [x, z], vectorize=vec)
        np.testing.assert_allclose(z, 2 * x.sum(), rtol=1e-5)


def _expr_strategy():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    X, Y = placeholder("X", (6,), "i32"), placeholder("Y", (6,), "i32")
    i = Var("i")
    leaves = st.sampled_from([X[i], Y[i], X[(i + 1) % 6], Const(3, "i32"), Const(-2, "i32"), cast("i32", i)])

    def extend(children):  # type: ignore[no-untyped-def]
        binop = st.tuples(st.sampled_from(["add", "sub", "mul", "min", "max", "floordiv", "floormod"]), children, children)
        sel = st.tuples(st.just("select"), children, children)
        return st.one_of(
            binop.map(lambda t: Bin(t[0], t[1], t[2]) if t[0] not in ("floordiv", "floormod")
                      else Bin(t[0], t[1], Const(3, "i32"))),
            sel.map(lambda t: Select(Bin("lt", t[1], t[2]), t[1], t[2])),
        )

    return X, Y, i, st.recursive(leaves, extend, max_leaves=8)


def test_vector_and_scalar_paths_agree_on_random_expressions() -> None:
    from hypothesis import given, settings

    X, Y, i, exprs = _expr_strategy()

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(exprs)
    def check(e: object) -> None:
        out = placeholder("Z", (6,), "i32")
        blk = BlockStmt("z", (IterVar(Var("vi"), Const(6), "S", i),),
                        Store(out.buffer, (Var("vi"),), _rename(e, i, Var("vi"))))  # type: ignore[arg-type]
        f = PrimFunc("rand", (X.buffer, Y.buffer, out.buffer), 1, For(i, Const(0), Const(6), blk))
        x = np.array([5, -7, 0, 12, -1, 3], np.int32)
        y = np.array([-4, 9, 2, -3, 8, 1], np.int32)
        a, b = np.zeros(6, np.int32), np.zeros(6, np.int32)
        run_prim(f, [x, y, a])
        run_prim(f, [x, y, b], vectorize=False)
        np.testing.assert_array_equal(a, b)
        # and against Python's own integer semantics, element by element
        for k in range(6):
            assert a[k] == np.int32(_py_eval(e, k, x, y))  # type: ignore[arg-type]

    check()


def _rename(e: object, old: Var, new: Var) -> object:
    from mlc.ir.expr import substitute

    return substitute(e, {old: new})  # type: ignore[arg-type]


def _py_eval(e: object, k: int, x: np.ndarray, y: np.ndarray) -> int:
    """Plain-Python integer semantics (floor division/modulo), an oracle independent of numpy."""
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Load):
        idx = _py_eval(e.indices[0], k, x, y)
        return int((x if e.buffer.name == "X" else y)[idx])
    if isinstance(e, Var):
        return k

    if isinstance(e, Cast):
        return _py_eval(e.a, k, x, y)
    if isinstance(e, Select):
        return _py_eval(e.t, k, x, y) if _py_eval(e.cond, k, x, y) else _py_eval(e.f, k, x, y)
    assert isinstance(e, Bin)
    a, b = _py_eval(e.a, k, x, y), _py_eval(e.b, k, x, y)
    ops = {"add": a + b, "sub": a - b, "mul": a * b, "min": min(a, b), "max": max(a, b), "lt": int(a < b)}
    if e.op in ops:
        return ops[e.op]
    return a // b if e.op == "floordiv" else a % b


def test_init_on_a_reversed_reduce_loop_follows_sequential_semantics() -> None:
    """With k bound to 3 - r the init (k == 0) runs at the LAST iteration: the vector path must not
    assume it comes first."""
    X, Y = Buffer("X", (Const(4),), "f32"), Buffer("Y", (Const(1),), "f32")
    r, vk = Var("r"), Var("vk")
    upd = Store(Y, (Const(0),), Bin("add", Load(Y, (Const(0),)), Load(X, (vk,))))
    blk = BlockStmt("acc", (IterVar(vk, Const(4), "R", Bin("sub", Const(3), r)),), upd,
                    Store(Y, (Const(0),), Const(0.0, "f32")))
    f = PrimFunc("rev", (X, Y), 1, For(r, Const(0), Const(4), blk))
    x = np.array([1, 2, 4, 8], np.float32)
    for vec in (True, False):
        y = np.zeros(1, np.float32)
        run_prim(f, [x, y], vectorize=vec)
        assert y[0] == 1.0  # reset at k == 0 (the last iteration), then X[0] added
