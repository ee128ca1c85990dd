"""With 16 lanes (AVX-512, 32 zmm) the channel-vector tile of `conv_plan` takes no tile that spills
with two reduction steps' weight vectors in flight (`v * ow1 + 2 * v + 1 > 32`) and none of 4
vectors x 3+ columns; a column-padded conv whose whole row fits such a tile takes it (the padding
tests fold in the unrolled row). 1x1 convs that reduce the channels, and 8 lanes, keep the cost
model's tile (`SPILL_ALL_WIDTHS` in passes/schedule/conv_tiling.py).

Oracles: the reference interpreter on the unscheduled program; a numpy convolution in f64."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ir.tir import BlockStmt
from mlc.ir.tir_visit import walk
from mlc.passes.schedule import conv_tiling
from mlc.passes.schedule.conv_tiling import conv_plan
from mlc.passes.schedule.rules import TargetInfo, default_schedule
from test_conv_schedules import compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same

AVX512 = TargetInfo(lanes=16, cores=2)


def _conv(case: tuple[int, ...]) -> BlockStmt:
    f = conv_func(fused(conv_model(*case)[0])[0])
    return next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")


def _tile(case: tuple[int, ...], lanes: int = 16, rule: bool = True) -> tuple[int, int]:
    keep = conv_tiling.SPILL_ALL_WIDTHS
    conv_tiling.SPILL_ALL_WIDTHS = keep if rule else ()
    try:
        plan = conv_plan(_conv(case), lanes)
    finally:
        conv_tiling.SPILL_ALL_WIDTHS = keep
    assert plan is not None
    return plan[3], plan[4]


@pytest.mark.parametrize("case,old,new", [
    ((1, 64, 64, 56, 3, 1, 1, 1), (64, 7), (32, 8)),  # ResNet-50's 3x3 at 56x56: 1.62x kernel medians
    ((1, 128, 128, 28, 3, 1, 1, 1), (64, 7), (32, 7)),  # 3x3 at 28x28: 1.49x
    ((1, 256, 256, 14, 3, 1, 1, 1), (64, 7), (16, 14)),  # 3x3 at 14x14, the whole padded row: 1.52x
    ((1, 64, 256, 56, 1, 0, 1, 1), (64, 7), (32, 8)),  # 1x1 expansion at 56x56: 1.27x
], ids=["3x3-56", "3x3-28", "3x3-14-row", "1x1-expand"])
def test_resnet_tiles_fit_the_registers(case: tuple[int, ...], old: tuple[int, int], new: tuple[int, int]) -> None:
    assert _tile(case, rule=False) == old
    assert _tile(case) == new


@pytest.mark.parametrize("case", [(1, 512, 128, 28, 1, 0, 1, 1), (1, 256, 64, 56, 1, 0, 1, 1)])
def test_channel_reducing_1x1_keeps_the_cost_models_tile(case: tuple[int, ...]) -> None:
    # in ResNet-50 these measured 0.74-0.92x with 2 x 7 / 2 x 8 against 4 x 7
    assert _tile(case) == _tile(case, rule=False) == (64, 7)


def _random_cases(n: int, seed: int = 5) -> list[tuple[int, ...]]:
    """Random convs (batch 1-2, 16-96 in channels, 16-64 out channels in steps of 16, 1x1/3x3/5x5,
    padding 0-2, stride 1-2, 5-30 columns)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        kh = int(rng.choice([1, 3, 5]))
        pad, stride = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(1, 3))
        cols = int(rng.integers(5, 31))
        out.append((int(rng.integers(1, 3)), int(rng.choice([16, 32, 48, 96])), 16 * int(rng.integers(1, 5)),
                    (cols - 1) * stride + kh - 2 * pad, kh, pad, stride, 1))
    return out


def test_no_avx512_tile_spills_and_8_lanes_are_unchanged() -> None:
    for case in _random_cases(40) + [(1, 64, 64, 56, 3, 1, 1, 1), (1, 3, 64, 229, 7, 3, 2, 1)]:
        v16, ow1 = _tile(case)
        v = v16 // 16
        channels_reduced = case[4] == 1 and case[1] > case[2]
        if ow1 > 1 and not channels_reduced:
            assert v * ow1 + 2 * v + 1 <= 32 and not (v >= 4 and ow1 > 2), case
        assert _tile(case, lanes=8) == _tile(case, lanes=8, rule=False), case


@pytest.mark.parametrize("case", [(2, 32, 32, 14, 3, 1, 1, 1), (1, 16, 64, 28, 3, 1, 1, 1), (1, 48, 32, 11, 1, 0, 1, 1),
                                  (2, 16, 32, 15, 5, 2, 2, 1)], ids=["row-14", "2x7", "1x1-11", "5x5-s2"])
def test_avx512_schedule_matches_interpreter(case: tuple[int, ...]) -> None:
    f = conv_func(fused(conv_model(*case)[0])[0])
    same(f, default_schedule(f, AVX512).func, dim=case[0])


def test_compiled_matches_numpy() -> None:
    # this host's lanes (16 on AVX-512: the new tiles; 8 elsewhere: the cost model's)
    compiled_matches_numpy((1, 32, 48, 14, 3, 1, 1, 1), [1, 2])  # 1 vector x the padded row of 14
    compiled_matches_numpy((2, 16, 32, 28, 3, 1, 1, 1), [2])  # 2 vectors x 7
