"""The signed mDNS announcement of a node (docs/protocol.md, "mDNS record").

A node announces ``tz-<first 16 hex of its key>._tazcom._tcp.local.`` with an
SRV record (gateway port), A records (its addresses) and a TXT record:

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

from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .errors import RemoteProtocolError
from .keys import DOMAIN_MDNS_TXT, KEY_BYTES, SIG_BYTES, NodeKey, fingerprint

TXT_VERSION = 1
MAX_TXT_ENTRIES = 16
MAX_ADDRESSES = 8
NICK_MAX_BYTES = 32


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


def unsigned_txt(*, key: bytes, port: int, nickname: str, now: float) -> dict[bytes, bytes]:
    """TXT entries to sign; add ``b"s"`` with the signature of ``canonical`` of this."""
    nick = nickname.encode()
    if not 1 <= len(nick) <= NICK_MAX_BYTES:
        raise ValueError("nickname must be 1..32 bytes")
    return {
        b"tv": str(TXT_VERSION).encode(),
        b"k": key.hex().encode(),
        b"p": str(port).encode(),
        b"n": nick,
        b"t": str(int(now)).encode(),
    }


def signed_bytes(txt: dict[bytes, bytes]) -> bytes:
    return DOMAIN_MDNS_TXT + canonical(txt)


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
        return tuple(f"{a}:{self.port}" for a in self.addresses)


def _reject(reason: str, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, code=reason)


def _decimal(txt: dict[bytes, bytes | None], key: bytes, lo: int, hi: int) -> int:
    raw = txt.get(key)
    if raw is None or not raw.isdigit() or len(raw) > 13:
        raise _reject("bad_txt", f"TXT {key.decode()!r} is not a decimal number")
    value = int(raw)
    if not lo <= value <= hi:
        raise _reject("bad_txt", f"TXT {key.decode()!r} out of range")
    return value


def _hex(txt: dict[bytes, bytes | None], key: bytes, nbytes: int) -> bytes:
    raw = txt.get(key)
    if raw is None or len(raw) != 2 * nbytes:
        raise _reject("bad_length", f"TXT {key.decode()!r} must be {2 * nbytes} hex digits")
    try:
        text = raw.decode("ascii")
        if text != text.lower():
            raise ValueError
        return bytes.fromhex(text)
    except ValueError:
        raise _reject("bad_txt", f"TXT {key.decode()!r} is not lowercase hex") from None


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
    key = _hex(properties, b"k", KEY_BYTES)
    sig = _hex(properties, b"s", SIG_BYTES)
    port = _decimal(properties, b"p", 1, 65535)
    signed_at = _decimal(properties, b"t", 0, 2**40)
    nick_raw = properties.get(b"n")
    if nick_raw is None or not 1 <= len(nick_raw) <= NICK_MAX_BYTES:
        raise _reject("bad_length", "TXT 'n' must be 1..32 bytes")
    try:
        nickname = nick_raw.decode()
    except UnicodeDecodeError:
        raise _reject("bad_txt", "TXT 'n' is not UTF-8") from None
    if not nickname.isprintable():
        raise _reject("bad_txt", "TXT 'n' is not printable")
    if srv_port is not None and srv_port != port:
        raise _reject("port_mismatch", f"SRV port {srv_port} differs from TXT port {port}")
    if not name.startswith(instance_label(key) + "."):
        raise _reject("bad_name", "instance name does not match the key")
    if any(v is None for v in properties.values()):
        raise _reject("bad_txt", "TXT entry without a value")
    try:
        nacl.signing.VerifyKey(key).verify(signed_bytes(properties), sig)  # type: ignore[arg-type]
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise _reject("bad_signature", "TXT signature does not verify") from None
    usable = tuple(dict.fromkeys(a for a in addresses if _is_ipv4(a)))[:MAX_ADDRESSES]
    if not usable:
        raise _reject("no_address", "record has no IPv4 address")
    return Announcement(name=name, key=NodeKey(key), port=port, nickname=nickname,
                        signed_at=signed_at, addresses=usable)


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)
