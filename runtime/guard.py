"""Guard pages: arrays placed flush against an inaccessible page, so that an out-of-bounds read or
write by a compiled kernel faults at once instead of reading other memory by luck.

`Model(..., guard="after")` (or `MLC_GUARD_PAGES=after|before` in the environment) copies every
kernel argument, outputs included, into such memory before each call and the outputs back after it.
"after" catches accesses past the end of a buffer, "before" accesses before its start. It is a
debugging aid (each call maps and unmaps pages), the way tests prove generated code in bounds.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
from mlc.ir.diagnostics import MlcError

SIDES = ("after", "before")
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def side_from_env() -> str | None:
    side = os.environ.get("MLC_GUARD_PAGES") or None
    if side is not None and side not in SIDES:
        raise MlcError(f"MLC_GUARD_PAGES must be one of {', '.join(SIDES)}, got {side!r}")
    return side


def guarded_copy(a: np.ndarray, side: str) -> np.ndarray:
    """A C-contiguous copy of `a` whose last byte ends at (or first byte starts at) a PROT_NONE page."""
    nbytes = a.nbytes
    data = -(-max(nbytes, 1) // _PAGE) * _PAGE
    mm = mmap.mmap(-1, data + _PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    guard = base + data if side == "after" else base
    if _libc.mprotect(guard, _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = data - nbytes if side == "after" else _PAGE
    out = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset).view(a.dtype).reshape(a.shape)
    out[...] = a
    return out  # keeps `mm` alive through .base; the pages go when the array does
