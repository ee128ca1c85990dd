"""A-Tree: a radix tree over the full codes, searched level by level with a beam (non-exhaustive).

Each node stands for the partial reconstruction of its prefix (the sum of its codewords for
additive quantizers, the leading sub-vectors for PQ). Its score for a query is the squared
distance to that partial reconstruction, |q|^2 + |prefix|^2 + sum_{i<=l} LUT[i, c_i], where
|prefix|^2 (`node_bias`) is aggregated at build time. Keeping the `beam` best nodes per level
narrows the search to a few branches; the vectors under the surviving nodes of the last level
descended are then scored by the exact table sum. The codes are stored in tree order, so the
vectors of a node are one contiguous row range and nothing is gathered or padded. The last
level (choosing its nodes and scoring their rows) runs as one compiled program of the
toolchain (`ann_search_atree`), numpy where codegen is unavailable. Narrow beams over additive
codes compute only the first tree codebook's table and score their few rows from the codewords
(`search_decoded`). With a beam at least the widest level, every vector is scored and the result
equals the exhaustive ADC scan, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .etree import RadixTree, build_tree
from .search import topk

_ARGMIN_BEAM = 4  # beams up to this keep nodes by repeated row minima instead of argpartition
KERNEL_SELECT = 8  # beams up to this choose the last level's nodes inside the compiled program
DECODE_BEAM = 4  # beams up to this score rows from the codewords (no full tables) on additive depth-1 trees


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
    codes: np.ndarray  # (n, M) codes in tree order (tree.order): a node's vectors are one row range
    vector_bias: np.ndarray  # (n,) per-vector bias in tree order (zeros when the quantizer has none)
    codebooks: np.ndarray | None = None  # (M, K, d) additive codebooks (scoring rows from codewords)
    root_weights: np.ndarray | None = None  # (d, K) -2 C^T of the first tree codebook: its table is q @ this

    @staticmethod
    def build(codes: np.ndarray, codebooks: np.ndarray | None, vector_bias: np.ndarray | None = None,
              additive: bool = True, min_fanin: int = 8) -> ATree:
        """`codebooks` (M, K, dsub): additive codebooks, or PQ sub-codebooks (`additive` False: node
        scores are then partial sums, lower bounds); None keeps the codebook order and no node bias.

        The tree levels take the codebooks in decreasing variance of their codewords over the base
        (the most discriminating first, so a narrow beam prunes on the largest terms); the descent
        depth is the deepest level whose nodes still hold `min_fanin` vectors on average.
        """
        books = tuple(range(codes.shape[1]))
        if codebooks is not None and len(codes):
            var = [float(np.var(codebooks[m][codes[:, m]], axis=0).sum()) for m in books]
            books = tuple(int(m) for m in np.argsort(-np.asarray(var), kind="stable"))
        tree = build_tree(codes, books)
        biases = []
        recon = None
        for l_, (c, p) in enumerate(zip(tree.codes, tree.parents)):
            if codebooks is None or not additive:
                biases.append(np.zeros(len(c), np.float32))
                continue
            recon = codebooks[books[l_]][c].astype(np.float64) + (0 if recon is None else recon[p])
            biases.append(np.einsum("ij,ij->i", recon, recon).astype(np.float32))
        counts = tree.node_counts
        depth = max([1] + [l_ + 1 for l_, c in enumerate(counts) if c * min_fanin <= len(codes)])
        vb = np.zeros(len(codes), np.float32) if vector_bias is None else vector_bias[tree.order]
        cbs = w0 = None
        if codebooks is not None and additive:
            cbs = np.ascontiguousarray(codebooks, np.float32)
            w0 = np.ascontiguousarray((-2.0 * cbs[books[0]]).T)
        return ATree(tree, tuple(biases), depth, np.ascontiguousarray(codes[tree.order]),
                     np.ascontiguousarray(vb, np.float32), cbs, w0)

    def max_width(self) -> int:
        return max(self.tree.node_counts[: self.depth])

    def child_start(self, level: int) -> np.ndarray:
        """Offsets of each node's children in `level` (level 0: one virtual root over all)."""
        t = self.tree
        return np.array([0, len(t.codes[0])], np.int64) if level == 0 else t.child_start[level - 1]

    def frontier(self, luts: np.ndarray, beam: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept parents of the last level (nq, B) (-1: none) and their partial table sums.

        Levels 0 .. depth-2 are descended here (numpy); for depth 1 the parent is the virtual root."""
        nq = len(luts)
        nodes = np.zeros((nq, 1), np.int64)
        partial = np.zeros((nq, 1), np.float32)
        valid = np.ones((nq, 1), bool)
        for l_ in range(self.depth - 1):
            idx, child_partial, mask = self._children(luts, l_, nodes, partial, valid)
            nodes, partial, valid = self._keep(idx, child_partial, mask, self.node_bias[l_], beam)
        return np.where(valid, nodes, -1), partial

    def _children(self, luts: np.ndarray, level: int, nodes: np.ndarray, partial: np.ndarray,
                  valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Children of `nodes` in `level`, (nq, C) with their partial sums and a validity mask."""
        nq = len(luts)
        st = self.child_start(level)
        safe = np.where(valid, nodes, 0)
        cnt = np.where(valid, st[safe + 1] - st[safe], 0)
        idx, mask = _ranges(st[safe], cnt)  # (nq, B, W)
        idx = np.where(mask, idx, 0)
        qi = np.arange(nq)[:, None, None]
        child_partial = partial[:, :, None] + luts[qi, self.tree.books[level], self.tree.codes[level][idx]]
        return idx.reshape(nq, -1), child_partial.reshape(nq, -1), mask.reshape(nq, -1)

    def search(self, luts: np.ndarray, query_bias: np.ndarray, k: int, beam: int,
               compiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and ADC distances per query, exploring `beam` nodes per level."""
        parents, partial = self.frontier(luts, beam)
        last = self.depth - 1
        t = self.tree
        beam = min(beam, t.node_counts[last])
        rows = (self.codes, self.vector_bias, t.order, t.row_start[last])
        if compiled and beam <= KERNEL_SELECT:
            from .program import run_atree

            got = run_atree(luts, query_bias, k, beam, t.books[last], rows,
                            (self.child_start(last), t.codes[last], self.node_bias[last]), parents, partial)
            if got is not None:
                return got
        # the same choice of nodes, by (score, node); all of them when the beam holds every child
        if self.depth == 1:  # the children of the root are all level-0 nodes, in order
            score, cand = luts[:, t.books[0], t.codes[0]] + self.node_bias[0], None
        else:
            idx, child_partial, mask = self._children(luts, last, parents, partial, parents >= 0)
            score = np.where(mask, child_partial + self.node_bias[last][idx], np.inf)
            cand = np.where(mask, idx, -1)
        if beam < score.shape[1]:
            nodes = topk(score, beam, cand)[0]
        else:
            nodes = np.broadcast_to(np.arange(score.shape[1]), score.shape) if cand is None else cand
        if compiled:
            from .program import run_nodes

            got = run_nodes(luts, query_bias, k, rows, nodes)
            if got is not None:
                return got
        return self._scan_numpy(luts, query_bias, k, nodes)

    def _scan_numpy(self, luts: np.ndarray, query_bias: np.ndarray, k: int,
                    nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What `ann_search_nodes` computes, in numpy (where codegen is unavailable)."""
        nq, rs, kk = len(luts), self.tree.row_start[self.depth - 1], luts.shape[2]
        ok_node = nodes >= 0
        safe_n = np.where(ok_node, nodes, 0)
        cnt = np.where(ok_node, rs[safe_n + 1] - rs[safe_n], 0)
        rows, ok = _ranges(rs[safe_n], cnt)
        rows = np.where(ok, rows, 0).reshape(nq, -1)
        ok = ok.reshape(nq, -1)
        flat = luts.reshape(nq, -1)
        c = self.codes[rows].astype(np.intp)
        dist = np.take_along_axis(flat, c[:, :, 0], 1)
        for m in range(1, luts.shape[1]):
            dist += np.take_along_axis(flat, c[:, :, m] + m * kk, 1)
        dist += self.vector_bias[rows]
        dist += query_bias[:, None]
        dist[~ok] = np.inf
        out_i, out_d = topk(dist, k, np.where(ok, self.tree.order[rows], -1))
        out_i[~np.isfinite(out_d)] = -1
        return out_i, out_d

    def search_decoded(self, queries: np.ndarray, query_bias: np.ndarray, k: int,
                       beam: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Narrow beams on an additive depth-1 tree: only the first tree codebook's table is computed
        (one small GEMM) to choose the nodes; their rows are scored from the codewords by the compiled
        `ann_search_atree_decoded` (the same ADC distances up to float rounding, without the M full
        tables that dominate the cost of a narrow beam). None where this does not apply."""
        if self.codebooks is None or self.depth != 1 or beam >= self.max_width():
            return None  # (a beam holding every node is the exhaustive scan: tables, bit-exact)
        from .program import run_atree_decoded

        t = self.tree
        lut0 = np.ascontiguousarray(queries, np.float32) @ self.root_weights
        return run_atree_decoded(lut0, queries, self.codebooks, query_bias, k, min(beam, t.node_counts[0]), t.books[0],
                                 (self.codes, self.vector_bias, t.order, t.row_start[0]),
                                 (self.child_start(0), t.codes[0], self.node_bias[0]))

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
