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
from .events import Detail, KindName, Nickname, RejectCode
from .limits import APP_BODY_MAX, KEY_BYTES, KIND_MAX, PART_BODY_MAX, PLAINTEXT_MAX, SIG_BYTES
from .schema import Len, Range, Record, record, registry

MESSAGES: dict[str, type[Message]] = {}
MAX_KIND = KIND_MAX
#: A frame carries at most 65535 bytes of ciphertext; 16 are the AEAD tag.
MAX_PLAINTEXT = PLAINTEXT_MAX
#: An ``app`` body: a plaintext less what the map around it takes.
APP_MAX_BODY = APP_BODY_MAX

Kind = KindName


@record
class Message(Record):
    TYPE: ClassVar[str] = ""
    V: ClassVar[int] = 1


#: ``@message(type, v=1)``: a record class, registered by its ``t``.
message = registry(MESSAGES, "TYPE", "V", V=1)


# --- handshake payloads ----------------------------------------------------------------


@record
class IdentityProof(Record):
    """Payload of Noise messages 2 and 3: who owns this Noise static key.

    ``sig`` is the Ed25519 signature, by ``key``, of
    ``"tazcom-noise-static:" || the sender's Noise static public key``.
    """

    v: Annotated[int, Range(1, 1)]
    key: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
    sig: Annotated[bytes, Len(SIG_BYTES, SIG_BYTES)]


# --- transport messages --------------------------------------------------------------


@message("hello")
class Hello(Message):
    """First message each side sends once the handshake is complete."""

    #: Oldest and newest link protocol versions the sender speaks.
    versions: Annotated[tuple[Annotated[int, Range(1, 65535)], ...], Len(2, 2)]
    nickname: Nickname
    #: Optional features the sender supports (e.g. "app/1").
    caps: Annotated[tuple[KindName, ...], Len(0, 32)] = ()
    #: The sender's own wall clock (unix milliseconds, uncorrected) as it sent this
    #: hello; None: not said (older nodes). The receiver's offset sample (common/clock.py).
    clock_ms: Annotated[int, Range(0, 2**53 - 1)] | None = None


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

    reason: RejectCode
    message: Detail = ""


@message("app")
class App(Message):
    """A payload for a service of the peer (e.g. the router), opaque to the gateway."""

    FAST_VALUES: ClassVar[bool] = True  # every frame of every link: app_fields
    kind: Kind
    body: Annotated[bytes, Len(0, APP_BODY_MAX)]


@message("part")
class Part(Message):
    """A piece of one bulk ``app`` message (a file chunk), sent only to a peer that said
    ``part/1``: the pieces of a message go in order with nothing of bulk between them (chat
    and control messages may), and the receiver takes the message, ``kind`` and the bodies
    joined, when the ``last`` arrives (common/link.py, 3.)."""

    kind: Kind
    body: Annotated[bytes, Len(1, PART_BODY_MAX)]
    #: This piece ends the message.
    last: bool


def encode_message(msg: Message) -> bytes:
    # An optional field that is nil is left out: absent and nil mean the same (a hello
    # without ``clock_ms`` is the same bytes as before the field existed).
    body = {k: v for k, v in msg.to_dict().items() if v is not None}
    body["t"] = msg.TYPE
    body["v"] = msg.V
    return codec.pack(body)


def decode_message(data: bytes) -> Message:
    """Parse one decrypted transport payload; raises SchemaError/RemoteProtocolError."""
    return decode_message_obj(codec.unpack(data, MAX_PLAINTEXT))


def encode_app(kind: str, body: bytes) -> bytes:
    """``encode_message(App(kind=kind, body=body))``, the same bytes, without building the
    record (hot path); raises ``SchemaError`` when ``App`` rejects the fields."""
    msg = {"kind": kind, "body": body, "t": App.TYPE, "v": App.V}
    App._values_of(msg)  # type: ignore[attr-defined]
    return codec.pack(msg)


def app_fields(obj: Any) -> tuple[str, bytes] | None:
    """(kind, body) when ``obj`` is a valid ``app`` message map, else None (hot path):
    ``decode_message_obj`` for the one type that every frame of chat is."""
    if type(obj) is dict and obj.get("t") == "app" and type(obj.get("v")) is int \
            and obj["v"] == App.V:
        try:
            return App._values_of(obj)  # type: ignore[attr-defined,no-any-return]
        except SchemaError:
            return None
    return None


def decode_message_obj(obj: Any) -> Message:
    """Validate an unpacked transport payload against its one definition."""
    if not isinstance(obj, dict):
        raise SchemaError("a link message is a map", code="bad_message")
    t = obj.get("t")
    if type(t) is not str:  # a list or map here is not even hashable: refused, never looked up
        raise SchemaError(f"a link message's t is a string, not {shown(t)}",
                          code="bad_message")
    cls = MESSAGES.get(t)
    if cls is None:
        raise SchemaError(f"unknown message type {shown(t)}", code="unknown_type")
    v = obj.get("v")
    if type(v) is not int or v != cls.V:
        raise SchemaError(f"{cls.TYPE}: unsupported version {shown(v)}", code="bad_version")
    return cls.from_dict(obj)


def shown(x: Any, limit: int = 60) -> str:
    """A value from a peer as log-safe text: a container by its type, anything else in
    ASCII with backslash escapes (so terminal escape sequences are inert), cut to ``limit``."""
    if isinstance(x, list | dict):
        return f"a {type(x).__name__}"
    return ascii(x[: limit] if isinstance(x, str | bytes) else x)[:limit]


def encode_proof(proof: IdentityProof) -> bytes:
    return codec.pack(proof.to_dict())


def decode_proof(data: bytes) -> IdentityProof:
    obj: Any = codec.unpack(data, 1024)
    return IdentityProof.from_dict(obj)
