"""sparse-format: CSR sparse programs rewritten into ELL, BSR or hyb (format decomposition, issue 15 item 3).

Runs on stage-I programs (after fuse, before sparse-lower). A program with one CSR reduction
(ir/sparse_format.find_csr: spmm, the graph op sparse_matmul) gets the `--format` through
ir/sparse_format.decompose; where its CSR arrays come from:

- constants (a graph-level `sparse_matmul` by a sparse weight, or a kernel module whose arrays are
  `const` bindings): converted once here, at build time (numpy), into new constants; a hyb format
  keeps only its non-empty buckets, each one sparse iteration with its own schedule. `mlc -v` says
  what it made (stored values, padding, kernels).
- graph inputs: `ell:W` gets a generated conversion program (`@F_ell_indices`, `@F_ell_data`: one
  pass over rows x W, a row longer than W fails the run with a located error) called before the
  kernel at every run; `Model.profile` (benchmarks/bench_sparse.py) times it beside the kernel. BSR and hyb have
  data-dependent sizes (blocks, bucket rows), so they need the operand constant: one located error.

Programs named in `--only` (default all) that have no CSR reduction (sddmm writes a sparse result;
BSR and ELL kernels are formats already) are left as they are, said by `mlc -v`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from mlc.ir import arith
from mlc.ir.diagnostics import Loc, MlcError
from mlc.ir.expr import Bin, Call, Const, Expr, Select, Var, free_vars, substitute
from mlc.ir.graph import Binding, Block, CallTensor, Constant, Function, Value
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.rewrite import walk_bindings
from mlc.ir.sparse import check_csr, i64
from mlc.ir.sparse_format import (
    Bucket,
    CsrSite,
    decompose,
    find_csr,
    format_arrays,
    parse_format,
    parse_hyb,
    to_bsr,
    to_ell,
    to_hyb,
)
from mlc.ir.tir import PrimFunc
from mlc.ir.tir_builder import build, compute, placeholder
from mlc.ir.types import TensorType

from .canonicalize import DCE
from .lower import map_blocks
from .registry import ModulePass, PassContext, option, register_pass
from .schedule.trace import Instruction, Trace
from .tune.database import Database, workload_key

_NP_TO_IR = {np.dtype(np.int32): "i32", np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}


def check_format(fmt: str) -> str:
    """A known format spelling (`ell` alone: the longest row's width, known at build time), else MlcError."""
    if fmt == "ell" or parse_hyb(fmt) is not None:
        return fmt
    parse_format(fmt)
    return fmt


def slug(fmt: str) -> str:
    """The format in a constant key or a function name: `hyb:2,3` -> `hyb2_3`."""
    return fmt.replace(":", "").replace(",", "_")


def convert(fmt: str, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int) -> tuple[str, dict[str, np.ndarray], list[Bucket] | None]:
    """A CSR matrix's arrays in `fmt` (canonical names, ir/sparse_format.py): (the format with `ell`
    resolved, arrays, the hyb buckets that have rows)."""
    hyb = parse_hyb(fmt)
    if hyb is not None:
        arrays = to_hyb(indptr, indices, data, n, *hyb, keep_empty=False)
        from mlc.ir.sparse_format import hyb_buckets

        buckets = [b for b in hyb_buckets(*hyb) if b.arrays()[0] in arrays]
        return fmt, {a: arrays[a] for b in buckets for a in b.arrays()}, buckets  # in parameter order
    if fmt == "ell":
        fmt = f"ell:{max(1, int(np.diff(indptr).max(initial=0)))}"
    kind, w = parse_format(fmt)
    if kind == "ell":
        ei, ed = to_ell(indptr, indices, data, w)
        return fmt, {"indices_ell": ei, "data_ell": ed}, None
    b = to_bsr(indptr, indices, data, n, w)
    return fmt, {"indptr_bsr": b["indptr"], "indices_bsr": b["indices"], "data_bsr": b["data"]}, None


def ell_conversion(site: CsrSite, width: int, name: str) -> tuple[PrimFunc, PrimFunc]:
    """The run-time CSR -> ELL(width) programs (indices, then values): entry w of row r is the row's
    w-th nonzero, or padding (column 0, value 0); a row longer than width fails the run."""
    ptr_b, ind_b, dat_b = site.params
    ptr = placeholder(ptr_b.name, ptr_b.shape, "i32")
    ind = placeholder(ind_b.name, ind_b.shape, "i32")
    dat = placeholder(dat_b.name, dat_b.shape, dat_b.dtype)
    nnz = ind_b.shape[0]
    rows = site.rows.length

    def entry(src: object, zero: Const, r: Expr, w: Expr) -> Expr:
        start = Bin("max", i64(ptr[r]), Const(0))
        length = Call("check_range", (i64(ptr[r + 1]) - start, Const(0), Const(width + 1)), "i64")
        at = Bin("max", Bin("min", start + w, nnz - 1), Const(0))
        return Select(Bin("lt", w, length), src[at], zero)  # type: ignore[index]

    idx = compute("indices_ell", (rows, Const(width)), lambda r, w: entry(ind, Const(0, "i32"), r, w), "i32")
    val = compute("data_ell", (rows, Const(width)), lambda r, w: entry(dat, Const(0.0, dat_b.dtype), r, w), dat_b.dtype)
    return (build(f"{name}_indices", [ptr, ind, dat], [idx]), build(f"{name}_data", [ptr, ind, dat], [val]))


# ---- the tuner's design space over formats (tune/tuning.tune_sparse_formats searches it) ----------
FORMAT_SPACE: tuple[str, ...] = ("csr", "ell", "hyb:1,2", "hyb:1,3", "hyb:1,5", "hyb:2,3", "hyb:2,5", "hyb:4,4",
                                 "bsr:2", "bsr:4", "bsr:8", "bsr:16")
PARTS_SPACE: tuple[int, ...] = (2, 4, 16, 64)  # rows split into parts of equal nonzeros (sparse-lower --parts)
DEFAULT_POINT: tuple[str, int] = ("csr", 16)


def format_trace(fmt: str, parts: int) -> Trace:
    """A point of the format space as a trace: two categorical decisions (format, row parts), the form
    the tuning database stores."""
    return Trace((Instruction("sample_categorical", (list(FORMAT_SPACE),), {"param": "format"}, (), FORMAT_SPACE.index(fmt)),
                  Instruction("sample_categorical", (list(PARTS_SPACE),), {"param": "parts"}, (), PARTS_SPACE.index(parts))))


def trace_point(trace: Trace) -> tuple[str, int] | None:
    """The (format, parts) a format trace chose, or None for another kind of trace."""
    got = {i.attrs.get("param"): i for i in trace.insts if i.kind == "sample_categorical"}
    try:
        return FORMAT_SPACE[int(got["format"].decision)], PARTS_SPACE[int(got["parts"].decision)]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def format_workload(func: PrimFunc, arrays: tuple[np.ndarray, ...]) -> str:
    """The database key of a format search: the stage-I program and the sparsity structure it runs on
    (the best format depends on both)."""
    h = hashlib.sha256(("sparse-format:" + workload_key(func)).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


def csr_constants(module: Module, consts: dict[str, np.ndarray]) -> dict[str, tuple[tuple[str, ...], CallTensor]]:
    """Per stage-I CSR program called once with constant CSR arrays: their keys and the call."""
    out: dict[str, tuple[tuple[str, ...], CallTensor]] = {}
    seen: dict[str, int] = {}
    for g in module.graph_functions():
        const_of = {b.var.name: b.node.key for b in walk_bindings(g.body) if isinstance(b.node, Constant) and b.node.key in consts}
        for b in walk_bindings(g.body):
            n = b.node
            if not isinstance(n, CallTensor):
                continue
            seen[n.func] = seen.get(n.func, 0) + 1
            f = module.get(n.func)
            site = find_csr(f) if isinstance(f, PrimFunc) else None
            if site is None or not isinstance(f, PrimFunc):
                continue
            arg_of = {p.name: a.name for p, a in zip(f.params, n.args)}
            names = [arg_of[p.name] for p in site.params]
            if all(x in const_of for x in names):
                out[n.func] = (tuple(const_of[x] for x in names), n)
    return {k: v for k, v in out.items() if seen[k] == 1}


def tuned_points(module: Module, consts: dict[str, np.ndarray], db: Database, target: str) -> dict[str, tuple[str, int]]:
    """The database's best (format, parts) per stage-I CSR program of `module` with constant arrays."""
    out: dict[str, tuple[str, int]] = {}
    for name, (keys, _) in csr_constants(module, consts).items():
        f = module.get(name)
        assert isinstance(f, PrimFunc)
        best = db.best(format_workload(f, tuple(consts[k] for k in keys[:2])), target)
        point = trace_point(best[0].trace) if best else None
        if point is not None:
            out[name] = point
    return out


def apply_points(module: Module, ctx: PassContext, points: dict[str, tuple[str, int]]) -> Module:
    """Each named program in its format, its row parts in its `sparse_parts` attribute (sparse-lower's
    --parts for that program)."""
    for name, (fmt, parts) in points.items():
        module = SparseFormat(format=fmt, only=name).apply(module, ctx)
        f = module.get(name)
        if isinstance(f, PrimFunc):
            module = module.with_function(dataclasses.replace(f, attrs=tuple(sorted(dict(f.attrs, sparse_parts=parts).items()))))
    return module


def _shapes_of(arrays: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    return lambda a: tuple(Const(int(d)) for d in arrays[a].shape)


@register_pass
@dataclass(frozen=True)
class SparseFormat(ModulePass):
    """Rewrite CSR sparse programs into another format (ell:W, bsr:B, hyb:C,K; csr: unchanged): constant
    sparse operands are converted at build time, input ones (ell only) by a generated program at run time."""

    name: ClassVar[str] = "sparse-format"
    needs_constants: ClassVar[bool] = True
    format: str = option("csr", "csr (no change), ell:W (ell: the longest row, constants only), bsr:B, hyb:C,K "
                                "(C column parts, ELL buckets of widths 1..2**K, longer rows split), or auto (the "
                                "tuning database's best format and row parts per program; csr without a record)")
    only: str = option("", "only these tensor programs (comma-separated names); default all")
    db: str = option("", "with --format auto: the tuning database (JSON lines, mlc.tune.tuning.tune_sparse_formats)")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if self.format == "auto":
            return self.replay(module, ctx)
        # --db is read only by --format auto: `mlc build --db` hands the database to every step that
        # takes one, and a pipeline's fixed format must not turn that into an error.
        fmt = check_format(self.format)
        if fmt == "csr":
            return module
        only = {x.strip() for x in self.only.split(",") if x.strip()}
        sites = {f.name: s for f in module.prim_functions() if (not only or f.name in only)
                 for s in [find_csr(f)] if s is not None}
        for f in module.prim_functions():
            if (not only or f.name in only) and f.name not in sites and f.axes:
                ctx.info(f"sparse-format: @{f.name} has no CSR reduction to rewrite; left as it is", f.loc)
        if not sites:
            return module
        consts = dict(ctx.constants or {})
        added: dict[str, PrimFunc] = {}  # new or rewritten programs by name
        done: dict[tuple[str, ...], tuple[str, str, dict[str, np.ndarray], list[Bucket] | None]] = {}
        names = {f.name for f in module.functions}
        calls = {name: 0 for name in sites}
        for g in module.graph_functions():
            for b in walk_bindings(g.body):
                if isinstance(b.node, CallTensor) and b.node.func in calls:
                    calls[b.node.func] += 1

        def rewrite(g: Function) -> Function:
            const_of = {b.var.name: b.node.key for b in walk_bindings(g.body)
                        if isinstance(b.node, Constant) and b.node.key in consts}
            used = {b.var.name for b in walk_bindings(g.body)} | {p.name for p in g.params}

            def block(blk: Block) -> Block:
                out: list[Binding] = []
                for b in blk.bindings:
                    n = b.node
                    if not (isinstance(n, CallTensor) and n.func in sites):
                        out.append(b)
                        continue
                    f = module.get(n.func)
                    assert isinstance(f, PrimFunc)
                    site = sites[n.func]
                    arg_of = {p.name: a for p, a in zip(f.params, n.args)}
                    csr = [arg_of[p.name] for p in site.params]
                    loc = b.loc if b.loc is not None else n.loc
                    if all(v.name in const_of for v in csr):
                        keys = tuple(const_of[v.name] for v in csr)
                        if keys not in done:
                            done[keys] = self._convert(f, site, fmt, keys, consts, ctx, loc)
                        fname_key = (n.func, *keys)
                        rfmt, prefix, arrays, buckets = done[keys]
                        new = added.get("/".join(fname_key))
                        if new is None:
                            name = n.func if calls[n.func] == 1 else fresh_name(f"{n.func}_{slug(rfmt)}", names)
                            names.add(name)
                            new = decompose(f, site, rfmt, _shapes_of(arrays), buckets)
                            new = dataclasses.replace(new, name=name)
                            added["/".join(fname_key)] = new
                        extra: dict[str, Value] = {}
                        for canon, pname in zip(arrays, format_arrays(new, f)):
                            a = arrays[canon]
                            v = Value(fresh_name(canon, used),
                                      TensorType(tuple(Const(int(d)) for d in a.shape), _NP_TO_IR[a.dtype]))
                            out.append(Binding(v, Constant(f"{prefix}.{canon}", n.loc), b.loc))
                            extra[pname] = v
                        args = tuple(extra.get(p.name) or arg_of[p.name] for p in new.params[:len(new.params) - new.num_outputs])
                        out.append(Binding(b.var, dataclasses.replace(n, func=new.name, args=args), b.loc))
                        continue
                    out += self._at_run_time(f, site, fmt, n, b, used, names, added, ctx, loc)
                return Block(tuple(out), blk.results, blk.loc)

            return map_blocks(g, block)

        funcs: list[Function | PrimFunc] = []
        for f in module.functions:
            funcs.append(rewrite(f) if isinstance(f, Function) else f)
        module = dataclasses.replace(module, functions=tuple(funcs))
        for new in added.values():
            module = module.with_function(new)
        live_calls = {b.node.func for g in module.graph_functions() for b in walk_bindings(g.body) if isinstance(b.node, CallTensor)}
        module = dataclasses.replace(module, functions=tuple(
            f for f in module.functions if not (isinstance(f, PrimFunc) and f.name in sites and f.name not in live_calls)))
        if done:
            module = DCE().apply(module, ctx)
            live = {b.node.key for g in module.graph_functions() for b in walk_bindings(g.body) if isinstance(b.node, Constant)}
            old = {k for keys in done for k in keys}
            ctx.set_constants({k: v for k, v in consts.items() if k in live or k not in old})
        return module

    def replay(self, module: Module, ctx: PassContext) -> Module:
        """--format auto: the recorded best point of every program with constant CSR arrays."""
        if not self.db:
            raise MlcError("sparse-format: --format auto needs --db (a tuning database)")
        db = Database(self.db)
        consts = dict(ctx.constants or {})
        points = tuned_points(module, consts, db, ctx.target)
        only = {x.strip() for x in self.only.split(",") if x.strip()}
        points = {k: v for k, v in points.items() if not only or k in only}
        for name, (fmt, parts) in points.items():
            ctx.info(f"sparse-format: @{name}: {fmt} with {parts} row parts (tuning record in {self.db})")
        if not points:
            ctx.info(f"sparse-format: no tuning record in {self.db} for this module's sparse programs; left in CSR")
        return apply_points(module, ctx, points)

    def _convert(self, f: PrimFunc, site: CsrSite, fmt: str, keys: tuple[str, ...], consts: dict[str, np.ndarray],
                 ctx: PassContext, loc: Loc | None) -> tuple[str, str, dict[str, np.ndarray], list[Bucket] | None]:
        """Build-time conversion of the constant CSR arrays `keys`; the new arrays go into `consts`."""
        indptr, indices, data = (consts[k] for k in keys)
        length = site.cols.length
        n = int(length.value) if isinstance(length, Const) else int(indices.max(initial=-1)) + 1
        kind = parse_format(fmt)[0] if fmt != "ell" and parse_hyb(fmt) is None else ""
        if kind == "bsr" and not isinstance(length, Const):
            w = parse_format(fmt)[1]
            n = -(-max(n, 1) // w) * w
        try:
            check_csr(indptr, indices, len(data), max(n, 1) if not isinstance(length, Const) else n)
            rfmt, arrays, buckets = convert(fmt, indptr, indices, data, n)
        except MlcError as e:
            raise MlcError(f"sparse-format: @{f.name} ({keys[2]}): {e.message}", loc) from None
        prefix = f"{keys[2]}.{slug(rfmt)}"
        for canon, a in arrays.items():
            consts[f"{prefix}.{canon}"] = a
        stored = sum(a.size for canon, a in arrays.items() if canon.startswith("data"))
        what = f"{len(buckets)} bucket kernels, " if buckets is not None else ""
        ctx.info(f"sparse-format: @{f.name}: CSR ({len(data)} nonzeros) -> {rfmt} at build time: {what}{stored} stored "
                 f"values ({(stored - len(data)) / max(stored, 1):.0%} padding)", loc)
        return rfmt, prefix, arrays, buckets

    def _at_run_time(self, f: PrimFunc, site: CsrSite, fmt: str, n: CallTensor, b: Binding, used: set[str],
                     names: set[str], added: dict[str, PrimFunc], ctx: PassContext, loc: Loc | None) -> list[Binding]:
        """ELL(W) of an input operand: the conversion programs' calls, then the kernel's."""
        kind, w = parse_format(fmt) if fmt != "ell" and parse_hyb(fmt) is None else ("", 0)
        if kind != "ell":
            raise MlcError(f"sparse-format: --format {fmt} needs @{f.name}'s sparse operand as a build-time constant "
                           f"(its sizes depend on the structure); it reads graph values "
                           f"{', '.join('%' + n.args[[p.name for p in f.params].index(x.name)].name for x in site.params)}. "
                           f"Use ell:W, or convert beforehand (mlc sparse-inputs --format {fmt})", loc)
        bound = {v.name for p in site.params for d in p.shape for v in free_vars(d)}
        if not {v.name for v in free_vars(site.rows.length)} <= bound:
            raise MlcError(f"sparse-format: @{f.name}: its row count depends on more than the CSR arrays", loc)
        key = f"{f.name}/ell{w}"
        name = fresh_name(f"{f.name}_ell{w}", names) if key not in added else added[key].name
        if key not in added:
            names.add(name)
            conv_i, conv_d = ell_conversion(site, w, fresh_name(f"{f.name}_to_ell{w}", names))
            names.update((conv_i.name, conv_d.name))
            new = decompose(f, site, fmt, lambda a: (site.rows.length, Const(w)))
            added[key] = dataclasses.replace(new, name=name)
            added[key + "/i"], added[key + "/d"] = conv_i, conv_d
        conv_i, conv_d, new = added[key + "/i"], added[key + "/d"], added[key]
        arg_of = {p.name: a for p, a in zip(f.params, n.args)}
        csr = tuple(arg_of[p.name] for p in site.params)
        dt = site.params[2].dtype
        dims: dict[Var, Expr] = {}  # the program's shape symbols as the graph's dims
        for p, a in zip(f.params, n.args):
            if isinstance(a.type, TensorType) and a.type.shape is not None:
                dims.update({d: e for d, e in zip(p.shape, a.type.shape) if isinstance(d, Var)})
        rows = arith.simplify(substitute(site.rows.length, dims))
        out: list[Binding] = []
        extra: dict[str, Value] = {}
        for conv, canon, pname, dtype in ((conv_i, "indices_ell", format_arrays(new, f)[0], "i32"),
                                          (conv_d, "data_ell", format_arrays(new, f)[1], dt)):
            v = Value(fresh_name(canon, used), TensorType((rows, Const(w)), dtype))
            out.append(Binding(v, CallTensor(conv.name, csr, (), n.loc), b.loc))
            extra[pname] = v
        args = tuple(extra.get(p.name) or arg_of[p.name] for p in new.params[:len(new.params) - new.num_outputs])
        out.append(Binding(b.var, dataclasses.replace(n, func=new.name, args=args), b.loc))
        ctx.info(f"sparse-format: @{f.name}: CSR -> {fmt} at run time by @{conv_i.name} and @{conv_d.name} (rows x {w} "
                 f"entries each per call; a model's `profile()` times them beside @{new.name}, benchmarks/bench_sparse.py prints both)", loc)
        return out


__all__ = ["DEFAULT_POINT", "FORMAT_SPACE", "PARTS_SPACE", "SparseFormat", "apply_points", "check_format", "convert",
           "csr_constants", "ell_conversion", "format_trace", "format_workload", "slug", "trace_point", "tuned_points"]
