"""Tensor programs (TensorIR-style): buffers, loop nests, blocks with typed iterators.

A `PrimFunc` takes buffers (inputs then outputs, destination-passing style) and symbolic
scalars; its body is a statement tree. A `BlockStmt` is the unit schedules reason about: an
iteration domain of spatial ("S") and reduce ("R") iterators bound to loop expressions, an
optional `init` run at the first reduce iteration, and a body.

The `lower-tir` stage (ir/tir_lower.py) turns block form into the loop-level subset the code
generators consume: no `BlockStmt`, iterators bound by `Let`, allocations explicit (`Allocate`),
reduction bodies marked (`AttrStmt`), cross-thread reductions explicit (`ThreadAllReduce`), a
tensorized GEMM stage one `GemmCall`, and every access 1-D: parameters keep their n-d type (the
kernel ABI, the runtime's checks, `GemmCall`) and are read and written through `BufferView`s, flat
views of the same memory (ir/flatten.py). Both forms print, parse and run in ir/tir_interp.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .diagnostics import UNKNOWN, Loc
from .expr import Expr, Var
from .graph import Attrs

if TYPE_CHECKING:
    from .sparse import Axis, SparseBuffer


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[Expr, ...]
    dtype: str
    scope: str = "global"  # global | local | shared
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Stmt:
    pass


FOR_KINDS: tuple[str, ...] = ("serial", "parallel", "vectorized", "unrolled", "thread")


@dataclass(frozen=True)
class For(Stmt):
    """`for %i in start..start+extent` with a kind; `thread` loops carry a `thread_tag`."""

    var: Var
    start: Expr
    extent: Expr
    body: Stmt
    kind: str = "serial"
    thread_tag: str = ""  # blockIdx.x, threadIdx.y, ... when kind == "thread"
    annotations: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class IterVar:
    """A block iterator: its var, domain extent [0, extent), kind S/R and loop binding."""

    var: Var
    extent: Expr
    kind: str  # "S" spatial | "R" reduce
    binding: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class BlockStmt(Stmt):
    name: str
    iters: tuple[IterVar, ...]
    body: Stmt
    init: Stmt | None = None
    alloc_buffers: tuple[Buffer, ...] = ()
    annotations: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Seq(Stmt):
    stmts: tuple[Stmt, ...]
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class IfStmt(Stmt):
    cond: Expr
    then: Stmt
    orelse: Stmt | None = None
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Let(Stmt):
    var: Var
    value: Expr
    body: Stmt
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class Allocate(Stmt):
    """`allocate %buf: buffer<..., scope> { body }`: `buf` exists (uninitialised) while `body` runs.
    Loop-level form of a block's `alloc`; the scope comes from the buffer type."""

    buffer: Buffer
    body: Stmt
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


# keys an AttrStmt may carry, and what they promise to the code generators
ATTR_KEYS: dict[str, str] = {
    "reduction": "the body is the update of a reduction: floating-point reassociation is allowed",
}


@dataclass(frozen=True)
class AttrStmt(Stmt):
    """`attr "key" { body }`: a fact about `body` that code generators may use (see ATTR_KEYS)."""

    key: str
    body: Stmt
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


REDUCE_OPS: tuple[str, ...] = ("add", "mul", "max", "min")


@dataclass(frozen=True)
class ThreadAllReduce(Stmt):
    """`allreduce OP %acc: buffer<1 x T, local> { for ... thread "threadIdx.x" {...} } then { result }`.

    A reduction across the threads of `loop`: `acc[0]` starts at OP's identity in every thread, the
    loop body folds partial values into it (`acc[0] = acc[0] OP x`), the partials are then combined
    across the threads and `result` runs once with `acc[0]` holding the total. Run serially (the
    interpreter, a CPU) it is: acc = identity; loop; result.
    """

    op: str
    acc: Buffer
    loop: For
    result: Stmt
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class GemmTile:
    """A GEMM template tile: block tile BM x BN x BK, per-warp (per-thread for f32) WM x WN, and the
    number of pipeline stages."""

    bm: int
    bn: int
    bk: int
    wm: int
    wn: int
    stages: int

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        return (self.bm, self.bn, self.bk, self.wm, self.wn, self.stages)


@dataclass(frozen=True)
class GemmCall(Stmt):
    """`gemm %C = %A * %B [accumulate] [batched] [tile(BM, BN, BK, WM, WN, STAGES)]`.

    C[.., M, N] (+)= A[.., M, K] @ B[.., K, N], row-major. `batched`: A, B and C share leading dims;
    else B is 2-D and A's leading dims fold into M. `accumulate` adds to C instead of overwriting it.
    `tile` is the template tile a schedule chose (None: the code generator's default).
    """

    c: Buffer
    a: Buffer
    b: Buffer
    accumulate: bool
    batched: bool
    tile: GemmTile | None = None
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class BufferView:
    """`view %A_flat: buffer<(m * 64) x f32> = %A`: a 1-D buffer over the memory of `source` (row-major,
    as many elements), declared at the top of a loop-level `prim` (TVM: `decl_buffer` with
    `data=A.data`). `source` is a parameter or a global-scope `allocate` of the body; the view is in
    scope where its source is. The loop-level subset accesses n-d buffers only through their view, at
    the row-major flat index, so index linearization is written once (ir/flatten.py), not per codegen."""

    buffer: Buffer
    source: Buffer
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)


@dataclass(frozen=True)
class PrimFunc:
    """`prim @name(buffers..., scalars...) { body }`.

    `params` are the buffers in call order (inputs, then outputs); `num_outputs` says how many
    trailing ones are outputs. `scalar_params` are symbolic ints passed explicitly (dims that no
    buffer shape determines). Dims that appear in buffer shapes are bound from the buffers.
    `axes` and `sparse_buffers` declare a sparse program's iteration spaces and value views
    (ir/sparse.py); both are empty in dense programs and after sparse-lower's stage III.
    `views` are the flat views of n-d parameters the loop-level subset accesses (empty in block form).
    """

    name: str
    params: tuple[Buffer, ...]
    num_outputs: int
    body: Stmt
    scalar_params: tuple[Var, ...] = ()
    attrs: Attrs = ()
    loc: Loc = field(default=UNKNOWN, compare=False, repr=False)
    axes: tuple[Axis, ...] = ()
    sparse_buffers: tuple[SparseBuffer, ...] = ()
    views: tuple[BufferView, ...] = ()
