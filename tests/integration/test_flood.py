"""A flooding neighbour in namespaces (issue 12): line A - B - C, and a flooder F on a LAN
of its own with B. F links to B and floods room messages signed by itself and by sybil
identities. B refuses the excess and bans F; C keeps no more from F than its quota; an
honest room message from A still reaches C about as fast as when the LAN is idle."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tazcom.common import rpc
from tests.harness import ROOT, BusTap, Node, request, short_tmp, wait_for
from tests.netns import lan, why_unavailable

pytestmark = pytest.mark.skipif(why_unavailable() is not None,
                                reason=why_unavailable() or "")

#: C keeps at most this much of one origin's messages (a small quota, to be reached).
QUOTA_KIB = 2
FLOOD_RATE = 400.0
FLOOD_SECONDS = 12.0
SYBILS = 3


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[dict[str, Node], object]]:
    with lan({"a": [0], "b": [0, 1, 2], "c": [1], "f": [2]}) as net:
        root = short_tmp()
        config = {"c": f"[router]\nquota_origin_mib = {QUOTA_KIB / 1024}\n"}
        nodes = {h: Node(root / h, f"node-{h}", netns=net.ns(h),
                         interfaces=",".join(net.interfaces[h]), config=config.get(h))
                 for h in "abc"}
        try:
            for n in nodes.values():
                n.start()
            for n in nodes.values():
                n.wait_up(30)
            wait_for(lambda: (p := nodes["c"].peers().get("node-a")) and p["state"] == "mesh",
                     30, "c to see a over the mesh")
            yield nodes, net
        finally:
            problems = []
            for n in nodes.values():
                n.stop()
                problems += n.tracebacks()
            assert not problems, "\n".join(problems)


def post(node: Node, text: str) -> rpc.PostResult:
    import os
    return request(node, "router", rpc.Post(client_id=os.urandom(16), text=text), timeout=10)


def latencies(a: Node, tap: BusTap, n: int, gap: float, tag: str) -> list[float]:
    """Post ``n`` room messages from ``a``, ``gap`` apart; seconds each took to show at the
    tap's node (the envelope's stamp to the event's arrival: one clock, one kernel)."""
    ids = [post(a, f"{tag} {i}").message_id.hex() for i in range(n)
           if time.sleep(gap) is None]
    wait_for(lambda: {e.id for e in tap.of("chat.message")} >= set(ids), 20,
             f"{tag}: every honest message at c")
    return sorted(at - ev.sent / 1000 for at, ev in tap.arrivals
                  if getattr(ev, "id", None) in ids)


def stored_from(node: Node, origins: list[str]) -> tuple[int, int]:
    """(rows, bytes) the node's store keeps from these origins."""
    db = sqlite3.connect(f"file:{node.home}/store.sqlite?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(origins))
        rows, size = db.execute(
            f"SELECT count(*), coalesce(sum(length(signed) + length(sig)), 0) FROM messages "
            f"WHERE origin IN ({marks})", [bytes.fromhex(o) for o in origins]).fetchone()
        return rows, size
    finally:
        db.close()


def test_a_flooding_neighbour_is_held_to_the_human_rate(mesh) -> None:
    nodes, net = mesh
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    tap = BusTap(c, "chat.message")
    try:
        idle = latencies(a, tap, 12, 0.25, "idle")
        idle_p99 = idle[-1]
        port = request(b, "gateway", rpc.GetGatewayInfo()).port
        b_addr = net.addresses["b"][2]
        flooder = subprocess.Popen(
            ["ip", "netns", "exec", net.ns("f"), sys.executable, "-m", "tests.flooder",
             f"{b_addr}:{port}", "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_SECONDS),
             "--sybils", str(SYBILS)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: request(b, "router", rpc.GetRouterStats()).rate_limited > 0, 10,
                     "b to refuse the flood")
            loaded = latencies(a, tap, 8, 0.4, "under flood")
            out, _ = flooder.communicate(timeout=FLOOD_SECONDS + 30)
        finally:
            if flooder.poll() is None:
                flooder.kill()
        report = json.loads(out)
        stats = request(b, "router", rpc.GetRouterStats())
        print(f"idle p50 {statistics.median(idle) * 1000:.1f} ms p99 {idle_p99 * 1000:.1f} ms; "
              f"under flood p50 {statistics.median(loaded) * 1000:.1f} ms max "
              f"{loaded[-1] * 1000:.1f} ms (limit 2 x idle p99 = {2 * idle_p99 * 1000:.1f} "
              f"ms); flooder sent {report['sent']} over {report['links']} links, closed "
              f"{report['closes']}; b refused {stats.rate_limited}, banned {stats.banned}")
        # F's excess is refused at B, and F is banned: its link closed, and every new one
        # refused until the ban ends (it kept trying)
        assert stats.rate_limited > 0 and stats.banned >= 1
        assert report["links"] > 3 and report["closes"].get("banned", 0) >= report["links"] - 1
        kept_b, _ = stored_from(b, report["origins"])
        per_origin = 20 + 2 * (FLOOD_SECONDS + 5)  # a burst, then the human rate
        assert kept_b <= len(report["origins"]) * per_origin, kept_b
        # C keeps no more from F's origins than its quota, each
        wait_for(lambda: request(c, "router", rpc.GetRouterStats()).accepted > 0, 5, "c")
        for origin in report["origins"]:
            _rows, size = stored_from(c, [origin])
            assert size <= QUOTA_KIB * 1024, (origin[:16], size)
        assert request(c, "router", rpc.GetRouterStats()).evicted > 0  # the quota was reached
        # an honest message still reaches C about as fast as on an idle LAN
        assert statistics.median(loaded) <= 2 * idle_p99, (loaded, idle)
    finally:
        tap.close()
