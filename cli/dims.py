"""NAME=VALUE options: the one parser behind `--dim`, `--dim-bound` and `--shape`.

| option | value | meaning |
|---|---|---|
| `import/build --dim NAME=SYMBOL` | a symbol or a positive integer | name (or fix) a dynamic ONNX axis |
| `build --dim-bound NAME=INT` | positive integer | upper bound of a symbolic dim, for the memory-plan report |
| `bench --dim/--shape NAME=INT` | positive integer | value of a symbolic dim for the timed inputs |
| `tune --dim NAME=INT` | positive integer | value of a symbolic dim for measuring |

Every one is checked the same way while click parses the command line, before any file is read:
`NAME=VALUE` with both sides non-empty, each NAME at most once, integers positive. A bad one is a
usage error (exit 2) with one line naming the option and the item.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import click

Kind = Literal["int", "symbol"]

_INT = re.compile(r"\+?[0-9]+")


def parse_dims(items: tuple[str, ...] | list[str], kind: Kind = "int") -> dict[str, Any]:
    """`("N=8", "S=16")` -> `{"N": 8, "S": 16}` (kind "int"), or -> symbol/int strings (kind "symbol").

    Raises click.BadParameter (a usage error) for anything else."""
    want = "NAME=INTEGER" if kind == "int" else "NAME=SYMBOL"
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise click.BadParameter(f"expected {want}, got {item!r}")
        if name in out:
            raise click.BadParameter(f"{name} is given twice")
        if _INT.fullmatch(value):
            if int(value) < 1:
                raise click.BadParameter(f"{name}: a dim is a positive integer, got {value}")
            out[name] = int(value) if kind == "int" else str(int(value))
        elif kind == "int":
            raise click.BadParameter(f"{name}: a dim is a positive integer, got {value!r}")
        elif not value.isidentifier():
            raise click.BadParameter(f"{name}: symbol {value!r} is not an identifier (or a positive integer)")
        else:
            out[name] = value
    return out


def dims_option(*decls: str, kind: Kind = "int", help: str = "") -> Callable[[Any], Any]:  # noqa: A002 - click's name
    """A repeatable NAME=VALUE option whose value reaches the command as a parsed dict."""

    def callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
        return parse_dims(value, kind)

    metavar = "NAME=INT" if kind == "int" else "NAME=SYMBOL"
    return click.option(*decls, multiple=True, metavar=metavar, callback=callback, help=help)
