"""The signed mDNS TXT record: encode, validate, and every way it can be junk."""

from __future__ import annotations

import nacl.signing
import pytest

from tazcom.common import announce
from tazcom.common.errors import RemoteProtocolError

SK = nacl.signing.SigningKey(b"\x07" * 32)
KEY = bytes(SK.verify_key)
NAME = f"{announce.instance_label(KEY)}._tazcom._tcp.local."


def signed(sk: nacl.signing.SigningKey = SK, **over: bytes) -> dict[bytes, bytes | None]:
    key = bytes(sk.verify_key)
    txt = announce.unsigned_txt(key=key, port=4242, nickname="alice", now=1_700_000_000)
    txt.update({k.encode(): v for k, v in over.items() if k != "s"})
    txt[b"s"] = sk.sign(announce.signed_bytes(txt)).signature.hex().encode()
    if "s" in over:
        txt[b"s"] = over["s"]
    return dict(txt)


def check(props: dict[bytes, bytes | None], *, name: str = NAME, port: int | None = 4242,
          addresses: list[str] | None = None) -> announce.Announcement:
    return announce.validate(name=name, properties=props, srv_port=port,
                             addresses=["10.0.0.5"] if addresses is None else addresses)


def test_valid_record() -> None:
    ann = check(signed())
    assert ann.key.raw == KEY
    assert (ann.port, ann.nickname, ann.signed_at) == (4242, "alice", 1_700_000_000)
    assert ann.endpoints == ("10.0.0.5:4242",)


def test_unknown_entries_are_signed_and_tolerated() -> None:
    ann = check(signed(x=b"future"))
    assert ann.nickname == "alice"
    props = signed(x=b"future")
    props[b"x"] = b"tampered"
    with pytest.raises(RemoteProtocolError) as info:
        check(props)
    assert info.value.code == "bad_signature"


def _without(key: bytes) -> dict[bytes, bytes | None]:
    props = signed()
    del props[key]
    return props


OTHER = nacl.signing.SigningKey(b"\x09" * 32)


@pytest.mark.parametrize(
    ("props", "kwargs", "code"),
    [
        ({}, {}, "bad_txt"),
        (_without(b"tv"), {}, "bad_txt"),
        (signed(tv=b"2"), {}, "bad_txt"),
        (_without(b"k"), {}, "bad_length"),
        (signed(k=b"ab" * 31), {}, "bad_length"),
        (signed(k=b"zz" * 32), {}, "bad_txt"),
        (signed(k=KEY.hex().upper().encode()), {}, "bad_txt"),
        (_without(b"s"), {}, "bad_length"),
        (signed(s=b"00" * 64), {}, "bad_signature"),
        (signed(s=b"0" * 127), {}, "bad_length"),
        (signed(p=b"0"), {}, "bad_txt"),
        (signed(p=b"65536"), {"port": 65536}, "bad_txt"),
        (signed(p=b"-1"), {}, "bad_txt"),
        (signed(p=b"12x"), {}, "bad_txt"),
        (signed(), {"port": 999}, "port_mismatch"),
        (signed(t=b"soon"), {}, "bad_txt"),
        (_without(b"n"), {}, "bad_length"),
        (signed(n=b"x" * 33), {}, "bad_length"),
        (signed(n=b"\xff\xfe"), {}, "bad_txt"),
        (signed(n=b"bell\x07"), {}, "bad_txt"),
        (signed(), {"name": "tz-0000000000000000._tazcom._tcp.local."}, "bad_name"),
        (signed(OTHER), {}, "bad_name"),
        (signed(), {"addresses": []}, "no_address"),
        (signed(), {"addresses": ["fe80::1"]}, "no_address"),
        ({**signed(), b"z": None}, {}, "bad_txt"),
        ({bytes([i]): b"1" for i in range(20)}, {}, "bad_txt"),
    ],
)
def test_junk_records(props: dict[bytes, bytes | None], kwargs: dict, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check(props, **kwargs)
    assert info.value.code == code


def test_someone_elses_signature_over_our_key_fails() -> None:
    # An impostor signs a TXT claiming KEY with its own key: the signature cannot verify.
    props = signed(OTHER, k=KEY.hex().encode())
    with pytest.raises(RemoteProtocolError) as info:
        check(props)
    assert info.value.code == "bad_signature"


def test_canonical_is_order_independent() -> None:
    a = {b"b": b"2", b"a": b"1", b"s": b"ignored"}
    b = {b"a": b"1", b"b": b"2"}
    assert announce.canonical(a) == announce.canonical(b) == b"\x01a\x011\x01b\x012"
