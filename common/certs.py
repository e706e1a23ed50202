"""Delegated signing keys: the certificate identity signs, and the envelope check that uses it.

The long-term Ed25519 key stays in the identity service. It certifies a short-lived
key that the router holds and signs envelopes with (docs/protocol.md §10,
"Delegated signing keys"; docs/security.md). A certificate is the msgpack array::

    [1, dkey, not_before, not_after, purpose, sig]

``sig`` is the origin's long-term signature over
``"tazcom-cert:" || origin || pack([1, dkey, not_before, not_after, purpose])``: the
origin is inside what is signed, so a certificate cannot be claimed by another
origin. Times are unix seconds; a certificate covers at most ``CERT_VALIDITY_MAX``.
An envelope of version 2 carries its certificate inside its signed bytes, so any
node checks any envelope alone: the certificate against the origin, the envelope's
``ts`` against the certificate's validity, and the signature against ``dkey``.

``Verifier`` caches certificates it has checked, so the steady state is one Ed25519
verification per envelope, and knows the revocations it has accepted: an envelope
signed by a revoked key and written at or after the revocation time is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import nacl.bindings
import nacl.exceptions

from . import codec
from .errors import RemoteProtocolError, SchemaError
from .keys import DOMAIN_CERT, DOMAIN_ENVELOPE
from .limits import CERT_MAX, CERT_VALIDITY_MAX, KEY_BYTES, SIG_BYTES
from .schema import ArrayRecord, Code, Len, Range, record

CERT_V = 1
#: The one purpose so far: signing envelopes.
PURPOSE_ENVELOPES = 1
#: Certificates a ``Verifier`` remembers as checked (a few per origin in a mesh of hundreds).
CACHE_SIZE = 4096
#: Revocations a ``Verifier`` keeps (oldest forgotten first).
REVOCATIONS_MAX = 65536


class CertError(RemoteProtocolError):
    code = "bad_cert"


@record
class CertFields(ArrayRecord):
    """What the origin's long-term key signs (after the domain and the origin)."""

    CODE: ClassVar[str] = "bad_cert"
    TAG: ClassVar[Any] = CERT_V
    TAG_CODE: ClassVar[str | None] = "bad_cert"

    dkey: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
    not_before: Annotated[int, Range(0, 2**40)]
    not_after: Annotated[int, Range(0, 2**40)]
    purpose: Annotated[Literal[1], Code("cert_purpose")]


@dataclass(frozen=True, slots=True)
class Cert:
    dkey: bytes
    not_before: int
    not_after: int
    purpose: int
    sig: bytes
    raw: bytes


def signed_part(origin: bytes, dkey: bytes, not_before: int, not_after: int,
                purpose: int = PURPOSE_ENVELOPES) -> bytes:
    """What identity signs (without the domain): ``origin || pack(fields)``."""
    try:
        fields = CertFields(dkey, not_before, not_after, purpose)  # type: ignore[arg-type]
    except SchemaError as e:
        raise CertError(e.message, code=e.code) from None
    return origin + codec.pack(fields.to_array())


def encode(dkey: bytes, not_before: int, not_after: int, sig: bytes,
           purpose: int = PURPOSE_ENVELOPES) -> bytes:
    return codec.pack([CERT_V, dkey, not_before, not_after, purpose, sig])


def parse(raw: bytes) -> Cert:
    """A certificate's shape (not its signature); raises ``CertError``."""
    try:
        obj = codec.unpack(raw, CERT_MAX)
    except RemoteProtocolError:
        raise CertError("a certificate is a msgpack array") from None
    if type(obj) is not list or len(obj) != 6:
        raise CertError("a certificate is an array of 6")
    sig = obj[5]
    if type(sig) is not bytes or len(sig) != SIG_BYTES:
        raise CertError("a certificate's signature is 64 bytes")
    try:
        f = CertFields.from_array(obj[:5])
    except SchemaError as e:
        raise CertError(e.message, code=e.code) from None
    if not f.not_before < f.not_after <= f.not_before + CERT_VALIDITY_MAX:
        raise CertError(f"a certificate is valid for 1 s to {CERT_VALIDITY_MAX} s, not "
                        f"{f.not_after - f.not_before} s", code="cert_validity")
    return Cert(f.dkey, f.not_before, f.not_after, f.purpose, sig, raw)


def check_signature(cert: Cert, origin: bytes) -> None:
    if not _verifies(origin, DOMAIN_CERT + signed_part(origin, cert.dkey, cert.not_before,
                                                       cert.not_after, cert.purpose),
                     cert.sig):
        raise CertError("the certificate is not signed by the envelope's origin",
                        code="cert_signature")


def _verifies(key: bytes, data: bytes, sig: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(sig + data, key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        return False
    return True


def sign_envelope(signed: bytes, secret64: bytes) -> bytes:
    """A delegated key's signature over an envelope's signed bytes (libsodium's 64-byte
    secret key)."""
    return nacl.bindings.crypto_sign(DOMAIN_ENVELOPE + signed, secret64)[:SIG_BYTES]


class Verifier:
    """Checks envelopes' signatures: by the origin's key (version 1, and revocations), or
    by a delegated key whose certificate it checks once and remembers."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._checked: OrderedDict[tuple[bytes, bytes], Cert] = OrderedDict()
        self._cache_size = cache_size
        #: delegated key -> (origin, revoked at, unix ms)
        self.revoked: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self.cert_checks = 0

    def certificate(self, origin: bytes, raw: bytes) -> Cert:
        """The checked certificate; raises ``CertError``."""
        key = (origin, raw)
        cert = self._checked.get(key)
        if cert is not None:
            self._checked.move_to_end(key)
            return cert
        cert = parse(raw)
        self.cert_checks += 1
        check_signature(cert, origin)
        self._checked[key] = cert
        if len(self._checked) > self._cache_size:
            self._checked.popitem(last=False)
        return cert

    def revoke(self, origin: bytes, dkey: bytes, at_ms: int) -> bool:
        """Record a revocation (already checked: signed by ``origin``'s long-term key).
        True if it is news; an earlier time for the same key wins."""
        known = self.revoked.get(dkey)
        if known is not None and known[1] <= at_ms:
            return False
        self.revoked[dkey] = (origin, at_ms)
        if len(self.revoked) > REVOCATIONS_MAX:
            self.revoked.popitem(last=False)
        return True

    def __call__(self, env: Any) -> None:
        """Raise an ``EnvelopeError`` subclass (``CertError`` or ``bad_signature``) unless
        ``env`` is signed as its version requires."""
        from .envelope import EnvelopeError

        cert_raw: bytes | None = env.cert
        if cert_raw is None:
            if not _verifies(env.origin, DOMAIN_ENVELOPE + env.signed, env.sig):
                raise EnvelopeError("the origin's signature does not verify",
                                    code="bad_signature")
            return
        try:
            cert = self.certificate(env.origin, cert_raw)
        except CertError as e:
            raise EnvelopeError(e.message, code=e.code) from None
        if env.ts < cert.not_before * 1000:
            raise EnvelopeError("written before its certificate's validity",
                                code="cert_not_yet_valid")
        if env.ts > cert.not_after * 1000:
            raise EnvelopeError("written after its certificate expired", code="cert_expired")
        revoked = self.revoked.get(cert.dkey)
        if revoked is not None and revoked[0] == env.origin and env.ts >= revoked[1]:
            raise EnvelopeError("signed by a delegated key its origin revoked",
                                code="revoked")
        if not _verifies(cert.dkey, DOMAIN_ENVELOPE + env.signed, env.sig):
            raise EnvelopeError("the delegated key's signature does not verify",
                                code="bad_signature")


__all__ = ["CERT_V", "PURPOSE_ENVELOPES", "Cert", "CertError", "Verifier", "encode",
           "parse", "sign_envelope", "signed_part"]
