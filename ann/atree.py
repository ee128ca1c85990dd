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
        rs = t.row_start[self.depth - 1]
        cnt = np.where(valid, rs[nodes + 1] - rs[nodes], 0).ravel()
        per_query = cnt.reshape(nq, -1).sum(axis=1)
        total = int(cnt.sum())
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        pos = np.arange(total) - first + np.repeat(rs[nodes].ravel(), cnt)
        ids = t.order[pos]
        qidx = np.repeat(np.arange(nq), per_query)
        width = int(per_query.max()) if nq else 0
        slot = np.arange(total) - np.repeat(np.cumsum(per_query) - per_query, per_query)
        if compiled:
            from .program import run_search

            # ascending ids per query (padding last) give the same tie order as the scan
            pad = np.full((nq, max(width, 1)), np.iinfo(np.int64).max, np.int64)
            pad[qidx, slot] = ids
            pad.sort(axis=1)
            pad[pad == np.iinfo(np.int64).max] = -1
            got = run_search(luts, codes, vector_bias, query_bias, k, pad)
            if got is not None:
                return got
        m_total, kk = luts.shape[1], luts.shape[2]
        flat = luts.reshape(nq, -1)
        c = codes[ids].astype(np.intp)
        dist = flat[qidx, c[:, 0]]
        for m in range(1, m_total):
            dist += flat[qidx, c[:, m] + m * kk]
        if vector_bias is not None:
            dist += vector_bias[ids]
        dist += query_bias[qidx]
        # scatter into one padded row per query, then the shared top-k
        pad_d = np.full((nq, max(width, 1)), np.inf, np.float32)
        pad_i = np.full((nq, max(width, 1)), -1, np.int64)
        pad_d[qidx, slot] = dist
        pad_i[qidx, slot] = ids
        out_i, out_d = topk(pad_d, k, pad_i)
        out_i[~np.isfinite(out_d)] = -1
        return out_i, out_d

    @staticmethod
    def _keep(nodes: np.ndarray, partial: np.ndarray, valid: np.ndarray, bias: np.ndarray,
              beam: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if nodes.shape[1] <= beam:
            return nodes, partial, valid
        score = np.where(valid, partial + bias[nodes], np.inf)
        top = np.argpartition(score, beam - 1, axis=1)[:, :beam]
        return (np.take_along_axis(nodes, top, 1), np.take_along_axis(partial, top, 1),
                np.take_along_axis(valid, top, 1))
