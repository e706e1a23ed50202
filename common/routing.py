"""The router's messages between neighbours (the body of link ``app`` messages, kind
``router``): one msgpack array each, first element the type (docs/protocol.md,
"Router messages").

==========  ====================================================  =====================
type        array                                                 limits
==========  ====================================================  =====================
0 envs      ``[0, [[hops, signed, sig], ...]]``                    1..64 envelopes
1 custody   ``[1, [id, ...]]``                                     1..1024 ids of 16 bytes
2 summary   ``[2, [[bucket, count, digest], ...]]``                0..256 buckets
3 ids       ``[3, bucket, [id, ...]]``                             0..2048 ids
==========  ====================================================  =====================

Arrays are compact on purpose: these go over every link for every message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import codec
from .envelope import ID_BYTES, MAX_HOPS_LIMIT, MAX_SIGNED
from .errors import RemoteProtocolError

KIND = "router"
R_ENVS, R_CUSTODY, R_SUMMARY, R_IDS = 0, 1, 2, 3
MAX_ENVS = 64
MAX_CUSTODY = 1024
MAX_BUCKETS = 256
MAX_IDS = 2048
MAX_BODY = 65000


class RoutingError(RemoteProtocolError):
    code = "bad_router_message"


@dataclass(frozen=True, slots=True)
class Envs:
    entries: list[tuple[int, bytes, bytes]]  # (hops, signed, sig)


@dataclass(frozen=True, slots=True)
class Custody:
    ids: list[bytes]


@dataclass(frozen=True, slots=True)
class SummaryMsg:
    buckets: list[tuple[int, int, bytes]]


@dataclass(frozen=True, slots=True)
class IdsMsg:
    bucket: int
    ids: list[bytes]


RouterMessage = Envs | Custody | SummaryMsg | IdsMsg


def encode_envs(entries: list[tuple[int, bytes, bytes]]) -> bytes:
    return codec.pack([R_ENVS, [list(e) for e in entries]])


def encode_custody(ids: list[bytes]) -> bytes:
    return codec.pack([R_CUSTODY, ids])


def encode_summary(buckets: list[tuple[int, int, bytes]]) -> bytes:
    return codec.pack([R_SUMMARY, [list(b) for b in buckets]])


def encode_ids(bucket: int, ids: list[bytes]) -> bytes:
    return codec.pack([R_IDS, bucket, ids])


def _ids(x: Any, limit: int) -> list[bytes]:
    if type(x) is not list or len(x) > limit or any(
            type(i) is not bytes or len(i) != ID_BYTES for i in x):
        raise RoutingError(f"expected at most {limit} ids of {ID_BYTES} bytes")
    return x


def decode(body: bytes) -> RouterMessage:
    """Parse a router message; raises RoutingError (or RemoteProtocolError) on anything else."""
    obj = codec.unpack(body, MAX_BODY)
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise RoutingError("a router message is an array starting with its type")
    t = obj[0]
    if t == R_ENVS and len(obj) == 2 and type(obj[1]) is list and 1 <= len(obj[1]) <= MAX_ENVS:
        entries = []
        for e in obj[1]:
            if (type(e) is not list or len(e) != 3 or type(e[0]) is not int
                    or not 0 <= e[0] <= MAX_HOPS_LIMIT or type(e[1]) is not bytes
                    or not 0 < len(e[1]) <= MAX_SIGNED or type(e[2]) is not bytes
                    or len(e[2]) != 64):
                raise RoutingError("an envelope entry is [hops, signed, sig]")
            entries.append((e[0], e[1], e[2]))
        return Envs(entries)
    if t == R_CUSTODY and len(obj) == 2:
        ids = _ids(obj[1], MAX_CUSTODY)
        if not ids:
            raise RoutingError("empty custody")
        return Custody(ids)
    if t == R_SUMMARY and len(obj) == 2 and type(obj[1]) is list and len(obj[1]) <= MAX_BUCKETS:
        buckets = []
        for b in obj[1]:
            if (type(b) is not list or len(b) != 3 or type(b[0]) is not int or b[0] < 0
                    or type(b[1]) is not int or b[1] < 0 or type(b[2]) is not bytes
                    or len(b[2]) != 16):
                raise RoutingError("a bucket is [bucket, count, digest]")
            buckets.append((b[0], b[1], b[2]))
        return SummaryMsg(buckets)
    if t == R_IDS and len(obj) == 3 and type(obj[1]) is int and obj[1] >= 0:
        return IdsMsg(obj[1], _ids(obj[2], MAX_IDS))
    raise RoutingError(f"unknown or malformed router message type {t!r}")
