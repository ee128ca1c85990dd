"""Resource limits checked before allocating: a hostile size (a 4e18-byte result, an .npz member
claiming terabytes, a decompression bomb) is one located "needs N bytes" error, never a MemoryError
or an allocation that takes the machine down.

The limit is the machine's physical memory, or MLC_MAX_BYTES when set (a job's own budget).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from .diagnostics import Loc, MlcError


def max_bytes() -> int:
    env = os.environ.get("MLC_MAX_BYTES", "")
    if env.strip():
        try:
            return max(int(env), 0)
        except ValueError:
            raise MlcError(f"MLC_MAX_BYTES must be a number of bytes, got '{env}'") from None
    return _physical_memory()


@functools.cache
def _physical_memory() -> int:
    """Asked once: the interpreter checks every result against it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def nbytes(shape: Sequence[int], dtype: np.dtype | str) -> int:
    """Bytes of an array of this shape (exact integers: no overflow for hostile dims)."""
    n = np.dtype(dtype).itemsize
    for d in shape:
        n *= int(d)
    return n


def check_bytes(need: int, what: str, loc: Loc | None = None) -> None:
    """Raise a located MlcError when `what` would need more bytes than the limit allows."""
    limit = max_bytes()
    if need > limit:
        raise MlcError(f"{what} needs {need:,} bytes, more than the {limit:,} allowed "
                       "(the machine's memory; set MLC_MAX_BYTES to change it)", loc)
