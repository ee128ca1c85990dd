"""Tokens of the textual IR: one regular expression, every token with its line and column.

Kept apart from the parser so the printer can share the spelling rules (which names need
quoting, how strings escape) and so every lexical error is located before parsing starts.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .diagnostics import Loc, MlcError

# Names: `%x` (values, buffers), `@f` (functions), bare `n` (scalar symbols); any of them may be
# quoted (`%"a b"`, `@"f"`, `$"x"`) when the plain spelling cannot hold the name.
PCT_NAME_RE = r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*"
IDENT_RE = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
_STRING_RE = r'"(?:[^"\\\n]|\\.)*"'

PUNCT: tuple[str, ...] = (
    "..", "==", "!=", "<=", ">=", "&&", "||",
    "(", ")", "{", "}", "[", "]", "<", ">", ",", ":", "=", "+", "-", "*", "/", "!", "?",
)

_TOKEN_RE = re.compile(
    "|".join(
        [
            r"(?P<ws>[ \t\r\n]+|\#[^\n]*)",
            rf"(?P<pct>%(?:{PCT_NAME_RE}|{_STRING_RE}))",
            rf"(?P<at>@(?:{PCT_NAME_RE}|{_STRING_RE}))",
            rf"(?P<dollar>\${_STRING_RE})",
            r"(?P<float>[0-9]+(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+))",
            r"(?P<int>[0-9]+)",
            rf"(?P<ident>{IDENT_RE})",
            rf"(?P<string>{_STRING_RE})",
            "(?P<punct>" + "|".join(re.escape(p) for p in PUNCT) + ")",
            r"(?P<err>.)",
        ]
    )
)

_FULL_IDENT = re.compile(IDENT_RE + r"\Z")
_FULL_PCT = re.compile(PCT_NAME_RE + r"\Z")


class Token(NamedTuple):
    kind: str  # int float string ident qident($"..") pct(%x) at(@f) punct eof
    text: str  # raw text (punct/ident/number) or the decoded name/string
    line: int
    col: int


def escape_string(s: str) -> str:
    """A double-quoted literal that `unescape` reads back to exactly `s`."""
    s = str(s)
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


_ESC = re.compile(r'\\(?:u\{([0-9a-fA-F]{1,6})\}|(.))')
_SIMPLE_ESC = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def unescape(body: str, loc: Loc, line_text: str) -> str:
    """Decode the inside of a string literal (without quotes)."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            cp = int(m.group(1), 16)
            if cp > 0x10FFFF:
                raise MlcError(f"bad escape \\u{{{m.group(1)}}}: not a code point", loc, line_text)
            return chr(cp)
        c = m.group(2)
        if c not in _SIMPLE_ESC:
            raise MlcError(f"unknown escape \\{c} in string", loc, line_text)
        return _SIMPLE_ESC[c]

    return _ESC.sub(repl, body)


def is_plain_ident(name: str) -> bool:
    return isinstance(name, str) and bool(_FULL_IDENT.match(name))


def is_plain_pct(name: str) -> bool:
    return isinstance(name, str) and bool(_FULL_PCT.match(name))


def tokenize(text: str, filename: str) -> tuple[list[Token], list[str]]:
    """Tokens of `text` ending with an `eof` token, plus the source lines (for diagnostics)."""
    lines = text.split("\n")
    toks: list[Token] = []
    append = toks.append
    line, line_start, pos = 1, 0, 0
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        start = m.start()
        if kind == "ws":
            raw = m.group()
            nl = raw.count("\n")
            if nl:
                line += nl
                line_start = start + raw.rfind("\n") + 1
            pos = m.end()
            continue
        col = start - line_start + 1
        if kind == "err":
            ch = text[start]
            if ch == '"':
                raise MlcError("unterminated string", Loc(filename, line, col), lines[line - 1])
            what = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
            raise MlcError(f"unexpected character {what}", Loc(filename, line, col), lines[line - 1])
        raw = m.group()
        if kind in ("pct", "at", "dollar"):
            body = raw[1:]
            if body.startswith('"'):
                body = unescape(body[1:-1], Loc(filename, line, col), lines[line - 1])
            append(Token("qident" if kind == "dollar" else kind, body, line, col))  # type: ignore[arg-type]
        elif kind == "string":
            append(Token("string", unescape(raw[1:-1], Loc(filename, line, col), lines[line - 1]), line, col))
        else:
            append(Token(kind, raw, line, col))  # type: ignore[arg-type]
        pos = m.end()
    toks.append(Token("eof", "", line, pos - line_start + 1))
    return toks, lines
