"""CSR rows split by nonzeros in the GPU schedule (passes/schedule/sparse_gpu.split_rows_by_nonzeros).

Chunks of equal nonzeros instead of rows: a row crossing chunk boundaries (a power-law hub) is summed
in parts through a workspace and a fix-up nest (SpMM), or its nonzeros are simply shared out (SDDMM).
Here: the split function and the whole GPU schedule, lowered, run in the TIR interpreter against
scipy / numpy with small chunk sizes, so that rows span many chunks, chunks hold many rows, trailing
chunks are empty and K grows past the minimum; nvcc compiles the kernels at the benchmark's widths.
On a GPU (`gpu`): graphs with more nonzeros than 32 x MAX_CHUNKS (K above its minimum) against scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from mlc.codegen.cuda_jit import nvcc_unavailable
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Bin, Const, Load, Var
from mlc.ir.printer import print_function
from mlc.ir.sparse_kernels import sparse_kernel
from mlc.ir.sparse_lower import lower_sparse
from mlc.ir.tir import Buffer, For, Let, PrimFunc, Seq, Store
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import nodes
from mlc.passes.schedule.sparse_gpu import (
    MAX_CHUNKS,
    MIN_CHUNK,
    first_row,
    sparse_gpu_schedule,
    split_rows_by_nonzeros,
)
from mlc.runtime.cuda import cuda_unavailable

from mlc.compiler import build_module


def matrix(kind: str, m: int, n: int, seed: int) -> sp.csr_matrix:
    """Empty rows at both ends and inside, one dense row, power-law row lengths; or no nonzeros."""
    rng = np.random.default_rng(seed)
    d = np.zeros((m, n), np.float32)
    if kind == "hub":
        d[1] = 1  # one row over many chunks
        d[rng.random((m, n)) < 0.1] = 1
        d[[0, m // 2, m - 1]] = 0
    elif kind == "power_law":
        for r in range(m):
            d[r, rng.choice(n, size=min(n, int(rng.pareto(0.8))), replace=False)] = 1
    elif kind == "one_row":
        d[m // 3] = 1
    d *= rng.uniform(0.5, 2.0, (m, n)).astype(np.float32)
    a = sp.csr_matrix(d)
    a.sort_indices()
    return a


def run(op: str, a: sp.csr_matrix, feat: int, chunks: tuple[int, int], schedule: bool) -> None:
    rng = np.random.default_rng(a.nnz)
    m, n = a.shape
    ip, ix, vals = a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(np.float32)
    f = lower_sparse(sparse_kernel(op, "csr", feat, "f32").get(op), 3)
    f = lower_tir_func(sparse_gpu_schedule(f, chunks)) if schedule else split_rows_by_nonzeros(f, *chunks)
    if op == "spmm":
        b = rng.standard_normal((n, feat)).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        c = np.full((m, feat), np.nan, np.float32)
        run_prim(f, [ip, ix, vals, b, c])
    else:
        x, y = rng.standard_normal((m, feat)).astype(np.float32), rng.standard_normal((n, feat)).astype(np.float32)
        rows = np.repeat(np.arange(m), np.diff(ip))
        want = vals * np.einsum("pk,pk->p", x[rows].astype(np.float64), y[ix].astype(np.float64))
        c = np.full(a.nnz, np.nan, np.float32)
        run_prim(f, [ip, ix, vals, x, y, c])
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


# (min_chunk, max_chunks): K at its minimum; K grown by the cap (chunks of uneven fill, empty ones)
CHUNKS = [(3, 1000), (4, 7), (5, 1)]


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("kind", ["hub", "power_law", "one_row", "empty"])
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_split_matches_scipy(op: str, kind: str, chunks: tuple[int, int]) -> None:
    """The split program (block form, before thread binding) against scipy / numpy."""
    run(op, matrix(kind, 11, 9, 1), 3, chunks, schedule=False)


@pytest.mark.parametrize("chunks", CHUNKS[:2])
@pytest.mark.parametrize("kind", ["hub", "power_law"])
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_split_schedule_lowered_matches_scipy(op: str, kind: str, chunks: tuple[int, int]) -> None:
    """The whole GPU schedule (chunks on blockIdx.x x threadIdx.y, features on lanes), lowered; 40
    features: a full and a partial lane group."""
    run(op, matrix(kind, 9, 7, 2), 40, chunks, schedule=True)


@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_split_schedule_still_checks_columns(op: str) -> None:
    """The columns are checked in a loop of their own (checks_first): a column past n in a row that
    crosses chunks still fails the run, lowered, in the interpreter."""
    a = matrix("hub", 9, 7, 2)
    ix = a.indices.astype(np.int32)
    ix[a.indptr[1] + 4] = 7  # row 1 (the hub), past the last column
    f = lower_tir_func(sparse_gpu_schedule(lower_sparse(sparse_kernel(op, "csr", 8, "f32").get(op), 3), (3, 1000)))
    rng = np.random.default_rng(0)
    dense = [rng.standard_normal((7, 8)).astype(np.float32)] if op == "spmm" else [
        rng.standard_normal((9, 8)).astype(np.float32), rng.standard_normal((7, 8)).astype(np.float32)]
    out = np.zeros((9, 8) if op == "spmm" else (a.nnz,), np.float32)
    with pytest.raises(MlcError, match=r"index 7 out of range \[0, 7\)"):
        run_prim(f, [a.indptr.astype(np.int32), ix, a.data.astype(np.float32), *dense, out])


def test_first_row_search_matches_searchsorted() -> None:
    """The chunk's row search (first_row: a binary step, then 4-ary steps) against np.searchsorted on
    3M rows with runs of equal entries (empty rows), targets before, inside and past indptr."""
    rng = np.random.default_rng(0)
    m = 3_000_000
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 3, m))]).astype(np.int32)
    targets = np.concatenate([[-1, 0, indptr[-1], indptr[-1] + 5], rng.integers(0, indptr[-1], 60)]).astype(np.int64)
    ptr, tg, out = Buffer("indptr", (Const(m + 1),), "i32"), Buffer("T", (Const(len(targets)),), "i64"), \
        Buffer("R", (Const(len(targets)), Const(2)), "i64")
    t = Var("t")
    used: set[str] = set()
    body: Any = None
    stores = []
    for col, (name, pred) in enumerate([("le", lambda v: Bin("le", v, Load(tg, (t,)))),
                                        ("lt", lambda v: Bin("lt", v, Load(tg, (t,))))]):
        lets, r = first_row(ptr, Const(m), pred, name, used)
        st: Any = Store(out, (t, Const(col)), r)
        for v, e in reversed(lets):
            st = Let(v, e, st)
        stores.append(st)
    body = For(t, Const(0), Const(len(targets)), Seq(tuple(stores)))
    got = np.zeros((len(targets), 2), np.int64)
    run_prim(PrimFunc("search", (ptr, tg, out), 1, body), [indptr, targets, got])
    np.testing.assert_array_equal(got[:, 0], np.minimum(np.searchsorted(indptr, targets, side="right"), m))
    np.testing.assert_array_equal(got[:, 1], np.minimum(np.searchsorted(indptr, targets, side="left"), m))


def thread_loops(f: Any) -> list[For]:
    return [x for x in nodes(f.body) if isinstance(x, For) and x.kind == "thread"]


def test_spmm_split_shape() -> None:
    """SpMM: two nests, chunks then the fix-up over rows; the workspace holds two partial rows per
    chunk; chunk count from nnz at launch (min(ceil(nnz / 32), MAX_CHUNKS))."""
    f = sparse_gpu_schedule(lower_sparse(sparse_kernel("spmm", "csr", 64, "f32").get("spmm"), 3))
    text = print_function(f)
    g = f"min(floordiv(nnz + {MIN_CHUNK - 1}, {MIN_CHUNK}), {MAX_CHUNKS})"
    assert f"alloc %C_part: buffer<max({g}, 1) x 2 x 64 x f32>" in text, text[:600]
    assert text.count('thread "blockIdx.x"') == 2  # the chunk nest and the fix-up nest
    assert f'for chunk_0 in 0..floordiv({g} + 3, 4) thread "blockIdx.x"' in text
    assert 'for chunk_1 in 0..4 thread "threadIdx.y"' in text
    assert 'for i_1_1 in 0..4 thread "threadIdx.y"' in text  # the fix-up: rows, 4 per block
    assert "%acc_2[pk_0] = %acc_2[pk_0] + %C_part[" in text  # partial sums added in registers


def test_chunk_options_reach_the_schedule_through_the_pipeline() -> None:
    """sparse-gpu-schedule's min_chunk/max_chunks (pipeline YAML options) set the chunk count; bad
    values are one located error."""
    from mlc.passes.pipeline import parse_pipeline, run_pipeline
    from mlc.passes.registry import PassContext

    text = "passes:\n  - sparse-lower\n  - sparse-gpu-schedule: {min_chunk: 8, max_chunks: 4096}\n"
    mod, _ = run_pipeline(sparse_kernel("spmm", "csr", 64, "f32"), parse_pipeline(text, "p.yaml"),
                          PassContext(target="cuda", sink=None))
    printed = print_function(mod.get("spmm"))
    assert "min(floordiv(nnz + 7, 8), 4096)" in printed and f"{MAX_CHUNKS})" not in printed
    with pytest.raises(MlcError, match="min_chunk and max_chunks must be >= 1"):
        run_pipeline(sparse_kernel("spmm", "csr", 64, "f32"),
                     parse_pipeline(text.replace("min_chunk: 8", "min_chunk: 0"), "p.yaml"),
                     PassContext(target="cuda", sink=None))


def test_sddmm_split_shape() -> None:
    """SDDMM: one nest over chunks (every store is at a nonzero: no workspace, no fix-up)."""
    f = sparse_gpu_schedule(lower_sparse(sparse_kernel("sddmm", "csr", 64, "f32").get("sddmm"), 3))
    text = print_function(f)
    assert "C_part" not in text and "sum_parts" not in text
    assert [x.thread_tag for x in thread_loops(f)][:3] == ["blockIdx.x", "threadIdx.y", "threadIdx.x"]
    assert 'for chunk_1 in 0..4 thread "threadIdx.y"' in text  # a warp per chunk, 4 a block


@pytest.mark.skipif(nvcc_unavailable() is not None, reason=str(nvcc_unavailable()))
@pytest.mark.parametrize("op, feat, dtype", [("spmm", 32, "f32"), ("spmm", 512, "f32"), ("sddmm", 32, "f32"),
                                             ("sddmm", 512, "f16")])
def test_split_kernels_compile(op: str, feat: int, dtype: str) -> None:
    """nvcc compiles the split kernels at the benchmark's widths (64 and f16 are in test_sparse_cuda)."""
    built = build_module(sparse_kernel(op, "csr", feat, dtype), {}, "cuda")
    f = next(iter(built.module.prim_functions()))
    assert dict(f.attrs).get("schedule") == "sparse-gpu" and built.result.data


# ---- on a GPU -----------------------------------------------------------------------------------
_NO_GPU = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_NO_GPU is not None, reason=f"needs a CUDA GPU: {_NO_GPU}")
@pytest.mark.parametrize("feat", [32, 128])
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_gpu_split_large_power_law(op: str, feat: int) -> None:
    """A power-law graph with more than MIN_CHUNK x MAX_CHUNKS nonzeros (K > MIN_CHUNK; a hub row over
    thousands of chunks) and empty rows, compiled for CUDA, against scipy."""
    import mlc.sparse as msp

    rng = np.random.default_rng(0)
    m = 40000
    nnz_row = np.minimum((rng.pareto(1.1, m) * 8).astype(np.int64), m)
    nnz_row[5] = m  # a dense hub row
    nnz_row[rng.random(m) < 0.1] = 0
    rows = np.repeat(np.arange(m), nnz_row)
    cols = rng.integers(0, m, rows.size)
    a = sp.csr_matrix((rng.uniform(0.5, 2, rows.size).astype(np.float32), (rows, cols)), shape=(m, m))
    a.sum_duplicates()
    a.sort_indices()
    assert a.nnz > MIN_CHUNK * MAX_CHUNKS
    k = msp.compile(a, op, target="cuda", feat=feat, format="csr", dtype="f32")
    if op == "spmm":
        # f32 sums of ~25000 terms: scipy's own f32 result is 1.6e-3 off at rows 5 and 16366, so the bound
        # scales with each output's sum of |terms| (the f32 summation error bound), against an f64 reference
        b = rng.standard_normal((m, feat)).astype(np.float32)
        want, l1 = a.astype(np.float64) @ b.astype(np.float64), abs(a) @ abs(b.astype(np.float64))
        err = np.abs(k(b) - want)
        assert (err <= 1e-6 * l1 + 1e-5).all(), f"worst {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"
    else:
        x, y = rng.standard_normal((m, feat)).astype(np.float32), rng.standard_normal((m, feat)).astype(np.float32)
        got = k(x, y)
        r = np.repeat(np.arange(m), np.diff(k.matrix.indptr))
        terms = k.matrix.data[:, None].astype(np.float64) * x[r].astype(np.float64) * y[k.matrix.indices]
        err = np.abs(got.data - terms.sum(1))
        assert (err <= 1e-6 * np.abs(terms).sum(1) + 1e-5).all(), f"worst {err.max():.3g} at {err.argmax()}"
