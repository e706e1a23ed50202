"""Chat across a mesh of real nodes in network namespaces.

    python -m bench.mesh throughput [--messages 3000]   # A - B - C, through B
    python -m bench.mesh latency [--messages 200]       # a line of six nodes
    python -m bench.mesh flood [--nodes 30] [--messages 1000]
    python -m bench.mesh converge [--nodes 16] [--launches 50] [--diameter 8]

* throughput: unique room messages per second that C shows, all posted at A
  through A's own request path and relayed (signature checked) by B, against
  PyNaCl Ed25519 verifications per second on one core in the same run (the
  ceiling of any verifying relay). Goal: at least 0.1 of it and 1000/s.
* latency: stop-and-wait room messages on A - B - C - D - E - F; the time each
  node's bus shows the message, per hop (p50/p99) and over 5 hops. Goal: p99
  under 5 ms per hop and under 25 ms for 5 hops.
* flood: room messages from random origins over 30+ nodes on overlapping
  bridges; delivery ratio (goal 100 %) and duplicates received per message per
  node, against the number of links.
* converge: N nodes on a chain of LAN segments (``tests.topology.chain``: 3-6
  hosts a segment, ``--diameter`` hops end to end, the default hop limit 8),
  launched 1 s apart in a random order, K times over (fresh nodes each time).
  Per launch: when every node lists every other as ``verified`` (neighbours) or
  ``mesh`` after the last launch, pairs still wrong after 60 s ("stuck"), and a
  room message and a DM from one end to the other. Goals (the issue's): 0 stuck
  peers, convergence p99 within 10 s, 100 % delivery at 8 hops. After the last
  launch, every node's CPU at idle (profiles, catch-up and mDNS still run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time

import nacl.signing

from bench.meshlab import lab, post_many
from bench.procstat import busy_seconds
from bench.report import Figure, print_report
from tazcom.common import rpc
from tazcom.common.keys import DOMAIN_ENVELOPE
from tests.harness import BULK_NOTE, BusTap, request, wait_for


def verify_rate(seconds: float = 1.5) -> float:
    sk = nacl.signing.SigningKey(os.urandom(32))
    msg = DOMAIN_ENVELOPE + os.urandom(260)
    sig = sk.sign(msg).signature
    vk = sk.verify_key
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            vk.verify(msg, sig)
        n += 100
    return n / (time.perf_counter() - t0)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def throughput(n: int) -> list[Figure]:
    with lab({"a": [0], "b": [0, 1], "c": [1]}) as mesh:
        mesh.start()
        mesh.wait_links([("a", "b"), ("c", "b")])
        mesh.wait_mesh("a", ["c"])
        a, c = mesh.nodes["a"], mesh.nodes["c"]
        asyncio.run(post_many(a, ["warm-up"] * 50))
        tap = BusTap(c, "chat.message")
        texts = [f"bench {i:06d} " + "x" * 185 for i in range(n)]  # 200-byte messages
        t0 = time.time()
        ids = asyncio.run(post_many(a, texts))
        posted = time.time() - t0
        want = {i.hex() for i in ids}
        wait_for(lambda: want <= {e.id for e in tap.of("chat.message")}, 120,
                 "every message at c", interval=0.2)
        arrivals = [t for t, e in tap.arrivals if e.id in want]
        seen = [e.id for e in tap.of("chat.message") if e.id in want]
        tap.close()
    rate = len(arrivals) / (max(arrivals) - min(arrivals))
    ceiling = verify_rate()
    return [
        Figure("room messages/s shown at C, relayed by B", rate, "msg/s", ceiling,
               "Ed25519 verify/s, 1 core", ">= 0.1 x and >= 1000/s",
               rate >= 0.1 * ceiling and rate >= 1000),
        Figure("posted/s at A (accepted = committed)", n / posted, "msg/s", ceiling,
               "Ed25519 verify/s, 1 core", "report"),
        Figure("delivered once at C", len(set(seen)) / n * 100, "%", 100.0, "sent", "100 %",
               len(set(seen)) == n == len(seen)),
    ]


def latency(n: int) -> list[Figure]:
    hosts = ["a", "b", "c", "d", "e", "f"]
    links = {h: [b for b in (i - 1, i) if 0 <= b < 5] for i, h in enumerate(hosts)}
    with lab(links) as mesh:
        mesh.start()
        mesh.wait_links([(hosts[i], hosts[i + 1]) for i in range(5)])
        mesh.wait_mesh("a", hosts[1:], timeout=90)
        taps = {h: BusTap(mesh.nodes[h], "chat.message") for h in hosts}
        per_hop: list[float] = []
        end_to_end: list[float] = []
        try:
            for i in range(n):
                [msg_id] = asyncio.run(post_many(mesh.nodes["a"], [f"ping {i}"]))
                key = msg_id.hex()
                times = {}
                for h in hosts:
                    tap = taps[h]
                    wait_for(lambda t=tap, k=key: any(e.id == k for _, e in t.arrivals), 10,
                             f"message at {h}", interval=0.001)
                    times[h] = next(t for t, e in tap.arrivals if e.id == key)
                per_hop += [times[hosts[j + 1]] - times[hosts[j]] for j in range(5)]
                end_to_end.append(times["f"] - times["a"])
        finally:
            for tap in taps.values():
                tap.close()
    ms = 1000
    return [
        Figure("per-hop latency p50", statistics.median(per_hop) * ms, "ms", 5.0, "goal",
               "report"),
        Figure("per-hop latency p99", pct(per_hop, 0.99) * ms, "ms", 5.0, "goal", "< 5 ms",
               pct(per_hop, 0.99) < 0.005),
        Figure("5-hop latency p50", statistics.median(end_to_end) * ms, "ms", 25.0, "goal",
               "report"),
        Figure("5-hop latency p99", pct(end_to_end, 0.99) * ms, "ms", 25.0, "goal",
               "< 25 ms", pct(end_to_end, 0.99) < 0.025),
    ]


def flood(nodes: int, n: int) -> list[Figure]:
    from bench.sim.topology import segment_membership

    rng = random.Random(7)
    hosts = [f"h{i:02d}" for i in range(nodes)]
    # the same segments as ``python -m bench.sim --topology segments``
    links = dict(zip(hosts, segment_membership(nodes), strict=True))
    bridges = max(4, nodes // 3)
    members = {b: [h for h in hosts if b in links[h]] for b in range(bridges)}
    pairs = {tuple(sorted((x, y))) for m in members.values() for x in m for y in m if x != y}
    with lab(links) as mesh:
        mesh.start(timeout=300)
        mesh.wait_links(sorted(pairs)[:: max(1, len(pairs) // 40)], timeout=120)
        mesh.wait_mesh(hosts[0], hosts[1:], timeout=180)
        before = {h: request(mesh.nodes[h], "router", rpc.GetRouterStats()) for h in hosts}
        origins = [rng.choice(hosts) for _ in range(n)]
        ids: list[bytes] = []
        for h in hosts:
            texts = [f"flood {i} from {h}" for i, o in enumerate(origins) if o == h]
            if texts:
                ids += asyncio.run(post_many(mesh.nodes[h], texts, in_flight=16))
        want = set(ids)
        got = {}
        deadline = time.monotonic() + 120
        for h in hosts:
            while True:
                history = request(mesh.nodes[h], "store", rpc.StoreHistory(limit=10000))
                got[h] = [m.id for m in history.messages if m.id in want]
                if len(set(got[h])) == len(want) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        after = {h: request(mesh.nodes[h], "router", rpc.GetRouterStats()) for h in hosts}
    delivered = sum(len(set(g)) for g in got.values()) / (len(want) * nodes)
    dups = sum(after[h].duplicates - before[h].duplicates for h in hosts) / (len(want) * nodes)
    avg_degree = 2 * len(pairs) / nodes
    return [
        Figure(f"delivery ratio, {n} messages over {nodes} nodes", delivered * 100, "%", 100,
               "every message at every node", "100 %", delivered == 1.0),
        Figure("duplicates received per message per node", dups, "copies", avg_degree - 1,
               f"flooding bound: degree - 1 ({len(pairs)} links)", "report"),
    ]


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def converge(nodes: int, launches: int, diam: int, gap: float, seed: int,
             idle_seconds: float = 60) -> list[Figure]:
    from tests.cluster import cluster
    from tests.netns import why_unavailable
    from tests.topology import chain, ends

    reason = why_unavailable()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    topo = chain(nodes, diam)
    a, z = ends(topo)
    rng = random.Random(seed)
    times: list[float] = []
    stuck: list[tuple[int, list]] = []
    wrong_launches = 0
    room_ok = dm_ok = 0
    room_lat: list[float] = []
    dm_delivered: list[float] = []
    tracebacks: list[str] = []
    idle: dict[str, float] = {}
    with cluster(topo) as c:
        for launch in range(launches):
            c.fresh_nodes()
            last = c.launch(gap=gap, rng=rng)
            conv = c.watch(last, timeout=60)
            if conv.converged_after is not None:
                times.append(conv.converged_after)
            else:
                wrong_launches += 1
                stuck.append((launch, conv.stuck))
            arrived, _ = c.room_message(a, f"end to end {launch}", timeout=15)
            want = len(topo) - 1
            room_ok += len(arrived) == want
            if len(arrived) == want:
                room_lat.append(max(arrived.values()))
            got, delivered = c.direct_message(a, z, f"dm {launch}", timeout=15)
            dm_ok += delivered is not None
            if delivered is not None:
                dm_delivered.append(delivered)
            print(f"launch {launch + 1}/{launches}: converged {secs(conv.converged_after)}"
                  f"{f' wrong: {conv.wrong[:6]}' if conv.wrong else ''}; room "
                  f"{len(arrived)}/{want}; dm {secs(got)}, delivered {secs(delivered)}",
                  flush=True)
            if launch == launches - 1 and idle_seconds:
                time.sleep(10)  # noqa: sleep-ok - let the messages' aftermath settle
                pids = {h: n.own_pids() for h, n in c.nodes.items()}
                before = {h: busy_seconds(p) for h, p in pids.items()}
                time.sleep(idle_seconds)  # noqa: sleep-ok - the measurement window
                idle = {h: (busy_seconds(p) - before[h]) / idle_seconds * 100
                        for h, p in pids.items()}
            tracebacks += c.stop()
    n_stuck = sum(len(s) for _, s in stuck)
    p99 = pct(times, 0.99) if times else float("inf")
    return [
        Figure(f"stuck neighbour states after 60 s, {launches} launches of {nodes} nodes",
               n_stuck, "pairs", 0, "goal", "0", n_stuck == 0),
        Figure("launches not converged within 60 s", wrong_launches, "launches", 0, "goal", "0",
               wrong_launches == 0),
        Figure("convergence after the last launch, p50", statistics.median(times) if times
               else float("inf"), "s", 10.0, "goal (p99)", "report"),
        Figure("convergence after the last launch, p99", p99, "s", 10.0, "goal", "<= 10 s",
               p99 <= 10.0),
        Figure(f"room message delivered to all, {diam} hops end to end", room_ok / launches
               * 100, "%", 100.0, "goal", "100 %", room_ok == launches),
        Figure(f"DM delivered end to end ({diam} hops), receipt back", dm_ok / launches * 100,
               "%", 100.0, "goal", "100 %", dm_ok == launches),
        Figure("room message at the farthest node, p50", statistics.median(room_lat) * 1000
               if room_lat else float("inf"), "ms", None, "", "report"),
        Figure("DM delivered (receipt back), p50", statistics.median(dm_delivered) * 1000
               if dm_delivered else float("inf"), "ms", None, "", "report"),
        Figure("tracebacks in node logs", len(tracebacks), "", 0, "goal", "0",
               not tracebacks),
    ] + ([
        Figure(f"idle CPU per node in the mesh, mean over {idle_seconds:g} s (all services)",
               statistics.mean(idle.values()), "% of a core", 0.2, "goal for a lone node",
               "report"),
        Figure("idle CPU per node in the mesh, max", max(idle.values()), "% of a core", 0.2,
               "goal for a lone node", "report"),
    ] if idle else [])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["throughput", "latency", "flood", "converge"])
    ap.add_argument("--messages", type=int, default=None)
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--launches", type=int, default=50)
    ap.add_argument("--diameter", type=int, default=8)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between launches")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.what == "throughput":
        figures = throughput(args.messages or 3000)
    elif args.what == "latency":
        figures = latency(args.messages or 200)
    elif args.what == "flood":
        figures = flood(args.nodes or 30, args.messages or 1000)
    else:
        figures = converge(args.nodes or 16, args.launches, args.diameter, args.gap, args.seed)
    print_report(f"mesh {args.what} (network namespaces)", figures)
    print(BULK_NOTE)


if __name__ == "__main__":
    main()
