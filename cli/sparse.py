"""`mlc sparse-kernel`: the ready-made sparse kernels as stage-I IR (ir/sparse_kernels.py, docs/sparse.md)."""

from __future__ import annotations

import click

from .io import write_module
from .main import handle_errors


@click.command("sparse-kernel")
@click.argument("op", type=click.Choice(["spmm", "sddmm", "bsrmm", "segment-mm"]))
@click.option("--format", "fmt", default="csr", show_default=True,
              help="csr (indptr, indices, data), ell:W (indices and data rows x W, padding value 0), "
                   "hyb:C,K (spmm: C column parts, ELL buckets of widths 1..2**K, longer rows split); bsrmm: bsr:S")
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
    bsrmm: as spmm with A in S x S blocks (--format bsr:S): indptr (block rows + 1), indices (block
           columns), data (blocks x S x S: scipy's bsr_matrix.data)
    segment-mm: inputs indptr (segments + 1, row offsets from 0 to rows), X (rows x feat), W (segments x
           feat x feat); result C (rows x feat), C[r] = X[r] @ W[s] for the rows r of segment s
    hyb:C,K (spmm): one sparse iteration per column part and row bucket; inputs indptr (A's, for the row
           count), per bucket rows_pP_bB / indices_pP_bB / data_pP_bB (ELL of width 2**B), per part the
           rows longer than 2**K split into sub-rows: rows_pP_long / subptr_pP_long / indices_pP_long /
           data_pP_long, then B. mlc sparse-inputs --format hyb:C,K writes them from a CSR file.
    CSR: indptr i32 (rows + 1), indices i32 (nnz), data (nnz). ELL (--format ell:W): indices i32 and data
    (rows x W); a padded entry has value 0 and any column in [0, n). Bad index arrays (indptr not
    monotone or past nnz, a column out of range) fail the run with a located error."""
    from mlc.ir.sparse_kernels import sparse_kernel

    write_module(sparse_kernel(op, fmt, feat, dtype), output)


@click.command("sparse-inputs")
@click.argument("matrix", metavar="A.npz")
@click.option("--format", "fmt", default="csr", show_default=True,
              help="the kernel's format: csr, ell:W, hyb:C,K or bsr:S")
@click.option("--dense", "dense", multiple=True, metavar="NAME=FILE",
              help="a dense operand (.npy, or an .npz holding NAME), e.g. B=b.npy; repeatable")
@click.option("-o", "--output", required=True, help="inputs file to write (.npz for mlc run --inputs)")
@handle_errors
def sparse_inputs_cmd(matrix: str, fmt: str, dense: tuple[str, ...], output: str) -> None:
    """Turn a `scipy.sparse.save_npz` CSR file (and dense operands) into `mlc run --inputs` for a sparse kernel.

    The matrix's structure is checked first (indptr from 0 and monotone, indptr[-1] = nnz = len(data),
    columns in range): a bad file is one error and no output. B and Y need A's column count of rows,
    X its row count."""
    import io

    import numpy as np
    from mlc.ir.constants import read_npz
    from mlc.ir.diagnostics import Loc, MlcError
    from mlc.ir.files import atomic_write_bytes
    from mlc.ir.sparse_format import parse_format, parse_hyb

    import mlc.sparse as msp

    hyb = parse_hyb(fmt)
    kind, width = ("hyb", 0) if hyb is not None else parse_format(fmt)
    z = read_npz(_readable(matrix), f"sparse matrix '{matrix}'")
    need = ("format", "shape", "indptr", "indices", "data")
    if any(k not in z for k in need):
        raise MlcError(f"not a scipy.sparse.save_npz file: needs {', '.join(need)}; has {', '.join(sorted(z))}", Loc(matrix))
    if z["format"].tobytes().rstrip(b"\0") != b"csr":
        raise MlcError(f"only CSR matrices are read (this one is {z['format'].tobytes().decode(errors='replace')!r}; "
                       "convert with A.tocsr())", Loc(matrix))
    shape = tuple(int(x) for x in np.asarray(z["shape"]).ravel())
    if len(shape) != 2 or min(shape) < 0:
        raise MlcError(f"shape {shape} is not a matrix shape", Loc(matrix))
    indptr, indices, data = z["indptr"], z["indices"], z["data"]
    if len(indptr) != shape[0] + 1:
        raise MlcError(f"indptr has {len(indptr)} entries for {shape[0]} rows", Loc(matrix))
    try:
        msp.check_csr(indptr, indices, len(data), shape[1])
    except MlcError as e:
        raise MlcError(e.message, Loc(matrix)) from None
    if data.dtype not in (np.float32, np.float16):
        data = data.astype(np.float32)
    ip, ix = indptr.astype(np.int32), indices.astype(np.int32)
    if kind == "csr":
        out = {"indptr": ip, "indices": ix, "data": data}
    elif kind == "ell":
        out = dict(zip(("indices", "data"), msp.to_ell(ip, ix, data, width)))
    elif hyb is not None:
        out = msp.to_hyb(ip, ix, data, shape[1], *hyb)
    else:
        import scipy.sparse as sp

        a = sp.csr_matrix((data.astype(np.float32), ix, ip), shape=shape)
        a.sum_duplicates()
        out = msp.to_bsr(a, width, data.dtype)
    rows = {"B": shape[1], "Y": shape[1], "X": shape[0]}
    for item in dense:
        name, _, path = item.partition("=")
        if not name or not path:
            raise click.UsageError(f"--dense takes NAME=FILE, got {item!r}")
        arr = _dense_array(name, path)
        if name in rows and (arr.ndim != 2 or arr.shape[0] != rows[name]):
            raise MlcError(f"{name} must have {rows[name]} rows (A is {shape[0]} x {shape[1]}), got shape {arr.shape}", Loc(path))
        out[name] = arr
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(output, buf.getvalue())


def _readable(path: str) -> str:
    from pathlib import Path

    from mlc.ir.diagnostics import MlcError

    if not Path(path).is_file():
        raise MlcError(f"cannot read '{path}': {'not a regular file' if Path(path).exists() else 'no such file'}")
    return path


def _dense_array(name: str, path: str):  # type: ignore[no-untyped-def]
    """`.npy` (never unpickled) or the array NAME of an `.npz`."""
    import numpy as np
    from mlc.ir.constants import read_npz
    from mlc.ir.diagnostics import Loc, MlcError

    if path.endswith(".npz"):
        z = read_npz(_readable(path), f"dense operand '{path}'")
        if name not in z:
            raise MlcError(f"{path} holds no array {name} (has {', '.join(sorted(z))})", Loc(path))
        return z[name]
    try:
        return np.load(_readable(path), allow_pickle=False)
    except ValueError as e:
        raise MlcError(f"cannot read {path} as .npy: {e}", Loc(path)) from None
