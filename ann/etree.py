"""Encoding trees (E-Tree) and forests (E-Forest): ADC that computes each shared prefix once.

The codes of a base set are sorted lexicographically and stored as a radix tree laid out
flat, level by level: level l holds one node per distinct prefix of length l+1, as (code,
parent) arrays, nodes of one parent contiguous. A query's partial distance of every node is
its parent's plus one table entry, so a prefix shared by many vectors costs one addition
instead of one per vector. The sums run in codebook order, the same float32 operations as
the flat scan, so E-Tree distances are bit-identical to it. An E-Forest splits the codebooks
into groups with one tree per group (more sharing when codes are long), then adds the
groups' leaf sums per vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RadixTree:
    """Flat radix tree over codes[:, books] (books: the codebooks it covers, in order)."""

    books: tuple[int, ...]
    codes: tuple[np.ndarray, ...]  # per level: (n_l,) codeword of each node
    parents: tuple[np.ndarray, ...]  # per level: (n_l,) index of the parent node (level 0: zeros)
    child_start: tuple[np.ndarray, ...]  # per level < last: (n_l + 1,) offsets into level l+1
    row_start: tuple[np.ndarray, ...]  # per level: (n_l + 1,) offsets into `order` of each node's vectors
    leaf_of: np.ndarray  # (n,) leaf node of each base vector
    order: np.ndarray  # base ids sorted lexicographically by code

    @property
    def leaf_start(self) -> np.ndarray:
        return self.row_start[-1]

    @property
    def node_counts(self) -> list[int]:
        return [len(c) for c in self.codes]


def build_tree(codes: np.ndarray, books: tuple[int, ...]) -> RadixTree:
    sub = codes[:, list(books)].astype(np.int64)
    n = len(sub)
    order = np.lexsort(sub.T[::-1]) if n else np.zeros(0, np.int64)
    s = sub[order]
    lv_codes, lv_par, lv_start, lv_rows = [], [], [], []
    prev_ids = np.zeros(n, np.int64)  # node index (at previous level) of each sorted row
    for l_ in range(len(books)):
        new = np.ones(n, bool)
        if n:
            new[1:] = (s[1:, : l_ + 1] != s[:-1, : l_ + 1]).any(axis=1)
        node_of_row = np.cumsum(new) - 1
        first = np.flatnonzero(new)
        lv_rows.append(np.append(first, n).astype(np.int64))
        lv_codes.append(s[first, l_].astype(np.int32))
        lv_par.append(prev_ids[first])
        if l_ > 0:
            lv_start.append(np.searchsorted(lv_par[-1], np.arange(len(lv_codes[-2]) + 1)).astype(np.int64))
        prev_ids = node_of_row
    leaf_of = np.empty(n, np.int64)
    leaf_of[order] = prev_ids
    return RadixTree(tuple(books), tuple(lv_codes), tuple(lv_par), tuple(lv_start), tuple(lv_rows), leaf_of, order)


def tree_leaf_sums(tree: RadixTree, luts: np.ndarray) -> np.ndarray:
    """(nq, n_leaves) partial table sums of every leaf, one addition per node."""
    acc = luts[:, tree.books[0], tree.codes[0]]
    for l_ in range(1, len(tree.books)):
        acc = acc[:, tree.parents[l_]] + luts[:, tree.books[l_], tree.codes[l_]]
    return acc


@dataclass(frozen=True)
class EForest:
    trees: tuple[RadixTree, ...]

    @staticmethod
    def build(codes: np.ndarray, groups: int = 1) -> EForest:
        """groups=1 is the E-Tree; otherwise the M codebooks are split into contiguous groups."""
        m_total = codes.shape[1]
        groups = max(1, min(groups, m_total))
        bounds = np.linspace(0, m_total, groups + 1).round().astype(int)
        return EForest(tuple(build_tree(codes, tuple(range(a, b))) for a, b in zip(bounds[:-1], bounds[1:])))

    def table_sum(self, luts: np.ndarray) -> np.ndarray:
        """(nq, n) table sums, equal to search.table_sum (bit-identical for one tree)."""
        out = None
        for t in self.trees:
            part = tree_leaf_sums(t, luts)[:, t.leaf_of]
            out = part if out is None else out + part
        return out

    def nodes(self) -> int:
        return sum(sum(t.node_counts) for t in self.trees)
