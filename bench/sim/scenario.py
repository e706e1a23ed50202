"""One simulator run: build a mesh, let it settle, measure idle traffic, room messages, DMs
and churn; returns the figures as a dict (``python -m bench.sim --json`` prints it).

With adversaries (``flooder``, ``bad_relays``; bench/sim/adversary.py) they start after
the idle period: the flood begins, the bad relays turn bad, and the room messages and
DMs are those of honest nodes (neither the flooder nor a bad relay), posted while the
flood goes on. Then it measures what issue 12 asks: honest delivery, what each honest
node stores from the flooder against its quota, how much of the flood got in, and who
was banned."""

from __future__ import annotations

import random
import resource
import sys
import time
from dataclasses import dataclass

from tazcom.common import routercore
from tazcom.common.quota import QuotaSettings

from . import topology
from .adversary import BadRelay, Flooder
from .engine import EPOCH, LinkParams, Net, Node, seeded_seal


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
    #: Adversaries: one flooding node (room messages per second, DMs per second, for how
    #: long), a fraction of the other nodes as relays that drop or corrupt what they forward
    #: (each ``envs`` frame with probability ``tamper``).
    flooder: bool = False
    flood_rate: float = 50.0
    flood_dm_rate: float = 0.0
    flood_s: float = 600.0
    flood_age: float = 0.0
    bad_relays: float = 0.0
    tamper: float = 1.0
    bad_mode: str = "either"
    #: Storage quotas (KiB; None: the core's defaults).
    quota_origin_kib: float | None = None
    quota_total_kib: float | None = None
    catchup_rounds: int = 2
    #: A line on stderr as each phase begins (wall and virtual time), for long runs.
    progress: bool = False


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


def _phase(o: Options, net: Net, started: float, name: str) -> None:
    if o.progress:
        print(f"bench.sim: {name} at {time.perf_counter() - started:.0f} s wall, "
              f"{net.loop.now:.1f} s virtual", file=sys.stderr, flush=True)


def _reach(net: Net, origin: Node, adj: dict[int, set[int]] | None = None,
           through: set[int] | None = None) -> set[int]:
    """Nodes within the hop limit of ``origin`` (on ``adj``, default: the links up now),
    through nodes of ``through`` only (default: any)."""
    dist = topology.bfs(adj or net.alive_adjacency(), origin.index, through)
    return {i for i, d in dist.items() if 0 < d <= net.settings.hop_limit}


@dataclass
class Adversaries:
    flooder: Node | None
    flood: Flooder | None
    bad: dict[int, BadRelay]
    honest: list[Node]


def _adversaries(net: Net, o: Options, rng: random.Random) -> Adversaries:
    """Pick the flooder and the bad relays (by the seed), turn them bad, start the flood."""
    nodes = list(net.nodes)
    flooder = rng.choice(nodes) if o.flooder else None
    others = [n for n in nodes if n is not flooder]
    bad = sorted(rng.sample(others, k=round(o.bad_relays * len(nodes))), key=lambda n: n.index)
    relays = {n.index: BadRelay(random.Random(rng.random()), o.tamper, o.bad_mode)
              for n in bad}
    net.filters.update(relays)
    honest = [n for n in others if n.index not in relays]
    flood = None
    if flooder is not None:
        net.watch = flooder.key
        flood = Flooder(net, flooder, o.flood_rate, o.flood_dm_rate,
                        victims=rng.sample(honest, k=min(10, len(honest))),
                        rng=random.Random(rng.random()), age=o.flood_age)
        flood.start(o.flood_s)
    return Adversaries(flooder, flood, relays, honest)


def _post(net: Net, node: Node, to: bytes | None, text: str) -> bytes | None:
    now = net.loop.now
    spec = routercore.PostSpec(client_id=net.rng.randbytes(16), to=to, text=text)
    with seeded_seal(net.seal_rng):
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
    if o.quota_origin_kib is not None or o.quota_total_kib is not None:
        q = QuotaSettings()
        settings.quota = QuotaSettings(
            origin_bytes=q.origin_bytes if o.quota_origin_kib is None
            else int(o.quota_origin_kib * 1024),
            total_bytes=q.total_bytes if o.quota_total_kib is None
            else int(o.quota_total_kib * 1024))
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

    _phase(o, net, started, "idle")
    # idle: profiles and catch-up summaries only
    before = sum(n.sent_bytes for n in net.nodes)
    t0 = net.loop.now
    net.loop.run_until(t0 + o.idle)
    fig["idle_bytes_per_node_s"] = round(
        (sum(n.sent_bytes for n in net.nodes) - before) / (o.nodes * o.idle), 1)

    adv = _adversaries(net, o, rng) if o.flooder or o.bad_relays else None
    honest = adv.honest if adv is not None else net.nodes
    # who may receive, and through whom: honest nodes, through honest or bad relays (not
    # the flooder), and, apart, through honest nodes only
    relays_ok = {n.index for n in honest} | set(adv.bad if adv else ())
    honest_ix = {n.index for n in honest}
    graph = net.alive_adjacency(net.edges) if adv is not None else None  # bans end

    _phase(o, net, started, "room")
    # room messages: each from a random (honest) node, 20 ms apart
    net.track_wire = True
    dups0 = sum(n.core.counts["duplicates"] for n in net.nodes)
    bytes0 = sum(n.sent_bytes for n in net.nodes)
    room: list[tuple[bytes, set[int], set[int]]] = []
    for i in range(o.room):
        origin = rng.choice(honest)
        msg_id = _post(net, origin, None, f"room {i}")
        if msg_id is not None:
            if adv is None:
                want = want_honest = _reach(net, origin)
            else:
                want = _reach(net, origin, graph, relays_ok) & honest_ix
                want_honest = _reach(net, origin, graph, honest_ix)
            room.append((msg_id, want, want_honest))
            net.tracked.add(msg_id)
        net.loop.run_until(net.loop.now + o.gap)
    net.loop.run_until(net.loop.now + 5.0)
    first_pass = _shown(net, room)
    bytes_flood = sum(n.sent_bytes for n in net.nodes) - bytes0
    dups_flood = sum(n.core.counts["duplicates"] for n in net.nodes) - dups0
    _quiesce(net, o.catchup_rounds)
    expected = sum(len(w) for _, w, _ in room) or 1
    got = _shown(net, room)
    total_nodes = o.nodes - 1
    fig["delivery_room"] = got / expected
    fig["delivery_room_first_pass"] = first_pass / expected
    fig["delivery_room_all_nodes"] = got / ((len(room) or 1) * total_nodes)
    if adv is not None:
        fig["room_pairs"] = expected
        fig["room_pairs_by_catch_up"] = got - first_pass
        fig["room_pairs_missed"] = expected - got
        fig["room_pairs_only_behind_bad_relays"] = cut = sum(len(w - h) for _, w, h in room)
        # what any protocol can reach: a relay that destroys all it forwards cuts off the
        # nodes behind it (a node whose only link is to a bad relay)
        fig["delivery_room_bound"] = 1 - cut / expected
        fig["delivery_room_honest_paths"] = _shown(net, room, honest_paths=True) / (
            sum(len(h) for _, _, h in room) or 1)
    fig["dup_per_msg_node"] = round(dups_flood / ((len(room) or 1) * o.nodes), 3)
    copies = sum(net.copies[m] for m, _, _ in room)
    fig["copies_per_msg_node"] = round(copies / ((len(room) or 1) * o.nodes), 3)
    fig["bytes_per_node_per_msg"] = round(bytes_flood / ((len(room) or 1) * o.nodes), 1)

    _phase(o, net, started, "dms")
    # DMs between random (honest) pairs that know each other (the recipient's profile
    # reached us)
    dm_ids: list[tuple[bytes, Node, Node]] = []
    for i in range(o.dms):
        a = rng.choice(honest)
        known = sorted(k for k in a.core.directory if adv is None
                       or net.by_key[k].index in honest_ix)
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
    _quiesce(net, o.catchup_rounds)
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
    if adv is not None:
        # pairs whose every path within the hop limit crosses a bad relay (or the flooder)
        reachable = [(m, b) for m, a, b in dm_ids
                     if b.index in _reach(net, a, graph, honest_ix)]
        fig["dms_only_behind_bad_relays"] = len(dm_ids) - len(reachable)
        fig["delivery_dm_honest_paths"] = sum(1 for m, b in reachable if m in b.shown) / (
            len(reachable) or 1)
    net.track_wire = False
    if adv is not None:
        _phase(o, net, started, "flood end")
        _adversary_figures(net, o, adv, fig, t0 + o.idle)

    _phase(o, net, started, "churn")
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


def _shown(net: Net, room: list[tuple[bytes, set[int], set[int]]],
           honest_paths: bool = False) -> int:
    return sum(sum(1 for i in (h if honest_paths else w) if m in net.nodes[i].shown)
               for m, w, h in room)


def _adversary_figures(net: Net, o: Options, adv: Adversaries, fig: dict, began: float
                       ) -> None:
    """Let the flood end and catch-up carry what got in (then backlog: its own, larger
    limit) as far as it goes; then what each honest node stores from the flooder against
    its quota, how much of the flood got in, and the bans."""
    if adv.flood is not None:
        net.loop.run_until(max(net.loop.now, began + o.flood_s))
        _quiesce(net, o.catchup_rounds)
    honest = adv.honest
    q = net.settings.quota
    fig["flooder"] = adv.flooder.index if adv.flooder is not None else None
    fig["bad_relays"] = len(adv.bad)
    fig["quota_origin_bytes"] = q.origin_bytes
    fig["quota_total_bytes"] = q.total_bytes
    if adv.flood is not None and adv.flooder is not None:
        fk = adv.flooder.key
        fl = adv.flood
        stored = [n.store.stored[fk] for n in honest]
        held = [n.store.used.get(fk, 0) for n in honest]
        peaks = [n.watched_peak for n in honest]
        fig.update(
            flood_rate=o.flood_rate, flood_dm_rate=o.flood_dm_rate, flood_s=o.flood_s,
            flood_made=fl.made, flood_offered=fl.offered,
            flood_accepted=sum(stored),  # envelope copies honest nodes committed, mesh-wide
            flood_accepted_max_node=max(stored, default=0),
            flood_distinct_accepted=len(net.watched_ids),  # by any node
            flood_bytes_max_node=max(peaks, default=0),  # against the origin quota
            flood_bytes_end_max_node=max(held, default=0),
            flood_nodes_over_quota=sum(1 for p in peaks if p > q.origin_bytes),
            flood_evicted=sum(n.core.counts["evicted"] for n in honest),
            flood_dm_bytes_to_victims_max=max(
                (sum(len(m.signed) + len(m.sig) for m in v.store.rows.values()
                     if m.origin == fk and m.to == v.key) for v in fl.victims), default=0),
            nodes_over_total_quota=sum(1 for n in honest
                                       if sum(n.store.used.values()) > q.total_bytes),
            rate_limited=sum(n.core.counts["rate_limited"] for n in honest))
    kind = {n.index: "honest" for n in honest} | {i: "bad" for i in adv.bad}
    if adv.flooder is not None:
        kind[adv.flooder.index] = "flooder"
    banned = {"flooder": 0, "bad": 0, "honest": 0}
    for _t, _by, who, _s in net.bans:
        banned[kind.get(who, "honest")] += 1
    fig["bans_of_flooder"] = banned["flooder"]
    fig["bans_of_bad_relays"] = banned["bad"]
    fig["bans_of_honest"] = banned["honest"]
    fig["bad_relays_banned"] = len({who for _t, _by, who, _s in net.bans if who in adv.bad})
    fig["bad_relay_dropped"] = sum(b.dropped for b in adv.bad.values())
    fig["bad_relay_corrupted"] = sum(b.corrupted for b in adv.bad.values())


def _still_connected(net: Net, victim: Node) -> bool:
    """Would the mesh stay connected without ``victim``? (So every leave is measurable.)"""
    adj = net.alive_adjacency()
    rest = [i for i in adj if i != victim.index]
    if not rest:
        return False
    alive = set(rest)
    reached = topology.bfs(adj, rest[0], alive)
    return len(reached) == len(rest)
