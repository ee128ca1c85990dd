"""Sparse graph ops: `sparse_matmul`, a matmul by a sparse constant weight (issue 15, item 5).

`sparse_matmul(x, indptr, indices, data)` = x @ W for x (N x K) and W (K x M) given as the CSR of
its transpose (M rows, one per output feature: indptr M+1, indices and data nnz; columns < K). The
transpose is stored because each output feature is then one sparse row, and the op lowers to a
stage-I program over transposes, `C^T[c, m, l] = sum over the nonzeros j of row m of data[j] *
x^T[c, j, l]` for batch row c * 16 + l (`sp_iter (S c in NB, S m in I, R j in J, S l in L)` between
a padded transpose in and a transpose out), which sparse-lower and its schedule turn into chunks in
parallel and a vectorized 16-lane inner loop; the batch dim may be symbolic. `mlc sparsify`
(passes/sparsify.py) and ONNX sparse_initializers (frontend/onnx_import.py) produce it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import arith
from ..diagnostics import Loc, MlcError
from ..expr import Bin, Const, Expr, Load, Select, Var
from ..sparse import Axis, SparseIteration, SparseIterVar, check_csr, sparse_view
from ..tir import Buffer, Stmt, Store
from ..tir_builder import Builder, CannotLower, Index, Tensor
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_dtype, out_shape
from .reference import Env, ref
from .registry import define, register_infer, register_lower, register_no_grad
from .shapes import dims_str, shape_of, tensor

define("sparse_matmul", "opaque", 4, {},
       "x @ W with W (K x M) as the CSR of W^T: args x (N x K), indptr (M+1, i32), indices (nnz, i32: "
       "columns < K), data (nnz, x's dtype)")
register_no_grad("sparse_matmul")
LANES = 16  # batch rows per vector in the kernel (one AVX-512 register of f32)  # its weight is a constant; a rule for x (dout @ W^T) is not built yet


@register_infer("sparse_matmul")
def _sparse_matmul_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    x = shape_of(args[0], loc, "sparse_matmul: x")
    ptr, ind = shape_of(args[1], loc, "sparse_matmul: indptr"), shape_of(args[2], loc, "sparse_matmul: indices")
    dat = shape_of(args[3], loc, "sparse_matmul: data")
    dt = tensor(args[0], loc).dtype
    if len(x) != 2:
        raise MlcError(f"sparse_matmul: x must have rank 2 (N x K), got ({dims_str(x)})", loc)
    for what, t, s in (("indptr", args[1], ptr), ("indices", args[2], ind)):
        if len(s) != 1 or tensor(t, loc).dtype != "i32":
            raise MlcError(f"sparse_matmul: {what} must be a 1-d i32 tensor, got {t}", loc)
    if len(dat) != 1 or tensor(args[3], loc).dtype != dt:
        raise MlcError(f"sparse_matmul: data must be a 1-d {dt} tensor (x's dtype), got {args[3]}", loc)
    if not isinstance(ptr[0], Const) or not isinstance(ind[0], Const) or not isinstance(dat[0], Const):
        raise MlcError("sparse_matmul: the sparse weight's arrays must have constant lengths", loc)
    if int(ind[0].value) != int(dat[0].value) or int(ptr[0].value) < 1:
        raise MlcError(f"sparse_matmul: {ind[0].value} indices but {dat[0].value} values (indptr "
                       f"{ptr[0].value} entries)", loc)
    return TensorType((x[0], Const(int(ptr[0].value) - 1)), dt)


@ref("sparse_matmul")
def _sparse_matmul_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x, indptr, indices, data = (np.asarray(a) for a in args)
    try:
        check_csr(indptr, indices, len(data), x.shape[1])
    except MlcError as e:
        raise MlcError(f"sparse_matmul: {e.message}") from None
    wt = np.zeros((len(indptr) - 1, x.shape[1]), np.float32 if x.dtype == np.float16 else x.dtype)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr.astype(np.int64)))
    np.add.at(wt, (rows, indices.astype(np.int64)), data)  # duplicates add, as in the kernel
    return x.astype(wt.dtype) @ wt.T


@register_lower("sparse_matmul")
def _sparse_matmul_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    x, indptr, indices, data = (as_tensor(a) for a in args)
    if any(a.buffer is None for a in (indptr, indices, data)):
        raise CannotLower("sparse_matmul: operands must be program inputs (it does not fuse)")
    assert indptr.buffer is not None and indices.buffer is not None and data.buffer is not None
    shp, dt = out_shape(t), out_dtype(t)
    if dt != "f32":
        raise CannotLower(f"sparse_matmul: no sparse kernel for {dt} yet")
    P, J_, D = indptr.buffer, indices.buffer, data.buffer
    # The kernel works on transposes, C^T = W^T @ x^T, with the batch in chunks of LANES rows (x^T as
    # chunks x K x LANES, zero-padded): per chunk (parallel), per output feature m, the nonzeros of row
    # m of W^T each add data * one LANES-vector of x^T into C^T[chunk, m], a vector that stays in a
    # register; every stride is constant and the innermost extent too, so the sparse schedule vectorizes
    # it with a symbolic batch. Measured, 1024 x 4096 at 10%, batch 32 (symbolic): 1.3 s with the batch
    # innermost in x's own layout (strides of K and M floats: one cache set for all), 46 ms with the
    # batch outermost unchunked, 14 ms transposed with a scalar batch loop, 4.2 ms chunked with the chunk
    # loop inside the nonzeros, 1.2 ms as here.
    rows, k_dim, feats = x.shape[0], x.shape[1], shp[1]
    chunks = arith.simplify(Bin("floordiv", rows + (LANES - 1), Const(LANES)))

    def padded_xt(i: Index) -> Expr:
        r = i[0] * LANES + i[2]
        inside = Bin("lt", r, rows)
        return Select(inside, x.at((Bin("min", r, rows - 1), i[1])), Const(0.0, dt))  # both arms are evaluated

    X = b.materialize(b.compute((chunks, k_dim, Const(LANES)), dt, padded_xt, "xT")).buffer
    assert X is not None
    names = [b.fresh(n) for n in ("NB", "L", "I", "J", "A", "nb", "lane", "m", "j")]
    NB, L = Axis(names[0], "dense_fixed", chunks), Axis(names[1], "dense_fixed", Const(LANES))
    I = Axis(names[2], "dense_fixed", feats)  # noqa: E741 - SparseTIR's axis names
    J = Axis(names[3], "sparse_variable", k_dim, names[2], D.shape[0], P, J_)
    A = sparse_view(names[4], (I, J), D)
    nb, lane, m, j = (Var(v) for v in names[5:])
    iters = (SparseIterVar(nb, NB.name, "S"), SparseIterVar(m, I.name, "S"), SparseIterVar(j, J.name, "R"),
             SparseIterVar(lane, L.name, "S"))

    def write(out: Buffer) -> Stmt:
        at = (nb, m, lane)
        acc = Load(out, at) + Load(A.buffer, (m, j)) * Load(X, (nb, j, lane))
        return SparseIteration(b.block_name("sparse_matmul"), iters, Store(out, at, acc), Store(out, at, Const(0.0, dt)))

    ct = b.materialize(b.written((chunks, feats, Const(LANES)), dt, write, "cT", (I, J, NB, L), (A,)))
    return b.compute(shp, dt, lambda i: ct.at((Bin("floordiv", i[0], Const(LANES)), i[1],
                                                Bin("floormod", i[0], Const(LANES)))), "sparse_matmul")
