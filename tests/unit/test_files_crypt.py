"""DM file encryption (common/filecrypt.py): chunks open only with their key at their
index, ciphertext chunks line up with the tree's chunks, and sizes map both ways."""

from __future__ import annotations

import os
import random

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import filecrypt, filetree
from tazcom.common.errors import LocalProtocolError, RemoteProtocolError
from tazcom.common.filecrypt import (
    PLAIN_CHUNK,
    PLAIN_MAX,
    TAG,
    cipher_size,
    decrypt_chunk,
    decrypt_file,
    encrypt_chunk,
    encrypt_file,
    plain_size,
)
from tazcom.common.filetree import CHUNK, FILE_MAX

KEY = bytes(range(32))


def test_a_chunk_round_trips_with_the_documented_nonce_and_ad() -> None:
    sealed = encrypt_chunk(KEY, 7, b"hello")
    assert len(sealed) == 5 + TAG
    assert decrypt_chunk(KEY, 7, sealed) == b"hello"
    # docs/files.md: nonce u64be(i) padded with zeros to 24 bytes, AD u32be(i)
    raw = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        sealed, (7).to_bytes(4, "big"), (7).to_bytes(8, "big") + bytes(16), KEY)
    assert raw == b"hello"


@pytest.mark.parametrize("case", ["wrong_key", "moved", "flipped", "short", "other_file"])
def test_a_wrong_key_or_a_moved_or_altered_chunk_fails_clearly(case: str) -> None:
    sealed = encrypt_chunk(KEY, 3, b"secret chunk")
    other = bytes(32)
    with pytest.raises(RemoteProtocolError) as e:
        if case == "wrong_key":
            decrypt_chunk(other, 3, sealed)
        elif case == "moved":
            decrypt_chunk(KEY, 4, sealed)
        elif case == "flipped":
            decrypt_chunk(KEY, 3, sealed[:-1] + bytes([sealed[-1] ^ 1]))
        elif case == "short":
            decrypt_chunk(KEY, 3, sealed[:TAG - 1])
        else:
            decrypt_chunk(KEY, 3, encrypt_chunk(other, 3, b"secret chunk"))
    assert e.value.code == "decrypt_failed"


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encrypt_chunk(KEY[:31], 0, b"")
    with pytest.raises(LocalProtocolError):
        encrypt_chunk(KEY, 2**32, b"")
    with pytest.raises(LocalProtocolError):
        encrypt_chunk(KEY, 0, bytes(PLAIN_CHUNK + 1))
    with pytest.raises(LocalProtocolError):
        decrypt_chunk(KEY, -1, bytes(TAG))


@pytest.mark.parametrize("size", [0, 1, PLAIN_CHUNK - 1, PLAIN_CHUNK, PLAIN_CHUNK + 1,
                                  2 * PLAIN_CHUNK])
def test_ciphertext_chunks_are_exactly_the_tree_chunks(size: int) -> None:
    plain = os.urandom(size)
    sealed = encrypt_file(KEY, plain)
    assert len(sealed) == cipher_size(size)
    assert plain_size(len(sealed)) == size
    count = filetree.chunk_count(len(sealed))
    assert count == max(1, -(-size // PLAIN_CHUNK))
    for i in range(count - 1):
        assert len(filetree.chunk_of(sealed, i, CHUNK)) == CHUNK
    tree = filetree.build(sealed)
    for i in range(count):
        chunk = filetree.chunk_of(sealed, i, CHUNK)
        assert filetree.verify(tree.file_id, len(sealed), CHUNK, i, chunk, tree.proof(i))
        assert decrypt_chunk(KEY, i, chunk) == plain[i * PLAIN_CHUNK:(i + 1) * PLAIN_CHUNK]
    assert decrypt_file(KEY, sealed) == plain


def test_sizes_map_both_ways_and_impossible_sizes_are_none() -> None:
    small_plain, small = 8, 8 + TAG  # a small chunk size: same arithmetic
    for p in range(0, 10 * small_plain):
        c = cipher_size(p, small_plain)
        assert plain_size(c, small) == p
    possible = {cipher_size(p, small_plain) for p in range(0, 10 * small_plain)}
    for c in range(0, 10 * small):
        if c not in possible:
            assert plain_size(c, small) is None, c
    assert plain_size(TAG - 1) is None and plain_size(TAG) == 0
    assert plain_size(CHUNK + TAG) is None  # an empty plaintext chunk after a full one
    assert plain_size(CHUNK + TAG + 1) == PLAIN_CHUNK + 1
    assert cipher_size(PLAIN_MAX) == FILE_MAX
    assert cipher_size(PLAIN_MAX + 1) > FILE_MAX
    with pytest.raises(ValueError):
        cipher_size(-1)
    with pytest.raises(RemoteProtocolError):
        decrypt_file(KEY, bytes(CHUNK + 3))


def test_nonces_are_distinct_per_index() -> None:
    assert len({filecrypt.nonce(i) for i in range(1000)}) == 1000
    assert all(len(filecrypt.nonce(i)) == 24 for i in (0, 2**32 - 1))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(plain=st.binary(max_size=200), plain_chunk=st.integers(1, 24),
       order=st.randoms(use_true_random=False))
def test_any_order_of_chunks_opens_to_the_plaintext_and_swaps_fail(
        plain: bytes, plain_chunk: int, order: random.Random) -> None:
    sealed = encrypt_file(KEY, plain, plain_chunk)
    chunk = plain_chunk + TAG
    assert len(sealed) == cipher_size(len(plain), plain_chunk)
    count = filetree.chunk_count(len(sealed), chunk)
    indices = list(range(count))
    order.shuffle(indices)
    got = {i: decrypt_chunk(KEY, i, filetree.chunk_of(sealed, i, chunk)) for i in indices}
    assert b"".join(got[i] for i in range(count)) == plain
    if count > 1:
        i, j = order.sample(range(count), 2)
        with pytest.raises(RemoteProtocolError):
            decrypt_chunk(KEY, j, filetree.chunk_of(sealed, i, chunk))
