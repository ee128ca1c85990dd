"""Source locations and the one error type every stage raises for user errors.

A user error (bad IR, bad shapes, bad files) is an `MlcError`; the driver prints it as
`FILE:LINE:COL: error: message` plus the offending line and a caret, and exits 1.
Anything else escaping a stage is a bug in mlc and gets a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        """The error as the driver prints it: located header, offending line, caret."""
        if self.loc is None or not self.loc.line:
            head = f"{self.loc.file}: error: {self.message}" if self.loc else f"mlc: error: {self.message}"
            return head
        out = f"{self.loc}: error: {self.message}"
        if self.source_line is not None:
            line = self.source_line.rstrip("\n")
            if len(line) > 200:
                line = line[:200] + "..."
            caret = " " * max(0, min(self.loc.col - 1, len(line))) + "^"
            out += f"\n{line}\n{caret}"
        return out

    def __str__(self) -> str:
        return self.render()
