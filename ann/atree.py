"""A-Tree: a radix tree over the full codes, searched level by level with a beam (non-exhaustive).

Each node stands for the partial reconstruction of its prefix (the sum of its codewords for
additive quantizers, the leading sub-vectors for PQ). Its score for a query is the squared
distance to that partial reconstruction, |q|^2 + |prefix|^2 + sum_{i<=l} LUT[i, c_i], where
|prefix|^2 (`node_bias`) is aggregated at build time. Keeping the `beam` best nodes per level
narrows the search to a few branches; the vectors under the surviving leaves are then scored
by the exact table sum. With a beam at least the widest level, every vector is scored and
the result equals the exhaustive ADC scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .etree import RadixTree, build_tree
from .search import topk

_ARGMIN_BEAM = 4  # beams up to this keep nodes by repeated row minima instead of argpartition


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad ranges [start, start+count) to the widest: (.., width) indices and a validity mask."""
    width = int(counts.max()) if counts.size else 0
    off = np.arange(width)
    idx = starts[..., None] + off
    return idx, off < counts[..., None]


@dataclass(frozen=True)
class ATree:
    tree: RadixTree
    node_bias: tuple[np.ndarray, ...]  # per level: |partial reconstruction|^2 of each node
    depth: int  # levels descended before scoring vectors

    @staticmethod
    def build(codes: np.ndarray, codebooks: np.ndarray | None, min_fanin: int = 8) -> ATree:
        """`codebooks` (M, K, d) for additive quantizers; None for PQ (partial sums are lower bounds).

        The descent depth is the deepest level whose nodes still hold `min_fanin` vectors on average.
        """
        tree = build_tree(codes, tuple(range(codes.shape[1])))
        biases = []
        recon = None
        for l_, (c, p) in enumerate(zip(tree.codes, tree.parents)):
            if codebooks is None:
                biases.append(np.zeros(len(c), np.float32))
                continue
            recon = codebooks[l_][c].astype(np.float64) + (0 if recon is None else recon[p])
            biases.append(np.einsum("ij,ij->i", recon, recon).astype(np.float32))
        counts = tree.node_counts
        depth = max([1] + [l_ + 1 for l_, c in enumerate(counts) if c * min_fanin <= len(codes)])
        return ATree(tree, tuple(biases), depth)

    def max_width(self) -> int:
        return max(self.tree.node_counts[: self.depth])

    def search(self, luts: np.ndarray, codes: np.ndarray, query_bias: np.ndarray,
               vector_bias: np.ndarray | None, k: int, beam: int,
               compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and ADC distances per query, exploring `beam` nodes per level; the vectors
        reached are scored by the compiled `ann_search_candidates` program when codegen is there."""
        t = self.tree
        nq = len(luts)
        qi = np.arange(nq)[:, None]
        # level 0: every root child
        nodes = np.broadcast_to(np.arange(len(t.codes[0])), (nq, len(t.codes[0])))
        partial = luts[:, 0, t.codes[0]]
        valid = np.ones(nodes.shape, bool)
        nodes, partial, valid = self._keep(nodes, partial, valid, self.node_bias[0], beam)
        for l_ in range(1, self.depth):
            st = t.child_start[l_ - 1]
            cnt = np.where(valid, st[nodes + 1] - st[nodes], 0)
            idx, mask = _ranges(st[nodes], cnt)  # (nq, B, W)
            idx = np.where(mask, idx, 0)
            child_partial = partial[:, :, None] + luts[qi[:, :, None], l_, t.codes[l_][idx]]
            nodes, partial, valid = self._keep(idx.reshape(nq, -1), child_partial.reshape(nq, -1),
                                               mask.reshape(nq, -1), self.node_bias[l_], beam)
        # the vectors under the kept nodes, one padded row per query, ascending ids (-1 padding first)
        rs = t.row_start[self.depth - 1]
        cnt = np.where(valid, rs[nodes + 1] - rs[nodes], 0)
        idx, mask = _ranges(rs[nodes], cnt)
        ids = np.where(mask, t.order[np.where(mask, idx, 0)], -1).reshape(nq, -1)
        ids.sort(axis=1)
        width = max(int(cnt.sum(axis=1).max()) if nq else 0, 1)
        ids = ids[:, ids.shape[1] - width:] if ids.shape[1] >= width else np.full((nq, width), -1, np.int64)
        if compiled:
            from .program import run_search

            got = run_search(luts, codes, vector_bias, query_bias, k, ids)
            if got is not None:
                return got
        ok = ids >= 0
        safe = np.where(ok, ids, 0)
        m_total, kk = luts.shape[1], luts.shape[2]
        flat = luts.reshape(nq, -1)
        c = codes[safe].astype(np.intp)
        dist = np.take_along_axis(flat, c[:, :, 0], 1)
        for m in range(1, m_total):
            dist += np.take_along_axis(flat, c[:, :, m] + m * kk, 1)
        if vector_bias is not None:
            dist += vector_bias[safe]
        dist += query_bias[:, None]
        dist[~ok] = np.inf
        out_i, out_d = topk(dist, k, ids)
        out_i[~np.isfinite(out_d)] = -1
        return out_i, out_d

    @staticmethod
    def _keep(nodes: np.ndarray, partial: np.ndarray, valid: np.ndarray, bias: np.ndarray,
              beam: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if nodes.shape[1] <= beam:
            return nodes, partial, valid
        score = np.where(valid, partial + bias[nodes], np.inf)
        if beam <= _ARGMIN_BEAM:  # a few row minima cost less than one partition of every row
            rows = np.arange(len(score))
            top = np.empty((len(score), beam), np.intp)
            for b in range(beam):
                top[:, b] = score.argmin(axis=1)
                score[rows, top[:, b]] = np.inf
        else:
            top = np.argpartition(score, beam - 1, axis=1)[:, :beam]
        return (np.take_along_axis(nodes, top, 1), np.take_along_axis(partial, top, 1),
                np.take_along_axis(valid, top, 1))
