"""The quantizer interface every method implements, and the registry the index file and CLI use.

A quantizer maps d-dim float vectors to M codes in [0, K) and back. Search needs only two
things from it: per-query lookup tables `luts(q)` (nq, M, K) and additive bias terms, so that
the approximate squared distance of query q to coded vector x is

    query_bias(q) + vector_bias(x) + sum_m LUT[q][m, code_m(x)]

(PQ: both biases 0; additive quantizers: |q|^2 and |x_hat|^2 with LUT = -2 <q, c>).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from ..ir.diagnostics import MlcError
from .executor import LOCAL, Executor
from .progress import QUIET, Reporter

Params = dict[str, int | float | str]


def code_dtype(k: int) -> np.dtype:
    if k <= 256:
        return np.dtype(np.uint8)
    if k <= 65536:
        return np.dtype(np.uint16)
    raise MlcError(f"--codewords {k} is too large (at most 65536)")


class Quantizer(ABC):
    method: ClassVar[str]

    def __init__(self, dim: int, m: int, k: int):
        if dim <= 0 or m <= 0 or k < 2:
            raise MlcError(f"invalid quantizer shape: dim={dim}, codebooks={m}, codewords={k}")
        code_dtype(k)
        self.dim, self.M, self.K = dim, m, k

    @property
    def code_dtype(self) -> np.dtype:
        return code_dtype(self.K)

    @abstractmethod
    def train(self, x: np.ndarray, progress: Reporter = QUIET, executor: Executor = LOCAL) -> None:
        """Learn the codebooks; row-parallel steps (assignment, encoding) run on `executor`."""

    @abstractmethod
    def encode(self, x: np.ndarray, executor: Executor = LOCAL) -> np.ndarray:
        """(n, d) float32 -> (n, M) codes (rows spread over `executor`)."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, M) codes -> (n, d) float32 reconstructions."""

    @abstractmethod
    def luts(self, q: np.ndarray) -> np.ndarray:
        """(nq, d) queries -> (nq, M, K) float32 lookup tables."""

    def query_bias(self, q: np.ndarray) -> np.ndarray:
        return np.zeros(len(q), np.float32)

    def vector_bias(self, codes: np.ndarray) -> np.ndarray | None:
        """Per-vector additive term stored beside the codes (None when not needed)."""
        return None

    @abstractmethod
    def params(self) -> Params:
        """Scalar settings beyond (dim, M, K), for the index header."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays (codebooks, rotation), for the index file."""

    @classmethod
    @abstractmethod
    def from_state(cls, dim: int, m: int, k: int, params: Params, arrays: dict[str, np.ndarray]) -> Quantizer: ...

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.M:
            raise MlcError(f"codes must have shape (n, {self.M}), got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.K):
            raise MlcError(f"codes out of range [0, {self.K})")
        return codes

    def quantization_error(self, x: np.ndarray, codes: np.ndarray | None = None) -> float:
        """Mean squared reconstruction error |x - decode(encode(x))|^2 per vector."""
        if codes is None:
            codes = self.encode(x)
        r = x.astype(np.float64) - self.decode(codes)
        return float(np.einsum("ij,ij->i", r, r).mean())


REGISTRY: dict[str, type[Quantizer]] = {}


def register(cls: type[Quantizer]) -> type[Quantizer]:
    REGISTRY[cls.method] = cls
    return cls


def quantizer_class(method: str) -> type[Quantizer]:
    from . import da, pq, rvq  # noqa: F401  (registration side effect)

    if method not in REGISTRY:
        raise MlcError(f"unknown quantization method '{method}' (expected one of {', '.join(sorted(REGISTRY))})")
    return REGISTRY[method]
