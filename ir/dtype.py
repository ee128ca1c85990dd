"""Element types. One table maps mlc names to numpy dtypes and back."""

from __future__ import annotations

import numpy as np

_TO_NUMPY: dict[str, str] = {
    "bool": "bool",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
DTYPES: tuple[str, ...] = tuple(_TO_NUMPY)
# bf16 has no numpy dtype; it is kept for typing and cast to f32 for reference semantics.
DTYPES_ALL: tuple[str, ...] = DTYPES + ("bf16",)


def to_numpy(dtype: str) -> np.dtype:
    if dtype == "bf16":
        return np.dtype("float32")
    return np.dtype(_TO_NUMPY[dtype])


def from_numpy(dt: np.dtype | type) -> str:
    name = np.dtype(dt).name
    if name not in _FROM_NUMPY:
        raise ValueError(f"unsupported numpy dtype {name}")
    return _FROM_NUMPY[name]


def is_float(dtype: str) -> bool:
    return dtype in ("f16", "bf16", "f32", "f64")


def is_int(dtype: str) -> bool:
    return dtype in ("i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64")


def is_unsigned(dtype: str) -> bool:
    """Integers compared, divided and widened without sign (bool counts: it is 0 or 1)."""
    return dtype in ("u8", "u16", "u32", "u64", "bool")
