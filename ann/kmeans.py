"""k-means for codebook training: Lloyd iterations on BLAS distances, plus the IRVQ variant.

`pca_kmeans` is the improved-RVQ codebook learner: project the data on its principal axes,
run k-means on the leading few dimensions, then repeatedly widen the subspace, warm-starting
from the previous centroids (their new coordinates are the means of their current members),
and finally rotate the centroids back. Clustering the high-variance directions first avoids
the poor local minima plain k-means falls into on high-dimensional residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .executor import LOCAL, Executor

_CHUNK = 4096


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def assign(x: np.ndarray, c: np.ndarray, c_norms: np.ndarray | None = None,
           executor: Executor = LOCAL) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and its squared distance (clamped at 0); the rows may be spread
    over an executor's workers (row-wise, so the result does not depend on how)."""
    if executor.parallel:
        parts = executor.map_rows(assign, x, c, c_norms)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if c_norms is None:
        c_norms = sq_norms(c)
    idx = np.empty(len(x), np.int64)
    dist = np.empty(len(x), x.dtype)
    for s in range(0, len(x), _CHUNK):
        xs = x[s:s + _CHUNK]
        d = c_norms[None, :] - 2.0 * (xs @ c.T)
        j = np.argmin(d, axis=1)
        idx[s:s + _CHUNK] = j
        dist[s:s + _CHUNK] = np.maximum(d[np.arange(len(xs)), j] + sq_norms(xs), 0)
    return idx, dist


def _sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    onehot = sp.csr_matrix((np.ones(len(x), x.dtype), (labels, np.arange(len(x)))), shape=(k, len(x)))
    return np.asarray(onehot @ x), np.bincount(labels, minlength=k)


def _update(x: np.ndarray, labels: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centroid means; an empty cluster takes a perturbed copy of the largest one (faiss' rule)."""
    k = len(c)
    sums, counts = _sums(x, labels, k)
    new = c.copy()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    for j in np.flatnonzero(~full):
        big = int(np.argmax(counts))
        eps = 1e-3 * (np.std(x, axis=0) + 1e-12)
        new[j] = new[big] + eps * rng.standard_normal(x.shape[1])
        new[big] = new[big] - eps * rng.standard_normal(x.shape[1])
        counts[j] = counts[big] // 2
        counts[big] -= counts[j]
    return new


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D^2 sampling)."""
    n = len(x)
    first = int(rng.integers(n))
    c = np.empty((k, x.shape[1]), x.dtype)
    c[0] = x[first]
    d = sq_norms(x - x[first])
    for j in range(1, k):
        total = float(d.sum())
        pick = int(rng.integers(n)) if total <= 0 else int(np.searchsorted(np.cumsum(d), rng.random() * total))
        c[j] = x[min(pick, n - 1)]
        d = np.minimum(d, sq_norms(x - c[j]))
    return c


def lloyd(x: np.ndarray, c: np.ndarray, iters: int, rng: np.random.Generator,
          tol: float = 1e-5, executor: Executor = LOCAL) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations from centroids `c`; returns centroids, labels and the mean squared error.

    With a parallel executor the assignment steps (the n x k distances) run over row shards and
    the centroid update reduces all labels here, in the same order as the local run: the result
    is bit-identical to it.
    """
    prev = np.inf
    with executor.pinned(x):
        labels, dist = assign(x, c, executor=executor)
        for _ in range(iters):
            c = _update(x, labels, c, rng)
            labels, dist = assign(x, c, executor=executor)
            err = float(dist.mean())
            if np.isfinite(prev) and prev - err <= tol * prev:
                break
            prev = err
    return c, labels, float(dist.mean())


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0, executor: Executor = LOCAL) -> np.ndarray:
    """Plain k-means (k-means++ seeding); the RVQ/PQ codebook learner."""
    x = np.ascontiguousarray(x, np.float32)
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} training vectors, got {len(x)}")
    rng = np.random.default_rng(seed)
    c, _, _ = lloyd(x, kmeans_pp(x, k, rng), iters, rng, executor=executor)
    return c


@dataclass(frozen=True)
class PCA:
    mean: np.ndarray  # (d,)
    axes: np.ndarray  # (d, d): columns are principal directions, by decreasing variance
    variances: np.ndarray  # (d,)


def pca(x: np.ndarray) -> PCA:
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x.astype(np.float64) - mean
    cov = xc.T @ xc / max(len(x) - 1, 1)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    return PCA(mean, v[:, order], np.maximum(w[order], 0))


def dims_schedule(d: int, start: int = 4) -> list[int]:
    """Leading-dimension counts for the warm start: start, 2*start, ... up to d."""
    out, s = [], min(start, d)
    while s < d:
        out.append(s)
        s *= 2
    return out + [d]


def shrink(x: np.ndarray, c: np.ndarray, labels: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Empirical-Bayes shrinkage of centroids toward the data mean.

    A centroid of n_j members estimates its cluster mean with noise variance sigma^2 / n_j
    (sigma^2: within-cluster variance), against a spread tau^2 of the true means; the posterior
    mean scales its offset by n_j tau^2 / (n_j tau^2 + sigma^2). With few vectors per codeword
    this trades a little training error for a lower error on vectors not seen in training.
    """
    counts = np.bincount(labels, minlength=len(c)).astype(np.float64)
    mu = x.mean(axis=0, dtype=np.float64)
    r = x - c[labels]
    sigma2 = float(np.einsum("ij,ij->", r, r, dtype=np.float64)) / max(len(x) - len(c), 1) * weight
    off = c.astype(np.float64) - mu
    tau2 = float((counts * np.einsum("ij,ij->i", off, off)).sum() / counts.sum())
    tau2 = max(tau2 - sigma2 * (counts > 0).sum() / counts.sum(), 1e-12)
    f = counts * tau2 / (counts * tau2 + sigma2)
    return (mu + f[:, None] * off).astype(np.float32)


def pca_kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0, start_dims: int = 4,
               init: np.ndarray | None = None, shrinkage: float = 0.0, executor: Executor = LOCAL) -> np.ndarray:
    """IRVQ k-means: warm-started over a growing number of leading principal dimensions.

    `init` (k, d), if given, seeds the first subspace with those centroids projected (used by
    dictionary annealing to stay close to the codebook it re-fits).
    """
    x = np.ascontiguousarray(x, np.float32)
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} training vectors, got {len(x)}")
    rng = np.random.default_rng(seed)
    p = pca(x)
    y = ((x.astype(np.float64) - p.mean) @ p.axes).astype(np.float32)
    sched = dims_schedule(x.shape[1], start_dims)
    labels: np.ndarray | None = None
    c = np.empty((0, 0), np.float32)
    for step, dd in enumerate(sched):
        ys = np.ascontiguousarray(y[:, :dd])
        if labels is None:
            if init is not None:
                c0 = ((init.astype(np.float64) - p.mean) @ p.axes[:, :dd]).astype(np.float32)
            else:
                c0 = kmeans_pp(ys, k, rng)
        else:
            sums, counts = _sums(ys, labels, k)
            c0 = np.zeros((k, dd), np.float32)
            c0[:, : c.shape[1]] = c
            full = counts > 0
            c0[full, c.shape[1]:] = sums[full, c.shape[1]:] / counts[full, None]
        c, labels, _ = lloyd(ys, c0, iters if step == len(sched) - 1 else max(iters // 2, 4), rng,
                             executor=executor)
    if shrinkage > 0:
        c = shrink(y, c, labels, shrinkage)
    return (c.astype(np.float64) @ p.axes.T + p.mean).astype(np.float32)
