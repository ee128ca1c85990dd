"""The one atomic writer: every output file of mlc (IR, side files, artifacts, indexes, vectors) is
written to a temporary file beside it and renamed into place, so a reader never sees a partial file
and a failure leaves what was there before.

Files that belong together are renamed in the order given, the last one being the commit point:
a set whose other members have content-derived names (`cli/io.py`'s hashed weights file) is then
committed by a single rename. Temp files carry the writer's pid, so one left by a killed writer
(SIGKILL leaves no chance to clean up) is removed by the next write beside it."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
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
        with open_input(path) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # a pipe or device has no size to check first
                data = _read_capped(f, what, min(limit, STREAM_LIMIT))
                if not data and stat.S_ISFIFO(st.st_mode):
                    raise MlcError(f"cannot read {what}: nothing to read (a FIFO that nobody writes to)")
                return data
            if st.st_size > limit:
                raise MlcError(f"cannot read {what}: {st.st_size:,} bytes is more than the {limit:,} allowed")
            return _read_capped(f, what, limit)
    except OSError as e:
        raise MlcError(f"cannot read {what}: {e.strerror or e}") from None


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened to read, without waiting for a writer: a FIFO's open blocks until someone opens it
    to write, possibly forever, but not with O_NONBLOCK; reads block again after it, so a FIFO with a
    writer streams as before and one without reads as empty (end of file) at once."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str], what: str) -> None:
    """For a path handed to a reader that opens it itself (onnxruntime, a database): a FIFO, socket or
    device is refused by stat, before anything could block on its open. A missing path is left to it."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "a device"
        raise MlcError(f"cannot read {what}: it is {kind}, not a regular file")


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
                _write_in_place(path, data)
    except OSError as e:
        raise MlcError(f"cannot write '{current}': {e.strerror or e}") from None
    finally:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)


SET_LINK = ".files"  # `.NAME.files`: the one link an output set's members resolve through


def _write_in_place(path: Path, data: bytes) -> None:
    """A device or FIFO output; a FIFO that nobody reads is an error at once (ENXIO), not a hang."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise MlcError(f"cannot write '{path}': a FIFO that nobody reads") from None
        raise
    with os.fdopen(fd, "wb") as f:
        os.set_blocking(fd, True)
        f.write(data)


def write_output_set(files: list[tuple[Path, bytes | None]]) -> None:
    """An output and the files that belong with it (an artifact and its `--emit` listings), all or none.

    `files[0]` is the main output; every path is in its directory; a None entry is a member this
    write does not produce (a listing kind not asked for this time): a file there describes another
    build, so it goes, with the same guarantee.
    A single output over a plain file, a device or nothing is atomic_write_files. Otherwise each
    member is a symlink `NAME -> .MAIN.files/NAME`, and `.MAIN.files` links to a generation
    directory `.MAIN.<token>.d` holding the files: the new generation is written whole and that
    one link is replaced by one rename, so a kill leaves the old set or the new one, never a mix.
    Members of the old set that the new one lacks dangle after the rename (absent) and are removed.
    A set reduced to its main output becomes a plain file again."""
    main = files[0][0]
    present = [(p, d) for p, d in files if d is not None]
    link = main.parent / f".{main.name}{SET_LINK}"
    stale = any(d is None and os.path.lexists(p) for p, d in files)  # a listing of another build
    device = main.exists() and not main.is_file()
    if device or (len(present) == 1 and not stale and not os.path.islink(link)):
        atomic_write_files(present)
        if not device:
            _remove_generations(main, keep=None)  # a writer killed while turning a set back into a file
        return
    for p, _ in present:
        if p.is_dir():
            raise MlcError(f"cannot write '{p}': is a directory")
    current = main
    try:
        umask = os.umask(0)
        os.umask(umask)
        for p, _ in files:
            remove_stale_temps(p)
        remove_stale_temps(link)
        gen = _new_generation(main, [(p.name, d) for p, d in present], umask)
        _adopt_plain_members([p for p, _ in files], link, umask)  # the old set, as links: same content
        for p, _ in present:
            current = p
            _put_link(p, f"{link.name}/{p.name}")  # a new member dangles (is absent) until the commit
        current = main
        _put_link(link, gen.name)  # the commit
        for p, d in files:
            if d is None and _is_member(p, link):
                p.unlink()
        if len(present) == 1:  # a plain file again: its content is the same on both sides of the rename
            atomic_write_files(present)
            link.unlink()
        _remove_generations(main, keep=None if len(present) == 1 else gen.name)
    except OSError as e:
        raise MlcError(f"cannot write '{current}': {e.strerror or e}") from None


def _new_generation(main: Path, files: list[tuple[str, bytes]], umask: int) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{main.name}.{os.getpid()}.", suffix=".tmp", dir=main.parent))
    try:
        for name, data in files:
            (tmp / name).write_bytes(data)
            os.chmod(tmp / name, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        gen = main.parent / f".{main.name}.{tmp.name.split('.')[-2]}.d"
        os.rename(tmp, gen)
        return gen
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _adopt_plain_members(paths: list[Path], link: Path, umask: int) -> None:
    """Plain files at member names (a set written before this scheme) become links into a snapshot
    generation of hard links to themselves, so replacing each by a link changes no content."""
    plain = [p for p in paths if p.is_file() and not p.is_symlink()]
    if not plain:
        return
    sources = {q.name: q for q in link.iterdir()} if link.is_dir() else {}
    sources.update((p.name, p) for p in plain)
    tmp = Path(tempfile.mkdtemp(prefix=f".{paths[0].name}.{os.getpid()}.", suffix=".tmp", dir=paths[0].parent))
    for name, src in sources.items():
        try:
            os.link(src, tmp / name)
        except OSError:
            shutil.copy2(src, tmp / name)
    os.chmod(tmp, 0o777 & ~umask)
    snap = paths[0].parent / f".{paths[0].name}.{tmp.name.split('.')[-2]}.d"
    os.rename(tmp, snap)
    _put_link(link, snap.name)
    for p in plain:
        _put_link(p, f"{link.name}/{p.name}")


def _put_link(path: Path, target: str) -> None:
    """Make `path` a symlink to `target` with one rename (unless it is one already)."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_member(path: Path, link: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == f"{link.name}/{path.name}"


def _remove_generations(main: Path, keep: str | None) -> None:
    """Generation directories of `main` other than `keep` (the old set, and any a killed writer left)."""
    pattern = re.compile(rf"\.{re.escape(main.name)}\.[^/.]+\.d")
    link = main.parent / f".{main.name}{SET_LINK}"
    for name in os.listdir(main.parent):
        current = os.readlink(link) if link.is_symlink() else None  # read again: a writer beside us may commit
        if name not in (keep, current) and pattern.fullmatch(name) and (main.parent / name).is_dir():
            shutil.rmtree(main.parent / name, ignore_errors=True)


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
            if os.path.isdir(path.parent / name) and not os.path.islink(path.parent / name):
                shutil.rmtree(path.parent / name)  # a generation directory being written (write_output_set)
            else:
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
