"""The index file: a versioned binary, read back without pickle, checked end to end.

Layout (little-endian):
    magic  b"MLCANNIX"           8 bytes
    version                       u32
    header length H               u32
    header                        H bytes of UTF-8 JSON: dim, method, codebooks, codewords,
                                  size, params, and for each array its name, dtype, shape,
                                  offset and byte length (offsets relative to the data start)
    data                          the arrays' raw bytes, each 64-byte aligned
    sha256                        32 bytes over everything before it

The search program's text IR is written beside it (`IDX.ir`, see program.py). The same container
(`pack`/`unpack`, another magic) holds a sharded index's manifest (sharded.py); its shards are
index files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from ..ir.diagnostics import Loc, MlcError
from ..ir.files import atomic_write_bytes
from .index import AnnIndex
from .quantizer import quantizer_class

MAGIC = b"MLCANNIX"
VERSION = 1
_ALLOWED_DTYPES = ("float32", "uint8", "uint16")
_FIXED = struct.Struct("<8sII")


def _pad(n: int) -> int:
    return (-n) % 64


def index_arrays(index: AnnIndex) -> dict[str, np.ndarray]:
    arrays = {f"q.{k}": v for k, v in index.quantizer.arrays().items()}
    arrays["codes"] = index.codes
    if index.vector_bias is not None:
        arrays["vector_bias"] = index.vector_bias
    if index.base is not None:
        arrays["base"] = index.base
    return arrays


def write_index(path: str | os.PathLike, index: AnnIndex) -> None:
    """Write atomically: a failure leaves no partial file behind."""
    atomic_write_bytes(path, index_bytes(index))


def index_bytes(index: AnnIndex) -> bytes:
    """The index file's bytes: magic, version, JSON header, aligned arrays, sha256 of all before it."""
    q = index.quantizer
    header = {"dim": q.dim, "method": q.method, "codebooks": q.M, "codewords": q.K, "size": index.size,
              "params": q.params()}
    return pack(MAGIC, header, index_arrays(index))


def pack(magic: bytes, header: dict[str, object], arrays: dict[str, np.ndarray]) -> bytes:
    """The container every ANN file uses (index, shard, manifest): `header` gains the array table."""
    entries, blobs, offset = [], [], 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in _ALLOWED_DTYPES:
            raise MlcError(f"cannot store array '{name}' of dtype {a.dtype}")
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        entries.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                        "nbytes": len(raw)})
        blobs.append(raw + b"\0" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    hb = json.dumps({**header, "arrays": entries}, sort_keys=True).encode()
    hb += b" " * _pad(_FIXED.size + len(hb))
    body = _FIXED.pack(magic, VERSION, len(hb)) + hb + b"".join(blobs)
    return body + hashlib.sha256(body).digest()


def unpack(path: str | os.PathLike, magic: bytes, what: str) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The header and arrays of a container file, every check done; errors name the file and `what`."""
    where = Loc(str(path))

    def bad(msg: str) -> MlcError:
        return MlcError(f"corrupt or unsupported {what}: {msg}", where)

    p = Path(path)
    if not p.is_file():
        raise MlcError(f"{what} is not a regular file" if p.exists() else f"no such {what}", where)
    raw = p.read_bytes()
    if len(raw) < _FIXED.size + 32 or raw[:8] != magic:
        raise bad("not an mlc ANN index (bad magic)")
    _, version, hlen = _FIXED.unpack_from(raw)
    if version != VERSION:
        raise bad(f"format version {version}, this mlc reads version {VERSION}")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise bad("checksum mismatch (truncated or modified)")
    try:
        header = json.loads(body[_FIXED.size:_FIXED.size + hlen].decode())
        entries = list(header["arrays"])
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"unreadable header ({e})") from None
    data_start = _FIXED.size + hlen
    arrays: dict[str, np.ndarray] = {}
    for e in entries:
        try:
            name, dtype, shape = str(e["name"]), str(e["dtype"]), tuple(int(s) for s in e["shape"])
            off, nbytes = int(e["offset"]), int(e["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise bad("malformed array entry") from None
        if dtype not in _ALLOWED_DTYPES:
            raise bad(f"array '{name}' has unsupported dtype {dtype}")
        dt = np.dtype(dtype).newbyteorder("<")
        if nbytes != int(np.prod(shape)) * dt.itemsize or data_start + off + nbytes > len(body) or off < 0:
            raise bad(f"array '{name}' does not fit its declared shape {shape}")
        arrays[name] = np.frombuffer(body, dt, int(np.prod(shape)), data_start + off).reshape(shape).astype(dtype)
    return header, arrays


def read_index(path: str | os.PathLike) -> AnnIndex:
    def bad(msg: str) -> MlcError:
        return MlcError(f"corrupt or unsupported index file: {msg}", Loc(str(path)))

    header, arrays = unpack(path, MAGIC, "index file")
    try:
        dim, m, k, n = (int(header[f]) for f in ("dim", "codebooks", "codewords", "size"))  # type: ignore[call-overload]
        method, params = str(header["method"]), dict(header["params"])  # type: ignore[call-overload]
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"unreadable header ({e})") from None
    qarrays = {k_[2:]: v for k_, v in arrays.items() if k_.startswith("q.")}
    quant = quantizer_class(method).from_state(dim, m, k, params, qarrays)
    codes = arrays.get("codes")
    if codes is None or codes.shape != (n, m) or codes.dtype != quant.code_dtype:
        got = None if codes is None else (codes.shape, codes.dtype.name)
        raise bad(f"codes array is {got}, expected ({n}, {m}) {quant.code_dtype.name}")
    if codes.size and int(codes.max()) >= k:
        raise bad(f"codes out of range [0, {k})")
    vb = arrays.get("vector_bias")
    if (vb is None) != (quant.vector_bias(codes[:0]) is None) or (vb is not None and vb.shape != (n,)):
        raise bad("vector bias array missing or of the wrong shape")
    base = arrays.get("base")
    if base is not None and base.shape != (n, dim):
        raise bad(f"base array has shape {base.shape}, expected ({n}, {dim})")
    return AnnIndex(quant, codes, vb, base)
