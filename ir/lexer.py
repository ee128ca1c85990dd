"""Tokens of the textual IR: one regular expression, every token with its line and column.

Kept apart from the parser so the printer can share the spelling rules (which names need
quoting, how strings escape) and so every lexical error is located before parsing starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
            r"(?P<float>\d+(?:\.\d+(?:[eE][+-]?\d+)?|[eE][+-]?\d+))",
            r"(?P<int>\d+)",
            rf"(?P<ident>{IDENT_RE})",
            rf"(?P<string>{_STRING_RE})",
            "(?P<punct>" + "|".join(re.escape(p) for p in PUNCT) + ")",
        ]
    )
)

_FULL_IDENT = re.compile(IDENT_RE + r"\Z")
_FULL_PCT = re.compile(PCT_NAME_RE + r"\Z")


@dataclass(frozen=True)
class Token:
    kind: str  # int float string ident qident($"..") pct(%x) at(@f) punct eof
    text: str  # raw text (punct/ident/number) or the decoded name/string
    line: int
    col: int


def escape_string(s: str) -> str:
    """A double-quoted literal that `unescape` reads back to exactly `s`."""
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
    return bool(_FULL_IDENT.match(name))


def is_plain_pct(name: str) -> bool:
    return bool(_FULL_PCT.match(name))


def tokenize(text: str, filename: str) -> tuple[list[Token], list[str]]:
    """Tokens of `text` ending with an `eof` token, plus the source lines (for diagnostics)."""
    lines = text.split("\n")
    toks: list[Token] = []
    pos, line, line_start, n = 0, 1, 0, len(text)
    match = _TOKEN_RE.match
    while pos < n:
        m = match(text, pos)
        col = pos - line_start + 1
        if m is None:
            ch = text[pos]
            what = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
            if ch == '"':
                what = "unterminated string"
                raise MlcError(what, Loc(filename, line, col), lines[line - 1])
            raise MlcError(f"unexpected character {what}", Loc(filename, line, col), lines[line - 1])
        kind = m.lastgroup
        raw = m.group()
        assert kind is not None
        if kind != "ws":
            loc = Loc(filename, line, col)
            if kind in ("pct", "at", "dollar"):
                body = raw[1:]
                val = unescape(body[1:-1], loc, lines[line - 1]) if body.startswith('"') else body
                toks.append(Token("qident" if kind == "dollar" else kind, val, line, col))
            elif kind == "string":
                toks.append(Token("string", unescape(raw[1:-1], loc, lines[line - 1]), line, col))
            else:
                toks.append(Token(kind, raw, line, col))
        nl = raw.count("\n")
        if nl:
            line += nl
            line_start = pos + raw.rfind("\n") + 1
        pos = m.end()
    toks.append(Token("eof", "", line, pos - line_start + 1))
    return toks, lines
