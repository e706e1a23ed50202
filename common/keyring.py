"""The router's keys: its delegated signing key and its rotating DM keys (no I/O).

The router signs envelopes with a delegated Ed25519 key that identity certifies
(common/certs.py), and opens DMs with X25519 keys it holds itself, so neither
waits for identity on the message path. Both are short-lived:

* the signing key is certified for ``cert_s`` (one day) and replaced by a fresh
  key once less than half of that is left, so identity may be away for hours;
* the DM key is rotated every ``rotate_s`` (one day); an old key is kept only
  while a DM sealed to it may still arrive (``DM_KEY_KEEP``: an envelope lives
  7 days, plus an hour of clock slack), then erased.

A stolen router state therefore signs for at most a day, until revoked, and
opens DMs of the last 7 days and 1 hour only (docs/security.md). ``KeyRing``
decides; services/router.py asks identity for certificates, persists the ring
(``dump``/``load``) and executes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public

from . import certs, codec
from .errors import RemoteProtocolError
from .gossip import MAX_AGE_MS

#: How long an old DM key is kept after it stopped being the current one.
DM_KEY_KEEP = MAX_AGE_MS // 1000
CERT_S = 24 * 3600
ROTATE_S = 24 * 3600
#: A certificate starts this long before it is asked for (clocks differ a little).
CERT_BACKDATE = 300
RING_V = 1


@dataclass(slots=True)
class DmKey:
    secret: bytes
    public: bytes
    #: Current since (unix s).
    since: int
    #: No longer current since (unix s); None: the current key.
    retired: int | None = None


@dataclass(slots=True)
class Signer:
    secret64: bytes
    public: bytes
    cert: bytes | None = None
    not_before: int = 0
    not_after: int = 0


@dataclass(slots=True)
class KeyRing:
    signer: Signer
    dm: list[DmKey]
    revoked: list[bytes] = field(default_factory=list)
    cert_s: int = CERT_S
    rotate_s: int = ROTATE_S
    #: The key a certificate was asked for, until it comes.
    pending: Signer | None = None

    @classmethod
    def new(cls, now: float, *, cert_s: int = CERT_S, rotate_s: int = ROTATE_S) -> KeyRing:
        return cls(new_signer(), [new_dm_key(int(now))], cert_s=cert_s, rotate_s=rotate_s)

    # -- signing -------------------------------------------------------------------------

    def usable(self, now: float) -> bool:
        """The signing key is certified now."""
        s = self.signer
        return s.cert is not None and s.not_before <= now < s.not_after

    def renew_due(self, now: float) -> bool:
        s = self.signer
        return s.cert is None or now >= s.not_after - self.cert_s / 2

    def cert_request(self, now: float) -> tuple[bytes, int, int]:
        """The key to certify next and its validity: a fresh key if the current one is
        certified already (renewal), the current one if it never was."""
        if self.signer.cert is not None:
            self.pending = new_signer()
        else:
            self.pending = self.signer
        return self.pending.public, int(now) - CERT_BACKDATE, int(now) + self.cert_s

    def certified(self, dkey: bytes, cert: bytes) -> None:
        """A certificate came back from identity for ``dkey``."""
        parsed = certs.parse(cert)
        pending = self.pending
        if pending is None or pending.public != dkey or parsed.dkey != dkey:
            raise RemoteProtocolError("certificate for a key not asked for", code="bad_cert")
        pending.cert, pending.not_before, pending.not_after = cert, parsed.not_before, \
            parsed.not_after
        self.signer = pending
        self.pending = None

    def sign(self, signed: bytes) -> bytes:
        return certs.sign_envelope(signed, self.signer.secret64)

    def revoked_now(self, dkey: bytes) -> None:
        """``dkey`` is revoked: never sign with it again (a fresh key is certified next)."""
        if dkey not in self.revoked:
            self.revoked.append(dkey)
            del self.revoked[:-64]
        if self.signer.public == dkey:
            self.signer = new_signer()

    # -- DM keys -------------------------------------------------------------------------

    @property
    def current(self) -> DmKey:
        return self.dm[0]

    def rotate_due(self, now: float) -> bool:
        return now >= self.current.since + self.rotate_s

    def rotate(self, now: float) -> DmKey:
        t = int(now)
        self.current.retired = t
        self.dm.insert(0, new_dm_key(t))
        return self.current

    def erase_due(self, now: float) -> list[DmKey]:
        """Old keys no DM can still need: erased from the ring (the caller persists)."""
        gone = [k for k in self.dm[1:] if k.retired is not None
                and now >= k.retired + DM_KEY_KEEP]
        self.dm = [k for k in self.dm if k not in gone]
        return gone

    def next_deadline(self, now: float) -> float:
        """When the ring next needs a step (a rotation, an erasure, a renewal)."""
        times = [self.current.since + self.rotate_s,
                 self.signer.not_after - self.cert_s / 2 if self.signer.cert else now]
        times += [k.retired + DM_KEY_KEEP for k in self.dm[1:] if k.retired is not None]
        return min(times)

    def open(self, box: bytes) -> bytes | None:
        """The plaintext of a DM's sealed box, trying the newest key first."""
        for k in self.dm:
            try:
                return nacl.bindings.crypto_box_seal_open(box, k.public, k.secret)
            except (nacl.exceptions.CryptoError, ValueError, TypeError):
                continue
        return None

    # -- persistence ---------------------------------------------------------------------

    def dump(self) -> bytes:
        s = self.signer
        return codec.pack({
            "v": RING_V,
            "signer": [s.secret64, s.cert, s.not_before, s.not_after],
            "dm": [[k.secret, k.since, k.retired] for k in self.dm],
            "revoked": list(self.revoked),
        })

    @classmethod
    def load(cls, data: bytes, *, cert_s: int = CERT_S, rotate_s: int = ROTATE_S) -> KeyRing:
        """Raises ``ValueError`` for a file that is not a ring."""
        try:
            obj = msgpack.unpackb(data, raw=False)
            if obj.get("v") != RING_V:
                raise ValueError(f"version {obj.get('v')!r}")
            secret64, cert, nb, na = obj["signer"]
            signer = Signer(secret64, secret64[32:], cert, nb, na)
            dm = [DmKey(secret, nacl.bindings.crypto_scalarmult_base(secret), since, retired)
                  for secret, since, retired in obj["dm"]]
            if not dm or len(secret64) != 64:
                raise ValueError("no keys")
            return cls(signer, dm, list(obj.get("revoked", [])), cert_s=cert_s,
                       rotate_s=rotate_s)
        except (ValueError, TypeError, KeyError, AttributeError,
                msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise ValueError(f"not a key ring ({e})") from None


def new_signer() -> Signer:
    public, secret64 = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))
    return Signer(secret64, public)


def new_dm_key(now: int) -> DmKey:
    secret = nacl.public.PrivateKey.generate()
    return DmKey(bytes(secret), bytes(secret.public_key), now)
