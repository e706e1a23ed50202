"""msgpack with explicit limits: the only way TAZCOM packs and unpacks.

Every unpack states the largest input it accepts; msgpack's own per-object
limits (strings, binaries, arrays, maps) are derived from it so that a small
message cannot announce a huge container and make us allocate for it
(threat: memory exhaustion by a peer or by garbage on the bus).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import RemoteProtocolError


def pack(obj: Any) -> bytes:
    """Pack ``obj`` (maps with str keys, lists, bytes, str, numbers, bool, None)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, max_size: int) -> Any:
    """Unpack one msgpack object of at most ``max_size`` bytes.

    Raises ``RemoteProtocolError`` (code ``too_large`` or ``bad_encoding``) for
    any input that is oversized, truncated, trailed by junk or not msgpack.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(
            f"{len(data)} bytes is over the {max_size}-byte limit", code="too_large"
        )
    # msgpack preallocates a container of the announced size; every item takes at
    # least one byte, so no honest container announces more items than there are bytes.
    items = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=items,
            max_map_len=items,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as e:
        raise RemoteProtocolError(f"not valid msgpack: {type(e).__name__}",
                                  code="bad_encoding") from None
