"""Vector files and the index file: round trips and clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlc.ann.index import AnnIndex
from mlc.ann.index_file import read_index, write_index
from mlc.ann.io import read_vectors, write_vectors
from mlc.ir.diagnostics import MlcError

DATA = Path(__file__).parent / "data" / "ann"


@pytest.mark.parametrize("ext,dtype", [(".fvecs", np.float32), (".bvecs", np.uint8), (".ivecs", np.int32),
                                       (".npy", np.float32)])
def test_vector_round_trip(tmp_path: Path, ext: str, dtype: type) -> None:
    x = np.random.default_rng(0).integers(0, 200, (17, 5)).astype(dtype)
    p = tmp_path / f"v{ext}"
    write_vectors(p, x)
    y = read_vectors(p)
    assert y.dtype == x.dtype and np.array_equal(x, y)
    assert np.array_equal(read_vectors(p, max_rows=3), x[:3])


def test_fvecs_layout_matches_texmex() -> None:
    """Independent parse of the shipped SIFT file: int32 dim then 128 float32 per record."""
    raw = np.fromfile(DATA / "sift5k_query.fvecs", dtype="<i4").reshape(100, 129)
    assert (raw[:, 0] == 128).all()
    assert np.array_equal(read_vectors(DATA / "sift5k_query.fvecs"), raw[:, 1:].view("<f4"))


def test_vector_file_errors(tmp_path: Path) -> None:
    good = tmp_path / "a.fvecs"
    write_vectors(good, np.ones((4, 3), np.float32))
    trunc = tmp_path / "t.fvecs"
    trunc.write_bytes(good.read_bytes()[:-2])
    with pytest.raises(MlcError, match="not a whole number"):
        read_vectors(trunc)
    mixed = tmp_path / "m.fvecs"
    raw = bytearray(good.read_bytes())
    raw[16:20] = np.array([7], "<i4").tobytes()  # second record's dimension (records are 16 bytes)
    mixed.write_bytes(bytes(raw))
    with pytest.raises(MlcError, match="record 1 has dimension 7"):
        read_vectors(mixed)
    with pytest.raises(MlcError, match="unknown vector file extension"):
        read_vectors(tmp_path / "x.txt")
    with pytest.raises(MlcError, match="no such file"):
        read_vectors(tmp_path / "missing.fvecs")
    obj = tmp_path / "o.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MlcError):
        read_vectors(obj)
    with pytest.raises(MlcError, match="non-integer"):
        write_vectors(tmp_path / "b.ivecs", np.full((2, 2), 0.5))
    assert not (tmp_path / "b.ivecs").exists()


@pytest.fixture(scope="module")
def small_index() -> AnnIndex:
    x = np.random.default_rng(1).standard_normal((600, 16)).astype(np.float32)
    return AnnIndex.build(x, "irvq", 4, 16, beam=2, keep_base=True)


def test_index_file_round_trip(tmp_path: Path, small_index: AnnIndex) -> None:
    p = tmp_path / "i.idx"
    write_index(p, small_index)
    back = read_index(p)
    assert back.quantizer.method == "irvq" and back.quantizer.beam == 2
    assert np.array_equal(back.codes, small_index.codes)
    assert np.array_equal(back.quantizer.codebooks, small_index.quantizer.codebooks)
    assert np.array_equal(back.base, small_index.base)
    q = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    assert np.array_equal(back.search(q, 5)[0], small_index.search(q, 5)[0])


def test_index_file_errors(tmp_path: Path, small_index: AnnIndex) -> None:
    p = tmp_path / "i.idx"
    write_index(p, small_index)
    raw = p.read_bytes()
    bad = tmp_path / "bad.idx"
    bad.write_bytes(raw[:-100])
    with pytest.raises(MlcError, match="checksum"):
        read_index(bad)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(MlcError, match="checksum"):
        read_index(bad)
    bad.write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(MlcError, match="bad magic"):
        read_index(bad)
    with pytest.raises(MlcError, match="dimension 8 does not match the index dimension 16"):
        small_index.search(np.zeros((2, 8), np.float32), 3)
    with pytest.raises(MlcError, match="numeric"):
        small_index.search(np.array([["a"] * 16]), 3)


def test_npz_named_npy_is_one_error(tmp_path: Path) -> None:
    """np.load returns an NpzFile for a zip archive; it is refused, not read as an array (was exit 3)."""
    p = tmp_path / "base.npy"
    np.savez(p.with_suffix(".npz"), x=np.zeros((4, 2), np.float32))
    p.with_suffix(".npz").rename(p)
    with pytest.raises(MlcError, match="an .npz archive, not a .npy array"):
        read_vectors(p)
