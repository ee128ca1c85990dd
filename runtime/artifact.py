"""The artifact file (`MODEL.mlc`): one versioned binary holding everything a model needs to run.

Layout (little endian):

    b"MLCART\\0\\0"  magic (8 bytes)
    u32             format version
    u32             header length H
    H bytes         header: JSON {"sections": [{"name", "offset", "size", "sha256"}], "meta": {...}}
    32 bytes        sha256 of the header bytes
    ...             section payloads at the offsets the header gives (relative to the payload start)

Sections: "program" (the graph functions and tensor programs, as mlc text IR), "object" (native
object code that llvmlite links without recompiling), "params" (.npz of the constants, read with
allow_pickle=False), "kernels" (JSON: each kernel's argument signature). Every section is hashed,
so a truncated or altered file fails to load with a message naming what is wrong. No pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlc.ir.constants import read_npz
from mlc.ir.diagnostics import MlcError
from mlc.ir.files import read_bytes
from mlc.ir.limits import max_bytes

MAGIC = b"MLCART\0\0"
FORMAT_VERSION = 1


@dataclass
class Artifact:
    sections: dict[str, bytes]
    meta: dict[str, object] = field(default_factory=dict)
    name: str = "<artifact>"  # the file it came from, for messages

    def params(self) -> dict[str, np.ndarray]:
        data = self.sections.get("params")
        if not data:
            return {}
        return read_npz(data, f"{self.name}: the artifact's parameter section")

    def json_section(self, name: str) -> object:
        try:
            return json.loads(self.sections[name].decode())
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MlcError(f"{self.name}: artifact section '{name}' is missing or corrupt: {e}") from None


def pack_params(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def dumps(art: Artifact) -> bytes:
    entries, payload, off = [], bytearray(), 0
    for name, data in art.sections.items():
        entries.append({"name": name, "offset": off, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        payload += data
        off += len(data)
    header = json.dumps({"sections": entries, "meta": art.meta}, sort_keys=True).encode()
    return MAGIC + struct.pack("<II", FORMAT_VERSION, len(header)) + header + hashlib.sha256(header).digest() + bytes(payload)


def loads(data: bytes, name: str = "<artifact>") -> Artifact:
    def bad(msg: str) -> MlcError:
        return MlcError(f"{name}: not a valid mlc artifact: {msg}")

    if len(data) < 16 or data[:8] != MAGIC:
        raise bad("bad magic (expected an .mlc file written by `mlc build` or `mlc codegen`)")
    version, hlen = struct.unpack("<II", data[8:16])
    if version != FORMAT_VERSION:
        raise bad(f"format version {version}, this mlc reads version {FORMAT_VERSION}")
    if 16 + hlen + 32 > len(data):
        raise bad("truncated header")
    header = data[16:16 + hlen]
    if hashlib.sha256(header).digest() != data[16 + hlen:16 + hlen + 32]:
        raise bad("header checksum mismatch (the file was altered)")
    try:
        doc = json.loads(header.decode())
        entries = doc["sections"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise bad(f"unreadable header: {e}") from None
    base = 16 + hlen + 32
    sections: dict[str, bytes] = {}
    for e in entries:
        try:
            lo, n, digest, sname = base + int(e["offset"]), int(e["size"]), str(e["sha256"]), str(e["name"])
        except (KeyError, TypeError, ValueError):
            raise bad("malformed section table") from None
        if lo + n > len(data):
            raise bad(f"section '{sname}' is truncated ({len(data) - lo} of {n} bytes)")
        chunk = data[lo:lo + n]
        if hashlib.sha256(chunk).hexdigest() != digest:
            raise bad(f"section '{sname}' checksum mismatch (the file was altered)")
        sections[sname] = chunk
    return Artifact(sections, dict(doc.get("meta") or {}), name)


def read(path: str | Path) -> Artifact:
    return loads(read_bytes(path, f"'{path}'", max_bytes()), str(path))  # bounded: /dev/zero is an error
