"""Sparse kernels (issue 15): every stage of spmm/sddmm in csr and ell against scipy.sparse, in the
interpreter and compiled for the CPU; the text format, the verifier and bad input."""

from __future__ import annotations

import subprocess
import sys
from functools import cache

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlc.ir.diagnostics import MlcError
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.sparse_kernels import sparse_kernel
from mlc.ir.sparse_lower import lower_sparse
from mlc.ir.tir_interp import run_prim
from mlc.ir.verify import verify_module

import mlc.sparse as msp

F = 8
FORMATS = ("csr", "ell")


def pattern(kind: str, m: int, n: int, seed: int) -> sp.csr_matrix:
    """empty rows, one dense row, uniform random, or power-law row lengths (duplicate-free)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((m, n), np.float32)
    if kind == "dense_row":
        dense[rng.integers(m)] = 1
    elif kind == "random":
        dense[rng.random((m, n)) < 0.2] = 1
    elif kind == "power_law":
        for r in range(m):
            k = min(n, int(rng.pareto(1.2)) + (r % 2))
            dense[r, rng.choice(n, size=k, replace=False)] = 1
    dense *= rng.standard_normal((m, n)).astype(np.float32) + 2
    return sp.csr_matrix(dense)


def _inputs(a: sp.csr_matrix, fmt: str) -> tuple[str, list[np.ndarray]]:
    ip, ix = a.indptr.astype(np.int32), a.indices.astype(np.int32)
    if fmt == "csr":
        return "csr", [ip, ix, a.data.astype(np.float32)]
    w = max(1, int(np.diff(ip).max(initial=0)))
    ei, ed = msp.to_ell(ip, ix, a.data.astype(np.float32), w)
    return f"ell:{w}", [ei, ed]


def _sddmm_values(a: sp.csr_matrix, fmt: str, out: np.ndarray) -> np.ndarray:
    if fmt == "csr":
        return out
    lens = np.diff(a.indptr)
    return out[np.repeat(np.arange(a.shape[0]), lens), np.arange(a.nnz) - np.repeat(a.indptr[:-1], lens)]


def _run(op: str, fmt: str, a: sp.csr_matrix, stage: int, seed: int = 0, parts: int = 0) -> None:
    """Run `op` at `stage` (1: stage I as written) in the interpreter and compare with scipy; `parts`:
    rows split into parts of equal nonzeros."""
    rng = np.random.default_rng(seed)
    m, n = a.shape
    spec, ins = _inputs(a, fmt)
    f = sparse_kernel(op, spec, F).get(op)
    if stage > 1:
        f = lower_sparse(f, stage, parts)
    if op == "spmm":
        b = rng.standard_normal((n, F)).astype(np.float32)
        c = np.full((m, F), np.nan, np.float32)
        run_prim(f, [*ins, b, c])
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)
    else:
        x, y = rng.standard_normal((m, F)).astype(np.float32), rng.standard_normal((n, F)).astype(np.float32)
        out = np.full(ins[-1].shape, np.nan, np.float32)
        run_prim(f, [*ins, x, y, out])
        rows = np.repeat(np.arange(m), np.diff(a.indptr))  # A's nonzeros in CSR order
        want = a.data * np.einsum("pk,pk->p", x[rows], y[a.indices])
        np.testing.assert_allclose(_sddmm_values(a, fmt, out), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
@pytest.mark.parametrize("kind", ["empty", "dense_row", "random", "power_law"])
def test_every_stage_matches_scipy(op: str, fmt: str, stage: int, kind: str) -> None:
    _run(op, fmt, pattern(kind, 9, 7, 1), stage)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["empty", "dense_row", "random", "power_law"]), m=st.integers(1, 8),
       n=st.integers(1, 8), seed=st.integers(0, 10**6), op=st.sampled_from(["spmm", "sddmm"]),
       fmt=st.sampled_from(FORMATS), stage=st.sampled_from([1, 2, 3]), parts=st.sampled_from([0, 1, 3, 16]))
def test_random_patterns(kind: str, m: int, n: int, seed: int, op: str, fmt: str, stage: int, parts: int) -> None:
    _run(op, fmt, pattern(kind, m, n, seed), stage, seed, parts)


@pytest.mark.parametrize("parts", [1, 2, 5, 40])
@pytest.mark.parametrize("kind", ["empty", "dense_row", "power_law"])
def test_rows_split_by_nonzeros(kind: str, parts: int) -> None:
    """More parts than rows, empty parts, one row holding every nonzero: each row exactly once."""
    for op in ("spmm", "sddmm"):
        _run(op, "csr", pattern(kind, 9, 7, 4), 3, 4, parts)


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("fmt", ["csr", "ell:3"])
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_text_round_trip(op: str, fmt: str, stage: int) -> None:
    m = sparse_kernel(op, fmt, 16)
    if stage > 1:
        m = m.with_function(lower_sparse(m.get(op), stage, 4))
    text = print_module(m)
    back = parse_module(text)
    assert back == m
    assert print_module(back) == text
    verify_module(back, text)


SPMM = print_module(sparse_kernel("spmm", "csr", 4))


@pytest.mark.parametrize("old, new, message", [
    ("axis J = sparse_variable(I,", "axis J = sparse_variable(K,", "undefined axis K"),
    ("  axis K = dense_fixed(4)\n", "  axis K = dense_fixed(4)\n  axis L = sparse_variable(K, n, nnz, %indptr, %indices)\n"
     "  sparse %Z: (I, L) = %data\n", "axis L must directly follow its parent K, but follows I"),
    ("sparse %A: (I, J)", "sparse %A: (J, I)", "axis J must directly follow its parent I, but comes first"),
    ("%A[i, j]", "%A[j, i]", "sparse buffer %A is over (I, J): index 0 must iterate I, got j (axis J)"),
    ("%A[i, j]", "%A[i, k]", "index 1 must iterate J, got k (axis K)"),
    ('(S i in I, R j in J, S k in K)', '(R j in J, S i in I, S k in K)', "axis J is iterated before its parent I"),
    ('(S i in I, R j in J, S k in K)', '(S i in I, S j in J, S k in K)', "has an init but no reduce"),
])
def test_verifier_errors_are_located(old: str, new: str, message: str) -> None:
    text = SPMM.replace(old, new)
    assert text != SPMM
    with pytest.raises(MlcError) as e:
        verify_module(parse_module(text, "k.ir"), text)
    assert message in e.value.message
    assert e.value.loc is not None and e.value.loc.line > 0


# ---- compiled -----------------------------------------------------------------------------------
@cache
def _kernel(op: str, fmt: str) -> msp.SparseKernel:
    return msp.compile(pattern("power_law", 40, 30, 3), op, feat=F, format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op", ["spmm", "sddmm"])
def test_compiled_matches_scipy(op: str, fmt: str) -> None:
    k = _kernel(op, fmt)
    a, rng = k.matrix, np.random.default_rng(5)
    if op == "spmm":
        b = rng.standard_normal((30, F)).astype(np.float32)
        np.testing.assert_allclose(k(b), a @ b, rtol=1e-5, atol=1e-5)
    else:
        x, y = rng.standard_normal((40, F)).astype(np.float32), rng.standard_normal((30, F)).astype(np.float32)
        np.testing.assert_allclose(k(x, y).toarray(), a.multiply(x @ y.T).toarray(), rtol=1e-5, atol=1e-5)


def test_dense_operand_of_wrong_width() -> None:
    with pytest.raises(MlcError, match="B must be 30 x 8, got 30 x 9"):
        _kernel("spmm", "csr")(np.zeros((30, 9), np.float32))


@pytest.mark.parametrize("mutate, message", [
    (lambda ip, ix: (np.array([0, 2, 1, 3], np.int32), ix), "indptr is not monotone"),
    (lambda ip, ix: (ip, np.array([0, 5, 1], np.int32)), "indices[1] = 5 is out of range [0, 4)"),
    (lambda ip, ix: (ip, np.array([1, 0, 2], np.int32)), "indices of row 0 are not sorted"),
    (lambda ip, ix: (np.array([0, 2, 3, 2], np.int32), ix), "indptr is not monotone"),
    (lambda ip, ix: (np.array([0, 2, 2, 2], np.int32), ix), "nnz disagrees"),
])
def test_check_csr(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    ip, ix = mutate(np.array([0, 2, 2, 3], np.int32), np.array([0, 1, 2], np.int32))
    with pytest.raises(MlcError) as e:
        msp.check_csr(ip, ix, 3, 4, need_sorted=True)
    assert message in e.value.message


def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    """`mlc ARGS` in `cwd`, in this process (click's runner: no interpreter start per call)."""
    import contextlib

    from click.testing import CliRunner
    from mlc.cli import commands  # noqa: F401  (registers the subcommands)
    from mlc.cli.main import cli

    with contextlib.chdir(cwd):
        r = CliRunner().invoke(cli, list(args))
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("sparse")
    assert _cli("sparse-kernel", "spmm", "--format", "csr", "--feat", "4", "-o", "k.ir", cwd=str(d)).returncode == 0
    r = _cli("build", "k.ir", "-o", "k.mlc", cwd=str(d))
    assert r.returncode == 0, r.stderr
    return str(d)


def test_cli_build_run_from_save_npz(built: str) -> None:
    a = pattern("random", 6, 5, 2)
    b = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.savez(f"{built}/g.npz", indptr=a.indptr.astype(np.int32), indices=a.indices.astype(np.int32), data=a.data, B=b)
    r = _cli("run", "k.mlc", "--inputs", "g.npz", "-o", "out.npz", cwd=built)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(f"{built}/out.npz")["C"], a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("indptr, indices, message", [
    ([0, 2, 1, 3], [0, 1, 2], "out of range [2, "),        # indptr not monotone
    ([0, 1, 2, 3], [0, 9, 2], "index 9 out of range [0, 5)"),  # a column past B's rows
    ([0, 1, 2, 7], [0, 1, 2], "index 7 out of range"),     # indptr past nnz
])
def test_cli_bad_input_fails_without_output(built: str, indptr: list[int], indices: list[int], message: str) -> None:
    b = np.ones((5, 4), np.float32)
    np.savez(f"{built}/bad.npz", indptr=np.array(indptr, np.int32), indices=np.array(indices, np.int32),
             data=np.ones(3, np.float32), B=b)
    r = _cli("run", "k.mlc", "--inputs", "bad.npz", "-o", "bad_out.npz", cwd=built)
    assert r.returncode == 1
    assert message in r.stderr and "kernel spmm" in r.stderr
    assert not (__import__("pathlib").Path(built) / "bad_out.npz").exists()


def test_cli_nnz_disagreeing_with_data(built: str) -> None:
    np.savez(f"{built}/bad2.npz", indptr=np.array([0, 1, 2, 3], np.int32), indices=np.array([0, 1, 2], np.int32),
             data=np.ones(4, np.float32), B=np.ones((5, 4), np.float32))
    r = _cli("run", "k.mlc", "--inputs", "bad2.npz", cwd=built)
    assert r.returncode == 1 and "nnz" in r.stderr


def test_sparse_lower_is_a_no_op_on_dense_modules() -> None:
    from mlc.passes.registry import PassContext
    from mlc.passes.sparse_lower import SparseLower

    text = (SPMM.split("prim @spmm")[0].split("graph")[0] +
            "prim @f(%x: buffer<4 x f32>, %y: buffer<4 x f32>) outputs 1 {\n  for i in 0..4 {\n    %y[i] = %x[i]\n  }\n}\n")
    m = parse_module(text)
    assert SparseLower(schedule=True).apply(m, PassContext()) is m


_GUARD_CHILD = """
import numpy as np, scipy.sparse as sp
import mlc.sparse as msp
from mlc.ir.diagnostics import MlcError
from mlc.runtime.artifact import loads
from mlc.runtime.model import Model
from mlc.compiler import build_module
from mlc.ir.sparse_kernels import sparse_kernel
built = build_module(sparse_kernel("spmm", "csr", 8), {})
a = sp.random(23, 17, density=0.3, format="csr", random_state=4, dtype=np.float32)
b = np.random.default_rng(0).standard_normal((17, 8)).astype(np.float32)
ip, ix = a.indptr.astype(np.int32), a.indices.astype(np.int32)
bad_ix = ix.copy(); bad_ix[-1] = 10**9
bad_ip = ip.copy(); bad_ip[5] = -7; bad_ip[-1] = 10**9
for side in ("after", "before"):
    print(side, flush=True)
    m = Model(loads(built.result.data), "guarded", guard=side)
    np.testing.assert_allclose(m(indptr=ip, indices=ix, data=a.data, B=b)["C"], a @ b, rtol=1e-5, atol=1e-5)
    for p, i in ((ip, bad_ix), (bad_ip, ix)):
        try:
            m(indptr=p, indices=i, data=a.data, B=b)
            raise SystemExit("bad input accepted")
        except MlcError:
            pass
"""


def test_compiled_spmm_stays_in_bounds_under_guard_pages() -> None:
    """Valid input and index arrays pointing far outside: the kernel reads nothing outside its buffers."""
    r = subprocess.run([sys.executable, "-c", _GUARD_CHILD], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode} (guard pages {(r.stdout.split() or ['?'])[-1]})\n{r.stderr[-2000:]}"


# ---- golden text of each stage (spmm, CSR, 4 features) -------------------------------------------
STAGE2_BODY = """\
  for i in 0..mp1 - 1 {
    for k in 0..4 {
      block "spmm_init"(S vi = i in 0..mp1 - 1, S vk = k in 0..4) {
        %C[vi, vk] = 0.0
      }
    }
    for j in 0..max(min(min(check_range(cast<i64>(%indptr[i + 1]), max(check_range(cast<i64>(%indptr[i]), 0, nnz + 1), 0), min(max(check_range(cast<i64>(%indptr[i]), 0, nnz + 1), 0) + n, nnz) + 1), nnz) - max(check_range(cast<i64>(%indptr[i]), 0, nnz + 1), 0), n), 0) {
      let j_col = min(max(check_range(cast<i64>(%indices[max(cast<i64>(%indptr[i]), 0) + j]), 0, n), 0), n - 1) {
        for k_1 in 0..4 {
          block "spmm"(S vi_1 = i in 0..mp1 - 1, R vj = j in 0..n, S vk_1 = k_1 in 0..4) {
            %C[vi_1, vk_1] = %C[vi_1, vk_1] + %A[vi_1, vj] * %B[j_col, vk_1]
          }
        }
      }
    }
  }
}
"""

STAGE3 = """\
prim @spmm(%indptr: buffer<mp1 x i32>, %indices: buffer<nnz x i32>, %data: buffer<nnz x f32>, %B: buffer<n x 4 x f32>, %C: buffer<mp1 - 1 x 4 x f32>) outputs 1 {
  for i in 0..mp1 - 1 {
    for k in 0..4 {
      block "spmm_init"(S vi = i in 0..mp1 - 1, S vk = k in 0..4) {
        %C[vi, vk] = 0.0
      }
    }
    for j in 0..max(min(min(check_range(cast<i64>(%indptr[i + 1]), max(check_range(cast<i64>(%indptr[i]), 0, nnz + 1), 0), min(max(check_range(cast<i64>(%indptr[i]), 0, nnz + 1), 0) + n, nnz) + 1), nnz) - max(check_range(cast<i64>(%indptr[i]), 0, nnz + 1), 0), n), 0) {
      let j_col = min(max(check_range(cast<i64>(%indices[max(cast<i64>(%indptr[i]), 0) + j]), 0, n), 0), n - 1) {
        for k_1 in 0..4 {
          block "spmm"(S vi_1 = i in 0..mp1 - 1, R vj = j in 0..n, S vk_1 = k_1 in 0..4) {
            %C[vi_1, vk_1] = %C[vi_1, vk_1] + %data[max(cast<i64>(%indptr[vi_1]), 0) + vj] * %B[j_col, vk_1]
          }
        }
      }
    }
  }
}
"""


def test_stage_texts() -> None:
    """Stage II: the init nest shares the row loop; the row extent and the column (read once per
    nonzero, outside the feature loop) are clamped and checked; %A is still indexed by position. Stage III: %A is %data at the flat offset."""
    m = sparse_kernel("spmm", "csr", 4)
    s2 = print_module(m.with_function(lower_sparse(m.get("spmm"), 2)))
    assert s2.endswith(STAGE2_BODY) and "  sparse %A: (I, J) = %data\n" + STAGE2_BODY in s2
    s3 = print_module(m.with_function(lower_sparse(m.get("spmm"), 3)))
    assert s3.endswith(STAGE3)


def _save(path: str, indptr: list[int], indices: list[int], data: list[float], shape: tuple[int, int]) -> None:
    """What scipy.sparse.save_npz writes for a CSR matrix, with whatever arrays (bad ones too)."""
    np.savez(path, format=np.array(b"csr"), shape=np.array(shape), indptr=np.array(indptr, np.int32),
             indices=np.array(indices, np.int32), data=np.array(data, np.float32))


def test_sparse_inputs_from_save_npz(built: str) -> None:
    a = pattern("power_law", 6, 5, 7)
    sp.save_npz(f"{built}/a.npz", a)
    b = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.save(f"{built}/b.npy", b)
    r = _cli("sparse-inputs", "a.npz", "--dense", "B=b.npy", "-o", "g_in.npz", cwd=built)
    assert r.returncode == 0, r.stderr
    r = _cli("run", "k.mlc", "--inputs", "g_in.npz", "-o", "g_out.npz", cwd=built)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(f"{built}/g_out.npz")["C"], a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("indptr, indices, data, dense_rows, message", [
    ([0, 2, 1, 3], [0, 1, 2], [1, 1, 1], 5, "indptr is not monotone"),
    ([0, 1, 2, 3], [0, 7, 2], [1, 1, 1], 5, "indices[1] = 7 is out of range [0, 5)"),
    ([0, 1, 2, 3], [0, 1, 2], [1, 1, 1, 1], 5, "nnz disagrees"),
    ([0, 1, 2, 3], [0, 1, 2], [1, 1, 1], 6, "B must have 5 rows"),
])
def test_sparse_inputs_rejects_bad_files(built: str, indptr: list[int], indices: list[int], data: list[float],
                                         dense_rows: int, message: str) -> None:
    _save(f"{built}/bad_a.npz", indptr, indices, data, (3, 5))
    np.save(f"{built}/bad_b.npy", np.ones((dense_rows, 4), np.float32))
    r = _cli("sparse-inputs", "bad_a.npz", "--dense", "B=bad_b.npy", "-o", "bad_in.npz", cwd=built)
    assert r.returncode == 1 and message in r.stderr and ".np" in r.stderr.split("error")[0]
    assert not (__import__("pathlib").Path(built) / "bad_in.npz").exists()


@pytest.mark.parametrize("stage", [1, 3])
def test_f16_kernel_in_the_interpreter(stage: int) -> None:
    """f16 values and operands, accumulated in f16: close to the f32 product of the rounded inputs."""
    a = pattern("random", 7, 6, 9)
    a.data = a.data.astype(np.float16).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((6, F)).astype(np.float16)
    f = sparse_kernel("spmm", "csr", F, "f16").get("spmm")
    if stage > 1:
        f = lower_sparse(f, stage, 2)
    c = np.full((7, F), np.nan, np.float16)
    run_prim(f, [a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data.astype(np.float16), b, c])
    np.testing.assert_allclose(c.astype(np.float32), a @ b.astype(np.float32), rtol=2e-2, atol=2e-2)


def test_stage_one_module_runs_in_the_graph_interpreter() -> None:
    """`mlc run K.ir`: the graph calls the stage-I prim, which the interpreter runs directly."""
    from mlc.ir.interp import run_function

    a = pattern("power_law", 8, 6, 5)
    b = np.random.default_rng(3).standard_normal((6, F)).astype(np.float32)
    m = parse_module(print_module(sparse_kernel("spmm", "csr", F)))
    out = run_function(m, {"indptr": a.indptr.astype(np.int32), "indices": a.indices.astype(np.int32),
                           "data": a.data, "B": b})
    np.testing.assert_allclose(out["C"], a @ b, rtol=1e-5, atol=1e-5)


def test_schedule_primitives_apply_to_stage_two() -> None:
    """Stage II is ordinary loops and blocks: split the feature loop, vectorize its inner part, run the
    rows in parallel; flattened afterwards it still agrees with scipy."""
    from mlc.ir.sparse_lower import to_flat
    from mlc.passes.schedule.schedule import Schedule

    f = lower_sparse(sparse_kernel("spmm", "csr", F).get("spmm"), 2)
    sch = Schedule(f)
    block = sch.get_block("spmm")
    i, _j, k = sch.get_loops(block)
    _ko, ki = sch.split(k, [None, 4])
    sch.vectorize(ki)
    sch.parallel(i)
    assert "vectorized" in print_module(sparse_kernel("spmm", "csr", F).with_function(sch.func))
    a = pattern("power_law", 9, 7, 11)
    b = np.random.default_rng(4).standard_normal((7, F)).astype(np.float32)
    c = np.full((9, F), np.nan, np.float32)
    run_prim(to_flat(sch.func), [a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data, b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


# ---- bsrmm: four axes (block rows, sparse block columns, the two dense in-block axes) -----------
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("kind", ["empty", "dense_row", "power_law"])
def test_bsrmm_every_stage_matches_scipy(kind: str, size: int, stage: int) -> None:
    a = pattern(kind, 4 * size, 3 * size, 6)
    blocks = msp.to_bsr(a, size, np.float32)
    b = np.random.default_rng(8).standard_normal((3 * size, F)).astype(np.float32)
    mod = sparse_kernel("bsrmm", f"bsr:{size}", F)
    f = mod.get("bsrmm") if stage == 1 else lower_sparse(mod.get("bsrmm"), stage, 3)
    text = print_module(mod.with_function(f))
    assert parse_module(text) == mod.with_function(f)
    c = np.full((4 * size, F), np.nan, np.float32)
    run_prim(f, [blocks["indptr"], blocks["indices"], blocks["data"], b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


def test_bsrmm_compiled() -> None:
    a = pattern("random", 12, 8, 13)
    b = np.random.default_rng(9).standard_normal((8, F)).astype(np.float32)
    np.testing.assert_allclose(msp.compile(a, "bsrmm", feat=F, format="bsr:4")(b), a @ b, rtol=1e-5, atol=1e-5)
    with pytest.raises(MlcError, match="not a multiple of 5"):
        msp.to_bsr(a, 5, np.float32)
    with pytest.raises(MlcError, match="bsrmm takes --format bsr:S"):
        sparse_kernel("bsrmm", "csr")


# ---- segment-mm: a dense_variable axis (ragged segments of rows), values with trailing dims ------
def _segments(lens: list[int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    x = rng.standard_normal((int(indptr[-1]), F)).astype(np.float32)
    w = rng.standard_normal((len(lens), F, F)).astype(np.float32)
    ref = np.einsum("rk,rkn->rn", x, w[np.repeat(np.arange(len(lens)), lens)])  # numpy oracle
    return indptr, x, w, ref


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("lens", [[3, 0, 5, 1, 0, 2], [0], [4], [1, 1, 1, 1, 1, 1, 1, 1, 9]])
def test_segment_mm_every_stage(lens: list[int], stage: int) -> None:
    indptr, x, w, ref = _segments(lens, 3)
    f = sparse_kernel("segment-mm", "csr", F).get("segment_mm")
    if stage > 1:
        f = lower_sparse(f, stage, 3)
    c = np.full(ref.shape, np.nan, np.float32)
    run_prim(f, [indptr, x, w, c])
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-5)


def test_segment_mm_compiled() -> None:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module

    indptr, x, w, ref = _segments([30, 0, 50, 1, 0, 7], 4)
    built = build_module(sparse_kernel("segment-mm", "csr", F), {})
    got = model_from_artifact(loads(built.result.data), "segment-mm")(indptr=indptr, X=x, W=w)["C"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_values_dims_must_fit_the_axes() -> None:
    """(I, J) over CSR values: 2 dims would index the ragged axis J directly."""
    text = SPMM.replace("%data: buffer<nnz x f32>", "%data: buffer<nnz x 1 x f32>").replace(
        "%data: tensor<nnz x f32>", "%data: tensor<nnz x 1 x f32>")
    with pytest.raises(MlcError, match="values %data have 2 dims; they need 1 to 1"):
        verify_module(parse_module(text), text)


@cache
def _compiled_module(op: str, fmt: str):  # type: ignore[no-untyped-def]
    """One build per (op, format): the structure is an input, so one kernel serves every pattern."""
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    from mlc.compiler import build_module

    return model_from_artifact(loads(build_module(sparse_kernel(op, fmt, F), {}).result.data), f"{op}-{fmt}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["empty", "dense_row", "random", "power_law"]), m=st.integers(1, 40),
       n=st.integers(1, 40), seed=st.integers(0, 10**6), op=st.sampled_from(["spmm", "sddmm"]),
       fmt=st.sampled_from(["csr", "ell:6"]))
def test_compiled_random_patterns(kind: str, m: int, n: int, seed: int, op: str, fmt: str) -> None:
    """Compiled kernels (rows split in 16 parts, vectorized) on random structures vs scipy / numpy."""
    a = pattern(kind, m, n, seed)
    if fmt == "ell:6" and a.nnz and int(np.diff(a.indptr).max()) > 6:
        a = sp.csr_matrix(a.toarray() * (np.cumsum(a.toarray() != 0, axis=1) <= 6))  # at most 6 per row
    rng = np.random.default_rng(seed)
    ip, ix = a.indptr.astype(np.int32), a.indices.astype(np.int32)
    ins = {"indptr": ip, "indices": ix, "data": a.data.astype(np.float32)} if fmt == "csr" else dict(
        zip(("indices", "data"), msp.to_ell(ip, ix, a.data.astype(np.float32), 6)))
    model = _compiled_module(op, fmt)
    if op == "spmm":
        b = rng.standard_normal((n, F)).astype(np.float32)
        np.testing.assert_allclose(model(**ins, B=b)["C"], a @ b, rtol=1e-5, atol=1e-5)
    else:
        x, y = rng.standard_normal((m, F)).astype(np.float32), rng.standard_normal((n, F)).astype(np.float32)
        rows = np.repeat(np.arange(m), np.diff(a.indptr))
        want = a.data * np.einsum("pk,pk->p", x[rows], y[a.indices])
        np.testing.assert_allclose(_sddmm_values(a, "csr" if fmt == "csr" else "ell", model(**ins, X=x, Y=y)["C"]),
                                   want, rtol=1e-5, atol=1e-5)


# ---- hyb: composable formats (column parts x ELL buckets, long rows split), one iteration each --
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("hyb", [(1, 0), (2, 1), (3, 2)])
@pytest.mark.parametrize("kind", ["empty", "dense_row", "random", "power_law"])
def test_hyb_every_stage_matches_scipy(kind: str, hyb: tuple[int, int], stage: int) -> None:
    a = pattern(kind, 9, 11, 12)
    b = np.random.default_rng(6).standard_normal((11, F)).astype(np.float32)
    ins = msp.to_hyb(a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data, 11, *hyb)
    mod = sparse_kernel("spmm", f"hyb:{hyb[0]},{hyb[1]}", F)
    f = mod.get("spmm") if stage == 1 else lower_sparse(mod.get("spmm"), stage, 3)
    text = print_module(mod.with_function(f))
    assert parse_module(text) == mod.with_function(f)
    c = np.full((9, F), np.nan, np.float32)
    run_prim(f, [ins[p.name] for p in f.params[:-2]] + [b, c])
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


def test_hyb_buckets_partition_the_nonzeros() -> None:
    """Every stored entry lands in exactly one bucket, each bucket holding rows of its width; a long row's
    sub-rows are full but the last."""
    a = pattern("power_law", 30, 20, 14)
    ins = msp.to_hyb(a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data, 20, 2, 2)
    held = sum(int(np.count_nonzero(v)) for k, v in ins.items() if k.startswith("data_"))
    assert held == a.nnz
    for width, tag in ((1, "p0_b0"), (2, "p1_b1"), (4, "p0_b2")):
        d = ins[f"data_{tag}"]
        assert d.shape[1] == width and all(width // 2 < np.count_nonzero(r) <= width for r in d)
    for p in (0, 1):
        ptr, d = ins[f"subptr_p{p}_long"], ins[f"data_p{p}_long"]
        assert d.shape[1] == 4 and len(ptr) == len(ins[f"rows_p{p}_long"]) + 1 and ptr[-1] == len(d)
        assert all(np.count_nonzero(d[ptr[q]:ptr[q + 1] - 1]) == 4 * (ptr[q + 1] - 1 - ptr[q]) for q in range(len(ptr) - 1))


def test_hyb_compiled() -> None:
    a = pattern("power_law", 40, 30, 15)
    b = np.random.default_rng(10).standard_normal((30, F)).astype(np.float32)
    np.testing.assert_allclose(msp.compile(a, "spmm", feat=F, format="hyb:2,2")(b), a @ b, rtol=1e-5, atol=1e-5)
    with pytest.raises(MlcError, match="is for spmm"):
        sparse_kernel("sddmm", "hyb:2,2")
