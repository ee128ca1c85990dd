"""Format decomposition (SparseTIR's composable formats): a CSR sparse iteration rewritten over ELL, BSR or hyb.

A stage-I function whose one sparse iteration reduces over a CSR matrix A (axis `J =
sparse_variable(I, ...)` under a root `I = dense_fixed(...)`, one read-only sparse buffer over (I, J),
the update `out[...] = out[...] + ... A[i, j] ...` linear in A) is rewritten, with the same result, into

- `ell:W`: J becomes `sparse_fixed(I, n, W, %indices)` over rows x W arrays (padding: value 0);
- `bsr:B`: four axes (block rows, block columns sparse_variable, two in-block axes of B); rows and
  columns must be multiples of B;
- `hyb:C,K`: the columns split into C parts; each part's rows bucketed by their nonzeros in that
  part into ELL buckets of widths 1, 2, 4, ..., 2**K (a bucket's rows map to A's rows through its
  `rows` array); rows with more than 2**K split into sub-rows of 2**K (a `dense_variable` axis of
  sub-rows under each row, then the ELL axis), accumulated. One sparse iteration per bucket, each
  its own kernel nest with its own schedule, after one iteration that runs the init.

Numpy conversions (`to_ell`, `to_bsr`, `to_hyb`) compute the arrays from a CSR matrix; the IR side
(`find_csr`, `decompose`) is the same whether the arrays are build-time constants (static shapes) or
kernel inputs (symbolic shapes, the ready-made `hyb` kernel). The CSR indptr stays a parameter (its
length gives the row count the rest of the function may use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from . import arith
from .diagnostics import MlcError
from .expr import Bin, Call, Const, Expr, Load, Select, Var
from .names import fresh_name
from .sparse import Axis, SparseBuffer, SparseIteration, SparseIterVar, i64, sparse_view
from .tir import Buffer, PrimFunc, Seq, Stmt, Store
from .tir_visit import StmtMutator, nodes, rewrite, used_names


# ---- format names --------------------------------------------------------------------------------
def parse_format(fmt: str) -> tuple[str, int]:
    """`csr` -> ("csr", 0); `ell:W` -> ("ell", W); `bsr:S` -> ("bsr", S)."""
    if fmt == "csr":
        return "csr", 0
    kind, _, num = fmt.partition(":")
    if kind in ("ell", "bsr") and num.isdigit() and 0 < int(num) <= 4096:
        return kind, int(num)
    raise MlcError(f"unknown sparse format {fmt!r} (known: csr, ell:W, bsr:S with 0 < W, S <= 4096, hyb:C,K)")


def parse_hyb(fmt: str) -> tuple[int, int] | None:
    """`hyb:C,K` -> (C, K): columns in C partitions, rows in ELL buckets of widths 1, 2, ..., 2**K."""
    kind, _, rest = fmt.partition(":")
    if kind != "hyb":
        return None
    c, _, k = rest.partition(",")
    if not (c.isdigit() and k.isdigit() and 1 <= int(c) <= 64 and int(k) <= 12):
        raise MlcError(f"bad hyb format {fmt!r} (hyb:C,K with 1 <= C <= 64 column parts, 0 <= K <= 12)")
    return int(c), int(k)


@dataclass(frozen=True)
class Bucket:
    """One hyb bucket: rows of column part `part` with nonzeros in (width/2, width] there (width 1:
    exactly 1), or with `split`, rows with more than `width`, cut into sub-rows of `width`."""

    part: int
    width: int
    split: bool = False

    @property
    def tag(self) -> str:
        return f"p{self.part}_long" if self.split else f"p{self.part}_b{self.width.bit_length() - 1}"

    def arrays(self) -> tuple[str, ...]:
        """Names of its arrays, in parameter order."""
        t = self.tag
        return (f"rows_{t}", f"subptr_{t}", f"indices_{t}", f"data_{t}") if self.split else \
            (f"rows_{t}", f"indices_{t}", f"data_{t}")


def hyb_buckets(parts: int, k: int) -> list[Bucket]:
    return [b for p in range(parts) for b in
            [Bucket(p, 2 ** e) for e in range(k + 1)] + [Bucket(p, 2 ** k, True)]]


# ---- numpy conversions (build time, or the Python API) ------------------------------------------
def to_ell(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR -> ELL(width): rows padded with value 0 at column 0; a longer row is an error."""
    lens = np.diff(indptr)
    rows = len(lens)
    if rows and int(lens.max()) > width:
        raise MlcError(f"ell:{width}: row {int(np.argmax(lens))} has {int(lens.max())} nonzeros (more than {width})")
    ell_i = np.zeros((rows, width), np.int32)
    ell_d = np.zeros((rows, width), data.dtype)
    r = np.repeat(np.arange(rows), lens)
    c = np.arange(len(indices)) - np.repeat(indptr[:-1], lens)
    ell_i[r, c], ell_d[r, c] = indices, data
    return ell_i, ell_d


def to_bsr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int, size: int) -> dict[str, np.ndarray]:
    """CSR (rows x n) -> BSR with size x size blocks (scipy's layout: indptr, indices, data nnzb x S x S);
    duplicates add."""
    m = len(indptr) - 1
    if m % size or n % size:
        raise MlcError(f"bsr:{size}: the matrix's shape {m} x {n} is not a multiple of {size}")
    rows = np.repeat(np.arange(m), np.diff(indptr)).astype(np.int64)
    cols = np.asarray(indices, np.int64)
    key = (rows // size) * max(n // size, 1) + cols // size
    blocks, which = np.unique(key, return_inverse=True)
    out = np.zeros((len(blocks), size, size), data.dtype)
    np.add.at(out, (which, rows % size, cols % size), data)
    brow = blocks // max(n // size, 1)
    bptr = np.concatenate([[0], np.cumsum(np.bincount(brow, minlength=m // size))]).astype(np.int32)
    return {"indptr": bptr, "indices": (blocks % max(n // size, 1)).astype(np.int32), "data": out}


def to_hyb(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int, parts: int, k: int,
           keep_empty: bool = True) -> dict[str, np.ndarray]:
    """CSR -> the hyb(parts, k) arrays of every bucket (`Bucket.arrays` names; padding: value 0, column
    0). Without `keep_empty`, buckets without rows are left out."""
    m = len(indptr) - 1
    rows_of = np.repeat(np.arange(m), np.diff(indptr))
    span = max(1, -(-n // parts))
    out: dict[str, np.ndarray] = {}
    for p in range(parts):
        keep = (np.asarray(indices) // span) == p
        r, c, v = rows_of[keep], np.asarray(indices)[keep], np.asarray(data)[keep]  # row-major order kept
        lens = np.bincount(r, minlength=m)
        starts = np.concatenate([[0], np.cumsum(lens)])
        q = np.arange(len(r)) - starts[r]  # position of each nonzero in its row (within the part)
        for b in hyb_buckets(1, k):
            w = b.width
            if b.split:
                sel = np.flatnonzero(lens > w)
            else:
                sel = np.flatnonzero((lens <= w) & (lens > w // 2)) if w > 1 else np.flatnonzero(lens == 1)
            if not len(sel) and not keep_empty:
                continue
            tag = replace(b, part=p)
            names = tag.arrays()
            slot = np.full(m, -1, np.int64)
            slot[sel] = np.arange(len(sel))
            mine = slot[r] >= 0
            if b.split:
                subs = -(-lens[sel] // w)
                subptr = np.concatenate([[0], np.cumsum(subs)]).astype(np.int32)
                at = subptr[slot[r[mine]]] + q[mine] // w
                total = int(subptr[-1])
                out[names[1]] = subptr
            else:
                at, total = slot[r[mine]], len(sel)
            ell_i = np.zeros((total, w), np.int32)
            ell_d = np.zeros((total, w), data.dtype)
            ell_i[at, q[mine] % w], ell_d[at, q[mine] % w] = c[mine], v[mine]
            out[names[0]] = sel.astype(np.int32)
            out[names[-2]], out[names[-1]] = ell_i, ell_d
    return out


# ---- the IR rewrite ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CsrSite:
    """The CSR reduction of a stage-I function that `decompose` rewrites."""

    iteration: SparseIteration
    row: SparseIterVar  # over I (dense_fixed, a root)
    col: SparseIterVar  # over J (sparse_variable under I)
    rows: Axis
    cols: Axis
    view: SparseBuffer  # A over (I, J)

    @property
    def params(self) -> tuple[Buffer, Buffer, Buffer]:
        """indptr, indices, data: the CSR arrays the format's arrays replace (indptr stays)."""
        assert self.cols.indptr is not None and self.cols.indices is not None
        return self.cols.indptr, self.cols.indices, self.view.data


def find_csr(func: PrimFunc) -> CsrSite | None:
    """The function's CSR reduction (see module doc), or None when it has none or several."""
    its = [s for s in nodes(func.body) if isinstance(s, SparseIteration)]
    if len(its) != 1:
        return None
    s = its[0]
    axes = {a.name: a for a in func.axes}
    sites = []
    for it in s.iters:
        a = axes.get(it.axis)
        if a is None or a.kind != "sparse_variable" or it.kind != "R":
            continue
        parent = axes.get(a.parent)
        rit = [x for x in s.iters if x.axis == a.parent]
        if parent is None or parent.kind != "dense_fixed" or parent.parent or len(rit) != 1 or rit[0].kind != "S":
            continue
        views = [sb for sb in func.sparse_buffers if set(sb.axes) & {a.name, parent.name}]
        if len(views) != 1 or views[0].axes != (parent.name, a.name) or len(views[0].data.shape) != 1:
            continue
        others = [b for b in func.axes if b.parent in (a.name, parent.name) and b is not a]
        params = {p.name for p in func.params[:len(func.params) - func.num_outputs]}
        if others or not {a.indptr.name, a.indices.name, views[0].data.name} <= params:  # type: ignore[union-attr]
            continue
        sites.append(CsrSite(s, rit[0], it, parent, a, views[0]))
    if len(sites) != 1 or not _linear_update(sites[0]):
        return None
    return sites[0]


def _linear_update(site: CsrSite) -> bool:
    """The body is `out[idx] = out[idx] + e`, e a product with exactly one factor reading A (so that a
    padded entry, value 0, adds 0), idx free of the reduce iterator; A read nowhere else."""
    body, a = site.iteration.body, site.view.buffer.name
    if not isinstance(body, Store) or body.buffer.name == a:
        return False
    v = body.value
    if not (isinstance(v, Bin) and v.op == "add" and isinstance(v.a, Load) and v.a.buffer.name == body.buffer.name
            and v.a.indices == body.indices):
        return False
    if any(site.col.var in _vars(i) for i in body.indices):
        return False

    def factors(e: Expr) -> list[Expr]:
        return factors(e.a) + factors(e.b) if isinstance(e, Bin) and e.op == "mul" else [e]

    reads = [f for f in factors(v.b) if isinstance(f, Load) and f.buffer.name == a]
    total = sum(1 for x in _loads(v.b) if x.buffer.name == a)
    return len(reads) == 1 and total == 1 and all(x.buffer.name != a for x in _loads_stmt(site.iteration.init))


def _loads(e: Expr) -> list[Load]:
    out: list[Load] = []
    rewrite(e, lambda x: out.append(x) if isinstance(x, Load) else None)  # type: ignore[func-returns-value]
    return out


def _loads_stmt(s: Stmt | None) -> list[Load]:
    out: list[Load] = []
    if s is None:
        return out

    class _L(StmtMutator):
        def visit_expr(self, e: Expr) -> Expr:
            out.extend(_loads(e))
            return e

    _L().visit(s)
    return out


def _vars(e: Expr) -> set[Var]:
    out: set[Var] = set()
    rewrite(e, lambda x: out.add(x) if isinstance(x, Var) else None)  # type: ignore[func-returns-value]
    return out


Shapes = Callable[[str], tuple[Expr, ...]]


def decompose(func: PrimFunc, site: CsrSite, fmt: str, shapes: Shapes, buckets: list[Bucket] | None = None) -> PrimFunc:
    """`func` with its CSR reduction over the format `fmt`; `shapes(name)` gives each new array's shape
    (constants at build time, symbols for kernel inputs). hyb: `buckets` (default all of
    `hyb_buckets`) are the ones that exist. The new arrays replace indices and data in the
    parameters, at indices' place; indptr stays."""
    used = used_names(func) | {a.name for a in func.axes} | {sb.buffer.name for sb in func.sparse_buffers}
    names: dict[str, str] = {}

    def buf(name: str, dtype: str) -> Buffer:
        names[name] = fresh_name(name, used)
        return Buffer(names[name], shapes(name), dtype)

    _, indices, data = site.params
    I, J, A = site.rows, site.cols, site.view  # noqa: E741
    dt = data.dtype
    hyb = parse_hyb(fmt)
    new_axes: list[Axis]
    new_views: list[SparseBuffer]
    if hyb is not None:
        bs = buckets if buckets is not None else hyb_buckets(*hyb)
        params: list[Buffer] = []
        new_axes, new_views, iters = [], [], []
        zero = _zero_iteration(site, fresh_name(f"{site.iteration.name}_zero", used))
        if zero is not None:
            iters.append(zero)
        for b in bs:
            arrs = b.arrays()
            rows = buf(arrs[0], "i32")
            cnt = rows.shape[0]
            length = cnt if isinstance(cnt, Const) else Select(Bin("gt", I.length, Const(0)), cnt, Const(0))
            R = Axis(fresh_name(f"R_{b.tag}", used), "dense_fixed", length)
            if b.split:
                ptr, idx, dat = buf(arrs[1], "i32"), buf(arrs[2], "i32"), buf(arrs[3], dt)
                S = Axis(fresh_name(f"S_{b.tag}", used), "dense_variable", idx.shape[0], R.name, idx.shape[0], ptr)
                Jb = Axis(fresh_name(f"J_{b.tag}", used), "sparse_fixed", J.length, S.name, Const(b.width), None, idx)
                chain = [R, S, Jb]
                params += [rows, ptr, idx, dat]
            else:
                idx, dat = buf(arrs[1], "i32"), buf(arrs[2], dt)
                Jb = Axis(fresh_name(f"J_{b.tag}", used), "sparse_fixed", J.length, R.name, Const(b.width), None, idx)
                chain = [R, Jb]
                params += [rows, idx, dat]
            view = sparse_view(fresh_name(f"{A.buffer.name}_{b.tag}", used), tuple(chain), dat)
            new_axes += chain
            new_views.append(view)
            iters.append(_bucket_iteration(site, b.tag, chain, view, rows, used))
        new_body = _replace_stmt(func.body, site.iteration, Seq(tuple(iters)) if len(iters) != 1 else iters[0])
        axes = [a for a in func.axes if a.name != J.name] + new_axes
        views = [sb for sb in func.sparse_buffers if sb is not A] + new_views
        return _with_params(func, site, params, new_body, axes, views)
    kind, w = parse_format(fmt)
    if kind == "csr":
        return func
    if kind == "ell":
        idx, dat = buf("indices_ell", "i32"), buf("data_ell", dt)
        Je = Axis(J.name, "sparse_fixed", J.length, I.name, Const(w), None, idx)
        Ae = sparse_view(A.buffer.name, (I, Je), dat)
        axes = [Je if a.name == J.name else a for a in func.axes]
        views = [Ae if sb is A else sb for sb in func.sparse_buffers]
        body = _retype_view(func.body, Ae)
        return _with_params(func, site, [idx, dat], body, axes, views)
    # bsr
    ptr, idx, dat = buf("indptr_bsr", "i32"), buf("indices_bsr", "i32"), buf("data_bsr", dt)
    S = Const(w)
    IO = Axis(fresh_name(f"{I.name}O", used), "dense_fixed", Bin("floordiv", I.length, S))
    JO = Axis(fresh_name(f"{J.name}O", used), "sparse_variable", Bin("floordiv", J.length, S), IO.name, idx.shape[0], ptr, idx)
    II = Axis(fresh_name(f"{I.name}I", used), "dense_fixed", S)
    JI = Axis(fresh_name(f"{J.name}I", used), "dense_fixed", S)
    Ab = sparse_view(fresh_name(f"{A.buffer.name}_bsr", used), (IO, JO, II, JI), dat)
    s = site.iteration
    io, ii = Var(fresh_name(f"{site.row.var.name}o", used)), Var(fresh_name(f"{site.row.var.name}i", used))
    jo, ji = Var(fresh_name(f"{site.col.var.name}o", used)), Var(fresh_name(f"{site.col.var.name}i", used))
    new_iters: list[SparseIterVar] = []
    for it in s.iters:
        if it is site.row:
            new_iters.append(SparseIterVar(io, IO.name, "S", it.loc))
        elif it is site.col:
            new_iters += [SparseIterVar(jo, JO.name, "R", it.loc), SparseIterVar(ii, II.name, "S", it.loc),
                          SparseIterVar(ji, JI.name, "R", it.loc)]
        else:
            new_iters.append(it)
    coords = {site.row.var: io * S + ii, site.col.var: jo * S + ji}
    body = _substitute_site(s.body, A.buffer.name, lambda ld: Load(Ab.buffer, (io, jo, ii, ji), ld.loc), coords)
    init = None if s.init is None else _substitute_site(s.init, A.buffer.name, lambda ld: ld, coords)
    new = SparseIteration(s.name, tuple(new_iters), body, init, s.loc)
    axes = [a for a in func.axes if a.name not in (I.name, J.name)] + [IO, JO, II, JI]
    views = [sb for sb in func.sparse_buffers if sb is not A] + [Ab]
    # indptr_bsr replaces indptr for the iteration, but the CSR indptr stays a parameter (shape binding)
    return _with_params(func, site, [ptr, idx, dat], _replace_stmt(func.body, s, new), axes, views)


def _zero_iteration(site: CsrSite, name: str) -> SparseIteration | None:
    """The init over the spatial iterators alone (all but the reduce one), or None without an init."""
    s = site.iteration
    if s.init is None:
        return None
    return SparseIteration(name, tuple(it for it in s.iters if it.kind == "S"), s.init, None, s.loc)


def _bucket_iteration(site: CsrSite, tag: str, chain: list[Axis], view: SparseBuffer, rows: Buffer,
                      used: set[str]) -> SparseIteration:
    """The reduction over one bucket: the row iterator walks the bucket's rows (its coordinate is
    `rows[r]`), the reduce iterator its ELL entries (and sub-rows first when split)."""
    s = site.iteration
    r = Var(fresh_name(f"{site.row.var.name}_{tag}", used))
    j = Var(fresh_name(f"{site.col.var.name}_{tag}", used))
    sub = Var(fresh_name(f"s_{tag}", used)) if len(chain) == 3 else None
    m = site.rows.length  # the row map, checked and clamped: a bad map fails the run, reads nothing outside
    row_of = Bin("min", Bin("max", Call("check_range", (i64(Load(rows, (r,))), Const(0), m), "i64"), Const(0)), arith.simplify(m - 1))
    its: list[SparseIterVar] = []
    for it in s.iters:
        if it is site.row:
            its.append(SparseIterVar(r, chain[0].name, "S", it.loc))
        elif it is site.col:
            if sub is not None:
                its.append(SparseIterVar(sub, chain[1].name, "R", it.loc))
            its.append(SparseIterVar(j, chain[-1].name, "R", it.loc))
        else:
            its.append(it)
    pos = (r, sub, j) if sub is not None else (r, j)
    body = _substitute_site(s.body, site.view.buffer.name, lambda ld: Load(view.buffer, pos, ld.loc),
                            {site.row.var: row_of, site.col.var: j})
    return SparseIteration(f"{s.name}_{tag}", tuple(its), body, None, s.loc)


def _substitute_site(stmt: Stmt, a: str, a_load: Callable[[Load], Expr], coords: dict[Var, Expr]) -> Stmt:
    """Loads of the view `a` replaced by `a_load(load)`; elsewhere the iterators' coordinates substituted."""
    from .expr import substitute

    def fn(e: Expr) -> Expr:
        def one(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.buffer.name == a:
                return a_load(x)
            return None
        # coordinates first (leaving A's own position indices alone), then A's loads
        return rewrite(_sub_outside(e, a, coords, substitute), one)

    class _S(StmtMutator):
        def visit_Store(self, st: Store) -> Stmt:
            return replace(st, indices=tuple(fn(i) for i in st.indices), value=fn(st.value))

        def visit_expr(self, e: Expr) -> Expr:
            return fn(e)

    return _S().visit(stmt)


def _sub_outside(e: Expr, a: str, coords: dict[Var, Expr], substitute: Callable[[Expr, dict[Var, Expr]], Expr]) -> Expr:
    """`e` with `coords` substituted except inside the indices of loads of `a` (positions there)."""
    if isinstance(e, Load) and e.buffer.name == a:
        return e
    if isinstance(e, Load):
        return Load(e.buffer, tuple(_sub_outside(i, a, coords, substitute) for i in e.indices), e.loc)
    if not any(isinstance(x, Load) and x.buffer.name == a for x in _loads(e)):
        return substitute(e, coords)
    if isinstance(e, Bin):
        return Bin(e.op, _sub_outside(e.a, a, coords, substitute), _sub_outside(e.b, a, coords, substitute), e.loc)
    from .expr import Cast, Not

    if isinstance(e, Cast):
        return Cast(e.dtype, _sub_outside(e.a, a, coords, substitute), e.loc)
    if isinstance(e, Not):
        return Not(_sub_outside(e.a, a, coords, substitute), e.loc)
    if isinstance(e, Select):
        return Select(*(_sub_outside(x, a, coords, substitute) for x in (e.cond, e.t, e.f)), e.loc)
    if isinstance(e, Call):
        return Call(e.name, tuple(_sub_outside(x, a, coords, substitute) for x in e.args), e.dtype, e.loc)
    return e


def _retype_view(stmt: Stmt, view: SparseBuffer) -> Stmt:
    """Loads of the view's name read the new view buffer (same name, new axes' lengths)."""
    name = view.buffer.name

    def fn(e: Expr) -> Expr:
        return rewrite(e, lambda x: Load(view.buffer, x.indices, x.loc) if isinstance(x, Load) and x.buffer.name == name else None)

    class _R(StmtMutator):
        def visit_expr(self, e: Expr) -> Expr:
            return fn(e)

    return _R().visit(stmt)


def _replace_stmt(body: Stmt, old: Stmt, new: Stmt) -> Stmt:
    class _Rep(StmtMutator):
        def visit(self, s: Stmt) -> Stmt:
            return new if s is old else super().visit(s)

    return _Rep().visit(body)


def _with_params(func: PrimFunc, site: CsrSite, new: list[Buffer], body: Stmt, axes: list[Axis],
                 views: list[SparseBuffer]) -> PrimFunc:
    _, indices, data = site.params
    params: list[Buffer] = []
    for p in func.params:
        if p.name == indices.name:
            params += new
        elif p.name != data.name:
            params.append(p)
    return replace(func, params=tuple(params), body=body, axes=tuple(axes), sparse_buffers=tuple(views))


def format_arrays(func: PrimFunc, before: PrimFunc) -> list[str]:
    """Names of the parameters `decompose` added (in order)."""
    old = {p.name for p in before.params}
    return [p.name for p in func.params if p.name not in old]


__all__ = ["Bucket", "CsrSite", "decompose", "find_csr", "format_arrays", "hyb_buckets", "parse_format", "parse_hyb",
           "to_bsr", "to_ell", "to_hyb"]
