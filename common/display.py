"""Peer-supplied text made harmless for a terminal, a log line or a JSON line.

Anything a stranger can write reaches people's screens: nicknames, message texts,
reasons and details, addresses. ``safe`` is the one gate between such a string and
a terminal: every character that a terminal (or a log reader, or the bidi algorithm)
treats as an instruction rather than as text becomes a visible escape, and
everything else (letters of every script, CJK, emoji with their joiners and
variation selectors) is kept as it is.

Escaped (shown as ``\\x1b``, ``\\x9b``, ``\\u202e``, ``\\r``, ``\\n``, ...):

* C0 controls U+0000..U+001F (ESC starts CSI/OSC sequences; CR and BS overwrite what
  is already on the line; a newline forges a new line: only with ``newlines=True``
  are ``\\n`` and ``\\t`` kept), DEL U+007F and C1 controls U+0080..U+009F (0x9B is a
  one-byte CSI on some terminals);
* the bidi embeddings, overrides and isolates U+202A..U+202E and U+2066..U+2069, which
  reorder the rest of a line (the marks U+200E, U+200F, U+061C are kept: they cannot
  override anything, and right-to-left text needs them);
* the line and paragraph separators U+2028, U+2029 (line breaks for some readers);
* lone surrogates (a ``str`` may hold them; no terminal encoding can print them).

Markup (Rich/Textual's ``[bold]``, ``[link=...]``) is not a terminal matter: the chat
app never parses peer text as markup (it builds ``rich.text.Text`` objects, or
escapes with ``rich.markup.escape``), and the CLI prints plain text.

``json_escape`` does the same job for ``--json`` lines, keeping the exact string: the
characters above are written as JSON ``\\uXXXX`` escapes, which ``json.loads``
turns back into the very same characters (docs/protocol.md §11).
"""

from __future__ import annotations

import logging
import re

#: Characters ``safe`` escapes (see the module docstring) but for tab and newline.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_WITH_NEWLINES = re.compile(f"[{_UNSAFE}]")
_ALWAYS = re.compile(f"[{_UNSAFE}\t\n]")


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object, *, newlines: bool = False) -> str:
    """``text`` (anything: it is ``str()``-ed) fit to print: every control character,
    bidi override and lone surrogate written as a visible escape; ``newlines`` keeps
    ``\\n`` and ``\\t`` (for multi-line text shown as such)."""
    s = text if type(text) is str else str(text)
    return (_WITH_NEWLINES if newlines else _ALWAYS).sub(_escape, s)


#: What ``json.dumps(ensure_ascii=False)`` leaves raw but a terminal would act on: DEL,
#: C1 controls, line separators, bidi overrides and isolates, lone surrogates (json.dumps
#: itself escapes U+0000..U+001F).
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_escape(line: str) -> str:
    """A line of ``json.dumps(..., ensure_ascii=False)`` output with every character that
    ``safe`` would escape written as a JSON ``\\uXXXX`` escape: the same JSON value,
    nothing a terminal would act on. (Such characters can only be inside JSON strings.)"""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class SafeFormatter(logging.Formatter):
    """A log formatter whose message part is ``safe``: a peer's nickname or detail cannot
    forge a log line, move the cursor of whoever tails the log, or reorder it. Tracebacks
    keep their newlines (they are formatted after the message)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe(record.message)
        return super().formatMessage(record)
