"""A minimal asyncio peer running ``common.link.Link`` over TCP, for the link benchmarks.

The same sans-IO Link the gateway runs, without the bus: so the figures are
the link protocol's own cost (Noise, framing, msgpack) on real sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import nacl.signing

from tazcom.common import noise
from tazcom.common.keys import DOMAIN_NOISE_STATIC
from tazcom.common.link import Link, LinkClosed, LinkLimits, LinkVerified, MessageReceived

FAST = LinkLimits(frames_per_second=10**9, frame_burst=10**9)


class Identity:
    def __init__(self, nickname: str) -> None:
        sk = nacl.signing.SigningKey(os.urandom(32))
        self.key = bytes(sk.verify_key)
        self.static, static_pub = noise.x25519_keypair()
        self.sig = sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature
        self.nickname = nickname

    def link(self, initiator: bool) -> Link:
        return Link(initiator=initiator, identity_key=self.key, static_private=self.static,
                    static_sig=self.sig, nickname=self.nickname, now=time.monotonic(),
                    limits=FAST)


class LinkProtocol(asyncio.Protocol):
    def __init__(self, link: Link, on_message: Callable[[bytes], None] | None = None) -> None:
        self.link = link
        self.on_message = on_message
        self.verified = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.flush()

    def flush(self) -> None:
        data = self.link.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.link.receive_data(data, time.monotonic()):
            if isinstance(ev, MessageReceived):
                if self.on_message is not None:
                    self.on_message(ev.body)
            elif isinstance(ev, LinkVerified) and not self.verified.done():
                self.verified.set_result(ev)
            elif isinstance(ev, LinkClosed) and not self.verified.done():
                self.verified.set_exception(RuntimeError(ev.reason))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.verified.done():
            self.verified.set_exception(RuntimeError("connection lost"))
