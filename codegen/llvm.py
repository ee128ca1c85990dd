"""Tensor programs (`PrimFunc`) -> textual LLVM IR through llvmlite.

Kernel ABI. Every PrimFunc `@f` becomes an exported C function

    void f(void **buffers, int64_t *dims)

`buffers[i]` is the data pointer of `f.params[i]` (row-major, contiguous, element type of the
buffer dtype; bool is one byte, bf16 is stored and computed as f32, as in the reference semantics).
`dims[j]` is the value of the j-th name of `kernel_signature(f)`: the symbolic dims of the buffer
shapes in order of first appearance, then the remaining `scalar_params`. One kernel serves every
value of the dims; strides are computed from them at run time. Buffers must not overlap (they are
passed to the body as `noalias` pointers, which lets LLVM keep accumulators in registers).
The module also exports `__mlc_kernels` (a NUL-terminated JSON description of the kernels, so an
object file is self-describing) and `__mlc_parallel_launch` (a pointer the loader sets to the
thread-pool launcher of codegen/parallel.py).

Loops: `serial` loops are plain loops; `unrolled` loops with a constant extent are fully unrolled
here (others get llvm.loop.unroll metadata); `vectorized` loops whose body allows it become explicit
<W x T> vector code (contiguous loads/stores, broadcast of loop-invariant values, constant lane
strides as scalar accesses at constant offsets, gathers/scatters otherwise; an `if` whose condition
differs between lanes becomes masked loads/stores), strip-mined with a scalar tail when the extent
is symbolic; other vectorized loops (codegen/vectorize.py decides)
are scalar with llvm.loop.vectorize metadata. `parallel` loop bodies are outlined into chunk
functions run on all cores by the launcher. GPU `thread` loops run serially (a `ThreadAllReduce`
with one accumulator). Float ops get `contract` (FMA); ops inside `attr "reduction"` regions also
get `reassoc nsz` so LLVM may reorder the reduction.

The input is loop-level IR (ir/tir_lower.py, the `lower-tir` stage): block form handed to
`lower_to_llvm` is lowered first, the same way, so block semantics live in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import llvmlite.ir as ir

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.dtype import is_float
from ..ir.expr import Bin, Const, Expr, Var, free_vars, reduction_identity
from ..ir.tir import Allocate, AttrStmt, Buffer, For, GemmCall, IfStmt, Let, PrimFunc, Seq, Stmt, Store, ThreadAllReduce
from ..ir.tir_lower import lower_tir_func
from ..ir.tir_visit import StmtVisitor, has_loop, kids, stores_in
from .abi import INDEX_ERROR_SYMBOL, META_SYMBOL, kernel_metadata, kernel_signature, signature_vars
from .cpu import CpuTarget
from .llvm_expr import I1, I8, I32, I64, ExprEmitter, Lin, ModuleCtx, fbits, is_vec, mem_type, nbytes, type_suffix
from .parallel import LAUNCH_SYMBOL
from .vectorize import can_vectorize

__all__ = ["kernel_signature", "lower_to_llvm", "META_SYMBOL"]

VOIDP = I8.as_pointer()
MAX_UNROLL = 256  # constant extents up to this are unrolled here; beyond, metadata asks LLVM
MAX_VECTOR = 64  # widest explicit vector; longer vectorized loops are strip-mined
STACK_LIMIT = 64 * 1024  # constant-size block allocations up to this many bytes live on the stack


class _Emitter(ExprEmitter, StmtVisitor):
    """Lowers statements into one LLVM function (loops, blocks, stores, parallel outlining)."""

    def store(self, s: Store) -> None:
        buf = s.buffer
        ptr = self.buffer_ptr(buf, s.loc)
        val = self.convert(self.expr(s.value), s.value.dtype, buf.dtype)
        idx = self.flat_index(buf, s.indices, s.loc)
        b = self.b
        if buf.dtype == "bool":
            val = b.zext(self.vec_if(val), ir.VectorType(I8, self.width) if is_vec(val) else I8)
        if is_vec(idx):
            v = self.vec(val)
            if isinstance(idx, Lin) and idx.stride == 1:
                p = b.bitcast(b.gep(ptr, [idx.base], inbounds=True), v.type.as_pointer())
                align = nbytes(mem_type(buf.dtype))
                if self.mask is not None:
                    fn = self.ctx.declare(f"llvm.masked.store.{type_suffix(v.type)}.p0", ir.VoidType(),
                                          [v.type, v.type.as_pointer(), I32, self.mask.type])
                    b.call(fn, [v, p, ir.Constant(I32, align), self.mask])
                else:
                    b.store(v, p, align=align)
                return
            if isinstance(idx, Lin) and idx.stride != 0:
                # a constant stride (a channel-vector tile written back to NCHW): each lane stores at
                # base + lane * stride, a scalar address with a constant offset, not a lane of a vector
                # index that LLVM would compute and extract per lane
                for lane in range(self.width):
                    with self.lane_guard(lane):
                        at = b.add(idx.base, ir.Constant(idx.base.type, idx.stride * lane), flags=["nsw"])
                        b.store(b.extract_element(v, ir.Constant(I32, lane)), b.gep(ptr, [at], inbounds=True))
                return
            iv = self.vec(idx)
            for lane in range(self.width):
                k = ir.Constant(I32, lane)
                with self.lane_guard(lane):
                    b.store(b.extract_element(v, k), b.gep(ptr, [b.extract_element(iv, k)], inbounds=True))
            return
        if isinstance(idx, Lin):
            idx = idx.base
        b.store(self.scalar(val), b.gep(ptr, [idx], inbounds=True))

    # ---------------------------------------------------------------- statements
    # (loop-level form only: ir/tir_lower.py has removed blocks; dispatch is StmtVisitor's)
    def stmt(self, s: Stmt) -> None:
        self.visit(s)

    def generic_visit(self, s: Stmt) -> None:
        raise self.err(f"cannot lower statement {type(s).__name__}")

    def visit_Seq(self, s: Seq) -> None:
        for x in s.stmts:
            self.stmt(x)

    def visit_Store(self, s: Store) -> None:
        self.store(s)

    def visit_For(self, s: For) -> None:
        self.loop(s)

    def visit_IfStmt(self, s: IfStmt) -> None:
        c = self.convert(self.expr(s.cond), s.cond.dtype, "bool")
        if is_vec(c):
            self.masked_if(self.vec(c), s)
            return
        cond = self.scalar(c)
        if s.orelse is None:
            with self.b.if_then(cond):
                self.stmt(s.then)
        else:
            with self.b.if_else(cond) as (then, other):
                with then:
                    self.stmt(s.then)
                with other:
                    self.stmt(s.orelse)

    def visit_Let(self, s: Let) -> None:
        self.bind(s.var, self.expr(s.value), s.value.dtype, lambda: self.stmt(s.body), definition=s.value)

    def visit_AttrStmt(self, s: AttrStmt) -> None:
        """`reduction`: float ops of the update get `reassoc nsz` so LLVM may reorder the reduction."""
        old_fast = self.fast
        self.fast = old_fast or s.key == "reduction"
        try:
            self.stmt(s.body)
        finally:
            self.fast = old_fast

    def visit_Allocate(self, s: Allocate) -> None:
        p = self.allocate(s.buffer)
        views = [v.buffer for v in self.func.views if v.source == s.buffer]
        for v in views:  # accessed through its flat view only (one pointer: no noalias copies)
            self.bufs[v] = self.bufs.pop(s.buffer)
        self.stmt(s.body)
        if p is not None:
            self.b.call(self.ctx.declare("free", ir.VoidType(), [VOIDP]), [p])
        self.bufs.pop(s.buffer, None)
        for v in views:
            self.bufs.pop(v, None)

    def visit_ThreadAllReduce(self, s: ThreadAllReduce) -> None:
        """On the CPU the thread loop runs serially: one accumulator sees every partial."""
        ident = reduction_identity(s.op, s.acc.dtype)
        self.visit_Allocate(Allocate(s.acc, Seq((Store(s.acc, (Const(0),), ident), s.loop, s.result))))

    def visit_GemmCall(self, s: GemmCall) -> None:
        raise self.err(f"codegen: the GEMM intrinsic on %{s.c.name} has no CPU template (a CUDA schedule?)", s.loc)

    def masked_if(self, cond: ir.Value, s: IfStmt) -> None:
        """Both branches run under lane masks, each skipped when no lane of it is active."""
        b = self.b
        outer = self.mask
        then_m = cond if outer is None else b.and_(cond, outer)
        branches = [(then_m, s.then)]
        if s.orelse is not None:
            neg = b.xor(cond, self.const_of(cond.type, 1))
            branches.append((neg if outer is None else b.and_(neg, outer), s.orelse))
        any_fn = self.ctx.declare(f"llvm.vector.reduce.or.{type_suffix(cond.type)}", I1, [cond.type])
        try:
            for m, body in branches:
                with b.if_then(b.call(any_fn, [m])):
                    self.mask = m
                    self.stmt(body)
        finally:
            self.mask = outer

    def bind(self, var: Var, value: ir.Value | Lin, dtype: str, body: Callable[[], None],
             rng: tuple[int, int] | None = None, definition: Expr | None = None) -> None:
        """Run `body` with `var` bound (and its constant range or defining expression known)."""
        old, old_rng, old_def = self.env.get(var), self.ranges.pop(var, None), self.defs.pop(var, None)
        self.env[var] = self.convert(value, dtype, var.dtype)
        if rng is not None:
            self.ranges[var] = rng
        if definition is not None and not is_float(var.dtype):
            self.defs[var] = definition
        try:
            body()
        finally:
            self.ranges.pop(var, None)
            self.defs.pop(var, None)
            if old_rng is not None:
                self.ranges[var] = old_rng
            if old_def is not None:
                self.defs[var] = old_def
            if old is None:
                self.env.pop(var, None)
            else:
                self.env[var] = old

    def allocate(self, buf: Buffer) -> ir.Value | None:
        """Bind an allocated buffer; returns the malloc'd pointer to free, or None for a stack buffer."""
        et = mem_type(buf.dtype)
        nbytes_elem = et.width // 8 if isinstance(et, ir.IntType) else fbits(et) // 8
        size = 1
        const_size = True
        for d in buf.shape:
            c = arith.as_int(d)
            if c is None:
                const_size = False
                break
            size *= c
        if const_size and size * nbytes_elem <= STACK_LIMIT:
            arr = self.alloca_b.alloca(ir.ArrayType(et, max(size, 1)), name=buf.name)
            arr.align = 64
            self.bufs[buf] = self.alloca_b.bitcast(arr, et.as_pointer())
            return None
        n: ir.Value = ir.Constant(I64, nbytes_elem)
        for d in buf.shape:
            n = self.b.mul(n, self.scalar(self.convert(self.expr(d), d.dtype, "i64")))
        raw = self.b.call(self.ctx.declare("malloc", VOIDP, [I64]), [n])
        self.bufs[buf] = self.b.bitcast(raw, et.as_pointer())
        return raw

    def loop(self, s: For) -> None:
        if self.width and s.kind in ("parallel", "vectorized"):
            raise self.err("internal: parallel/vectorized loop inside a vector body")
        ext_c, start_c = arith.as_int(s.extent), arith.as_int(s.start)
        if s.kind == "unrolled" and ext_c is not None and ext_c <= MAX_UNROLL:
            start = self.expr(s.start)
            for k in range(ext_c):
                val = self.lin_or_add(start, k, s.start.dtype)
                rng = (start_c + k, start_c + k + 1) if start_c is not None else None
                self.bind(s.var, val, s.start.dtype, lambda: self.stmt(s.body), rng)
            return
        if s.kind == "vectorized" and can_vectorize(s, self.defs, self.ranges):
            self.vector_loop(s, ext_c)
            return
        if s.kind == "parallel" and not self.width:
            self.parallel_loop(s)
            return
        hints: list[tuple[str, ir.Value | None]] = []
        if s.kind == "unrolled":
            hints = [("llvm.loop.unroll.full", None)] if ext_c is not None else [("llvm.loop.unroll.enable", None)]
        elif s.kind == "vectorized":
            hints = [("llvm.loop.vectorize.enable", ir.Constant(I1, 1))]
        elif not has_loop(s.body):
            # innermost loops here are short rows (softmax/layernorm reductions over T, say): LLVM's
            # default 4-way interleave of 16 lanes leaves every row under 64 elements scalar
            hints = [("llvm.loop.interleave.count", ir.Constant(I32, 1))]
        start = self.expr(s.start)
        ext = self.expr(s.extent)
        rng = (start_c, start_c + ext_c) if start_c is not None and ext_c is not None else None
        self.serial_loop(s.var, start, s.start.dtype, ext, s.extent.dtype, lambda: self.stmt(s.body), hints, rng)

    def lin_or_add(self, start: ir.Value | Lin, k: int, dtype: str) -> ir.Value | Lin:
        if isinstance(start, Lin):
            return Lin(self.b.add(start.base, ir.Constant(start.base.type, k)), start.stride)
        if is_vec(start):
            return self.b.add(start, self.const_of(start.type, k))
        if is_float(dtype):
            raise self.err("loop bounds must be integers")
        return self.b.add(start, ir.Constant(start.type, k)) if k else start

    def serial_loop(self, var: Var, start: ir.Value | Lin, start_dt: str, ext: ir.Value | Lin, ext_dt: str,
                    body: Callable[[], None], hints: Sequence[tuple[str, ir.Value | None]] = (),
                    rng: tuple[int, int] | None = None) -> None:
        """`for var in start..start+ext` as a counted loop (counter in i64, var in its own dtype)."""
        b = self.b
        lo = self.scalar(self.convert(start, start_dt, "i64"))
        hi = b.add(lo, self.scalar(self.convert(ext, ext_dt, "i64")))
        pre = b.block
        header = self.fn.append_basic_block(self.ctx.fresh("loop"))
        bodyb = self.fn.append_basic_block(self.ctx.fresh("loop.body"))
        exit_b = self.fn.append_basic_block(self.ctx.fresh("loop.end"))
        b.branch(header)
        b.position_at_end(header)
        i = b.phi(I64)
        i.add_incoming(lo, pre)
        b.cbranch(b.icmp_signed("<", i, hi), bodyb, exit_b)
        b.position_at_end(bodyb)
        self.bind(var, i, "i64", body, rng)
        nxt = b.add(i, ir.Constant(I64, 1), flags=["nsw"])
        i.add_incoming(nxt, b.block)
        br = b.branch(header)
        if hints:
            br.set_metadata("llvm.loop", self.ctx.loop_md(hints))
        b.position_at_end(exit_b)

    def vector_loop(self, s: For, ext_c: int | None) -> None:
        """Explicit vector code; long or symbolic extents are strip-mined (vector main loop + tail)."""
        start = self.scalar(self.convert(self.expr(s.start), s.start.dtype, "i64"))
        start_c = arith.as_int(s.start)
        rng = (start_c, start_c + ext_c) if start_c is not None and ext_c is not None else None
        if ext_c is not None and ext_c <= MAX_VECTOR:
            if ext_c > 0:
                self.vector_body(s, start, ext_c, rng)
            return
        elem_bits = min((_bits(st.buffer.dtype) for st in stores_in(s.body)), default=32)
        w = min(MAX_VECTOR, max(4, 2 * self.ctx.target.vector_bits // elem_bits))
        ext = self.scalar(self.convert(self.expr(s.extent), s.extent.dtype, "i64"))
        b = self.b
        chunks = b.sdiv(ext, ir.Constant(I64, w))
        chunk_var = Var(self.ctx.fresh("%vchunk"), "i64")

        def main() -> None:
            base = b.add(start, b.mul(self.env[chunk_var], ir.Constant(I64, w)))  # type: ignore[arg-type]
            self.vector_body(s, base, w, rng)

        self.serial_loop(chunk_var, ir.Constant(I64, 0), "i64", chunks, "i64", main)
        done = b.mul(chunks, ir.Constant(I64, w))
        tail_start = b.add(start, done)
        self.serial_loop(s.var, tail_start, "i64", b.sub(ext, done), "i64", lambda: self.stmt(s.body),
                         [("llvm.loop.vectorize.enable", ir.Constant(I1, 0))], rng)

    def vector_body(self, s: For, base: ir.Value, width: int, rng: tuple[int, int] | None = None) -> None:
        old_w = self.width
        self.width = width
        try:
            self.bind(s.var, Lin(self.convert(base, "i64", s.var.dtype), 1), s.var.dtype, lambda: self.stmt(s.body),
                      rng)
        finally:
            self.width = old_w

    def parallel_loop(self, s: For) -> None:
        """Outline the body into `chunk(closure, begin, end)` and hand it to the thread-pool launcher."""
        ctx, b = self.ctx, self.b
        cap_vars = [(v, x) for v, x in self.env.items() if not is_vec(x)]
        cap_bufs = list(self.bufs.items())
        name = ctx.fresh(f"{self.func.name}.par")
        arg_types = [p.type for _, p in cap_bufs] + [x.type for _, x in cap_vars] + [I64, I64]
        body_fn = ir.Function(ctx.module, ir.FunctionType(ir.VoidType(), arg_types), name)
        body_fn.linkage = "internal"
        for k in range(len(cap_bufs)):
            body_fn.args[k].add_attribute("noalias")
        inner = _Emitter(ctx, body_fn, self.func)
        inner.fast = self.fast
        inner.defs, inner.ranges = dict(self.defs), dict(self.ranges)
        start_c, ext_c = arith.as_int(s.start), arith.as_int(s.extent)
        rng = (start_c, start_c + ext_c) if start_c is not None and ext_c is not None else None
        for k, (buf, _) in enumerate(cap_bufs):
            inner.bufs[buf] = body_fn.args[k]
        for k, (v, _) in enumerate(cap_vars):
            inner.env[v] = body_fn.args[len(cap_bufs) + k]
        begin, end = body_fn.args[-2], body_fn.args[-1]
        start = inner.scalar(inner.convert(inner.expr(s.start), s.start.dtype, "i64"))

        def body() -> None:
            i = inner.env[chunk_var]
            inner.bind(s.var, inner.b.add(start, i), "i64", lambda: inner.stmt(s.body), rng)  # type: ignore[arg-type]

        chunk_var = Var(ctx.fresh("%pchunk"), "i64")
        inner.serial_loop(chunk_var, begin, "i64", inner.b.sub(end, begin), "i64", body)
        inner.b.ret_void()

        # trampoline: unpack the closure struct and call the body with noalias pointers
        st = ir.LiteralStructType(arg_types[:-2] or [I8])
        tramp = ir.Function(ctx.module, ir.FunctionType(ir.VoidType(), [VOIDP, I64, I64]), name + ".chunk")
        tramp.linkage = "internal"
        tb = ir.IRBuilder(tramp.append_basic_block("entry"))
        sp = tb.bitcast(tramp.args[0], st.as_pointer())
        vals = [tb.load(tb.gep(sp, [ir.Constant(I32, 0), ir.Constant(I32, k)], inbounds=True))
                for k in range(len(arg_types) - 2)]
        tb.call(body_fn, vals + [tramp.args[1], tramp.args[2]])
        tb.ret_void()

        closure = self.alloca_b.alloca(st)
        for k, (_, val) in enumerate(cap_bufs + cap_vars):
            b.store(val, b.gep(closure, [ir.Constant(I32, 0), ir.Constant(I32, k)], inbounds=True))
        ext = self.scalar(self.convert(self.expr(s.extent), s.extent.dtype, "i64"))
        # a pool launch costs tens of microseconds: small loops run their one chunk right here
        inner = _work_estimate(s.body, set(self.env))
        work = b.mul(ext, self.scalar(self.convert(self.expr(inner), inner.dtype, "i64")))
        small = b.icmp_signed("<", work, ir.Constant(I64, PARALLEL_MIN_WORK))
        with b.if_else(small) as (serial, pooled):
            with serial:
                b.call(tramp, [b.bitcast(closure, VOIDP), ir.Constant(I64, 0), ext])
            with pooled:
                launch = b.load(ctx.launcher)
                b.call(launch, [b.bitcast(tramp, VOIDP), b.bitcast(closure, VOIDP), ext])


# Below this many innermost iterations a parallel loop runs serially (a native pool launch costs
# about a microsecond; the Python fallback pool tens).
PARALLEL_MIN_WORK = 1 << 13


def _work_estimate(s: Stmt, known: set[Var]) -> Expr:
    """Iterations of the loop nests in `s` (sum over a sequence, product down nests), as an expression of
    the vars known outside; an extent that depends on inner vars counts as 1."""
    if isinstance(s, For):
        ext = s.extent if free_vars(s.extent) <= known else Const(1)
        return arith.simplify(Bin("mul", ext, _work_estimate(s.body, known)))
    if isinstance(s, Seq):  # straight-line statements of a sequence count 1 together (a lowered
        # block's guarded init and update are one innermost iteration, as the block was)
        total: Expr = Const(0)
        straight = False
        for x in s.stmts:
            if has_loop(x):
                total = Bin("add", total, _work_estimate(x, known))
            elif not straight:
                straight = True
                total = Bin("add", total, Const(1))
        return arith.simplify(total)
    if isinstance(s, IfStmt):
        return _work_estimate(s.then, known)
    ks = kids(s)
    return _work_estimate(ks[0], known) if len(ks) == 1 else Const(1)


def _bits(dtype: str) -> int:
    t = mem_type(dtype)
    return t.width if isinstance(t, ir.IntType) else fbits(t)


def _lower_func(ctx: ModuleCtx, func: PrimFunc) -> None:
    dims = signature_vars(func)
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise MlcError(f"codegen of prim @{func.name}: two different dims share a name", func.loc)
    ptr_types = [mem_type(b.dtype).as_pointer() for b in func.params]
    impl = ir.Function(ctx.module, ir.FunctionType(ir.VoidType(), ptr_types + [I64] * len(dims)), func.name + ".impl")
    impl.linkage = "internal"
    for k in range(len(ptr_types)):
        impl.args[k].add_attribute("noalias")
    em = _Emitter(ctx, impl, func)
    views = {v.source.name: v.buffer for v in func.views}
    for k, buf in enumerate(func.params):
        if buf in em.bufs or views.get(buf.name) in em.bufs:
            raise MlcError(f"codegen of prim @{func.name}: buffer {buf.name} is passed twice", buf.loc)
        # a parameter accessed through its flat view is bound as the view (one pointer: no noalias copies)
        em.bufs[views.get(buf.name, buf)] = impl.args[k]
    for k, d in enumerate(dims):
        em.env[d] = em.convert(impl.args[len(ptr_types) + k], "i64", d.dtype)  # type: ignore[assignment]
    em.stmt(func.body)
    em.b.ret_void()

    entry = ir.Function(ctx.module, ir.FunctionType(ir.VoidType(), [VOIDP.as_pointer(), I64.as_pointer()]), func.name)
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    args: list[ir.Value] = []
    for k, t in enumerate(ptr_types):
        p = b.load(b.gep(entry.args[0], [ir.Constant(I64, k)], inbounds=True))
        args.append(b.bitcast(p, t))
    for k in range(len(dims)):
        args.append(b.load(b.gep(entry.args[1], [ir.Constant(I64, k)], inbounds=True)))
    b.call(impl, args)
    b.ret_void()


def lower_to_llvm(funcs: Sequence[PrimFunc], target: CpuTarget) -> str:
    """Textual LLVM IR of a module holding one exported kernel per PrimFunc (ABI in the module docstring)."""
    names = [f.name for f in funcs]
    if len(set(names)) != len(names):
        raise MlcError(f"codegen: duplicate prim names in {names}")
    for n in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", n) or n.startswith("__mlc"):
            raise MlcError(f"codegen: prim name {n!r} is not a valid symbol name")
    module = ir.Module(name="mlc")
    module.triple = target.triple
    module.data_layout = str(target.target_machine().target_data)
    ctx = ModuleCtx(module, target)
    launch_t = ir.FunctionType(ir.VoidType(), [VOIDP, VOIDP, I64]).as_pointer()
    ctx.launcher = ir.GlobalVariable(module, launch_t, LAUNCH_SYMBOL)
    ctx.launcher.initializer = ir.Constant(launch_t, None)
    slot_t = ir.ArrayType(I64, 4)
    ctx.index_error = ir.GlobalVariable(module, slot_t, INDEX_ERROR_SYMBOL)
    ctx.index_error.initializer = ir.Constant(slot_t, None)
    funcs = [lower_tir_func(f) for f in funcs]  # block form (no lower-tir run yet): lowered here, by ir/
    for f in funcs:
        _lower_func(ctx, f)
    meta = bytearray(kernel_metadata(funcs, ctx.checking).encode()) + b"\0"
    g = ir.GlobalVariable(module, ir.ArrayType(I8, len(meta)), META_SYMBOL)
    g.initializer = ir.Constant(ir.ArrayType(I8, len(meta)), meta)
    g.global_constant = True
    text = str(module)
    # loop metadata must be self-referential distinct nodes, which llvmlite cannot build directly
    return re.sub(r'^(!\d+) = !\{ !"mlc\.loopid\.\d+"', r"\1 = distinct !{ \1", text, flags=re.M)
