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

from typing import Annotated, Any, ClassVar

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
    """``[0, [[hops, signed, sig], ...]]``: envelopes.

    Each entry stands alone: ``decode`` refuses a malformed entry by itself and keeps the
    others; ``bad`` lists the refused ones, ``(code, message)`` each (never on the wire).
    """

    entries: Annotated[tuple[Entry, ...], Len(1, ENVS_MAX)]

    @property
    def bad(self) -> tuple[tuple[str, str], ...]:
        return self.__dict__.get("_bad", ())  # type: ignore[no-any-return]


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
        if cls is Envs:
            return _envs_entry_by_entry(obj, e)
        raise RoutingError(f"{cls.__name__}: {e.message}") from None


def _envs_entry_by_entry(obj: list[Any], whole: SchemaError) -> Envs:
    """An ``envs`` that failed as a whole: keep its good entries, refuse the bad ones one
    by one. The message itself (its array, the number of entries) must still be right,
    and at least one entry good; else it is refused as a whole."""
    if len(obj) != 2 or type(obj[1]) is not list or not 1 <= len(obj[1]) <= ENVS_MAX:
        raise RoutingError(f"Envs: {whole.message}") from None
    good: list[Any] = []
    bad: list[tuple[str, str]] = []
    for i, entry in enumerate(obj[1]):
        try:
            good += Envs.from_array([R_ENVS, [entry]]).entries
        except SchemaError as e:
            bad.append((RoutingError.code,
                        "Envs." + e.message.replace("entries[0]", f"entries[{i}]", 1)))
    if not good:
        raise RoutingError(f"Envs: {whole.message}") from None
    msg = Envs(tuple(good))
    msg.__dict__["_bad"] = tuple(bad)
    return msg
