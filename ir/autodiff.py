"""Reverse-mode automatic differentiation of graph functions (RAF style: the backward pass is graph IR).

`grad_function` builds `@grad`: the forward bindings, a loss on the result, then one backward node
sequence made by the ops' gradient rules (ir/ops/registry.py `register_grad`), returning `loss` and
one `grad_<name>` per differentiated constant or input. `train_step_function` does the same with the
differentiated constants lifted to inputs and an optimizer update appended, so one call of
`@train_step` is a whole training step with no hidden state. Both return ordinary graph functions:
shape-infer, fuse, schedule and the code generators compile them like inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import ops
from .arith import as_int, prove_equal
from .diagnostics import UNKNOWN, Loc, MlcError
from .dtype import is_float
from .expr import Const, Expr, Var, free_vars
from .graph import (
    Attrs,
    Binding,
    Block,
    CallExtern,
    CallGraph,
    CallTensor,
    Constant,
    Function,
    GetItem,
    If,
    Loop,
    MakeTuple,
    MatchCast,
    Node,
    OpCall,
    Scalar,
    Value,
    attrs_of,
)
from .names import fresh_name, sanitize
from .ops.registry import NO_GRAD, REQUIRED, GradCall
from .rewrite import operands, remap_args, used_names, walk_bindings
from .types import ScalarType, TensorType, TupleType, Type

LOSSES: tuple[str, ...] = ("sum", "mean", "mse", "cross-entropy")
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class Loss:
    """`kind` one of LOSSES; `arg` the new input's name for mse (target) and cross-entropy (labels)."""

    kind: str
    arg: str | None = None

    @staticmethod
    def parse(text: str) -> Loss:
        kind, _, arg = text.partition(":")
        if kind not in LOSSES:
            raise MlcError(f"--loss: unknown loss '{kind}' (one of sum, mean, mse:TARGET, cross-entropy:LABELS)")
        if kind in ("mse", "cross-entropy") and not arg:
            raise MlcError(f"--loss {kind} needs the name of its new input: {kind}:NAME")
        if kind in ("sum", "mean") and arg:
            raise MlcError(f"--loss {kind} takes no input name (got '{arg}')")
        return Loss(kind, arg or None)


@dataclass(frozen=True)
class Optimizer:
    """Update rule of `@train_step`; weight decay is L2 added to the gradient (as torch.optim's)."""

    kind: str
    lr: float = 0.01
    beta1: float = 0.9  # momentum's coefficient, Adam's first-moment decay
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    loss_scale: bool = False  # dynamic loss scaling (mixed precision): state `loss_scale`, `good_steps`
    scale_window: int = 1000  # good steps in a row after which the scale doubles


@dataclass(frozen=True)
class Spec:
    """What to differentiate: constant keys (None = every float initializer-backed constant) and inputs."""

    wrt: tuple[str, ...] | None = None
    wrt_inputs: tuple[str, ...] = ()
    loss: Loss | None = None


def _is_float_tensor(t: Type) -> bool:
    if isinstance(t, TupleType):
        return any(_is_float_tensor(f) for f in t.fields)
    return isinstance(t, TensorType) and is_float(t.dtype)


def _plain(v: Any) -> Any:
    """An attribute value as the printer writes it best (constant dims as ints, lists as tuples)."""
    if isinstance(v, list | tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, Expr) and as_int(v) is not None:
        return as_int(v)
    return v


class Emitter:
    """Builds new bindings, typed by each op's shape rule; the `GradContext` the rules call."""

    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.bindings: list[Binding] = []
        self.hint = "t"
        self.loc: Loc = UNKNOWN
        self.made: set[str] = set()  # names of the values this emitter bound
        # loop binding name -> per carried value, its stack of per-iteration start values (None: not
        # recorded, the backward pass never reads it); filled by `record_loops`, read by `backprop`
        self.records: dict[str, tuple[Value | None, ...]] = {}
        # loop binding name -> {position of a body binding: the stack of its per-iteration values}: the
        # values the backward loop reads instead of recomputing them (`record_loops`, `_kept_values`)
        self.kept: dict[str, dict[int, Value]] = {}

    def bind(self, node: Node, ty: Type, name: str | None = None) -> Value:
        v = Value(fresh_name(name or self.hint, self.used), ty, self.loc)
        self.bindings.append(Binding(v, node, self.loc))
        self.made.add(v.name)
        return v

    def emit(self, op: str, args: Sequence[Value], attrs: dict[str, Any] | None = None) -> Value:
        d = ops.get(op)
        if d is None or d.infer is None:
            raise MlcError(f"autodiff: gradient uses unknown op '{op}'", self.loc)
        a = {k: _plain(v) for k, v in (attrs or {}).items()}
        ty = d.infer([x.type for x in args], a, self.loc)
        return self.bind(OpCall(op, tuple(args), attrs_of(a), self.loc), ty)

    def item(self, t: Value, i: int) -> Value:
        assert isinstance(t.type, TupleType)
        return self.bind(GetItem(t, i, self.loc), t.type.fields[i])

    def scalar(self, value: float, like: Value) -> Value:
        return self.emit("full", [], {"shape": (), "value": float(value), "dtype": _dtype(like)})

    def zeros_like(self, like: Value) -> Value:
        return self.emit("full", [], {"shape": _shape(like), "value": 0.0, "dtype": _dtype(like)})

    def unbroadcast(self, grad: Value, like: Value) -> Value:
        gs, ls = _shape(grad), _shape(like)
        lead = len(gs) - len(ls)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(ls)
                                    if as_int(d) == 1 and as_int(gs[lead + i]) != 1]
        out = grad
        if axes:
            out = self.emit("sum", [grad], {"axes": tuple(axes), "keepdims": False})
        if len(_shape(out)) != len(ls):
            out = self.emit("reshape", [out], {"shape": ls})
        return out

    def error(self, msg: str) -> MlcError:
        return MlcError(msg, self.loc)

    def copy(self, v: Value, name: str) -> Value:
        """A new binding equal to `v` (a result needs its own name)."""
        return self.bind(OpCall("reshape", (v,), attrs_of({"shape": _shape(v)}), self.loc), v.type, name)


def _shape(v: Value) -> tuple[Expr, ...]:
    assert isinstance(v.type, TensorType) and v.type.shape is not None, v
    return v.type.shape


def _dtype(v: Value) -> str:
    assert isinstance(v.type, TensorType), v
    return v.type.dtype


def _same_type(a: Type, b: Type) -> bool:
    if not (isinstance(a, TensorType) and isinstance(b, TensorType)) or a.dtype != b.dtype:
        return False
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    return all(prove_equal(x, y) or as_int(x) is None or as_int(y) is None for x, y in zip(a.shape, b.shape))


def _with_defaults(op: str, call: OpCall) -> dict[str, Any]:
    d = ops.get(op)
    assert d is not None
    out = {k: v for k, v in d.attrs.items() if v is not REQUIRED}
    out.update(dict(call.attrs))
    return out


# ---- the forward part ----------------------------------------------------------------------------
Recipe = tuple[str, tuple[str, ...], Attrs]


@dataclass(frozen=True)
class Provenance:
    """How the importer folded constants from initializers (module meta `derived`), and the types of
    the arrays those folds start from, which the function itself does not name."""

    recipes: dict[str, Recipe]
    types: dict[str, TensorType]

    @staticmethod
    def of(meta: Attrs, constants: dict[str, Any] | None) -> Provenance:
        from .dtype import from_numpy

        recipes: dict[str, Recipe] = {}
        for k, v in meta:
            if k == "derived" and isinstance(v, tuple):
                for r in v:
                    if isinstance(r, tuple) and len(r) == 4:
                        recipes[str(r[0])] = (str(r[1]), tuple(str(a) for a in r[2]), tuple(r[3]))  # type: ignore[misc]
        types: dict[str, TensorType] = {}
        for leaf in {a for _, args, _ in recipes.values() for a in args if a not in recipes}:
            if constants is not None and leaf in constants:
                arr = constants[leaf]
                types[leaf] = TensorType(tuple(Const(int(d)) for d in arr.shape), from_numpy(arr.dtype))
        return Provenance({k: r for k, r in recipes.items() if _leaves(recipes, k) <= set(types)}, types)

    def leaves(self, key: str) -> list[str]:
        """The source keys `key` was folded from (itself when it was not folded), in first-use order."""
        return sorted(_leaves(self.recipes, key), key=lambda x: _order(self.recipes, key).index(x))


def _leaves(recipes: dict[str, Recipe], key: str) -> set[str]:
    return set(_order(recipes, key))


def _order(recipes: dict[str, Recipe], key: str) -> list[str]:
    if key not in recipes:
        return [key]
    out: list[str] = []
    for a in recipes[key][1]:
        out += [x for x in _order(recipes, a) if x not in out]
    return out


NO_PROVENANCE = Provenance({}, {})


def _param_type(t: Type | None) -> bool:
    return isinstance(t, TensorType) and is_float(t.dtype) and t.shape is not None and len(t.shape) > 0


def differentiable_constants(fn: Function, prov: Provenance = NO_PROVENANCE) -> list[str]:
    """Keys of the constants `--wrt all` differentiates, in first-use order: the float arrays of rank
    >= 1 the module owns, a folded constant replaced by the initializers it was folded from.

    Rank-0 constants are left out: importers make them from literals (a scale, 1/sqrt(2), -inf)."""
    keys: list[str] = []
    for b in fn.body.bindings:
        if not isinstance(b.node, Constant):
            continue
        k = b.node.key
        if k in prov.recipes:
            cands = [(x, prov.types.get(x)) for x in prov.leaves(k)]
        else:
            cands = [(k, b.var.type)]
        keys += [x for x, t in cands if _param_type(t) and x not in keys]
    return keys


def _constant_keys(fn: Function, prov: Provenance) -> dict[str, Type]:
    out: dict[str, Type] = dict(prov.types)
    out.update({b.node.key: b.var.type for b in fn.body.bindings if isinstance(b.node, Constant)})
    return out


def _resolve_wrt(fn: Function, spec: Spec, prov: Provenance) -> tuple[list[str], list[str]]:
    consts = _constant_keys(fn, prov)
    if spec.wrt is None:
        keys = differentiable_constants(fn, prov)
    else:
        keys = []
        for k in spec.wrt:
            if k not in consts:
                raise MlcError(f"--wrt: @{fn.name} has no constant '{k}' (its parameters: "
                               f"{', '.join(differentiable_constants(fn, prov)) or 'none'})", fn.loc)
            if not _is_float_tensor(consts[k]):
                raise MlcError(f"--wrt: constant '{k}' is not a float tensor", fn.loc)
            if k not in keys:
                keys.append(k)
    params = {p.name: p for p in fn.params}
    inputs: list[str] = []
    for n in spec.wrt_inputs:
        if n not in params:
            raise MlcError(f"--wrt-inputs: @{fn.name} has no input '{n}' (inputs: {', '.join(params)})", fn.loc)
        if not _is_float_tensor(params[n].type):
            raise MlcError(f"--wrt-inputs: input '{n}' is not a float tensor", fn.loc)
        if n not in inputs:
            inputs.append(n)
    if not keys and not inputs:
        raise MlcError(f"autodiff: nothing to differentiate in @{fn.name} (no float constants; name some with "
                       "--wrt or --wrt-inputs)", fn.loc)
    return keys, inputs


def public_names(keys: list[str], inputs: list[str]) -> dict[str, str]:
    """The name each differentiated constant key goes by in results and inputs (`grad_<name>`):
    sanitized as the importer sanitizes, unique among themselves and the differentiated inputs."""
    used = set(inputs)
    out = {n: n for n in inputs}
    for k in keys:
        out[k] = fresh_name(sanitize(k), used)
    return out


def unfold(fn: Function, prov: Provenance, keys: set[str]) -> Function:
    """`fn` with each folded constant that derives from one of `keys` computed again from its
    sources (the fold's ops, bound to the constant's name), so gradients flow back to the sources."""
    used = {p.name for p in fn.params} | {b.var.name for b in fn.body.bindings}
    out: list[Binding] = []
    for b in fn.body.bindings:
        n = b.node
        if not (isinstance(n, Constant) and n.key in prov.recipes and n.key not in keys
                and _leaves(prov.recipes, n.key) & keys):
            out.append(b)
            continue
        v = _refold(n.key, b.var, prov, used, out, {})
        if not _same_type(v.type, b.var.type):
            raise MlcError(f"autodiff: redoing the fold of constant '{n.key}' gives {_type_str(v.type)}, the "
                           f"module declares {_type_str(b.var.type)}", b.loc)
    return dataclasses.replace(fn, body=Block(tuple(out), fn.body.results, fn.body.loc))


def _refold(key: str, var: Value | None, prov: Provenance, used: set[str], out: list[Binding],
            made: dict[str, Value], base: str = "") -> Value:
    """Bind `key`'s value into `out` (its sources as constants, then the fold's ops); `var` names the last."""
    base = base or (var.name if var is not None else key)
    if key in made:
        return made[key]
    loc = var.loc if var is not None else UNKNOWN
    if key not in prov.recipes:
        v = Value(fresh_name(f"{base}_{sanitize(key)}", used), prov.types[key], loc)
        out.append(Binding(v, Constant(key, loc), loc))
    else:
        op, args, attrs = prov.recipes[key]
        vals = [_refold(a, None, prov, used, out, made, base) for a in args]
        d = ops.get(op)
        assert d is not None and d.infer is not None
        ty = d.infer([x.type for x in vals], dict(attrs), loc)
        v = Value(var.name if var is not None else fresh_name(f"{base}_{op}", used), ty, loc)
        out.append(Binding(v, OpCall(op, tuple(vals), attrs, loc), loc))
    made[key] = v
    return v


@dataclass
class _Forward:
    params: list[Value]
    bindings: list[Binding]
    results: list[Value]
    wrt: dict[str, list[str]]  # public name -> value names whose cotangents add up to its gradient


def _forward(fn: Function, keys: list[str], inputs: list[str], pub: dict[str, str], lift: bool) -> _Forward:
    """The forward function's body; with `lift`, the differentiated constants become inputs (public names)."""
    params = list(fn.params)
    wrt: dict[str, list[str]] = {n: [n] for n in inputs}
    for k in keys:
        wrt[pub[k]] = []
    bindings: list[Binding] = []
    sub: dict[str, Value] = {}
    lifted: dict[str, Value] = {}
    for b in fn.body.bindings:
        node = b.node
        if isinstance(node, Constant) and node.key in keys:
            name = pub[node.key]
            if lift:
                if name not in lifted:
                    lifted[name] = Value(name, b.var.type, b.var.loc)
                    params.append(lifted[name])
                    wrt[name] = [name]
                sub[b.var.name] = lifted[name]
                continue
            wrt[name].append(b.var.name)
        if sub:
            node = remap_args(node, lambda v: sub.get(v.name, v))
        bindings.append(dataclasses.replace(b, node=node) if node is not b.node else b)
    results = [sub.get(r.name, r) for r in fn.body.results]
    return _Forward(params, bindings, results, wrt)


def _rename_clashes(fwd: _Forward, reserved: set[str]) -> None:
    """Forward values whose names the new results or inputs need get fresh names."""
    used = {p.name for p in fwd.params} | {b.var.name for b in fwd.bindings} | reserved
    clash = {b.var.name for b in fwd.bindings if b.var.name in reserved}
    if not clash:
        return
    ren: dict[str, Value] = {}
    for b in fwd.bindings:
        if b.var.name in clash:
            ren[b.var.name] = dataclasses.replace(b.var, name=fresh_name(b.var.name, used))
    out = []
    for b in fwd.bindings:
        out.append(dataclasses.replace(b, var=ren.get(b.var.name, b.var), node=remap_args(b.node, lambda v: ren.get(v.name, v))))
    fwd.bindings = out
    fwd.results = [ren.get(r.name, r) for r in fwd.results]
    for k, names in fwd.wrt.items():
        fwd.wrt[k] = [ren[n].name if n in ren else n for n in names]


# ---- the loss ------------------------------------------------------------------------------------
def _loss(em: Emitter, fwd: _Forward, loss: Loss, fn: Function) -> tuple[Value, list[Value]]:
    """The scalar loss of the forward results, and the new inputs it reads."""
    if len(fwd.results) != 1 or not isinstance(fwd.results[0].type, TensorType):
        raise MlcError(f"--loss {loss.kind}: @{fn.name} must return one tensor (it returns {len(fwd.results)} values)",
                       fn.loc)
    y = fwd.results[0]
    em.hint, em.loc = "loss", fn.loc
    if not is_float(_dtype(y)):
        raise MlcError(f"--loss {loss.kind}: the result %{y.name} is {_dtype(y)}, not a float tensor", fn.loc)
    if loss.kind in ("sum", "mean"):
        return em.emit(loss.kind, [y], {"axes": None, "keepdims": False}), []
    assert loss.arg is not None
    existing = next((p for p in fwd.params if p.name == loss.arg), None)
    if loss.kind == "mse":
        t = existing or Value(loss.arg, y.type, fn.loc)
        if not _same_type(t.type, y.type):
            raise MlcError(f"--loss mse:{loss.arg}: the loss would not be a scalar: the result %{y.name} is "
                           f"{_type_str(y.type)} but the target '{loss.arg}' is {_type_str(t.type)}", fn.loc)
        diff = em.emit("sub", [y, t])
        return em.emit("mean", [em.emit("mul", [diff, diff])], {"axes": None, "keepdims": False}), \
            ([] if existing else [t])
    # cross-entropy: the result holds logits over its last axis (a final softmax is looked through)
    ys = _shape(y)
    if len(ys) < 1 or as_int(ys[-1]) is None:
        raise MlcError(f"--loss cross-entropy: the result %{y.name} needs a constant class axis last, "
                       f"it is {_type_str(y.type)}", fn.loc)
    labels = existing or Value(loss.arg, TensorType(ys[:-1], "i64"), fn.loc)
    lt = labels.type
    if not (isinstance(lt, TensorType) and lt.shape is not None and len(lt.shape) == len(ys) - 1
            and not is_float(lt.dtype) and all(prove_equal(a, b) for a, b in zip(lt.shape, ys[:-1]))):
        raise MlcError(f"--loss cross-entropy:{loss.arg}: the loss would not be a scalar: labels must be integers "
                       f"of the result's shape without its class axis ({_type_str(TensorType(ys[:-1], 'i64'))}), "
                       f"got {_type_str(lt)}", fn.loc)
    logits = y
    prod = next((b.node for b in fwd.bindings if b.var.name == y.name), None)
    if isinstance(prod, OpCall) and prod.op == "softmax" and int(dict(prod.attrs).get("axis", -1)) in (-1, len(ys) - 1):
        logits = prod.args[0]
    last = (len(ys) - 1,)  # log-softmax written out (x - max - log sum exp), so only basic rules are needed
    z = em.emit("sub", [logits, em.emit("max", [logits], {"axes": last, "keepdims": True})])
    lse = em.emit("log", [em.emit("sum", [em.emit("exp", [z])], {"axes": last, "keepdims": True})])
    logp = em.emit("sub", [z, lse])
    classes = em.emit("arange", [], {"start": 0, "stop": int(as_int(ys[-1]) or 0), "step": 1, "dtype": lt.dtype})
    hot = em.emit("equal", [em.emit("expand_dims", [labels], {"axes": (len(ys) - 1,)}), classes])
    picked = em.emit("sum", [em.emit("mul", [logp, em.emit("cast", [hot], {"dtype": _dtype(y)})])],
                     {"axes": last, "keepdims": False})
    return em.emit("neg", [em.emit("mean", [picked], {"axes": None, "keepdims": False})]), \
        ([] if existing else [labels])


def _type_str(t: Type) -> str:
    from .ops.shapes import dims_str

    if isinstance(t, TensorType) and t.shape is not None:
        return f"{t.dtype}[{dims_str(t.shape)}]"
    return type(t).__name__


# ---- the backward part ---------------------------------------------------------------------------
def _active(bindings: list[Binding], seeds: set[str]) -> set[str]:
    """Float values that depend on a differentiated value (the only ones that carry cotangents)."""
    act = set(seeds)
    for b in bindings:
        node = b.node
        deps = {v.name for v in operands(node)}
        if isinstance(node, If):
            deps |= used_names(node.then_block) | used_names(node.else_block)
        elif isinstance(node, Loop):
            deps |= used_names(node.body)
        if deps & act and _is_float_tensor(b.var.type):
            act.add(b.var.name)
    return act


def _kind(node: Node) -> str:
    return {If: "if", Loop: "loop", CallGraph: "a call of a graph function", CallTensor: "call_tir",
            CallExtern: "an external kernel"}.get(type(node), type(node).__name__)


def backprop(em: Emitter, bindings: list[Binding], wrt_names: set[str], seeds: dict[str, Value]) -> dict[str, Value]:
    """Cotangents of every active value, seeded at `seeds` (value name -> cotangent), by the ops' rules."""
    active = _active(bindings, wrt_names)
    ct: dict[str, Value] = {}
    tct: dict[str, dict[int, Value]] = {}

    def add(name: str, g: Value) -> None:
        if name not in active:
            return
        ct[name] = em.emit("add", [ct[name], g]) if name in ct else g

    for name, g in seeds.items():
        add(name, g)
    for b in reversed(bindings):
        name, node = b.var.name, b.node
        if name not in active:
            continue
        em.hint, em.loc = f"d_{name}", b.loc
        if isinstance(b.var.type, TupleType):
            parts = tct.get(name, {})
            if not parts:
                continue
            dout: Value | tuple[Value | None, ...] = tuple(parts.get(i) for i in range(len(b.var.type.fields)))
        else:
            if name not in ct:
                continue
            dout = ct[name]
        if isinstance(node, OpCall):
            d = ops.get(node.op)
            if d is None or d.grad is None or d.grad is NO_GRAD:
                why = "has no gradient" if d is not None and d.grad is NO_GRAD else "has no gradient rule"
                raise MlcError(f"cannot differentiate through {node.op}: it {why}, and %{name} lies on the path "
                               "from a differentiated value to the loss", b.loc)
            call = GradCall(node.op, node.args, _with_defaults(node.op, node), b.var, dout,
                            tuple(a.name in active for a in node.args))
            grads = list(d.grad(em, call))
            if len(grads) != len(node.args):
                raise MlcError(f"autodiff: the gradient rule of {node.op} returned {len(grads)} cotangents for "
                               f"{len(node.args)} inputs", b.loc)
            for a, g in zip(node.args, grads):
                if g is None or a.name not in active:
                    continue
                if not _same_type(g.type, a.type):
                    raise MlcError(f"autodiff: the gradient rule of {node.op} gave %{a.name} a cotangent of type "
                                   f"{_type_str(g.type)}, expected {_type_str(a.type)}", b.loc)
                add(a.name, g)
        elif isinstance(node, GetItem):
            assert isinstance(dout, Value)
            slot = tct.setdefault(node.tuple_value.name, {})
            slot[node.index] = em.emit("add", [slot[node.index], dout]) if node.index in slot else dout
        elif isinstance(node, MakeTuple):
            assert isinstance(dout, tuple)
            for f, g in zip(node.fields, dout):
                if g is not None:
                    add(f.name, g)
        elif isinstance(node, MatchCast):
            assert isinstance(dout, Value)
            add(node.value.name, dout)
        elif isinstance(node, Constant):
            continue
        elif isinstance(node, Loop) and name in em.records:
            for v, g in loop_grad(em, b, dout, active):
                add(v.name, g)
        elif isinstance(node, If):
            for v, g in if_grad(em, b, dout, active):
                add(v.name, g)
        else:
            raise MlcError(f"cannot differentiate through {_kind(node)} (%{name}): not supported by autodiff yet",
                           b.loc)
    return ct


# ---- loops (backpropagation through time) --------------------------------------------------------
def _reads_value(body: Block, c: Value) -> bool:
    """Whether the body's gradient may read carried `c`'s value. Not when `c` is only yielded or only
    the data operand of a dynamic_update_slice whose result is only yielded (the RNN importers' output
    accumulator): that rule reads neither, so `c` needs no per-iteration record."""
    results = {r.name for r in body.results}
    uses: dict[str, list[tuple[Binding, int]]] = {}
    for b in body.bindings:
        for i, a in enumerate(operands(b.node)):
            uses.setdefault(a.name, []).append((b, i))
        if isinstance(b.node, If | Loop):
            inner = used_names(b.node.body) if isinstance(b.node, Loop) else \
                used_names(b.node.then_block) | used_names(b.node.else_block)
            for n in inner:
                uses.setdefault(n, []).append((b, -1))
    for b, i in uses.get(c.name, []):
        if not (isinstance(b.node, OpCall) and b.node.op == "dynamic_update_slice" and i == 0):
            return True
        if b.var.name not in results or b.var.name in uses:
            return True
    return False


def record_loops(em: Emitter, bindings: list[Binding], wrt_names: set[str]) -> list[Binding]:
    """`bindings` with each loop on the differentiated path also recording, per iteration, the carried
    values its gradient reads (their values at the start of the iteration, stacked on a new leading
    axis of length `extent` with dynamic_update_slice); `em.records` says where the stacks are."""
    active = _active(bindings, wrt_names)
    for b in bindings:  # names bound in nested blocks too: new names stay unique in the whole function
        if isinstance(b.node, Loop | If):
            em.used |= {x.var.name for x in walk_bindings(Block((b,), ()))}
            em.used |= {x.node.index.name for x in walk_bindings(Block((b,), ())) if isinstance(x.node, Loop)}
            em.used |= {c.name for x in walk_bindings(Block((b,), ())) if isinstance(x.node, Loop)
                        for c in x.node.carried}
    out: list[Binding] = []
    for b in bindings:
        node = b.node
        if not (isinstance(node, Loop) and b.var.name in active):
            out.append(b)
            continue
        for c in node.carried:
            if not (isinstance(c.type, TensorType) and c.type.shape is not None):
                raise MlcError(f"cannot differentiate through loop (%{b.var.name}): carried %{c.name} is not a "
                               "tensor of known rank", b.loc)
        need = [j for j, c in enumerate(node.carried) if _reads_value(node.body, c)]
        keep = _kept_values(em, node, active)
        if not need and not keep:
            em.records[b.var.name] = (None,) * len(node.carried)
            out.append(b)
            continue
        em.loc, em.hint = b.loc, f"{b.var.name}_stack"
        top = Emitter(em.used)
        top.loc, top.hint = b.loc, f"{b.var.name}_stack"
        inner = Emitter(em.used)
        inner.loc, inner.hint = b.loc, f"{b.var.name}_rec"
        s_in, s_init, s_out = [], [], []
        for j in need:
            c = node.carried[j]
            shape = (node.extent,) + _shape(c)
            s_init.append(top.emit("full", [], {"shape": shape, "value": 0.0, "dtype": _dtype(c)}))
            sv = Value(fresh_name(f"{c.name}_stack", em.used), s_init[-1].type, b.loc)
            s_in.append(sv)
            row = inner.emit("expand_dims", [c], {"axes": (0,)})
            s_out.append(inner.emit("dynamic_update_slice", [sv, row, node.index], {"axis": 0}))
        for pos in keep:  # values computed in the iteration, recorded after the body computed them
            v = node.body.bindings[pos].var
            s_init.append(top.emit("full", [], {"shape": (node.extent,) + _shape(v), "value": 0.0,
                                                "dtype": _dtype(v)}))
            sv = Value(fresh_name(f"{v.name}_stack", em.used), s_init[-1].type, b.loc)
            s_in.append(sv)
            row = inner.emit("expand_dims", [v], {"axes": (0,)})
            s_out.append(inner.emit("dynamic_update_slice", [sv, row, node.index], {"axis": 0}))
        k = len(node.carried)
        body = Block(node.body.bindings + tuple(inner.bindings), node.body.results + tuple(s_out), node.body.loc)
        rec = dataclasses.replace(node, carried=node.carried + tuple(s_in), inits=node.inits + tuple(s_init),
                                  body=body)
        rty = TupleType(tuple(c.type for c in node.carried) + tuple(v.type for v in s_in))
        rv = top.bind(rec, rty, f"{b.var.name}_rec")
        if k == 1:
            out_node: Node = GetItem(rv, 0, b.loc)
        else:
            out_node = MakeTuple(tuple(top.item(rv, i) for i in range(k)), b.loc)
        stacks = {j: top.item(rv, k + n) for n, j in enumerate(need)}
        em.records[rv.name] = tuple(stacks.get(j) for j in range(k))
        em.kept[rv.name] = {pos: top.item(rv, k + len(need) + n) for n, pos in enumerate(keep)}
        out += top.bindings
        out.append(Binding(b.var, out_node, b.loc))
    return out


def _kept_values(em: Emitter, node: Loop, active: set[str]) -> list[int]:
    """Positions of the loop body's bindings to record per iteration: the values the body's gradient
    reads that the iteration computes from its carried values (an RNN cell's gate activations).
    Without a record the backward loop recomputes them from the recorded carried values, which is
    most of a forward iteration again (the recurrent matmul, the activations). Found by building the
    body's gradient once and looking at what it reads."""
    bound = {node.index.name} | {c.name for c in node.carried}
    free: dict[str, Value] = {}
    _free_values(node.body, bound, free)
    floats = [i for i, c in enumerate(node.carried) if _is_float_tensor(c.type)]
    wrt = {node.carried[i].name for i in floats} | {n for n, v in free.items() if n in active
                                                     and _is_float_tensor(v.type)}
    scratch = Emitter(set(em.used))
    scratch.loc = node.loc
    rec = record_loops(scratch, list(node.body.bindings), wrt)
    seeds: dict[str, Value] = {}
    for i in floats:
        res = node.body.results[i]
        seeds.setdefault(res.name, Value(fresh_name("d_seed", scratch.used), node.carried[i].type, node.loc))
    backprop(scratch, rec, wrt, seeds)
    reads = used_names(Block(tuple(scratch.bindings), ()))
    dep = set(bound) - {node.index.name}
    out = []
    for pos, x in enumerate(node.body.bindings):
        nested = used_names(x.node.body) if isinstance(x.node, Loop) else \
            used_names(x.node.then_block) | used_names(x.node.else_block) if isinstance(x.node, If) else set()
        if not ({a.name for a in operands(x.node)} | nested) & dep:
            continue
        dep.add(x.var.name)
        t = x.var.type
        if (x.var.name in reads and isinstance(x.node, OpCall | GetItem) and _is_float_tensor(t)
                and isinstance(t, TensorType) and t.shape is not None
                and not any(v.name in bound or v.name in dep for d in t.shape for v in free_vars(d))):
            out.append(pos)
    return out


def _free_values(block: Block, bound: set[str], out: dict[str, Value]) -> None:
    """The values `block` reads from outside (`bound`: names already bound inside), in first-use order."""
    bound = set(bound)
    for b in block.bindings:
        for a in operands(b.node):
            if a.name not in bound:
                out.setdefault(a.name, a)
        if isinstance(b.node, Loop):
            _free_values(b.node.body, bound | {b.node.index.name} | {c.name for c in b.node.carried}, out)
        elif isinstance(b.node, If):
            _free_values(b.node.then_block, bound, out)
            _free_values(b.node.else_block, bound, out)
        bound.add(b.var.name)
    for r in block.results:
        if r.name not in bound:
            out.setdefault(r.name, r)


def _clone(block: Block, m: dict[str, Value], used: set[str]) -> Block:
    """A copy of `block` with every name it binds made fresh (`m` maps old names to new values)."""
    m = dict(m)

    def new(v: Value) -> Value:
        nv = Value(fresh_name(v.name, used), v.type, v.loc)
        m[v.name] = nv
        return nv

    def get(v: Value) -> Value:
        return m.get(v.name, v)

    out = []
    for b in block.bindings:
        node = remap_args(b.node, get)
        if isinstance(node, Loop):
            inner = dict(m)
            idx = Value(fresh_name(node.index.name, used), node.index.type, node.index.loc)
            inner[node.index.name] = idx
            car = []
            for c in node.carried:
                car.append(Value(fresh_name(c.name, used), c.type, c.loc))
                inner[c.name] = car[-1]
            node = dataclasses.replace(node, index=idx, carried=tuple(car), body=_clone(node.body, inner, used))
        elif isinstance(node, If):
            node = dataclasses.replace(node, then_block=_clone(node.then_block, m, used),
                                       else_block=_clone(node.else_block, m, used))
        out.append(Binding(new(b.var), node, b.loc))
    return Block(tuple(out), tuple(get(r) for r in block.results), block.loc)


def _prune(bindings: list[Binding], results: list[Value]) -> list[Binding]:
    """The bindings `results` need (and effectful ones): the recomputed forward body holds values
    only the forward pass needed (the RNN output accumulator), which the backward loop must not pay for."""
    need = {r.name for r in results}
    keep: list[Binding] = []
    for b in reversed(bindings):
        d = ops.get(b.node.op) if isinstance(b.node, OpCall) else None
        effect = (d is not None and not d.pure) or isinstance(b.node, MatchCast | CallExtern | CallTensor | CallGraph)
        if b.var.name not in need and not effect:
            continue
        keep.append(b)
        need |= {a.name for a in operands(b.node)}
        if isinstance(b.node, Loop):
            need |= used_names(b.node.body)
        elif isinstance(b.node, If):
            need |= used_names(b.node.then_block) | used_names(b.node.else_block)
    return keep[::-1]


def _int(v: Any) -> int | None:
    """An attribute's integer value (attributes hold ints, or constant expressions)."""
    return v if isinstance(v, int) else as_int(v) if isinstance(v, Expr) else None


def _row_output(node: Loop, i: int, stack: Value | None, active: set[str]) -> bool:
    """Carried value `i` is an output the body writes one row of per iteration and never reads: its
    only use is `dynamic_update_slice(c, u, index)` along axis 0 with a one-row `u`, yielded as result
    `i`, over as many iterations as rows, from an init that needs no cotangent. Then the backward loop
    reads row `index` of the output's cotangent and need not carry it (the usual rule zeroes that row
    per iteration, for the init's cotangent and for a later iteration that writes the same row; with
    one row per iteration neither exists)."""
    c, res = node.carried[i], node.body.results[i]
    if stack is not None or node.inits[i].name in active or not isinstance(c.type, TensorType):
        return False
    shape = c.type.shape
    if not shape or not prove_equal(node.extent, shape[0]):
        return False
    uses = [x for x in node.body.bindings if c.name in {a.name for a in operands(x.node)}]
    nested = any(c.name in used_names(x.node.body) for x in node.body.bindings if isinstance(x.node, Loop)) or any(
        c.name in used_names(x.node.then_block) | used_names(x.node.else_block)
        for x in node.body.bindings if isinstance(x.node, If))
    if nested or len(uses) != 1 or uses[0].var.name != res.name or res.name in used_names(
            Block(tuple(x for x in node.body.bindings if x is not uses[0]), ())):
        return False
    u = uses[0]
    n = u.node
    if not (isinstance(n, OpCall) and n.op == "dynamic_update_slice" and n.args[0].name == c.name
            and n.args[1].name != c.name and n.args[2].name == node.index.name
            and _int(dict(n.attrs).get("axis", 0)) == 0 and isinstance(n.args[1].type, TensorType)):
        return False
    us = n.args[1].type.shape
    return bool(us) and as_int(us[0]) == 1 and sum(r.name == res.name for r in node.body.results) == 1


def _row_reads(body: Block, v: Value, index: Value, extent: Expr) -> list[Value]:
    """The reads of outer `v` in a backward body, when every one is row `index` (the forward index,
    iterations extent-1 .. 0) of `v` along axis 0 with as many rows as iterations: each iteration's
    cotangent then lands in a row no other iteration touches. [] otherwise."""
    if not (isinstance(v.type, TensorType) and v.type.shape and prove_equal(extent, v.type.shape[0])):
        return []
    out: list[Value] = []
    for x in body.bindings:
        n = x.node
        if isinstance(n, Loop | If):
            inner = used_names(n.body) if isinstance(n, Loop) else used_names(n.then_block) | used_names(n.else_block)
            if v.name in inner:
                return []
        if v.name not in {a.name for a in operands(n)}:
            continue
        attrs = dict(n.attrs) if isinstance(n, OpCall) else {}
        if not (isinstance(n, OpCall) and n.op == "dynamic_slice" and n.args[0].name == v.name
                and n.args[1].name == index.name and _int(attrs.get("axis", 0)) == 0
                and _int(attrs.get("size", 1)) == 1):
            return []
        out.append(x.var)
    if v.name in {r.name for r in body.results}:
        return []
    return out


def _hoist(bindings: list[Binding], varying: set[str]) -> tuple[list[Binding], list[Binding]]:
    """A loop body split into the pure ops that read only values from outside the loop, computed once
    before it, and the rest (`varying`: the index and carried names). The gradient rules emit such
    ops per iteration (the transposed weight of a matmul's input gradient); inside the loop fusion
    would fold them into every iteration's kernel."""
    varying = set(varying)
    out: list[Binding] = []
    inside: list[Binding] = []
    for b in bindings:
        n = b.node
        d = ops.get(n.op) if isinstance(n, OpCall) else None
        if isinstance(n, OpCall) and d is not None and d.pure and not any(a.name in varying for a in n.args):
            out.append(b)
        else:
            inside.append(b)
            varying.add(b.var.name)
    return out, inside


def loop_grad(em: Emitter, b: Binding, dout: Value | tuple[Value | None, ...],
              active: set[str]) -> list[tuple[Value, Value]]:
    """The cotangents a loop sends to its initial values and the outer values its body reads.

    A backward loop runs the body's gradient for iterations extent-1 .. 0: it recomputes the body
    from the recorded carried values of that iteration (`em.records`), differentiates it with
    `backprop` (so the ops' rules, nested loops included), carries the carried values' cotangents
    and accumulates those of the outer values (weights) as extra carried values."""
    node = b.node
    assert isinstance(node, Loop)
    stacks = em.records[b.var.name]
    k = len(stacks)  # the loop's own carried values (those after them are record_loops' stacks)
    car = node.carried[:k]
    douts = (dout,) if isinstance(dout, Value) else tuple(dout[:k]) + (None,) * max(0, k - len(dout))
    floats = [j for j, c in enumerate(car) if _is_float_tensor(c.type)]
    bound = {node.index.name} | {c.name for c in node.carried}
    free: dict[str, Value] = {}
    _free_values(node.body, bound, free)
    outer = [v for n, v in free.items() if n in active and _is_float_tensor(v.type)
             and not isinstance(v.type, TupleType)]
    if not floats and not outer:
        return []
    sub = Emitter(em.used)
    sub.records, sub.kept = em.records, em.kept
    sub.loc, sub.hint = b.loc, f"{b.var.name}_bwd"
    j = Value(fresh_name(f"{node.index.name}_bwd", em.used), ScalarType("i64"), b.loc)
    r = sub.bind(Scalar(node.extent - 1 - Var(j.name, "i64"), b.loc), ScalarType("i64"), f"{node.index.name}_rev")
    m: dict[str, Value] = {node.index.name: r}
    for i, c in enumerate(car):
        st = stacks[i]
        sub.hint = c.name
        if st is not None:
            row = sub.emit("dynamic_slice", [st, r], {"axis": 0, "size": 1})
            m[c.name] = sub.emit("reshape", [row], {"shape": _shape(c)})
        else:  # its value is never read (see _reads_value)
            m[c.name] = sub.zeros_like(c)
    body = _clone(node.body, m, em.used)
    # an output written row by row (the RNNs' Y): its cotangent is read, never carried (see _row_output)
    rows_out = [i for i in floats if _row_output(node, i, stacks[i], active)]
    floats = [i for i in floats if i not in rows_out]
    # outer values read one row per iteration (the RNNs' hoisted input projection): their cotangent
    # rows are written, not accumulated (see _row_reads)
    row_reads = {v.name: _row_reads(body, v, r, node.extent) for v in outer}
    inner_wrt = {m[car[i].name].name for i in floats} | {v.name for v in outer if not row_reads[v.name]}
    inner_wrt |= {s.name for v in outer for s in row_reads[v.name]}
    rec = record_loops(sub, list(body.bindings), inner_wrt)
    sub.bindings += rec
    dc_in = {i: Value(fresh_name(f"d_{car[i].name}", em.used), car[i].type, b.loc) for i in floats}
    acc_in = [Value(fresh_name(f"d_{v.name}_acc", em.used), v.type, b.loc) for v in outer]
    seeds: dict[str, Value] = {}
    for i, g in [(i, dc_in[i]) for i in floats] + [(i, douts[i]) for i in rows_out]:
        res = body.results[i]
        if g is not None:
            seeds[res.name] = sub.emit("add", [seeds[res.name], g]) if res.name in seeds else g
    ct = backprop(sub, rec, inner_wrt, seeds)
    sub.hint = f"{b.var.name}_bwd"
    new_dc = [ct.get(m[car[i].name].name) or sub.zeros_like(car[i]) for i in floats]
    new_acc = []
    for a, v in zip(acc_in, outer):
        got = [ct[s.name] for s in row_reads[v.name] if s.name in ct]
        if row_reads[v.name] and got:
            row = got[0]
            for g in got[1:]:
                row = sub.emit("add", [row, g])
            new_acc.append(sub.emit("dynamic_update_slice", [a, row, r], {"axis": 0}))
        else:
            new_acc.append(sub.emit("add", [a, ct[v.name]]) if v.name in ct else a)
    results = new_dc + new_acc
    kept = em.kept.get(b.var.name, {})
    if kept:  # the recorded values replace their recomputation (which _prune then drops)
        pre = Emitter(em.used)
        pre.loc = b.loc
        swap: dict[str, Value] = {}
        for pos, st in kept.items():
            v = body.bindings[pos].var
            pre.hint = v.name
            row = pre.emit("dynamic_slice", [st, r], {"axis": 0, "size": 1})
            swap[v.name] = pre.emit("reshape", [row], {"shape": _shape(v)})

        def get(v: Value) -> Value:
            return swap.get(v.name, v)

        first = sub.bindings.index(next(x for x in sub.bindings if x.var.name == r.name)) + 1
        sub.bindings = sub.bindings[:first] + pre.bindings + [
            Binding(x.var, remap_args(x.node, get), x.loc) for x in sub.bindings[first:]]
        results = [get(v) for v in results]
    hoisted, inside = _hoist(_prune(sub.bindings, results), {j.name} | {v.name for v in [*dc_in.values(), *acc_in]})
    bwd_body = Block(tuple(inside), tuple(results), node.body.loc)
    em.bindings += hoisted
    em.hint = f"{b.var.name}_bwd"
    inits = [douts[i] if douts[i] is not None else em.zeros_like(car[i]) for i in floats]
    inits += [em.zeros_like(v) for v in outer]
    carried = [dc_in[i] for i in floats] + acc_in
    ty = carried[0].type if len(carried) == 1 else TupleType(tuple(c.type for c in carried))
    lv = em.bind(Loop(j, node.extent, tuple(carried), tuple(inits), bwd_body, b.loc), ty)
    outs = [lv] if len(carried) == 1 else [em.item(lv, i) for i in range(len(carried))]
    targets = [node.inits[i] for i in floats] + outer
    return [(t, g) for t, g in zip(targets, outs)]


def if_grad(em: Emitter, b: Binding, dout: Value | tuple[Value | None, ...],
            active: set[str]) -> list[tuple[Value, Value]]:
    """The cotangents an `if` sends to the outer values its branches read: an `if` on the same
    condition whose branches recompute the forward branch (its values live only inside it) and
    differentiate it with `backprop`, yielding one cotangent (or zeros) per outer value."""
    node = b.node
    assert isinstance(node, If)
    douts = (dout,) if isinstance(dout, Value) else tuple(dout)
    free: dict[str, Value] = {}
    _free_values(node.then_block, set(), free)
    _free_values(node.else_block, set(), free)
    outer = [v for n, v in free.items() if n in active and _is_float_tensor(v.type)
             and not isinstance(v.type, TupleType)]
    if not outer:
        return []
    wrt = {v.name for v in outer}
    blocks = []
    for blk in (node.then_block, node.else_block):
        sub = Emitter(em.used)
        sub.records, sub.kept = em.records, em.kept
        sub.loc, sub.hint = b.loc, f"d_{b.var.name}"
        body = _clone(blk, {}, em.used)
        rec = record_loops(sub, list(body.bindings), wrt)
        sub.bindings += rec
        seeds: dict[str, Value] = {}
        for res, d in zip(body.results, douts):
            if d is not None:
                seeds[res.name] = sub.emit("add", [seeds[res.name], d]) if res.name in seeds else d
        ct = backprop(sub, rec, wrt, seeds)
        results = [ct.get(v.name) or sub.zeros_like(v) for v in outer]
        blocks.append(Block(tuple(_prune(sub.bindings, results)), tuple(results), blk.loc))
    em.hint = f"d_{b.var.name}"
    ty = outer[0].type if len(outer) == 1 else TupleType(tuple(v.type for v in outer))
    iv = em.bind(If(node.cond, blocks[0], blocks[1], b.loc), ty)
    outs = [iv] if len(outer) == 1 else [em.item(iv, i) for i in range(len(outer))]
    return list(zip(outer, outs))


# ---- the functions -------------------------------------------------------------------------------
def _grads(em: Emitter, fwd: _Forward, ct: dict[str, Value], types: dict[str, Value]) -> dict[str, Value]:
    """The cotangent of each differentiated name (its uses summed; zeros when off the path)."""
    out: dict[str, Value] = {}
    em.loc = UNKNOWN
    for k, names in fwd.wrt.items():
        em.hint = f"grad_{k}"
        parts = [ct[n] for n in names if n in ct]
        if not parts:
            out[k] = em.zeros_like(types[k])
            continue
        g = parts[0]
        for p in parts[1:]:
            g = em.emit("add", [g, p])
        out[k] = g
    return out


def _value_of(fwd: _Forward, names: list[str]) -> Value:
    for p in fwd.params:
        if p.name in names:
            return p
    for b in fwd.bindings:
        if b.var.name in names:
            return b.var
    raise KeyError(names)


def _finish(fn: Function, name: str, params: list[Value], fwd: _Forward, em: Emitter,
            results: list[tuple[str, Value]]) -> Function:
    """The new function, its results bound to exactly the names `results` gives."""
    final: dict[str, str] = {}
    out: list[Value] = []
    claimed: set[str] = set()
    param_names = {p.name for p in params}
    for rname, v in results:
        if rname in param_names:
            raise MlcError(f"autodiff: result name '{rname}' clashes with an input of @{fn.name}", fn.loc)
        if v.name in em.made and v.name not in claimed:
            final[v.name] = rname
            claimed.add(v.name)
            out.append(v)
        else:
            em.loc = UNKNOWN
            c = em.copy(v, "_copy_" + rname)
            final[c.name] = rname
            claimed.add(c.name)
            out.append(c)
    ren = {k: Value(n, v.type, v.loc) for k, n in final.items() for v in [_find(em, k)]}
    body = []
    for b in fwd.bindings + em.bindings:
        var = ren.get(b.var.name, b.var)
        body.append(dataclasses.replace(b, var=var, node=remap_args(b.node, lambda v: ren.get(v.name, v))))
    return Function(name, tuple(params), Block(tuple(body), tuple(ren[v.name] for v in out), fn.body.loc),
                    (), fn.loc)


def _find(em: Emitter, name: str) -> Value:
    return next(b.var for b in em.bindings if b.var.name == name)


def _prepare(fn: Function, spec: Spec, lift: bool, reserved: set[str],
             prov: Provenance) -> tuple[_Forward, Emitter, list[str]]:
    """The forward part and an emitter; also the public names of the differentiated constants."""
    keys, inputs = _resolve_wrt(fn, spec, prov)
    pub = public_names(keys, inputs)
    fwd = _forward(unfold(fn, prov, set(keys)), keys, inputs, pub, lift)
    _rename_clashes(fwd, reserved)
    used = {p.name for p in fwd.params} | {b.var.name for b in fwd.bindings} | reserved
    return fwd, Emitter(used), [pub[k] for k in keys]


def _seeds(em: Emitter, fwd: _Forward, fn: Function, loss: Loss | None) -> tuple[dict[str, Value], list[Value], Value | None]:
    if loss is not None:
        lv, new_inputs = _loss(em, fwd, loss, fn)
        em.hint = "d_loss"
        return {lv.name: em.emit("full", [], {"shape": (), "value": 1.0, "dtype": _dtype(lv)})}, new_inputs, lv
    seeds: dict[str, Value] = {}
    new_inputs = []
    for r in fwd.results:
        if not _is_float_tensor(r.type) or isinstance(r.type, TupleType):
            continue
        d = Value(fresh_name(f"d_{r.name}", em.used), r.type, fn.loc)
        new_inputs.append(d)
        seeds[r.name] = d
    return seeds, new_inputs, None


def grad_function(fn: Function, spec: Spec, name: str = "grad", prov: Provenance = NO_PROVENANCE) -> Function:
    """`@grad`: the forward function's inputs (+ the loss's input, or one cotangent `d_<result>` per
    result without a loss) -> `loss` (with a loss) and `grad_<name>` per differentiated constant/input.
    With `prov`, folded constants are differentiated back to the initializers they came from."""
    fwd, em, _ = _prepare(fn, spec, lift=False, reserved={"loss"} | _grad_names(fn, spec, prov), prov=prov)
    seeds, new_inputs, lv = _seeds(em, fwd, fn, spec.loss)
    wrt_names = {n for names in fwd.wrt.values() for n in names}
    fwd.bindings = record_loops(em, fwd.bindings, wrt_names)
    ct = backprop(em, fwd.bindings + em.bindings, wrt_names, seeds)
    types = {k: _value_of(fwd, names) if names else _zero_like(fn, prov, spec, k) for k, names in fwd.wrt.items()}
    grads = _grads(em, fwd, ct, types)
    results = ([("loss", lv)] if lv is not None else []) + [(f"grad_{k}", g) for k, g in grads.items()]
    return _finish(fn, name, fwd.params + new_inputs, fwd, em, results)


def _zero_like(fn: Function, prov: Provenance, spec: Spec, name: str) -> Value:
    """A value of the type of the differentiated constant with public name `name` (for its zeros)."""
    keys, inputs = _resolve_wrt(fn, spec, prov)
    key = next(k for k, n in public_names(keys, inputs).items() if n == name)
    return Value(name, _constant_keys(fn, prov)[key])


def _grad_names(fn: Function, spec: Spec, prov: Provenance) -> set[str]:
    keys, inputs = _resolve_wrt(fn, spec, prov)
    return {f"grad_{n}" for n in public_names(keys, inputs).values()}


def train_step_function(fn: Function, spec: Spec, opt: Optimizer, name: str = "train_step",
                        prov: Provenance = NO_PROVENANCE) -> Function:
    """`@train_step(inputs..., loss input, weights..., state...) -> loss, new_<weight>..., new_<state>...`.

    The differentiated constants become inputs named by their keys (sanitized; with `prov`, a folded
    constant's initializers instead of it); the optimizer state is
    `m_<key>` (momentum's velocity, Adam's first moment), `v_<key>` (Adam's second moment) and
    `step` (Adam's step count, an f32 scalar, 0 at the start).

    With `opt.loss_scale` (dynamic loss scaling, for f16 training) the backward pass starts from
    `loss_scale` instead of 1 and the gradients are divided by it; a step whose gradients hold an
    inf or nan changes nothing but halves the scale, and `scale_window` good steps in a row double
    it, up to 2**24 (state `loss_scale`, f32, start it at 2**15; `good_steps`, f32, 0)."""
    if spec.loss is None:
        raise MlcError("--optimizer needs --loss (a training step minimises a scalar loss)", fn.loc)
    if spec.wrt_inputs:
        raise MlcError("--optimizer updates constants only; --wrt-inputs has no weight to update", fn.loc)
    keys0, inputs0 = _resolve_wrt(fn, spec, prov)
    keys = list(public_names(keys0, inputs0).values())
    state = [f"m_{k}" for k in keys] if opt.kind in ("momentum", "adam") else []
    state += [f"v_{k}" for k in keys] + ["step"] if opt.kind == "adam" else []
    state += ["loss_scale", "good_steps"] if opt.loss_scale else []
    outs = {"loss"} | {f"new_{k}" for k in keys + state}
    fwd, em, _ = _prepare(fn, spec, lift=True, reserved=outs | set(state) | set(keys), prov=prov)
    seeds, new_inputs, lv = _seeds(em, fwd, fn, spec.loss)
    assert lv is not None
    scalar_f32 = TensorType((), "f32")
    st = {s: Value(s, scalar_f32 if s in ("step", "loss_scale", "good_steps") else _param_of(fwd, s[2:]).type, fn.loc)
          for s in state}
    if opt.loss_scale:
        em.hint = "d_loss"
        seeds = {lv.name: st["loss_scale"] if _dtype(lv) == "f32" else
                 em.emit("cast", [st["loss_scale"]], {"dtype": _dtype(lv)})}
    wrt_names = {n for names in fwd.wrt.values() for n in names}
    fwd.bindings = record_loops(em, fwd.bindings, wrt_names)
    ct = backprop(em, fwd.bindings + em.bindings, wrt_names, seeds)
    weights = {p.name: p for p in fwd.params if p.name in keys}
    grads = _grads(em, fwd, ct, weights)
    ok = None
    if opt.loss_scale:
        grads, ok, scale_state = _unscale(em, grads, st["loss_scale"], st["good_steps"], opt.scale_window)
    results: list[tuple[str, Value]] = [("loss", lv)]
    new_state: list[tuple[str, Value]] = []
    em.loc = UNKNOWN
    step = t1 = None
    if opt.kind == "adam":
        em.hint = "step"
        one = em.emit("full", [], {"shape": (), "value": 1.0, "dtype": "f32"})
        t1 = em.emit("add", [st["step"], one if ok is None else em.emit("cast", [ok], {"dtype": "f32"})])
        step = t1
    for k in keys:
        w, g = weights[k], grads[k]
        em.hint = f"upd_{k}"

        def s(x: float, like: Value = w) -> Value:
            return em.scalar(x, like)

        if opt.weight_decay:
            g = em.emit("add", [g, em.emit("mul", [w, s(opt.weight_decay)])])
        if opt.kind == "sgd":
            upd = g
        elif opt.kind == "momentum":
            m = em.emit("add", [em.emit("mul", [st[f"m_{k}"], s(opt.beta1)]), g])
            new_state.append((f"new_m_{k}", m))
            upd = m
        else:
            assert step is not None
            m = em.emit("add", [em.emit("mul", [st[f"m_{k}"], s(opt.beta1)]), em.emit("mul", [g, s(1 - opt.beta1)])])
            v = em.emit("add", [em.emit("mul", [st[f"v_{k}"], s(opt.beta2)]),
                                em.emit("mul", [em.emit("mul", [g, g]), s(1 - opt.beta2)])])
            new_state += [(f"new_m_{k}", m), (f"new_v_{k}", v)]
            dt = _dtype(w)
            tt = step if dt == "f32" else em.emit("cast", [step], {"dtype": dt})
            c1 = em.emit("sub", [s(1.0), em.emit("pow", [s(opt.beta1), tt])])
            c2 = em.emit("sub", [s(1.0), em.emit("pow", [s(opt.beta2), tt])])
            mhat = em.emit("div", [m, c1])
            vhat = em.emit("div", [v, c2])
            upd = em.emit("div", [mhat, em.emit("add", [em.emit("sqrt", [vhat]), s(opt.eps)])])
        results.append((f"new_{k}", em.emit("sub", [w, em.emit("mul", [upd, s(opt.lr)])])))
    if ok is not None:  # a step with an inf or nan gradient changes nothing (but the scale)
        results = results[:1] + [(n, em.emit("where", [ok, v, weights[n[4:]]])) for n, v in results[1:]]
        new_state = [(n, em.emit("where", [ok, v, st[n[4:]]])) for n, v in new_state]
    new_state.sort(key=lambda r: state.index(r[0][4:]))
    if t1 is not None:
        new_state.append(("new_step", t1))
    if ok is not None:
        new_state += scale_state
    params = fwd.params[:len(fn.params)] + new_inputs + [weights[k] for k in keys] + [st[s] for s in state]
    return _finish(fn, name, params, fwd, em, results + new_state)


def _param_of(fwd: _Forward, name: str) -> Value:
    return next(p for p in fwd.params if p.name == name)


MAX_LOSS_SCALE = 2.0**24  # growth stops here: f16's largest value is 65504, a larger scale only overflows


def _unscale(em: Emitter, grads: dict[str, Value], scale: Value, good: Value, window: int) \
        -> tuple[dict[str, Value], Value, list[tuple[str, Value]]]:
    """Gradients divided by the loss scale, whether all are finite, and the scale's next state."""
    em.hint = "unscale"
    out: dict[str, Value] = {}
    bad: Value | None = None
    for k, g in grads.items():
        sc = scale if _dtype(g) == "f32" else em.emit("cast", [scale], {"dtype": _dtype(g)})
        out[k] = em.emit("div", [g, sc])
        nonfinite = em.emit("logical_or", [em.emit("isnan", [out[k]]), em.emit("isinf", [out[k]])])
        n = em.emit("sum", [em.emit("cast", [nonfinite], {"dtype": "f32"})], {"axes": None, "keepdims": False})
        bad = n if bad is None else em.emit("add", [bad, n])
    assert bad is not None
    zero = em.emit("full", [], {"shape": (), "value": 0.0, "dtype": "f32"})
    ok = em.emit("equal", [bad, zero])

    def f32(x: float) -> Value:
        return em.emit("full", [], {"shape": (), "value": x, "dtype": "f32"})

    good1 = em.emit("add", [good, f32(1.0)])
    grow = em.emit("greater_equal", [good1, f32(float(window))])
    doubled = em.emit("minimum", [em.emit("mul", [scale, f32(2.0)]), f32(MAX_LOSS_SCALE)])
    new_scale = em.emit("where", [ok, em.emit("where", [grow, doubled, scale]),
                                  em.emit("mul", [scale, f32(0.5)])])
    new_good = em.emit("where", [ok, em.emit("where", [grow, zero, good1]), zero])
    return out, ok, [("new_loss_scale", new_scale), ("new_good_steps", new_good)]


def eval_function(fn: Function, spec: Spec, name: str = "eval", prov: Provenance = NO_PROVENANCE) -> Function:
    """`@eval(inputs..., loss input, weights...) -> loss, output`: the forward function with the
    constants `@train_step` updates lifted to inputs (same names and order), so a training loop
    evaluates its current weights with one compiled call instead of rebuilding `@main`."""
    if spec.loss is None or len(fn.body.results) != 1:
        raise MlcError(f"@{name} needs a loss and a function with one result", fn.loc)
    keys0, inputs0 = _resolve_wrt(fn, spec, prov)
    keys = list(public_names(keys0, inputs0).values())
    fwd, em, _ = _prepare(fn, spec, lift=True, reserved={"loss", "output"} | set(keys), prov=prov)
    lv, new_inputs = _loss(em, fwd, spec.loss, fn)
    weights = [p for p in fwd.params if p.name in keys]
    params = fwd.params[:len(fn.params)] + new_inputs + weights
    return _finish(fn, name, params, fwd, em, [("loss", lv), ("output", fwd.results[0])])
