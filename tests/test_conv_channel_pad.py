"""Output channel counts of `PAD_CHANNELS`+ that are no multiple of the lanes (SqueezeNet's 1000
classes at 16 lanes) take full-width channel vectors: the constant weight is packed with zero
channels up to a multiple of the channel block (`Schedule.pack(pad=True)`, folded at build time by
alter-layout), the register tile computes every lane unguarded (`Schedule.unguard`), and only the
write-back of the last channel block is clipped to the real channels
(passes/schedule/conv_tiling.py `conv_plan(pad=True)`).

Oracles: the reference interpreter on the unscheduled program (random shapes, batch 1-3); a numpy
convolution in f64 for compiled layers; numpy zero-pad + reshape + transpose for a padded pack."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.tir import BlockStmt, For, IfStmt
from mlc.ir.tir_visit import walk
from mlc.passes.alter_layout import pack_nests, run_pack
from mlc.passes.schedule import Schedule, Trace, conv_tiling
from mlc.passes.schedule.conv_tiling import conv_plan
from mlc.passes.schedule.rules import TargetInfo, default_schedule
from test_conv_schedules import compiled_matches_numpy, conv_func, conv_model, fused
from test_schedule_rules import same

AVX512 = TargetInfo(lanes=16, cores=2)


def _func(case: tuple[int, ...]):  # type: ignore[no-untyped-def]
    return conv_func(fused(conv_model(*case)[0])[0])


def _conv(f) -> BlockStmt:  # type: ignore[no-untyped-def]
    return next(x for _, x in walk(f.body) if isinstance(x, BlockStmt) and x.name == "conv2d")


def _vector_lanes(f) -> list[int]:  # type: ignore[no-untyped-def]
    """Extents of the vectorized loops around the conv2d block."""
    return [arith.as_int(lp.extent) or 0 for _, lp in walk(f.body) if isinstance(lp, For) and lp.kind == "vectorized"
            and any(isinstance(x, BlockStmt) and x.name == "conv2d" for _, x in walk(lp.body))]


def test_plan_pads_only_unaligned_channel_counts() -> None:
    f = _func((1, 64, 1000, 13, 1, 0, 1, 1))
    conv = _conv(f)
    assert conv_plan(conv, 16) is None  # 1000 = 62.5 vectors
    plan = conv_plan(conv, 16, pad=True)
    assert plan is not None and plan[3] % 16 == 0
    assert (-(-1000 // plan[3]) * plan[3] - 1000) * conv_tiling.PAD_WASTE <= 1000 or plan[3] == 16
    aligned = _conv(_func((1, 64, 1008, 13, 1, 0, 1, 1)))
    assert conv_plan(aligned, 16) is not None and conv_plan(aligned, 16, pad=True) is None
    small = _conv(_func((1, 16, 40, 9, 1, 0, 1, 1)))  # under PAD_CHANNELS: half vectors as before
    assert conv_plan(small, 16, pad=True) is None and conv_plan(small, 8) is not None
    keep = conv_tiling.PAD_CHANNELS
    conv_tiling.PAD_CHANNELS = 0
    try:
        assert conv_plan(conv, 16, pad=True) is None
    finally:
        conv_tiling.PAD_CHANNELS = keep


def test_schedule_pads_the_weight_and_clips_only_the_write_back() -> None:
    f = _func((1, 24, 100, 6, 1, 0, 1, 1))
    s = default_schedule(f, AVX512)
    same(f, s.func, dim=2)
    assert Trace.from_json(s.trace.to_json()).apply(f) == s.func  # `pack(pad=True)`, `unguard` replay
    assert all(n % 16 == 0 for n in _vector_lanes(s.func)) and _vector_lanes(s.func)
    packs = pack_nests(s.func)
    assert len(packs) == 1 and packs[0].src.name == f.params[1].name  # still folded at build time
    dims = [arith.as_int(d) for d in packs[0].dst.shape]
    assert dims[0] * dims[-1] >= 100 and dims[0] * dims[-1] % 16 == 0 and dims[0] * dims[-1] < 100 + dims[-1]
    # the padded packed constant: numpy's zero-pad, split and transpose of the weight
    w = np.random.default_rng(1).standard_normal((100, 24, 1, 1)).astype(np.float32)
    oc1 = dims[-1]
    want = np.pad(w, ((0, dims[0] * oc1 - 100), (0, 0), (0, 0), (0, 0))).reshape(dims[0], oc1, 24, 1, 1)
    np.testing.assert_array_equal(run_pack(s.func, packs[0], w), want.transpose(0, 2, 3, 4, 1))
    # no guard around the tile's blocks (unguarded lanes compute on zero weights)
    for _, x in walk(s.func.body):
        if isinstance(x, IfStmt):
            assert not any(isinstance(y, BlockStmt) and y.name in ("conv2d", "conv2d_init") for _, y in walk(x.then))


def test_unguard_refuses_a_block_writing_a_global_buffer() -> None:
    f = _func((1, 8, 72, 4, 1, 0, 1, 1))
    sch = Schedule(f)
    blk = sch.get_block("conv2d")
    loops = sch.get_loops(blk)
    sch.split(loops[1], [None, 16])
    with pytest.raises(MlcError, match="not local"):
        sch.unguard(blk)


def _cases(n: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        k = int(rng.integers(65, 200))
        if k % 16 == 0:
            continue
        kh = int(rng.choice([1, 3]))
        pad = int(rng.integers(0, 2)) if kh == 3 else 0
        group = int(rng.choice([1, 1, 2])) if k % 2 == 0 else 1
        c = group * int(rng.integers(2, 12))
        out.append((int(rng.integers(1, 4)), c, k, int(rng.integers(3, 8)), kh, pad, int(rng.choice([1, 2])), group))
    return out


@pytest.mark.parametrize("case", _cases(6, 17) + [(2, 8, 98, 5, 3, 1, 1, 2)], ids=lambda c: "n{}c{}k{}hw{}k{}p{}s{}g{}".format(*c))
def test_random_unaligned_channels_match_the_interpreter(case: tuple[int, ...]) -> None:
    f = _func(case)
    s = default_schedule(f, AVX512)
    same(f, s.func, dim=case[0])
    if case[7] == 1:  # ungrouped: full-width channel vectors over the padded weight
        assert _vector_lanes(s.func) and all(n % 16 == 0 for n in _vector_lanes(s.func))


@pytest.mark.parametrize("case", [(1, 64, 1000, 13, 1, 0, 1, 1), (2, 12, 90, 7, 3, 1, 1, 1), (3, 10, 66, 9, 3, 0, 2, 2)])
def test_compiled_unaligned_channels_match_numpy(case: tuple[int, ...]) -> None:
    compiled_matches_numpy(case, [1, 2, 3])
