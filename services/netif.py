"""Which IPv4 addresses a node uses, as a live set: from TAZCOM_INTERFACES, or every up,
non-loopback interface.

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

if TYPE_CHECKING:
    from .runtime import Runtime

IFF_UP = 0x1
#: Netlink multicast groups: links, IPv4 and IPv6 addresses.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
#: Events come in bursts (a link, then its addresses): look once they settle.
SETTLE = 0.1
POLL = 2.0


def _is_up(name: str) -> bool:
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & IFF_UP)
    except (OSError, ValueError):
        return True  # not Linux sysfs: trust ifaddr's list


def _ipv4_by_interface() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.setdefault(adapter.nice_name, []).append(ip.ip)
    return found


def usable_addresses(wanted: tuple[str, ...]) -> list[str]:
    """The IPv4 addresses to use now for interface names or literal addresses (default: all
    up, non-loopback interfaces); [] while there is none. An interface that is down, or
    missing, or a literal address no interface holds yet, is not (yet) usable."""
    table = {name: ips for name, ips in _ipv4_by_interface().items() if _is_up(name)}
    out: list[str] = []
    if not wanted:
        for ips in table.values():
            out += [ip for ip in ips if not ipaddress.IPv4Address(ip).is_loopback]
    else:
        held = {ip for ips in table.values() for ip in ips}
        for item in wanted:
            try:
                literal = str(ipaddress.IPv4Address(item))
            except ValueError:
                out += table.get(item, [])
                continue
            if literal in held:
                out.append(literal)
    return list(dict.fromkeys(out))


def describe(wanted: tuple[str, ...]) -> str:
    return (f"TAZCOM_INTERFACES={','.join(wanted)}" if wanted
            else "any up, non-loopback interface")


def interface_networks(ips: list[str]) -> list[ipaddress.IPv4Interface]:
    """The network (address/prefix) of each of our addresses; /32 when unknown."""
    prefixes: dict[str, int] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                prefixes.setdefault(ip.ip, ip.network_prefix)
    return [ipaddress.IPv4Interface(f"{ip}/{prefixes.get(ip, 32)}") for ip in ips]


class AddressWatcher:
    """Calls ``on_change(addresses)`` whenever the usable set differs from ``current``."""

    def __init__(self, wanted: tuple[str, ...], current: list[str],
                 on_change: Callable[[list[str]], None]) -> None:
        self.wanted, self.current, self.on_change = wanted, set(current), on_change
        self.loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        try:
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
    rt.log.warning("no usable IPv4 address yet (%s): waiting for one", describe(wanted))
    rt.waiting(f"waiting for an IPv4 address on {describe(wanted)}")
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
