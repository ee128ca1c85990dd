"""The sparse CPU schedule's register tiles (passes/sparse_lower.register_tiles) and the bound kernel's
direct native call (mlc.sparse.SparseKernel): the tiled programs in the TIR interpreter and compiled,
against scipy.sparse / numpy, at feature widths of every tile size and of none."""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlc.ir.printer import print_module
from mlc.ir.sparse_kernels import sparse_kernel
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.passes.registry import PassContext
from mlc.passes.sparse_lower import SparseLower, register_tiles
from test_sparse import pattern

import mlc.sparse as msp

KINDS = ("empty", "dense_row", "random", "power_law")


def _scheduled(op: str, feat: int, parts: int = 4) -> PrimFunc:
    m = SparseLower(schedule=True, parts=parts).apply(sparse_kernel(op, "csr", feat), PassContext())
    f = m.get(op)
    assert isinstance(f, PrimFunc)
    return f


def _csr(a: sp.csr_matrix) -> list[np.ndarray]:
    return [a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(np.float32)]


def _check(op: str, a: sp.csr_matrix, feat: int, run, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    """`run(inputs, dense...) -> result` against scipy (spmm) or numpy (sddmm, A's CSR order)."""
    rng = np.random.default_rng(seed)
    m, n = a.shape
    if op == "spmm":
        b = rng.standard_normal((n, feat)).astype(np.float32)
        np.testing.assert_allclose(run(_csr(a), b), a @ b, rtol=1e-4, atol=1e-4)
    else:
        x, y = rng.standard_normal((m, feat)).astype(np.float32), rng.standard_normal((n, feat)).astype(np.float32)
        rows = np.repeat(np.arange(m), np.diff(a.indptr))
        want = a.data * np.einsum("pk,pk->p", x[rows], y[a.indices])
        np.testing.assert_allclose(run(_csr(a), x, y), want, rtol=1e-4, atol=1e-4)


def _interp(op: str, feat: int):  # type: ignore[no-untyped-def]
    f = lower_tir_func(_scheduled(op, feat))

    def run(ins: list[np.ndarray], *dense: np.ndarray) -> np.ndarray:
        out = np.full((ins[0].size - 1, feat) if op == "spmm" else ins[2].shape, np.nan, np.float32)
        run_prim(f, [*ins, *dense, out])
        return out
    return run


def test_spmm_row_tile_text() -> None:
    """SpMM at 96 features: tiles of 32 (3 per row), the row's accumulator local, C written once per tile."""
    text = print_module(sparse_kernel("spmm", "csr", 96).with_function(_scheduled("spmm", 96)))
    body = [ln.strip() for ln in text.splitlines() if "C_acc" in ln or ln.strip().startswith(("for ko", "for k", "%C["))]
    assert body == [
        "for ko in 0..3 {",
        "alloc %C_acc: buffer<32 x f32, local>",
        "for k in 0..32 vectorized {",
        "%C_acc[k] = 0.0",
        "for k_1 in 0..32 vectorized {",
        "%C_acc[k_1] = %C_acc[k_1] + %data[max(cast<i64>(%indptr[vi_1]), 0) + vj] * %B[j_col, vk_1]",
        "for k in 0..32 vectorized {",
        "%C[vi, vk] = %C_acc[k]",
    ]
    assert "vk_1 = ko * 32 + k_1 in 0..96" in text


def test_sddmm_dot_tile_text() -> None:
    """SDDMM at 48 features: 16 lanes, folded to 8, summed; A's value multiplied once after the sum."""
    text = print_module(sparse_kernel("sddmm", "csr", 48).with_function(_scheduled("sddmm", 48)))
    body = [ln.strip() for ln in text.splitlines() if "C_acc" in ln or ln.strip().startswith(("for lane", "for ko"))]
    assert body == [
        "alloc %C_acc: buffer<16 x f32, local>",
        "for lane in 0..16 vectorized {",
        "%C_acc[lane] = 0.0",
        "for ko in 0..3 {",
        "for lane in 0..16 vectorized {",
        "%C_acc[lane] = %C_acc[lane] + %X[vi_1, vk] * %Y[j_col, vk]",
        "for lane in 0..8 vectorized {",
        "%C_acc[lane] = %C_acc[lane] + %C_acc[lane + 8]",
        "%C[max(cast<i64>(%indptr[vi]), 0) + vj] = %data[max(cast<i64>(%indptr[vi]), 0) + vj] * (%C_acc[0] + "
        "%C_acc[1] + (%C_acc[2] + %C_acc[3]) + (%C_acc[4] + %C_acc[5] + (%C_acc[6] + %C_acc[7])))",
    ]


@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_no_tile_without_a_lane_multiple(op: str) -> None:
    """12 features: no tile divides them, the nest stays as lowered."""
    f = _scheduled(op, 12)
    assert "C_acc" not in print_module(sparse_kernel(op, "csr", 12).with_function(f))
    assert register_tiles(f) == f


@pytest.mark.parametrize("feat", [8, 12, 24, 64, 96])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_tiled_program_in_the_interpreter(op: str, kind: str, feat: int) -> None:
    _check(op, pattern(kind, 11, 9, 2), feat, _interp(op, feat))


@cache
def _model(op: str, feat: int):  # type: ignore[no-untyped-def]
    """One build per (op, width): the structure is an input, so one kernel serves every pattern."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module

    model = model_from_artifact(loads(build_module(sparse_kernel(op, "csr", feat), {}).result.data), f"{op}-{feat}")
    names = ("B",) if op == "spmm" else ("X", "Y")

    def run(ins: list[np.ndarray], *dense: np.ndarray) -> np.ndarray:
        return model(**dict(zip(("indptr", "indices", "data"), ins)), **dict(zip(names, dense)))["C"]
    return run


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), m=st.integers(1, 50), n=st.integers(1, 50), seed=st.integers(0, 10**6),
       op=st.sampled_from(["spmm", "sddmm"]), feat=st.sampled_from([12, 24, 64, 96]))
def test_compiled_tiles_random_patterns(kind: str, m: int, n: int, seed: int, op: str, feat: int) -> None:
    """Compiled (rows in 16 parts of equal nonzeros, register tiles, vectorized) vs scipy / numpy."""
    _check(op, pattern(kind, m, n, seed), feat, _model(op, feat), seed)


@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_bound_kernel_is_one_native_call(op: str) -> None:
    """mlc.sparse.compile's callable calls the kernel directly; its result is the model's."""
    a = pattern("power_law", 60, 50, 4)
    k = msp.compile(a, op, feat=24)
    assert k.direct
    rng = np.random.default_rng(0)
    dense = [rng.standard_normal((r, 24)).astype(np.float32) for r in ((50,) if op == "spmm" else (60, 50))]
    want = k.model(**k.inputs, **dict(zip(k.dense_names, dense)))["C"]
    for _ in range(2):  # the prebuilt argument arrays are reused
        np.testing.assert_array_equal(k.run(*dense), want)
    with pytest.raises(Exception, match=f"{k.dense_names[0]} must be"):
        k.run(*[d[:, :5] for d in dense])


def _hyb_scheduled(fmt: str, feat: int) -> PrimFunc:
    m = SparseLower(schedule=True, parts=4).apply(sparse_kernel("spmm", fmt, feat), PassContext())
    f = m.get("spmm")
    assert isinstance(f, PrimFunc)
    return f


def test_hyb_buckets_get_carried_tiles() -> None:
    """hyb(2, 1): 2 column parts x (buckets of width 1, 2 and the split long rows), each adding into C:
    six tiles that load C's row tile, accumulate, store it back."""
    text = print_module(sparse_kernel("spmm", "hyb:2,1", 64).with_function(_hyb_scheduled("hyb:2,1", 64)))
    lines = [ln.strip() for ln in text.splitlines()]
    assert sum(ln.startswith("alloc %C_acc") for ln in lines) == 6
    assert sum(bool(re.fullmatch(r"%C\[.*\] = %C_acc(_\d+)?\[lane(_\d+)?\]", ln)) for ln in lines) == 6  # stores
    assert sum(bool(re.fullmatch(r"%C_acc(_\d+)?\[lane(_\d+)?\] = %C\[.*\]", ln)) for ln in lines) == 6  # loads


@pytest.mark.parametrize("feat", [12, 24, 64])
@pytest.mark.parametrize("kind", KINDS)
def test_hyb_tiles_in_the_interpreter(kind: str, feat: int) -> None:
    a = pattern(kind, 11, 9, 3)
    f = lower_tir_func(_hyb_scheduled("hyb:2,1", feat))
    ins = msp.to_hyb(a.indptr, a.indices, a.data.astype(np.float32), a.shape[1], 2, 1)
    b = np.random.default_rng(1).standard_normal((9, feat)).astype(np.float32)
    out = np.full((11, feat), np.nan, np.float32)
    run_prim(f, [*ins.values(), b, out])
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


def test_hyb_tiles_compiled() -> None:
    a = pattern("power_law", 70, 60, 5)
    k = msp.compile(a, "spmm", feat=24, format="hyb:1,1")
    assert k.direct  # 11 index arrays bound once
    b = np.random.default_rng(2).standard_normal((60, 24)).astype(np.float32)
    np.testing.assert_allclose(k(b), a @ b, rtol=1e-4, atol=1e-4)


@cache
def _hyb_model(fmt: str, feat: int):  # type: ignore[no-untyped-def]
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module

    return model_from_artifact(loads(build_module(sparse_kernel("spmm", fmt, feat), {}).result.data), fmt)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), m=st.integers(1, 50), n=st.integers(1, 50), seed=st.integers(0, 10**6))
def test_compiled_hyb_tiles_random_patterns(kind: str, m: int, n: int, seed: int) -> None:
    """hyb(2, 1) compiled once (bucket sizes are inputs), fed each pattern's buckets, vs scipy."""
    a = pattern(kind, m, n, seed)
    ins = msp.to_hyb(a.indptr, a.indices, a.data.astype(np.float32), n, 2, 1)
    b = np.random.default_rng(seed).standard_normal((n, 24)).astype(np.float32)
    np.testing.assert_allclose(_hyb_model("hyb:2,1", 24)(**ins, B=b)["C"], a @ b, rtol=1e-4, atol=1e-4)


def test_non_cpu_kernels_run_through_the_model() -> None:
    """A CUDA build's callable goes through its model (staging copies, streams), not a ctypes call: a
    stand-in model of kind cuda sees the call (no GPU here)."""
    from types import SimpleNamespace

    a = pattern("random", 12, 10, 1)
    k = msp.compile(a, "spmm", feat=8)
    seen: list[str] = []

    class StandIn:
        device, module, library = SimpleNamespace(kind="cuda"), k.model.module, k.model.library

        def __call__(self, **kw: np.ndarray) -> dict[str, np.ndarray]:
            seen.append(",".join(kw))
            return {"C": (a @ kw["B"]).astype(np.float32)}

    cuda = msp.SparseKernel(StandIn(), "spmm", k.matrix, 8, "f32", k.inputs)
    assert k.direct and not cuda.direct
    b = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    np.testing.assert_allclose(cuda(b), a @ b, rtol=1e-5, atol=1e-5)
    assert seen == ["indptr,indices,data,B"]
