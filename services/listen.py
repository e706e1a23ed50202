"""The gateway's listening sockets: one port on every configured address, IPv4 and IPv6
(an IPv6 socket is IPv6-only, bound with its link-local address's scope).

The port is the configured ``port``, else the one used last time (so peers
that remember our address find us after a restart), else any free one.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path

from tazcom.common.config import Config
from tazcom.common.staticpeers import DEFAULT_PORT

from .runtime import FatalError

BACKLOG = 256


def sockaddr(ip: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """The family and socket address of address text ``ip`` (``fe80::1%eth0`` included)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    info = socket.getaddrinfo(ip, port, family, socket.SOCK_STREAM, 0,
                              socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    return family, info[0][4]


def _bind_all(ips: list[str], port: int) -> list[socket.socket]:
    """Bind one listening socket per address, all on the same port (0: pick one)."""
    bound: list[socket.socket] = []
    try:
        for ip in ips:
            try:
                family, address = sockaddr(ip, port)
            except socket.gaierror as e:
                raise OSError(errno.EADDRNOTAVAIL, f"{ip}: {e.strerror}") from None
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
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
    # the port last used, else the one static peers are dialled at by default
    # (common/staticpeers.py), else any free one
    for port in [p for p in (remembered, DEFAULT_PORT) if p] + [0, 0, 0]:
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
