"""`mlc export M.ir --onnx SOURCE.onnx -o OUT.onnx`: the module's weights written back into the ONNX
model it was imported from (after `mlc train`, the trained weights); frontend/onnx_export.py."""

from __future__ import annotations

import click
from mlc.ir.diagnostics import MlcError

from .io import read_module
from .main import handle_errors


@click.command("export")
@click.argument("module", metavar="M.ir")
@click.option("--onnx", "onnx_path", required=True, help="The ONNX model M.ir was imported from.")
@click.option("-o", "--output", required=True, help="ONNX model to write (the source with M.ir's weights).")
@handle_errors
def export_cmd(module: str, onnx_path: str, output: str) -> None:
    """Write a module's weights (e.g. trained by `mlc train`) back into its source ONNX model."""
    from mlc.frontend.onnx_export import with_weights
    from mlc.frontend.onnx_import import load_model
    from mlc.ir.files import atomic_write_bytes

    src = read_module(module)
    arrays = src.constants()
    if not arrays:
        raise MlcError(f"{module}: the module has no constants to export")
    model, name = load_model(onnx_path)
    out, changed = with_weights(model, arrays, name)
    data = out.SerializeToString()
    atomic_write_bytes(output, data)
    click.echo(f"{output}: {changed} of {len(out.graph.initializer)} initializers replaced", err=True)
