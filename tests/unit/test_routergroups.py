"""Private groups through the real router cores (tests/corenet.py): line A - B - C, D on B.

B relays and is not a member; D is removed and keeps every key it had; C is away during a
message and a membership change and catches up on both when it comes back."""

from __future__ import annotations

from typing import Any

from tazcom.common import envelope, routing, rpc
from tazcom.common.events import ChatStatus
from tests.corenet import Net, Node

GID = "ab" * 32


def local(node: Node, method: str, ref: str | None, arg: Any = None) -> Any:
    return node.run(node.core.group_local(method, ref, arg, node.net.now, node.net.mono))


def say(node: Node, ref: str, text: str) -> Any:
    out = node.run(node.core.group_say(ref, text, text.encode()[:8].ljust(8, b"."),
                                       node.net.now, node.net.mono))
    node.run(node.core.settle_posts())
    return out


def texts(node: Node) -> set[str]:
    return set(node.texts.values())


def mesh() -> tuple[Net, Node, Node, Node, Node]:
    net = Net(4, delegated=True)
    a, b, c, d = net.nodes
    net.set_edges([(a, b), (b, c), (b, d)])
    net.run_for(1.0)
    assert all(len(n.core.directory) == 3 for n in net.nodes)
    return net, a, b, c, d


def group(net: Net, admin: Node, *joiners: Node, name: str = "friends") -> None:
    info = local(admin, "create", GID, name)
    assert isinstance(info, rpc.GroupInfo) and info.role == "admin"
    for peer in joiners:
        assert isinstance(local(admin, "invite", name, peer.key), rpc.GroupInfo)
    net.run_for(1.0)
    for peer in joiners:
        [inv] = peer.core.group_table().groups
        assert inv.role == "invited" and inv.name == name
        assert inv.invited_by == admin.key.hex()
        assert local(peer, "accept", name).role == "member"
    net.run_for(1.0)


def test_create_invite_accept_say_remove_and_catch_up() -> None:
    net, a, b, c, d = mesh()
    group(net, a, c, d)
    assert {m.key for m in a.core.group_info(bytes.fromhex(GID)).members} == {
        n.key.hex() for n in (a, c, d)}

    answer = say(a, "friends", "hello friends")
    assert isinstance(answer, rpc.PostResult)
    net.run_for(1.0)
    assert texts(c) == texts(d) == {"hello friends"}
    assert texts(b) == set() and b.core.groups.groups == {}
    # B stored and relayed the ciphertext and the sealed control messages, no text
    rows = b.store.rows.values()
    assert any(r.kind == envelope.KIND_GROUP for r in rows)
    assert any(r.kind == envelope.KIND_GROUP_CTL for r in rows)
    assert not any(b"hello friends" in r.signed or b"friends" in r.signed for r in rows)
    # the author sees how many members acknowledged it
    acks = [e.fields for e in a.emitted if e.event is ChatStatus
            and e.fields["id"] == answer.message_id.hex()]
    assert acks[-1]["delivered"] == 2 and acks[-1]["members"] == 2
    assert acks[-1]["reason"] == "2 of 2 members"
    assert a.statuses[answer.message_id] == "delivered"

    say(c, "friends", "hi from C")
    net.run_for(1.0)
    assert "hi from C" in texts(a) and "hi from C" in texts(d)

    # D is removed; D keeps its state and keeps relaying, yet cannot read what follows
    assert local(a, "remove", "friends", d.key).role == "admin"
    net.run_for(1.0)
    assert d.core.group_info(bytes.fromhex(GID)).role == "removed"
    refused = sum(d.core.groups.refused.values())
    say(a, "friends", "after D left")
    net.run_for(1.0)
    assert "after D left" in texts(c)
    assert "after D left" not in texts(d)
    assert sum(d.core.groups.refused.values()) > refused
    assert any(r.kind == envelope.KIND_GROUP and r.to == bytes.fromhex(GID)
               for r in d.store.rows.values() if r.id not in d.texts)

    # C goes away: a message and a membership change happen without it
    net.unlink((b, c))
    net.run_for(1.0)
    say(a, "friends", "while C was away")
    assert isinstance(local(a, "invite", "friends", b.key), rpc.GroupInfo)
    net.run_for(1.0)
    assert "while C was away" not in texts(c)
    c.restart()  # and restarts: its groups come back from its disk
    net.link((b, c))
    net.settle()
    assert "while C was away" in texts(c)
    state = c.core.groups.state(bytes.fromhex(GID))
    assert state is not None and b.key in state.invited and d.key not in state.members
    assert not net.violations


def test_bad_input_refused_and_counted() -> None:
    net, a, _b, c, d = mesh()
    group(net, a, c, name="g")
    # local refusals: a non-admin cannot invite or remove, unknown groups
    assert local(c, "invite", "g", d.key).code == "not_admin"
    assert local(c, "remove", "g", a.key).code == "not_admin"
    assert local(a, "accept", "nope").code == "not_found"
    assert say(d, "g", "x").code == "not_found"
    assert local(a, "invite", "g", a.key).code == "bad_recipient"
    # a member that left cannot write
    local(c, "leave", "g")
    net.run_for(1.0)
    assert say(c, "g", "x").code == "not_member"
    assert not net.violations


def test_group_envelopes_never_reach_a_link_without_group_1() -> None:
    net, a, b, c, d = mesh()
    b.core.nogroup_links = {c.key}
    sent: list[bytes] = []
    orig = net.send

    def spy(src: Node, dst_key: bytes, body: bytes) -> None:
        if src is b and dst_key == c.key:
            msg = routing.decode(body)
            if isinstance(msg, routing.Envs):
                sent.extend(signed for _, signed, _ in msg.entries)
        orig(src, dst_key, body)

    net.send = spy  # type: ignore[method-assign]
    group(net, a, d)
    say(a, "friends", "x")
    a.post("the room goes everywhere")
    net.run_for(1.0)
    assert "x" in texts(d)
    assert sent and all(envelope.kind_of(s) not in envelope.GROUP_KINDS for s in sent)
