"""Chat envelopes: what travels across the mesh, signed by its origin.

An envelope is the msgpack array (docs/protocol.md, "Envelopes")::

    [1, kind, origin, seq, ts, to, body]

signed by ``origin`` over ``"tazcom-envelope:" || those bytes``. Its id is
BLAKE2b-128 of the signed bytes, so an id names exactly one signed message.
Relays check the signature before they store, show or pass anything on; the
hop count travels beside the envelope, outside the signature, and each relay
increments it.

Kinds and their bodies:

* ``room`` (1): UTF-8 text for everyone; ``to`` is nil.
* ``dm`` (2): a sealed box (X25519, PyNaCl ``SealedBox``) to the recipient's
  encryption key, holding ``{"from": origin, "text": str}``; relays see only
  the envelope. The recipient checks that ``from`` equals the envelope's
  origin, so nobody can re-sign someone else's ciphertext as their own.
* ``receipt`` (3): a msgpack array of the ids of DMs the recipient ``to``'s
  messages that ``origin`` has received.
* ``profile`` (4): ``{"nick": str, "enc": 32 bytes, "links": [32-byte keys]}``:
  who ``origin`` is, the X25519 key that DMs to it are sealed to, and the
  neighbours it has verified links with. Flooded at start, whenever its links
  change and every two minutes, so every node knows the mesh's shape: a node
  is reachable when a path of links both ends confirm leads to it
  (``common.gossip.distances``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.exceptions
import nacl.public
import nacl.signing

from . import codec
from .errors import RemoteProtocolError
from .keys import DOMAIN_ENVELOPE, KEY_BYTES, SIG_BYTES

ENVELOPE_V = 1
KIND_ROOM = 1
KIND_DM = 2
KIND_RECEIPT = 3
KIND_PROFILE = 4
KIND_NAMES = {KIND_ROOM: "room", KIND_DM: "dm", KIND_RECEIPT: "receipt", KIND_PROFILE: "profile"}
ID_BYTES = 16
MAX_TEXT_BYTES = 4096
#: A DM's body: the sealed box of the text and the origin (48 bytes of box overhead).
MAX_DM_BODY = MAX_TEXT_BYTES + 256
MAX_RECEIPT_IDS = 256
MAX_BODY = MAX_DM_BODY + 512
MAX_SIGNED = MAX_BODY + 128
MAX_HOPS_LIMIT = 16
DEFAULT_HOP_LIMIT = 8


class EnvelopeError(RemoteProtocolError):
    code = "bad_envelope"


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

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]


def message_id(signed: bytes) -> bytes:
    return hashlib.blake2b(signed, digest_size=ID_BYTES).digest()


def signed_bytes(*, kind: int, origin: bytes, seq: int, ts: int, to: bytes | None,
                 body: bytes) -> bytes:
    return codec.pack([ENVELOPE_V, kind, origin, seq, ts, to, body])


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
    if type(fields) is not list or len(fields) != 7:
        raise _fail("bad_envelope", "an envelope is an array of 7")
    v, kind, origin, seq, ts, to, body = fields
    if v != ENVELOPE_V or type(v) is not int:
        raise _fail("bad_version", f"envelope version {v!r}")
    if type(kind) is not int or kind not in KIND_NAMES:
        raise _fail("bad_kind", f"unknown envelope kind {kind!r}")
    if type(origin) is not bytes or len(origin) != KEY_BYTES:
        raise _fail("bad_envelope", "origin must be a 32-byte key")
    if type(seq) is not int or not 0 <= seq < 2**63:
        raise _fail("bad_envelope", "seq must be a non-negative integer")
    if type(ts) is not int or not 0 <= ts < 2**53:
        raise _fail("bad_envelope", "ts must be milliseconds")
    if to is not None and (type(to) is not bytes or len(to) != KEY_BYTES):
        raise _fail("bad_envelope", "to must be nil or a 32-byte key")
    if type(body) is not bytes or len(body) > MAX_BODY:
        raise _fail("bad_envelope", "body must be bytes")
    if kind in (KIND_ROOM, KIND_PROFILE):
        if to is not None:
            raise _fail("bad_envelope", f"a {KIND_NAMES[kind]} message has no recipient")
    elif to is None:
        raise _fail("bad_envelope", f"a {KIND_NAMES[kind]} needs a recipient")
    if kind == KIND_ROOM:
        room_text(body)
    elif kind == KIND_DM and len(body) > MAX_DM_BODY:
        raise _fail("too_large", "DM body too large")
    elif kind == KIND_RECEIPT:
        receipt_ids(body)
    elif kind == KIND_PROFILE:
        profile_fields(body)
    return Envelope(kind=kind, origin=origin, seq=seq, ts=ts, to=to, body=body,
                    signed=signed, sig=sig, id=message_id(signed))


def verify(env: Envelope) -> None:
    """Raise EnvelopeError(bad_signature) unless ``origin`` signed the envelope."""
    try:
        nacl.signing.VerifyKey(env.origin).verify(DOMAIN_ENVELOPE + env.signed, env.sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise _fail("bad_signature", "the origin's signature does not verify") from None


# --- bodies --------------------------------------------------------------------------------


def room_text(body: bytes) -> str:
    if len(body) > MAX_TEXT_BYTES:
        raise _fail("too_large", f"room text over {MAX_TEXT_BYTES} bytes")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise _fail("bad_envelope", "room text is not UTF-8") from None


def receipt_ids(body: bytes) -> list[bytes]:
    try:
        ids = codec.unpack(body, MAX_BODY)
    except RemoteProtocolError:
        raise _fail("bad_envelope", "receipt body is not msgpack") from None
    if (type(ids) is not list or not 1 <= len(ids) <= MAX_RECEIPT_IDS
            or any(type(i) is not bytes or len(i) != ID_BYTES for i in ids)):
        raise _fail("bad_envelope", "a receipt lists 1..256 message ids")
    return ids


def receipt_body(ids: list[bytes]) -> bytes:
    return codec.pack(list(ids))


MAX_PROFILE_LINKS = 256


@dataclass(frozen=True, slots=True)
class Profile:
    nickname: str
    enc_key: bytes
    links: frozenset[bytes] = frozenset()


def profile_fields(body: bytes) -> Profile:
    try:
        obj = codec.unpack(body, MAX_BODY)
    except RemoteProtocolError:
        raise _fail("bad_envelope", "profile body is not msgpack") from None
    if type(obj) is not dict:
        raise _fail("bad_envelope", "a profile is a map")
    nick, enc = obj.get("nick"), obj.get("enc")
    if type(nick) is not str or not 1 <= len(nick.encode()) <= 32 or not nick.isprintable():
        raise _fail("bad_envelope", "profile nickname must be 1..32 printable bytes")
    if type(enc) is not bytes or len(enc) != KEY_BYTES:
        raise _fail("bad_envelope", "profile encryption key must be 32 bytes")
    links = obj.get("links", [])
    if type(links) is not list or len(links) > MAX_PROFILE_LINKS or any(
            type(k) is not bytes or len(k) != KEY_BYTES for k in links):
        raise _fail("bad_envelope", "profile links must be a list of 32-byte keys")
    return Profile(nickname=nick, enc_key=enc, links=frozenset(links))


def profile_body(nickname: str, enc_key: bytes, links: list[bytes] | None = None) -> bytes:
    return codec.pack({"nick": nickname, "enc": enc_key, "links": sorted(links or [])})


def seal_dm(*, origin: bytes, text: str, recipient_enc_key: bytes) -> bytes:
    """The body of a DM: the text and its author, sealed to the recipient."""
    data = text.encode()
    if len(data) > MAX_TEXT_BYTES:
        raise EnvelopeError(f"text over {MAX_TEXT_BYTES} bytes", code="too_large")
    inner = codec.pack({"from": origin, "text": text})
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient_enc_key)).encrypt(inner)


def dm_inner(plaintext: bytes, origin: bytes) -> str:
    """Check an opened DM belongs to its envelope; returns the text."""
    try:
        obj: Any = codec.unpack(plaintext, MAX_DM_BODY)
    except RemoteProtocolError:
        raise _fail("bad_envelope", "opened DM is not msgpack") from None
    if type(obj) is not dict or obj.get("from") != origin:
        raise _fail("bad_author", "the sealed author differs from the envelope's origin")
    text = obj.get("text")
    if type(text) is not str or len(text.encode()) > MAX_TEXT_BYTES:
        raise _fail("bad_envelope", "opened DM has no valid text")
    return text
