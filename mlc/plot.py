"""A loss curve as a PNG, with numpy and zlib only (a plotting library would be mlc's largest dependency
for one picture): the curve, its moving average, a frame with grid lines, and the axis ranges written
in a 3x5 digit font. The numbers themselves are in the metrics JSON lines next to it."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

# 3x5 glyphs, rows top to bottom, 3 bits each (left bit first)
GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "e": (0, 7, 7, 4, 7), "+": (0, 2, 7, 2, 0),
}
WHITE, BLACK, GREY, LIGHT, BLUE = (255, 255, 255), (0, 0, 0), (150, 150, 150), (225, 225, 225), (31, 119, 180)


def png_bytes(img: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as a PNG file."""
    h, w, _ = img.shape
    raw = b"".join(b"\0" + img[y].tobytes() for y in range(h))  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _text(img: np.ndarray, x: int, y: int, s: str, scale: int = 2) -> None:
    for ch in s:
        for r, bits in enumerate(GLYPHS.get(ch, (0,) * 5)):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = BLACK
        x += 4 * scale


def _line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int]) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, n + 1)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n + 1)).astype(int)
    ok = (xs >= 0) & (xs < img.shape[1]) & (ys >= 0) & (ys < img.shape[0])
    img[ys[ok], xs[ok]] = color


def _num(v: float) -> str:
    return f"{v:.3g}".replace("e+0", "e").replace("e-0", "e-")


def loss_curve(losses: Sequence[float], width: int = 640, height: int = 360) -> bytes:
    """PNG of loss against step: the raw curve in light blue, a moving average in blue."""
    img = np.full((height, width, 3), WHITE, np.uint8)
    left, right, top, bottom = 60, width - 20, 20, height - 40
    y = np.asarray([v for v in losses if np.isfinite(v)], np.float64)
    for i in range(5):  # grid
        gy = top + (bottom - top) * i / 4
        _line(img, left, gy, right, gy, LIGHT)
    _line(img, left, top, left, bottom, BLACK)
    _line(img, left, bottom, right, bottom, BLACK)
    if len(y) == 0:
        return png_bytes(img)
    lo, hi = float(y.min()), float(y.max())
    span = hi - lo or abs(hi) or 1.0
    px = left + (right - left) * np.arange(len(y)) / max(len(y) - 1, 1)

    def py(v: np.ndarray) -> np.ndarray:
        return bottom - (bottom - top) * (v - lo) / span

    k = max(len(y) // 20, 1)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid") if len(y) >= k else y
    for curve, xs, color in ((y, px, (174, 199, 232)), (smooth, px[k - 1:], BLUE)):
        ys = py(curve)
        for i in range(len(curve) - 1):
            _line(img, xs[i], ys[i], xs[i + 1], ys[i + 1], color)
    _text(img, 4, top - 4, _num(hi))
    _text(img, 4, bottom - 6, _num(lo))
    _text(img, left, bottom + 10, "0")
    _text(img, right - 8 * len(str(len(y))), bottom + 10, str(len(y)))
    return png_bytes(img)
