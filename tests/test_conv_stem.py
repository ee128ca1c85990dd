"""Padded convolutions with 7+ taps per row (the 7x7/2 stems of ResNet-50 and Inception): the padding
test on the column stays in the rolled tap loop, so the tile takes more channel vectors and fewer
columns (passes/schedule/conv_tiling.py `wide_padded_taps`, `_step_cost`).

Oracles: the reference interpreter on the unscheduled program (random shapes: strides, padding,
prime widths, batch 1-8) and a numpy convolution in f64 for a compiled model."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ir.tir import BlockStmt
from mlc.ir.tir_visit import walk
from mlc.passes.schedule.conv_tiling import conv_plan, wide_padded_taps
from mlc.passes.schedule.rules import default_schedule
from test_conv_schedules import CPU, compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same


def plan_of(case: tuple[int, ...]) -> tuple[bool, int, int]:
    f = conv_func(fused(conv_model(*case)[0])[0])
    conv = next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")
    plan = conv_plan(conv, CPU.lanes)
    assert plan is not None
    return wide_padded_taps(conv, conv.iters[plan[1]].var.name), plan[3], plan[4]


def test_stem_takes_four_vectors_by_two_columns() -> None:
    assert plan_of((1, 3, 64, 224, 7, 3, 2, 1)) == (True, 4 * CPU.lanes, 2)  # was 2 vectors x 4 columns
    assert plan_of((1, 3, 64, 224, 7, 0, 2, 1))[0] is False  # no padding: no test on the column
    assert plan_of((1, 64, 64, 56, 3, 1, 1, 1)) == (False, 2 * CPU.lanes, 4)  # 3 taps: LLVM hoists the tests
    assert plan_of((1, 32, 128, 13, 5, 2, 1, 1))[0] is False  # 5x5 keeps its tile


@pytest.mark.parametrize("seed", range(4))
def test_random_wide_padded_convs_keep_results(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    kh = int(rng.choice([7, 9]))
    pad, stride = int(rng.integers(1, kh // 2 + 1)), int(rng.choice([1, 2]))
    hw = int(rng.choice([11, 13, 16, 19]))
    c, k = int(rng.choice([1, 3, 4])), int(rng.choice([16, 32, 64]))
    case = (int(rng.integers(1, 9)), c, k, hw, kh, pad, stride, 1)
    assert plan_of(case)[0], case
    f = conv_func(fused(conv_model(*case, seed=seed)[0])[0])
    same(f, default_schedule(f, CPU).func, dim=case[0])


def test_compiled_stem_matches_numpy() -> None:
    compiled_matches_numpy((2, 3, 64, 29, 7, 3, 2, 1), [2])
