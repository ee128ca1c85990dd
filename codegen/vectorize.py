"""Can a `vectorized` loop become explicit vector code? (a legality check, no rewriting)

Vector code runs one iteration of the body for all W lanes at once, so iterations are interleaved
statement by statement. That equals the serial order when no lane touches a location another lane
writes. The check is conservative: every store index must be affine in the loop var with a
non-zero constant stride (lanes write distinct elements); a stored buffer must be stored and loaded
through one identical index expression (each lane only re-reads what it wrote); inner loop bounds
must be lane-invariant; and the body may not allocate or contain parallel/vectorized loops. An `if`
whose condition differs between lanes (a reduction init's guard included) runs under a lane mask
(masked vector loads/stores, guarded per-lane gathers/scatters), so it may not contain loops. The
input is loop-level IR (ir/tir_lower.py): block iterators are `let`s, accesses 1-D. Anything else falls back to a scalar loop with vectorizer hints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..ir.expr import Bin, Cast, Const, Expr, Load, Var, children
from ..ir.tir import AttrStmt, Buffer, For, IfStmt, Let, Seq, Stmt, Store
from ..ir.tir_visit import StmtVisitor

# A lane kind: "U" (same in every lane), an int stride s (lane l holds base + s*l), or "V" (anything).
Kind = str | int


@dataclass
class _Check(StmtVisitor):
    kinds: dict[Var, Kind]
    defs: dict[Var, Expr]
    ranges: dict[Var, tuple[int, int]]
    masked: bool = False  # inside an if whose condition differs between lanes
    stores: dict[Buffer, set[tuple[Expr, ...]]] = field(default_factory=dict)
    loads: dict[Buffer, set[tuple[Expr, ...]]] = field(default_factory=dict)

    def kind(self, e: Expr) -> Kind:
        if isinstance(e, Var):
            return self.kinds.get(e, "U")
        if isinstance(e, Const):
            return "U"
        if isinstance(e, Load):
            self.loads.setdefault(e.buffer, set()).add(e.indices)
            return "U" if self.flat_kind(e.buffer, e.indices) == "U" else "V"
        if isinstance(e, Bin) and e.op in ("add", "sub", "mul") and e.dtype not in ("f16", "bf16", "f32", "f64"):
            a, b = self.kind(e.a), self.kind(e.b)
            if a == "V" or b == "V":
                return "V"
            if e.op == "mul":
                return _mul(a, e.b, b, e.a)
            return _add(a, b, -1 if e.op == "sub" else 1)
        if isinstance(e, Bin) and e.op in ("floordiv", "floormod") and isinstance(e.b, Const):
            qr = split_div(e.a, int(e.b.value), self.defs, self.ranges) if _int_const(e.b) else None
            if qr is not None:
                return self.kind(qr[0] if e.op == "floordiv" else qr[1])
        if isinstance(e, Cast) and e.dtype in ("i32", "i64") and e.a.dtype in ("i8", "i16", "i32", "i64"):
            return self.kind(e.a)
        ks = [self.kind(c) for c in children(e)]
        return "U" if all(k == "U" for k in ks) else "V"

    def flat_kind(self, buf: Buffer, indices: tuple[Expr, ...]) -> Kind:
        """Kind of an access's address: its one index (lower-tir flattened it to `(i0 * d1 + i1) * d2 +
        i2`, whose lane stride `kind` derives term by term; a symbolic dim times a lane-varying term
        is "V")."""
        return self.kind(indices[0]) if len(indices) == 1 else "V"

    def stmt(self, s: Stmt) -> bool:
        return bool(self.visit(s))

    def generic_visit(self, s: Stmt) -> bool:
        return False  # allocations, allreduce, gemm: not inside a vector body

    def visit_Seq(self, s: Seq) -> bool:
        return all(self.stmt(x) for x in s.stmts)

    def visit_Store(self, s: Store) -> bool:
        k = self.flat_kind(s.buffer, s.indices)
        self.kind(s.value)
        self.stores.setdefault(s.buffer, set()).add(s.indices)
        return isinstance(k, int) and k != 0 and not isinstance(k, bool)

    def visit_For(self, s: For) -> bool:
        if s.kind in ("parallel", "vectorized", "thread") or self.masked:
            return False
        if self.kind(s.start) != "U" or self.kind(s.extent) != "U":
            return False
        self.kinds[s.var] = "U"
        start, ext = _int_of(s.start), _int_of(s.extent)
        if start is not None and ext is not None:
            self.ranges[s.var] = (start, start + ext)
        return self.stmt(s.body)

    def visit_IfStmt(self, s: IfStmt) -> bool:
        outer = self.masked
        self.masked = outer or self.kind(s.cond) != "U"
        try:
            return self.stmt(s.then) and (s.orelse is None or self.stmt(s.orelse))
        finally:
            self.masked = outer

    def visit_Let(self, s: Let) -> bool:
        self.kinds[s.var] = self.kind(s.value)
        self.defs[s.var] = s.value
        return self.stmt(s.body)

    def visit_AttrStmt(self, s: AttrStmt) -> bool:
        return self.stmt(s.body)


def _add(a: Kind, b: Kind, sign: int) -> Kind:
    if a == "V" or b == "V":
        return "V"
    sa = 0 if a == "U" else int(a)
    sb = 0 if b == "U" else int(b)
    s = sa + sign * sb
    return "U" if s == 0 and a == "U" and b == "U" else s


def _mul(a: Kind, a_other: Expr, b: Kind, b_other: Expr | None) -> Kind:
    """Kind of x*y where `a` is the kind of x and `a_other` is y (and vice versa)."""
    if a == "V" or b == "V":
        return "V"
    if a == "U" and b == "U":
        return "U"
    if a != "U" and b == "U":
        return int(a) * int(a_other.value) if isinstance(a_other, Const) and b == "U" else "V"
    if b != "U" and a == "U" and b_other is not None:
        return int(b) * int(b_other.value) if isinstance(b_other, Const) else "V"
    return "V"


def _int_of(e: Expr) -> int | None:
    return int(e.value) if _int_const(e) else None  # type: ignore[attr-defined]


def _int_const(e: Expr) -> bool:
    return isinstance(e, Const) and not isinstance(e.value, bool) and float(e.value).is_integer()


def can_vectorize(loop: For, defs: Mapping[Var, Expr] | None = None,
                  ranges: Mapping[Var, tuple[int, int]] | None = None) -> bool:
    """True when the body of `loop` may run as lock-step vector lanes with serial semantics.

    `defs` (block iterator bindings, lets) and `ranges` ([lo, hi) of loop vars) describe the enclosing
    scopes, so that floordiv/floormod of iterators can be resolved as affine expressions.
    """
    rng = dict(ranges or {})
    start, ext = _int_of(loop.start), _int_of(loop.extent)
    if start is not None and ext is not None:
        rng[loop.var] = (start, start + ext)
    chk = _Check({loop.var: 1}, dict(defs or {}), rng)
    if not chk.stmt(loop.body):
        return False
    for buf, idx in chk.stores.items():
        if len(idx) != 1 or not chk.loads.get(buf, set()) <= idx:
            return False
    return True


def linear_form(e: Expr, defs: Mapping[Var, Expr]) -> dict[Expr | None, int] | None:
    """`e` as {atom: coeff, None: constant} after expanding `defs`; None if it is not an integer sum.

    An atom is a var or a non-affine integer subterm (e.g. `floormod(f, 3)`), kept whole: callers
    only need its coefficient and, for remainders, its range.
    """
    if isinstance(e, Const):
        return None if isinstance(e.value, bool) or not float(e.value).is_integer() else {None: int(e.value)}
    if isinstance(e, Var):
        return linear_form(defs[e], defs) if e in defs else {e: 1}
    if isinstance(e, Cast) and e.dtype in ("i32", "i64") and e.a.dtype in ("i8", "i16", "i32", "i64"):
        return linear_form(e.a, defs)
    if not isinstance(e, Bin):
        return None
    if e.op not in ("add", "sub", "mul"):
        return {e: 1} if e.op in ("floordiv", "floormod") and e.dtype in ("i32", "i64") else None
    a, b = linear_form(e.a, defs), linear_form(e.b, defs)
    if a is None or b is None:
        return None
    if e.op == "mul":
        ka = a.get(None, 0) if set(a) <= {None} else None
        kb = b.get(None, 0) if set(b) <= {None} else None
        if ka is None and kb is None:
            return None
        k, other = (ka, b) if ka is not None else (kb, a)
        return {v: c * k for v, c in other.items() if c * k}
    sign = -1 if e.op == "sub" else 1
    out = dict(a)
    for v, c in b.items():
        out[v] = out.get(v, 0) + sign * c
    return {v: c for v, c in out.items() if c}


def _atom_range(v: Expr, ranges: Mapping[Var, tuple[int, int]]) -> tuple[int, int] | None:
    """[lo, hi) of an atom: a ranged var, or a floormod by a positive constant."""
    if isinstance(v, Var):
        return ranges.get(v)
    if isinstance(v, Bin) and v.op == "floormod" and isinstance(v.b, Const) and int(v.b.value) > 0:
        return 0, int(v.b.value)
    return None


def split_div(e: Expr, c: int, defs: Mapping[Var, Expr], ranges: Mapping[Var, tuple[int, int]]
              ) -> tuple[Expr, Expr] | None:
    """(q, r) with e == c*q + r and 0 <= r < c provable from var ranges [lo, hi): floordiv/floormod by c.

    This is the iter-map fact `(jo*32 + ji) // 32 == jo` for ji in [0, 32) that lets an index written
    through block iterators stay affine in the vectorized loop var.
    """
    if c <= 0:
        return None
    lf = linear_form(e, defs)
    if lf is None:
        return None
    q_terms: list[Expr] = []
    r_terms: list[Expr] = []
    lo_sum = hi_sum = 0
    for v, k in lf.items():
        if v is None:
            q0, r0 = divmod(k, c)
            if q0:
                q_terms.append(Const(q0))
            lo_sum, hi_sum = lo_sum + r0, hi_sum + r0
            if r0:
                r_terms.append(Const(r0))
        elif k % c == 0:
            q_terms.append(Bin("mul", v, Const(k // c, v.dtype)) if k != c else v)
        else:
            rng = _atom_range(v, ranges)
            if rng is None:
                return None
            lo, hi = rng
            lo_sum += min(k * lo, k * (hi - 1))
            hi_sum += max(k * lo, k * (hi - 1))
            r_terms.append(Bin("mul", v, Const(k, v.dtype)) if k != 1 else v)
    if lo_sum < 0 or hi_sum >= c:
        return None

    def total(ts: list[Expr]) -> Expr:
        out: Expr = Const(0)
        for t in ts:
            out = t if isinstance(out, Const) and out.value == 0 else Bin("add", out, t)
        return out

    return total(q_terms), total(r_terms)
