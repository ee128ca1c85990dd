"""The native thread pool (codegen/native_pool.py): parallel kernels give numpy's results with any
thread count, nested and concurrent launches, gathers, and in a forked child."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from mlc.codegen import llvm as llvm_codegen
from mlc.ir.expr import Const, Var
from mlc.ir.tir import Buffer, For, PrimFunc, Store
from mlc.ir.tir_builder import build, compute, placeholder
from mlc.runtime import parallel
from mlc.runtime.cpu import compile_module
from mlc.runtime.native_pool import load_pool

native = pytest.mark.skipif(parallel.native_pool() is None, reason="native pool unsupported here")


@pytest.fixture
def always_parallel(monkeypatch: pytest.MonkeyPatch):
    """Every parallel loop goes to the pool, however little work it has (read at lowering time)."""
    monkeypatch.setattr(llvm_codegen, "PARALLEL_MIN_WORK", 1)
    old = parallel.get_num_threads()
    yield
    parallel.set_num_threads(old)


def _row_kernel(name: str, kind: str = "parallel"):
    """Y[i, j] = X[i, j] * 2 + i, outer loop `kind`, inner serial."""
    n, m = Var("n"), Var("m")
    X, Y = Buffer("X", (n, m), "f32"), Buffer("Y", (n, m), "f32")
    i, j = Var("i"), Var("j")
    from mlc.ir.expr import Bin, Cast, Load
    val = Bin("add", Bin("mul", Load(X, (i, j)), Const(2.0, "f32")), Cast("f32", i))
    body = For(i, Const(0), n, For(j, Const(0), m, Store(Y, (i, j), val)), kind=kind)
    return compile_module([PrimFunc(name, (X, Y), 1, body)]).kernel(name)


@native
def test_launcher_is_native() -> None:
    assert parallel.launcher_address() == parallel.native_pool().launch_address


@native
@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("rows", [1, 2, 5, 64, 1000])
def test_results_any_threads_and_extent(always_parallel, threads: int, rows: int) -> None:
    k = _row_kernel("rows")
    parallel.set_num_threads(threads)
    x = np.random.default_rng(rows).standard_normal((rows, 13)).astype("f4")
    for _ in range(20):  # repeated launches reuse the same workers
        y = np.full_like(x, np.nan)
        k([x, y])
        np.testing.assert_array_equal(y, x * 2 + np.arange(rows, dtype="f4")[:, None])


@native
def test_nested_parallel_runs_inner_serially(always_parallel) -> None:
    n = Var("n")
    X = Buffer("X", (n, n), "i64")
    i, j = Var("i"), Var("j")
    body = For(i, Const(0), n, For(j, Const(0), n, Store(X, (i, j), i * 1000 + j), kind="parallel"),
               kind="parallel")
    k = compile_module([PrimFunc("nest", (X,), 1, body)]).kernel("nest")
    parallel.set_num_threads(2)
    x = np.zeros((37, 37), "i8")
    k([x])
    np.testing.assert_array_equal(x, np.arange(37)[:, None] * 1000 + np.arange(37))


@native
def test_concurrent_callers(always_parallel) -> None:
    """Kernels called from several Python threads at once: one gets the pool, the rest run serially."""
    k = _row_kernel("conc")
    parallel.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((257, 31)).astype("f4")
    want = x * 2 + np.arange(257, dtype="f4")[:, None]
    errors: list[str] = []

    def work() -> None:
        for _ in range(200):
            y = np.zeros_like(x)
            k([x, y])
            if not np.array_equal(y, want):
                errors.append("mismatch")

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


@native
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_workers(always_parallel) -> None:
    k = _row_kernel("forked")
    parallel.set_num_threads(2)
    x = np.ones((64, 8), "f4")
    y = np.zeros_like(x)
    k([x, y])  # workers exist in the parent now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        z = np.zeros_like(x)
        k([x, z])
        os._exit(0 if np.array_equal(z, x * 2 + np.arange(64, dtype="f4")[:, None]) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_gather_loads_match_numpy() -> None:
    """A vectorized loop over a constant-stride operand (a transposed read) loads lane by lane
    from base + k*stride: no gather, no vector of addresses."""
    a = placeholder("A", (64, 48))
    f = build("tcol", [a], [compute("C", (48, 64), lambda i, j: a[j, i] * 3.0)])
    from mlc.passes.schedule.rules import default_schedule
    lib = compile_module([default_schedule(f).func])
    x = np.random.default_rng(1).standard_normal((64, 48)).astype("f4")
    c = np.zeros((48, 64), "f4")
    lib.kernel("tcol")([x, c])
    np.testing.assert_allclose(c, x.T * 3.0, rtol=1e-6)
    ir = lib.llvm_ir()
    assert "llvm.masked.gather" not in ir and "insertelement" in ir


def test_load_pool_respects_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLC_PYTHON_POOL", "1")
    assert load_pool() is None
    if sys.platform.startswith("linux"):
        monkeypatch.delenv("MLC_PYTHON_POOL")
        assert load_pool() is not None


def test_spin_is_calibrated_to_time_not_iterations(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pause instruction's cost differs ~10x between CPU generations; the spin count is derived
    from a timed probe, and MLC_POOL_SPIN still overrides it."""
    import time

    from mlc.runtime.native_pool import calibrated_spin

    def probe(n: int) -> None:  # a "CPU" whose spin iteration takes 1 us
        end = time.perf_counter() + n * 1e-6
        while time.perf_counter() < end:
            pass

    assert 25 <= calibrated_spin(probe, 100e-6) <= 101
    assert calibrated_spin(probe, 1.0) >= 250_000
    if sys.platform.startswith("linux") and load_pool() is not None:
        assert load_pool()._spin.value >= 64
        monkeypatch.setenv("MLC_POOL_SPIN", "12345")
        assert load_pool()._spin.value == 12345


@pytest.mark.parametrize("stride", [2, 3, 4, 5])
def test_strided_vector_loads_match_numpy(stride: int) -> None:
    """Strides 2-4 load a contiguous span and shuffle; larger ones load each lane as a scalar."""
    n = 37
    a = placeholder("A", (n * stride + 3,))
    f = build("strided", [a], [compute("C", (n,), lambda i: a[i * stride + 1] + 0.5)])
    from mlc.passes.schedule.rules import default_schedule
    lib = compile_module([default_schedule(f).func])
    x = np.random.default_rng(stride).standard_normal(n * stride + 3).astype("f4")
    c = np.zeros(n, "f4")
    lib.kernel("strided")([x, c])
    np.testing.assert_array_equal(c, x[1:1 + n * stride:stride] + np.float32(0.5))
    ir = lib.llvm_ir()
    assert "llvm.masked.gather" not in ir
    assert "shufflevector" in ir if stride <= 4 else "insertelement" in ir
