"""The op registry: one table of graph ops that every part of mlc reads.

An op is declared once (`define`) with its fusion pattern kind and attribute schema, and its
aspects are attached next to it, in its family module (JAX style: the rules sit beside the op):

- shape/dtype inference  (`infer`)  read by shape-infer, the importer, the verifier
- numpy reference        (`ref`)    read by the reference interpreter and constant folding
- lowering to a tensor program (`lower`, built with ir/tir_builder.py) read by lower/fuse
- gradient rule          (`grad`)   read by autodiff (ir/autodiff.py); see `register_grad`
- ONNX import handlers   (`register_onnx`, per opset) read by frontend/onnx_ops.py

The registry imports the family modules itself (`FAMILIES`, loaded by `load`, which
`import mlc.ir.ops` runs), so nothing registers by an import side effect elsewhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..types import TensorType

if TYPE_CHECKING:
    import numpy as np

    from ..diagnostics import MlcError
    from ..expr import Expr
    from ..graph import Value

# Fusion pattern kinds, ordered as in TVM's OpPatternKind: lower kinds fuse into higher ones.
KINDS: tuple[str, ...] = ("elementwise", "broadcast", "injective", "reduction", "out_ewise_fusable", "opaque")


@dataclass
class OpDef:
    name: str
    kind: str
    num_inputs: tuple[int, int]  # (min, max); max -1 = variadic
    attrs: dict[str, Any] = field(default_factory=dict)  # name -> default (REQUIRED = no default)
    doc: str = ""
    pure: bool = True  # False: has an effect (a run-time check), so DCE keeps it
    # each input element feeds many outputs (a convolution: window x output channels); fuse keeps
    # elementwise producers out, as TVM fuses no prologue into conv2d: fused in, the producer would
    # be recomputed at every use (DenseNet's BN-ReLU-conv: 1.75x slower than materialized)
    reuses_inputs: bool = False
    infer: Callable[..., Any] | None = None
    ref: Callable[..., Any] | None = None
    lower: Callable[..., Any] | None = None
    grad: Callable[..., Any] | None = None


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
_OPS: dict[str, OpDef] = {}


def define(name: str, kind: str, num_inputs: int | tuple[int, int], attrs: dict[str, Any] | None = None, doc: str = "",
           pure: bool = True, reuses_inputs: bool = False) -> OpDef:
    if name in _OPS:
        raise ValueError(f"op {name} defined twice")
    if kind not in KINDS:
        raise ValueError(f"op {name}: unknown kind {kind}")
    n = (num_inputs, num_inputs) if isinstance(num_inputs, int) else num_inputs
    op = OpDef(name, kind, n, dict(attrs or {}), doc, pure, reuses_inputs=reuses_inputs)
    _OPS[name] = op
    return op


def get(name: str) -> OpDef | None:
    return _OPS.get(name)


def all_ops() -> dict[str, OpDef]:
    return dict(_OPS)


def _attach(aspect: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        op = _OPS.get(name)
        if op is None:
            raise KeyError(f"register {aspect} for undefined op {name}")
        if getattr(op, aspect) is not None:
            raise ValueError(f"op {name}: {aspect} registered twice")
        setattr(op, aspect, fn)
        return fn

    return deco


def register_infer(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("infer", n)(fn)
        return fn

    return deco


def register_ref(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("ref", n)(fn)
        return fn

    return deco


def register_lower(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            _attach("lower", n)(fn)
        return fn

    return deco


# ---- gradient rules ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GradCall:
    """The forward node a gradient rule differentiates.

    `args`, `out` and `dout` are Values of the function being differentiated: the backward graph
    shares the forward computation, so a rule may use any of them as operands of new nodes.
    `attrs` are the node's attributes with the op's defaults filled in. `dout` is the cotangent of
    `out` (same type); for an op with a tuple result (split) it is a tuple with one entry per
    field, None where that field received no cotangent. `want(i)` says whether input i needs a
    cotangent: rules may skip building the others (unused nodes are dropped anyway)."""

    op: str
    args: tuple[Value, ...]
    attrs: dict[str, Any]
    out: Value
    dout: Value | tuple[Value | None, ...]
    wants: tuple[bool, ...] = ()  # which inputs need a cotangent (empty: all); a rule may skip the others

    def want(self, i: int) -> bool:
        """Whether input `i` needs a cotangent (a rule may return None for it when not)."""
        return not self.wants or self.wants[i]


class GradContext(Protocol):
    """What a gradient rule calls to build backward nodes (ir/autodiff.py implements it).

    Every Value it returns is a new binding of the backward graph, typed by the op's `infer` (so
    `value_shape`/`value_dtype` work on it, symbolic dims included) and located at the forward
    node."""

    def emit(self, op: str, args: Sequence[Value], attrs: dict[str, Any] | None = None) -> Value:
        """Bind `op(args) {attrs}` (any registered op, e.g. a backward op of the family)."""
        ...

    def item(self, t: Value, i: int) -> Value:
        """Field `i` of a tuple-typed value (the result of split)."""
        ...

    def scalar(self, value: float, like: Value) -> Value:
        """A rank-0 tensor holding `value` in `like`'s dtype (broadcasts against anything)."""
        ...

    def zeros_like(self, like: Value) -> Value:
        """Zeros of `like`'s type (symbolic dims allowed)."""
        ...

    def unbroadcast(self, grad: Value, like: Value) -> Value:
        """`grad` (of a broadcast result) summed over the axes that broadcasting added or stretched
        from 1 to reach it, and reshaped to `like`'s shape: the cotangent of the operand `like`."""
        ...

    def error(self, msg: str) -> MlcError:
        """A located error at the forward node (raise it)."""
        ...


# A rule: `rule(g: GradContext, c: GradCall) -> Sequence[Value | None]`, one entry per forward input.
GradRule = Callable[[GradContext, GradCall], Sequence["Value | None"]]


class _NoGrad:
    """The `grad` of an op declared non-differentiable (`register_no_grad`)."""

    def __repr__(self) -> str:
        return "NO_GRAD"

    def __call__(self, g: GradContext, c: GradCall) -> Sequence[Value | None]:
        raise g.error(f"{c.op} has no gradient")


NO_GRAD = _NoGrad()


def register_grad(*names: str) -> Callable[[GradRule], GradRule]:
    """File `fn` as the gradient rule (vector-Jacobian product) of ops `names`.

    How a rule is written::

        @register_grad("mul")
        def _mul_grad(g: GradContext, c: GradCall) -> list[Value | None]:
            a, b = c.args
            return [g.unbroadcast(g.emit("mul", [c.dout, b]), a),
                    g.unbroadcast(g.emit("mul", [c.dout, a]), b)]

    - Arguments: `g` builds nodes (`GradContext`: `emit` any registered op, `scalar`, `zeros_like`,
      `item`, `unbroadcast`, `error`); `c` is the forward node (`GradCall`: op name, inputs, attrs
      with defaults, forward result `out`, its cotangent `dout`).
    - Emit nodes only through `g` (never build `OpCall`s or constants by hand): the backward graph is
      an ordinary graph that shape-infer, fuse, schedule and both codegens compile. Prefer ops that
      lower (have `lower`), so the backward pass compiles to kernels.
    - Return one entry per forward input, in order: the input's cotangent, a Value with exactly the
      input's type (shape and dtype; a broadcast operand goes through `g.unbroadcast`), or None when
      no gradient flows to that input (integer/bool inputs such as indices or a `where` condition,
      or an input the op treats as a constant). Autodiff sums cotangents of values used twice.
    - Autodiff never calls a rule for a node none of whose float inputs depend on a differentiated
      value, nor sends cotangents into integer or bool values, so rules need not check for that.
    - An op with no gradient (floor, sign, argmax, comparisons) is declared with
      `register_no_grad`; a cotangent reaching one on the path to a differentiated value is a
      located error naming the op and the value. An op with neither is reported the same way.
    """

    def deco(fn: GradRule) -> GradRule:
        for n in names:
            _attach("grad", n)(fn)
        return fn

    return deco


def register_no_grad(*names: str) -> None:
    """Declare ops `names` non-differentiable (see `register_grad`)."""
    for n in names:
        _attach("grad", n)(NO_GRAD)


# ---- ONNX import handlers ----------------------------------------------------------------------
def value_shape(v: Value) -> tuple[Expr, ...]:
    """Dims of a tensor value (every value the importer builds has a known rank)."""
    assert isinstance(v.type, TensorType) and v.type.shape is not None, v
    return v.type.shape


def value_dtype(v: Value) -> str:
    assert isinstance(v.type, TensorType), v
    return v.type.dtype


class OnnxNode(Protocol):
    """What a handler reads of an ONNX node (onnx.NodeProto has these)."""

    op_type: str
    name: str

    @property
    def input(self) -> Sequence[str]: ...

    @property
    def output(self) -> Sequence[str]: ...


class ImportContext(Protocol):
    """What an ONNX handler calls on the importer (frontend/onnx_ctx.py `Ctx` implements it).

    Handlers read operands through it (`input` materialises a Value; `const` gives a statically
    known array or None), build graph ops with `emit` (typed by the op's `infer`, folded when all
    operands are constants) and bind the node's outputs with `out`."""

    opset: int

    def input(self, i: int) -> Value: ...
    def opt_input(self, i: int) -> str | None: ...
    def value(self, name: str) -> Value: ...
    def const(self, name: str) -> np.ndarray | None: ...
    def type_of(self, name: str) -> TensorType: ...
    def emit(self, op: str, args: Sequence[Value], attrs: dict[str, Any] | None, hint: str) -> Value: ...
    def constant(self, arr: np.ndarray, hint: str, key: str | None = None, dtype: str | None = None) -> Value: ...
    def scalar_like(self, value: float, like: Value, hint: str) -> Value: ...
    def out(self, i: int, v: Value) -> None: ...
    def error(self, msg: str) -> MlcError: ...
    def try_sym_binary(self, node: OnnxNode) -> bool: ...
    def axes_input(self, node: OnnxNode, attrs: dict[str, Any], idx: int = 1) -> list[int] | None: ...


Handler = Callable[[ImportContext, OnnxNode, dict[str, Any]], None]
_ONNX: dict[str, list[tuple[int, Handler]]] = {}


def register_onnx(*op_types: str, since: int = 1) -> Callable[[Handler], Handler]:
    """File `fn` as the handler of ONNX `op_types` from opset `since` on (the newest applicable
    registration wins, so an opset that changed an op's signature registers a second handler)."""

    def deco(fn: Handler) -> Handler:
        for t in op_types:
            versions = _ONNX.setdefault(t, [])
            if any(v == since for v, _ in versions):
                raise ValueError(f"ONNX {t}: handler for opset {since} registered twice")
            versions.append((since, fn))
            versions.sort(key=lambda x: x[0])
        return fn

    return deco


def onnx_handler(op_type: str, opset: int) -> Handler | None:
    """The handler of `op_type` at `opset`, or None when no registration applies."""
    best = None
    for since, fn in _ONNX.get(op_type, ()):
        if since <= opset:
            best = fn
    return best


def onnx_op_types() -> dict[str, int]:
    """ONNX op type -> the lowest opset any handler of the family modules accepts."""
    return {t: v[0][0] for t, v in _ONNX.items()}


# ---- the family modules --------------------------------------------------------------------------
# Each holds everything about its ops: declaration, shape rule, numpy reference, lowering, ONNX
# handlers and the (empty) gradient slot. Order matters only where a module reads another's table.
FAMILIES: tuple[str, ...] = (
    "elementwise", "reductions", "linalg", "conv_pool", "normalization", "shape_ops", "indexing", "control",
    "sparse_ops",
)


def load() -> None:
    """Import every family module (idempotent)."""
    for m in FAMILIES:
        importlib.import_module(f"{__package__}.{m}")
