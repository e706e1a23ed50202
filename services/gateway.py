"""The peer gateway: TCP links to other nodes.

It listens on the configured interfaces, one port for all of them: the
configured ``port``, else the port it used last time (so a restart does not
make every peer re-learn our address), else any free one. It publishes
``gateway.listening`` and answers ``gateway.info`` so discovery can announce
the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from pathlib import Path

from tazcom.common import rpc
from tazcom.common.config import Config
from tazcom.common.events import GatewayListening

from .netif import resolve_interfaces
from .runtime import FatalError, Runtime, run

BACKLOG = 256


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
    candidates = [p for p in (_remembered_port(config.paths.gateway_port_file),) if p]
    for port in [*candidates, 0, 0, 0]:
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


async def main(rt: Runtime) -> None:
    ips = resolve_interfaces(rt.config.interfaces)
    socks = listen_sockets(rt.config, ips)
    port = socks[0].getsockname()[1]
    addresses = tuple(f"{ip}:{port}" for ip in ips)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The encrypted link protocol arrives with the gateway issue; until then a
        # connection is accepted and closed, so no byte is ever exchanged in clear.
        writer.close()

    servers = [await asyncio.start_server(on_connection, sock=s) for s in socks]
    info = rpc.GatewayInfo(addresses=addresses, port=port)
    rt.serve({rpc.GetGatewayInfo: lambda _r: info})
    rt.bus.emit(GatewayListening, addresses=addresses, port=port)
    rt.ready("listening on " + ", ".join(addresses))
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


if __name__ == "__main__":
    run("gateway", main)
