"""bounds-check: a verified tensor program never compiles to an out-of-bounds access (issue 19).

The issue's three programs (`A[vi - 1]` at vi = 0, `A[floordiv(vi, n - n)]`, a store at
`vi * 100000` into 1000 elements) and their neighbours: golden before/after text of the pass, the
proofs that leave guarded and in-range accesses alone (brute force over small extents decides which
accesses really stay inside), and compiled runs against the reference interpreter.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from mlc.ir import MlcError
from mlc.ir.expr import Call, Expr, Load, subexprs
from mlc.ir.interp import run_function
from mlc.ir.module import Module
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.ir.tir_visit import StmtMutator, rewrite, stores_in
from mlc.passes.bounds import check_func

from mlc.compiler import build_module

HEADER = "mlc.module v1\n\n"


def prim(body: str, params: str = "%A: buffer<1000 x f32>, %B: buffer<1000 x f32>", name: str = "k") -> str:
    return f"prim @{name}({params}) outputs 1 {{\n{body}}}\n"


def module(body: str, params: str = "%A: buffer<1000 x f32>, %B: buffer<1000 x f32>",
           shape: str = "1000") -> str:
    return (HEADER + prim(body, params) + f"\ngraph @main(%x: tensor<{shape} x f32>) {{\n"
            f"  %r: tensor<{shape} x f32> = call_tensor @k(%x)\n  return %r\n}}\n")


def loop(stmt: str, extent: str = "1000") -> str:
    return (f"  for i in 0..{extent} {{\n    block \"b\"(S vi = i in 0..{extent}) {{\n"
            f"      {stmt}\n    }}\n  }}\n")


def checked(text: str) -> list[str]:
    m = parse_module(text, "t.ir")
    return [c for f in m.prim_functions() for c in check_func(f)[1]]


SHIFT = loop("%B[vi] = %A[vi - 1] + 1.0")
SCATTER = loop("%B[vi * 100000] = %A[vi]")
DIVZERO = loop("%B[vi] = %A[floordiv(vi, n - n)]", "n")


def test_golden_shift() -> None:
    m = parse_module(module(SHIFT), "t.ir")
    new, found = check_func(m.prim_functions()[0])
    assert found == ["%A[vi - 1]"]
    assert print_module(m.with_function(new)).split("graph")[0] == HEADER + prim(loop(
        "%B[vi] = select(check_range(vi - 1, 0, 1000) >= 0 && vi - 1 < 1000, %A[vi - 1], 0.0) + 1.0")) + "\n"


def test_golden_store() -> None:
    m = parse_module(module(SCATTER), "t.ir")
    new, found = check_func(m.prim_functions()[0])
    assert found == ["%B[vi * 100000]"]
    assert ("      if check_range(vi * 100000, 0, 1000) >= 0 && vi * 100000 < 1000 {\n"
            "        %B[vi * 100000] = %A[vi]\n      }\n") in print_module(m.with_function(new))


@pytest.mark.parametrize("stmt,extent,bad", [
    ("%B[vi] = %A[vi]", "1000", []),
    ("%B[vi] = %A[999 - vi]", "1000", []),
    ("%B[vi] = select(vi >= 1, %A[vi - 1], 0.0)", "1000", []),  # guarded: the taken arm only
    ("%B[vi] = select(vi < 1, 0.0, %A[vi - 1])", "1000", []),  # the untaken condition guards the other arm
    ("%B[vi] = select(vi < 1 || vi > 998, 0.0, %A[vi + 1])", "1000", []),
    ("%B[vi] = %A[floormod(vi * 7, 1000)]", "1000", []),
    ("%B[vi] = %A[floordiv(vi, 2) + 500]", "1000", []),
    ("%B[vi] = %A[floordiv(vi, 2) + 501]", "1000", ["%A[floordiv(vi, 2) + 501]"]),
    ("%B[vi] = %A[vi + 1]", "1000", ["%A[vi + 1]"]),
    ("%B[vi] = %A[vi - 1]", "1000", ["%A[vi - 1]"]),
    ("%B[vi] = %A[vi]", "1001", ["%A[vi]", "%B[vi]"]),
    ("if vi < 999 {\n        %B[vi + 1] = %A[vi]\n      }", "1000", []),
    ("if vi < 999 {\n        %B[vi] = 0.0\n      } else {\n        %B[vi + 1] = %A[vi]\n      }", "1000",
     ["%B[vi + 1]"]),
])
def test_proofs_agree_with_brute_force(stmt: str, extent: str, bad: list[str]) -> None:
    assert checked(module(loop(stmt, extent))) == bad


def test_symbolic_dims_and_binding_outside_its_domain() -> None:
    ok = loop("%B[vi] = %A[max(n - 1, 0) - vi]", "n")
    assert checked(module(ok, "%A: buffer<n x f32>, %B: buffer<n x f32>", "n")) == []
    # the declared domain (0..10) is not trusted: the binding i * 100 is what indexes
    lying = ("  for i in 0..10 {\n    block \"b\"(S vi = i * 100 in 0..10) {\n"
             "      %B[vi] = %A[vi]\n    }\n  }\n")
    assert checked(module(lying)) == []  # 0..900 is inside 1000
    lying2 = lying.replace("i * 100", "i * 200")
    assert checked(module(lying2)) == ["%A[vi]", "%B[vi]"]
    assert checked(module(DIVZERO, "%A: buffer<n x f32>, %B: buffer<n x f32>", "n")) == ["%A[floordiv(vi, n - n)]"]


def _in_range_everywhere(text: str, extent: int, size: int) -> bool:
    """Brute force: every index of every load of the program, at every vi, inside [0, size)."""
    from mlc.ir import arith
    from mlc.ir.tir_visit import loads_in, stores_in

    f = parse_module(text, "t.ir").prim_functions()[0]
    idx = [i for st in stores_in(f.body) for ld in loads_in(st.value) for i in ld.indices]
    return all(0 <= arith.evaluate(i, {"vi": v}) < size for i in idx for v in range(extent))


@pytest.mark.parametrize("index", ["vi", "vi - 1", "vi + 1", "2 * vi", "floordiv(vi, 2)", "floordiv(vi, 2) + 4",
                                   "9 - vi", "floordiv(vi * 3, 4) + 2", "vi * vi"])
def test_brute_force_agrees_on_small_extents(index: str) -> None:
    """A proof is never wrong: what the pass leaves unchecked really stays in range."""
    text = module(loop(f"%B[vi] = %A[{index}]", "10"), "%A: buffer<10 x f32>, %B: buffer<10 x f32>", "10")
    truth = _in_range_everywhere(text, 10, 10)
    assert (checked(text) == []) <= truth  # proven implies true
    if index in ("vi", "9 - vi", "floordiv(vi, 2) + 4", "floordiv(vi * 3, 4) + 2"):
        assert checked(text) == [] and truth  # and these easy ones are proven


@pytest.mark.parametrize("prog,err", [
    (SHIFT, r"index -1 out of range \[0, 1000\)"),
    (SCATTER, r"index 100000 out of range \[0, 1000\)"),
])
def test_compiled_run_fails_with_a_located_error(prog: str, err: str) -> None:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    m = parse_module(module(prog), "t.ir")
    built = build_module(m, {}, "cpu")
    model = model_from_artifact(loads(built.result.data, "t.mlc"), "t.mlc")
    x = np.arange(1000, dtype=np.float32)
    with pytest.raises(MlcError, match=rf"kernel k: {err}"):
        model(x=x)
    with pytest.raises(MlcError, match="out of"):
        run_function(m, {"x": x})


def test_compiled_guarded_and_divide_by_zero_match_the_interpreter() -> None:
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    progs = [
        (module(loop("%B[vi] = select(vi >= 1, %A[vi - 1], 0.0)")), "1000"),
        (module(DIVZERO, "%A: buffer<n x f32>, %B: buffer<n x f32>", "n"), "n"),
    ]
    for text, _ in progs:
        m = parse_module(text, "t.ir")
        model = model_from_artifact(loads(build_module(m, {}, "cpu").result.data, "t.mlc"), "t.mlc")
        for n in (1, 7, 1000) if "n x" in text else (1000,):
            x = np.arange(n, dtype=np.float32) + 1
            np.testing.assert_array_equal(model(x=x)["r"], run_function(m, {"x": x})["r"])


def test_every_small_combination_of_offsets_is_decided_soundly() -> None:
    """Offsets -2..2 on a 2-D access over 4 x 4 loops: checked exactly when some index leaves."""
    for a, b in itertools.product(range(-2, 3), repeat=2):
        body = ("  for i in 0..4 {\n    for j in 0..4 {\n      block \"b\"(S vi = i in 0..4, S vj = j in 0..4) {\n"
                f"        %B[vi, vj] = %A[vi + {a}, vj + {b}]\n      }}\n    }}\n  }}\n")
        text = HEADER + prim(body, "%A: buffer<4 x 4 x f32>, %B: buffer<4 x 4 x f32>")
        got = checked(text)
        assert bool(got) == (a != 0 or b != 0), (a, b, got)



def _big_index(offset: int, levels: int = 6) -> Module:
    """`%B[vi] = %A[i + offset]` where i is vi as a DAG of shared nodes, `i + i - i` nested
    `levels` deep: 3**levels nodes as a tree (a fused gather's index arithmetic looks like this)."""
    m = parse_module(module(loop("%B[vi] = %A[vi]")), "t.ir")
    f = m.prim_functions()[0]

    def big(e: Expr) -> Expr | None:
        if not (isinstance(e, Load) and e.buffer.name == "A"):
            return None
        i = e.indices[0]
        for _ in range(levels):
            i = i + i - i
        return Load(e.buffer, (i + offset,), e.loc)

    class Big(StmtMutator):
        def visit_expr(self, e: Expr) -> Expr:
            return rewrite(e, big)

    return m.with_function(replace(f, body=Big().visit(f.body)))


def test_index_too_large_to_prove_is_checked_not_skipped() -> None:
    """Past BIND_LIMIT nodes the pass does not try to prove an index (that was exponential on
    BERT's fused gathers) but still checks it, referring to it once (clamped into range)."""
    from mlc.passes.bounds import BIND_LIMIT
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    assert 3 ** 6 > BIND_LIMIT
    x = np.arange(1000, dtype=np.float32)
    for offset, bad in ((0, None), (1, 1000), (-1, -1)):
        m = _big_index(offset)
        large: list[str] = []
        new, found = check_func(m.prim_functions()[0], large)
        assert found == ["%A[...]"] and large == ["%A"], (offset, found)
        assert any(isinstance(c, Call) and c.name == "check_range" for st in stores_in(new.body)
                   for c in subexprs(st.value)), offset
        model = model_from_artifact(loads(build_module(m, {}, "cpu").result.data, "t.mlc"), "t.mlc")
        if bad is None:
            np.testing.assert_array_equal(model(x=x)["r"], x)
        else:
            with pytest.raises(MlcError, match=rf"kernel k: index {bad} out of range \[0, 1000\)"):
                model(x=x)
