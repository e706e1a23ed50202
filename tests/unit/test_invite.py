"""Invite codes (common/invite.py): what `tazcom invite` prints and `tazcom join` reads.
Every damaged form is refused with the reason a person needs; none is read as another
node's code."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import invite
from tazcom.common.invite import Invite, InviteError
from tazcom.common.staticpeers import StaticPeers

NOW = 1_800_000_000.0
KEY = bytes(range(32))


def code(*addresses: str, ttl: float = 3600) -> str:
    return invite.encode(invite.make(KEY, 4270, list(addresses), NOW, ttl))


def refusal(text: str, now: float = NOW) -> str:
    with pytest.raises(InviteError) as e:
        invite.decode(text, now)
    return e.value.code


def test_round_trip_carries_key_port_and_addresses() -> None:
    c = code("10.0.0.5:4270", "[2001:db8::7]:4270")
    assert c.startswith("TZ1") and len(c) <= 120
    inv = invite.decode(c, NOW)
    assert inv.key == KEY and inv.port == 4270 and inv.expires == NOW + 3600
    assert inv.addresses == ("10.0.0.5:4270", "[2001:db8::7]:4270")


def test_one_ipv4_address_makes_a_short_code() -> None:
    assert len(code("192.168.1.20:4270")) <= 84


def test_read_forgivingly_case_spaces_and_dashes() -> None:
    c = code("10.0.0.5:4270")
    spaced = "-".join(c[i:i + 5] for i in range(0, len(c), 5)).lower()
    assert invite.decode(f"  {spaced}\n", NOW).key == KEY


def test_link_local_and_loopback_are_left_out() -> None:
    inv = invite.make(KEY, 1, ["[fe80::1%eth0]:1", "127.0.0.1:1", "10.1.1.1:1"], NOW)
    assert inv.hosts == ("10.1.1.1",)
    # loopback only when nothing else is there (a node on lo, as in tests)
    assert invite.make(KEY, 1, ["127.0.0.1:1"], NOW).hosts == ("127.0.0.1",)
    with pytest.raises(ValueError, match="no address"):
        invite.make(KEY, 1, ["[fe80::1%eth0]:1"], NOW)


@pytest.mark.parametrize("text", ["", "hello", "TZ", "tz1!!!!", "TZ1" + "8" * 80,
                                  "https://example.org/TZ1AAAA", "x" * 2000])
def test_garbage_is_not_an_invite(text: str) -> None:
    assert refusal(text) == "not_invite"


def test_every_truncation_says_truncated() -> None:
    c = code("10.0.0.5:4270", "[2001:db8::7]:4270")
    for n in range(3, len(c)):
        assert refusal(c[:n]) in ("truncated", "not_invite"), n
    assert all(refusal(c[:n]) == "truncated" for n in range(4, len(c)))


def test_a_changed_character_is_damage() -> None:
    c = code("10.0.0.5:4270")
    original = invite.decode(c, NOW)
    for i in range(3, len(c)):
        changed = c[:i] + ("B" if c[i] != "B" else "C") + c[i + 1:]
        try:  # the last character carries unused bits: the same code, or refused
            assert invite.decode(changed, NOW) == original and i == len(c) - 1, i
        except InviteError as e:
            assert e.code in ("damaged", "truncated", "bad_version"), i


def test_expired() -> None:
    c = code("10.0.0.5:4270", ttl=60)
    assert invite.decode(c, NOW + 59).key == KEY
    assert refusal(c, NOW + 61) == "expired"


def test_other_versions_are_named() -> None:
    assert refusal("TZ2AAAAAAAA") == "bad_version"


def test_ttl_bounds() -> None:
    with pytest.raises(ValueError):
        invite.make(KEY, 1, ["10.0.0.1:1"], NOW, ttl=10)
    with pytest.raises(ValueError):
        invite.make(KEY, 1, ["10.0.0.1:1"], NOW, ttl=invite.MAX_TTL + 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 65535),
       st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
           lambda ip: not ip.is_link_local and not ip.is_loopback), min_size=1, max_size=4),
       st.integers(int(NOW), 2**32 - 1))
def test_any_invite_round_trips(key: bytes, port: int, ips: list, expires: int) -> None:
    inv = Invite(key=key, expires=expires, port=port, hosts=tuple(str(ip) for ip in ips))
    assert invite.decode(invite.encode(inv), NOW) == inv


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_no_text_crashes_the_reader(text: str) -> None:
    with contextlib.suppress(InviteError):
        invite.decode(text, NOW)


def test_static_peers_try_an_invites_addresses_one_at_a_time() -> None:
    sp = StaticPeers()
    key = os.urandom(32)
    sp.join(key, ["10.0.0.5:4270", "[2001:db8::7]:4270"])
    assert sp.due(0.0, set()) == ["10.0.0.5:4270"]
    assert sp.due(0.0, set()) == []  # the first is still dialling
    sp.failed("10.0.0.5:4270", 0.0, "refused")
    assert sp.due(0.0, set()) == ["[2001:db8::7]:4270"]
    sp.verified("[2001:db8::7]:4270", 3, key, "bob")
    assert sp.due(100.0, {key}) == []
    assert sp.state("10.0.0.5:4270", {key}) == "linked"


def test_static_peers_keep_an_invites_key_across_a_restart() -> None:
    sp = StaticPeers()
    key = os.urandom(32)
    sp.add("10.0.0.9:4270")
    sp.join(key, ["10.0.0.5:4270"])
    saved = sp.added()
    assert saved == [{"address": "10.0.0.5:4270", "key": key.hex()}, "10.0.0.9:4270"]
    again = StaticPeers()
    assert again.load_added([*saved, {"address": "x", "key": "00"}, 7]) != []
    assert again.entries["10.0.0.5:4270"].expect == key
    assert again.entries["10.0.0.5:4270"].source == "invite"
    assert again.entries["10.0.0.9:4270"].expect is None
