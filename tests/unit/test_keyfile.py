from __future__ import annotations

import pytest

from tazcom.common.errors import KeyFileError
from tazcom.common.keyfile import Secrets, format_keyfile, parse_keyfile
from tazcom.common.keys import NodeKey, fingerprint, safety_number

S = Secrets(ed25519_seed=b"\x01" * 32, x25519_secret=b"\x02" * 32)


def test_round_trip() -> None:
    assert parse_keyfile(format_keyfile(S).encode()) == S


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[: len(t) // 2],
        lambda t: t.replace("0101", "0102", 1),
        lambda t: t.replace("tazcom-identity 1", "tazcom-identity 2"),
        lambda t: t.replace("check", "chekc"),
        lambda t: t + "ed25519-seed " + "00" * 32 + "\n",
        lambda t: t.upper(),
        lambda t: "",
        lambda t: "\x00\xff" * 10,
    ],
)
def test_corrupt_files_are_refused(mutate) -> None:
    with pytest.raises(KeyFileError):
        parse_keyfile(mutate(format_keyfile(S)).encode("latin-1"))


def test_binary_and_huge_refused() -> None:
    with pytest.raises(KeyFileError):
        parse_keyfile(b"\xff" * 100)
    with pytest.raises(KeyFileError):
        parse_keyfile(b"a" * 10000)


def test_fingerprint_and_safety_number() -> None:
    a, b = b"\x05" * 32, b"\x06" * 32
    fp = fingerprint(a)
    assert len(fp) == 19 and fp.count("-") == 3
    assert NodeKey(a).fingerprint == fp
    sn = safety_number(a, b)
    assert sn == safety_number(b, a)
    assert len(sn.replace(" ", "")) == 60 and sn.replace(" ", "").isdigit()
    assert safety_number(a, b) != safety_number(a, b"\x07" * 32)
