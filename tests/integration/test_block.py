"""Block and mute end to end, and across a restart (issue 12): two nodes on loopback."""

from __future__ import annotations

import os
import sqlite3

from tazcom.common import rpc
from tests.harness import BusTap, Node, request, wait_for


def post(node: Node, text: str) -> bytes:
    return request(node, "router", rpc.Post(client_id=os.urandom(16), text=text),
                   timeout=10).message_id


def stored(node: Node, msg_id: bytes) -> bool:
    db = sqlite3.connect(f"file:{node.home}/store.sqlite?mode=ro", uri=True)
    try:
        return db.execute("SELECT 1 FROM messages WHERE id = ?", (msg_id,)).fetchone() is not None
    finally:
        db.close()


def policy(node: Node, key: str, what: str, remove: bool = False) -> rpc.PolicyTable:
    return request(node, "router", rpc.SetPolicy(key=key, policy=what, remove=remove))


def linked(node: Node, nick: str) -> bool:
    return (node.peers().get(nick) or {}).get("state") == "verified"


def test_block_and_mute_end_to_end_and_across_a_restart(make_node) -> None:
    a = make_node("alice").start()
    b = make_node("bob").start()
    a.wait_up()
    b.wait_up()
    wait_for(lambda: linked(b, "alice"), 20, "bob linked to alice")
    tap = BusTap(b, "chat.message", "peer.policy")
    try:
        # mute: stored (and relayed), not shown
        table = policy(b, a.key, "mute")
        assert [(p.key, p.policy) for p in table.items] == [(a.key, "mute")]
        tap.wait("peer.policy", lambda e: e.policy == "mute")
        muted = post(a, "muted hello")
        wait_for(lambda: stored(b, muted), 10, "the muted message stored at bob")
        shown = post(b, "bob's own")  # its event comes after any for the muted one
        tap.wait("chat.message", lambda e: e.id == shown.hex())
        assert all(e.id != muted.hex() for e in tap.of("chat.message"))
        rows = request(b, "store", rpc.StoreHistory(limit=100)).messages
        assert shown in {r.id for r in rows} and muted not in {r.id for r in rows}
        # block: its link is closed and refused; nothing of it shown or stored
        policy(b, a.key, "block")
        wait_for(lambda: not linked(b, "alice") and not linked(a, "bob"), 15,
                 "the link closed by the block")
        assert not stored(b, muted), "a block deletes what bob kept from alice"
        blocked = post(a, "blocked hello")
        # across a restart: still blocked, the link still refused
        b.stop()
        b.start().wait_up()
        listed = request(b, "router", rpc.GetPolicy())
        assert [(p.key, p.policy) for p in listed.items] == [(a.key, "block")]
        a_tap = BusTap(a, "link.down")
        try:
            a_tap.wait("link.down", lambda e: e.reason == "blocked", timeout=30)
        finally:
            a_tap.close()
        assert not linked(b, "alice") and not stored(b, blocked)
        # lifted: the link comes back and catch-up brings what alice said meanwhile
        policy(b, a.key, "block", remove=True)
        wait_for(lambda: linked(b, "alice"), 40, "alice linked again")
        wait_for(lambda: stored(b, blocked), 90, "the message from the blocked time")
    finally:
        tap.close()
