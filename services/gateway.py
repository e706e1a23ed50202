"""The peer gateway: encrypted, authenticated TCP links to other nodes.

It listens on the configured interfaces, one port for all of them (the
configured ``port``, else the one used last time, else any free one), dials
the peers discovery knows, and runs one ``common.link.Link`` per TCP
connection: Noise XX whose static key is fresh at every start and bound to the
node's identity by a signature from the identity service (the gateway never
sees the Ed25519 secret). It keeps one link per peer (when both sides dialled
at once, the link dialled by the lower key wins), refuses a key that differs
from the one pinned for a nickname (``peer.key_changed``) and enforces the
limits against hostile peers: concurrent handshakes in total and per source
address, the number of links, a write buffer per link, and the per-link limits
in ``LinkLimits``. Every violation closes that one link with one log line and
a ``wire.rejected`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import json
import os
import random
import socket
import time
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from tazcom.common import noise, routing, rpc, tables
from tazcom.common.config import Config
from tazcom.common.errors import RequestFailed, TazcomError
from tazcom.common.events import (
    Event,
    GatewayListening,
    IdentityChanged,
    LinkDown,
    LinkMessage,
    LinkUp,
    PeerKeyChanged,
    PeerTrusted,
    PeerVerified,
    WireRejected,
)
from tazcom.common.keys import DOMAIN_NOISE_STATIC, fingerprint
from tazcom.common.link import (
    Link,
    LinkClosed,
    LinkLimits,
    LinkVerified,
    MessageDropped,
    MessageReceived,
)
from tazcom.common.mirror import Change
from tazcom.common.pins import Pins
from tazcom.common.rejects import RejectLog

from .busclient import Readable, tune
from .netif import interface_networks, resolve_interfaces
from .runtime import FatalError, Runtime, run

BACKLOG = 256
MAX_HANDSHAKES = 64
MAX_HANDSHAKES_PER_ADDRESS = 8
MAX_LINKS = 256
MAX_WRITE_BUFFER = 4 * 1024 * 1024
DIAL_TIMEOUT = 3.0
#: The higher key of a pair waits this long before dialling, so simultaneous
#: dials (and the duplicate that one of them must then close) are rare.
DIAL_DEFER = 1.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: A link verified this long ago counts as having worked: redial at once if it drops.
STABLE_LINK = 10.0
CAPS = ("app/1",)
#: Closes that are not the peer's fault, so no wire.rejected.
ORDINARY_CLOSES = frozenset({"duplicate", "shutdown", "timeout", "connection_lost"})


def _bind_all(ips: list[str], port: int) -> list[socket.socket]:
    """Bind one listening socket per address, all on the same port (0: pick one)."""
    bound: list[socket.socket] = []
    try:
        for ip in ips:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def _remembered_port(path: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text().strip())
        if 1 <= port <= 65535:
            return port
    return 0


def listen_sockets(config: Config, ips: list[str]) -> list[socket.socket]:
    if config.port:
        try:
            return _bind_all(ips, config.port)
        except OSError as e:
            raise FatalError(f"cannot listen on port {config.port}: {e.strerror}") from None
    remembered = _remembered_port(config.paths.gateway_port_file)
    for port in [p for p in (remembered,) if p] + [0, 0, 0]:
        try:
            socks = _bind_all(ips, port)
        except OSError as e:
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise FatalError(f"cannot listen on {ips}: {e.strerror}") from None
            continue
        chosen = socks[0].getsockname()[1]
        with contextlib.suppress(OSError):
            config.paths.gateway_port_file.write_text(f"{chosen}\n")
        return socks
    raise FatalError(f"no free port on all of {ips}")


def _endpoint(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass
class PeerDial:
    """What the dialler knows of one peer."""

    addresses: tuple[str, ...] = ()
    nickname: str = ""
    next_attempt: float = 0.0
    backoff: float = BACKOFF_MIN
    dialling: bool = False
    blocked: bool = False  # key-change alert: never dial until trusted


@dataclass
class Conn:
    """One TCP connection and its link."""

    id: int
    direction: str
    address: str
    transport: asyncio.Transport
    link: Link
    since: float = field(default_factory=time.time)
    timer: asyncio.TimerHandle | None = None
    key: bytes | None = None  # proven key once verified
    verified_at: float | None = None
    reported_down: bool = False


class Gateway:
    def __init__(self, rt: Runtime, ips: list[str], socks: list[socket.socket]) -> None:
        self.rt = rt
        self.networks = interface_networks(ips)
        self.config = rt.config
        self.loop = asyncio.get_running_loop()
        self.ips = ips
        self.socks = socks
        self.port = socks[0].getsockname()[1]
        self.addresses = tuple(f"{ip}:{self.port}" for ip in ips)
        self.rejects = RejectLog(rt.log)
        self.limits = LinkLimits()
        self.ids = itertools.count(1)
        self.conns: dict[int, Conn] = {}
        self.verified: dict[bytes, Conn] = {}
        self.peers: dict[bytes, PeerDial] = {}
        self.handshakes_by_address: Counter[str] = Counter()
        self.pins = Pins()
        self.identity_key = b""
        self.nickname = rt.config.nickname
        self.static_private = b""
        self.static_sig = b""
        self.servers: list[asyncio.AbstractServer] = []
        self._wake = asyncio.Event()
        #: The link table, which this service owns (docs/protocol.md §2, "Mirrored state").
        self.numbering = rt.own_table("links")

    def emit_link(self, cls: type[Event], **fields: typing.Any) -> None:
        """Publish a change of the link table (link.up, peer.verified, link.down)."""
        self.rt.bus.emit(cls, epoch=self.numbering.epoch, seq=self.numbering.next(), **fields)

    # -- set-up -------------------------------------------------------------------------

    def load_pins(self) -> None:
        path = self.config.paths.pins_file
        try:
            self.pins.load(json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise FatalError(f"{path}: unreadable pins file ({e}); fix or move it away") from None

    def save_pins(self) -> None:
        path = self.config.paths.pins_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.pins.dump(), indent=1))
            os.replace(tmp, path)
        except OSError as e:
            self.rt.log.warning("cannot save %s: %s", path, e.strerror)

    async def prepare_identity(self) -> None:
        ident = await self.rt.call_until_ready("identity", rpc.GetIdentity())
        self.identity_key = bytes.fromhex(ident.key)
        self.nickname = ident.nickname
        self.static_private, static_public = noise.x25519_keypair()
        reply = await self.rt.client("identity").call(
            rpc.Sign(domain=DOMAIN_NOISE_STATIC, data=static_public))
        self.static_sig = reply.sig

    async def start_serving(self) -> None:
        for sock in self.socks:
            self.servers.append(await self.loop.create_server(
                lambda: _Protocol(self, "in", None), sock=sock))

    # -- connections ----------------------------------------------------------------------

    def new_link(self, initiator: bool, expected_key: bytes | None) -> Link:
        return Link(initiator=initiator, identity_key=self.identity_key,
                    static_private=self.static_private, static_sig=self.static_sig,
                    nickname=self.nickname, now=self.loop.time(), expected_key=expected_key,
                    caps=CAPS, limits=self.limits)

    def admit(self, address: str) -> str | None:
        """Reason to refuse an inbound connection from ``address``, or None."""
        host = address.rpartition(":")[0]
        handshaking = sum(1 for c in self.conns.values() if not c.link.is_open)
        if len(self.conns) >= MAX_LINKS:
            return "too_many_links"
        if handshaking >= MAX_HANDSHAKES:
            return "too_many_handshakes"
        if self.handshakes_by_address[host] >= MAX_HANDSHAKES_PER_ADDRESS:
            return "too_many_handshakes"
        return None

    def reject(self, address: str, reason: str, detail: str, key: bytes | None = None) -> None:
        # One line per (host, reason): a flood of connections from one host is one offender.
        who = f"peer {address.rpartition(':')[0]}" + (f" ({fingerprint(key)})" if key else "")
        if self.rejects.reject(who, reason, f"{detail} [{address}]"):
            self.rt.bus.emit(WireRejected, address=address[:64], reason=reason[:48],
                             detail=detail[:200], key=key.hex() if key else None)

    def peer_state(self, key: bytes | None) -> str:
        if key is None:
            return "none"
        if key in self.verified:
            return "verified"
        if any(c.link.expected_key == key and not c.link.closed for c in self.conns.values()):
            return "connected"
        return "none"

    def opened(self, conn: Conn) -> None:
        self.conns[conn.id] = conn
        if not conn.link.is_open:
            self.handshakes_by_address[conn.address.rpartition(":")[0]] += 1
        self.emit_link(LinkUp, link=conn.id, address=conn.address, direction=conn.direction,
                       key=conn.link.expected_key.hex() if conn.link.expected_key else None,
                       peer_state=self.peer_state(conn.link.expected_key) if
                       conn.link.expected_key else "connected")
        self.flush(conn)
        self.arm(conn)

    def _handshake_done(self, conn: Conn) -> None:
        host = conn.address.rpartition(":")[0]
        if self.handshakes_by_address[host] > 0:
            self.handshakes_by_address[host] -= 1
            if not self.handshakes_by_address[host]:
                del self.handshakes_by_address[host]

    def flush(self, conn: Conn) -> None:
        data = conn.link.data_to_send()
        if data and not conn.transport.is_closing():
            conn.transport.write(data)
            if conn.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.handle(conn, [conn.link.close(
                    "slow_reader", "the peer does not read what we send", self.loop.time())])
                return
        if conn.link.closed and not conn.transport.is_closing():
            conn.transport.close()

    def arm(self, conn: Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        deadline = conn.link.next_deadline()
        if deadline is not None:
            conn.timer = self.loop.call_at(deadline, self.on_timer, conn)

    def on_timer(self, conn: Conn) -> None:
        conn.timer = None
        self.handle(conn, conn.link.handle_timer(self.loop.time()))

    def on_data(self, conn: Conn, data: bytes) -> None:
        self.handle(conn, conn.link.receive_data(data, self.loop.time()))

    def on_lost(self, conn: Conn) -> None:
        if not conn.link.closed:
            event = conn.link.close("connection_lost", "the TCP connection ended",
                                    self.loop.time())
            self.handle(conn, [event])
        else:
            self.finish(conn, conn.link.close_reason or "closed", "", False)

    def handle(self, conn: Conn, events: list) -> None:
        was_open = conn.link.is_open
        for ev in events:
            if isinstance(ev, MessageReceived):
                if conn.key is None:
                    continue
                if ev.kind == routing.KIND:
                    self.to_router(conn.key, ev.body)
                else:
                    self.rt.bus.emit(LinkMessage, key=conn.key.hex(), kind=ev.kind,
                                     body=ev.body)
            elif isinstance(ev, LinkVerified):
                self._handshake_done(conn)
                self.verified_link(conn, ev)
            elif isinstance(ev, MessageDropped):
                self.rejects.reject(f"peer {conn.address}", ev.reason, ev.detail)
            elif isinstance(ev, LinkClosed):
                if not was_open:
                    self._handshake_done(conn)
                self.finish(conn, ev.reason, ev.detail, ev.by_peer)
        if conn.id in self.conns:
            self.flush(conn)
            self.arm(conn)

    def verified_link(self, conn: Conn, ev: LinkVerified) -> None:
        now = self.loop.time()
        changed = self.pins.check(ev.nickname, ev.key)
        if changed is not None:
            alert = changed.describe()
            self.rt.bus.emit(PeerKeyChanged, key=ev.key.hex(), nickname=ev.nickname,
                             pinned=tuple(k.hex() for k in changed.pinned),
                             address=conn.address, alert=alert[:200])
            self.peers.setdefault(ev.key, PeerDial()).blocked = True
            self.handle(conn, [conn.link.close("key_changed", alert, now)])
            return
        self.save_pins_if_new()
        existing = self.verified.get(ev.key)
        drop: Conn | None = None
        if existing is not None and existing is not conn and not existing.link.closed:
            keep, drop = self.prefer(existing, conn, ev.key)
            if keep is existing:
                self.handle(conn, [conn.link.close("duplicate", "already linked to this peer",
                                                   now)])
                return
        conn.key = ev.key
        self.verified[ev.key] = conn
        conn.verified_at = now
        self.rt.log.info("link %d %s %s verified: %s (%s), version %d", conn.id,
                         "to" if conn.direction == "out" else "from", conn.address,
                         ev.nickname, fingerprint(ev.key), ev.version)
        self.emit_link(PeerVerified, link=conn.id, key=ev.key.hex(), nickname=ev.nickname,
                       address=conn.address, direction=conn.direction, version=ev.version,
                       caps=ev.caps)
        if drop is not None:  # after the new link is in place, so the peer never looks unlinked
            self.handle(drop, [drop.link.close("duplicate", "already linked to this peer", now)])

    def save_pins_if_new(self) -> None:
        # check() pins on first use; persist every time the pin set grows.
        dumped = self.pins.dump()
        if dumped != getattr(self, "_saved_pins", None):
            self.save_pins()
            self._saved_pins = dumped

    def prefer(self, a: Conn, b: Conn, key: bytes) -> tuple[Conn, Conn]:
        """Of two links to one peer, both sides keep the one dialled by the lower key."""
        lower_is_us = self.identity_key < key
        wanted = "out" if lower_is_us else "in"
        for keep, drop in ((a, b), (b, a)):
            if keep.direction == wanted and drop.direction != wanted:
                return keep, drop
        return (a, b) if a.id < b.id else (b, a)

    def finish(self, conn: Conn, reason: str, detail: str, by_peer: bool) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if not conn.transport.is_closing():
            data = conn.link.data_to_send()
            if data:
                conn.transport.write(data)
            conn.transport.close()
        if conn.reported_down:
            return
        conn.reported_down = True
        self.conns.pop(conn.id, None)
        key = conn.key or conn.link.peer_key or conn.link.expected_key
        if conn.key is not None and self.verified.get(conn.key) is conn:
            del self.verified[conn.key]
        if not by_peer and reason not in ORDINARY_CLOSES:
            self.reject(conn.address, reason, detail, conn.link.peer_key)
        elif by_peer and reason not in ORDINARY_CLOSES:
            # the peer refused us (e.g. unsupported_version, key_changed): say so, once
            self.rejects.reject(f"peer {conn.address.rpartition(':')[0]}",
                                f"refused_by_peer:{reason}", f"{detail} [{conn.address}]")
        if conn.key is not None:
            self.rt.log.info("link %d %s closed: %s%s", conn.id, conn.address, reason,
                             " (by the peer)" if by_peer else "")
        self.emit_link(LinkDown, link=conn.id, address=conn.address,
                       direction=conn.direction, key=key.hex() if key else None,
                       reason=reason[:48], detail=detail[:200], by_peer=by_peer,
                       peer_state=self.peer_state(key))
        if key is not None and key in self.peers and not self.peers[key].blocked:
            dial = self.peers[key]
            now = self.loop.time()
            if conn.key is not None and conn.verified_at is not None \
                    and now - conn.verified_at >= STABLE_LINK:
                # a link that had worked for a while ended: come back quickly
                dial.backoff = BACKOFF_MIN
                dial.next_attempt = now + self.defer(key) + random.uniform(0, 0.2)
            else:  # refused or short-lived: back off, so a broken pair cannot storm
                dial.next_attempt = max(dial.next_attempt, now + dial.backoff)
                dial.backoff = min(BACKOFF_MAX, dial.backoff * 2)
            self._wake.set()

    # -- dialling -----------------------------------------------------------------------------

    def defer(self, key: bytes) -> float:
        return 0.0 if self.identity_key < key else DIAL_DEFER

    def on_identity(self, ev: Event) -> None:
        if isinstance(ev, IdentityChanged):
            self.nickname = ev.nickname  # said in the HELLO of every new link

    def on_peers(self, changes: list[Change]) -> None:
        """Discovery's peer table changed: where to dial whom."""
        now = self.loop.time()
        for change in changes:
            peer = change.new
            key = bytes.fromhex(change.key)
            if key == self.identity_key:
                continue
            dial = self.peers.get(key)
            if peer is None:  # forgotten by discovery
                if dial is not None:
                    dial.addresses = ()
                continue
            if dial is None:
                dial = self.peers[key] = PeerDial(next_attempt=now + self.defer(key))
            dial.addresses = peer.addresses if peer.state != "offline" else ()
            dial.nickname = peer.nickname
        self._wake.set()

    async def dial_loop(self) -> None:
        """Dial every peer that is due; sleep until the next is due or something changes
        (``_wake``: peers, links, dial results): no polling, so an idle node stays idle."""
        while True:
            now = self.loop.time()
            soonest = float("inf")
            for key, dial in list(self.peers.items()):
                if dial.blocked or dial.dialling or not dial.addresses or key in self.verified:
                    continue
                if any(c.link.expected_key == key or c.link.peer_key == key
                       for c in self.conns.values()):
                    continue
                if now >= dial.next_attempt:
                    dial.dialling = True
                    self.rt.spawn(self.dial(key, dial), f"dial {fingerprint(key)}")
                else:
                    soonest = min(soonest, dial.next_attempt)
            self._wake.clear()
            if soonest == float("inf"):
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, soonest - now))

    async def dial(self, key: bytes, dial: PeerDial) -> None:
        try:
            for address in dial.addresses:
                if key in self.verified:
                    return
                if not self.reachable(address):
                    self.rt.log.debug("not dialling %s: outside our networks", address)
                    continue
                if len(self.conns) >= MAX_LINKS:
                    return
                host, port = _endpoint(address)
                try:
                    await asyncio.wait_for(self.loop.create_connection(
                        lambda a=address: _Protocol(self, "out", key, a), host, port,
                        local_addr=(self.local_ip_for(host), 0)), DIAL_TIMEOUT)
                    return
                except (OSError, TimeoutError) as e:
                    self.rt.log.debug("dial %s at %s failed: %s", fingerprint(key), address, e)
            dial.next_attempt = self.loop.time() + dial.backoff
            dial.backoff = min(BACKOFF_MAX, dial.backoff * 2)
        finally:
            dial.dialling = False
            self._wake.set()

    def reachable(self, address: str) -> bool:
        """Only addresses on our configured interfaces' networks are dialled, never via a
        default route: a LAN mesh talks to its LAN (and a test node never leaves its net)."""
        host = ipaddress.IPv4Address(_endpoint(address)[0])
        return any(host in net.network for net in self.networks)

    def local_ip_for(self, host: str) -> str:
        """Dial from the configured address on the peer's network."""
        addr = ipaddress.IPv4Address(host)
        return next((str(n.ip) for n in self.networks if addr in n.network), self.ips[0])

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

    def to_router(self, key: bytes, body: bytes) -> None:
        try:
            self._router_push.send_multipart([key, body], zmq.NOBLOCK)
        except zmq.Again:
            # The router is down and its queue full: catch-up brings these back later.
            self.rejects.reject("router", "router_busy", "router queue full; dropping")

    async def from_router(self) -> None:
        """Router messages to send; every link written to is flushed once per batch."""
        touched: dict[int, Conn] = {}

        def on_frames(frames: list[bytes]) -> None:
            if len(frames) != 2:
                return
            key, body = frames
            conn = self.verified.get(key)
            if conn is None or not conn.link.is_open:
                return  # no link any more: catch-up will offer it again
            try:
                conn.link.send_app(routing.KIND, body, self.loop.time())
            except TazcomError as e:
                self.rejects.reject("router", e.code, e.message)
                return
            if not touched:
                self.loop.call_soon(flush)
            touched[conn.id] = conn

        def flush() -> None:
            for conn in touched.values():
                if conn.id in self.conns:
                    self.flush(conn)
                    self.arm(conn)
            touched.clear()

        reader = Readable(self._router_pull, on_frames)
        try:
            await asyncio.Event().wait()
        finally:
            reader.close()

    # -- requests ------------------------------------------------------------------------------

    def send(self, req: rpc.SendToPeer) -> rpc.Empty:
        conn = self.verified.get(bytes.fromhex(req.key))
        if conn is None or not conn.link.is_open:
            raise RequestFailed(f"no verified link to {req.key[:16]}", code="no_link")
        try:
            conn.link.send_app(req.kind, req.body, self.loop.time())
        except TazcomError as e:
            raise RequestFailed(e.message, code=e.code) from None
        self.flush(conn)
        return rpc.Empty()

    def links(self, _req: rpc.GetLinks) -> rpc.LinkList:
        out = []
        for c in self.conns.values():
            key = c.key or c.link.expected_key
            out.append(rpc.LinkInfo(
                link=c.id, address=c.address, direction=c.direction,
                state="open" if c.link.is_open else "handshake", since=c.since,
                key=key.hex() if key else None, nickname=c.link.peer_nickname,
                version=c.link.version, frames_in=c.link.frames_in,
                frames_out=c.link.frames_out))
        return rpc.LinkList(epoch=self.numbering.epoch, seq=self.numbering.seq, links=tuple(out))

    def trust(self, req: rpc.Trust) -> rpc.Empty:
        key = bytes.fromhex(req.key)
        dial = self.peers.setdefault(key, PeerDial())
        self.pins.trust(key, req.nickname or dial.nickname or None)
        self.save_pins()
        dial.blocked = False
        dial.next_attempt = self.loop.time()
        self.rt.bus.emit(PeerTrusted, key=req.key, trusted=True)
        self._wake.set()
        return rpc.Empty()

    def untrust(self, req: rpc.Untrust) -> rpc.Empty:
        key = bytes.fromhex(req.key)
        if not self.pins.forget(key):
            raise RequestFailed(f"{fingerprint(key)} is not pinned", code="not_pinned")
        self.save_pins()
        self.rt.bus.emit(PeerTrusted, key=req.key, trusted=False)
        return rpc.Empty()

    def close_all(self) -> None:
        now = self.loop.time()
        for conn in list(self.conns.values()):
            self.handle(conn, [conn.link.close("shutdown", "the gateway is stopping", now)])


class _Protocol(asyncio.Protocol):
    """asyncio glue: hands bytes to the gateway's Conn; no protocol logic here."""

    def __init__(self, gw: Gateway, direction: str, expected_key: bytes | None,
                 address: str | None = None) -> None:
        self.gw = gw
        self.direction = direction
        self.expected_key = expected_key
        self.address = address
        self.conn: Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        address = self.address or (f"{peer[0]}:{peer[1]}" if peer else "?:0")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.direction == "in":
            refused = self.gw.admit(address)
            if refused is not None:
                self.gw.reject(address, refused, "connection refused at accept")
                transport.abort()
                return
        link = self.gw.new_link(self.direction == "out", self.expected_key)
        self.conn = Conn(id=next(self.gw.ids), direction=self.direction, address=address,
                         transport=transport, link=link)
        self.gw.opened(self.conn)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.gw.on_data(self.conn, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.gw.on_lost(self.conn)


async def main(rt: Runtime) -> None:
    ips = resolve_interfaces(rt.config.interfaces)
    socks = listen_sockets(rt.config, ips)
    gw = Gateway(rt, ips, socks)
    gw.load_pins()
    info = rpc.GatewayInfo(addresses=gw.addresses, port=gw.port)
    rt.serve({
        rpc.GetGatewayInfo: lambda _r: info,
        rpc.SendToPeer: gw.send,
        rpc.GetLinks: gw.links,
        rpc.Trust: gw.trust,
        rpc.Untrust: gw.untrust,
    })
    rt.bus.emit(GatewayListening, addresses=gw.addresses, port=gw.port)
    await gw.prepare_identity()
    # discovery's peer table, mirrored once we know our own key (who dials whom)
    rt.mirror(tables.PEERS, gw.on_peers)
    await gw.start_serving()
    rt.bus.subscribe("identity.changed", gw.on_identity)
    gw.open_router_channel()
    rt.spawn(gw.from_router(), "from-router")
    rt.ready("listening on " + ", ".join(gw.addresses))
    try:
        await gw.dial_loop()
    finally:
        gw.close_all()
        for server in gw.servers:
            server.close()
        for sock in (getattr(gw, "router_push", None), getattr(gw, "router_pull", None)):
            if sock is not None:
                sock.close(linger=0)


if __name__ == "__main__":
    run("gateway", main)

