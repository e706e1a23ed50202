"""Invite codes (issue 14): on loopback, with mDNS unable to see across (each node browses a
service type of its own, as if multicast were filtered). `tazcom join CODE` links to the
node of the code and pins its key; a code whose key is not the one at its addresses is
refused with the reason; garbage, truncated and expired codes are refused before anything
is dialled."""

from __future__ import annotations

import json
import time

from tazcom.common import invite, rpc
from tests.harness import request, wait_for


def _config(kind: str) -> str:
    return f'[discovery]\nservice_type = "_tazcom{kind}._tcp.local."\n'


def test_join_links_and_pins_a_wrong_key_is_refused(make_node) -> None:
    a = make_node("inv-a", config=_config("ia")).start()
    b = make_node("inv-b", config=_config("ib")).start()
    c = make_node("inv-c", config=_config("ic")).start()
    for n in (a, b, c):
        n.wait_up()
    row = a.cli_json("invite")[0]
    assert row["code"].startswith("TZ1") and row["key"] == a.key
    assert row["expires"] > time.time() + 23 * 3600
    people = a.cli("invite", "--qr").stdout
    assert row["code"][:20] in people.replace("-", "") and "▀" in people  # the QR code
    t0 = time.monotonic()
    joined = b.cli_json("join", row["code"])[0]
    assert joined["result"] == "joined" and joined["nickname"] == "inv-a", joined
    assert time.monotonic() - t0 < 10
    b.wait_peer("inv-a", ("verified",), timeout=5)
    a.wait_peer("inv-b", ("verified",), timeout=5)
    pins = json.loads((b.home / "pins.json").read_text())
    assert a.key in pins["trusted"], "the code's key is pinned"
    saved = json.loads((b.home / "static_peers.json").read_text())
    assert saved == [{"address": joined["address"], "key": a.key}]
    # a code with a's addresses but another key: what a spoofed code, or another node
    # now at that address, looks like; refused with the reason, nothing linked
    inv = invite.decode(row["code"], time.time())
    forged = invite.encode(invite.Invite(key=bytes.fromhex(b.key), expires=inv.expires,
                                         port=inv.port, hosts=inv.hosts))
    out = c.cli("join", forged, check=False, timeout=30)
    assert out.returncode == 1, out
    assert "refused" in out.stderr and "wrong_key" in out.stderr, out.stderr
    assert invite.decode(forged, time.time()).fingerprint in out.stderr
    assert "inv-a" not in {n for n, p in c.peers().items() if p["state"] == "verified"}
    assert c.cli_json("connect", "--list") == [], "the refused code's addresses are gone"
    # the real code works for c too: one code, several nodes
    assert c.cli_json("join", row["code"])[0]["result"] == "joined"
    c.wait_peer("inv-a", ("verified",), timeout=5)


def test_bad_codes_are_refused_before_dialling(make_node) -> None:
    a = make_node("inv-d", config=_config("id")).start().wait_up()
    code = a.cli_json("invite", "--ttl", "60")[0]["code"]
    inv = invite.decode(code, time.time())
    expired = invite.encode(invite.Invite(key=inv.key, expires=int(time.time()) - 5,
                                          port=inv.port, hosts=inv.hosts))
    b = make_node("inv-e", config=_config("ie")).start().wait_up()
    for text, why in ((code[: len(code) // 2], "truncated"), ("hello world", "not_invite"),
                      (expired, "expired"),
                      (code[:30] + ("A" if code[30] != "A" else "B") + code[31:], "damaged"),
                      ("", "not_invite")):
        out = b.cli("join", text, check=False)
        assert out.returncode == 2 and f"({why})" in out.stderr, (why, out.stderr)
    own = a.cli("join", code, check=False)
    assert own.returncode == 1 and "own invite" in own.stderr, own.stderr
    assert b.cli_json("connect", "--list") == []
    wait_for(lambda: a.tracebacks() == [] and b.tracebacks() == [], 1, "no tracebacks")


def test_one_invite_is_enough_peer_exchange_links_the_rest(make_node) -> None:
    """b and c each join a with a's code; neither can find the other by mDNS. a tells
    each, signed, where the other listens: they link within seconds."""
    a = make_node("px-a", config=_config("pa")).start()
    b = make_node("px-b", config=_config("pb")).start()
    c = make_node("px-c", config=_config("pc")).start()
    for n in (a, b, c):
        n.wait_up()
    code = a.cli_json("invite")[0]["code"]
    assert b.cli_json("join", code)[0]["result"] == "joined"
    t0 = time.monotonic()
    assert c.cli_json("join", code)[0]["result"] == "joined"
    b.wait_peer("px-c", ("verified",), timeout=10)
    c.wait_peer("px-b", ("verified",), timeout=10)
    took = time.monotonic() - t0
    assert took < 10, took
    # a row shows only an address a verified link used (the dialled side's), nothing
    # that a peer only claimed
    for node, other in ((b, c), (c, b)):
        used = {li.address for li in request(node, "gateway", rpc.GetLinks()).links
                if li.state == "open" and li.key == other.key and li.direction == "out"}
        row = next(p for p in node.peers().values() if p["key"] == other.key)
        assert set(row["addresses"]) <= used, (row, used)
