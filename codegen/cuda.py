"""Tensor programs -> CUDA C: one `__global__` kernel per top-level stage of a PrimFunc.

A PrimFunc's root holds a sequence of stages (loop nests) and the buffers they share. Each stage
becomes a kernel launched in order on one stream; root buffers of global scope become device
temporaries the runtime provides (sized from the dims at run time). Within a stage, loops bound to
`blockIdx.*` / `threadIdx.*` read the hardware indices (with a guard where a loop is shorter than
the launch), other loops stay C loops, shared/local buffers become `__shared__` / register arrays,
and a reduction whose reduce loop is bound to `threadIdx.x` becomes a per-thread partial result
combined with warp shuffles (cross-thread reduction). A stage holding a block tensorized with a
GEMM intrinsic is emitted by `cuda_gemm` (tensor cores for f16, register tiles for f32).

Every kernel of a PrimFunc takes the same arguments: the PrimFunc's buffers, its temporaries, then
its dims (`kernel_signature` order, as `long long`), so the launcher is uniform; grids are
expressions of the dims evaluated at launch time, so symbolic shapes need no recompilation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.expr import Bin, Const, Expr, Load, free_vars, reduction_identity
from ..ir.tir import BlockStmt, Buffer, For, IfStmt, Let, PrimFunc, Seq, Stmt, Store
from .abi import expr_to_json, signature_vars
from .cuda_expr import COMPUTE_TYPE, MEM_TYPE, PRELUDE, ExprEmitter, buf_name, ident, index_type, var_name

MAX_THREADS = 1024
SHARED_LIMIT = 48 * 1024
_REDUCE_OPS = {"add": 0, "mul": 1, "max": 2, "min": 3}
_AXES = "xyz"


@dataclass(frozen=True)
class Launch:
    """One kernel of a PrimFunc: symbol, grid (expressions of the dims), block, dynamic shared bytes."""

    symbol: str
    grid: tuple[Expr, Expr, Expr]
    block: tuple[int, int, int]
    shared_bytes: int = 0


@dataclass(frozen=True)
class CudaFunc:
    name: str
    params: tuple[Buffer, ...]
    num_outputs: int
    dims: tuple[str, ...]
    temps: tuple[Buffer, ...]
    launches: tuple[Launch, ...]


@dataclass(frozen=True)
class CudaSource:
    """CUDA C of a module of kernels and how to launch them (`metadata` is JSON, never pickle)."""

    source: str
    funcs: tuple[CudaFunc, ...]
    arch: str = "sm_90"

    def metadata(self) -> str:
        def shape(b: Buffer) -> list[object]:
            return [expr_to_json(d) for d in b.shape]

        return json.dumps({"version": 1, "arch": self.arch, "kernels": [{
            "name": f.name, "num_outputs": f.num_outputs, "dims": list(f.dims),
            "params": [{"name": b.name, "dtype": b.dtype, "shape": shape(b)} for b in f.params],
            "temps": [{"name": b.name, "dtype": b.dtype, "shape": shape(b)} for b in f.temps],
            "launches": [{"symbol": k.symbol, "grid": [expr_to_json(g) for g in k.grid], "block": list(k.block),
                          "shared_bytes": k.shared_bytes} for k in f.launches],
        } for f in self.funcs]}, sort_keys=True)


def _elem_count(b: Buffer) -> int | None:
    n = 1
    for d in b.shape:
        c = arith.as_int(d)
        if c is None:
            return None
        n *= c
    return n


def _bytes(dtype: str) -> int:
    return {"bool": 1, "i8": 1, "u8": 1, "i16": 2, "u16": 2, "f16": 2, "bf16": 2, "i32": 4, "u32": 4,
            "f32": 4}.get(dtype, 8)


def _walk(s: Stmt):  # type: ignore[no-untyped-def]
    yield s
    if isinstance(s, For | Let):
        yield from _walk(s.body)
    elif isinstance(s, BlockStmt):
        if s.init is not None:
            yield from _walk(s.init)
        yield from _walk(s.body)
    elif isinstance(s, Seq):
        for x in s.stmts:
            yield from _walk(x)
    elif isinstance(s, IfStmt):
        yield from _walk(s.then)
        if s.orelse is not None:
            yield from _walk(s.orelse)


def _exprs(s: Stmt) -> list[Expr]:
    out: list[Expr] = []
    for x in _walk(s):
        if isinstance(x, For):
            out += [x.start, x.extent]
        elif isinstance(x, BlockStmt):
            out += [iv.binding for iv in x.iters]
        elif isinstance(x, Store):
            out += [*x.indices, x.value]
        elif isinstance(x, IfStmt):
            out.append(x.cond)
        elif isinstance(x, Let):
            out.append(x.value)
    return out


def _loads(e: Expr) -> list[Load]:
    from ..ir.expr import children

    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Load):
            out.append(x)
        stack.extend(children(x))
    return out


def buffers_used(s: Stmt) -> set[str]:
    names = {x.buffer.name for x in _walk(s) if isinstance(x, Store)}
    for e in _exprs(s):
        names |= {ld.buffer.name for ld in _loads(e)}
    return names


def stored_buffers(s: Stmt) -> set[str]:
    return {x.buffer.name for x in _walk(s) if isinstance(x, Store)}


def split_stages(func: PrimFunc) -> tuple[tuple[Buffer, ...], list[Stmt]]:
    """(root allocations, top-level stages) of a PrimFunc."""
    body, allocs = func.body, ()
    if isinstance(body, BlockStmt) and not body.iters and body.init is None:
        allocs, body = body.alloc_buffers, body.body
    stages = list(body.stmts) if isinstance(body, Seq) else [body]
    flat: list[Stmt] = []
    for s in stages:
        flat.extend(s.stmts if isinstance(s, Seq) else (s,))
    return allocs, flat


def _thread_extents(stage: Stmt) -> dict[str, Expr]:
    """Launch extent per thread tag: the largest constant extent, or the one symbolic extent."""
    out: dict[str, Expr] = {}
    for x in _walk(stage):
        if not (isinstance(x, For) and x.kind == "thread"):
            continue
        tag = x.thread_tag
        if tag.startswith("vthread"):
            raise MlcError(f"codegen cuda: virtual threads ({tag}) are not supported; bind to blockIdx/threadIdx")
        ext = arith.simplify(x.extent)
        if tag.startswith("threadIdx") and arith.as_int(ext) is None:
            raise MlcError(f"codegen cuda: loop {x.var.name} bound to {tag} needs a constant extent, got a symbolic one")
        if tag not in out:
            out[tag] = ext
            continue
        a, b = arith.as_int(out[tag]), arith.as_int(ext)
        if a is not None and b is not None:
            out[tag] = Const(max(a, b))
        elif not arith.prove_equal(out[tag], ext):
            raise MlcError(f"codegen cuda: loops bound to {tag} have different symbolic extents")
    return out


@dataclass
class _KernelEmitter:
    """Emits one stage's kernel body."""

    func: PrimFunc
    extents: dict[str, Expr]
    shared: dict[str, Buffer]
    lines: list[str] = field(default_factory=list)
    depth: int = 1
    reduce_acc: tuple[str, str, Store] | None = None  # (acc var, op, update store) inside a cross-thread reduction

    def __post_init__(self) -> None:
        self.ex = ExprEmitter(self.load)

    def out(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def flat(self, b: Buffer, idx: Sequence[Expr]) -> str:
        if len(idx) != len(b.shape):
            raise MlcError(f"codegen cuda: buffer {b.name} has {len(b.shape)} dims but is indexed with {len(idx)}")
        if not idx:
            return "0"
        acc = self.ex(idx[0])
        for d, i in zip(b.shape[1:], idx[1:]):
            dim = self.ex(d)
            acc = f"({acc}) * {dim} + {self.ex(i)}" if dim != "1" else f"({acc}) + {self.ex(i)}"
        return acc

    def load(self, e: Load) -> str:
        ref = f"{buf_name(e.buffer)}[{self.flat(e.buffer, e.indices)}]"
        if e.buffer.dtype == "f16":
            return f"__half2float({ref})"
        if e.buffer.dtype == "bf16":
            return f"__bfloat162float({ref})"
        return ref

    def store_value(self, b: Buffer, value: str) -> str:
        if b.dtype == "f16":
            return f"__float2half_rn({value})"
        if b.dtype == "bf16":
            return f"__float2bfloat16_rn({value})"
        return f"({MEM_TYPE[b.dtype]})({value})"

    # ---- statements -------------------------------------------------------------------------
    def stmt(self, s: Stmt) -> None:
        if isinstance(s, Seq):
            self.seq(s)
        elif isinstance(s, For):
            self.loop(s)
        elif isinstance(s, BlockStmt):
            self.block(s)
        elif isinstance(s, Store):
            self.out(f"{buf_name(s.buffer)}[{self.flat(s.buffer, s.indices)}] = "
                     f"{self.store_value(s.buffer, self.ex(s.value))};")
        elif isinstance(s, IfStmt):
            self.out(f"if ({self.ex(s.cond)}) {{")
            self.nested(s.then)
            if s.orelse is not None:
                self.out("} else {")
                self.nested(s.orelse)
            self.out("}")
        elif isinstance(s, Let):
            self.out("{")
            self.depth += 1
            self.out(f"const {index_type(s.var.dtype) if not _loads(s.value) else 'auto'} {var_name(s.var)} = "
                     f"{self.ex(s.value)};")
            self.stmt(s.body)
            self.depth -= 1
            self.out("}")
        else:
            raise MlcError(f"codegen cuda: cannot emit statement {type(s).__name__}")

    def nested(self, s: Stmt) -> None:
        self.depth += 1
        self.stmt(s)
        self.depth -= 1

    def seq(self, s: Seq) -> None:
        """Children in order; a barrier after a child that writes shared memory another child reads,
        and one before the first such writer so that a previous iteration's readers are done."""
        kids = s.stmts
        writes = [stored_buffers(k) & set(self.shared) for k in kids]
        if any(writes):
            self.out("__syncthreads();")
        for k, w in zip(kids, writes):
            self.stmt(k)
            if w:
                self.out("__syncthreads();")

    def loop(self, s: For) -> None:
        v, start = var_name(s.var), self.ex(s.start)
        if s.kind == "thread":
            tag = s.thread_tag
            launch = self.extents[tag]
            self.out("{")
            self.depth += 1
            self.out(f"const int {v} = {start} + (int){tag};")
            guard = not arith.prove_equal(launch, s.extent)
            xr = self._reduce_block(s) if tag == "threadIdx.x" else None
            if xr is not None:
                self.cross_thread_reduce(s, xr, guard)
            elif guard:
                self.out(f"if ({v} - {start} < {self.ex(s.extent)}) {{")
                self.nested(s.body)
                self.out("}")
            else:
                self.stmt(s.body)
            self.depth -= 1
            self.out("}")
            return
        if s.kind == "parallel":
            raise MlcError(f"codegen cuda: loop {s.var.name} is parallel (a CPU schedule); bind it to GPU threads")
        if s.kind in ("unrolled", "vectorized") and arith.as_int(s.extent) is not None:
            self.out("#pragma unroll")
        self.out(f"for (int {v} = {start}; {v} < {start} + {self.ex(s.extent)}; ++{v}) {{")
        self.nested(s.body)
        self.out("}")

    def block(self, b: BlockStmt) -> None:
        self.out("{")
        self.depth += 1
        for iv in b.iters:
            t = "auto" if _loads(iv.binding) else index_type(iv.var.dtype)
            self.out(f"const {t} {var_name(iv.var)} = {self.ex(iv.binding)};")
        for buf in b.alloc_buffers:
            self.declare_local(buf)
        acc = self.reduce_acc
        if acc is not None and acc[2] is b.body:
            name, op, st = acc
            self.out(f"{name} = mlc_combine<{_REDUCE_OPS[op]}>({name}, {self.ex(_update_rhs(st, op))});")
        else:
            if b.init is not None:
                reduce = [iv for iv in b.iters if iv.kind == "R"]
                if reduce:
                    self.out("if (" + " && ".join(f"{var_name(iv.var)} == 0" for iv in reduce) + ") {")
                    self.nested(b.init)
                    self.out("}")
                else:
                    self.stmt(b.init)
            self.stmt(b.body)
        self.depth -= 1
        self.out("}")

    def declare_local(self, buf: Buffer) -> None:
        n = _elem_count(buf)
        if n is None:
            raise MlcError(f"codegen cuda: buffer {buf.name} ({buf.scope}) needs a constant size on the GPU")
        if buf.scope == "shared":
            self.out(f"__shared__ {MEM_TYPE[buf.dtype]} {buf_name(buf)}[{max(n, 1)}];")
        else:
            self.out(f"{MEM_TYPE[buf.dtype]} {buf_name(buf)}[{max(n, 1)}];")

    # ---- cross-thread reduction ---------------------------------------------------------------
    def _reduce_block(self, lp: For) -> tuple[BlockStmt, str, list[Expr]] | None:
        """The block whose reduce iterator this thread loop feeds, its combine op and spatial guards."""
        found: list[tuple[BlockStmt, list[Expr]]] = []

        def visit(s: Stmt, conds: list[Expr]) -> None:
            if isinstance(s, BlockStmt):
                if any(iv.kind == "R" and lp.var in free_vars(iv.binding) for iv in s.iters):
                    found.append((s, conds))
                return
            if isinstance(s, IfStmt):
                visit(s.then, conds + [s.cond])
                if s.orelse is not None:
                    visit(s.orelse, conds)
                return
            for k in ((s.body,) if isinstance(s, For | Let) else s.stmts if isinstance(s, Seq) else ()):
                visit(k, conds)

        visit(lp.body, [])
        if not found:
            return None
        if len(found) > 1:
            raise MlcError(f"codegen cuda: thread loop {lp.var.name} feeds the reductions of several blocks")
        b, conds = found[0]
        st = b.body
        op = _update_op(st) if isinstance(st, Store) else None
        if op is None:
            raise MlcError(f"codegen cuda: block {b.name} reduces across threads but is not an update "
                           f"X[i] = X[i] op f with op in add/mul/max/min")
        return b, op, conds

    def cross_thread_reduce(self, lp: For, xr: tuple[BlockStmt, str, list[Expr]], guard: bool) -> None:
        b, op, conds = xr
        st = b.body
        assert isinstance(st, Store)
        nt = arith.as_int(self.extents["threadIdx.x"])
        if nt is None or nt % 32 or any(t in self.extents for t in ("threadIdx.y", "threadIdx.z")):
            raise MlcError("codegen cuda: a cross-thread reduction needs threadIdx.x only, with a multiple of 32 threads")
        inner = {x.var for x in _walk(lp) if isinstance(x, For)} | {iv.var for iv in b.iters if iv.kind == "R"}
        spatial = [iv for iv in b.iters if iv.kind == "S"]
        for iv in spatial:
            if free_vars(iv.binding) & inner:
                raise MlcError(f"codegen cuda: block {b.name}: spatial iterator {iv.var.name} varies across the reduction threads")
        from ..passes.schedule.scope import conjuncts

        outer_conds = [c for cond in conds for c in conjuncts(cond) if not free_vars(c) & inner]
        ctype = COMPUTE_TYPE[st.buffer.dtype]
        ident_v = self.ex(reduction_identity(op, st.buffer.dtype))
        acc = f"acc_{len(self.lines)}"
        self.out(f"{ctype} {acc} = {ident_v};")
        saved, self.reduce_acc = self.reduce_acc, (acc, op, st)
        if guard:
            self.out(f"if ({var_name(lp.var)} - {self.ex(lp.start)} < {self.ex(lp.extent)}) {{")
            self.nested(lp.body)
            self.out("}")
        else:
            self.stmt(lp.body)
        self.reduce_acc = saved
        self.out(f"{acc} = mlc_block_reduce<{_REDUCE_OPS[op]}, {nt}>({acc}, ({ctype})({ident_v}));")
        self.out("if (threadIdx.x == 0) {")
        self.depth += 1
        for iv in spatial:
            self.out(f"const {index_type(iv.var.dtype)} {var_name(iv.var)} = {self.ex(iv.binding)};")
        if outer_conds:
            self.out("if (" + " && ".join(self.ex(c) for c in outer_conds) + ") {")
        start = self.ex(b.init.value) if isinstance(b.init, Store) else self.load(Load(st.buffer, st.indices))
        self.out(f"{buf_name(st.buffer)}[{self.flat(st.buffer, st.indices)}] = "
                 f"{self.store_value(st.buffer, f'mlc_combine<{_REDUCE_OPS[op]}>(({ctype})({start}), {acc})')};")
        if outer_conds:
            self.out("}")
        self.depth -= 1
        self.out("}")


def _update_op(st: Store) -> str | None:
    v = st.value
    if isinstance(v, Bin) and v.op in _REDUCE_OPS:
        me = Load(st.buffer, st.indices)
        if v.a == me or v.b == me:
            return v.op
    return None


def _update_rhs(st: Store, op: str) -> Expr:
    v = st.value
    assert isinstance(v, Bin)
    return v.b if v.a == Load(st.buffer, st.indices) else v.a


def _launch_of(extents: dict[str, Expr]) -> tuple[tuple[Expr, Expr, Expr], tuple[int, int, int]]:
    grid = tuple(extents.get(f"blockIdx.{a}", Const(1)) for a in _AXES)
    block = tuple(arith.as_int(extents.get(f"threadIdx.{a}", Const(1))) or 1 for a in _AXES)
    if block[0] * block[1] * block[2] > MAX_THREADS:
        raise MlcError(f"codegen cuda: {block[0] * block[1] * block[2]} threads per block (max {MAX_THREADS})")
    return grid, block  # type: ignore[return-value]


def lower_func(func: PrimFunc, gemm_config: tuple[int, ...] | None = None, arch: str = "sm_90"
               ) -> tuple[CudaFunc, list[str]]:
    """CUDA C of every stage kernel of `func` and how to launch them."""
    from .cuda_gemm import emit_gemm_stage

    dims = signature_vars(func)
    if len({d.name for d in dims}) != len(dims):
        raise MlcError(f"codegen cuda of prim @{func.name}: two different dims share a name", func.loc)
    allocs, stages = split_stages(func)
    temps = tuple(b for b in allocs if b.scope == "global")
    root_shared = {b.name: b for b in allocs if b.scope == "shared"}
    root_local = {b.name: b for b in allocs if b.scope == "local"}
    written = set()
    for s in stages:
        written |= stored_buffers(s)
    args = []
    for b in func.params + temps:
        const = "const " if b.name not in written else ""
        args.append(f"{const}{MEM_TYPE[b.dtype]}* __restrict__ {buf_name(b)}")
    args += [f"long long {ident('d_', d.name)}" for d in dims]
    head = ", ".join(args)
    unpack = [f"  const {index_type(d.dtype)} {var_name(d)} = ({index_type(d.dtype)}){ident('d_', d.name)};" for d in dims]
    src: list[str] = []
    launches: list[Launch] = []
    for k, stage in enumerate(stages):
        sym = ident("mlc_", f"{func.name}_k{k}")
        gemm = emit_gemm_stage(func, stage, gemm_config, arch)  # type: ignore[arg-type]
        if gemm is not None:
            body, grid, block, smem = gemm
            launches.append(Launch(sym, grid, block, smem))
            src.append(f'extern "C" __global__ void __launch_bounds__({block[0] * block[1] * block[2]}) {sym}({head}) {{')
            src += unpack + body + ["}", ""]
            continue
        extents = _thread_extents(stage)
        grid, block = _launch_of(extents)
        used = buffers_used(stage)
        shared = {n: b for n, b in root_shared.items() if n in used}
        shared |= {b.name: b for x in _walk(stage) if isinstance(x, BlockStmt) for b in x.alloc_buffers
                   if b.scope == "shared"}
        em = _KernelEmitter(func, extents, shared)
        for b in list(root_shared.values()) + list(root_local.values()):
            if b.name in used:
                em.declare_local(b)
        sbytes = sum((_elem_count(b) or 0) * _bytes(b.dtype) for b in shared.values())
        if sbytes > SHARED_LIMIT:
            raise MlcError(f"codegen cuda of prim @{func.name}: stage {k} needs {sbytes} bytes of shared memory "
                           f"(limit {SHARED_LIMIT}); stage a smaller tile (compute_at the cache into a tile loop)")
        em.stmt(stage)
        launches.append(Launch(sym, grid, block))
        src.append(f'extern "C" __global__ void __launch_bounds__({block[0] * block[1] * block[2]}) {sym}({head}) {{')
        src += unpack + em.lines + ["}", ""]
    return CudaFunc(func.name, func.params, func.num_outputs, tuple(d.name for d in dims), temps, tuple(launches)), src


def lower_to_cuda(funcs: Sequence[PrimFunc], arch: str = "sm_90", gemm_config: tuple[int, ...] | None = None) -> CudaSource:
    """CUDA C source of all kernels of `funcs`, with launch metadata (`gemm_config`: a tile of
    `cuda_gemm.TC_CONFIGS` / `SIMT_CONFIGS` for tensorized GEMM stages instead of the default)."""
    lines = [PRELUDE]
    from .cuda_gemm import GEMM_PRELUDE

    lines.append(GEMM_PRELUDE)
    out = []
    for f in funcs:
        cf, src = lower_func(f, gemm_config, arch)
        out.append(cf)
        lines += src
    return CudaSource("\n".join(lines), tuple(out), arch)
