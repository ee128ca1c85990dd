"""Stage-I sparse IR (SparseTIR): sparse axes, sparse buffers over them, sparse iteration statements.

A computation on a sparse matrix is written once in coordinate space (`C[i, k] += A[i, j] * B[j, k]`
over the nonzeros of A) and lowered in stages (ir/sparse_lower.py): stage II iterates positions of
the index arrays with ordinary loops and blocks, stage III reads the flat value arrays directly.

Axes (`axis NAME = KIND(...)` at the top of a `prim`), each non-root one naming its parent:

- `dense_fixed(length)`: a root axis 0..length;
- `dense_variable(PARENT, length, nnz, %indptr)`: a ragged axis, positions 0..indptr[p+1]-indptr[p]
  under parent position p, coordinate = position;
- `sparse_fixed(PARENT, length, W, %indices)`: W nonzeros per parent position (ELL), coordinate
  `indices[p, j]` (`indices` is `P x W`);
- `sparse_variable(PARENT, length, nnz, %indptr, %indices)`: CSR, coordinate `indices[indptr[p] + j]`.

A sparse buffer (`sparse %A: (I, J) = %data`) is a view of the value array `data` over axes, each
dependent axis directly after its parent. The leading axes fold into the first dim of `data`, left to
right (a fixed axis `off * extent + pos`, a variable one `indptr[off] + pos`); each further dim of
`data` is one trailing fixed axis, indexed by its position (CSR values: 1-d; ragged rows of
features `(S, R, K)` over an `rows x K` array; BSR blocks `(IO, JO, II, JI)` over `nnzb x S x S`). In a sparse iteration
(`sp_iter "name"(S i in I, R j in J, S k in K) { init {...} body }`) an iterator indexes a sparse
buffer by position and means its coordinate everywhere else (a dense buffer `B[j, k]` reads column
`indices[...]` of row `j`'s coordinate). `init` runs for every point of the spatial iterators before
the reduction updates it, also where the reduce domain is empty (a row without nonzeros).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .diagnostics import UNKNOWN, Loc, MlcError
from .expr import Cast, Const, Expr, Var
from .tir import Buffer, Stmt

AXIS_KINDS: tuple[str, ...] = ("dense_fixed", "dense_variable", "sparse_fixed", "sparse_variable")


@dataclass(frozen=True)
class Axis:
    """One sparse axis. `length` is its coordinate extent (columns); `nnz` the total number of positions
    (variable kinds) or the positions per parent position (sparse_fixed)."""

    name: str
    kind: str
    length: Expr
    parent: str = ""
    nnz: Expr | None = None
    indptr: Buffer | None = None
    indices: Buffer | None = None
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    @property
    def variable(self) -> bool:
        """Positions per parent position vary (read from indptr)."""
        return self.kind in ("dense_variable", "sparse_variable")

    @property
    def sparse(self) -> bool:
        """Coordinates differ from positions (read from indices)."""
        return self.kind in ("sparse_fixed", "sparse_variable")

    def fixed_extent(self) -> Expr | None:
        """Positions per parent position when they do not vary."""
        if self.kind == "dense_fixed":
            return self.length
        if self.kind == "sparse_fixed":
            return self.nnz
        return None


@dataclass(frozen=True)
class SparseBuffer:
    """`sparse %A: (I, J) = %data`: `buffer` is the view loads and stores name (coordinate shape, the
    data's dtype), `data` the parameter holding the values."""

    buffer: Buffer
    axes: tuple[str, ...]
    data: Buffer
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


def folded_axes(sb: SparseBuffer) -> int:
    """How many leading axes of `sb` fold into the first dim of its values (the rest: one dim each)."""
    return len(sb.axes) - len(sb.data.shape) + 1


def sparse_view(name: str, axes: tuple[Axis, ...], data: Buffer, loc: Loc = UNKNOWN) -> SparseBuffer:
    """The sparse buffer `name` over `axes` stored in `data` (the one way to build its view)."""
    view = Buffer(name, tuple(a.length for a in axes), data.dtype, "global", loc)
    return SparseBuffer(view, tuple(a.name for a in axes), data, loc)


@dataclass(frozen=True)
class SparseIterVar:
    """An iterator of a sparse iteration: its var, the axis it walks, kind S (spatial) or R (reduce)."""

    var: Var
    axis: str
    kind: str
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class SparseIteration(Stmt):
    """`sp_iter "name"(S i in I, R j in J, ...) { init {...} body }` (SparseTIR's sp_iter block)."""

    name: str
    iters: tuple[SparseIterVar, ...]
    body: Stmt
    init: Stmt | None = None
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)

    @property
    def markers(self) -> str:
        """The iterator kinds as SparseTIR writes them ("SRS")."""
        return "".join(it.kind for it in self.iters)


def axis_table(axes: tuple[Axis, ...]) -> dict[str, Axis]:
    return {a.name: a for a in axes}


def i64(e: Expr) -> Expr:
    """An index read from an i32 array as i64 (loop variables are i64)."""
    if isinstance(e, Const):
        return Const(int(e.value), "i64")
    return e if e.dtype == "i64" else Cast("i64", e)


__all__ = ["AXIS_KINDS", "Axis", "SparseBuffer", "SparseIterVar", "SparseIteration", "axis_table", "folded_axes", "i64",
           "sparse_view"]


def check_csr(indptr: np.ndarray, indices: np.ndarray, nnz: int, n: int, *, need_sorted: bool = False) -> None:
    """The structure checks of a CSR matrix with `n` columns and `nnz` stored values; one MlcError each."""
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    if indptr.ndim != 1 or len(indptr) < 1:
        raise MlcError("indptr: expected a 1-d array of rows + 1 entries")
    if indptr[0] != 0:
        raise MlcError(f"indptr[0] is {int(indptr[0])}, expected 0")
    steps = np.diff(indptr.astype(np.int64))
    if np.any(steps < 0):
        r = int(np.argmax(steps < 0))
        raise MlcError(f"indptr is not monotone: indptr[{r + 1}] = {int(indptr[r + 1])} < indptr[{r}] = {int(indptr[r])}")
    if int(indptr[-1]) != nnz or len(indices) != nnz:
        raise MlcError(f"nnz disagrees: indptr[-1] = {int(indptr[-1])}, {len(indices)} indices, {nnz} values")
    bad = (indices < 0) | (indices >= n)
    if np.any(bad):
        p = int(np.argmax(bad))
        raise MlcError(f"indices[{p}] = {int(indices[p])} is out of range [0, {n})")
    if need_sorted and nnz:
        rows = np.repeat(np.arange(len(indptr) - 1), steps)
        same_row = rows[1:] == rows[:-1]
        down = same_row & (np.diff(indices.astype(np.int64)) <= 0)
        if np.any(down):
            p = int(np.argmax(down)) + 1
            raise MlcError(f"indices of row {int(rows[p])} are not sorted and unique (position {p})")
