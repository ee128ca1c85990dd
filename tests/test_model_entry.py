"""The host fast path of `Model.__call__` (runtime/model.py HostEntry) and the array addresses the
replay patches in (runtime/native_replay.py array_address): same results and errors as `VM.run`,
fresh result arrays per call, fallbacks for strided, foreign and mistyped inputs, and shapes that
change between calls; onnxruntime as the oracle."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from mlc.frontend import zoo
from mlc.ir.diagnostics import MlcError
from mlc.runtime.native_replay import array_address

import mlc


def test_array_address_is_the_data_pointer() -> None:
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    for a in (base, base[2:], base[1:, 3:], base.T, base[::2], np.zeros(0, np.int8), np.ones((2, 3), np.float64),
              np.asfortranarray(base), base.view(np.int32)):
        assert array_address(a) == a.ctypes.data

    class Sub(np.ndarray):
        pass

    s = base.view(Sub)
    assert array_address(s) == s.ctypes.data  # a subclass takes the ctypes path


@pytest.fixture(scope="module")
def mlp() -> tuple[object, object]:
    proto = zoo.build("mlp")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return mlc.compile(proto), lambda x: sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


def test_fast_path_matches_numpy_and_returns_fresh_arrays(mlp) -> None:  # type: ignore[no-untyped-def]
    model, ref = mlp
    name = model.input_names[0]
    rng = np.random.default_rng(0)
    held = []
    for n in (8, 3, 8, 33, 1, 8):  # shapes change between calls; each set gets its tape
        x = rng.standard_normal((n, 64)).astype(np.float32)
        out = model(**{name: x})
        (y,) = out.values()
        np.testing.assert_allclose(y, ref(x), rtol=1e-4, atol=1e-5)
        held.append((x, y, y.copy()))
    assert model._entries  # the second call on took the host fast path
    for _, y, snapshot in held:  # later calls never wrote into an earlier result
        np.testing.assert_array_equal(y, snapshot)
    ys = [y for _, y, _ in held]
    assert len({id(y) for y in ys}) == len(ys) and len({array_address(y) for y in ys[-2:]}) == 2


def test_fallbacks_give_the_same_results_and_errors(mlp) -> None:  # type: ignore[no-untyped-def]
    model, ref = mlp
    name = model.input_names[0]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    model(**{name: x[:8]})
    # a strided view (every other row) and a Fortran-order array take VM.run, which copies them in
    strided = x[::2]
    (y,) = model(**{name: strided}).values()
    np.testing.assert_allclose(y, ref(strided), rtol=1e-4, atol=1e-5)
    fortran = np.asfortranarray(x[:8])
    (y2,) = model(**{name: fortran}).values()
    np.testing.assert_allclose(y2, ref(x[:8]), rtol=1e-4, atol=1e-5)
    # errors are VM.run's: a wrong dtype, a wrong width, a missing and an unknown input
    with pytest.raises(MlcError):
        model(**{name: x[:8].astype(np.float64)})
    with pytest.raises(MlcError):
        model(**{name: x[:8, :32].copy()})
    with pytest.raises(MlcError, match="missing"):
        model()
    with pytest.raises(MlcError, match="unknown"):
        model(**{name: x[:8], "extra": x})
    (y3,) = model(**{name: x[:8]}).values()  # and the fast path still works after them
    np.testing.assert_allclose(y3, ref(x[:8]), rtol=1e-4, atol=1e-5)
