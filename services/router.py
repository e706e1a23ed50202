"""The router: room messages, direct messages and profiles across the mesh.

Data paths (docs/protocol.md, "Routing"):

* from the gateway: ``run/router-in.sock`` (PULL) receives ``[peer key, body]``
  for every ``app`` message of kind ``router`` on a verified link;
* to the gateway: a PUSH to ``run/gateway-in.sock`` sends ``[peer key, body]``.

Both are PUSH/PULL, not the bus: envelopes must not be dropped at a
subscriber's high-water mark, and a restarted peer process is reconnected
with what was queued for it.

Every envelope is parsed, checked against the hop limit and the time window,
deduplicated, rate-limited per link and per origin, and its signature
verified, in that order (cheap checks first). Accepted envelopes are written
to the store in one batch and only once the store has committed them are they
shown, relayed, acknowledged (custody) or answered (receipts): a message
counts as accepted when its row is committed. Anything lost between two
processes is found again by catch-up (``common.catchup``), which runs when a
link comes up, when the router starts, and every minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass

import zmq
import zmq.asyncio

from tazcom.common import catchup, envelope, gossip, routing, rpc, tables
from tazcom.common.envelope import (
    KIND_DM,
    KIND_PROFILE,
    KIND_RECEIPT,
    KIND_ROOM,
    Envelope,
    EnvelopeError,
)
from tazcom.common.errors import RemoteProtocolError, RequestFailed, TazcomError
from tazcom.common.events import (
    ChatMessage,
    ChatStatus,
    Event,
    IdentityChanged,
    MeshPeer,
    RouterDropped,
)
from tazcom.common.keys import DOMAIN_ENVELOPE, fingerprint
from tazcom.common.mirror import Change, Mirror
from tazcom.common.rejects import RejectLog

from .busclient import Readable, tune
from .runtime import Runtime, run
from .store import Store

STATUS_ORDER = {"": 0, "queued": 1, "sent": 2, "relayed": 3, "delivered": 4, "failed": 5}
MAX_BATCH = 1024
FRAME_BUDGET = 60_000
ANTI_ENTROPY = 60.0
PROFILE_EVERY = 120.0
#: A node whose profile has not been refreshed for this long is taken as gone.
PROFILE_EXPIRES = 330.0
PROFILE_DEBOUNCE = 0.05
SEQ_BLOCK = 1000
#: Bytes of envelopes per store.put, well under rpc.max_request_bytes (256 KiB).
PUT_BYTES = 160_000


def by_size(items: list, size_of, budget: int = PUT_BYTES, most: int = 256) -> list[list]:
    """Split ``items`` so that each request stays under the RPC size limit."""
    chunks: list[list] = [[]]
    size = 0
    for item in items:
        n = size_of(item)
        if chunks[-1] and (size + n > budget or len(chunks[-1]) >= most):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return [c for c in chunks if c]


@dataclass
class Accepted:
    env: Envelope
    hops: int  # links travelled to reach us
    came_from: bytes | None
    text: str | None = None


@dataclass
class Directory:
    """A node as its newest signed profile describes it."""

    nickname: str
    enc_key: bytes
    version: tuple[int, int]  # (ts, seq): newer profiles win
    links: frozenset[bytes]
    profile_id: bytes
    received_at: float
    #: The profile itself, and the distance we hold it at (offered when a link comes up).
    env: Envelope
    hops: int
    #: What mesh.peer last said of it (None: unreachable).
    published: rpc.MeshEntry | None = None


@dataclass
class PendingPost:
    req: rpc.Post
    fut: asyncio.Future


class Router:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.config = rt.config
        raw = rt.config.raw.get("router", {})
        self.hop_limit = min(int(raw.get("hop_limit", envelope.DEFAULT_HOP_LIMIT)),
                             envelope.MAX_HOPS_LIMIT)
        self.relay = gossip.RelayQueue(max_delay=float(raw.get("relay_delay_ms", 2)) / 1000)
        self.link_rate = gossip.Buckets(float(raw.get("link_rate", 5000)),
                                        float(raw.get("link_burst", 20000)))
        self.origin_rate = gossip.Buckets(float(raw.get("origin_rate", 5000)),
                                          float(raw.get("origin_burst", 20000)))
        #: Accepted in the batch being processed, not yet committed (id -> its acceptance).
        self.pending: dict[bytes, Accepted] = {}
        #: Distances of what we accepted lately, lowered when a shorter path shows up.
        self.recent = gossip.Recent()
        self._lowered: dict[bytes, int] = {}
        self._shorter: list[tuple[Envelope, int, bytes | None]] = []
        self.seen = gossip.SeenSet(int(raw.get("seen_capacity", 100_000)),
                                   float(raw.get("seen_horizon", 86_400)))
        self.index = catchup.SyncIndex()
        #: Our verified neighbours, from the gateway's link table (mirrored).
        self.links: set[bytes] = set()
        self.link_table: Mirror | None = None  # once load() knows who we are
        #: The mesh directory (published as mesh.peer), which this service owns.
        self.mesh_numbering = rt.own_table("mesh")
        self.directory: dict[bytes, Directory] = {}
        #: The farthest node we know, in links (gossip.reach_matters).
        self.eccentricity = 0
        self.own_status: dict[bytes, tuple[str, bytes | None]] = {}  # id -> (status, to)
        self.rejects = RejectLog(rt.log)
        self.dropped: dict[tuple[str, str], int] = defaultdict(int)
        self.own_key = b""
        self.enc_key = b""
        self.nickname = rt.config.nickname
        self.seq_next = 0
        self.seq_end = 0
        self._posts: list[PendingPost] = []
        self.counts = {"accepted": 0, "duplicates": 0, "dropped": 0, "relayed": 0, "posted": 0,
                       "shorter": 0}
        self._post_wake = asyncio.Event()
        self._relay_wake = asyncio.Event()
        self._profile_wake = asyncio.Event()
        self._profile_wake.set()  # the first one goes out at start
        # The router commits envelopes itself, through the store's own code, to the node's
        # SQLite database (WAL: the store service reads it and runs maintenance meanwhile);
        # a request to another process per batch cost more than the commit (docs/perf).
        self.db = Store(rt.config.paths.store_file)
        self.identity = rt.client("identity")
        self.inbox = rt.ctx.socket(zmq.PULL)
        tune(self.inbox, rt.config)
        self.inbox.setsockopt(zmq.RCVHWM, 100_000)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, 70_000)
        self.inbox.bind(rt.config.paths.socket("router-in"))
        self.out = rt.ctx.socket(zmq.PUSH)
        tune(self.out, rt.config)
        self.out.setsockopt(zmq.SNDHWM, 100_000)
        self.out.connect(rt.config.paths.socket("gateway-in"))
        self._out_sync = zmq.Socket.shadow(self.out.underlying)
        self._in_sync = zmq.Socket.shadow(self.inbox.underlying)

    # -- start -------------------------------------------------------------------------

    async def load(self) -> None:
        ident = await self.rt.call_until_ready("identity", rpc.GetIdentity())
        self.own_key = bytes.fromhex(ident.key)
        self.enc_key = bytes.fromhex(ident.enc_key or "")
        self.nickname = ident.nickname
        now = time.time()
        recent = self.db.recent_ids(rpc.StoreRecentIds(since=now - self.seen.horizon,
                                                       limit=self.seen.capacity))
        for msg_id in reversed(recent.ids):
            self.seen.add(msg_id, now)
        sync = self.db.sync_set(rpc.StoreSyncSet(since=int(now * 1000 - gossip.MAX_AGE_MS)))
        for item in sync.items:
            self.index.add(item.id, item.ts, item.to)
        profile_ids = [i.id for i in sync.items if i.kind == KIND_PROFILE]
        for chunk in catchup.chunks(profile_ids, 512):
            if not chunk:
                continue
            found = self.db.get(rpc.StoreGet(ids=tuple(chunk)))
            for e in found.items:
                with contextlib.suppress(EnvelopeError):
                    self.on_profile(envelope.parse(e.signed, e.sig), e.hops, now,
                                    recompute=False)
        outbox = self.db.outbox(rpc.StoreOutbox())
        for m in outbox.items:
            self.own_status[m.id] = (m.status, m.to)
        self.rt.log.info("loaded %d seen ids, %d catch-up items, %d profiles, %d pending own "
                         "messages", len(self.seen), len(self.index), len(self.directory),
                         len(self.own_status))

    # -- bus ------------------------------------------------------------------------------

    def follow_links(self) -> None:
        self.link_table = self.rt.mirror(tables.LINKS, self.on_links)

    def on_links(self, _changes: list[Change]) -> None:
        assert self.link_table is not None
        links = tables.verified_keys(self.link_table.items.values())
        added, gone = links - self.links, self.links - links
        self.links = links
        for key in sorted(added):
            self.send_summary(key)  # catch-up with every new neighbour
            self.send_profiles(key)
        if added or gone:
            self.links_changed()

    def on_identity(self, ev: Event) -> None:
        if isinstance(ev, IdentityChanged) and ev.nickname != self.nickname:
            self.nickname = ev.nickname
            self._profile_wake.set()

    # -- sending ----------------------------------------------------------------------------

    def send(self, key: bytes, body: bytes) -> None:
        try:
            self._out_sync.send_multipart([key, body], zmq.NOBLOCK)
        except zmq.Again:
            self.drop("gateway", "gateway_busy", "the gateway's queue is full")

    def send_entries(self, key: bytes, entries: list[tuple[int, bytes, bytes]]) -> None:
        """Envelopes to one neighbour, packed into as few frames as fit."""
        batch: list[tuple[int, bytes, bytes]] = []
        size = 0
        for entry in entries:
            n = len(entry[1]) + 80
            if batch and (size + n > FRAME_BUDGET or len(batch) >= routing.MAX_ENVS):
                self.send(key, routing.encode_envs(batch))
                batch, size = [], 0
            batch.append(entry)
            size += n
        if batch:
            self.send(key, routing.encode_envs(batch))

    def send_summary(self, key: bytes) -> None:
        self.send(key, routing.encode_summary(self.index.summary()[-routing.MAX_BUCKETS:]))

    def send_profiles(self, key: bytes) -> None:
        """Every newest profile we hold, at our distance, to a new neighbour. Catch-up only
        sends what it lacks; this also tells it of shorter paths (the new link may be one):
        the mesh directory follows the links up now (common.gossip, "Shortest distances")."""
        entries = [(d.hops, d.env.signed, d.env.sig) for origin, d in self.directory.items()
                   if origin != key and gossip.relays(d.hops, self.hop_limit)]
        if entries:
            self.send_entries(key, entries)

    def forward(self, items: list[tuple[Envelope, int, bytes | None]], now: float) -> set[bytes]:
        """Relay accepted envelopes (``hops`` = links travelled so far); returns ids sent now."""
        per_target: dict[bytes, list[tuple[int, bytes, bytes]]] = defaultdict(list)
        sent_ids: set[bytes] = set()
        for env, hops, came_from in items:
            if not gossip.relays(hops, self.hop_limit):
                continue
            targets = gossip.relay_targets(kind=env.kind, to=env.to, origin=env.origin,
                                           came_from=came_from, links=self.links)
            if not targets:
                continue
            entry = (hops, env.signed, env.sig)
            self.counts["relayed"] += 1
            if self.relay.schedule(env.id, targets, now, hops, entry) is None:
                for t in targets:
                    per_target[t].append(entry)
                sent_ids.add(env.id)
        for target, entries in per_target.items():
            self.send_entries(target, entries)
        if len(self.relay):
            self._relay_wake.set()
        return sent_ids

    async def relay_loop(self) -> None:
        while True:
            deadline = self.relay.next_deadline()
            self._relay_wake.clear()
            if deadline is None:
                await self._relay_wake.wait()
                continue
            delay = deadline - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._relay_wake.wait(), delay)
                continue
            per_target: dict[bytes, list[tuple[int, bytes, bytes]]] = defaultdict(list)
            for _msg_id, targets, entry in self.relay.due(time.monotonic()):
                for t in targets:
                    if t in self.links:
                        per_target[t].append(entry)  # type: ignore[arg-type]
            for target, entries in per_target.items():
                self.send_entries(target, entries)

    # -- receiving ----------------------------------------------------------------------------

    def drop(self, source: str, reason: str, detail: str = "") -> None:
        self.counts["dropped"] += 1
        if self.rejects.reject(source, reason, detail):
            self.rt.bus.emit(RouterDropped, source=source[:80], reason=reason[:48],
                             detail=detail[:200])

    async def inbox_loop(self) -> None:
        """Envelopes from the gateway, a batch at a time; while one batch is processed
        the next waits in ZeroMQ's queue (so a flood is taken in large batches)."""
        frames: list[list[bytes]] = []
        ready = asyncio.Event()

        def on_frames(f: list[bytes]) -> None:
            frames.append(f)
            if len(frames) >= MAX_BATCH:
                reader.pause()
            ready.set()

        reader = Readable(self._in_sync, on_frames)
        try:
            while True:
                await ready.wait()
                ready.clear()
                batch = frames[:]
                frames.clear()
                reader.pause()
                try:
                    await self.process(batch)
                except sqlite3.OperationalError as e:  # disk full, locked too long: not a bug
                    self.rt.log.warning("dropped a batch of %d frames: store: %s",
                                        len(batch), e)
                except TazcomError as e:
                    # Identity did not answer: nothing of this batch was committed, so
                    # nothing was relayed or acknowledged; catch-up brings it back.
                    self.rt.log.warning("dropped a batch of %d frames: %s", len(batch),
                                        e.message)
                finally:
                    reader.resume()
        finally:
            reader.close()

    async def process(self, frames: list[list[bytes]]) -> None:
        now = time.time()
        mono = time.monotonic()
        accepted: list[Accepted] = []
        for frame in frames:
            if len(frame) != 2 or len(frame[0]) != 32:
                self.drop("gateway", "bad_frames")
                continue
            key, body = frame
            source = f"peer {fingerprint(key)}"
            if not self.link_rate.take(key, mono):
                self.drop(source, "rate_limited", "too many router messages from this link")
                continue
            try:
                msg = routing.decode(body)
            except RemoteProtocolError as e:
                self.drop(source, e.code, e.message)
                continue
            if isinstance(msg, routing.Envs):
                for hops, signed, sig in msg.entries:
                    acc = self.check(hops, signed, sig, key, now, mono)
                    if acc is not None:
                        accepted.append(acc)
            elif isinstance(msg, routing.Custody):
                self.on_custody(key, msg.ids)
            elif isinstance(msg, routing.SummaryMsg):
                self.on_summary(key, msg.buckets)
            elif isinstance(msg, routing.IdsMsg):
                await self.on_ids(key, msg.bucket, msg.ids)
        if accepted:
            try:
                await self.accept(accepted, now)
                for a in accepted:
                    self.seen.add(a.env.id, now)
            finally:
                for a in accepted:
                    self.pending.pop(a.env.id, None)
        if self._shorter:
            self.counts["shorter"] += len(self._shorter)
            self.forward(self._shorter, time.monotonic())
            self._shorter = []
        if self._lowered:
            self.db.lower_hops(self._lowered)
            self._lowered = {}

    def check(self, hops: int, signed: bytes, sig: bytes, link: bytes, now: float,
              mono: float) -> Accepted | None:
        source = f"peer {fingerprint(link)}"
        if not gossip.accepts(hops, self.hop_limit):
            self.drop(source, "hop_limit", f"{hops} hops, limit {self.hop_limit}")
            return None
        try:
            env = envelope.parse(signed, sig)
        except EnvelopeError as e:
            self.drop(source, e.code, e.message)
            return None
        if env.id in self.seen or env.id in self.pending:
            self.counts["duplicates"] += 1
            self.relay.heard_from(env.id, link, hops, closer_matters=env.kind == KIND_PROFILE
                                  or gossip.reach_matters(hops, self.eccentricity,
                                                          self.hop_limit))
            self.shorter_path(env, hops, link)
            return None
        why = gossip.window(env.ts, now)
        if why is not None:
            self.drop(source, why, f"timestamp {env.ts} outside the window")
            return None
        if not self.origin_rate.take(env.origin, mono):
            self.drop(f"origin {fingerprint(env.origin)}", "rate_limited",
                      "too many messages from this origin")
            return None
        try:
            envelope.verify(env)
        except EnvelopeError as e:
            self.drop(f"{source} (origin {fingerprint(env.origin)})", e.code, e.message)
            return None
        if env.to is not None and env.to == env.origin:
            self.drop(source, "bad_recipient", "a message to its own origin")
            return None
        # Pending until committed, seen after: a forged copy never marks the real id, and a
        # batch the store did not take can come again (catch-up) instead of looking seen.
        self.counts["accepted"] += 1
        acc = self.pending[env.id] = Accepted(env=env, hops=hops + 1, came_from=link)
        return acc

    def shorter_path(self, env: Envelope, hops: int, link: bytes) -> None:
        """A copy of an accepted envelope came a shorter way: hold it at the shorter
        distance, and relay it again if we now can (common.gossip, "Shortest distances")."""
        acc = self.pending.get(env.id)
        if acc is not None:  # in this very batch: not relayed yet
            if gossip.shorter_path(acc.hops, hops):
                acc.hops, acc.came_from = hops + 1, link
            return
        known = self.recent.get(env.id)
        profile = self.directory.get(env.origin) if env.kind == KIND_PROFILE else None
        if known is None and profile is not None and profile.profile_id == env.id:
            known = (profile.hops, profile.env)
        if known is None or not gossip.shorter_path(known[0], hops):
            return
        held: Envelope = known[1]  # type: ignore[assignment]
        distance = hops + 1
        matters = env.kind == KIND_PROFILE or gossip.reach_matters(
            known[0], self.eccentricity, self.hop_limit)
        self.recent.put(env.id, distance, held)
        if profile is not None and profile.profile_id == env.id:
            profile.hops = distance
        self._lowered[env.id] = distance
        if held.to != self.own_key and gossip.relays(distance, self.hop_limit) and matters:
            self._shorter.append((held, distance, link))

    async def accept(self, accepted: list[Accepted], now: float) -> None:
        # Relay at once: a relay promises nothing before it has committed (custody comes
        # after the commit), and the next hop deduplicates; so the commit is not on the path.
        self.forward([(a.env, a.hops, a.came_from) for a in accepted
                      if a.env.to != self.own_key], time.monotonic())
        for a in accepted:
            self.recent.put(a.env.id, a.hops, a.env)
        to_me = [a for a in accepted if a.env.kind == KIND_DM and a.env.to == self.own_key]
        receipts: list[Envelope] = []
        if to_me:
            # Open the DMs and sign their receipts in one round trip to identity (two
            # pipelined requests); receipts are committed with the DMs they acknowledge,
            # so a crash cannot leave a DM received but never acknowledged.
            opening = self.open_all([a.env.body for a in to_me])
            signing = self.originate(self.receipt_specs(to_me))
            plains, receipts = await asyncio.gather(opening, signing)
            for a, plain in zip(to_me, plains, strict=True):
                try:
                    if plain is None:
                        raise EnvelopeError("the sealed box does not open", code="cannot_open")
                    a.text = envelope.dm_inner(plain, a.env.origin)
                except EnvelopeError as e:
                    self.drop(f"origin {fingerprint(a.env.origin)}", e.code, e.message)
            opened = [a for a in to_me if a.text is not None]
            if len(opened) < len(to_me):  # rare: sign again, for the ones that opened
                receipts = await self.originate(self.receipt_specs(opened)) if opened else []
                accepted = [a for a in accepted if not (a in to_me and a.text is None)]
        items = [self.stored(a) for a in accepted] + [
            rpc.StoredMessage(id=r.id, kind=r.kind, origin=r.origin, seq=r.seq, ts=r.ts,
                              to=r.to, signed=r.signed, sig=r.sig, hops=0, own=True, held=True)
            for r in receipts]
        results = self.put(items)
        fresh = [a for a, r in zip(accepted, results[: len(accepted)], strict=True) if r.new]
        self.after_accept(fresh, now)
        for r in receipts:
            self.seen.add(r.id, now)
            self.index.add(r.id, r.ts, r.to)
        self.forward([(r, 0, None) for r in receipts], time.monotonic())

    @staticmethod
    def receipt_specs(dms: list[Accepted]) -> list[tuple[int, bytes | None, bytes]]:
        by_origin: dict[bytes, list[bytes]] = defaultdict(list)
        for a in dms:
            by_origin[a.env.origin].append(a.env.id)
        return [(KIND_RECEIPT, origin, envelope.receipt_body(chunk))
                for origin, ids in by_origin.items()
                for chunk in catchup.chunks(ids, envelope.MAX_RECEIPT_IDS)]

    async def open_all(self, boxes: list[bytes]) -> list[bytes | None]:
        plains: list[bytes | None] = []
        for chunk in by_size(boxes, lambda b: len(b) + 16):
            reply = await self.identity.call(rpc.OpenSealed(boxes=tuple(chunk)), retries=20)
            plains += reply.items
        return plains

    def stored(self, a: Accepted) -> rpc.StoredMessage:
        env = a.env
        mine = env.to == self.own_key
        text = a.text
        conv = env.origin if env.kind == KIND_DM and mine else None
        if env.kind == KIND_ROOM:
            text = envelope.room_text(env.body)
        held = env.kind in (KIND_DM, KIND_RECEIPT) and not mine
        return rpc.StoredMessage(id=env.id, kind=env.kind, origin=env.origin, seq=env.seq,
                                 ts=env.ts, to=env.to, signed=env.signed, sig=env.sig,
                                 hops=min(a.hops, 16), conv=conv, text=text, held=held)

    def put(self, items: list[rpc.StoredMessage]) -> list[rpc.PutOutcome]:
        """Commit ``items`` in one transaction (group commit for a whole batch)."""
        return list(self.db.put(rpc.StorePut(items=tuple(items))).results)

    def after_accept(self, fresh: list[Accepted], now: float) -> None:
        custody: dict[bytes, list[bytes]] = defaultdict(list)
        status: list[tuple[bytes, str]] = []
        for a in fresh:
            env = a.env
            mine = env.to == self.own_key
            if env.kind == KIND_ROOM:
                self.index.add(env.id, env.ts)
                self.emit_message(env, envelope.room_text(env.body), a.hops)
            elif env.kind == KIND_PROFILE:
                self.index.add(env.id, env.ts)
                self.on_profile(env, a.hops, now)
            elif env.kind == KIND_DM and mine:
                self.emit_message(env, a.text or "", a.hops)
            elif env.kind == KIND_RECEIPT and mine:
                for msg_id in envelope.receipt_ids(env.body):
                    if self.index.recipient(msg_id) == env.origin:
                        status.append((msg_id, "delivered"))
            else:  # a DM or receipt for someone else: hold it, relay it, take custody
                self.index.add(env.id, env.ts, env.to)
                if a.came_from is not None:
                    custody[a.came_from].append(env.id)
                if env.kind == KIND_RECEIPT:
                    self.release_delivered(env)
        for link, ids in custody.items():
            for chunk in catchup.chunks(ids, routing.MAX_CUSTODY):
                self.send(link, routing.encode_custody(chunk))
        if status:
            self.set_status(status)

    def release_delivered(self, receipt: Envelope) -> None:
        """A relay drops the DMs a receipt acknowledges, if the receipt is their recipient's."""
        done = [i for i in envelope.receipt_ids(receipt.body)
                if self.index.recipient(i) == receipt.origin]
        for msg_id in done:
            self.index.remove(msg_id)
        if done:
            self.db.release(rpc.StoreRelease(ids=tuple(done)))

    def emit_message(self, env: Envelope, text: str, hops: int, status: str = "") -> None:
        self.rt.bus.emit(ChatMessage, id=env.id.hex(), kind=env.kind_name,
                         origin=env.origin.hex(), to=env.to.hex() if env.to else None,
                         sent=env.ts, text=text, own=env.origin == self.own_key,
                         hops=min(hops, 16), status=status)  # type: ignore[arg-type]

    def on_profile(self, env: Envelope, hops: int, now: float, *,
                   recompute: bool = True) -> None:
        """A new, accepted profile: it replaces an older one of the same node."""
        if env.origin == self.own_key:
            return
        known = self.directory.get(env.origin)
        if known is not None and (env.ts, env.seq) <= known.version:
            self.index.remove(env.id)  # an old profile: nothing to offer in catch-up
            return
        prof = envelope.profile_fields(env.body)
        if known is not None:
            self.index.remove(known.profile_id)
        self.directory[env.origin] = Directory(
            nickname=prof.nickname, enc_key=prof.enc_key, version=(env.ts, env.seq),
            links=prof.links, profile_id=env.id, received_at=now, env=env, hops=hops,
            published=known.published if known else None)
        if recompute:
            self.recompute(now)

    def recompute(self, now: float) -> None:
        """Distances over the links both ends confirm; publish the ones that changed."""
        links_of = {k: d.links for k, d in self.directory.items()
                    if now - d.received_at <= PROFILE_EXPIRES}
        dist = gossip.distances(self.own_key, self.links, links_of)
        self.eccentricity = max(dist.values(), default=0)
        numbering = self.mesh_numbering
        for key, entry in self.directory.items():
            hops = dist.get(key)
            now_entry = None if hops is None else rpc.MeshEntry(
                key=key.hex(), nickname=entry.nickname, hops=hops, enc_key=entry.enc_key.hex())
            if now_entry != entry.published:
                entry.published = now_entry
                self.rt.bus.emit(MeshPeer, epoch=numbering.epoch, seq=numbering.next(),
                                 key=key.hex(), nickname=entry.nickname, hops=hops,
                                 enc_key=entry.enc_key.hex())

    def mesh(self, _req: rpc.GetMesh) -> rpc.MeshTable:
        return rpc.MeshTable(epoch=self.mesh_numbering.epoch, seq=self.mesh_numbering.seq,
                             items=tuple(d.published for d in self.directory.values()
                                         if d.published is not None))

    def links_changed(self) -> None:
        self.recompute(time.time())
        self._profile_wake.set()  # tell the mesh about our links

    def on_custody(self, link: bytes, ids: list[bytes]) -> None:
        updates = [(i, "relayed") for i in ids
                   if i in self.own_status and self.own_status[i][1] != link]
        if updates:
            self.set_status(updates)

    def on_summary(self, link: bytes, theirs: list[tuple[int, int, bytes]]) -> None:
        for bucket in catchup.differing(self.index.summary(), theirs)[-routing.MAX_BUCKETS:]:
            for chunk in catchup.chunks(self.index.ids_in(bucket), routing.MAX_IDS):
                self.send(link, routing.encode_ids(bucket, chunk))

    async def on_ids(self, link: bytes, bucket: int, their_ids: list[bytes]) -> None:
        missing = catchup.lacking(self.index, bucket, their_ids)
        if not missing:
            return
        for chunk in catchup.chunks(missing, 512):
            found = self.db.get(rpc.StoreGet(ids=tuple(chunk)))
            # at the distance we hold each at: catch-up never carries a copy further than
            # the flood would (common.gossip, hop counting)
            entries = [(e.hops, e.signed, e.sig) for e in found.items
                       if gossip.relays(e.hops, self.hop_limit)]
            if entries:
                self.send_entries(link, entries)
                queued = [(e.id, "sent") for e in found.items
                          if self.own_status.get(e.id, ("", None))[0] == "queued"]
                if queued:
                    self.set_status(queued)

    # -- status of our own messages --------------------------------------------------------

    def set_status(self, updates: list[tuple[bytes, str]], reason: str = "") -> None:
        changed = []
        for msg_id, status in updates:
            current, to = self.own_status.get(msg_id, ("", None))
            if msg_id not in self.own_status or STATUS_ORDER[status] <= STATUS_ORDER[current]:
                continue
            self.own_status[msg_id] = (status, to)
            changed.append((msg_id, status, to))
        if not changed:
            return
        self.db.set_status(rpc.StoreSetStatus(updates=tuple(
            rpc.StatusUpdate(id=i, status=s, reason=reason)  # type: ignore[arg-type]
            for i, s, _ in changed)))
        delivered = [i for i, s, _ in changed if s == "delivered"]
        for msg_id in delivered:
            self.index.remove(msg_id)
            self.own_status.pop(msg_id, None)
        if delivered:
            self.db.release(rpc.StoreRelease(ids=tuple(delivered)))
        for msg_id, status, to in changed:
            self.rt.bus.emit(ChatStatus, id=msg_id.hex(), status=status, reason=reason,
                             to=to.hex() if to else None)  # type: ignore[arg-type]

    # -- posting -------------------------------------------------------------------------------

    async def post(self, req: rpc.Post) -> rpc.PostResult:
        if req.to is not None:
            if req.to == self.own_key:
                raise RequestFailed("that is this node's own key", code="bad_recipient")
            if req.to not in self.directory:
                raise RequestFailed(
                    f"no encryption key for {fingerprint(req.to)} yet: its profile has not "
                    "reached us (it appears once the peer is linked or known via the mesh)",
                    code="no_key")
        if len(req.text.encode()) > envelope.MAX_TEXT_BYTES:
            raise RequestFailed(f"text over {envelope.MAX_TEXT_BYTES} bytes", code="too_large")
        fut = asyncio.get_running_loop().create_future()
        self.counts["posted"] += 1
        self._posts.append(PendingPost(req, fut))
        self._post_wake.set()
        return await fut

    async def reserve(self, n: int) -> list[int]:
        if self.seq_end - self.seq_next < n:
            block = max(SEQ_BLOCK, n)
            reply = self.db.reserve_seq(rpc.StoreReserveSeq(count=block))
            self.seq_next, self.seq_end = reply.first, reply.first + block
        first = self.seq_next
        self.seq_next += n
        return list(range(first, first + n))

    async def originate(self, specs: list[tuple[int, bytes | None, bytes]]) -> list[Envelope]:
        """Build and sign our own envelopes: (kind, to, body) each."""
        seqs = await self.reserve(len(specs))
        ts = int(time.time() * 1000)
        signed = [envelope.signed_bytes(kind=k, origin=self.own_key, seq=s, ts=ts, to=to,
                                        body=body)
                  for (k, to, body), s in zip(specs, seqs, strict=True)]
        sigs: list[bytes] = []
        for chunk in by_size(signed, len):
            reply = await self.identity.call(rpc.SignMany(domain=DOMAIN_ENVELOPE,
                                                          items=tuple(chunk)), retries=20)
            sigs += reply.sigs
        return [envelope.parse(sb, sig) for sb, sig in zip(signed, sigs, strict=True)]

    async def post_loop(self) -> None:
        while True:
            await self._post_wake.wait()
            self._post_wake.clear()
            posts, self._posts = self._posts[:256], self._posts[256:]
            if self._posts:
                self._post_wake.set()
            try:
                await self.post_batch(posts)
            except (TazcomError, sqlite3.OperationalError) as e:
                failure = e if isinstance(e, TazcomError) else RequestFailed(
                    f"store: {e}", code="store_error")
                for p in posts:
                    if not p.fut.done():
                        p.fut.set_exception(RequestFailed(failure.message, code=failure.code))

    async def post_batch(self, posts: list[PendingPost]) -> None:
        specs = []
        ready: list[PendingPost] = []
        for p in posts:
            req = p.req
            if req.to is None:
                specs.append((KIND_ROOM, None, req.text.encode()))
            elif req.to in self.directory:
                body = envelope.seal_dm(origin=self.own_key, text=req.text,
                                        recipient_enc_key=self.directory[req.to].enc_key)
                specs.append((KIND_DM, req.to, body))
            else:
                p.fut.set_exception(RequestFailed("no encryption key for the recipient",
                                                  code="no_key"))
                continue
            ready.append(p)
        posts = ready
        if not posts:
            return
        envs = await self.originate(specs)
        items = [rpc.StoredMessage(
            id=env.id, kind=env.kind, origin=env.origin, seq=env.seq, ts=env.ts, to=env.to,
            signed=env.signed, sig=env.sig, hops=0, conv=env.to, text=p.req.text,
            status="queued", own=True, held=env.kind == KIND_DM, client_id=p.req.client_id)
            for env, p in zip(envs, posts, strict=True)]
        results = self.put(items)
        now = time.time()
        fresh: list[Envelope] = []
        for env, p, outcome in zip(envs, posts, results, strict=True):
            if outcome.new:
                self.seen.add(env.id, now)
                self.index.add(env.id, env.ts, env.to)
                self.own_status[env.id] = ("queued", env.to)
                fresh.append(env)
                self.emit_message(env, p.req.text, 0, "queued")
        sent = self.forward([(env, 0, None) for env in fresh], time.monotonic())
        for p, outcome in zip(posts, results, strict=True):
            status = "sent" if outcome.id in sent else \
                self.own_status.get(outcome.id, ("delivered", None))[0]
            p.fut.set_result(rpc.PostResult(message_id=outcome.id, status=status,
                                             new=outcome.new))
        if sent:  # after the replies: the commit is done, only the status is late
            self.set_status([(i, "sent") for i in sent])

    async def publish_profile(self) -> None:
        """Flood our profile: at start, when our links change (debounced), every 2 minutes."""
        last: Envelope | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._profile_wake.wait(), PROFILE_EVERY)
            await asyncio.sleep(PROFILE_DEBOUNCE)  # let a burst of link changes settle
            self._profile_wake.clear()
            body = envelope.profile_body(self.nickname, self.enc_key, sorted(self.links))
            [env] = await self.originate([(KIND_PROFILE, None, body)])
            self.db.put(rpc.StorePut(items=(rpc.StoredMessage(
                id=env.id, kind=env.kind, origin=env.origin, seq=env.seq, ts=env.ts, to=None,
                signed=env.signed, sig=env.sig, hops=0, own=True),)))
            self.seen.add(env.id, time.time())
            if last is not None:
                self.index.remove(last.id)
            self.index.add(env.id, env.ts)
            last = env
            self.forward([(env, 0, None)], time.monotonic())

    # -- housekeeping ----------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        while True:
            await asyncio.sleep(ANTI_ENTROPY)
            now = time.time()
            self.seen.expire(now)
            self.index.expire(int(now * 1000) - gossip.MAX_AGE_MS,
                              keep=[i for i, (_, to) in self.own_status.items() if to])
            for key in list(self.links):
                self.send_summary(key)
            self.recompute(now)  # profiles not refreshed in time make their node unreachable

    def stats(self, _req: rpc.GetRouterStats) -> rpc.RouterStats:
        return rpc.RouterStats(links=len(self.links), pending_relays=len(self.relay),
                               **self.counts)

    def close(self) -> None:
        self.db.close()
        self.inbox.close(linger=0)
        self.out.close(linger=500)


async def main(rt: Runtime) -> None:
    router = Router(rt)
    try:
        await router.load()
        router.follow_links()
        rt.serve({rpc.Post: router.post, rpc.GetRouterStats: router.stats,
                  rpc.GetMesh: router.mesh})
        rt.bus.subscribe("identity.changed", router.on_identity)
        rt.spawn(router.inbox_loop(), "inbox")
        rt.spawn(router.relay_loop(), "relay")
        rt.spawn(router.post_loop(), "post")
        rt.spawn(router.housekeeping(), "housekeeping")
        rt.ready(f"hop limit {router.hop_limit}")
        await router.publish_profile()
    finally:
        router.close()


if __name__ == "__main__":
    run("router", main)

