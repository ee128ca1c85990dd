"""3x3 convolutions with a short reduction (channels x taps up to `SHORT_STEPS`: SqueezeNet's stem and
its 3x3s at 55x55 and 27x27) take 4 channel vectors x 2 columns, the last column tile guarded where
2 does not divide the width (`short_reduction` in passes/schedule/conv_tiling.py).

Oracles: the reference interpreter on the unscheduled program; a numpy convolution in f64."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.passes.schedule.conv_tiling import SHORT_COLUMNS, SHORT_STEPS, SHORT_VECTORS
from mlc.passes.schedule.rules import default_schedule
from test_conv_plane import conv_block
from test_conv_schedules import CPU, compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same

TILE = (SHORT_VECTORS * CPU.lanes, SHORT_COLUMNS)


def _random_cases(n: int, seed: int = 17) -> list[tuple[int, ...]]:
    """(batch, in ch, out ch, size, 3, pad, stride, groups) with at most SHORT_STEPS steps per output:
    batch 1-3, odd widths that are not prime (9-27 output columns), strides 1-2, groups 1-2."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        g = int(rng.integers(1, 3))
        cin = g * int(rng.integers(1, SHORT_STEPS // 9 // g + 1))
        cout = g * 32 * int(rng.integers(1, 3))
        cols, pad, stride = int(rng.choice([9, 15, 21, 25, 27])), int(rng.integers(0, 2)), int(rng.integers(1, 3))
        out.append((int(rng.integers(1, 4)), cin, cout, (cols - 1) * stride + 3 - 2 * pad, 3, pad, stride, g))
    return out


CASES = [(1, 3, 64, 31, 3, 0, 2, 1), (2, 16, 64, 15, 3, 1, 1, 1), (3, 32, 128, 9, 3, 1, 1, 1)] + _random_cases(3)


@pytest.mark.parametrize("case", CASES, ids=["stem", "fire55", "fire27"] + [f"random{i}" for i in range(3)])
def test_short_reduction_takes_4x2_and_matches_interpreter(case: tuple[int, ...]) -> None:
    _, plan = conv_block(case)
    assert plan[3:5] == TILE
    f = conv_func(fused(conv_model(*case)[0])[0])
    same(f, default_schedule(f, CPU).func, dim=case[0])


@pytest.mark.parametrize("case", [(1, 48, 64, 27, 3, 1, 1, 1), (1, 16, 64, 55, 1, 0, 1, 1), (1, 16, 48, 15, 3, 1, 1, 1),
                                  (1, 16, 64, 13, 3, 1, 1, 1)], ids=["432-steps", "1x1", "48-channels", "prime-width"])
def test_other_convs_keep_the_cost_models_tile(case: tuple[int, ...]) -> None:
    # past SHORT_STEPS, 1x1 kernels, channels that 4 vectors do not divide, prime widths (guarded tiles
    # compete in the cost model there)
    _, plan = conv_block(case)
    assert plan[3:5] != TILE


def test_compiled_short_reduction_matches_numpy() -> None:
    compiled_matches_numpy((2, 16, 64, 15, 3, 1, 1, 1), [1, 3])  # 15 columns: 7 tiles of 2 and a guarded one
    compiled_matches_numpy((1, 3, 32, 21, 3, 0, 2, 1), [2])  # stride 2: 10 columns, no guard
