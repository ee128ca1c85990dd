"""Distributed index builds: sharded index files, the Ray executor, and what a killed worker or driver leaves.

The Ray tests run a 2-CPU instance on this machine (module fixture) and skip, with the reason,
where Ray is not installed; the sharded-index tests use the local executor and always run.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from mlc.ann.executor import LOCAL, RayExecutor, row_ranges
from mlc.ann.index import train_quantizer
from mlc.ann.index_file import read_index
from mlc.ann.io import read_vectors, write_vectors
from mlc.ann.sharded import ShardedIndex, encode_shards, open_index, write_sharded
from mlc.cli.ann import ann_index
from ray_helpers import local_ray

MLC = [sys.executable, "-m", "mlc.cli"]
BUILD = ["--method", "irvq", "-M", "3", "-K", "32", "-L", "4", "--train-size", "9000", "--seed", "5"]


def _data(rows: int, seed: int = 0, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, dim)) @ rng.standard_normal((dim, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ann_dist")
    write_vectors(d / "base.npy", _data(12500))
    write_vectors(d / "q.npy", _data(40, seed=1))
    return d


def _build(*args: str) -> None:
    res = CliRunner().invoke(ann_index, ["build", *args])
    assert res.exit_code == 0, res.output


def _search(index: Path, queries: Path, out: Path, *args: str) -> np.ndarray:
    res = CliRunner().invoke(ann_index, ["search", str(index), str(queries), "--k", "20", *args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return read_vectors(out)


@pytest.fixture(scope="module")
def single(files: Path) -> Path:
    """The single-machine build everything is compared with."""
    _build(str(files / "base.npy"), *BUILD, "-o", str(files / "one.idx"))
    return files / "one.idx"


def test_row_ranges_are_aligned() -> None:
    assert row_ranges(10, 3) == [(0, 10)]
    assert row_ranges(4096 * 5 + 1, 3) == [(0, 8192), (8192, 16384), (16384, 20481)]
    assert row_ranges(4096 * 3 + 5, 3) == [(0, 4096), (4096, 8192), (8192, 12293)]
    assert row_ranges(0, 2) == [(0, 0)]


def test_sharded_search_equals_single(tmp_path: Path, files: Path, single: Path) -> None:
    """A sharded build (local executor) from the same codebooks and seed gives the same ids."""
    sharded = tmp_path / "sh.idx"
    _build(str(files / "base.npy"), *BUILD, "--shards", "3", "-o", str(sharded))
    got = open_index(sharded)
    assert isinstance(got, ShardedIndex) and [s.size for s in got.shards] == [4096, 4096, 4308]
    for mode in (["--mode", "flat"], ["--mode", "ir"], ["--mode", "etree"], ["--rerank", "60"]):
        want = _search(single, files / "q.npy", tmp_path / "a.npy", *mode)
        assert np.array_equal(_search(sharded, files / "q.npy", tmp_path / "b.npy", *mode), want), mode
    res = CliRunner().invoke(ann_index, ["eval", str(sharded), str(files / "q.npy"), str(tmp_path / "b.npy")])
    assert res.exit_code == 0 and "quant_error" in res.output, res.output


def test_sharded_codes_equal_single(files: Path, single: Path, tmp_path: Path) -> None:
    x = read_vectors(files / "base.npy")
    q = read_index(single).quantizer
    shards = encode_shards(x, q, False, LOCAL, 2)
    write_sharded(tmp_path / "s.idx", q, shards, "ir")
    got = open_index(tmp_path / "s.idx")
    assert isinstance(got, ShardedIndex)
    assert np.array_equal(np.concatenate([s.codes for s in got.shards]), read_index(single).codes)


def _error(*args: str) -> str:
    res = CliRunner().invoke(ann_index, list(args))
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], res.output
    return lines[0]


def test_sharded_bad_input(tmp_path: Path, files: Path) -> None:
    """A corrupt manifest or shard, a shard from elsewhere, a missing shard: one located error each."""
    idx = tmp_path / "s.idx"
    _build(str(files / "base.npy"), "--method", "rvq", "-M", "2", "-K", "16", "--shards", "3", "-o", str(idx))
    q, out = str(files / "q.npy"), str(tmp_path / "r.npy")
    (shard_dir,) = tmp_path.glob("s.idx.*.shards")
    good = {p: p.read_bytes() for p in [idx, *shard_dir.iterdir()]}
    s0, s1 = shard_dir / "00000.idx", shard_dir / "00001.idx"

    idx.write_bytes(good[idx][:-1] + bytes([good[idx][-1] ^ 1]))
    assert "manifest: checksum mismatch" in _error("search", str(idx), q, "-o", out)
    idx.write_bytes(good[idx])
    s0.write_bytes(good[s1])  # a valid index file, but not the one the manifest names
    assert "does not match the manifest's checksum" in _error("search", str(idx), q, "-o", out)
    s0.write_bytes(good[s0][:100] + bytes([good[s0][100] ^ 1]) + good[s0][101:])
    assert f"{s0.name}: error: corrupt or unsupported index file: checksum" in _error("search", str(idx), q, "-o", out)
    s0.unlink()
    assert "missing shard" in _error("eval", str(idx), q, str(tmp_path / "gt.npy"))
    assert not Path(out).exists()


def test_executor_argument_errors(tmp_path: Path, files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(ann_index, ["build", str(files / "base.npy"), "--executor", "dask", "-o",
                                         str(tmp_path / "i.idx")])
    assert res.exit_code == 2 and "ray:ADDRESS" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    line = _error("build", str(files / "base.npy"), "--executor", "ray", "-o", str(tmp_path / "i.idx"))
    assert line.startswith("mlc: error:") and "pip install 'mlc[distributed]'" in line
    assert not list(tmp_path.iterdir())


# --- on Ray -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    yield from local_ray(__name__)


ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def in_a_task(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn run as a Ray task: with one BLAS thread, as Ray runs every task (threaded sgemm rounds differently)."""
    import ray

    return ray.get(ray.remote(fn).remote(*args, **kwargs))


def train_on_ray(*args: Any, **kwargs: Any) -> Any:
    return train_quantizer(*args, executor=RayExecutor(), **kwargs)


def test_ray_build_equals_local(tmp_path: Path, files: Path, ray_address: str) -> None:
    """Distributed k-means and encoding on 2 workers: the codebooks and codes of a local build, bit for bit."""
    single, out = tmp_path / "one.idx", tmp_path / "ray.idx"
    for extra, o in (([], single), (["--executor", f"ray:{ray_address}"], out)):
        p = subprocess.run([*MLC, "ann-index", "build", str(files / "base.npy"), *BUILD, *extra, "-o", str(o)],
                           capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, timeout=120)  # Ray's token too
        assert p.returncode == 0, p.stderr
    got, want = open_index(out), read_index(single)
    assert isinstance(got, ShardedIndex) and len(got.shards) == 2
    assert np.array_equal(got.shards[0].quantizer.codebooks, want.quantizer.codebooks)  # type: ignore[attr-defined]
    assert np.array_equal(np.concatenate([s.codes for s in got.shards]), want.codes)
    for mode in ("ir", "flat"):
        assert np.array_equal(_search(out, files / "q.npy", tmp_path / "b.npy", "--mode", mode),
                              _search(single, files / "q.npy", tmp_path / "a.npy", "--mode", mode))


def die_once(marker: str, fn: Callable[..., Any], rows: np.ndarray, *args: Any) -> Any:
    """The first task to get here kills its worker process (no cleanup, as a crash); the rest work."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return fn(rows, *args)
    os._exit(1)


class DyingWorkers(RayExecutor):
    """The first task of the maps numbered in `deadly` kills its worker: Ray must re-run it (max_retries)."""

    def __init__(self, marker_dir: Path, deadly: set[int]):
        super().__init__()
        self.marker_dir, self.deadly, self.maps = marker_dir, deadly, 0

    def map_rows(self, fn: Callable[..., Any], x: np.ndarray, *args: Any, parts: int | None = None) -> list[Any]:
        self.maps += 1
        if self.maps in self.deadly:
            fn = functools.partial(die_once, str(self.marker_dir / f"died-{self.maps}"), fn)
        return super().map_rows(fn, x, *args, parts=parts)


def test_worker_killed_mid_build(tmp_path: Path, files: Path, ray_address: str) -> None:
    """A worker dies in a k-means assignment step and another in the encoding: the build completes, identical."""
    ex = DyingWorkers(tmp_path, {2})
    x = read_vectors(files / "base.npy")
    q = train_quantizer(x, "rvq", 2, 16, 1, 9000, executor=ex, seed=5)
    ex.deadly = {ex.maps + 1}
    shards = encode_shards(x, q, False, ex, 2)
    assert sorted(p.name for p in tmp_path.glob("died-*")) == ["died-2", f"died-{ex.maps}"]
    want = in_a_task(train_quantizer, x, "rvq", 2, 16, 1, 9000, seed=5)
    assert np.array_equal(q.codebooks, want.codebooks)  # type: ignore[attr-defined]
    assert shards == encode_shards(x, want, False, LOCAL, 2)


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.conformance), signal.SIGKILL])
def test_driver_interrupted_leaves_old_index(tmp_path: Path, files: Path, single: Path, ray_address: str,
                                             sig: signal.Signals) -> None:
    """Killing `mlc ann-index build --executor ray` mid-way leaves the old index whole; the next run works.

    The test holds every CPU of the cluster while the driver runs, so the driver's tasks wait and it
    cannot finish before the signal (on a fast machine the whole build takes about a second).
    """
    import ray
    from ray._private.state import jobs  # the GCS job table; Ray's public state API needs the dashboard
    from ray.util.placement_group import placement_group, remove_placement_group

    out = tmp_path / "i.idx"
    old = single.read_bytes()
    out.write_bytes(old)
    cmd = [*MLC, "ann-index", "build", str(files / "base.npy"), *BUILD, "--executor", f"ray:{ray_address}",
           "-o", str(out)]
    hold = placement_group([{"CPU": 2}])
    ray.get(hold.ready(), timeout=60)  # tasks of an earlier test's killed driver are gone by now
    try:
        live = sum(not j["IsDead"] for j in jobs())
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while sum(not j["IsDead"] for j in jobs()) <= live and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the driver has joined the cluster (its error handler is in place)
        time.sleep(1.0)  # it reads the vectors and submits its first tasks, which wait for a CPU
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        remove_placement_group(hold)
    assert p.returncode != 0, err.decode()  # interrupted, not finished
    assert out.read_bytes() == old and read_index(out).size == 12500  # the old index, whole
    if sig == signal.SIGINT:  # it cleaned up after itself; the next run is tested after SIGKILL
        assert p.returncode == 130 and [f.name for f in tmp_path.iterdir()] == ["i.idx"], err.decode()
        return
    done = subprocess.run(cmd, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert isinstance(open_index(out), ShardedIndex)
    names = [f.name for f in tmp_path.iterdir()]  # what the killed run left is gone
    shard_dirs = [n for n in names if n.endswith(".shards")]
    assert sorted(set(names) - set(shard_dirs)) == ["i.idx", "i.idx.ir"] and len(shard_dirs) == 1, names


def test_unreachable_cluster_is_one_error(tmp_path: Path, files: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'mlc[distributed]')")
    p = subprocess.run([*MLC, "ann-index", "build", str(files / "base.npy"), "--executor", "ray:127.0.0.1:1",
                        "-o", str(tmp_path / "i.idx")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "mlc: error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"], p.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("method,opts", [("pq", {"rotate": True}), ("da", {"sweeps": 1})])
def test_ray_training_bit_identical(ray_address: str, method: str, opts: dict[str, Any]) -> None:
    """OPQ's rotation and DA's annealing re-encode on the executor too: still the local result, bit for bit."""
    x = _data(12000, seed=3)
    want = in_a_task(train_quantizer, x, method, 4, 16, 4, 10000, seed=2, **opts)
    got = in_a_task(train_on_ray, x, method, 4, 16, 4, 10000, seed=2, **opts)  # a driver with one BLAS thread
    assert all(np.array_equal(a, got.arrays()[k]) for k, a in want.arrays().items())
    assert encode_shards(x, got, True, RayExecutor(), 3) == in_a_task(encode_shards, x, want, True, LOCAL, 3)
