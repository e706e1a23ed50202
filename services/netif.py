"""Which IP addresses a node uses, as a live set: from TAZCOM_INTERFACES, or every up,
non-loopback interface.

IPv4 and IPv6 alike (docs/protocol.md §1, "Addresses"): an interface gives its IPv4
addresses, its global IPv6 addresses and its link-local IPv6 address, written with the
interface as scope (``fe80::1%eth0``). IPv6 addresses still in duplicate address
detection (tentative), failed, deprecated or temporary (privacy addresses, which rotate)
are left out. Loopback gives IPv4 only, unless ``::1`` is named as an address.

A node may start before its network (a laptop at boot before Wi-Fi joins, a namespace
with only ``lo``): then discovery and the gateway wait, saying so in ``tazcom status``,
and go on once an address appears. Afterwards they follow the set: when it changes (an
interface goes away or comes back, DHCP gives another address, roaming), the service
asks supervisord to start it again (exit 75), so it binds, announces and dials on the
new set from a clean start; links come back by redial (docs/protocol.md §1). Changes are
learnt from the kernel (a NETLINK_ROUTE socket subscribed to link and address events;
no polling, so an idle node does not wake for it), or by polling every 2 s where there is
no netlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import ifaddr

from tazcom.common.addresses import (
    SCOPE,
    LocalNetwork,
    ip_of,
    is_link_local,
    join,
    parse_host,
    rank,
    scope_of,
    with_scope,
    without_scope,
)

if TYPE_CHECKING:
    from .runtime import Runtime

IFF_UP = 0x1
#: Netlink multicast groups: links, IPv4 and IPv6 addresses.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
#: Events come in bursts (a link, then its addresses): look once they settle.
SETTLE = 0.1
POLL = 2.0
#: IFA_F_* flags (of /proc/net/if_inet6) of IPv6 addresses a node does not use: temporary,
#: DAD failed, deprecated, tentative.
IFA_F_UNUSABLE = 0x01 | 0x08 | 0x20 | 0x40
IF_INET6 = Path("/proc/net/if_inet6")
#: Addresses a node uses at most (what ``gateway.listening`` carries): the first in
#: ``rank`` order, where many interfaces each give a link-local address.
MAX_ADDRESSES = 16


def _is_up(name: str) -> bool:
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & IFF_UP)
    except (OSError, ValueError):
        return True  # not Linux sysfs: trust ifaddr's list


def scope_name(index: int) -> str:
    """The scope written for interface ``index``: its name, or the index where the name
    has characters a scope may not carry (common/addresses.py)."""
    try:
        name = socket.if_indextoname(index)
    except (OSError, ValueError, OverflowError):
        return str(index)
    return name if SCOPE.fullmatch(name) else str(index)


def _ipv6_from_proc() -> dict[str, list[tuple[str, int]]] | None:
    try:
        lines = IF_INET6.read_text().splitlines()
    except OSError:
        return None
    found: dict[str, list[tuple[str, int]]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 6:
            continue
        hexaddr, index, prefix, _scope, flags, name = parts
        try:
            text = str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
            if int(flags, 16) & IFA_F_UNUSABLE:
                continue
            host = with_scope(text, scope_name(int(index, 16)))
            found.setdefault(name, []).append((host, int(prefix, 16)))
        except ValueError:
            continue
    return found


def _addresses_by_interface() -> dict[str, list[tuple[str, int]]]:
    """Each interface's addresses (canonical text, a link-local one with its scope) and
    prefix lengths. IPv6 from /proc/net/if_inet6 on Linux (which has the flags), else
    from ifaddr."""
    from_proc = _ipv6_from_proc()
    found: dict[str, list[tuple[str, int]]] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.setdefault(adapter.nice_name, []).append((ip.ip, ip.network_prefix))
            elif from_proc is None and isinstance(ip.ip, tuple):
                host = parse_host(ip.ip[0])
                if host is not None:
                    host = with_scope(host, scope_name(ip.ip[2]) if ip.ip[2] else None)
                    found.setdefault(adapter.nice_name, []).append((host, ip.network_prefix))
    for name, v6 in (from_proc or {}).items():
        found.setdefault(name, []).extend(v6)
    return found


def _table() -> dict[str, list[tuple[str, int]]]:
    return {name: ips for name, ips in _addresses_by_interface().items() if _is_up(name)}


def _matches(literal: str, held: str) -> bool:
    """Is our address ``held`` the one TAZCOM_INTERFACES names as ``literal``? A link-local
    address named without scope is held on any interface."""
    if literal == held:
        return True
    return is_link_local(literal) and scope_of(literal) is None \
        and without_scope(held) == literal


def usable_addresses(wanted: tuple[str, ...]) -> list[str]:
    """The addresses to use now for interface names or literal addresses (default: all
    up, non-loopback interfaces); [] while there is none. An interface that is down, or
    missing, or a literal address no interface holds yet, is not (yet) usable. IPv4 come
    first, then global IPv6, then link-local IPv6; at most ``MAX_ADDRESSES``."""
    table = _table()
    out: list[str] = []
    if not wanted:
        for ips in table.values():
            out += [ip for ip, _ in ips if not ip_of(ip).is_loopback]
    else:
        held = [ip for ips in table.values() for ip, _ in ips]
        for item in wanted:
            literal = parse_host(item)
            if literal is None:  # an interface: IPv6 on loopback only when named (::1)
                out += [ip for ip, _ in table.get(item, [])
                        if not (ip_of(ip).version == 6 and ip_of(ip).is_loopback)]
                continue
            out += [ip for ip in held if _matches(literal, ip)]
    return sorted(dict.fromkeys(out), key=rank)[:MAX_ADDRESSES]


def describe(wanted: tuple[str, ...]) -> str:
    return (f"TAZCOM_INTERFACES={','.join(wanted)}" if wanted
            else "any up, non-loopback interface")


def interface_networks(ips: list[str]) -> list[LocalNetwork]:
    """The network (address/prefix) of each of our addresses; a host route when unknown."""
    prefixes: dict[str, int] = {}
    for addrs in _addresses_by_interface().values():
        for ip, prefix in addrs:
            prefixes.setdefault(ip, prefix)
    out = []
    for ip in ips:
        full = 32 if ip_of(ip).version == 4 else 128
        out.append(LocalNetwork.parse(f"{ip}/{prefixes.get(ip, full)}"))
    return out


def mdns_interfaces(ips: list[str]) -> list[str]:
    """What python-zeroconf is given to announce and browse on for our addresses: each
    IPv4 address, and for IPv6 one address per interface (zeroconf joins ff02::fb on its
    interface), the link-local one where there is one, so that mDNS goes out from it and
    the receivers scope our link-local addresses with their interface."""
    owner = {ip: name for name, addrs in _addresses_by_interface().items() for ip, _ in addrs}
    out: list[str] = []
    v6: dict[str, str] = {}
    for ip in ips:
        if ip_of(ip).version == 4:
            out.append(ip)
            continue
        name = owner.get(ip, ip)
        if name not in v6 or is_link_local(ip):
            v6[name] = ip
    return out + list(dict.fromkeys(without_scope(ip) for ip in v6.values()))


def endpoint_text(sockaddr: tuple) -> str:
    """The endpoint text of a socket address (``(host, port)`` or ``(host, port, flowinfo,
    scope_id)``): ``[fe80::1%eth0]:port`` for a link-local peer."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    if len(sockaddr) >= 4 and sockaddr[3] and "%" not in host:
        host = f"{host}%{scope_name(int(sockaddr[3]))}"
    return join(parse_host(host) or host, port)


def localized(address: str, ips: list[str]) -> str | None:
    """An address python-zeroconf resolved from a peer's record, as we dial it: a
    link-local one scoped with the name of the interface we heard it on (zeroconf gives
    its index), or, heard without scope (over IPv4), with our only link-local interface;
    None when it cannot be placed."""
    bare, _, index = address.partition("%")
    host = parse_host(bare)
    if host is None or not is_link_local(host):
        return host
    if index.isdigit() and int(index):
        return with_scope(host, scope_name(int(index)))
    if index:
        return parse_host(address)
    scopes = {scope_of(ip) for ip in ips if is_link_local(ip)}
    return with_scope(host, scopes.pop()) if len(scopes) == 1 else None


class AddressWatcher:
    """Calls ``on_change(addresses)`` whenever the usable set differs from ``current``."""

    def __init__(self, wanted: tuple[str, ...], current: list[str],
                 on_change: Callable[[list[str]], None], *, poll: bool = False) -> None:
        """``poll``: poll every ``POLL`` s even where netlink exists (bench.netif)."""
        self.wanted, self.current, self.on_change = wanted, set(current), on_change
        self.loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        try:
            if poll:
                raise OSError("polling asked for")
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
        except (OSError, AttributeError):  # no netlink here: poll
            self._poll()
        else:
            self._sock = sock
            self.loop.add_reader(sock.fileno(), self._readable)
        self._check()  # what changed before we listened

    def _readable(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._sock.recv(65536):
                pass
        if self._handle is None:
            self._handle = self.loop.call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self._handle = None
        self._check()

    def _poll(self) -> None:
        self._check()
        self._handle = self.loop.call_later(POLL, self._poll)

    def _check(self) -> None:
        now = usable_addresses(self.wanted)
        if set(now) != self.current:
            self.current = set(now)
            self.on_change(now)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()


async def wait_for_addresses(rt: Runtime) -> list[str]:
    """The usable addresses, once there is at least one; meanwhile the service says in its
    health detail what it waits for."""
    wanted = rt.config.interfaces
    ips = usable_addresses(wanted)
    if ips:
        return ips
    rt.log.warning("no usable IP address yet (%s): waiting for one", describe(wanted))
    rt.waiting(f"waiting for an IP address on {describe(wanted)}")
    appeared = asyncio.Event()
    watcher = AddressWatcher(wanted, [], lambda now: appeared.set() if now else None)
    try:
        await appeared.wait()
    finally:
        watcher.close()
    ips = usable_addresses(wanted)
    rt.log.info("addresses appeared: %s", ", ".join(ips))
    return ips


def follow(rt: Runtime, ips: list[str]) -> AddressWatcher:
    """From now on, a change of the usable addresses starts the service again on the new
    set (through supervisord)."""
    def changed(now: list[str]) -> None:
        rt.restart(f"addresses changed from {', '.join(ips) or 'none'} to "
                   f"{', '.join(now) or 'none'}")
    return AddressWatcher(rt.config.interfaces, ips, changed)
