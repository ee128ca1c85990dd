"""Helpers the ops' shape rules share, over symbolic dims, and the one copy of the ONNX index
semantics (axes, reduction axes, slices, conv windows) that references and lowerings read too.

Dims are integer `Expr`s built from the arguments' dims and simplified. A provable mismatch
(two different constants) is a user error located at the op; an unprovable one (`n` vs `m`) is
accepted as an assumption (`assume*`) and left to the run-time checks that shape-infer inserts.
The rules themselves sit beside their ops in the family modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..arith import as_int, provably_different, prove_equal, prove_le, simplify
from ..diagnostics import Loc, MlcError
from ..expr import Bin, Const, Expr, const
from ..printer import print_expr
from ..types import ScalarType, TensorType, Type

Shape = tuple[Expr, ...]
ONE = Const(1)


def dims_str(shape: Sequence[Expr]) -> str:
    def one(d: Expr) -> str:
        v = as_int(d)
        return str(v) if v is not None else print_expr(simplify(d))

    return " x ".join(one(d) for d in shape) or "scalar"


def tensor(t: Type, loc: Loc, what: str = "argument") -> TensorType:
    if not isinstance(t, TensorType):
        raise MlcError(f"{what} must be a tensor, got {type(t).__name__}", loc)
    return t


def shape_of(t: Type, loc: Loc, what: str = "argument") -> Shape:
    tt = tensor(t, loc, what)
    if tt.shape is None:
        raise MlcError(f"{what} has unknown rank; run shape-infer first", loc)
    return tt.shape


def norm_axis(axis: Any, rank: int, loc: Loc | None = None, extra: int = 0) -> int:
    """Normalise a possibly negative axis into [0, rank + extra) (shape rules, references and
    lowerings all use this one)."""
    n = rank + extra
    a = int(axis)
    if not -n <= a < n:
        raise MlcError(f"axis {a} out of range for rank {rank}", loc)
    return a + n if a < 0 else a


def dim(v: Any) -> Expr:
    """An attribute value (an int or a symbolic `Expr`) as a simplified dim expression."""
    return simplify(const(v)) if isinstance(v, Expr) else Const(int(v))


def broadcast_shapes(shapes: Sequence[Shape], loc: Loc) -> Shape:
    """numpy broadcasting over symbolic dims: 1 broadcasts, constants > 1 win over symbols."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Expr] = []
    for i in range(rank):
        ds = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        non1 = [d for d in ds if as_int(d) != 1]
        if not non1:
            out.append(ONE)
            continue
        pick = next((d for d in non1 if as_int(d) is not None), non1[0])
        for d in non1:
            if provably_different(pick, d):
                raise MlcError(
                    f"cannot broadcast shapes {' and '.join('(' + dims_str(s) + ')' for s in shapes)}: "
                    f"dim {dims_str([pick])} vs {dims_str([d])}", loc)
            if not prove_equal(pick, d):
                # the result takes `pick`'s size: valid when d equals it or broadcasts (d == 1)
                assume(Bin("or", Bin("eq", d, pick), Bin("eq", d, ONE)),
                       f"broadcast: {dims_str([d])} must equal {dims_str([pick])} or be 1")
        out.append(simplify(pick))
    return tuple(out)


def same_as_input(args: list[Type], attrs: dict[str, Any], loc: Loc) -> Type:
    """The shape rule of ops whose result has their first argument's type."""
    t = tensor(args[0], loc)
    return TensorType(t.shape, t.dtype)


def same_dtype(ts: Sequence[TensorType], loc: Loc) -> str:
    dts = {t.dtype for t in ts}
    if len(dts) > 1:
        raise MlcError(f"operands have different dtypes {', '.join(sorted(dts))}", loc)
    return ts[0].dtype


def reduce_axes(axes: Any, rank: int, loc: Loc | None = None) -> list[int]:
    """The sorted, normalised axes of a reduction (`None`: all of them)."""
    if axes is None:
        return list(range(rank))
    return sorted({norm_axis(a, rank, loc) for a in axes})


def check_dim(a: Expr, b: Expr, what: str, loc: Loc) -> None:
    if provably_different(a, b):
        raise MlcError(f"{what}: {dims_str([a])} vs {dims_str([b])}", loc)
    assume_equal(a, b)


# What an op needs of symbolic dims but cannot prove (k == m, T <= 64); shape-infer turns these into
# run-time checks: equalities into match_casts of the argument, other conditions into `check` ops.
_ASSUMED: ContextVar[list[Assumption] | None] = ContextVar("_ASSUMED", default=None)


@dataclass(frozen=True)
class Assumption:
    cond: Expr  # a boolean expression over dims
    message: str
    equal: tuple[Expr, Expr] | None = None  # set when cond is `a == b`


def assume_equal(a: Expr, b: Expr) -> None:
    """Record that the op is only valid when a == b (nothing to record when provable)."""
    pending = _ASSUMED.get()
    if pending is not None and not prove_equal(a, b):
        pending.append(Assumption(Bin("eq", a, b), f"{dims_str([a])} == {dims_str([b])}", (a, b)))


def assume_le(a: Expr, b: Expr, what: str) -> None:
    """Record that the op is only valid when a <= b."""
    pending = _ASSUMED.get()
    if pending is not None and not prove_le(a, b):
        pending.append(Assumption(Bin("le", a, b), f"{what}: {dims_str([a])} <= {dims_str([b])}"))


def assume(cond: Expr, message: str) -> None:
    pending = _ASSUMED.get()
    if pending is not None:
        pending.append(Assumption(cond, message))


def infer_with_assumptions(infer: Any, args: list[Type], attrs: dict[str, Any], loc: Loc) -> tuple[Type, list[Assumption]]:
    """Run an op's infer and return its type plus the unproven conditions it relied on."""
    token = _ASSUMED.set([])
    try:
        ty = infer(args, attrs, loc)
        return ty, list(_ASSUMED.get() or [])
    finally:
        _ASSUMED.reset(token)


def ints_attr(v: Any, n: int, name: str, loc: Loc) -> tuple[int, ...]:
    t = tuple(int(x) for x in v)
    if len(t) != n:
        raise MlcError(f"attribute {name} needs {n} values, got {len(t)}", loc)
    return t


def conv_attrs(attrs: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """(strides, pads, dilations, groups) of a conv or pool op, defaults filled in (references and
    lowerings read them here)."""
    s = tuple(int(v) for v in attrs.get("strides", (1, 1)))
    p = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
    d = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
    return s, p, d, int(attrs.get("groups", 1))


def window_out(size: Expr, pad: int, k: int, stride: int, dil: int, ceil_mode: bool = False) -> Expr:
    """Output length of a sliding window (ONNX conv/pool formula)."""
    span = size + pad - (dil * (k - 1) + 1)
    if not ceil_mode:
        return simplify(span // stride + 1)
    return simplify((span + stride - 1) // stride + 1)


def pool_dims(s: Shape, attrs: dict[str, Any], loc: Loc, kernel: tuple[int, int], ceil_mode: bool) -> Shape:
    strides = ints_attr(attrs.get("strides", (1, 1)), 2, "strides", loc)
    pads = ints_attr(attrs.get("pads", (0, 0, 0, 0)), 4, "pads", loc)
    dil = ints_attr(attrs.get("dilations", (1, 1)), 2, "dilations", loc)
    out = []
    for i in range(2):
        d = window_out(s[2 + i], pads[i] + pads[i + 2], kernel[i], strides[i], dil[i], ceil_mode)
        n, size = as_int(d), as_int(s[2 + i])
        if ceil_mode and n is not None and size is not None and (n - 1) * strides[i] >= size + pads[i]:
            d = Const(n - 1)
        if as_int(d) is not None and as_int(d) <= 0:  # type: ignore[operator]
            raise MlcError(f"window of {kernel[i]} does not fit input dim {dims_str([s[2 + i]])}", loc)
        out.append(d)
    return tuple(out)


def nchw(t: Type, loc: Loc) -> Shape:
    s = shape_of(t, loc)
    if len(s) != 4:
        raise MlcError(f"expected an NCHW tensor of rank 4, got ({dims_str(s)})", loc)
    return s


def numel(s: Sequence[Expr]) -> Expr:
    p: Expr = ONE
    for d in s:
        p = p * d
    return simplify(p)


def resolve_reshape(src: Shape, target: Sequence[Any], loc: Loc) -> Shape:
    """Explicit target dims (one -1 is solved from the element count); provable count mismatch is an error."""
    dims = [dim(v) for v in target]
    neg = [i for i, d in enumerate(dims) if as_int(d) == -1]
    if len(neg) > 1:
        raise MlcError("reshape: more than one -1 in the target shape", loc)
    if neg:
        rest = numel([d for i, d in enumerate(dims) if i != neg[0]])
        dims[neg[0]] = simplify(Bin("floordiv", numel(src), rest))
    if provably_different(numel(src), numel(dims)):
        raise MlcError(f"reshape: cannot reshape ({dims_str(src)}) into ({dims_str(dims)})", loc)
    return tuple(dims)


def data_and_indices(args: list[Type], op: str, loc: Loc) -> tuple[TensorType, TensorType]:
    t, idx = tensor(args[0], loc), tensor(args[1], loc, "indices")
    if idx.dtype not in ("i32", "i64"):
        raise MlcError(f"{op}: indices must be i32 or i64, got {idx.dtype}", loc)
    return t, idx


BIG = 2**62


def slice_len(d: Expr, begin: Any, end: Any, step: int) -> Expr:
    """Length of ONNX Slice along one axis of length d.

    With all values constant this is exact (clamping, negative wrap). With a symbolic dim, a
    constant end past it or a negative constant start before it is clamped in the type (`x[:2]` on
    `n` has length `min(2, n)`); other bounds are assumed in range (so `x[1:]` on `n` has length
    `n - 1`, not `max(0, n - 1)`), checked at run time where unprovable.
    """
    n = as_int(d)
    b, e = (as_int(dim(v)) for v in (begin, end))
    if n is not None and b is not None and e is not None:
        return Const(len(range(n)[slice(max(min(b, BIG), -BIG), max(min(e, BIG), -BIG), step)]))

    def pos(v: Any, c: int | None, sentinel: Expr) -> Expr:
        if c is None:
            return dim(v)
        if abs(c) >= BIG // 2:
            return sentinel
        return d + c if c < 0 else Const(c)

    if step > 0:
        start, stop = pos(begin, b, Const(0) if (b or 0) < 0 else d), pos(end, e, d if (e or 0) > 0 else Const(0))
        # a constant end past a symbolic dim, or a negative constant start before it, is clamped by
        # ONNX: the type says so (min / max) rather than assuming it in range
        if e is not None and 0 < e < BIG // 2 and not prove_le(stop, d):
            stop = Bin("min", stop, d)
        if b is not None and -BIG // 2 < b < 0 and not prove_le(Const(0), start):
            start = Bin("max", start, Const(0))
        assume_le(start, stop, "slice bounds")
        assume_le(stop, d, "slice end within the dim")
        return simplify((stop - start + (step - 1)) // step)
    start = pos(begin, b, d - 1 if (b or 0) > 0 else Const(-1))
    stop = pos(end, e, Const(-1) if (e or 0) < 0 else d - 1)
    # stepping down, ONNX clamps a constant start past a symbolic dim to its last index and a
    # negative constant end before it to -1 (x[2::-1] on n = 2 has length 2, not 3)
    if b is not None and 0 <= b < BIG // 2 and not prove_le(start, d - 1):
        start = Bin("min", start, d - 1)
    if e is not None and -BIG // 2 < e < 0 and not prove_le(Const(-1), stop):
        stop = Bin("max", stop, Const(-1))
    assume_le(start, d - 1, "slice start within the dim")
    n_out = simplify((start - stop + (-step - 1)) // (-step))
    # an empty result (the end at or past the start) is a length of 0, as ONNX gives, not an error
    return n_out if prove_le(stop, start) else Bin("max", n_out, Const(0))


def slice_start(d: Expr, begin: Any, step: int) -> Expr:
    """ONNX Slice start along an axis of length d after negative wrap and clamping (symbolic begins
    are taken as >= 0): the lowering's counterpart of `slice_len`, which gives the result's dim."""
    bv, n = as_int(dim(begin)), as_int(d)
    if bv is not None and n is not None:
        return Const(range(n)[slice(bv, None, step)].start if len(range(n)[slice(bv, None, step)]) else 0)
    if bv is None:
        e = dim(begin)
        return Bin("min", e, d if step > 0 else d - 1)
    if bv < 0:
        return Bin("max", d + bv, Const(0))
    return Bin("min", Const(bv), d if step > 0 else d - 1)


def scalar_index(t: Type, loc: Loc) -> None:
    if not isinstance(t, ScalarType) and not (isinstance(t, TensorType) and t.shape == ()):
        raise MlcError(f"index must be a scalar, got {type(t).__name__}", loc)
