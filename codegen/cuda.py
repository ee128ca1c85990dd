"""Tensor programs -> CUDA C: one `__global__` kernel per top-level stage of a PrimFunc.

The input is loop-level IR (ir/tir_lower.py, the `lower-tir` stage; block form handed here is
lowered first, the same way). A PrimFunc's root holds allocations around a sequence of stages (loop
nests). Each stage becomes a kernel launched in order on one stream; root buffers of global scope
become device temporaries the runtime provides (sized from the dims at run time). Within a stage,
loops bound to `blockIdx.*` / `threadIdx.*` read the hardware indices (with a guard where a loop is
shorter than the launch), other loops stay C loops, a chain of lets and allocations is one C scope,
shared/local buffers become `__shared__` / register arrays, and a `ThreadAllReduce` keeps a per-thread
partial result in a register, combined with warp shuffles. Consecutive stages that only exchange data
within a thread block (row chains, `cuda_rows`) share one kernel, a barrier between them. A `GemmCall` stage is emitted by
`cuda_gemm` (tensor cores for f16, register tiles for f32).

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
from ..ir.expr import Bin, Const, Expr, Load, reduction_identity
from ..ir.tir import Allocate, AttrStmt, Buffer, For, IfStmt, Let, PrimFunc, Seq, Stmt, Store, ThreadAllReduce
from ..ir.tir_lower import lower_tir_func
from ..ir.tir_visit import StmtVisitor, buffers_used, loads_in, nodes, stored_buffers
from .abi import expr_to_json, signature_vars
from .cuda_expr import (
    COMPUTE_TYPE,
    FROM_FLOAT,
    MEM_TYPE,
    PRELUDE,
    TO_FLOAT,
    ExprEmitter,
    buf_name,
    ident,
    index_type,
    var_name,
)
from .cuda_rows import row_groups

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
    checks: bool = False  # some kernel calls mlc_check_range: the runtime reads the error word after a run


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
            "checks": f.checks,
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


def split_stages(func: PrimFunc) -> tuple[tuple[Buffer, ...], list[Stmt]]:
    """(root allocations, top-level stages) of a loop-level PrimFunc."""
    body, allocs = func.body, []
    while isinstance(body, Allocate):
        allocs.append(body.buffer)
        body = body.body
    stages = list(body.stmts) if isinstance(body, Seq) else [body]
    flat: list[Stmt] = []
    for s in stages:
        flat.extend(s.stmts if isinstance(s, Seq) else (s,))
    return tuple(allocs), flat


def _thread_extents(stage: Stmt) -> dict[str, Expr]:
    """Launch extent per thread tag: the largest constant extent, or the one symbolic extent."""
    out: dict[str, Expr] = {}
    for x in nodes(stage):
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
class _KernelEmitter(StmtVisitor):
    """Emits one stage's kernel body."""

    func: PrimFunc
    extents: dict[str, Expr]
    shared: dict[str, Buffer]
    kernel_id: int = -1  # the PrimFunc's position in the module (the error word names it)
    lines: list[str] = field(default_factory=list)
    depth: int = 1
    reduce_acc: tuple[Buffer, str] | None = None  # (accumulator, op) inside a cross-thread reduction
    views: dict[str, Buffer] = field(default_factory=dict)  # a flat view's name -> its parameter

    def __post_init__(self) -> None:
        self.ex = ExprEmitter(self.load, kernel_id=self.kernel_id)

    def out(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def ref(self, b: Buffer, idx: Sequence[Expr]) -> str:
        """`name[index]` of a 1-D access (lower-tir flattened every buffer, ir/flatten.py); a
        parameter's flat view is the parameter's pointer."""
        if len(idx) != 1 or len(b.shape) != 1:
            raise MlcError(f"codegen cuda: buffer {b.name} is accessed with {len(idx)} indices: the codegen "
                           f"takes flattened (1-D) accesses, run lower-tir first")
        return f"{buf_name(self.views.get(b.name, b))}[{self.ex(idx[0])}]"

    def load(self, e: Load) -> str:
        if self.reduce_acc is not None and e.buffer == self.reduce_acc[0]:
            return buf_name(e.buffer)  # the accumulator is a register
        ref = self.ref(e.buffer, e.indices)
        return f"{TO_FLOAT[e.buffer.dtype]}({ref})" if e.buffer.dtype in TO_FLOAT else ref

    def store_value(self, b: Buffer, value: str) -> str:
        if b.dtype in FROM_FLOAT:
            return f"{FROM_FLOAT[b.dtype]}({value})"
        return f"({MEM_TYPE[b.dtype]})({value})"

    # ---- statements (loop-level form, ir/tir_lower.py; dispatch is StmtVisitor's) ------------
    def stmt(self, s: Stmt) -> None:
        self.visit(s)

    def generic_visit(self, s: Stmt) -> None:
        raise MlcError(f"codegen cuda: cannot emit statement {type(s).__name__}")

    def visit_Seq(self, s: Seq) -> None:
        self.seq(s)

    def visit_For(self, s: For) -> None:
        self.loop(s)

    def visit_AttrStmt(self, s: AttrStmt) -> None:
        self.stmt(s.body)

    def visit_Store(self, s: Store) -> None:
        xr = self.reduce_acc
        if xr is not None and s.buffer == xr[0]:  # acc = acc OP x
            name, op, v = buf_name(s.buffer), xr[1], s.value
            assert isinstance(v, Bin) and v.op == op
            rhs = v.b if v.a == Load(s.buffer, s.indices) else v.a
            self.out(f"{name} = mlc_combine<{_REDUCE_OPS[op]}>({name}, {self.ex(rhs)});")
            return
        value = self.ex(s.value)
        if xr is not None and isinstance(s.value, Bin) and s.value.op == xr[1] \
                and isinstance(s.value.b, Load) and s.value.b.buffer == xr[0]:  # the write-back of the total
            ctype = COMPUTE_TYPE[s.buffer.dtype]
            value = f"mlc_combine<{_REDUCE_OPS[xr[1]]}>(({ctype})({self.ex(s.value.a)}), {buf_name(xr[0])})"
        self.out(f"{self.ref(s.buffer, s.indices)} = {self.store_value(s.buffer, value)};")

    def visit_IfStmt(self, s: IfStmt) -> None:
        self.out(f"if ({self.ex(s.cond)}) {{")
        self.nested(s.then)
        if s.orelse is not None:
            self.out("} else {")
            self.nested(s.orelse)
        self.out("}")

    def visit_Let(self, s: Let | Allocate) -> None:
        """A chain of lets and allocations is one C scope: the declarations, then the body."""
        self.out("{")
        self.depth += 1
        x: Stmt = s
        while isinstance(x, Let | Allocate):
            if isinstance(x, Let):
                t = index_type(x.var.dtype) if not any(loads_in(x.value)) else "auto"
                self.out(f"const {t} {var_name(x.var)} = {self.ex(x.value)};")
            else:
                self.declare_local(x.buffer)
            x = x.body
        self.stmt(x)
        self.depth -= 1
        self.out("}")

    visit_Allocate = visit_Let

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
            if guard:
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

    def declare_local(self, buf: Buffer) -> None:
        n = _elem_count(buf)
        if n is None:
            raise MlcError(f"codegen cuda: buffer {buf.name} ({buf.scope}) needs a constant size on the GPU")
        if buf.scope == "shared":
            self.out(f"__shared__ {MEM_TYPE[buf.dtype]} {buf_name(buf)}[{max(n, 1)}];")
        else:
            self.out(f"{MEM_TYPE[buf.dtype]} {buf_name(buf)}[{max(n, 1)}];")

    # ---- cross-thread reduction ---------------------------------------------------------------
    def visit_ThreadAllReduce(self, s: ThreadAllReduce) -> None:
        """Per-thread partials in a register, combined with warp shuffles (and shared memory across
        warps); thread 0 writes the total back."""
        lp, op = s.loop, s.op
        nt = arith.as_int(self.extents["threadIdx.x"])
        # 32 lanes reduce within their warp (shuffles only), so threadIdx.y / z may index warps of the block
        if nt is None or nt % 32 or (nt != 32 and any(t in self.extents for t in ("threadIdx.y", "threadIdx.z"))):
            raise MlcError("codegen cuda: a cross-thread reduction needs threadIdx.x only (or exactly 32 lanes on it), "
                           "with a multiple of 32 threads")
        v, start = var_name(lp.var), self.ex(lp.start)
        self.out("{")
        self.depth += 1
        self.out(f"const int {v} = {start} + (int)threadIdx.x;")
        ctype = COMPUTE_TYPE[s.acc.dtype]
        ident_v = self.ex(reduction_identity(op, s.acc.dtype))
        acc = buf_name(s.acc)
        self.out(f"{ctype} {acc} = {ident_v};")
        saved, self.reduce_acc = self.reduce_acc, (s.acc, op)
        if not arith.prove_equal(self.extents["threadIdx.x"], lp.extent):
            self.out(f"if ({v} - {start} < {self.ex(lp.extent)}) {{")
            self.nested(lp.body)
            self.out("}")
        else:
            self.stmt(lp.body)
        self.out(f"{acc} = mlc_block_reduce<{_REDUCE_OPS[op]}, {nt}>({acc}, ({ctype})({ident_v}));")
        self.out("if (threadIdx.x == 0) {")
        self.nested(s.result)
        self.out("}")
        self.reduce_acc = saved
        self.depth -= 1
        self.out("}")


def _launch_of(extents: dict[str, Expr]) -> tuple[tuple[Expr, Expr, Expr], tuple[int, int, int]]:
    grid = tuple(extents.get(f"blockIdx.{a}", Const(1)) for a in _AXES)
    block = tuple(arith.as_int(extents.get(f"threadIdx.{a}", Const(1))) or 1 for a in _AXES)
    if block[0] * block[1] * block[2] > MAX_THREADS:
        raise MlcError(f"codegen cuda: {block[0] * block[1] * block[2]} threads per block (max {MAX_THREADS})")
    return grid, block  # type: ignore[return-value]


def lower_func(func: PrimFunc, gemm_config: tuple[int, ...] | None = None, arch: str = "sm_90", kernel_id: int = -1
               ) -> tuple[CudaFunc, list[str]]:
    """CUDA C of every stage kernel of `func` and how to launch them (`kernel_id`: its position in
    the module, which a failed index check reports)."""
    from .cuda_gemm import emit_gemm_stage

    dims = signature_vars(func)
    if len({d.name for d in dims}) != len(dims):
        raise MlcError(f"codegen cuda of prim @{func.name}: two different dims share a name", func.loc)
    allocs, stages = split_stages(func)
    views = {v.buffer.name: v.source for v in func.views}
    temps = tuple(b for b in allocs if b.scope == "global")
    root_shared = {b.name: b for b in allocs if b.scope == "shared"}
    root_local = {b.name: b for b in allocs if b.scope == "local"}
    written = set()
    for s in stages:
        written |= {views[n].name if n in views else n for n in stored_buffers(s)}

    args = []
    for b in func.params + temps:
        const = "const " if b.name not in written else ""
        args.append(f"{const}{MEM_TYPE[b.dtype]}* __restrict__ {buf_name(b)}")
    args += [f"long long {ident('d_', d.name)}" for d in dims]
    head = ", ".join(args)
    unpack = [f"  const {index_type(d.dtype)} {var_name(d)} = ({index_type(d.dtype)}){ident('d_', d.name)};" for d in dims]
    src: list[str] = []
    launches: list[Launch] = []
    gemms = [emit_gemm_stage(func, stage, gemm_config, arch) for stage in stages]  # type: ignore[arg-type]
    extents = [None if g is not None else _thread_extents(s) for s, g in zip(stages, gemms)]
    groups = row_groups(stages, extents, {b.name for b in func.params + temps}, views)
    for k, group in enumerate(groups):
        sym = ident("mlc_", f"{func.name}_k{k}")
        gemm = gemms[group[0]]
        if gemm is not None:
            body, grid, block, smem = gemm
            launches.append(Launch(sym, grid, block, smem))
            src.append(f'extern "C" __global__ void __launch_bounds__({block[0] * block[1] * block[2]}) {sym}({head}) {{')
            src += unpack + body + ["}", ""]
            continue
        ext = extents[group[0]]
        assert ext is not None
        grid, block = _launch_of(ext)
        used = set().union(*(buffers_used(stages[j]) for j in group))
        shared = {n: b for n, b in root_shared.items() if n in used}
        for j in group:
            shared |= {x.buffer.name: x.buffer for x in nodes(stages[j])
                       if isinstance(x, Allocate) and x.buffer.scope == "shared"}
        em = _KernelEmitter(func, ext, shared, kernel_id, views=views)
        for b in list(root_shared.values()) + list(root_local.values()):
            if b.name in used:
                em.declare_local(b)
        sbytes = sum((_elem_count(b) or 0) * _bytes(b.dtype) for b in shared.values())
        if sbytes > SHARED_LIMIT:
            raise MlcError(f"codegen cuda of prim @{func.name}: stage {group[0]} needs {sbytes} bytes of shared memory "
                           f"(limit {SHARED_LIMIT}); stage a smaller tile (compute_at the cache into a tile loop)")
        # A stage reads what other threads of the block wrote before the barrier (the row's max, sum,
        # mean). nvcc takes a __restrict__ pointer's memory as untouched by the barrier and moved such
        # loads above it (rows of 32 were garbage on an H100): an empty asm that takes the group's
        # written pointers and clobbers memory after each barrier keeps the loads below it, while the
        # pointers stay __restrict__ (a stage's loop still loads the row's max once, not per element).
        group_writes = {views[n].name if n in views else n for j in group for n in stored_buffers(stages[j])}
        fence = ", ".join(f'"l"({buf_name(b)})' for b in func.params + temps if b.name in group_writes)
        for n, j in enumerate(group):
            if n:
                em.out("__syncthreads();  // the next stage reads what this block's threads wrote (cuda_rows)")
                em.out(f'asm volatile("" :: {fence} : "memory");  // no load of these moves above the barrier')
            em.stmt(stages[j])
        launches.append(Launch(sym, grid, block))
        src.append(f'extern "C" __global__ void __launch_bounds__({block[0] * block[1] * block[2]}) {sym}({head}) {{')
        src += unpack + em.lines + ["}", ""]
    checks = any("mlc_check_range(" in line for line in src)
    return CudaFunc(func.name, func.params, func.num_outputs, tuple(d.name for d in dims), temps, tuple(launches),
                    checks), src


def lower_to_cuda(funcs: Sequence[PrimFunc], arch: str = "sm_90", gemm_config: tuple[int, ...] | None = None) -> CudaSource:
    """CUDA C source of all kernels of `funcs`, with launch metadata (`gemm_config`: a tile of
    `cuda_gemm.TC_CONFIGS` / `SIMT_CONFIGS` for tensorized GEMM stages instead of the default)."""
    funcs = [lower_tir_func(f) for f in funcs]  # block form (no lower-tir run yet): lowered here, by ir/
    lines = [PRELUDE]
    from .cuda_gemm import GEMM_PRELUDE

    lines.append(GEMM_PRELUDE)
    out = []
    for k, f in enumerate(funcs):
        cf, src = lower_func(f, gemm_config, arch, k)
        out.append(cf)
        lines += src
    return CudaSource("\n".join(lines), tuple(out), arch)
