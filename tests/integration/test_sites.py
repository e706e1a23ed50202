"""Meshes that span sites (issue 14): two LANs joined only by a router (a namespace that
forwards IPv4 between them, as a VPN or the internet would; it runs no node and carries
no multicast). mDNS cannot cross it. One static peer across links the sites: a room
message from site 1 reaches a node at site 2 it has no link to, through its relay; and
with ``[gateway] exchange_routed = true`` the peer exchange then links them directly.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tazcom.common import rpc
from tests.harness import Node, request, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

REASON = why_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def _ns(net: Lan, host: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", net.ns(host), *argv], check=True,
                   capture_output=True, timeout=20)


@pytest.fixture
def two_sites() -> Iterator[tuple[Lan, dict[str, Node]]]:
    # site 1: a (and the router's leg r); site 2: b, c (and r's other leg)
    with lan({"a": [0], "b": [1], "c": [1], "r": [0, 1]}) as net:
        _ns(net, "r", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        r0, r1 = net.addresses["r"]
        _ns(net, "a", "ip", "route", "add", "10.213.1.0/24", "via", r0)
        for host in ("b", "c"):
            _ns(net, host, "ip", "route", "add", "10.213.0.0/24", "via", r1)
        root = short_tmp("tzsite")
        routed = '[gateway]\nexchange_routed = true\n'
        nodes = {h: Node(root / h, f"site-{h}", netns=net.ns(h),
                         interfaces=net.interfaces[h][0],
                         config=routed if h == "a" else None) for h in ("a", "b", "c")}
        try:
            yield net, nodes
        finally:
            problems = []
            for node in nodes.values():
                node.stop()
                problems += node.tracebacks()
            assert not problems, "\n".join(problems)


def test_one_static_peer_joins_two_sites(two_sites: tuple[Lan, dict[str, Node]]) -> None:
    net, nodes = two_sites
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    for n in (a, b, c):
        n.start()
    for n in (a, b, c):
        n.wait_up()
    b.wait_peer("site-c", ("verified",), timeout=15)  # site 2 finds itself by mDNS
    assert "site-b" not in a.peers(), "mDNS does not cross the router"
    port = request(b, "gateway", rpc.GetGatewayInfo()).port
    a.cli("connect", f"{net.addresses['b'][0]}:{port}")
    a.wait_peer("site-b", ("verified",), timeout=15)
    # the room crosses: c hears a through b
    a.cli("say", "hello from site 1")
    wait_for(lambda: any(r.get("text") == "hello from site 1" for r in c.cli_json("history")),
             15, "c got a's message across the sites")
    # a's peer exchange (routed dialling on) names c at its site-2 address: a links to it
    a.wait_peer("site-c", ("verified",), timeout=15)
    links = {lk.key: lk for lk in request(a, "gateway", rpc.GetLinks()).links
             if lk.state == "open"}
    # a dialled it (c, without routed dialling, never dials a routed candidate)
    assert links[c.key].direction == "out", links[c.key]
    assert links[c.key].address.startswith("10.213.1."), links[c.key]
