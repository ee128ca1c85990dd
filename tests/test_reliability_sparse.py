"""bounds-check on sparse programs (issue 19): every access of a compiled sparse kernel is proven or
checked.

sparse-lower clamps what it reads from `indptr`/`indices` and reports a bad value through
check_range; bounds-check covers the rest: the dense accesses of an `sp_iter` body (an iterator
is a coordinate in [0, axis length)) and the declared shapes of the index and value arrays. The
shipped kernels of every format need no check at all (proven); hand-written stage-I programs that
reach outside fail the compiled run with one located error, also with guard pages after every
buffer (an unchecked read one element past the end would fault instead).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mlc.ir import MlcError
from mlc.ir.parser import parse_module
from mlc.passes.bounds import check_func

from mlc.compiler import build_module

SPMM = """mlc.module v1

graph @main(%Z: tensor<m x i32>, %indptr: tensor<P x i32>, %indices: tensor<nnz x i32>, %data: tensor<nnz x f32>, %B: tensor<n x 4 x f32>) attrs {entry = true} {
  %C: tensor<m x 4 x f32> = call_tensor @spmm(%Z, %indptr, %indices, %data, %B)
  return %C
}

prim @spmm(%Z: buffer<m x i32>, %indptr: buffer<P x i32>, %indices: buffer<nnz x i32>, %data: buffer<nnz x f32>, %B: buffer<n x 4 x f32>, %C: buffer<m x 4 x f32>) outputs 1 {
  axis I = dense_fixed(m)
  axis J = sparse_variable(I, n, nnz, %indptr, %indices)
  axis K = dense_fixed(4)
  sparse %A: (I, J) = %data
  sp_iter "spmm"(S i in I, R j in J, S k in K) {
    init {
      %C[i, k] = 0.0
    }
    %C[i, k] = %C[i, k] + %A[i, j] * %B[READ, k]
  }
}
"""
GOOD = SPMM.replace("tensor<P x", "tensor<m + 1 x").replace("buffer<P x", "buffer<m + 1 x")
# %Z only gives the rows m a value (an input of m elements)
SHIFTED = GOOD.replace("READ", "j + 1")
SHORT_INDPTR = SPMM.replace("READ", "j")  # indptr's length P is not tied to the m rows
OK = GOOD.replace("READ", "j")

INDPTR = np.array([0, 2, 3, 5], np.int32)
INDICES = np.array([0, 4, 1, 2, 3], np.int32)
DATA = np.arange(1, 6, dtype=np.float32)
B = np.arange(24, dtype=np.float32).reshape(6, 4)


def _reference(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, b: np.ndarray, shift: int) -> np.ndarray:
    """Brute force over the nonzeros (scipy's CSR product, B's rows shifted by `shift`)."""
    import scipy.sparse as sp

    a = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, b.shape[0]))
    return np.asarray(a @ np.roll(b, -shift, axis=0))


def _checked(text: str) -> list[str]:
    return check_func(parse_module(text, "t.ir").get("spmm"))[1]


def test_shipped_kernels_of_every_format_are_proven() -> None:
    from mlc.ir.sparse_kernels import OPS, sparse_kernel

    cases = (("spmm", ("csr", "ell:4", "hyb:2,2")), ("sddmm", ("csr", "ell:4")), ("bsrmm", ("bsr:2",)),
             ("segment-mm", ("csr",)))
    assert {op for op, _ in cases} == set(OPS)
    for op, formats in cases:
        for fmt in formats:
            module = sparse_kernel(op, fmt)
            for f in module.prim_functions():
                assert check_func(f)[1] == [], (op, fmt, f.name)


def test_dense_access_in_an_sp_iter_body_is_checked() -> None:
    assert _checked(OK) == []
    assert _checked(SHIFTED) == ["%B[j + 1, k]"]
    assert _checked(SHORT_INDPTR) == ["%indptr dim 0 >= m + 1"]


def _model(text: str):  # type: ignore[no-untyped-def]
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import model_from_artifact

    return model_from_artifact(loads(build_module(parse_module(text, "t.ir"), {}, "cpu").result.data, "t.mlc"), "t.mlc")


def test_compiled_runs_in_range_match_scipy_and_out_of_range_fail_located() -> None:
    shifted, ok, short = _model(SHIFTED), _model(OK), _model(SHORT_INDPTR)
    args = dict(Z=np.zeros(3, np.int32), indptr=INDPTR, indices=INDICES, data=DATA, B=B)
    np.testing.assert_array_equal(ok(**args)["C"], _reference(INDPTR, INDICES, DATA, B, 0))
    np.testing.assert_array_equal(shifted(**args)["C"], _reference(INDPTR, INDICES, DATA, B, 1))  # column 4 + 1 < 6
    last = INDICES.copy()
    last[1] = 5  # column 5 is in range, 5 + 1 is not
    with pytest.raises(MlcError, match=r"kernel spmm: index 6 out of range \[0, 6\)"):
        shifted(**{**args, "indices": last})
    np.testing.assert_array_equal(short(**args)["C"], _reference(INDPTR, INDICES, DATA, B, 0))
    with pytest.raises(MlcError, match=r"kernel spmm: index 4 out of range \[0, 4\)"):  # 4 entries needed, 3 given
        short(**{**args, "indptr": INDPTR[:3]})
    bad = INDICES.copy()
    bad[0] = 10**9  # a column read from indices: sparse-lower's own check
    with pytest.raises(MlcError, match=r"kernel spmm: index 1000000000 out of range \[0, 6\)"):
        ok(**{**args, "indices": bad})


_GUARDED = textwrap.dedent("""
    import sys
    import numpy as np
    from mlc.compiler import build_module
    from mlc.ir import MlcError
    from mlc.ir.parser import parse_module
    from mlc.runtime.artifact import loads
    from mlc.runtime.model import Model
    built = build_module(parse_module(sys.stdin.read(), "t.ir"), {}, "cpu")
    indptr = np.array([0, 2, 3, 5], np.int32)
    indices = np.array([0, 5, 1, 2, 3], np.int32)
    data = np.arange(1, 6, dtype=np.float32)
    b = np.arange(24, dtype=np.float32).reshape(6, 4)
    for side in ("after", "before"):
        try:
            Model(loads(built.result.data), "guarded", guard=side)(Z=np.zeros(3, np.int32), indptr=indptr, indices=indices,
                                                                   data=data, B=b)
        except MlcError as e:
            print(side, e, flush=True)
""")


def test_guard_pages_see_no_read_outside() -> None:
    """Buffers flush against an unmapped page: the shifted read of column 5 is reported, not done."""
    r = subprocess.run([sys.executable, "-c", _GUARDED], input=SHIFTED.encode(), capture_output=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr.decode()[-2000:]}"
    lines = r.stdout.decode().splitlines()
    assert [ln.split()[0] for ln in lines] == ["after", "before"], lines
    assert all("kernel spmm: index 6 out of range [0, 6)" in ln for ln in lines), lines
