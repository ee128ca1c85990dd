"""CPU codegen through llvmlite: compiled kernels against numpy, for every loop kind and dtype."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.codegen.cpu import host_target
from mlc.codegen.llvm import kernel_signature, lower_to_llvm
from mlc.ir import (
    Bin,
    BlockStmt,
    Buffer,
    Call,
    Cast,
    Const,
    For,
    IfStmt,
    IterVar,
    Let,
    Load,
    MlcError,
    PrimFunc,
    Select,
    Seq,
    Store,
    Var,
)
from mlc.ir.dtype import to_numpy
from mlc.ir.expr import INTRINSICS
from mlc.runtime.cpu import compile_module, link_object
from mlc.runtime.parallel import get_num_threads, set_num_threads

RNG = np.random.default_rng(0)
n, m = Var("n"), Var("m")


def loops(vars_exts: list[tuple[Var, object]], body, kinds: dict[str, str] | None = None):
    """Nest `for v in 0..ext` loops (outermost first); `kinds` maps var names to loop kinds."""
    kinds = kinds or {}
    for v, ext in reversed(vars_exts):
        body = For(v, Const(0), ext if not isinstance(ext, int) else Const(ext), body, kind=kinds.get(v.name, "serial"))
    return body


def matmul_func(name: str, kinds: dict[str, str] | None = None, dtype: str = "f32") -> PrimFunc:
    K = Const(33)
    A, B, C = Buffer("A", (n, K), dtype), Buffer("B", (K, m), dtype), Buffer("C", (n, m), dtype)
    i, j, k = Var("i"), Var("j"), Var("k")
    vi, vj, vk = Var("vi"), Var("vj"), Var("vk")
    blk = BlockStmt("C", (IterVar(vi, n, "S", i), IterVar(vj, m, "S", j), IterVar(vk, K, "R", k)),
                    Store(C, (vi, vj), Load(C, (vi, vj)) + Load(A, (vi, vk)) * Load(B, (vk, vj))),
                    init=Store(C, (vi, vj), Const(0, dtype) if dtype[0] == "i" else Const(0.0, dtype)))
    return PrimFunc(name, (A, B, C), 1, loops([(i, n), (j, m), (k, K)], blk, kinds))


def test_matmul_symbolic_dims_one_kernel():
    f = matmul_func("mm")
    assert kernel_signature(f) == ["n", "m"]
    lib = compile_module([f])
    for nn, mm in ((1, 1), (7, 19), (32, 5)):
        a, b = RNG.random((nn, 33), "f4"), RNG.random((33, mm), "f4")
        c = np.full((nn, mm), np.nan, "f4")
        lib.kernel("mm")([a, b, c])
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kinds", [
    {"i": "parallel"}, {"j": "vectorized"}, {"i": "parallel", "j": "vectorized"}, {"k": "unrolled"},
    {"i": "parallel", "j": "vectorized", "k": "unrolled"}, {"k": "vectorized"}, {"i": "unrolled", "j": "unrolled"},
])
def test_annotated_loops_match_serial(kinds):
    fs = [matmul_func("ser"), matmul_func("ann", kinds), matmul_func("iser", dtype="i32"),
          matmul_func("iann", kinds, dtype="i32")]
    lib = compile_module(fs)
    for nn, mm in ((5, 16), (13, 37), (200, 180)):  # the last is big enough for the thread pool
        a, b = RNG.random((nn, 33), "f4"), RNG.random((33, mm), "f4")
        c1, c2 = np.zeros((nn, mm), "f4"), np.zeros((nn, mm), "f4")
        lib.kernel("ser")([a, b, c1])
        lib.kernel("ann")([a, b, c2])
        np.testing.assert_allclose(c2, c1, rtol=1e-5)
        np.testing.assert_allclose(c1, a @ b, rtol=1e-5)
        ia, ib = RNG.integers(-50, 50, (nn, 33), dtype="i4"), RNG.integers(-50, 50, (33, mm), dtype="i4")
        i1, i2 = np.zeros((nn, mm), "i4"), np.zeros((nn, mm), "i4")
        lib.kernel("iser")([ia, ib, i1])
        lib.kernel("iann")([ia, ib, i2])
        np.testing.assert_array_equal(i1, ia @ ib)
        np.testing.assert_array_equal(i2, i1)


def elementwise(name: str, dtype: str, fn, kind: str = "serial", out_dtype: str | None = None) -> PrimFunc:
    X, Y = Buffer("X", (n,), dtype), Buffer("Y", (n,), out_dtype or dtype)
    i = Var("i")
    return PrimFunc(name, (X, Y), 1, For(i, Const(0), n, Store(Y, (i,), fn(Load(X, (i,)))), kind=kind))


NP_INTRINSICS = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "abs": np.abs, "neg": np.negative, "floor": np.floor,
    "ceil": np.ceil, "round": np.round, "sin": np.sin, "cos": np.cos,
}


@pytest.mark.parametrize("dtype", ["f32", "f64", "f16"])
def test_intrinsics_scalar_and_vector(dtype):
    from scipy.special import erf
    table = dict(NP_INTRINSICS, erf=erf)
    assert set(table) | {"isnan", "check_range"} == set(INTRINSICS)  # check_range: tests/test_index_checks.py
    funcs = [elementwise(f"{nm}_{kind[0]}", dtype, lambda x, nm=nm: Call(nm, (x,), dtype), kind)
             for nm in table for kind in ("serial", "vectorized")]
    funcs += [elementwise(f"isnan_{kind[0]}", dtype, lambda x: Call("isnan", (x,), "bool"), kind, "bool")
              for kind in ("serial", "vectorized")]
    lib = compile_module(funcs)
    npdt = {"f32": "f4", "f64": "f8", "f16": "f2"}[dtype]
    x = (RNG.random(37) * 4 + 0.05).astype(npdt)
    x[3] = 2.5  # round half to even
    xs = np.concatenate([x, -x]).astype(npdt)
    tol = {"f32": 2e-6, "f64": 1e-12, "f16": 2e-3}[dtype]
    for nm, ref in table.items():
        inp = x if nm in ("log", "sqrt", "rsqrt") else xs
        want = ref(inp.astype("f8"))
        for kind in "sv":
            y = np.zeros_like(inp)
            lib.kernel(f"{nm}_{kind}")([inp, y])
            np.testing.assert_allclose(y.astype("f8"), want, rtol=tol, atol=tol, err_msg=f"{nm} {kind}")
    xn = xs.copy()
    xn[::3] = np.nan
    for kind in "sv":
        b = np.zeros(xn.shape, bool)
        lib.kernel(f"isnan_{kind}")([xn, b])
        np.testing.assert_array_equal(b, np.isnan(xn))


BIN_NP = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "min": np.minimum, "max": np.maximum}


@pytest.mark.parametrize("dtype", ["bool", "i8", "i16", "i32", "i64", "u8", "f16", "bf16", "f32", "f64"])
def test_all_dtypes(dtype):
    npdt = to_numpy(dtype)
    X, Y, Z = Buffer("X", (n,), dtype), Buffer("Y", (n,), dtype), Buffer("Z", (n,), dtype)
    F = Buffer("F", (n,), "f64")
    i = Var("i")
    funcs = []
    ops = ["and", "or"] if dtype == "bool" else list(BIN_NP)
    for op in ops:
        for kind in ("serial", "vectorized"):
            body = Store(Z, (i,), Bin(op, Load(X, (i,)), Load(Y, (i,))))
            funcs.append(PrimFunc(f"{op}_{kind[0]}", (X, Y, Z), 1, For(i, Const(0), n, body, kind=kind)))
        cmp = Store(Buffer("Q", (n,), "bool"), (i,), Bin("lt", Load(X, (i,)), Load(Y, (i,))))
    funcs.append(PrimFunc("lt", (X, Y, Buffer("Q", (n,), "bool")), 1, For(i, Const(0), n, cmp, kind="vectorized")))
    funcs.append(PrimFunc("tof64", (X, F), 1, For(i, Const(0), n, Store(F, (i,), Cast("f64", Load(X, (i,)))))))
    funcs.append(PrimFunc("fromf64", (F, X), 1, For(i, Const(0), n, Store(X, (i,), Cast(dtype, Load(F, (i,)))),
                                                     kind="vectorized")))
    lib = compile_module(funcs)
    size = 45
    if dtype == "bool":
        x, y = RNG.random(size) < 0.5, RNG.random(size) < 0.5
    elif npdt.kind in "iu":
        info = np.iinfo(npdt)
        x = RNG.integers(info.min, info.max, size, dtype=npdt, endpoint=True)
        y = RNG.integers(info.min, info.max, size, dtype=npdt, endpoint=True)
    else:
        x, y = (RNG.standard_normal(size) * 10).astype(npdt), (RNG.standard_normal(size) * 10).astype(npdt)
    for op in ops:
        want = {"and": np.logical_and, "or": np.logical_or}.get(op, BIN_NP.get(op))(x, y)
        for kind in "sv":
            z = np.zeros(size, npdt)
            lib.kernel(f"{op}_{kind}")([x, y, z])
            np.testing.assert_array_equal(z, want.astype(npdt), err_msg=f"{dtype} {op} {kind}")
    q = np.zeros(size, bool)
    lib.kernel("lt")([x, y, q])
    np.testing.assert_array_equal(q, x < y)
    f = np.zeros(size, "f8")
    lib.kernel("tof64")([x, f])
    np.testing.assert_array_equal(f, x.astype("f8"))
    back = np.zeros(size, npdt)
    exact = x // 4096 if dtype == "i64" else x  # values an f64 holds exactly
    lib.kernel("fromf64")([exact.astype("f8"), back])
    np.testing.assert_array_equal(back, exact)


@pytest.mark.parametrize("dtype", ["i8", "i32", "i64"])
def test_floordiv_floormod_negative(dtype):
    npdt = {"i8": "i1", "i32": "i4", "i64": "i8"}[dtype]
    X, Y, Q, R = (Buffer(s, (n,), dtype) for s in "XYQR")
    i = Var("i")
    funcs = []
    for kind in ("serial", "vectorized"):
        body = Seq((Store(Q, (i,), Bin("floordiv", Load(X, (i,)), Load(Y, (i,)))),
                    Store(R, (i,), Bin("floormod", Load(X, (i,)), Load(Y, (i,))))))
        funcs.append(PrimFunc(f"dm_{kind[0]}", (X, Y, Q, R), 2, For(i, Const(0), n, body, kind=kind)))
    lib = compile_module(funcs)
    x = np.array([-7, 7, -7, 7, 0, -1, 1, -100, 100, -6, 6, 5] * 3, npdt)
    y = np.array([2, -2, -2, 2, 3, 3, -3, 7, -7, 3, -3, 1] * 3, npdt)
    for kind in "sv":
        q, r = np.zeros_like(x), np.zeros_like(x)
        lib.kernel(f"dm_{kind}")([x, y, q, r])
        np.testing.assert_array_equal(q, x // y)
        np.testing.assert_array_equal(r, x % y)


@pytest.mark.parametrize("dtype", ["i8", "i32", "i64", "u8", "u32"])
def test_integer_pow_exact_wrapping_and_negative_exponents(dtype):
    """Integer pow once went through llvm.pow on f64 (inexact above 2**53; its vector form killed the
    process). Now square-and-multiply in the integers: numpy's wrapping results; e < 0 truncates."""
    npdt = to_numpy(dtype)
    X, E, Z = (Buffer(s, (n,), dtype) for s in "XEZ")
    i = Var("i")
    body = Store(Z, (i,), Bin("pow", Load(X, (i,)), Load(E, (i,))))
    lib = compile_module([PrimFunc(f"pw_{k[0]}", (X, E, Z), 1, For(i, Const(0), n, body, kind=k))
                          for k in ("serial", "vectorized")])
    info = np.iinfo(npdt)
    x = RNG.integers(max(info.min, -9), min(info.max, 9), 67).astype(npdt)
    e = RNG.integers(0, min(info.max, 70), 67).astype(npdt)
    x[:4], e[:4] = (3, 7, 2, 0), (40, 23, info.bits - 1, 0)  # wraps; large odd power; top bit; 0 ** 0
    with np.errstate(over="ignore"):
        want = np.power(x, e)
    for k in "sv":
        z = np.zeros_like(x)
        lib.kernel(f"pw_{k}")([x, e, z])
        np.testing.assert_array_equal(z, want)
    if info.min < 0:
        x = np.array([1, -1, -1, 2, 0, -3, 5] * 3, npdt)
        e = np.array([-3, -3, -2, -1, -2, -5, -64 if info.bits > 8 else -100] * 3, npdt)
        for k in "sv":
            z = np.zeros_like(x)
            lib.kernel(f"pw_{k}")([x, e, z])
            np.testing.assert_array_equal(z, np.array([1, -1, 1, 0, 0, 0, 0] * 3, npdt))


@pytest.mark.parametrize("dtype", ["i8", "i32", "i64", "u8", "u32"])
def test_integer_division_by_zero_and_overflow_do_not_trap(dtype):
    """x / 0 and INT_MIN / -1 killed the process with SIGFPE. Now: x / 0 = x // 0 = x % 0 = 0 (numpy's
    results) and INT_MIN / -1 = INT_MIN (the wrapped quotient), in serial and vector code."""
    npdt = to_numpy(dtype)
    info = np.iinfo(npdt)
    X, Y, D, Q, R = (Buffer(s, (n,), dtype) for s in "XYDQR")
    i = Var("i")
    funcs = []
    for kind in ("serial", "vectorized"):
        body = Seq((Store(D, (i,), Bin("div", Load(X, (i,)), Load(Y, (i,)))),
                    Store(Q, (i,), Bin("floordiv", Load(X, (i,)), Load(Y, (i,)))),
                    Store(R, (i,), Bin("floormod", Load(X, (i,)), Load(Y, (i,))))))
        funcs.append(PrimFunc(f"dz_{kind[0]}", (X, Y, D, Q, R), 3, For(i, Const(0), n, body, kind=kind)))
    lib = compile_module(funcs)
    x = np.array([7, info.min, info.max, 0, info.min, 5] * 4, npdt)
    y = np.array([0, 0, 0, 0, -1 if info.min else 3, 2] * 4, npdt)
    with np.errstate(all="ignore"):
        want_q, want_r = x // y, x % y
        want_d = np.where(y == 0, 0, np.trunc(x.astype(float) / np.where(y == 0, 1, y))).astype(npdt)
    if info.min:
        want_d[4::6] = info.min  # the wrapped quotient, not the float's
    for kind in "sv":
        d, q, r = np.ones_like(x), np.ones_like(x), np.ones_like(x)
        lib.kernel(f"dz_{kind}")([x, y, d, q, r])
        np.testing.assert_array_equal(q, want_q)
        np.testing.assert_array_equal(r, want_r)
        np.testing.assert_array_equal(d, want_d)


def test_f16_exp_and_sigmoid_match_numpy_exactly():
    """f16 exp/sigmoid go through libm in f32 and round once, as numpy does; the inline fast-math
    polynomials (fine in f32) left some f16 results 1 ulp off ONNX's reference."""
    X, Z = Buffer("X", (n,), "f16"), Buffer("Z", (n,), "f16")
    i = Var("i")
    funcs = [PrimFunc(f"{nm}_{k[0]}", (X, Z), 1, For(i, Const(0), n, Store(Z, (i,), Call(nm, (Load(X, (i,)),), "f16")),
                                                     kind=k))
             for nm in ("exp", "sigmoid") for k in ("serial", "vectorized")]
    lib = compile_module(funcs)
    x = np.arange(-10, 10, 1 / 64, dtype=np.float32).astype(np.float16)  # every f16 step of [-10, 10) by 1/64
    want = {"exp": np.exp(x.astype(np.float32)).astype(np.float16),
            "sigmoid": (1 / (1 + np.exp(-x.astype(np.float32)))).astype(np.float16)}
    for nm in want:
        for k in "sv":
            z = np.zeros_like(x)
            lib.kernel(f"{nm}_{k}")([x, z])
            np.testing.assert_array_equal(z, want[nm], err_msg=f"{nm} {k}")


def test_reductions_with_init_and_softmax():
    """Three blocks: row max, sum of exp (into block-allocated scratch) and normalise."""
    X, Y = Buffer("X", (n, m), "f32"), Buffer("Y", (n, m), "f32")
    MX, S = Buffer("MX", (n,), "f32"), Buffer("S", (Const(4),), "f32")
    i, j, j2, j3 = Var("i"), Var("j"), Var("j2"), Var("j3")
    vi, vj = Var("vi"), Var("vj")
    mx = BlockStmt("max", (IterVar(vi, n, "S", i), IterVar(vj, m, "R", j)),
                   Store(MX, (vi,), Bin("max", Load(MX, (vi,)), Load(X, (vi, vj)))),
                   init=Store(MX, (vi,), Const(-np.inf, "f32")))
    e = Call("exp", (Load(X, (vi, vj)) - Load(MX, (vi,)),), "f32")
    sm = BlockStmt("sum", (IterVar(vi, n, "S", i), IterVar(vj, m, "R", j2)),
                   Store(S, (Const(0),), Load(S, (Const(0),)) + e), init=Store(S, (Const(0),), Const(0.0, "f32")))
    nrm = BlockStmt("norm", (IterVar(vi, n, "S", i), IterVar(vj, m, "S", j3)),
                    Store(Y, (vi, vj), Bin("div", e, Load(S, (Const(0),)))))
    row = BlockStmt("row", (), Seq((For(j, Const(0), m, mx), For(j2, Const(0), m, sm),
                                    For(j3, Const(0), m, nrm, kind="vectorized"))), alloc_buffers=(S,))
    f = PrimFunc("softmax", (X, Y, MX), 2, For(i, Const(0), n, row, kind="parallel"))
    lib = compile_module([f])
    for shape in ((3, 5), (9, 100)):
        x = RNG.standard_normal(shape).astype("f4") * 3
        y, mxv = np.zeros(shape, "f4"), np.zeros(shape[0], "f4")
        lib.kernel("softmax")([x, y, mxv])
        np.testing.assert_array_equal(mxv, x.max(1))
        ex = np.exp(x - x.max(1, keepdims=True))
        np.testing.assert_allclose(y, ex / ex.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_malloc_scratch_and_let_if():
    """A symbolic-size block buffer (heap), Let, IfStmt with else, Select: y = cumulative clamp."""
    X, Y = Buffer("X", (n,), "f32"), Buffer("Y", (n,), "f32")
    T = Buffer("T", (n,), "f32")
    i, j, t = Var("i"), Var("j"), Var("t", "f32")
    fill = For(i, Const(0), n, Let(t, Load(X, (i,)) * Const(2.0, "f32"),
                                  IfStmt(Bin("gt", t, Const(1.0, "f32")), Store(T, (i,), t),
                                         Store(T, (i,), Select(Bin("lt", t, Const(-1.0, "f32")), Const(-1.0, "f32"), t)))))
    copy = For(j, Const(0), n, Store(Y, (j,), Load(T, (j,)) + Cast("f32", j)), kind="vectorized")
    f = PrimFunc("clamp", (X, Y), 1, BlockStmt("root", (), Seq((fill, copy)), alloc_buffers=(T,)))
    lib = compile_module([f])
    x = RNG.standard_normal(1000).astype("f4")
    y = np.zeros_like(x)
    lib.kernel("clamp")([x, y])
    t2 = x * 2
    want = np.where(t2 > 1, t2, np.where(t2 < -1, -1, t2)) + np.arange(1000, dtype="f4")
    np.testing.assert_array_equal(y, want)


def test_conv2d_nchw():
    N, CI, CO, H, W, KH = Const(2), Const(3), Const(4), n, n, Const(3)
    OH = Bin("sub", n, Const(2))
    X, Wt = Buffer("X", (N, CI, H, W), "f32"), Buffer("W", (CO, CI, KH, KH), "f32")
    Y = Buffer("Y", (N, CO, OH, OH), "f32")
    b, co, y, x, ci, r, s = (Var(v) for v in ("b", "co", "y", "x", "ci", "r", "s"))
    vb, vco, vy, vx, vci, vr, vs = (Var("v" + v) for v in ("b", "co", "y", "x", "ci", "r", "s"))
    blk = BlockStmt("conv", (IterVar(vb, N, "S", b), IterVar(vco, CO, "S", co), IterVar(vy, OH, "S", y),
                             IterVar(vx, OH, "S", x), IterVar(vci, CI, "R", ci), IterVar(vr, KH, "R", r),
                             IterVar(vs, KH, "R", s)),
                    Store(Y, (vb, vco, vy, vx), Load(Y, (vb, vco, vy, vx))
                          + Load(X, (vb, vci, vy + vr, vx + vs)) * Load(Wt, (vco, vci, vr, vs))),
                    init=Store(Y, (vb, vco, vy, vx), Const(0.0, "f32")))
    body = loops([(b, N), (co, CO), (y, OH), (x, OH), (ci, CI), (r, KH), (s, KH)], blk,
                 {"co": "parallel", "x": "vectorized", "s": "unrolled"})
    lib = compile_module([PrimFunc("conv", (X, Wt, Y), 1, body)])
    from scipy.signal import correlate
    for hw in (5, 12):
        xv, wv = RNG.standard_normal((2, 3, hw, hw)).astype("f4"), RNG.standard_normal((4, 3, 3, 3)).astype("f4")
        out = np.zeros((2, 4, hw - 2, hw - 2), "f4")
        lib.kernel("conv")([xv, wv, out])
        want = np.stack([np.stack([correlate(xv[bb], wv[o], mode="valid")[0] for o in range(4)]) for bb in range(2)])
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_vector_fallbacks_keep_serial_semantics():
    """A loop-carried dependence and a transposed (gather/scatter) access in `vectorized` loops."""
    A, B = Buffer("A", (n,), "i32"), Buffer("B", (n, n), "i32")
    T = Buffer("T", (n, n), "i32")
    i, j = Var("i"), Var("j")
    carried = For(i, Const(1), n - 1, Store(A, (i,), Load(A, (i - 1,)) + Const(1, "i32")), kind="vectorized")
    transp = For(i, Const(0), n, For(j, Const(0), Const(8), Store(T, (j, i), Load(B, (i, j)) * Const(3, "i32")),
                                     kind="vectorized"))
    lib = compile_module([PrimFunc("carried", (A,), 1, carried), PrimFunc("tr", (B, T), 1, transp)])
    a = np.zeros(40, "i4")
    lib.kernel("carried")([a])
    np.testing.assert_array_equal(a, np.r_[np.arange(40)].astype("i4"))
    bm = RNG.integers(-9, 9, (8, 8), dtype="i4")
    t = np.zeros((8, 8), "i4")
    lib.kernel("tr")([bm, t])
    np.testing.assert_array_equal(t, bm.T * 3)


def test_object_roundtrip_asm_and_thread_counts():
    f = matmul_func("mmv", {"i": "parallel", "j": "vectorized"})
    lib = compile_module([f])
    asm = lib.emit_asm()
    tgt = host_target()
    if tgt.has("fma"):
        assert "vfmadd" in asm
    assert ("zmm" if tgt.has("avx512f") else "ymm" if tgt.has("avx") else "xmm") in asm
    lib2 = link_object(lib.object_code)
    assert lib2.names == ["mmv"]
    a, b = RNG.random((9, 33), "f4"), RNG.random((33, 70), "f4")
    old = get_num_threads()
    try:
        for threads in (1, 3):
            set_num_threads(threads)
            c = np.zeros((9, 70), "f4")
            lib2.kernel("mmv")([a, b, c])
            np.testing.assert_allclose(c, a @ b, rtol=1e-5)
    finally:
        set_num_threads(old)


def test_nested_parallel_and_scalar_params():
    X = Buffer("X", (n, n), "i64")
    i, j, s = Var("i"), Var("j"), Var("s")
    body = For(i, Const(0), n, For(j, Const(0), n, Store(X, (i, j), i * s + j), kind="parallel"), kind="parallel")
    f = PrimFunc("np", (X,), 1, body, scalar_params=(s,))
    assert kernel_signature(f) == ["n", "s"]
    lib = compile_module([f])
    x = np.zeros((6, 6), "i8")
    lib.kernel("np")([x], {"s": 100})
    np.testing.assert_array_equal(x, np.arange(6)[:, None] * 100 + np.arange(6))


def test_user_errors():
    lib = compile_module([matmul_func("mm")])
    k = lib.kernel("mm")
    with pytest.raises(MlcError, match="shape"):
        k([np.zeros((3, 33), "f4"), np.zeros((33, 4), "f4"), np.zeros((3, 5), "f4")])
    with pytest.raises(MlcError, match="float32"):
        k([np.zeros((3, 33), "f8"), np.zeros((33, 4), "f4"), np.zeros((3, 4), "f4")])
    with pytest.raises(MlcError, match="no kernel"):
        lib.kernel("nope")
    Y = Buffer("Y", (n,), "f32")
    i = Var("i")
    bad = PrimFunc("bad", (Y,), 1, For(i, Const(0), n, Store(Y, (i,), Cast("f32", Var("q")))))
    with pytest.raises(MlcError, match="unbound variable %q"):
        lower_to_llvm([bad], host_target())
    with pytest.raises(MlcError, match="not an mlc kernel library"):
        link_object(compile_module_plain_object())


def compile_module_plain_object() -> bytes:
    """An object file that is valid code but carries no mlc metadata."""
    import llvmlite.binding as llvm
    tgt = host_target()
    mod = llvm.parse_assembly(f'target triple = "{tgt.triple}"\ndefine void @f() {{\n  ret void\n}}\n')
    return tgt.target_machine().emit_object(mod)


def test_benchmark_schedule_packed_register_tile():
    """The hand-scheduled matmul of the benchmark (packing, cache_write tile, floordiv/floormod indices)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_matmul_cpu.py"
    spec = importlib.util.spec_from_file_location("bench_matmul_cpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    f = mod.scheduled_matmul("mm", tm=4, tn=16)
    text = lower_to_llvm([f], host_target())
    # indices through floordiv/floormod of block iterators resolve to contiguous vectors: no per-lane gathers
    assert "<16 x float>" in text and "extractelement" not in text
    lib = compile_module([f])
    for size in (16, 48):
        a, b = RNG.standard_normal((size, size), dtype="f4"), RNG.standard_normal((size, size), dtype="f4")
        c = np.zeros((size, size), "f4")
        lib.kernel("mm")([a, b, c])
        np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_vectorized_loops_emit_vector_code():
    f = elementwise("ew", "f32", lambda x: Call("exp", (x,), "f32") * x, "vectorized")
    text = lower_to_llvm([f], host_target())
    assert "x float> " in text and "llvm.floor.v" in text  # exp is inline vector code (codegen/fastmath.py)
    g = elementwise("ew2", "f32", lambda x: x, "vectorized")
    j = Var("i")
    carried = PrimFunc("c", g.params, 1, For(j, Const(1), n - 1, Store(g.params[1], (j,), Load(g.params[1], (j - 1,))),
                                            kind="vectorized"))
    assert "llvm.loop.vectorize.enable" in lower_to_llvm([carried], host_target())


def test_vectorized_guarded_tail_and_lane_varying_if():
    """Split loops with a bounds guard and a data-dependent if/else run as masked vector code."""
    X, Y = Buffer("X", (n,), "f32"), Buffer("Y", (n,), "f32")
    jo, ji = Var("jo"), Var("ji")
    idx = jo * 16 + ji
    inner = IfStmt(Bin("lt", idx, n),
                   IfStmt(Bin("gt", Load(X, (idx,)), Const(0.0, "f32")),
                          Store(Y, (idx,), Call("exp", (Load(X, (idx,)),), "f32")),
                          Store(Y, (idx,), Load(X, (idx,)) * Const(-2.0, "f32"))))
    body = For(jo, Const(0), Bin("floordiv", n + 15, Const(16)), For(ji, Const(0), Const(16), inner, kind="vectorized"))
    f = PrimFunc("guarded", (X, Y), 1, body)
    text = lower_to_llvm([f], host_target())
    assert "llvm.masked.store" in text and "llvm.masked.load" in text
    lib = compile_module([f])
    for size in (1, 16, 37):
        x = RNG.standard_normal(size).astype("f4")
        y = np.zeros(size + 16, "f4")[:size]  # a view: writes past `size` would show up in the parent
        parent = y.base
        lib.kernel("guarded")([x, y])
        np.testing.assert_allclose(y, np.where(x > 0, np.exp(x), -2 * x), rtol=1e-6)
        assert not parent[size:].any()


def test_object_file_loads_in_fresh_process(tmp_path):
    """Object code written to disk runs in another process without the IR or a recompile."""
    import subprocess
    import sys
    X = Buffer("X", (n,), "f32")
    i = Var("i")
    body = For(i, Const(3), n - 3, Store(X, (i,), Call("sigmoid", (Cast("f32", i),), "f32")), kind="parallel")
    lib = compile_module([PrimFunc("fill", (X,), 1, body)])
    obj = tmp_path / "k.o"
    obj.write_bytes(lib.object_code)
    code = (
        "import sys, numpy as np\n"
        "from mlc.runtime.cpu import link_object\n"
        "lib = link_object(open(sys.argv[1], 'rb').read())\n"
        "x = np.zeros(11, 'f4'); lib.kernel('fill')([x])\n"
        "print(' '.join(repr(float(v)) for v in x))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(obj)], capture_output=True, text=True, check=True).stdout
    got = np.array([float(v) for v in out.split()], "f4")
    want = np.zeros(11, "f4")
    want[3:] = 1 / (1 + np.exp(-np.arange(3, 11, dtype="f4")))  # start 3, extent n - 3
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_masked_gather_and_scatter():
    """Under a lane mask, strided stores and reversed loads touch only active lanes' elements."""
    X, Y = Buffer("X", (n,), "i32"), Buffer("Y", (n * 2,), "i32")
    jo, ji = Var("jo"), Var("ji")
    idx = jo * 8 + ji
    inner = IfStmt(Bin("lt", idx, n), Store(Y, (idx * 2,), Load(X, (n - 1 - idx,)) + Const(1, "i32")))
    body = For(jo, Const(0), Bin("floordiv", n + 7, Const(8)), For(ji, Const(0), Const(8), inner, kind="vectorized"))
    f = PrimFunc("rev", (X, Y), 1, body)
    assert "x i32>" in lower_to_llvm([f], host_target())
    lib = compile_module([f])
    for size in (3, 8, 21):
        x = RNG.integers(-100, 100, size, dtype="i4")
        y = np.full(2 * size, -7, "i4")
        lib.kernel("rev")([x, y])
        want = np.full(2 * size, -7, "i4")
        want[::2] = x[::-1] + 1
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("name,ref,atol", [
    ("exp", np.exp, 1.2e-38), ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), 1e-7), ("tanh", np.tanh, 1e-7),
    ("erf", None, 3e-7),
])
@pytest.mark.parametrize("kind", ["serial", "vectorized"])
def test_fast_math_accuracy(name, ref, atol, kind):
    """Inline f32 forms against f64 numpy over a wide range, including the special values."""
    from scipy.special import erf

    ref = ref or erf
    f = elementwise(f"fm_{name}", "f32", lambda x: Call(name, (x,), "f32"), kind)
    lib = compile_module([f])
    x = np.concatenate([np.linspace(-100, 100, 20001), np.linspace(-1e-3, 1e-3, 101),
                        [0.0, -0.0, 88.7, 88.8, -87.3, -104.0, np.inf, -np.inf, np.nan]]).astype("f4")
    y = np.empty_like(x)
    lib.kernel(f"fm_{name}")([x, y])
    with np.errstate(over="ignore"):
        want = ref(x.astype("f8")).astype("f4")  # results below f32's normal range flush to 0
    np.testing.assert_allclose(y, want, rtol=3e-7 if name == "exp" else 2e-6, atol=atol, equal_nan=True)


def test_division_of_an_affine_sum_with_a_floormod_atom_stays_affine() -> None:
    # (32 * (f % 3) + j) // 32 == f % 3 and ... % 32 == j for j in [0, 32): the vector loop over j
    # reads 32 contiguous elements instead of gathering
    from mlc.codegen.vectorize import split_div
    from mlc.ir.expr import Bin, Const, Var

    f, j = Var("f"), Var("j")
    e = Bin("add", Bin("mul", Const(32), Bin("floormod", f, Const(3))), j)
    q, r = split_div(e, 32, {}, {j: (0, 32)})
    assert q == Bin("floormod", f, Const(3)) and r == j
    assert split_div(e, 32, {}, {j: (0, 33)}) is None  # j may carry into the quotient
    assert split_div(Bin("add", Bin("floormod", f, Const(40)), j), 32, {}, {j: (0, 1)}) is None


def test_prepared_call_checks_once_and_keeps_its_buffers() -> None:
    """`Kernel.prepare` (the tuning worker's timing loop): same checks as a call, then the native entry
    on the same buffers, which stay alive with the prepared call even when the caller drops them."""
    import gc

    from mlc.ir.tir_builder import build, compute, placeholder

    x = placeholder("x", (64, 16))
    f = build("double", [x], [compute("y", (64, 16), lambda i, j: x[i, j] * 2.0)])
    k = compile_module([f]).kernel("double")
    with pytest.raises(MlcError, match="must have shape"):
        k.prepare([np.ones((8, 16), np.float32), np.empty((64, 16), np.float32)])
    a = np.arange(64 * 16, dtype=np.float32).reshape(64, 16)
    out = np.empty_like(a)
    run = k.prepare([a.copy(), out])  # the input copy is referenced only by `run`
    gc.collect()
    run()
    np.testing.assert_array_equal(out, a * 2)
