"""Three hosts in network namespaces on one bridge: real multicast, real interfaces."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness import Node, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

REASON = why_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
DISCOVERY_LIMIT = 2.0  # the figure: every node sees a new one within 2 s
OFFLINE_LIMIT = 10.0


@pytest.fixture
def three_hosts() -> Iterator[tuple[Lan, dict[str, Node]]]:
    root = short_tmp()
    nodes: dict[str, Node] = {}
    with lan({"a": [0], "b": [0], "c": [0]}) as net:
        try:
            for host in ("a", "b", "c"):
                nodes[host] = Node(root / host, f"node-{host}", netns=net.ns(host),
                                   interfaces=net.interfaces[host][0])
            yield net, nodes
        finally:
            problems = []
            for node in nodes.values():  # nodes stop before their namespaces go
                node.stop()
                problems += node.tracebacks()
            assert not problems, "\n".join(problems)


def test_three_hosts_see_each_other_and_a_departure(
        three_hosts: tuple[Lan, dict[str, Node]]) -> None:
    _net, nodes = three_hosts
    launched: dict[str, float] = {}
    for host, node in nodes.items():
        launched[host] = time.time()
        node.start()
        node.wait_up()
    for host, node in nodes.items():
        for other in nodes:
            if other == host:
                continue
            peer = node.wait_peer(f"node-{other}", ("discovered", "connected", "verified"))
            assert all(a.startswith("10.213.0.") for a in peer["addresses"]), peer
    delays = {}
    for host, node in nodes.items():
        for other, peer in node.peers().items():
            first = peer["since"] if peer["state"] in ("discovered", "verified") else None
            if first is not None:
                # from the launch of whichever of the two started last
                both = max(launched[host], launched[other.removeprefix("node-")])
                delays[(host, other)] = first - both
    print("discovery delays", {k: round(v, 2) for k, v in delays.items()})
    late = {k: round(v, 2) for k, v in delays.items() if v > DISCOVERY_LIMIT}
    assert not late, f"seen later than {DISCOVERY_LIMIT}s after launch: {late} (all: {delays})"

    for host, node in nodes.items():  # and their gateways linked up, each pair once
        for other in nodes:
            if other != host:
                node.wait_peer(f"node-{other}", ("verified",), timeout=10)

    nodes["c"].stop()
    stopped = time.monotonic()
    for host in ("a", "b"):
        wait_for(lambda h=host: nodes[h].peers()["node-c"]["state"] == "offline",
                 OFFLINE_LIMIT - (time.monotonic() - stopped), f"{host} to see c offline")
    assert time.monotonic() - stopped <= OFFLINE_LIMIT
