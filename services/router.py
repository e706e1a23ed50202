"""The router service: the shell around ``common.routercore.RouterCore``.

Data paths (docs/protocol.md, "Local data paths"):

* from the gateway: ``run/router-in.sock`` (PULL) receives ``[peer key, body]``
  for every ``app`` message of kind ``router`` on a verified link;
* to the gateway: a PUSH to ``run/gateway-in.sock`` sends ``[peer key, body]``.

Both are PUSH/PULL, not the bus: envelopes must not be dropped at a
subscriber's high-water mark, and a restarted peer process is reconnected
with what was queued for it.

Every decision is the core's; this file executes its actions: sends on the
PUSH socket, events on the bus, rows in the node's SQLite store (the router
is the one owner of ``store.sqlite``, docs/protocol.md §1, and answers
``store.history`` on ``run/store.sock``), signatures with its delegated key
and DM opening with its own keys (common/keyring.py, kept in
``$TAZCOM_HOME/router.keys``), and requests to identity only for what the
long-term key must sign: certificates and revocations. Left here, because
they are about transport, not the protocol: batching frames from ZeroMQ (a
flood is taken in large batches) and splitting identity requests under the
RPC size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from typing import Any

import zmq
import zmq.asyncio

from tazcom.common import clock, gossip, rpc, tables
from tazcom.common import routercore as core
from tazcom.common.errors import RequestFailed, TazcomError
from tazcom.common.events import ChatStatus, Event, IdentityChanged, RouterDropped
from tazcom.common.groupcore import SealTo
from tazcom.common.keyring import DmKey
from tazcom.common.keys import fingerprint
from tazcom.common.mirror import Change, Mirror
from tazcom.common.rejects import RejectLog

from .busclient import Readable, tune
from .files import FileService
from .groupdb import GroupDB
from .routerkeys import RouterKeys, by_size
from .runtime import FatalError, Runtime, run
from .storedb import MAINTENANCE_INTERVAL, Store, db_failure

MAX_BATCH = 1024


class Router:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = core.RouterSettings.from_config(rt.config.raw.get("router", {}),
                                                        rt.config.raw.get("scoring", {}))
        self.core: core.RouterCore | None = None
        self.link_table: Mirror | None = None
        #: The gateway's mesh clock (common/clock.py): every time the protocol needs (stamps,
        #: the acceptance window, certificates) is ``wall()``, our clock plus its offset.
        self.clock_table: Mirror | None = None
        self.offset = 0.0
        self.rejects = RejectLog(rt.log)
        self._posts: list[tuple[core.PostSpec, asyncio.Future]] = []
        self._post_wake = asyncio.Event()
        self._timer_wake = asyncio.Event()
        # The one owner of store.sqlite: it writes it, and answers store.history from it.
        self.db = Store(rt.config.paths.store_file)
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
        self.keys = RouterKeys(rt, on_cert=self.on_cert, on_rotate=self.on_rotate,
                               clock=self.wall)
        self._written = asyncio.Event()
        #: Files sent, received and relayed (services/files.py): their link messages come
        #: and go on the same sockets, marked ``file``.
        self.files = FileService(self)
        #: Our private groups' state (common/groupcore.py), saved as it changes.
        self.group_db = GroupDB(rt.config.paths.home / "groups.sqlite")

    def wall(self) -> float:
        """The mesh time: our wall clock corrected by the mesh clock's offset."""
        return time.time() + self.offset

    @property
    def c(self) -> core.RouterCore:
        assert self.core is not None, "load() first"
        return self.core

    async def load(self) -> None:
        ident = await self.rt.call_until_ready("identity", rpc.GetIdentity())
        if not self.keys.ring.usable(self.wall()):
            await self.keys.certify(wait=True)
        dm = self.keys.ring.current
        self.core = core.RouterCore(bytes.fromhex(ident.key), dm.public,
                                    ident.nickname, self.settings,
                                    numbering=self.rt.own_table("mesh"),
                                    policy_numbering=self.rt.own_table("policy"))
        self.core.set_signer(self.keys.ring.signer.cert)
        self.core.enc_since = dm.since * 1000
        now = self.wall()
        seen = self.core.seen
        recent = self.db.recent_ids(rpc.StoreRecentIds(since=now - seen.horizon,
                                                       limit=seen.capacity))
        sync = self.db.sync_set(rpc.StoreSyncSet(since=int(now * 1000 - gossip.MAX_AGE_MS)))
        own = self.core.own_key

        def stored(ids: list[bytes]) -> list[rpc.WireEnvelope]:
            return [e for chunk in by_size(ids, lambda _: 1, most=512)
                    for e in self.db.get(rpc.StoreGet(ids=tuple(chunk))).items]

        outbox = self.db.outbox(rpc.StoreOutbox()).items
        self.core.load(
            seen=reversed(recent.ids), sync=sync.items, now=now,
            profiles=stored([i.id for i in sync.items if i.kind == core.KIND_PROFILE]),
            outbox=[(m.id, m.status, m.to) for m in outbox],
            receipts=stored([i.id for i in sync.items
                             if i.kind == core.KIND_RECEIPT and i.to == own]),
            usage=self.db.usage(own), policies=self.db.policies(),
            revocations=stored([i.id for i in sync.items if i.kind == core.KIND_REVOKE]))
        self.rt.log.info("loaded %d seen ids, %d catch-up items, %d profiles, %d pending own "
                         "messages, %d blocks/mutes/bans; %.1f MiB of others' messages; "
                         "flood limits: %s", len(seen), len(self.core.index),
                         len(self.core.directory), len(self.core.own_status),
                         len(self.core.policy), self.core.quota.total / 2**20,
                         self.settings.flood.describe())

    # -- executing the core's actions -------------------------------------------------------

    async def run(self, step: core.Step) -> Any:
        """Drive a core step: its requests awaited, a failure raised where it was asked."""
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    action = step.send(result) if error is None else step.throw(error)
                except StopIteration as stop:
                    return stop.value
                try:
                    result, error = self.execute(action), None
                    if asyncio.iscoroutine(result):
                        result = await result
                except (TazcomError, sqlite3.OperationalError) as e:
                    result, error = None, e
        finally:
            self._timer_wake.set()  # the step may have armed a timer

    def run_now(self, step: core.Step) -> None:
        """A step that only sends and emits (no request): run without waiting."""
        for action in step:
            if asyncio.iscoroutine(result := self.execute(action)):
                result.close()
                raise RuntimeError(f"{type(action).__name__} asked outside an async step")
        self._timer_wake.set()

    def execute(self, a: core.Action) -> Any:
        if isinstance(a, core.Send):
            try:
                self._out_sync.send_multipart([a.link, a.body], zmq.NOBLOCK)
            except zmq.Again:
                self.rejected(core.Rejected("gateway", "gateway_busy",
                                            "the gateway's queue is full"))
        elif isinstance(a, core.Emit):
            self.rt.bus.emit(a.event, **a.fields)
            if a.event is ChatStatus:
                self.files.on_status(a.fields["id"], a.fields["status"], a.fields["reason"])
        elif isinstance(a, core.FileManifest):
            self.files.on_manifest(a)
        elif isinstance(a, core.Rejected):
            self.rejected(a)
        elif isinstance(a, core.Commit):
            self._written.set()
            return list(self.db.put(rpc.StorePut(items=tuple(a.items))).results)
        elif isinstance(a, core.Fetch):
            return list(self.db.get(rpc.StoreGet(ids=tuple(a.ids))).items)
        elif isinstance(a, core.SetStatus):
            self.db.set_status(rpc.StoreSetStatus(updates=tuple(a.updates)))
        elif isinstance(a, core.Release):
            self.db.release(rpc.StoreRelease(ids=tuple(a.ids)))
        elif isinstance(a, core.LowerHops):
            self.db.lower_hops(a.distances)
        elif isinstance(a, core.ReserveSeq):
            return self.db.reserve_seq(rpc.StoreReserveSeq(count=a.count)).first
        elif isinstance(a, core.Sign):
            return self.keys.sign_long_term(a.items) if a.long_term else self.keys.sign(a.items)
        elif isinstance(a, core.Open):
            return self.keys.open(a.boxes)
        elif isinstance(a, core.Together):
            return self.together(a.actions)
        elif isinstance(a, core.Evict):
            return self.db.evict(a.origin, a.size, a.own)
        elif isinstance(a, core.SavePolicy):
            self.db.set_policy(a.key, a.policy, a.since, a.until, a.reason)
        elif isinstance(a, core.StoreText):
            self.db.set_text(a.id, a.conv, a.text)
        elif isinstance(a, core.StoreReason):
            self.db.set_reason(a.id, a.reason)
        elif isinstance(a, core.SaveAcks):
            self.group_db.save_acks(a.id, a.group, a.epoch, a.acked)
        elif isinstance(a, core.SaveGroups):
            g = self.c.groups
            self.group_db.save({gid: g.dump(gid) for gid in g.groups})
            self.group_db.save_outbox([(x.recipient, x.kind, x.body)
                                       for x in self.c.group_outbox])
        else:
            raise TypeError(f"unknown action {a!r}")
        return None

    def send_file(self, link: bytes, body: bytes, *, bulk: bool) -> None:
        """A ``file`` link message to a neighbour; a chunk is ``bulk`` (behind chat)."""
        frames = [link, body, b"file", b"bulk"] if bulk else [link, body, b"file"]
        try:
            self._out_sync.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # the requester asks again after its timeout
            self.rejected(core.Rejected("gateway", "gateway_busy",
                                        "the gateway's queue is full"))

    def together(self, actions: list[core.Action]) -> Any:
        results = [self.execute(a) for a in actions]
        if not any(asyncio.iscoroutine(r) for r in results):
            return results

        async def gather() -> list[Any]:
            return [await r if asyncio.iscoroutine(r) else r for r in results]
        return gather()

    async def revoke(self, req: rpc.Revoke) -> rpc.SigningKeys:
        dkey = bytes.fromhex(req.key) if req.key else self.keys.ring.signer.public
        at = req.at if req.at is not None else int(self.wall() * 1000)
        await self.run(self.c.revoke(dkey, at, self.wall(), time.monotonic()))
        await self.keys.revoked(dkey, at)
        return self.keys.table()

    def on_cert(self, cert: bytes | None) -> None:
        if self.core is not None:
            self.core.set_signer(cert)

    def on_rotate(self, dm: DmKey) -> None:
        if self.core is not None:
            self.core.set_enc_key(dm.public, dm.since * 1000, time.monotonic())
            self._timer_wake.set()

    def history(self, req: rpc.StoreHistory) -> rpc.History:
        try:
            return self.db.history(req)
        except sqlite3.DatabaseError as e:
            failure = db_failure(e, self.db.path)
            if failure is None:
                raise
            if isinstance(failure, FatalError):
                raise failure from None
            self.rt.log.error("store.history failed: %s", e)
            raise RequestFailed(f"store: {e}", code="store_error") from None

    def rejected(self, r: core.Rejected) -> None:
        if self.rejects.reject(r.source, r.reason, r.detail):
            self.rt.bus.emit(RouterDropped, source=r.source, reason=r.reason, detail=r.detail)

    # -- inputs --------------------------------------------------------------------------

    def follow_links(self) -> None:
        self.link_table = self.rt.mirror(tables.LINKS, self.on_links)

    def on_links(self, _changes: list[Change]) -> None:
        assert self.link_table is not None
        rows = self.link_table.items.values()
        links = tables.verified_keys(rows)
        addresses = {bytes.fromhex(r.key): r.address for r in rows
                     if r.state == "open" and r.key}
        self.c.set_caps({bytes.fromhex(r.key): tuple(r.caps) for r in rows
                         if r.state == "open" and r.key})
        self.files.set_links(links - self.c.nofile_links)
        self.run_now(self.c.set_links(links, self.wall(), time.monotonic(), addresses))

    def follow_clock(self) -> None:
        self.clock_table = self.rt.mirror(tables.CLOCK, self.on_clock)

    def on_clock(self, _changes: list[Change]) -> None:
        """The mesh clock moved: from now on times are ``wall()``. A material change makes
        our certificate and profile, dated by the old clock, wrong for the others: a fresh
        signing key is certified with corrected times and the profile goes out again."""
        old, self.offset = self.offset, tables.clock_offset(self.clock_table)
        if abs(self.offset - old) < clock.MATERIAL:
            return
        self.rt.log.warning("clock: %s; envelopes stamped with mesh time",
                            clock.describe(self.offset))
        if self.core is not None:
            self.rt.spawn(self.reclock(), "reclock")

    async def reclock(self) -> None:
        retry = 1.0
        while not await self.keys.certify():
            await asyncio.sleep(retry)  # identity is away: its own retry
            retry = min(retry * 2, 30.0)
        self.c.want_profile(time.monotonic())
        self._timer_wake.set()

    def on_identity(self, ev: Event) -> None:
        if isinstance(ev, IdentityChanged):
            self.c.set_nickname(ev.nickname, time.monotonic())
            self._timer_wake.set()

    async def inbox_loop(self) -> None:
        """Envelopes from the gateway, a batch at a time; while one batch is processed
        the next waits in ZeroMQ's queue (so a flood is taken in large batches)."""
        frames: list[list[bytes]] = []
        ready = asyncio.Event()

        def on_frames(f: list[bytes]) -> None:
            if len(f) == 3 and f[2] == b"file":
                self.files.on_frame(f[0], f[1])
                return
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
                    await self.run(self.c.receive(batch, self.wall(), time.monotonic()))
                except (TazcomError, sqlite3.OperationalError) as e:
                    # Nothing of this batch was committed, so nothing was relayed as ours or
                    # acknowledged; catch-up brings it back.
                    self.rt.log.warning("dropped a batch of %d frames: %s", len(batch),
                                        getattr(e, "message", e))
                finally:
                    reader.resume()
        finally:
            reader.close()

    async def timer_loop(self) -> None:
        while True:
            self._timer_wake.clear()
            deadline = self.c.next_deadline()
            delay = None if deadline is None else deadline - time.monotonic()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._timer_wake.wait(), delay)
                continue
            try:
                await self.run(self.c.tick(self.wall(), time.monotonic()))
            except (TazcomError, sqlite3.OperationalError) as e:
                self.rt.log.warning("timer step failed: %s (tried again later)",
                                    getattr(e, "message", e))
                await asyncio.sleep(1.0)

    async def post(self, req: rpc.Post) -> rpc.PostResult:
        refused = self.c.refuse_post(req.to, req.text, time.monotonic())
        if refused is not None:
            raise RequestFailed(refused.message, code=refused.code)
        return await self.post_spec(core.PostSpec(req.client_id, req.to, req.text))

    async def post_spec(self, spec: core.PostSpec) -> rpc.PostResult:
        """Queue one post (a message or a file's manifest) for the next batch."""
        fut = asyncio.get_running_loop().create_future()
        self._posts.append((spec, fut))
        self._post_wake.set()
        return await fut

    async def post_loop(self) -> None:
        while True:
            await self._post_wake.wait()
            self._post_wake.clear()
            posts, self._posts = self._posts[:core.MAX_POSTS], self._posts[core.MAX_POSTS:]
            if self._posts:
                self._post_wake.set()
            try:
                answers = await self.run(self.c.post([p for p, _ in posts], self.wall(),
                                                     time.monotonic()))
            except (TazcomError, sqlite3.OperationalError) as e:
                failure = e if isinstance(e, TazcomError) else RequestFailed(
                    f"store: {e}", code="store_error")
                answers = [core.PostRefused(failure.code, failure.message)] * len(posts)
            for (_, fut), answer in zip(posts, answers, strict=True):
                if fut.done():
                    continue
                if isinstance(answer, core.PostRefused):
                    fut.set_exception(RequestFailed(answer.message, code=answer.code))
                else:
                    fut.set_result(answer)
            await asyncio.sleep(0)  # the answers go out first
            with contextlib.suppress(TazcomError, sqlite3.OperationalError):
                await self.run(self.c.settle_posts())

    async def set_policy(self, req: rpc.SetPolicy) -> rpc.PolicyTable:
        key = bytes.fromhex(req.key)
        if key == self.c.own_key:
            raise RequestFailed("that is this node's own key", code="bad_recipient")
        current = self.c.policy.get(key)
        if req.remove:
            if current is None or current[0] != req.policy:
                done = {"block": "blocked", "mute": "muted"}[req.policy]
                raise RequestFailed(f"{req.key[:16]} is not {done} here",
                                    code="not_found")
            step = self.c.set_policy(key, None, self.wall(), time.monotonic(),
                                     reason=f"{req.policy} lifted by the user")
        else:
            step = self.c.set_policy(key, req.policy, self.wall(), time.monotonic(),
                                     reason="by the user")
        await self.run(step)
        return self.c.policy_table()

    async def maintenance_loop(self) -> None:
        """Expiry in the store (the router is its one writer); own messages given up on
        become ``failed`` through the core."""
        while True:
            try:
                expired = self.db.maintain(self.wall())
            except sqlite3.OperationalError as e:  # disk full, locked: next time
                self.rt.log.warning("store maintenance failed: %s", e)
                expired = []
            if expired:
                self.run_now(self.c.expired([(i, reason) for i, _to, reason in expired]))
                self.rt.log.info("%d undelivered message(s) expired", len(expired))
            await asyncio.sleep(MAINTENANCE_INTERVAL)

    async def checkpoint_loop(self) -> None:
        """WAL checkpoints off the message path: once 0.2 s passed without a commit, or
        after 2,000 commits under a steady stream (so the WAL file stays small). Sleeps
        while nothing is written."""
        db = self.db
        while True:
            if db.commits == db.checkpointed:
                self._written.clear()
                await self._written.wait()
            quiet = time.monotonic() - db.last_commit
            if quiet < 0.2 and db.commits - db.checkpointed < 2000:
                await asyncio.sleep(0.2 - quiet)  # noqa: sleep-ok - until a quiet moment
                continue
            try:
                db.checkpoint()
            except sqlite3.OperationalError as e:
                self.rt.log.warning("WAL checkpoint failed: %s (next time)", e)
                db.checkpointed = db.commits

    def load_groups(self) -> None:
        for gid, blob in self.group_db.load():
            try:
                self.c.groups.load(blob)
            except (TazcomError, ValueError, TypeError, KeyError) as e:
                self.rt.log.error("group %s: its saved state does not load (%s); skipped",
                                  gid.hex()[:16], e)
        self.c.load_acks(self.group_db.acks())
        self.c.group_outbox = [SealTo(r, k, b) for r, k, b in self.group_db.outbox()]
        if self.c.groups.groups:
            self.rt.log.info("loaded %d private groups", len(self.c.groups.groups))

    async def group_local(self, method: str, ref: str | None, arg: Any) -> rpc.GroupAnswer:
        return self.group_answer(await self.run(self.c.group_local(
            method, ref, arg, self.wall(), time.monotonic())))

    @staticmethod
    def group_answer(out: rpc.GroupInfo | core.PostRefused) -> rpc.GroupAnswer:
        if isinstance(out, core.PostRefused):
            raise RequestFailed(out.message, code=out.code)
        return rpc.GroupAnswer(info=out)

    async def group_create(self, req: rpc.CreateGroup) -> rpc.GroupAnswer:
        out = await self.run(self.c.group_create(req.name, req.client_id, os.urandom(32),
                                                 self.wall(), time.monotonic()))
        return self.group_answer(out)

    async def group_say(self, req: rpc.GroupSay) -> rpc.PostResult:
        out = await self.run(self.c.group_say(req.group, req.text, req.client_id, self.wall(),
                                              time.monotonic()))
        if isinstance(out, core.PostRefused):
            raise RequestFailed(out.message, code=out.code)
        with contextlib.suppress(TazcomError, sqlite3.OperationalError):
            await self.run(self.c.settle_posts())
        return out

    def group_members(self, req: rpc.GroupMembers) -> rpc.GroupAnswer:
        found = self.c.resolve_group(req.group)
        if isinstance(found, core.PostRefused):
            raise RequestFailed(found.message, code=found.code)
        return rpc.GroupAnswer(info=self.c.group_info(found))

    def group_handlers(self) -> dict[type, Any]:
        return {
            rpc.CreateGroup: self.group_create,
            rpc.InviteToGroup: lambda r: self.group_local("invite", r.group,
                                                          bytes.fromhex(r.peer)),
            rpc.AcceptGroup: lambda r: self.group_local("accept", r.group, None),
            rpc.DeclineGroup: lambda r: self.group_local("decline", r.group, None),
            rpc.LeaveGroup: lambda r: self.group_local("leave", r.group, None),
            rpc.RemoveFromGroup: lambda r: self.group_local("remove", r.group,
                                                            bytes.fromhex(r.peer)),
            rpc.GroupSay: self.group_say,
            rpc.GroupMembers: self.group_members,
            rpc.ListGroups: lambda _r: self.c.group_table(),
        }

    def close(self) -> None:
        self.files.close()
        self.group_db.close()
        self.db.close()
        self.inbox.close(linger=0)
        self.out.close(linger=500)


async def main(rt: Runtime) -> None:
    router = Router(rt)
    try:
        router.follow_clock()
        await router.load()
        router.files.load()
        router.load_groups()
        await router.run(router.c.flush_known_outbox(router.wall(), time.monotonic()))
        router.follow_links()
        rt.serve({rpc.Post: router.post, rpc.GetRouterStats: lambda _r: router.c.stats(),
                  rpc.GetMesh: lambda _r: router.c.mesh_table(),
                  rpc.GetPolicy: lambda _r: router.c.policy_table(),
                  rpc.SetPolicy: router.set_policy,
                  rpc.GetScores: lambda _r: router.c.score_table(router.wall(),
                                                                 time.monotonic()),
                  rpc.GetSigningKeys: lambda _r: router.keys.table(),
                  rpc.Revoke: router.revoke,
                  rpc.SendFile: router.files.send_file,
                  rpc.ListFiles: router.files.list_files,
                  rpc.GetFile: router.files.get_file, **router.group_handlers()})
        # the store service was merged into the router, its one writer: clients of the store
        # still find it at run/store.sock
        rt.serve({rpc.StoreHistory: router.history}, socket="store")
        rt.bus.subscribe("identity.changed", router.on_identity)
        rt.spawn(router.inbox_loop(), "inbox")
        rt.spawn(router.post_loop(), "post")
        rt.spawn(router.maintenance_loop(), "maintenance")
        rt.spawn(router.keys.loop(), "keys")
        rt.spawn(router.checkpoint_loop(), "checkpoint")
        rt.spawn(router.files.loop(), "files")
        rt.ready(f"hop limit {router.settings.hop_limit}; signing key "
                 f"{fingerprint(router.keys.ring.signer.public)} valid {router.keys.validity()}")
        await router.timer_loop()
    finally:
        router.close()


if __name__ == "__main__":
    run("router", main)
