"""A sharded index: one manifest and shard files, built in parallel, searched by merging per-shard top-k.

On disk, for `-o OUT`:
    OUT                      the manifest: index_file's container (magic MLCANNSH, version, JSON
                             header, sha256) naming every shard with its row count and checksum
    OUT.ir                   the search program, as for a single-file index
    OUT.<token>.shards/      the shard files, 00000.idx ...: each an ordinary index file (its own
                             version, header, codebooks, codes, sha256) over consecutive rows

The manifest's rename is the commit. Shards are written to a hidden temporary directory, which
is renamed to a fresh `OUT.<token>.shards` (nothing is replaced), then the manifest and IR go
through the one atomic writer. A build killed at any point leaves the previous index (single
file or sharded) complete; what it leaves behind (a hidden `.OUT.<pid>.*.tmp` directory or an
unreferenced shard directory) is removed by the next build of OUT.

Search runs every shard with the same k and merges by (distance, global id): each vector's
distance does not depend on which shard holds it and ties go to the smaller id everywhere, so
flat/etree/eforest/ir searches give exactly the ids of one index built from the same codebooks.
The A-Tree (`--beam`) is searched per shard: non-exhaustive beams differ from one global tree.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir.diagnostics import Loc, MlcError
from ..ir.files import atomic_write_files
from .executor import Executor
from .index import AnnIndex, check_k
from .index_file import index_bytes, pack, read_index, unpack
from .io import as_float_vectors
from .quantizer import Quantizer
from .search import rerank, topk

MANIFEST_MAGIC = b"MLCANNSH"
_SHARD_FILE = re.compile(r"[^/\\]+\.shards/\d{5}\.idx")


def encode_shard(x: np.ndarray, q: Quantizer, keep_base: bool) -> tuple[int, bytes]:
    """One shard's index file (its rows, and the bytes): runs where the executor puts it."""
    return len(x), index_bytes(AnnIndex.of(q, x, q.encode(x), keep_base))


def encode_shards(x: np.ndarray, q: Quantizer, keep_base: bool, executor: Executor,
                  shards: int) -> list[tuple[int, bytes]]:
    """The shard files of x, in row order (fewer than `shards` when x has few 4096-row blocks)."""
    return executor.map_rows(encode_shard, x, q, keep_base, parts=shards)


def write_sharded(output: str | os.PathLike, q: Quantizer, shards: list[tuple[int, bytes]], ir_text: str) -> None:
    """Commit shards + manifest + IR so that a kill leaves the old index or the new one, complete."""
    out = Path(output)
    pid_prefix = f".{out.name}.{os.getpid()}."
    try:
        tmp = Path(tempfile.mkdtemp(prefix=pid_prefix, suffix=".tmp", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the directory the usual permissions
    except OSError as e:
        raise MlcError(f"cannot write '{out}': {e.strerror or e}") from None
    final = out.parent / f"{out.name}.{tmp.name[len(pid_prefix):-4]}.shards"
    manifest = b""
    try:
        atomic_write_files([(tmp / f"{i:05d}.idx", data) for i, (_, data) in enumerate(shards)])
        entries = [{"file": f"{final.name}/{i:05d}.idx", "rows": rows, "sha256": data[-32:].hex()}
                   for i, (rows, data) in enumerate(shards)]
        header = {"kind": "sharded", "dim": q.dim, "method": q.method, "codebooks": q.M, "codewords": q.K,
                  "size": sum(r for r, _ in shards), "params": q.params(), "shards": entries}
        manifest = pack(MANIFEST_MAGIC, header, {})
        os.rename(tmp, final)
        atomic_write_files([(out, manifest), (Path(f"{out}.ir"), ir_text.encode())])  # the commit
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (manifest and out.is_file() and _trailer(out) == manifest[-32:]):
            shutil.rmtree(final, ignore_errors=True)
        raise
    remove_stale_shards(out, keep=final)


def remove_stale_shards(output: str | os.PathLike, keep: Path | None = None) -> None:
    """Shard directories of OUT other than `keep`, and temporaries of builds no longer running."""
    out = Path(output)
    committed = re.compile(re.escape(out.name) + r"\.[a-z0-9_]+\.shards")
    temporary = re.compile(re.escape(f".{out.name}.") + r"(\d+)\.[a-z0-9_]+\.tmp")
    for p in out.parent.iterdir():
        t = temporary.fullmatch(p.name)
        stale = (committed.fullmatch(p.name) and p != keep) or (t and not _running(int(t.group(1))))
        if stale and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _trailer(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - 32, 0))
        return f.read(32)


@dataclass
class ShardedIndex:
    """The shards of one index (consecutive id ranges), searched as one."""

    shards: list[AnnIndex]
    _base: np.ndarray | None = field(default=None, init=False, repr=False)  # all shards' vectors, for --rerank

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shards)

    def search(self, queries: np.ndarray, k: int = 10, mode: str = "flat", beam: int | None = None,
               rerank_k: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """As AnnIndex.search over all shards: per-shard top-k merged by (distance, global id)."""
        q = as_float_vectors(queries, self.dim, "queries")
        check_k(k, self.size)
        if rerank_k and any(s.base is None for s in self.shards):
            raise MlcError("re-ranking needs the base vectors: build the index with --keep-base")
        short = max(k, rerank_k)
        ids, dist, offset = [], [], 0
        for s in self.shards:
            i, d = s.search(q, min(short, s.size), mode, beam)
            ids.append(np.where(i >= 0, i + offset, -1))
            dist.append(d)
            offset += s.size
        ids_m, dist_m = topk(np.concatenate(dist, axis=1), short, np.concatenate(ids, axis=1))
        if rerank_k:
            if self._base is None:
                self._base = np.concatenate([s.base for s in self.shards])  # type: ignore[misc]
            ids_m, dist_m = rerank(q, self._base, ids_m, k)
        return ids_m[:, :k], dist_m[:, :k]

    def quantization_error(self) -> float | None:
        errs = [s.quantization_error() for s in self.shards]
        if any(e is None for e in errs):
            return None
        return float(sum(e * s.size for e, s in zip(errs, self.shards, strict=True)) / self.size)  # type: ignore[operator]


def read_sharded(path: str | os.PathLike) -> ShardedIndex:
    """The manifest and every shard it names, each checked (checksums, shapes, same quantizer)."""
    where = Loc(str(path))

    def bad(msg: str) -> MlcError:
        return MlcError(f"corrupt or unsupported index manifest: {msg}", where)

    header, _ = unpack(path, MANIFEST_MAGIC, "index manifest")
    try:
        dim, m, k, n = (int(header[f]) for f in ("dim", "codebooks", "codewords", "size"))  # type: ignore[call-overload]
        method = str(header["method"])
        entries = [(str(e["file"]), int(e["rows"]), bytes.fromhex(str(e["sha256"])))  # type: ignore[index]
                   for e in header["shards"]]  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"unreadable header ({e})") from None
    if not entries or sum(r for _, r, _ in entries) != n:
        raise bad(f"the shards' rows do not add up to its size {n}")
    shards: list[AnnIndex] = []
    for name, rows, digest in entries:
        if not _SHARD_FILE.fullmatch(name):
            raise bad(f"shard path '{name}' is not a shard of this index")
        p = Path(path).parent / name
        if not p.is_file():
            raise MlcError(f"missing shard '{name}' (the index is incomplete)", where)
        if _trailer(p) != digest:
            raise MlcError(f"shard '{name}' does not match the manifest's checksum (modified, or from another "
                           "build)", where)
        s = read_index(p)
        sq, ref = s.quantizer, shards[0].quantizer if shards else None
        if s.size != rows or (sq.method, sq.dim, sq.M, sq.K) != (method, dim, m, k) or (
                ref is not None and not all(np.array_equal(a, ref.arrays()[key]) for key, a in sq.arrays().items())):
            raise MlcError(f"shard '{name}' does not belong to this index (rows, quantizer or codebooks differ)",
                           where)
        shards.append(s)
    return ShardedIndex(shards)


def open_index(path: str | os.PathLike) -> AnnIndex | ShardedIndex:
    """A single-file index or a sharded one, told apart by the file's magic."""
    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            if f.read(len(MANIFEST_MAGIC)) == MANIFEST_MAGIC:
                return read_sharded(p)
    return read_index(p)
