"""Dictionary annealing (DA): IRVQ followed by sweeps that re-fit one codebook at a time.

Each sweep visits the codebooks by decreasing variance of their codewords' contributions.
Codebook m is re-fit, with the same warm-started PCA k-means as IRVQ, on the data minus all
other codewords of each vector's code (over all L beam paths, as IRVQ trains), so its
codewords fit what the rest of the code leaves over rather than the greedy residual of the
stages before it. A sweep ends with a fresh multi-path encoding.

Re-fitting on the training vectors alone overfits when there are few vectors per codeword
(4,000 SIFT vectors for 256 codewords: the training error falls by a quarter while the error
on new vectors rises). So annealing is first run on a split: a `holdout` share of the vectors
decides which re-fits (sweep, codebook) lower the error on vectors not trained on; then IRVQ
is trained on all vectors and exactly those re-fits are replayed. With holdout=0, a re-fit is
kept when it lowers the training error.
"""

from __future__ import annotations

import numpy as np

from .additive import additive_decode, beam_encode, beam_paths, sq_error
from .kmeans import assign, pca_kmeans
from .progress import QUIET, Reporter
from .quantizer import Params
from .rvq import IRVQ, register

Plan = list[list[tuple[int, float]]]  # per sweep: (codebook, step) of each kept re-fit, in visiting order
STEPS: tuple[float, ...] = (1.0, 0.5, 0.25)


@register
class DA(IRVQ):
    method = "da"

    def __init__(self, dim: int, m: int, k: int, beam: int = 1, iters: int = 10, seed: int = 0, shrink: float = 3.0,
                 sweeps: int = 3, holdout: float = 0.15):
        super().__init__(dim, m, k, beam, iters, seed, shrink)
        self.sweeps, self.holdout = sweeps, holdout
        self.plan: Plan = []

    def train(self, x: np.ndarray, progress: Reporter = QUIET) -> None:
        x = np.ascontiguousarray(x, np.float32)
        n_val = int(len(x) * self.holdout)
        if n_val == 0 or len(x) - n_val < self.K:
            super().train(x, progress)
            self.plan = self._anneal(x, None, progress)
            return
        perm = np.random.default_rng(self.seed).permutation(len(x))
        fit, val = x[perm[n_val:]], x[perm[:n_val]]
        super().train(fit, progress)
        self.plan = self._anneal(fit, val, progress)
        super().train(x, progress)
        progress.step("da: replaying kept re-fits on all vectors", sum(map(len, self.plan)))
        for sweep, kept in enumerate(self.plan):
            paths = beam_paths(x, self.codebooks, self.beam)
            rows, flat, recon = self._rows(x, paths)
            for m, step in kept:
                _, recon = self._refit(rows, flat, recon, m, sweep, step)
                progress.advance()

    def _rows(self, x: np.ndarray, paths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = paths.reshape(-1, self.M).copy()
        return np.repeat(x, paths.shape[1], axis=0), flat, additive_decode(self.codebooks, flat)

    def _refit(self, rows: np.ndarray, flat: np.ndarray, recon: np.ndarray, m: int, sweep: int,
               step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Re-fit codebook m in place on rows minus the other codewords, moving it `step` of the way
        (the k-means starts from the old codewords, so codeword j of both still correspond);
        returns the old codebook and the new reconstructions."""
        own = self.codebooks[m][flat[:, m]].astype(np.float64)
        target = (rows - (recon - own)).astype(np.float32)
        old = self.codebooks[m].copy()
        new = pca_kmeans(target, self.K, self.iters, self.seed + 1000 * (sweep + 1) + m, init=old,
                         shrinkage=self.shrink)
        self.codebooks[m] = (step * new + (1 - step) * old).astype(np.float32)
        flat[:, m] = assign(target, self.codebooks[m])[0]
        return old, recon - own + self.codebooks[m][flat[:, m]]

    def _anneal(self, fit: np.ndarray, val: np.ndarray | None, progress: Reporter) -> Plan:
        """Sweeps on `fit`, keeping the re-fits that lower the error on `val` (on `fit` when None)."""
        check = fit if val is None else val
        codes = beam_encode(check, self.codebooks, self.beam)
        best = float(sq_error(check, self.codebooks, codes).mean())
        progress.step(f"da: sweeps (check error {best:.4g})", self.sweeps * self.M)
        plan: Plan = []
        paths = beam_paths(fit, self.codebooks, self.beam)
        for sweep in range(self.sweeps):
            saved = self.codebooks.copy()
            rows, flat, recon = self._rows(fit, paths)
            cur, kept = best, []
            for m in self._order(paths[:, 0]):
                saved_flat = flat[:, m].copy()
                old, _ = self._refit(rows, flat, recon, m, sweep)
                new = self.codebooks[m].copy()
                rest = (check - (additive_decode(self.codebooks, codes) - new[codes[:, m]])).astype(np.float32)
                choice = None
                for step in STEPS:
                    self.codebooks[m] = (step * new + (1 - step) * old).astype(np.float32)
                    trial = codes.copy()
                    trial[:, m] = assign(rest, self.codebooks[m])[0]
                    err = float(sq_error(check, self.codebooks, trial).mean())
                    if err < cur:
                        cur, choice = err, (step, self.codebooks[m].copy(), trial)
                if choice is None:
                    self.codebooks[m], flat[:, m] = old, saved_flat
                else:
                    step, self.codebooks[m], codes = choice
                    flat[:, m] = assign((rows - (recon - old[saved_flat])).astype(np.float32), self.codebooks[m])[0]
                    recon = recon - old[saved_flat] + self.codebooks[m][flat[:, m]]
                    kept.append((m, step))
                progress.advance()
            codes_new = beam_encode(check, self.codebooks, self.beam)
            err = float(sq_error(check, self.codebooks, codes_new).mean())
            if err >= best or not kept:
                self.codebooks = saved
                break
            best, codes = err, codes_new
            plan.append(kept)
            paths = beam_paths(fit, self.codebooks, self.beam)
            progress.advance(0, note=f"da: sweeps (check error {best:.4g})")
        return plan

    def _order(self, codes: np.ndarray) -> list[int]:
        """Codebooks by decreasing variance of their contributions to the reconstructions."""
        var = [float(self.codebooks[m][codes[:, m]].var(axis=0).sum()) for m in range(self.M)]
        return [int(i) for i in np.argsort(var)[::-1]]

    def params(self) -> Params:
        return {"beam": self.beam, "sweeps": self.sweeps}
