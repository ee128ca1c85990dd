"""Residual vector quantization (RVQ) and improved RVQ (IRVQ).

RVQ learns stage m by k-means on the residuals left by stages < m. IRVQ changes two things:
each stage's codebook comes from `pca_kmeans` (k-means on the residuals' principal
coordinates, warm-started over a growing number of leading dimensions, rotated back), and
the residuals that feed the next stage come from multi-path (beam) encoding with all stages
learned so far, so training sees the codes that encoding will produce.
"""

from __future__ import annotations

import numpy as np

from .additive import AdditiveQuantizer, beam_paths
from .executor import LOCAL, Executor
from .kmeans import assign, kmeans, pca_kmeans
from .progress import QUIET, Reporter
from .quantizer import register

__all__ = ["RVQ", "IRVQ", "register"]


@register
class RVQ(AdditiveQuantizer):
    method = "rvq"

    def train(self, x: np.ndarray, progress: Reporter = QUIET, executor: Executor = LOCAL) -> None:
        r = np.array(x, np.float32)
        progress.step("rvq: stages", self.M)
        for m in range(self.M):
            self.codebooks[m] = kmeans(r, self.K, self.iters, self.seed + m, executor)
            r -= self.codebooks[m][assign(r, self.codebooks[m], executor=executor)[0]]
            progress.advance()
        self.codebooks_changed()


@register
class IRVQ(AdditiveQuantizer):
    """`shrink` weights the empirical-Bayes shrinkage of each stage's codewords (kmeans.shrink), 0 = off."""

    method = "irvq"

    def __init__(self, dim: int, m: int, k: int, beam: int = 1, iters: int = 10, seed: int = 0, shrink: float = 3.0):
        super().__init__(dim, m, k, beam, iters, seed)
        self.shrink = shrink

    def train(self, x: np.ndarray, progress: Reporter = QUIET, executor: Executor = LOCAL) -> None:
        x = np.ascontiguousarray(x, np.float32)
        r = x.copy()
        progress.step(f"irvq: stages (beam {self.beam})", self.M)
        for m in range(self.M):
            self.codebooks[m] = pca_kmeans(r, self.K, self.iters, self.seed + m, shrinkage=self.shrink,
                                           executor=executor)
            paths = beam_paths(x, self.codebooks[: m + 1], self.beam, executor)  # (n, L, m+1)
            flat = paths.reshape(-1, m + 1)
            r = (np.repeat(x, paths.shape[1], axis=0) - _decode_prefix(self.codebooks, flat)).astype(np.float32)
            progress.advance()
        self.codebooks_changed()


def _decode_prefix(cbs: np.ndarray, codes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(codes), cbs.shape[2]), np.float64)
    for m in range(codes.shape[1]):
        out += cbs[m][codes[:, m]]
    return out
