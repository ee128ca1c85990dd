"""Dictionary annealing (DA): IRVQ followed by sweeps that re-fit one codebook at a time.

Why not the paper's re-fit as is: with 4,000 SIFT vectors for 256 codewords (about 16 per
codeword in 128 dimensions) every codeword mean memorises its members. IRVQ's training error
is half its error on new vectors, and re-fitting a codebook on the residual the other
codewords leave (k-means or ridge least squares, with re-encoding) halves it again while the
held-out error rises. The misfit that does generalise is one of scale: early codebooks,
fit on the raw data, are too spread out for new vectors, and later ones, fit on residuals
that overfitting made too small, are too narrow. So each re-fit here moves codebook m's
codewords along their offsets from their mean contribution, c_j <- mu + a (c_j - mu), with
`a` from STEPS, and re-encodes with the beam: one shrink-or-stretch parameter per codebook,
few enough to estimate from a held-back split.

Annealing runs on a split: IRVQ is trained on all but a `holdout` share of the vectors, and
each sweep visits the codebooks by decreasing variance of their contributions, keeping the
step that lowers the beam-encoded error of the held-back vectors most (or none). IRVQ is then
trained on all vectors and the product of the kept steps per codebook is applied. With
holdout=0 the steps are judged on the training vectors themselves.
"""

from __future__ import annotations

import numpy as np

from .additive import beam_encode, sq_error
from .executor import LOCAL, Executor
from .progress import QUIET, Reporter
from .quantizer import Params
from .rvq import IRVQ, register

STEPS: tuple[float, ...] = (0.85, 0.9, 0.95, 1.05, 1.1, 1.15)


@register
class DA(IRVQ):
    method = "da"

    def __init__(self, dim: int, m: int, k: int, beam: int = 1, iters: int = 10, seed: int = 0, shrink: float = 3.0,
                 sweeps: int = 3, holdout: float = 0.15):
        super().__init__(dim, m, k, beam, iters, seed, shrink)
        self.sweeps, self.holdout = sweeps, holdout
        self.scales = np.ones(m)  # kept scale of each codebook's offsets (1 = IRVQ's codebook)

    def train(self, x: np.ndarray, progress: Reporter = QUIET, executor: Executor = LOCAL) -> None:
        x = np.ascontiguousarray(x, np.float32)
        n_val = int(len(x) * self.holdout)
        if n_val == 0 or len(x) - n_val < self.K:
            super().train(x, progress, executor)
            self.scales = self._anneal(x, x, progress, executor)
            self.codebooks_changed()
            return
        perm = np.random.default_rng(self.seed).permutation(len(x))
        fit, val = x[perm[n_val:]], x[perm[:n_val]]
        super().train(fit, progress, executor)
        scales = self._anneal(fit, val, progress, executor)
        super().train(x, progress, executor)
        codes = beam_encode(x, self.codebooks, self.beam, executor)
        for m in range(self.M):
            self.codebooks[m] = self._stretch(codes, m, float(scales[m]))
        self.scales = scales
        self.codebooks_changed()

    def _stretch(self, codes: np.ndarray, m: int, a: float) -> np.ndarray:
        """Codebook m with its codewords' offsets from their mean contribution scaled by a."""
        cb = self.codebooks[m].astype(np.float64)
        mu = cb[codes[:, m]].mean(axis=0)
        return (mu + a * (cb - mu)).astype(np.float32)

    def _error(self, x: np.ndarray, executor: Executor) -> float:
        return float(sq_error(x, self.codebooks, beam_encode(x, self.codebooks, self.beam, executor)).mean())

    def _anneal(self, fit: np.ndarray, check: np.ndarray, progress: Reporter, executor: Executor) -> np.ndarray:
        """Sweeps over the codebooks trained on `fit`, keeping steps that lower the error on `check`."""
        with executor.pinned(check), executor.pinned(fit):
            return self._sweeps(fit, check, progress, executor)

    def _sweeps(self, fit: np.ndarray, check: np.ndarray, progress: Reporter, executor: Executor) -> np.ndarray:
        scales = np.ones(self.M)
        best = self._error(check, executor)
        progress.step(f"da: sweeps (check error {best:.4g})", self.sweeps * self.M)
        for _ in range(self.sweeps):
            codes = beam_encode(fit, self.codebooks, self.beam, executor)
            improved = False
            for m in self._order(codes):
                old, pick = self.codebooks[m].copy(), None
                for a in STEPS:
                    self.codebooks[m] = self._stretch(codes, m, a)
                    err = self._error(check, executor)
                    if err < best:
                        best, pick = err, (a, self.codebooks[m].copy())
                    self.codebooks[m] = old
                if pick is not None:
                    scales[m] *= pick[0]
                    self.codebooks[m] = pick[1]
                    improved = True
                progress.advance(note=f"da: sweeps (check error {best:.4g})")
            if not improved:
                break
        return scales

    def _order(self, codes: np.ndarray) -> list[int]:
        """Codebooks by decreasing variance of their contributions to the reconstructions."""
        var = [float(self.codebooks[m][codes[:, m]].var(axis=0).sum()) for m in range(self.M)]
        return [int(i) for i in np.argsort(var)[::-1]]

    def params(self) -> Params:
        return {"beam": self.beam, "sweeps": self.sweeps}
