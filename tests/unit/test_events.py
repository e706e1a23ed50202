"""Every bus event: round trip, and rejection of every malformed shape."""

from __future__ import annotations

import contextlib
import typing

import pytest

from tazcom.common import codec
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.events import (
    EVENTS,
    Event,
    PeerDiscovered,
    decode_event,
    encode_event,
    event_as_json,
)
from tazcom.common.schema import fields as schema_fields

from .examples import build, invalid_values

ALL = sorted(EVENTS.items())


@pytest.mark.parametrize(("topic", "cls"), ALL, ids=[t for t, _ in ALL])
def test_round_trip(topic: str, cls: type) -> None:
    ev = build(cls)
    frames = encode_event(ev)
    assert frames[0] == topic.encode()
    assert decode_event(frames) == ev
    assert event_as_json(ev)["topic"] == topic
    assert event_as_json(ev)["v"] == cls.V


@pytest.mark.parametrize(("topic", "cls"), ALL, ids=[t for t, _ in ALL])
def test_every_field_rejects_bad_values(topic: str, cls: type) -> None:
    ev = build(cls)
    body = codec.unpack(encode_event(ev)[1], 1 << 20)
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in schema_fields(cls):
        for bad in invalid_values(hints[f.name]):
            broken = {**body, f.name: bad}
            with pytest.raises(RemoteProtocolError):
                decode_event([topic.encode(), codec.pack(broken)])
        if f.required:
            missing = {k: v for k, v in body.items() if k != f.name}
            with pytest.raises(RemoteProtocolError, match="missing"):
                decode_event([topic.encode(), codec.pack(missing)])


def test_unknown_fields_are_ignored() -> None:
    ev = build(PeerDiscovered)
    body = codec.unpack(encode_event(ev)[1], 1 << 20)
    body["from_the_future"] = [1, 2, 3]
    body["peer"]["also_new"] = "x"
    assert decode_event([b"peer.discovered", codec.pack(body)]) == ev


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"peer.discovered"], "bad_frames"),
        ([b"a", b"b", b"c"], "bad_frames"),
        ([b"no.such.topic", codec.pack({"v": 1})], "unknown_topic"),
        ([b"\xff\xfe", codec.pack({"v": 1})], "bad_topic"),
        ([b"x" * 65, codec.pack({"v": 1})], "bad_topic"),
        ([b"peer.discovered", b"\xc1"], "bad_encoding"),
        ([b"peer.discovered", b""], "bad_encoding"),
        ([b"peer.discovered", codec.pack([1, 2])], "bad_message"),
        ([b"peer.discovered", codec.pack({"v": 2})], "bad_version"),
        ([b"peer.discovered", codec.pack({"v": True})], "bad_version"),
        ([b"peer.discovered", codec.pack({"v": 1}) + b"junk"], "bad_encoding"),
        ([b"service.heartbeat", b"\x81" + b"\xa1v" + b"\x01" * 10], "bad_encoding"),
    ],
)
def test_malformed_frames(frames: list[bytes], code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_event(frames)
    assert info.value.code == code


def test_oversized_event_rejected_before_parsing() -> None:
    ev = build(PeerDiscovered)
    frames = encode_event(ev)
    with pytest.raises(RemoteProtocolError) as info:
        decode_event(frames, max_size=len(frames[1]) - 1)
    assert info.value.code == "too_large"


def test_container_bombs_rejected() -> None:
    # A 5-byte array header announcing 2^32-1 items must not allocate them.
    bomb = b"\xdd\xff\xff\xff\xff"
    with pytest.raises(RemoteProtocolError):
        decode_event([b"peer.discovered", bomb])
    deep = b"\x91" * 100000 + b"\x01"
    with pytest.raises(RemoteProtocolError):
        decode_event([b"peer.discovered", deep], max_size=1 << 20)


def test_fuzzed_bodies_only_raise_protocol_errors() -> None:
    import random

    rng = random.Random(7)
    good = encode_event(build(PeerDiscovered))[1]
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randint(0, len(data))
        with contextlib.suppress(RemoteProtocolError):
            decode_event([b"peer.discovered", bytes(data[:cut])])


@pytest.mark.parametrize(("topic", "cls"), ALL, ids=[t for t, _ in ALL])
def test_no_event_redefines_the_envelope_fields(topic: str, cls: type) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    base = typing.get_type_hints(Event, include_extras=True)
    assert hints["ts"] == base["ts"] and hints["src"] == base["src"]
