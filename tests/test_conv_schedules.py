"""CPU convolution schedules (passes/schedule/conv_tiling.py) and build-time packing of constant
operands (passes/alter_layout.py).

Oracles: a numpy direct convolution in f64 (per group, per kernel tap) for compiled models; the
reference interpreter on the unscheduled program for schedules and random design-space points;
numpy reshape + transpose for a packed constant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from mlc.frontend import zoo
from mlc.frontend.onnx_import import import_onnx
from mlc.ir import arith
from mlc.ir.expr import Expr, free_vars
from mlc.ir.graph import CallTensor, Constant
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.ir.tir import BlockStmt, For, PrimFunc
from mlc.ir.tir_visit import walk
from mlc.passes.alter_layout import pack_nests
from mlc.passes.pipeline import parse_pipeline, run_pipeline
from mlc.passes.registry import PassContext
from mlc.passes.schedule import Trace
from mlc.passes.schedule.conv_tiling import conv_plan
from mlc.passes.schedule.rules import TargetInfo, default_schedule, sample_schedule
from onnx import TensorProto, helper, numpy_helper
from test_schedule_rules import same

import mlc

CPU = TargetInfo(lanes=8, cores=2)

# (batch, in channels, out channels, height = width, kernel, pad, stride, groups)
CASES = [
    (1, 16, 64, 15, 3, 1, 1, 1),   # squeezenet's expand3x3: padded, odd width
    (1, 64, 16, 15, 1, 0, 1, 1),   # 1x1 squeeze
    (3, 3, 24, 17, 3, 0, 2, 1),    # stem: stride 2, no padding, 3 input channels
    (2, 8, 40, 9, 5, 2, 1, 1),     # 5x5, padding 2
    (1, 32, 32, 13, 3, 1, 1, 4),   # grouped, 8 output channels per group
    (2, 24, 48, 7, 3, 1, 2, 2),    # grouped and strided
    (1, 16, 16, 11, 3, 1, 2, 16),  # depthwise, strided (the generic tiling)
    (1, 12, 36, 10, 1, 0, 1, 3),   # 12 channels per group: no lane-aligned channel block
    (2, 8, 8, 6, 3, 1, 1, 1),      # 8 channels: one vector
    (1, 16, 96, 31, 3, 1, 2, 1),   # prime width
]


def conv_model(n: int, c: int, k: int, hw: int, kh: int, pad: int, stride: int, group: int,
               seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Conv + bias + Relu with constant weights, batch symbolic."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, c // group, kh, kh)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[pad] * 4, strides=[stride] * 2, group=group),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])), w, b


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, stride: int, group: int) -> np.ndarray:
    n, c, h, _ = x.shape
    k, cg, kh, _ = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    out = np.zeros((n, k, oh, oh))
    kg = k // group
    for g in range(group):
        xs, ws = xp[:, g * cg:(g + 1) * cg], w[g * kg:(g + 1) * kg].astype(np.float64)
        for a in range(kh):
            for d in range(kh):
                win = xs[:, :, a:a + stride * oh:stride, d:d + stride * oh:stride]
                out[:, g * kg:(g + 1) * kg] += np.einsum("nchw,kc->nkhw", win, ws[:, :, a, d])
    return np.maximum(out + b[None, :, None, None], 0.0)


def fused(model: onnx.ModelProto, steps: str = "[shape-infer, fuse]") -> tuple[Module, dict[str, np.ndarray]]:
    m, consts = import_onnx(model)
    ctx = PassContext(constants=consts)
    m, _ = run_pipeline(m, parse_pipeline(f"passes: {steps}", "t"), ctx, verify_each=False)
    return m, dict(ctx.constants or {})


def conv_func(m: Module) -> PrimFunc:
    return next(f for f in m.prim_functions() if "conv2d" in f.name)


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}c{c[1]}k{c[2]}hw{c[3]}k{c[4]}p{c[5]}s{c[6]}g{c[7]}" for c in CASES])
def test_compiled_conv_matches_numpy(case: tuple[int, ...]) -> None:
    compiled_matches_numpy(case, sorted({case[0], 3}))


def compiled_matches_numpy(case: tuple[int, ...], batches: list[int]) -> None:
    """The Conv + bias + Relu layer of `case` built by `mlc.compile`, run at each batch size (the
    batch dim is symbolic), against np_conv."""
    _, c, _, hw, _, pad, stride, group = case
    model, w, b = conv_model(*case)
    compiled = mlc.compile(model)
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, c, hw, hw)).astype(np.float32)
        got = list(compiled(**{compiled.input_names[0]: x}).values())[0]
        np.testing.assert_allclose(got, np_conv(x, w, b, pad, stride, group), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES[:6] + CASES[8:], ids=[str(i) for i in range(8)])
def test_conv_default_schedule_vectorizes_output_channels(case: tuple[int, ...]) -> None:
    f = conv_func(fused(conv_model(*case)[0])[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    assert conv_plan(conv, CPU.lanes) is not None
    s = default_schedule(f, CPU)
    same(f, s.func)
    out_ch = next(x for _, x in walk(s.func.body) if isinstance(x, BlockStmt) and x.name == "conv2d").iters[1]
    vec = [lp for _, lp in walk(s.func.body) if isinstance(lp, For) and lp.kind == "vectorized"
           and lp.var in free_vars(out_ch.binding)]
    assert vec and arith.as_int(vec[0].extent) % CPU.lanes == 0
    packs = pack_nests(s.func)
    assert len(packs) == 1 and packs[0].src.name == f.params[1].name  # the weight, channel-innermost
    assert arith.as_int(packs[0].dst.shape[-1]) == arith.as_int(vec[0].extent)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func


def conv_lanes(f: PrimFunc) -> int | None:
    """The lanes of the channel vector loop of the conv block."""
    return next(lp.extent for _, lp in walk(f.body) if isinstance(lp, For) and lp.kind == "vectorized"
                and any(isinstance(x, BlockStmt) and x.name == "conv2d" for _, x in walk(lp.body)))


def test_groups_unaligned_to_the_vector_take_half_vectors() -> None:
    # 12 channels per group: a vector of 8 channels would span two groups; 4 lanes do not
    f = conv_func(fused(conv_model(*CASES[7])[0])[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    assert conv_plan(conv, CPU.lanes) is None and conv_plan(conv, CPU.lanes // 2) is not None
    s = default_schedule(f, CPU)
    same(f, s.func)
    assert arith.as_int(conv_lanes(s.func)) == 4


def test_grouped_conv_lanes_read_one_broadcast_input() -> None:
    # 24 channels per group, 8 lanes: oc splits as groups x blocks x lanes, so the input's channel
    # 24 * floordiv(oc, 24) + ic is provably one value across the lanes; split as blocks x lanes
    # (8 * floormod(..) + lane) the codegen cannot tell and gathers it lane by lane
    from mlc.runtime.cpu import compile_object

    model = conv_model(2, 48, 48, 7, 1, 0, 1, 2)[0]
    m, _ = fused(model, "[shape-infer, fuse, schedule, alter-layout]")
    f = conv_func(m)
    loops = [lp for _, lp in walk(f.body) if isinstance(lp, For) and lp.kind == "parallel"]
    assert loops and arith.as_int(conv_lanes(f)) == 8
    lowered, _ = fused(model, "[shape-infer, fuse, schedule, alter-layout, lower-tir]")
    ir = compile_object([conv_func(lowered)]).llvm_ir()
    assert "masked.gather" not in ir
    x = np.random.default_rng(0).standard_normal((2, 48, 7, 7)).astype(np.float32)
    _, w, b = conv_model(2, 48, 48, 7, 1, 0, 1, 2)
    got = list(mlc.compile(model)(x=x).values())[0]
    np.testing.assert_allclose(got, np_conv(x, w, b, 0, 1, 2), rtol=1e-4, atol=1e-4)


def test_depthwise_conv_packs_its_input_channel_innermost() -> None:
    # x[n, oc + k, ..] (k of extent 1) follows the output channel: packed like the weight, the
    # lanes' inputs are one vector load instead of a gather (5x5: enough work per packed element)
    f = conv_func(fused(conv_model(1, 16, 16, 11, 5, 2, 2, 16)[0])[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    plan = conv_plan(conv, CPU.lanes)
    assert plan is not None and [i for i, _ in plan[5]] == [0]
    s = default_schedule(f, CPU)
    same(f, s.func)
    assert [p.src.name for p in pack_nests(s.func)] == [f.params[1].name]  # the weight, foldable
    small = conv_func(fused(conv_model(*CASES[6])[0])[0])  # 16 channels of 3x3: the generic tiling
    conv = next(x for _, x in walk(small.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    assert conv_plan(conv, CPU.lanes) is None
    packed = {b.name: b for b in s.func.body.alloc_buffers}  # type: ignore[attr-defined]
    x_p = packed[f"{f.params[0].name}_packed"]
    assert arith.as_int(x_p.shape[-1]) == arith.as_int(conv_lanes(s.func)) == 16


@pytest.mark.parametrize("seed,case", [(0, CASES[5]), (1, CASES[5]), (2, CASES[5]), (3, CASES[5]),
                                       (4, (1, 16, 32, 7, 3, 1, 1, 1)), (5, (1, 16, 32, 7, 3, 1, 1, 1))])
def test_random_design_space_points_of_a_conv_keep_results(seed: int, case: tuple[int, ...]) -> None:
    # the second shape's 7 columns take guarded column tiles of a sampled width
    f = conv_func(fused(conv_model(*case)[0])[0])
    s = sample_schedule(f, CPU, seed=seed)
    same(f, s.func, dim=1)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func


def test_alter_layout_folds_the_weight_packing_into_the_constant() -> None:
    model, w, _ = conv_model(*CASES[0])
    before, consts = fused(model, "[shape-infer, fuse, schedule]")
    after, new_consts = fused(model, "[shape-infer, fuse, schedule, alter-layout]")
    f0, f1 = conv_func(before), conv_func(after)
    (p,) = pack_nests(f0)
    assert not pack_nests(f1)
    assert all(b.name != p.dst.name for b in f1.body.alloc_buffers)  # type: ignore[attr-defined]
    assert f1.params[1] == p.dst and f1.params[0] == f0.params[0]
    main = after.get("main")
    call = next(b.node for b in main.body.bindings if isinstance(b.node, CallTensor))  # type: ignore[union-attr]
    const = next(b.node for b in main.body.bindings  # type: ignore[union-attr]
                 if b.var == call.args[1] and isinstance(b.node, Constant))
    oc1 = arith.as_int(p.dst.shape[-1])
    assert oc1 is not None
    want = w.reshape(w.shape[0] // oc1, oc1, *w.shape[1:]).transpose(0, 2, 3, 4, 1)
    np.testing.assert_array_equal(new_consts[const.key], want)
    assert "w" not in new_consts  # the unpacked weight is no longer referenced
    x = np.random.default_rng(0).standard_normal((2, 16, 15, 15)).astype(np.float32)
    np.testing.assert_allclose(run_function(after, {"x": x}, new_consts)["y"],
                               run_function(before, {"x": x}, consts)["y"], rtol=1e-5, atol=1e-5)


def test_alter_layout_keeps_in_kernel_packing_of_a_non_constant_operand() -> None:
    model, _, _ = conv_model(*CASES[1])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [16, 64, 1, 1])
    inits = [i for i in model.graph.initializer if i.name != "w"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    model.graph.input.append(w_in)
    before, _ = fused(model, "[shape-infer, fuse, schedule]")
    after, _ = fused(model, "[shape-infer, fuse, schedule, alter-layout]")
    assert pack_nests(conv_func(before)) and conv_func(after) == conv_func(before)


def test_build_leaves_no_per_call_packing_of_constant_weights() -> None:
    # dense layers (the matmul schedule packs B into column panels) and convolutions alike
    for model in (zoo.build("mlp"), conv_model(*CASES[3])[0]):
        m, _ = fused(model, "[shape-infer, fold-constants, fuse, schedule, alter-layout]")
        packed = [f.name for f in m.prim_functions() if any(b.name.endswith("_packed") for b in f.params)]
        assert packed, "no kernel takes a prepacked weight"
        assert not [f.name for f in m.prim_functions() if pack_nests(f)]


def test_prime_width_takes_a_partial_last_column_tile() -> None:
    # 7 columns: only 1 or 7 divide it; 2 vectors x 4 columns (the last tile's 4th column guarded)
    # beat 1 vector x 7 columns (1.5x) and 8 vectors x 1 column (weights from L2 per column)
    from mlc.ir.tir import IfStmt

    f = conv_func(fused(conv_model(1, 32, 128, 7, 3, 1, 1, 1)[0])[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    plan = conv_plan(conv, CPU.lanes)
    assert plan is not None and plan[3:5] == (16, 4)
    s = default_schedule(f, CPU)
    same(f, s.func, dim=2)
    assert any(isinstance(x, IfStmt) for _, x in walk(s.func.body))  # the guarded columns
    tile = next(b for _, x in walk(s.func.body) if isinstance(x, BlockStmt) for b in x.alloc_buffers
                if b.name.endswith("_tile"))
    assert [arith.as_int(d) for d in tile.shape][-2:] == [8, 16]  # a row's 2 column tiles x 16 lanes
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    even = conv_func(fused(conv_model(1, 32, 128, 8, 3, 1, 1, 1)[0])[0])  # 8 columns: no guard
    assert not any(isinstance(x, IfStmt) for _, x in walk(default_schedule(even, CPU).func.body))


@pytest.mark.parametrize("seed,kind", list(enumerate(["dense", "depthwise", "grouped", "depthwise", "dense", "grouped"])))
def test_random_conv_shapes_keep_results_under_the_default_schedule(seed: int, kind: str) -> None:
    # strides, padding, groups, depthwise, prime widths, batch 1-8, against the interpreter
    rng = np.random.default_rng(100 + seed)
    kh, stride = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2]))
    pad = int(rng.integers(0, kh // 2 + 1))
    hw = int(rng.choice([5, 7, 11, 13])) + kh
    if kind == "depthwise":
        c = k = group = int(rng.choice([8, 16, 24]))
    else:
        group = 1 if kind == "dense" else int(rng.choice([2, 4]))
        c, k = group * int(rng.choice([4, 8])), group * int(rng.choice([8, 16]))
    f = conv_func(fused(conv_model(1, c, k, hw, kh, pad, stride, group, seed)[0])[0])
    s = default_schedule(f, CPU)
    same(f, s.func, dim=int(rng.integers(1, 9)))


def bn_relu_conv_model(n: int, c: int, k: int, hw: int, kh: int, pad: int, stride: int, seed: int = 0
                       ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """DenseNet's pre-activation: BatchNormalization -> Relu -> Conv (+ bias), constant parameters."""
    rng = np.random.default_rng(seed)
    p = {"w": rng.standard_normal((k, c, kh, kh)), "b": rng.standard_normal(k), "s": rng.standard_normal(c),
         "t": rng.standard_normal(c), "m": rng.standard_normal(c), "v": rng.random(c) + 0.5}
    p = {name: a.astype(np.float32) for name, a in p.items()}
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "t", "m", "v"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w", "b"], ["y"], pads=[pad] * 4, strides=[stride] * 2)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a, name) for name, a in p.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])), p


def with_pre_activation(f: PrimFunc) -> PrimFunc:
    """The conv program with its input read through a batch norm + ReLU, as lowering inlines one
    fused before the conv: max((x - m[c]) * (s[c] / sqrt(|v[c]| + 1)) + t[c], 0) (|v| + 1: any
    random v of the interpreter check is a valid variance)."""
    from dataclasses import replace

    from mlc.ir.expr import Bin, Call, Const, Load
    from mlc.ir.tir import Buffer
    from mlc.ir.tir_visit import map_exprs, rewrite

    x = f.params[0]
    s, t, m, v = (Buffer(f"bn_{n}", (x.shape[1],), "f32") for n in "stmv")

    def pre(e: Expr) -> Expr | None:
        if not isinstance(e, Load) or e.buffer.name != x.name:
            return None
        c = (e.indices[1],)
        q = Call("sqrt", (Bin("add", Call("abs", (Load(v, c),), "f32"), Const(1.0, "f32")),), "f32")
        bn = Bin("add", Bin("mul", Bin("sub", e, Load(m, c)), Bin("div", Load(s, c), q)), Load(t, c))
        return Bin("max", bn, Const(0.0, "f32"))

    return replace(f, params=(x, s, t, m, v, *f.params[1:]), body=map_exprs(f.body, lambda e: rewrite(e, pre)))


@pytest.mark.parametrize("case", [(1, 24, 64, 13, 1, 0, 1), (2, 16, 24, 9, 3, 1, 2)], ids=["1x1", "3x3s2"])
def test_pre_activation_conv_runs_the_reduction_outside_the_row(case: tuple[int, ...]) -> None:
    # the batch norm's scale[ic] / sqrt(var[ic] + eps) depends on the reduction step alone: the
    # whole output row is the tile, so it runs once per step of a row, not of every register tile
    from mlc.passes.schedule.conv_tiling import per_step_work

    n, c, k, hw, kh, pad, stride = case
    plain = conv_func(fused(conv_model(n, c, k, hw, kh, pad, stride, 1)[0])[0])
    f = with_pre_activation(plain)
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    plan = conv_plan(conv, CPU.lanes)
    assert per_step_work(conv) and plan is not None
    assert plan[4] == arith.as_int(conv.iters[plan[1]].extent)  # the tile: every column of the row
    assert not per_step_work(next(x for _, x in walk(plain.body) if isinstance(x, BlockStmt) and x.name == "conv2d"))
    s = default_schedule(f, CPU)
    same(f, s.func, dim=n)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    # end to end (whether fuse puts the batch norm into the conv's kernel or not) against numpy
    model, p = bn_relu_conv_model(*case)
    x = np.random.default_rng(1).standard_normal((n, c, hw, hw)).astype(np.float32)
    pre = (x - p["m"][:, None, None]) * (p["s"] / np.sqrt(p["v"] + 1e-5))[:, None, None] + p["t"][:, None, None]
    r = np.maximum(pre, 0)  # no Relu after the conv: relu(z) - relu(-z) = z
    want = np_conv(r, p["w"], p["b"], pad, stride, 1) - np_conv(r, -p["w"], -p["b"], pad, stride, 1)
    got = list(mlc.compile(model)(x=x).values())[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [(1, 48, 32, 14, 3, 1, 1, 1), (2, 96, 24, 41, 3, 1, 2, 1), (1, 64, 16, 53, 3, 1, 1, 1)],
                         ids=["3x3", "strided", "prime-width"])
def test_weights_beyond_l1_reduce_in_chunks_outside_the_column_tiles(case: tuple[int, ...]) -> None:
    # a channel block's weights over L1 (48 x 3x3 x 16 lanes = 27 KB) on a row of 14+ columns: the
    # input channels split in chunks whose weights fit, the chunk loop outside the row's column tiles
    from mlc.passes.schedule.conv_tiling import L1_BYTES, NARROW_COLUMNS, WIDE_COLUMNS, reduction_chunk

    model, w, b = conv_model(*case)
    f = conv_func(fused(model)[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    plan = conv_plan(conv, CPU.lanes)
    assert plan is not None
    cols = arith.as_int(conv.iters[plan[1]].extent)
    assert cols is not None and cols >= NARROW_COLUMNS
    chunk = reduction_chunk(conv, plan[3], cols)
    assert chunk is not None and case[1] % chunk == 0 and chunk < case[1]
    # narrower rows, power-of-two widths and narrow whole-row tiles keep one pass
    assert reduction_chunk(conv, plan[3], NARROW_COLUMNS - 1) is None and reduction_chunk(conv, plan[3], 32) is None
    assert reduction_chunk(conv, plan[3], WIDE_COLUMNS - 1, hoist=True) is None
    assert 4 * plan[3] * chunk * case[4] ** 2 <= L1_BYTES // 2 < 4 * plan[3] * case[1] * case[4] ** 2
    s = default_schedule(f, CPU)
    same(f, s.func, dim=case[0])
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    # the chunk loop encloses the column tiles: the first reduction loop sits above a spatial loop
    conv_loops = [lp for _, lp in walk(s.func.body) if isinstance(lp, For)
                  and any(isinstance(x, BlockStmt) and x.name == "conv2d" for _, x in walk(lp.body))]
    k0 = next(i for i, lp in enumerate(conv_loops) if arith.as_int(lp.extent) == case[1] // chunk
              and lp.var.name.startswith("k"))
    assert any(not lp.var.name.startswith("k") and lp.kind != "vectorized" for lp in conv_loops[k0 + 1:])
    x = np.random.default_rng(2).standard_normal((case[0], case[1], case[3], case[3])).astype(np.float32)
    got = list(mlc.compile(model)(x=x).values())[0]
    np.testing.assert_allclose(got, np_conv(x, w, b, case[5], case[6], case[7]), rtol=1e-4, atol=1e-4)
