"""Vector files: TEXMEX .fvecs/.bvecs/.ivecs and numpy .npy, read and written with clear errors.

A TEXMEX record is a little-endian int32 dimension followed by that many components
(float32 for fvecs, uint8 for bvecs, int32 for ivecs). Every record must carry the same
dimension; a truncated or inconsistent file is a user error, never a silent reshape.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..ir.diagnostics import Loc, MlcError
from ..ir.files import atomic_write_bytes

_TEXMEX: dict[str, np.dtype] = {
    ".fvecs": np.dtype("<f4"),
    ".bvecs": np.dtype("u1"),
    ".ivecs": np.dtype("<i4"),
}
FORMATS: tuple[str, ...] = (*_TEXMEX, ".npy")


def _fail(path: str | os.PathLike, message: str) -> MlcError:
    return MlcError(message, Loc(str(path)))


def _suffix(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise _fail(path, f"unknown vector file extension '{ext}' (expected one of {', '.join(FORMATS)})")
    return ext


def read_vectors(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Read a 2-D array from .fvecs/.bvecs/.ivecs/.npy (dtype as stored)."""
    ext = _suffix(path)
    if not Path(path).is_file():
        raise _fail(path, "not a regular file" if Path(path).exists() else "no such file")
    if ext == ".npy":
        return _read_npy(path, max_rows)
    return _read_texmex(path, _TEXMEX[ext], max_rows)


def _read_npy(path: str | os.PathLike, max_rows: int | None) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:  # object arrays, bad header
        raise _fail(path, f"not a readable .npy array: {e}") from None
    except OSError as e:
        raise _fail(path, f"cannot read .npy file: {e}") from None
    if not isinstance(arr, np.ndarray):  # np.load gives an NpzFile for a zip archive
        arr.close()
        raise _fail(path, "this is an .npz archive, not a .npy array (save one array with np.save)")
    if arr.ndim != 2:
        raise _fail(path, f"expected a 2-D array of vectors, got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiu":
        raise _fail(path, f"expected a numeric array, got dtype {arr.dtype}")
    rows = arr if max_rows is None else arr[:max_rows]
    return np.ascontiguousarray(rows)


def _read_texmex(path: str | os.PathLike, dtype: np.dtype, max_rows: int | None) -> np.ndarray:
    raw = Path(path).read_bytes()
    if len(raw) < 4:
        raise _fail(path, "file too short for a TEXMEX record (needs a 4-byte dimension)")
    dim = int(np.frombuffer(raw, "<i4", count=1)[0])
    if dim <= 0 or dim > 1 << 20:
        raise _fail(path, f"invalid dimension {dim} in the first record header")
    rec = 4 + dim * dtype.itemsize
    if len(raw) % rec:
        raise _fail(path, f"size {len(raw)} bytes is not a whole number of {rec}-byte records (dim {dim}); "
                    "truncated file or wrong extension")
    n = len(raw) // rec
    if max_rows is not None:
        n = min(n, max_rows)
    table = np.frombuffer(raw, np.uint8, count=n * rec).reshape(n, rec)
    dims = table[:, :4].copy().view("<i4").ravel()
    bad = np.flatnonzero(dims != dim)
    if bad.size:
        raise _fail(path, f"record {int(bad[0])} has dimension {int(dims[bad[0]])}, expected {dim}")
    return table[:, 4:].copy().view(dtype).reshape(n, dim).astype(dtype.newbyteorder("="))


def write_vectors(path: str | os.PathLike, data: np.ndarray) -> None:
    """Write a 2-D array as .fvecs/.bvecs/.ivecs/.npy (by extension), atomically."""
    ext = _suffix(path)
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise _fail(path, f"can only write 2-D arrays of vectors, got shape {arr.shape}")
    if ext == ".npy":
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        data = buf.getvalue()
    else:
        dtype = _TEXMEX[ext]
        if arr.dtype.kind == "f" and dtype.kind != "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise _fail(path, f"cannot store non-integer values in {ext}")
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise _fail(path, f"values out of range for {ext} ({info.min}..{info.max})")
        n, d = arr.shape
        out = np.empty((n, 4 + d * dtype.itemsize), np.uint8)
        out[:, :4] = np.full((n, 1), d, "<i4").view(np.uint8)
        out[:, 4:] = np.ascontiguousarray(arr.astype(dtype)).view(np.uint8).reshape(n, -1)
        data = out.tobytes()
    atomic_write_bytes(path, data)


def as_float_vectors(x: np.ndarray, dim: int | None = None, what: str = "vectors",
                     path: str | os.PathLike | None = None) -> np.ndarray:
    """Vectors as contiguous float32, checking the dimension against `dim` when given."""
    x = np.asarray(x)
    where = Loc(str(path)) if path is not None else None
    if x.ndim != 2:
        raise MlcError(f"{what}: expected a 2-D array, got shape {x.shape}", where)
    if x.dtype.kind not in "fiu":
        raise MlcError(f"{what}: expected numeric vectors, got dtype {x.dtype}", where)
    if dim is not None and x.shape[1] != dim:
        raise MlcError(f"{what}: dimension {x.shape[1]} does not match the index dimension {dim}", where)
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise MlcError(f"{what}: contains NaN or infinite values", where)
    return out
