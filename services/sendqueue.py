"""What a link's socket holds queued, for the bulk gate (common/bulkpace.py)."""

from __future__ import annotations

import asyncio
import contextlib
import struct

try:
    import fcntl
    import termios
except ImportError:  # no ioctl here: no gate, TCP_NOTSENT_LOWAT alone bounds the kernel
    fcntl = termios = None  # type: ignore[assignment]

#: ``SIOCOUTQ`` (Linux's ``TIOCOUTQ`` on a TCP socket): bytes in its send queue, unsent
#: or unacknowledged. Elsewhere the ioctl fails on a socket, and the gate stays open.
SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)


def queued_bytes(transport: asyncio.Transport) -> int | None:
    """Bytes written on ``transport`` that the peer has not acknowledged yet: the
    transport's buffer plus the socket's send queue (None: the socket cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]
        return outq + transport.get_write_buffer_size()
    return None
