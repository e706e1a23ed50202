"""Encrypted links between real nodes: verification, messages, pins, restarts, liveness."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tazcom.common import rpc
from tazcom.common.errors import RequestFailed
from tests.harness import BusTap, Node, request, wait_for

VERIFY_LIMIT = 2.0


def send(a: Node, b: Node, body: bytes, kind: str = "test") -> None:
    request(a, "gateway", rpc.SendToPeer(key=b.key, kind=kind, body=body))


def test_nodes_verify_within_2s_of_discovery_and_exchange_messages(make_node) -> None:
    a = make_node("alice").start().wait_up()
    tap = BusTap(a, "peer.")
    try:
        b = make_node("bob").start().wait_up()
        found = tap.wait("peer.discovered", lambda e: e.peer.nickname == "bob")
        verified = tap.wait("peer.updated", lambda e: e.peer.nickname == "bob"
                            and e.peer.state == "verified") if found.peer.state != "verified" \
            else found
        assert verified.ts - found.ts <= VERIFY_LIMIT
    finally:
        tap.close()
    assert b.peers()["alice"]["state"] == "verified" or b.wait_peer("alice", ("verified",))
    btap = BusTap(b, "link.message")
    try:
        for i in range(20):
            send(a, b, f"hello {i}".encode())
        wait_for(lambda: len(btap.of("link.message")) == 20, 10, "20 messages at bob")
        got = [e.body for e in btap.of("link.message")]
        assert got == [f"hello {i}".encode() for i in range(20)]  # in order, once each
        assert {e.key for e in btap.of("link.message")} == {a.key}
    finally:
        btap.close()
    links = request(a, "gateway", rpc.GetLinks()).links
    assert len([lk for lk in links if lk.key == b.key and lk.state == "open"]) == 1, links
    with pytest.raises(RequestFailed) as info:
        request(a, "gateway", rpc.SendToPeer(key="ab" * 32, kind="x", body=b""))
    assert info.value.code == "no_link"


def test_key_change_is_refused_until_trusted(make_node) -> None:
    a = make_node("alice").start().wait_up()
    b = make_node("bob").start().wait_up()
    a.wait_peer("bob", ("verified",))
    assert b.key  # read while bob runs
    b.stop()
    a.wait_peer("bob", ("offline",), timeout=15)
    # same nickname, new key: a new node home
    tap = BusTap(a, "peer.key_changed", "wire.rejected")
    impostor = make_node("bob2", env={"TAZCOM_NICK": "bob"}).start().wait_up()
    try:
        changed = tap.wait("peer.key_changed", timeout=15)
        assert changed.key == impostor.key and changed.nickname == "bob"
        assert changed.pinned == (b.key,)
        tap.wait("wire.rejected", lambda e: e.reason == "key_changed")
    finally:
        tap.close()
    rows = {p["key"]: p for p in a.try_json("peers") or []}
    assert rows[impostor.key]["alert"] and rows[impostor.key]["state"] != "verified"
    assert "KEY CHANGED" in a.cli("peers").stdout
    assert rows[b.key]["alert"] is None
    a.cli("trust", impostor.key[:16])
    wait_for(lambda: (r := {p["key"]: p for p in a.try_json("peers") or []}.get(impostor.key))
             and r["state"] == "verified" and r["alert"] is None, 15, "the new key verified")


def _wait_link_back(a: Node, b: Node, timeout: float = 15) -> None:
    a.wait_peer("bob", ("verified",), timeout=timeout)
    b.wait_peer("alice", ("verified",), timeout=timeout)


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_link_comes_back_after_gateway_restart(make_node, how: str) -> None:
    a = make_node("alice").start().wait_up()
    b = make_node("bob").start().wait_up()
    _wait_link_back(a, b)
    old = b.pid("gateway")
    if how == "restart":
        b.ctl("restart", "tazcom:gateway")
    else:
        os.kill(old, signal.SIGKILL)
    wait_for(lambda: (p := b.pid("gateway")) and p != old, 20, "a new gateway")
    _wait_link_back(a, b)
    tap = BusTap(b, "link.message")
    try:
        wait_for(lambda: (send(a, b, b"after restart") or True) and tap.of("link.message"),
                 10, "a message over the new link", interval=0.2)
    finally:
        tap.close()


def test_quiet_link_stays_and_dead_peer_noticed_within_10s(make_node) -> None:
    a = make_node("alice").start().wait_up()
    b = make_node("bob").start().wait_up()
    _wait_link_back(a, b)
    tap = BusTap(a, "link.down")
    try:
        quiet_until = time.monotonic() + 12  # longer than the 9 s dead-peer limit
        wait_for(lambda: time.monotonic() >= quiet_until or tap.of("link.down"), 15,
                 "12 quiet seconds")
        assert not tap.of("link.down"), "keepalive holds a quiet link"
        gw = b.pid("gateway")
        os.kill(gw, signal.SIGSTOP)  # the peer hangs: no FIN, no RST, nothing
        stopped = time.monotonic()
        try:
            down = tap.wait("link.down", timeout=12)
            assert time.monotonic() - stopped <= 10.5
            assert down.reason == "timeout"
        finally:
            os.kill(gw, signal.SIGCONT)
    finally:
        tap.close()
    _wait_link_back(a, b, timeout=20)
