"""Plane-chunked convolutions (passes/schedule/conv_tiling.py `plane_chunk`): on a small output plane
(7x7: ResNet-50's last stage) whose channel block's weights exceed L1, the input channels are reduced
in chunks with the chunk loop outside the plane's rows and columns.

Oracles: the reference interpreter on the unscheduled program (random shapes: strides, padding,
groups, prime widths, batch 1-8) and a numpy convolution in f64 for compiled models."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ir import arith
from mlc.ir.tir import BlockStmt, For
from mlc.ir.tir_visit import walk
from mlc.passes.schedule import Trace
from mlc.passes.schedule.conv_tiling import L1_BYTES, PLANE_POSITIONS, conv_plan, plane_chunk
from mlc.passes.schedule.rules import default_schedule
from test_conv_schedules import CPU, compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same


def conv_block(case: tuple[int, ...]) -> tuple[BlockStmt, tuple]:
    f = conv_func(fused(conv_model(*case)[0])[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    plan = conv_plan(conv, CPU.lanes)
    assert plan is not None
    return conv, plan


def conv_loops(f) -> list[For]:  # noqa: ANN001 - a PrimFunc
    return [lp for _, lp in walk(f.body) if isinstance(lp, For)
            and any(isinstance(x, BlockStmt) and x.name == "conv2d" for _, x in walk(lp.body))]


@pytest.mark.parametrize("case", [(1, 512, 64, 7, 1, 0, 1, 1), (2, 512, 32, 14, 1, 0, 2, 1), (3, 1024, 64, 5, 1, 0, 1, 2)],
                         ids=["1x1", "1x1s2", "grouped"])
def test_small_plane_reduces_in_chunks_outside_its_rows(case: tuple[int, ...]) -> None:
    conv, plan = conv_block(case)
    c, col, _, oc1, _, _ = plan
    chunk = plane_chunk(conv, oc1, c, col)
    taps, cin = case[4] ** 2, case[1] // case[7]  # input channels per group: the reduction
    assert chunk is not None and cin % chunk == 0 and chunk < cin
    assert 4 * oc1 * taps * cin > L1_BYTES  # the block's weights do not fit L1
    in_plane = case[3] ** 2
    assert chunk * 4 * (oc1 * taps + in_plane) <= L1_BYTES // 2  # a chunk's weights and input planes do
    f = conv_func(fused(conv_model(*case)[0])[0])
    s = default_schedule(f, CPU)
    same(f, s.func, dim=case[0])
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func
    loops = conv_loops(s.func)
    # parallel over (batch, channel blocks) only; then the chunk loop; the output rows under it
    assert loops[0].kind == "parallel" and arith.evaluate(loops[0].extent, {"batch": 3}) == 3 * case[2] // oc1
    assert loops[1].var.name.startswith("k") and arith.as_int(loops[1].extent) == cin // chunk
    out = (case[3] + 2 * case[5] - case[4]) // case[6] + 1
    assert arith.as_int(loops[2].extent) == out and not loops[2].var.name.startswith("k")
    # the accumulator tile covers the plane: rows x (column tiles x tile) x lanes
    tile = next(b for _, x in walk(s.func.body) if isinstance(x, BlockStmt) for b in x.alloc_buffers
                if b.name.endswith("_tile"))
    shape = [arith.as_int(d) for d in tile.shape]
    assert shape[-1] == oc1 and shape[-3] == out and shape[-2] >= out


def test_large_planes_and_weights_within_l1_keep_the_row_schedule() -> None:
    conv, plan = conv_block((1, 512, 64, 14, 1, 0, 1, 1))  # 196 positions
    assert 14 * 14 > PLANE_POSITIONS and plane_chunk(conv, plan[3], plan[0], plan[1]) is None
    conv, plan = conv_block((1, 256, 64, 7, 1, 0, 1, 1))  # 256 x 16 lanes = 16 KB of weights
    assert plane_chunk(conv, plan[3], plan[0], plan[1]) is None
    conv, plan = conv_block((1, 64, 32, 7, 3, 1, 1, 1))  # 3x3 kernels keep the row schedule
    assert plane_chunk(conv, plan[3], plan[0], plan[1]) is None


@pytest.mark.parametrize("seed", range(6))
def test_random_plane_chunked_shapes_keep_results(seed: int) -> None:
    # strides, groups, prime widths, batch 1-8, against the interpreter; every shape has a plane of
    # at most PLANE_POSITIONS positions and a channel block's weights beyond L1
    rng = np.random.default_rng(300 + seed)
    kh, pad, stride = 1, 0, int(rng.choice([1, 2]))
    out = int(rng.choice([3, 5, 7, 8]))
    hw = (out - 1) * stride + 1 + int(rng.integers(0, stride))
    group = int(rng.choice([1, 2]))
    per_group = int(rng.choice([512, 1024]))
    c, k = group * per_group, group * int(rng.choice([16, 32]))
    case = (int(rng.integers(1, 9)), c, k, hw, kh, pad, stride, group)
    conv, plan = conv_block(case)
    assert plane_chunk(conv, plan[3], plan[0], plan[1]) is not None, case
    f = conv_func(fused(conv_model(*case, seed=seed)[0])[0])
    same(f, default_schedule(f, CPU).func, dim=case[0])


@pytest.mark.parametrize("case", [(1, 512, 64, 7, 1, 0, 1, 1), (2, 1024, 48, 13, 1, 0, 2, 2)], ids=["1x1", "1x1s2g2"])
def test_compiled_plane_chunked_conv_matches_numpy(case: tuple[int, ...]) -> None:
    compiled_matches_numpy(case, sorted({case[0], 3}))
