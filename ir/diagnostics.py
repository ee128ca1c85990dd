"""Source locations and the one error type every stage raises for user errors.

A user error (bad IR, bad shapes, bad files) is an `MlcError`; the driver prints it as
`FILE:LINE:COL: error: message` plus the offending line and a caret, and exits 1.
Anything else escaping a stage is a bug in mlc and gets a traceback.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


def printable(text: str) -> str:
    """`text` safe for a terminal: control and format characters (an ESC sequence, a bidi override)
    and lone surrogates become escapes such as \\x1b, so an error message cannot drive the terminal."""
    out = []
    for c in text:
        if c == "\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs"):
            out.append(c)
        else:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
    return "".join(out)


@dataclass(frozen=True)
class Loc:
    """A position in a source text (1-based line and column)."""

    file: str = "<unknown>"
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}" if self.line else self.file


UNKNOWN = Loc()


class MlcError(Exception):
    """A user-facing error with an optional source location."""

    def __init__(self, message: str, loc: Loc | None = None, source_line: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.source_line = source_line

    def render(self) -> str:
        """The error as the driver prints it: located header, offending line, caret (all printable)."""
        if self.loc is None or not self.loc.line:
            head = f"{self.loc.file}: error: {self.message}" if self.loc else f"mlc: error: {self.message}"
            return "\n".join(printable(ln) for ln in head.split("\n"))
        out = "\n".join(printable(ln) for ln in f"{self.loc}: error: {self.message}".split("\n"))
        if self.source_line is not None:
            line = self.source_line.rstrip("\n")
            if len(line) > 200:
                line = line[:200] + "..."
            col = max(0, min(self.loc.col - 1, len(line)))
            out += f"\n{printable(line)}\n{' ' * len(printable(line[:col]))}^"
        return out

    def __str__(self) -> str:
        return self.render()
