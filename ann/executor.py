"""Where the row-parallel work of an index build runs: this process, or tasks on a Ray cluster.

One operation, `map_rows(fn, x, *args, parts)`: split the rows of x into contiguous ranges, run
fn(x[range], *args) on each, return the results in range order; the caller reduces them. That
is all k-means assignment, beam encoding and shard encoding need, so there is no RPC layer or
scheduler of ours: Ray places and retries the tasks.

Ranges start at multiples of ALIGN rows, a multiple of the chunk sizes kmeans.assign and
additive.beam_encode work in, so a range is cut into the same chunks as the whole array and
every row's result is bit-identical to the local computation.

Ray is optional (`pip install 'mlc[distributed]'`) and imported only when asked for.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..ir.diagnostics import MlcError

ALIGN = 4096  # rows; kmeans' chunk (4096) and the beam encoder's (1024) divide it
RETRIES = 3  # a task whose worker dies is re-run this many times (Ray's max_retries)
INSTALL_HINT = "pip install 'mlc[distributed]' (or: pip install ray)"


def row_ranges(n: int, parts: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """At most `parts` contiguous ranges covering [0, n), each starting at a multiple of `align`."""
    blocks = max(-(-n // align), 1)
    parts = min(max(parts, 1), blocks)
    cuts = [min(i * blocks // parts * align, n) for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class Executor(ABC):
    """Runs fn over row ranges of an array; `parallel` is False when everything runs here, whole."""

    parallel: ClassVar[bool] = False

    @property
    @abstractmethod
    def workers(self) -> int:
        """CPUs the work can spread over (the default number of ranges)."""

    @abstractmethod
    def map_rows(self, fn: Callable[..., Any], x: np.ndarray, *args: Any, parts: int | None = None) -> list[Any]:
        """[fn(x[s:e], *args) for each range], in range order. `parts=None`: the executor's choice
        (the local one calls fn once on all of x, which is today's single-machine computation)."""

    def pinned(self, x: np.ndarray) -> AbstractContextManager[None]:
        """While open, maps over x reuse one copy of it on the workers (x must not change meanwhile)."""
        return nullcontext()


@dataclass
class LocalExecutor(Executor):
    """Everything in this process, in order."""

    @property
    def workers(self) -> int:
        return 1

    def map_rows(self, fn: Callable[..., Any], x: np.ndarray, *args: Any, parts: int | None = None) -> list[Any]:
        if parts is None:
            return [fn(x, *args)]
        return [fn(x[s:e], *args) for s, e in row_ranges(len(x), parts)]


LOCAL = LocalExecutor()


def rows_task(fn: Callable[..., Any], x: np.ndarray, start: int, stop: int, *args: Any) -> Any:
    """The body of every Ray task: fn on one row range of the shared array."""
    return fn(x[start:stop], *args)


@dataclass
class RayExecutor(Executor):
    """Tasks on a Ray cluster: `address` None starts or joins a local instance, else joins that cluster.

    Each map puts the array in Ray's object store (workers on this node map it without copying),
    once for all the maps inside `pinned(x)`, so the Lloyd iterations over one sample share it.
    """

    address: str | None = None
    num_cpus: int | None = None  # only when this call starts a local instance
    parallel: ClassVar[bool] = True
    _shared: list[tuple[np.ndarray, Any]] = field(default_factory=list, init=False, repr=False)
    _task: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        ray = require_ray()
        if not ray.is_initialized():
            check_reachable(self.address)
            try:
                ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = self.address or "a local instance"
                raise MlcError(f"cannot start or join Ray ({where}): {e}") from None
        self._task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(rows_task)

    @property
    def workers(self) -> int:
        return max(int(require_ray().cluster_resources().get("CPU", 1)), 1)

    @contextmanager
    def pinned(self, x: np.ndarray) -> Iterator[None]:
        self._shared.append((x, require_ray().put(x)))
        try:
            yield
        finally:
            self._shared.pop()

    def _put(self, x: np.ndarray) -> Any:
        for arr, ref in self._shared:
            if arr is x:
                return ref
        return require_ray().put(x)

    def map_rows(self, fn: Callable[..., Any], x: np.ndarray, *args: Any, parts: int | None = None) -> list[Any]:
        ray = require_ray()
        ref = self._put(x)
        ranges = row_ranges(len(x), parts or self.workers)
        return ray.get([self._task.remote(fn, ref, s, e, *args) for s, e in ranges])


def check_reachable(address: str | None) -> None:
    """A head given as HOST:PORT answers, or a clear error now (Ray itself retries for minutes)."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise MlcError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def require_ray() -> Any:
    """The ray module, or the error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MlcError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


EXECUTORS: Sequence[str] = ("local", "ray", "ray:ADDRESS")


def parse_executor(spec: str) -> tuple[str, str | None]:
    """'local' | 'ray' | 'ray:ADDRESS' -> (kind, address); ValueError on anything else."""
    kind, _, address = spec.partition(":")
    if kind == "local" and not address and ":" not in spec:
        return "local", None
    if kind == "ray" and (address or ":" not in spec):
        return "ray", address or None
    raise ValueError(f"expected one of {', '.join(EXECUTORS)}, got '{spec}'")


def make_executor(spec: str) -> Executor:
    kind, address = parse_executor(spec)
    return LOCAL if kind == "local" else RayExecutor(address)
