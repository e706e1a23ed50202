"""common/display.py: peer text made harmless for terminals, logs and JSON lines."""

from __future__ import annotations

import json
import logging
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from tazcom.common.display import SafeFormatter, json_escape, safe

BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def forbidden(ch: str, *, newlines: bool = False) -> bool:
    """What must never reach a terminal raw: C0, DEL, C1, bidi overrides and isolates,
    line separators, lone surrogates."""
    if newlines and ch in "\n\t":
        return False
    c = ord(ch)
    return (c < 0x20 or 0x7F <= c <= 0x9F or ch in BIDI or ch in "\u2028\u2029"
            or 0xD800 <= c <= 0xDFFF)


ANY_TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF),
                   max_size=200)
#: Printable text as people write it (letters, digits, punctuation, symbols, CJK, emoji
#: with joiners and variation selectors, spaces, right-to-left marks).
PRINTABLE = st.text(st.characters(categories=("L", "M", "N", "P", "S", "Zs"))
                    | st.sampled_from("\u200d\ufe0f\u200e\u200f\u061c"), max_size=200)


@given(ANY_TEXT, st.booleans())
def test_output_never_holds_a_control_character(text: str, newlines: bool) -> None:
    out = safe(text, newlines=newlines)
    assert not any(forbidden(ch, newlines=newlines) for ch in out)
    out.encode("utf-8")  # printable in any UTF-8 terminal: no lone surrogate survives


@given(PRINTABLE)
def test_printable_text_is_unchanged(text: str) -> None:
    assert safe(text) == text
    assert safe(text, newlines=True) == text


@given(ANY_TEXT)
def test_safe_is_idempotent(text: str) -> None:
    once = safe(text)
    assert safe(once) == once


def test_escapes_are_visible() -> None:
    assert safe("\x1b[2J\x1b]0;pwned\x07") == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert safe("a\rb\nc\td") == "a\\rb\\nc\\td"
    assert safe("a\rb\nc\td", newlines=True) == "a\\rb\nc\td"
    assert safe("\x7f\x9b\x85") == "\\x7f\\x9b\\x85"
    assert safe("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert safe("\u2066x\u2069\u2028") == "\\u2066x\\u2069\\u2028"
    assert safe("\ud800") == "\\ud800"
    assert safe(42) == "42"


def test_ordinary_unicode_is_kept() -> None:
    for text in ("日本語のテキスト", "👩‍👩‍👧‍👦 ❤️ 🏳️‍🌈", "שלום\u200f עולם", "Ωμέγα café",
                 "[bold]x[/bold] [link=https://evil]y[/link]"):
        assert safe(text) == text, unicodedata.name(text[0])


@given(ANY_TEXT)
def test_json_escape_keeps_the_exact_string(text: str) -> None:
    line = json_escape(json.dumps({"t": text}, ensure_ascii=False))
    assert json.loads(line) == {"t": text}
    assert not any(forbidden(ch) for ch in line)


def test_log_lines_are_escaped() -> None:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "peer %s said %s",
                               ("\x1b[31mmallory", "line\nforged"), None)
    line = SafeFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING peer \\x1b[31mmallory said line\\nforged"
