"""amp: automatic mixed precision as a graph pass with a three-list rule table (RAF/TVM style).

`always` ops get their f32 inputs cast to f16/bf16, `never` ops get low-precision inputs cast back
to f32, every other op follows its inputs (low precision only when all its float inputs are; constants do
not vote, they are cast to whatever their user runs in). The
defaults are configs/amp.yaml; `--rules FILE` moves the ops it names. Constants stay f32 (master
weights: a cast node reads them, so `mlc autodiff` after `amp` differentiates through the cast and
updates the f32 weight), and results are cast back, so the function's signature does not change.
Inference builds fold the casts of constants into f16 constants (fold-constants).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import ClassVar

import yaml
from mlc.ir.diagnostics import MlcError
from mlc.ir.files import read_bytes
from mlc.ir.graph import Binding, Block, Constant, Function, GetItem, If, Loop, OpCall, Value, attrs_of
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.ops.registry import all_ops
from mlc.ir.rewrite import remap_args, used_names, walk_bindings
from mlc.ir.types import TensorType, TupleType, UnknownType

from .registry import ModulePass, PassContext, option, register_pass
from .shape_infer import ShapeInfer

LISTS: tuple[str, ...] = ("always", "never")
WIDE = "f32"  # the precision amp lowers from; f64 and integer values are left alone


def load_rules(path: str | None = None) -> dict[str, str]:
    """op -> 'always' | 'never' from configs/amp.yaml, with `path`'s lists moving the ops they name."""
    table = _read(Path(str(resources.files("mlc.configs").joinpath("amp.yaml"))), "configs/amp.yaml")
    if path:
        for op, where in _read(Path(path), path, allow_follow=True).items():
            table.pop(op, None)
            if where != "follow":
                table[op] = where
    return table


def _read(path: Path, what: str, allow_follow: bool = False) -> dict[str, str]:
    try:
        doc = yaml.safe_load(read_bytes(path, f"amp rules {what}").decode())
    except (OSError, UnicodeDecodeError) as e:
        raise MlcError(f"cannot read amp rules {what}: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise MlcError(f"{what}{where}: not YAML: {getattr(e, 'problem', None) or 'cannot parse'}") from None
    lists = (*LISTS, "follow") if allow_follow else LISTS
    if not isinstance(doc, dict) or set(doc) - set(lists):
        raise MlcError(f"{what}: expected a mapping with the lists {', '.join(lists)}")
    known = all_ops()
    out: dict[str, str] = {}
    for where, ops in doc.items():
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise MlcError(f"{what}: '{where}' must be a list of op names")
        for op in ops:
            if op not in known:
                raise MlcError(f"{what}: '{where}' names unknown op '{op}'")
            if op in out:
                raise MlcError(f"{what}: op '{op}' is in both '{out[op]}' and '{where}'")
            out[op] = where
    return out


def _dtype(v: Value) -> str | None:
    return v.type.dtype if isinstance(v.type, TensorType) else None


def amp_function(fn: Function, low: str, rules: dict[str, str]) -> Function:
    """`fn` with its f32 ops lowered to `low` as `rules` say; types of changed values are left
    for shape-infer to recompute. Loop and if bodies are converted too (an LSTM step's matmuls go
    low); what crosses a body's boundary (loop inits and carried values, yields) stays in its
    declared precision, so a loop's carried types do not change."""
    used = {p.name for p in fn.params} | used_names(fn.body)
    now: dict[str, str | None] = {p.name: _dtype(p) for p in fn.params}  # dtype each value has after amp
    consts = {b.var.name for b in walk_bindings(fn.body) if isinstance(b.node, Constant)}  # no vote
    conv = _BlockAmp(low, rules, used, now, consts, {})
    return Function(fn.name, fn.params, conv.block(fn.body, {}), fn.attrs, fn.loc)


@dataclass
class _BlockAmp:
    """State of one conversion: dtypes after amp, renamed values and casts (per scope)."""

    low: str
    rules: dict[str, str]
    used: set[str]
    now: dict[str, str | None]
    consts: set[str]
    sub: dict[str, Value]

    def block(self, blk: Block, outer_casts: dict[tuple[str, str], Value]) -> Block:
        """`blk` converted; casts made in an enclosing scope are reused, new ones stay in this one;
        results come back in their declared precision."""
        low, now, sub = self.low, self.now, self.sub
        casts = dict(outer_casts)
        body: list[Binding] = []

        def cast(v: Value, to: str) -> Value:
            if (v.name, to) not in casts:
                c = Value(fresh_name(f"{v.name}_{to}", self.used), UnknownType(), v.loc)
                body.append(Binding(c, OpCall("cast", (v,), attrs_of({"dtype": to}), v.loc), v.loc))
                now[c.name] = to
                casts[(v.name, to)] = c
            return casts[(v.name, to)]

        for b in blk.bindings:
            node = remap_args(b.node, lambda v: sub.get(v.name, v))
            if isinstance(node, GetItem):  # a piece of a tuple has the precision the tuple was computed in
                low_tuple = now.get(node.tuple_value.name) == low
                var = Value(b.var.name, UnknownType(), b.var.loc) if low_tuple else b.var
                now[var.name] = low if low_tuple and _dtype(b.var) == WIDE else _dtype(b.var)
                sub[b.var.name] = var
                body.append(Binding(var, node, b.loc))
                continue
            if isinstance(node, Loop | If):  # operands in their declared precision, bodies converted
                node = remap_args(node, lambda v: cast(v, WIDE) if now.get(v.name) == low else v)
                if isinstance(node, Loop):
                    now[node.index.name] = _dtype(node.index)
                    now.update((c.name, _dtype(c)) for c in node.carried)
                    node = replace(node, body=self.block(node.body, casts))
                else:
                    node = replace(node, then_block=self.block(node.then_block, casts),
                                   else_block=self.block(node.else_block, casts))
                now[b.var.name] = _dtype(b.var)
                body.append(Binding(b.var, node, b.loc))
                continue
            args = list(node.args) if isinstance(node, OpCall) else []
            floats = [a for a in args if now.get(a.name) in (WIDE, low) and a.name not in self.consts]
            rule = self.rules.get(node.op, "follow") if isinstance(node, OpCall) else "never"
            go_low = isinstance(node, OpCall) and bool(floats) and (
                rule == "always" or (rule == "follow" and all(now.get(a.name) == low for a in floats)))
            if go_low:
                assert isinstance(node, OpCall)
                node = OpCall(node.op, tuple(cast(a, low) if now.get(a.name) == WIDE else a for a in node.args),
                              node.attrs, node.loc)
            else:
                node = remap_args(node, lambda v: cast(v, WIDE) if now.get(v.name) == low else v)
            t = b.var.type
            lowered = go_low and (_dtype(b.var) == WIDE or isinstance(t, TupleType) and any(
                isinstance(f, TensorType) and f.dtype == WIDE for f in t.fields))
            var = Value(b.var.name, UnknownType(), b.var.loc) if lowered else b.var
            now[var.name] = low if lowered else _dtype(b.var)
            sub[b.var.name] = var
            body.append(Binding(var, node, b.loc))
        results = []
        for r in blk.results:
            r = sub.get(r.name, r)
            if now.get(r.name) != low:
                results.append(r)
            elif (r.name, WIDE) in casts:
                results.append(casts[(r.name, WIDE)])
            else:
                results.append(self.named_cast(body, r))
        return Block(tuple(body), tuple(results), blk.loc)

    def named_cast(self, body: list[Binding], r: Value) -> Value:
        """The cast back of result `r`, under `r`'s own name (callers read outputs by name: an ONNX
        model's `y` stays `y`); the low-precision value is renamed. Where `r` is read inside a nested
        block (which this rename does not reach), the cast takes a fresh name instead."""
        if any(isinstance(b.node, Loop | If) for b in body) or not any(b.var.name == r.name for b in body):
            c = Value(fresh_name(f"{r.name}_{WIDE}", self.used), UnknownType(), r.loc)
            body.append(Binding(c, OpCall("cast", (r,), attrs_of({"dtype": WIDE}), r.loc), r.loc))
            self.now[c.name] = WIDE
            return c
        low_name = fresh_name(f"{r.name}_{self.low}", self.used)
        lv = Value(low_name, UnknownType(), r.loc)
        for i, b in enumerate(body):
            var = lv if b.var.name == r.name else b.var
            body[i] = Binding(var, remap_args(b.node, lambda v: lv if v.name == r.name else v), b.loc)
        self.now[low_name] = self.low
        out = Value(r.name, UnknownType(), r.loc)
        body.append(Binding(out, OpCall("cast", (lv,), attrs_of({"dtype": WIDE}), r.loc), r.loc))
        self.now[r.name] = WIDE
        return out


@register_pass
@dataclass(frozen=True)
class Amp(ModulePass):
    """Mixed precision: matmul/conv in f16 or bf16, range-sensitive ops in f32, the rest follow
    their inputs (rule table configs/amp.yaml, overridable with --rules)."""

    name: ClassVar[str] = "amp"

    dtype: str = option("f16", "The low precision.", ("f16", "bf16"))
    rules: str = option("", "YAML file with 'always'/'never'/'follow' lists of ops that override the defaults.")
    func: str = option("main", "The graph function to convert (comma-separated for several).")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        rules = load_rules(self.rules or None)
        module = ShapeInfer().apply(module, ctx)
        for name in (n.strip() for n in self.func.split(",") if n.strip()):
            fn = module.get(name)
            if not isinstance(fn, Function):
                raise MlcError(f"amp: no graph function @{name}")
            module = module.with_function(amp_function(fn, self.dtype, rules))
        return ShapeInfer().apply(module, ctx)

