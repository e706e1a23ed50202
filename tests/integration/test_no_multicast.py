"""Multicast filtered (issue 14): three hosts on one LAN whose namespaces drop 224.0.0.0/4
and ff02::fb (nftables), as hotel, campus and guest Wi-Fi do. mDNS finds nobody; one
invite code made on a and joined by b and c links all three within 10 s of the join:
the code links each to a, and a's peer exchange links b and c."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from tests.harness import Node, short_tmp, wait_for
from tests.netns import drop_multicast, lan, multicast_dropped, why_unavailable

REASON = why_unavailable() or (None if shutil.which("nft") else "needs nft (nftables)")
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
JOIN_LIMIT = 10.0


@pytest.fixture
def filtered_lan() -> Iterator[dict[str, Node]]:
    root = short_tmp()
    nodes: dict[str, Node] = {}
    with lan({"a": [0], "b": [0], "c": [0]}) as net:
        try:
            for host in ("a", "b", "c"):
                drop_multicast(net.ns(host))
                nodes[host] = Node(root / host, f"nomc-{host}", netns=net.ns(host),
                                   interfaces=net.interfaces[host][0])
            yield nodes
            assert all(multicast_dropped(net.ns(h)) > 0 for h in nodes), \
                "every node sent mDNS, and the filter dropped it"
        finally:
            problems = []
            for node in nodes.values():
                node.stop()
                problems += node.tracebacks()
            assert not problems, "\n".join(problems)


def test_one_invite_links_a_lan_without_multicast(filtered_lan: dict[str, Node]) -> None:
    a, b, c = filtered_lan["a"], filtered_lan["b"], filtered_lan["c"]
    for n in (a, b, c):
        n.start()
    for n in (a, b, c):
        n.wait_up()
    assert not b.peers() and not c.peers(), "no multicast: nobody is discovered"
    code = a.cli_json("invite")[0]["code"]
    t0 = time.monotonic()
    assert b.cli_json("join", code)[0]["result"] == "joined"
    assert c.cli_json("join", code)[0]["result"] == "joined"

    def all_verified() -> bool:
        for n in (a, b, c):
            states = {p["nickname"]: p["state"] for p in n.peers().values()}
            others = {"nomc-a", "nomc-b", "nomc-c"} - {n.nick}
            if any(states.get(o) != "verified" for o in others):
                return False
        return True

    wait_for(all_verified, JOIN_LIMIT, "all three verified to each other")
    took = time.monotonic() - t0
    print(f"all verified {took:.2f} s after the first join (limit {JOIN_LIMIT:g} s)")
    assert took < JOIN_LIMIT, took
    # the room works across: a message from b reaches c (through the link px made, or a)
    b.cli("say", "over the filtered lan")
    wait_for(lambda: any(r.get("text") == "over the filtered lan"
                         for r in c.cli_json("history")), 10, "c got b's message")
