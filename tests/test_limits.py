"""Hostile sizes are refused before allocating (ir/limits.py): an .npz whose member header claims
terabytes, a decompression bomb, a graph result larger than memory. Each is one located error."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mlc.ir.constants import read_npz
from mlc.ir.diagnostics import MlcError
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module


def _npy_header(shape: tuple[int, ...]) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return b.getvalue()


def test_npz_member_claiming_terabytes_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "claim.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", _npy_header((1 << 40,)) + b"\0" * 16)
    with pytest.raises(MlcError, match=r"claims 4,398,046,511,104 bytes of data but holds"):
        read_npz(p, "inputs")


def test_npz_decompression_bomb_needs_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "bomb.npz"
    n = 4 << 20  # 16 MiB of zeros, a few KiB compressed
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header((n,)) + b"\0" * (4 * n))
    assert p.stat().st_size < 100_000
    monkeypatch.setenv("MLC_MAX_BYTES", str(1 << 20))
    with pytest.raises(MlcError, match=r"needs 16,777,\d+ bytes, more than the 1,048,576 allowed"):
        read_npz(p, "inputs")
    monkeypatch.setenv("MLC_MAX_BYTES", str(1 << 30))
    assert read_npz(p, "inputs")["x"].shape == (n,)


def test_npz_object_member_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "obj.npz"
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", b.getvalue() + b"\0" * 64)
    with pytest.raises(MlcError, match="Python objects"):
        read_npz(p, "inputs")


BIG = """mlc.module v1

graph @main(%x: tensor<1 x f32>, %n: tensor<n x f32>) {
  %y: tensor<1048576 x n x f32> = broadcast_to(%x) {shape = (1048576, n)}
  return %y
}
"""


def test_interpreter_refuses_a_result_larger_than_memory_before_computing_it() -> None:
    m = parse_module(BIG, "big.ir")
    x = np.ones(1, np.float32)
    with pytest.raises(MlcError, match=r"%y needs 4,398,046,511,104 bytes") as e:
        run_function(m, {"x": x, "n": np.ones(1 << 20, np.float32)})
    assert e.value.loc is not None and e.value.loc.line == 4  # located at the binding
    out = run_function(m, {"x": x, "n": np.ones(2, np.float32)})  # the same program at a sane size runs
    assert out["y"].shape == (1 << 20, 2)


def test_endless_input_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlc.ir.files import read_bytes

    monkeypatch.setenv("MLC_MAX_BYTES", str(1 << 20))
    with pytest.raises(MlcError, match=r"more than the 1,048,576 bytes allowed \(an endless input\?\)"):
        read_bytes("/dev/zero", "'/dev/zero'")


def test_oversized_regular_file_is_refused_by_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlc.ir.files import read_bytes

    p = tmp_path / "big.ir"
    p.write_bytes(b"x" * 5000)
    monkeypatch.setenv("MLC_MAX_BYTES", "4096")
    with pytest.raises(MlcError, match=r"5,000 bytes is more than the 4,096 allowed"):
        read_bytes(p, "'big.ir'")
    monkeypatch.setenv("MLC_MAX_BYTES", "8192")
    assert read_bytes(p, "'big.ir'") == b"x" * 5000
