"""Tuning for target cuda: the GPU design space (sampled traces replay, keep semantics and compile with
nvcc), search wiring and the database on CPU, and (marked gpu) real tuning runs measured on the GPU."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cuda_helpers import matmul
from mlc.cli.tune import tune_cmd
from mlc.codegen.cuda import lower_to_cuda
from mlc.codegen.cuda_wgmma import WGMMA_CONFIGS
from mlc.ir import arith
from mlc.ir.expr import Var
from mlc.ir.module import Module
from mlc.ir.printer import print_module
from mlc.ir.target import Target
from mlc.ir.tir import BlockStmt, For, PrimFunc
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_visit import walk
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.schedule import Trace
from mlc.passes.schedule.gpu_rules import (
    default_gpu_schedule,
    default_gpu_trace,
    func_gemm_config,
    gemm_configs,
    sample_gpu_schedule,
)
from mlc.passes.tune.database import Database, Record, mlc_version, workload_key
from mlc.runtime.cuda import cuda_unavailable
from mlc.tune.features import extract
from mlc.tune.measure import Result, Runner
from mlc.tune.search import SearchConfig, mutate
from mlc.tune.tuning import final_schedule, tune_module
from test_tir_interp import conv_func, matmul_func, np_conv, softmax_func

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)
GPU_WHY = cuda_unavailable()


def _tags(f: PrimFunc) -> set[str]:
    return {s.thread_tag for _, s in walk(f.body) if isinstance(s, For) and s.kind == "thread"}


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _samples(f: PrimFunc, n: int) -> list[Trace]:
    return [sample_gpu_schedule(f, seed=s).trace for s in range(n)]


# ---- the design space (no GPU needed) ---------------------------------------------------------------
def test_default_trace_is_the_default_schedule_and_a_point_of_the_space() -> None:
    for f in (softmax_func(Var("n"), 300), matmul_func(32, 16, 48), matmul("h", 256, 256, 128, "f16")):
        sch = default_gpu_trace(f)
        assert sch.func == default_gpu_schedule(f)
        again = Trace.from_json(sch.trace.to_json())
        assert again.apply(f) == sch.func
        assert any(i.kind == "sample_categorical" for i in sch.trace.insts)  # search can mutate it


def test_sampled_traces_replay_and_keep_semantics() -> None:
    rng = np.random.default_rng(0)
    cases = [
        (matmul_func(32, 16, 48), lambda a, b: a @ b, [(32, 16), (16, 48)]),
        (softmax_func(6, 300), lambda x: _np_softmax(x), [(6, 300)]),
        (conv_func(1, 3, 6, 5, 4, 3), np_conv, [(1, 3, 6, 5), (4, 3, 3, 3)]),
    ]
    for f, oracle, shapes in cases:
        traces = _samples(f, 5)
        assert len({t.to_json() for t in traces}) >= 3, f.name  # a space, not a point
        ins = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        want = oracle(*[x.astype(np.float64) for x in ins])
        for tr in traces:
            g = Trace.from_json(tr.to_json()).apply(f)
            assert {"blockIdx.x", "threadIdx.x"} <= _tags(g)
            assert not any(t.startswith("vthread") for t in _tags(g))
            out = np.zeros(want.shape, np.float32)
            run_prim(g, [*ins, out])
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4, err_msg=f"{f.name} {tr.to_json()[:200]}")


def test_tiling_is_sampled_with_perfect_tiles_and_local_accumulators() -> None:
    f = matmul_func(32, 16, 48)
    tiled = [tr for tr in _samples(f, 12) if any(i.kind == "sample_perfect_tile" for i in tr.insts)]
    assert tiled, "multi-level tiling is never sampled"
    for tr in tiled:
        tiles = [i.decision for i in tr.insts if i.kind == "sample_perfect_tile"]
        assert sorted(len(t) for t in tiles) == [3, 5, 5]  # SSSRRSRS: 5 spatial levels, 3 reduce levels
        g = tr.apply(f)
        threads = [arith.as_int(s.extent) for _, s in walk(g.body)
                   if isinstance(s, For) and s.thread_tag == "threadIdx.x"]
        assert all(t is not None and t <= 1024 for t in threads)
        local = [b for _, s in walk(g.body) if isinstance(s, BlockStmt) for b in s.alloc_buffers if b.scope == "local"]
        assert local and all(math.prod(arith.as_int(d) or 0 for d in b.shape) < 32 * 48 for b in local)


def test_gemm_template_tile_is_a_sampled_choice() -> None:
    f = matmul("h", Var("m"), 256, 128, "f16")
    chosen = set()
    for tr in _samples(f, 16):
        g = tr.apply(f)
        cfg = func_gemm_config(g)
        assert cfg is None or cfg in gemm_configs(True)
        chosen.add(cfg)
        src = lower_to_cuda([g], arch="sm_90a").source  # the tile travels in the intrinsic's name
        if cfg is not None:
            bm, bn, bk, wm, wn, st = cfg
            if cfg in WGMMA_CONFIGS:
                assert f"mlc_wgmma_gemm<__half, __half, {bn}, {st}>" in src
            else:
                assert f"mlc_wmma_gemm<__half, __half, {bm}, {bn}, {bk}, {wm}, {wn}, {st}>" in src
    assert len(chosen) >= 3
    # f32 GEMMs choose among the register-tiled (SIMT) tiles
    cfgs = {func_gemm_config(tr.apply(matmul("s", 128, 128, 128, "f32"))) for tr in
            _samples(matmul("s", 128, 128, 128, "f32"), 12)}
    assert cfgs - {None} and cfgs - {None} <= set(gemm_configs(False))


def test_mutation_stays_in_the_gpu_space() -> None:
    f = matmul_func(32, 16, 48)
    base = default_gpu_trace(f).trace
    rng = np.random.default_rng(0)
    outs = set()
    for _ in range(12):
        tr = mutate(base, f, rng, target="cuda")
        if tr is not None:
            g = tr.apply(f)
            assert "threadIdx.x" in _tags(g)
            outs.add(tr.to_json())
    assert len(outs) >= 2


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_nvcc_compiles_sampled_candidates(tmp_path: Path) -> None:
    funcs = []
    for k, f in enumerate((matmul_func(64, 32, 64), softmax_func(Var("n"), 300), conv_func(1, 3, 6, 5, 4, 3))):
        for s, tr in enumerate(_samples(f, 4)):
            g = tr.apply(f)
            funcs.append(PrimFunc(f"{f.name}_{k}_{s}", g.params, g.num_outputs, g.body, g.attrs))
    gemm = next(g for g in (tr.apply(matmul("h", 512, 256, 128, "f16")) for tr in
                            _samples(matmul("h", 512, 256, 128, "f16"), 16)) if func_gemm_config(g))
    jobs = [(lower_to_cuda(funcs).source, "a"), (lower_to_cuda([gemm], gemm_config=func_gemm_config(gemm)).source, "b")]
    for src, name in jobs:
        (tmp_path / f"{name}.cu").write_text(src)
        r = subprocess.run([str(NVCC), "-cubin", "-arch=sm_90", "-std=c++17", "-diag-suppress=177,550", "-o",
                            str(tmp_path / f"{name}.cubin"), str(tmp_path / f"{name}.cu")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]


# ---- search, database and commands (no GPU needed) ----------------------------------------------------
class _ModelRunner(Runner):
    """Stands in for the GPU: a candidate's "time" is a fixed function of its loop-nest features, so
    search has something to rank; every measured trace must replay (what the real worker does first)."""

    def measure(self, func: PrimFunc, trace: Trace) -> Result:
        g = Trace.from_json(trace.to_json()).apply(func)
        x = extract(g)
        t = 1e-5 * (1.0 + float(np.abs(np.sin(x * np.arange(1, len(x) + 1))).sum()))
        return Result((t, 1.1 * t, 0.9 * t))

    def close(self) -> None:
        pass


def test_search_on_the_gpu_space_fills_the_database(tmp_path: Path) -> None:
    f, s = matmul_func(32, 16, 48), softmax_func(Var("n"), 300)
    db = Database(tmp_path / "db.jsonl")
    cfg = SearchConfig(trials=12, batch=4, target="cuda", confirm=0)
    out = tune_module(Module((f, s)), cfg, db, _ModelRunner(target="cuda"))
    recs = Database(tmp_path / "db.jsonl").records
    assert len(recs) == 12 and len({(r.workload, r.trace.to_json()) for r in recs}) == 12
    assert {r.target for r in recs} == {Target.parse("cuda").key} and Target.parse("cuda").key.startswith("cuda:sm_")
    for g0 in (f, s):
        g = out.get(g0.name)
        best = db.best(workload_key(g0), Target.parse("cuda").key)[0]
        assert dict(g.attrs)["schedule"] == "tuned" and g.body == best.trace.apply(g0).body
        assert best.cost == pytest.approx(best.times[0])  # median of the three samples


def test_cuda_records_rank_by_median_and_gemm_records_replay_in_a_fresh_process(tmp_path: Path) -> None:
    from mlc.passes.schedule import tensorize

    f = matmul("h", 256, 256, 128, "f16")
    tr = next(t for t in _samples(f, 16) if func_gemm_config(t.apply(f)))
    db = Database(tmp_path / "db.jsonl")
    key, tk = workload_key(f), Target.parse("cuda").key
    db.add(Record(key, tk, mlc_version(), tr, (2e-3, 1e-5, 1e-3, 2e-3, 1e-3)))  # median 1e-3, mean 1.2e-3
    db.add(Record(key, tk, mlc_version(), default_gpu_trace(f).trace, (1.1e-3,) * 5))
    assert db.best(key, tk)[0].trace == tr  # ranked by the median: one slow outlier does not count
    cpu = Record(key, Target.parse("cpu").key, mlc_version(), tr, (2e-3, 1e-5, 1e-3, 2e-3, 1e-3))
    assert cpu.cost == pytest.approx(cpu.mean)  # CPU records keep ranking by the mean
    name = next(i.inputs[1] for i in tr.insts if i.kind == "tensorize")
    tensorize._INTRINS.pop(name, None)  # as in a fresh process: the tile-named intrinsic is not registered
    again = Database(tmp_path / "db.jsonl")
    info = get_pass("schedule")
    assert info is not None
    m = info.fn(Module((f,)), PassContext(), **info.validate_options({"db": str(tmp_path / "db.jsonl"),
                                                                       "target": "cuda", "rules": False}))
    g = m.prim_functions()[0]
    assert dict(g.attrs)["schedule"] == "tuned"
    assert g == final_schedule(f, "cuda", again)
    # no record: the GPU default schedule, marked as such
    other = matmul("h2", 256, 128, 128, "f16")
    d = final_schedule(other, "cuda", again)
    assert dict(d.attrs)["schedule"] == "default" and d.body == default_gpu_schedule(other).body


@pytest.mark.skipif(GPU_WHY is None, reason="a GPU is present: the no-GPU error cannot be seen")
def test_tune_cuda_without_a_gpu_is_one_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "m.ir"
    src.write_text(print_module(Module((matmul_func(32, 16, 48),))))
    r = CliRunner().invoke(tune_cmd, [str(src), "--target", "cuda", "--trials", "2", "--db", str(tmp_path / "db"),
                                      "--quiet"])
    assert r.exit_code == 1
    assert "--target cuda measures candidates on the GPU, which needs pycuda and an NVIDIA GPU" in r.output
    assert r.output.count("error:") == 1 and "Traceback" not in r.output  # one line, through handle_errors
    assert not (tmp_path / "db").exists()
    r = CliRunner().invoke(tune_cmd, [str(src), "--target", "tpu", "--quiet"])
    assert r.exit_code == 1 and "unknown target 'tpu'" in r.output


# ---- on the GPU ---------------------------------------------------------------------------------------


def _run_on_gpu(g: PrimFunc, arrays: list[np.ndarray], dims: dict[str, int] | None = None) -> None:
    from mlc.runtime.cuda import compile_cuda

    compile_cuda([g], gemm_config=func_gemm_config(g)).kernel(g.name)(arrays, dims)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(GPU_WHY is not None, reason=f"needs a CUDA GPU: {GPU_WHY}")
def test_tune_cuda_measures_on_the_gpu_and_the_tuned_kernels_are_correct(tmp_path: Path) -> None:
    from mlc.ir.parser import parse_module

    mm, sm = matmul_func(256, 128, 192), softmax_func(Var("n"), 1000)
    src = tmp_path / "m.ir"
    src.write_text(print_module(Module((mm, sm))))
    db, out = tmp_path / "tune.jsonl", tmp_path / "t.ir"
    r = CliRunner().invoke(tune_cmd, [str(src), "--target", "cuda", "--trials", "12", "--db", str(db), "-o", str(out),
                                      "--quiet", "--dim", "n=300", "--timeout", "60", "--confirm", "0"])
    assert r.exit_code == 0, r.output
    # a tensor-core GEMM, tuned through the API (its template tile is a decision)
    hm = matmul("hm", 512, 256, 128, "f16")
    runner = Runner(timeout=60.0, repeat=7, target="cuda")
    tuned_hm = tune_module(Module((hm,)), SearchConfig(trials=5, batch=4, target="cuda", confirm=0), Database(db),
                           runner)
    recs = Database(db).records
    # the CLI's 12 trials stop early when both design spaces are exhausted (the row-chain softmax has
    # one decision, its thread count: 5 points; the f32 GEMM its template tile: 4), the API's 5 do not
    points = sum(len({t.to_json() for t in _samples(f, 200)}) for f in (mm, sm))
    assert len(recs) == min(12, points) + 5 and {x.target for x in recs} == {Target.parse("cuda").key}
    for f in (mm, sm, hm):
        mine = [x for x in recs if x.workload == workload_key(f)]
        ok = [x for x in mine if x.ok]
        assert ok, f"{f.name}: no candidate measured: {[x.error for x in mine][:3]}"
        assert all(len(x.times) == 7 and 0 < x.cost < 1.0 for x in ok)
    tuned = {g.name: g for g in parse_module(out.read_text()).prim_functions()}
    tuned["hm"] = tuned_hm.prim_functions()[0]
    assert all(dict(g.attrs)["schedule"] == "tuned" for g in tuned.values())
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 128)).astype(np.float32), rng.standard_normal((128, 192)).astype(np.float32)
    c = np.zeros((256, 192), np.float32)
    _run_on_gpu(tuned["matmul"], [a, b, c])
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-3, atol=1e-3)
    x = rng.standard_normal((300, 1000)).astype(np.float32)
    y = np.zeros_like(x)
    _run_on_gpu(tuned["softmax"], [x, y])
    np.testing.assert_allclose(y, _np_softmax(x.astype(np.float64)), rtol=1e-4, atol=1e-6)
    ha, hb = (rng.standard_normal((512, 128)) * 0.5).astype(np.float16), (rng.standard_normal((128, 256)) * 0.5).astype(np.float16)
    hc = np.zeros((512, 256), np.float16)
    _run_on_gpu(tuned["hm"], [ha, hb, hc])
    np.testing.assert_allclose(hc.astype(np.float32), ha.astype(np.float32) @ hb.astype(np.float32), rtol=2e-2, atol=2e-2)
    # the schedule pass (what `mlc build --db` runs) applies the same records
    info = get_pass("schedule")
    assert info is not None
    m = info.fn(Module((mm, sm, hm)), PassContext(target="cuda"),
                **info.validate_options({"db": str(db), "rules": False}))
    assert {g.name: g.body for g in m.prim_functions()} == {k: g.body for k, g in tuned.items()}


@pytest.mark.gpu
@pytest.mark.skipif(GPU_WHY is not None, reason=f"needs a CUDA GPU: {GPU_WHY}")
def test_gpu_runner_records_failures_and_goes_on() -> None:
    from dataclasses import replace

    from mlc.ir.expr import Const

    f = matmul_func(64, 64, 64)
    runner = Runner(timeout=30.0, repeat=5, target="cuda")
    ok = runner.measure(f, default_gpu_trace(f).trace)
    assert not ok.error and len(ok.times) == 5 and all(0 < t < 0.1 for t in ok.times)
    from mlc.ir.tir import Store
    from mlc.ir.tir_visit import kids, with_kids

    def spin_stores(s):  # type: ignore[no-untyped-def]
        if isinstance(s, Store):
            return For(Var("spin"), Const(0), Const(10**12), s)
        return with_kids(s, tuple(spin_stores(k) for k in kids(s)))

    g = default_gpu_trace(f).func  # scheduled (the backend refuses unbound nests), then every store repeated 10^12 times
    spin = replace(g, body=spin_stores(g.body))
    slow = Runner(timeout=5.0, repeat=1, target="cuda")
    r = slow.measure(spin, Trace())  # a kernel that never ends
    assert r.error.startswith("timed out") and math.isinf(r.mean)
    bad = slow.measure(f, Trace.from_json('{"version": 1, "insts": [{"kind": "get_block", "inputs": ["nope"]}]}'))
    assert bad.error  # a trace that does not replay is a failed candidate, not a crash
    again = slow.measure(f, default_gpu_trace(f).trace)  # a fresh worker
    assert not again.error, again.error
    runner.close()
    slow.close()
