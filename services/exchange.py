"""The gateway's peer exchange: executes ``common.peerexchange.PeerExchange`` (signs our
record through identity, sends it to neighbours that speak ``px/1``, checks theirs, and
dials the candidates they name, each expecting its key). docs/protocol.md §9."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from tazcom.common import addresses, codec, peerexchange, rpc
from tazcom.common.errors import TazcomError
from tazcom.common.events import LinkDown, PeerVerified
from tazcom.common.keys import DOMAIN_PX, fingerprint
from tazcom.common.linkmanager import DIAL_TIMEOUT, Refused
from tazcom.common.peerexchange import DialCandidate, PeerExchange

if TYPE_CHECKING:
    from .gateway import Gateway

#: Changes to the neighbour set are told once they settle (a node joining links to many).
SETTLE = 0.3

#: ``factory(address, key, on_conn)``: the protocol of a candidate's connection.
ProtocolFactory = Callable[[str, bytes, Callable[[int | None], None]], asyncio.Protocol]


class Exchanger:
    def __init__(self, gw: Gateway, factory: ProtocolFactory) -> None:
        self.gw = gw
        self.rt = gw.rt
        self.loop = asyncio.get_running_loop()
        routed = bool(self.rt.config.raw.get("gateway", {}).get("exchange_routed", False))
        self.core = PeerExchange(is_local=lambda a: gw.core.local_ip_for(
            peerexchange.host_of(a)) is not None, routed=routed)
        assert gw.core.identity is not None
        self.core.key = gw.core.identity.key
        self.core.own = gw.addresses
        self.factory = factory
        #: What we last signed: (entries, message body).
        self.sent: tuple[tuple[tuple[bytes, str], ...], bytes] | None = None
        #: Neighbours that have our latest record.
        self.told: set[bytes] = set()
        self.conns: dict[int, DialCandidate] = {}
        self._announce: asyncio.TimerHandle | None = None
        self._signing = False
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- telling -------------------------------------------------------------------------

    def on_emit(self, event: type, fields: dict[str, Any]) -> None:
        if event is PeerVerified:
            self.core.new_link(bytes.fromhex(fields["key"]))
            cand = self.conns.pop(fields["link"], None)
            if cand is not None:
                self._done(cand, bytes.fromhex(fields["key"]) == cand.key)
            self._soon()
        elif event is LinkDown:
            cand = self.conns.pop(fields["link"], None)
            if cand is not None:
                self._done(cand, False)
            if fields.get("key"):
                self.told.discard(bytes.fromhex(fields["key"]))
            self._soon()

    def close(self) -> None:
        """The gateway stops: nothing more is signed, sent or dialled."""
        self.closed = True
        for handle in (self._announce, self._timer):
            if handle is not None:
                handle.cancel()

    def _soon(self) -> None:
        if self._announce is None and not self.closed:
            self._announce = self.loop.call_later(SETTLE, self._announce_now)

    def _links(self) -> list[tuple[bytes, str, str]]:
        return [(k, c.direction, c.address) for k, c in self.gw.core.verified.items()]

    def _announce_now(self) -> None:
        self._announce = None
        if self._signing:
            self._soon()
            return
        entries = self.core.neighbours(self._links())
        if self.sent is not None and self.sent[0] == entries:
            self._send(self.sent[1])
            return
        self._signing = True
        self.rt.spawn(self._sign(entries), "sign px record")

    async def _sign(self, entries: tuple[tuple[bytes, str], ...]) -> None:
        try:
            raw = self.core.record(entries, time.time()).pack()
            reply = await self.rt.client("identity").call(rpc.Sign(domain=DOMAIN_PX, data=raw))
            if self.closed:
                return
            self.sent = (entries, codec.pack([raw, reply.sig]))
            self.told.clear()
            self._send(self.sent[1])
        except (TazcomError, zmq.ZMQError) as e:
            if not self.closed:  # else: the gateway is stopping, its sockets with it
                self.rt.log.warning("peer exchange: cannot sign our record (%s); later", e)
                self.loop.call_later(2.0, self._soon)
        finally:
            self._signing = False

    def _send(self, body: bytes) -> None:
        now = self.loop.time()
        for key, c in list(self.gw.core.verified.items()):
            if key in self.told or peerexchange.CAP not in c.link.peer_caps:
                continue
            self.told.add(key)
            self.gw.execute([a for a in self.gw.core.send(key.hex(), peerexchange.KIND, body, now)
                             if not isinstance(a, Refused)])

    # -- hearing -------------------------------------------------------------------------

    def on_message(self, key: bytes, body: bytes) -> None:
        who = f"peer {fingerprint(key)}"
        try:
            rec = peerexchange.decode(body, key)
        except TazcomError as e:
            self.gw.core.rejects.reject(who, e.code, f"px: {e.message}")
            return
        conn = self.gw.core.verified.get(key)
        parsed = addresses.split_address(conn.address) if conn is not None else None
        scope = addresses.scope_of(parsed[0]) if parsed else None
        why = self.core.receive(rec, self.loop.time(), self.gw.core.defer, scope)
        if why is not None:
            self.gw.core.rejects.reject(who, "px_ignored", why)
        self.schedule()
        if self.core.own and rec.origin in self.gw.core.verified:
            self._soon()  # its own addresses may complete an entry of ours

    # -- dialling ------------------------------------------------------------------------

    def _busy(self) -> set[bytes]:
        return {k for c in self.gw.core.conns.values()
                for k in (c.link.expected_key, c.link.peer_key) if k is not None}

    def schedule(self) -> None:
        if self.closed:
            return
        now = self.loop.time()
        verified = set(self.gw.core.verified)
        for cand in self.core.due(now, verified, self._busy()):
            self.rt.spawn(self._dial(cand), f"px dial {fingerprint(cand.key)}")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.core.next_deadline(verified)
        if at is not None:
            self._timer = self.loop.call_at(max(at, now + 0.05), self.schedule)

    async def _dial(self, cand: DialCandidate) -> None:
        host, port = addresses.split_address(cand.address) or ("", 0)
        local = self.gw.core.local_ip_for(host)
        conn_seen = False

        def on_conn(conn: int | None) -> None:
            nonlocal conn_seen
            conn_seen = True
            if conn is None:
                self._done(cand, False)
            else:
                self.conns[conn] = cand

        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: self.factory(cand.address, cand.key, on_conn), host, port,
                local_addr=(local, 0) if local else None), DIAL_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            self.rt.log.debug("px candidate %s at %s: %s", fingerprint(cand.key),
                              cand.address, e)
            if not conn_seen:
                self._done(cand, False)

    def _done(self, cand: DialCandidate, proven: bool) -> None:
        said = self.core.dial_done(cand.key, cand.address, proven, self.loop.time())
        if said is not None:
            self.rt.log.warning("peer exchange: %s", said)
        self.schedule()
