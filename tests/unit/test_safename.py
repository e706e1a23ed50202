"""safe_name and unique_name: any announced string becomes one plain, visible name directly
inside files/ (docs/files.md, "Disk"; issue 15, "Bad input")."""

from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common.safename import FALLBACK, NAME_MAX, UNIQUE_LIMIT, safe_name, unique_name

ROOT = "/home/user/.local/share/tazcom/files"
REFUSED = {"Cc", "Cf", "Cs", "Zl", "Zp"}

#: Strings rich in what goes wrong: separators, dots, controls, bidi, combining marks,
#: surrogates, reserved names, and long runs of multi-byte characters.
TRICKY = st.lists(
    st.one_of(
        st.sampled_from(["/", "\\", ".", "..", " ", "\x00", "\x7f", "\x85", "\u202e",
                         "\u2066", "\u200b", "\ufeff", "\u2028", "\ud800", "\u0301",
                         "\u0958", "e", "CON", "nul", "COM1", "\U0001f600", "\u00a0",
                         "\t", "\n", "~", ".txt", "é", "\u1100\u1161"]),
        st.characters(),
    ),
    max_size=400,
).map("".join)


def check_safe(name: str) -> None:
    assert name
    assert len(name.encode("utf-8")) <= NAME_MAX
    assert name not in (".", "..")
    assert not name.startswith(".") and not name[0].isspace()
    assert not name.endswith(".") and not name[-1].isspace()
    assert "/" not in name and "\\" not in name
    assert all(unicodedata.category(c) not in REFUSED for c in name)
    assert unicodedata.is_normalized("NFC", name)
    joined = os.path.normpath(os.path.join(ROOT, name))
    assert os.path.dirname(joined) == ROOT
    assert joined.startswith(ROOT + os.sep)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), TRICKY))
def test_any_string_gives_a_safe_name(announced: str) -> None:
    name = safe_name(announced)
    check_safe(name)
    assert safe_name(name) == name  # idempotent: a safe name is left as it is


@settings(max_examples=200, deadline=None)
@given(TRICKY, st.integers(min_value=0, max_value=40), st.sets(st.integers(0, 40)))
def test_unique_name_is_safe_and_takes_the_first_free(announced: str, copies: int,
                                                      freed: set[int]) -> None:
    name = safe_name(announced)
    assert unique_name(set(), name) == name
    made: list[str] = []  # name, name (2), name (3)...
    for _ in range(copies + 1):
        made.append(unique_name(set(made), name))
    assert len(set(made)) == len(made)
    for n in made:
        check_safe(n)
    # Free some of them: the first free one is given again.
    taken = {n for i, n in enumerate(made) if i not in freed}
    got = unique_name(taken, name)
    assert got not in taken
    check_safe(got)
    assert got == next((n for n in made if n not in taken), got)


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("Minutes: May?.txt", "Minutes: May?.txt"),
        ("a/b.txt", "a_b.txt"),
        ("a\\b.txt", "a_b.txt"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("/etc/passwd", "_etc_passwd"),
        (".", FALLBACK),
        ("..", FALLBACK),
        ("", FALLBACK),
        ("   ", FALLBACK),
        (".bashrc", "bashrc"),
        ("...hidden.txt", "hidden.txt"),
        ("a.txt. . ", "a.txt"),
        ("a\x00b\x1f\x7f\x9f.txt", "a_b___.txt"),
        ("invoice\u202efdp.exe", "invoice_fdp.exe"),
        ("x\u2067y\u200b.png", "x_y_.png"),
        ("line\u2028two", "line_two"),
        ("bad\ud800.txt", "bad_.txt"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("Nul.tar.gz", "_Nul.tar.gz"),
        ("COM1", "_COM1"),
        ("lpt9.doc", "_lpt9.doc"),
        ("COM\u00b9.x", "_COM\u00b9.x"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("e\u0301t\u00e9.txt", "\u00e9t\u00e9.txt"),
    ],
)
def test_examples(announced: str, expected: str) -> None:
    assert safe_name(announced) == expected


def test_long_names_keep_their_extension() -> None:
    name = safe_name("x" * 1000 + ".jpeg")
    assert name.endswith(".jpeg") and len(name.encode()) == NAME_MAX
    multi = safe_name("\u00e9" * 300 + ".pdf")  # 2 bytes a character: cut on a boundary
    assert multi.endswith(".pdf") and len(multi.encode()) <= NAME_MAX
    multi.encode("utf-8")
    # A "suffix" longer than an extension is part of the name and may be cut.
    assert len(safe_name("a." + "b" * 400).encode()) == NAME_MAX
    # A cut that would end on a dot or space drops them.
    assert not safe_name("y" * 254 + ". z").endswith((".", " "))


def test_unique_name_numbers_and_fits() -> None:
    listing = {"a.txt", "a (2).txt"}
    assert unique_name(listing, "b.txt") == "b.txt"
    assert unique_name(listing, "a.txt") == "a (3).txt"
    assert unique_name(["README"], "README") == "README (2)"
    assert unique_name(lambda n: n == "x.tar.gz", "x.tar.gz") == "x.tar (2).gz"
    long = safe_name("z" * 300 + ".png")
    numbered = unique_name({long}, long)
    assert numbered.endswith(" (2).png") and len(numbered.encode()) <= NAME_MAX


def test_unique_name_gives_up() -> None:
    with pytest.raises(FileExistsError):
        unique_name(lambda n: True, "a.txt")
    # ... but only after trying every number up to the limit.
    seen: list[str] = []
    with pytest.raises(FileExistsError):
        unique_name(lambda n: seen.append(n) is None, "a.txt")
    assert len(seen) == UNIQUE_LIMIT and seen[-1] == f"a ({UNIQUE_LIMIT}).txt"
