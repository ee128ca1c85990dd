"""remat: recompute kernels instead of keeping their results alive, until the memory plan fits a budget.

Training keeps forward activations alive until the backward pass reads them; that is what makes its
memory plan (ir/memory_plan.py, the plan the runtime allocates by) large. This pass works on fused
graph functions (kernel calls), RAF style: while the plan's bytes at the given dims exceed the
budget, it looks at the values with the longest idle stretch between two uses, and for the one whose
recomputation lowers the plan most per unit of recompute work (the kernel's loop iterations), it
calls the kernel again right before the later use and points the later uses at the copy. The copy
runs the same compiled kernel on the same inputs, so results are bit-identical with and without
remat. A budget that cannot be reached is an error that says how low the plan can go.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from mlc.ir import arith
from mlc.ir.diagnostics import MlcError
from mlc.ir.expr import Const, Expr, Var
from mlc.ir.graph import Binding, Block, CallTensor, Function, If, Loop, Value
from mlc.ir.memory_plan import plan_function
from mlc.ir.module import Module
from mlc.ir.names import fresh_name
from mlc.ir.rewrite import operands, remap_args, used_names
from mlc.ir.tir import For, PrimFunc
from mlc.ir.tir_visit import kids
from mlc.ir.types import TensorType, TupleType, Type

from .registry import ModulePass, PassContext, option, register_pass

CANDIDATES = 48  # (value, later use) pairs tried per round: the largest bytes x idle stretch first


def _dims(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        if not eq or not name.strip().isidentifier() or not value.strip().isdigit() or int(value) <= 0:
            raise MlcError(f"remat: --dim: expected NAME=POSITIVE_INT[,...], got '{part}'")
        out[name.strip()] = int(value)
    return out


def iterations(prim: PrimFunc, args: tuple[Value, ...], out: Type) -> int:
    """Loop iterations of one call of `prim` (its recompute work), its dims bound from the call's
    concrete argument and result shapes."""
    shapes = [a.type for a in args] + (list(out.fields) if isinstance(out, TupleType) else [out])
    env: dict[str, int] = {}
    for buf, t in zip(prim.params, shapes):
        if isinstance(t, TensorType) and t.shape is not None:
            for d, n in zip(buf.shape, t.shape):
                if isinstance(d, Var) and (k := arith.as_int(n)) is not None:
                    env[d.name] = k

    def count(s: object, scale: int) -> int:
        if isinstance(s, For):
            try:
                scale *= max(arith.evaluate(s.extent, env), 0)
            except (KeyError, ValueError):
                scale *= 64  # an extent the shapes do not determine: a guess, it only ranks candidates
        ks = kids(s)  # type: ignore[arg-type]
        return sum(count(k, scale) for k in ks) if ks else scale

    return max(count(prim.body, 1), 1)


@dataclass
class _Search:
    fn: Function
    prims: dict[str, PrimFunc]
    used: set[str]
    aliases: dict[str, list[str]]  # value -> its recomputed copies, in order

    def plan_bytes(self, dims: dict[str, int]) -> int:
        return plan_function(self.fn).evaluate(dims)[0]

    def candidates(self) -> list[tuple[str, str]]:
        """(value, binding before which to recompute it) for kernel results with two uses far apart."""
        bs = self.fn.body.bindings
        results = {r.name for r in self.fn.body.results}
        nested: set[str] = set()  # read inside an If or Loop: left alone
        uses: dict[str, list[int]] = {}
        for i, b in enumerate(bs):
            for v in operands(b.node):
                uses.setdefault(v.name, []).append(i)
            if isinstance(b.node, If):
                nested |= used_names(b.node.then_block) | used_names(b.node.else_block)
            elif isinstance(b.node, Loop):
                nested |= used_names(b.node.body)
        scored = []
        for b in bs:
            name, t = b.var.name, b.var.type
            if not isinstance(b.node, CallTensor) or name in results or name in nested or not isinstance(t, TensorType):
                continue
            us = sorted(set(uses.get(name, [])))
            size = arith.as_int(arith.simplify(_elements(t))) or 0
            for k in range(len(us) - 1):
                if us[k + 1] - us[k] >= 2:
                    scored.append((size * (us[k + 1] - us[k]), name, bs[us[k + 1]].var.name))
        scored.sort(reverse=True)
        return [(n, at) for _, n, at in scored[:CANDIDATES]]

    def recompute(self, name: str, before: str, depth: int = 3) -> tuple[_Search, int]:
        """A copy of this search whose function recomputes `name` right before binding `before`, and
        the recompute work. Arguments that would be kept alive only for the copy are recomputed too
        (up to `depth` kernels back): a chain of cheap kernels is recomputed as a segment."""
        cur, work = self, 0
        bs = cur.fn.body.bindings
        pos = next(i for i, b in enumerate(bs) if b.var.name == before)
        orig = next(b for b in bs if b.var.name == name)
        assert isinstance(orig.node, CallTensor)
        if depth > 0:
            later = {v.name for b in bs[pos:] for v in operands(b.node)} | {r.name for r in cur.fn.body.results}
            kernels = {b.var.name for b in bs if isinstance(b.node, CallTensor)}
            for a in orig.node.args:
                if a.name in kernels and a.name not in later and not cur.aliases.get(a.name):
                    cur, w = cur.recompute(a.name, before, depth - 1)
                    work += w
            bs = cur.fn.body.bindings
            pos = next(i for i, b in enumerate(bs) if b.var.name == before)
        defined = {b.var.name for b in bs[:pos]}
        used = set(cur.used)
        copy = Value(fresh_name(f"{name}_remat", used), orig.var.type, orig.var.loc)

        def latest(v: Value) -> Value:  # an argument's own latest copy, when it has one by then
            alias = next((a for a in reversed(cur.aliases.get(v.name, [])) if a in defined), None)
            return dataclasses.replace(v, name=alias) if alias else v

        new = list(bs[:pos]) + [Binding(copy, remap_args(orig.node, latest), orig.loc)]
        swap = {name: copy}
        new += [dataclasses.replace(b, node=remap_args(b.node, lambda v: swap.get(v.name, v))) for b in bs[pos:]]
        fn = Function(cur.fn.name, cur.fn.params, Block(tuple(new), cur.fn.body.results, cur.fn.body.loc),
                      cur.fn.attrs, cur.fn.loc)
        aliases = {k: list(v) for k, v in cur.aliases.items()}
        aliases.setdefault(name, []).append(copy.name)
        prim = cur.prims.get(orig.node.func)
        work += iterations(prim, orig.node.args, orig.var.type) if prim is not None else 1
        return _Search(fn, cur.prims, used, aliases), work


def _elements(t: TensorType) -> Expr:
    n: Expr = Const(1)
    for d in t.shape or ():
        n = n * d
    return n


SMALL = 256  # elements: a value this small (a scalar of the optimizer) costs nothing to keep alive


def _small(t: Type) -> bool:
    if not isinstance(t, TensorType) or t.shape is None:
        return False
    n = arith.as_int(arith.simplify(_elements(t)))
    return n is not None and n <= SMALL


def results_early(fn: Function) -> Function:
    """`fn` with every kernel call that produces a result of the function, or a value of at most
    SMALL elements, moved up to right after its last operand is defined. A training step's updates
    (and the scalars they read) then run as soon as their gradient is complete, and the gradient's
    buffer is free for the rest of the backward pass (autodiff emits the updates after the whole
    backward pass). Results are not in the plan, so this only shortens lives; it recomputes nothing."""
    results = {r.name for r in fn.body.results}
    order: list[Binding] = []
    for b in fn.body.bindings:
        if isinstance(b.node, CallTensor) and (b.var.name in results or _small(b.var.type)):
            need = {v.name for v in operands(b.node)}
            at = max((i + 1 for i, o in enumerate(order) if o.var.name in need), default=0)
            order.insert(at, b)
        else:
            order.append(b)
    return Function(fn.name, fn.params, Block(tuple(order), fn.body.results, fn.body.loc), fn.attrs, fn.loc)


def remat_function(fn: Function, prims: dict[str, PrimFunc], budget: int, dims: dict[str, int]) \
        -> tuple[Function, int, int, list[str]]:
    """(the function, plan bytes before, after, the values recomputed) for a plan within `budget`."""
    missing = [v.name for v in fn.sym_vars() if v.name not in dims]
    if missing:
        raise MlcError(f"remat: @{fn.name} has symbolic dims {', '.join(missing)}: give their values with --dim")
    used = {p.name for p in fn.params} | {b.var.name for b in fn.body.bindings}
    before = _Search(fn, prims, set(used), {}).plan_bytes(dims)
    best: tuple[int, _Search, list[str]] | None = None
    for start in (fn, results_early(fn)):  # greedy depends on where it starts: try both orders
        con, now, done = _greedy(_Search(start, prims, set(used), {}), budget, dims)
        if now <= budget:
            return con.fn, before, now, done
        if best is None or now < best[0]:
            best = (now, con, done)
    assert best is not None
    raise MlcError(f"remat: @{fn.name}: the memory plan needs {before:,} bytes at "
                   f"{', '.join(f'{k}={v}' for k, v in dims.items()) or 'these dims'}; recomputing reached "
                   f"{best[0]:,}, above the budget of {budget:,}")


def _greedy(con: _Search, budget: int, dims: dict[str, int]) -> tuple[_Search, int, list[str]]:
    """Recompute the best-scoring candidate until the plan fits or nothing lowers it."""
    now = con.plan_bytes(dims)
    done: list[str] = []
    while now > budget:
        best: tuple[float, int, str, _Search] | None = None
        for name, at in con.candidates():
            trial, work = con.recompute(name, at)
            b = trial.plan_bytes(dims)
            if b < now and (best is None or (now - b) / work > best[0]):
                best = ((now - b) / work, b, name, trial)
        if best is None:
            break
        _, now, name, con = best
        done.append(name)
    return con, now, done


@register_pass
@dataclass(frozen=True)
class Remat(ModulePass):
    """Recompute kernel results instead of keeping them alive, until the memory plan of each named
    graph function fits --memory-budget bytes at the given dims (run it after fuse)."""

    name: ClassVar[str] = "remat"

    memory_budget: int = option(0, "Bytes the memory plan may take (required).")
    dim: str = option("", "Values of the symbolic dims the budget is for: NAME=INT,...")
    func: str = option("train_step", "Graph functions to rematerialize, comma-separated.")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        if self.memory_budget <= 0:
            raise MlcError("remat: --memory-budget BYTES is required (a positive number of bytes)")
        dims = _dims(self.dim)
        prims = {f.name: f for f in module.prim_functions()}
        for name in (n.strip() for n in self.func.split(",") if n.strip()):
            fn = module.get(name)
            if not isinstance(fn, Function):
                raise MlcError(f"remat: no graph function @{name}")
            if not any(isinstance(b.node, CallTensor) for b in fn.body.bindings):
                raise MlcError(f"remat: @{name} calls no kernels yet: run it after fuse")
            new, before, after, done = remat_function(fn, prims, self.memory_budget, dims)
            ctx.info(f"remat: @{name}: memory plan {before:,} -> {after:,} bytes, {len(done)} kernels recomputed")
            module = module.with_function(new)
        return module
