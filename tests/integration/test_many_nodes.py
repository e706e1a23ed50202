"""Many nodes in network namespaces: state that stays right at 16 nodes, and hops counted
exactly on a line of 9.

* 16 nodes on a chain of LAN segments (4 hosts each, 5 hops end to end) are
  launched 1 s apart, three times over (fresh nodes each time): every node must
  list every other as ``verified`` (neighbours) or ``mesh`` within 30 s of the
  last launch.
* A line of 9 nodes (8 links) carries a room message and a DM end to end with the
  default hop limit (8), and with a hop limit of 4 a message crosses 4 links and
  never a 5th, by flooding or by catch-up.
"""

from __future__ import annotations

import os
import random

import pytest

from tazcom.common import rpc
from tests.cluster import Cluster, cluster
from tests.harness import request, wait_for
from tests.netns import why_unavailable
from tests.topology import chain, line

REASON = why_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
CONVERGE_LIMIT = 30.0


def test_sixteen_nodes_converge_after_every_launch() -> None:
    topo = chain(16, 5)
    rng = random.Random(os.getpid())
    with cluster(topo) as c:
        for launch in range(3):
            c.fresh_nodes()
            last = c.launch(gap=1.0, rng=rng)
            result = c.watch(last, timeout=CONVERGE_LIMIT)
            problems = c.stop()
            print(f"launch {launch + 1}: converged after {result.converged_after} s")
            assert result.converged_after is not None, (
                f"launch {launch + 1}: still wrong {CONVERGE_LIMIT:g} s after the last "
                f"launch (node, peer, state): {result.wrong[:20]}")
            assert not problems, "\n".join(problems)


def _has(c: Cluster, host: str, msg_id: bytes) -> bool:
    history = request(c.nodes[host], "store", rpc.StoreHistory(limit=50))
    return any(m.id == msg_id for m in history.messages)


def test_a_line_of_nine_carries_messages_exactly_hop_limit_links() -> None:
    topo = line(9)
    hosts = list(topo)
    with cluster(topo) as c:
        c.fresh_nodes()
        last = c.launch(gap=0.3)
        result = c.watch(last, timeout=60)
        assert result.converged_after is not None, result.wrong[:20]
        first, far = hosts[0], hosts[-1]

        # the default hop limit, 8: end to end
        arrived, _ = c.room_message(first, "from one end to the other", timeout=20)
        assert set(arrived) == set(hosts[1:]), f"only at {sorted(arrived)}"
        got, delivered = c.direct_message(first, far, "a sealed word, 8 links away",
                                          timeout=20)
        assert got is not None and delivered is not None

        # a hop limit of 4 everywhere: 4 links and never a 5th
        for node in c.nodes.values():
            (node.home / "tazcom.toml").write_text("[router]\nhop_limit = 4\n")
            node.ctl("restart", "tazcom:router")
        for h, node in c.nodes.items():
            node.wait_up(30)
            degree = len(c.near[h])
            wait_for(lambda n=node, d=degree: request(n, "router", rpc.GetRouterStats()).links
                     == d, 30, f"{h}'s router to have its {degree} links again")
        c.nodes[hosts[5]].ctl("stop", "tazcom:gateway")  # cut n05 off for now
        arrived, far_id = c.room_message(first, "four links only", timeout=10, limit=4)
        assert set(arrived) == set(hosts[1:5])
        # Within reach of n05 and n06 (3 and 4 links from n02): once n05 is back, catch-up
        # brings it there, which proves catch-up ran on the links beyond the 4th hop.
        near_id = request(c.nodes[hosts[2]], "router",
                          rpc.Post(client_id=os.urandom(16), text="near enough")).message_id
        c.nodes[hosts[5]].ctl("start", "tazcom:gateway")
        for h in hosts[5:7]:
            wait_for(lambda h=h: _has(c, h, near_id), 30, f"the near message at {h}")
        # The far message would have come with it (same catch-up exchange, same bucket).
        for h in hosts[5:]:
            assert not _has(c, h, far_id), f"{h} got a message from 5+ links away"
        for h in hosts[7:]:
            assert not _has(c, h, near_id), f"{h} got a message from 5+ links away"
        assert not c.stop()
