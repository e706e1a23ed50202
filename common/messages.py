"""Wire messages: the one definition of everything two nodes say inside a link.

After the Noise handshake every transport frame carries exactly one message:
a msgpack map ``{"t": type, "v": version, ...fields}`` (docs/protocol.md,
"Link messages"). ``decode_message`` checks the type, the version and every
field; unknown fields are ignored, unknown types are rejected (the link
logs and drops them, it does not close). The handshake payloads are defined
here too.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from . import codec
from .errors import SchemaError
from .schema import Len, Range, Record, record

MESSAGES: dict[str, type[Message]] = {}
MAX_KIND = 32
#: A frame carries at most 65535 bytes of ciphertext; 16 are the AEAD tag.
MAX_PLAINTEXT = 65535 - 16

Kind = Annotated[str, Len(1, MAX_KIND)]


@record
class Message(Record):
    TYPE: ClassVar[str] = ""
    V: ClassVar[int] = 1


def message(type_: str, v: int = 1):
    def wrap(cls: type) -> type:
        if type_ in MESSAGES:
            raise TypeError(f"wire message {type_!r} defined twice")
        cls.TYPE = type_
        cls.V = v
        made = record(cls)
        MESSAGES[type_] = made
        return made

    return wrap


# --- handshake payloads ----------------------------------------------------------------


@record
class IdentityProof(Record):
    """Payload of Noise messages 2 and 3: who owns this Noise static key.

    ``sig`` is the Ed25519 signature, by ``key``, of
    ``"tazcom-noise-static:" || the sender's Noise static public key``.
    """

    v: Annotated[int, Range(1, 1)]
    key: Annotated[bytes, Len(32, 32)]
    sig: Annotated[bytes, Len(64, 64)]


# --- transport messages --------------------------------------------------------------


@message("hello")
class Hello(Message):
    """First message each side sends once the handshake is complete."""

    #: Oldest and newest link protocol versions the sender speaks.
    versions: Annotated[tuple[Annotated[int, Range(1, 65535)], ...], Len(2, 2)]
    nickname: Annotated[str, Len(1, 32)]
    #: Optional features the sender supports (e.g. "router/1").
    caps: Annotated[tuple[Annotated[str, Len(1, 32)], ...], Len(0, 32)] = ()


@message("ping")
class Ping(Message):
    """Keepalive; the peer answers with pong."""

    n: Annotated[int, Range(0, 2**63 - 1)]


@message("pong")
class Pong(Message):
    n: Annotated[int, Range(0, 2**63 - 1)]


@message("rekey")
class Rekey(Message):
    """The sender rekeys its sending cipher right after this frame (Noise REKEY)."""


@message("close")
class Close(Message):
    """The sender closes the link; ``reason`` is a reject code (docs/protocol.md)."""

    reason: Annotated[str, Len(1, 48)]
    message: Annotated[str, Len(0, 200)] = ""


@message("app")
class App(Message):
    """A payload for a service of the peer (e.g. the router), opaque to the gateway."""

    kind: Kind
    body: Annotated[bytes, Len(0, MAX_PLAINTEXT - 64)]  # = APP_MAX_BODY


def encode_message(msg: Message) -> bytes:
    body = msg.to_dict()
    body["t"] = msg.TYPE
    body["v"] = msg.V
    return codec.pack(body)


def decode_message(data: bytes) -> Message:
    """Parse one decrypted transport payload; raises SchemaError/RemoteProtocolError."""
    return decode_message_obj(codec.unpack(data, MAX_PLAINTEXT))


APP_MAX_BODY = MAX_PLAINTEXT - 64


def encode_app(kind: str, body: bytes) -> bytes:
    """``encode_message(App(kind=kind, body=body))`` without building the record (hot path).

    Raises ValueError when ``App`` would reject the fields.
    """
    if type(kind) is not str or not 1 <= len(kind) <= MAX_KIND or type(body) is not bytes \
            or len(body) > APP_MAX_BODY:
        raise ValueError("app kind must be 1..32 characters and body at most "
                         f"{APP_MAX_BODY} bytes")
    return codec.pack({"kind": kind, "body": body, "t": "app", "v": 1})


def app_fields(obj: Any) -> tuple[str, bytes] | None:
    """(kind, body) when ``obj`` is a valid ``app`` message map, else None (hot path).

    Accepts exactly what ``App.from_dict`` accepts (tests/unit/test_link.py checks).
    """
    if type(obj) is dict and obj.get("t") == "app":
        kind = obj.get("kind")
        body = obj.get("body")
        v = obj.get("v")
        if (type(v) is int and v == 1 and type(kind) is str and 1 <= len(kind) <= MAX_KIND
                and type(body) is bytes and len(body) <= APP_MAX_BODY):
            return kind, body
    return None


def decode_message_obj(obj: Any) -> Message:
    """Validate an unpacked transport payload against its one definition."""
    if not isinstance(obj, dict):
        raise SchemaError("a link message is a map", code="bad_message")
    cls = MESSAGES.get(obj.get("t"))  # type: ignore[arg-type]
    if cls is None:
        raise SchemaError(f"unknown message type {obj.get('t')!r}", code="unknown_type")
    if obj.get("v") != cls.V or isinstance(obj.get("v"), bool):
        raise SchemaError(f"{cls.TYPE}: unsupported version {obj.get('v')!r}",
                          code="bad_version")
    return cls.from_dict(obj)


def encode_proof(proof: IdentityProof) -> bytes:
    return codec.pack(proof.to_dict())


def decode_proof(data: bytes) -> IdentityProof:
    obj: Any = codec.unpack(data, 1024)
    return IdentityProof.from_dict(obj)
