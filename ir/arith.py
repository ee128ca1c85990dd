"""The one simplifier and prover for integer expressions, used by every pass.

Integer expressions are normalised to a sum of monomials: `{(atom, ...): coeff}` where an atom is
a `Var` or an opaque non-polynomial node (floordiv, floormod, min, max, ...) whose children are
themselves simplified. Two expressions are provably equal when their difference normalises to 0.
Symbolic dims are sizes, so every `Var` is assumed >= 0 when proving inequalities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .dtype import is_int
from .expr import Bin, Cast, Const, Expr, Select, Var, children, substitute

Monomial = tuple[Expr, ...]
Poly = dict[Monomial, int]


def _key(e: Expr) -> str:
    return repr(e)


def _const_poly(c: int) -> Poly:
    return {(): c} if c else {}


def _add(p: Poly, q: Poly, sign: int = 1) -> Poly:
    out = dict(p)
    for m, c in q.items():
        v = out.get(m, 0) + sign * c
        if v:
            out[m] = v
        else:
            out.pop(m, None)
    return out


def _mul(p: Poly, q: Poly) -> Poly:
    out: Poly = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            m = tuple(sorted(m1 + m2, key=_key))
            v = out.get(m, 0) + c1 * c2
            if v:
                out[m] = v
            else:
                out.pop(m, None)
    return out


def _as_const(p: Poly) -> int | None:
    if not p:
        return 0
    if len(p) == 1 and () in p:
        return p[()]
    return None


def _to_poly(e: Expr) -> Poly:
    if isinstance(e, Const) and not isinstance(e.value, bool) and isinstance(e.value, int):
        return _const_poly(int(e.value))
    if isinstance(e, Var):
        return {(e,): 1}
    if isinstance(e, Bin) and e.op in ("add", "sub"):
        return _add(_to_poly(e.a), _to_poly(e.b), 1 if e.op == "add" else -1)
    if isinstance(e, Bin) and e.op == "mul":
        return _mul(_to_poly(e.a), _to_poly(e.b))
    if isinstance(e, Bin) and e.op in ("floordiv", "floormod"):
        a, b = _to_poly(e.a), _to_poly(e.b)
        ca, cb = _as_const(a), _as_const(b)
        if cb is not None and cb != 0:
            if ca is not None:
                return _const_poly(ca // cb if e.op == "floordiv" else ca % cb)
            if cb == 1:
                return a if e.op == "floordiv" else {}
            if all(c % cb == 0 for c in a.values()):
                return {m: c // cb for m, c in a.items()} if e.op == "floordiv" else {}
        q = _exact_quotient(a, b)
        if q is not None:
            return q if e.op == "floordiv" else {}
        return {(Bin(e.op, _from_poly(a), _from_poly(b)),): 1}
    if isinstance(e, Bin) and e.op in ("min", "max"):
        # flatten nested min/max, drop duplicates and terms another term provably dominates
        terms: list[Poly] = []
        for t in _flatten(e, e.op):
            p = _to_poly(t)
            if p not in terms:
                terms.append(p)

        def beaten(p: Poly, q: Poly) -> bool:  # q makes p redundant
            d = _add(q, p, -1) if e.op == "max" else _add(p, q, -1)
            c = _as_const(d)
            return (c >= 0) if c is not None else _nonneg(d)

        keep = [p for i, p in enumerate(terms)
                if not any(beaten(p, q) and (not beaten(q, p) or j < i) for j, q in enumerate(terms) if j != i)]
        exprs = sorted((_from_poly(p) for p in keep), key=_key)
        if len(exprs) == 1:
            return _to_poly(exprs[0])
        out = exprs[0]
        for x in exprs[1:]:
            out = Bin(e.op, out, x)
        return {(out,): 1}
    # opaque atom (casts included: a narrowing one wraps, and a widening one types its operand): simplify inside, keep as a unit
    return {(_rebuild(e),): 1}


def _flatten(e: Expr, op: str) -> list[Expr]:
    if isinstance(e, Bin) and e.op == op:
        return _flatten(e.a, op) + _flatten(e.b, op)
    return [e]


def _exact_quotient(a: Poly, b: Poly) -> Poly | None:
    """a / b when b is one monomial dividing every term of a exactly (e.g. 32*n*s / (n*s) = 32)."""
    if len(b) != 1:
        return None
    (bm, bc), = b.items()
    if not bm or bc == 0:
        return None
    out: Poly = {}
    for m, c in a.items():
        rest = list(m)
        for atom in bm:
            if atom not in rest:
                return None
            rest.remove(atom)
        if c % bc:
            return None
        out[tuple(rest)] = c // bc
    return out


def _rebuild(e: Expr) -> Expr:
    if isinstance(e, Bin):
        return Bin(e.op, simplify(e.a), simplify(e.b), e.loc)
    if isinstance(e, Select):
        return Select(simplify(e.cond), simplify(e.t), simplify(e.f), e.loc)
    return e


def _nonneg(p: Poly) -> bool:
    """True when every coefficient is >= 0 (so the value is >= 0 for non-negative atoms)."""
    return all(c >= 0 for c in p.values()) and all(
        all(isinstance(a, Var) for a in m) for m in p
    )


def _from_poly(p: Poly) -> Expr:
    if not p:
        return Const(0)
    terms: list[tuple[int, Expr | None]] = []
    for m in sorted(p, key=lambda m: (len(m) == 0, [_key(a) for a in m])):
        c = p[m]
        if not m:
            terms.append((c, None))
            continue
        prod: Expr = m[0]
        for a in m[1:]:
            prod = Bin("mul", prod, a)
        terms.append((c, prod))
    out: Expr | None = None
    for c, t in terms:
        if t is None:
            piece: Expr = Const(abs(c))
        elif abs(c) == 1:
            piece = t
        else:
            piece = Bin("mul", Const(abs(c)), t)
        if out is None:
            out = piece if c > 0 else Bin("sub", Const(0), piece) if t is not None else Const(c)
        else:
            out = Bin("add" if c > 0 else "sub", out, piece)
    assert out is not None
    return out


def _is_int_expr(e: Expr) -> bool:
    """Index arithmetic: i64, where the polynomial form (over unbounded integers) is exact in practice.
    Narrower integers are data that wraps, and their constants must keep their type: left alone."""
    try:
        return e.dtype == "i64"
    except AttributeError:
        return False


def simplify(e: Expr) -> Expr:
    """Canonical form of an integer expression; other expressions get their integer parts simplified."""
    if isinstance(e, Var | Const):
        return e
    if _is_int_expr(e) and not any(isinstance(x, Select) for x in (e,)):
        return _from_poly(_to_poly(e))
    if isinstance(e, Bin) and e.op in ("eq", "ne", "lt", "le", "gt", "ge"):
        a, b = simplify(e.a), simplify(e.b)
        if _is_int_expr(a) and _is_int_expr(b):
            d = _as_const(_add(_to_poly(a), _to_poly(b), -1))
            if d is not None:
                val = {"eq": d == 0, "ne": d != 0, "lt": d < 0, "le": d <= 0, "gt": d > 0, "ge": d >= 0}[e.op]
                return Const(val, "bool")
        return Bin(e.op, a, b, e.loc)
    return e if not children(e) else _rebuild(e)


def prove_equal(a: Expr, b: Expr) -> bool:
    return _as_const(_add(_to_poly(a), _to_poly(b), -1)) == 0


def prove_le(a: Expr, b: Expr) -> bool:
    """True when a <= b for all non-negative values of the symbols."""
    d = _add(_to_poly(b), _to_poly(a), -1)
    c = _as_const(d)
    return c >= 0 if c is not None else _nonneg(d)


def prove_lt(a: Expr, b: Expr) -> bool:
    return prove_le(Bin("add", a, Const(1)), b)


def provably_different(a: Expr, b: Expr) -> bool:
    """True when a != b is certain (both constant and unequal); a symbolic mismatch is not provable."""
    d = _as_const(_add(_to_poly(a), _to_poly(b), -1))
    return d is not None and d != 0


def as_int(e: Expr) -> int | None:
    """The value of a constant integer expression, else None."""
    if isinstance(e, Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return e.value
    if not _is_int_expr(e):
        return None
    return _as_const(_to_poly(e))


_EVAL_OPS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "floordiv": lambda a, b: a // b, "floormod": lambda a, b: a % b, "min": min, "max": max,
}


def evaluate(e: Expr, env: Mapping[Var, int] | Mapping[str, int]) -> int:
    """Value of an integer expression given values of its vars (by Var or by name)."""
    names = {(k.name if isinstance(k, Var) else k): int(v) for k, v in env.items()}
    return _eval(e, names)


def _eval(e: Expr, env: dict[str, int]) -> int:
    if isinstance(e, Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return e.value
    if isinstance(e, Var):
        try:
            return env[e.name]
        except KeyError:
            raise ValueError(f"cannot evaluate {e.name}: unbound {e.name}") from None
    if isinstance(e, Bin) and e.op in _EVAL_OPS:
        a, b = _eval(e.a, env), _eval(e.b, env)
        if e.op in ("floordiv", "floormod") and b == 0:
            raise ValueError("division by zero in a shape expression")
        return _EVAL_OPS[e.op](a, b)
    if isinstance(e, Cast) and _is_int_expr(e):
        return _eval(e.a, env)
    if isinstance(e, Select):
        return _eval(e.t, env) if _eval_bool(e.cond, env) else _eval(e.f, env)
    r = as_int(substitute(e, {Var(k): Const(v) for k, v in env.items()}))
    if r is None:
        missing = sorted(v.name for v in _vars(e) if v.name not in env)
        raise ValueError(f"cannot evaluate {e!r}: unbound {', '.join(missing) or 'terms'}")
    return r


def evaluate_bool(e: Expr, env: Mapping[str, int]) -> bool:
    """Truth of a condition over integer dims (comparisons joined by and/or)."""
    return _eval_bool(e, dict(env))


def _eval_bool(e: Expr, env: dict[str, int]) -> bool:
    if isinstance(e, Bin) and e.op in ("eq", "ne", "lt", "le", "gt", "ge"):
        a, b = _eval(e.a, env), _eval(e.b, env)
        return {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[e.op]
    if isinstance(e, Bin) and e.op in ("and", "or"):
        x, y = _eval_bool(e.a, env), _eval_bool(e.b, env)
        return (x and y) if e.op == "and" else (x or y)
    if isinstance(e, Const):
        return bool(e.value)
    raise ValueError(f"cannot evaluate condition {e!r}")


def _vars(e: Expr) -> set[Var]:
    from .expr import free_vars

    return free_vars(e)


Interval = tuple[int, int]


def interval(e: Expr, var_range: Callable[[Var], Interval | None]) -> Interval | None:
    """Inclusive integer bounds of `e`, given bounds of its variables (None: unknown). Used to prove
    an access in bounds, so every rule is conservative: what it cannot bound is None."""
    if isinstance(e, Const):
        return (int(e.value), int(e.value)) if isinstance(e.value, int | bool) or float(e.value).is_integer() else None
    if isinstance(e, Var):
        return var_range(e)
    if isinstance(e, Cast) and is_int(e.dtype):
        return interval(e.a, var_range)
    if isinstance(e, Select):
        t, f = interval(e.t, var_range), interval(e.f, var_range)
        return (min(t[0], f[0]), max(t[1], f[1])) if t and f else None
    if not isinstance(e, Bin):
        return None
    a, b = interval(e.a, var_range), interval(e.b, var_range)
    if a is None or b is None:
        return None
    if e.op == "add":
        return (a[0] + b[0], a[1] + b[1])
    if e.op == "sub":
        return (a[0] - b[1], a[1] - b[0])
    if e.op == "mul":
        ps = [x * y for x in a for y in b]
        return (min(ps), max(ps))
    if e.op in ("min", "max"):
        f = min if e.op == "min" else max
        return (f(a[0], b[0]), f(a[1], b[1]))
    if e.op in ("floordiv", "floormod") and b[0] == b[1] and b[0] > 0:
        d = b[0]
        if e.op == "floordiv":
            return (a[0] // d, a[1] // d)
        return (a[0] % d, a[1] % d) if a[0] // d == a[1] // d else (0, d - 1)
    return None


def prime_factors(n: int) -> list[int]:
    """The prime factors of n >= 1 with multiplicity, ascending (tile sampling splits extents by them)."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out
