"""Requests between local processes: the one definition of each request and reply.

A request is one ZeroMQ frame, a msgpack map ``{"v": 1, "id": n, "op": name,
...arguments}``, sent by a DEALER (or REQ) to the service's ROUTER socket. The
reply echoes ``id`` and carries ``ok``: ``{"v": 1, "id": n, "ok": true,
...result}`` or ``{"v": 1, "id": n, "ok": false, "error": code, "message":
text}``. Requests carry ids so that a client may pipeline many of them on one
socket; replies may come back in any order. docs/protocol.md, "Requests".
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from . import codec
from .errors import RequestFailed, SchemaError
from .events import Address, Fingerprint, HexKey, Nickname, PeerInfo, ServiceHealth, ServiceName
from .schema import Len, Match, Range, Record, record

ENVELOPE_V = 1
REQUESTS: dict[str, type[Request]] = {}
RequestId = Annotated[int, Range(0, 2**63 - 1)]
ErrorCode = Annotated[str, Match(r"[a-z][a-z0-9_]{0,47}")]


@record
class Request(Record):
    """Base of every request; subclasses set ``OP`` and ``REPLY``."""

    OP: ClassVar[str] = ""
    REPLY: ClassVar[type[Record]]


def request(op: str, reply: type[Record]):
    """Declare a request class, registered by ``op``, answered by ``reply``."""

    def wrap(cls: type) -> type:
        if op in REQUESTS:
            raise TypeError(f"request {op!r} defined twice")
        cls.OP = op
        cls.REPLY = reply
        made = record(cls)
        REQUESTS[op] = made
        return made

    return wrap


# --- replies -------------------------------------------------------------------------


@record
class Empty(Record):
    """A reply with no fields."""


@record
class Pong(Record):
    service: ServiceName
    pid: Annotated[int, Range(0, 2**31)]
    version: Annotated[str, Len(0, 32)]


@record
class IdentityInfo(Record):
    key: HexKey
    fingerprint: Fingerprint
    nickname: Nickname


@record
class Signature(Record):
    sig: Annotated[bytes, Len(64, 64)]


@record
class Signatures(Record):
    sigs: Annotated[tuple[Annotated[bytes, Len(64, 64)], ...], Len(0, 1024)]


@record
class PeerSnapshot(Record):
    """The full peer table; later ``peer.*`` events carry ``seq`` greater than this."""

    seq: Annotated[int, Range(0, 2**63 - 1)]
    peers: Annotated[tuple[PeerInfo, ...], Len(0, 4096)]


@record
class GatewayInfo(Record):
    addresses: Annotated[tuple[Address, ...], Len(0, 16)]
    port: Annotated[int, Range(0, 65535)]


@record
class LinkInfo(Record):
    link: Annotated[int, Range(0, 2**63 - 1)]
    address: Address
    direction: Literal["in", "out"]
    state: Literal["handshake", "open"]
    since: Annotated[float, Range(0, 2**40)]
    key: HexKey | None = None
    nickname: Nickname | None = None
    version: Annotated[int, Range(1, 65535)] | None = None
    frames_in: Annotated[int, Range(0, 2**63 - 1)] = 0
    frames_out: Annotated[int, Range(0, 2**63 - 1)] = 0


@record
class LinkList(Record):
    links: Annotated[tuple[LinkInfo, ...], Len(0, 4096)]


@record
class StatusReport(Record):
    services: Annotated[tuple[ServiceHealth, ...], Len(0, 64)]


# --- requests ------------------------------------------------------------------------

Domain = Annotated[bytes, Len(1, 32)]
SignData = Annotated[bytes, Len(0, 65536)]


@request("ping", Pong)
class Ping(Request):
    """Every service answers this: who it is and its pid."""


@request("identity.get", IdentityInfo)
class GetIdentity(Request):
    """This node's public key, fingerprint and nickname."""


@request("identity.sign", Signature)
class Sign(Request):
    """Sign ``domain || data``; ``domain`` must be one of keys.SIGNING_DOMAINS."""

    domain: Domain
    data: SignData


@request("identity.sign_many", Signatures)
class SignMany(Request):
    """Sign several ``domain || data[i]`` in one round trip."""

    domain: Domain
    items: Annotated[tuple[SignData, ...], Len(1, 1024)]


@request("discovery.snapshot", PeerSnapshot)
class GetPeers(Request):
    """The whole peer table and its sequence number."""


@request("gateway.info", GatewayInfo)
class GetGatewayInfo(Request):
    """Where the gateway listens."""


@request("gateway.send", Empty)
class SendToPeer(Request):
    """Send an ``app`` message to a verified peer. Errors: no_link, too_large."""

    key: HexKey
    kind: Annotated[str, Len(1, 32)]
    body: Annotated[bytes, Len(0, 65000)]


@request("gateway.links", LinkList)
class GetLinks(Request):
    """Every link, in handshake or open."""


@request("gateway.trust", Empty)
class Trust(Request):
    """Accept ``key`` (pin it), clearing a key-change alert. ``nickname`` pins it to a name."""

    key: HexKey
    nickname: Nickname | None = None


@request("gateway.untrust", Empty)
class Untrust(Request):
    """Remove every pin of ``key``. Errors: not_pinned."""

    key: HexKey


@request("bus.status", StatusReport)
class GetStatus(Request):
    """Each service's health as seen on the bus."""


# --- codec ---------------------------------------------------------------------------


def encode_request(req: Request, req_id: int) -> bytes:
    body = req.to_dict()
    body.update(v=ENVELOPE_V, id=req_id, op=req.OP)
    return codec.pack(body)


def decode_request(body: bytes, max_size: int) -> tuple[int | None, Request]:
    """Parse a request. On failure raises with ``.req_id`` set when it could be read."""
    data = codec.unpack(body, max_size)
    if not isinstance(data, dict):
        raise SchemaError("a request is a map", code="bad_request")
    req_id = data.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool) or not 0 <= req_id < 2**63:
        raise SchemaError("request id missing or invalid", code="bad_request")
    try:
        if data.get("v") != ENVELOPE_V:
            raise SchemaError(f"unsupported version {data.get('v')!r}", code="bad_version")
        cls = REQUESTS.get(data.get("op"))  # type: ignore[arg-type]
        if cls is None:
            raise SchemaError(f"unknown op {data.get('op')!r}", code="unknown_op")
        return req_id, cls.from_dict(data)
    except SchemaError as e:
        e.req_id = req_id  # type: ignore[attr-defined]
        raise


def encode_reply(req_id: int, reply: Record) -> bytes:
    body = reply.to_dict()
    body.update(v=ENVELOPE_V, id=req_id, ok=True)
    return codec.pack(body)


def encode_error(req_id: int | None, code: str, message: str) -> bytes:
    return codec.pack(
        {"v": ENVELOPE_V, "id": req_id, "ok": False, "error": code, "message": message[:500]}
    )


def peek_reply_id(data: Any) -> int | None:
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            return rid
    return None


def parse_reply(data: Any, reply_cls: type[Record]) -> Record:
    """Turn a decoded reply map into ``reply_cls``; raises ``RequestFailed`` on ``ok: false``."""
    if not isinstance(data, dict) or data.get("v") != ENVELOPE_V:
        raise SchemaError("bad reply envelope", code="bad_reply")
    if data.get("ok") is True:
        return reply_cls.from_dict(data)
    code = data.get("error")
    message = data.get("message")
    raise RequestFailed(
        message if isinstance(message, str) else "request failed",
        code=code if isinstance(code, str) else "failed",
    )


__all__ = [
    "REQUESTS",
    "Address",
    "Empty",
    "Fingerprint",
    "GatewayInfo",
    "GetGatewayInfo",
    "GetIdentity",
    "GetLinks",
    "GetPeers",
    "GetStatus",
    "HexKey",
    "IdentityInfo",
    "LinkInfo",
    "LinkList",
    "Nickname",
    "PeerSnapshot",
    "Ping",
    "Pong",
    "Request",
    "SendToPeer",
    "Sign",
    "SignMany",
    "Signature",
    "Signatures",
    "StatusReport",
    "Trust",
    "Untrust",
    "decode_request",
    "encode_error",
    "encode_reply",
    "encode_request",
    "parse_reply",
]
