"""Scalar and vector expression lowering for the LLVM codegen (the half of codegen/llvm.py that computes values).

Values are LLVM scalars, LLVM vectors (inside a vectorized loop) or `Lin` (an integer vector kept
as `base + stride * lane`, so contiguous accesses are recognised and emitted as plain vector
loads/stores). Integer floordiv/floormod use floor semantics; uN/bool are unsigned; f16 values are
computed with LLVM half arithmetic, but libm-style functions run in f32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import llvmlite.ir as ir

from ..ir import arith
from ..ir.diagnostics import MlcError
from ..ir.dtype import is_float, is_unsigned
from ..ir.expr import INTRINSICS, Bin, Call, Cast, Const, Expr, Load, Not, Select, Var, children
from ..ir.tir import Buffer, PrimFunc
from .cpu import CpuTarget
from .vectorize import split_div

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)

_LLVM_TYPES: dict[str, ir.Type] = {
    "bool": I1, "i8": I8, "u8": I8, "i16": ir.IntType(16), "u16": ir.IntType(16), "i32": I32, "u32": I32,
    "i64": I64, "u64": I64,
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


@dataclass
class Lin:
    """An integer vector whose lane l holds `base + stride * l` (kept symbolic to find contiguous accesses)."""

    base: ir.Value
    stride: int


@dataclass
class ModuleCtx:
    """State shared by the functions of one LLVM module: declarations, fresh names, loop metadata."""

    module: ir.Module
    target: CpuTarget
    counter: int = 0
    decls: dict[str, ir.Function] = field(default_factory=dict)
    launcher: ir.GlobalVariable | None = None
    index_error: ir.GlobalVariable | None = None  # INDEX_ERROR_SYMBOL: [failed, value, lo, hi]
    checking: set[str] = field(default_factory=set)  # kernels that emitted a check_range

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


def type_suffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{type_suffix(t.element)}"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return _FLOAT_SUFFIX[str(t)]


def is_vec(v: object) -> bool:
    return isinstance(v, Lin) or isinstance(getattr(v, "type", None), ir.VectorType)


class ExprEmitter:
    """Expression lowering into one LLVM function; `width` > 0 while emitting a vectorized loop body."""

    def __init__(self, ctx: ModuleCtx, fn: ir.Function, func: PrimFunc):
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
        self.mask: ir.Value | None = None  # <W x i1> active lanes inside a lane-varying `if`
        self.fast = False
        self.defs: dict[Var, Expr] = {}  # integer block iterators / lets -> their definitions
        self.ranges: dict[Var, tuple[int, int]] = {}  # loop vars with constant bounds -> [lo, hi)

    # ---------------------------------------------------------------- helpers
    def err(self, msg: str, loc: object = None) -> MlcError:
        return MlcError(f"codegen of prim @{self.func.name}: {msg}", loc if loc is not None else self.func.loc)

    def flags(self) -> tuple[str, ...]:
        return FAST if self.fast else CONTRACT

    def intrinsic(self, name: str, t: ir.Type, nargs: int = 1) -> ir.Function:
        return self.ctx.declare(f"llvm.{name}.{type_suffix(t)}", t, [t] * nargs)

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
        if is_vec(v):
            raise self.err("internal: a lane-varying value where a uniform one is needed")
        return v  # type: ignore[return-value]

    def const_of(self, t: ir.Type, value: float | int) -> ir.Value:
        elem = t.element if isinstance(t, ir.VectorType) else t
        c = ir.Constant(elem, value)
        return ir.Constant(t, [c] * t.count) if isinstance(t, ir.VectorType) else c

    def convert(self, v: ir.Value | Lin, src: str, dst: str) -> ir.Value | Lin:
        """Value conversion between dtypes, with C/numpy semantics (uN unsigned, bool as 0/1)."""
        src_t, dst_t = llvm_type(src), llvm_type(dst)
        if isinstance(v, Lin):
            if isinstance(src_t, ir.IntType) and isinstance(dst_t, ir.IntType) and dst_t.width >= 32 and not is_unsigned(src):
                conv = self.convert(v.base, src, dst)
                return Lin(conv, v.stride)  # type: ignore[arg-type]
            v = self.vec(v)
        if src_t == dst_t and is_unsigned(src) == is_unsigned(dst):
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
            return b.fpext(v, tt) if fbits(src_t) < fbits(dst_t) else b.fptrunc(v, tt)
        if is_float(src):
            return b.fptoui(v, tt) if is_unsigned(dst) else b.fptosi(v, tt)
        unsigned = is_unsigned(src)
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
            if _loads(e.t) or _loads(e.f):
                return self.guarded_select(c, e)
            t = self.convert(self.expr(e.t), e.t.dtype, e.dtype)
            f = self.convert(self.expr(e.f), e.f.dtype, e.dtype)
            if is_vec(c) or is_vec(t) or is_vec(f):
                t, f = self.vec(t), self.vec(f)
                c = self.vec(c) if is_vec(c) else c
            return self.b.select(c, t, f)
        if isinstance(e, Cast):
            return self.convert(self.expr(e.a), e.a.dtype, e.dtype)
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, Load):
            return self.load(e)
        raise self.err(f"cannot lower expression {type(e).__name__}")

    def guarded_select(self, c: ir.Value | Lin, e: Select) -> ir.Value:
        """A select whose arms load memory: each arm runs only where it is chosen, so a load that the
        condition rules out (a padded convolution's halo, a clamped gather) never touches memory.
        A lane-varying condition masks the arms' loads; a uniform one branches."""
        b = self.b
        if is_vec(c):
            c = self.vec(c)
            outer, neg = self.mask, b.xor(c, self.const_of(c.type, 1))
            try:
                self.mask = c if outer is None else b.and_(c, outer)
                t = self.vec(self.convert(self.expr(e.t), e.t.dtype, e.dtype))
                self.mask = neg if outer is None else b.and_(neg, outer)
                f = self.vec(self.convert(self.expr(e.f), e.f.dtype, e.dtype))
            finally:
                self.mask = outer
            return b.select(c, t, f)
        if self.width == 0 and all(self.in_bounds(ld) for x in (e.t, e.f) for ld in _loads_of(x)):
            return b.select(c, self.convert(self.expr(e.t), e.t.dtype, e.dtype),
                            self.convert(self.expr(e.f), e.f.dtype, e.dtype))
        arms: list[tuple[ir.Value | Lin, ir.Block]] = []
        with b.if_else(self.scalar(c)) as (then, other):
            for arm, x in ((then, e.t), (other, e.f)):
                with arm:
                    arms.append((self.convert(self.expr(x), x.dtype, e.dtype), b.block))
        vector = any(is_vec(v) for v, _ in arms)
        vals = []
        for v, bb in arms:
            with b.goto_block(bb):
                vals.append(self.vec(v) if vector else self.scalar(v))
        phi = b.phi(vals[0].type)
        for v, (_, bb) in zip(vals, arms):
            phi.add_incoming(v, bb)
        return phi

    def in_bounds(self, e: Load) -> bool:
        """Whether the (flat) index of `e` is proven inside 0..size-1 of its buffer from the constant
        ranges of the enclosing loops; such a load needs no guard (weaker than per-dimension bounds,
        but what memory safety needs). Only for scalar addresses: a vector loop's masked-off tail
        lanes run past its range."""
        def var_range(v: Var) -> arith.Interval | None:
            if v in self.ranges:
                lo, hi = self.ranges[v]
                return (lo, hi - 1)
            d = self.defs.get(v)
            return arith.interval(d, var_range) if d is not None else None

        for i, n in zip(e.indices, e.buffer.shape):
            r, ext = arith.interval(i, var_range), arith.as_int(n)
            if r is None or ext is None or r[0] < 0 or r[1] >= ext:
                return False
        return True

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
        if is_vec(a) or is_vec(c):
            a, c = self.vec(a), self.vec(c)
        b = self.b
        if op in ("and", "or"):
            a, c = self.convert(a, dt, "bool"), self.convert(c, dt, "bool")
            return b.and_(a, c) if op == "and" else b.or_(a, c)
        if op in _ICMP:
            if is_float(dt):
                return (b.fcmp_unordered if op == "ne" else b.fcmp_ordered)(_ICMP[op], a, c)
            return (b.icmp_unsigned if is_unsigned(dt) else b.icmp_signed)(_ICMP[op], a, c)
        if is_float(dt):
            return self.float_binop(op, a, c)
        return self.int_binop(op, a, c, dt)

    def lin_op(self, op: str, a: ir.Value | Lin, c: ir.Value | Lin) -> Lin | None:
        b = self.b
        la = a if isinstance(a, Lin) else Lin(a, 0)
        lc = c if isinstance(c, Lin) else Lin(c, 0)
        if is_vec(la.base) or is_vec(lc.base):
            return None
        if op == "add":
            return Lin(b.add(la.base, lc.base), la.stride + lc.stride)
        if op == "sub":
            return Lin(b.sub(la.base, lc.base), la.stride - lc.stride)
        k, other = (c, la) if int_const(c) else (a, lc) if int_const(a) else (None, None)
        if k is None or other is None:
            return None
        return Lin(b.mul(other.base, k), other.stride * int(k.constant))

    def float_binop(self, op: str, a: ir.Value, c: ir.Value) -> ir.Value:
        b = self.b
        simple = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}
        if op in simple:
            r = simple[op](a, c)
            if not _is_half(a.type):  # f16 rounds after every op, as numpy and ONNX's reference do: no FMA
                r.flags.extend(self.flags())
            return r
        if op in ("min", "max"):  # NaN-propagating, like numpy.minimum/maximum
            return b.call(self.intrinsic("minimum" if op == "min" else "maximum", a.type, 2), [a, c])
        if op == "pow":
            return self.float_call(lambda x, t: self.pow(x[0], x[1], t), [a, c])
        if op in ("floordiv", "floormod"):
            q = b.fdiv(a, c)
            fq = self.float_call(lambda x, t: b.call(self.intrinsic("floor", t), x), [q])
            return fq if op == "floordiv" else b.fsub(a, b.fmul(fq, c))
        raise self.err(f"unknown float operator {op}")

    def pow(self, x: ir.Value, e: ir.Value, t: ir.Type) -> ir.Value:
        """x ** e. libm has no vector pow: llvm.pow on a vector is one powf call per lane (~20 ns; the
        LRN of inception_v1, `pow(bias + alpha * sum, 0.75)`, spent 4.6 ms of 58 in them). The
        exponents models use, 2, 0.5 and 0.75 (usually a 0-d constant read at run time), take
        x * x, sqrt(x) (as numpy and onnxruntime do) and sqrt(x) * sqrt(sqrt(x)) (within 2 ulp of
        powf, pow's values at -0 and -inf kept) when every lane's exponent is one of them, checked
        once per vector; others call pow."""
        b = self.b
        vt = t if isinstance(t, ir.VectorType) else None

        def const(v: float) -> ir.Constant:
            return ir.Constant(t, [v] * vt.count) if vt is not None else ir.Constant(t, v)

        def at_zero_and_minus_inf(r: ir.Value) -> ir.Value:  # pow(-0, y) = +0, pow(-inf, y) = +inf
            r = b.select(b.fcmp_ordered("==", x, const(0.0)), const(0.0), r)
            return b.select(b.fcmp_ordered("==", x, const(float("-inf"))), const(float("inf")), r)

        sqrt = self.intrinsic("sqrt", t)
        root = b.call(sqrt, [x])
        fast = {2.0: lambda: b.fmul(x, x), 0.5: lambda: root,  # numpy's x ** 0.5 is sqrt too (-0, -inf)
                0.75: lambda: at_zero_and_minus_inf(b.fmul(root, b.call(sqrt, [root])))}
        if isinstance(e, ir.Constant) and not isinstance(e.constant, (list, tuple)) and e.constant in fast:
            return fast[float(e.constant)]()
        is_ = {v: b.fcmp_ordered("==", e, const(v)) for v in fast}
        r = fast[0.75]()
        r = b.select(is_[0.5], fast[0.5](), r)
        r = b.select(is_[2.0], fast[2.0](), r)
        handled = b.or_(b.or_(is_[2.0], is_[0.5]), is_[0.75])
        if vt is not None:
            mt = handled.type
            handled = b.call(self.ctx.declare(f"llvm.vector.reduce.and.{type_suffix(mt)}", ir.IntType(1), [mt]),
                             [handled])
        fast_bb = b.block
        with b.if_then(b.not_(handled)):
            slow, slow_bb = b.call(self.intrinsic("pow", t, 2), [x, e]), b.block
        phi = b.phi(t)
        phi.add_incoming(r, fast_bb)
        phi.add_incoming(slow, slow_bb)
        return phi

    def int_binop(self, op: str, a: ir.Value, c: ir.Value, dt: str) -> ir.Value:
        b = self.b
        unsigned = is_unsigned(dt)
        simple = {"add": b.add, "sub": b.sub, "mul": b.mul}
        if op in simple:
            return simple[op](a, c)
        if op in ("min", "max"):
            cmp = (b.icmp_unsigned if unsigned else b.icmp_signed)("<" if op == "min" else ">", a, c)
            return b.select(cmp, a, c)
        if op in ("div", "floordiv", "floormod"):
            zero = self.const_of(a.type, 0)
            by_zero = b.icmp_unsigned("==", c, zero)
            c = self.safe_divisor(a, c, by_zero, unsigned)
            return b.select(by_zero, zero, self.int_division(op, a, c, unsigned))
        if op == "pow":
            return self.int_pow(a, c, unsigned)
        raise self.err(f"unknown integer operator {op}")

    def safe_divisor(self, a: ir.Value, c: ir.Value, by_zero: ir.Value, unsigned: bool) -> ir.Value:
        """The divisor, 1 where the hardware would trap: x / 0 (the caller makes that 0, as numpy does)
        and INT_MIN / -1 (then a / 1 = INT_MIN, the wrapped quotient). SIGFPE once killed the process.
        Constant divisors fold the selects away."""
        b = self.b
        one = self.const_of(c.type, 1)
        bad = by_zero
        if not unsigned:
            elem = c.type.element if isinstance(c.type, ir.VectorType) else c.type
            lowest = self.const_of(a.type, -(1 << (elem.width - 1)))
            overflow = b.and_(b.icmp_signed("==", a, lowest), b.icmp_signed("==", c, self.const_of(c.type, -1)))
            bad = b.or_(bad, overflow)
        return b.select(bad, one, c)

    def int_division(self, op: str, a: ir.Value, c: ir.Value, unsigned: bool) -> ir.Value:
        b = self.b
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
        raise self.err(f"unknown integer operator {op}")

    def check_range(self, e: Call) -> ir.Value | Lin:
        """`v`, after recording the first active value outside [lo, hi) in the module's error slot,
        which the runtime reads after the call (the load it guards is itself guarded: no fault)."""
        b, dt = self.b, e.dtype
        self.ctx.checking.add(self.func.name)
        vals = [self.convert(self.expr(a), a.dtype, dt) for a in e.args]
        vector = any(is_vec(x) for x in vals)
        v, lo, hi = (self.vec(x) if vector else self.vec_if(x) for x in vals)
        cmp = b.icmp_unsigned if is_unsigned(dt) else b.icmp_signed
        bad = b.or_(cmp("<", v, lo), cmp(">=", v, hi))
        if vector and self.mask is not None:
            bad = b.and_(bad, self.mask)
        if vector:
            any_fn = self.ctx.declare(f"llvm.vector.reduce.or.{type_suffix(bad.type)}", I1, [bad.type])
            hit = b.call(any_fn, [bad])
        else:
            hit = bad
        with b.if_then(hit, likely=False):
            if vector:
                w = ir.IntType(self.width)
                cttz = self.ctx.declare(f"llvm.cttz.i{self.width}", w, [w, I1])
                lane = b.call(cttz, [b.bitcast(bad, w), ir.Constant(I1, 1)])
                lane = b.zext(lane, I32) if self.width < 32 else b.trunc(lane, I32) if self.width > 32 else lane
                v, lo, hi = (b.extract_element(x, lane) for x in (v, lo, hi))
            slot = self.ctx.index_error
            assert slot is not None
            at = [b.gep(slot, [ir.Constant(I32, 0), ir.Constant(I32, k)]) for k in range(4)]
            won = b.extract_value(b.cmpxchg(at[0], ir.Constant(I64, 0), ir.Constant(I64, 1), "monotonic", "monotonic"), 1)
            with b.if_then(won):
                for p, x in zip(at[1:], (v, lo, hi)):
                    wide = x if x.type.width == 64 else (b.zext if is_unsigned(dt) else b.sext)(x, I64)
                    b.store(wide, p)
        return vals[0]

    def int_pow(self, a: ir.Value, e: ir.Value, unsigned: bool) -> ir.Value:
        """a ** e in the integers, wrapping as multiplication does: square-and-multiply over every bit of
        the exponent, branch-free so it vectorizes. (llvm.pow on f64 lost exactness above 2**53 and its
        vector form crashed the process.) A negative exponent truncates 1 / a**-e toward zero: 1 for
        a == 1, +-1 for a == -1, else 0 (0 for a == 0, where numpy raises)."""
        b = self.b
        one, zero = self.const_of(a.type, 1), self.const_of(a.type, 0)
        elem = a.type.element if isinstance(a.type, ir.VectorType) else a.type
        r, p = one, a
        for bit in range(elem.width):
            mask = 1 << bit if bit < elem.width - 1 else -(1 << bit)  # the sign bit, as a signed literal
            on = b.icmp_signed("!=", b.and_(e, self.const_of(e.type, mask)), self.const_of(e.type, 0))
            r = b.select(on, b.mul(r, p), r)
            p = b.mul(p, p)
        if unsigned:
            return r
        minus_one = self.const_of(a.type, -1)
        odd = b.icmp_signed("!=", b.and_(e, self.const_of(e.type, 1)), self.const_of(e.type, 0))
        neg = b.select(b.icmp_signed("==", a, one), one,
                       b.select(b.icmp_signed("==", a, minus_one), b.select(odd, minus_one, one), zero))
        return b.select(b.icmp_signed("<", e, self.const_of(e.type, 0)), neg, r)

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
        if e.name == "check_range":
            return self.check_range(e)
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
        if name in ("exp", "sigmoid", "tanh", "erf") and self._is_f32_like(x.type):
            from .fastmath import FastMath

            fm = FastMath(b, self.intrinsic)
            return self.float_call(lambda a, t: getattr(fm, name)(a[0]), [x])
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

    @staticmethod
    def _is_f32_like(t: ir.Type) -> bool:
        """f32: the inline fast-math forms apply (f16 takes libm's, correctly rounded once to f16)."""
        elem = t.element if isinstance(t, ir.VectorType) else t
        return isinstance(elem, ir.FloatType)

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
            if is_unsigned(dt):
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
        """The element index of a 1-D access (lower-tir flattened every buffer, ir/flatten.py). The
        integer adds and multiplies of the index carry `nsw` (an in-bounds address does not wrap), as
        the linearization the codegen built itself did."""
        if len(indices) != 1 or len(buf.shape) != 1:
            raise self.err(f"buffer {buf.name} is accessed with {len(indices)} indices: the codegen takes "
                           f"flattened (1-D) accesses, run lower-tir first", loc)
        return self.index_value(indices[0])

    def index_value(self, e: Expr) -> ir.Value | Lin:
        if isinstance(e, Bin) and e.op in ("add", "mul") and e.a.dtype == e.b.dtype == "i64":
            if e.op == "add":
                return self.add_nsw(self.index_value(e.a), self.index_value(e.b))
            a, c = self.index_value(e.a), self.index_value(e.b)
            if is_vec(c) and not is_vec(a):
                a, c = c, a
            return self.mul_nsw(a, self.vec(c) if is_vec(c) else c)
        return self.convert(self.expr(e), e.dtype, "i64")

    def add_nsw(self, a: ir.Value | Lin, c: ir.Value | Lin) -> ir.Value | Lin:
        if isinstance(a, Lin) or isinstance(c, Lin):
            r = self.lin_op("add", a, c)
            if r is not None:
                return r
        if is_vec(a) or is_vec(c):
            a, c = self.vec(a), self.vec(c)
        return self.b.add(a, c, flags=["nsw"])

    def mul_nsw(self, a: ir.Value | Lin, c: ir.Value) -> ir.Value | Lin:
        if isinstance(a, Lin):
            r = self.lin_op("mul", a, c)
            if r is not None:
                return r
            a = self.vec(a)
        if is_vec(a):
            return self.b.mul(a, self.vec(c), flags=["nsw"])
        return self.b.mul(a, c, flags=["nsw"])

    def buffer_ptr(self, buf: Buffer, loc: object) -> ir.Value:
        p = self.bufs.get(buf)
        if p is None:
            raise self.err(f"buffer {buf.name} is neither a parameter nor allocated by an enclosing block", loc)
        return p

    @contextmanager
    def lane_guard(self, lane: int) -> Iterator[None]:
        """Emit the body only for an active lane (unconditionally outside masked code)."""
        if self.mask is None:
            yield
            return
        with self.b.if_then(self.b.extract_element(self.mask, ir.Constant(I32, lane))):
            yield

    def load(self, e: Load) -> ir.Value:
        buf = e.buffer
        ptr = self.buffer_ptr(buf, e.loc)
        idx = self.flat_index(buf, e.indices, e.loc)
        b, et = self.b, mem_type(buf.dtype)
        if isinstance(idx, Lin) and idx.stride == 1:
            vt = ir.VectorType(et, self.width)
            p = b.bitcast(b.gep(ptr, [idx.base], inbounds=True), vt.as_pointer())
            if self.mask is not None:
                fn = self.ctx.declare(f"llvm.masked.load.{type_suffix(vt)}.p0", vt,
                                      [vt.as_pointer(), I32, self.mask.type, vt])
                v = b.call(fn, [p, ir.Constant(I32, nbytes(et)), self.mask, ir.Constant(vt, None)])
            else:
                v = b.load(p, align=nbytes(et))
        elif not is_vec(idx) and self.mask is not None and not self.in_bounds(e):
            # one address for all lanes, which may be out of bounds where no lane is active
            any_fn = self.ctx.declare(f"llvm.vector.reduce.or.{type_suffix(self.mask.type)}", I1, [self.mask.type])
            at = idx.base if isinstance(idx, Lin) else idx
            entry = b.block
            with b.if_then(b.call(any_fn, [self.mask])):
                loaded, bb = b.load(b.gep(ptr, [at], inbounds=True)), b.block
            v = b.phi(et)
            v.add_incoming(loaded, bb)
            v.add_incoming(ir.Constant(et, None), entry)
        elif isinstance(idx, Lin) and idx.stride == 0:
            v = b.load(b.gep(ptr, [idx.base], inbounds=True))
        elif isinstance(idx, Lin) and 1 < idx.stride <= MAX_SHUFFLE_STRIDE:
            # a small constant stride (stride-2 convolutions): one contiguous load of the span the
            # lanes cover (exactly the addresses from the first lane's to the last's) and a shuffle;
            # under a mask, only the span's elements that active lanes pick are loaded
            span = ir.VectorType(et, idx.stride * (self.width - 1) + 1)
            sp = b.bitcast(b.gep(ptr, [idx.base], inbounds=True), span.as_pointer())
            if self.mask is None:
                wide = b.load(sp, align=nbytes(et))
            else:  # a power-of-two span (its extra elements masked off) keeps the masked load one instruction
                span = ir.VectorType(et, 1 << (span.count - 1).bit_length())
                sp = b.bitcast(sp, span.as_pointer())
                off = ir.Constant(ir.VectorType(I1, self.width), [0] * self.width)
                spread = ir.Constant(ir.VectorType(I32, span.count),
                                     [p // idx.stride if p % idx.stride == 0 else self.width for p in range(span.count)])
                smask = b.shuffle_vector(self.mask, off, spread)
                fn = self.ctx.declare(f"llvm.masked.load.{type_suffix(span)}.p0", span,
                                      [span.as_pointer(), I32, smask.type, span])
                wide = b.call(fn, [sp, ir.Constant(I32, nbytes(et)), smask, ir.Constant(span, None)])
            pick = ir.Constant(ir.VectorType(I32, self.width), [idx.stride * k for k in range(self.width)])
            v = b.shuffle_vector(wide, ir.Constant(span, ir.Undefined), pick)
        elif isinstance(idx, Lin):  # any other constant stride: scalar loads at constant offsets
            v = self.strided_load(ptr, idx, et)
        elif is_vec(idx):  # gather (masked-off lanes load nothing): one instruction on AVX2/AVX-512
            iv = self.vec(idx)
            vt = ir.VectorType(et, self.width)
            pt = ir.VectorType(ptr.type, self.width)
            base = b.ptrtoint(ptr, I64)
            offs = b.mul(b.sext(iv, ir.VectorType(I64, self.width)) if iv.type.element.width < 64 else iv,
                         self.const_of(ir.VectorType(I64, self.width), nbytes(et)))
            ptrs = b.inttoptr(b.add(self.splat(base, self.width), offs), pt)
            mask = self.mask if self.mask is not None else ir.Constant(ir.VectorType(I1, self.width),
                                                                        [1] * self.width)
            fn = self.ctx.declare(f"llvm.masked.gather.{type_suffix(vt)}.v{self.width}p0", vt,
                                  [pt, I32, mask.type, vt])
            v = b.call(fn, [ptrs, ir.Constant(I32, nbytes(et)), mask, ir.Constant(vt, None)])
        else:
            v = b.load(b.gep(ptr, [idx], inbounds=True))
        if buf.dtype == "bool":
            return b.icmp_unsigned("!=", v, self.const_of(v.type, 0))
        return v


    def strided_load(self, ptr: ir.Value, idx: Lin, et: ir.Type) -> ir.Value:
        """Lane k loads base + k * stride, a scalar address with a constant offset, into a vector by
        insertelement: no vector index arithmetic, and no gather (which targets without fast gathers,
        Zen 3 among them, scalarize with the index vector computed and extracted lane by lane).
        Under a mask each lane loads only where it is active (a masked-off lane reads as 0)."""
        b = self.b
        vt = ir.VectorType(et, self.width)
        v: ir.Value = ir.Constant(vt, None)
        for lane in range(self.width):
            k = ir.Constant(I32, lane)
            at = b.add(idx.base, ir.Constant(idx.base.type, idx.stride * lane), flags=["nsw"])
            if self.mask is None:
                v = b.insert_element(v, b.load(b.gep(ptr, [at], inbounds=True)), k)
                continue
            entry = b.block
            with b.if_then(b.extract_element(self.mask, k)):
                loaded, bb = b.insert_element(v, b.load(b.gep(ptr, [at], inbounds=True)), k), b.block
            phi = b.phi(vt)
            phi.add_incoming(loaded, bb)
            phi.add_incoming(v, entry)
            v = phi
        return v


def _is_half(t: ir.Type) -> bool:
    return isinstance(t.element if isinstance(t, ir.VectorType) else t, ir.HalfType)


def _loads_of(e: Expr) -> list[Load]:
    return ([e] if isinstance(e, Load) else []) + [ld for c in children(e) for ld in _loads_of(c)]


def _loads(e: Expr) -> bool:
    return isinstance(e, Load) or any(_loads(c) for c in children(e))


MAX_SHUFFLE_STRIDE = 4  # constant strides up to this load contiguously and shuffle, wider ones gather


def int_const(v: object) -> bool:
    return isinstance(v, ir.Constant) and isinstance(v.type, ir.IntType) and isinstance(v.constant, int)


def nbytes(t: ir.Type) -> int:
    return t.width // 8 if isinstance(t, ir.IntType) else fbits(t) // 8


def fbits(t: ir.Type) -> int:
    return {"half": 16, "float": 32, "double": 64}[str(t)]
