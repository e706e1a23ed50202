"""IPv6 (issue 14), in network namespaces: real mDNS over ff02::fb, real links.

- An IPv6-only LAN (no IPv4 address on any veth): three nodes find each other and link,
  over global addresses and, for a node that is given only its link-local address, over
  link-local ones (scoped by the interface); a room message and a DM arrive.
- A dual-stack pair keeps exactly one link, over IPv4 by default and over IPv6 when
  ``node.prefer_ipv6`` says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tazcom.common import rpc
from tazcom.common.addresses import ip_of, scope_of, split_address
from tests.harness import BusTap, Node, history, post, request, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

REASON = why_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
#: How long a dual-stack pair is watched for a second link (longer than the higher key's
#: dial deferral and the first redial back-off, so a second dial would have happened).
WATCH = 5.0




def links_to(node: Node, key: str) -> list[rpc.LinkInfo]:
    return [lk for lk in request(node, "gateway", rpc.GetLinks()).links if lk.key == key]


def host_of(address: str) -> str:
    parsed = split_address(address)
    assert parsed is not None, address
    return parsed[0]


def stop_all(nodes: list[Node]) -> None:
    problems = []
    for node in nodes:  # nodes stop before their namespaces go
        node.stop()
        problems += node.tracebacks()
    assert not problems, "\n".join(problems)


@pytest.fixture
def v6_only() -> Iterator[tuple[Lan, dict[str, Node]]]:
    root = short_tmp("tzv6")
    nodes: dict[str, Node] = {}
    with lan({"a": [0], "b": [0], "c": [0]}, ipv4=False, ipv6=True) as net:
        try:
            for host in ("a", "b"):
                nodes[host] = Node(root / host, f"v6-{host}", netns=net.ns(host),
                                   interfaces=net.interfaces[host][0])
            # c uses its link-local address only: its links are all link-local
            nodes["c"] = Node(root / "c", "v6-c", netns=net.ns("c"),
                              interfaces=net.link_local("c"))
            yield net, nodes
        finally:
            stop_all(list(nodes.values()))


def test_an_ipv6_only_lan_finds_links_and_chats(v6_only: tuple[Lan, dict[str, Node]]) -> None:
    net, nodes = v6_only
    for node in nodes.values():
        node.start()
    for node in nodes.values():
        node.wait_up(30)
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    for host, node in nodes.items():
        for other in nodes:
            if other != host:
                peer = node.wait_peer(f"v6-{other}", ("verified",), timeout=20)
                hosts = [host_of(x) for x in peer["addresses"]]
                assert hosts and all(ip_of(h).version == 6 for h in hosts), peer
                # a link-local address is written with the interface we heard it on
                ours = net.interfaces[host][0]
                assert all(scope_of(h) == ours for h in hosts if ip_of(h).is_link_local), peer

    # a - b over their global addresses; c's links over link-local, scoped by our veth
    ab = links_to(a, b.key)
    assert len(ab) == 1 and host_of(ab[0].address) in (
        net.addresses6["b"][0], net.addresses6["a"][0]), ab
    for node, host in ((a, "a"), (b, "b")):
        lk = links_to(node, c.key)
        assert len(lk) == 1, lk
        assert ip_of(host_of(lk[0].address)).is_link_local, lk
        assert scope_of(host_of(lk[0].address)) == net.interfaces[host][0], lk

    tap = BusTap(c, "chat.message")
    try:
        result = post(a, "hello over IPv6")
        assert result.status in ("queued", "sent")
        msg = tap.wait("chat.message", lambda e: e.id == result.message_id.hex(), timeout=10)
        assert msg.text == "hello over IPv6" and msg.origin == a.key
    finally:
        tap.close()
    wait_for(lambda: any(m.id == result.message_id for m in history(b)), 10,
             "the room message at b")

    secret = f"a DM over link-local {os.urandom(4).hex()}"
    dm = post(a, secret, to=c.key)
    wait_for(lambda: [m.text for m in history(c, a.key)].count(secret) == 1, 15, "the DM at c")
    wait_for(lambda: next((m.status for m in history(a, c.key) if m.id == dm.message_id),
                          "") == "delivered", 15, "a's DM delivered (c's receipt came back)")


@pytest.fixture
def dual_stack(request: pytest.FixtureRequest) -> Iterator[tuple[Lan, Node, Node]]:
    config = "[node]\nprefer_ipv6 = true\n" if request.param == "ipv6" else None
    root = short_tmp("tzds")
    with lan({"a": [0], "b": [0]}, ipv4=True, ipv6=True) as net:
        a = Node(root / "a", "ds-a", netns=net.ns("a"), interfaces=net.interfaces["a"][0],
                 config=config)
        b = Node(root / "b", "ds-b", netns=net.ns("b"), interfaces=net.interfaces["b"][0],
                 config=config)
        try:
            yield net, a, b
        finally:
            stop_all([a, b])


@pytest.mark.parametrize("dual_stack", ["ipv4", "ipv6"], indirect=True)
def test_a_dual_stack_pair_keeps_one_link(dual_stack: tuple[Lan, Node, Node]) -> None:
    net, a, b = dual_stack
    prefer_ipv6 = a.config is not None
    a.start()
    b.start()
    a.wait_up(30)
    b.wait_up(30)
    for node, other, host in ((a, b, "b"), (b, a, "a")):
        node.wait_peer(other.nick, ("verified",), timeout=20)

        def announced(node=node, other=other, host=host) -> bool:
            # every address announced: IPv4, global IPv6, link-local IPv6 (the link may
            # be verified before the peer's mDNS record arrives)
            peer = node.peers().get(other.nick) or {}
            hosts = {host_of(x) for x in peer.get("addresses", [])}
            return (net.addresses[host][0] in hosts and net.addresses6[host][0] in hosts
                    and any(ip_of(h).is_link_local for h in hosts))

        wait_for(announced, 10, f"{node.nick} to list every address of {other.nick}")

    def one_each() -> bool:
        return len(links_to(a, b.key)) == 1 and len(links_to(b, a.key)) == 1

    wait_for(one_each, 10, "one link at each end")
    deadline = time.monotonic() + WATCH
    while time.monotonic() < deadline:  # and it stays one: no second dial over the other
        la, lb = links_to(a, b.key), links_to(b, a.key)
        assert len(la) == 1 and len(lb) == 1, (la, lb)
        assert la[0].state == lb[0].state == "open", (la, lb)
        time.sleep(0.25)  # noqa: sleep-ok - polling interval while watching for WATCH s
    la, lb = links_to(a, b.key), links_to(b, a.key)
    assert {la[0].direction, lb[0].direction} == {"in", "out"}, (la, lb)
    version = 6 if prefer_ipv6 else 4
    for lk in (la[0], lb[0]):
        assert ip_of(host_of(lk.address)).version == version, (la, lb)
