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

from .arith import as_int
from .diagnostics import Loc, MlcError
from .files import check_regular
from .limits import check_bytes, nbytes
from .module import ConstantsRef, Module


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pack_constants(arrays: dict[str, np.ndarray]) -> bytes:
    """The side file's bytes (an .npz, keys sorted so equal constants give equal files)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.require(v, requirements="C") for k, v in sorted(arrays.items())})  # keeps 0-d arrays 0-d
    return buf.getvalue()


def read_npz(src: str | os.PathLike[str] | bytes, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (a path or its bytes), never unpickling; any defect is one MlcError naming `what`.

    numpy reads anything that is not a zip archive as a pickle and then suggests loading it
    unsafely; a file that is not a zip archive is reported as such instead.
    """
    try:
        if isinstance(src, bytes):
            head = src[:4]
        else:
            check_regular(src, what)  # zip needs a seekable file; a FIFO's open would wait for a writer
            with open(src, "rb") as f:
                head = f.read(4)
    except OSError as e:
        raise MlcError(f"cannot read {what}: {e.strerror}") from None
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise MlcError(f"{what} is not an .npz archive" + (" (empty file)" if not head else ""))
    try:
        _check_members(io.BytesIO(src) if isinstance(src, bytes) else src, what)
        with np.load(io.BytesIO(src) if isinstance(src, bytes) else src, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise MlcError(f"{what} is corrupt: {e}") from None


def _check_members(src: str | os.PathLike[str] | io.BytesIO, what: str) -> None:
    """Every member's claimed size against memory, before numpy allocates it: a header claiming
    terabytes or a decompression bomb is a "needs N bytes" error, and a header claiming more data
    than the member holds is corruption."""
    total = 0
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            total += info.file_size
            check_bytes(total, f"{what} (member '{info.filename}', uncompressed)")
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                if dtype.hasobject:
                    raise MlcError(f"{what}: member '{info.filename}' holds Python objects, which are never loaded")
                need = nbytes(shape, dtype)
                if need > info.file_size:
                    raise MlcError(f"{what} is corrupt: member '{info.filename}' claims {need:,} bytes of data "
                                   f"but holds {info.file_size:,}")


def resolve(ref: ConstantsRef, search_dirs: list[Path]) -> Path:
    """Find the side file: absolute path, else relative to each search dir (the IR file's dir, then cwd)."""
    p = Path(ref.path)
    candidates = [p] if p.is_absolute() else list(dict.fromkeys(d / p for d in search_dirs))
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
    return read_npz(check_constants(ref, search_dirs), f"constants file '{ref.path}'")


def rebase(ref: ConstantsRef, found_at: Path, out_dir: Path | None) -> ConstantsRef:
    """The same side file, named relative to where the next reader will look (the output's dir)."""
    target = found_at.resolve()
    base = (out_dir or Path.cwd()).resolve()
    try:
        rel = os.path.relpath(target, base)
    except ValueError:
        rel = str(target)
    return ConstantsRef(rel, ref.sha256)


def check_constant_types(module: Module, arrays: dict[str, np.ndarray], source: str | None = None) -> None:
    """Every `const "key"` names an array of the side file with the declared shape and dtype."""
    from .dtype import to_numpy
    from .graph import Block, Constant, Function, If, Loop
    from .types import TensorType

    lines = source.splitlines() if source else []

    def fail(msg: str, loc: Loc) -> MlcError:
        text = lines[loc.line - 1] if 0 < loc.line <= len(lines) else None
        return MlcError(msg, loc, text)

    def walk(block: Block) -> None:
        for b in block.bindings:
            n = b.node
            if isinstance(n, If):
                walk(n.then_block)
                walk(n.else_block)
            elif isinstance(n, Loop):
                walk(n.body)
            elif isinstance(n, Constant):
                if n.key not in arrays:
                    raise fail(f"constant '{n.key}' is not in the constants file", n.loc)
                a, t = arrays[n.key], b.var.type
                if not isinstance(t, TensorType) or t.shape is None:
                    continue
                want = tuple(as_int(d) for d in t.shape)
                if (None not in want and a.shape != want) or a.dtype != to_numpy(t.dtype):
                    raise fail(f"constant '{n.key}' is {a.dtype}{list(a.shape)} in the constants file, "
                               f"declared {t.dtype}{list(want)}", n.loc)

    for f in module.functions:
        if isinstance(f, Function):
            walk(f.body)
