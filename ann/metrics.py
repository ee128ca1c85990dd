"""Recall measures, as in the ANN literature (and faiss' benchmarks)."""

from __future__ import annotations

import numpy as np

from ..ir.diagnostics import MlcError


def check_groundtruth(ids: np.ndarray, gt: np.ndarray) -> None:
    if gt.ndim != 2 or len(gt) != len(ids):
        raise MlcError(f"ground truth has shape {gt.shape}, expected one row per query ({len(ids)} rows)")
    if gt.dtype.kind not in "iu":
        raise MlcError(f"ground truth must hold integer ids, got dtype {gt.dtype}")


def recall_at(ids: np.ndarray, gt: np.ndarray, r: int) -> float:
    """R@r: share of queries whose true nearest neighbour is among the first r results."""
    check_groundtruth(ids, gt)
    return float((ids[:, :r] == gt[:, :1]).any(axis=1).mean())


def k_recall_at_k(ids: np.ndarray, gt: np.ndarray, k: int) -> float:
    """k-recall@k: mean share of the true k nearest found among the first k results."""
    check_groundtruth(ids, gt)
    if gt.shape[1] < k:
        raise MlcError(f"ground truth has {gt.shape[1]} neighbours per query, {k}-recall@{k} needs {k}")
    hits = [len(np.intersect1d(a[:k], b[:k])) for a, b in zip(ids, gt)]
    return float(np.mean(hits) / k)
