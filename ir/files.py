"""The one atomic writer: every output file of mlc (IR, side files, artifacts, indexes, vectors) is
written to a temporary file beside it and renamed into place, so a reader never sees a partial file
and a failure leaves what was there before.

Files that belong together are renamed in the order given, the last one being the commit point:
a set whose other members have content-derived names (`cli/io.py`'s hashed weights file) is then
committed by a single rename. Temp files carry the writer's pid, so one left by a killed writer
(SIGKILL leaves no chance to clean up) is removed by the next write beside it."""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from .diagnostics import MlcError
from .limits import max_bytes

TEXT_LIMIT = 1 << 30  # IR text: constants live in side files, so a GiB of text is already hostile
STREAM_LIMIT = 1 << 30  # a pipe or device (stdin, a FIFO, /dev/zero): read into memory before its size is known


def read_bytes(path: str | os.PathLike[str], what: str, limit: int = TEXT_LIMIT) -> bytes:
    """A file's bytes ('-' = stdin), refusing more than `limit` bytes (and memory) before reading
    them all: /dev/zero or an endless pipe is an error, not a hang."""
    limit = min(limit, max_bytes())
    try:
        if str(path) == "-":
            return _read_capped(sys.stdin.buffer, what, min(limit, STREAM_LIMIT))
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # a pipe or device has no size to check first
                return _read_capped(f, what, min(limit, STREAM_LIMIT))
            if st.st_size > limit:
                raise MlcError(f"cannot read {what}: {st.st_size:,} bytes is more than the {limit:,} allowed")
            return _read_capped(f, what, limit)
    except OSError as e:
        raise MlcError(f"cannot read {what}: {e.strerror or e}") from None


def _read_capped(f: BinaryIO, what: str, limit: int) -> bytes:
    chunks, n = [], 0
    while True:
        chunk = f.read(min(1 << 24, limit + 1 - n))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        n += len(chunk)
        if n > limit:
            raise MlcError(f"cannot read {what}: more than the {limit:,} bytes allowed (an endless input?)")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write one file atomically (see atomic_write_files)."""
    atomic_write_files([(Path(path), data)])


def atomic_write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temp file beside it, then rename them all into place.

    Any error (missing directory, a directory in the way, no permission, full disk) comes before
    the first rename, so a failure leaves every existing file as it was. Errors are MlcErrors.
    A device or pipe (`-o /dev/null`, `-o /dev/stdout`) is written in place, never replaced.
    """
    tmps: dict[Path, str] = {}
    current = files[0][0]
    try:
        umask = os.umask(0)
        os.umask(umask)
        for path, data in files:
            current = path
            if path.is_dir():
                raise MlcError(f"cannot write '{path}': is a directory")
            if path.exists() and not path.is_file():
                continue
            remove_stale_temps(path)
            fd, tmps[path] = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmps[path], 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        for path, data in files:
            current = path
            if path in tmps:
                os.replace(tmps[path], path)
            else:
                with open(path, "wb") as f:
                    f.write(data)
    except OSError as e:
        raise MlcError(f"cannot write '{current}': {e.strerror or e}") from None
    finally:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temps(path: Path) -> None:
    """Delete temp files of `path` left by writers that are gone (killed before their rename)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(path.parent / name)
        except OSError:
            pass  # another writer removed it first, or it is not ours to remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
