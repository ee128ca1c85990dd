"""The ANN index: a trained quantizer, the base codes and the per-vector bias, plus search.

Search modes share one distance definition (search.py): `flat` scans every code, `etree`
and `eforest` compute the same distances through encoding trees, `atree` explores a beam of
the radix tree and scores only the vectors under the surviving leaves. `rerank` > 0 takes
that many ADC candidates and re-ranks them exactly against the stored base vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir.diagnostics import MlcError
from .atree import DECODE_BEAM, ATree
from .etree import EForest
from .executor import LOCAL, Executor
from .io import as_float_vectors
from .progress import QUIET, Reporter
from .quantizer import Quantizer, quantizer_class
from .search import add_biases, rerank, table_sum, topk

MODES: tuple[str, ...] = ("flat", "etree", "eforest", "atree", "ir")


def check_k(k: int, size: int) -> None:
    """k nearest of an index of `size` vectors: at least 1, at most all of them (never an
    allocation sized by a hostile k)."""
    if k <= 0 or k > size:
        raise MlcError(f"--k must be between 1 and the index's {size} vectors, got {k}")


@dataclass
class AnnIndex:
    quantizer: Quantizer
    codes: np.ndarray  # (n, M)
    vector_bias: np.ndarray | None  # (n,) or None
    base: np.ndarray | None = None  # raw vectors, kept only for exact re-ranking
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return self.quantizer.dim

    @property
    def size(self) -> int:
        return len(self.codes)

    @staticmethod
    def build(base: np.ndarray, method: str, codebooks: int, codewords: int, beam: int = 1,
              train_size: int | None = None, keep_base: bool = False, progress: Reporter = QUIET,
              **options: object) -> AnnIndex:
        x = as_float_vectors(base, what="base vectors")
        q = train_quantizer(x, method, codebooks, codewords, beam, train_size, progress, **options)
        progress.step("encoding base", 1)
        codes = q.encode(x)
        progress.advance()
        return AnnIndex.of(q, x, codes, keep_base)

    @staticmethod
    def of(q: Quantizer, x: np.ndarray, codes: np.ndarray, keep_base: bool) -> AnnIndex:
        """The index of vectors `x` encoded as `codes` (one shard of a sharded build, or all of them)."""
        return AnnIndex(q, codes, q.vector_bias(codes), x if keep_base else None)

    def search(self, queries: np.ndarray, k: int = 10, mode: str = "flat", beam: int | None = None,
               rerank_k: int = 0, groups: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """(nq, k) base ids (nearest first, -1 when fewer exist) and their distances."""
        q = as_float_vectors(queries, self.dim, "queries")
        check_k(k, self.size)
        if mode not in MODES:
            raise MlcError(f"unknown search mode '{mode}' (expected one of {', '.join(MODES)})")
        if rerank_k and self.base is None:
            raise MlcError("re-ranking needs the base vectors: build the index with --keep-base")
        short = max(k, rerank_k)
        qb = self.quantizer.query_bias(q)
        if mode == "atree":
            at = self.atree()
            width = max(int(beam if beam is not None else at.max_width()), 1)
            got = at.search_decoded(q, qb, short, width) if width <= DECODE_BEAM else None
            ids, dist = got if got is not None else at.search(self.quantizer.luts(q), qb, short, width)
        else:
            fused = None
            luts = self.quantizer.luts(q)
            if mode == "ir":
                from .program import run_scan, run_search

                fused = run_search(luts, self.codes, self.vector_bias, qb, short)
                if fused is None:  # no native codegen here: interpret the scan program, top-k in numpy
                    dist_all = run_scan(luts, self.codes, self.vector_bias, qb, backend="interp")
            else:
                sums = table_sum(luts, self.codes) if mode == "flat" else \
                    self.forest(1 if mode == "etree" else groups).table_sum(luts)
                dist_all = add_biases(sums, qb, self.vector_bias)
            ids, dist = fused if fused is not None else topk(dist_all, short)
            if fused is not None and short > self.size:
                ids[:, self.size:], dist[:, self.size:] = -1, np.inf
        if rerank_k:
            ids, dist = rerank(q, self.base, ids, k)
        return ids[:, :k], dist[:, :k]

    def forest(self, groups: int) -> EForest:
        key = f"forest{groups}"
        if key not in self._cache:
            self._cache[key] = EForest.build(self.codes, groups)
        return self._cache[key]  # type: ignore[return-value]

    def atree(self) -> ATree:
        if "atree" not in self._cache:
            q = self.quantizer
            self._cache["atree"] = ATree.build(self.codes, getattr(q, "codebooks", None), self.vector_bias,
                                               additive=q.method != "pq")
        return self._cache["atree"]  # type: ignore[return-value]

    def quantization_error(self) -> float | None:
        """Mean squared reconstruction error of the stored base (needs the base vectors)."""
        if self.base is None:
            return None
        return self.quantizer.quantization_error(self.base, self.codes)


def train_quantizer(x: np.ndarray, method: str, codebooks: int, codewords: int, beam: int = 1,
                    train_size: int | None = None, progress: Reporter = QUIET, executor: Executor = LOCAL,
                    **options: object) -> Quantizer:
    """A quantizer trained on the first `train_size` rows of x (all by default)."""
    cls = quantizer_class(method)
    kwargs = dict(options)
    if method != "pq":
        kwargs["beam"] = beam
    q = cls(x.shape[1], codebooks, codewords, **kwargs)
    train = x if train_size is None else x[:train_size]
    if len(train) < codewords:
        raise MlcError(f"training needs at least --codewords={codewords} vectors, got {len(train)}")
    q.train(train, progress, executor)
    return q
