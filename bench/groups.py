"""Private groups: what a group message costs beside a room message, simulated and on real
nodes.

    python -m bench.groups [--members 50] [--nodes 60] [--messages 200] [--sim-only] [--json]

Simulated (bench/sim: the real ``RouterCore`` of every node on a virtual clock, delegated
keys as real routers have them, real Ed25519 signatures): ``--members`` of ``--nodes``
nodes of a random connected mesh (mean degree 6) form a group (one admin invites the
others one by one, each accepts), then:

a. steady state, the sender's chain already distributed: one member's group message beside
   its room message, ``--messages`` of each, in alternating blocks. CPU is the wall time of
   the core's step (``group_say`` against ``post``, each with ``settle_posts``, executed
   by the simulator's in-memory shell); bytes are those of the envelopes the step
   originates (signed bytes and signature) and those the sender transmits (frames).
   Goal: a group message costs the sender at most 2x a room message. Also reported: the
   whole mesh's bytes (idle traffic subtracted) and simulator time per message, where a
   group message adds a receipt from every member back to its author.
b. the first message in an epoch: the sender makes a new chain and seals it to every
   other member before it publishes (at the group's start, and again after a removal).
c. a removal at full size: the admin removes one member (the op, sealed to every member and
   to the removed one), then every remaining member writes its first message of the new
   epoch (each seals a new chain to all the others). The removed member keeps relaying
   and storing the group's envelopes; it must open none of these, every other member all.
d. time from ``say`` to the last member's opening it (``StoreText``), virtual, p50 and
   max over the steady-state messages, beside the room message's time to every node.

The mesh's bytes are counted by what the frames carry (each kind of envelope, custody,
catch-up). Each phase is followed by two periodic catch-up rounds and what they carry
counts (``--no-catch-up``: the first pass only: floods, paths, custody and fallbacks; a
link coming up still syncs). This benchmark's first runs found two catch-up bugs that
made those rounds storms at a group of 50 (an id list of over 2048 ids taken as the
whole bucket; a relay holding an envelope whose receipt it had relayed): both are fixed
in the router core, with tests (tests/unit/test_catchup_lists.py).

Real nodes (root and ``ip netns`` only; ``--sim-only`` skips them): five nodes in network
namespaces (tests/harness.py ``lan_nodes``; a on bridge 0, b on 0 and 1, c on 1, d on 1
and 2, e on 2: up to three hops), with their default settings (flood limits included:
messages are paced at most ``1 / --real-gap`` a second). a creates a group, invites the
four others, they accept; then ``--real-messages`` group messages and as many room
messages, stop and wait, each timed from the request to a's router until every other
node's bus shows it (``chat.message``, tests/harness.py ``BusTap``); and the CPU time of
a's router per message (bench/procstat.py, its idle rate subtracted).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.report import Figure, print_report
from bench.sim import topology
from bench.sim.engine import EPOCH, Net, Node
from tazcom.common import envelope, routercore, routing, rpc
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.events import ChatMessage

NAME = "bench-group"
#: With catch-up (the default), two catch-up rounds (routercore.ANTI_ENTROPY) and a little after
#: each phase: what catch-up carries after a phase is counted in it. Without, what follows
#: a phase's first pass (paths, custody, fallbacks).
CATCH_UP = 2 * routercore.ANTI_ENTROPY + 10.0
FIRST_PASS = 10.0
#: Goal of issue 16: a group message costs its sender at most this many room messages.
SENDER_GOAL = 2.0


def say(msg: str) -> None:
    print(f"bench.groups: {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


# -- simulated ------------------------------------------------------------------------------


class TimedNet(Net):
    """The simulator, noting when each node opened a group message (``StoreText``) and
    showed a room message (``chat.message``), in virtual time, and the bytes every node
    transmits by what they carry (``wire``): the envelopes of each kind (a frame's bytes
    shared among its envelopes by size), and each other router message."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.opened_at: dict[bytes, dict[int, float]] = defaultdict(dict)
        self.shown_at: dict[bytes, dict[int, float]] = defaultdict(dict)
        self.wire: Counter[str] = Counter()

    def transmit(self, node: Node, to: bytes, body: bytes, t: float) -> None:
        before = node.sent_bytes
        super().transmit(node, to, body, t)
        size = node.sent_bytes - before
        if not size:
            return  # no link: nothing sent
        try:
            msg = routing.decode(body)
        except RemoteProtocolError:
            self.wire["other"] += size
            return
        if not isinstance(msg, routing.Envs) or not msg.entries:
            self.wire[type(msg).__name__] += size
            return
        weights = [len(signed) + len(sig) for _, signed, sig in msg.entries]
        for (_, signed, _), w in zip(msg.entries, weights, strict=True):
            kind = envelope.KIND_NAMES.get(envelope.kind_of(signed) or 0, "?")
            self.wire[kind] += size * w / sum(weights)

    def execute(self, node: Node, a: Any, send_at: float) -> Any:
        if isinstance(a, routercore.StoreText):
            self.opened_at[a.id].setdefault(node.index, self.loop.now)
        elif isinstance(a, routercore.Emit) and a.event is ChatMessage \
                and a.fields.get("kind") == "room":
            self.shown_at[bytes.fromhex(a.fields["id"])].setdefault(node.index, self.loop.now)
        return super().execute(node, a, send_at)


@dataclass
class Cost:
    """One core step of one node: its CPU, the envelopes it originated (signed + sig
    bytes) and the bytes it transmitted (frames, ``FRAME_OVERHEAD`` included)."""

    cpu_us: float
    envelopes: int
    originated: int
    sent: int

    @staticmethod
    def total(costs: list[Cost]) -> Cost:
        return Cost(sum(c.cpu_us for c in costs), sum(c.envelopes for c in costs),
                    sum(c.originated for c in costs), sum(c.sent for c in costs))


def measured(net: Net, node: Node, make: Callable[[float, float], routercore.Step]
             ) -> tuple[Any, Cost, float]:
    """Run one step of ``node`` now as ``Net.step`` does, and ``settle_posts`` after it (as
    services/router.py after answering); returns its result, its cost and the virtual time."""
    own: list[rpc.StoredMessage] = []
    now = net.loop.now

    def execute(a: Any) -> Any:
        if isinstance(a, routercore.Commit):
            own.extend(m for m in a.items if m.own and m.origin == node.key)
        return net.execute(node, a, now)

    sent0 = node.sent_bytes
    gc.disable()
    try:
        t0 = time.perf_counter()
        result = routercore.drive(make(EPOCH + now, now), execute)
        routercore.drive(node.core.settle_posts(), execute)
        cpu = time.perf_counter() - t0
    finally:
        gc.enable()
    net.arm(node)
    return result, Cost(cpu * 1e6, len(own), sum(len(m.signed) + len(m.sig) for m in own),
                        node.sent_bytes - sent0), now


def group_say(net: Net, node: Node, text: str) -> tuple[rpc.PostResult, Cost, float]:
    cid = net.rng.randbytes(16)
    result, cost, at = measured(net, node, lambda now, mono: node.core.group_say(
        NAME, text, cid, now, mono))
    if not isinstance(result, rpc.PostResult):
        raise SimError(f"group.say at n{node.index} refused: {result}")
    return result, cost, at


def room_post(net: Net, node: Node, text: str) -> tuple[rpc.PostResult, Cost, float]:
    spec = routercore.PostSpec(client_id=net.rng.randbytes(16), to=None, text=text)
    [result], cost, at = measured(net, node, lambda now, mono: node.core.post([spec], now, mono))
    if not isinstance(result, rpc.PostResult):
        raise SimError(f"post at n{node.index} refused: {result}")
    return result, cost, at


def local(net: Net, node: Node, method: str, ref: str, arg: Any = None) -> Any:
    now = net.loop.now
    result = net.step(node, node.core.group_local(method, ref, arg, EPOCH + now, now))
    if not isinstance(result, rpc.GroupInfo):
        raise SimError(f"group.{method} at n{node.index} refused: {result}")
    return result


class SimError(Exception):
    pass


def run_until(net: Net, done: Callable[[], bool], most: float, what: str,
              step: float = 0.05) -> float:
    """Advance the clock until ``done()``; the virtual seconds it took."""
    start = net.loop.now
    while not done():
        if net.loop.now - start > most:
            raise SimError(f"not within {most:g} s (virtual): {what}")
        net.loop.run_until(net.loop.now + step)
    return net.loop.now - start


def rate_limited(net: Net) -> int:
    return sum(n.core.counts["rate_limited"] for n in net.nodes)


@dataclass
class SimOptions:
    members: int = 50
    nodes: int = 60
    degree: float = 6.0
    messages: int = 200
    #: Virtual seconds between one node's messages (the default per-origin limit: 2/s).
    gap: float = 0.6
    #: Messages per block (group and room blocks alternate).
    block: int = 20
    seed: int = 1
    #: Periodic catch-up rounds on (module doc).
    catch_up: bool = True

    @property
    def tail(self) -> float:
        return CATCH_UP if self.catch_up else FIRST_PASS


def mean_cost(costs: list[Cost]) -> dict[str, float]:
    return {"cpu_us_mean": round(statistics.mean(c.cpu_us for c in costs), 1),
            "cpu_us_median": round(statistics.median(c.cpu_us for c in costs), 1),
            "envelopes": round(statistics.mean(c.envelopes for c in costs), 2),
            "originated_bytes": round(statistics.mean(c.originated for c in costs), 1),
            "sent_bytes": round(statistics.mean(c.sent for c in costs), 1)}


def build(o: SimOptions) -> tuple[TimedNet, random.Random]:
    rng = random.Random(o.seed)
    settings = routercore.RouterSettings()
    if not o.catch_up:
        settings.anti_entropy = 1e9  # no periodic round (a link coming up still syncs)
    net = TimedNet(seed=o.seed, real_signatures=True, delegated=True, settings=settings)
    for _ in range(o.nodes):
        net.add_node()
    edges = topology.build("random", o.nodes, o.degree, rng)
    for a, b in sorted(edges):
        net.connect(net.nodes[a], net.nodes[b], delay=0.0)
    net.loop.run_until(0.0)
    for node in net.nodes:
        net.start(node)
    run_until(net, lambda: net.directory_errors() == 0
              and all(len(n.core.directory) == o.nodes - 1 for n in net.nodes), 300,
              "every node knows every other", step=0.5)
    return net, rng


def form_group(net: TimedNet, members: list[Node], gid: bytes) -> float:
    """The admin (``members[0]``) creates the group, invites each other member in turn,
    and each accepts once its welcome arrived; returns the virtual seconds it took."""
    admin = members[0]
    t0 = net.loop.now
    local(net, admin, "create", gid.hex(), NAME)
    for peer in members[1:]:
        local(net, admin, "invite", NAME, peer.key)
        run_until(net, lambda p=peer: p.core.groups.state(gid) is not None
                  and p.key in p.core.groups.state(gid).invited,  # type: ignore[union-attr]
                  60, f"n{peer.index} to get its invitation")
        local(net, peer, "accept", NAME)
        # the admin's control messages stay within their limit (20/s, bursts of 1000)
        net.loop.run_until(net.loop.now + 1.0)
    keys = frozenset(m.key for m in members)
    run_until(net, lambda: all((s := m.core.groups.state(gid)) is not None
                               and s.members == keys and not s.invited for m in members),
              120, "every member to see every other")
    return net.loop.now - t0


def delivery_times(net: TimedNet, sent: list[tuple[bytes, float]], readers: list[Node],
                   group: bool) -> tuple[list[float], int]:
    """Seconds from sending to the last reader's opening (group) or showing (room), for the
    messages every reader got; and how many (message, reader) pairs are missing."""
    times, missing = [], 0
    for msg_id, at in sent:
        seen = (net.opened_at if group else net.shown_at).get(msg_id, {})
        got = [seen[r.index] for r in readers if r.index in seen]
        missing += len(readers) - len(got)
        if len(got) == len(readers):
            times.append(max(got) - at)
    return times, missing


def simulate(o: SimOptions) -> dict[str, Any]:
    if not 3 <= o.members <= o.nodes:
        raise SystemExit("--members must be at least 3 and at most --nodes")
    started = time.perf_counter()
    say(f"sim: {o.nodes} nodes, group of {o.members}")
    net, rng = build(o)
    members = sorted(rng.sample(net.nodes, o.members), key=lambda n: n.index)
    rng.shuffle(members)
    admin, sender, removed = members[0], members[1], members[-1]
    others = [m for m in members if m is not sender]
    everyone_else = [n for n in net.nodes if n is not sender]
    gid = rng.randbytes(32)
    formed = form_group(net, members, gid)
    fig: dict[str, Any] = {
        "params": {**asdict(o), "topology": "random", "edges": len(net.edges),
                   "signatures": "real (Ed25519, delegated keys, envelope version 2)",
                   "latency_s": net.params.latency, "per_frame_s": net.per_frame},
        "group_formed_virtual_s": round(formed, 2),
        "rate_limited_setup": rate_limited(net)}
    say(f"sim: group formed in {formed:.1f} s virtual")

    # (b) the sender's first message of the group's first epoch: a new chain, sealed to all
    # (after the admin's, not measured: the code's first run in this process is slower)
    group_say(net, admin, "the admin's first")
    net.loop.run_until(net.loop.now + 1.0)
    res, first, _ = group_say(net, sender, "first")
    run_until(net, lambda: len(net.opened_at.get(res.message_id, {})) >= len(others), 60,
              "the first message at every member")
    [row] = [r for r in sender.store.rows.values() if r.id == res.message_id]
    assert envelope.version_of(row.signed) == 2 and row.kind == envelope.KIND_GROUP
    # the setup's aftermath (its control messages' receipts, caught up) before measuring
    net.loop.run_until(net.loop.now + o.tail)

    # (a) + (d) steady state, alternating blocks of group and room messages; then two
    # catch-up rounds (every node's anti-entropy), which carry receipts beyond their paths
    rl0 = rate_limited(net)
    costs: dict[str, list[Cost]] = {"group": [], "room": []}
    sent: dict[str, list[tuple[bytes, float]]] = {"group": [], "room": []}
    done = {"group": 0, "room": 0}
    net.wire.clear()
    t_steady = net.loop.now
    while min(done.values()) < o.messages:
        for kind in ("group", "room"):
            n = min(o.block, o.messages - done[kind])
            for i in range(n):
                text = f"{kind} {done[kind] + i}"
                res, cost, at = (group_say if kind == "group" else room_post)(net, sender, text)
                costs[kind].append(cost)
                sent[kind].append((res.message_id, at))
                net.loop.run_until(net.loop.now + o.gap)
            done[kind] += n
    net.loop.run_until(net.loop.now + o.tail)
    wire = dict(net.wire)
    g_times, g_missing = delivery_times(net, sent["group"], others, group=True)
    r_times, r_missing = delivery_times(net, sent["room"], everyone_else, group=False)
    acked = sum(1 for m, _ in sent["group"]
                if sender.statuses.get(m) == "delivered"
                and (ack := sender.core.group_acks.get(m)) is not None
                and len(ack.acked) == len(others))
    per = o.messages
    g_mesh = wire.get("group", 0) + wire.get("receipt", 0) + wire.get("Custody", 0)
    fig["steady"] = {
        "messages": o.messages,
        "group": mean_cost(costs["group"]), "room": mean_cost(costs["room"]),
        # what the whole mesh transmitted per message: the flood of the envelope itself;
        # for a group message with its receipts (on their paths and then by catch-up) and
        # the custody acknowledgements of their relays
        "mesh_bytes_per_msg": {
            "group_flood": round(wire.get("group", 0) / per, 1),
            "room_flood": round(wire.get("room", 0) / per, 1),
            "group_with_receipts": round(g_mesh / per, 1),
            "receipts": round(wire.get("receipt", 0) / per, 1),
            "custody": round(wire.get("Custody", 0) / per, 1),
            "catch_up_control_either_kind": round(
                (wire.get("SummaryMsg", 0) + wire.get("IdsMsg", 0)) / (2 * per), 1)},
        "mesh_bytes_by_what": {k: round(v) for k, v in sorted(wire.items())},
        "virtual_s": round(net.loop.now - t_steady, 1),
        "rate_limited": rate_limited(net) - rl0,
        "group_all_acked": acked}
    s = fig["steady"]
    s["ratio"] = {k: round(s["group"][k] / s["room"][k], 3) for k in
                  ("cpu_us_mean", "cpu_us_median", "originated_bytes", "sent_bytes")}
    fig["delivery"] = {
        "group_to_every_member_ms": {"p50": round(pct(g_times, 0.5) * 1000, 2),
                                     "max": round(max(g_times, default=float("nan")) * 1000, 2)},
        "room_to_every_node_ms": {"p50": round(pct(r_times, 0.5) * 1000, 2),
                                  "max": round(max(r_times, default=float("nan")) * 1000, 2)},
        "group_delivered_all": len(g_times), "group_missing_pairs": g_missing,
        "room_delivered_all": len(r_times), "room_missing_pairs": r_missing,
        "readers": {"group": len(others), "room": len(everyone_else)}}
    say(f"sim: steady state done ({o.messages} group and room messages)")

    # (c) removal: the op at the admin, then every remaining member's first message
    epoch = admin.core.groups.state(gid).epoch  # type: ignore[union-attr]
    refused0 = sum(removed.core.groups.refused.values())
    rl0 = rate_limited(net)
    net.wire.clear()
    _, remove_cost, _ = measured(net, admin, lambda now, mono: admin.core.group_local(
        "remove", NAME, removed.key, now, mono))
    remaining = [m for m in members if m is not removed]
    keys = frozenset(m.key for m in remaining)
    took = run_until(net, lambda: all((s := m.core.groups.state(gid)) is not None
                                      and s.members == keys and s.epoch > epoch
                                      for m in remaining)
                     and removed.core.group_role(gid) == "removed", 60,
                     "every member to apply the removal")
    rekeys: list[tuple[Node, bytes, Cost]] = []
    for m in remaining:
        res, cost, _ = group_say(net, m, f"after removal from n{m.index}")
        rekeys.append((m, res.message_id, cost))
        net.loop.run_until(net.loop.now + 0.2)
    ids = [i for _, i, _ in rekeys]
    try:
        run_until(net, lambda: all(len(net.opened_at.get(i, {})) >= len(remaining) - 1
                                   for i in ids), 120, "every re-keyed message at the others")
    except SimError as e:
        say(f"sim: {e}")
    net.loop.run_until(net.loop.now + o.tail)
    opened_by_others = sum(1 for m, i, _ in rekeys for r in remaining
                           if r is not m and r.index in net.opened_at.get(i, {}))
    removed_opened = sum(1 for i in ids if i in removed.texts)
    removed_stored = sum(1 for i in ids if i in removed.store.rows)
    after = [c for m, _, c in rekeys if m is sender]
    total = Cost.total([c for _, _, c in rekeys])
    fig["first_in_epoch"] = {"at_start": asdict(first), "after_removal": asdict(after[0]),
                             "seals_at_start": len(others), "seals_after_removal":
                             len(remaining) - 1}
    fig["removal"] = {
        "remove_op": asdict(remove_cost),
        "applied_everywhere_virtual_s": round(took, 3),
        "rekey_messages": len(rekeys),
        "rekey_total": asdict(total),
        "rekey_per_member": {k: round(v / len(rekeys), 1) for k, v in asdict(total).items()},
        "rekey_max_cpu_us": round(max(c.cpu_us for _, _, c in rekeys), 1),
        "mesh_bytes": round(sum(net.wire.values())),
        "mesh_bytes_by_what": {k: round(v) for k, v in sorted(net.wire.items())},
        "opened_by_others": opened_by_others,
        "opened_by_others_expected": len(rekeys) * (len(remaining) - 1),
        "removed_opened": removed_opened,
        "removed_stored_ciphertexts": removed_stored,
        "removed_refused": sum(removed.core.groups.refused.values()) - refused0,
        "rate_limited": rate_limited(net) - rl0}
    fig["wall_s"] = round(time.perf_counter() - started, 1)
    fig["virtual_s"] = round(net.loop.now, 1)
    say(f"sim: done in {fig['wall_s']} s")
    return fig


def sim_figures(f: dict[str, Any]) -> list[Figure]:
    s, d, r, fe = f["steady"], f["delivery"], f["removal"], f["first_in_epoch"]
    g, room, ratio, mb = s["group"], s["room"], s["ratio"], s["mesh_bytes_per_msg"]
    n = f["params"]["members"]
    via = "paths, then catch-up" if f["params"]["catch_up"] else "on their paths"
    goal = f"<= {SENDER_GOAL:g} x"
    out = [
        Figure("sender CPU per group message (group_say step), mean", g["cpu_us_mean"], "us",
               room["cpu_us_mean"], "room message (post step), same node", goal,
               ratio["cpu_us_mean"] <= SENDER_GOAL),
        Figure("sender CPU per group message, median", g["cpu_us_median"], "us",
               room["cpu_us_median"], "room message, median", goal,
               ratio["cpu_us_median"] <= SENDER_GOAL),
        Figure("bytes originated per group message (signed + sig)", g["originated_bytes"],
               "B", room["originated_bytes"], "room message", goal,
               ratio["originated_bytes"] <= SENDER_GOAL),
        Figure("bytes the sender transmits per group message", g["sent_bytes"], "B",
               room["sent_bytes"], "room message", goal, ratio["sent_bytes"] <= SENDER_GOAL),
        Figure("mesh bytes per group message: its flood", mb["group_flood"], "B",
               mb["room_flood"], "room message's flood", "report"),
        Figure(f"... with its {n - 1} receipts ({via}) and custody",
               mb["group_with_receipts"], "B", mb["room_flood"], "room message's flood",
               "report"),
        Figure("... of which receipts", mb["receipts"], "B", mb["room_flood"],
               "room message's flood", "report"),
        Figure(f"first message of an epoch: sender CPU (seals its chain to {n - 1})",
               fe["at_start"]["cpu_us"], "us", g["cpu_us_mean"], "steady group message",
               "report"),
        Figure("... envelopes it originates", fe["at_start"]["envelopes"], "env",
               g["envelopes"], "steady group message", "report"),
        Figure("... bytes originated", fe["at_start"]["originated"], "B",
               g["originated_bytes"], "steady group message", "report"),
        Figure("... bytes transmitted by the sender", fe["at_start"]["sent"], "B",
               g["sent_bytes"], "steady group message", "report"),
        Figure(f"first message after the removal: sender CPU (seals to {n - 2})",
               fe["after_removal"]["cpu_us"], "us", g["cpu_us_mean"], "steady group message",
               "report"),
        Figure("... bytes originated", fe["after_removal"]["originated"], "B",
               g["originated_bytes"], "steady group message", "report"),
        Figure(f"remove op at the admin ({n} members): CPU", r["remove_op"]["cpu_us"], "us",
               room["cpu_us_mean"], "room message", "report"),
        Figure("... envelopes / bytes originated", r["remove_op"]["originated"], "B",
               room["originated_bytes"], f"room message; {r['remove_op']['envelopes']} env",
               "report"),
        Figure("... bytes transmitted by the admin", r["remove_op"]["sent"], "B",
               room["sent_bytes"], "room message", "report"),
        Figure(f"re-key after the removal: {r['rekey_messages']} first messages, total CPU",
               r["rekey_total"]["cpu_us"] / 1000, "ms", None, "", "report"),
        Figure("... total bytes originated", r["rekey_total"]["originated"], "B", None, "",
               "report"),
        Figure("... total bytes transmitted by the members", r["rekey_total"]["sent"], "B",
               None, "", "report"),
        Figure("... per member: CPU", r["rekey_per_member"]["cpu_us"], "us", g["cpu_us_mean"],
               "steady group message", "report"),
        Figure("... mesh bytes, removal and re-key round", r["mesh_bytes"], "B", None, "",
               "report"),
        Figure("removed member: messages after the removal it opened", r["removed_opened"],
               "msg", r["rekey_messages"], f"sent ({r['removed_stored_ciphertexts']} stored "
               "by it)", "0", r["removed_opened"] == 0),
        Figure("remaining members: (message, member) pairs opened after the removal",
               r["opened_by_others"], "pairs", r["opened_by_others_expected"], "expected",
               "100 %", r["opened_by_others"] == r["opened_by_others_expected"]),
        Figure("group message at every member, p50 (virtual)",
               d["group_to_every_member_ms"]["p50"], "ms", d["room_to_every_node_ms"]["p50"],
               "room message at every node", "report"),
        Figure("group message at every member, max (virtual)",
               d["group_to_every_member_ms"]["max"], "ms", d["room_to_every_node_ms"]["max"],
               "room message at every node", "report"),
        Figure("steady group messages opened by every member", d["group_delivered_all"], "msg",
               s["messages"], "sent", "100 %", d["group_delivered_all"] == s["messages"]),
        Figure("... acknowledged by every member (receipts at the sender)",
               s["group_all_acked"], "msg", s["messages"], "sent", "report"),
        Figure("envelopes refused by flood limits while measuring",
               s["rate_limited"] + r["rate_limited"], "env", None, "", "0",
               s["rate_limited"] + r["rate_limited"] == 0),
    ]
    if f["params"]["catch_up"]:
        out.insert(7, Figure("catch-up summaries and id lists, per message of either kind",
                             mb["catch_up_control_either_kind"], "B", mb["room_flood"],
                             "room message's flood", "report"))
    return out


# -- real nodes -----------------------------------------------------------------------------

#: a on bridge 0, b on 0 and 1, c on 1, d on 1 and 2, e on 2: a to e is three hops.
LINKS = {"a": [0], "b": [0, 1], "c": [1], "d": [1, 2], "e": [2]}


def real_nodes(messages: int, gap: float) -> dict[str, Any]:
    from tests.netns import why_unavailable

    reason = why_unavailable()
    if reason:
        return {"skipped": reason}
    from bench.procstat import busy_seconds
    from tests.harness import BusTap, lan_nodes, request, wait_for

    def call(node: Any, req: Any) -> Any:
        return request(node, "router", req, timeout=10)

    def role(node: Any) -> str | None:
        return next((g.role for g in call(node, rpc.ListGroups()).groups if g.name == NAME),
                    None)

    say(f"real: {len(LINKS)} nodes in namespaces")
    started = time.perf_counter()
    with lan_nodes(LINKS) as (_net, nodes):
        hosts = list(nodes)
        a = nodes["a"]
        readers = [nodes[h] for h in hosts[1:]]
        for x in nodes.values():
            for y in nodes.values():
                if x is not y:
                    wait_for(lambda x=x, y=y: (p := x.peers().get(y.nick))
                             and p["state"] in ("verified", "mesh"), 90,
                             f"{x.nick} to know {y.nick}")
        say("real: every node knows every other")
        gid = call(a, rpc.CreateGroup(name=NAME)).info.group
        for peer in readers:
            call(a, rpc.InviteToGroup(group=NAME, peer=peer.key))
        for peer in readers:
            wait_for(lambda p=peer: role(p) == "invited", 30, f"{peer.nick} to be invited")
            call(peer, rpc.AcceptGroup(group=NAME))
        for node in nodes.values():
            wait_for(lambda n=node: len([m for m in call(n, rpc.GroupMembers(
                group=NAME)).info.members if m.role == "member"]) == len(nodes), 30,
                f"{node.nick} to see every member")
        say("real: group formed")
        taps = [BusTap(n, "chat.message") for n in readers]
        router = a.pid("router")
        assert router is not None

        def one(kind: str, text: str) -> float:
            t0 = time.time()
            if kind == "group":
                reply = call(a, rpc.GroupSay(client_id=os.urandom(16), group=NAME, text=text))
            else:
                reply = call(a, rpc.Post(client_id=os.urandom(16), to=None, text=text))
            key = reply.message_id.hex()
            wait_for(lambda: all(any(e.id == key for e in t.of("chat.message"))
                                 for t in taps), 30, f"{kind} message {text!r} everywhere",
                     interval=0.002)
            arrived = max(next(t_ for t_, e in tap.arrivals if e.id == key) for tap in taps)
            return arrived - t0

        try:
            first = one("group", "first, with the re-key")
            time.sleep(gap)  # noqa: sleep-ok - the per-origin limit (2/s)
            c0, w0 = busy_seconds([router]), time.monotonic()
            time.sleep(5.0)  # noqa: sleep-ok - the router's idle rate
            idle = (busy_seconds([router]) - c0) / (time.monotonic() - w0)
            times: dict[str, list[float]] = {}
            cpu: dict[str, float] = {}
            for kind in ("group", "room"):
                c0, w0 = busy_seconds([router]), time.monotonic()
                times[kind] = []
                for i in range(messages):
                    t = time.monotonic()
                    times[kind].append(one(kind, f"real {kind} {i}"))
                    time.sleep(max(0.0, gap - (time.monotonic() - t)))  # noqa: sleep-ok - pace
                time.sleep(1.0)  # noqa: sleep-ok - the receipts' aftermath
                spent = busy_seconds([router]) - c0 - idle * (time.monotonic() - w0)
                cpu[kind] = spent / messages
        finally:
            for tap in taps:
                tap.close()
        in_history = min(sum(1 for m in request(n, "store", rpc.StoreHistory(
            conv=bytes.fromhex(gid), limit=1000)).messages if m.text and
            m.text.startswith("real group ")) for n in readers)
        acked = sum(1 for m in request(a, "store", rpc.StoreHistory(
            conv=bytes.fromhex(gid), limit=1000)).messages
            if m.own and m.reason == f"{len(readers)} of {len(readers)} members")
    ms = 1000
    out = {
        "nodes": len(LINKS), "links": LINKS, "messages": messages, "gap_s": gap,
        "first_group_ms": round(first * ms, 2),
        "group_ms": {"p50": round(pct(times["group"], 0.5) * ms, 2),
                     "p99": round(pct(times["group"], 0.99) * ms, 2)},
        "room_ms": {"p50": round(pct(times["room"], 0.5) * ms, 2),
                    "p99": round(pct(times["room"], 0.99) * ms, 2)},
        "router_cpu_ms_per_msg": {k: round(v * ms, 3) for k, v in cpu.items()},
        "router_idle_cpu_pct": round(idle * 100, 3),
        "group_in_every_history": in_history,
        "group_acked_by_all": acked,
        "wall_s": round(time.perf_counter() - started, 1)}
    out["ratio_p50"] = round(out["group_ms"]["p50"] / out["room_ms"]["p50"], 3)
    out["ratio_p99"] = round(out["group_ms"]["p99"] / out["room_ms"]["p99"], 3)
    return out


def real_figures(f: dict[str, Any]) -> list[Figure]:
    g, r, cpu = f["group_ms"], f["room_ms"], f["router_cpu_ms_per_msg"]
    n = f["nodes"] - 1
    return [
        Figure(f"group message at all {n} members, p50", g["p50"], "ms", r["p50"],
               f"room message at all {n} nodes", "report"),
        Figure(f"group message at all {n} members, p99", g["p99"], "ms", r["p99"],
               f"room message at all {n} nodes", "report"),
        Figure("first group message (with the re-key), at all members", f["first_group_ms"],
               "ms", g["p50"], "steady group message, p50", "report"),
        # not the goal's like for like: a group message brings its author a receipt from
        # every member (received, checked, stored, its status updated), a room message none
        Figure(f"sender's router CPU per group message, with the {n} receipts it gets back",
               cpu["group"], "ms", cpu["room"], "room message (no receipts)", "report"),
        Figure("group messages in every member's history", f["group_in_every_history"], "msg",
               f["messages"], "sent", "100 %", f["group_in_every_history"] == f["messages"]),
        Figure(f"... shown at the sender as '{n} of {n} members'", f["group_acked_by_all"],
               "msg", f["messages"] + 1, "sent, the first included", "report"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.groups",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=50, help="group size, simulated")
    ap.add_argument("--nodes", type=int, default=60, help="nodes of the simulated mesh")
    ap.add_argument("--degree", type=float, default=6.0, help="mean degree, simulated")
    ap.add_argument("--messages", type=int, default=200,
                    help="steady-state group messages (and room messages), simulated")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--real-messages", type=int, default=20,
                    help="group messages (and room messages) on real nodes")
    ap.add_argument("--real-gap", type=float, default=0.6,
                    help="least seconds between two messages on real nodes (limit: 2/s)")
    ap.add_argument("--no-catch-up", dest="catch_up", action="store_false",
                    help="no periodic catch-up rounds in the simulation (the first pass)")
    ap.add_argument("--sim-only", action="store_true", help="no real nodes")
    ap.add_argument("--json", action="store_true", help="one JSON object, no table")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the nodes and namespaces are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sim = simulate(SimOptions(members=args.members, nodes=args.nodes, degree=args.degree,
                                  messages=args.messages, seed=args.seed,
                                  catch_up=args.catch_up))
    except SimError as e:
        raise SystemExit(f"bench.groups: simulation failed: {e}") from None
    real = {"skipped": "--sim-only"} if args.sim_only else real_nodes(args.real_messages,
                                                                       args.real_gap)
    if args.json:
        print(json.dumps({"bench": "groups", "sim": sim, "real": real}))
        return
    p = sim["params"]
    print_report(f"bench.groups, simulated: a group of {p['members']} in {p['nodes']} nodes "
                 f"(random, {p['edges']} links), {p['messages']} messages of each kind",
                 sim_figures(sim))
    if "skipped" in real:
        print(f"\nbench.groups, real nodes: skipped ({real['skipped']})")
    else:
        print_report(f"bench.groups, real nodes: a group of {real['nodes']} in namespaces, "
                     f"{real['messages']} messages of each kind", real_figures(real))


if __name__ == "__main__":
    main()
