"""Chat envelopes: what travels across the mesh, signed by its origin.

An envelope is the msgpack array (docs/protocol.md, "Envelopes")::

    [2, kind, origin, seq, ts, to, body, cert]

signed over ``"tazcom-envelope:" || those bytes`` by the delegated key that
``cert`` (common/certs.py) certifies for ``origin``, or, when ``cert`` is nil (a
revocation), by ``origin``'s long-term key. Version 1, ``[1, kind, origin, seq,
ts, to, body]`` signed by ``origin``'s long-term key, is still accepted (kinds 1-4).
Its id is BLAKE2b-128 of the signed bytes, so an id names exactly one signed
message.
Relays check the signature before they store, show or pass anything on; the
hop count travels beside the envelope, outside the signature, and each relay
increments it.

Kinds and their bodies:

* ``room`` (1): UTF-8 text for everyone; ``to`` is nil.
* ``dm`` (2): a sealed box (X25519, PyNaCl ``SealedBox``) to the recipient's
  encryption key, holding ``{"from": origin, "text": str}``; relays see only
  the envelope. A body no box can be (under 48 or over 4352 bytes) is refused
  at parsing, so it never reaches the identity service. The recipient checks
  that ``from`` equals the envelope's origin, so nobody can re-sign someone
  else's ciphertext as their own.
* ``receipt`` (3): a msgpack array of the ids of DMs the recipient ``to``'s
  messages that ``origin`` has received.
* ``profile`` (4): ``{"nick": str, "enc": 32 bytes, "links": [32-byte keys]}``:
  who ``origin`` is, the X25519 key that DMs to it are sealed to, and the
  neighbours it has verified links with. Flooded at start, whenever its links
  change and every two minutes, so every node knows the mesh's shape: a node
  is reachable when a path of links both ends confirm leads to it
  (``common.gossip.distances``). ``since`` (unix ms) says since when ``enc`` has
  been the key: a sender whose DM was sealed to an older key knows when the
  recipient erases it.
* ``revoke`` (5): ``[dkey, at]``: the origin revokes its delegated key ``dkey``
  from ``at`` (unix ms) on. Signed by the long-term key (``cert`` nil), flooded
  like a profile.
* ``file`` (6): a file's manifest (common/filemanifest.py).
* ``group_ctl`` (7): a private group's control message to one member ``to``: a
  sealed box to its DM key holding ``{"from": origin, "type": "op" | "welcome" |
  "key", "body": bytes}`` (common/groupwire.py bodies). Routed, held and
  acknowledged like a DM; relays see only that ``origin`` wrote to ``to``.
* ``group`` (8): a private group's message: ``to`` is the group id, the body a
  ``groupwire`` message (``[1, group, epoch, index, ciphertext]``, its group
  equal to ``to``), encrypted once with the sender's chain. Flooded, stored and
  caught up like a room message; only members can open it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import nacl.public

from . import codec, filemanifest, groupwire
from .errors import RemoteProtocolError, SchemaError
from .events import Nickname
from .limits import (
    CERT_MAX,
    DM_BODY_MAX,
    ENVELOPE_BODY_MAX,
    HOPS_MAX,
    ID_BYTES,
    KEY_BYTES,
    PROFILE_LINKS_MAX,
    RECEIPT_IDS_MAX,
    SEALED_BOX_MIN,
    SIG_BYTES,
    SIGNED_MAX,
    TEXT_MAX,
)
from .schema import ArrayRecord, Code, Key, Len, Range, Record, Spread, record

ENVELOPE_V = 2
#: The versions this node reads (docs/protocol.md, "Envelope versions").
ENVELOPE_VERSIONS = (1, 2)
KIND_ROOM = 1
KIND_DM = 2
KIND_RECEIPT = 3
KIND_PROFILE = 4
KIND_REVOKE = 5
#: A file's manifest (common/filemanifest.py; docs/protocol.md, "Files").
KIND_FILE = 6
#: Private groups (common/groupwire.py; docs/protocol.md, "Private groups").
KIND_GROUP_CTL = 7
KIND_GROUP = 8
KIND_NAMES = {KIND_ROOM: "room", KIND_DM: "dm", KIND_RECEIPT: "receipt", KIND_PROFILE: "profile",
              KIND_REVOKE: "revoke", KIND_FILE: "file", KIND_GROUP_CTL: "group_ctl",
              KIND_GROUP: "group"}
#: Kinds addressed to one recipient when ``to`` is set: they follow paths, are held by
#: relays and answered by receipts.
ADDRESSED = (KIND_DM, KIND_RECEIPT, KIND_FILE, KIND_GROUP_CTL)
#: The kinds only nodes that said ``group/1`` read.
GROUP_KINDS = (KIND_GROUP_CTL, KIND_GROUP)
GROUP_CTL_TYPES = ("op", "welcome", "key")
MAX_TEXT_BYTES = TEXT_MAX
#: A DM's body: the sealed box of the text and the origin (48 bytes of box overhead).
MAX_DM_BODY = DM_BODY_MAX
MAX_RECEIPT_IDS = RECEIPT_IDS_MAX
MAX_BODY = ENVELOPE_BODY_MAX
MAX_SIGNED = SIGNED_MAX
MAX_HOPS_LIMIT = HOPS_MAX
DEFAULT_HOP_LIMIT = 8
MAX_PROFILE_LINKS = PROFILE_LINKS_MAX

Key32 = Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
MessageId = Annotated[bytes, Len(ID_BYTES, ID_BYTES)]
#: The text of a room message or a DM: over 4096 bytes of UTF-8 is ``too_large``.
BodyText = Annotated[str, Len(0, TEXT_MAX, utf8=True), Code("too_large")]


class EnvelopeError(RemoteProtocolError):
    code = "bad_envelope"


# --- the one definition of the envelope and of each kind's body ------------------------------


@record
class SignedFieldsV1(ArrayRecord):
    """Version 1, signed by the origin's long-term key: ``[1, kind, origin, seq, ts, to,
    body]``."""

    CODE: ClassVar[str] = "bad_envelope"
    TAG: ClassVar[Any] = 1
    TAG_CODE: ClassVar[str | None] = "bad_version"

    kind: Annotated[Literal[1, 2, 3, 4], Code("bad_kind")]
    origin: Key32
    seq: Annotated[int, Range(0, 2**63 - 1)]
    #: Written at, unix milliseconds (the origin's clock).
    ts: Annotated[int, Range(0, 2**53 - 1)]
    #: The recipient of a DM or receipt; nil for the room and profiles.
    to: Key32 | None
    body: Annotated[bytes, Len(0, ENVELOPE_BODY_MAX)]


@record
class SignedFields(ArrayRecord):
    """What is signed: ``[2, kind, origin, seq, ts, to, body, cert]``."""

    CODE: ClassVar[str] = "bad_envelope"
    TAG: ClassVar[Any] = ENVELOPE_V
    TAG_CODE: ClassVar[str | None] = "bad_version"

    kind: Annotated[Literal[1, 2, 3, 4, 5, 6, 7, 8], Code("bad_kind")]
    origin: Key32
    seq: Annotated[int, Range(0, 2**63 - 1)]
    #: Written at, unix milliseconds (the origin's clock).
    ts: Annotated[int, Range(0, 2**53 - 1)]
    #: The recipient of a DM or receipt; nil for the room, profiles and revocations.
    to: Key32 | None
    body: Annotated[bytes, Len(0, ENVELOPE_BODY_MAX)]
    #: The certificate of the delegated key that signed (common/certs.py); nil: signed by
    #: the origin's long-term key (revocations only).
    cert: Annotated[bytes, Len(1, CERT_MAX)] | None


@record
class RevokeBody(ArrayRecord):
    """A revocation's body, ``[dkey, at]``: the delegated key, refused from ``at`` (ms)."""

    CODE: ClassVar[str] = "bad_envelope"

    dkey: Key32
    at: Annotated[int, Range(0, 2**53 - 1)]


@record
class RoomBody(Record):
    """A room message's body: its text as UTF-8 (the bytes, not a msgpack value)."""

    CODE: ClassVar[str] = "bad_envelope"

    text: BodyText


@record
class ReceiptBody(ArrayRecord):
    """A receipt's body, ``[id, ...]``: DMs from ``to`` that the origin has received."""

    CODE: ClassVar[str] = "bad_envelope"

    ids: Annotated[tuple[MessageId, ...], Len(1, RECEIPT_IDS_MAX), Spread()]


@record
class ProfileBody(Record):
    """A profile's body: who the origin is, the key DMs to it are sealed to, its links."""

    CODE: ClassVar[str] = "bad_envelope"

    nick: Nickname
    enc: Key32
    #: The nodes it has verified links with, sorted.
    links: Annotated[tuple[Key32, ...], Len(0, PROFILE_LINKS_MAX)] = ()
    #: Since when ``enc`` is the key DMs are sealed to (unix ms; 0: not said).
    since: Annotated[int, Range(0, 2**53 - 1)] = 0


@record
class DmInner(Record):
    """What a DM's sealed box holds: its author (the envelope's origin) and the text."""

    CODE: ClassVar[str] = "bad_envelope"

    author: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES), Key("from")]
    text: BodyText


@record
class GroupCtlInner(Record):
    """What a ``group_ctl`` box holds: its author (the envelope's origin), what it is, and
    the ``groupwire`` body."""

    CODE: ClassVar[str] = "bad_envelope"

    author: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES), Key("from")]
    what: Annotated[Literal["op", "welcome", "key"], Key("type")]
    body: Annotated[bytes, Len(1, ENVELOPE_BODY_MAX)]


def _error(e: SchemaError) -> EnvelopeError:
    return EnvelopeError(e.message, code=e.code)


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: int
    origin: bytes
    seq: int
    ts: int  # milliseconds
    to: bytes | None
    body: bytes
    signed: bytes
    sig: bytes
    id: bytes
    version: int = ENVELOPE_V
    #: The delegated key's certificate; None: signed by the origin's long-term key.
    cert: bytes | None = None

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]


def message_id(signed: bytes) -> bytes:
    return hashlib.blake2b(signed, digest_size=ID_BYTES).digest()


def signed_bytes(*, kind: int, origin: bytes, seq: int, ts: int, to: bytes | None,
                 body: bytes, cert: bytes | None = None, version: int | None = None) -> bytes:
    """The bytes that are signed; raises ``EnvelopeError`` for fields ``SignedFields``
    refuses. Without ``cert``, version 1 (signed by the origin's long-term key, as tests
    and old nodes do) unless ``version=2`` says otherwise (a revocation)."""
    if version is None:
        version = 1 if cert is None else ENVELOPE_V
    try:
        if version == 1:
            if cert is not None:
                raise _fail("bad_envelope", "a version 1 envelope has no certificate")
            fields: ArrayRecord = SignedFieldsV1(kind, origin, seq, ts, to, body)  # type: ignore[arg-type]
        else:
            fields = SignedFields(kind, origin, seq, ts, to, body, cert)  # type: ignore[arg-type]
    except SchemaError as e:
        raise _error(e) from None
    return codec.pack(fields.to_array())


def _fail(code: str, why: str) -> EnvelopeError:
    return EnvelopeError(why, code=code)


def parse(signed: bytes, sig: bytes) -> Envelope:
    """Check an envelope's shape (not yet its signature); raises EnvelopeError."""
    if type(signed) is not bytes or not 0 < len(signed) <= MAX_SIGNED:
        raise _fail("bad_envelope", "signed bytes missing or too large")
    if type(sig) is not bytes or len(sig) != SIG_BYTES:
        raise _fail("bad_envelope", "signature must be 64 bytes")
    try:
        fields = msgpack.unpackb(signed, raw=False, strict_map_key=True, max_bin_len=MAX_SIGNED,
                                 max_str_len=64, max_array_len=8, max_map_len=0, max_ext_len=0)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError):
        raise _fail("bad_envelope", "signed bytes are not a msgpack envelope") from None
    if type(fields) is not list or not fields:
        raise _fail("bad_envelope", "an envelope is an array")
    version = fields[0]
    if version not in ENVELOPE_VERSIONS or type(version) is not int:
        raise _fail("bad_version", f"envelope version {str(version)[:20]!r}; this node reads "
                                   f"{', '.join(map(str, ENVELOPE_VERSIONS))}")
    if len(fields) != 6 + version:
        raise _fail("bad_envelope", f"a version {version} envelope is an array of {6 + version}")
    try:
        f = (SignedFields if version == 2 else SignedFieldsV1).from_array(fields)
    except SchemaError as e:
        raise _error(e) from None
    kind, origin, seq, ts, to, body = f.kind, f.origin, f.seq, f.ts, f.to, f.body
    cert = getattr(f, "cert", None)
    if kind == KIND_REVOKE:
        if version == 1:
            raise _fail("bad_kind", "a revocation is a version 2 envelope")
        if cert is not None:
            raise _fail("bad_envelope", "a revocation is signed by the origin's long-term key")
        revoked_key(body)
    elif version == 2 and cert is None:
        raise _fail("bad_cert", f"a {KIND_NAMES[kind]} needs its delegated key's certificate")
    if kind == KIND_FILE:
        if version == 1:
            raise _fail("bad_kind", "a file manifest is a version 2 envelope")
        file_manifest(body, dm=to is not None)
    elif kind == KIND_GROUP_CTL:
        if to is None:
            raise _fail("bad_envelope", "a group_ctl needs a recipient")
        if len(body) < SEALED_BOX_MIN:
            raise _fail("bad_envelope", f"a group_ctl body is a sealed box of at least "
                                        f"{SEALED_BOX_MIN} bytes")
    elif kind == KIND_GROUP:
        if to is None:
            raise _fail("bad_envelope", "a group message names its group in to")
        group_msg(body, to)
    elif kind in (KIND_ROOM, KIND_PROFILE, KIND_REVOKE):
        if to is not None:
            raise _fail("bad_envelope", f"a {KIND_NAMES[kind]} message has no recipient")
    elif to is None:
        raise _fail("bad_envelope", f"a {KIND_NAMES[kind]} needs a recipient")
    if kind == KIND_ROOM:
        room_text(body)
    elif kind == KIND_DM:
        if len(body) > MAX_DM_BODY:
            raise _fail("too_large", "DM body too large")
        if len(body) < SEALED_BOX_MIN:  # never opened: no box is that small
            raise _fail("bad_envelope", f"a DM body is a sealed box of {SEALED_BOX_MIN}.."
                                        f"{MAX_DM_BODY} bytes, not {len(body)}")
    elif kind == KIND_RECEIPT:
        receipt_ids(body)
    elif kind == KIND_PROFILE:
        profile_fields(body)
    return Envelope(kind=kind, origin=origin, seq=seq, ts=ts, to=to, body=body,
                    signed=signed, sig=sig, id=message_id(signed), version=version, cert=cert)


def version_of(signed: bytes) -> int | None:
    """The version of an envelope's signed bytes, without parsing them (a fixarray, then a
    positive fixint)."""
    if len(signed) > 1 and 0x90 <= signed[0] <= 0x9F and signed[1] < 0x80:
        return signed[1]
    return None


def kind_of(signed: bytes) -> int | None:
    """The kind of an envelope's signed bytes, without parsing them (``[version, kind,
    ...]``: a fixarray, then two positive fixints)."""
    if len(signed) > 2 and 0x90 <= signed[0] <= 0x9F and signed[1] < 0x80 and signed[2] < 0x80:
        return signed[2]
    return None


def verify(env: Envelope) -> None:
    """Raise EnvelopeError unless the envelope is signed as its version requires, with no
    memory of certificates (a ``certs.Verifier`` caches them, and knows revocations)."""
    from .certs import Verifier

    Verifier(cache_size=1)(env)


def revoked_key(body: bytes) -> tuple[bytes, int]:
    """A revocation's ``(dkey, at)``; raises ``EnvelopeError``."""
    try:
        r = RevokeBody.from_array(codec.unpack(body, MAX_BODY))
    except SchemaError as e:
        raise _error(e) from None
    except RemoteProtocolError:
        raise _fail("bad_envelope", "revocation body is not msgpack") from None
    return r.dkey, r.at


def revoke_body(dkey: bytes, at_ms: int) -> bytes:
    return codec.pack(RevokeBody(dkey, at_ms).to_array())


# --- bodies --------------------------------------------------------------------------------


def file_manifest(body: bytes, *, dm: bool) -> filemanifest.Manifest:
    """A file envelope's manifest (a room file's when ``dm`` is false); raises
    ``EnvelopeError`` with the manifest's code (``bad_manifest``, ``too_large``...)."""
    try:
        return filemanifest.decode(body, dm=dm)
    except RemoteProtocolError as e:
        raise _fail(e.code, f"file manifest: {e.message}") from None


def room_body(text: str) -> bytes:
    """The body of a room message; raises ``EnvelopeError`` (too_large) over the limit."""
    try:
        return RoomBody(text=text).text.encode()
    except SchemaError as e:
        raise _error(e) from None


def room_text(body: bytes) -> str:
    if len(body) > MAX_TEXT_BYTES:  # before decoding it: the limit is in bytes
        raise _fail("too_large", f"room text over {MAX_TEXT_BYTES} bytes")
    try:
        return RoomBody(text=body.decode()).text
    except UnicodeDecodeError:
        raise _fail("bad_envelope", "room text is not UTF-8") from None
    except SchemaError as e:
        raise _error(e) from None


def receipt_ids(body: bytes) -> list[bytes]:
    try:
        return list(ReceiptBody.from_array(codec.unpack(body, MAX_BODY)).ids)
    except SchemaError as e:
        raise _error(e) from None
    except RemoteProtocolError:
        raise _fail("bad_envelope", "receipt body is not msgpack") from None


def receipt_body(ids: list[bytes]) -> bytes:
    try:
        return codec.pack(ReceiptBody(tuple(ids)).to_array())
    except SchemaError as e:
        raise _error(e) from None


@dataclass(frozen=True, slots=True)
class Profile:
    nickname: str
    enc_key: bytes
    links: frozenset[bytes] = frozenset()
    #: Since when ``enc_key`` is the key (unix ms; 0: not said).
    since: int = 0


def profile_fields(body: bytes) -> Profile:
    try:
        prof = ProfileBody.from_dict(codec.unpack(body, MAX_BODY))
    except SchemaError as e:
        raise _error(e) from None
    except RemoteProtocolError:
        raise _fail("bad_envelope", "profile body is not msgpack") from None
    return Profile(nickname=prof.nick, enc_key=prof.enc, links=frozenset(prof.links),
                   since=prof.since)


def profile_body(nickname: str, enc_key: bytes, links: list[bytes] | None = None,
                 since: int = 0) -> bytes:
    try:
        prof = ProfileBody(nick=nickname, enc=enc_key, links=tuple(sorted(links or ())),
                           since=since)
    except SchemaError as e:
        raise _error(e) from None
    fields = prof.to_dict()
    if not since:
        del fields["since"]  # unsaid: the same bytes as a profile from before it existed
    return codec.pack(fields)


def group_msg(body: bytes, group: bytes) -> Any:
    """A group message's body (``groupwire.MsgBody``), checked to be for ``group``."""
    try:
        m = groupwire.decode_msg(body)
    except RemoteProtocolError as e:
        raise _fail(e.code if e.code == "too_large" else "bad_envelope",
                    f"group message: {e.message}") from None
    if m.group != group:
        raise _fail("bad_envelope", "a group message for another group than its to")
    return m


def seal_group_ctl(*, origin: bytes, what: str, body: bytes, recipient_enc_key: bytes
                   ) -> bytes:
    """A ``group_ctl`` body: ``body`` and its author, sealed to the recipient."""
    try:
        inner = codec.pack(GroupCtlInner(author=origin, what=what,  # type: ignore[arg-type]
                                         body=body).to_dict())
    except SchemaError as e:
        raise _error(e) from None
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient_enc_key)).encrypt(inner)


def _opened(plaintext: bytes, origin: bytes, record: Any, limit: int, what: str) -> Any:
    """An opened sealed box's map as ``record``, checked to be ``origin``'s (its ``from``):
    nobody can re-sign someone else's ciphertext as their own."""
    try:
        obj: Any = codec.unpack(plaintext, limit)
    except RemoteProtocolError:
        raise _fail("bad_envelope", f"opened {what} is not msgpack") from None
    if type(obj) is not dict or obj.get("from") != origin:
        raise _fail("bad_author", "the sealed author differs from the envelope's origin")
    try:
        return record.from_dict(obj)
    except SchemaError as e:
        raise _error(e) from None


def group_ctl_inner(plaintext: bytes, origin: bytes) -> tuple[str, bytes]:
    """Check an opened ``group_ctl`` belongs to its envelope; returns (type, body)."""
    inner = _opened(plaintext, origin, GroupCtlInner, MAX_BODY, "group_ctl")
    return inner.what, inner.body


def dm_plaintext(*, origin: bytes, text: str) -> bytes:
    """What a DM seals: ``{"from": origin, "text": text}``; raises ``EnvelopeError``
    (too_large over the text limit)."""
    try:
        return codec.pack(DmInner(author=origin, text=text).to_dict())
    except SchemaError as e:
        raise _error(e) from None


def seal_dm(*, origin: bytes, text: str, recipient_enc_key: bytes) -> bytes:
    """The body of a DM: the text and its author, sealed to the recipient."""
    inner = dm_plaintext(origin=origin, text=text)
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient_enc_key)).encrypt(inner)


def dm_inner(plaintext: bytes, origin: bytes) -> str:
    """Check an opened DM belongs to its envelope; returns the text."""
    return _opened(plaintext, origin, DmInner, MAX_DM_BODY, "DM").text
