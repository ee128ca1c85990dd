"""Thread-pool runtime for `parallel` loops of compiled kernels.

Kernels call the native pool of `native_pool.py` where it is supported (Linux x86-64/AArch64;
launch cost well under a microsecond); the Python pool below is the portable fallback
(set MLC_PYTHON_POOL=1 to force it).

A compiled kernel outlines each parallel loop body into a native chunk function and calls the
launcher whose address the loader stores in the module (the ABI: codegen/parallel.py). The launcher
(a ctypes callback) splits [0, extent) into one contiguous chunk per thread, runs the first on
the calling thread and the rest on a persistent pool. Every chunk runs through ctypes, which
releases the GIL, so chunks execute truly in parallel with no Python in the inner loop; only
one callback per parallel-loop instance pays Python overhead. A parallel loop reached from
inside a chunk (nested parallelism) runs serially on that thread rather than deadlocking the pool.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .native_pool import NativePool, load_pool

LAUNCH_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
CHUNK_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


class _Runtime:
    """The process-wide pool; `num_threads` may be changed between kernel calls."""

    def __init__(self) -> None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            n = os.cpu_count() or 1
        self.num_threads = max(1, n)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._local = threading.local()
        self._chunks: dict[int, ctypes._CFuncPtr] = {}
        self._lock = threading.Lock()
        self.launch = LAUNCH_CFUNC(self._launch)  # kept alive as long as the runtime

    def _pool_for(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_size != workers:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlc-par",
                                                initializer=self._mark_worker)
                self._pool_size = workers
            return self._pool

    def _mark_worker(self) -> None:
        self._local.in_chunk = True

    def _chunk_fn(self, addr: int) -> ctypes._CFuncPtr:
        fn = self._chunks.get(addr)
        if fn is None:
            fn = self._chunks[addr] = CHUNK_CFUNC(addr)
        return fn

    def _launch(self, fn_addr: int, closure: int, extent: int) -> None:
        if extent <= 0:
            return
        fn = self._chunk_fn(fn_addr)
        threads = min(self.num_threads, extent)
        if threads <= 1 or getattr(self._local, "in_chunk", False):
            fn(closure, 0, extent)
            return
        step = -(-extent // threads)
        bounds = [(b, min(b + step, extent)) for b in range(0, extent, step)]
        futures = []
        try:
            pool = self._pool_for(len(bounds) - 1)
            for b, e in bounds[1:]:
                futures.append(pool.submit(fn, closure, b, e))
        except RuntimeError:  # pool unavailable (interpreter shutting down): run the rest here
            pass
        self._local.in_chunk = True
        try:
            fn(closure, *bounds[0])
            # an exception escaping a ctypes callback would be swallowed and leave work undone,
            # so chunks that could not be queued run on this thread instead
            for b, e in bounds[1 + len(futures):]:
                fn(closure, b, e)
        finally:
            self._local.in_chunk = False
        for f in futures:
            f.result()


RUNTIME = _Runtime()
_NATIVE: NativePool | None = None
_NATIVE_LOADED = False


def native_pool() -> NativePool | None:
    """The native pool, compiled on first use (None where unsupported)."""
    global _NATIVE, _NATIVE_LOADED
    if not _NATIVE_LOADED:
        with RUNTIME._lock:
            if not _NATIVE_LOADED:
                _NATIVE = load_pool()
                if _NATIVE is not None:
                    _NATIVE.set_num_threads(RUNTIME.num_threads)
                _NATIVE_LOADED = True
    return _NATIVE


def launcher_address() -> int:
    """Address of the native-callable launcher that kernels call for each parallel loop."""
    pool = native_pool()
    if pool is not None:
        return pool.launch_address
    return ctypes.cast(RUNTIME.launch, ctypes.c_void_p).value or 0


def set_num_threads(n: int) -> None:
    """Threads used by subsequent parallel loops (1 runs them serially)."""
    RUNTIME.num_threads = max(1, int(n))
    if _NATIVE is not None:
        _NATIVE.set_num_threads(RUNTIME.num_threads)


def get_num_threads() -> int:
    return RUNTIME.num_threads
