"""Invite codes: how to reach a node, and which key it must prove, in one short text
(docs/protocol.md §9, "Invite codes"). No I/O.

``tazcom invite`` prints one; ``tazcom join CODE`` dials the addresses in it and accepts
only the key it carries: the code is the trust, handed over in person, by QR code or a
channel the two people already trust, so no trust-on-first-use step is needed and a
different key at those addresses is refused (``wrong_key``).

Binary form, then ``TZ1`` + RFC 4648 base32 (upper case, no padding; QR codes carry it in
their compact alphanumeric mode)::

    version u8 = 1 | key 32 B (Ed25519) | expires u32 (unix seconds) | port u16
    | count u8 (1..MAX_ADDRESSES) | count x (family u8: 4 or 6 | 4 or 16 address bytes)
    | check 4 B = BLAKE2b-32(everything before, person "tazcom-invite")

The whole key travels, not its 64-bit fingerprint: the link layer compares it with the
key the peer proves in the Noise handshake, so the check costs nothing and cannot be
fooled by a second preimage of the fingerprint. Link-local IPv6 addresses are left out
(their scope means nothing on another machine).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass

from .keys import fingerprint

PREFIX = "TZ1"
VERSION = 1
MAX_ADDRESSES = 4
#: How long a code is valid by default, and at most.
DEFAULT_TTL = 24 * 3600
MAX_TTL = 30 * 24 * 3600
_HEAD = 1 + 32 + 4 + 2 + 1
_CHECK = 4
_PERSON = b"tazcom-invite"
_BASE32 = re.compile(r"[A-Z2-7]*")


class InviteError(ValueError):
    """Why a code is refused, for people; ``code`` is the reject code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Invite:
    key: bytes
    expires: int
    port: int
    #: IP addresses as text (no port).
    hosts: tuple[str, ...]

    @property
    def addresses(self) -> tuple[str, ...]:
        """``ip:port`` / ``[v6]:port``, in the code's order."""
        return tuple(f"[{h}]:{self.port}" if ":" in h else f"{h}:{self.port}"
                     for h in self.hosts)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def usable_hosts(addresses: list[str] | tuple[str, ...]) -> list[str]:
    """The IPs of ``ip:port`` / ``[v6]:port`` listening addresses an invite may carry:
    no loopback unless it is all there is, no link-local IPv6, at most MAX_ADDRESSES."""
    out: list[str] = []
    loopback: list[str] = []
    for a in addresses:
        host = a.rpartition(":")[0].strip("[]").partition("%")[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip.version == 6 and ip.is_link_local:
            continue
        (loopback if ip.is_loopback else out).append(str(ip))
    return list(dict.fromkeys(out or loopback))[:MAX_ADDRESSES]


def encode(invite: Invite) -> str:
    if len(invite.key) != 32 or not 1 <= invite.port <= 65535 \
            or not 1 <= len(invite.hosts) <= MAX_ADDRESSES:
        raise ValueError("an invite needs a 32-byte key, a port and 1..4 addresses")
    raw = bytearray([VERSION]) + invite.key + invite.expires.to_bytes(4, "big") \
        + invite.port.to_bytes(2, "big") + bytes([len(invite.hosts)])
    for host in invite.hosts:
        ip = ipaddress.ip_address(host)
        raw += bytes([ip.version]) + ip.packed
    raw += hashlib.blake2b(bytes(raw), digest_size=_CHECK, person=_PERSON).digest()
    return PREFIX + base64.b32encode(bytes(raw)).decode().rstrip("=")


def make(key: bytes, port: int, addresses: list[str] | tuple[str, ...], now: float,
         ttl: float = DEFAULT_TTL) -> Invite:
    hosts = usable_hosts(addresses)
    if not hosts:
        raise ValueError("this node has no address another node could dial")
    if not 60 <= ttl <= MAX_TTL:
        raise ValueError(f"an invite is valid for 1 minute to {MAX_TTL // 86400} days")
    return Invite(key=key, expires=int(now + ttl), port=port, hosts=tuple(hosts))


def decode(text: str, now: float) -> Invite:
    """The invite in ``text`` (spaces, dashes and case ignored); raises ``InviteError``:
    ``not_invite``, ``truncated``, ``damaged``, ``bad_version`` or ``expired``."""
    if type(text) is not str or len(text) > 1000:
        raise InviteError("not_invite", "not an invite code")
    s = "".join(text.split()).replace("-", "").upper()
    if not s.startswith(PREFIX):
        if s.startswith("TZ") and s[2:3].isdigit():
            raise InviteError("bad_version", f"an invite code of version {s[2]}; this "
                              "node reads version 1 (upgrade it)")
        raise InviteError("not_invite", "not an invite code (it starts with TZ1)")
    body = s[len(PREFIX):]
    if not _BASE32.fullmatch(body):
        raise InviteError("not_invite", "not an invite code: it holds characters other "
                          "than A-Z and 2-7")
    while len(body) % 8 in (1, 3, 6):  # cut inside a byte: the checks below say what is wrong
        body = body[:-1]
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        raise InviteError("not_invite", "not an invite code") from None
    if len(raw) < _HEAD + _CHECK:
        raise InviteError("truncated", f"the code is truncated ({len(s)} characters; a "
                          "code has about 80): copy all of it")
    if raw[0] != VERSION:
        raise InviteError("bad_version", f"an invite of version {raw[0]}; this node "
                          "reads version 1")
    count = raw[_HEAD - 1]
    pos, hosts = _HEAD, []
    for _ in range(count):
        if pos >= len(raw) - _CHECK:
            raise InviteError("truncated", "the code is truncated: copy all of it")
        size = {4: 4, 6: 16}.get(raw[pos])
        if size is None:
            raise _damaged_or_truncated(raw, len(raw))
        if pos + 1 + size + _CHECK > len(raw):
            raise InviteError("truncated", "the code is truncated: copy all of it")
        hosts.append(str(ipaddress.ip_address(raw[pos + 1 : pos + 1 + size])))
        pos += 1 + size
    if len(raw) < pos + _CHECK:
        raise InviteError("truncated", "the code is truncated: copy all of it")
    check = hashlib.blake2b(raw[:pos], digest_size=_CHECK, person=_PERSON).digest()
    if len(raw) != pos + _CHECK or raw[pos:] != check:
        raise _damaged_or_truncated(raw, pos)
    if not 1 <= count <= MAX_ADDRESSES:
        raise InviteError("damaged", "the code carries no address")
    port = int.from_bytes(raw[37:39], "big")
    if port == 0:
        raise InviteError("damaged", "the code carries port 0")
    expires = int.from_bytes(raw[33:37], "big")
    if expires < now:
        raise InviteError("expired", "the code expired at "
                          + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
                          + ": ask for a new one (tazcom invite)")
    return Invite(key=bytes(raw[1:33]), expires=expires, port=port, hosts=tuple(hosts))


def _damaged_or_truncated(raw: bytes, pos: int) -> InviteError:
    if len(raw) < pos + _CHECK:
        return InviteError("truncated", "the code is truncated: copy all of it")
    return InviteError("damaged", "the code is damaged (its checksum does not match): "
                       "a character was changed or mistyped")
