"""Sans-IO Noise Protocol Framework (revision 34), pattern XX over 25519/ChaChaPoly.

Theory of operation
-------------------
This module follows https://noiseprotocol.org/noise.html, revision 34, and
keeps its object model:

* Crypto functions (section 4, instantiated per section 12): ``DH`` is X25519
  (12.1), ``ENCRYPT``/``DECRYPT`` are ChaCha20-Poly1305 with the nonce encoded
  as 32 zero bits followed by the 64-bit counter little-endian (12.3), ``HASH``
  is SHA256 (12.5) or BLAKE2b (12.8), and ``HMAC-HASH``/``HKDF`` are built on
  it as in 4.3. ``REKEY`` is the default of 4.2.
* ``CipherState`` (5.1) holds ``k`` and ``n``; after the handshake each side
  owns two of them, one per direction, and uses them for every transport frame.
* ``SymmetricState`` (5.2) holds ``ck``, ``h`` and the handshake CipherState.
* ``HandshakeState`` (5.3) runs the single pattern this project uses, XX
  (7.5)::

      -> e
      <- e, ee, s, es
      -> s, se

  ``split()`` hands out the transport CipherStates; ``handshake_hash`` is the
  channel binding of 11.2.

Deliberate choices the spec leaves open:

* Messages are limited to ``MAX_MESSAGE`` bytes (section 3): writing more is a
  ``LocalProtocolError``, reading more is a ``NoiseError``.
* Low-order X25519 public keys are refused (12.1 allows signalling an error
  for inputs whose DH output is all zeros). Every remote public key is checked
  the moment it is read, so a bad first message is refused by ``read_message``
  and not later by the responder's ``write_message``.
* Any failure of ``DH()`` or ``DECRYPT()`` during the handshake poisons the
  HandshakeState (5: "the handshake has failed and the HandshakeState is
  deleted"). Checks made before any state changes (turn, length) do not.
* The module is pure: no I/O, no clock; randomness only for fresh key pairs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import Any

import nacl.bindings
import nacl.exceptions

from .errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_BLAKE2B = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROTOCOL_SHA256 = "Noise_XX_25519_ChaChaPoly_SHA256"
MAX_MESSAGE = 65535
TAG_LEN = 16
DH_LEN = 32
KEY_LEN = 32

_MAX_NONCE = 2**64 - 1
_NONCE_PREFIX = bytes(4)
_nonce = struct.Struct("<4xQ").pack  # 4 zero bytes || n, 64-bit little-endian (12.3)
_ZEROS32 = bytes(32)
_REKEY_NONCE = _NONCE_PREFIX + _MAX_NONCE.to_bytes(8, "little")
# Encodings of the X25519 points of order 1, 2, 4 and 8 (u = 0, 1, the two order-8
# points, p - 1, p, p + 1), compared with bit 255 cleared since X25519 ignores it
# (libsodium's list). Refusing them on sight costs a set lookup; any other
# encoding of a small-order point still ends in an all-zero DH (checked in _dh).
_LOW_ORDER = frozenset({
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (2**255 - 20).to_bytes(32, "little"),
    (2**255 - 19).to_bytes(32, "little"),
    (2**255 - 18).to_bytes(32, "little"),
})

# Bound once at import: transport frames go through these on every call.
try:
    # PyNaCl's own cffi binding of libsodium. Its Python wrappers in nacl.bindings
    # validate every argument and format error texts on every call, which costs
    # more than the cipher itself on a 200-byte frame; our arguments are checked
    # once, here, so we call libsodium directly (bench/link_throughput.py).
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _c_encrypt = _lib.crypto_aead_chacha20poly1305_ietf_encrypt
    _c_decrypt = _lib.crypto_aead_chacha20poly1305_ietf_decrypt
    _NULL = _ffi.NULL

    def _aead_encrypt(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        out = _ffi.new("unsigned char[]", len(plaintext) + TAG_LEN)
        _c_encrypt(out, _NULL, plaintext, len(plaintext), ad, len(ad), _NULL, nonce, key)
        return _ffi.buffer(out)[:]

    def _aead_decrypt(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        out = _ffi.new("unsigned char[]", max(1, len(ciphertext) - TAG_LEN))
        if _c_decrypt(out, _NULL, _NULL, ciphertext, len(ciphertext), ad, len(ad), nonce,
                      key) != 0:
            raise nacl.exceptions.CryptoError("decryption failed")
        return _ffi.buffer(out, len(ciphertext) - TAG_LEN)[:]

except ImportError:  # pragma: no cover - a PyNaCl without its cffi module
    _aead_encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
    _aead_decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt
_scalarmult = nacl.bindings.crypto_scalarmult
_scalarmult_base = nacl.bindings.crypto_scalarmult_base

# name -> (HASH constructor, HASHLEN); hashlib's block_size gives HMAC the
# spec's BLOCKLEN (128 for BLAKE2b, 64 for SHA256).
_HASHES: dict[str, tuple[Callable[..., Any], int]] = {
    PROTOCOL_BLAKE2B: (hashlib.blake2b, 64),
    PROTOCOL_SHA256: (hashlib.sha256, 32),
}

# Section 7.5, XX. Message i is written by the initiator when i is even.
_PATTERN_XX: tuple[tuple[str, ...], ...] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)


class NoiseError(RemoteProtocolError):
    """A peer sent a Noise message we must refuse.

    ``code`` is ``decrypt_failed`` (AEAD authentication failed),
    ``bad_handshake`` (malformed, truncated, oversized or out-of-turn handshake
    message, low-order public key) or ``nonce_exhausted`` (n reached 2^64-1;
    the session must end).
    """

    code = "bad_handshake"


def x25519_keypair(seed: bytes | None = None) -> tuple[bytes, bytes]:
    """Return ``(private, public)``; ``seed`` is a fixed private key (tests only)."""
    private = os.urandom(KEY_LEN) if seed is None else bytes(seed)
    if len(private) != KEY_LEN:
        raise LocalProtocolError(f"an X25519 private key is {KEY_LEN} bytes")
    return private, _scalarmult_base(private)


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        shared = _scalarmult(private, public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        # libsodium itself refuses an all-zero result.
        raise NoiseError("low-order X25519 public key", code="bad_handshake") from None
    if shared == _ZEROS32:
        # Older libsodium builds return the zeros instead of failing.
        raise NoiseError("low-order X25519 public key", code="bad_handshake")
    return shared


def _check_public(public: bytes) -> None:
    if public[:31] + bytes((public[31] & 0x7F,)) in _LOW_ORDER:
        raise NoiseError("low-order X25519 public key", code="bad_handshake")


class CipherState:
    """Section 5.1: a key ``k`` (or none yet) and a 64-bit nonce counter ``n``."""

    __slots__ = ("_k", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self.n: int = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_LEN:
            raise LocalProtocolError(f"a cipher key is {KEY_LEN} bytes")
        self._k = None if key is None else bytes(key)
        self.n = 0

    def has_key(self) -> bool:
        return self._k is not None

    def set_nonce(self, n: int) -> None:
        if not 0 <= n <= _MAX_NONCE:
            raise LocalProtocolError("a nonce is an unsigned 64-bit integer")
        self.n = n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n++, ad, plaintext), or ``plaintext`` while there is no key."""
        k = self._k
        if type(plaintext) is not bytes:
            plaintext = bytes(plaintext)
        if k is None:
            return plaintext
        n = self.n
        if n >= _MAX_NONCE:
            raise NoiseError("nonce space exhausted; rehandshake", code="nonce_exhausted")
        if type(ad) is not bytes:
            ad = bytes(ad)
        ciphertext = _aead_encrypt(plaintext, ad, _nonce(n), k)
        self.n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT(k, n++, ad, ciphertext); on failure ``n`` is left unchanged."""
        k = self._k
        if type(ciphertext) is not bytes:
            ciphertext = bytes(ciphertext)
        if k is None:
            return ciphertext
        n = self.n
        if n >= _MAX_NONCE:
            raise NoiseError("nonce space exhausted; rehandshake", code="nonce_exhausted")
        if len(ciphertext) < TAG_LEN:
            # PyNaCl answers a short input with ValueError, not CryptoError.
            raise NoiseError("ciphertext shorter than its tag", code="decrypt_failed")
        if type(ad) is not bytes:
            ad = bytes(ad)
        try:
            plaintext = _aead_decrypt(ciphertext, ad, _nonce(n), k)
        except (nacl.exceptions.CryptoError, ValueError):
            raise NoiseError("authentication failed", code="decrypt_failed") from None
        self.n = n + 1
        return plaintext

    def rekey(self) -> None:
        """Section 4.2 default REKEY; ``n`` is kept (11.3)."""
        if self._k is None:
            raise LocalProtocolError("rekey needs a key")
        self._k = _aead_encrypt(_ZEROS32, b"", _REKEY_NONCE, self._k)[:KEY_LEN]


class SymmetricState:
    """Section 5.2: chaining key ``ck``, handshake hash ``h`` and a CipherState."""

    def __init__(self, protocol_name: str) -> None:
        try:
            self._hash, self.hashlen = _HASHES[protocol_name]
        except KeyError:
            raise LocalProtocolError(f"unsupported Noise protocol {protocol_name!r}") from None
        name = protocol_name.encode("ascii")
        if len(name) <= self.hashlen:
            self.h = name.ljust(self.hashlen, b"\x00")
        else:
            self.h = self._hash(name).digest()
        self.ck = self.h
        self.cs = CipherState()

    def _hkdf2(self, chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
        # XX needs only the two-output HKDF of section 4.3 (three is for PSKs).
        temp_key = hmac.digest(chaining_key, input_key_material, self._hash)
        output1 = hmac.digest(temp_key, b"\x01", self._hash)
        output2 = hmac.digest(temp_key, output1 + b"\x02", self._hash)
        return output1, output2

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = self._hkdf2(self.ck, input_key_material)
        self.cs.initialize_key(temp_k[:KEY_LEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = self._hash(self.h + data).digest()

    def get_handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = self._hkdf2(self.ck, b"")
        return CipherState(temp_k1[:KEY_LEN]), CipherState(temp_k2[:KEY_LEN])


class HandshakeState:
    """Section 5.3 for pattern XX: three messages, then ``split()``."""

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        prologue: bytes = b"",
        protocol_name: str = PROTOCOL_BLAKE2B,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self._symmetric = SymmetricState(protocol_name)
        self._symmetric.mix_hash(bytes(prologue))
        self._initiator = initiator
        self._s_private, self._s_public = x25519_keypair(static_private)
        self._e_private: bytes | None = None
        self._e_public: bytes | None = None
        if ephemeral_private is not None:
            self._e_private, self._e_public = x25519_keypair(ephemeral_private)
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._index = 0  # next message of _PATTERN_XX; XX has no pre-messages
        self._failed = False
        self._transport: tuple[CipherState, CipherState] | None = None

    @property
    def complete(self) -> bool:
        return self._index == len(_PATTERN_XX)

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        if not self.complete:
            # Binding to an unfinished transcript would bind to nothing.
            raise LocalProtocolError("the handshake hash exists once the handshake is complete")
        return self._symmetric.get_handshake_hash()

    @property
    def my_turn_to_write(self) -> bool:
        if self._failed or self.complete:
            return False
        return (self._index % 2 == 0) == self._initiator

    def _message_len(self, tokens: tuple[str, ...], payload_len: int) -> int:
        # Sizes are fixed by the pattern, so length limits can be checked
        # before any state changes.
        keyed = self._symmetric.cs.has_key()
        size = 0
        for token in tokens:
            if token == "e":
                size += DH_LEN
            elif token == "s":
                size += DH_LEN + (TAG_LEN if keyed else 0)
            else:
                keyed = True
        return size + payload_len + (TAG_LEN if keyed else 0)

    def _mix_dh(self, token: str) -> None:
        s, e = self._s_private, self._e_private
        rs, re = self._rs, self._re
        if token == "ee":
            pair = (e, re)
        elif (token == "es") == self._initiator:  # es as initiator, se as responder
            pair = (e, rs)
        else:
            pair = (s, re)
        private, public = pair
        if private is None or public is None:
            raise LocalProtocolError(f"{token}: a key is missing")  # unreachable in XX
        self._symmetric.mix_key(_dh(private, public))

    def write_message(self, payload: bytes) -> bytes:
        """Write the next handshake message carrying ``payload``."""
        if self._failed:
            raise LocalProtocolError("the handshake has failed")
        if not self.my_turn_to_write:
            raise LocalProtocolError("not our turn to write a handshake message")
        payload = bytes(payload)
        tokens = _PATTERN_XX[self._index]
        size = self._message_len(tokens, len(payload))
        if size > MAX_MESSAGE:
            raise LocalProtocolError(
                f"handshake message of {size} bytes is over {MAX_MESSAGE}", code="too_large"
            )
        symmetric = self._symmetric
        parts: list[bytes] = []
        try:
            for token in tokens:
                if token == "e":
                    e_public = self._e_public
                    if e_public is None:
                        self._e_private, e_public = x25519_keypair()
                        self._e_public = e_public
                    parts.append(e_public)
                    symmetric.mix_hash(e_public)
                elif token == "s":
                    parts.append(symmetric.encrypt_and_hash(self._s_public))
                else:
                    self._mix_dh(token)
            parts.append(symmetric.encrypt_and_hash(payload))
        except NoiseError:
            self._failed = True
            raise
        self._index += 1
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """Read the peer's next handshake message and return its payload."""
        if self._failed:
            raise NoiseError("the handshake has already failed", code="bad_handshake")
        if self.complete:
            raise NoiseError("handshake message after the handshake", code="bad_handshake")
        if self.my_turn_to_write:
            raise NoiseError("handshake message out of turn", code="bad_handshake")
        message = bytes(message)
        if len(message) > MAX_MESSAGE:
            raise NoiseError(f"handshake message over {MAX_MESSAGE} bytes", code="bad_handshake")
        tokens = _PATTERN_XX[self._index]
        if len(message) < self._message_len(tokens, 0):
            raise NoiseError("truncated handshake message", code="bad_handshake")
        symmetric = self._symmetric
        offset = 0
        try:
            for token in tokens:
                if token == "e":
                    re = message[offset:offset + DH_LEN]
                    offset += DH_LEN
                    _check_public(re)
                    self._re = re
                    symmetric.mix_hash(re)
                elif token == "s":
                    end = offset + DH_LEN + (TAG_LEN if symmetric.cs.has_key() else 0)
                    rs = symmetric.decrypt_and_hash(message[offset:end])
                    offset = end
                    _check_public(rs)
                    self._rs = rs
                else:
                    self._mix_dh(token)
            payload = symmetric.decrypt_and_hash(message[offset:])
        except NoiseError:
            self._failed = True
            raise
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Return ``(send, receive)`` CipherStates for this side (5.2 Split)."""
        if not self.complete:
            raise LocalProtocolError("split before the handshake is complete")
        if self._transport is None:
            # Cached: a second, fresh pair would reuse nonces under the same keys.
            c1, c2 = self._symmetric.split()
            self._transport = (c1, c2) if self._initiator else (c2, c1)
        return self._transport
