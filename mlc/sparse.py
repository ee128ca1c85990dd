"""`mlc.sparse.compile(A, op)`: a sparse kernel compiled for one sparse matrix's structure.

The kernel is the stage-I program `mlc sparse-kernel` writes (ir/sparse_kernels.py), built through the
same driver as `mlc build` (so through sparse-lower); the returned callable holds A's index arrays
and values, checked once here, and takes only the dense operands:

    k = mlc.sparse.compile(A, "spmm", feat=64)      # A: any scipy.sparse matrix (bsrmm: format="bsr:S")
    C = k(B)                                         # == A @ B, B: (A.shape[1], 64)
    S = mlc.sparse.compile(A, "sddmm", feat=64)(X, Y)  # scipy CSR with A's structure: A * (X @ Y.T)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlc.ir import sparse_format as sfmt
from mlc.ir.diagnostics import MlcError
from mlc.ir.sparse import check_csr
from mlc.ir.sparse_format import parse_format, parse_hyb, to_ell
from mlc.ir.sparse_kernels import sparse_kernel

_NP = {"f32": np.float32, "f16": np.float16}


def to_bsr(a: Any, size: int, dtype: Any) -> dict[str, np.ndarray]:
    """A canonical CSR matrix as bsrmm's inputs (S x S blocks, scipy's layout)."""
    return sfmt.to_bsr(a.indptr, a.indices, np.asarray(a.data, dtype=dtype), a.shape[1], size)


def to_hyb(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int, parts: int, k: int) -> dict[str, np.ndarray]:
    """CSR -> the inputs of the ready-made hyb(parts, k) spmm: A's indptr (the row count), then every
    bucket's arrays (ir/sparse_format.to_hyb), in parameter order."""
    arrays = sfmt.to_hyb(indptr, indices, data, n, parts, k)
    return {"indptr": np.asarray(indptr, np.int32), **{a: arrays[a] for b in sfmt.hyb_buckets(parts, k) for a in b.arrays()}}


class SparseKernel:
    """A compiled sparse kernel bound to one matrix: call it with the dense operands."""

    def __init__(self, model: Any, op: str, matrix: Any, feat: int, dtype: str, inputs: dict[str, np.ndarray]):
        self.model, self.op, self.matrix, self.feat, self.dtype = model, op, matrix, feat, dtype
        self.inputs = inputs

    def _dense(self, name: str, x: Any, rows: int) -> np.ndarray:
        a = np.ascontiguousarray(x, dtype=_NP[self.dtype])
        if a.shape != (rows, self.feat):
            raise MlcError(f"{self.op}: {name} must be {rows} x {self.feat}, got {' x '.join(map(str, a.shape))}")
        return a

    def __call__(self, *dense: Any) -> Any:
        m, n = self.matrix.shape
        if self.op in ("spmm", "bsrmm"):
            if len(dense) != 1:
                raise MlcError(f"{self.op} takes one dense operand B, got {len(dense)}")
            return self.model(**self.inputs, B=self._dense("B", dense[0], n))["C"]
        if len(dense) != 2:
            raise MlcError(f"sddmm takes two dense operands X and Y, got {len(dense)}")
        out = self.model(**self.inputs, X=self._dense("X", dense[0], m), Y=self._dense("Y", dense[1], n))["C"]
        import scipy.sparse as sp

        a = self.matrix
        vals = out if out.ndim == 1 else out[np.repeat(np.arange(m), np.diff(a.indptr)),
                                             np.arange(a.nnz) - np.repeat(a.indptr[:-1], np.diff(a.indptr))]
        return sp.csr_matrix((vals.astype(np.float32), a.indices.copy(), a.indptr.copy()), shape=a.shape)


def compile(matrix: Any, op: str = "spmm", target: str = "cpu", feat: int = 32, format: str = "csr",  # noqa: A001, A002
            dtype: str = "f32") -> SparseKernel:
    """`op` ("spmm" | "sddmm" | "bsrmm") on `matrix` (scipy.sparse, any format) compiled for `target`.

    `format`: "csr", "ell:W", or "ell" (W = the longest row) for spmm/sddmm; "hyb:C,K" (spmm: C column
    parts, ELL buckets of widths 1..2**K, a CSR rest); "bsr:S" (S x S blocks; the shape must be a
    multiple of S) for bsrmm. Duplicates are summed and indices sorted first (scipy's
    canonical CSR)."""
    import scipy.sparse as sp

    from mlc.compiler import build_module
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    if not sp.issparse(matrix):
        raise MlcError(f"mlc.sparse.compile: expected a scipy.sparse matrix, got {type(matrix).__name__}")
    if dtype not in _NP:
        raise MlcError(f"mlc.sparse.compile: dtype must be one of {', '.join(_NP)}, got {dtype!r}")
    a = sp.csr_matrix(matrix, dtype=np.float32)  # scipy.sparse holds no f16: values are cast below
    a.sum_duplicates()
    a.sort_indices()
    indptr, indices = a.indptr.astype(np.int32), a.indices.astype(np.int32)
    check_csr(indptr, indices, len(a.data), a.shape[1], need_sorted=True)
    values = a.data.astype(_NP[dtype])
    if format == "ell":
        format = f"ell:{max(1, int(np.diff(indptr).max(initial=0)))}"
    hyb = parse_hyb(format)
    kind, width = ("hyb", 0) if hyb is not None else parse_format(format)
    module = sparse_kernel(op, format, feat, dtype)
    if kind == "csr":
        inputs = {"indptr": indptr, "indices": indices, "data": values}
    elif kind == "bsr":
        inputs = to_bsr(a, width, _NP[dtype])
    elif hyb is not None:
        inputs = to_hyb(indptr, indices, values, a.shape[1], *hyb)
    else:
        ell_i, ell_d = to_ell(indptr, indices, values, width)
        inputs = {"indices": ell_i, "data": ell_d}
    built = build_module(module, {}, target)
    model = model_from_artifact(loads(built.result.data), f"<mlc.sparse.compile {op}>")
    return SparseKernel(model, op, a, feat, dtype, inputs)


__all__ = ["SparseKernel", "check_csr", "compile", "to_bsr", "to_ell", "to_hyb"]
