"""The peer gateway: encrypted, authenticated TCP links to other nodes.

A shell around ``common.linkmanager.LinkManager``, which owns every link and
makes every decision (admission, one link per pair, pinning, dialling and
backoff, what a closed link reports). This process only does the I/O: it
listens (``services.listen``), dials when told, feeds bytes, connection ends
and timers to the core, and carries out the actions it returns: write, close,
arm a timer, publish on the bus, push to the router, save ``pins.json``.

Its Noise static key is fresh at every start and bound to the node's identity
by a signature from the identity service (the gateway never sees the Ed25519
secret). Decisions left here, each because it is about I/O: a full router
queue drops the message (the socket says so; catch-up brings it back), and a
transport whose write buffer passes ``MAX_WRITE_BUFFER`` is reported to the
core as blocked (the buffer is the socket's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import typing

import zmq

from tazcom.common import noise, routing, rpc, tables
from tazcom.common.addresses import join
from tazcom.common.bulkpace import BulkGate
from tazcom.common.errors import RequestFailed
from tazcom.common.events import (
    Event,
    GatewayListening,
    IdentityChanged,
    LinkDown,
    PeerVerified,
)
from tazcom.common.filewire import KIND as FILE_KIND
from tazcom.common.keys import DOMAIN_NOISE_STATIC, fingerprint
from tazcom.common.linkmanager import (
    BULK_HIGH,
    MAX_WRITE_BUFFER,
    Action,
    CloseConnection,
    Dial,
    Emit,
    Exchange,
    LinkManager,
    Refused,
    SavePins,
    Send,
    SetTimer,
    ToRouter,
    WantWrite,
)
from tazcom.common.mirror import Change, Mirror

from . import netif
from .busclient import Readable, tune
from .exchange import Exchanger
from .gatewayclock import ClockKeeper
from .listen import listen_sockets
from .netif import interface_networks
from .runtime import FatalError, Runtime, run
from .sendqueue import queued_bytes
from .staticdial import StaticDialler


class Gateway:
    def __init__(self, rt: Runtime, ips: list[str], socks: list[socket.socket]) -> None:
        self.rt = rt
        self.config = rt.config
        self.loop = asyncio.get_running_loop()
        self.socks = socks
        self.port = socks[0].getsockname()[1]
        self.addresses = tuple(join(ip, self.port) for ip in ips)
        #: The link table, which this service owns (docs/protocol.md §2, "Mirrored state").
        self.policy: Mirror | None = None
        self._pins_pending: dict[str, typing.Any] | None = None
        self.core = LinkManager(networks=interface_networks(ips), log=rt.log,
                                prefer_ipv6=rt.config.prefer_ipv6,
                                numbering=rt.own_table("links"), nickname=rt.config.nickname)
        self.transports: dict[int, asyncio.Transport] = {}
        #: conn (None: the dialler) -> (when, handle) of its armed timer.
        self.timers: dict[int | None, tuple[float, asyncio.TimerHandle]] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self._flush_soon = False
        #: Links with a burst of bulk scheduled (one at a time).
        self._write_more: set[int] = set()
        #: Links carrying bulk now (their socket's TCP_NOTSENT_LOWAT is low).
        self._bulk_links: set[int] = set()
        #: Each link's bulk gate (common/bulkpace.py), kept while the link is open.
        self._bulk_gates: dict[int, BulkGate] = {}
        self.static: StaticDialler | None = None
        self.exchange: Exchanger | None = None
        #: The mesh clock, fed by our links' hellos (docs/protocol.md §9, "Clock offset").
        self.clock = ClockKeeper(rt)

    def static_dialler(self) -> StaticDialler:
        if self.static is None:
            raise RequestFailed("the gateway is still starting", code="busy")
        return self.static

    def start_static(self) -> None:
        """Dial the static peers (once our identity is known: the handshake needs it)."""
        def protocol(dialled: str, static: str, expect: bytes | None) -> asyncio.Protocol:
            return _Protocol(self, "out", expect, dialled,
                             on_conn=lambda conn: self.static and self.static.connected(conn,
                                                                                        static))
        self.static = StaticDialler(self.rt, lambda: set(self.core.verified), protocol)
        self.static.load()
        self.static.schedule()
        self.exchange = Exchanger(self, lambda address, key, on_conn: _Protocol(
            self, "out", key, address, on_conn=on_conn))

    # -- carrying out the core's actions ----------------------------------------------------

    def execute(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                transport = self.transports.get(a.conn)
                if transport is not None and not transport.is_closing():
                    transport.write(a.data)
                    if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                        # the peer does not read (checked here: the transport pauses
                        # already at BULK_HIGH, for bulk)
                        self.loop.call_soon(self.slow_reader, a.conn)
            elif isinstance(a, WantWrite):
                if a.conn not in self._bulk_links:
                    self._bulk_links.add(a.conn)
                    self._notsent_lowat(a.conn, NOTSENT_LOWAT)
                    self._bulk_gate(a.conn).restart()
                # no more bulk (not even behind a chat flush) until write_more's gate says
                self.core.write_paused(a.conn)
                if a.conn not in self._write_more:
                    self._write_more.add(a.conn)
                    self.loop.call_soon(self.write_more, a.conn)
            elif isinstance(a, ToRouter):
                self.to_router(a.key, a.bodies, a.file)
            elif isinstance(a, SetTimer):
                self.set_timer(a.conn, a.at)
            elif isinstance(a, Emit):
                self.rt.bus.emit(a.event, **a.fields)
                if self.static is not None:
                    self.static.on_emit(a.event, a.fields)
                if self.exchange is not None:
                    self.exchange.on_emit(a.event, a.fields)
                if a.event is PeerVerified or a.event is LinkDown:
                    self.clock.on_emit(a.event, a.fields)
            elif isinstance(a, Exchange):
                if self.exchange is not None:
                    self.exchange.on_message(a.key, a.body)
            elif isinstance(a, CloseConnection):
                self.set_timer(a.conn, None)
                self._bulk_links.discard(a.conn)
                transport = self.transports.pop(a.conn, None)
                if transport is not None:
                    transport.close()
            elif isinstance(a, Dial):
                self.rt.spawn(self.dial(a), f"dial {fingerprint(a.key)}")
            elif isinstance(a, SavePins):
                self.save_pins(a.data)
                if a.urgent:
                    self.write_pins()
            else:
                self.core.rejects.reject("gateway", a.reason, a.detail)

    def write_more(self, conn: int) -> None:
        """The next burst of bulk on ``conn``, once the bytes queued ahead of it (in the
        transport and the kernel) are down to the gate's limit (common/bulkpace.py)."""
        self._write_more.discard(conn)
        transport = self.transports.get(conn)
        if transport is None:
            return
        gate, queued = self._bulk_gate(conn), queued_bytes(transport)
        wait = gate.wait(self.loop.time(), queued) if queued is not None else 0.0
        if wait:
            # bulk waits in our queue, behind chat, while the kernel's queue drains
            self.core.write_paused(conn)
            self._write_more.add(conn)
            self.loop.call_later(wait, self.write_more, conn)
            return
        if transport.get_write_buffer_size() <= BULK_HIGH:  # else resume_writing comes
            self.execute(self.core.write_resumed(conn))
            if queued is not None:
                gate.wrote(queued, queued_bytes(transport) or 0)
        c = self.core.conns.get(conn)
        if conn in self._bulk_links and (c is None or not c.bulk):
            self._bulk_links.discard(conn)
            self._notsent_lowat(conn, NOTSENT_OFF)

    def _bulk_gate(self, conn: int) -> BulkGate:
        gate = self._bulk_gates.get(conn)
        if gate is None:
            for gone in [k for k in self._bulk_gates if k not in self.transports]:
                del self._bulk_gates[gone]
            gate = self._bulk_gates[conn] = BulkGate()
        return gate

    def _notsent_lowat(self, conn: int, value: int) -> None:
        """While a link carries bulk, the kernel holds little unsent, so bulk waits in our
        queue, behind chat; otherwise it takes all it can (fewer wakeups for chat floods)."""
        transport = self.transports.get(conn)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, value)

    def slow_reader(self, conn: int) -> None:
        transport = self.transports.get(conn)
        if transport is not None and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.execute(self.core.write_blocked(conn, self.loop.time()))

    def set_timer(self, conn: int | None, at: float | None) -> None:
        """Arm ``conn``'s timer; one armed earlier than ``at`` stays (the core re-arms it)."""
        armed = self.timers.get(conn)
        if armed is not None:
            if at is not None and armed[0] <= at:
                return
            armed[1].cancel()
            del self.timers[conn]
        if at is not None:
            self.timers[conn] = (at, self.loop.call_at(at, self.on_timer, conn))

    def on_timer(self, conn: int | None) -> None:
        self.timers.pop(conn, None)
        now = self.loop.time()
        if conn is None:
            self.execute(self.core.dial_timer(now))
        elif conn in self.transports:
            self.execute(self.core.link_timer(conn, now))

    def save_pins(self, data: dict[str, typing.Any]) -> None:
        """Write the newest pins at most once a second: strangers verified one after the
        other must not make the gateway rewrite a growing file for each."""
        first = self._pins_pending is None
        self._pins_pending = data
        if first:
            self.loop.call_later(1.0, self.write_pins)

    def write_pins(self) -> None:
        data, self._pins_pending = self._pins_pending, None
        if data is None:
            return
        path = self.config.paths.pins_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except OSError as e:
            self.rt.log.warning("cannot save %s: %s", path, e.strerror)

    # -- set-up -------------------------------------------------------------------------

    def load_pins(self) -> None:
        path = self.config.paths.pins_file
        try:
            problem = self.core.load_pins(json.loads(path.read_text()))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            problem = str(e)
        if problem is not None:
            raise FatalError(f"{path}: unreadable pins file ({problem}); fix or move it away")

    async def prepare_identity(self) -> None:
        ident = await self.rt.call_until_ready("identity", rpc.GetIdentity())
        static_private, static_public = noise.x25519_keypair()
        reply = await self.rt.client("identity").call(
            rpc.Sign(domain=DOMAIN_NOISE_STATIC, data=static_public))
        for refused in self.core.set_identity(bytes.fromhex(ident.key), static_private,
                                              reply.sig, ident.nickname):
            raise FatalError(f"identity refused: {refused}")

    async def start_serving(self) -> None:
        for sock in self.socks:
            self.servers.append(await self.loop.create_server(
                lambda: _Protocol(self, "in", None), sock=sock))

    def on_identity(self, ev: Event) -> None:
        if isinstance(ev, IdentityChanged):
            self.execute(self.core.set_nickname(ev.nickname))

    def on_policy(self, _changes: list[Change]) -> None:
        """The router's blocks and bans: a ban's end (wall clock) on the loop's clock."""
        assert self.policy is not None
        mono, wall = self.loop.time(), time.time()
        refused = {bytes.fromhex(k): ("blocked" if p.policy == "block" else "banned",
                                      None if p.until is None else mono + p.until - wall)
                   for k, p in self.policy.items.items() if p.policy in ("block", "ban")}
        self.execute(self.core.policy_changed(refused, mono))

    def on_peers(self, changes: list[Change]) -> None:
        """Discovery's peer table changed: where to dial whom."""
        self.execute(self.core.peers_changed(changes, self.loop.time()))

    async def dial(self, d: Dial) -> None:
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: _Protocol(self, "out", d.key, d.address), d.host, d.port,
                local_addr=(d.local_ip, 0)), d.timeout)
        except (OSError, TimeoutError) as e:
            self.rt.log.debug("dial %s at %s failed: %s", fingerprint(d.key), d.address, e)
            self.execute(self.core.dial_failed(d.key, d.address, self.loop.time()))

    # -- the router's data path ----------------------------------------------------------------

    def open_router_channel(self) -> None:
        """PUSH to the router's inbox, PULL from its outbox (docs/protocol.md, "Routing")."""
        ctx = self.rt.ctx
        self.router_push = ctx.socket(zmq.PUSH)
        tune(self.router_push, self.config)
        self.router_push.setsockopt(zmq.SNDHWM, 100_000)
        self.router_push.connect(self.config.paths.socket("router-in"))
        self._router_push = zmq.Socket.shadow(self.router_push.underlying)
        self.router_pull = ctx.socket(zmq.PULL)
        tune(self.router_pull, self.config)
        self.router_pull.setsockopt(zmq.RCVHWM, 100_000)
        self.router_pull.setsockopt(zmq.MAXMSGSIZE, 70_000)
        self.router_pull.bind(self.config.paths.socket("gateway-in"))
        self._router_pull = zmq.Socket.shadow(self.router_pull.underlying)

    def to_router(self, key: bytes, bodies: list[bytes], file: bool = False) -> None:
        send = self._router_push.send_multipart
        for body in bodies:
            try:
                send([key, body, b"file"] if file else [key, body], zmq.NOBLOCK)
            except zmq.Again:
                # The router is down and its queue full: catch-up brings these back later.
                self.core.rejects.reject("router", "router_busy", "router queue full; dropping")

    def on_router_frames(self, frames: list[bytes]) -> None:
        """Router messages to send, and ``file`` messages (``[key, body, "file"]``, and
        ``"bulk"`` after it for a chunk); the links written to are flushed once per batch."""
        if len(frames) == 2:
            refused = self.core.queue(frames[0], routing.KIND, frames[1], self.loop.time())
        elif len(frames) in (3, 4) and frames[2] == b"file":
            refused = self.core.queue(frames[0], FILE_KIND, frames[1], self.loop.time(),
                                      bulk=frames[3:] == [b"bulk"])
        else:
            return
        if refused is not None:
            if refused != "no_link":  # no link any more: catch-up offers it again
                self.core.rejects.reject("router", refused, "cannot send")
        elif not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        self.execute(self.core.flush())

    # -- requests ------------------------------------------------------------------------------

    def join(self, req: rpc.Join) -> rpc.StaticPeerList:
        """``gateway.join``: the invite's key is trusted (pinned) before it is dialled, so
        its nickname, whatever it is, needs no first-use step."""
        dialler = self.static_dialler()
        assert self.core.identity is not None
        if bytes.fromhex(req.key) == self.core.identity.key:
            raise RequestFailed("this is this node's own invite code", code="bad_key")
        self.execute([a for a in self.core.trust(req.key, None, self.loop.time())
                      if not isinstance(a, Refused)])
        return dialler.join(req)

    def answer(self, actions: list[Action]) -> rpc.Empty:
        """Carry out a request's actions; a refusal is the request's error."""
        self.execute([a for a in actions if type(a) is not Refused])
        for a in actions:
            if isinstance(a, Refused):
                raise RequestFailed(a.detail, code=a.reason)
        return rpc.Empty()


#: Linux's TCP_NOTSENT_LOWAT (socket.TCP_NOTSENT_LOWAT where Python knows it).
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
#: Unsent bytes the kernel may hold per link socket: what a chat frame can find queued
#: in the kernel ahead of it (bench.priority; 4 KiB measured no better, with more wakeups).
NOTSENT_LOWAT = BULK_HIGH
#: Back to the system's default (net.ipv4.tcp_notsent_lowat: no limit).
NOTSENT_OFF = 0


class _Protocol(asyncio.Protocol):
    """asyncio glue: hands bytes and connection ends to the core; no protocol logic here."""

    def __init__(self, gw: Gateway, direction: str, key: bytes | None,
                 address: str | None = None,
                 on_conn: typing.Callable[[int | None], object] | None = None) -> None:
        self.gw = gw
        self.direction = direction
        self.key = key
        self.address = address
        self.conn: int | None = None
        self.on_conn = on_conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        address = self.address or (netif.endpoint_text(peer) if peer else "?:0")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        gw = self.gw
        self.conn, actions = gw.core.connection_made(self.direction, address, gw.loop.time(),
                                                     self.key)
        if self.on_conn is not None:
            self.on_conn(self.conn)
        if self.conn is None:
            transport.abort()
        else:
            transport.set_write_buffer_limits(high=BULK_HIGH, low=BULK_HIGH // 4)
            gw.transports[self.conn] = transport
        gw.execute(actions)

    def data_received(self, data: bytes) -> None:
        if self.conn in self.gw.transports:
            self.gw.execute(self.gw.core.data_received(self.conn, data, self.gw.loop.time(),
                                                       time.time()))

    def pause_writing(self) -> None:
        # over BULK_HIGH unsent: hold bulk back (a peer that does not read at all is
        # caught by the size check after each write, at MAX_WRITE_BUFFER)
        if self.conn is not None:
            self.gw.core.write_paused(self.conn)

    def resume_writing(self) -> None:
        if self.conn is not None:
            # called from inside the transport's write-ready handler: act after it
            self.gw.loop.call_soon(self.resumed)

    def resumed(self) -> None:
        if self.conn in self.gw.transports:
            self.gw.execute(self.gw.core.write_resumed(self.conn))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.gw.transports.pop(self.conn, None)
            self.gw.execute(self.gw.core.connection_lost(self.conn, self.gw.loop.time()))


async def main(rt: Runtime) -> None:
    ips = await netif.wait_for_addresses(rt)
    gw = Gateway(rt, ips, listen_sockets(rt.config, ips))
    gw.load_pins()
    info = rpc.GatewayInfo(addresses=gw.addresses, port=gw.port)
    core, now = gw.core, gw.loop.time
    rt.serve({
        rpc.GetGatewayInfo: lambda _r: info,
        rpc.SendToPeer: lambda r: gw.answer(core.send(r.key, r.kind, r.body, now(), r.bulk)),
        rpc.GetLinks: lambda _r: core.links(now(), time.time()),
        rpc.GetClock: lambda _r: gw.clock.info(),
        rpc.Trust: lambda r: gw.answer(core.trust(r.key, r.nickname, now())),
        rpc.Untrust: lambda r: gw.answer(core.untrust(r.key)),
        rpc.Connect: lambda r: gw.static_dialler().connect(r),
        rpc.GetStaticPeers: lambda _r: gw.static_dialler().table(),
        rpc.Join: gw.join,
    })
    rt.bus.emit(GatewayListening, addresses=gw.addresses, port=gw.port)
    await gw.prepare_identity()
    # discovery's peer table, mirrored once we know our own key (who dials whom)
    rt.mirror(tables.PEERS, gw.on_peers)
    # the router's blocks and bans, before the first link can be accepted
    gw.policy = rt.mirror(tables.POLICY, gw.on_policy)
    await gw.start_serving()
    gw.start_static()
    rt.spawn(gw.clock.watch(), "clock")
    rt.bus.subscribe("identity.changed", gw.on_identity)
    gw.open_router_channel()
    reader = Readable(gw._router_pull, gw.on_router_frames)
    rt.ready("listening on " + ", ".join(gw.addresses))
    watcher = netif.follow(rt, ips)
    try:
        await asyncio.Event().wait()
    finally:
        watcher.close()
        reader.close()
        if gw.exchange is not None:
            gw.exchange.close()
        gw.execute(gw.core.close_all(gw.loop.time()))
        gw.write_pins()  # what a last second changed
        for server in gw.servers:
            server.close()
        for sock in (getattr(gw, "router_push", None), getattr(gw, "router_pull", None)):
            if sock is not None:
                sock.close(linger=0)


if __name__ == "__main__":
    run("gateway", main)
