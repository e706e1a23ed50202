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

from typing import Annotated, ClassVar

from . import codec
from .errors import RemoteProtocolError, SchemaError
from .limits import (
    BUCKETS_MAX,
    CUSTODY_MAX,
    DIGEST_BYTES,
    ENVS_MAX,
    HOPS_MAX,
    ID_BYTES,
    IDS_MAX,
    ROUTER_MESSAGE_MAX,
    SIG_BYTES,
    SIGNED_MAX,
)
from .schema import UINT64_MAX, ArrayRecord, Len, Range, record, registry

KIND = "router"
R_ENVS, R_CUSTODY, R_SUMMARY, R_IDS = 0, 1, 2, 3
MAX_ENVS = ENVS_MAX
MAX_CUSTODY = CUSTODY_MAX
MAX_BUCKETS = BUCKETS_MAX
MAX_IDS = IDS_MAX
MAX_BODY = ROUTER_MESSAGE_MAX


class RoutingError(RemoteProtocolError):
    code = "bad_router_message"


ROUTER_MESSAGES: dict[int, type[RouterMessageBase]] = {}
#: ``@router_message(type)``: an array record ``[type, ...]``, registered by its type.
router_message = registry(ROUTER_MESSAGES, "TAG")

Id = Annotated[bytes, Len(ID_BYTES, ID_BYTES)]
Count = Annotated[int, Range(0, UINT64_MAX)]
#: One envelope as it travels: ``[hops, signed, sig]`` (hops: links crossed before this one).
Entry = tuple[Annotated[int, Range(0, HOPS_MAX)], Annotated[bytes, Len(1, SIGNED_MAX)],
              Annotated[bytes, Len(SIG_BYTES, SIG_BYTES)]]
#: One catch-up bucket: ``[bucket, count, digest]``.
Bucket = tuple[Count, Count, Annotated[bytes, Len(DIGEST_BYTES, DIGEST_BYTES)]]


@record
class RouterMessageBase(ArrayRecord):
    """A router message: ``[type, ...]``, built positionally in field order."""

    CODE: ClassVar[str] = "bad_router_message"


@router_message(R_ENVS)
class Envs(RouterMessageBase):
    """``[0, [[hops, signed, sig], ...]]``: envelopes."""

    entries: Annotated[tuple[Entry, ...], Len(1, ENVS_MAX)]


@router_message(R_CUSTODY)
class Custody(RouterMessageBase):
    """``[1, [id, ...]]``: the sender committed these DMs and receipts and carries them on."""

    ids: Annotated[tuple[Id, ...], Len(1, CUSTODY_MAX)]


@router_message(R_SUMMARY)
class SummaryMsg(RouterMessageBase):
    """``[2, [[bucket, count, digest], ...]]``: the sender's catch-up summary."""

    buckets: Annotated[tuple[Bucket, ...], Len(0, BUCKETS_MAX)]


@router_message(R_IDS)
class IdsMsg(RouterMessageBase):
    """``[3, bucket, [id, ...]]``: the ids the sender has in one bucket."""

    bucket: Count
    ids: Annotated[tuple[Id, ...], Len(0, IDS_MAX)]


RouterMessage = Envs | Custody | SummaryMsg | IdsMsg


def encode(msg: RouterMessageBase) -> bytes:
    return codec.pack(msg.to_array())


def encode_envs(entries: list[tuple[int, bytes, bytes]]) -> bytes:
    return codec.pack(Envs(entries).to_array())


def encode_custody(ids: list[bytes]) -> bytes:
    return codec.pack(Custody(ids).to_array())


def encode_summary(buckets: list[tuple[int, int, bytes]]) -> bytes:
    return codec.pack(SummaryMsg(buckets).to_array())


def encode_ids(bucket: int, ids: list[bytes]) -> bytes:
    return codec.pack(IdsMsg(bucket, ids).to_array())


def decode(body: bytes) -> RouterMessage:
    """Parse a router message; raises RoutingError (or RemoteProtocolError) on anything else."""
    obj = codec.unpack(body, MAX_BODY)
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise RoutingError("a router message is an array starting with its type")
    cls = ROUTER_MESSAGES.get(obj[0])
    if cls is None:
        raise RoutingError(f"unknown router message type {obj[0]!r}")
    try:
        return cls.from_array(obj)  # type: ignore[return-value]
    except SchemaError as e:
        raise RoutingError(f"{cls.__name__}: {e.message}") from None
