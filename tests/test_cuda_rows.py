"""Row reductions on the GPU (softmax, log-softmax, layernorm over the last axis) as one kernel:
the default GPU schedule binds every stage of the fused program row-wise (passes/schedule/gpu_rules.py)
and the CUDA codegen runs the stages of a row as one kernel (codegen/cuda_rows.py). Here: the schedule
against numpy in the TIR interpreter, the kernel count, the row-locality check refusing a chain whose
stages read other rows, nvcc compiling it; with a GPU, the kernels against numpy (f32, f16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cuda_helpers import row_op_func
from mlc.codegen.cuda import lower_to_cuda
from mlc.codegen.cuda_jit import compile_source, nvcc_unavailable
from mlc.ir import Var, arith
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_builder import build, compute, placeholder, reduce_axis, rmax
from mlc.ir.tir_interp import run_prim
from mlc.passes.schedule.gpu_rules import ROW_THREAD_CHOICES, default_gpu_schedule, sample_gpu_schedule
from mlc.runtime.cuda import cuda_unavailable

OPS = ("softmax", "log_softmax", "layer_norm")
LENGTHS = (1, 7, 31, 32, 33, 100, 1000, 4096, 50257)


def row_func(op: str, c: int, dtype: str = "f32", name: str | None = None) -> PrimFunc:
    """The fused program of one graph op over x: (b, 3, c), b symbolic, along the last axis."""
    return row_op_func(op, (Var("b"), 3, c), dtype, name)


def numpy_ref(op: str, x: np.ndarray, g: np.ndarray | None = None, beta: np.ndarray | None = None) -> np.ndarray:
    x = x.astype(np.float64)
    if op == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g + beta
    z = x - x.max(-1, keepdims=True)
    lse = np.log(np.exp(z).sum(-1, keepdims=True))
    return np.exp(z - lse) if op == "softmax" else z - lse


def inputs(op: str, rows: int, c: int, dtype: Any, seed: int = 0) -> list[np.ndarray]:
    """x ~ 3 N(0, 1) (f16: 0.5 N(0, 1), so that layernorm's f16 sum of squares of 50257 stays finite)."""
    rng = np.random.default_rng(seed)
    xs = [(rng.standard_normal((rows, 3, c)) * (0.5 if dtype == np.float16 else 3)).astype(dtype)]
    if op == "layer_norm":
        xs += [rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)]
    return xs


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c", [1, 7, 31, 32, 33, 100, 1000])
def test_schedule_matches_numpy_in_the_interpreter(op: str, c: int) -> None:
    f = default_gpu_schedule(row_func(op, c))
    xs = inputs(op, 2, c, np.float32)
    out = np.empty_like(xs[0])
    run_prim(f, [*xs, out])
    np.testing.assert_allclose(out, numpy_ref(op, *xs), rtol=1e-4, atol=1e-5)
    launches = lower_to_cuda([f]).funcs[0].launches
    if c >= 32:  # one kernel, one block per row
        assert len(launches) == 1
        assert arith.evaluate(launches[0].grid[0], {"b": 4}) == 12
    else:  # short rows keep their per-stage kernels (one thread per row)
        assert len(launches) > 1


@pytest.mark.parametrize("op", OPS)
def test_every_thread_count_of_the_space_matches_numpy_in_the_interpreter(op: str) -> None:
    """The row-chain schedule's one decision (threads per row), each value on a row of 100 (most
    threads past its end, reductions see their identity there)."""
    xs = inputs(op, 1, 100, np.float32, seed=3)
    for i, t in enumerate(ROW_THREAD_CHOICES):
        f = sample_gpu_schedule(row_func(op, 100), decisions=[i]).func
        assert lower_to_cuda([f]).funcs[0].launches[0].block == (t, 1, 1)
        out = np.empty_like(xs[0])
        run_prim(f, [*xs, out])
        np.testing.assert_allclose(out, numpy_ref(op, *xs), rtol=1e-4, atol=1e-5, err_msg=f"{t} threads")


def test_rows_reading_other_rows_stay_separate_kernels() -> None:
    """y[i, j] = x[i, j] - max(x[j, :]): the same loop shapes as a row chain, but stage 2 reads row j's
    maximum, which another thread block computes: the codegen must keep a kernel boundary there."""
    n = 64
    x = placeholder("x", (n, n))
    r = reduce_axis(n, "r")
    mx = compute("mx", (n,), lambda i: rmax(x[i, r], r))
    y = compute("y", (n, n), lambda i, j: x[i, j] - mx[j])
    f = default_gpu_schedule(build("cross", [x], [y]))
    assert len(lower_to_cuda([f]).funcs[0].launches) == 2
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    run_prim(f, [a, out])
    np.testing.assert_allclose(out, a - a.max(1)[None, :], rtol=1e-6)


def test_row_chain_source_has_barriers_between_stages() -> None:
    src = lower_to_cuda([default_gpu_schedule(row_func("softmax", 1000))]).source
    kernel = src[src.index('extern "C" __global__'):]
    assert kernel.count("__global__") == 1
    assert kernel.count("__syncthreads();  // the next stage") == 3  # max | exp | sum | divide
    assert kernel.count("mlc_block_reduce") == 2


def test_row_chain_barriers_fence_the_written_pointers() -> None:
    """A merged row kernel reads what another thread of its block wrote before the barrier (the row's
    max, sum, mean) through `__restrict__` pointers, which let nvcc load them above the barrier (rows
    of 32 were garbage on an H100): after each stage barrier an asm naming exactly the buffers the
    kernel writes clobbers memory; single-stage kernels have no barrier and no fence."""
    for op, c in [(op, c) for op in OPS for c in (32, 33, 1000)]:
        src = lower_to_cuda([default_gpu_schedule(row_func(op, c))]).source
        kernel = src[src.index('extern "C" __global__'):]
        (head,) = [ln for ln in kernel.splitlines() if ln.startswith('extern "C"')]
        written = sorted(p.split()[-1] for p in head.split("(", 2)[2].split(", ") if "*" in p and "const" not in p)
        assert written and all(f"__restrict__ {w}" in head for w in written)
        lines = kernel.splitlines()
        barriers = [i for i, ln in enumerate(lines) if "__syncthreads();  // the next stage" in ln]
        assert barriers
        for i in barriers:
            fence = lines[i + 1].strip()
            assert fence.startswith('asm volatile("" :: ') and fence.split(":: ")[1].startswith(
                ", ".join(f'"l"({w})' for w in sorted(written, key=head.index)) + ' : "memory");'), fence
    src = lower_to_cuda([default_gpu_schedule(row_func("softmax", 7))]).source  # per-stage kernels
    assert "asm volatile(\"\" ::" not in src[src.index('extern "C" __global__'):]


def _ptx_kernels(ptx: str) -> dict[str, str]:
    out, name = {}, None
    for ln in ptx.splitlines():
        if ".entry " in ln:
            name = ln.split(".entry ")[1].split("(")[0].strip()
            out[name] = ""
        elif name is not None:
            out[name] += ln + "\n"
    return out


@pytest.mark.skipif(nvcc_unavailable() is not None, reason=f"{nvcc_unavailable()}")
def test_row_kernel_ptx_loads_no_written_data_before_the_first_barrier() -> None:
    """In the PTX nvcc makes of a merged row kernel, the first stage reads only the (read-only, .nc)
    input: a coherent global load before the first `bar.sync` is another stage's read hoisted above
    the barrier, the H100 miscompile of rows of 32 (independent of the generated C text)."""
    import subprocess
    import tempfile
    from pathlib import Path

    funcs = [default_gpu_schedule(row_func(op, c, dt, f"{op}_{dt}_{c}"))
             for op in OPS for dt in ("f32", "f16") for c in (32, 33, 100, 1000)]
    src = lower_to_cuda(funcs, "sm_90a")
    with tempfile.TemporaryDirectory() as tmp:
        cu, ptx = Path(tmp) / "k.cu", Path(tmp) / "k.ptx"
        cu.write_text(src.source)
        subprocess.run(["nvcc", "-ptx", "-O3", "-std=c++17", "-arch=sm_90a", "-diag-suppress=177,550", "-o", str(ptx),
                        str(cu)], check=True, capture_output=True)
        kernels = _ptx_kernels(ptx.read_text())
    rows = {n: k for n, k in kernels.items() if n.startswith("mlc_") and "bar.sync" in k}
    assert len(rows) == len(funcs)
    for name, body in rows.items():
        before = body[: body.index("bar.sync")]
        hoisted = [ln.strip() for ln in before.splitlines() if "ld.global" in ln and "ld.global.nc" not in ln]
        assert not hoisted, f"{name}: {hoisted}"


@pytest.mark.skipif(nvcc_unavailable() is not None, reason=f"{nvcc_unavailable()}")
def test_row_kernels_compile_with_nvcc() -> None:
    funcs = [default_gpu_schedule(row_func(op, c, dt, f"{op}_{dt}_{c}"))
             for op in OPS for dt in ("f32", "f16") for c in (7, 1000, 50257)]
    src = lower_to_cuda(funcs, "sm_90a")
    assert [len(f.launches) for f in src.funcs if f.name.endswith(("_1000", "_50257"))] == [1] * 12
    assert compile_source(src)


# ---- on a GPU --------------------------------------------------------------------------------------
_WHY = cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_row_kernels_on_gpu_match_numpy(dtype: str) -> None:
    from mlc.runtime.cuda import compile_cuda

    np_dt = np.float32 if dtype == "f32" else np.float16
    cases = [(op, c) for op in OPS for c in LENGTHS]
    lib = compile_cuda([default_gpu_schedule(row_func(op, c, dtype, f"{op}_{c}")) for op, c in cases])
    for op, c in cases:
        rows = 2 if c == 50257 else 5
        xs = inputs(op, rows, c, np_dt, seed=c)
        out = np.zeros_like(xs[0])
        lib.kernel(f"{op}_{c}")([*xs, out])
        want = numpy_ref(op, *xs)
        if dtype == "f32":
            np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-5 if op == "softmax" else 2e-4,
                                       err_msg=f"{op} row length {c}")
        else:  # f16 storage (intermediates too): a few ulps of the largest values
            scale = np.abs(want).max()
            np.testing.assert_allclose(out.astype(np.float64), want, rtol=2e-2, atol=4e-3 * max(scale, 1.0),
                                       err_msg=f"{op} row length {c}")


@pytest.mark.gpu
@pytest.mark.skipif(_WHY is not None, reason=f"needs a CUDA GPU: {_WHY}")
def test_every_thread_count_on_gpu_matches_numpy() -> None:
    """Each value of the schedule's decision (what the tuner and bench_gpu's sweep launch), f32."""
    from mlc.runtime.cuda import compile_cuda

    cases = [(op, c, i) for op in OPS for c in (33, 1000, 50257) for i in range(len(ROW_THREAD_CHOICES))]
    lib = compile_cuda([sample_gpu_schedule(row_func(op, c, "f32", f"{op}_{c}_{i}"), decisions=[i]).func
                        for op, c, i in cases])
    for op, c, i in cases:
        xs = inputs(op, 2, c, np.float32, seed=c)
        out = np.zeros_like(xs[0])
        lib.kernel(f"{op}_{c}_{i}")([*xs, out])
        np.testing.assert_allclose(out, numpy_ref(op, *xs), rtol=2e-4, atol=2e-5 if op == "softmax" else 2e-4,
                                   err_msg=f"{op} row length {c}, {ROW_THREAD_CHOICES[i]} threads")
