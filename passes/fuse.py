"""fuse: operator fusion (TVM's FuseOps) followed by lowering each group to ONE tensor program (FuseTIR).

Grouping follows TVM's dominator-based partitioner on each block's dataflow graph: the post-dominator
tree says where all uses of a value meet; a node joins its immediate post-dominator's group when
every op on every path between them satisfies the pattern rule of the node's group, and then all
those path ops join too (so groups are convex: no cycles, and only the sink escapes the group).

- elementwise/broadcast chains fuse into any injective, reduction or out_ewise_fusable consumer, except
  an op that reuses its inputs (a convolution: `OpDef.reuses_inputs`), which would recompute the chain
  at every use (TVM fuses no prologue into conv2d either; `prologue=true` allows it);
- injective ops (reshape, transpose, concat, ...) fuse along injective paths and into a reduction or
  matmul/conv consumer, which then reads through the index mapping (second phase), unless an
  elementwise chain joined them and the consumer reuses its inputs;
- out_ewise_fusable (matmul, conv, pools) and, beyond TVM, reductions take an elementwise/broadcast
  epilogue (first phase);
- a group holds at most one reduction-like op, so every kernel has one main loop nest to schedule;
- opaque ops (softmax, layer_norm, calls, control flow) and values used by the block's results or by
  nested blocks are group boundaries.

Each group becomes one PrimFunc via lower.lower_group: producers are inlined into consumers, and a
value that must exist in memory (a matmul result feeding its epilogue) is a buffer allocated in the
program's root block, not a graph value. Ops outside groups are lowered alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from mlc.ir.graph import Binding, Block, CallTensor, Function, If, Loop, OpCall
from mlc.ir.module import Module
from mlc.ir.ops.registry import KINDS
from mlc.ir.ops.registry import get as get_op
from mlc.ir.rewrite import operands, used_names
from mlc.ir.tir_builder import CannotLower

from .lower import GroupLowerer, LowerOptions, lowerable, map_blocks, parse_externs, to_externs
from .registry import PassContext, option, register_pass

ELEM, BCAST, INJ, RED, OUT_EW, OPAQUE = range(len(KINDS))
HEAVY = (RED, OUT_EW)


@dataclass
class Group:
    pattern: int
    heavy: int
    size: int = 1
    ewise: bool = False  # holds an elementwise/broadcast op (computes, not just moves data)
    parent: Group | None = None

    def root(self) -> Group:
        g = self
        while g.parent is not None:
            g = g.parent
        node = self
        while node.parent is not None and node.parent is not g:  # path compression
            node.parent, node = g, node.parent
        return g


@dataclass
class DomNode:
    parent: DomNode | None
    depth: int
    pattern: int
    index: int


@dataclass
class Graph:
    """The dataflow graph of one block: node i is binding i; edges go producer -> consumer."""

    pattern: list[int]
    outputs: list[list[int]] = field(default_factory=list)
    extern_ref: list[bool] = field(default_factory=list)


def build_graph(block: Block, pattern_of: Callable[[Binding], int]) -> Graph:
    index = {b.var.name: i for i, b in enumerate(block.bindings)}
    g = Graph([pattern_of(b) for b in block.bindings])
    g.outputs = [[] for _ in block.bindings]
    g.extern_ref = [False] * len(block.bindings)
    for j, b in enumerate(block.bindings):
        names = [v.name for v in operands(b.node)]
        if isinstance(b.node, If):
            names += sorted(used_names(b.node.then_block) | used_names(b.node.else_block))
        elif isinstance(b.node, Loop):
            names += sorted(used_names(b.node.body))
        for nm in dict.fromkeys(names):
            if nm in index and index[nm] < j:
                g.outputs[index[nm]].append(j)
    for r in block.results:
        if r.name in index:
            g.extern_ref[index[r.name]] = True
    return g


def post_dominators(g: Graph) -> list[DomNode]:
    """TVM's DominatorTree::PostDom: parent = LCA of the consumers, pattern = max pattern on the way."""
    nodes: list[DomNode | None] = [None] * len(g.pattern)

    def lca(a: DomNode | None, b: DomNode | None, pat: list[int]) -> DomNode | None:
        while a is not b:
            if a is None or b is None:
                return None
            if a.depth < b.depth:
                pat[0] = max(pat[0], b.pattern)
                b = b.parent
            elif b.depth < a.depth:
                pat[0] = max(pat[0], a.pattern)
                a = a.parent
            else:
                pat[0] = max(pat[0], a.pattern, b.pattern)
                a, b = a.parent, b.parent
        return a

    for i in reversed(range(len(g.pattern))):
        if g.extern_ref[i] or not g.outputs[i]:
            nodes[i] = DomNode(None, 1, OPAQUE, i)
            continue
        pat = [ELEM]
        outs = g.outputs[i]
        parent = nodes[outs[0]]
        pat[0] = max(pat[0], g.pattern[outs[0]])
        for j in outs[1:]:
            parent = lca(parent, nodes[j], pat)
            pat[0] = max(pat[0], g.pattern[j])
        nodes[i] = DomNode(parent, parent.depth + 1 if parent else 1, pat[0], i)
    return [n for n in nodes if n is not None]


class Partitioner:
    def __init__(self, g: Graph, heavy: list[bool], max_depth: int, reuses: list[bool] | None = None):
        self.g = g
        self.groups = [Group(p, int(h), ewise=p <= BCAST) for p, h in zip(g.pattern, heavy)]
        self.max_depth = max_depth
        self.reuses = reuses or [False] * len(g.pattern)

    def path(self, src: int, sink: int) -> list[int]:
        """Nodes strictly after src on some path to sink, sink included."""
        seen: set[int] = set()
        stack = list(self.g.outputs[src])
        while stack:
            n = stack.pop()
            if n in seen or n > sink:
                continue
            seen.add(n)
            if n != sink:
                stack.extend(self.g.outputs[n])
        return sorted(seen)

    def check_path(self, src: int, sink: int, fcond: Callable[[int, bool], bool]) -> bool:
        seen: set[int] = set()

        def visit(n: int) -> bool:
            if n in seen:
                return True
            seen.add(n)
            if not fcond(self.groups[n].pattern, n == sink):
                return False
            if n == sink:
                return True
            if n > sink:  # ran past the sink: a path escapes (cannot happen below a post-dominator)
                return False
            return all(visit(m) for m in self.g.outputs[n])

        return all(visit(m) for m in self.g.outputs[src])

    def commit(self, src: int, sink: int) -> bool:
        nodes = [src] + self.path(src, sink)
        roots = {id(self.groups[n].root()): self.groups[n].root() for n in nodes}
        if sum(r.heavy for r in roots.values()) > 1 or sum(r.size for r in roots.values()) > self.max_depth:
            return False
        target = self.groups[sink].root()
        for r in roots.values():
            if r is not target:
                r.parent = target
                target.size += r.size
                target.heavy += r.heavy
                target.pattern = max(target.pattern, r.pattern)
                target.ewise = target.ewise or r.ewise
        return True

    def run(self, dom: list[DomNode]) -> list[Group]:
        for phase in (0, 1):
            for i, dn in enumerate(dom):
                grp = self.groups[i]
                if grp.pattern == OPAQUE or dn.parent is None:
                    continue
                sink = dn.parent.index
                if grp.root() is self.groups[sink].root():
                    continue
                if self.reuses[sink] and grp.root().ewise:
                    continue
                if grp.pattern in HEAVY:
                    if phase == 0 and dn.pattern <= BCAST:
                        if self.check_path(i, sink, lambda k, _s: k <= BCAST):
                            self.commit(i, sink)
                elif grp.pattern <= BCAST:
                    if dn.pattern <= INJ or dn.pattern in HEAVY:
                        def fcond(k: int, is_sink: bool) -> bool:
                            return k <= BCAST or (is_sink and k in (INJ, RED, OUT_EW))

                        if self.check_path(i, sink, fcond):
                            self.commit(i, sink)
                elif grp.pattern == INJ and phase == 1:
                    if self.check_path(i, sink, lambda k, is_sink: k <= INJ or (is_sink and k in HEAVY)):
                        self.commit(i, sink)
        return [g.root() for g in self.groups]


@dataclass
class FuseStats:
    ops: int = 0
    kernels: int = 0
    functions: int = 0


def _fused_name(bindings: list[Binding]) -> str:
    ops_ = [b.node.op for b in bindings if isinstance(b.node, OpCall)]
    if len(ops_) == 1:
        return ops_[0]
    name = "fused_" + "_".join(ops_)
    return name if len(name) <= 48 else name[:48].rstrip("_") + f"_{len(ops_)}ops"


class Fuser:
    def __init__(self, gl: GroupLowerer, externs: dict[str, str], max_depth: int, prologue: bool = False):
        self.gl = gl
        self.externs = externs
        self.max_depth = max_depth
        self.prologue = prologue

    def pattern(self, b: Binding) -> int:
        if not lowerable(b):
            return OPAQUE
        assert isinstance(b.node, OpCall)
        op = get_op(b.node.op)
        assert op is not None
        return KINDS.index(op.kind)

    @staticmethod
    def reuses_inputs(b: Binding) -> bool:
        op = get_op(b.node.op) if isinstance(b.node, OpCall) else None
        return op is not None and op.reuses_inputs

    def block(self, block: Block) -> Block:
        block = to_externs(block, self.externs)
        bs = block.bindings
        g = build_graph(block, self.pattern)
        heavy = [p in HEAVY for p in g.pattern]
        reuses = [not self.prologue and self.reuses_inputs(b) for b in bs]
        roots = Partitioner(g, heavy, self.max_depth, reuses).run(post_dominators(g))
        members: dict[int, list[int]] = {}
        for i, r in enumerate(roots):
            if g.pattern[i] != OPAQUE or lowerable(bs[i]):
                members.setdefault(id(r), []).append(i)
        item_of = list(range(len(bs)))  # binding -> item key (index of the group's last member)
        items: dict[int, list[Binding]] = {}
        for idxs in members.values():
            last = max(idxs)
            for i in idxs:
                item_of[i] = last
            items[last] = self.group([bs[i] for i in idxs], idxs, g)
        for i, b in enumerate(bs):
            if item_of[i] == i and i not in items:
                items[i] = [b]
        return Block(self.order(items, item_of, bs, g), block.results, block.loc)

    def group(self, bindings: list[Binding], idxs: list[int], g: Graph) -> list[Binding]:
        inside = set(idxs)
        outs = [bindings[k].var for k, i in enumerate(idxs) if g.extern_ref[i] or any(j not in inside for j in g.outputs[i])]
        if not outs:  # dead group: keep its last value so the block stays well formed
            outs = [bindings[-1].var]
        if len(bindings) > 1 and len(outs) == 1:  # convex groups under a post-dominator have one result
            try:
                call = self.gl.lower(bindings, outs, _fused_name(bindings))
                return [Binding(outs[0], call, bindings[-1].loc)]
            except CannotLower:
                pass
        out = []
        for b in bindings:
            nb = self.gl.single(b) if isinstance(b.node, OpCall) else None
            out.append(nb or b)
        return out

    @staticmethod
    def order(items: dict[int, list[Binding]], item_of: list[int], bs: tuple[Binding, ...], g: Graph) -> tuple[Binding, ...]:
        """Topological order of the new items, as close to the original order as dependencies allow."""
        deps: dict[int, set[int]] = {k: set() for k in items}
        for i in range(len(bs)):
            for j in g.outputs[i]:
                a, b = item_of[i], item_of[j]
                if a != b:
                    deps[b].add(a)
        users: dict[int, list[int]] = {k: [] for k in items}
        for k, ds in deps.items():
            for d in ds:
                users[d].append(k)
        left = {k: len(ds) for k, ds in deps.items()}
        ready = [k for k, n in left.items() if n == 0]
        heapq.heapify(ready)
        out: list[Binding] = []
        done = 0
        while ready:
            k = heapq.heappop(ready)
            done += 1
            out.extend(items[k])
            for u in users[k]:
                left[u] -= 1
                if left[u] == 0:
                    heapq.heappush(ready, u)
        assert done == len(items), "fusion created a cycle between groups"
        return tuple(out)


def count_calls(module: Module) -> FuseStats:
    """Op calls, call_tensor sites and tensor programs of a module (nested blocks included)."""
    st = FuseStats(functions=len(module.prim_functions()))

    def walk(block: Block) -> None:
        for b in block.bindings:
            if isinstance(b.node, OpCall):
                op = get_op(b.node.op)
                st.ops += op is None or op.pure  # run-time checks stay on the host by design
            elif isinstance(b.node, CallTensor):
                st.kernels += 1
            elif isinstance(b.node, If):
                walk(b.node.then_block)
                walk(b.node.else_block)
            elif isinstance(b.node, Loop):
                walk(b.node.body)

    for f in module.graph_functions():
        walk(f.body)
    return st


@register_pass
@dataclass(frozen=True)
class Fuse(LowerOptions):
    """Fuse ops into groups (injective chains, reduction/matmul/conv epilogues) and lower each group to one tensor program."""

    name: ClassVar[str] = "fuse"
    max_depth: int = option(64, "most ops in one fused kernel")
    prologue: bool = option(False, "also fuse elementwise producers into convolutions (recomputed at every use)")

    def apply(self, module: Module, ctx: PassContext) -> Module:
        before = count_calls(module)
        gl = GroupLowerer(module)
        fz = Fuser(gl, parse_externs(self.extern), max(1, int(self.max_depth)), bool(self.prologue))
        fns = [map_blocks(f, fz.block) if isinstance(f, Function) else f for f in module.functions]
        out = gl.finish(fns, self.strict, "fuse")
        after = count_calls(out)
        ctx.info(f"fuse: {before.ops} ops -> {after.kernels} kernels ({len(gl.new)} tensor programs, {after.ops} ops left)")
        return out


__all__ = ["Fuse", "count_calls", "FuseStats", "post_dominators", "build_graph", "Partitioner"]
