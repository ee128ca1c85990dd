"""Building for CUDA needs nvcc only: the arch comes from the target, not from a GPU, so an artifact
is built here (no GPU, no pycuda) and refused at load with one clear error. The CUDA backend does
not schedule: an unbound tensor program is an error that says to run `schedule`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cuda_helpers import matmul
from mlc.codegen.cuda_jit import build_cuda
from mlc.ir.diagnostics import MlcError
from mlc.runtime.artifact import read
from mlc.runtime.cuda import cuda_unavailable

import mlc

nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")


def _mlp(tmp_path: Path) -> Path:
    import onnx
    from mlc.frontend.zoo import build

    path = tmp_path / "mlp.onnx"
    onnx.save(build("mlp"), path)
    return path


def test_an_unscheduled_prim_is_refused_with_a_hint_to_schedule() -> None:
    with pytest.raises(MlcError, match="run the `schedule` pass"):
        build_cuda([matmul("mm", 16, 16, 16, "f32")], "sm_90a")


@nvcc
@pytest.mark.parametrize("target,arch", [("cuda", "sm_90a"), ("cuda:sm_80", "sm_80")])
def test_cuda_artifact_builds_without_a_gpu(tmp_path: Path, target: str, arch: str) -> None:
    from click.testing import CliRunner
    from mlc.cli import commands  # noqa: F401  (registers subcommands)
    from mlc.cli.main import cli

    out = tmp_path / "m.mlc"
    r = CliRunner().invoke(cli, ["build", str(_mlp(tmp_path)), "--target", target, "-o", str(out)])
    assert r.exit_code == 0, r.output
    art = read(out)
    assert art.meta["target"] == "cuda" and art.meta["arch"] == arch
    assert art.sections["cubin"] and b"__global__" in art.sections["cuda_source"]
    if cuda_unavailable() is not None:  # here: loading is where a GPU is needed
        with pytest.raises(MlcError, match="target cuda needs pycuda and an NVIDIA GPU"):
            mlc.load(str(out))
    with pytest.raises(MlcError, match="built for cuda, cannot run on cpu"):
        mlc.load(str(out), device="cpu")
