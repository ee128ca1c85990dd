"""Static memory planning for a graph function: intermediate tensors share storage by liveness.

Each intermediate produced at the top level of a function gets a storage token; a token is freed
after the last use of its value and reused by a later value (never by an operand of the same
call, so kernels do not read what they overwrite). Token sizes are byte-count expressions of the
symbolic dims (the max over the values sharing it); the plan's total is evaluated at run time
and, given bounds for the symbols, has a static upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import arith
from .dtype import to_numpy
from .expr import Bin, Const, Expr, free_vars
from .graph import Binding, CallTensor, Function, If, Loop
from .rewrite import operands, used_names
from .types import TensorType


@dataclass
class MemoryPlan:
    token_of: dict[str, int] = field(default_factory=dict)  # value name -> storage token
    token_bytes: list[Expr] = field(default_factory=list)
    naive_bytes: Expr = Const(0)

    @property
    def total_bytes(self) -> Expr:
        total: Expr = Const(0)
        for b in self.token_bytes:
            total = total + b
        return arith.simplify(total)

    def evaluate(self, dims: dict[str, int]) -> tuple[int, int]:
        """(planned bytes, bytes without reuse) for these dim values."""
        return arith.evaluate(self.total_bytes, dims), arith.evaluate(self.naive_bytes, dims)


def nbytes(t: TensorType) -> Expr:
    assert t.shape is not None
    size: Expr = Const(to_numpy(t.dtype).itemsize)
    for d in t.shape:
        size = size * d
    return arith.simplify(size)


def _plannable(b: Binding) -> bool:
    t = b.var.type
    return isinstance(b.node, CallTensor) and isinstance(t, TensorType) and t.shape is not None


def _inputs(b: Binding) -> set[str]:
    names = {v.name for v in operands(b.node)}
    if isinstance(b.node, If):
        names |= used_names(b.node.then_block) | used_names(b.node.else_block)
    elif isinstance(b.node, Loop):
        names |= used_names(b.node.body)
    return names


HINT = 64  # the value each symbolic dim is assumed to have when sizes cannot be compared exactly


def _hint(e: Expr) -> int:
    return arith.evaluate(e, {v.name: HINT for v in free_vars(e)})


def _pick(free: list[int], need: Expr, sizes: list[Expr]) -> int | None:
    """Best fit among the free tokens: the smallest one provably large enough; else, by sizes at
    the hint dims, the smallest one large enough there, else the largest (it grows least)."""
    if not free:
        return None
    fits = [t for t in free if arith.prove_le(need, sizes[t])]
    if fits:
        return min(fits, key=lambda t: _hint(sizes[t]))
    n = _hint(need)
    roomy = [t for t in free if _hint(sizes[t]) >= n]
    return min(roomy, key=lambda t: _hint(sizes[t])) if roomy else max(free, key=lambda t: _hint(sizes[t]))


def plan_function(fn: Function) -> MemoryPlan:
    bindings = fn.body.bindings
    last_use: dict[str, int] = {}
    for i, b in enumerate(bindings):
        for n in _inputs(b):
            last_use[n] = i
    # Only a kernel call writes fresh storage: any other binding (match_cast, a view, an item, a
    # branch) may hand back an operand's array. Its operands then live as long as it does, and escape
    # with it when it is a result. (A match_cast result once lost its storage to a later kernel.)
    results = {r.name for r in fn.body.results}
    for i in reversed(range(len(bindings))):
        b = bindings[i]
        if isinstance(b.node, CallTensor):
            continue
        for n in _inputs(b):
            last_use[n] = max(last_use.get(n, i), last_use.get(b.var.name, i))
            if b.var.name in results:
                results.add(n)
    plan = MemoryPlan()
    free: list[int] = []
    live: dict[int, str] = {}  # token -> value currently holding it
    naive: Expr = Const(0)
    for i, b in enumerate(bindings):
        # release tokens whose value died before this binding
        for tok, name in list(live.items()):
            if last_use.get(name, -1) < i:
                del live[tok]
                free.append(tok)
        if not _plannable(b) or b.var.name in results or b.var.name not in last_use:
            continue
        assert isinstance(b.var.type, TensorType)
        need = nbytes(b.var.type)
        naive = naive + need
        tok = _pick(free, need, plan.token_bytes)
        if tok is not None and not arith.prove_le(need, plan.token_bytes[tok]):
            plan.token_bytes[tok] = arith.simplify(Bin("max", plan.token_bytes[tok], need))
        if tok is None:
            tok = len(plan.token_bytes)
            plan.token_bytes.append(need)
        else:
            free.remove(tok)
        live[tok] = b.var.name
        plan.token_of[b.var.name] = tok
    plan.naive_bytes = arith.simplify(naive)
    return plan
