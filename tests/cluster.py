"""Many real nodes on a topology of LAN segments (network namespaces), for tests and
benchmarks: launch them as people do (one after the other), watch every node's peer
table converge, and check what a room message and a DM across the mesh do.

Everything runs in namespaces built by ``tests.netns`` (no interface in the root
namespace, no default route); ``cluster()`` stops every node and removes every
namespace at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from tazcom.common import codec, rpc
from tests.harness import Node, request, short_tmp
from tests.netns import Lan, lan
from tests.topology import Topology, distances, neighbours


def nick(host: str) -> str:
    return f"n-{host}"


@dataclass
class Convergence:
    """How one launch's peer tables came to be right (times from the last launch)."""

    converged_after: float | None = None
    #: (node, peer, state seen) for every pair still wrong when the watch ended
    wrong: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def stuck(self) -> list[tuple[str, str, str]]:
        """Direct neighbours shown as anything but ``verified`` at the end."""
        return [w for w in self.wrong if w[2] != "verified" and w[2].startswith("neighbour ")]


class Poller:
    """Asks many nodes for a request at once, on sockets kept open (cheap to poll)."""

    def __init__(self, nodes: dict[str, Node], service: str) -> None:
        self.ctx = zmq.Context()
        self.socks: dict[str, zmq.Socket] = {}
        for host, node in nodes.items():
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"ipc://{node.home}/run/{service}.sock")
            self.socks[host] = sock
        self._id = 0

    def ask(self, req: Any, timeout: float = 2.0) -> dict[str, Any]:
        """Replies by host (a host that does not answer in time is left out)."""
        self._id += 1
        body = rpc.encode_request(req, self._id)
        for sock in self.socks.values():
            with contextlib.suppress(zmq.Again):
                sock.send(body, zmq.NOBLOCK)
        out: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        for sock in self.socks.values():
            poller.register(sock, zmq.POLLIN)
        by_sock = {s: h for h, s in self.socks.items()}
        while len(out) < len(self.socks) and time.monotonic() < deadline:
            for sock, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                data = codec.unpack(sock.recv(), 1 << 24)
                if isinstance(data, dict) and data.get("id") == self._id:
                    with contextlib.suppress(Exception):
                        out[by_sock[sock]] = rpc.parse_reply(data, req.REPLY)
        return out

    def close(self) -> None:
        self.ctx.destroy(linger=0)


class Cluster:
    def __init__(self, net: Lan, topology: Topology, root: Path) -> None:
        self.net = net
        self.topology = topology
        self.root = root
        self.near = neighbours(topology)
        self.nodes: dict[str, Node] = {}
        self.launched_at: dict[str, float] = {}
        self.generation = 0

    def fresh_nodes(self) -> None:
        """New homes (new identities) for every host: each launch is of new nodes."""
        self.generation += 1
        self.nodes = {
            host: Node(self.root / f"g{self.generation}" / host, nick(host),
                       netns=self.net.ns(host), interfaces=",".join(self.net.interfaces[host]))
            for host in self.topology}

    def launch(self, gap: float = 1.0, order: list[str] | None = None,
               rng: random.Random | None = None) -> float:
        """Start every node, ``gap`` seconds apart; returns the time of the last launch."""
        hosts = list(order or self.topology)
        if rng is not None and order is None:
            rng.shuffle(hosts)
        next_at = time.monotonic()
        for host in hosts:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # noqa: sleep-ok - launches spaced as people start nodes
            self.launched_at[host] = time.monotonic()
            self.nodes[host].start()
            next_at += gap
        return max(self.launched_at.values())

    def expected(self, host: str, limit: int = 8) -> dict[str, str]:
        """Nickname -> the states host should show it in (within the hop limit)."""
        dist = distances(self.topology, host)
        return {nick(o): "verified" if d == 1 else "mesh"
                for o, d in dist.items() if o != host and d <= limit}

    def wrong_pairs(self, tables: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
        wrong = []
        for host in self.topology:
            peers = tables.get(host)
            for other_nick, want in self.expected(host).items():
                got = peers.get(other_nick) if peers is not None else None
                state = got.state if got is not None else "absent"
                ok = state == "verified" if want == "verified" else state in ("verified", "mesh")
                if not ok:
                    label = ("neighbour " if want == "verified" else "") + state
                    wrong.append((host, other_nick, label))
        return wrong

    def watch(self, since: float, timeout: float) -> Convergence:
        """Poll every node's peer table until all are right, or ``timeout`` after ``since``."""
        poller = Poller(self.nodes, "discovery")
        try:
            while True:
                replies = poller.ask(rpc.GetPeers())
                tables = {h: {p.nickname: p for p in r.peers} for h, r in replies.items()}
                wrong = self.wrong_pairs(tables) + [(h, "*", "discovery silent")
                                                    for h in self.nodes if h not in replies]
                now = time.monotonic()
                if not wrong:
                    return Convergence(converged_after=now - since)
                if now - since > timeout:
                    return Convergence(wrong=wrong)
                time.sleep(0.2)  # noqa: sleep-ok - polling interval under a deadline
        finally:
            poller.close()

    def room_message(self, origin: str, text: str, timeout: float,
                     limit: int = 8) -> tuple[dict[str, float], bytes]:
        """Post ``text`` to the room at ``origin``; returns when each node within ``limit``
        hops showed it (seconds after posting; a node missing from the result never did)."""
        dist = distances(self.topology, origin)
        want = {h for h, d in dist.items() if 0 < d <= limit}
        posted = time.monotonic()
        result = request(self.nodes[origin], "router",
                         rpc.Post(client_id=os.urandom(16), text=text), timeout=10)
        arrived: dict[str, float] = {}
        poller = Poller({h: self.nodes[h] for h in dist if h != origin}, "store")
        try:
            while True:
                for host, reply in poller.ask(rpc.StoreHistory(limit=20)).items():
                    if host not in arrived and any(m.id == result.message_id
                                                   for m in reply.messages):
                        arrived[host] = time.monotonic() - posted
                if want <= arrived.keys() or time.monotonic() - posted > timeout:
                    return arrived, result.message_id
                time.sleep(0.05)  # noqa: sleep-ok - polling interval under a deadline
        finally:
            poller.close()

    def direct_message(self, origin: str, to: str, text: str,
                       timeout: float) -> tuple[float | None, float | None]:
        """A DM from ``origin`` to ``to``: seconds until it is in ``to``'s history, and until
        ``origin`` shows it ``delivered`` (None: not within ``timeout``)."""
        sender, recipient = self.nodes[origin], self.nodes[to]
        to_key = bytes.fromhex(recipient.key)
        posted = time.monotonic()
        result = request(sender, "router", rpc.Post(client_id=os.urandom(16), to=to_key,
                                                    text=text), timeout=10)
        arrived = delivered = None
        from_key = bytes.fromhex(sender.key)
        while time.monotonic() - posted < timeout and delivered is None:
            if arrived is None:
                got = request(recipient, "store", rpc.StoreHistory(conv=from_key, limit=20))
                if any(m.id == result.message_id for m in got.messages):
                    arrived = time.monotonic() - posted
            mine = request(sender, "store", rpc.StoreHistory(conv=to_key, limit=20))
            if any(m.id == result.message_id and m.status == "delivered"
                   for m in mine.messages):
                delivered = time.monotonic() - posted
            time.sleep(0.05)  # noqa: sleep-ok - polling interval under a deadline
        return arrived, delivered

    def stop(self) -> list[str]:
        """Stop every node (in parallel); returns the tracebacks found in their logs."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: n.stop(), self.nodes.values()))
        return [t for n in self.nodes.values() for t in n.tracebacks()]


@contextlib.contextmanager
def cluster(topology: Topology) -> Iterator[Cluster]:
    root = short_tmp("tzc")
    with lan(topology) as net:
        c = Cluster(net, topology, root)
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.stop()
            for node in c.nodes.values():  # whatever stop() left, by pid
                for pid in node.own_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
            shutil.rmtree(root, ignore_errors=True)
