"""End-to-end encryption of DM files, chunk by chunk (docs/files.md, "Encryption of DM
files"). No I/O.

The origin draws a fresh 32-byte key per file and seals plaintext chunk ``i`` (``PLAIN_CHUNK``
bytes, the last shorter; an empty file has one empty chunk) with XChaCha20-Poly1305:
nonce = ``u64be(i)`` followed by 16 zero bytes, associated data = ``u32be(i)``. Each
ciphertext chunk is its plaintext plus a 16-byte tag, so ciphertext chunks are exactly
``filetree.CHUNK`` bytes but the last, and the hash tree is built over them: relays check
every chunk against the file id without the key.

Why index nonces are safe: the key is never used for another file, so (key, nonce) pairs
never repeat. Why the index is also the associated data: a chunk moved to another index
fails to open even if the tree did not already catch it. Truncation needs no flag in the
last chunk: the signed manifest's file id commits to the size.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions

from .errors import LocalProtocolError, RemoteProtocolError
from .filetree import CHUNK, FILE_MAX

KEY_BYTES = 32
TAG = 16
#: Plaintext bytes per chunk: a sealed chunk is then exactly ``CHUNK`` bytes.
PLAIN_CHUNK = CHUNK - TAG
#: The largest plaintext whose ciphertext fits ``FILE_MAX``.
PLAIN_MAX = FILE_MAX - TAG * -(-FILE_MAX // CHUNK)


def nonce(index: int) -> bytes:
    return index.to_bytes(8, "big") + bytes(16)


def _ad(index: int) -> bytes:
    return index.to_bytes(4, "big")


def _check(key: bytes, index: int) -> None:
    if len(key) != KEY_BYTES:
        raise LocalProtocolError(f"a file key is {KEY_BYTES} bytes, not {len(key)}")
    if not 0 <= index < 2**32:
        raise LocalProtocolError(f"chunk index {index} is not a u32")


def encrypt_chunk(key: bytes, index: int, plain: bytes, plain_chunk: int = PLAIN_CHUNK) -> bytes:
    """Seal plaintext chunk ``index`` (at most ``plain_chunk`` bytes)."""
    _check(key, index)
    if len(plain) > plain_chunk:
        raise LocalProtocolError(f"a plaintext chunk of {len(plain)} bytes; at most "
                                 f"{plain_chunk}")
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plain, _ad(index), nonce(index), key)


def decrypt_chunk(key: bytes, index: int, sealed: bytes) -> bytes:
    """Open ciphertext chunk ``index``. A wrong key, a chunk from another index or another
    file, or any altered byte raises ``RemoteProtocolError`` (``decrypt_failed``): the
    origin sent a key or chunks that do not match (the tree already vouched for the bytes)."""
    _check(key, index)
    if len(sealed) < TAG:
        raise RemoteProtocolError(f"chunk {index}: {len(sealed)} bytes, shorter than a tag",
                                  code="decrypt_failed")
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, _ad(index), nonce(index), key)
    except nacl.exceptions.CryptoError:
        raise RemoteProtocolError(f"chunk {index} does not open with this file's key (wrong "
                                  "key, moved or altered chunk)", code="decrypt_failed") from None


def cipher_size(plain_size: int, plain_chunk: int = PLAIN_CHUNK) -> int:
    """The ciphertext size (what the manifest announces) of ``plain_size`` bytes: one tag
    per chunk, an empty file being one empty chunk."""
    if plain_size < 0:
        raise ValueError(f"size {plain_size}")
    return plain_size + TAG * max(1, -(-plain_size // plain_chunk))


def plain_size(size: int, chunk_size: int = CHUNK) -> int | None:
    """The plaintext size behind a ciphertext of ``size`` bytes, or None when
    ``encrypt_file`` makes no ciphertext of that size: a last chunk shorter than a tag, or
    just a tag after full chunks (only the empty file has an empty plaintext chunk; else
    one plaintext would have two ciphertext sizes)."""
    if size < TAG:
        return None
    full, last = divmod(size, chunk_size)
    if last == 0:
        return full * (chunk_size - TAG)
    if last < TAG or (last == TAG and full):
        return None
    return full * (chunk_size - TAG) + last - TAG


def encrypt_file(key: bytes, plain: bytes, plain_chunk: int = PLAIN_CHUNK) -> bytes:
    """A whole file held in memory, sealed chunk by chunk (tests, small files)."""
    count = max(1, -(-len(plain) // plain_chunk))
    return b"".join(encrypt_chunk(key, i, plain[i * plain_chunk:(i + 1) * plain_chunk],
                                  plain_chunk) for i in range(count))


def decrypt_file(key: bytes, sealed: bytes, chunk_size: int = CHUNK) -> bytes:
    """Open a whole file held in memory (tests, small files)."""
    if plain_size(len(sealed), chunk_size) is None:
        raise RemoteProtocolError(f"no ciphertext is {len(sealed)} bytes long",
                                  code="decrypt_failed")
    count = max(1, -(-len(sealed) // chunk_size))
    return b"".join(decrypt_chunk(key, i, sealed[i * chunk_size:(i + 1) * chunk_size])
                    for i in range(count))
