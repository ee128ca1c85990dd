"""The one Target: every spelling parses through one alias table against configs/targets/*.yaml."""

from __future__ import annotations

import pytest
from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.target import Target, known_targets


@pytest.mark.parametrize("spec", ["cpu", "CPU", "llvm", "host", "x86", "x86_64", None, ""])
def test_cpu_spellings(spec: str | None) -> None:
    t = Target.parse(spec)
    assert t.kind == "cpu" and not t.gpu and str(t) == "cpu"
    assert t.cpu_info().lanes(32) >= 4 and t.key.startswith("cpu:")


@pytest.mark.parametrize("spec", ["cuda", "gpu", "nvidia", "cuda-sm90"])
def test_cuda_spellings_name_the_arch_of_the_target_file(spec: str) -> None:
    t = Target.parse(spec)
    assert (t.kind, t.arch, t.nvcc_arch, t.key, str(t)) == ("cuda", "sm_90", "sm_90a", "cuda:sm_90", "cuda-sm90")
    assert t.max_threads_per_block == 1024 and t.warp_size == 32


def test_cuda_arch_override_round_trips() -> None:
    t = Target.parse("cuda:sm_80")
    assert (t.arch, t.nvcc_arch, t.key) == ("sm_80", "sm_80", "cuda:sm_80")
    assert Target.parse(str(t)) == t and Target.parse(t) is t


@pytest.mark.parametrize("spec", ["tpu", "cpu:sm_80", "cuda:80", "cuda:sm_9x"])
def test_unknown_target_is_a_located_error_listing_the_known_ones(spec: str) -> None:
    with pytest.raises(MlcError) as e:
        Target.parse(spec, Loc("--target"))
    assert e.value.loc == Loc("--target")
    assert "cuda:sm_XY" in e.value.message or "sm_80" in e.value.message
    if "unknown" in e.value.message:
        assert all(k in e.value.message for k in known_targets())
