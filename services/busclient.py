"""Clients of the local bus and of other services' request sockets.

* ``BusClient``: publish events to the broker, subscribe to prefixes, and
  ``wait_ready()``: a ping published to ourselves that comes back through the
  broker proves both our PUB and SUB paths are live (the broker's welcome
  only proves the SUB connection).
* ``RpcServer``: a ROUTER socket answering requests from ``common.rpc``,
  draining everything ready before yielding, so pipelined requests cost one
  wake-up per batch.
* ``RpcClient``: a DEALER with request ids, a deadline per call and retries
  on a fresh socket (zguide "Lazy Pirate"): a restarted service is reached
  again by the next call, whatever the old socket's state. Every request is
  idempotent (docs/protocol.md, "Requests"), so a retry is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from tazcom import __version__
from tazcom.common import codec, rpc
from tazcom.common.config import Config
from tazcom.common.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    ServiceUnavailable,
    TazcomError,
)
from tazcom.common.events import WELCOME_TOPIC, BusPing, Event, decode_event, encode_event
from tazcom.common.rejects import RejectLog
from tazcom.common.schema import Record

log = logging.getLogger("tazcom.bus")
R = TypeVar("R", bound=Record)
MAX_REPLY_BYTES = 8 * 1024 * 1024
EventHandler = Callable[[Event], Awaitable[None] | None]


def bus_in(config: Config) -> str:
    """Where publishers connect (the broker's XSUB)."""
    return config.paths.socket("bus-in")


def bus_out(config: Config) -> str:
    """Where subscribers connect (the broker's XPUB)."""
    return config.paths.socket("bus-out")


def tune(sock: zmq.Socket, config: Config) -> None:
    """Limits every TAZCOM socket gets: bounded queues, no linger on close."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, config.bus_send_hwm)
    sock.setsockopt(zmq.RCVHWM, config.bus_recv_hwm)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)


class Readable:
    """Call ``on_frames`` for every message a socket receives, from the event loop's reader.

    ZeroMQ's ZMQ_FD only says "look at ZMQ_EVENTS": it is edge-triggered, and any
    send or receive on the socket may consume the edge. So we watch it with
    ``loop.add_reader`` and always drain until EAGAIN, and whoever sends on the
    socket calls ``poke()`` so that a message that arrived meanwhile is not left
    waiting. No future or task per message: this is the latency path of every
    request and every envelope (bench/vs_reticulum.py).
    """

    BATCH = 512

    def __init__(self, sock: zmq.Socket, on_frames: Callable[[list[bytes]], None]) -> None:
        self.sock = sock
        self.on_frames = on_frames
        self.loop = asyncio.get_running_loop()
        self.fd = sock.getsockopt(zmq.FD)
        self._scheduled = False
        self.paused = False
        self.closed = False
        self.loop.add_reader(self.fd, self._ready)
        self.poke()  # anything that arrived before we watched

    def poke(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._ready)

    def pause(self) -> None:
        """Stop reading (messages wait in ZeroMQ's queue: backpressure) until resume()."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.poke()

    def _ready(self) -> None:
        self._scheduled = False
        if self.closed:  # a poke scheduled before close() still runs once
            return
        recv = self.sock.recv_multipart
        for _ in range(self.BATCH):
            if self.paused:
                return
            if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_frames(frames)
        self.poke()  # more waiting: let other work run first

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)


class BusClient:
    """A service's (or tool's) connection to the node's event bus."""

    def __init__(self, ctx: zmq.asyncio.Context, config: Config, source: str,
                 *, publish: bool = True) -> None:
        self.config = config
        self.source = source
        self.max_event_bytes = config.bus_max_event_bytes
        self.rejects = RejectLog(log)
        self.sub = ctx.socket(zmq.SUB)
        tune(self.sub, config)
        self.sub.setsockopt(zmq.MAXMSGSIZE, config.bus_max_event_bytes)
        self.sub.setsockopt(zmq.SUBSCRIBE, WELCOME_TOPIC.encode())
        self.sub.connect(bus_out(config))
        self.pub: zmq.asyncio.Socket | None = None
        if publish:
            self.pub = ctx.socket(zmq.PUB)
            tune(self.pub, config)
            self.pub.connect(bus_in(config))
        self._handlers: list[tuple[str, EventHandler]] = []
        self._pings: dict[bytes, asyncio.Event] = {}
        self.welcomed = asyncio.Event()
        #: Called on every welcome: our SUB (re)connected, e.g. after the bus restarted.
        self.on_welcome: list[Callable[[], None]] = []

    def subscribe(self, prefix: str, handler: EventHandler | None = None) -> None:
        self.sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        if handler is not None:
            self._handlers.append((prefix, handler))

    def unsubscribe(self, prefix: str) -> None:
        self.sub.setsockopt(zmq.UNSUBSCRIBE, prefix.encode())

    def publish(self, ev: Event) -> None:
        """Queue ``ev`` for the broker; never blocks (PUB drops at its high-water mark)."""
        if self.pub is None:
            raise RuntimeError("this bus client does not publish")
        with contextlib.suppress(zmq.Again):
            self.pub.send_multipart(encode_event(ev), flags=zmq.NOBLOCK)

    def event(self, cls: type[Event], **fields: Any) -> Event:
        """Build an event from this source, stamped now."""
        return cls(src=self.source, ts=time.time(), **fields)

    def emit(self, cls: type[Event], **fields: Any) -> None:
        self.publish(self.event(cls, **fields))

    async def recv(self) -> Event | None:
        """Next valid event, or None for the welcome; junk is logged and skipped."""
        while True:
            frames = await self.sub.recv_multipart()
            if len(frames) == 1 and frames[0] == WELCOME_TOPIC.encode():
                self.welcomed.set()
                for callback in self.on_welcome:
                    callback()
                return None
            try:
                return decode_event(frames, self.max_event_bytes)
            except RemoteProtocolError as e:
                topic = frames[0][:64].decode("utf-8", "replace") if frames else "?"
                self.rejects.reject(f"bus topic {topic!r}", e.code, e.message)

    async def dispatch_forever(self) -> None:
        """Read events and hand each to the handlers whose prefix matches."""
        while True:
            ev = await self.recv()
            if ev is None:
                continue
            if isinstance(ev, BusPing):
                waiter = self._pings.get(ev.nonce)
                if waiter is not None:
                    waiter.set()
                continue
            for prefix, handler in self._handlers:
                if ev.TOPIC.startswith(prefix):
                    result = handler(ev)
                    if result is not None:
                        await result

    async def wait_ready(self, timeout: float) -> bool:
        """Ping ourselves through the broker until it comes back (needs dispatch_forever)."""
        nonce = os.urandom(16)
        waiter = asyncio.Event()
        self._pings[nonce] = waiter
        self.sub.setsockopt(zmq.SUBSCRIBE, BusPing.TOPIC.encode())
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.emit(BusPing, nonce=nonce)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), 0.05)
                    return True
            return False
        finally:
            self._pings.pop(nonce, None)
            self.sub.setsockopt(zmq.UNSUBSCRIBE, BusPing.TOPIC.encode())

    def close(self) -> None:
        self.sub.close(linger=0)
        if self.pub is not None:
            # A short linger lets a final service.stopping reach the broker.
            self.pub.close(linger=200)


Handler = Callable[[Any], Record | Awaitable[Record]]


class RpcServer:
    """Answers requests on ``ipc://<run>/<service>.sock``."""

    def __init__(self, ctx: zmq.asyncio.Context, config: Config, service: str,
                 handlers: dict[type[rpc.Request], Handler]) -> None:
        self.service = service
        self.max_request = config.rpc_max_request_bytes
        self.rejects = RejectLog(logging.getLogger(f"tazcom.{service}.rpc"))
        self.log = self.rejects.logger
        self.handlers: dict[type[rpc.Request], Handler] = {rpc.Ping: self._ping, **handlers}
        self.sock = ctx.socket(zmq.ROUTER)
        tune(self.sock, config)
        self.sock.setsockopt(zmq.MAXMSGSIZE, self.max_request + 1024)
        self.sock.bind(config.paths.socket(service))
        self._sync = zmq.Socket.shadow(self.sock.underlying)
        self._reader: Readable | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0

    def _ping(self, _req: rpc.Ping) -> rpc.Pong:
        return rpc.Pong(service=self.service, pid=os.getpid(), version=__version__)

    async def serve_forever(self) -> None:
        self._reader = Readable(self._sync, self._handle)
        try:
            await asyncio.Event().wait()
        finally:
            self._reader.close()

    def _reply(self, ident: bytes, body: bytes) -> None:
        with contextlib.suppress(zmq.Again, zmq.ZMQError):
            self._sync.send_multipart([ident, body], zmq.NOBLOCK)
        if self._reader is not None:
            self._reader.poke()  # the send may have swallowed the edge of a new request

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.rejects.reject("an rpc client", "bad_frames", f"{len(frames)} frames")
            return
        ident, body = frames
        source = f"rpc client {ident.hex()[:10]}"
        try:
            req_id, req = rpc.decode_request(body, self.max_request)
        except RemoteProtocolError as e:
            self.rejects.reject(source, e.code, e.message)
            rid = getattr(e, "req_id", None)
            if rid is not None:
                self._reply(ident, rpc.encode_error(rid, e.code, e.message))
            return
        handler = self.handlers.get(type(req))
        if handler is None:
            self._reply(ident, rpc.encode_error(req_id, "unknown_op",
                                                f"{self.service} does not serve {req.OP}"))
            return
        self.handled += 1
        try:
            result = handler(req)
        except TazcomError as e:
            self._reply(ident, rpc.encode_error(req_id, e.code, e.message))
            return
        if isinstance(result, Record):
            self._reply(ident, rpc.encode_reply(req_id, result))
            return
        task = asyncio.ensure_future(self._finish(ident, req_id, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, ident: bytes, req_id: int, pending: Awaitable[Record]) -> None:
        try:
            result = await pending
        except TazcomError as e:
            self._reply(ident, rpc.encode_error(req_id, e.code, e.message))
            return
        self._reply(ident, rpc.encode_reply(req_id, result))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.sock.close(linger=0)


class RpcClient:
    """Calls one service; pipelines, times out and retries on a fresh socket.

    Replies are read by a ``Readable`` and resolve their futures directly. When a
    call times out the socket is dropped and every pending request is sent again on
    a new one (requests are idempotent), so one lost reply does not stall the rest.
    """

    _ids = itertools.count(1)

    def __init__(self, ctx: zmq.asyncio.Context, config: Config, service: str) -> None:
        self.ctx = ctx
        self.config = config
        self.service = service
        self.endpoint = config.paths.socket(service)
        self.timeout = config.rpc_timeout
        self.retries = config.rpc_retries
        self._pending: dict[int, tuple[asyncio.Future[Any], bytes]] = {}
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket | None = None
        self._reader: Readable | None = None
        self.rejects = RejectLog(logging.getLogger("tazcom.rpc"))

    def _open(self) -> bool:
        """Make sure a socket exists; True if it is new (every pending request was sent)."""
        if self._sock is not None:
            return False
        sock = self.ctx.socket(zmq.DEALER)
        tune(sock, self.config)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        sock.connect(self.endpoint)
        self._sock = sock
        self._sync = zmq.Socket.shadow(sock.underlying)
        self._reader = Readable(self._sync, self._on_reply)
        for fut, body in self._pending.values():
            if not fut.done():
                self._send(body)
        return True

    def _send(self, body: bytes) -> None:
        assert self._sync is not None and self._reader is not None
        with contextlib.suppress(zmq.Again):  # queue full: the call will time out and retry
            self._sync.send(body, zmq.NOBLOCK)
        self._reader.poke()

    def _reset(self) -> None:
        """Drop the socket (a restarted service is reached again by a new one)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            self._sync = None

    def _on_reply(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            self.rejects.reject(self.service, "bad_frames")
            return
        try:
            data = codec.unpack(frames[0], MAX_REPLY_BYTES)
        except RemoteProtocolError as e:
            self.rejects.reject(self.service, e.code)
            return
        rid = rpc.peek_reply_id(data)
        entry = self._pending.get(rid) if rid is not None else None
        if entry is not None and not entry[0].done():
            entry[0].set_result(data)

    async def call(self, req: rpc.Request, *, timeout: float | None = None,
                   retries: int | None = None) -> Any:
        """Send ``req``; return its reply record or raise RequestFailed/ServiceUnavailable."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        req_id = next(self._ids)
        body = rpc.encode_request(req, req_id)
        if len(body) > self.config.rpc_max_request_bytes:
            # the server's ZMQ_MAXMSGSIZE would drop it and we would wait in vain
            raise LocalProtocolError(f"{req.OP} of {len(body)} bytes is over the "
                                     f"{self.config.rpc_max_request_bytes}-byte limit",
                                     code="too_large")
        loop = asyncio.get_running_loop()
        try:
            for attempt in range(retries + 1):
                fut: asyncio.Future[Any] = loop.create_future()
                self._pending[req_id] = (fut, body)
                if not self._open():
                    self._send(body)
                try:
                    data = await asyncio.wait_for(fut, timeout)
                except TimeoutError:
                    if attempt < retries:
                        self._reset()
                    continue
                return rpc.parse_reply(data, req.REPLY)
        finally:
            self._pending.pop(req_id, None)
        raise ServiceUnavailable(
            f"{self.service} did not answer {req.OP} within {timeout:g}s "
            f"({retries + 1} attempts)", code="unavailable")

    def close(self) -> None:
        self._reset()
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
