"""Node identity keys as types, their fingerprints and signing domains.

A node is its Ed25519 public key (``NodeKey``). People compare the short
``fingerprint``; two people compare a ``safety_number`` computed from both of
their keys. Every signature TAZCOM makes is over ``domain || data`` with a
domain from ``SIGNING_DOMAINS``, so a signature made for one purpose (an mDNS
record) can never be replayed as another (a Noise static key binding).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import RemoteProtocolError
from .limits import KEY_BYTES  # defined once there, re-exported here

# docs/protocol.md, "Signing domains". The identity service signs only these.
DOMAIN_MDNS_TXT = b"tazcom-mdns-txt:"
DOMAIN_NOISE_STATIC = b"tazcom-noise-static:"
#: Every envelope (room message, DM, receipt, profile) is signed in this one domain: the
#: kind is inside the signed bytes.
DOMAIN_ENVELOPE = b"tazcom-envelope:"
DOMAIN_BENCH = b"tazcom-bench:"
#: A certificate for a delegated signing key (common/certs.py): the long-term key vouches
#: for a key the router holds.
DOMAIN_CERT = b"tazcom-cert:"
#: A peer-exchange record (common/peerexchange.py): where the neighbours listen.
DOMAIN_PX = b"tazcom-px:"
SIGNING_DOMAINS = frozenset({DOMAIN_MDNS_TXT, DOMAIN_NOISE_STATIC, DOMAIN_ENVELOPE, DOMAIN_BENCH,
                             DOMAIN_CERT, DOMAIN_PX})

_HEX_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class NodeKey:
    """An Ed25519 public key naming a node."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_BYTES:
            raise RemoteProtocolError("a node key is 32 bytes", code="bad_key")

    @classmethod
    def from_hex(cls, text: str) -> NodeKey:
        if not isinstance(text, str) or _HEX_KEY.fullmatch(text) is None:
            raise RemoteProtocolError("a node key is 64 lowercase hex digits", code="bad_key")
        return cls(bytes.fromhex(text))

    def __bytes__(self) -> bytes:
        return self.raw

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)

    def __str__(self) -> str:
        return self.fingerprint


def fingerprint(key: bytes) -> str:
    """Short, speakable fingerprint: 64 bits of BLAKE2b(key) as 4 groups of 4 hex.

    64 bits are enough for a person to notice a different key on the same LAN
    (a targeted second preimage costs ~2^64 hashes); the safety number is the
    stronger check two people run together.
    """
    digest = hashlib.blake2b(key, digest_size=8, person=b"tazcom-fp").hexdigest()
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """Safety number of a pair of keys: both keys sorted, hashed, as 12 groups of 5 digits.

    The same for both people whatever the order; 60 decimal digits carry
    ~199 bits of the hash.
    """
    lo, hi = sorted((bytes(key_a), bytes(key_b)))
    digest = hashlib.blake2b(lo + hi, digest_size=32, person=b"tazcom-safety").digest()
    number = int.from_bytes(digest, "big")
    digits = str(number % 10**60).zfill(60)
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def normalize_fingerprint(text: str) -> str:
    """Lowercase hex digits only, for prefix matching of what a person typed."""
    return re.sub(r"[^0-9a-f]", "", text.lower())
