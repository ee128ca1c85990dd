"""bounds-check inside select arms: the arm a select does not take (a concat's other input) may
compute an index out of range that nothing reads; its run-time check must not fire. gpt_block's
compiled gradient failed so (`index -4 out of range [0, 4)`, in the concat that joins the q, k and v
gradients: transposes and reshapes over a symbolic T)."""

from __future__ import annotations

import numpy as np
import pytest
from mlc.frontend.onnx_import import import_onnx
from mlc.frontend.zoo import build
from mlc.ir.interp import run_function
from mlc.passes.autodiff import Autodiff
from mlc.passes.registry import PassContext
from mlc.runtime.artifact import loads
from mlc.runtime.model import model_from_artifact

from mlc.compiler import build_module, with_memory_constants


@pytest.mark.slow
def test_gpt_block_gradient_compiled_matches_the_interpreter() -> None:
    m, c = import_onnx(build("gpt_block"))
    g = Autodiff(loss="mse:target").apply(m, PassContext(constants=c))
    vm = model_from_artifact(loads(build_module(with_memory_constants(g, c), c, "cpu").result.data), "grad").vm
    rng = np.random.default_rng(0)
    for t in (1, 5):
        feeds = {"x": rng.standard_normal((2, t, 32)).astype(np.float32),
                 "target": rng.standard_normal((2, t, 32)).astype(np.float32)}
        want = run_function(g, feeds, c, "grad")
        got = vm.run(feeds, "grad")
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=f"T={t} {k}")
