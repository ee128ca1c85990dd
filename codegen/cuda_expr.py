"""Scalar expressions of tensor programs as CUDA C expressions.

f16/bf16 values are computed in `float` and rounded only where the IR stores or casts to them, so
every intrinsic has one float implementation. Index arithmetic (i64 loop vars, dims, iterators) is
emitted in 32-bit `int`: 64-bit division is several times slower on the GPU, and the launcher
refuses buffers of 2^31 elements or more, so indices fit. Values loaded from i64 buffers stay
`long long` and C promotion keeps mixed arithmetic in 64 bits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..ir.diagnostics import MlcError
from ..ir.dtype import is_float
from ..ir.expr import Bin, Call, Cast, Const, Expr, Load, Not, Select, Var
from ..ir.tir import Buffer

# 16-bit floats live in memory as __half / __nv_bfloat16 and are computed in float: the conversions
TO_FLOAT = {"f16": "__half2float", "bf16": "__bfloat162float"}
FROM_FLOAT = {"f16": "__float2half_rn", "bf16": "__float2bfloat16_rn"}

# storage (pointer element) type of each dtype
MEM_TYPE: dict[str, str] = {
    "bool": "bool", "i8": "signed char", "i16": "short", "i32": "int", "i64": "long long",
    "u8": "unsigned char", "u16": "unsigned short", "u32": "unsigned int", "u64": "unsigned long long", "f16": "__half", "bf16": "__nv_bfloat16", "f32": "float", "f64": "double",
}
# type arithmetic is done in
COMPUTE_TYPE: dict[str, str] = dict(MEM_TYPE, f16="float", bf16="float")

_UNARY_F32: dict[str, str] = {
    "exp": "expf({})", "log": "logf({})", "sqrt": "sqrtf({})", "rsqrt": "rsqrtf({})", "tanh": "tanhf({})",
    "sigmoid": "(1.0f / (1.0f + expf(-({}))))", "erf": "erff({})", "abs": "fabsf({})", "neg": "(-({}))",
    "floor": "floorf({})", "ceil": "ceilf({})", "round": "roundf({})", "sin": "sinf({})", "cos": "cosf({})",
    "isnan": "isnan({})",
}
_UNARY_F64: dict[str, str] = {
    k: v.replace("f(", "(").replace("1.0f", "1.0") for k, v in _UNARY_F32.items()
}
_UNARY_INT: dict[str, str] = {"abs": "abs({})", "neg": "(-({}))", "isnan": "false"}
_INFIX: dict[str, str] = {
    "add": "+", "sub": "-", "mul": "*", "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
    "and": "&&", "or": "||",
}


def ident(prefix: str, name: str) -> str:
    """A C identifier for an IR name (IR names may hold dots and quotes)."""
    return prefix + re.sub(r"[^0-9A-Za-z_]", lambda m: f"_{ord(m.group()):x}_", name)


def var_name(v: Var) -> str:
    return ident("v_", v.name)


def buf_name(b: Buffer) -> str:
    return ident("b_", b.name)


def index_type(dtype: str) -> str:
    """C type of a scalar variable of `dtype` (integers in 32 bits, see the module docstring)."""
    return "int" if dtype in ("i64", "i32") else COMPUTE_TYPE[dtype]


def float_literal(v: float, dtype: str) -> str:
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    s = repr(float(v))
    return s if dtype == "f64" else s + "f"


class ExprEmitter:
    """Turns expressions into C; `load` decides how a buffer element is read (global, shared, local)."""

    def __init__(self, load: Callable[[Load], str], subst: dict[Var, str] | None = None, kernel_id: int = -1):
        self._load = load
        self.subst = subst if subst is not None else {}
        self.kernel_id = kernel_id  # the PrimFunc's position in the module: what a failed check reports

    def __call__(self, e: Expr) -> str:
        return self.expr(e)

    def expr(self, e: Expr) -> str:
        if isinstance(e, Var):
            return self.subst.get(e, var_name(e))
        if isinstance(e, Const):
            if e.dtype == "bool" or isinstance(e.value, bool):
                return "true" if e.value else "false"
            if is_float(e.dtype):
                return float_literal(float(e.value), e.dtype)
            v = int(e.value)
            if -(2**31) <= v < 2**31:
                return str(v)
            if v == -(2**63):  # the literal 9223372036854775808 does not fit: C writes it this way
                return "(-9223372036854775807LL - 1)"
            return f"{v}ULL" if v >= 2**63 else f"{v}LL"
        if isinstance(e, Load):
            return self._load(e)
        if isinstance(e, Bin):
            return self.binary(e)
        if isinstance(e, Not):
            return f"(!{self.expr(e.a)})"
        if isinstance(e, Select):
            return f"({self.expr(e.cond)} ? {self.expr(e.t)} : {self.expr(e.f)})"
        if isinstance(e, Cast):
            return self.cast(e)
        if isinstance(e, Call):
            return self.call(e)
        raise MlcError(f"codegen cuda: cannot emit expression {type(e).__name__}")

    def cast(self, e: Cast) -> str:
        a = self.expr(e.a)
        if e.dtype in TO_FLOAT:  # round to the 16-bit type, compute on in float
            return f"{TO_FLOAT[e.dtype]}({FROM_FLOAT[e.dtype]}((float)({a})))"
        if e.dtype == "bool":
            return f"(({a}) != 0)"
        return f"(({COMPUTE_TYPE[e.dtype]})({a}))"

    def call(self, e: Call) -> str:
        if e.name == "check_range":  # the value; a bad one is recorded in the error word (PRELUDE)
            v, lo, hi = (self.expr(a) for a in e.args)
            return f"mlc_check_range({v}, (long long)({lo}), (long long)({hi}), {self.kernel_id})"
        arg = self.expr(e.args[0])
        dt = e.args[0].dtype
        table = _UNARY_F64 if dt == "f64" else _UNARY_F32 if is_float(dt) else _UNARY_INT
        if e.name not in table:
            if is_float(e.dtype):  # integer argument of a float intrinsic
                return _UNARY_F32[e.name].format(f"(float)({arg})")
            raise MlcError(f"codegen cuda: intrinsic {e.name} of a {dt} argument is not supported")
        return table[e.name].format(arg)

    def binary(self, e: Bin) -> str:
        a, b, dt = self.expr(e.a), self.expr(e.b), e.a.dtype
        flt = is_float(dt)
        if e.op in _INFIX:
            return f"({a} {_INFIX[e.op]} {b})"
        if e.op == "div":
            return f"({a} / {b})"
        if e.op in ("min", "max"):
            if flt:
                return f"{'fmin' if dt == 'f64' else 'fminf'}({a}, {b})" if e.op == "min" else \
                    f"{'fmax' if dt == 'f64' else 'fmaxf'}({a}, {b})"
            # index arithmetic is `int` but values loaded from i64 buffers or cast to i64 are `long long`:
            # one type for both operands, or the overloads of min/max are ambiguous
            t = MEM_TYPE[dt]
            return f"{e.op}(({t})({a}), ({t})({b}))"
        if e.op == "floordiv":
            return f"floor(({a}) / ({b}))" if dt == "f64" else f"floorf(({a}) / ({b}))" if flt else f"mlc_floordiv({a}, {b})"
        if e.op == "floormod":
            return f"mlc_fmodfloor({a}, {b})" if flt else f"mlc_floormod({a}, {b})"
        if e.op == "pow":
            return f"pow({a}, {b})" if dt == "f64" else f"powf({a}, {b})" if flt else f"mlc_ipow({a}, {b})"
        raise MlcError(f"codegen cuda: unknown binary op {e.op}")


PRELUDE = r"""#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math_constants.h>
#ifndef INFINITY
#define INFINITY CUDART_INF_F
#endif
#ifndef NAN
#define NAN CUDART_NAN_F
#endif
template <typename T> __device__ __forceinline__ T mlc_ipow(T a, T e) {  // as the CPU: wraps; e < 0 truncates
  if constexpr (T(-1) < T(0)) {
    if (e < 0) return a == T(1) ? T(1) : (a == T(-1) ? ((e & 1) ? a : T(1)) : T(0));
  }
  T r = 1; for (; e; e >>= 1, a *= a) if (e & 1) r *= a; return r;
}
// integer floor division / modulo in the operands' common type (int index math stays 32-bit; an i64
// operand, e.g. a min over a long long, makes both long long)
template <typename A, typename B> __device__ __forceinline__ auto mlc_floordiv(A a0, B b0) {
  using T = decltype(a0 + b0); const T a = a0, b = b0;
  T q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
template <typename A, typename B> __device__ __forceinline__ auto mlc_floormod(A a0, B b0) {
  using T = decltype(a0 + b0); const T a = a0, b = b0;
  T r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
__device__ __forceinline__ float mlc_fmodfloor(float a, float b) { return a - b * floorf(a / b); }
__device__ __forceinline__ double mlc_fmodfloor(double a, double b) { return a - b * floor(a / b); }
// A failed check_range: the first one (atomicCAS on the flag) records kernel, value and range here;
// the runtime reads the word once after a run (runtime/cuda.py) and raises the CPU's error. The access
// the check guards is skipped by the lowering, so the value is only reported.
__device__ unsigned long long mlc_index_error[5];  // failed, kernel (position in the module), value, lo, hi
template <typename T> __device__ __forceinline__ T mlc_check_range(T v, long long lo, long long hi, int kernel) {
  const long long x = (long long)v;
  if (__builtin_expect(x < lo || x >= hi, 0) && atomicCAS(&mlc_index_error[0], 0ull, 1ull) == 0ull) {
    mlc_index_error[1] = (unsigned long long)kernel;
    mlc_index_error[2] = (unsigned long long)x;
    mlc_index_error[3] = (unsigned long long)lo;
    mlc_index_error[4] = (unsigned long long)hi;
  }
  return v;
}
template <int OP, typename T> __device__ __forceinline__ T mlc_combine(T a, T b) {
  if (OP == 0) return a + b;
  if (OP == 1) return a * b;
  if (OP == 2) return a > b ? a : b;
  return a < b ? a : b;
}
template <int OP, typename T> __device__ __forceinline__ T mlc_warp_reduce(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = mlc_combine<OP>(v, (T)__shfl_xor_sync(0xffffffffu, v, o));  // 8/16-bit: shuffled as int
  return v;
}
// every thread of the block (NT threads along x, NT a multiple of 32) gets the combined value
template <int OP, int NT, typename T> __device__ __forceinline__ T mlc_block_reduce(T v, T identity) {
  v = mlc_warp_reduce<OP>(v);
  if (NT == 32) return v;
  __shared__ T red[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  v = lane < NT / 32 ? red[lane] : identity;
  return mlc_warp_reduce<OP>(v);
}
"""
