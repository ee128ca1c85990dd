"""The constants side file: large tensors live in an .npz next to the text, named by content hash.

The text refers to the file by path and sha256; loading checks the hash so a stale or altered
side file is an error, not silently wrong weights. Reading never unpickles.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from .diagnostics import MlcError
from .module import ConstantsRef


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pack_constants(arrays: dict[str, np.ndarray]) -> bytes:
    """The side file's bytes (an .npz, keys sorted so equal constants give equal files)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})
    return buf.getvalue()


def save_constants(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> str:
    """Write arrays to an .npz atomically; returns the file's sha256."""
    path = Path(path)
    data = pack_constants(arrays)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def resolve(ref: ConstantsRef, search_dirs: list[Path]) -> Path:
    """Find the side file: absolute path, else relative to each search dir (the IR file's dir, then cwd)."""
    p = Path(ref.path)
    candidates = [p] if p.is_absolute() else [d / p for d in search_dirs]
    for c in candidates:
        if c.is_file():
            return c
    raise MlcError(f"constants file '{ref.path}' not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def check_constants(ref: ConstantsRef, search_dirs: list[Path]) -> Path:
    """The side file, found and checked against the hash the module names (a stale file is an error)."""
    path = resolve(ref, search_dirs)
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise MlcError(f"cannot read constants file '{path}': {e.strerror}") from None
    if digest != ref.sha256:
        raise MlcError(f"constants file '{path}' has sha256 {digest[:16]}..., the module expects {ref.sha256[:16]}...")
    return path


def load_constants(ref: ConstantsRef, search_dirs: list[Path]) -> dict[str, np.ndarray]:
    path = check_constants(ref, search_dirs)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise MlcError(f"constants file '{path}' is corrupt: {e}") from None


def rebase(ref: ConstantsRef, found_at: Path, out_dir: Path | None) -> ConstantsRef:
    """The same side file, named relative to where the next reader will look (the output's dir)."""
    target = found_at.resolve()
    base = (out_dir or Path.cwd()).resolve()
    try:
        rel = os.path.relpath(target, base)
    except ValueError:
        rel = str(target)
    return ConstantsRef(rel, ref.sha256)
