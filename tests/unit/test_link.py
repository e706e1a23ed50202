"""The link state machine: two Links wired back to back in memory, and every way it fails."""

from __future__ import annotations

import itertools
import random

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import codec, noise
from tazcom.common.errors import LocalProtocolError
from tazcom.common.keys import DOMAIN_NOISE_STATIC
from tazcom.common.limits import APP_BODY_MAX, PART_BODY_MAX
from tazcom.common.link import (
    Link,
    LinkClosed,
    LinkLimits,
    LinkVerified,
    MessageDropped,
    MessageReceived,
    State,
)
from tazcom.common.messages import MESSAGES, Hello, Ping, decode_message, encode_message
from tazcom.common.wire import FrameDecoder, encode_frame

from .examples import build


class Node:
    def __init__(self, seed: int, nickname: str) -> None:
        self.sk = nacl.signing.SigningKey(bytes([seed]) * 32)
        self.key = bytes(self.sk.verify_key)
        self.static, static_pub = noise.x25519_keypair()
        self.static_pub = static_pub
        self.sig = self.sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature
        self.nickname = nickname

    def link(self, initiator: bool, now: float = 0.0, **kw: object) -> Link:
        return Link(initiator=initiator, identity_key=self.key, static_private=self.static,
                    static_sig=self.sig, nickname=self.nickname, now=now, **kw)  # type: ignore


A, B, C = Node(1, "alice"), Node(2, "bob"), Node(3, "carol")


def pump(a: Link, b: Link, now: float = 1.0, chunk: int | None = None) -> tuple[list, list]:
    """Exchange bytes until both are quiet; ``chunk`` splits every write (1 = byte by byte)."""
    ev_a: list = []
    ev_b: list = []
    for _ in range(20):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        for data, dst, evs in ((da, b, ev_b), (db, a, ev_a)):
            step = chunk or max(1, len(data))
            for i in range(0, len(data), step):
                evs += dst.receive_data(data[i : i + step], now)
    return ev_a, ev_b


def connected(**kw: object) -> tuple[Link, Link]:
    a = A.link(True, expected_key=B.key, **kw)
    b = B.link(False, **kw)
    ev_a, ev_b = pump(a, b)
    assert [type(e) for e in ev_a] == [LinkVerified]
    assert [type(e) for e in ev_b] == [LinkVerified]
    return a, b


def test_handshake_proves_both_keys_and_exchanges_hello() -> None:
    a = A.link(True, expected_key=B.key)
    b = B.link(False)
    ev_a, ev_b = pump(a, b)
    [va], [vb] = ev_a, ev_b
    assert (va.key, va.nickname, va.version) == (B.key, "bob", 1)
    assert (vb.key, vb.nickname) == (A.key, "alice")
    assert va.handshake_hash == vb.handshake_hash
    assert a.is_open and b.is_open


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_any_tcp_split_works(chunk: int) -> None:
    a, b = A.link(True), B.link(False)
    _ev_a, _ev_b = pump(a, b, chunk=chunk)
    assert a.is_open and b.is_open
    a.send_app("chat", b"x" * 5000, 2)
    data = a.data_to_send()
    got = []
    for i in range(0, len(data), chunk):
        got += b.receive_data(data[i : i + chunk], 2)
    assert got == [MessageReceived(kind="chat", body=b"x" * 5000)]


def test_app_messages_both_ways_and_payloads_are_encrypted() -> None:
    a, b = connected()
    secret = b"meet me at the north gate at nine"
    a.send_app("chat", secret, 2)
    wire = a.data_to_send()
    assert secret not in wire
    assert b.receive_data(wire, 2) == [MessageReceived(kind="chat", body=secret)]
    b.send_app("chat", b"ok", 2)
    assert a.receive_data(b.data_to_send(), 2) == [MessageReceived(kind="chat", body=b"ok")]


def test_dialler_rejects_a_different_key_than_expected() -> None:
    a = A.link(True, expected_key=C.key)  # we dialled carol, bob answers
    b = B.link(False)
    ev_a, _ = pump(a, b)
    assert [(type(e), e.reason) for e in ev_a] == [(LinkClosed, "wrong_key")]
    assert a.closed


def test_impostor_replaying_a_proof_cannot_complete() -> None:
    # Mallory knows bob's key and one of bob's signed static keys, but not that static's
    # secret: she presents bob's proof with her own Noise static key.
    mallory = Node(9, "bob")
    mallory.key, mallory.sig = B.key, B.sig
    a = A.link(True, expected_key=B.key)
    m = mallory.link(False)
    ev_a, _ = pump(a, m)
    assert [(type(e), e.reason) for e in ev_a] == [(LinkClosed, "bad_signature")]
    # and the same when mallory dials alice claiming to be bob
    m2 = mallory.link(True)
    a2 = A.link(False)
    _, ev_a2 = pump(m2, a2)
    assert [(type(e), e.reason) for e in ev_a2] == [(LinkClosed, "bad_signature")]


def test_own_key_rejected() -> None:
    a1, a2 = A.link(True), A.link(False)
    ev1, ev2 = pump(a1, a2)
    assert any(isinstance(e, LinkClosed) and e.reason == "own_key" for e in ev1 + ev2)


def test_signature_from_another_identity_rejected() -> None:
    forger = Node(5, "forger")
    forger.sig = C.sk.sign(DOMAIN_NOISE_STATIC + forger.static_pub).signature  # carol's sig
    a, f = A.link(True), forger.link(False)
    ev_a, _ = pump(a, f)
    assert [e.reason for e in ev_a] == ["bad_signature"]


def test_replayed_handshake_message_is_rejected() -> None:
    a, b = A.link(True), B.link(False)
    msg1 = a.data_to_send()
    b.receive_data(msg1, 1)
    msg2 = b.data_to_send()
    a.receive_data(msg2, 1)
    msg3_and_hello = a.data_to_send()
    # a second responder fed the same message 1, then message 3 meant for b
    b2 = B.link(False)
    b2.receive_data(msg1, 1)
    b2.data_to_send()
    events = b2.receive_data(msg3_and_hello, 1)
    assert [type(e) for e in events] == [LinkClosed]
    assert events[0].reason in ("decrypt_failed", "bad_handshake")
    # replaying message 2 to the initiator after it completed is also refused
    events = a.receive_data(msg2, 1)
    assert [type(e) for e in events] == [LinkClosed]


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_handshake_messages_never_verify(stage: int, damage: str) -> None:
    a, b = A.link(True), B.link(False)
    events: list = []
    for step in range(6):
        src, dst = (a, b) if step % 2 == 0 else (b, a)
        data = src.data_to_send()
        if step == stage and data:
            n = int.from_bytes(data[:2], "big")
            frame = bytearray(data[: 2 + n])
            if damage == "flip":
                frame[2 + n // 2] ^= 1
            else:
                frame = frame[: 2 + n - 5]
                frame[:2] = (n - 5).to_bytes(2, "big")
            data = bytes(frame) + data[2 + n :]
        events += dst.receive_data(data, 1)
    assert not any(isinstance(e, LinkVerified) for e in events)
    assert any(isinstance(e, LinkClosed) for e in events) or not (a.is_open or b.is_open)


def test_truncated_frame_times_out_as_slow_sender() -> None:
    b = B.link(False, now=0)
    a = A.link(True, now=0)
    msg1 = a.data_to_send()
    assert b.receive_data(msg1[:10], 0.5) == []
    assert b.next_deadline() == pytest.approx(5.5)
    assert b.handle_timer(5.6)[0].reason == "slow_sender"


def test_garbage_and_huge_length_prefixes_close_cleanly() -> None:
    rng = random.Random(5)
    for _ in range(500):
        b = B.link(False)
        events = b.receive_data(rng.randbytes(rng.randint(1, 200)), 1)
        assert all(isinstance(e, LinkClosed) for e in events)
    b = B.link(False)
    events = b.receive_data(b"\xff\xff" + b"A" * 100, 1)
    assert [e.reason for e in events] == ["bad_frame"]
    b = B.link(False)
    assert [e.reason for e in b.receive_data(b"\x00\x00", 1)] == ["bad_frame"]


def test_fuzzed_transport_frames_only_close() -> None:
    rng = random.Random(11)
    for _ in range(200):
        a, b = connected()
        a.send_app("chat", b"hello", 2)
        data = bytearray(a.data_to_send())
        data[rng.randrange(2, len(data))] ^= 1 << rng.randrange(8)
        events = b.receive_data(bytes(data), 2)
        assert [type(e) for e in events] == [LinkClosed]
        assert events[0].reason == "decrypt_failed"
        # we told the peer why
        closing = a.receive_data(b.data_to_send(), 2)
        assert [e.reason for e in closing] == ["decrypt_failed"] and closing[0].by_peer


def test_handshake_timeout() -> None:
    a = A.link(True, now=100.0)
    assert a.next_deadline() == pytest.approx(110.0)
    assert a.handle_timer(105) == []
    [closed] = a.handle_timer(110.0)
    assert closed.reason == "handshake_timeout"
    assert a.next_deadline() is None


def test_keepalive_and_dead_peer() -> None:
    a, b = connected()
    assert a.next_deadline() == pytest.approx(1.0 + 3.0)
    assert a.handle_timer(4.0) == []
    ping = a.data_to_send()
    assert ping
    b.receive_data(ping, 4.0)
    a.receive_data(b.data_to_send(), 4.1)  # pong
    assert a.last_received == 4.1
    [dead] = a.handle_timer(4.1 + 9.0)
    assert dead.reason == "timeout"


def test_rate_limit_closes_the_link() -> None:
    limits = LinkLimits(frames_per_second=10, frame_burst=20)
    a, b = connected(limits=limits)
    for _ in range(30):
        a.send_app("chat", b"x", 2.0)
    events = b.receive_data(a.data_to_send(), 2.0)
    assert [type(e) for e in events][-1] is LinkClosed
    assert events[-1].reason == "rate_limited"
    assert sum(isinstance(e, MessageReceived) for e in events) <= 21


def test_rekey_by_frame_count_and_by_time() -> None:
    limits = LinkLimits(rekey_frames=5, rekey_interval=100.0)
    a, b = connected(limits=limits)
    before = None
    for i in range(20):
        a.send_app("chat", b"same", 2.0 + i)
        wire = a.data_to_send()
        got = b.receive_data(wire, 2.0 + i)
        assert got == [MessageReceived(kind="chat", body=b"same")]
        before = before or wire
    a2, b2 = connected(limits=LinkLimits(rekey_interval=60.0))
    a2.send_app("chat", b"x", 61.5)  # an hour has passed (60 s here): rekey first
    assert b2.receive_data(a2.data_to_send(), 61.5) == [MessageReceived(kind="chat",
                                                                          body=b"x")]
    b2.send_app("chat", b"y", 61.6)
    assert a2.receive_data(b2.data_to_send(), 61.6) == [MessageReceived(kind="chat",
                                                                          body=b"y")]


def test_unsupported_version_closes_on_both_sides() -> None:
    a = A.link(True, versions=(2, 3))
    b = B.link(False, versions=(1, 1))
    ev_a, ev_b = pump(a, b)
    reasons = [e.reason for e in ev_a + ev_b if isinstance(e, LinkClosed)]
    assert "unsupported_version" in reasons
    assert a.closed and b.closed


def test_version_negotiation_picks_highest_common() -> None:
    a = A.link(True, versions=(1, 3))
    b = B.link(False, versions=(2, 5))
    ev_a, ev_b = pump(a, b)
    assert ev_a[0].version == ev_b[0].version == 3


def test_unknown_message_type_is_dropped_not_fatal() -> None:
    a, b = connected()
    a._write(Hello(versions=(1, 1), nickname="x"), 2)  # a second hello: protocol violation
    events = b.receive_data(a.data_to_send(), 2)
    assert [e.reason for e in events] == ["bad_state"]
    a, b = connected()
    assert a._send is not None
    frame = a._send.encrypt_with_ad(b"", codec.pack({"t": "from_the_future", "v": 1}))
    events = b.receive_data(encode_frame(frame), 2)
    assert [type(e) for e in events] == [MessageDropped]
    assert b.is_open


def test_send_before_open_and_too_large() -> None:
    a = A.link(True)
    with pytest.raises(Exception) as info:
        a.send_app("chat", b"x", 0)
    assert getattr(info.value, "code", "") == "no_link"
    a, _ = connected()
    with pytest.raises(Exception) as info:
        a.send_app("chat", b"x" * 70000, 2)
    assert getattr(info.value, "code", "") == "too_large"


def test_close_tells_the_peer() -> None:
    a, b = connected()
    closed = a.close("shutdown", "bye", 2)
    assert closed.reason == "shutdown" and not closed.by_peer
    [ev] = b.receive_data(a.data_to_send(), 2)
    assert (ev.reason, ev.detail, ev.by_peer) == ("shutdown", "bye", True)


def test_frame_decoder() -> None:
    dec = FrameDecoder()
    frames = [b"a", b"bb" * 100, b"c" * 65535]
    wire = b"".join(encode_frame(f) for f in frames)
    out = []
    for i in range(0, len(wire), 777):
        out += dec.feed(wire[i : i + 777])
    assert out == frames and not dec.partial
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(b"x" * 65536)


@pytest.mark.parametrize("type_", sorted(MESSAGES))
def test_every_wire_message_round_trips(type_: str) -> None:
    msg = build(MESSAGES[type_])
    assert decode_message(encode_message(msg)) == msg


def test_state_names() -> None:
    assert {s.name for s in State} >= {"OPEN", "CLOSED", "EXPECT_HELLO"}


def test_app_fast_path_accepts_exactly_what_the_schema_accepts() -> None:
    from tazcom.common.errors import SchemaError
    from tazcom.common.messages import App, app_fields, decode_message_obj, encode_app

    rng = random.Random(2)
    values = [None, True, 0, 1, 2, -1, 1.0, "", "k", "k" * 32, "k" * 33, b"", b"b",
              b"x" * 65455, b"x" * 65456, [], {}]
    for _ in range(3000):
        obj = {"t": rng.choice(["app", "hello", 7]), "v": rng.choice([1, 1, 2, True, "1"]),
               "kind": rng.choice(values), "body": rng.choice(values)}
        for key in ("kind", "body", "v"):
            if rng.random() < 0.1:
                del obj[key]
        fast = app_fields(obj)
        try:
            msg = decode_message_obj(obj)
            slow = (msg.kind, msg.body) if isinstance(msg, App) else None
        except SchemaError:
            slow = None
        assert fast == slow, obj
        if fast is not None:
            assert codec.unpack(encode_app(*fast), 1 << 17) == {**obj, "v": 1}


def _send_plain(a: Link, obj: object) -> bytes:
    """``obj`` packed and encrypted as ``a``'s next transport frame: any shape at all."""
    assert a._send is not None
    return encode_frame(a._send.encrypt_with_ad(b"", codec.pack(obj)))


@pytest.mark.parametrize("obj", [
    {"t": ["app"], "v": 1}, {"t": {"t": "app"}, "v": 1}, {"t": [], "v": 1}, {"t": 5, "v": 1},
    {"t": None, "v": 1}, {"t": True, "v": 1}, {"t": 1.5, "v": 1}, {"t": b"app", "v": 1},
    {"v": 1}, {}, ["t", "app"], 5, "app", None, b"\x00", 2.5, [[[[]]]],
    {"t": "app", "v": 1, "kind": ["router"], "body": b""},
    {"t": "app", "v": 1, "kind": "router", "body": "text, not bytes"},
    {"t": "ping", "v": 1, "n": [1]}, {"t": "ping", "v": 1, "n": -1}, {"t": "ping", "v": 1},
    {"t": "ping", "v": 1, "n": 1.5}, {"t": "ping", "v": 1, "n": True},
    {"t": "ping", "v": 1, "n": float("nan")}, {"t": "ping", "v": 1, "n": 2**64 - 1},
    {"t": "hello", "v": 1, "versions": [1, 1], "nickname": {"x": 1}},
], ids=repr)
def test_link_messages_of_wrong_shapes_close_with_a_code(obj: object) -> None:
    """A verified peer's frame of any shape is refused with a code, told in ``close``."""
    a, b = connected()
    events = b.receive_data(_send_plain(a, obj), 2)
    assert [(type(e), e.reason) for e in events] == [(LinkClosed, "bad_message")]
    assert b.closed and not events[0].by_peer
    closing = a.receive_data(b.data_to_send(), 2)
    assert [(e.reason, e.by_peer) for e in closing] == [("bad_message", True)]


@pytest.mark.parametrize("obj", [
    {"t": "ping", "v": [1], "n": 1}, {"t": "ping", "v": True, "n": 1},
    {"t": "ping", "v": 1.0, "n": 1}, {"t": "ping", "n": 1}, {"t": "ping", "v": 2, "n": 1},
    {"t": "ping", "v": {"v": 1}, "n": 1}, {"t": "no_such_type", "v": 1},
    {"t": "x" * 5000, "v": 1}, {"t": "\x1b[2J", "v": 1},
], ids=repr)
def test_an_unknown_type_or_version_of_any_shape_is_dropped(obj: object) -> None:
    a, b = connected()
    events = b.receive_data(_send_plain(a, obj), 2)
    assert [type(e) for e in events] == [MessageDropped] and b.is_open
    assert events[0].reason in ("unknown_type", "bad_version")
    assert events[0].detail.isascii() and len(events[0].detail) < 120


def test_a_decoder_fault_still_closes_with_a_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a decoder ever raise something else on a shape it missed, the link closes
    with ``bad_message`` all the same (no traceback reaches the gateway)."""
    import tazcom.common.link as link_module

    def broken(obj: object) -> None:
        raise TypeError("unhashable type: 'list'")

    a, b = connected()
    monkeypatch.setattr(link_module, "decode_message_obj", broken)
    events = b.receive_data(_send_plain(a, {"t": "ping", "v": 1, "n": 1}), 2)
    assert [(e.reason, e.detail) for e in events] == [
        ("bad_message", "undecodable input (TypeError)")]


@pytest.mark.parametrize(("reason", "expected"), [
    ("goodbye", "goodbye"), ("made_up_but_well_formed", "made_up_but_well_formed"),
    ("\x1b[31mred", "bad_close"), ("Goodbye", "bad_close"), ("", "bad_close"),
    ("x" * 49, "bad_close"), (["goodbye"], "bad_close"), (None, "bad_close"),
    (7, "bad_close"), (b"goodbye", "bad_close"),
], ids=repr)
def test_a_peers_close_reason_passes_only_as_a_reject_code(reason: object,
                                                           expected: str) -> None:
    a, b = connected()
    events = b.receive_data(_send_plain(a, {"t": "close", "v": 1, "reason": reason,
                                            "message": "bye"}), 2)
    assert [(e.reason, e.by_peer) for e in events] == [(expected, True)] and b.closed
    assert b.data_to_send() == b""  # the peer closed: nothing to answer
    if expected == "bad_close":
        assert events[0].detail.isascii() and "\x1b" not in events[0].detail


def test_hello_carries_the_wall_clock_and_verified_reports_the_offset() -> None:
    """Each side's hello says its own clock; LinkVerified gives the peer's minus ours."""
    a = A.link(True, expected_key=B.key)
    b = B.link(False)
    ev_a: list = []
    ev_b: list = []
    wall_a, wall_b = 1.7e9, 1.7e9 - 3 * 86400  # b is three days behind
    for _ in range(10):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        ev_b += b.receive_data(da, 1.0, wall_b) if da else []
        ev_a += a.receive_data(db, 1.0, wall_a) if db else []
    [va], [vb] = ev_a, ev_b
    assert (va.peer_clock, va.our_clock) == (wall_b, wall_a)
    assert va.clock_offset == -3 * 86400 and vb.clock_offset == 3 * 86400


def test_a_hello_without_the_time_gives_no_offset() -> None:
    """An older node says no time (no ``wall``): no sample, the link works the same."""
    _a, b = connected()
    assert b.is_open
    x = A.link(True, expected_key=B.key)
    y = B.link(False)
    ev_x, _ = pump(x, y)
    assert ev_x[0].peer_clock is None and ev_x[0].clock_offset is None
    assert Hello(versions=(1, 1), nickname="n").clock_ms is None
    for bad in (float("nan"), float("inf"), -1.0, "now"):  # a shell's bad clock: not said
        z = A.link(True, expected_key=B.key)
        w = B.link(False)
        ev_z: list = []
        for _ in range(10):
            dz, dw = z.data_to_send(), w.data_to_send()
            if not dz and not dw:
                break
            if dz:
                w.receive_data(dz, 1.0, 1.7e9)
            if dw:
                ev_z += z.receive_data(dw, 1.0, bad)  # type: ignore[arg-type]
        assert ev_z[0].our_clock is None and ev_z[0].peer_clock == 1.7e9


def test_hello_clock_field_is_checked() -> None:
    """``clock_ms`` is an int in range or absent; anything else is the peer's bad message."""
    from tazcom.common.errors import SchemaError

    body = encode_message(Hello(versions=(1, 1), nickname="n", clock_ms=1_700_000_000_000))
    assert decode_message(body).clock_ms == 1_700_000_000_000  # type: ignore[attr-defined]
    for bad in (-1, 2**53, "x", 1.5e12):
        obj = codec.unpack(body, 1000)
        obj["clock_ms"] = bad
        with pytest.raises(SchemaError):
            decode_message(codec.pack(obj))


# -- parts: a bulk message in frames of at most 16 KiB ---------------------------------------


def _send_in_parts(a: Link, kind: str, body: bytes, cuts: list[int], now: float = 2) -> None:
    """``body`` as ``part`` messages cut at ``cuts`` (sorted offsets inside it)."""
    edges = [0, *cuts, len(body)]
    for i in range(len(edges) - 1):
        a.send_part(kind, body[edges[i] : edges[i + 1]], i == len(edges) - 2, now)


def test_a_message_in_parts_arrives_whole_once_the_last_part_does() -> None:
    a, b = connected()
    body = bytes(range(256)) * 192  # 48 KiB: a file chunk
    a.send_part("file", body[:PART_BODY_MAX], False, 2)
    a.send_part("file", body[PART_BODY_MAX : 2 * PART_BODY_MAX], False, 2)
    assert b.receive_data(a.data_to_send(), 2) == []  # held until the last
    a.send_part("file", body[2 * PART_BODY_MAX :], True, 2)
    wire = a.data_to_send()
    assert body[-100:] not in wire  # encrypted like every frame
    assert b.receive_data(wire, 2) == [MessageReceived(kind="file", body=body)]
    # the next message starts afresh; a lone ``last`` part is a message of one part
    a.send_part("file", b"one", True, 2)
    assert b.receive_data(a.data_to_send(), 2) == [MessageReceived(kind="file", body=b"one")]
    assert b._parts == [] and b._part_kind is None


def test_other_messages_go_between_the_parts_of_one() -> None:
    a, b = connected()
    a.send_part("file", b"x" * PART_BODY_MAX, False, 2)
    a.send_app("router", b"chat", 2)
    a._write(Ping(n=5), 2)
    a.send_part("file", b"y" * 10, True, 2)
    events = b.receive_data(a.data_to_send(), 2)
    assert events == [MessageReceived(kind="router", body=b"chat"),
                      MessageReceived(kind="file", body=b"x" * PART_BODY_MAX + b"y" * 10)]
    assert b.is_open and a.receive_data(b.data_to_send(), 2) == []  # the pong


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_cuts_interleavings_and_tcp_splits_give_the_same_messages(data: st.DataObject
                                                                       ) -> None:
    a, b = connected()
    expected: list[MessageReceived] = []
    for i in range(data.draw(st.integers(1, 4), "messages")):
        body = bytes([i]) * data.draw(st.integers(1, 4 * PART_BODY_MAX - 100), "size")
        n = len(body)
        need = [k * PART_BODY_MAX for k in range(1, (n - 1) // PART_BODY_MAX + 1)]
        extra = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5), "cuts")
        cuts = sorted({c for c in need + extra if 0 < c < n})
        cut_at, edges = [0, *cuts, n], [0]
        for j in range(1, len(cut_at) - 1):  # drop some cuts, none to a piece over the limit
            if cut_at[j + 1] - edges[-1] > PART_BODY_MAX or data.draw(st.booleans()):
                edges.append(cut_at[j])
        edges.append(n)
        assert all(0 < y - x <= PART_BODY_MAX for x, y in itertools.pairwise(edges))
        for j in range(len(edges) - 1):
            for k in range(data.draw(st.integers(0, 2), "chat between")):
                chat = f"chat {i} {j} {k}".encode()
                a.send_app("router", chat, 2)
                expected.append(MessageReceived(kind="router", body=chat))
            a.send_part("file", body[edges[j] : edges[j + 1]], j == len(edges) - 2, 2)
        expected.append(MessageReceived(kind="file", body=body))
    wire = a.data_to_send()
    splits = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8), "tcp"))
    got: list = []
    for x, y in itertools.pairwise([0, *splits, len(wire)]):
        got += b.receive_data(wire[x:y], 2)
    assert got == expected and b.is_open


def test_parts_over_the_app_limit_close_the_link_too_large() -> None:
    a, b = connected()
    for _ in range(APP_BODY_MAX // PART_BODY_MAX):
        a.send_part("file", b"z" * PART_BODY_MAX, False, 2)
    assert b.receive_data(a.data_to_send(), 2) == []
    assert b._parts_len == APP_BODY_MAX // PART_BODY_MAX * PART_BODY_MAX <= APP_BODY_MAX
    a.send_part("file", b"z" * (APP_BODY_MAX % PART_BODY_MAX + 1), True, 2)
    events = b.receive_data(a.data_to_send(), 2)
    assert [(type(e), e.reason) for e in events] == [(LinkClosed, "too_large")] and b.closed
    closing = a.receive_data(b.data_to_send(), 2)
    assert [(e.reason, e.by_peer) for e in closing] == [("too_large", True)]
    # exactly the limit passes
    a, b = connected()
    _send_in_parts(a, "file", b"k" * APP_BODY_MAX, [PART_BODY_MAX * k for k in range(1, 4)])
    assert b.receive_data(a.data_to_send(), 2) == [
        MessageReceived(kind="file", body=b"k" * APP_BODY_MAX)]


def test_a_part_of_another_kind_amid_a_message_closes_the_link_bad_state() -> None:
    a, b = connected()
    a.send_part("file", b"1", False, 2)
    with pytest.raises(LocalProtocolError) as info:  # our side never sends it
        a.send_part("router", b"2", True, 2)
    assert info.value.code == "bad_state"
    wire = a.data_to_send() + _send_plain(a, {"t": "part", "v": 1, "kind": "router",
                                              "body": b"2", "last": True})
    events = b.receive_data(wire, 2)
    assert [(type(e), e.reason) for e in events] == [(LinkClosed, "bad_state")]
    assert "router" in events[0].detail and b.closed


def test_a_part_before_hello_closes_the_link_bad_state(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Both sides' first transport message made a ``part`` instead of a ``hello``."""
    import tazcom.common.link as link_module

    part = codec.pack({"t": "part", "v": 1, "kind": "file", "body": b"x", "last": True})
    monkeypatch.setattr(link_module, "encode_message", lambda msg: part)
    a, b = A.link(True), B.link(False)
    _, ev_b = pump(a, b)
    assert [(type(e), e.reason) for e in ev_b] == [(LinkClosed, "bad_state")]
    assert a.closed and b.closed


@pytest.mark.parametrize("obj", [
    {"kind": "file", "body": b"x" * (PART_BODY_MAX + 1), "last": False},
    {"kind": "file", "body": b"", "last": True},
    {"kind": "file", "body": b"x", "last": 1},
    {"kind": "file", "body": b"x"},
    {"kind": "f" * 33, "body": b"x", "last": True},
    {"kind": "", "body": b"x", "last": True},
    {"kind": "file", "body": "x", "last": True},
    {"kind": ["file"], "body": b"x", "last": True},
], ids=repr)
def test_parts_of_wrong_shapes_close_with_bad_message(obj: dict) -> None:
    a, b = connected()
    events = b.receive_data(_send_plain(a, {"t": "part", "v": 1, **obj}), 2)
    assert [(type(e), e.reason) for e in events] == [(LinkClosed, "bad_message")]


def test_an_older_node_drops_parts_as_an_unknown_type(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """A node without ``part`` logs and drops one (it never said ``part/1``, so it is
    never sent one); a ``part`` of a later version is dropped the same way."""
    a, b = connected()
    a.send_part("file", b"x" * 100, True, 2)
    monkeypatch.delitem(MESSAGES, "part")
    events = b.receive_data(a.data_to_send(), 2)
    assert [(type(e), e.reason) for e in events] == [(MessageDropped, "unknown_type")]
    assert b.is_open
    monkeypatch.undo()
    events = b.receive_data(_send_plain(a, {"t": "part", "v": 2, "kind": "file",
                                            "body": b"x", "last": True}), 2)
    assert [(type(e), e.reason) for e in events] == [(MessageDropped, "bad_version")]


def test_send_part_refuses_like_send_app() -> None:
    a = A.link(True)
    with pytest.raises(LocalProtocolError) as info:
        a.send_part("file", b"x", True, 0)
    assert info.value.code == "no_link"
    a, _ = connected()
    for kind, body in (("file", b"x" * (PART_BODY_MAX + 1)), ("file", b""), ("", b"x")):
        with pytest.raises(LocalProtocolError) as info:
            a.send_part(kind, body, True, 2)
        assert info.value.code == "too_large"
    assert a.data_to_send() == b""


def test_the_frame_rate_limit_takes_a_saturated_gigabit_link_of_parts() -> None:
    """16 KiB parts at 1 Gbit/s are 7,630 frames/s: the default limit leaves room for that
    and as many frames of chat and control besides."""
    limits = LinkLimits()
    parts_per_second = 1e9 / 8 / PART_BODY_MAX
    assert limits.frames_per_second >= 2 * parts_per_second
    assert limits.frame_burst >= limits.frames_per_second
