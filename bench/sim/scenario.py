"""One simulator run: build a mesh, let it settle, measure idle traffic, room messages, DMs
and churn; returns the figures as a dict (``python -m bench.sim --json`` prints it)."""

from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass

from tazcom.common import routercore

from . import topology
from .engine import EPOCH, LinkParams, Net, Node


@dataclass
class Options:
    nodes: int = 200
    topology: str = "random"
    degree: float = 6.0
    loss: float = 0.0
    latency: float = 0.005
    bandwidth: float = 1_250_000.0
    seed: int = 1
    hop_limit: int = 8
    room: int = 50
    dms: int = 50
    idle: float = routercore.PROFILE_EVERY
    churn: int = 2
    real_signatures: bool = False
    flood_dms: bool = False
    gap: float = 0.02
    per_frame: float = 0.0001
    hop_delay: float = 0.0
    hop_jitter: float = 0.0


def _settle(net: Net, since: float, quiet: float = 2.0, most: float = 120.0,
            step: float = 0.5) -> float | None:
    """Run until no mesh directory changed for ``quiet`` seconds and all are right; returns
    the time from ``since`` to the last change, or None if not settled within ``most``."""
    end = since + most
    while net.loop.now < end:
        net.loop.run_until(net.loop.now + step)
        last = max((n.mesh_changed for n in net.up_nodes()), default=since)
        if net.loop.now - last >= quiet and net.directory_errors() == 0:
            return max(0.0, last - since)
    return None


def _reach(net: Net, origin: Node) -> set[int]:
    dist = topology.bfs(net.alive_adjacency(), origin.index)
    return {i for i, d in dist.items() if 0 < d <= net.settings.hop_limit}


def _post(net: Net, node: Node, to: bytes | None, text: str) -> bytes | None:
    now = net.loop.now
    spec = routercore.PostSpec(client_id=net.rng.randbytes(16), to=to, text=text)
    [answer] = net.step(node, node.core.post([spec], EPOCH + now, now))
    net.step(node, node.core.settle_posts())
    return answer.message_id if not isinstance(answer, routercore.PostRefused) else None


def _quiesce(net: Net, rounds: int) -> None:
    """Let the flood finish, then ``rounds`` catch-up rounds (every node's anti-entropy)."""
    net.loop.run_until(net.loop.now + 5.0)
    for _ in range(rounds):
        net.loop.run_until(net.loop.now + net.settings.anti_entropy + 1.0)


def run(o: Options) -> dict:
    started = time.perf_counter()
    rng = random.Random(o.seed)
    settings = routercore.RouterSettings(hop_limit=o.hop_limit)
    if o.flood_dms:
        settings.path_fanout = 0
    net = Net(seed=o.seed, params=LinkParams(latency=o.latency, loss=o.loss,
                                             bandwidth=o.bandwidth),
              real_signatures=o.real_signatures, settings=settings, per_frame=o.per_frame,
              hop_delay=o.hop_delay)
    net.hop_jitter = o.hop_jitter
    for _ in range(o.nodes):
        net.add_node()
    edges = topology.build(o.topology, o.nodes, o.degree, rng)
    for a, b in sorted(edges):
        net.connect(net.nodes[a], net.nodes[b], delay=0.0)
    net.loop.run_until(0.0)  # links first, so the first profile lists them
    for node in net.nodes:
        net.start(node)
    initial = _settle(net, 0.0, most=600.0)
    fig: dict = {"nodes": o.nodes, "topology": o.topology, "edges": len(edges),
                 "mean_degree": round(2 * len(edges) / o.nodes, 2), "loss": o.loss,
                 "seed": o.seed, "hop_limit": o.hop_limit,
                 "signatures": "real" if o.real_signatures else "counted",
                 "initial_settle_s": initial}

    # idle: profiles and catch-up summaries only
    before = sum(n.sent_bytes for n in net.nodes)
    t0 = net.loop.now
    net.loop.run_until(t0 + o.idle)
    fig["idle_bytes_per_node_s"] = round(
        (sum(n.sent_bytes for n in net.nodes) - before) / (o.nodes * o.idle), 1)

    # room messages: each from a random node, 20 ms apart
    net.track_wire = True
    dups0 = sum(n.core.counts["duplicates"] for n in net.nodes)
    bytes0 = sum(n.sent_bytes for n in net.nodes)
    room: list[tuple[bytes, set[int]]] = []
    for i in range(o.room):
        origin = rng.choice(net.nodes)
        msg_id = _post(net, origin, None, f"room {i}")
        if msg_id is not None:
            room.append((msg_id, _reach(net, origin)))
            net.tracked.add(msg_id)
        net.loop.run_until(net.loop.now + o.gap)
    net.loop.run_until(net.loop.now + 5.0)
    first_pass = sum(sum(1 for i in want if msg in net.nodes[i].shown) for msg, want in room)
    bytes_flood = sum(n.sent_bytes for n in net.nodes) - bytes0
    dups_flood = sum(n.core.counts["duplicates"] for n in net.nodes) - dups0
    _quiesce(net, 2)
    expected = sum(len(w) for _, w in room) or 1
    got = sum(sum(1 for i in want if msg in net.nodes[i].shown) for msg, want in room)
    total_nodes = o.nodes - 1
    fig["delivery_room"] = got / expected
    fig["delivery_room_first_pass"] = first_pass / expected
    fig["delivery_room_all_nodes"] = got / ((len(room) or 1) * total_nodes)
    fig["dup_per_msg_node"] = round(dups_flood / ((len(room) or 1) * o.nodes), 3)
    copies = sum(net.copies[m] for m, _ in room)
    fig["copies_per_msg_node"] = round(copies / ((len(room) or 1) * o.nodes), 3)
    fig["bytes_per_node_per_msg"] = round(bytes_flood / ((len(room) or 1) * o.nodes), 1)

    # DMs between random pairs that know each other (the recipient's profile reached us)
    dm_ids: list[tuple[bytes, Node, Node]] = []
    for i in range(o.dms):
        a = rng.choice(net.nodes)
        known = sorted(a.core.directory)
        if not known:
            continue
        b = net.by_key[rng.choice(known)]
        msg_id = _post(net, a, b.key, f"dm {i}")
        if msg_id is not None:
            dm_ids.append((msg_id, a, b))
            net.tracked.add(msg_id)
        net.loop.run_until(net.loop.now + 0.02)
    net.loop.run_until(net.loop.now + 5.0)
    dm_first = sum(1 for m, _, b in dm_ids if m in b.shown)
    dm_bytes = sum(net.tracked_bytes[m] for m, _, _ in dm_ids)
    dm_copies = sum(net.copies[m] for m, _, _ in dm_ids)
    _quiesce(net, 2)
    n_dm = len(dm_ids) or 1
    # catch-up offers held DMs to every neighbour until a receipt releases them (unchanged)
    fig["dm_transmissions_incl_catchup"] = round(sum(net.copies[m] for m, _, _ in dm_ids)
                                                 / n_dm, 1)
    fig["delivery_dm"] = sum(1 for m, _, b in dm_ids if m in b.shown) / n_dm
    fig["delivery_dm_first_pass"] = dm_first / n_dm
    fig["dm_delivered_status"] = sum(1 for m, a, _ in dm_ids
                                     if a.statuses.get(m) == "delivered") / n_dm
    fig["dm_transmissions"] = round(dm_copies / n_dm, 1)
    fig["dm_bytes"] = round(dm_bytes / n_dm, 1)
    fig["dm_path_hops"] = round(sum(a.core.dist.get(b.key, 0) for _, a, b in dm_ids) / n_dm, 2)
    fig["shown_twice"] = sum(n.shown_twice for n in net.nodes)
    net.track_wire = False

    # churn: clean leaves, silent leaves and joins with an empty store, one at a time
    settles: dict[str, list[float | None]] = {"join": [], "leave": [], "silent_leave": []}
    for _ in range(o.churn):
        for what in ("leave", "silent_leave", "join"):
            t = net.loop.now
            if what == "join":
                node = net.add_node()  # new keys, empty store
                others = [n for n in net.up_nodes() if n is not node]
                for peer in rng.sample(others, k=min(max(1, int(o.degree)), len(others))):
                    net.connect(node, peer)
                net.start(node)
            else:
                victim = rng.choice([n for n in net.up_nodes()
                                     if _still_connected(net, n)] or net.up_nodes())
                net.leave(victim, silent=what == "silent_leave")
            settles[what].append(_settle(net, t, most=60.0))
    for what, values in settles.items():
        done = [v for v in values if v is not None]
        fig[f"settle_{what}_s"] = round(max(done), 3) if len(done) == len(values) and done \
            else None
    settled = settles["join"] + settles["leave"]
    fig["settle_s"] = round(max(settled), 3) if settled and None not in settled else None
    fig["dead_after_s"] = 9.0
    fig["wall_s"] = round(time.perf_counter() - started, 2)
    fig["wall_ms_per_node"] = round(fig["wall_s"] * 1000 / o.nodes, 2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    fig["max_rss_kib_per_node"] = round(rss / o.nodes, 1)
    fig["virtual_s"] = round(net.loop.now, 1)
    fig["signatures_counted"] = net.verified
    fig["path_sends"] = sum(n.core.counts["path"] for n in net.nodes)
    fig["path_fallbacks"] = sum(n.core.counts["fallback"] for n in net.nodes)
    fig["path_unknown"] = sum(n.core.counts["no_path"] for n in net.nodes)
    return fig


def _still_connected(net: Net, victim: Node) -> bool:
    """Would the mesh stay connected without ``victim``? (So every leave is measurable.)"""
    adj = net.alive_adjacency()
    rest = [i for i in adj if i != victim.index]
    if not rest:
        return False
    alive = set(rest)
    reached = topology.bfs(adj, rest[0], alive)
    return len(reached) == len(rest)
