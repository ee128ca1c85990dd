"""Elementwise ops: unary math, binary arithmetic and comparisons with numpy broadcasting, where, cast.

Everything about each op sits together (JAX style): its declaration, shape rule, numpy reference,
lowering to a tensor program (ir/tir_builder.py: a virtual tensor that consumers inline) and ONNX
import handlers and gradient rules (read by ir/autodiff.py; how to write one: registry.register_grad).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..diagnostics import Loc, MlcError
from ..dtype import is_float, to_numpy
from ..expr import Bin, Call, Cast, Const, Expr, Not, Select
from ..graph import Value
from ..tir_builder import Builder, CannotLower, Tensor, as_dtype, broadcast, cst
from ..types import TensorType, Type
from .lowering import Args, Attrs, as_tensor, out_dtype, out_shape
from .reference import Env, Ref, erf, ref, round_bf16
from .registry import (
    REQUIRED,
    GradCall,
    GradContext,
    Handler,
    ImportContext,
    OnnxNode,
    define,
    register_grad,
    register_infer,
    register_lower,
    register_no_grad,
    register_onnx,
    value_dtype,
    value_shape,
)
from .shapes import (
    broadcast_shapes,
    same_as_input,
    same_dtype,
    shape_of,
    tensor,
)

# ---- declarations ----------------------------------------------------------------------------
UNARY: dict[str, str] = {
    "sqrt": "square root", "exp": "e**x", "log": "natural logarithm", "erf": "Gauss error function",
    "neg": "-x", "abs": "|x|", "relu": "max(x, 0)", "sigmoid": "1 / (1 + e**-x)", "tanh": "hyperbolic tangent",
    "reciprocal": "1 / x", "floor": "round down", "ceil": "round up", "round": "round half to even",
    "sin": "sine", "cos": "cosine", "logical_not": "boolean not", "sign": "-1, 0 or 1 by the sign of x",
}

BINARY: dict[str, str] = {
    "add": "a + b", "sub": "a - b", "mul": "a * b",
    "div": "a / b (integers truncate toward zero, as ONNX)", "pow": "a ** b",
    "minimum": "elementwise min", "maximum": "elementwise max",
    "equal": "a == b", "less": "a < b", "greater": "a > b", "less_equal": "a <= b",
    "greater_equal": "a >= b", "logical_and": "a and b", "logical_or": "a or b",
}

COMPARE: tuple[str, ...] = ("equal", "less", "greater", "less_equal", "greater_equal", "logical_and", "logical_or")

for _n, _d in UNARY.items():
    define(_n, "elementwise", 1, doc=_d)

for _n, _d in BINARY.items():
    define(_n, "broadcast", 2, doc=_d + ", numpy broadcasting")

define("leaky_relu", "elementwise", 1, {"alpha": 0.01}, "x if x >= 0 else alpha * x")

define("gelu", "elementwise", 1, {"approximate": "none"}, "x * Phi(x); approximate='tanh' uses the tanh formula")

define("clip", "elementwise", 1, {"min": None, "max": None}, "clamp to [min, max]; None = unbounded")

define("cast", "elementwise", 1, {"dtype": REQUIRED}, "convert element type (float->int truncates)")

define("where", "broadcast", 3, doc="cond ? a : b with broadcasting")

define("isnan", "elementwise", 1, doc="x is NaN (bool)")

define("isinf", "elementwise", 1, {"detect_negative": True, "detect_positive": True}, "x is +inf or -inf (bool)")


# ---- shape rules -----------------------------------------------------------------------------
register_infer(*[n for n in UNARY if n != "logical_not"], "leaky_relu", "gelu", "clip")(same_as_input)


@register_infer("logical_not", "isnan", "isinf")
def _not_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    return TensorType(tensor(args[0], loc).shape, "bool")


@register_infer("cast")
def _cast_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    return TensorType(tensor(args[0], loc).shape, str(attrs["dtype"]))


@register_infer(*[n for n in BINARY if n not in COMPARE])
def _binary_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    ts = [tensor(a, loc) for a in args]
    dt = same_dtype(ts, loc)
    if any(t.shape is None for t in ts):
        return TensorType(None, dt)
    return TensorType(broadcast_shapes([t.shape for t in ts], loc), dt)  # type: ignore[misc]


@register_infer(*COMPARE)
def _compare_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    t = _binary_infer(args, attrs, loc)
    assert isinstance(t, TensorType)
    return TensorType(t.shape, "bool")


@register_infer("where")
def _where_infer(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    c, a, b = (tensor(x, loc) for x in args)
    if c.dtype != "bool":
        raise MlcError(f"where: condition must be bool, got {c.dtype}", loc)
    dt = same_dtype([a, b], loc)
    return TensorType(broadcast_shapes([shape_of(x, loc) for x in (c, a, b)], loc), dt)


# ---- numpy references ------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)


def _gelu_np(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


_UNARY_NP: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sqrt": np.sqrt, "exp": np.exp, "log": np.log, "erf": lambda x: erf(x), "neg": np.negative,
    "abs": np.abs, "relu": lambda x: np.maximum(x, 0), "sigmoid": _sigmoid, "tanh": np.tanh,
    "reciprocal": lambda x: 1 / x, "floor": np.floor, "ceil": np.ceil, "round": np.round,
    "sin": np.sin, "cos": np.cos, "logical_not": np.logical_not, "sign": np.sign, "isnan": np.isnan,
}


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.result_type(a, b), np.integer):
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q)
    return a / b


_BINARY_NP: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _int_div, "pow": np.power,
    "minimum": np.minimum, "maximum": np.maximum, "equal": np.equal, "less": np.less,
    "greater": np.greater, "less_equal": np.less_equal, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
}


def _unary_ref(fn: Callable[[np.ndarray], np.ndarray]) -> Ref:
    return lambda args, attrs, t, env: fn(np.asarray(args[0]))


def _binary_ref(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Ref:
    return lambda args, attrs, t, env: fn(np.asarray(args[0]), np.asarray(args[1]))


for _n, _f in _UNARY_NP.items():
    ref(_n)(_unary_ref(_f))

for _n, _g in _BINARY_NP.items():
    ref(_n)(_binary_ref(_g))


@ref("leaky_relu")
def _leaky_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    return np.where(x >= 0, x, x * float(attrs.get("alpha", 0.01)))


@ref("gelu")
def _gelu_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return _gelu_np(args[0], str(attrs.get("approximate", "none")))


@ref("clip")
def _clip_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = args[0]
    lo, hi = attrs.get("min"), attrs.get("max")
    if lo is not None:
        x = np.maximum(x, np.asarray(lo).astype(x.dtype))
    if hi is not None:
        x = np.minimum(x, np.asarray(hi).astype(x.dtype))
    return x


@ref("cast")
def _cast_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    dt = str(attrs["dtype"])
    if dt == "bf16":
        return round_bf16(np.asarray(args[0]).astype(np.float32))
    with np.errstate(over="ignore"):  # out of f16's range is +-inf, as on the GPU (amp's -1e9 masks)
        return np.asarray(args[0]).astype(to_numpy(dt))


@ref("where")
def _where_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    return np.where(args[0], args[1], args[2])


@ref("isinf")
def _isinf_ref(args: list[Any], attrs: dict[str, Any], t: Type, env: Env) -> Any:
    x = np.asarray(args[0])
    pos, neg = bool(attrs.get("detect_positive", True)), bool(attrs.get("detect_negative", True))
    return (np.isposinf(x) & pos) | (np.isneginf(x) & neg)


# ---- lowerings -------------------------------------------------------------------------------
def _round_even(x: Expr) -> Expr:
    """numpy's round-half-to-even from floor: ties go to the even neighbour."""
    f = Call("floor", (x,), x.dtype)
    half = cst(0.5, x.dtype)
    odd = f - cst(2, x.dtype) * Call("floor", (f * half,), x.dtype)  # 1 when f is odd
    return Select(Bin("eq", x - f, half), f + odd, Call("round", (x,), x.dtype))


def _intrinsic(name: str) -> Callable[[Expr], Expr]:
    return lambda x: Call(name, (x,), x.dtype)


UNARY_EXPR: dict[str, Callable[[Expr], Expr]] = {
    **{n: _intrinsic(n) for n in ("sqrt", "exp", "log", "erf", "abs", "sigmoid", "tanh", "floor", "ceil", "sin", "cos")},
    "neg": lambda x: cst(0, x.dtype) - x,
    "relu": lambda x: Bin("max", x, cst(0, x.dtype)),
    "reciprocal": lambda x: Bin("div", cst(1, x.dtype), x),
    "round": _round_even,
    "logical_not": lambda x: Not(as_dtype(x, "bool")),
    "sign": lambda x: Select(Bin("gt", x, cst(0, x.dtype)), cst(1, x.dtype),
                             Select(Bin("lt", x, cst(0, x.dtype)), cst(-1, x.dtype), x)),  # 0 and NaN: x
    "isnan": lambda x: Call("isnan", (x,), "bool") if is_float(x.dtype) else Const(False, "bool"),
}


def _gelu_expr(x: Expr, approximate: str) -> Expr:
    dt = x.dtype
    if approximate == "tanh":
        inner = cst(math.sqrt(2 / math.pi), dt) * (x + cst(0.044715, dt) * x * x * x)
        return cst(0.5, dt) * x * (cst(1, dt) + Call("tanh", (inner,), dt))
    return cst(0.5, dt) * x * (cst(1, dt) + Call("erf", (x * cst(1 / math.sqrt(2), dt),), dt))


def _unary_expr(op: str, attrs: Attrs, x: Expr) -> Expr:
    if op in UNARY_EXPR:
        return UNARY_EXPR[op](x)
    dt = x.dtype
    if op == "leaky_relu":
        return Select(Bin("ge", x, cst(0, dt)), x, x * cst(float(attrs.get("alpha", 0.01)), dt))
    if op == "gelu":
        if not is_float(dt):
            raise CannotLower("gelu of a non-float tensor")
        return _gelu_expr(x, str(attrs.get("approximate", "none")))
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        if lo is not None:
            x = Bin("max", x, cst(lo, dt))
        if hi is not None:
            x = Bin("min", x, cst(hi, dt))
        return x
    if op == "cast":
        return Cast(str(attrs["dtype"]), x)
    if op == "isinf":
        if not is_float(dt):
            return Const(False, "bool")
        pos = Bin("eq", x, Const(float("inf"), dt)) if attrs.get("detect_positive", True) else None
        neg = Bin("eq", x, Const(float("-inf"), dt)) if attrs.get("detect_negative", True) else None
        if pos is not None and neg is not None:
            return Bin("or", pos, neg)
        return pos or neg or Const(False, "bool")
    raise CannotLower(f"no elementwise lowering of {op}")


def _lower_unary(op: str) -> Callable[..., Tensor]:
    def lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
        x = as_tensor(args[0])
        assert isinstance(t, TensorType)
        return b.compute(x.shape, out_dtype(t), lambda i: _unary_expr(op, attrs, x.at(i)), op)

    return lower


for _op in (*UNARY_EXPR, "leaky_relu", "gelu", "clip", "cast", "isinf"):
    register_lower(_op)(_lower_unary(_op))

_BIN_EXPR: dict[str, Callable[[Expr, Expr], Expr]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: Bin("div", a, b), "pow": lambda a, b: Bin("pow", a, b),
    "minimum": lambda a, b: Bin("min", a, b), "maximum": lambda a, b: Bin("max", a, b),
    "equal": lambda a, b: Bin("eq", a, b), "less": lambda a, b: Bin("lt", a, b),
    "greater": lambda a, b: Bin("gt", a, b), "less_equal": lambda a, b: Bin("le", a, b),
    "greater_equal": lambda a, b: Bin("ge", a, b),
    "logical_and": lambda a, b: Bin("and", as_dtype(a, "bool"), as_dtype(b, "bool")),
    "logical_or": lambda a, b: Bin("or", as_dtype(a, "bool"), as_dtype(b, "bool")),
}

assert set(_BIN_EXPR) == set(BINARY)


def _lower_binary(op: str) -> Callable[..., Tensor]:
    def lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
        x, y = as_tensor(args[0]), as_tensor(args[1])
        shp = out_shape(t)
        fx, fy = broadcast(x, shp), broadcast(y, shp)
        return b.compute(shp, out_dtype(t), lambda i: _BIN_EXPR[op](fx(i), fy(i)), op)

    return lower


for _op in BINARY:
    register_lower(_op)(_lower_binary(_op))


@register_lower("where")
def _where_lower(b: Builder, args: Args, attrs: Attrs, t: Type) -> Tensor:
    shp = out_shape(t)
    c, x, y = (broadcast(as_tensor(a), shp) for a in args)
    return b.compute(shp, out_dtype(t), lambda i: Select(as_dtype(c(i), "bool"), x(i), y(i)), "where")


# ---- gradient rules --------------------------------------------------------------------------
# Each maps the output cotangent `c.dout` to input cotangents built as graph ops (see
# registry.register_grad); a broadcast operand's cotangent is summed back by `g.unbroadcast`.
@register_grad("mul")
def _mul_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    a, b = c.args
    return [g.unbroadcast(g.emit("mul", [c.dout, b]), a), g.unbroadcast(g.emit("mul", [c.dout, a]), b)]


def _d(c: GradCall) -> Value:
    assert isinstance(c.dout, Value)
    return c.dout


@register_grad("add")
def _add_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    return [g.unbroadcast(_d(c), c.args[0]), g.unbroadcast(_d(c), c.args[1])]


@register_grad("sub")
def _sub_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    return [g.unbroadcast(_d(c), c.args[0]),
            g.unbroadcast(g.emit("neg", [_d(c)]), c.args[1]) if c.want(1) else None]


@register_grad("div")
def _div_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    a, b = c.args
    da = g.unbroadcast(g.emit("div", [_d(c), b]), a) if c.want(0) else None
    db = None
    if c.want(1):  # -d * a / b**2 = -(d * out) / b
        db = g.unbroadcast(g.emit("neg", [g.emit("div", [g.emit("mul", [_d(c), c.out]), b])]), b)
    return [da, db]


@register_grad("pow")
def _pow_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    a, b = c.args
    da = db = None
    if c.want(0):  # d * b * a ** (b - 1)
        am1 = g.emit("pow", [a, g.emit("sub", [b, g.scalar(1.0, b)])])
        da = g.unbroadcast(g.emit("mul", [_d(c), g.emit("mul", [b, am1])]), a)
    if c.want(1):  # d * out * log(a)
        db = g.unbroadcast(g.emit("mul", [_d(c), g.emit("mul", [c.out, g.emit("log", [a])])]), b)
    return [da, db]


def _unary(name: str) -> Callable[[Callable[[GradContext, GradCall, Value, Value], Value]], None]:
    """Register a one-input rule written as `fn(g, c, x, dout) -> dx`."""

    def deco(fn: Callable[[GradContext, GradCall, Value, Value], Value]) -> None:
        register_grad(name)(lambda g, c: [fn(g, c, c.args[0], _d(c))])

    return deco


@_unary("exp")
def _exp_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("mul", [d, c.out])


@_unary("log")
def _log_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("div", [d, x])


@_unary("sqrt")
def _sqrt_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("div", [d, g.emit("mul", [c.out, g.scalar(2.0, x)])])


@_unary("tanh")
def _tanh_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("mul", [d, g.emit("sub", [g.scalar(1.0, x), g.emit("mul", [c.out, c.out])])])


@_unary("sigmoid")
def _sigmoid_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("mul", [d, g.emit("mul", [c.out, g.emit("sub", [g.scalar(1.0, x), c.out])])])


@_unary("relu")
def _relu_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    zero = g.scalar(0.0, x)
    return g.emit("where", [g.emit("greater", [x, zero]), d, zero])


@_unary("leaky_relu")
def _leaky_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    slope = g.emit("mul", [d, g.scalar(float(c.attrs["alpha"]), x)])
    return g.emit("where", [g.emit("greater_equal", [x, g.scalar(0.0, x)]), d, slope])


@_unary("erf")
def _erf_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:  # 2/sqrt(pi) e**-x^2
    e = g.emit("exp", [g.emit("neg", [g.emit("mul", [x, x])])])
    return g.emit("mul", [d, g.emit("mul", [e, g.scalar(2 / math.sqrt(math.pi), x)])])


@_unary("gelu")
def _gelu_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    def k(v: float) -> Value:
        return g.scalar(v, x)

    def op(name: str, *a: Value) -> Value:
        return g.emit(name, list(a))

    x2 = op("mul", x, x)
    if c.attrs["approximate"] == "tanh":  # 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 a x^2)
        s, a = math.sqrt(2 / math.pi), 0.044715
        t = op("tanh", op("mul", k(s), op("add", x, op("mul", k(a), op("mul", x2, x)))))
        left = op("mul", k(0.5), op("add", k(1.0), t))
        dt = op("mul", op("sub", k(1.0), op("mul", t, t)), op("mul", k(s), op("add", k(1.0), op("mul", k(3 * a), x2))))
        return op("mul", d, op("add", left, op("mul", op("mul", k(0.5), x), dt)))
    cdf = op("mul", k(0.5), op("add", k(1.0), op("erf", op("mul", x, k(1 / math.sqrt(2))))))
    pdf = op("mul", k(1 / math.sqrt(2 * math.pi)), op("exp", op("mul", x2, k(-0.5))))
    return op("mul", d, op("add", cdf, op("mul", x, pdf)))


@_unary("neg")
def _neg_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("neg", [d])


@_unary("abs")
def _abs_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("mul", [d, g.emit("sign", [x])])


@_unary("reciprocal")
def _reciprocal_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("neg", [g.emit("mul", [d, g.emit("mul", [c.out, c.out])])])


@_unary("sin")
def _sin_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("mul", [d, g.emit("cos", [x])])


@_unary("cos")
def _cos_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    return g.emit("neg", [g.emit("mul", [d, g.emit("sin", [x])])])


@_unary("clip")
def _clip_grad(g: GradContext, c: GradCall, x: Value, d: Value) -> Value:
    """Passes inside [min, max] (bounds included, as torch.clamp), zero outside."""
    lo, hi = c.attrs["min"], c.attrs["max"]
    mask: Value | None = None
    for bound, cmp in ((lo, "greater_equal"), (hi, "less_equal")):
        if bound is not None:
            m = g.emit(cmp, [x, g.scalar(float(bound), x)])
            mask = m if mask is None else g.emit("logical_and", [mask, m])
    return d if mask is None else g.emit("where", [mask, d, g.scalar(0.0, x)])


@register_grad("minimum", "maximum")
def _minmax_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """The cotangent goes to the chosen operand; a tie goes to the first (as numpy picks it)."""
    a, b = c.args
    first = g.emit("less_equal" if c.op == "minimum" else "greater_equal", [a, b])
    zero = g.scalar(0.0, a)
    return [g.unbroadcast(g.emit("where", [first, _d(c), zero]), a) if c.want(0) else None,
            g.unbroadcast(g.emit("where", [first, zero, _d(c)]), b) if c.want(1) else None]


@register_grad("where")
def _where_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    cond, a, b = c.args
    zero = g.scalar(0.0, a)
    return [None, g.unbroadcast(g.emit("where", [cond, _d(c), zero]), a) if c.want(1) else None,
            g.unbroadcast(g.emit("where", [cond, zero, _d(c)]), b) if c.want(2) else None]


@register_grad("cast")
def _cast_grad(g: GradContext, c: GradCall) -> list[Value | None]:
    """Float to float: the cotangent cast back; from an integer there is nothing to differentiate."""
    src = value_dtype(c.args[0])
    return [g.emit("cast", [_d(c), ], {"dtype": src}) if is_float(src) else None]


# Piecewise constant or boolean-valued: no gradient (a cotangent reaching one is an error).
register_no_grad("floor", "ceil", "round", "sign", "logical_not", "isnan", "isinf", *COMPARE)


# ---- ONNX handlers ---------------------------------------------------------------------------
def _simple(op: str, **fixed: Any) -> Handler:
    def run(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
        args = [ctx.input(i) for i in range(len(node.input))]
        ctx.out(0, ctx.emit(op, args, dict(fixed), node.output[0]))

    return run


UNARY_MAP = {
    "Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Erf": "erf", "Neg": "neg", "Abs": "abs", "Relu": "relu",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil",
    "Round": "round", "Sin": "sin", "Cos": "cos", "Not": "logical_not", "Sign": "sign", "IsNaN": "isnan",
}

BINARY_MAP = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal", "Less": "less",
    "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
    "And": "logical_and", "Or": "logical_or",
}

for _k, _v in UNARY_MAP.items():
    register_onnx(_k)(_simple(_v))


def legacy_broadcast(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any], a: Any, b: Any) -> Any:
    """Before opset 7 a binary op broadcasts only with `broadcast=1`, the second operand's dims
    matched against the first's from `axis` on (default: the trailing dims, numpy's rule): `b`
    gets trailing unit dims so that numpy broadcasting gives the same result."""
    if ctx.opset >= 7 or not attrs.get("broadcast", 0) or "axis" not in attrs:
        return b
    ra, rb = len(value_shape(a)), len(value_shape(b))
    ax = int(attrs["axis"])
    ax = ax + ra if ax < 0 else ax
    if not 0 <= ax <= ra - rb:
        raise ctx.error(f"legacy broadcast axis {attrs['axis']} does not fit ranks {ra} and {rb}")
    if ax + rb == ra:
        return b
    return ctx.emit("reshape", [b], {"shape": tuple(value_shape(b)) + (1,) * (ra - ax - rb)}, node.output[0] + "_bcast")


def _binary_onnx(op: str) -> Handler:
    def run(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
        if "axis" not in attrs and ctx.try_sym_binary(node):
            return
        a = ctx.input(0)
        ctx.out(0, ctx.emit(op, [a, legacy_broadcast(ctx, node, attrs, a, ctx.input(1))], {}, node.output[0]))

    return run


for _k, _v in BINARY_MAP.items():
    register_onnx(_k)(_binary_onnx(_v))


@register_onnx("IsInf")
def _isinf_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    flags = {k: bool(attrs.get(k, 1)) for k in ("detect_negative", "detect_positive")}
    ctx.out(0, ctx.emit("isinf", [ctx.input(0)], flags, node.output[0]))


@register_onnx("Pow")
def _pow_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    a = ctx.input(0)
    b = legacy_broadcast(ctx, node, attrs, a, ctx.input(1))
    if value_dtype(b) != value_dtype(a):
        b = ctx.emit("cast", [b], {"dtype": value_dtype(a)}, node.output[0] + "_exp")
    ctx.out(0, ctx.emit("pow", [a, b], {}, node.output[0]))


@register_onnx("Min", "Max", "Sum", "Mean")
def _variadic_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    if node.op_type in ("Min", "Max") and len(node.input) == 2 and ctx.try_sym_binary(node):
        return
    op = {"Min": "minimum", "Max": "maximum", "Sum": "add", "Mean": "add"}[node.op_type]
    acc = ctx.input(0)
    for i in range(1, len(node.input)):
        acc = ctx.emit(op, [acc, ctx.input(i)], {}, node.output[0] + "_acc")
    if node.op_type == "Mean" and len(node.input) > 1:
        acc = ctx.emit("div", [acc, ctx.scalar_like(len(node.input), acc, "n")], {}, node.output[0])
    ctx.out(0, acc)


@register_onnx("LeakyRelu")
def _leaky_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("leaky_relu", [ctx.input(0)], {"alpha": float(attrs.get("alpha", 0.01))}, node.output[0]))


@register_onnx("Gelu")
def _gelu_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    ctx.out(0, ctx.emit("gelu", [ctx.input(0)], {"approximate": str(attrs.get("approximate", "none"))},
                        node.output[0]))


@register_onnx("Clip")
def _clip_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """Constant bounds (attributes before opset 11, inputs after) become `clip`; bounds given at run
    time become maximum / minimum (min > max gives max, as ONNX)."""
    x, o = ctx.input(0), node.output[0]
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
        ctx.out(0, ctx.emit("clip", [x], {"min": lo, "max": hi}, o))
        return
    names = [ctx.opt_input(1), ctx.opt_input(2)]
    consts = [None if n is None else ctx.const(n) for n in names]
    if all(n is None or c is not None for n, c in zip(names, consts)):
        bounds = [None if c is None else np.asarray(c).reshape(-1)[0].item() for c in consts]
        ctx.out(0, ctx.emit("clip", [x], {"min": bounds[0], "max": bounds[1]}, o))
        return
    y = x
    for n, op in zip(names, ("maximum", "minimum")):
        if n is None:
            continue
        b = ctx.value(n)
        if len(value_shape(b)) != 0:
            b = ctx.emit("reshape", [b], {"shape": ()}, o + "_bound")
        if value_dtype(b) != value_dtype(x):
            b = ctx.emit("cast", [b], {"dtype": value_dtype(x)}, o + "_bound")
        y = ctx.emit(op, [y, b], {}, o if op == "minimum" or names[1] is None else o + "_lo")
    ctx.out(0, y)


@register_onnx("Xor")
def _xor_onnx(ctx: ImportContext, node: OnnxNode, attrs: dict[str, Any]) -> None:
    """a != b on booleans: (a or b) and not (a and b)."""
    a, b, o = ctx.input(0), ctx.input(1), node.output[0]
    both = ctx.emit("logical_and", [a, b], {}, o + "_both")
    either = ctx.emit("logical_or", [a, b], {}, o + "_either")
    ctx.out(0, ctx.emit("logical_and", [either, ctx.emit("logical_not", [both], {}, o + "_notboth")], {}, o))
