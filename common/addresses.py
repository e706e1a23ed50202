"""IP addresses and endpoints as text, IPv4 and IPv6 (docs/protocol.md §1, "Addresses").
No I/O.

An endpoint is ``a.b.c.d:port`` or ``[v6]:port``. A link-local IPv6 address (fe80::/10)
is only meaningful together with the interface it is reached through, its *scope*, which
is written after a ``%`` as the interface's name: ``[fe80::1%eth0]:port``. A scope means
something only on the node that wrote it, so a node never uses a peer's: it replaces the
scope of every link-local address it learns with the interface it heard it on
(``with_scope``). A link-local address without a scope cannot be dialled (except where
the node has a single link-local interface: ``LocalNetwork.for_host``).

Every address text here is canonical: IPv6 in its RFC 5952 form (lowercase, ``::``),
an IPv4-mapped IPv6 address as the IPv4 address, no scope on anything but a link-local
IPv6 address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: The longest endpoint text: ``[`` 39 hex/colons ``%`` 15-character scope ``]:65535``.
ENDPOINT_MAX = 63
#: A scope: an interface name (IFNAMSIZ - 1 characters; these characters only, so that
#: an address prints harmlessly) or an interface index.
SCOPE = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split_scope(text: str) -> tuple[str, str | None]:
    address, sep, scope = text.partition("%")
    return address, (scope if sep else None)


def parse_host(text: Any) -> str | None:
    """The canonical text of the IP address ``text`` (``fe80::1%eth0`` keeps its scope), or
    None if it is not one. A scope on any but a link-local IPv6 address is dropped; a scope
    that is not an interface name or index makes the whole address invalid."""
    if type(text) is not str or not 2 <= len(text) <= ENDPOINT_MAX:
        return None
    bare, scope = _split_scope(text)
    if scope is not None and not SCOPE.fullmatch(scope):
        return None
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return None
    if ip.version == 4:
        return None if scope is not None else str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.is_link_local and scope is not None:
        return f"{ip}%{scope}"
    return str(ip)


def ip_of(host: str) -> IPAddress:
    """The address of a canonical host text, without its scope."""
    return ipaddress.ip_address(_split_scope(host)[0])


def scope_of(host: str) -> str | None:
    """The scope of a host text (``eth0`` of ``fe80::1%eth0``), or None."""
    return _split_scope(host)[1]


def without_scope(host: str) -> str:
    return _split_scope(host)[0]


def is_link_local(host: str) -> bool:
    """An IPv6 link-local address (whose scope matters); IPv4 169.254/16 is not scoped."""
    ip = ip_of(host)
    return ip.version == 6 and ip.is_link_local


def with_scope(host: str, scope: str | None) -> str:
    """``host`` reached through interface ``scope``: a link-local IPv6 address gets that
    scope (None: none), replacing any it had; other addresses are returned unchanged."""
    if not is_link_local(host):
        return host
    bare = without_scope(host)
    return f"{bare}%{scope}" if scope else bare


def join(host: str, port: int) -> str:
    """The endpoint text of ``host`` and ``port``: ``a.b.c.d:port`` or ``[v6]:port``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: Any) -> tuple[str, int] | None:
    """``(host, port)`` of an endpoint text (``a.b.c.d:port``, ``[v6]:port``,
    ``[fe80::1%eth0]:port``), the host canonical; None if it is not one. IPv6 must be in
    brackets; the port is 1..65535 in decimal digits."""
    if type(address) is not str or len(address) > ENDPOINT_MAX + 2:
        return None
    if address.startswith("["):
        inside, sep, port = address[1:].partition("]:")
        if not sep or ":" not in inside:
            return None
    else:
        inside, sep, port = address.rpartition(":")
        if not sep or ":" in inside:
            return None
    if not (port.isascii() and port.isdigit()) or len(port) > 5 \
            or not 1 <= int(port) <= 65535:
        return None
    host = parse_host(inside)
    if host is None:
        return None
    ip = ip_of(host)
    if ip.version == 6 and (ip.is_multicast or ip.is_unspecified):
        return None
    return host, int(port)


def rank(host: str, prefer_ipv6: bool = False) -> int:
    """Dial order of an address: IPv4, then global IPv6, then link-local IPv6 (IPv6
    first, global before link-local, when ``prefer_ipv6``)."""
    ip = ip_of(host)
    if ip.version == 4:
        return 2 if prefer_ipv6 else 0
    if ip.is_link_local:
        return 1 if prefer_ipv6 else 2
    return 0 if prefer_ipv6 else 1


def ordered(endpoints: Iterable[str], prefer_ipv6: bool = False) -> tuple[str, ...]:
    """The valid endpoints of ``endpoints``, once each, in dial order (``rank``; the given
    order among equals)."""
    parsed = {}
    for e in endpoints:
        split = split_address(e)
        if split is not None:
            parsed.setdefault(join(*split), split[0])
    return tuple(sorted(parsed, key=lambda e: rank(parsed[e], prefer_ipv6)))


@dataclass(frozen=True, slots=True)
class LocalNetwork:
    """One of our addresses (``local``, scoped when link-local) and its network."""

    local: str
    network: IPNetwork

    @classmethod
    def parse(cls, text: str) -> LocalNetwork:
        """``a.b.c.d/len``, ``v6/len`` or ``fe80::1%eth0/len`` (no ``/len``: the host
        alone); raises ``ValueError``."""
        address, _, length = text.partition("/")
        host = parse_host(address)
        if host is None:
            raise ValueError(f"{address!r} is not an IP address")
        bare = without_scope(host)
        net = ipaddress.ip_network(f"{bare}/{length}" if length else bare, strict=False)
        return cls(local=host, network=net)

    @classmethod
    def of(cls, value: Any) -> LocalNetwork:
        """From a ``LocalNetwork``, an ``IPv4Interface``/``IPv6Interface`` or text."""
        if isinstance(value, LocalNetwork):
            return value
        if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            return cls(local=str(value.ip), network=value.network)
        return cls.parse(str(value))

    @property
    def scope(self) -> str | None:
        return scope_of(self.local)

    def holds(self, host: str) -> bool:
        """Is ``host`` (canonical) on this network: same family and prefix, and for a
        link-local address the same interface?"""
        ip = ip_of(host)
        if ip.version != self.network.version or ip not in self.network:
            return False
        if ip.version == 6 and ip.is_link_local:
            return scope_of(host) == self.scope
        return True


def local_for(networks: Sequence[LocalNetwork], host: str) -> tuple[str, str] | None:
    """``(our address, host to dial)`` to reach ``host`` from one of our ``networks``, or
    None when it is on none of them. A link-local host without a scope is taken to be on
    our only link-local interface, if we have exactly one."""
    if is_link_local(host) and scope_of(host) is None:
        scopes = {n.scope for n in networks if n.scope is not None}
        if len(scopes) != 1:
            return None
        host = with_scope(host, scopes.pop())
    for n in networks:
        if n.holds(host):
            return n.local, host
    return None
