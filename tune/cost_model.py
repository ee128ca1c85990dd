"""A gradient-boosted regression-tree cost model in numpy.

Why not xgboost: it is a heavy import for a few hundred samples of ~20 features, and a worker
pool would pay it again; exact-split depth-limited trees in numpy train in milliseconds here and
rank candidates about as well at this scale. The target is the throughput of a candidate relative
to the best measured one for its workload (MetaSchedule's normalised score), so one model serves
several workloads; predictions only need to rank candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _finite(x: np.ndarray) -> np.ndarray:
    """Features with inf/nan clamped: an infinite value would make a split threshold infinite."""
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300)


@dataclass
class _Tree:
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), dtype=int)
        for _ in range(32):
            leaf = self.left[node] < 0
            if leaf.all():
                break
            go_left = x[np.arange(len(x)), np.maximum(self.feature[node], 0)] <= self.threshold[node]
            nxt = np.where(go_left, self.left[node], self.right[node])
            node = np.where(leaf, node, nxt)
        return self.value[node]


def _fit_tree(x: np.ndarray, g: np.ndarray, depth: int, min_leaf: int) -> _Tree:
    feat, thr, left, right, val = [], [], [], [], []

    def grow(idx: np.ndarray, d: int) -> int:
        me = len(val)
        feat.append(-1)
        thr.append(0.0)
        left.append(-1)
        right.append(-1)
        val.append(float(g[idx].mean()))
        if d == depth or len(idx) < 2 * min_leaf:
            return me
        best = (0.0, -1, 0.0)
        total, n = g[idx].sum(), len(idx)
        for f in range(x.shape[1]):
            order = idx[np.argsort(x[idx, f], kind="stable")]
            xs, cs = x[order, f], np.cumsum(g[order])
            k = np.arange(1, n)
            ok = (xs[:-1] < xs[1:]) & (k >= min_leaf) & (n - k >= min_leaf)
            if not ok.any():
                continue
            gain = cs[:-1] ** 2 / k + (total - cs[:-1]) ** 2 / (n - k) - total**2 / n
            gain = np.where(ok, gain, -np.inf)
            j = int(np.argmax(gain))
            if gain[j] > best[0]:
                mid = float((xs[j] + xs[j + 1]) / 2)  # rounds up to xs[j + 1] for neighbouring floats
                best = (float(gain[j]), f, mid if mid < xs[j + 1] else float(xs[j]))
        if best[1] < 0:
            return me
        f, t = best[1], best[2]
        feat[me], thr[me] = f, t
        mask = x[idx, f] <= t
        left[me] = grow(idx[mask], d + 1)
        right[me] = grow(idx[~mask], d + 1)
        return me

    grow(np.arange(len(x)), 0)
    return _Tree(np.array(feat), np.array(thr), np.array(left), np.array(right), np.array(val))


@dataclass
class CostModel:
    """Boosted trees on (features -> normalised throughput); untrained it predicts zeros (random order)."""

    n_trees: int = 40
    depth: int = 3
    learning_rate: float = 0.3
    min_leaf: int = 2
    trees: list[_Tree] = field(default_factory=list)
    base: float = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        self.trees = []
        x = _finite(x)
        if len(x) < 4:
            return
        self.base = float(y.mean())
        pred = np.full(len(y), self.base)
        for _ in range(self.n_trees):
            tree = _fit_tree(x, y - pred, self.depth, self.min_leaf)
            self.trees.append(tree)
            pred += self.learning_rate * tree.predict(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.trees:
            return np.zeros(len(x))
        x = _finite(x)
        out = np.full(len(x), self.base)
        for t in self.trees:
            out += self.learning_rate * t.predict(x)
        return out
