"""A deterministic discrete-event simulator of a TAZCOM mesh, on a virtual clock.

Each node is the real ``RouterCore`` (common/routercore.py) with an in-memory
store and identity; links are virtual, with latency, loss, bandwidth and an
up/down state; the link layer is modelled as the gateway behaves (a link is
verified ``handshake`` after both ends are up; a clean leave closes it at
once, a silent one is noticed after ``LinkLimits.dead_after`` of silence).
A node processes the frames that reached it in batches, as the router
service does, at ``per_frame`` of virtual CPU each, so a busy node is late.

Signatures are real (PyNaCl) or, with ``real_signatures=False``, a keyed hash
of the signed bytes, counted and checked: the decisions are the same (a
corrupted copy still fails), a flood of profiles over 1,000 nodes is not a
million Ed25519 verifications.

The store keeps what the router's SQLite store keeps for the core's safety
rules: each row's arrival (for ``common.quota``'s oldest-first eviction), the
bytes each origin uses against its quota (``Store.usage``, as
``services/storedb.py``) and the policy table (``SavePolicy``). A ban closes the
link at both ends for its length, as the gateway does (``services/gateway.py``
``on_policy``, ``common/linkmanager.py`` ``policy_changed``), and the link comes
back after it (the dialler's next try). A node may have an outgoing ``filter``
(bench/sim/adversary.py: relays that drop or corrupt what they forward).

With ``delegated=True`` (off by default) each node signs as a real router does: a
delegated key (``common.keyring.KeyRing``) certified by its long-term key, so its
envelopes are version 2 and carry the certificate (the group kinds need them). With
real signatures that key signs (Ed25519) and each core checks certificates with its own
caching verifier, as services/router.py; with counted ones the stand-in signature is
kept (bound to the origin), the certificate carried but not checked. The keys come from
the seed; the group cores' own randomness (sender chains, sealed control bodies) does not,
so a group run's bytes differ from run to run (its sizes and decisions do not).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.public
import nacl.signing

from tazcom.common import certs, envelope, quota, routercore, routing, rpc
from tazcom.common.events import ChatMessage, ChatStatus, MeshPeer, PeerPolicy
from tazcom.common.keyring import DmKey, KeyRing, Signer
from tazcom.common.keys import DOMAIN_CERT, DOMAIN_ENVELOPE
from tazcom.common.link import LinkLimits

#: Bytes a router message costs on the wire beyond its body: the link ``app`` message
#: around it (msgpack map with t, v, kind, body ~ 24 B), the AEAD tag (16) and the frame
#: header (2).
FRAME_OVERHEAD = 42
#: Seconds since the epoch at virtual time 0 (envelope timestamps are wall-clock).
EPOCH = 1_790_000_000.0


@dataclass
class LinkParams:
    latency: float = 0.005
    loss: float = 0.0
    bandwidth: float = 1_250_000.0  # bytes per second, each direction (10 Mbit/s)
    handshake: float = 0.02


class Loop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn, args))

    def run_until(self, t: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, fn, args = heapq.heappop(heap)
            self.now = when
            fn(*args)
        self.now = max(self.now, t)


def counted_sig(origin: bytes, signed: bytes) -> bytes:
    """The stand-in signature of ``real_signatures=False``: cheap, but bound to its origin
    and bytes, so a corrupted copy fails as it would with Ed25519."""
    return hashlib.blake2b(DOMAIN_ENVELOPE + signed, digest_size=64, key=origin).digest()


def sealed(plain: bytes, recipient: bytes, seed: bytes) -> bytes:
    """A sealed box (libsodium's ``crypto_box_seal`` format, so ``SealedBox`` opens it)
    whose ephemeral key comes from ``seed``: the same run makes the same bytes (a
    ``SealedBox`` draws it at random, and a DM's id would differ from run to run)."""
    epk, esk = nacl.bindings.crypto_box_seed_keypair(seed)
    nonce = hashlib.blake2b(epk + recipient, digest_size=24).digest()
    return epk + nacl.bindings.crypto_box(plain, nonce, recipient, esk)


@contextlib.contextmanager
def seeded_seal(rng: random.Random) -> Iterator[None]:
    """While a node posts: DMs sealed by ``sealed`` with keys from ``rng``."""
    real = envelope.seal_dm

    def seal_dm(*, origin: bytes, text: str, recipient_enc_key: bytes) -> bytes:
        return sealed(envelope.dm_plaintext(origin=origin, text=text), recipient_enc_key,
                      rng.randbytes(32))

    envelope.seal_dm = seal_dm  # type: ignore[assignment]
    try:
        yield
    finally:
        envelope.seal_dm = real  # type: ignore[assignment]


class Store:
    """What the router's SQLite store does for the core, in memory."""

    def __init__(self, own: bytes = b"") -> None:
        self.own = own
        self.rows: dict[bytes, rpc.StoredMessage] = {}
        self.hops: dict[bytes, int] = {}
        self.received_at: dict[bytes, float] = {}  # arrival (virtual time), in arrival order
        self.seq = 0
        #: Evictable rows (common.quota.evictable) by origin, a heap by ``oldest_first`` (then
        #: arrival order) of ``(key..., n, row)``, and each origin's bytes: what
        #: ``services/storedb.py`` ``usage`` counts.
        self.evictable: dict[bytes, list[tuple[Any, ...]]] = {}
        self._n = itertools.count()
        self.used: Counter[bytes] = Counter()
        #: New messages ever committed (not profiles), by origin, evicted ones included.
        self.stored: Counter[bytes] = Counter()
        self.evicted = 0
        #: The policy table: key -> (key, policy, since, until, reason).
        self.policies: dict[bytes, tuple[bytes, str, float, float | None, str]] = {}

    def commit(self, items: list[rpc.StoredMessage], now: float = 0.0
               ) -> list[rpc.PutOutcome]:
        out = []
        for m in items:
            new = m.id not in self.rows
            if new:
                self.rows[m.id] = m
                self.hops[m.id] = m.hops
                self.received_at[m.id] = now
                if m.kind != envelope.KIND_PROFILE:
                    self.stored[m.origin] += 1
                if quota.evictable(m.kind, m.origin, m.to, self.own):
                    row = (m.id, m.ts, now, quota.row_bytes(m.signed, m.sig))
                    heapq.heappush(self.evictable.setdefault(m.origin, []),
                                   (*quota.oldest_first(row), next(self._n), row))
                    self.used[m.origin] += row[3]
            out.append(rpc.PutOutcome(id=m.id, new=new))
        return out

    def fetch(self, ids: list[bytes]) -> list[rpc.WireEnvelope]:
        return [rpc.WireEnvelope(id=i, signed=self.rows[i].signed, sig=self.rows[i].sig,
                                 hops=self.hops[i]) for i in ids if i in self.rows]

    def evict(self, a: routercore.Evict) -> list[tuple[bytes, int]]:
        """``common.quota``'s rule: the origin's oldest evictable rows (``oldest_first``)
        until ``size`` bytes are freed, read from a heap as far as needed."""
        assert a.own == self.own
        heap = self.evictable.get(a.origin, [])
        taken: list[tuple[Any, ...]] = []

        def oldest() -> Iterator[tuple[bytes, int, float, int]]:
            while heap:
                taken.append(heapq.heappop(heap))
                yield taken[-1][-1]

        gone = quota.pick_oldest(oldest(), a.size)
        for entry in taken[len(gone):]:  # read, not freed: back in the heap
            heapq.heappush(heap, entry)
        for i, n in gone:
            del self.rows[i], self.hops[i], self.received_at[i]
            self.used[a.origin] -= n
            self.evicted += 1
        if not heap:
            self.evictable.pop(a.origin, None)
            self.used.pop(a.origin, None)
        return gone

    def usage(self) -> list[tuple[bytes, int]]:
        """Bytes each origin uses against its quota, as ``services/storedb.py`` ``usage``."""
        return [(o, n) for o, n in self.used.items() if n > 0]

    def save_policy(self, a: routercore.SavePolicy) -> None:
        if a.policy is None:
            self.policies.pop(a.key, None)
        else:
            self.policies[a.key] = (a.key, a.policy, a.since, a.until, a.reason)


@dataclass
class Node:
    index: int
    key: bytes
    signer: nacl.signing.SigningKey
    box: nacl.public.PrivateKey
    core: routercore.RouterCore
    store: Store = field(default_factory=Store)
    up: bool = True
    links: set[bytes] = field(default_factory=set)
    inbox: list[list[bytes]] = field(default_factory=list)
    busy_until: float = 0.0
    timer_at: float | None = None
    #: Message ids shown (ChatMessage emitted), and the last time mesh.peer changed.
    shown: set[bytes] = field(default_factory=set)
    shown_twice: int = 0
    statuses: dict[bytes, str] = field(default_factory=dict)
    mesh_changed: float = 0.0
    sent_bytes: int = 0
    #: Most bytes of ``Net.watch``'s origin this node held against its quota between steps.
    watched_peak: int = 0
    #: Group messages opened here (routercore.StoreText): id -> text.
    texts: dict[bytes, str] = field(default_factory=dict)
    #: Group events emitted (group.changed, group chat.message and chat.status), by class.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: The delegated key that signs our envelopes (``Net(delegated=True)``), else None.
    ring: KeyRing | None = None


class Net:
    """N nodes, their links and the virtual clock."""

    def __init__(self, *, hop_limit: int = envelope.DEFAULT_HOP_LIMIT, seed: int = 1,
                 params: LinkParams | None = None, real_signatures: bool = False,
                 per_frame: float = 0.0001, hop_delay: float = 0.0,
                 settings: routercore.RouterSettings | None = None,
                 delegated: bool = False) -> None:
        self.loop = Loop()
        self.rng = random.Random(seed)
        self.seal_rng = random.Random(f"seal {seed}")  # for DMs (seeded_seal)
        self.params = params or LinkParams()
        self.real = real_signatures
        #: Nodes sign with certified delegated keys (envelope version 2; module doc).
        self.delegated = delegated
        self.per_frame = per_frame
        #: Fixed delay between a frame's processing and what it sends leaving the node (the
        #: gateway -> router -> gateway hand-offs of a real node: ~2 ms per hop, bench.mesh).
        self.hop_delay = hop_delay
        self.hop_jitter = 0.0  # plus a uniform random part per transmission
        self.settings = settings or routercore.RouterSettings(hop_limit=hop_limit)
        self.nodes: list[Node] = []
        self.by_key: dict[bytes, Node] = {}
        #: Undirected links that exist in the topology (index pairs), and those up now.
        self.edges: set[tuple[int, int]] = set()
        self.link_up: dict[tuple[int, int], int] = {}  # pair -> epoch of its current life
        self.link_free: dict[tuple[int, int], float] = {}  # directed: sender side busy until
        self.epoch = itertools.count(1)
        self.verified = 0
        #: Copies of tracked envelope ids received, and bytes of their entries sent.
        self.tracked: set[bytes] = set()
        self.copies: Counter[bytes] = Counter()
        self.tracked_bytes: Counter[bytes] = Counter()
        self.track_wire = False
        #: Outgoing filters by node index: the body to send instead, or None to drop it.
        self.filters: dict[int, Callable[[Node, bytes, bytes], bytes | None]] = {}
        #: Bans: (virtual time, banning node, banned node, seconds); when each pair's ends.
        self.bans: list[tuple[float, int, int, float]] = []
        self.ban_until: dict[tuple[int, int], float] = {}
        #: An origin whose stored bytes each node's ``watched_peak`` follows, and the ids
        #: of its messages (not profiles) any node committed.
        self.watch: bytes | None = None
        self.watched_ids: set[bytes] = set()

    # -- nodes --------------------------------------------------------------------------------

    def add_node(self) -> Node:
        i = len(self.nodes)
        seed = self.rng.randbytes(32)
        signer = nacl.signing.SigningKey(seed)
        box = nacl.public.PrivateKey(self.rng.randbytes(32))
        key = bytes(signer.verify_key)
        verify: Callable[[envelope.Envelope], None] | None = \
            envelope.verify if self.real else self._count_verify
        if self.delegated and self.real:
            verify = None  # the core's own Verifier: certificates checked once, cached
        core = routercore.RouterCore(
            key, bytes(box.public_key), f"n{i}", self.settings,
            verify=verify, rng=random.Random(self.rng.random()))
        node = Node(i, key, signer, box, core, store=Store(key))
        if self.delegated:
            node.ring = self._certified_ring(node)
            core.set_signer(node.ring.signer.cert)
        self.nodes.append(node)
        self.by_key[key] = node
        return node

    def _certified_ring(self, node: Node) -> KeyRing:
        """A key ring as services/router.py keeps one: a delegated signing key (from the
        seed) that the node's long-term key certified, as identity.certify does, and the
        node's DM key."""
        public, secret64 = nacl.bindings.crypto_sign_seed_keypair(self.rng.randbytes(32))
        now = EPOCH + self.loop.now
        ring = KeyRing(Signer(secret64, public),
                       [DmKey(bytes(node.box), bytes(node.box.public_key), int(now))])
        dkey, not_before, not_after = ring.cert_request(now)
        part = certs.signed_part(node.key, dkey, not_before, not_after)
        ring.certified(dkey, certs.encode(dkey, not_before, not_after,
                                          node.signer.sign(DOMAIN_CERT + part).signature))
        return ring

    def _count_verify(self, env: envelope.Envelope) -> None:
        self.verified += 1
        if env.sig != counted_sig(env.origin, env.signed):
            raise envelope.EnvelopeError("the origin's signature does not verify",
                                         code="bad_signature")

    def sign(self, node: Node, items: list[bytes], long_term: bool = True) -> list[bytes]:
        if self.real and node.ring is not None and not long_term:
            return [node.ring.sign(m) for m in items]  # the delegated key (module doc)
        if self.real:
            return [node.signer.sign(DOMAIN_ENVELOPE + m).signature for m in items]
        return [counted_sig(node.key, m) for m in items]

    # -- executing a node's actions --------------------------------------------------------

    def step(self, node: Node, step: routercore.Step, t: float | None = None) -> Any:
        send_at = self.loop.now if t is None else t
        result = routercore.drive(step, lambda a: self.execute(node, a, send_at))
        self.arm(node)
        if self.watch is not None:
            node.watched_peak = max(node.watched_peak, node.store.used.get(self.watch, 0))
        return result

    def execute(self, node: Node, a: Any, send_at: float) -> Any:
        if isinstance(a, routercore.Send):
            self.transmit(node, a.link, a.body, send_at)
        elif isinstance(a, routercore.Emit):
            f = a.fields
            if a.event.__name__ == "GroupChanged" or f.get("kind") == "group" \
                    or f.get("members") is not None:
                node.events.append((a.event.__name__, f))
            if a.event is ChatMessage:
                msg_id = bytes.fromhex(f["id"])
                if msg_id in node.shown:
                    node.shown_twice += 1
                node.shown.add(msg_id)
            elif a.event is ChatStatus:
                node.statuses[bytes.fromhex(f["id"])] = f["status"]
            elif a.event is MeshPeer:
                node.mesh_changed = self.loop.now
            elif a.event is PeerPolicy and f["policy"] == "ban":
                self.ban(node, bytes.fromhex(f["key"]), f["until"])
        elif isinstance(a, routercore.Commit):
            if self.watch is not None:
                self.watched_ids.update(m.id for m in a.items if m.origin == self.watch
                                        and m.kind != envelope.KIND_PROFILE)
            return node.store.commit(a.items, self.loop.now)
        elif isinstance(a, routercore.Evict):
            return node.store.evict(a)
        elif isinstance(a, routercore.SavePolicy):
            node.store.save_policy(a)
        elif isinstance(a, routercore.Fetch):
            return node.store.fetch(a.ids)
        elif isinstance(a, routercore.LowerHops):
            for i, d in a.distances.items():
                if i in node.store.hops:
                    node.store.hops[i] = min(node.store.hops[i], d)
        elif isinstance(a, routercore.ReserveSeq):
            first = node.store.seq
            node.store.seq += a.count
            return first
        elif isinstance(a, routercore.Sign):
            return self.sign(node, a.items, a.long_term)
        elif isinstance(a, routercore.Open):
            unseal = nacl.public.SealedBox(node.box)
            out: list[bytes | None] = []
            for b in a.boxes:
                try:
                    out.append(unseal.decrypt(b))
                except Exception:  # noqa: BLE001 - a box that does not open is None
                    out.append(None)
            return out
        elif isinstance(a, routercore.StoreText):
            node.texts[a.id] = a.text
        elif isinstance(a, routercore.Together):
            return [self.execute(node, x, send_at) for x in a.actions]
        return None  # Rejected, SetStatus, Release: nothing to simulate

    def ban(self, node: Node, key: bytes, until: float | None) -> None:
        """``node``'s core banned ``key`` and dropped it from its links: the gateway closes
        the link at both ends and refuses it until the ban ends; then it comes back."""
        peer = self.by_key.get(key)
        if peer is None:
            return
        now = self.loop.now
        end = now + 3600.0 if until is None else until - EPOCH
        self.bans.append((now, node.index, peer.index, end - now))
        pair = self.pair(node, peer)
        self.ban_until[pair] = max(self.ban_until.get(pair, 0.0), end)
        if pair in self.link_up:
            self.disconnect(node, peer)
        self.loop.at(end, self._ban_ended, node, peer)

    def _ban_ended(self, a: Node, b: Node) -> None:
        pair = self.pair(a, b)
        end = self.ban_until.get(pair)
        if end is None or end > self.loop.now:
            return  # another ban of the pair ends later
        del self.ban_until[pair]
        if pair in self.edges and a.up and b.up:
            self.connect(a, b)

    def arm(self, node: Node) -> None:
        due = node.core.next_deadline()
        if due is None or not node.up:
            return
        if node.timer_at is None or due < node.timer_at:
            node.timer_at = due
            self.loop.at(due, self._timer, node, due)

    def _timer(self, node: Node, due: float) -> None:
        if node.timer_at != due or not node.up:
            return
        node.timer_at = None
        now = self.loop.now
        self.step(node, node.core.tick(EPOCH + now, now))

    # -- links -----------------------------------------------------------------------------

    def pair(self, a: Node, b: Node) -> tuple[int, int]:
        return (a.index, b.index) if a.index < b.index else (b.index, a.index)

    def transmit(self, node: Node, to: bytes, body: bytes, t: float) -> None:
        peer = self.by_key.get(to)
        if peer is None:
            return
        pair = self.pair(node, peer)
        life = self.link_up.get(pair)
        if life is None:
            return
        bad = self.filters.get(node.index)
        if bad is not None:
            changed = bad(node, to, body)
            if changed is None:
                return
            body = changed
        size = len(body) + FRAME_OVERHEAD
        node.sent_bytes += size
        if self.track_wire:
            self._track(body)
        direction = (node.index, peer.index)
        if self.hop_jitter:  # each write of a real gateway is its own moment
            t += self.rng.uniform(0, self.hop_jitter)
        start = max(t, self.link_free.get(direction, 0.0))
        done = start + size / self.params.bandwidth
        self.link_free[direction] = done
        if self.params.loss and self.rng.random() < self.params.loss:
            return
        self.loop.at(done + self.params.latency, self._arrive, peer, node.key, body, pair, life)

    def _track(self, body: bytes) -> None:
        try:
            msg = routing.decode(body)
        except Exception:  # noqa: BLE001 - only counting
            return
        if isinstance(msg, routing.Envs):
            for _hops, signed, _sig in msg.entries:
                msg_id = envelope.message_id(signed)
                if msg_id in self.tracked:
                    self.copies[msg_id] += 1
                    self.tracked_bytes[msg_id] += len(signed) + 64 + 8

    def _arrive(self, node: Node, sender: bytes, body: bytes, pair: tuple[int, int],
                life: int) -> None:
        if self.link_up.get(pair) != life or not node.up:
            return  # the link went down meanwhile: what was in flight is lost
        node.inbox.append([sender, body])
        if len(node.inbox) == 1:
            self.loop.at(max(self.loop.now, node.busy_until), self._process, node)

    def _process(self, node: Node) -> None:
        if not node.up:
            node.inbox.clear()
            return
        frames, node.inbox = node.inbox, []
        if not frames:
            return
        now = self.loop.now
        done = now + self.per_frame * len(frames)
        node.busy_until = done
        self.step(node, node.core.receive(frames, EPOCH + now, now), t=done + self.hop_delay)

    def connect(self, a: Node, b: Node, delay: float | None = None) -> None:
        """Bring the link a-b up after the handshake (both must be up then)."""
        self.edges.add(self.pair(a, b))
        self.loop.at(self.loop.now + (self.params.handshake if delay is None else delay),
                     self._verified, a, b)

    def _verified(self, a: Node, b: Node) -> None:
        pair = self.pair(a, b)
        if not (a.up and b.up) or pair not in self.edges or pair in self.link_up:
            return
        self.link_up[pair] = next(self.epoch)
        for x, y in ((a, b), (b, a)):
            x.links.add(y.key)
            self.set_links(x)

    def set_links(self, node: Node) -> None:
        now = self.loop.now
        self.step(node, node.core.set_links(set(node.links), EPOCH + now, now))

    def disconnect(self, a: Node, b: Node, notice: tuple[float, float] = (0.0, 0.0)) -> None:
        """The link a-b goes down; each end notices after its ``notice`` delay."""
        pair = self.pair(a, b)
        self.link_up.pop(pair, None)
        for x, y, d in ((a, b, notice[0]), (b, a, notice[1])):
            self.loop.at(self.loop.now + d, self._lost, x, y)

    def _lost(self, node: Node, peer: Node) -> None:
        if node.up and peer.key in node.links and self.pair(node, peer) not in self.link_up:
            node.links.discard(peer.key)
            self.set_links(node)

    def neighbours(self, node: Node) -> list[Node]:
        return [self.nodes[b if a == node.index else a] for a, b in self.edges
                if node.index in (a, b)]

    def leave(self, node: Node, *, silent: bool = False) -> None:
        """``node`` goes away: cleanly (its links close) or silently (its neighbours notice
        when the link has been quiet for ``dead_after``)."""
        node.up = False
        wait = LinkLimits().dead_after if silent else 0.0
        for peer in self.neighbours(node):
            if self.pair(node, peer) in self.link_up:
                self.disconnect(node, peer, (0.0, wait))
        self.edges = {e for e in self.edges if node.index not in e}

    def start(self, node: Node) -> None:
        """A node starts: its first step is its first profile (after its links, if any)."""
        now = self.loop.now
        self.step(node, node.core.tick(EPOCH + now, now))

    # -- figures -----------------------------------------------------------------------------

    def up_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.up]

    def alive_adjacency(self, links: Iterable[tuple[int, int]] | None = None
                        ) -> dict[int, set[int]]:
        """The up nodes and the links between them (default: the links up now; the links
        of the topology, ``edges``, include those a ban closed for now)."""
        adj: dict[int, set[int]] = {n.index: set() for n in self.up_nodes()}
        for a, b in self.link_up if links is None else links:
            if a in adj and b in adj:
                adj[a].add(b)
                adj[b].add(a)
        return adj

    def directory_errors(self) -> int:
        """Nodes whose mesh directory differs from the true distances (within the hop limit,
        the reach of profiles)."""
        from collections import deque

        adj = self.alive_adjacency()
        limit = self.settings.hop_limit
        wrong = 0
        for node in self.up_nodes():
            dist = {node.index: 0}
            queue = deque([node.index])
            while queue:
                x = queue.popleft()
                if dist[x] >= limit:
                    continue
                for y in adj[x]:
                    if y not in dist:
                        dist[y] = dist[x] + 1
                        queue.append(y)
            truth = {self.nodes[i].key: d for i, d in dist.items() if i != node.index}
            view = {k: d for k, d in node.core.dist.items() if d <= limit}
            if view != truth:
                wrong += 1
        return wrong
