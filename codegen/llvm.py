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
<W x T> vector code (contiguous loads/stores, broadcast of loop-invariant values, gathers/scatters
otherwise), strip-mined with a scalar tail when the extent is symbolic; other vectorized loops are
scalar with llvm.loop.vectorize metadata. `parallel` loop bodies are outlined into chunk functions run
on all cores by the launcher. Float ops get `contract` (FMA); ops inside reduction blocks also get
`reassoc nsz` so LLVM may reorder the reduction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llvmlite.ir as ir

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.dtype import is_float
from ..ir.expr import INTRINSICS, Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, children
from ..ir.tir import BlockStmt, Buffer, For, IfStmt, Let, PrimFunc, Seq, Stmt, Store
from .cpu import CpuTarget
from .parallel import LAUNCH_SYMBOL
from .vectorize import can_vectorize, split_div

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
VOIDP = I8.as_pointer()
META_SYMBOL = "__mlc_kernels"
MAX_UNROLL = 256  # constant extents up to this are unrolled here; beyond, metadata asks LLVM
MAX_VECTOR = 64  # widest explicit vector; longer vectorized loops are strip-mined
STACK_LIMIT = 64 * 1024  # constant-size block allocations up to this many bytes live on the stack

_LLVM_TYPES: dict[str, ir.Type] = {
    "bool": I1, "i8": I8, "u8": I8, "i16": ir.IntType(16), "i32": I32, "i64": I64,
    "f16": ir.HalfType(), "bf16": ir.FloatType(), "f32": ir.FloatType(), "f64": ir.DoubleType(),
}
_FLOAT_SUFFIX = {"half": "f16", "float": "f32", "double": "f64"}
_ICMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_LIBM_UNARY = {"exp": "exp", "log": "log", "sqrt": "sqrt", "sin": "sin", "cos": "cos", "floor": "floor",
               "ceil": "ceil", "round": "roundeven", "abs": "fabs", "tanh": "tanh"}
FAST = ("reassoc", "contract", "nsz")
CONTRACT = ("contract",)


def llvm_type(dtype: str) -> ir.Type:
    """The LLVM type of a value of `dtype`."""
    try:
        return _LLVM_TYPES[dtype]
    except KeyError:
        raise MlcError(f"codegen: unsupported dtype {dtype}") from None


def mem_type(dtype: str) -> ir.Type:
    """The LLVM type of an element of a buffer of `dtype` in memory (bool is a byte)."""
    return I8 if dtype == "bool" else llvm_type(dtype)


def _ordered_vars(e: Expr, out: dict[str, Var]) -> None:
    if isinstance(e, Var):
        out.setdefault(e.name, e)
    for c in children(e):
        _ordered_vars(c, out)


def kernel_signature(func: PrimFunc) -> list[str]:
    """Names of the i64 `dims` a kernel takes, in ABI order: shape dims by first appearance, then scalars."""
    found: dict[str, Var] = {}
    for buf in func.params:
        for d in buf.shape:
            _ordered_vars(d, found)
    for v in func.scalar_params:
        found.setdefault(v.name, v)
    return list(found)


def _signature_vars(func: PrimFunc) -> list[Var]:
    found: dict[str, Var] = {}
    for buf in func.params:
        for d in buf.shape:
            _ordered_vars(d, found)
    for v in func.scalar_params:
        found.setdefault(v.name, v)
    return list(found.values())


def expr_to_json(e: Expr) -> object:
    """A shape expression as JSON (ints, var names, [op, a, b]); read back by `expr_from_json`."""
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Bin):
        return [e.op, expr_to_json(e.a), expr_to_json(e.b)]
    if isinstance(e, Cast):
        return expr_to_json(e.a)
    raise MlcError(f"codegen: shape expression {e!r} cannot be described in kernel metadata")


def expr_from_json(j: object) -> Expr:
    if isinstance(j, bool) or not isinstance(j, int | str | list):
        raise MlcError(f"corrupt kernel metadata: bad shape expression {j!r}")
    if isinstance(j, int):
        return Const(j)
    if isinstance(j, str):
        return Var(j)
    if len(j) != 3 or j[0] not in ("add", "sub", "mul", "floordiv", "floormod", "min", "max"):
        raise MlcError(f"corrupt kernel metadata: bad shape expression {j!r}")
    return Bin(j[0], expr_from_json(j[1]), expr_from_json(j[2]))


def kernel_metadata(funcs: Sequence[PrimFunc]) -> str:
    """JSON describing each kernel's buffers and dims, embedded in the module as `__mlc_kernels`."""
    out = []
    for f in funcs:
        out.append({
            "name": f.name, "num_outputs": f.num_outputs, "dims": kernel_signature(f),
            "params": [{"name": b.name, "dtype": b.dtype, "shape": [expr_to_json(d) for d in b.shape]}
                       for b in f.params],
        })
    return json.dumps({"version": 1, "kernels": out}, sort_keys=True)


@dataclass
class Lin:
    """An integer vector whose lane l holds `base + stride * l` (kept symbolic to find contiguous accesses)."""

    base: ir.Value
    stride: int


@dataclass
class _ModuleCtx:
    module: ir.Module
    target: CpuTarget
    counter: int = 0
    decls: dict[str, ir.Function] = field(default_factory=dict)
    launcher: ir.GlobalVariable | None = None

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}.{self.counter}"

    def declare(self, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        fn = self.decls.get(name)
        if fn is None:
            fn = self.module.globals.get(name) or ir.Function(self.module, ir.FunctionType(ret, list(args)), name)
            self.decls[name] = fn
        return fn

    def loop_md(self, hints: Sequence[tuple[str, ir.Value | None]]) -> ir.MDValue:
        m = self.module
        ops = [m.add_metadata([ir.MetaDataString(m, k)] + ([v] if v is not None else [])) for k, v in hints]
        return m.add_metadata([ir.MetaDataString(m, self.fresh("mlc.loopid"))] + ops)


def _type_suffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_type_suffix(t.element)}"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return _FLOAT_SUFFIX[str(t)]


def _is_vec(v: object) -> bool:
    return isinstance(v, Lin) or isinstance(getattr(v, "type", None), ir.VectorType)


class _Emitter:
    """Lowers statements into one LLVM function; `width` > 0 while emitting a vectorized loop body."""

    def __init__(self, ctx: _ModuleCtx, fn: ir.Function, func: PrimFunc):
        self.ctx, self.fn, self.func = ctx, fn, func
        entry = fn.append_basic_block("entry")
        self.alloca_b = ir.IRBuilder(entry)
        body = fn.append_basic_block("body")
        self.alloca_b.branch(body)
        self.alloca_b.position_at_start(entry)
        self.b = ir.IRBuilder(body)
        self.env: dict[Var, ir.Value | Lin] = {}
        self.bufs: dict[Buffer, ir.Value] = {}
        self.width = 0
        self.fast = False
        self.defs: dict[Var, Expr] = {}  # integer block iterators / lets -> their definitions
        self.ranges: dict[Var, tuple[int, int]] = {}  # loop vars with constant bounds -> [lo, hi)

    # ---------------------------------------------------------------- helpers
    def err(self, msg: str, loc: object = None) -> MlcError:
        return MlcError(f"codegen of prim @{self.func.name}: {msg}", loc if loc is not None else self.func.loc)

    def flags(self) -> tuple[str, ...]:
        return FAST if self.fast else CONTRACT

    def intrinsic(self, name: str, t: ir.Type, nargs: int = 1) -> ir.Function:
        return self.ctx.declare(f"llvm.{name}.{_type_suffix(t)}", t, [t] * nargs)

    def splat(self, v: ir.Value, w: int) -> ir.Value:
        vt = ir.VectorType(v.type, w)
        x = self.b.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(I32, 0))
        return self.b.shuffle_vector(x, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, w), [0] * w))

    def vec(self, v: ir.Value | Lin) -> ir.Value:
        """Materialise a value as a W-lane vector."""
        if isinstance(v, Lin):
            base = self.splat(v.base, self.width)
            steps = ir.Constant(ir.VectorType(v.base.type, self.width), [v.stride * i for i in range(self.width)])
            return self.b.add(base, steps)
        if isinstance(v.type, ir.VectorType):
            return v
        return self.splat(v, self.width)

    def scalar(self, v: ir.Value | Lin) -> ir.Value:
        if _is_vec(v):
            raise self.err("internal: a lane-varying value where a uniform one is needed")
        return v  # type: ignore[return-value]

    def const_of(self, t: ir.Type, value: float | int) -> ir.Value:
        elem = t.element if isinstance(t, ir.VectorType) else t
        c = ir.Constant(elem, value)
        return ir.Constant(t, [c] * t.count) if isinstance(t, ir.VectorType) else c

    def convert(self, v: ir.Value | Lin, src: str, dst: str) -> ir.Value | Lin:
        """Value conversion between dtypes, with C/numpy semantics (u8 unsigned, bool as 0/1)."""
        src_t, dst_t = llvm_type(src), llvm_type(dst)
        if isinstance(v, Lin):
            if isinstance(src_t, ir.IntType) and isinstance(dst_t, ir.IntType) and dst_t.width >= 32 and src != "u8":
                conv = self.convert(v.base, src, dst)
                return Lin(conv, v.stride)  # type: ignore[arg-type]
            v = self.vec(v)
        if src_t == dst_t and (src == "u8") == (dst == "u8"):
            return v
        if (src == "f16") != (dst == "f16") and "f32" not in (src, dst) and dst != "bool":
            # go through f32: direct f16<->f64/int conversions become compiler-rt calls the JIT cannot resolve
            return self.convert(self.convert(v, src, "f32"), "f32", dst)
        w = v.type.count if isinstance(v.type, ir.VectorType) else 0
        tt = ir.VectorType(dst_t, w) if w else dst_t
        b = self.b
        if dst == "bool":
            zero = self.const_of(v.type, 0)
            return b.fcmp_unordered("!=", v, zero) if is_float(src) else b.icmp_unsigned("!=", v, zero)
        if is_float(src) and is_float(dst):
            if src_t == dst_t:
                return v
            return b.fpext(v, tt) if _fbits(src_t) < _fbits(dst_t) else b.fptrunc(v, tt)
        if is_float(src):
            return b.fptoui(v, tt) if dst == "u8" else b.fptosi(v, tt)
        unsigned = src in ("u8", "bool")
        if is_float(dst):
            return b.uitofp(v, tt) if unsigned else b.sitofp(v, tt)
        if src_t.width == dst_t.width:
            return v
        if src_t.width > dst_t.width:
            return b.trunc(v, tt)
        return b.zext(v, tt) if unsigned else b.sext(v, tt)

    # ---------------------------------------------------------------- expressions
    def expr(self, e: Expr) -> ir.Value | Lin:
        if isinstance(e, Var):
            if e not in self.env:
                raise self.err(f"unbound variable %{e.name} (not a dim, scalar param, loop or block var)", e.loc)
            return self.env[e]
        if isinstance(e, Const):
            t = llvm_type(e.dtype)
            if not is_float(e.dtype) and isinstance(e.value, float) and not float(e.value).is_integer():
                raise self.err(f"constant {e.value} has integer dtype {e.dtype}", e.loc)
            return ir.Constant(t, bool(e.value) if e.dtype == "bool" else
                               float(e.value) if is_float(e.dtype) else int(e.value))
        if isinstance(e, Bin):
            return self.binop(e)
        if isinstance(e, Not):
            a = self.vec_if(self.convert(self.expr(e.a), e.a.dtype, "bool"))
            return self.b.xor(a, self.const_of(a.type, 1))
        if isinstance(e, Select):
            c = self.convert(self.expr(e.cond), e.cond.dtype, "bool")
            t = self.convert(self.expr(e.t), e.t.dtype, e.dtype)
            f = self.convert(self.expr(e.f), e.f.dtype, e.dtype)
            if _is_vec(c) or _is_vec(t) or _is_vec(f):
                t, f = self.vec(t), self.vec(f)
                c = self.vec(c) if _is_vec(c) else c
            return self.b.select(c, t, f)
        if isinstance(e, Cast):
            return self.convert(self.expr(e.a), e.a.dtype, e.dtype)
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, Load):
            return self.load(e)
        raise self.err(f"cannot lower expression {type(e).__name__}")

    def vec_if(self, v: ir.Value | Lin) -> ir.Value:
        return self.vec(v) if isinstance(v, Lin) else v

    def operands(self, e: Bin) -> tuple[ir.Value | Lin, ir.Value | Lin, str]:
        """Both operands converted to one dtype (a constant adopts the other side's type)."""
        a, b = self.expr(e.a), self.expr(e.b)
        da, db = e.a.dtype, e.b.dtype
        if da != db:
            if isinstance(e.a, Const) and not isinstance(e.b, Const):
                return self.convert(a, da, db), b, db
            if not isinstance(e.b, Const) and is_float(db) and not is_float(da):
                return self.convert(a, da, db), b, db
            b = self.convert(b, db, da)
        return a, b, da

    def binop(self, e: Bin) -> ir.Value | Lin:
        if e.op in ("floordiv", "floormod") and isinstance(e.b, Const) and not is_float(e.dtype):
            qr = split_div(e.a, int(e.b.value), self.defs, self.ranges)
            if qr is not None:  # (affine + in-range remainder) // c: no division, stays affine in lanes
                part = qr[0] if e.op == "floordiv" else qr[1]
                return self.convert(self.expr(part), part.dtype, e.dtype)
        a, c, dt = self.operands(e)
        op = e.op
        # affine lane algebra keeps `base + stride * lane` symbolic for address analysis
        if (isinstance(a, Lin) or isinstance(c, Lin)) and op in ("add", "sub", "mul") and not is_float(dt):
            r = self.lin_op(op, a, c)
            if r is not None:
                return r
        if _is_vec(a) or _is_vec(c):
            a, c = self.vec(a), self.vec(c)
        b = self.b
        if op in ("and", "or"):
            a, c = self.convert(a, dt, "bool"), self.convert(c, dt, "bool")
            return b.and_(a, c) if op == "and" else b.or_(a, c)
        if op in _ICMP:
            if is_float(dt):
                return (b.fcmp_unordered if op == "ne" else b.fcmp_ordered)(_ICMP[op], a, c)
            return (b.icmp_unsigned if dt in ("u8", "bool") else b.icmp_signed)(_ICMP[op], a, c)
        if is_float(dt):
            return self.float_binop(op, a, c)
        return self.int_binop(op, a, c, dt)

    def lin_op(self, op: str, a: ir.Value | Lin, c: ir.Value | Lin) -> Lin | None:
        b = self.b
        la = a if isinstance(a, Lin) else Lin(a, 0)
        lc = c if isinstance(c, Lin) else Lin(c, 0)
        if _is_vec(la.base) or _is_vec(lc.base):
            return None
        if op == "add":
            return Lin(b.add(la.base, lc.base), la.stride + lc.stride)
        if op == "sub":
            return Lin(b.sub(la.base, lc.base), la.stride - lc.stride)
        k, other = (c, la) if _int_const(c) else (a, lc) if _int_const(a) else (None, None)
        if k is None or other is None:
            return None
        return Lin(b.mul(other.base, k), other.stride * int(k.constant))

    def float_binop(self, op: str, a: ir.Value, c: ir.Value) -> ir.Value:
        b = self.b
        simple = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}
        if op in simple:
            r = simple[op](a, c)
            r.flags.extend(self.flags())
            return r
        if op in ("min", "max"):  # NaN-propagating, like numpy.minimum/maximum
            return b.call(self.intrinsic("minimum" if op == "min" else "maximum", a.type, 2), [a, c])
        if op == "pow":
            return self.float_call(lambda x, t: b.call(self.intrinsic("pow", t, 2), x), [a, c])
        if op in ("floordiv", "floormod"):
            q = b.fdiv(a, c)
            fq = self.float_call(lambda x, t: b.call(self.intrinsic("floor", t), x), [q])
            return fq if op == "floordiv" else b.fsub(a, b.fmul(fq, c))
        raise self.err(f"unknown float operator {op}")

    def int_binop(self, op: str, a: ir.Value, c: ir.Value, dt: str) -> ir.Value:
        b = self.b
        unsigned = dt in ("u8", "bool")
        simple = {"add": b.add, "sub": b.sub, "mul": b.mul}
        if op in simple:
            return simple[op](a, c)
        if op in ("min", "max"):
            cmp = (b.icmp_unsigned if unsigned else b.icmp_signed)("<" if op == "min" else ">", a, c)
            return b.select(cmp, a, c)
        if op == "div":  # integer division truncates, as in C and TVM's Div
            return b.udiv(a, c) if unsigned else b.sdiv(a, c)
        if op in ("floordiv", "floormod"):
            if unsigned:
                return b.udiv(a, c) if op == "floordiv" else b.urem(a, c)
            q, r = b.sdiv(a, c), b.srem(a, c)
            zero = self.const_of(a.type, 0)
            # the remainder's sign differs from the divisor's: step toward -inf
            fix = b.and_(b.icmp_signed("!=", r, zero),
                         b.icmp_signed("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", c, zero)))
            if op == "floordiv":
                return b.sub(q, b.zext(fix, q.type))
            return b.select(fix, b.add(r, c), r)
        if op == "pow":  # exact for results below 2**53
            f64 = ir.DoubleType()
            ft = ir.VectorType(f64, a.type.count) if isinstance(a.type, ir.VectorType) else f64
            conv = b.uitofp if unsigned else b.sitofp
            r = b.call(self.intrinsic("pow", ft, 2), [conv(a, ft), conv(c, ft)])
            return b.fptoui(r, a.type) if unsigned else b.fptosi(r, a.type)
        raise self.err(f"unknown integer operator {op}")

    def float_call(self, fn: Callable[[list[ir.Value], ir.Type], ir.Value], args: list[ir.Value]) -> ir.Value:
        """Apply `fn`, computing half-precision values in f32 (libm and most intrinsics lack f16)."""
        t = args[0].type
        elem = t.element if isinstance(t, ir.VectorType) else t
        if isinstance(elem, ir.HalfType):
            ft = ir.VectorType(ir.FloatType(), t.count) if isinstance(t, ir.VectorType) else ir.FloatType()
            r = fn([self.b.fpext(x, ft) for x in args], ft)
            return self.b.fptrunc(r, t)
        return fn(args, t)

    def call(self, e: Call) -> ir.Value | Lin:
        if e.name not in INTRINSICS:
            raise self.err(f"unknown intrinsic {e.name}", e.loc)
        if len(e.args) != 1:
            raise self.err(f"intrinsic {e.name} takes 1 argument, got {len(e.args)}", e.loc)
        arg = e.args[0]
        x = self.vec_if(self.expr(arg))
        b = self.b
        if not is_float(arg.dtype):
            return self.int_call(e.name, x, arg.dtype, e.dtype)
        if e.dtype != arg.dtype and e.name != "isnan":
            raise self.err(f"intrinsic {e.name} of {arg.dtype} cannot yield {e.dtype}", e.loc)
        name = e.name
        if name == "isnan":
            return self.convert(b.fcmp_unordered("uno", x, x), "bool", e.dtype)
        if name == "neg":
            return b.fneg(x)
        if name in _LIBM_UNARY:
            return self.float_call(lambda a, t: b.call(self.intrinsic(_LIBM_UNARY[name], t), a), [x])
        if name == "rsqrt":
            def rsqrt(a: list[ir.Value], t: ir.Type) -> ir.Value:
                r = b.fdiv(self.const_of(t, 1.0), b.call(self.intrinsic("sqrt", t), a))
                r.flags.append("arcp")
                return r
            return self.float_call(rsqrt, [x])
        if name == "sigmoid":
            def sigmoid(a: list[ir.Value], t: ir.Type) -> ir.Value:
                ex = b.call(self.intrinsic("exp", t), [b.fneg(a[0])])
                return b.fdiv(self.const_of(t, 1.0), b.fadd(self.const_of(t, 1.0), ex))
            return self.float_call(sigmoid, [x])
        if name == "erf":
            return self.float_call(self.erf, [x])
        raise self.err(f"intrinsic {name} is not supported by the CPU codegen", e.loc)

    def erf(self, args: list[ir.Value], t: ir.Type) -> ir.Value:
        """libm erf/erff, lane by lane for vectors (LLVM has no erf intrinsic)."""
        elem = t.element if isinstance(t, ir.VectorType) else t
        fn = self.ctx.declare("erff" if isinstance(elem, ir.FloatType) else "erf", elem, [elem])
        x = args[0]
        if not isinstance(t, ir.VectorType):
            return self.b.call(fn, [x])
        out = ir.Constant(t, ir.Undefined)
        for i in range(t.count):
            lane = self.b.call(fn, [self.b.extract_element(x, ir.Constant(I32, i))])
            out = self.b.insert_element(out, lane, ir.Constant(I32, i))
        return out

    def int_call(self, name: str, x: ir.Value, dt: str, out_dt: str) -> ir.Value:
        b = self.b
        if name == "isnan":
            return self.const_of(ir.VectorType(I1, x.type.count) if isinstance(x.type, ir.VectorType) else I1, 0)
        if name in ("floor", "ceil", "round"):
            return x
        if name == "neg":
            return b.neg(x)
        if name == "abs":
            if dt in ("u8", "bool"):
                return x
            return b.select(b.icmp_signed("<", x, self.const_of(x.type, 0)), b.neg(x), x)
        # transcendental functions of integers are computed in f64 and converted back
        f = self.convert(x, dt, "f64")
        sub = Call(name, (Var("%x", "f64"),), "f64")
        saved = self.env.get(sub.args[0])  # type: ignore[arg-type]
        self.env[sub.args[0]] = f  # type: ignore[index]
        try:
            r = self.call(sub)
        finally:
            self.env.pop(sub.args[0], None)  # type: ignore[arg-type]
            if saved is not None:
                self.env[sub.args[0]] = saved  # type: ignore[index]
        return self.convert(r, "f64", out_dt)  # type: ignore[return-value]

    # ---------------------------------------------------------------- memory
    def flat_index(self, buf: Buffer, indices: Sequence[Expr], loc: object) -> ir.Value | Lin:
        if len(indices) != len(buf.shape):
            raise self.err(f"buffer {buf.name} has rank {len(buf.shape)} but is indexed with {len(indices)}", loc)
        if not indices:
            return ir.Constant(I64, 0)
        idx = self.convert(self.expr(indices[0]), indices[0].dtype, "i64")
        for d, i in zip(buf.shape[1:], indices[1:], strict=True):
            dim = self.scalar(self.convert(self.expr(d), d.dtype, "i64"))
            iv = self.convert(self.expr(i), i.dtype, "i64")
            idx = self.add_nsw(self.mul_nsw(idx, dim), iv)
        return idx

    def add_nsw(self, a: ir.Value | Lin, c: ir.Value | Lin) -> ir.Value | Lin:
        if isinstance(a, Lin) or isinstance(c, Lin):
            r = self.lin_op("add", a, c)
            if r is not None:
                return r
        if _is_vec(a) or _is_vec(c):
            a, c = self.vec(a), self.vec(c)
        return self.b.add(a, c, flags=["nsw"])

    def mul_nsw(self, a: ir.Value | Lin, c: ir.Value) -> ir.Value | Lin:
        if isinstance(a, Lin):
            r = self.lin_op("mul", a, c)
            if r is not None:
                return r
            a = self.vec(a)
        if _is_vec(a):
            return self.b.mul(a, self.vec(c), flags=["nsw"])
        return self.b.mul(a, c, flags=["nsw"])

    def buffer_ptr(self, buf: Buffer, loc: object) -> ir.Value:
        p = self.bufs.get(buf)
        if p is None:
            raise self.err(f"buffer {buf.name} is neither a parameter nor allocated by an enclosing block", loc)
        return p

    def load(self, e: Load) -> ir.Value:
        buf = e.buffer
        ptr = self.buffer_ptr(buf, e.loc)
        idx = self.flat_index(buf, e.indices, e.loc)
        b, et = self.b, mem_type(buf.dtype)
        if isinstance(idx, Lin) and idx.stride == 1:
            vt = ir.VectorType(et, self.width)
            p = b.bitcast(b.gep(ptr, [idx.base], inbounds=True), vt.as_pointer())
            v = b.load(p, align=et.width // 8 if isinstance(et, ir.IntType) else _fbits(et) // 8)
        elif isinstance(idx, Lin) and idx.stride == 0:
            v = b.load(b.gep(ptr, [idx.base], inbounds=True))
        elif _is_vec(idx):
            iv = self.vec(idx)
            v = ir.Constant(ir.VectorType(et, self.width), ir.Undefined)
            for lane in range(self.width):
                li = b.extract_element(iv, ir.Constant(I32, lane))
                v = b.insert_element(v, b.load(b.gep(ptr, [li], inbounds=True)), ir.Constant(I32, lane))
        else:
            v = b.load(b.gep(ptr, [idx], inbounds=True))
        if buf.dtype == "bool":
            return b.icmp_unsigned("!=", v, self.const_of(v.type, 0))
        return v

    def store(self, s: Store) -> None:
        buf = s.buffer
        ptr = self.buffer_ptr(buf, s.loc)
        val = self.convert(self.expr(s.value), s.value.dtype, buf.dtype)
        idx = self.flat_index(buf, s.indices, s.loc)
        b = self.b
        if buf.dtype == "bool":
            val = b.zext(self.vec_if(val), ir.VectorType(I8, self.width) if _is_vec(val) else I8)
        if _is_vec(idx):
            v = self.vec(val)
            if isinstance(idx, Lin) and idx.stride == 1:
                p = b.bitcast(b.gep(ptr, [idx.base], inbounds=True), v.type.as_pointer())
                et = mem_type(buf.dtype)
                b.store(v, p, align=et.width // 8 if isinstance(et, ir.IntType) else _fbits(et) // 8)
                return
            iv = self.vec(idx)
            for lane in range(self.width):
                li = b.extract_element(iv, ir.Constant(I32, lane))
                b.store(b.extract_element(v, ir.Constant(I32, lane)), b.gep(ptr, [li], inbounds=True))
            return
        if isinstance(idx, Lin):
            idx = idx.base
        b.store(self.scalar(val), b.gep(ptr, [idx], inbounds=True))

    # ---------------------------------------------------------------- statements
    def stmt(self, s: Stmt) -> None:
        if isinstance(s, Seq):
            for x in s.stmts:
                self.stmt(x)
        elif isinstance(s, Store):
            self.store(s)
        elif isinstance(s, For):
            self.loop(s)
        elif isinstance(s, BlockStmt):
            self.block(s)
        elif isinstance(s, IfStmt):
            cond = self.scalar(self.convert(self.expr(s.cond), s.cond.dtype, "bool"))
            if s.orelse is None:
                with self.b.if_then(cond):
                    self.stmt(s.then)
            else:
                with self.b.if_else(cond) as (then, other):
                    with then:
                        self.stmt(s.then)
                    with other:
                        self.stmt(s.orelse)
        elif isinstance(s, Let):
            self.bind(s.var, self.expr(s.value), s.value.dtype, lambda: self.stmt(s.body), definition=s.value)
        else:
            raise self.err(f"cannot lower statement {type(s).__name__}")

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

    def block(self, s: BlockStmt) -> None:
        saved = {iv.var: (self.env.get(iv.var), self.defs.pop(iv.var, None)) for iv in s.iters}
        for iv in s.iters:
            self.env[iv.var] = self.convert(self.expr(iv.binding), iv.binding.dtype, iv.var.dtype)
            if not is_float(iv.var.dtype):
                self.defs[iv.var] = iv.binding
        frees = [self.allocate(buf) for buf in s.alloc_buffers]
        if s.init is not None:
            reduce = [iv.var for iv in s.iters if iv.kind == "R"]
            if not reduce:
                self.stmt(s.init)
            else:
                cond: ir.Value | None = None
                for v in reduce:
                    x = self.scalar(self.env[v])
                    c = self.b.icmp_signed("==", x, ir.Constant(x.type, 0))
                    cond = c if cond is None else self.b.and_(cond, c)
                with self.b.if_then(cond):
                    self.stmt(s.init)
        old_fast = self.fast
        self.fast = old_fast or any(iv.kind == "R" for iv in s.iters)
        try:
            self.stmt(s.body)
        finally:
            self.fast = old_fast
        for buf, p in zip(s.alloc_buffers, frees, strict=True):
            if p is not None:
                self.b.call(self.ctx.declare("free", ir.VoidType(), [VOIDP]), [p])
            self.bufs.pop(buf, None)
        for v, (old, old_def) in saved.items():
            self.defs.pop(v, None)
            if old_def is not None:
                self.defs[v] = old_def
            if old is None:
                self.env.pop(v, None)
            else:
                self.env[v] = old

    def allocate(self, buf: Buffer) -> ir.Value | None:
        """Bind an allocated buffer; returns the malloc'd pointer to free, or None for a stack buffer."""
        et = mem_type(buf.dtype)
        nbytes_elem = et.width // 8 if isinstance(et, ir.IntType) else _fbits(et) // 8
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
        start = self.expr(s.start)
        ext = self.expr(s.extent)
        rng = (start_c, start_c + ext_c) if start_c is not None and ext_c is not None else None
        self.serial_loop(s.var, start, s.start.dtype, ext, s.extent.dtype, lambda: self.stmt(s.body), hints, rng)

    def lin_or_add(self, start: ir.Value | Lin, k: int, dtype: str) -> ir.Value | Lin:
        if isinstance(start, Lin):
            return Lin(self.b.add(start.base, ir.Constant(start.base.type, k)), start.stride)
        if _is_vec(start):
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
        if ext_c is not None and ext_c <= MAX_VECTOR:
            if ext_c > 0:
                start_c = arith.as_int(s.start)
                self.vector_body(s, start, ext_c, None if start_c is None else (start_c, start_c + ext_c))
            return
        elem_bits = min((_bits(b.dtype) for b in _stored_buffers(s.body)), default=32)
        w = min(MAX_VECTOR, max(4, 2 * self.ctx.target.vector_bits // elem_bits))
        ext = self.scalar(self.convert(self.expr(s.extent), s.extent.dtype, "i64"))
        b = self.b
        chunks = b.sdiv(ext, ir.Constant(I64, w))
        chunk_var = Var(self.ctx.fresh("%vchunk"), "i64")

        def main() -> None:
            base = b.add(start, b.mul(self.env[chunk_var], ir.Constant(I64, w)))  # type: ignore[arg-type]
            self.vector_body(s, base, w)

        self.serial_loop(chunk_var, ir.Constant(I64, 0), "i64", chunks, "i64", main)
        done = b.mul(chunks, ir.Constant(I64, w))
        tail_start = b.add(start, done)
        self.serial_loop(s.var, tail_start, "i64", b.sub(ext, done), "i64", lambda: self.stmt(s.body),
                         [("llvm.loop.vectorize.enable", ir.Constant(I1, 0))])

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
        cap_vars = [(v, x) for v, x in self.env.items() if not _is_vec(x)]
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
        launch = b.load(ctx.launcher)
        b.call(launch, [b.bitcast(tramp, VOIDP), b.bitcast(closure, VOIDP), ext])


def _int_const(v: object) -> bool:
    return isinstance(v, ir.Constant) and isinstance(v.type, ir.IntType) and isinstance(v.constant, int)


def _fbits(t: ir.Type) -> int:
    return {"half": 16, "float": 32, "double": 64}[str(t)]


def _bits(dtype: str) -> int:
    t = mem_type(dtype)
    return t.width if isinstance(t, ir.IntType) else _fbits(t)


def _stored_buffers(s: Stmt) -> list[Buffer]:
    out: list[Buffer] = []
    stack = [s]
    while stack:
        x = stack.pop()
        if isinstance(x, Store):
            out.append(x.buffer)
        elif isinstance(x, Seq):
            stack.extend(x.stmts)
        elif isinstance(x, For | Let):
            stack.append(x.body)
        elif isinstance(x, BlockStmt):
            stack.append(x.body)
            if x.init is not None:
                stack.append(x.init)
        elif isinstance(x, IfStmt):
            stack.append(x.then)
            if x.orelse is not None:
                stack.append(x.orelse)
    return out


def _lower_func(ctx: _ModuleCtx, func: PrimFunc) -> None:
    dims = _signature_vars(func)
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise MlcError(f"codegen of prim @{func.name}: two different dims share a name", func.loc)
    ptr_types = [mem_type(b.dtype).as_pointer() for b in func.params]
    impl = ir.Function(ctx.module, ir.FunctionType(ir.VoidType(), ptr_types + [I64] * len(dims)), func.name + ".impl")
    impl.linkage = "internal"
    for k in range(len(ptr_types)):
        impl.args[k].add_attribute("noalias")
    em = _Emitter(ctx, impl, func)
    for k, buf in enumerate(func.params):
        if buf in em.bufs:
            raise MlcError(f"codegen of prim @{func.name}: buffer {buf.name} is passed twice", buf.loc)
        em.bufs[buf] = impl.args[k]
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
    ctx = _ModuleCtx(module, target)
    launch_t = ir.FunctionType(ir.VoidType(), [VOIDP, VOIDP, I64]).as_pointer()
    ctx.launcher = ir.GlobalVariable(module, launch_t, LAUNCH_SYMBOL)
    ctx.launcher.initializer = ir.Constant(launch_t, None)
    meta = bytearray(kernel_metadata(funcs).encode()) + b"\0"
    g = ir.GlobalVariable(module, ir.ArrayType(I8, len(meta)), META_SYMBOL)
    g.initializer = ir.Constant(ir.ArrayType(I8, len(meta)), meta)
    g.global_constant = True
    for f in funcs:
        _lower_func(ctx, f)
    text = str(module)
    # loop metadata must be self-referential distinct nodes, which llvmlite cannot build directly
    return re.sub(r'^(!\d+) = !\{ !"mlc\.loopid\.\d+"', r"\1 = distinct !{ \1", text, flags=re.M)
