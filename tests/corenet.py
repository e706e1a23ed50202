"""N router cores wired together in memory: the router's protocol with no process, no socket.

Theory of operation
-------------------
``Net`` holds ``Node`` s, each a real ``common.routercore.RouterCore`` with

* an ``Identity``: real Ed25519 and X25519 keys (PyNaCl), signing what the
  identity service signs (``DOMAIN_ENVELOPE || bytes``) and opening sealed
  boxes, or, with ``sigs="counted"``, signatures that are only counted (a
  keyed hash in place of Ed25519, checked the same way, for large meshes);
* a ``MemStore``: the rows ``services/storedb.py`` keeps, with its rules
  (unique ids and client ids, held and released, hops only lowered, statuses
  only forward by ``common.status.advance``) and the reads a restart loads
  from (``recent_ids``, ``sync_set``, ``newest_profiles``, ``outbox``).

Every action a core yields is executed at once by its node (``drive``), as
the router service does; a ``Send`` becomes a ``Frame`` on the net's queue,
and is delivered to the neighbour's ``receive([[sender key, body]])`` when
``run_for`` reaches its time (``latency``), or whenever a test says so when the
net is in ``hold`` mode: then ``queue`` is the test's to reorder, drop,
duplicate or deliver (``deliver``, ``drop``, ``duplicate``). A frame is
delivered only if its link is still up (a link that goes down loses what it
carried). Time is virtual: ``mono`` (the cores' monotonic clock) and ``now``
(wall-clock seconds), advanced only by ``run_for``, which also runs each core's
``tick`` when its ``next_deadline`` comes.

Faults: ``MemStore.fail_commits`` makes the next commits raise (as a full disk
would, ``store_error``; the step fails where the core asked, and the node logs
it as the service does); ``Node.crash_after_commit`` makes the node die right
after its next commit is written (the step is abandoned, the node restarts from
its store). ``Node.restart`` builds a new core from the store, as the router
service's ``load`` does.

Each node checks, as the actions go by, what the protocol promises and records
any breach in ``Net.violations``: a message is shown (``chat.message``) at
most once and only once its row is committed; the status of an own message
only moves forward (``chat.status``, ``common.status.advance``); every event
the core emits is valid against its schema. Tests assert ``net.violations ==
[]``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from tazcom.common import certs, envelope, gossip, quota, routing, rpc, status
from tazcom.common import routercore as rc
from tazcom.common.errors import RemoteProtocolError, RequestFailed, TazcomError
from tazcom.common.events import ChatMessage, ChatStatus, MeshPeer
from tazcom.common.floodlimits import FloodSettings
from tazcom.common.keyring import KeyRing
from tazcom.common.keys import DOMAIN_CERT, DOMAIN_ENVELOPE
from tazcom.common.mirror import Numbering
from tazcom.common.scoring import ScoreSettings

WALL0 = 1_700_000_000.0
MONO0 = 100.0


class Crash(BaseException):
    """The node's process died in the middle of a step (not an ``Exception``: ``drive``
    does not hand it back to the step, it unwinds out of it)."""


# -- identity --------------------------------------------------------------------------------


class Identity:
    """A node's keys, as the identity service holds them (services/identity.py)."""

    def __init__(self, seed: bytes, *, counted: bool = False) -> None:
        ed_seed = hashlib.blake2b(seed, digest_size=32, person=b"corenet-ed25519").digest()
        x_secret = hashlib.blake2b(seed, digest_size=32, person=b"corenet-x25519").digest()
        signing = nacl.signing.SigningKey(ed_seed)
        self.ed25519_seed, self.x25519_secret = ed_seed, x_secret
        self._sk = bytes(signing) + bytes(signing.verify_key)
        self.key = bytes(signing.verify_key)
        box = nacl.public.PrivateKey(x_secret)
        self.enc_key = bytes(box.public_key)
        self._unseal = nacl.public.SealedBox(box)
        self.counted = counted
        self.signed = 0

    def sign(self, items: list[bytes]) -> list[bytes]:
        self.signed += len(items)
        if self.counted:
            return [counted_sig(self.key, data) for data in items]
        return [nacl.bindings.crypto_sign(DOMAIN_ENVELOPE + data, self._sk)[:64]
                for data in items]

    def certify(self, dkey: bytes, not_before: int, not_after: int) -> bytes:
        """A certificate for a delegated key, as identity.certify makes it."""
        part = certs.signed_part(self.key, dkey, not_before, not_after)
        return certs.encode(dkey, not_before, not_after,
                            nacl.bindings.crypto_sign(DOMAIN_CERT + part, self._sk)[:64])

    def open(self, boxes: list[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for box in boxes:
            try:
                out.append(self._unseal.decrypt(box))
            except nacl.exceptions.CryptoError:
                out.append(None)
        return out


def counted_sig(origin: bytes, signed: bytes) -> bytes:
    """A stand-in signature for ``sigs="counted"``: cheap, but still bound to origin and
    bytes, so a forged copy still fails."""
    return hashlib.blake2b(DOMAIN_ENVELOPE + signed, digest_size=64, key=origin).digest()


def counted_verify(env: envelope.Envelope) -> None:
    if env.sig != counted_sig(env.origin, env.signed):
        raise envelope.EnvelopeError("the origin's signature does not verify",
                                     code="bad_signature")


# -- store -------------------------------------------------------------------------------------


class MemStore:
    """The rows of services/storedb.py, in memory, with its rules."""

    def __init__(self) -> None:
        self.rows: dict[bytes, rpc.StoredMessage] = {}
        self.received_at: dict[bytes, float] = {}  # insertion order is the rowid order
        self.client_ids: dict[bytes, bytes] = {}
        self.next_seq = 1
        #: The next this many commits fail (store_error), writing nothing.
        self.fail_commits = 0
        self.commits = 0
        self.policies: dict[bytes, tuple[bytes, str, float, float | None, str]] = {}

    def commit(self, items: list[rpc.StoredMessage], now: float) -> list[rpc.PutOutcome]:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise RequestFailed("disk full (injected)", code="store_error")
        self.commits += 1
        out = []
        for m in items:
            if m.id in self.rows:
                out.append(rpc.PutOutcome(id=m.id, new=False))
            elif m.client_id is not None and m.client_id in self.client_ids:
                out.append(rpc.PutOutcome(id=self.client_ids[m.client_id], new=False))
            else:
                self.rows[m.id] = m
                self.received_at[m.id] = now
                if m.client_id is not None:
                    self.client_ids[m.client_id] = m.id
                out.append(rpc.PutOutcome(id=m.id, new=True))
        return out

    def fetch(self, ids: list[bytes]) -> list[rpc.WireEnvelope]:
        out, seen = [], set()
        for i in ids:
            m = self.rows.get(i)
            if m is not None and i not in seen:
                seen.add(i)
                out.append(rpc.WireEnvelope(id=i, signed=m.signed, sig=m.sig, hops=m.hops))
        return out

    def set_status(self, updates: list[rpc.StatusUpdate]) -> None:
        for u in updates:
            m = self.rows.get(u.id)
            if m is not None and status.advance(m.status, u.status):
                self.rows[u.id] = m.replace(status=u.status, reason=u.reason)

    def release(self, ids: list[bytes]) -> None:
        for i in ids:
            m = self.rows.get(i)
            if m is not None and m.held:
                self.rows[i] = m.replace(held=False)

    def lower_hops(self, distances: dict[bytes, int]) -> None:
        for i, d in distances.items():
            m = self.rows.get(i)
            if m is not None and m.hops > d:
                self.rows[i] = m.replace(hops=d)

    def evict(self, a: rc.Evict) -> list[tuple[bytes, int]]:
        rows = [(i, m.ts, self.received_at[i], quota.row_bytes(m.signed, m.sig))
                for i, m in self.rows.items()
                if m.origin == a.origin and quota.evictable(m.kind, m.origin, m.to, a.own)]
        out = quota.pick_oldest(sorted(rows, key=quota.oldest_first), a.size)
        for i, _ in out:
            del self.rows[i]
        return out

    def usage(self, own: bytes) -> list[tuple[bytes, int]]:
        used: Counter[bytes] = Counter()
        for m in self.rows.values():
            if quota.evictable(m.kind, m.origin, m.to, own):
                used[m.origin] += quota.row_bytes(m.signed, m.sig)
        return list(used.items())

    def set_policy(self, a: rc.SavePolicy) -> None:
        if a.policy is None:
            self.policies.pop(a.key, None)
        else:
            self.policies[a.key] = (a.key, a.policy, a.since, a.until, a.reason)

    def reserve_seq(self, count: int) -> int:
        first = self.next_seq
        self.next_seq += count
        return first

    # -- what a restart loads ------------------------------------------------------------

    def recent_ids(self, since: float, limit: int) -> list[bytes]:
        """Newest first, as ``store.recent_ids``."""
        ids = [i for i, at in self.received_at.items() if at >= since]
        ids.reverse()
        return ids[:limit]

    def newest_profiles(self) -> list[rpc.StoredMessage]:
        best: dict[bytes, rpc.StoredMessage] = {}
        for m in self.rows.values():
            if m.kind == envelope.KIND_PROFILE:
                b = best.get(m.origin)
                if b is None or (m.ts, m.seq, m.id) > (b.ts, b.seq, b.id):
                    best[m.origin] = m
        return list(best.values())

    def sync_set(self, since_ms: int) -> list[rpc.SyncItem]:
        items = {m.id: m for m in self.rows.values()
                 if (m.kind == envelope.KIND_ROOM and m.conv is None and m.ts >= since_ms)
                 or m.held}
        items.update((m.id, m) for m in self.newest_profiles() if m.ts >= since_ms)
        return [rpc.SyncItem(id=m.id, ts=m.ts, kind=m.kind, to=m.to, held=m.held)
                for m in sorted(items.values(), key=lambda m: (m.ts, m.id), reverse=True)]

    def outbox(self) -> list[tuple[bytes, str, bytes | None]]:
        rows = sorted((m for m in self.rows.values()
                       if m.own and m.status in ("queued", "sent", "relayed")),
                      key=lambda m: (m.ts, m.seq, m.id))
        return [(m.id, m.status, m.to) for m in rows]


# -- nodes -------------------------------------------------------------------------------------


@dataclass
class Frame:
    src: int
    dst: int
    body: bytes
    at: float
    n: int = 0


class Node:
    def __init__(self, net: Net, index: int, identity: Identity, nickname: str,
                 settings: rc.RouterSettings) -> None:
        self.net, self.index, self.identity = net, index, identity
        self.key, self.nickname, self.settings = identity.key, nickname, settings
        self.store = MemStore()
        self.links: set[bytes] = set()
        self.epoch = 0
        self.core: rc.RouterCore = self._new_core()
        #: What the node showed, and the status of each own message, across restarts.
        self.shown: Counter[bytes] = Counter()
        self.statuses: dict[bytes, str] = {}
        self.mesh: dict[bytes, int | None] = {}
        self.emitted: list[rc.Emit] = []
        self.rejected: list[rc.Rejected] = []
        self.sent: list[tuple[bytes, bytes]] = []  # (to, body) when the net records
        self.failures: list[str] = []
        self.bytes_sent = 0
        self.frames_sent = 0
        self.restarts = 0
        #: Die right after the next commit is written.
        self.crash_after_commit = False
        #: Frames to this node are lost (it is silent), its links still up.
        self.silent = False
        #: File manifests the core handed to the file service (``FileManifest``).
        self.manifests: list[rc.FileManifest] = []
        #: Group messages opened here (``StoreText``), and the groups as saved on disk.
        self.texts: dict[bytes, str] = {}
        self.group_disk: dict[bytes, bytes] = {}
        self.acks_disk: dict[bytes, tuple[bytes, bytes, int, list[bytes]]] = {}
        self.outbox_disk: list[Any] = []

    def __repr__(self) -> str:
        return f"<Node {self.index} {self.nickname}>"

    def _new_core(self) -> rc.RouterCore:
        self.epoch += 1
        verify = counted_verify if self.identity.counted else None
        core = rc.RouterCore(self.key, self.identity.enc_key, self.nickname, self.settings,
                             numbering=Numbering(self.epoch), verify=verify,
                             rng=random.Random(self.net.rng.random()))
        for blob in getattr(self, "group_disk", {}).values():
            core.groups.load(blob)
        core.load_acks(list(getattr(self, "acks_disk", {}).values()))
        core.group_outbox = list(getattr(self, "outbox_disk", []))
        if self.net.delegated:
            # as services/router.py: a delegated key identity certified signs our envelopes
            if getattr(self, "ring", None) is None:
                self.ring = KeyRing.new(self.net.now)
                dkey, nb, na = self.ring.cert_request(self.net.now)
                self.ring.certified(dkey, self.identity.certify(dkey, nb, na))
            core.set_signer(self.ring.signer.cert)
        return core

    # -- executing actions ---------------------------------------------------------------

    def run(self, step: rc.Step) -> Any:
        """Drive ``step``; a store failure ends it as the service logs one (None). Any
        other error the core raises is a breach (the core refuses, it does not raise)."""
        try:
            return rc.drive(step, self.execute)
        except TazcomError as e:
            self.failures.append(f"{e.code}: {e.message}")
            if e.code != "store_error":  # only the store's failures are expected
                self.net.violation(self, f"step raised {e.code}: {e.message}")
            return None
        except Crash:
            step.close()
            self.restart()
            return None

    def execute(self, a: rc.Action) -> Any:
        t = type(a)
        if t is rc.Send:
            self.net.send(self, a.link, a.body)
        elif t is rc.Emit:
            self.on_emit(a)
        elif t is rc.Rejected:
            self.rejected.append(a)
        elif t is rc.Commit:
            if self.net.strict:
                for m in a.items:
                    rpc.StoredMessage.from_dict(m.to_dict())
            result = self.store.commit(a.items, self.net.now)
            if self.crash_after_commit:
                self.crash_after_commit = False
                raise Crash()
            return result
        elif t is rc.Fetch:
            return self.store.fetch(a.ids)
        elif t is rc.SetStatus:
            self.store.set_status(a.updates)
        elif t is rc.Release:
            self.store.release(a.ids)
        elif t is rc.LowerHops:
            self.store.lower_hops(a.distances)
        elif t is rc.ReserveSeq:
            return self.store.reserve_seq(a.count)
        elif t is rc.Sign:
            if self.net.delegated and not a.long_term:
                return [self.ring.sign(item) for item in a.items]
            return self.identity.sign(a.items)
        elif t is rc.Open:
            return self.identity.open(a.boxes)
        elif t is rc.Together:
            return [self.execute(x) for x in a.actions]
        elif t is rc.Evict:
            return self.store.evict(a)
        elif t is rc.SavePolicy:
            self.store.set_policy(a)
        elif t is rc.FileManifest:
            self.manifests.append(a)
        elif t is rc.StoreText:
            if a.id not in self.store.rows:
                self.net.violation(self, "a text for a row not committed")
            self.texts[a.id] = a.text
        elif t is rc.StoreReason:
            pass
        elif t is rc.SaveAcks:
            self.acks_disk[a.id] = (a.id, a.group, a.epoch, list(a.acked))
        elif t is rc.SaveGroups:
            self.group_disk = {g: self.core.groups.dump(g) for g in self.core.groups.groups}
            self.outbox_disk = list(self.core.group_outbox)
        else:
            raise TypeError(f"unknown action {a!r}")
        return None

    def on_emit(self, a: rc.Emit) -> None:
        net = self.net
        if net.record:
            self.emitted.append(a)
        if net.strict:
            try:
                a.event.from_dict({"src": "router", "ts": net.now, **a.fields})
            except RemoteProtocolError as e:
                net.violation(self, f"invalid {a.event.__name__}: {e.message}")
        f = a.fields
        if a.event is ChatMessage:
            msg_id = bytes.fromhex(f["id"])
            self.shown[msg_id] += 1
            if self.shown[msg_id] > 1:
                net.violation(self, f"showed {f['id']} {self.shown[msg_id]} times")
            if msg_id not in self.store.rows:
                net.violation(self, f"showed {f['id']} before its commit")
            if f["own"]:
                self.step_status(f["id"], f["status"] or "queued")
        elif a.event is ChatStatus:
            if f.get("members") is not None and self.statuses.get(
                    bytes.fromhex(f["id"])) == "delivered":
                return  # a group message: one more member acknowledged it
            self.step_status(f["id"], f["status"])
        elif a.event is MeshPeer:
            self.mesh[bytes.fromhex(f["key"])] = f["hops"]

    def step_status(self, id_hex: str, new: str) -> None:
        msg_id = bytes.fromhex(id_hex)
        old = self.statuses.get(msg_id, "")
        if status.RANK[new] <= status.RANK[old]:
            self.net.violation(self, f"status of {id_hex} went {old!r} -> {new!r}")
        self.statuses[msg_id] = new

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, frames: list[Frame]) -> None:
        net = self.net
        self.run(self.core.receive([[net.nodes[f.src].key, f.body] for f in frames],
                                   net.now, net.mono))

    def tick(self) -> None:
        self.run(self.core.tick(self.net.now, self.net.mono))

    def anti_entropy(self) -> None:
        self.run(self.core.anti_entropy(self.net.now, self.net.mono))

    def set_links(self, links: set[bytes]) -> None:
        self.links = set(links)
        self.run(self.core.set_links(self.links, self.net.now, self.net.mono))

    def post(self, text: str, to: Node | bytes | None = None,
             client_id: bytes | None = None) -> rpc.PostResult | rc.PostRefused | None:
        """One post, as ``router.post``: refused at once, or posted in a batch of one."""
        return self.post_many([(text, to, client_id)])[0]

    def post_many(self, posts: Iterable[tuple[str, Node | bytes | None, bytes | None]]
                  ) -> list[rpc.PostResult | rc.PostRefused | None]:
        specs = []
        for text, to, client_id in posts:
            key = to.key if isinstance(to, Node) else to
            self.net.posts += 1
            cid = client_id or hashlib.blake2b(b"%d/%d" % (self.index, self.net.posts),
                                               digest_size=16).digest()
            specs.append(rc.PostSpec(cid, key, text))
        answers = self.run(self.core.post(specs, self.net.now, self.net.mono))
        self.run(self.core.settle_posts())  # as services/router.py does after answering
        return answers if answers is not None else [None] * len(specs)

    def restart(self) -> None:
        """A new core from the store, as ``services/router.py`` ``load`` builds it."""
        net = self.net
        self.restarts += 1
        self.core = core = self._new_core()
        s = core.seen
        seen = self.store.recent_ids(net.now - s.horizon, s.capacity)
        sync = self.store.sync_set(int(net.now * 1000 - gossip.MAX_AGE_MS))
        profile_ids = [i.id for i in sync if i.kind == envelope.KIND_PROFILE]
        receipt_ids = [i.id for i in sync
                       if i.kind == envelope.KIND_RECEIPT and i.to == core.own_key]
        core.load(seen=reversed(seen), sync=sync, profiles=self.store.fetch(profile_ids),
                  outbox=self.store.outbox(), now=net.now,
                  receipts=self.store.fetch(receipt_ids), usage=self.store.usage(core.own_key),
                  policies=list(self.store.policies.values()))
        self.run(core.set_links(self.links, net.now, net.mono))
        self.run(core.flush_known_outbox(net.now, net.mono))


# -- the net -------------------------------------------------------------------------------

#: The settings of a net that tests routing, not the limits (tests/unit/test_safety.py does):
#: no flood limit, no ban. Tests that give their own settings get the defaults.
OPEN = rc.RouterSettings(flood=FloodSettings.unlimited(),
                         scoring=ScoreSettings(ban_threshold=-math.inf))


class Net:
    """Nodes, links between them, frames in flight and a virtual clock."""

    def __init__(self, n: int = 0, *, settings: rc.RouterSettings | None = None,
                 seed: int = 0, latency: float | Callable[[int, int], float] = 0.0,
                 loss: float = 0.0, sigs: str = "real", strict: bool = True,
                 record: bool = True, delegated: bool = False) -> None:
        self.settings = settings or OPEN
        #: Nodes sign with certified delegated keys (envelope version 2), as real routers do.
        self.delegated = delegated
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.counted = sigs == "counted"
        self.strict, self.record = strict, record
        self.mono = MONO0
        self.nodes: list[Node] = []
        self.by_key: dict[bytes, Node] = {}
        self.edges: set[frozenset[int]] = set()
        self.queue: list[Frame] = []
        #: Frames wait for the test to deliver them (run_for only runs timers).
        self.hold = False
        self.violations: list[str] = []
        self.dropped = 0
        self.delivered = 0
        self.posts = 0
        self._n = 0
        self.seed = seed
        for _ in range(n):
            self.add()

    @property
    def now(self) -> float:
        return WALL0 + self.mono

    def add(self, nickname: str | None = None, settings: rc.RouterSettings | None = None
            ) -> Node:
        i = len(self.nodes)
        ident = Identity(b"corenet %d %d" % (self.seed, i), counted=self.counted)
        node = Node(self, i, ident, nickname or f"n{i}", settings or self.settings)
        self.nodes.append(node)
        self.by_key[node.key] = node
        return node

    def violation(self, node: Node, what: str) -> None:
        self.violations.append(f"{node.nickname}: {what}")

    # -- links ----------------------------------------------------------------------------

    def _node(self, x: Node | int) -> Node:
        return self.nodes[x] if isinstance(x, int) else x

    def linked(self, a: Node | int, b: Node | int) -> bool:
        return frozenset((self._node(a).index, self._node(b).index)) in self.edges

    def set_edges(self, edges: Iterable[tuple[Node | int, Node | int]]) -> None:
        """Exactly these links up; every node whose links changed is told."""
        new = {frozenset((self._node(a).index, self._node(b).index)) for a, b in edges}
        changed = {i for e in new ^ self.edges for i in e}
        self.edges = new
        for i in sorted(changed):
            node = self.nodes[i]
            node.set_links({self.nodes[j].key for e in new if i in e for j in e if j != i})

    def link(self, *pairs: tuple[Node | int, Node | int]) -> None:
        self.set_edges(self.edges_as_pairs() + list(pairs))

    def unlink(self, *pairs: tuple[Node | int, Node | int]) -> None:
        gone = {frozenset((self._node(a).index, self._node(b).index)) for a, b in pairs}
        self.set_edges([tuple(e) for e in self.edges - gone])  # type: ignore[misc]

    def edges_as_pairs(self) -> list[tuple[int, int]]:
        return [tuple(sorted(e)) for e in self.edges]  # type: ignore[misc]

    def line(self, nodes: list[Node] | None = None) -> None:
        nodes = nodes or self.nodes
        self.link(*itertools.pairwise(nodes))

    # -- frames -----------------------------------------------------------------------------

    def send(self, src: Node, dst_key: bytes, body: bytes) -> None:
        src.bytes_sent += len(body)
        src.frames_sent += 1
        if self.record:
            src.sent.append((dst_key, body))
        dst = self.by_key.get(dst_key)
        if dst is None or not self.linked(src, dst) or (
                self.loss and self.rng.random() < self.loss):
            self.dropped += 1
            return
        lat = self.latency(src.index, dst.index) if callable(self.latency) else self.latency
        self._n += 1
        self.queue.append(Frame(src.index, dst.index, body, self.mono + lat, self._n))

    def deliver(self, frames: Frame | int | list[Frame | int] | None = None) -> None:
        """Deliver frames now (default: everything queued now), one batch per destination,
        in queue order; frames whose link is down, or whose receiver is silent, are lost."""
        if frames is None:
            picked = list(self.queue)
        else:
            picked = [self.queue[f] if isinstance(f, int) else f
                      for f in (frames if isinstance(frames, list) else [frames])]
        ids = {id(f) for f in picked}
        self.queue = [f for f in self.queue if id(f) not in ids]
        batches: dict[int, list[Frame]] = defaultdict(list)
        for f in picked:
            if not self.linked(f.src, f.dst) or self.nodes[f.dst].silent:
                self.dropped += 1
                continue
            batches[f.dst].append(f)
        for dst, batch in batches.items():
            self.delivered += len(batch)
            self.nodes[dst].receive(batch)

    def drop(self, index: int) -> Frame:
        return self.queue.pop(index)

    def duplicate(self, index: int) -> None:
        f = self.queue[index]
        self._n += 1
        self.queue.append(Frame(f.src, f.dst, f.body, f.at, self._n))

    def flush(self, limit: int = 100_000) -> None:
        """Deliver until nothing is in flight, at this instant (no timers run)."""
        for _ in range(limit):
            if not self.queue:
                return
            self.deliver()
        raise AssertionError(f"frames still in flight after {limit} rounds")

    # -- time -------------------------------------------------------------------------------

    def run_for(self, seconds: float, max_events: int = 1_000_000) -> None:
        """Advance the clock by ``seconds``: frames arrive when due (unless held), each core
        ticks when its deadline comes."""
        end = self.mono + seconds
        for _ in range(max_events):
            t_frame = None if self.hold or not self.queue else min(f.at for f in self.queue)
            deadlines = [(d, n) for n in self.nodes
                         if (d := n.core.next_deadline()) is not None]
            t_tick = min((d for d, _ in deadlines), default=None)
            t = min((x for x in (t_frame, t_tick) if x is not None), default=None)
            if t is None or t > end:
                break
            self.mono = max(self.mono, t)
            if t_frame is not None and t_frame <= self.mono:
                self.deliver([f for f in self.queue if f.at <= self.mono])
            for d, node in deadlines:
                if d <= self.mono:
                    node.tick()
                    after = node.core.next_deadline()
                    if after is not None and after <= d:
                        self.violation(node, f"tick left a deadline due ({after} <= {d})")
                        return
        else:
            raise AssertionError("run_for: too many events")
        self.mono = max(self.mono, end)

    def settle(self, rounds: int = 3, wait: float = 2.0) -> None:
        """Let the mesh settle: frames flow, timers run, ``rounds`` catch-up rounds."""
        self.hold = False
        self.run_for(wait)
        for _ in range(rounds):
            for node in self.nodes:
                node.anti_entropy()
            self.run_for(wait)

    # -- looking at it --------------------------------------------------------------------

    def stored_everywhere(self, msg_id: bytes) -> bool:
        return all(msg_id in n.store.rows for n in self.nodes)


def frame_ids(body: bytes) -> list[bytes]:
    """The ids of the envelopes in a router ``envs`` message (else [])."""
    try:
        msg = routing.decode(body)
    except RemoteProtocolError:
        return []
    if not isinstance(msg, routing.Envs):
        return []
    return [envelope.message_id(signed) for _, signed, _ in msg.entries]


def make_envelope(identity: Identity, *, kind: int = envelope.KIND_ROOM, seq: int = 1,
                  ts: int, to: bytes | None = None, body: bytes = b"hello",
                  origin: bytes | None = None) -> tuple[bytes, bytes]:
    """(signed, sig) of an envelope signed by ``identity``, any fields."""
    signed = envelope.signed_bytes(kind=kind, origin=origin or identity.key, seq=seq, ts=ts,
                                   to=to, body=body)
    return signed, identity.sign([signed])[0]


@dataclass
class Recorder:
    """The actions of one step, in order, with the executor's results."""

    node: Node
    actions: list[Any] = field(default_factory=list)

    def __call__(self, a: rc.Action) -> Any:
        result = self.node.execute(a)
        self.actions.append((a, result))
        return result

    def run(self, step: rc.Step) -> Any:
        return rc.drive(step, self)

    def of(self, kind: type) -> list[Any]:
        return [a for a, _ in self.actions if type(a) is kind]
