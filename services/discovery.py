"""Discovery: announce this node over mDNS, find the others, own the peer table.

It announces ``tz-<key prefix>._tazcom._tcp.local.`` (python-zeroconf's
asyncio API, on the configured interfaces only, over IPv4 and IPv6: its
``IPVersion.All``/``V6Only`` and ff02::fb on each interface; docs/protocol.md §1,
"Addresses") with a TXT record signed by
the identity service, browses for the same type, and validates every record
it resolves (``common.announce``). Valid records feed the peer table
(``common.peers``), whose changes go out as ``peer.discovered`` /
``peer.updated`` / ``peer.lost``; junk is logged once per (name, reason) and
published as ``discovery.rejected``. Link states from the gateway
(mirrored from its link table) and the mesh from the router (mirrored from
its mesh directory) are merged into the same table (``common.mirror``), and
``discovery.snapshot`` returns it whole with its version, so a service or tool
that mirrors it misses nothing.

The table is saved to ``peers.json`` so peers seen before a restart are
still listed, ``offline``, afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from tazcom.common import announce, rpc, tables
from tazcom.common.addresses import ip_of, without_scope
from tazcom.common.errors import RemoteProtocolError, TazcomError
from tazcom.common.events import (
    DiscoveryRejected,
    Event,
    GatewayListening,
    IdentityChanged,
    PeerDiscovered,
    PeerForgotten,
    PeerKeyChanged,
    PeerLost,
    PeerTrusted,
    PeerUpdated,
)
from tazcom.common.keys import DOMAIN_MDNS_TXT, fingerprint
from tazcom.common.mirror import Change
from tazcom.common.peers import Change as PeerChange
from tazcom.common.peers import PeerTable, TableFull
from tazcom.common.rejects import RejectLog

from . import netif
from .runtime import Runtime, run

CHANGE_EVENTS: dict[str, type[Event]] = {
    "peer.discovered": PeerDiscovered,
    "peer.updated": PeerUpdated,
    "peer.lost": PeerLost,
}
SAVE_DELAY = 0.5
MAX_RESOLVING = 64


class Discovery:
    def __init__(self, rt: Runtime, ips: list[str]) -> None:
        self.rt = rt
        self.config = rt.config
        self.ips = ips
        self.table = PeerTable(max_peers=self.config.max_peers,
                               numbering=rt.own_table("peers"))
        self.links = rt.mirror(tables.LINKS, self.on_links)
        self.mesh = rt.mirror(tables.MESH, self.on_mesh)
        self.rejects = RejectLog(rt.log)
        self.own_key: bytes | None = None
        self.own_name: str | None = None
        self.nickname = self.config.nickname
        self.port: int | None = None
        self.aiozc: AsyncZeroconf | None = None
        self.info: ServiceInfo | None = None
        self._resolving: dict[str, bool] = {}
        self._save_handle: asyncio.TimerHandle | None = None
        self._register_lock = asyncio.Lock()
        self.identity_known = asyncio.Event()

    # -- peer table --------------------------------------------------------------------

    def load(self) -> None:
        path = self.config.paths.peers_file
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.rt.log.warning("ignoring unreadable %s: %s", path, e)
            return
        kept = self.table.load(data)
        self.rt.log.info("remembered %d peers from %s", kept, path.name)

    def save(self) -> None:
        self._save_handle = None
        path = self.config.paths.peers_file
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.table.dump()))
            os.replace(tmp, path)
        except OSError as e:
            self.rt.log.warning("cannot save %s: %s", path, e.strerror)

    def publish(self, changes: list[PeerChange]) -> None:
        epoch = self.table.numbering.epoch
        for change in changes:
            if change.kind == "peer.forgotten":
                self.rt.bus.emit(PeerForgotten, epoch=epoch, seq=change.seq,
                                 key=change.peer.key)
            else:
                self.rt.bus.emit(CHANGE_EVENTS[change.kind], epoch=epoch, seq=change.seq,
                                 peer=change.peer)
        if changes and self._save_handle is None:
            self._save_handle = asyncio.get_running_loop().call_later(SAVE_DELAY, self.save)

    def snapshot(self, _req: rpc.GetPeers) -> rpc.PeerSnapshot:
        epoch, seq, peers = self.table.snapshot(time.time())
        return rpc.PeerSnapshot(epoch=epoch, seq=seq, peers=peers)

    def reject(self, name: str, address: str, reason: str, detail: str) -> None:
        if self.rejects.reject(f"mDNS record {name!r} from {address or '?'}", reason, detail):
            self.rt.bus.emit(DiscoveryRejected, name=name, address=address, reason=reason)

    # -- announcing ----------------------------------------------------------------------

    async def build_info(self) -> ServiceInfo:
        assert self.own_key is not None and self.port is not None
        txt = announce.unsigned_txt(key=self.own_key, port=self.port, nickname=self.nickname,
                                    now=time.time())
        reply = await self.rt.client("identity").call(
            rpc.Sign(domain=DOMAIN_MDNS_TXT, data=announce.canonical(txt)))
        txt[b"s"] = reply.sig.hex().encode()
        path = self.config.paths.announce_file
        with contextlib.suppress(OSError):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(announce.announce_file(self.own_key, txt))
            os.replace(tmp, path)
        return self._info(self.own_key, self.port, txt)

    def cached_info(self) -> ServiceInfo | None:
        """Our last signed record (``announce.json``), if still valid for these interfaces.

        Announcing it at once, before identity and gateway answer, starts the
        ~1 s mDNS probe as early as possible; ``announce()`` replaces it when
        anything differs.
        """
        path = self.config.paths.announce_file
        try:
            key, txt = announce.read_announce_file(path.read_text())
            name = f"{announce.instance_label(key)}.{self.config.service_type}"
            ann = announce.validate(name=name, properties=txt, srv_port=None,
                                    addresses=self.ips)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, TazcomError) as e:
            self.rt.log.info("not reusing %s: %s", path.name, e)
            return None
        self.own_key = ann.key.raw
        self.own_name = name
        return self._info(ann.key.raw, ann.port, txt)

    def _info(self, key: bytes, port: int, txt: dict[bytes, bytes]) -> ServiceInfo:
        label = announce.instance_label(key)
        ttl = self.config.record_ttl
        return ServiceInfo(
            self.config.service_type, f"{label}.{self.config.service_type}",
            parsed_addresses=list(dict.fromkeys(without_scope(ip) for ip in self.ips)),
            port=port,
            properties=txt, server=f"{label}.local.", host_ttl=ttl, other_ttl=ttl)

    async def publish_record(self, info: ServiceInfo) -> None:
        """Register ``info`` (probing first), or update the registered record."""
        assert self.aiozc is not None
        async with self._register_lock:
            if self.info is not None and self.info.name != info.name:
                await self.aiozc.async_unregister_service(self.info)  # our key changed
                self.info = None
            if self.info is None:
                # No probing (RFC 6762 8.1): our instance name is derived from our key, so
                # no one can hold it legitimately and renaming would not help; skipping the
                # probe saves a second at every start (docs/protocol.md, "mDNS record").
                pending = await self.aiozc.async_register_service(
                    info, cooperating_responders=True)
                self.rt.log.info("announcing %s on %s port %d", info.name,
                                 ",".join(self.ips), info.port)
            else:
                pending = await self.aiozc.async_update_service(info)
            self.info = info
        await pending

    async def announce(self) -> None:
        """Announce a freshly signed record unless the one announced says the same."""
        while True:
            port, nick = self.port, self.nickname
            current = self.info
            if current is None or current.port != port or current.name != self.own_name or \
                    current.properties.get(b"n") != nick.encode():
                await self.publish_record(await self.build_info())
            if (self.port, self.nickname) == (port, nick):
                return

    # -- links (the gateway's table) and the mesh (the router's), mirrored ---------------

    def on_links(self, changes: list[Change]) -> None:
        keys = {row.key for c in changes for row in (c.old, c.new) if row is not None and row.key}
        if not keys:
            return
        now = time.time()
        peer_links = tables.peer_links(self.links.items.values())
        for key_hex in keys:
            link = peer_links.get(key_hex, tables.NO_LINK)
            self.publish(self.table.link_changed(bytes.fromhex(key_hex), link.state, now,
                                                 address=link.address,
                                                 nickname=link.nickname))

    def on_mesh(self, changes: list[Change]) -> None:
        now = time.time()
        for c in changes:
            key = bytes.fromhex(c.key)
            if key == self.own_key:
                continue
            entry = c.new
            self.publish(self.table.mesh_changed(key, entry.hops if entry else None, now,
                                                 nickname=entry.nickname if entry else None))

    def on_alert(self, ev: Event) -> None:
        now = time.time()
        if isinstance(ev, PeerKeyChanged):
            key = bytes.fromhex(ev.key)
            if self.table.get(key) is None:
                self.publish(self.table.link_changed(key, "none", now, nickname=ev.nickname))
            self.publish(self.table.set_alert(key, ev.alert, now))
        elif isinstance(ev, PeerTrusted) and ev.trusted:
            self.publish(self.table.set_alert(bytes.fromhex(ev.key), None, now))

    def on_identity(self, ev: Event) -> None:
        if isinstance(ev, IdentityChanged) and ev.nickname != self.nickname:
            self.nickname = ev.nickname
            if self.identity_known.is_set():
                self.rt.spawn(self.announce(), "re-announce")

    def on_gateway(self, ev: Event) -> None:
        if not isinstance(ev, GatewayListening) or ev.port == self.port:
            return
        self.port = ev.port
        if self.identity_known.is_set():
            self.rt.log.info("gateway listens on port %d", ev.port)
            self.rt.spawn(self.announce(), "re-announce")

    # -- browsing -------------------------------------------------------------------------

    def on_service_state_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                                state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self.publish(self.table.mdns_gone(name, time.time()))
            return
        if name in self._resolving:
            self._resolving[name] = True  # resolve again when the current one ends
            return
        if len(self._resolving) >= MAX_RESOLVING:
            self.reject(name, "", "busy", "too many records being resolved at once")
            return
        self._resolving[name] = False
        self.rt.spawn(self.resolve(name), f"resolve {name[:40]}")

    async def resolve(self, name: str) -> None:
        try:
            while True:
                await self._resolve_once(name)
                if not self._resolving.get(name):
                    return
                self._resolving[name] = False
        finally:
            self._resolving.pop(name, None)

    async def _resolve_once(self, name: str) -> None:
        assert self.aiozc is not None
        await self.identity_known.wait()
        info = AsyncServiceInfo(self.config.service_type, name)
        found = await info.async_request(self.aiozc.zeroconf,
                                         int(self.config.resolve_timeout * 1000))
        # IPv4 first, then IPv6; a link-local one scoped with the interface it was heard
        # on (a scope only means something here: docs/protocol.md §1, "Addresses")
        heard = info.parsed_scoped_addresses(IPVersion.All) if found else []
        addresses = [a for a in (netif.localized(h, self.ips) for h in heard) if a]
        source = addresses[0] if addresses else (heard[0] if heard else "")
        if not found:
            self.reject(name, source, "unresolved", "no SRV/TXT/address answer in time")
            return
        properties = dict(info.properties or {})
        if name == self.own_name:
            ours = {without_scope(ip) for ip in self.ips}
            foreign = [a for a in addresses if without_scope(a) not in ours]
            if foreign:
                self.reject(name, foreign[0], "own_key", "our name announced from another address")
            return
        if self.own_key is not None and properties.get(b"k") == self.own_key.hex().encode():
            self.reject(name, source, "own_key", "our own key announced from elsewhere")
            return
        try:
            ann = announce.validate(name=name, properties=properties,
                                    srv_port=info.port, addresses=addresses)
        except RemoteProtocolError as e:
            self.reject(name, source, e.code, e.message)
            return
        try:
            self.publish(self.table.mdns_seen(ann, time.time()))
        except TableFull as e:
            self.reject(name, source, "table_full", str(e))


async def main(rt: Runtime) -> None:
    ips = await netif.wait_for_addresses(rt)
    disco = Discovery(rt, ips)
    disco.load()
    rt.serve({rpc.GetPeers: disco.snapshot})
    rt.bus.subscribe("gateway.listening", disco.on_gateway)
    rt.bus.subscribe("identity.changed", disco.on_identity)
    for topic in ("peer.key_changed", "peer.trusted"):
        rt.bus.subscribe(topic, disco.on_alert)
    # python-zeroconf's own IPv6: ff02::fb on each interface, beside 224.0.0.251
    families = {ip_of(ip).version for ip in ips}
    disco.aiozc = AsyncZeroconf(
        interfaces=netif.mdns_interfaces(ips),
        ip_version=IPVersion.All if families == {4, 6} else
        IPVersion.V6Only if families == {6} else IPVersion.V4Only)
    browser = AsyncServiceBrowser(disco.aiozc.zeroconf, [rt.config.service_type],
                                  handlers=[disco.on_service_state_change])
    cached = disco.cached_info()
    if cached is not None:
        rt.spawn(disco.publish_record(cached), "announce-cached")
    ident = await rt.call_until_ready("identity", rpc.GetIdentity())
    disco.own_key = bytes.fromhex(ident.key)
    disco.table.own_key = disco.own_key
    disco.own_name = f"{announce.instance_label(disco.own_key)}.{rt.config.service_type}"
    disco.identity_known.set()
    gateway = await rt.call_until_ready("gateway", rpc.GetGatewayInfo())
    disco.port = gateway.port
    disco.nickname = ident.nickname
    rt.ready(f"{fingerprint(disco.own_key)} on {', '.join(ips)}")
    watcher = netif.follow(rt, ips)
    try:
        await disco.announce()
        await asyncio.Event().wait()
    finally:
        watcher.close()
        with contextlib.suppress(TazcomError, OSError, RuntimeError):
            await browser.async_cancel()
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            # Unregistering sends the mDNS goodbye: peers mark us offline at once.
            await asyncio.wait_for(disco.aiozc.async_unregister_all_services(), 2.0)
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(disco.aiozc.async_close(), 2.0)
        if disco._save_handle is not None:
            disco.save()


if __name__ == "__main__":
    run("discovery", main)
