"""Options shared across commands: the one NAME=VALUE dims parser, the pass manager's instrumentation
flags on every pipeline-running command, and `bench --onnx` with ONNX names that are not identifiers."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from mlc.cli.dims import parse_dims
from mlc.cli.main import cli
from onnx import TensorProto, helper


def invoke(*args: str):  # type: ignore[no-untyped-def]
    from mlc.cli import commands  # noqa: F401  (registers subcommands)

    return CliRunner().invoke(cli, list(args))


# ----- dims ----------------------------------------------------------------------------------------


def test_parse_dims_ints_and_symbols() -> None:
    assert parse_dims(("N=8", " S = 16 ", "B=+2")) == {"N": 8, "S": 16, "B": 2}
    assert parse_dims((), "int") == {}
    assert parse_dims(("batch=N", "x:0=8", "gpu_0/data_0.1=S"), "symbol") == {"batch": "N", "x:0": "8",
                                                                              "gpu_0/data_0.1": "S"}


@pytest.mark.parametrize("item, kind, says", [
    ("N", "int", "expected NAME=INTEGER"),
    ("=8", "int", "expected NAME=INTEGER"),
    ("N=", "int", "expected NAME=INTEGER"),
    ("N=-3", "int", "positive integer"),
    ("N=0", "int", "positive integer"),
    ("N=big", "int", "positive integer"),
    ("N=1.5", "int", "positive integer"),
    ("N", "symbol", "expected NAME=SYMBOL"),
    ("N=a-b", "symbol", "not an identifier"),
    ("N=0", "symbol", "positive integer"),
    ("N=-1", "symbol", "not an identifier"),
])
def test_parse_dims_rejects(item: str, kind: str, says: str) -> None:
    with pytest.raises(click.BadParameter, match=says):
        parse_dims((item,), kind)  # type: ignore[arg-type]


def test_parse_dims_rejects_a_name_given_twice() -> None:
    with pytest.raises(click.BadParameter, match="N is given twice"):
        parse_dims(("N=2", "N=3"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    assert invoke("zoo", "mlp", "-o", str(d)).exit_code == 0
    r = invoke("build", str(d / "mlp.onnx"), "-o", str(d / "mlp.mlc"))
    assert r.exit_code == 0, r.output
    r = invoke("import", str(d / "mlp.onnx"), "-o", str(d / "m.ir"))
    assert r.exit_code == 0, r.output
    return d


@pytest.mark.parametrize("argv, flag", [
    (("build", "{d}/mlp.onnx", "-o", "{o}/m.mlc", "--dim", "N"), "'--dim'"),
    (("build", "{d}/mlp.onnx", "-o", "{o}/m.mlc", "--dim-bound", "N=-4"), "'--dim-bound'"),
    (("build", "{d}/mlp.onnx", "-o", "{o}/m.mlc", "--dim-bound", "N=1", "--dim-bound", "N=2"), "'--dim-bound'"),
    (("import", "{d}/mlp.onnx", "-o", "{o}/m.ir", "--dim", "N=a b"), "'--dim'"),
    (("bench", "{d}/mlp.mlc", "--shape", "N=-2"), "'--dim' / '--shape'"),
    (("bench", "{d}/mlp.mlc", "--dim", "N=x"), "'--dim' / '--shape'"),
    (("tune", "{d}/m.ir", "--dim", "N=-2", "-o", "{o}/t.ir", "--db", "{o}/db.jsonl"), "'--dim'"),
    (("tune", "{d}/m.ir", "--dim", "N", "-o", "{o}/t.ir", "--db", "{o}/db.jsonl"), "'--dim'"),
])
def test_every_dims_option_fails_the_same_way(argv: tuple[str, ...], flag: str, models: Path, tmp_path: Path) -> None:
    r = invoke(*(a.format(d=models, o=tmp_path) for a in argv))
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"Error: Invalid value for {flag}: "), r.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_import_dim_names_or_fixes_an_axis(models: Path, tmp_path: Path) -> None:
    r = invoke("import", str(models / "mlp.onnx"), "--dim", "N=batch", "-o", str(tmp_path / "a.ir"))
    assert r.exit_code == 0, r.output
    assert "tensor<batch x 64 x f32>" in (tmp_path / "a.ir").read_text()
    r = invoke("import", str(models / "mlp.onnx"), "--dim", "N=8", "-o", str(tmp_path / "b.ir"))
    assert r.exit_code == 0, r.output
    assert "tensor<8 x 64 x f32>" in (tmp_path / "b.ir").read_text()


def test_build_dim_bound_and_bench_dim_spellings(models: Path, tmp_path: Path) -> None:
    r = invoke("build", str(models / "mlp.onnx"), "-o", str(tmp_path / "m.mlc"), "--dim-bound", "N=32")
    assert r.exit_code == 0, r.output
    assert "N<=32" in r.stderr
    for flag in ("--shape", "--dim"):  # the old spelling keeps working
        r = invoke("bench", str(models / "mlp.mlc"), flag, "N=4", "--runs", "1")
        assert r.exit_code == 0, r.output
        assert "mlc          median" in r.stdout


def test_compile_dims_take_symbols_and_positive_integers(models: Path) -> None:
    from mlc.ir.diagnostics import MlcError

    import mlc

    m = mlc.compile(str(models / "mlp.onnx"), dims={"N": 8})  # an int fixes the axis, as `--dim N=8`
    assert m(x=np.zeros((8, 64), np.float32))
    with pytest.raises(MlcError):
        m(x=np.zeros((4, 64), np.float32))
    with pytest.raises(MlcError, match="positive integer"):
        mlc.compile(str(models / "mlp.onnx"), dims={"N": -1})


# ----- instrumentation -----------------------------------------------------------------------------


def test_build_prints_the_ir_after_each_pass(models: Path, tmp_path: Path) -> None:
    from mlc.passes.pipeline import load_pipeline

    from mlc.compiler import default_pipeline

    passes = [s.info.name for s in load_pipeline(default_pipeline("build-cpu"))]
    dump = tmp_path / "dump"
    r = invoke("build", str(models / "mlp.onnx"), "-o", str(tmp_path / "m.mlc"), "--print-after-all",
               "--ir-dump-dir", str(dump), "--timing")
    assert r.exit_code == 0, r.output
    heads = [ln for ln in r.stderr.splitlines() if ln.startswith("// ----- IR dump after ")]
    assert heads == [f"// ----- IR dump after {p} -----" for p in passes]
    assert r.stderr.count("mlc.module v1") == len(passes)  # the whole module each time
    assert r.stderr.count("prim @") >= 1  # after fuse/schedule: the tensor programs
    assert sorted(p.name for p in dump.iterdir()) == [f"{i + 1:02d}-{p}.ir" for i, p in enumerate(passes)]
    assert "pass timing" in r.stderr and r.stdout == ""
    # the last dump is what codegen reads: loop-level IR (no blocks), produced by lower-tir
    assert passes[-1] == "lower-tir"
    from mlc.ir.parser import parse_module
    from mlc.ir.tir_lower import is_lowered

    last = parse_module((dump / f"{len(passes):02d}-lower-tir.ir").read_text(), "last.ir")
    assert list(last.prim_functions()) and all(is_lowered(f) for f in last.prim_functions())
    r = invoke("build", str(models / "mlp.onnx"), "-o", str(tmp_path / "n.mlc"), "--no-verify-each")
    assert r.exit_code == 0, r.output
    assert "IR dump" not in r.output


def test_pipeline_flags_are_the_same_on_opt_build_and_tune() -> None:
    from mlc.cli import commands  # noqa: F401

    flags = {"--print-after-all", "--ir-dump-dir", "--verify-each", "--no-verify-each", "--timing"}
    for name in ("opt", "build", "tune"):
        have = {o for p in cli.commands[name].params for o in (*p.opts, *p.secondary_opts)}
        assert flags <= have, (name, flags - have)


def test_ir_dump_dir_that_cannot_be_made_is_one_error(models: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    r = invoke("build", str(models / "mlp.onnx"), "-o", str(tmp_path / "m.mlc"), "--ir-dump-dir",
               str(tmp_path / "afile" / "d"))
    assert r.exit_code == 1 and r.output.count("error:") == 1 and "--ir-dump-dir" in r.output, r.output
    assert not (tmp_path / "m.mlc").exists()


# ----- bench --onnx with non-identifier input names ----------------------------------------------------


def _slash_model(path: Path) -> None:
    """Two inputs whose names sanitize to the same identifier (`gpu_0_data_0`, then `gpu_0_data_0_1`)."""
    a = helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor_value_info("gpu_0.data_0", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("out/y", TensorProto.FLOAT, ["N", 4])
    w = helper.make_tensor("w.0", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32).tolist())
    nodes = [helper.make_node("Sub", ["gpu_0/data_0", "gpu_0.data_0"], ["d/0"]),
             helper.make_node("Mul", ["d/0", "w.0"], ["out/y"])]
    graph = helper.make_graph(nodes, "slash", [a, b], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_bench_onnx_maps_sanitized_input_names(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    _slash_model(tmp_path / "slash.onnx")
    r = invoke("build", str(tmp_path / "slash.onnx"), "-o", str(tmp_path / "s.mlc"))
    assert r.exit_code == 0, r.output
    r = invoke("bench", str(tmp_path / "s.mlc"), "--shape", "N=3", "--runs", "2", "--onnx", str(tmp_path / "slash.onnx"))
    assert r.exit_code == 0, r.output
    assert "onnxruntime  median" in r.stdout and "speed ratio" in r.stdout


def test_bench_onnx_of_another_model_is_still_an_error(models: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    _slash_model(tmp_path / "slash.onnx")
    r = invoke("bench", str(models / "mlp.mlc"), "--shape", "N=3", "--runs", "1", "--onnx", str(tmp_path / "slash.onnx"))
    assert r.exit_code == 1 and "differ from the artifact's" in r.output and r.stdout == "", r.output
