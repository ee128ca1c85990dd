"""A register tile that does not fit the vector registers (4 vectors x 3 columns on AVX2: 12
accumulators + 4 weight vectors + the broadcast = 17 of 16 ymm, so LLVM spills accumulators in the
reduction loop) reduces in one pass: input-channel chunks (`reduction_chunk`) would reload the
spilled tile from L1 at every chunk (inception_v1's 96->128 and 128->192 3x3 at 27x27: one pass
1.13-1.56x faster). passes/schedule/conv_tiling.py.

Oracles: the reference interpreter on the unscheduled program; a numpy convolution in f64."""

from __future__ import annotations

import pytest
from mlc.ir import arith
from mlc.ir.tir import BlockStmt, For
from mlc.ir.tir_visit import walk
from mlc.passes.schedule.rules import default_schedule
from test_conv_plane import conv_block
from test_conv_schedules import CPU, compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same


def reduction_loops(case: tuple[int, ...]) -> list[For]:
    f = conv_func(fused(conv_model(*case)[0])[0])
    s = default_schedule(f, CPU)
    same(f, s.func, dim=case[0])
    return [lp for _, lp in walk(s.func.body) if isinstance(lp, For) and lp.var.name.startswith("k")
            and any(isinstance(x, BlockStmt) and x.name == "conv2d" for _, x in walk(lp.body))]


@pytest.mark.parametrize("case", [(1, 48, 64, 27, 3, 1, 1, 1), (2, 64, 96, 15, 3, 1, 1, 1), (1, 32, 32, 21, 5, 2, 1, 1)], ids=["27", "15", "5x5"])
def test_spilling_tile_reduces_in_one_pass(case: tuple[int, ...]) -> None:
    _, plan = conv_block(case)
    v, ow1 = plan[3] // CPU.lanes, plan[4]
    assert v * ow1 + v + 1 > 16  # the tile spills: 4 x 3
    # one loop over all input channels, no chunk loop
    assert [arith.as_int(lp.extent) for lp in reduction_loops(case)][0] == case[1]


def test_fitting_tile_still_chunks() -> None:
    case = (1, 96, 128, 28, 3, 1, 1, 1)  # 2 vectors x 4 columns fit; 96 x 3x3 x 16 lanes = 54 KiB
    _, plan = conv_block(case)
    v, ow1 = plan[3] // CPU.lanes, plan[4]
    assert v * ow1 + v + 1 <= 16
    assert arith.as_int(reduction_loops(case)[0].extent) < case[1]


def test_compiled_spilling_tile_matches_numpy() -> None:
    compiled_matches_numpy((2, 96, 64, 27, 3, 1, 1, 1), [2])


@pytest.mark.parametrize("case", [(1, 64, 96, 6, 3, 1, 1, 1), (3, 256, 64, 6, 1, 0, 1, 1)], ids=["3x3", "1x1"])
def test_narrow_rows_take_the_tile_that_fits_on_a_tie(case: tuple[int, ...]) -> None:
    # 6 columns: 4 x 3 and 2 x 6 cost the same; the one without spills is taken under 1-3 taps
    _, plan = conv_block(case)
    assert plan[3:5] == (2 * CPU.lanes, 6)
    reduction_loops(case)  # schedules, and checks against the interpreter
    _, plan = conv_block((1, 16, 96, 6, 5, 2, 1, 1))  # 5 taps keep 4 x 3
    assert plan[3:5] == (4 * CPU.lanes, 3)
