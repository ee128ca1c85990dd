"""Product quantization, with an optional learned rotation (OPQ, non-parametric).

The rotation R (orthogonal d x d) is learned by alternating PQ training on x R with the
orthogonal Procrustes solution R = U V^T of svd(x^T decode(encode(x R))).
"""

from __future__ import annotations

import numpy as np

from ..ir.diagnostics import MlcError
from .executor import LOCAL, Executor
from .kmeans import assign, kmeans
from .progress import QUIET, Reporter
from .quantizer import Params, Quantizer, register


@register
class PQ(Quantizer):
    method = "pq"

    def __init__(self, dim: int, m: int, k: int, rotate: bool = False, opq_iters: int = 8, iters: int = 25,
                 seed: int = 0):
        super().__init__(dim, m, k)
        if dim % m:
            raise MlcError(f"pq: dimension {dim} is not divisible by --codebooks {m}")
        self.dsub = dim // m
        self.rotate, self.opq_iters, self.iters, self.seed = rotate, opq_iters, iters, seed
        self.codebooks = np.zeros((m, k, self.dsub), np.float32)
        self.rotation = np.eye(dim, dtype=np.float32)

    def _sub(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (M, n, dsub) rotated sub-vectors."""
        xr = x @ self.rotation if self.rotate else x
        return np.ascontiguousarray(xr.reshape(len(x), self.M, self.dsub).transpose(1, 0, 2), np.float32)

    def _fit_codebooks(self, x: np.ndarray, iters: int, executor: Executor) -> None:
        sub = self._sub(x)
        for m in range(self.M):
            self.codebooks[m] = kmeans(sub[m], self.K, iters, self.seed + m, executor)

    def train(self, x: np.ndarray, progress: Reporter = QUIET, executor: Executor = LOCAL) -> None:
        x = np.ascontiguousarray(x, np.float32)
        if self.rotate:
            progress.step("pq: learning rotation", self.opq_iters)
            x64 = x.astype(np.float64)
            for _ in range(self.opq_iters):
                self._fit_codebooks(x, 8, executor)
                y = self.decode(self.encode(x, executor)) @ self.rotation  # reconstruction in rotated space
                u, _, vt = np.linalg.svd(x64.T @ y)
                self.rotation = (u @ vt).astype(np.float32)
                progress.advance()
        progress.step("pq: codebooks", 1)
        self._fit_codebooks(x, self.iters, executor)
        progress.advance()

    def encode(self, x: np.ndarray, executor: Executor = LOCAL) -> np.ndarray:
        if executor.parallel:
            return np.concatenate(executor.map_rows(self.encode, x), axis=0)
        sub = self._sub(x)
        codes = np.empty((len(x), self.M), self.code_dtype)
        for m in range(self.M):
            codes[:, m] = assign(sub[m], self.codebooks[m])[0]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = self.check_codes(codes)
        parts = [self.codebooks[m][codes[:, m]] for m in range(self.M)]
        y = np.concatenate(parts, axis=1) if parts else np.zeros((len(codes), self.dim), np.float32)
        return (y @ self.rotation.T).astype(np.float32) if self.rotate else y

    def luts(self, q: np.ndarray) -> np.ndarray:
        sub = self._sub(q)  # (M, nq, dsub)
        cn = np.einsum("mkd,mkd->mk", self.codebooks, self.codebooks)
        qn = np.einsum("mnd,mnd->mn", sub, sub)
        ip = np.matmul(sub, self.codebooks.transpose(0, 2, 1)).transpose(1, 0, 2)  # (nq, M, K)
        return np.maximum(qn.T[:, :, None] + cn[None] - 2 * ip, 0).astype(np.float32)

    def params(self) -> Params:
        return {"rotate": int(self.rotate)}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"codebooks": self.codebooks}
        if self.rotate:
            out["rotation"] = self.rotation
        return out

    @classmethod
    def from_state(cls, dim: int, m: int, k: int, params: Params, arrays: dict[str, np.ndarray]) -> PQ:
        q = cls(dim, m, k, rotate=bool(params.get("rotate", 0)))
        q.codebooks = expect_array(arrays, "codebooks", (m, k, dim // m))
        if q.rotate:
            q.rotation = expect_array(arrays, "rotation", (dim, dim))
        return q


def expect_array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in arrays:
        raise MlcError(f"index file lacks the array '{name}'")
    a = arrays[name]
    if a.shape != shape or a.dtype != np.float32:
        raise MlcError(f"index array '{name}' has shape {a.shape} {a.dtype}, expected {shape} float32")
    return a
