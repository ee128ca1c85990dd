"""Schedule rules: default schedules and random design-space points keep the interpreter's results."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from mlc.frontend import zoo
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import MlcError, PrimFunc, arith
from mlc.ir.expr import free_vars
from mlc.ir.module import Module
from mlc.ir.tir import For, IfStmt
from mlc.ir.tir_interp import run_prim
from mlc.ir.tir_lower import lower_tir_func
from mlc.ir.tir_visit import walk
from mlc.passes.pipeline import parse_pipeline, run_pipeline
from mlc.passes.registry import PassContext, get_pass
from mlc.passes.schedule import Trace
from mlc.passes.schedule.rules import TargetInfo, default_schedule, needs_tiling, sample_schedule
from test_tir_interp import conv_func, matmul_func, softmax_func

CPU = TargetInfo(lanes=8, cores=2)


@cache
def zoo_funcs(name: str) -> tuple[PrimFunc, ...]:
    m, consts = import_onnx(zoo.build(name))
    m, _ = run_pipeline(m, parse_pipeline("passes: [shape-infer, fuse]", "t"), PassContext(constants=consts),
                        verify_each=False)
    return tuple(m.prim_functions())


def pick(name: str, prefix: str) -> PrimFunc:
    return next(f for f in zoo_funcs(name) if f.name.startswith(prefix))


def same(orig: PrimFunc, new: PrimFunc, dim: int = 3) -> None:
    dims = {v.name: dim for b in orig.params for d in b.shape for v in free_vars(d)}
    dims |= {v.name: dim for v in orig.scalar_params}
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(tuple(arith.evaluate(d, dims) for d in b.shape)).astype(np.float32)
            if b.dtype == "f32" else np.zeros(tuple(arith.evaluate(d, dims) for d in b.shape), bool)
            for b in orig.params]
    ref, got = [a.copy() for a in args], [a.copy() for a in args]
    run_prim(orig, ref, dims)
    run_prim(new, got, dims)
    for r, g in zip(ref[-orig.num_outputs:], got[-orig.num_outputs:]):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def kinds(f: PrimFunc) -> set[str]:
    return {s.kind for _, s in walk(f.body) if isinstance(s, For)}


CASES = [("mlp", "fused_matmul_add_relu"), ("mlp", "softmax"), ("gpt_block", "layer_norm"),
         ("gpt_block", "fused_matmul_add_div_erf"), ("gpt_block", "fused_reshape_transpose_matmul"),
         ("resnext", "fused_conv2d")]


@pytest.mark.parametrize("model,prefix", CASES)
def test_default_schedule_keeps_results_on_lowered_programs(model: str, prefix: str) -> None:
    f = pick(model, prefix)
    s = default_schedule(f, CPU)
    same(f, s.func)
    assert "parallel" in kinds(s.func)
    # the default point is a point of the design space: its trace replays to the same program
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func


def test_matmul_default_is_tiled_vectorized_parallel_with_epilogue_folded() -> None:
    f = pick("mlp", "fused_matmul_add_relu")
    assert needs_tiling(next(b for _, b in walk(f.body) if getattr(b, "name", "") == "matmul"))  # type: ignore[arg-type]
    s = default_schedule(f, CPU)
    ks = kinds(s.func)
    assert {"parallel", "vectorized"} <= ks
    # rows are a symbolic dim: the register tile's rows are guarded in block form; lower-tir's loop
    # partition leaves the guard only in the remainder, so the main part's reduction has none
    # (guarded accumulators cannot stay in registers)
    low = lower_tir_func(s.func)
    red = [x for _, x in walk(low.body) if isinstance(x, For) and x.var.name == "k_0"]
    assert len(red) == 2
    assert not any(isinstance(y, IfStmt) for _, y in walk(red[0].body))
    assert any(isinstance(y, IfStmt) for _, y in walk(red[1].body))
    for n in (1, 4, 11):
        same(f, low, dim=n)
    names = [b.name for _, b in walk(s.func.body) if hasattr(b, "iters")]
    assert "relu" not in names  # folded into the tile's write-back
    same(f, s.func, dim=11)  # N=11: partial row tiles


@pytest.mark.parametrize("make", [lambda: matmul_func(24, 16, 32), conv_func, lambda: softmax_func(6, 10)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_design_space_points_replay_and_verify(make, seed: int) -> None:  # type: ignore[no-untyped-def]
    f = make()
    s = sample_schedule(f, CPU, seed=seed)
    same(f, s.func)
    tr = Trace.from_json(s.trace.to_json())
    assert tr.apply(f) == s.func
    # mutating any sampling decision (re-sampled) and replaying still gives a correct program
    rng = np.random.default_rng(seed)
    for i in list(tr.decisions())[:3]:
        try:
            s2 = tr.with_decision(i, None).replay(f, seed=int(rng.integers(1000)))
        except MlcError:
            continue
        same(f, s2.func)


def test_design_space_is_not_a_single_point() -> None:
    f = matmul_func(64, 64, 64)
    progs = {json.dumps(sample_schedule(f, CPU, seed=s).trace.to_json()) for s in range(6)}
    assert len(progs) > 2


def test_schedule_pass_trace_file_and_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = matmul_func(16, 8, 16)
    info = get_pass("schedule")
    assert info is not None
    tr = sample_schedule(f, CPU, seed=3).trace
    p = tmp_path / "t.json"
    p.write_text(json.dumps({f.name: json.loads(tr.to_json())}))
    out = info.fn(Module((f,)), PassContext(), **info.validate_options({"trace": str(p)}))
    g = out.prim_functions()[0]
    assert dict(g.attrs)["schedule"] == "trace"
    same(f, g)
    again = info.fn(out, PassContext(), **info.validate_options({}))
    assert again.prim_functions()[0] == g  # idempotent: scheduled functions are left alone
    d = info.fn(Module((f,)), PassContext(), **info.validate_options({}))
    assert dict(d.prim_functions()[0].attrs)["schedule"] == "default"
    p.write_text("{not json")
    with pytest.raises(MlcError, match="invalid JSON"):
        info.fn(Module((f,)), PassContext(), **info.validate_options({"trace": str(p)}))


def test_matmul_default_packs_inputs_and_keeps_a_register_tile() -> None:
    f = matmul_func(64, 48, 64)
    s = default_schedule(f, CPU)
    same(f, s.func)
    root_allocs = {b.name: tuple(int(d.value) for d in b.shape) for b in s.func.body.alloc_buffers}  # type: ignore[attr-defined]
    w = 2 * CPU.lanes
    assert root_allocs == {"B_packed": (64 // w, 48, w)}  # A's strips are a decision, off by default
    tiles = [b for _, b in walk(s.func.body) if getattr(b, "alloc_buffers", ()) and getattr(b, "name", "") != "root"]
    # 4 rows x 2 vectors: 8 accumulators, the operands and a broadcast fit AVX2's 16 registers
    # (8 rows spilled: fused_transpose_matmul_7 of gpt_block's step 515 -> 230 us)
    assert [tuple(int(d.value) for d in x.shape) for t in tiles for x in t.alloc_buffers] == [(4, w)]  # type: ignore[attr-defined]
    wide = default_schedule(f, TargetInfo(lanes=16, cores=2)).func  # AVX-512: 32 registers, 8 rows
    assert [tuple(int(d.value) for d in x.shape) for _, t in walk(wide.body) if getattr(t, "alloc_buffers", ())
            and getattr(t, "name", "") != "root" for x in t.alloc_buffers] == [(8, 32)]  # type: ignore[attr-defined]
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    # the packing choices are decisions of the design space: re-running the rules with A's turned
    # on packs it in strips of the register tile's rows; a smaller register tile re-derives the strip
    decs = [x.decision for x in s.trace.insts if x.kind in ("sample_perfect_tile", "sample_categorical")]
    cats = [i for i, x in enumerate(x for x in s.trace.insts if x.kind in ("sample_perfect_tile", "sample_categorical"))
            if x.kind == "sample_categorical"]
    assert len(cats) == 2 and decs[0][2:] == [4, 1] and [decs[c] for c in cats] == [0, 1]
    on = list(decs)
    on[cats[0]] = 1
    s2 = sample_schedule(f, CPU, decisions=on)
    same(f, s2.func)
    assert {b.name: tuple(int(d.value) for d in b.shape) for b in s2.func.body.alloc_buffers} == {  # type: ignore[attr-defined]
        "A_packed": (16, 48, 4), "B_packed": (64 // w, 48, w)}
    small = list(on)
    small[0] = [4, 8, 2, 1]
    s3 = sample_schedule(f, CPU, decisions=small)
    same(f, s3.func)
    assert {b.name: int(b.shape[-1].value) for b in s3.func.body.alloc_buffers}["A_packed"] == 2  # type: ignore[attr-defined]
    assert Trace.from_json(s3.trace.to_json()).apply(f) == s3.func


def _loops_of(f: PrimFunc) -> list[For]:
    return [s for _, s in walk(f.body) if isinstance(s, For)]


def test_attention_scores_reduce_inside_a_vector_loop_over_packed_keys() -> None:
    # q.k over a head dim of 8 for T keys: the key loop (symbolic) is vectorized whole with the
    # reduce loop unrolled inside it (one register accumulator per vector of keys, no lane masks),
    # and the keys ([B, T, 32], a row apart per lane) are packed key-minor
    f = pick("gpt_block", "fused_reshape_transpose_reshape_transpose")
    s = default_schedule(f, CPU)
    for t in (3, 11):
        same(f, s.func, dim=t)
    packed = {b.name: b for b in s.func.body.alloc_buffers}  # type: ignore[attr-defined]
    assert any(n.endswith("_packed") for n in packed)
    loops = _loops_of(s.func)
    vec = next(lp for lp in loops if lp.kind == "vectorized" and arith.as_int(lp.extent) is None)
    assert any(lp.kind == "unrolled" and arith.as_int(lp.extent) == 8 for _, lp in walk(vec.body) if isinstance(lp, For))
    assert not any(isinstance(x, IfStmt) for _, x in walk(s.func.body))
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func


def test_conv_vectors_run_over_output_channels() -> None:
    # NCHW conv: the input element of (ci, kh, kw, ow) is shared by every output channel, so the
    # vector loop runs over output channels (one broadcast, one contiguous load of the packed
    # weight) and the unrolled register-tile level over output columns (passes/schedule/conv_tiling.py)
    f = pick("resnext", "fused_conv2d")
    s = default_schedule(f, CPU)
    same(f, s.func)
    conv = next(x for _, x in walk(s.func.body) if getattr(x, "name", "") == "conv2d")
    co = conv.iters[1]  # (n, co, oh, ow, ci, kh, kw)
    vec = [lp for lp in _loops_of(s.func) if lp.kind == "vectorized"]
    assert any(lp.var in free_vars(co.binding) for lp in vec)
    assert any(b.name.endswith("_packed") for b in s.func.body.alloc_buffers)  # type: ignore[attr-defined]


def test_decisions_of_the_wrong_kind_are_resampled_or_refused() -> None:
    # search mutates decision lists whose positions shift when a rule's structure changes: a tile
    # decision given an int (or a categorical given a list) is resampled, never a crash; replaying a
    # trace with such a decision is a located refusal
    f = matmul_func(64, 48, 64)
    s = sample_schedule(f, CPU, decisions=[3, [1, 2], None, [0]])
    same(f, s.func)
    bad = json.loads(s.trace.to_json())
    tile = next(x for x in bad["insts"] if x["kind"] == "sample_perfect_tile")
    tile["decision"] = 7
    with pytest.raises(MlcError, match="not a list of integers"):
        Trace.from_json(json.dumps(bad)).apply(f)
