"""Grouped 1x1 convolutions whose channels per group take no full channel vector (ShuffleNet's 34 and
68 per group) as a small GEMM per group: vectors over the output columns, channels of one group as
the register tile's rows (`column_plan` / `column_tiling` in passes/schedule/conv_tiling.py); depthwise
convolutions (stride 1 or 2) without channel vectors the same way, one channel per tile row.

Oracles: the reference interpreter on the unscheduled program (random shapes: groups 2-4, channels per
group not a multiple of 8, widths whose vectors are 4, 8 or an odd width that divides them, batch
1-3; strided and padded ones fall back to the other schedules), and a numpy convolution in f64 for
compiled models."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ir import arith
from mlc.ir.tir import BlockStmt, For
from mlc.ir.tir_visit import walk
from mlc.passes.schedule import Trace
from mlc.passes.schedule.conv_tiling import _REGS, column_plan, conv_plan
from mlc.passes.schedule.rules import TargetInfo, default_schedule, sample_schedule
from test_conv_schedules import CPU, compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same

AVX512 = TargetInfo(lanes=16, cores=2)


def _conv(case: tuple[int, ...]) -> tuple:  # (PrimFunc, its conv block)
    f = conv_func(fused(conv_model(*case)[0])[0])
    return f, next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")


@pytest.mark.parametrize(("case", "lanes", "vl"), [
    ((1, 136, 136, 28, 1, 0, 1, 4), 16, 14),  # shufflenet's 34 per group at 28x28: 2 x 14 lanes a row
    ((1, 272, 272, 14, 1, 0, 1, 4), 16, 14),  # 68 per group at 14x14: the whole row, 14 lanes
    ((1, 24, 112, 56, 1, 0, 1, 4), 16, 8),    # 28 per group at 56x56: 8-lane vectors divide the row
    ((1, 136, 136, 28, 1, 0, 1, 4), 8, 7),
    ((1, 48, 36, 16, 1, 0, 1, 3), 8, 8),      # 12 per group, 16 columns: whole vectors
    ((1, 20, 20, 10, 1, 0, 1, 2), 8, 5),      # 10 per group, 10 columns: 5 lanes
])
def test_plan_vectors_the_columns_and_fits_the_registers(case: tuple[int, ...], lanes: int, vl: int) -> None:
    f, conv = _conv(case)
    assert conv_plan(conv, lanes) is None  # no channel vector of the full width
    plan = column_plan(conv, lanes)
    assert plan is not None
    c, row, col, mh, mr, got_vl, nv = plan
    names = [iv.var.name for iv in conv.iters]
    assert (names[c], names[row], names[col]) == ("v_i_1", "v_i_2", "v_i_3")
    cols, grp = case[3], case[2] // case[7]
    assert got_vl == vl and cols % (nv * vl) == 0 and grp % mr == 0 and case[3] % mh == 0
    assert mr * mh * nv + mr <= _REGS[lanes]  # accumulators and the channels' broadcasts
    if conv_plan(conv, lanes // 2) is None:  # else half channel vectors (12 per group at 8 lanes: 4)
        tgt = TargetInfo(lanes=lanes, cores=2)
        tile = next(b for _, x in walk(default_schedule(f, tgt).func.body) if isinstance(x, BlockStmt)
                    for b in x.alloc_buffers if b.name.endswith("_tile"))
        assert [arith.as_int(d) for d in tile.shape] == [1, mr, mh, nv * vl]  # the register tile


@pytest.mark.parametrize("case", [
    (1, 16, 64, 14, 1, 0, 1, 1),   # not grouped
    (1, 136, 136, 28, 3, 1, 1, 4),  # 3x3
    (1, 136, 136, 28, 1, 0, 2, 4),  # strided: only depthwise convs take strided rows
    (1, 136, 136, 13, 1, 0, 1, 4),  # 13 columns: no vector width divides them
    (1, 64, 64, 28, 1, 0, 1, 4),   # 16 per group: conv_plan's channel vectors
])
def test_other_convs_take_no_column_plan(case: tuple[int, ...]) -> None:
    _, conv = _conv(case)
    assert column_plan(conv, CPU.lanes) is None


@pytest.mark.parametrize("case", [(1, 24, 24, 14, 3, 1, 1, 24), (2, 40, 40, 12, 3, 1, 1, 40), (3, 20, 20, 10, 3, 0, 1, 20),
                                  (1, 20, 20, 28, 3, 1, 1, 20)], ids=["14", "12", "unpadded", "28"])
def test_depthwise_stride_1_takes_the_columns(case: tuple[int, ...]) -> None:
    # depthwise convs that channel vectors do not pay for (`_vector_depthwise`: few channels) and
    # stride 1: the row of taps `w + kw - pad` is contiguous; the padding test stays per lane
    f, conv = _conv(case)
    assert conv_plan(conv, CPU.lanes) is None and conv_plan(conv, CPU.lanes // 2) is None
    plan = column_plan(conv, CPU.lanes)
    assert plan is not None and plan[4] == 1  # each channel reads its own input plane: one per row
    cols = case[3] + 2 * case[5] - case[4] + 1
    assert plan[3] * plan[6] >= 2 and cols % (plan[5] * plan[6]) == 0  # more than one accumulator
    s = default_schedule(f, CPU)
    same(f, s.func, dim=case[0])
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func


@pytest.mark.parametrize("case", [(1, 24, 24, 15, 3, 1, 2, 24), (2, 20, 20, 29, 3, 1, 2, 20)])
def test_strided_depthwise_takes_the_columns(case: tuple[int, ...]) -> None:
    # input columns 2 apart: strided vector loads (ShuffleNet's 112-channel 3x3/2 at 56x56)
    f, conv = _conv(case)
    assert conv_plan(conv, CPU.lanes) is None and conv_plan(conv, CPU.lanes // 2) is None
    assert column_plan(conv, CPU.lanes) is not None
    same(f, default_schedule(f, CPU).func, dim=case[0])
    assert column_plan(_conv((1, 20, 20, 29, 3, 1, 3, 20))[1], CPU.lanes) is None  # stride 3: not taken


def _random_cases(n: int, seed: int = 41) -> list[tuple[int, ...]]:
    """(batch, in ch, out ch, size, 1, pad, stride, groups): groups 2-4, channels per group 3-13 and
    not a multiple of 8, widths 8-16 with a vector (4, 8 or 5-7 lanes at 8 lanes), batch 1-3; one
    in four strided or padded (no column plan: the other schedules)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        g = int(rng.integers(2, 5))
        cin, cout = g * int(rng.integers(3, 14)), g * int(rng.choice([3, 5, 6, 7, 9, 10, 12, 13]))
        hw = int(rng.choice([8, 10, 12, 14, 16]))
        pad, stride = (int(rng.integers(0, 2)), int(rng.integers(1, 3))) if rng.random() < 0.25 else (0, 1)
        out.append((int(rng.integers(1, 4)), cin, cout, hw, 1, pad, stride, g))
    return out


def _random_depthwise(n: int, seed: int = 43) -> list[tuple[int, ...]]:
    """Depthwise 3x3: 5-40 channels, sizes 8-16, padding 0-1, stride 1-2, batch 1-3."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = int(rng.integers(5, 41))
        out.append((int(rng.integers(1, 4)), c, c, int(rng.integers(8, 17)), 3, int(rng.integers(0, 2)),
                    int(rng.choice([1, 1, 2])), c))
    return out


@pytest.mark.parametrize("case", _random_cases(6) + _random_depthwise(3) + [(2, 136, 136, 8, 1, 0, 1, 4), (1, 68, 68, 14, 1, 0, 1, 2),
                                  (3, 12, 20, 10, 1, 0, 1, 2)])  # 10 per group: 5 or 10 lanes
@pytest.mark.parametrize("tgt", [CPU, AVX512], ids=["avx2", "avx512"])
def test_schedule_matches_interpreter(case: tuple[int, ...], tgt: TargetInfo) -> None:
    f, conv = _conv(case)
    s = default_schedule(f, tgt)
    same(f, s.func, dim=case[0])
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    plan = column_plan(conv, tgt.lanes)
    if plan is None or conv_plan(conv, tgt.lanes // 2) is not None:  # half channel vectors come first
        return
    # the tile's vector loop runs over the columns, `vl` lanes
    vec = [lp for _, lp in walk(s.func.body) if isinstance(lp, For) and lp.kind == "vectorized"
           and any(isinstance(x, BlockStmt) and x.name == "conv2d" for _, x in walk(lp.body))]
    assert len(vec) == 1 and arith.as_int(vec[0].extent) == plan[5]


@pytest.mark.parametrize("seed", range(3))
def test_random_design_space_points_keep_results(seed: int) -> None:
    f, _ = _conv((2, 20, 28, 12, 1, 0, 1, 4))  # 7 per group, 12 columns
    s = sample_schedule(f, CPU, seed=seed)
    same(f, s.func, dim=2)


def test_compiled_grouped_plane_matches_numpy() -> None:
    compiled_matches_numpy((1, 136, 136, 28, 1, 0, 1, 4), [1, 3])  # shufflenet's 34 per group
    compiled_matches_numpy((2, 68, 68, 14, 1, 0, 1, 4), [2])  # 17 per group, 14 columns
    compiled_matches_numpy((1, 24, 24, 14, 3, 1, 1, 24), [1, 2])  # depthwise, padded columns per lane
    compiled_matches_numpy((1, 20, 20, 28, 3, 1, 1, 20), [3])
    compiled_matches_numpy((1, 20, 20, 29, 3, 1, 2, 20), [2])  # stride 2: 15 columns
