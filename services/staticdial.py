"""The gateway's dialler of static peers: executes ``common.staticpeers.StaticPeers``
(resolves host names, dials, keeps ``$TAZCOM_HOME/static_peers.json``) and answers
``gateway.connect`` and ``gateway.static_peers`` (docs/protocol.md §9, "Static peers")."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from tazcom.common import rpc
from tazcom.common.errors import RequestFailed
from tazcom.common.events import LinkDown, PeerVerified
from tazcom.common.linkmanager import DIAL_TIMEOUT
from tazcom.common.staticpeers import StaticPeers, normalize, split

from . import netif
from .runtime import Runtime

#: ``factory(dialled address, static address, expected key)``: the protocol of a static
#: dial's connection (the key an invite requires there, else None).
ProtocolFactory = Callable[[str, str, bytes | None], asyncio.Protocol]


class StaticDialler:
    def __init__(self, rt: Runtime, verified: Callable[[], set[bytes]],
                 factory: ProtocolFactory) -> None:
        self.rt = rt
        self.loop = asyncio.get_running_loop()
        self.core = StaticPeers()
        self.verified = verified
        self.factory = factory
        self.path = rt.config.paths.home / "static_peers.json"
        #: Connections of static dials: link id -> the static address dialled.
        self.conns: dict[int, str] = {}
        self._timer: asyncio.TimerHandle | None = None

    def load(self) -> None:
        configured = []
        for text in rt_list(self.rt.config.raw.get("gateway", {}).get("static_peers", [])):
            try:
                configured.append(normalize(text))
            except ValueError as e:
                self.rt.log.error("gateway.static_peers: %s (skipped)", e)
        self.core.set_source("config", configured)
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            saved = []
        except (OSError, ValueError) as e:
            self.rt.log.error("%s: unreadable (%s); no static peers from it", self.path, e)
            saved = []
        for problem in self.core.load_added(saved if isinstance(saved, list) else []):
            self.rt.log.warning("%s: %s (skipped)", self.path, problem)

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.core.added(), indent=1) + "\n")
        os.replace(tmp, self.path)

    # -- dialling ---------------------------------------------------------------------------

    def schedule(self) -> None:
        now = self.loop.time()
        linked = self.verified()
        for address in self.core.due(now, linked):
            self.rt.spawn(self.dial(address), f"dial {address}")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.core.next_deadline(linked)
        if at is not None:
            self._timer = self.loop.call_at(max(at, now + 0.01), self.schedule)

    async def dial(self, address: str) -> None:
        host, port = split(address)
        entry = self.core.entries.get(address)
        # an invite's key, else the key this address proved before: another node answering
        # there (a reassigned address, a spoof) is refused with wrong_key, not taken
        expect = (entry.expect or entry.key) if entry is not None else None
        try:
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            # one address at a time, IPv4 first unless node.prefer_ipv6
            v6_first = self.rt.config.prefer_ipv6
            targets = list(dict.fromkeys(i[4] for i in sorted(
                infos, key=lambda i: (i[0] == socket.AF_INET6) != v6_first)))[:4]
            if not targets:
                raise OSError(f"{host}: no address")
            for n, target in enumerate(targets):
                dialled = netif.endpoint_text(target)
                ip = str(target[0]) + (f"%{target[3]}" if len(target) >= 4 and target[3] else "")
                try:
                    await asyncio.wait_for(self.loop.create_connection(
                        lambda d=dialled: self.factory(d, address, expect), ip, port),
                        DIAL_TIMEOUT)
                    break
                except (OSError, TimeoutError):
                    if n == len(targets) - 1:
                        raise
        except (OSError, TimeoutError, IndexError) as e:
            self.rt.log.debug("static peer %s: %s", address, e)
            self.core.failed(address, self.loop.time(), str(e) or type(e).__name__)
            self.schedule()

    def connected(self, conn: int | None, address: str) -> None:
        """The protocol of a static dial got its connection id (None: refused at once)."""
        if conn is None:
            self.core.failed(address, self.loop.time(), "refused by this gateway")
            self.schedule()
        else:
            self.conns[conn] = address

    def on_emit(self, event: type, fields: dict[str, Any]) -> None:
        """The link core's events: a static dial's link verified, or any link down."""
        if event is PeerVerified:
            address = self.conns.get(fields["link"])
            if address is not None:
                self.core.verified(address, fields["link"], bytes.fromhex(fields["key"]),
                                   fields["nickname"])
        elif event is LinkDown:
            address = self.conns.pop(fields["link"], None)
            if address is not None:
                reason = fields["reason"]
                if fields.get("detail") and reason not in ("duplicate", "goodbye"):
                    reason = f"{reason}: {fields['detail']}"
                self.core.down(address, self.loop.time(), reason)
            self.schedule()

    # -- requests -------------------------------------------------------------------------

    def connect(self, req: rpc.Connect) -> rpc.StaticPeerList:
        try:
            address = normalize(req.address)
        except ValueError as e:
            raise RequestFailed(str(e), code="bad_address") from None
        if req.remove:
            entry = self.core.remove(address)
            if entry is None:
                raise RequestFailed(f"{address} is not a static peer here", code="not_found")
            if entry.source == "config":
                raise RequestFailed(f"{address} comes from the configuration "
                                    "(gateway.static_peers): remove it there", code="not_found")
        else:
            try:
                self.core.add(address)
            except ValueError as e:
                raise RequestFailed(str(e), code="too_many") from None
        self.save()
        self.schedule()
        return self.table()

    def join(self, req: rpc.Join) -> rpc.StaticPeerList:
        """``gateway.join``: the caller (the gateway) has pinned ``req.key`` already."""
        try:
            addresses = [normalize(a) for a in req.addresses]
            self.core.join(bytes.fromhex(req.key), addresses)
        except ValueError as e:
            raise RequestFailed(str(e), code="too_many" if "at most" in str(e)
                                else "bad_address") from None
        self.save()
        self.schedule()
        return self.table()

    def table(self) -> rpc.StaticPeerList:
        linked = self.verified()
        return rpc.StaticPeerList(items=tuple(
            rpc.StaticPeer(address=a, source=e.source, key=e.key.hex() if e.key else None,
                           nickname=e.nickname or None, state=self.core.state(a, linked),
                           error=e.last_error[:200],
                           expect=e.expect.hex() if e.expect else None)
            for a, e in sorted(self.core.entries.items())))


def rt_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
