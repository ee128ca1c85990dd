"""The backward loop's shape (ir/autodiff.loop_grad): what it carries, writes and hoists.

An outer value read one row per iteration at the loop index (the RNNs' input projection) gets its
cotangent rows written (`dynamic_update_slice`, done in place at run time), not added into a full
accumulator per iteration; an output written one row per iteration (the RNNs' Y) has its cotangent
read, not carried and zeroed row by row; ops reading only outer values run once before the loop;
values of the forward iteration that the gradient reads are recorded by the forward loop, not
recomputed.
Each specialization is checked where it applies and where it must not (an init that needs its
cotangent, fewer iterations than rows, a second kind of read), against central finite differences
of the reference interpreter in float64 in every element.
"""

from __future__ import annotations

import numpy as np
from mlc.ir.graph import Function, Loop, OpCall
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.rewrite import operands
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext

# h_t = tanh(x_t W + h_{t-1} U), every h_t written into y; X_ROWS rows of x, EXTENT iterations
RNN = """mlc.module v1
graph @main(%x: tensor<X_ROWS x 2 x 3 x f64>, %h0: tensor<2 x 4 x f64>, %w: tensor<3 x 4 x f64>, %u: tensor<4 x 4 x f64>, %y0: tensor<EXTENT x 2 x 4 x f64>) {
  %r: tuple<tensor<2 x 4 x f64>, tensor<EXTENT x 2 x 4 x f64>> = for %i: i64 in 0..EXTENT carry(%h: tensor<2 x 4 x f64> = %h0, %y: tensor<EXTENT x 2 x 4 x f64> = %y0) {
    %sl: tensor<1 x 2 x 3 x f64> = dynamic_slice(%x, %i) {axis = 0, size = 1}
    %xt: tensor<2 x 3 x f64> = reshape(%sl) {shape = (2, 3)}
    %a: tensor<2 x 4 x f64> = matmul(%xt, %w)
    %b: tensor<2 x 4 x f64> = matmul(%h, %u)
    %s: tensor<2 x 4 x f64> = add(%a, %b)EXTRA
    %h2: tensor<2 x 4 x f64> = tanh(%s)
    %he: tensor<1 x 2 x 4 x f64> = expand_dims(%h2) {axes = (0,)}
    %y2: tensor<EXTENT x 2 x 4 x f64> = dynamic_update_slice(%y, %he, %i) {axis = 0}
    yield %h2, %y2
  }
  %hT: tensor<2 x 4 x f64> = %r[0]
  %ys: tensor<EXTENT x 2 x 4 x f64> = %r[1]
  return %hT, %ys
}
"""

# a second read of x's row (its cotangent rows sum), or a read of all of x (no row writes)
SECOND_ROW = """
    %sl2: tensor<1 x 2 x 3 x f64> = dynamic_slice(%x, %i) {axis = 0, size = 1}
    %q: tensor<2 x 3 x f64> = reshape(%sl2) {shape = (2, 3)}
    %qw: tensor<2 x 4 x f64> = matmul(%q, %u2)
    %s: tensor<2 x 4 x f64> = add(%s1, %qw)""".replace("%u2", "%w2")
WHOLE = """
    %xs: tensor<2 x 3 x f64> = sum(%x) {axes = (0,), keepdims = false}
    %xw2: tensor<2 x 4 x f64> = matmul(%xs, %w)
    %s: tensor<2 x 4 x f64> = add(%s1, %xw2)"""


def _text(extent: int, rows: int, extra: str = "") -> str:
    t = RNN.replace("EXTENT", str(extent)).replace("X_ROWS", str(rows))
    if extra:
        t = t.replace("%s: tensor<2 x 4 x f64> = add(%a, %b)EXTRA", "%s1: tensor<2 x 4 x f64> = add(%a, %b)" + extra)
        if "%w2" in extra:
            t = t.replace("%y0: tensor", "%w2: tensor<3 x 4 x f64>, %y0: tensor")
    return t.replace("EXTRA", "")


def _feeds(m: Module, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    main = m.get("main")
    assert isinstance(main, Function)
    return {p.name: 0.6 * rng.standard_normal(tuple(int(d.value) for d in p.type.shape))  # type: ignore[union-attr]
            for p in main.params}


def _check(text: str, wrt: str) -> Module:
    """@grad's VJP against central differences in every element of every differentiated input."""
    m = Autodiff(wrt="none", wrt_inputs=wrt).apply(parse_module(text), PassContext())
    feeds = _feeds(m)
    rng = np.random.default_rng(1)
    douts = {f"d_{k}": rng.standard_normal(np.shape(v)) for k, v in run_function(m, feeds).items()}
    got = run_function(m, {**feeds, **douts}, func="grad")

    def objective(f: dict[str, np.ndarray]) -> float:
        return float(sum((np.asarray(v) * douts[f"d_{k}"]).sum() for k, v in run_function(m, f).items()))

    h = 1e-6
    for k in wrt.split(","):
        x, fd = feeds[k], np.zeros_like(feeds[k])
        for idx in np.ndindex(*x.shape):
            for sign in (1, -1):
                xp = x.copy()
                xp[idx] += sign * h
                fd[idx] += sign * objective({**feeds, k: xp}) / (2 * h)
        np.testing.assert_allclose(got[f"grad_{k}"], fd, rtol=1e-6, atol=1e-8, err_msg=f"d/d{k}")
    return m


def _backward(m: Module) -> Loop:
    grad = m.get("grad")
    assert isinstance(grad, Function)
    loops = [b.node for b in grad.body.bindings if isinstance(b.node, Loop)]
    assert len(loops) == 2
    return loops[1]


def _accumulates(bwd: Loop, n: int) -> str:
    """How the backward body makes carried value n's next value: the op of the yielded binding."""
    res = bwd.body.results[n]
    (b,) = [b for b in bwd.body.bindings if b.var.name == res.name]
    assert isinstance(b.node, OpCall)
    return b.node.op


def test_rows_written_output_read_and_invariants_hoisted() -> None:
    m = _check(_text(4, 4), "x,h0,w,u")
    bwd = _backward(m)
    # carried: d_h, then the cotangents of x (rows written), w, u (added)
    assert len(bwd.carried) == 4
    assert [_accumulates(bwd, n) for n in (1, 2, 3)] == ["dynamic_update_slice", "add", "add"]
    varying = {bwd.index.name} | {c.name for c in bwd.carried}
    for b in bwd.body.bindings:  # every op in the body reads something that changes per iteration
        assert any(a.name in varying for a in operands(b.node)) or not isinstance(b.node, OpCall), b
        varying.add(b.var.name)
    grad = m.get("grad")
    assert isinstance(grad, Function)
    ops_before = [b.node.op for b in grad.body.bindings[:[b.node for b in grad.body.bindings].index(bwd)]
                  if isinstance(b.node, OpCall)]
    assert "transpose" in ops_before  # u^T and w^T of the input gradients, once per call
    # tanh's output, which its gradient reads, is recorded by the forward loop: the backward loop
    # reads it and recomputes nothing of the forward iteration (no tanh, no h @ u)
    body_ops = [b.node.op for b in bwd.body.bindings if isinstance(b.node, OpCall)]
    assert "tanh" not in body_ops and body_ops.count("matmul") == 4, body_ops  # dh, dx, dw, du


def test_an_init_that_needs_its_cotangent_keeps_the_output_carried() -> None:
    bwd = _backward(_check(_text(3, 3), "y0,x,u"))
    assert len(bwd.carried) == 4  # d_h, d_y, then x and u
    assert _accumulates(bwd, 1) == "dynamic_update_slice"  # d_y with the row zeroed per iteration


def test_fewer_iterations_than_rows_accumulate() -> None:
    bwd = _backward(_check(_text(3, 5), "x,w"))
    assert [_accumulates(bwd, n) for n in (1, 2)] == ["add", "add"]


def test_two_reads_of_the_row_sum_into_one_row_write() -> None:
    bwd = _backward(_check(_text(3, 3, SECOND_ROW), "x,w2"))
    assert _accumulates(bwd, 1) == "dynamic_update_slice"


def test_a_read_of_the_whole_value_accumulates() -> None:
    bwd = _backward(_check(_text(3, 3, WHOLE), "x,w"))
    assert _accumulates(bwd, 1) == "add"
