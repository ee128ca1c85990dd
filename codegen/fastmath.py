"""Inline f32 exp, sigmoid, tanh and erf as straight-line LLVM code.

libm's expf/erff are calls LLVM cannot vectorize, and a softmax or GELU spends nearly all its time in
them. These are branch-free polynomial forms (Cephes expf and tanhf, Abramowitz-Stegun 7.1.26 erf)
that the loop vectorizer turns into SIMD code: expf within 2 ulp, tanh within a few ulp, erf within
1.5e-7 absolute. f64 keeps libm.
"""

from __future__ import annotations

import llvmlite.ir as ir

from .llvm_expr import I32

LOG2E, LN2_HI, LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
TANH_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)
ERF_P = 0.3275911
ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
FLAGS = ("contract",)


class FastMath:
    def __init__(self, b: ir.IRBuilder, declare_intrinsic) -> None:  # type: ignore[no-untyped-def]
        self.b = b
        self.intrinsic = declare_intrinsic

    def c(self, t: ir.Type, v: float) -> ir.Value:
        elem = t.element if isinstance(t, ir.VectorType) else t
        k = ir.Constant(elem, v)
        return ir.Constant(t, [k] * t.count) if isinstance(t, ir.VectorType) else k

    def _int_t(self, t: ir.Type) -> ir.Type:
        return ir.VectorType(I32, t.count) if isinstance(t, ir.VectorType) else I32

    @staticmethod
    def _ic(it: ir.Type, v: int) -> ir.Value:
        k = ir.Constant(I32, v)
        return ir.Constant(it, [k] * it.count) if isinstance(it, ir.VectorType) else k

    def fmul(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.fmul(a, c, flags=FLAGS)

    def fadd(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.fadd(a, c, flags=FLAGS)

    def horner(self, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
        t = x.type
        p = self.c(t, coeffs[0])
        for k in coeffs[1:]:
            p = self.fadd(self.fmul(p, x), self.c(t, k))
        return p

    def exp(self, x: ir.Value) -> ir.Value:
        b, t = self.b, x.type
        hi, lo = self.c(t, 88.72283905206835), self.c(t, -87.33654475055310)
        xc = b.select(b.fcmp_ordered(">", x, hi), hi, b.select(b.fcmp_ordered("<", x, lo), lo, x))
        n = b.call(self.intrinsic("floor", t), [self.fadd(self.fmul(xc, self.c(t, LOG2E)), self.c(t, 0.5))])
        r = b.fsub(xc, self.fmul(n, self.c(t, LN2_HI)))
        r = b.fsub(r, self.fmul(n, self.c(t, LN2_LO)))
        p = self.horner(r, EXP_POLY)
        y = self.fadd(self.fadd(self.fmul(self.fmul(p, r), r), r), self.c(t, 1.0))
        # y * 2^n, as two factors 2^(n>>1) * 2^(n - (n>>1)) so n = 128 or -126 stays in range
        it = self._int_t(t)
        ni = b.fptosi(n, it)
        half = b.ashr(ni, self._ic(it, 1))
        for part in (half, b.sub(ni, half)):
            y = b.fmul(y, b.bitcast(b.shl(b.add(part, self._ic(it, 127)), self._ic(it, 23)), t))
        # beyond the clamps: exact 0 / inf; NaN stays NaN
        y = b.select(b.fcmp_ordered("<", x, lo), self.c(t, 0.0), y)
        y = b.select(b.fcmp_ordered(">", x, hi), self.c(t, float("inf")), y)
        return b.select(b.fcmp_unordered("uno", x, x), x, y)

    def sigmoid(self, x: ir.Value) -> ir.Value:
        t = x.type
        return self.b.fdiv(self.c(t, 1.0), self.fadd(self.c(t, 1.0), self.exp(self.b.fneg(x))))

    def tanh(self, x: ir.Value) -> ir.Value:
        b, t = self.b, x.type
        ax = b.call(self.intrinsic("fabs", t), [x])
        z = self.fmul(x, x)
        small = self.fadd(self.fmul(self.fmul(self.horner(z, TANH_POLY), z), x), x)
        e = self.exp(self.fmul(ax, self.c(t, 2.0)))
        big = b.fsub(self.c(t, 1.0), b.fdiv(self.c(t, 2.0), self.fadd(e, self.c(t, 1.0))))
        big = b.call(self.intrinsic("copysign", t, 2), [big, x])
        return b.select(b.fcmp_ordered("<", ax, self.c(t, 0.625)), small, big)

    def erf(self, x: ir.Value) -> ir.Value:
        b, t = self.b, x.type
        ax = b.call(self.intrinsic("fabs", t), [x])
        tt = b.fdiv(self.c(t, 1.0), self.fadd(self.c(t, 1.0), self.fmul(self.c(t, ERF_P), ax)))
        poly = self.fmul(self.horner(tt, ERF_A), tt)
        e = self.exp(b.fneg(self.fmul(ax, ax)))
        y = b.fsub(self.c(t, 1.0), self.fmul(poly, e))
        return b.call(self.intrinsic("copysign", t, 2), [y, x])
