"""Names: `fresh_name`, the one helper every stage uses to pick a name no other symbol in scope has, and
`sanitize`, the one mapping of outside names (ONNX initializers, inputs) to IR identifiers."""

from __future__ import annotations

import re
from collections.abc import Container


def fresh_name(base: str, used: set[str], avoid: Container[str] = (), sep: str = "_") -> str:
    """`base`, else `base{sep}1`, `base{sep}2`, ...: the first not in `used` or `avoid`; added to `used`."""
    name, i = base, 0
    while name in used or name in avoid:
        i += 1
        name = f"{base}{sep}{i}"
    used.add(name)
    return name


def sanitize(name: str) -> str:
    """An outside name as an IR identifier: `/layer1/Conv_output_0` -> `layer1_Conv_output_0`."""
    s = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "v"
    return "v" + s if s[0].isdigit() else s
