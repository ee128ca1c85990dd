"""Bad IR text of every kind gets one located MlcError and nothing else escapes.

Each file in ir_corpus/malformed starts with `# expect LINE: MESSAGE-PART`; parsing and then
verifying it must fail with that line and message. A mutation fuzzer (byte flips, deletions,
splices, truncations) over the valid corpus checks that only MlcError ever escapes, and that
whatever does parse prints and parses back to an equal module.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from mlc.ir import MlcError
from mlc.ir.parser import MAX_NESTING, parse_expr, parse_module
from mlc.ir.printer import print_module
from mlc.ir.verify import verify_module

CORPUS = Path(__file__).parent / "ir_corpus"
MALFORMED = sorted((CORPUS / "malformed").glob("*.ir"))
# fuzz the small hand-written samples (they cover every construct); the zoo dumps are long and slow
VALID = sorted(p for p in (CORPUS / "valid").glob("*.ir") if not p.name.startswith("zoo_"))


def _load(path: Path) -> tuple[bytes, int, str]:
    data = path.read_bytes()
    m = re.match(rb"# expect (\d+): (.*)\n", data)
    assert m, f"{path.name}: first line must be '# expect LINE: MESSAGE'"
    return data, int(m.group(1)), m.group(2).decode()


def _parse_and_verify(data: bytes | str, name: str) -> None:
    m = parse_module(data, name)
    verify_module(m, data.decode("utf-8", "replace") if isinstance(data, bytes) else data)


def test_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.name)
def test_malformed_file_gives_located_error(path: Path) -> None:
    data, line, msg = _load(path)
    with pytest.raises(MlcError) as info:
        _parse_and_verify(data, path.name)
    e = info.value
    assert e.loc is not None and e.loc.line > 0 and e.loc.col > 0
    assert (e.loc.line, e.loc.file) == (line, path.name), e.render()
    assert msg in e.message, e.render()
    rendered = e.render().split("\n")
    assert rendered[0] == f"{path.name}:{e.loc.line}:{e.loc.col}: error: {e.message}"
    assert len(rendered) == 3 and rendered[2].endswith("^")  # offending line and caret


def test_text_input_with_replacement_chars_is_rejected() -> None:
    data = (CORPUS / "malformed" / "binary_garbage.ir").read_bytes()
    with pytest.raises(MlcError) as info:
        parse_module(data.decode("utf-8", "replace"), "g.ir")
    assert info.value.loc is not None and info.value.loc.line == 4


def test_nesting_limit_is_an_error_not_a_crash() -> None:
    ok = "(" * (MAX_NESTING - 5) + "1" + ")" * (MAX_NESTING - 5)
    assert parse_expr(ok) == parse_expr("1")
    for text in ("(" * 20000, "!" * 20000 + "true", "-" * 50, "1" + " + 1" * 5000):
        with pytest.raises(MlcError):
            parse_expr(text)


def _mutate(rng: random.Random, text: bytes, others: list[bytes]) -> bytes:
    b = bytearray(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a byte
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:  # delete a span
            del b[pos: pos + rng.randint(1, 12)]
        elif op == 2:  # splice a span of another text
            o = rng.choice(others)
            s = rng.randrange(len(o))
            b[pos:pos] = o[s: s + rng.randint(1, 40)]
        elif op == 3:  # truncate
            del b[pos:]
        else:  # replace one token-ish char with a significant one
            b[pos:pos] = rng.choice([b"{", b"}", b"(", b")", b"%", b"@", b"<", b">", b",", b"..", b"\"", b"x", b"-", b"9" * 30])
    return bytes(b)


def test_fuzzed_texts_only_raise_mlc_error() -> None:
    texts = [p.read_bytes() for p in VALID]
    rng = random.Random(1234)
    parsed = 0
    for i in range(3000):
        src = rng.choice(texts)
        data = _mutate(rng, src, texts)
        try:  # bytes, or text as a reader with errors="replace" would hand it over
            m = parse_module(data if i % 4 else data.decode("utf-8", "replace"), "fuzz.ir")
        except MlcError as e:
            assert e.loc is not None and e.loc.line > 0, (i, data)
            continue
        parsed += 1
        text = print_module(m)  # whatever parses prints, and prints back to itself
        assert parse_module(text) == m
        assert print_module(parse_module(text)) == text
        try:
            verify_module(m, data.decode("utf-8", "replace"))
        except MlcError:
            pass
    assert parsed > 50  # the mutations must also reach the verifier


@pytest.mark.parametrize("text", ["1" * 6000, "-" + "9" * 20, "9223372036854775808", "1e" + "9" * 400, "1e400"])
def test_out_of_range_literals_are_located_errors(text: str) -> None:
    with pytest.raises(MlcError, match="out of") as info:
        parse_expr(text, "lit.ir")
    assert info.value.loc is not None and info.value.loc.line == 1


def test_extreme_int64_literals_are_accepted() -> None:
    assert parse_expr("-9223372036854775808").value == -(2**63)  # type: ignore[attr-defined]
    assert parse_expr("9223372036854775807").value == 2**63 - 1  # type: ignore[attr-defined]
    with pytest.raises(MlcError, match="expected a version"):
        parse_module("mlc.module v" + "1" * 5000)
