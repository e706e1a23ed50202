"""Peer exchange (common/peerexchange.py): records are checked (signature, origin, size)
before anything in them is believed, and what they name is only ever a candidate to dial,
with its key expected; a peer whose candidates keep failing is not listened to."""

from __future__ import annotations

import ipaddress

import nacl.signing
import pytest

from tazcom.common import codec, peerexchange
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.keys import DOMAIN_PX
from tazcom.common.peerexchange import MAX_ENTRIES, PeerExchange, Record

LAN = ipaddress.ip_network("10.0.0.0/24")


def signer() -> tuple[nacl.signing.SigningKey, bytes]:
    sk = nacl.signing.SigningKey.generate()
    return sk, bytes(sk.verify_key)


def body(sk: nacl.signing.SigningKey, rec: Record, *, raw: bytes | None = None) -> bytes:
    raw = raw if raw is not None else rec.pack()
    return codec.pack([raw, sk.sign(DOMAIN_PX + raw).signature])


def local(address: str) -> bool:
    host = peerexchange.host_of(address)
    return ":" not in host and ipaddress.ip_address(host) in LAN


def core(key: bytes = b"\x01" * 32) -> PeerExchange:
    px = PeerExchange(is_local=local)
    px.key = key
    px.own = ("10.0.0.1:4270",)
    return px


def test_a_signed_record_round_trips() -> None:
    sk, pk = signer()
    rec = Record(pk, 5, ("10.0.0.2:4270", "[fe80::2%tz0]:4270"), ((b"\x07" * 32, "10.0.0.7:1"),))
    assert peerexchange.decode(body(sk, rec), pk) == rec


@pytest.mark.parametrize("case", ["other_origin", "bad_sig", "too_many", "garbage", "version",
                                  "short_key"])
def test_bad_records_are_refused_with_a_code(case: str) -> None:
    sk, pk = signer()
    other, opk = signer()
    entries = ((b"\x07" * 32, "10.0.0.7:1"),)
    rec = Record(pk, 5, (), entries)
    data = {
        "other_origin": body(other, Record(opk, 5, (), entries)),
        "bad_sig": codec.pack([rec.pack(), b"\x00" * 64]),
        "too_many": body(sk, Record(pk, 5, (), tuple(
            (bytes([i % 256, i // 256]) * 16, f"10.0.0.{i % 250 + 1}:1")
            for i in range(MAX_ENTRIES + 1)))),
        "garbage": b"\xc1\x00",
        "version": body(sk, rec, raw=codec.pack([2, pk, 5, [], []])),
        "short_key": body(sk, rec, raw=codec.pack([1, pk, 5, [], [[b"\x07" * 31, "x"]]])),
    }[case]
    with pytest.raises(RemoteProtocolError) as e:
        peerexchange.decode(data, pk)
    assert e.value.code in {"bad_message", "bad_signature", "too_many", "bad_encoding",
                            "bad_version"}


def test_a_huge_body_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        peerexchange.decode(b"\x00" * (peerexchange.MAX_BODY + 1), b"\x01" * 32)
    assert e.value.code == "too_large"


@pytest.mark.parametrize("text,ok", [
    ("10.0.0.7:4270", "10.0.0.7:4270"), ("[2001:db8::1]:1", "[2001:db8::1]:1"),
    ("[fe80::1%tz0]:9", "[fe80::1%tz0]:9"), ("10.0.0.7", None), ("10.0.0.7:0", None),
    ("[10.0.0.7]:1", None), ("2001:db8::1:1", None), ("224.0.0.251:5353", None),
    ("0.0.0.0:1", None), ("host.example:1", None), (7, None), ("1" * 100, None)])
def test_addresses_are_parsed_strictly(text: object, ok: str | None) -> None:
    assert peerexchange.parse_address(text) == ok


def test_only_local_candidates_are_dialled_one_per_key() -> None:
    px = core()
    origin = b"\x02" * 32
    k1, k2 = b"\x03" * 32, b"\x04" * 32
    rec = Record(origin, 1, (), ((k1, "10.0.0.3:1"), (k1, "10.0.0.33:1"),
                                 (k2, "192.0.2.4:1"), (px.key, "10.0.0.1:4270"),
                                 (origin, "10.0.0.2:1")))
    assert px.receive(rec, 0.0) is None
    due = px.due(0.0, set(), set())
    assert [(d.key, d.address) for d in due] == [(k1, "10.0.0.3:1")]
    assert px.due(0.0, set(), set()) == []  # its other address waits for this one
    px.dial_done(k1, "10.0.0.3:1", False, 1.0)
    assert [d.address for d in px.due(1.0, set(), set())] == ["10.0.0.33:1"]


def test_routed_candidates_only_when_configured() -> None:
    px = PeerExchange(is_local=local, routed=True)
    px.key = b"\x01" * 32
    px.receive(Record(b"\x02" * 32, 1, (), ((b"\x04" * 32, "192.0.2.4:1"),)), 0.0)
    assert [d.address for d in px.due(0.0, set(), set())] == ["192.0.2.4:1"]


def test_linked_or_busy_keys_are_not_dialled_and_the_higher_key_waits() -> None:
    px = core()
    k = b"\x03" * 32
    px.receive(Record(b"\x02" * 32, 1, (), ((k, "10.0.0.3:1"),)), 0.0, lambda _k: 1.0)
    assert px.due(0.5, set(), set()) == []
    assert px.due(1.0, {k}, set()) == []
    assert px.due(1.0, set(), {k}) == []
    assert len(px.due(1.0, set(), set())) == 1


def test_old_records_are_not_taken_the_same_one_again_is_quiet() -> None:
    px = core()
    origin = b"\x02" * 32
    rec = Record(origin, 10, (), ((b"\x03" * 32, "10.0.0.3:1"),))
    assert px.receive(rec, 0.0) is None
    assert px.receive(rec, 0.0) is None
    assert "older" in (px.receive(Record(origin, 9, (), ()), 0.0) or "")
    # a newer record without the entry withdraws it
    assert px.receive(Record(origin, 11, (), ()), 0.0) is None
    assert px.candidates == {}


def test_a_liar_is_ignored_after_its_candidates_fail() -> None:
    px = core()
    liar = b"\x09" * 32
    said = None
    for i in range(peerexchange.MAX_FAILURES):
        px.receive(Record(liar, i + 1, (), ((bytes([i + 20]) * 32, f"10.0.0.{i + 20}:1"),)),
                   float(i))
        for d in px.due(float(i), set(), set()):
            said = px.dial_done(d.key, d.address, False, float(i)) or said
    assert said is not None and "ignored" in said
    why = px.receive(Record(liar, 100, (), ((b"\x55" * 32, "10.0.0.55:1"),)), 10.0)
    assert why is not None and "ignored" in why
    assert px.due(10.0, set(), set()) == []


def test_dials_in_flight_are_bounded() -> None:
    px = core()
    entries = tuple((bytes([i + 10]) * 32, f"10.0.0.{i + 10}:1") for i in range(20))
    px.receive(Record(b"\x02" * 32, 1, (), entries), 0.0)
    assert len(px.due(0.0, set(), set())) == peerexchange.MAX_DIALS


def test_neighbours_are_listed_at_proven_addresses_only() -> None:
    px = core()
    b, c, d = b"\x0b" * 32, b"\x0c" * 32, b"\x0d" * 32
    # c's own record says where it listens; d never said
    px.receive(Record(c, 1, ("10.0.0.12:4270",), ()), 0.0)
    entries = px.neighbours([(b, "out", "10.0.0.11:4270"), (c, "in", "10.0.0.12:50001"),
                             (d, "in", "10.0.0.13:50002")])
    assert entries == ((b, "10.0.0.11:4270"), (c, "10.0.0.12:4270"))


def test_a_link_local_entry_takes_the_scope_of_the_link_it_came_over() -> None:
    px = PeerExchange(is_local=lambda _a: True)
    px.key = b"\x01" * 32
    k = b"\x03" * 32
    px.receive(Record(b"\x02" * 32, 1, (), ((k, "[fe80::5%wlan0]:4270"),)), 0.0, scope="tz0")
    assert [d.address for d in px.due(0.0, set(), set())] == ["[fe80::5%tz0]:4270"]
    other = PeerExchange(is_local=lambda _a: True)
    other.key = b"\x01" * 32
    other.receive(Record(b"\x02" * 32, 1, (), ((k, "[fe80::5]:4270"),)), 0.0, scope=None)
    assert other.candidates == {}, "over an IPv4 link, a link-local address means nothing"


def test_a_clock_stepped_back_neither_stalls_our_records_nor_theirs() -> None:
    px = core()
    first = px.record((), 2000.0)
    assert px.record((), 1000.0).ts_ms == first.ts_ms + 1, "ours keep growing"
    origin = b"\x02" * 32
    assert px.receive(Record(origin, 5_000_000, (), ()), 0.0) is None
    assert "older" in (px.receive(Record(origin, 1_000, (), ()), 0.0) or "")
    px.new_link(origin)  # its link came back: it may have restarted with an earlier clock
    assert px.receive(Record(origin, 1_000, (), ((b"\x03" * 32, "10.0.0.3:1"),)), 0.0) is None
    assert px.candidates
