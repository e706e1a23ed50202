"""Three hosts in network namespaces on one bridge: real multicast, real interfaces."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness import Node, lan_nodes, wait_for
from tests.netns import Lan, why_unavailable

REASON = why_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
DISCOVERY_LIMIT = 2.0  # the figure: every node sees a new one within 2 s
# From the launch, process start-up comes first: CPU-bound (seven interpreters), and on
# these shared 2-core VMs it alone ranges from under 1 s to over 3 s. bench/discovery_time
# reports the whole figure; here the mDNS part is held to the limit and the whole to this.
LAUNCH_LIMIT = 10.0
OFFLINE_LIMIT = 10.0


@pytest.fixture
def three_hosts() -> Iterator[tuple[Lan, dict[str, Node]]]:
    # not started: the test times each launch itself
    with lan_nodes({"a": [0], "b": [0], "c": [0]}, start=False) as (net, nodes):
        yield net, nodes


def test_three_hosts_see_each_other_and_a_departure(
        three_hosts: tuple[Lan, dict[str, Node]]) -> None:
    _net, nodes = three_hosts
    launched: dict[str, float] = {}
    announcing: dict[str, float] = {}  # when each node's discovery service came up
    for host, node in nodes.items():
        launched[host] = time.time()
        node.start()
        node.wait_up()
        announcing[host] = node.status()["discovery"]["since"]
    for host, node in nodes.items():
        for other in nodes:
            if other == host:
                continue
            peer = node.wait_peer(f"node-{other}", ("discovered", "connected", "verified"))
            assert all(a.startswith("10.213.0.") for a in peer["addresses"]), peer
    delays, from_launch = {}, {}
    for host, node in nodes.items():
        for other, peer in node.peers().items():
            # when it was first seen, or (later) verified: an upper bound on the discovery
            first = peer["since"] if peer["state"] in ("discovered", "verified") else None
            if first is not None:
                # from whichever of the two started (announcing) last
                o = other.removeprefix("node-")
                delays[(host, other)] = first - max(announcing[host], announcing[o])
                from_launch[(host, other)] = first - max(launched[host], launched[o])
    print("discovery delays", {k: round(v, 2) for k, v in delays.items()},
          "from launch", {k: round(v, 2) for k, v in from_launch.items()})
    late = {k: round(v, 2) for k, v in delays.items() if v > DISCOVERY_LIMIT}
    assert not late, f"seen later than {DISCOVERY_LIMIT}s after announcing: {late} ({delays})"
    slow = {k: round(v, 2) for k, v in from_launch.items() if v > LAUNCH_LIMIT}
    assert not slow, f"seen later than {LAUNCH_LIMIT}s after launch: {slow}"

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
