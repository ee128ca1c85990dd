"""`mlc sparse-kernel`: the ready-made sparse kernels as stage-I IR (ir/sparse_kernels.py, docs/sparse.md)."""

from __future__ import annotations

import click

from .io import write_module
from .main import handle_errors


@click.command("sparse-kernel")
@click.argument("op", type=click.Choice(["spmm", "sddmm"]))
@click.option("--format", "fmt", default="csr", show_default=True,
              help="csr (indptr, indices, data) or ell:W (indices and data rows x W, padding value 0)")
@click.option("--feat", default=32, show_default=True, type=click.IntRange(min=1), help="feature width of the dense operands")
@click.option("--dtype", default="f32", show_default=True, type=click.Choice(["f32", "f16"]), help="value dtype")
@click.option("-o", "--output", default="-", help="IR file to write (default: stdout)")
@handle_errors
def sparse_kernel_cmd(op: str, fmt: str, feat: int, dtype: str, output: str) -> None:
    """Write a sparse kernel's stage-I program (a graph @main calling it), ready for `mlc build`.

    \b
    spmm:  inputs indptr, indices, data (A, rows x n sparse), B (n x feat); result C = A @ B (rows x feat)
    sddmm: inputs indptr, indices, data, X (rows x feat), Y (n x feat); result C: one value per nonzero
           (i, j) of A, A[i, j] * dot(X[i], Y[j]), in A's order
    CSR: indptr i32 (rows + 1), indices i32 (nnz), data (nnz). ELL (--format ell:W): indices i32 and data
    (rows x W); a padded entry has value 0 and any column in [0, n). Bad index arrays (indptr not
    monotone or past nnz, a column out of range) fail the run with a located error."""
    from mlc.ir.sparse_kernels import sparse_kernel

    write_module(sparse_kernel(op, fmt, feat, dtype), output)
