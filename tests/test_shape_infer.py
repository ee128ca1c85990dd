"""shape-infer: provable clashes are located compile-time errors; unprovable ones are run-time checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlc.ir import MlcError
from mlc.ir.interp import run_function
from mlc.ir.parser import parse_module
from mlc.ir.printer import print_module
from mlc.passes.registry import PassContext, get_pass

HEADER = "mlc.module v1\n\n"


def infer(text: str) -> str:
    m = parse_module(HEADER + text, "t.ir")
    info = get_pass("shape-infer")
    assert info is not None
    return print_module(info.fn(m, PassContext()))


def test_provable_matmul_clash_is_located() -> None:
    src = "graph @main(%x: tensor<n x 64 x f32>, %w: tensor<32 x 8 x f32>) {\n  %y: ? = matmul(%x, %w)\n  return %y\n}\n"
    with pytest.raises(MlcError) as e:
        infer(src)
    assert e.value.loc is not None and e.value.loc.line == 4
    assert "64" in e.value.message and "32" in e.value.message


def test_declared_type_clash_is_located() -> None:
    src = "graph @main(%x: tensor<n x 4 x f32>) {\n  %y: tensor<n x 5 x f32> = relu(%x)\n  return %y\n}\n"
    with pytest.raises(MlcError, match="dim 1 declared 5") as e:
        infer(src)
    assert e.value.loc is not None and e.value.loc.line == 4


def test_dtype_clash_is_located() -> None:
    src = "graph @main(%x: tensor<n x 4 x f32>) {\n  %y: tensor<n x 4 x i32> = relu(%x)\n  return %y\n}\n"
    with pytest.raises(MlcError, match="dtype"):
        infer(src)


def test_unprovable_contraction_becomes_match_cast_and_fails_at_run_time() -> None:
    src = "graph @main(%x: tensor<n x k x f32>, %w: tensor<m x 8 x f32>) {\n  %y: ? = matmul(%x, %w)\n  return %y\n}\n"
    out = infer(src)
    assert "= match_cast %w" in out and "tensor<k x 8 x f32>" in out
    m = parse_module(out, "o.ir")
    ok = run_function(m, {"x": np.ones((2, 3), "float32"), "w": np.ones((3, 8), "float32")})
    np.testing.assert_allclose(ok["y"], np.full((2, 8), 3.0))
    with pytest.raises(MlcError, match=r"dim 0 is 4.*k = 3"):
        run_function(m, {"x": np.ones((2, 3), "float32"), "w": np.ones((4, 8), "float32")})


def test_unprovable_declared_type_becomes_match_cast() -> None:
    src = "graph @main(%x: tensor<n x 4 x f32>) {\n  %y: tensor<m x 4 x f32> = relu(%x)\n  return %y\n}\n"
    out = infer(src)
    assert "%y: tensor<m x 4 x f32> = match_cast" in out
    m = parse_module(out, "o.ir")
    run_function(m, {"x": np.ones((3, 4), "float32")})  # m is bound by the check itself


def test_symbolic_arithmetic_is_simplified() -> None:
    src = ("graph @main(%x: tensor<n x 4 x f32>) {\n  %y: ? = reshape(%x) {shape = (n * 2, 2)}\n"
           "  %z: ? = reshape(%y) {shape = (n, 4)}\n  return %z\n}\n")
    out = infer(src)
    assert "%y: tensor<2 * n x 2 x f32>" in out and "%z: tensor<n x 4 x f32>" in out


def test_compiled_model_checks_unprovable_dims(tmp_path: Path) -> None:
    from mlc.runtime.build import build_artifact
    from mlc.runtime.model import load

    src = "graph @main(%x: tensor<n x k x f32>, %w: tensor<m x 8 x f32>) {\n  %y: ? = matmul(%x, %w)\n  return %y\n}\n"
    m = parse_module(HEADER + src, "t.ir")
    for name in ("shape-infer", "fuse"):
        info = get_pass(name)
        assert info is not None
        m = info.fn(m, PassContext(), **info.validate_options({}))
    (tmp_path / "m.mlc").write_bytes(build_artifact(m, {}).data)
    model = load(tmp_path / "m.mlc")
    np.testing.assert_allclose(model(x=np.ones((2, 3), "float32"), w=np.ones((3, 8), "float32"))["y"], np.full((2, 8), 3.0))
    with pytest.raises(MlcError, match="dim 0 is 4"):
        model(x=np.ones((2, 3), "float32"), w=np.ones((4, 8), "float32"))


def test_unprovable_broadcast_is_checked_at_run_time() -> None:
    src = "graph @main(%x: tensor<n x 4 x f32>, %z: tensor<m x 4 x f32>) {\n  %y: ? = add(%x, %z)\n  return %y\n}\n"
    out = infer(src)
    assert "check() {cond = m == n || m == 1" in out
    m = parse_module(out, "o.ir")
    for mv in (1, 3):  # broadcasts, or equal
        run_function(m, {"x": np.ones((3, 4), "float32"), "z": np.ones((mv, 4), "float32")})
    with pytest.raises(MlcError, match="m must equal n or be 1") as e:
        run_function(m, {"x": np.ones((3, 4), "float32"), "z": np.ones((2, 4), "float32")})
    assert e.value.loc is not None and e.value.loc.line == 4


def test_symbolic_slice_end_is_checked_at_run_time() -> None:
    src = ("graph @main(%x: tensor<64 x f32>, %y: tensor<t x f32>) {\n"
           "  %s: ? = strided_slice(%x) {axes = (0,), begin = (0,), end = (t,)}\n"
           "  %r: ? = add(%s, %y)\n  return %r\n}\n")
    out = infer(src)
    assert "cond = t <= 64" in out
    m = parse_module(out, "o.ir")
    run_function(m, {"x": np.ones(64, "float32"), "y": np.ones(10, "float32")})
    with pytest.raises(MlcError, match="t <= 64"):
        run_function(m, {"x": np.ones(64, "float32"), "y": np.ones(70, "float32")})
