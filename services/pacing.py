"""What a link's socket holds queued, for the bulk gate (common/bulkpace.py)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios

#: ``SIOCOUTQ`` (``TIOCOUTQ``): bytes in a TCP socket's send queue, unsent or unacknowledged.
SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)


def queued_bytes(transport: asyncio.Transport) -> int | None:
    """Bytes written on ``transport`` that the peer has not acknowledged yet: the
    transport's buffer plus the socket's send queue (None: the socket cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]
        return outq + transport.get_write_buffer_size()
    return None
