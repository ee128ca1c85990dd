"""Sparse kernels on CUDA (issue 15): the GPU schedule of sparse-lower's output (passes/schedule/sparse_gpu.py).

Here (no GPU): every kernel and format, scheduled for the GPU, runs in the TIR interpreter (block form
and after lower-tir, where SDDMM's lanes become a cross-thread reduction) and equals scipy.sparse, so
the schedule keeps the semantics; `mlc build --target cuda` compiles each one with nvcc. On a GPU
(`gpu` marker): the compiled kernels against scipy.sparse, f32 and f16, random patterns with empty
rows and one dense row, and the graph-level `sparse_matmul` against numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from mlc.codegen.cuda_jit import nvcc_unavailable
from mlc.ir.printer import print_function
from mlc.ir.sparse_kernels import sparse_kernel
from mlc.ir.sparse_lower import lower_sparse
from mlc.ir.tir import For
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import nodes
from mlc.passes.schedule.sparse_gpu import sparse_gpu_schedule

import mlc.sparse as msp
from mlc.compiler import build_module

KINDS = ("empty_rows", "dense_row", "random", "power_law")
# (op, format) pairs: every kernel and format sparse-kernel writes
CASES = [("spmm", "csr"), ("spmm", "ell"), ("spmm", "hyb:2,1"), ("sddmm", "csr"), ("sddmm", "ell"),
         ("bsrmm", "bsr:2"), ("segment-mm", "csr")]


def pattern(kind: str, m: int, n: int, seed: int) -> sp.csr_matrix:
    """Empty rows, one dense row, uniform random or power-law row lengths; duplicate-free."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((m, n), np.float32)
    if kind == "empty_rows":
        dense[rng.random((m, n)) < 0.3] = 1
        dense[::3] = 0
    elif kind == "dense_row":
        dense[rng.integers(m)] = 1
        dense[rng.random((m, n)) < 0.05] = 1
    elif kind == "random":
        dense[rng.random((m, n)) < 0.2] = 1
    else:
        for r in range(m):
            k = min(n, int(rng.pareto(1.2)) + (r % 2))
            dense[r, rng.choice(n, size=k, replace=False)] = 1
    dense *= rng.uniform(0.5, 2.0, (m, n)).astype(np.float32)
    a = sp.csr_matrix(dense)
    a.sort_indices()
    return a


def case(op: str, fmt: str, a: sp.csr_matrix, feat: int, dtype: Any, seed: int = 0
         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    """(sparse inputs by parameter name, dense inputs, the expected result as a function of the
    kernel's output C)."""
    rng = np.random.default_rng(seed)
    m, n = a.shape
    ip, ix, vals = a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(dtype)
    if op == "segment-mm":
        cuts = np.sort(rng.choice(np.arange(1, m), size=min(3, m - 1), replace=False)) if m > 1 else []
        seg = np.concatenate([[0], cuts, [m]]).astype(np.int32)
        seg = np.concatenate([seg[:2], seg[1:2], seg[2:]]).astype(np.int32)  # an empty segment
        x = rng.standard_normal((m, feat)).astype(dtype)
        w = (rng.standard_normal((len(seg) - 1, feat, feat)) / np.sqrt(feat)).astype(dtype)
        want = np.zeros((m, feat), np.float32)
        for s in range(len(seg) - 1):
            want[seg[s]:seg[s + 1]] = x[seg[s]:seg[s + 1]].astype(np.float32) @ w[s].astype(np.float32)
        return {"indptr": seg}, {"X": x, "W": w}, lambda c: (c, want)
    if op == "sddmm":
        x, y = rng.standard_normal((m, feat)).astype(dtype), rng.standard_normal((n, feat)).astype(dtype)
        rows = np.repeat(np.arange(m), np.diff(ip))
        want = vals.astype(np.float32) * np.einsum("pk,pk->p", x[rows].astype(np.float32), y[ix].astype(np.float32))
        if fmt == "csr":
            return {"indptr": ip, "indices": ix, "data": vals}, {"X": x, "Y": y}, lambda c: (c, want)
        w = max(1, int(np.diff(ip).max(initial=0)))
        ei, ed = msp.to_ell(ip, ix, vals, w)
        pos = np.arange(a.nnz) - np.repeat(ip[:-1], np.diff(ip))
        return {"indices": ei, "data": ed}, {"X": x, "Y": y}, lambda c: (c[rows, pos], want)
    b = rng.standard_normal((n, feat)).astype(dtype)
    want = a.astype(np.float32) @ b.astype(np.float32)
    if op == "bsrmm":
        sparse = msp.to_bsr(a, int(fmt.split(":")[1]), dtype)
    elif fmt.startswith("hyb"):
        parts, k = (int(v) for v in fmt.split(":")[1].split(","))
        sparse = msp.to_hyb(ip, ix, vals, n, parts, k)
    elif fmt == "ell":
        ei, ed = msp.to_ell(ip, ix, vals, max(1, int(np.diff(ip).max(initial=0))))
        sparse = {"indices": ei, "data": ed}
    else:
        sparse = {"indptr": ip, "indices": ix, "data": vals}
    return sparse, {"B": b}, lambda c: (c, want)


def kernel_format(fmt: str, sparse: dict[str, np.ndarray]) -> str:
    return f"ell:{sparse['indices'].shape[1]}" if fmt == "ell" else fmt


def scheduled(op: str, fmt: str, feat: int, dtype: str = "f32") -> Any:
    f = sparse_kernel(op, fmt, feat, dtype).get(op.replace("-", "_"))
    return sparse_gpu_schedule(lower_sparse(f, 3))


def thread_tags(f: Any) -> set[str]:
    return {x.thread_tag for x in nodes(f.body) if isinstance(x, For) and x.kind == "thread"}


def run_scheduled(op: str, fmt: str, a: sp.csr_matrix, feat: int, lowered: bool) -> None:
    sparse, dense, check = case(op, fmt, a, feat, np.float32, seed=a.nnz)
    f = scheduled(op, kernel_format(fmt, sparse), feat)
    assert {"blockIdx.x", "threadIdx.x"} <= thread_tags(f), print_function(f)
    if lowered:
        f = lower_tir_func(f)
    feeds = {**sparse, **dense}
    out = f.params[-1]
    shape = (a.shape[0], feat) if op != "sddmm" else (a.nnz,) if fmt == "csr" else feeds["indices"].shape
    c = np.full(shape, np.nan, np.float32)
    run_prim(f, [feeds[p.name] for p in f.params[:-1]] + [c])
    assert out.name == "C"
    got, want = check(c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op, fmt", CASES)
def test_gpu_schedule_keeps_semantics(op: str, fmt: str, kind: str) -> None:
    """Block form with threads bound, against scipy; 40 features (two lanes of 32, the second partial)."""
    m, n = (12, 10) if op == "bsrmm" else (13, 11)
    run_scheduled(op, fmt, pattern(kind, m, n, 3), 40, lowered=False)


@pytest.mark.parametrize("feat", [8, 64])
@pytest.mark.parametrize("op, fmt", CASES)
def test_gpu_schedule_after_lower_tir(op: str, fmt: str, feat: int) -> None:
    """Loop-level form (cross-thread reductions for sddmm), fewer and more features than a warp."""
    m, n = (10, 8) if op == "bsrmm" else (9, 7)
    run_scheduled(op, fmt, pattern("dense_row", m, n, 5), feat, lowered=True)


@pytest.mark.parametrize("kind", ["empty_rows", "power_law"])
def test_gpu_bsr16_schedule_in_the_interpreter(kind: str) -> None:
    """The block size the GPU tests compile (bsr:16: 16 rows of a block row on threadIdx.y), lowered,
    in the interpreter against scipy: the same path as test_gpu_kernels_match_scipy without a GPU."""
    run_scheduled("bsrmm", "bsr:16", pattern(kind, 32, 48, 7), 40, lowered=True)


def test_spmm_schedule_binds_rows_and_lanes() -> None:
    """CSR SpMM: chunks of equal nonzeros (tests/test_sparse_gpu_split.py) to blockIdx.x x threadIdx.y
    (4 chunks of 32 lanes), features to threadIdx.x, each row's nonzeros in the chunk serial per
    thread, the chunk guarded (no indptr read past the last one); rows of one chunk accumulate their
    two feature columns per thread in registers."""
    text = print_function(scheduled("spmm", "csr", 64))
    g = "min(floordiv(nnz + 31, 32), 16384)"
    assert f'for chunk_0 in 0..floordiv({g} + 3, 4) thread "blockIdx.x"' in text
    assert f'for chunk_1 in 0..4 thread "threadIdx.y" {{\n        if chunk_0 * 4 + chunk_1 < {g} {{' in text
    lanes = text.index('for k_1_1_1_2 in 0..32 thread "threadIdx.x" {\n')
    assert lanes < text.index("allocate %acc: buffer<2 x f32, local>") < text.index("for j in 0..row_nnz {")
    assert text.index("for j in 0..row_nnz {") < text.index("%acc[k_1_0] = %acc[k_1_0] + %data[")
    # the columns are checked in a loop of their own before it; the nonzero loop only clamps them
    assert text.index("for j_2 in 0..row_nnz {") < text.index("%checked_1[0] = min(max(check_range(cast<i64>(%indices[") < lanes
    assert "let j_col = min(max(cast<i64>(%indices[" in text
    assert 'schedule = "sparse-gpu"' in text


def test_sddmm_schedule_is_a_warp_reduction() -> None:
    """SDDMM: one chunk of nonzeros per warp, 32 lanes over the features combined across threads; the init is
    folded into the update block (no read of C before the reduction)."""
    f = scheduled("sddmm", "csr", 64)
    assert thread_tags(f) == {"blockIdx.x", "threadIdx.y", "threadIdx.x"}  # 4 warps of 32 lanes a block
    text = print_function(lower_tir_func(f))
    assert "allreduce" in text and "sddmm_init" not in print_function(f)


@pytest.mark.skipif(nvcc_unavailable() is not None, reason=str(nvcc_unavailable()))
@pytest.mark.parametrize("op, fmt, dtype", [(o, f, "f32") for o, f in CASES] + [
    ("spmm", "csr", "f16"), ("sddmm", "csr", "f16"), ("bsrmm", "bsr:16", "f16")])
def test_cuda_build_compiles(op: str, fmt: str, dtype: str) -> None:
    """`mlc build --target cuda`'s pipeline (sparse-lower, sparse-gpu-schedule) and nvcc accept it."""
    fmt = "ell:4" if fmt == "ell" else fmt
    built = build_module(sparse_kernel(op, fmt, 64, dtype), {}, "cuda")
    f = next(iter(built.module.prim_functions()))
    assert dict(f.attrs).get("schedule") == "sparse-gpu"
    assert built.result.data


# ---- on a GPU -----------------------------------------------------------------------------------
def _gpu_reason() -> str | None:
    try:
        from mlc.runtime.cuda import cuda_unavailable
    except ImportError as e:  # pragma: no cover
        return str(e)
    return cuda_unavailable()


_NO_GPU = _gpu_reason()
needs_gpu = pytest.mark.skipif(_NO_GPU is not None, reason=f"needs a CUDA GPU: {_NO_GPU}")


def _tol(dtype: str) -> dict[str, float]:
    return {"rtol": 2e-2, "atol": 5e-2} if dtype == "f16" else {"rtol": 1e-4, "atol": 1e-4}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op, fmt", [c for c in CASES if c[0] != "segment-mm"])
def test_gpu_kernels_match_scipy(op: str, fmt: str, kind: str, dtype: str) -> None:
    m, n = (96, 64) if op == "bsrmm" else (97, 61)
    a = pattern(kind, m, n, 7)
    npd = np.float16 if dtype == "f16" else np.float32
    fmt = "bsr:16" if op == "bsrmm" else fmt  # the GPU's block size (the CPU tests use small ones)
    k = msp.compile(a, op, target="cuda", feat=40, format=fmt, dtype=dtype)
    _, dense, check = case(op, fmt if op == "bsrmm" else "csr", k.matrix, 40, npd, seed=1)
    if op == "sddmm":
        got = k(dense["X"], dense["Y"])
        rows = np.repeat(np.arange(m), np.diff(k.matrix.indptr))
        want = check(got.data)[1]
        assert len(rows) == len(want)
        np.testing.assert_allclose(got.data, want, **_tol(dtype))
    else:
        got, want = check(k(dense["B"]))
        np.testing.assert_allclose(np.asarray(got, np.float32), want, **_tol(dtype))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gpu_segment_mm(dtype: str) -> None:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    npd = np.float16 if dtype == "f16" else np.float32
    sparse, dense, check = case("segment-mm", "csr", pattern("random", 200, 8, 2), 32, npd)
    built = build_module(sparse_kernel("segment-mm", "csr", 32, dtype), {}, "cuda")
    model = model_from_artifact(loads(built.result.data), "<segment-mm>")
    got, want = check(model(**sparse, **dense)["C"])
    np.testing.assert_allclose(np.asarray(got, np.float32), want, **_tol(dtype))


def graph_module(w: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
    """main(x: N x K) = sparse_matmul(x, CSR of w^T as constants): a matmul by a sparse weight."""
    from mlc.ir.expr import Const, Var
    from mlc.ir.graph import Binding, Block, Constant, Function, OpCall, Value
    from mlc.ir.module import Module
    from mlc.ir.types import TensorType, UnknownType
    from mlc.passes.sparsify import csr_of_transpose

    from mlc.compiler import with_memory_constants

    arrays = dict(zip(("indptr", "indices", "data"), csr_of_transpose(w)))
    x = Value("x", TensorType((Var("N"), Const(w.shape[0])), "f32"))
    binds = [Binding(Value(k, TensorType((Const(len(v)),), "i32" if v.dtype == np.int32 else "f32")), Constant(k))
             for k, v in arrays.items()]
    y = Value("y", UnknownType())
    binds.append(Binding(y, OpCall("sparse_matmul", (x, *(b.var for b in binds)), ())))
    m = Module((Function("main", (x,), Block(tuple(binds), (y,)), (("entry", True),)),))
    return with_memory_constants(m, arrays), arrays


def sparse_weight(k: int, m: int, seed: int) -> np.ndarray:
    """A K x M weight with empty columns (empty rows of W^T) and one dense column."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, m)).astype(np.float32)
    w[rng.random(w.shape) > 0.25] = 0
    w[:, 0] = 0
    w[:, -1] = rng.standard_normal(k)
    return w


def test_graph_sparse_matmul_scheduled_for_cuda() -> None:
    """The graph op through build-cuda up to codegen (the transposes around the sparse nest get the
    default GPU rules) runs in the interpreter equal to x @ W, batch 1 and 40."""
    from mlc.passes.pipeline import load_pipeline, run_pipeline
    from mlc.passes.registry import PassContext

    w = sparse_weight(37, 21, 0)
    m, arrays = graph_module(w)
    ctx = PassContext(constants=dict(arrays), target="cuda", sink=None)
    m, _ = run_pipeline(m, load_pipeline("configs/pipelines/build-cuda.yaml"), ctx, True)
    (f,) = m.prim_functions()
    assert dict(f.attrs).get("schedule") == "sparse-gpu" and "blockIdx.x" in thread_tags(f)
    consts = ctx.constants or arrays
    for n in (1, 40):
        x = np.random.default_rng(n).standard_normal((n, 37)).astype(np.float32)
        out = np.full((n, 21), np.nan, np.float32)
        run_prim(f, [x, *(consts[k] for k in ("indptr", "indices", "data")), out])
        np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-5)
    if nvcc_unavailable() is None:
        m, arrays = graph_module(w)
        assert build_module(m, arrays, "cuda").result.data  # nvcc compiles it


@pytest.mark.gpu
@needs_gpu
def test_gpu_graph_sparse_matmul() -> None:
    """The graph op sparse_matmul (a matmul by a sparse constant) built for CUDA, symbolic batch."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    w = sparse_weight(37, 21, 0)
    m, arrays = graph_module(w)
    built = build_module(m, arrays, "cuda")
    model = model_from_artifact(loads(built.result.data), "<sparse_matmul cuda>")
    rng = np.random.default_rng(0)
    for n in (1, 3, 40):
        xv = rng.standard_normal((n, 37)).astype(np.float32)
        np.testing.assert_allclose(model(x=xv)["y"], xv @ w, rtol=1e-4, atol=1e-4)
