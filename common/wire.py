"""Frames on a TCP link: ``u16 length || Noise message`` (docs/protocol.md, "Frames").

A Noise message is at most 65535 bytes, so a two-byte big-endian length is
enough and no frame can announce more than 64 KiB (threat: a peer announcing
a gigabyte and making us buffer it). A zero length is invalid: no Noise
message is empty. The decoder is fed whatever TCP delivers, in any split.
"""

from __future__ import annotations

from .errors import RemoteProtocolError

HEADER = 2
MAX_FRAME = 65535


def encode_frame(payload: bytes) -> bytes:
    n = len(payload)
    if not 0 < n <= MAX_FRAME:
        raise ValueError(f"frame payload of {n} bytes")
    return n.to_bytes(2, "big") + payload


class FrameDecoder:
    """Split a byte stream into frames no longer than ``max_frame``."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def partial(self) -> bool:
        """True while part of a frame has arrived but not all of it."""
        return bool(self._buf)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Complete frames in ``data`` (plus what was buffered); the rest is kept."""
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the common case: parse the read itself, no copy into a buffer
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        max_frame = self.max_frame
        while end - pos >= HEADER:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n == 0 or n > max_frame:
                raise RemoteProtocolError(
                    f"frame length {n} outside 1..{max_frame}", code="bad_frame")
            if end - pos - HEADER < n:
                break
            frames.append(bytes(buf[pos + HEADER : pos + HEADER + n]))
            pos += HEADER + n
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += buf[pos:]
        return frames
