"""`mlc.sparse.compile(A, op)`: a sparse kernel compiled for one sparse matrix's structure.

The kernel is the stage-I program `mlc sparse-kernel` writes (ir/sparse_kernels.py), built through the
same driver as `mlc build` (so through sparse-lower); the returned callable holds A's index arrays
and values, checked once here, and takes only the dense operands:

    k = mlc.sparse.compile(A, "spmm", feat=64)      # A: any scipy.sparse matrix (bsrmm: format="bsr:S")
    C = k(B)                                         # == A @ B, B: (A.shape[1], 64)
    S = mlc.sparse.compile(A, "sddmm", feat=64)(X, Y)  # scipy CSR with A's structure: A * (X @ Y.T)
"""

from __future__ import annotations

import ctypes
import threading
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
    """A compiled sparse kernel bound to one matrix: call it with the dense operands.

    A call is one native call of the kernel: its pointer and dim arrays are built once here (the
    structure's arrays are fixed), a call only writes the dense operands' and the fresh result's
    addresses into them. Going through the model instead (argument checks, the graph walk, output
    copies) cost ~40-90 us per call, as much as the kernel on a Cora-sized graph."""

    def __init__(self, model: Any, op: str, matrix: Any, feat: int, dtype: str, inputs: dict[str, np.ndarray]):
        self.model, self.op, self.matrix, self.feat, self.dtype = model, op, matrix, feat, dtype
        self.inputs = inputs
        self.dense_names = ("B",) if op in ("spmm", "bsrmm") else ("X", "Y")
        self._lock = threading.Lock()
        self._native = self._bind()
        self.direct = self._native is not None  # calls are one native call (else through the model)

    def _bind(self) -> tuple[Any, Any, Any, tuple[int, ...], Any] | None:
        """(kernel, pointer array, dims array, result shape, kept arrays) when `main` is one kernel call
        on its parameters in order (every ready-made CPU kernel is), else None (calls go through the model)."""
        from mlc.ir.graph import CallTensor, Function

        main = self.model.module.get("main")
        if (self.model.device.kind != "cpu" or not isinstance(main, Function) or len(main.body.bindings) != 1
                or self.model.library is None):  # a CUDA kernel is launched by the model (staging, streams)
            return None
        bind = main.body.bindings[0]
        call = bind.node
        if (not isinstance(call, CallTensor) or call.sym_args or [a.name for a in call.args] != [p.name for p in main.params]
                or [r.name for r in main.body.results] != [bind.var.name]):
            return None
        names = [p.name for p in main.params]
        if names != [*self.inputs, *self.dense_names]:
            return None
        kernel = self.model.library.kernel(call.func)
        m, n = self.matrix.shape
        rows = {"B": n, "X": m, "Y": n}
        placeholders = [np.empty((rows[d], self.feat), _NP[self.dtype]) for d in self.dense_names]
        arrays = [*self.inputs.values(), *placeholders]
        out_shape = self.inputs["data"].shape if self.op == "sddmm" else (m, self.feat)
        dims = kernel.bind_dims([*arrays, np.empty(out_shape, _NP[self.dtype])])  # shapes checked once
        kernel.prepare([*arrays, np.empty(out_shape, _NP[self.dtype])])  # dtypes and layouts checked once
        keep = tuple(self.inputs.values())
        ptrs = (ctypes.c_void_p * (len(arrays) + 1))(*[a.ctypes.data for a in keep])
        dvals = (ctypes.c_int64 * max(1, len(dims)))(*dims)
        return kernel, ptrs, dvals, tuple(out_shape), keep

    def _dense(self, name: str, x: Any, rows: int) -> np.ndarray:
        a = np.ascontiguousarray(x, dtype=_NP[self.dtype])
        if a.shape != (rows, self.feat):
            raise MlcError(f"{self.op}: {name} must be {rows} x {self.feat}, got {' x '.join(map(str, a.shape))}")
        return a

    def run(self, *dense: Any) -> np.ndarray:
        """The kernel's raw result (spmm/bsrmm: C; sddmm: the values in the kernel's layout)."""
        m, n = self.matrix.shape
        if len(dense) != len(self.dense_names):
            raise MlcError(f"{self.op} takes {len(self.dense_names)} dense operand(s) "
                           f"{' and '.join(self.dense_names)}, got {len(dense)}")
        rows = (n,) if len(dense) == 1 else (m, n)
        arrays = [self._dense(name, x, r) for name, x, r in zip(self.dense_names, dense, rows, strict=True)]
        if self._native is None:
            return self.model(**self.inputs, **dict(zip(self.dense_names, arrays, strict=True)))["C"]
        kernel, ptrs, dims, out_shape, keep = self._native
        out = np.empty(out_shape, _NP[self.dtype])
        first = len(keep)
        with self._lock:
            for k, a in enumerate(arrays):
                ptrs[first + k] = a.ctypes.data
            ptrs[first + len(arrays)] = out.ctypes.data
            kernel.raw(ptrs, dims)
            if kernel.checks:
                kernel.raise_failed_check()
        return out

    def __call__(self, *dense: Any) -> Any:
        out = self.run(*dense)
        if self.op in ("spmm", "bsrmm"):
            return out
        import scipy.sparse as sp

        m = self.matrix.shape[0]
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
