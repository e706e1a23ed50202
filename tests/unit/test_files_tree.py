"""A file's hash tree (common/filetree.py): the formulas of docs/files.md, recomputed here
from hashlib alone; every chunk of every small shape verifies, and any change to the data,
the index, the proof, the size, the chunk size or the id is refused."""

from __future__ import annotations

import hashlib
import math
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import filetree
from tazcom.common.filetree import (
    CHUNK,
    FILE_MAX,
    FileRef,
    HashTree,
    TreeBuilder,
    build,
    chunk_count,
    chunk_length,
    chunk_of,
    proof_length,
    verify,
)

# -- an independent reference: docs/files.md read literally -------------------------------


def ref_leaf(i: int, data: bytes) -> bytes:
    return hashlib.blake2b(i.to_bytes(4, "big") + data, digest_size=32,
                           person=b"tazcom-fleaf").digest()


def ref_node(a: bytes, b: bytes) -> bytes:
    return hashlib.blake2b(a + b, digest_size=32, person=b"tazcom-fnode").digest()


def ref_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Level by level; an odd node at the end of a level is carried up unchanged."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        lv = levels[-1]
        up = [ref_node(lv[i], lv[i + 1]) for i in range(0, len(lv) - 1, 2)]
        if len(lv) % 2:
            up.append(lv[-1])
        levels.append(up)
    return levels


def ref_id(data: bytes, chunk_size: int) -> tuple[bytes, list[list[bytes]]]:
    chunks = [data[o:o + chunk_size] for o in range(0, len(data), chunk_size)] or [b""]
    levels = ref_levels([ref_leaf(i, c) for i, c in enumerate(chunks)])
    fid = hashlib.blake2b(len(data).to_bytes(8, "big") + chunk_size.to_bytes(4, "big")
                          + levels[-1][0], digest_size=32, person=b"tazcom-file").digest()
    return fid, levels


def ref_proof(levels: list[list[bytes]], i: int) -> list[bytes]:
    out = []
    for lv in levels[:-1]:
        if i ^ 1 < len(lv):
            out.append(lv[i ^ 1])
        i >>= 1
    return out


def streamed(data: bytes, chunk_size: int) -> filetree.Built:
    b = TreeBuilder(chunk_size)
    for o in range(0, len(data), chunk_size):
        b.add(data[o:o + chunk_size])
    return b.finish()


# -- shapes ---------------------------------------------------------------------------------

C = 4  # a small chunk size: the tree's shape depends only on the count
SIZES = sorted({0, 1, C - 1, C, C + 1, 2 * C, 2 * C + 1, 3 * C, 4 * C, 4 * C + 1,
                5 * C - 1, 7 * C, 8 * C, 8 * C + 1, 9 * C, 13 * C + 2, 16 * C, 17 * C + 3})


@pytest.mark.parametrize("size", SIZES)
def test_small_shapes_match_the_reference_and_every_chunk_verifies(size: int) -> None:
    data = bytes((i * 7 + 3) % 256 for i in range(size))
    fid, levels = ref_id(data, C)
    tree = build(data, C)
    assert tree.file_id == fid == streamed(data, C).file_id
    assert tree.count == chunk_count(size, C) == len(levels[0])
    for i in range(tree.count):
        chunk = chunk_of(data, i, C)
        assert len(chunk) == chunk_length(size, i, C)
        assert tree.proof(i) == ref_proof(levels, i)
        assert len(tree.proof(i)) == proof_length(i, tree.count)
        assert tree.leaf(i) == ref_leaf(i, chunk)
        assert verify(fid, size, C, i, chunk, tree.proof(i))
        assert FileRef(fid, size, C).check(i, chunk, tree.proof(i)) == ref_leaf(i, chunk)


@pytest.mark.parametrize("size", SIZES)
def test_every_tampering_is_refused(size: int) -> None:
    data = bytes((i * 5 + 1) % 256 for i in range(size))
    tree = build(data, C)
    fid, n = tree.file_id, tree.count
    for i in range(n):
        chunk, proof = chunk_of(data, i, C), tree.proof(i)
        bad: list[tuple[bytes, int, int, int, bytes, list[bytes]]] = [
            (fid, size, C, i, chunk + b"\0", proof),  # too long
            (fid, size + 1, C, i, chunk, proof),  # the size lies
            (fid, size, C + 1, i, chunk, proof),  # the chunk size lies
            (fid, size, C, i + 1, chunk, proof),  # moved forward
            (fid, size, C, n, chunk, proof),  # past the end
            (fid, size, C, -1, chunk, proof),
            (fid[:-1] + bytes([fid[-1] ^ 1]), size, C, i, chunk, proof),  # another id
            (fid, size, C, i, chunk, [*proof, proof[0] if proof else bytes(32)]),  # one more
        ]
        if i:
            bad.append((fid, size, C, i - 1, chunk, proof))  # moved back
        if size >= 1:
            bad.append((fid, size - 1, C, i, chunk, proof))
        if chunk:
            bad.append((fid, size, C, i, chunk[:-1], proof))  # truncated
            for k in range(len(chunk)):
                flipped = bytearray(chunk)
                flipped[k] ^= 0x80
                bad.append((fid, size, C, i, bytes(flipped), proof))
        for j in range(len(proof)):
            p = list(proof)
            p[j] = p[j][:5] + bytes([p[j][5] ^ 1]) + p[j][6:]
            bad.append((fid, size, C, i, chunk, p))
            bad.append((fid, size, C, i, chunk, proof[:j] + proof[j + 1:]))  # one fewer
            bad.append((fid, size, C, i, chunk, [*proof[:j], proof[j][:31], *proof[j + 1:]]))
        if len(proof) >= 2:
            bad.append((fid, size, C, i, chunk, [proof[1], proof[0], *proof[2:]]))  # swapped
        for args in bad:
            assert not verify(*args), args


def test_a_chunk_is_not_accepted_at_another_index_even_with_the_right_proof() -> None:
    data = bytes(4 * C)  # four identical chunks: only the index tells them apart
    tree = build(data, C)
    for i in range(4):
        for j in range(4):
            assert verify(tree.file_id, len(data), C, j, chunk_of(data, i, C),
                          tree.proof(i)) == (i == j)


def test_verify_refuses_malformed_arguments_without_raising() -> None:
    tree = build(b"abcdefgh", C)
    fid, proof = tree.file_id, tree.proof(0)
    assert not verify(fid[:31], 8, C, 0, b"abcd", proof)
    assert not verify(fid, -1, C, 0, b"abcd", proof)
    assert not verify(fid, 8, 0, 0, b"abcd", proof)
    assert not verify(fid, 8, C, True, b"abcd", proof)  # type: ignore[arg-type]
    assert not verify(fid, 8.0, C, 0, b"abcd", proof)  # type: ignore[arg-type]
    assert not verify(fid, 8, C, 0, b"abcd", [b"short"])
    assert verify(fid, 8, C, 0, b"abcd", proof)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK - 1])
def test_real_chunk_size_edges(size: int) -> None:
    data = os.urandom(size)
    fid, _levels = ref_id(data, CHUNK)
    tree = build(data, CHUNK)
    assert tree.file_id == fid == streamed(data, CHUNK).file_id
    assert tree.count == max(1, math.ceil(size / CHUNK))
    for i in range(tree.count):
        assert verify(fid, size, CHUNK, i, chunk_of(data, i, CHUNK), tree.proof(i))
    last = tree.count - 1
    assert not verify(fid, size, CHUNK, last, chunk_of(data, last, CHUNK) + b"x",
                      tree.proof(last))


def test_empty_file_is_one_empty_chunk() -> None:
    tree = build(b"")
    assert tree.count == 1 and tree.proof(0) == []
    assert tree.root == ref_leaf(0, b"")
    assert verify(tree.file_id, 0, CHUNK, 0, b"", [])
    assert not verify(tree.file_id, 0, CHUNK, 1, b"", [])
    assert TreeBuilder().finish().file_id == tree.file_id


def test_proof_lengths_are_at_most_ceil_log2() -> None:
    for n in range(1, 300):
        longest = max(proof_length(i, n) for i in range(n))
        assert longest == (math.ceil(math.log2(n)) if n > 1 else 0), n
    assert max(proof_length(i, chunk_count(1 << 30)) for i in range(0, 21846, 7)) == 15
    assert proof_length(0, chunk_count(FILE_MAX)) == 17 <= filetree.PROOF_MAX


def test_builder_refuses_what_is_not_a_file() -> None:
    b = TreeBuilder(C)
    with pytest.raises(ValueError):
        b.add(b"12345")  # over the chunk size
    b.add(b"12")
    with pytest.raises(ValueError):
        b.add(b"1234")  # after a short chunk
    b2 = TreeBuilder(C)
    b2.add(b"1234")
    with pytest.raises(ValueError):
        b2.add(b"")  # an empty chunk is only the empty file
    assert b2.finish().size == 4


def test_builder_memory_is_a_stack_of_log_n_subtrees() -> None:
    b = TreeBuilder(1)
    deepest = 0
    for i in range(1000):
        b.add(bytes([i % 256]))
        deepest = max(deepest, len(b._stack))
        assert len(b._stack) == bin(b.count).count("1")
    assert deepest <= 10
    data = bytes(i % 256 for i in range(1000))
    assert b.finish().file_id == ref_id(data, 1)[0]


def test_builder_hands_back_the_leaves_a_sender_keeps() -> None:
    data = os.urandom(10 * C + 1)
    b = TreeBuilder(C)
    leaves = b"".join(b.add(data[o:o + C]) for o in range(0, len(data), C))
    tree = HashTree.from_leaves(leaves, len(data), C)
    assert tree.file_id == b.finish().file_id == build(data, C).file_id
    with pytest.raises(ValueError):
        HashTree.from_leaves(leaves[:-32], len(data), C)
    with pytest.raises(IndexError):
        tree.proof(tree.count)


def test_sizes_and_counts() -> None:
    assert chunk_count(0) == chunk_count(1) == chunk_count(CHUNK) == 1
    assert chunk_count(CHUNK + 1) == 2
    assert chunk_count(FILE_MAX) == 87382
    assert chunk_length(CHUNK + 1, 1) == 1 and chunk_length(0, 0) == 0
    with pytest.raises(ValueError):
        chunk_length(CHUNK, 1)
    with pytest.raises(ValueError):
        chunk_count(-1)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(data=st.binary(max_size=600), chunk_size=st.integers(1, 64),
       pick=st.randoms(use_true_random=False))
def test_random_files_match_the_reference_and_refuse_changes(data: bytes, chunk_size: int,
                                                             pick: random.Random) -> None:
    fid, levels = ref_id(data, chunk_size)
    tree = build(data, chunk_size)
    assert tree.file_id == fid == streamed(data, chunk_size).file_id
    n = tree.count
    for i in pick.sample(range(n), min(n, 8)):
        chunk, proof = chunk_of(data, i, chunk_size), tree.proof(i)
        assert proof == ref_proof(levels, i)
        assert verify(fid, len(data), chunk_size, i, chunk, proof)
        if chunk:
            k = pick.randrange(len(chunk))
            changed = chunk[:k] + bytes([chunk[k] ^ (1 << pick.randrange(8))]) + chunk[k + 1:]
            assert not verify(fid, len(data), chunk_size, i, changed, proof)
        if proof:
            j = pick.randrange(len(proof))
            p = list(proof)
            p[j] = bytes(b ^ 0xFF for b in p[j])
            assert not verify(fid, len(data), chunk_size, i, chunk, p)
        other = pick.randrange(n)
        if other != i:  # the index is in the leaf: equal chunks elsewhere do not help
            assert not verify(fid, len(data), chunk_size, other, chunk, proof)
