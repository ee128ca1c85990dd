"""Block form -> the loop-level subset the code generators consume (the `lower-tir` stage).

`lower_tir_func` is the one lowering: the lower-tir pass (passes/lower_tir.py), the code generators
handed block form (`lower_to_llvm`, `lower_to_cuda`, hence `compile_module` and the tuner's
measurement workers) all call it, so a kernel's code is the same whether `mlc build` made it or the
tuner timed it. It runs two steps.

Block semantics are written here once (TVM: LowerInitBlock, ConvertBlocksToOpaque, LowerOpaqueBlock,
LowerThreadAllreduce):
- a block becomes `let` bindings of its iterators (outermost first, so codegen and the vectorizer
  still see each iterator's defining expression), `allocate` statements for its buffers, and its
  body; the body of a block with reduce iterators is marked `attr "reduction"` (codegen may
  reassociate floating-point updates there);
- `init` becomes `if (r0 == 0 and r1 == 0 ...) { init }` over the reduce iterators (domains start
  at 0), or runs unguarded when the block has none;
- a block whose reduce iterator is bound to a `threadIdx.x` loop becomes a `ThreadAllReduce` around
  that loop: the update folds into a local accumulator, the write-back (`init` value or the old
  output, combined with the total) runs once;
- a top-level stage holding a block tensorized with a `gemm_*` intrinsic becomes one `GemmCall`
  carrying the GEMM's buffers, whether it accumulates, and the template tile (typed, not a name).

Then loops whose tile guards hold on a prefix are split into a guard-free main part and a guarded
remainder (ir/loop_partition.py, TVM's LoopPartition); GPU kernels (thread-bound loops) are left as
they are. Last, buffers are flattened (ir/flatten.py): every access is 1-D, n-d parameters through
flat views, at the row-major index in Horner form (from which the LLVM vectorizer still derives
lane strides term by term).

The result holds no `BlockStmt`; a function already in that form is taken to be this lowering's
output and only flattened (the identity on the pass's output, so the code generators do not
partition it twice).
"""

from __future__ import annotations

from dataclasses import replace

from .diagnostics import MlcError
from .expr import Bin, Const, Expr, Load, free_vars
from .flatten import flatten_func
from .loop_partition import partition_loops
from .names import fresh_name
from .tir import (
    Allocate,
    AttrStmt,
    BlockStmt,
    Buffer,
    For,
    GemmCall,
    IfStmt,
    Let,
    PrimFunc,
    Seq,
    Stmt,
    Store,
    ThreadAllReduce,
)
from .tir_gemm import match_gemm, parse_gemm_intrin
from .tir_visit import StmtMutator, conjuncts, kids, nodes, seq, used_names


def is_lowered(func: PrimFunc) -> bool:
    """True when `func` is in the loop-level subset (no blocks left)."""
    return not any(isinstance(s, BlockStmt) for s in nodes(func.body))


def lower_tir_func(func: PrimFunc) -> PrimFunc:
    """The loop-level form of a (scheduled or not) block-form PrimFunc: blocks lowered, loops
    partitioned, buffers flattened; see the module docstring."""
    if is_lowered(func):
        return flatten_func(func)
    lw = _Lower(used_names(func))
    body = func.body
    if isinstance(body, BlockStmt) and not body.iters and body.init is None:  # the root: stages
        stages = body.body.stmts if isinstance(body.body, Seq) else (body.body,)
        new = [gemm_stage(s) or s for s in stages]
        if any(a is not b for a, b in zip(new, stages)):
            body = replace(body, body=seq(new))
    return flatten_func(partition_loops(replace(func, body=lw.visit(body))))


def gemm_stage(stage: Stmt) -> GemmCall | None:
    """The GemmCall a stage holding a block tensorized with `gemm_*` computes, or None (the stage is
    then lowered as loops). The stage's loops only certify the pattern: the template tiles itself."""
    outer = [x for x in nodes(stage) if isinstance(x, BlockStmt)
             and str(dict(x.annotations).get("tensor_intrin", "")).startswith("gemm_")]
    if not outer:
        return None
    parsed = parse_gemm_intrin(str(dict(outer[0].annotations)["tensor_intrin"]))
    leaves = [x for x in nodes(outer[0].body) if isinstance(x, BlockStmt)]
    g = match_gemm(leaves[-1]) if leaves else None
    if g is None:
        return None
    # the decomposed init (C = 0) lives in the same stage; without it the GEMM accumulates into C
    inits = [x for x in nodes(stage) if isinstance(x, BlockStmt) and x is not leaves[-1]
             and isinstance(x.body, Store) and x.body.buffer.name == g.c.name]
    accumulate = not (inits and all(isinstance(x.body, Store) and isinstance(x.body.value, Const)
                                    and float(x.body.value.value) == 0.0 for x in inits))
    return GemmCall(g.c, g.a, g.b, accumulate, g.batched, parsed[1] if parsed else None, outer[0].loc)


def update_op(st: Store) -> str | None:
    """OP when `st` is `X[i] = X[i] OP f` (or `f OP X[i]`) with OP a reduction combiner."""
    v = st.value
    if isinstance(v, Bin) and v.op in ("add", "mul", "max", "min"):
        me = Load(st.buffer, st.indices)
        if v.a == me or v.b == me:
            return v.op
    return None


def _update_rhs(st: Store) -> Expr:
    v = st.value
    assert isinstance(v, Bin)
    return v.b if v.a == Load(st.buffer, st.indices) else v.a


class _Lower(StmtMutator):
    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.xr: tuple[BlockStmt, Buffer, str] | None = None  # (block, accumulator, op) of the enclosing allreduce

    def visit_BlockStmt(self, b: BlockStmt) -> Stmt:
        red = [iv for iv in b.iters if iv.kind == "R"]
        if self.xr is not None and self.xr[0] is b:
            _, acc, op = self.xr
            assert isinstance(b.body, Store)
            a0 = Load(acc, (Const(0),))
            body: Stmt = AttrStmt("reduction", Store(acc, (Const(0),), Bin(op, a0, _update_rhs(b.body)), b.body.loc))
        else:
            body = self.visit(b.body)
            if red:
                body = AttrStmt("reduction", body, b.loc)
            if b.init is not None:
                init = self.visit(b.init)
                if red:
                    cond: Expr = Bin("eq", red[0].var, Const(0, red[0].var.dtype))
                    for iv in red[1:]:
                        cond = Bin("and", cond, Bin("eq", iv.var, Const(0, iv.var.dtype)))
                    init = IfStmt(cond, init, None, b.loc)
                body = Seq((init, body), b.loc)
        for buf in reversed(b.alloc_buffers):
            body = Allocate(buf, body, b.loc)
        for iv in reversed(b.iters):
            body = Let(iv.var, iv.binding, body, iv.loc)
        return body

    def visit_For(self, lp: For) -> Stmt:
        found = _cross_thread_block(lp) if lp.kind == "thread" and lp.thread_tag == "threadIdx.x" else None
        if found is None:
            return self.generic_visit(lp)
        b, conds = found
        st = b.body
        op = update_op(st) if isinstance(st, Store) else None
        if op is None or not isinstance(st, Store):
            raise MlcError(f"lower-tir: block {b.name} reduces across threads but is not an update "
                           f"X[i] = X[i] op f with op in add/mul/max/min", b.loc)
        inner = {x.var for x in nodes(lp) if isinstance(x, For)} | {iv.var for iv in b.iters if iv.kind == "R"}
        spatial = [iv for iv in b.iters if iv.kind == "S"]
        for iv in spatial:
            if free_vars(iv.binding) & inner:
                raise MlcError(f"lower-tir: block {b.name}: spatial iterator {iv.var.name} varies across "
                               f"the reduction threads", iv.loc)
        acc = Buffer(fresh_name("acc", self.used), (Const(1),), st.buffer.dtype, "local", b.loc)
        saved, self.xr = self.xr, (b, acc, op)
        loop = self.generic_visit(lp)
        self.xr = saved
        assert isinstance(loop, For)
        start = b.init.value if isinstance(b.init, Store) else Load(st.buffer, st.indices)
        result: Stmt = Store(st.buffer, st.indices, Bin(op, start, Load(acc, (Const(0),))), st.loc)
        outer = [c for cond in conds for c in conjuncts(cond) if not free_vars(c) & inner]
        if outer:
            cond = outer[0]
            for c in outer[1:]:
                cond = Bin("and", cond, c)
            result = IfStmt(cond, result, None, b.loc)
        for iv in reversed(spatial):
            result = Let(iv.var, iv.binding, result, iv.loc)
        return ThreadAllReduce(op, acc, loop, result, lp.loc)


def _cross_thread_block(lp: For) -> tuple[BlockStmt, list[Expr]] | None:
    """The block whose reduce iterator this thread loop feeds, with the if-conditions on the way."""
    found: list[tuple[BlockStmt, list[Expr]]] = []

    def visit(s: Stmt, conds: list[Expr]) -> None:
        if isinstance(s, BlockStmt):
            if any(iv.kind == "R" and lp.var in free_vars(iv.binding) for iv in s.iters):
                found.append((s, conds))
            return
        if isinstance(s, IfStmt):
            visit(s.then, conds + [s.cond])
            if s.orelse is not None:
                visit(s.orelse, conds)
            return
        for k in kids(s):
            visit(k, conds)

    visit(lp.body, [])
    if not found:
        return None
    if len(found) > 1:
        raise MlcError(f"lower-tir: thread loop {lp.var.name} feeds the reductions of several blocks", lp.loc)
    return found[0]

