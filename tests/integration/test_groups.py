"""Private groups on real nodes in network namespaces (issue 16): line A - B - C, D on B.

* A creates a group with C and D; B relays and is not a member: neither B's disk nor a
  capture of B's links ever shows a group text or the group's name;
* A's message shows ``delivered`` with the count of members whose receipts came back;
* D is removed: D keeps its state and keeps receiving the group's envelopes, yet cannot
  open the next message, while C can;
* C is offline during a message and a membership change, and catches up on both.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from typing import Any

import pytest

from tazcom.common import rpc
from tests.harness import Node, lan_nodes, request, wait_for
from tests.netns import why_unavailable

pytestmark = pytest.mark.skipif(why_unavailable() is not None,
                                reason=str(why_unavailable()))

NAME = "plane-friends-4c1d"


def knows(node: Node, other: Node, timeout: float = 30) -> None:
    wait_for(lambda: any(p["key"] == other.key and p["state"] in ("verified", "mesh")
                         for p in node.cli_json("peers")), timeout,
             f"{node.nick} to know {other.nick}")


def groups(node: Node) -> rpc.GroupTable:
    return request(node, "router", rpc.ListGroups(), timeout=10)


def role(node: Node) -> str | None:
    return next((g.role for g in groups(node).groups if g.name == NAME), None)


def call(node: Node, req: Any) -> Any:
    return request(node, "router", req, timeout=10)


def history(node: Node, gid: str) -> list[Any]:
    return list(request(node, "store", rpc.StoreHistory(conv=bytes.fromhex(gid)),
                        timeout=10).messages)


def texts(node: Node, gid: str) -> set[str]:
    return {m.text for m in history(node, gid) if m.text}


def say(node: Node, text: str) -> Any:
    return call(node, rpc.GroupSay(client_id=os.urandom(16), group=NAME, text=text))


def stored_group_envelopes(node: Node, gid: str) -> int:
    """The group's envelopes (kind 8) in the node's store, opened or not."""
    db = sqlite3.connect(f"file:{node.home / 'store.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute('SELECT count(*) FROM messages WHERE kind = 8 AND "to" = ?',
                          (bytes.fromhex(gid),)).fetchone()[0]
    finally:
        db.close()


def test_members_read_relays_do_not_removed_cannot_offline_catches_up() -> None:
    markers = [f"GROUP-TEXT-{i}-9e2f" for i in range(4)]
    with lan_nodes({"a": [0], "b": [0, 1, 2], "c": [1], "d": [2]}) as (net, nodes):
        a, b, c, d = nodes["a"], nodes["b"], nodes["c"], nodes["d"]
        for x, y in ((a, c), (a, d), (c, a), (d, a), (c, d), (d, c)):
            knows(x, y)
        pcap = b.home.parent / "b.pcap"
        captures = [subprocess.Popen(
            ["ip", "netns", "exec", net.ns("b"), "tcpdump", "-i", dev, "-s", "0", "-U", "-w",
             f"{pcap}.{dev}", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for dev in net.interfaces["b"]]
        try:
            for proc in captures:
                assert proc.stderr is not None
                assert b"listening" in proc.stderr.readline()

            info = call(a, rpc.CreateGroup(name=NAME)).info
            gid = info.group
            assert info.role == "admin"
            for peer in (c, d):
                call(a, rpc.InviteToGroup(group=NAME, peer=peer.key))
            for peer in (c, d):
                wait_for(lambda p=peer: role(p) == "invited", 30,
                         f"{peer.nick} to see the invitation")
                assert call(peer, rpc.AcceptGroup(group=NAME)).info.role == "member"
            wait_for(lambda: len(call(a, rpc.GroupMembers(group=NAME)).info.members) == 3
                     and all(m.role == "member"
                             for m in call(a, rpc.GroupMembers(group=NAME)).info.members),
                     30, "A to see C and D join")

            sent = say(a, markers[0])
            for peer in (c, d):
                wait_for(lambda p=peer: markers[0] in texts(p, gid), 30,
                         f"{peer.nick} to read the first message")
            row = wait_for(lambda: next((m for m in history(a, gid)
                                         if m.id == sent.message_id
                                         and m.reason == "2 of 2 members"), None), 30,
                           "A to see both receipts")
            assert row.status == "delivered" and row.to == bytes.fromhex(gid)
            say(c, markers[1])
            wait_for(lambda: markers[1] in texts(a, gid) and markers[1] in texts(d, gid), 30,
                     "A and D to read C")

            # D is removed: it keeps its state and keeps getting the group's envelopes
            call(a, rpc.RemoveFromGroup(group=NAME, peer=d.key))
            wait_for(lambda: role(d) == "removed", 30, "D to learn it was removed")
            wait_for(lambda: d.key not in {m.key for m in call(
                c, rpc.GroupMembers(group=NAME)).info.members}, 30, "C to see D go")
            before = stored_group_envelopes(d, gid)
            say(a, markers[2])
            wait_for(lambda: markers[2] in texts(c, gid), 30, "C to read after the removal")
            wait_for(lambda: stored_group_envelopes(d, gid) > before, 30,
                     "D to receive the envelope it cannot open")
            assert markers[2] not in texts(d, gid)
            refused = dict(groups(d).refused)
            assert refused.get("no_key", 0) + refused.get("not_member", 0) >= 1, refused

            # C is away during a message and a membership change
            c.stop()
            say(a, markers[3])
            call(a, rpc.InviteToGroup(group=NAME, peer=b.key))
            wait_for(lambda: role(b) == "invited", 30, "B to be invited")
            c.start().wait_up()
            wait_for(lambda: markers[3] in texts(c, gid), 90,
                     "C to catch up on the message written while it was away")
            wait_for(lambda: any(m.key == b.key and m.role == "invited" for m in call(
                c, rpc.GroupMembers(group=NAME)).info.members), 60,
                "C to catch up on the invitation of B")
        finally:
            for proc in captures:
                proc.terminate()
                proc.wait(timeout=10)
        # B relayed all of it, invited only at the end: no text, no name in the clear
        captured = b"".join(p.read_bytes() for p in b.home.parent.glob("b.pcap.*"))
        assert captured
        seen = 0
        for path in b.home.rglob("*"):
            if path.is_file() and not path.is_symlink():
                content = path.read_bytes()
                seen += len(content)
                for m in markers:
                    assert m.encode() not in content, f"a group text in B's {path}"
        assert seen > 0
        for m in markers:
            assert m.encode() not in captured
        assert NAME.encode() not in captured
        for node in (a, b, c, d):
            assert not node.tracebacks(), node.tracebacks()
