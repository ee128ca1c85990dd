"""The driver's contract: exit codes, located messages, atomic outputs, side files through pipes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlc.cli.main import cli
from mlc.ir.constants import pack_constants

HERE = Path(__file__).parent
MLC = [sys.executable, "-m", "mlc.cli"]


@pytest.fixture()
def mlp(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = {"fc.weight": rng.standard_normal((4, 8)).astype("float32"), "fc.bias": rng.standard_normal(8).astype("float32")}
    data = pack_constants(w)
    (tmp_path / "mlp.weights.npz").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    text = (HERE / "cli" / "mlp.ir").read_text().replace("SHA", digest)
    (tmp_path / "mlp.ir").write_text(text)
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((3, 4)).astype("float32"))
    return tmp_path / "mlp.ir"


def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    from mlc.cli import commands  # noqa: F401  (registers subcommands)

    return CliRunner().invoke(cli, list(args), input=input)


def expected(d: Path) -> np.ndarray:
    w = np.load(d / "mlp.weights.npz")
    x = np.load(d / "in.npz")["x"]
    return np.maximum(x @ w["fc.weight"] + w["fc.bias"], 0)


def test_version_and_help() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and "mlc" in r.output
    r = invoke("--help")
    for stage in ("import", "shape-infer", "verify", "run", "opt", "doctor", "dce", "cse"):
        assert stage in r.output


def test_run_matches_numpy(mlp: Path, tmp_path: Path) -> None:
    r = invoke("run", str(mlp), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"))
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["r"], expected(tmp_path), rtol=1e-5)


def test_user_error_is_located_exit_1_no_output(mlp: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ir"
    bad.write_text(mlp.read_text().replace("relu(%z)", "relu(%nothere)"))
    out = tmp_path / "out.ir"
    r = invoke("dce", str(bad), "-o", str(out))
    assert r.exit_code == 1
    assert f"{bad}:12:" in r.output and "error:" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_failed_stage_keeps_existing_output(mlp: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ir"
    out.write_text("precious")
    bad = tmp_path / "bad.ir"
    bad.write_text("mlc.module v1\ngraph @main(")
    assert invoke("dce", str(bad), "-o", str(out)).exit_code == 1
    assert out.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.ir")] == []


def test_usage_error_exit_2() -> None:
    assert invoke("run").exit_code == 2
    assert invoke("no-such-stage").exit_code == 2


def test_shape_clash_is_compile_time_error(mlp: Path, tmp_path: Path) -> None:
    bad = tmp_path / "clash.ir"
    bad.write_text(mlp.read_text().replace("%w: tensor<4 x 8 x f32>", "%w: tensor<5 x 8 x f32>"))
    r = invoke("shape-infer", str(bad))
    assert r.exit_code == 1 and "clash.ir:" in r.output


def test_opt_pipeline_dumps_and_timing(mlp: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    out = tmp_path / "o.ir"
    r = invoke("opt", str(mlp), "-p", "configs/pipelines/default.yaml", "--print-after-all", "--ir-dump-dir", str(dump),
               "--timing", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "IR dump after shape-infer" in r.output and "pass timing" in r.output
    assert sorted(p.name for p in dump.iterdir())[0].startswith("01-shape-infer")
    text = out.read_text()
    assert "%dead" not in text and "%y2" not in text  # dce + cse did their work
    r = invoke("run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz"))
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["r"], expected(tmp_path), rtol=1e-5)


def test_bad_pipeline_yaml(mlp: Path, tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("passes:\n  - shape-infer\n  - nope\n")
    r = invoke("opt", str(mlp), "-p", str(p))
    assert r.exit_code == 1 and "unknown pass 'nope'" in r.output
    p.write_text("passes: [shape-infer\n")
    r = invoke("opt", str(mlp), "-p", str(p))
    assert r.exit_code == 1 and "invalid YAML" in r.output
    p.write_text("passes:\n  - fold-constants: {max_elements: many}\n")
    r = invoke("opt", str(mlp), "-p", str(p))
    assert r.exit_code == 1 and "must be a number" in r.output


def test_side_file_found_through_pipes(mlp: Path, tmp_path: Path) -> None:
    """`mlc a m.ir | mlc b > out.ir` run elsewhere still finds the weights."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = dict(os.environ)
    p1 = subprocess.run(MLC + ["shape-infer", str(mlp)], capture_output=True, text=True, cwd=other, env=env)
    assert p1.returncode == 0, p1.stderr
    p2 = subprocess.run(MLC + ["dce", "-"], input=p1.stdout, capture_output=True, text=True, cwd=other, env=env)
    assert p2.returncode == 0, p2.stderr
    (other / "out.ir").write_text(p2.stdout)
    p3 = subprocess.run(MLC + ["run", "out.ir", "--inputs", str(tmp_path / "in.npz"), "-o", "o.npz"],
                        capture_output=True, text=True, cwd=other, env=env)
    assert p3.returncode == 0, p3.stderr
    np.testing.assert_allclose(np.load(other / "o.npz")["r"], expected(tmp_path), rtol=1e-5)


def test_altered_side_file_is_an_error(mlp: Path, tmp_path: Path) -> None:
    (tmp_path / "mlp.weights.npz").write_bytes(pack_constants({"fc.weight": np.zeros((4, 8), "float32")}))
    r = invoke("run", str(mlp), "--inputs", str(tmp_path / "in.npz"))
    assert r.exit_code == 1 and "sha256" in r.output


def test_runtime_shape_mismatch_names_dims(mlp: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 5), "float32"))
    r = invoke("run", str(mlp), "--inputs", str(tmp_path / "bad.npz"))
    assert r.exit_code == 1 and "dim 1" in r.output


def test_import_then_opt_keeps_scalar_constants(tmp_path: Path) -> None:
    """A rank-0 constant (gpt_block's attention scale) stays rank 0 through the side file."""
    assert invoke("zoo", "gpt_block", "-o", str(tmp_path)).exit_code == 0
    m = str(tmp_path / "m.ir")
    assert invoke("import", str(tmp_path / "gpt_block.onnx"), "-o", m).exit_code == 0
    r = invoke("opt", m, "-p", "configs/pipelines/build-cpu.yaml", "-o", str(tmp_path / "o.ir"))
    assert r.exit_code == 0, r.output
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((2, 3, 32)).astype("float32"))
    for src, out in ((m, "a.npz"), (str(tmp_path / "o.ir"), "b.npz")):
        r = invoke("run", src, "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / out))
        assert r.exit_code == 0, r.output
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5)
