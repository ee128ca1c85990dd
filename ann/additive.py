"""Additive quantizers (x ~ sum_m C_m[code_m]) and their multi-path (beam) encoder.

The beam encoder keeps the L best partial codes per vector. Extending a partial code
(c_0..c_{m-1}) by codeword j of codebook m changes the squared error by

    -2 <x, C_m[j]> + |C_m[j]|^2 + 2 sum_{i<m} <C_i[c_i], C_m[j]>,

so with the codebook inner products G[i, m] = C_i C_m^T precomputed every extension is
scored exactly by table gathers, never by forming residuals. The greedy path (L = 1) is run
beside the beam and the better of the two codes is kept per vector, so a beam encoding is
never worse than the greedy one on the same codebooks.
"""

from __future__ import annotations

import numpy as np

from .executor import LOCAL, Executor
from .pq import expect_array
from .quantizer import Params, Quantizer

_CHUNK = 1024


def _beam_chunk(x: np.ndarray, cbs: np.ndarray, cross: list[list[np.ndarray]], cnorm: np.ndarray,
                beam: int, all_paths: bool = False) -> np.ndarray:
    n, m_total, k = len(x), len(cbs), cbs.shape[1]
    codes = np.zeros((n, 1, 0), np.int64)
    score = np.einsum("ij,ij->i", x, x).astype(np.float64)[:, None]  # (n, B): |x - partial|^2
    for m in range(m_total):
        b = codes.shape[1]
        ext = (cnorm[m][None, :] - 2.0 * (x @ cbs[m].T))[:, None, :].astype(np.float64)  # (n, 1, K)
        ext = np.broadcast_to(ext, (n, b, k)).copy()
        for i in range(m):
            ext += 2.0 * cross[i][m][codes[:, :, i]]
        total = (score[:, :, None] + ext).reshape(n, b * k)
        keep = min(beam, b * k)
        if keep < b * k:
            top = np.argpartition(total, keep - 1, axis=1)[:, :keep]
        else:
            top = np.broadcast_to(np.arange(b * k), (n, b * k))
        order = np.argsort(np.take_along_axis(total, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        parent, word = np.divmod(top, k)
        score = np.take_along_axis(total, top, 1)
        codes = np.concatenate([np.take_along_axis(codes, parent[:, :, None], 1), word[:, :, None]], axis=2)
    return codes if all_paths else codes[:, 0, :]


def _tables(cbs: np.ndarray) -> tuple[list[list[np.ndarray]], np.ndarray]:
    m_total = len(cbs)
    cross = [[(cbs[i] @ cbs[m].T).astype(np.float64) if i < m else None for m in range(m_total)]
             for i in range(m_total)]
    return cross, np.einsum("mkd,mkd->mk", cbs, cbs)


def beam_paths(x: np.ndarray, codebooks: np.ndarray, beam: int, executor: Executor = LOCAL) -> np.ndarray:
    """All `beam` surviving paths (n, L, M), best first (L < beam when fewer codes exist)."""
    x = np.ascontiguousarray(x, np.float32)
    if executor.parallel:
        return np.concatenate(executor.map_rows(beam_paths, x, codebooks, beam), axis=0)
    cbs = codebooks.astype(np.float32)
    cross, cnorm = _tables(cbs)
    parts = [_beam_chunk(x[s:s + _CHUNK], cbs, cross, cnorm, beam, True) for s in range(0, len(x), _CHUNK)]
    return np.concatenate(parts, axis=0)


def beam_encode(x: np.ndarray, codebooks: np.ndarray, beam: int = 1, executor: Executor = LOCAL) -> np.ndarray:
    """Codes (n, M) of x under additive codebooks (M, K, d), keeping `beam` partial paths."""
    x = np.ascontiguousarray(x, np.float32)
    if executor.parallel:
        return np.concatenate(executor.map_rows(beam_encode, x, codebooks, beam), axis=0)
    cbs = codebooks.astype(np.float32)
    cross, cnorm = _tables(cbs)
    out = np.empty((len(x), len(cbs)), np.int64)
    for s in range(0, len(x), _CHUNK):
        xs = x[s:s + _CHUNK]
        greedy = _beam_chunk(xs, cbs, cross, cnorm, 1)
        if beam > 1:
            multi = _beam_chunk(xs, cbs, cross, cnorm, beam)
            better = sq_error(xs, cbs, multi) <= sq_error(xs, cbs, greedy)
            greedy[better] = multi[better]
        out[s:s + _CHUNK] = greedy
    return out


def additive_decode(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(codes), codebooks.shape[2]), np.float64)
    for m in range(len(codebooks)):
        out += codebooks[m][codes[:, m]]
    return out


def sq_error(x: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Exact per-vector squared reconstruction error (float64)."""
    r = x.astype(np.float64) - additive_decode(codebooks, codes)
    return np.einsum("ij,ij->i", r, r)


class AdditiveQuantizer(Quantizer):
    """Shared encode/decode/search for RVQ, IRVQ and DA; subclasses differ only in training."""

    def __init__(self, dim: int, m: int, k: int, beam: int = 1, iters: int = 20, seed: int = 0):
        super().__init__(dim, m, k)
        self.beam, self.iters, self.seed = max(int(beam), 1), iters, seed
        self.codebooks = np.zeros((m, k, dim), np.float32)

    @property
    def codebooks(self) -> np.ndarray:
        return self._codebooks

    @codebooks.setter
    def codebooks(self, value: np.ndarray) -> None:
        self._codebooks = value
        self.codebooks_changed()

    def codebooks_changed(self) -> None:
        """Drop tables derived from the codebooks; training calls it after editing them in place."""
        self._lut_weights: np.ndarray | None = None

    def encode(self, x: np.ndarray, beam: int | None = None, executor: Executor = LOCAL) -> np.ndarray:
        codes = beam_encode(x, self.codebooks, self.beam if beam is None else beam, executor)
        return codes.astype(self.code_dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return additive_decode(self.codebooks, self.check_codes(codes)).astype(np.float32)

    def luts(self, q: np.ndarray) -> np.ndarray:
        # -2 C^T is kept ready, so a query batch costs one GEMM and no pass to scale it
        if self._lut_weights is None:
            flat = self.codebooks.reshape(self.M * self.K, self.dim)
            self._lut_weights = np.ascontiguousarray((-2.0 * flat).T, np.float32)
        q = np.ascontiguousarray(q, np.float32)
        return (q @ self._lut_weights).reshape(len(q), self.M, self.K)

    def query_bias(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float32)
        return np.einsum("ij,ij->i", q, q).astype(np.float32)

    def vector_bias(self, codes: np.ndarray) -> np.ndarray:
        r = additive_decode(self.codebooks, self.check_codes(codes))
        return np.einsum("ij,ij->i", r, r).astype(np.float32)

    def params(self) -> Params:
        return {"beam": self.beam}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks}

    @classmethod
    def from_state(cls, dim: int, m: int, k: int, params: Params, arrays: dict[str, np.ndarray]) -> AdditiveQuantizer:
        q = cls(dim, m, k, beam=int(params.get("beam", 1)))
        q.codebooks = expect_array(arrays, "codebooks", (m, k, dim))
        return q
