"""mlc: a machine-learning compiler toolchain.

The top-level folders of the repository (cli/, ir/, passes/, codegen/, runtime/, frontend/, ann/)
install as subpackages of this namespace. `mlc.load("MODEL.mlc")` returns a callable model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.3.0"

if TYPE_CHECKING:
    from mlc.runtime.model import Model


def load(path: str, device: str | None = None) -> Model:
    """Load a compiled artifact (`mlc build`/`mlc codegen` output): `load(p)(x=array) -> {name: array}`.

    `device` ("cpu" or "cuda") defaults to the target the artifact was built for; naming another one
    is an error that says to rebuild."""
    from mlc.runtime.model import load as _load

    return _load(path, device)


def compile(model: object, target: str = "cpu", dims: dict[str, str] | None = None,  # noqa: A001 - the API's name
            db: str | None = None) -> Model:
    """ONNX model (path, bytes or `onnx.ModelProto`) -> a callable compiled `Model`; no files are written."""
    from mlc.compiler import compile as _compile

    return _compile(model, target, dims, db)
