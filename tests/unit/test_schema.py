"""The one schema mechanism: every family's records refuse to be built invalid, decode and
encode the same way, and the few rules of the mechanism itself (issue 11 §2)."""

from __future__ import annotations

import typing
from typing import Annotated, ClassVar

import pytest

from tazcom.common import announce, envelope, events, messages, routing, rpc, schema
from tazcom.common.errors import SchemaError
from tazcom.common.schema import (
    ArrayRecord,
    Clip,
    Code,
    Key,
    Len,
    Range,
    Record,
    Spread,
    record,
    registry,
)

from .examples import build, invalid_values

#: Every record of every family: events, requests and replies, link messages, router
#: messages, envelope bodies, the mDNS TXT record and announce.json.
FAMILIES: dict[str, list[type[Record]]] = {
    "event": list(events.EVENTS.values()),
    "request": list(rpc.REQUESTS.values()),
    "reply": sorted({r.REPLY for r in rpc.REQUESTS.values()}, key=lambda c: c.__name__),
    "link message": [*messages.MESSAGES.values(), messages.IdentityProof],
    "router message": list(routing.ROUTER_MESSAGES.values()),
    "envelope": [envelope.SignedFields, envelope.RoomBody, envelope.ReceiptBody,
                 envelope.ProfileBody, envelope.DmInner],
    "mdns": [announce.TxtRecord, announce.AnnounceFile],
}
ALL = [(f"{fam}:{cls.__name__}", cls) for fam, classes in FAMILIES.items() for cls in classes]


def clipped(tp: typing.Any) -> bool:
    return typing.get_origin(tp) is typing.Annotated and any(
        isinstance(c, Clip) for c in typing.get_args(tp)[1:])


@pytest.mark.parametrize(("name", "cls"), ALL, ids=[n for n, _ in ALL])
def test_an_invalid_record_cannot_be_built(name: str, cls: type[Record]) -> None:
    good = build(cls)
    values = {f.name: getattr(good, f.name) for f in schema.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in schema.fields(cls):
        for bad in invalid_values(hints[f.name]):
            if clipped(hints[f.name]) and isinstance(bad, str):
                continue  # text for people is cut, not refused (below)
            with pytest.raises(SchemaError):
                cls(**{**values, f.name: bad})


@pytest.mark.parametrize(("name", "cls"), ALL, ids=[n for n, _ in ALL])
def test_round_trip_through_the_wire_form(name: str, cls: type[Record]) -> None:
    rec = build(cls)
    if cls.ARRAY:
        assert cls.from_array(rec.to_array()) == rec  # type: ignore[attr-defined]
    else:
        assert cls.from_dict(rec.to_dict()) == rec


def test_text_for_people_is_cut_when_built_and_refused_when_decoded() -> None:
    ev = events.WireRejected(src="gateway", ts=1.0, address="x" * 100, reason="bad_frame",
                             detail="é" * 300)
    assert (len(ev.address), len(ev.detail)) == (64, 200)
    body = {**ev.to_dict(), "detail": "d" * 201}
    with pytest.raises(SchemaError):
        events.WireRejected.from_dict(body)
    assert schema.clip(events.Nickname, "ü" * 40) == "ü" * 16  # 32 bytes of UTF-8
    with pytest.raises(SchemaError):  # a reject code is not text for people: refused
        events.WireRejected(src="gateway", ts=1.0, address="", reason="r" * 49)


def test_one_registry_refuses_a_key_twice() -> None:
    table: dict[str, type] = {}
    declare = registry(table, "NAME", "V", V=1)

    @declare("a")
    class A(Record):
        NAME: ClassVar[str]
        x: int

    assert table == {"a": A} and (A.NAME, A.V) == ("a", 1) and A(x=1).x == 1
    with pytest.raises(TypeError, match="twice"):

        @declare("a", 2)
        class B(Record):
            y: int


@record
class Pair(ArrayRecord):
    TAG: ClassVar[int] = 5
    CODE: ClassVar[str] = "bad_pair"

    n: Annotated[int, Range(0, 9), Code("too_big")]
    rest: Annotated[tuple[bytes, ...], Len(0, 3), Spread()]


@record
class Renamed(Record):
    frm: Annotated[bytes, Key("from")]
    entries: tuple[tuple[int, bytes], ...] = ()


def test_array_records_tags_spread_codes_and_keys() -> None:
    p = Pair(3, [b"a", b"b"])
    assert p == Pair(n=3, rest=(b"a", b"b")) and p.to_array() == [5, 3, b"a", b"b"]
    assert Pair.from_array([5, 3]) == Pair(3, ())
    for bad, code in [([6, 3], "bad_pair"), ([5], "bad_pair"), ([5, 10], "too_big"),
                      ([5, 1, "x"], "bad_pair"), ([5, 1, b"", b"", b"", b""], "bad_pair")]:
        with pytest.raises(SchemaError) as info:
            Pair.from_array(bad)
        assert info.value.code == code, bad
    r = Renamed(frm=b"k", entries=[[1, b"x"]])
    assert r.entries == ((1, b"x"),) and r.to_dict() == {"from": b"k", "entries": ((1, b"x"),)}
    assert Renamed.from_dict({"from": b"k"}) == Renamed(frm=b"k")
    with pytest.raises(SchemaError, match=r"entries\[1\]"):
        Renamed(frm=b"k", entries=[(1, b"x"), (1, "y")])


def test_errors_name_the_nested_field() -> None:
    peer = build(events.PeerInfo).to_dict()
    with pytest.raises(SchemaError, match=r"^peer\.addresses\[0\]: "):
        events.PeerUpdated(src="discovery", ts=1.0, epoch=1, seq=1,
                           peer={**peer, "addresses": ["nope"]})


def test_records_are_frozen_and_replace_checks() -> None:
    ev = build(events.ChatStatus)
    with pytest.raises(AttributeError):
        ev.status = "sent"  # type: ignore[misc]
    assert ev.replace(status="failed").status == "failed"
    with pytest.raises(SchemaError):
        ev.replace(status="lost")
