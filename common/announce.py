"""The signed mDNS announcement of a node (docs/protocol.md, "mDNS record").

A node announces ``tz-<first 16 hex of its key>._tazcom._tcp.local.`` with an
SRV record (gateway port), A and AAAA records (its addresses) and a TXT record:

=====  =====================================================  ================
key    value                                                  limits
=====  =====================================================  ================
tv     TXT format version, ``1``                              ASCII digits
k      Ed25519 public key, lowercase hex                      64 chars
p      gateway TCP port, decimal; must equal the SRV port     1..65535
n      nickname, UTF-8                                        1..32 bytes
t      signing time, unix seconds, decimal                    0..2^40
s      Ed25519 signature, lowercase hex                       128 chars
=====  =====================================================  ================

The signature is made by the identity service over
``"tazcom-mdns-txt:" || canonical(TXT without "s")`` where ``canonical`` is,
for each entry sorted by key bytes, ``u8(len(key)) || key || u8(len(value))
|| value``. Entries a receiver does not know are still covered by the
signature, and are otherwise ignored.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import nacl.exceptions
import nacl.signing

from .addresses import ip_of, is_link_local, join, parse_host, scope_of
from .errors import RemoteProtocolError, SchemaError
from .events import HexKey, Nickname
from .keys import DOMAIN_MDNS_TXT, NodeKey, fingerprint
from .limits import (
    KEY_BYTES,
    MDNS_ADDRESSES_MAX,
    NICK_MAX,
    SIG_BYTES,
    TXT_ENTRIES_MAX,
    UNIX_TIME_MAX,
)
from .schema import Len, Range, Record, fields, record

TXT_VERSION = 1
MAX_TXT_ENTRIES = TXT_ENTRIES_MAX
MAX_ADDRESSES = MDNS_ADDRESSES_MAX
NICK_MAX_BYTES = NICK_MAX
#: A TXT string (``key=value``) is at most 255 bytes (RFC 6763 §6.1).
TXT_STRING_MAX = 255


@record
class TxtRecord(Record):
    """The TXT entries of a node's record, as meant; on the wire each is ``key=value`` text:
    ints in decimal, bytes in lowercase hex, strings in UTF-8 (``to_txt``/``from_txt``)."""

    CODE: ClassVar[str] = "bad_txt"

    #: The TXT format version (the text ``1``).
    tv: Literal["1"]
    #: The node's key.
    k: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
    #: The gateway's TCP port; equals the SRV port.
    p: Annotated[int, Range(1, 65535)]
    #: The nickname.
    n: Nickname
    #: When it was signed, unix seconds.
    t: Annotated[int, Range(0, UNIX_TIME_MAX)]
    #: Ed25519 signature of ``"tazcom-mdns-txt:" || canonical(TXT without s)``; None unsigned.
    s: Annotated[bytes, Len(SIG_BYTES, SIG_BYTES)] | None = None


@record
class AnnounceFile(Record):
    """``$TAZCOM_HOME/announce.json``: our last signed record, announced at once at the next
    start (``txt`` holds the TXT entries as latin-1 text)."""

    key: HexKey
    txt: Annotated[dict[Annotated[str, Len(1, TXT_STRING_MAX)],
                        Annotated[str, Len(0, TXT_STRING_MAX)]], Len(1, TXT_ENTRIES_MAX)]


def instance_label(key: bytes) -> str:
    """Instance label of the node with ``key``: unique on the LAN by construction."""
    return f"tz-{key.hex()[:16]}"


def canonical(txt: dict[bytes, bytes]) -> bytes:
    """The bytes covered by the signature (without the domain prefix)."""
    out = bytearray()
    for k in sorted(txt):
        if k == b"s":
            continue
        v = txt[k]
        out += bytes((len(k),)) + k + bytes((len(v),)) + v
    return bytes(out)


@functools.cache
def _kinds() -> dict[str, tuple[type, Len | None]]:
    """Each TXT field's base type and length, from ``TxtRecord``'s annotations."""
    out = {}
    hints = typing.get_type_hints(TxtRecord, include_extras=True)
    for name in (f.name for f in fields(TxtRecord)):
        tp = hints[name]
        length = None
        if typing.get_origin(tp) is typing.Annotated:
            tp, *extra = typing.get_args(tp)
            length = next((c for c in extra if isinstance(c, Len)), None)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if args and typing.get_origin(tp) is not Literal:  # T | None
            tp = args[0]
            if typing.get_origin(tp) is typing.Annotated:
                tp, *extra = typing.get_args(tp)
                length = next((c for c in extra if isinstance(c, Len)), None)
        out[name] = (str if typing.get_origin(tp) is Literal else tp, length)
    return out


def to_txt(rec: TxtRecord) -> dict[bytes, bytes]:
    """The TXT entries of ``rec`` (``s`` only when signed), in field order."""
    out = {}
    for name, (tp, _) in _kinds().items():
        value = getattr(rec, name)
        if value is None:
            continue
        text = value.hex() if tp is bytes else str(value)
        out[name.encode()] = text.encode()
    return out


def from_txt(txt: dict[bytes, bytes | None]) -> TxtRecord:
    """Read the entries ``TxtRecord`` defines; raises ``RemoteProtocolError`` with
    ``bad_length`` (a key, signature or nickname of the wrong length) or ``bad_txt``."""
    values: dict[str, Any] = {}
    for name, (tp, length) in _kinds().items():
        raw = txt.get(name.encode())
        if tp is bytes:
            n = 2 * length.hi if length else 0
            if raw is None or len(raw) != n:
                raise _reject("bad_length", f"TXT {name!r} must be {n} hex digits")
            try:
                text = raw.decode("ascii")
                if text != text.lower():
                    raise ValueError
                values[name] = bytes.fromhex(text)
            except ValueError:
                raise _reject("bad_txt", f"TXT {name!r} is not lowercase hex") from None
        elif tp is int:
            if raw is None or not raw.isdigit() or len(raw) > 13:
                raise _reject("bad_txt", f"TXT {name!r} is not a decimal number")
            values[name] = int(raw)
        else:
            if raw is None and length is None:
                raise _reject("bad_txt", f"TXT {name!r} is missing")
            if length is not None and (raw is None or not length.lo <= len(raw) <= length.hi):
                raise _reject("bad_length", f"TXT {name!r} must be {length.lo}..{length.hi} "
                                            "bytes")
            try:
                values[name] = raw.decode()  # type: ignore[union-attr]
            except UnicodeDecodeError:
                raise _reject("bad_txt", f"TXT {name!r} is not UTF-8") from None
    try:
        return TxtRecord.from_dict(values)
    except SchemaError as e:
        raise _reject(e.code, f"TXT {e.message}") from None


def unsigned_txt(*, key: bytes, port: int, nickname: str, now: float) -> dict[bytes, bytes]:
    """TXT entries to sign; add ``b"s"`` with the signature of ``canonical`` of this."""
    try:
        rec = TxtRecord(tv=str(TXT_VERSION), k=key, p=port, n=nickname, t=int(now))
    except SchemaError as e:
        raise ValueError(e.message) from None
    return to_txt(rec)


def signed_bytes(txt: dict[bytes, bytes]) -> bytes:
    return DOMAIN_MDNS_TXT + canonical(txt)


def announce_file(key: bytes, txt: dict[bytes, bytes]) -> str:
    """The text of ``announce.json`` for our signed record."""
    rec = AnnounceFile(key=key.hex(), txt={k.decode("latin-1"): v.decode("latin-1")
                                           for k, v in txt.items()})
    return json.dumps(rec.to_dict())


def read_announce_file(text: str) -> tuple[bytes, dict[bytes, bytes]]:
    """(key, TXT entries) of an ``announce.json``; raises ``SchemaError`` or ``ValueError``."""
    rec = AnnounceFile.from_dict(json.loads(text))
    return bytes.fromhex(rec.key), {k.encode("latin-1"): v.encode("latin-1")
                                    for k, v in rec.txt.items()}


@dataclass(frozen=True, slots=True)
class Announcement:
    """A validated announcement: who, where, and when it was signed."""

    name: str
    key: NodeKey
    port: int
    nickname: str
    signed_at: int
    addresses: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key.raw)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(join(a, self.port) for a in self.addresses)


def _reject(reason: str, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, code=reason)


def validate(
    *, name: str, properties: dict[bytes, bytes | None], srv_port: int | None,
    addresses: list[str],
) -> Announcement:
    """Check a resolved record; raises ``RemoteProtocolError`` with a reject code.

    Codes: ``bad_txt`` (missing, malformed or unsupported entries),
    ``bad_length``, ``port_mismatch``, ``bad_name``, ``bad_signature``,
    ``no_address``.
    """
    if not isinstance(properties, dict) or len(properties) > MAX_TXT_ENTRIES:
        raise _reject("bad_txt", "TXT missing or has too many entries")
    if properties.get(b"tv") != str(TXT_VERSION).encode():
        raise _reject("bad_txt", f"unsupported TXT version {properties.get(b'tv')!r}")
    rec = from_txt(properties)
    assert rec.s is not None  # from_txt requires it
    if srv_port is not None and srv_port != rec.p:
        raise _reject("port_mismatch", f"SRV port {srv_port} differs from TXT port {rec.p}")
    if not name.startswith(instance_label(rec.k) + "."):
        raise _reject("bad_name", "instance name does not match the key")
    if any(v is None for v in properties.values()):
        raise _reject("bad_txt", "TXT entry without a value")
    try:
        nacl.signing.VerifyKey(rec.k).verify(signed_bytes(properties), rec.s)  # type: ignore[arg-type]
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise _reject("bad_signature", "TXT signature does not verify") from None
    usable = tuple(dict.fromkeys(h for a in addresses if (h := _usable_host(a))))[:MAX_ADDRESSES]
    if not usable:
        raise _reject("no_address", "record has no usable IP address")
    return Announcement(name=name, key=NodeKey(rec.k), port=rec.p, nickname=rec.n,
                        signed_at=rec.t, addresses=usable)


def _usable_host(text: str) -> str | None:
    """The canonical text of an address from a record (IPv4, or IPv6; a link-local one
    with the scope the receiver gave it, the interface it was heard on), or None for one
    no node can be dialled at (a link-local one without scope among them)."""
    host = parse_host(text)
    if host is None:
        return None
    ip = ip_of(host)
    if ip.is_multicast or ip.is_unspecified or (is_link_local(host) and not scope_of(host)):
        return None
    return host
