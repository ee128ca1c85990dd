"""sparse-format (format decomposition, issue 15 item 3): a CSR reduction rewritten into ELL, BSR, hyb.

Oracle: scipy.sparse (A @ B) for every format on generated patterns (empty rows, one dense row,
uniform random, power-law), at stage I (the interpreter runs the decomposed program as written),
II and III, and compiled; the graph op sparse_matmul (a sparse constant weight) against numpy.
"""

from __future__ import annotations

import dataclasses
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const
from mlc.ir.graph import Binding, Block, Constant, Value
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.sparse_format import find_csr, to_hyb
from mlc.ir.sparse_kernels import sparse_kernel
from mlc.ir.types import TensorType
from mlc.passes.registry import PassContext, get_pass
from mlc.runtime.artifact import loads
from mlc.runtime.model import model_from_artifact
from test_sparse import _cli, pattern

from mlc.compiler import build_module, with_memory_constants

F = 4
FORMATS = ("ell", "ell:40", "bsr:2", "hyb:1,0", "hyb:2,1", "hyb:3,2")


def _const_kernel(a: sp.csr_matrix) -> tuple[Module, dict[str, np.ndarray]]:
    """The ready-made CSR spmm with A's arrays as constants: main(B) = A @ B."""
    m = sparse_kernel("spmm", "csr", F)
    main = m.graph_functions()[0]
    consts = {"ip": a.indptr.astype(np.int32), "ix": a.indices.astype(np.int32), "dv": a.data.astype(np.float32)}
    binds = [Binding(Value(p.name, TensorType((Const(len(consts[k])),), p.type.dtype)), Constant(k))  # type: ignore[attr-defined]
             for p, k in zip(main.params[:3], consts)]
    b = Value("B", TensorType((Const(a.shape[1]), Const(F)), "f32"))
    c = Value("C", TensorType((Const(a.shape[0]), Const(F)), "f32"))
    call = dataclasses.replace(main.body.bindings[0].node, args=(*(x.var for x in binds), b))
    main = dataclasses.replace(main, params=(b,), body=Block((*binds, Binding(c, call)), (c,)))
    return m.with_function(main), consts


def _pass(name: str, m: Module, ctx: PassContext, **opts: Any) -> Module:
    info = get_pass(name)
    assert info is not None
    return info.fn(m, ctx, **info.validate_options(opts))


def _check_stages(a: sp.csr_matrix, fmt: str, seed: int = 0) -> None:
    m, consts = _const_kernel(a)
    ctx = PassContext(constants=consts, sink=None)
    out = _pass("sparse-format", m, ctx, format=fmt)
    b = np.random.default_rng(seed).standard_normal((a.shape[1], F)).astype(np.float32)
    want = a @ b
    text = print_module(out)
    assert parse_module(text) == out  # every stage prints and parses back
    for stage in (1, 2, 3):
        mod = out if stage == 1 else _pass("sparse-lower", out, ctx, stage=stage, parts=3)
        assert parse_module(print_module(mod)) == mod
        got = run_function(mod, {"B": b}, ctx.constants)["C"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{fmt} stage {stage}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["empty", "dense_row", "random", "power_law"])
def test_every_format_every_stage_matches_scipy(kind: str, fmt: str) -> None:
    _check_stages(pattern(kind, 10, 12, 3), fmt)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["empty", "dense_row", "random", "power_law"]), m=st.integers(1, 6),
       n=st.integers(1, 9), seed=st.integers(0, 1000), fmt=st.sampled_from(FORMATS))
def test_random_patterns(kind: str, m: int, n: int, seed: int, fmt: str) -> None:
    if fmt.startswith("bsr"):
        m, n = 2 * m, 2 * n
    _check_stages(pattern(kind, m, n, seed), fmt, seed)


def test_hyb_splits_long_rows_across_sub_rows() -> None:
    """A row of 11 nonzeros in hyb:1,2 becomes 3 sub-rows of width 4 (the last padded) in the long bucket;
    every stored value lands in exactly one bucket."""
    dense = np.zeros((3, 12), np.float32)
    dense[0, :11] = np.arange(1, 12)
    dense[1, 5] = 7
    dense[2, [1, 3]] = 2
    a = sp.csr_matrix(dense)
    arr = to_hyb(a.indptr, a.indices, a.data, 12, 1, 2, keep_empty=False)
    assert sorted(arr) == ["data_p0_b0", "data_p0_b1", "data_p0_long", "indices_p0_b0", "indices_p0_b1",
                           "indices_p0_long", "rows_p0_b0", "rows_p0_b1", "rows_p0_long", "subptr_p0_long"]
    assert arr["rows_p0_long"].tolist() == [0] and arr["subptr_p0_long"].tolist() == [0, 3]
    assert arr["data_p0_long"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 0]]
    assert arr["rows_p0_b0"].tolist() == [1] and arr["rows_p0_b1"].tolist() == [2]
    _check_stages(a, "hyb:1,2")


@cache
def _built(fmt: str) -> tuple[Any, sp.csr_matrix]:
    dense = pattern("power_law", 40, 30, 21).toarray()
    dense[5] = 1.5  # one dense row
    a = sp.csr_matrix(dense)
    m, consts = _const_kernel(a)
    if fmt.startswith("bsr"):
        pytest.skip("compiled BSR: test_graph_sparse_matmul_compiled")
    ctx = PassContext(constants=consts, sink=None)
    out = _pass("sparse-format", m, ctx, format=fmt)
    c = ctx.constants or {}
    built = build_module(with_memory_constants(out, c), c, "cpu")
    return model_from_artifact(loads(built.result.data), "<sparse-format>"), a


@pytest.mark.parametrize("fmt", ["ell", "hyb:2,1", "hyb:3,2"])
def test_compiled_matches_scipy(fmt: str) -> None:
    model, a = _built(fmt)
    b = np.random.default_rng(3).standard_normal((30, F)).astype(np.float32)
    np.testing.assert_allclose(model(B=b)["C"], a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["hyb:2,2", "bsr:4"])
def test_graph_sparse_matmul_compiled(fmt: str) -> None:
    """sparse_matmul by a constant (fuse's stage-I program over W^T's CSR), decomposed at build time:
    interpreted and compiled equal x @ W."""
    from mlc.ir.expr import Var
    from test_sparse_graph import _op_module, _weight

    w = _weight(40, 24, 0)
    m, arrays = _op_module(w, Var("N"))
    ctx = PassContext(constants=dict(arrays), sink=None)
    m = _pass("sparse-format", _pass("fuse", m, ctx), ctx, format=fmt)
    assert any(fmt.split(":")[0] in k for k in ctx.constants or {})
    x = np.random.default_rng(1).standard_normal((37, 40)).astype(np.float32)
    np.testing.assert_allclose(run_function(m, {"x": x}, ctx.constants)["y"], x @ w, rtol=1e-5, atol=1e-5)
    c = ctx.constants or {}
    model = model_from_artifact(loads(build_module(with_memory_constants(m, c), c, "cpu").result.data), "<g>")
    np.testing.assert_allclose(model(x=x)["y"], x @ w, rtol=1e-5, atol=1e-5)


def test_before_after_text() -> None:
    """hyb:1,1 of a 3 x 4 constant: the init becomes its own iteration, then one iteration per non-empty
    bucket (row map `rows_T`, ELL axis over it; the long bucket with a dense_variable sub-row axis)."""
    dense = np.array([[1, 0, 2, 3], [0, 0, 0, 0], [0, 4, 0, 0]], np.float32)
    a = sp.csr_matrix(dense)
    m, consts = _const_kernel(a)
    ctx = PassContext(constants=consts, sink=None)
    before = print_module(m)
    assert 'sp_iter "spmm"(S i in I, R j in J, S k in K) {' in before
    text = print_module(_pass("sparse-format", m, ctx, format="hyb:1,1"))
    want = [
        '%rows_p0_b0: tensor<1 x i32> = const "dv.hyb1_1.rows_p0_b0"',
        '%C: tensor<3 x 4 x f32> = call_tensor @spmm(%indptr, %rows_p0_b0, %indices_p0_b0, %data_p0_b0, %rows_p0_long, '
        '%subptr_p0_long, %indices_p0_long, %data_p0_long, %B)',
        "axis R_p0_b0 = dense_fixed(1)",
        "axis J_p0_b0 = sparse_fixed(R_p0_b0, n, 1, %indices_p0_b0)",
        "axis R_p0_long = dense_fixed(1)",
        "axis S_p0_long = dense_variable(R_p0_long, 2, 2, %subptr_p0_long)",
        "axis J_p0_long = sparse_fixed(S_p0_long, n, 2, %indices_p0_long)",
        "sparse %A_p0_long: (R_p0_long, S_p0_long, J_p0_long) = %data_p0_long",
        'sp_iter "spmm_zero"(S i in I, S k in K) {',
        "%C[i, k] = 0.0",
        'sp_iter "spmm_p0_b0"(S i_p0_b0 in R_p0_b0, R j_p0_b0 in J_p0_b0, S k in K) {',
        'sp_iter "spmm_p0_long"(S i_p0_long in R_p0_long, R s_p0_long in S_p0_long, R j_p0_long in J_p0_long, S k in K) {',
        "%C[min(max(check_range(cast<i64>(%rows_p0_long[i_p0_long]), 0, mp1 - 1), 0), mp1 - 2), k] = "
        "%C[min(max(check_range(cast<i64>(%rows_p0_long[i_p0_long]), 0, mp1 - 1), 0), mp1 - 2), k] + "
        "%A_p0_long[i_p0_long, s_p0_long, j_p0_long] * %B[j_p0_long, k]",
    ]
    lines = [ln.strip() for ln in text.splitlines()]
    pos = 0
    for w in want:
        assert w in lines[pos:], f"{w!r} not found after line {pos}:\n{text}"
        pos = lines.index(w, pos) + 1
    assert 'const "ix"' not in text and 'const "dv"' not in text  # the CSR arrays are gone but indptr
    assert sorted(ctx.constants or {})[0] == "dv.hyb1_1.data_p0_b0" and "ip" in (ctx.constants or {})
    assert (ctx.constants or {})["dv.hyb1_1.data_p0_long"].tolist() == [[1, 2], [3, 0]]


def test_sddmm_and_formats_already_are_left_alone() -> None:
    for op, fmt in (("sddmm", "csr"), ("spmm", "ell:3")):
        f = sparse_kernel(op, fmt, F).get(op)
        assert find_csr(f) is None  # type: ignore[arg-type]
    m = sparse_kernel("sddmm", "csr", F)
    ctx = PassContext(constants={}, sink=None)
    assert _pass("sparse-format", m, ctx, format="hyb:2,2") == m
    assert "no CSR reduction" in ctx.diagnostics[0].message


def _mlc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _cli(*args, cwd=str(cwd))


def test_run_time_ell_conversion_cli(tmp_path: Path) -> None:
    """A kernel whose CSR arrays are inputs: ell:W converts at run time (two generated programs, named by
    -v); results equal scipy; a row longer than W fails the run, located, no output; hyb is one error."""
    a = pattern("power_law", 30, 20, 4)
    b = np.random.default_rng(2).standard_normal((20, 8)).astype(np.float32)
    np.savez(tmp_path / "g.npz", indptr=a.indptr.astype(np.int32), indices=a.indices.astype(np.int32),
             data=a.data.astype(np.float32), B=b)
    longest = int(np.diff(a.indptr).max())
    assert _mlc("sparse-kernel", "spmm", "--feat", "8", "-o", "k.ir", cwd=tmp_path).returncode == 0
    for w in (longest, longest - 1):
        r = _mlc("-v", "sparse-format", "k.ir", "--format", f"ell:{w}", "-o", f"e{w}.ir", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"CSR -> ell:{w} at run time by @spmm_to_ell{w}_indices and @spmm_to_ell{w}_data" in r.stderr
        assert _mlc("build", f"e{w}.ir", "-o", f"e{w}.mlc", cwd=tmp_path).returncode == 0
        r = _mlc("run", f"e{w}.mlc", "--inputs", "g.npz", "-o", f"o{w}.npz", cwd=tmp_path)
        if w == longest:
            assert r.returncode == 0, r.stderr
            np.testing.assert_allclose(np.load(tmp_path / f"o{w}.npz")["C"], a @ b, rtol=1e-5, atol=1e-5)
        else:
            assert r.returncode == 1 and f"kernel spmm_to_ell{w}_indices: index {longest} out of range [0, {w + 1})" in r.stderr
            assert not (tmp_path / f"o{w}.npz").exists()
    r = _mlc("sparse-format", "k.ir", "--format", "hyb:2,3", "-o", "h.ir", cwd=tmp_path)
    assert r.returncode == 1 and "k.ir:5:3: error: sparse-format: --format hyb:2,3 needs @spmm's sparse operand as a " \
                                 "build-time constant" in r.stderr
    assert not (tmp_path / "h.ir").exists()


@pytest.mark.parametrize("fmt, message", [
    ("coo", "unknown sparse format 'coo'"), ("hyb:0,2", "bad hyb format"), ("ell:0", "unknown sparse format")])
def test_bad_format_option(fmt: str, message: str) -> None:
    m, consts = _const_kernel(pattern("random", 4, 4, 0))
    with pytest.raises(MlcError, match=message):
        _pass("sparse-format", m, PassContext(constants=consts, sink=None), format=fmt)


def test_too_narrow_ell_for_a_constant_is_located() -> None:
    m, consts = _const_kernel(pattern("dense_row", 4, 6, 0))
    with pytest.raises(MlcError, match=r"sparse-format: @spmm \(dv\): ell:2: row \d has 6 nonzeros \(more than 2\)"):
        _pass("sparse-format", m, PassContext(constants=consts, sink=None), format="ell:2")


def test_format_tuning_records_and_replays(tmp_path: Path) -> None:
    """A few trials over (format, row parts) on a small power-law matrix: each is a database record, the
    module comes back in the fastest recorded point (format and `sparse_parts`), `sparse-format --format
    auto --db` rebuilds the same module and constants from the file alone, and the result equals scipy."""
    from mlc.passes.sparse_format import FORMAT_SPACE, PARTS_SPACE, trace_point
    from mlc.passes.tune.database import Database
    from mlc.tune.tuning import tune_sparse_formats

    a = pattern("power_law", 64, 48, 5)
    m, consts = _const_kernel(a)
    db = Database(tmp_path / "fmt.jsonl")
    tuned, tconsts = tune_sparse_formats(m, consts, db, trials=3, seed=2)
    assert len(db.records) == 3 and trace_point(db.records[0].trace) == ("csr", 16)  # the default point first
    points = [trace_point(r.trace) for r in db.records]
    assert all(p is not None and p[0] in FORMAT_SPACE and p[1] in PARTS_SPACE for p in points)
    best = min((r for r in db.records if r.ok), key=lambda r: r.cost)
    fmt, parts = trace_point(best.trace)  # type: ignore[misc]
    assert dict(tuned.get("spmm").attrs)["sparse_parts"] == parts
    if fmt != "csr":
        assert any(k.startswith(f"dv.{fmt.replace(':', '').replace(',', '_')}") for k in tconsts)
    ctx = PassContext(constants=dict(consts), sink=None)
    replayed = _pass("sparse-format", m, ctx, format="auto", db=str(tmp_path / "fmt.jsonl"))
    assert print_module(replayed) == print_module(tuned)
    assert sorted(ctx.constants or {}) == sorted(tconsts)
    assert f"@spmm: {fmt} with {parts} row parts" in ctx.diagnostics[0].message
    b = np.random.default_rng(0).standard_normal((48, F)).astype(np.float32)
    np.testing.assert_allclose(run_function(replayed, {"B": b}, ctx.constants)["C"], a @ b, rtol=1e-5, atol=1e-5)
    with pytest.raises(MlcError, match="--format auto needs --db"):
        _pass("sparse-format", m, ctx, format="auto")
