"""A file's identity: a hash tree over fixed-size chunks (docs/files.md, "Identity of a
file"). No I/O.

Theory of operation
-------------------
A file of ``size`` bytes is cut into ``chunk_count(size)`` chunks of ``chunk_size`` bytes,
the last one shorter (an empty file has one empty chunk). Each chunk gives a leaf::

    leaf(i)  = BLAKE2b-256(person "tazcom-fleaf", u32be(i) || chunk_i)
    node     = BLAKE2b-256(person "tazcom-fnode", left || right)
    file id  = BLAKE2b-256(person "tazcom-file", u64be(size) || u32be(chunk_size) || root)

Leaves are paired level by level; an odd node at the end of a level is carried up
unchanged (not hashed with itself, so no two trees share a root by duplication). The leaf
commits to its index, so a chunk cannot be moved; the id commits to the size, so a
manifest cannot lie about it and a chunk past the end has no valid proof.

Level-by-level pairing with carry-up gives the same root as merging, from right to left,
the perfect subtrees of ``n``'s binary decomposition (13 = 8 + 4 + 1 gives
``node(T8, node(T4, leaf12))``): a node's left neighbour at a level is complete whenever
it exists. That is what lets ``TreeBuilder`` hash a file as a stream, holding one
subtree hash per set bit of the count (at most 32), never the leaves.

A chunk's **proof** is the sibling hashes from its leaf up to the root, skipping the
levels where its node is carried up: at most ``ceil(log2(n))`` hashes (17 at
``FILE_MAX``). ``verify`` needs nothing but the file id, the size and the chunk size: the
count, the length of each chunk and of each proof follow from them, and all three are
checked exactly.

Who makes proofs (the decision, and why)
-----------------------------------------
Recomputing a proof from the leaves alone costs O(n) hashes per chunk, O(n²) per file
(21,846 chunks for 1 GiB: half a billion hashes). So ``HashTree.from_leaves`` rebuilds
every level above the leaves once (n - 1 node hashes, some milliseconds per GiB) and keeps
them packed: 64 bytes per chunk in all, 1.4 MiB for 1 GiB, 5.5 MiB at ``FILE_MAX``; a
proof is then O(log n) slicing. A sender keeps the leaf hashes its ``TreeBuilder`` gave
(32 bytes per 48 KiB chunk, e.g. a ``.leaves`` file next to the file) and builds the tree
when it starts serving. A receiver gets each leaf from ``leaf_hash`` (``Download`` hands it
back with every accepted chunk), so once complete it serves the same way. A relay that
caches part of a file has no leaves for the rest: it stores each chunk's proof as it
received it (the proof of a chunk is unique; about 1 % of the chunk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

#: Bytes of a chunk on the wire in version 1 (docs/files.md): a chunk, its index, file id
#: and proof fit one link ``app`` body (65,455 bytes) with room to spare.
CHUNK = 49152
#: The largest file (its size as announced: ciphertext for DM files): 4 GiB.
FILE_MAX = 4 * 1024**3
#: A hash: a leaf, a node, a root, a file id.
HASH = 32
#: Chunk indices are u32 in the leaf hash.
INDEX_MAX = 2**32 - 1
#: Proof hashes a ``chunk`` message may carry (enough for 2^32 chunks); a real proof of a
#: version-1 file has at most 17.
PROOF_MAX = 32

PERSON_LEAF = b"tazcom-fleaf"
PERSON_NODE = b"tazcom-fnode"
PERSON_FILE = b"tazcom-file"


def chunk_count(size: int, chunk_size: int = CHUNK) -> int:
    """Chunks of a file of ``size`` bytes: at least one (an empty file has one empty
    chunk, so every file has a root and every chunk a leaf)."""
    if size < 0 or chunk_size < 1:
        raise ValueError(f"size {size}, chunk size {chunk_size}")
    return max(1, -(-size // chunk_size))


def chunk_length(size: int, index: int, chunk_size: int = CHUNK) -> int:
    """The exact length of chunk ``index``: ``chunk_size`` but for the last."""
    count = chunk_count(size, chunk_size)
    if not 0 <= index < count:
        raise ValueError(f"chunk {index} of a file of {count} chunks")
    return chunk_size if index < count - 1 else size - (count - 1) * chunk_size


def leaf_hash(index: int, data: bytes) -> bytes:
    """The leaf of chunk ``index``: the index is inside, so a chunk cannot be moved."""
    h = hashlib.blake2b(index.to_bytes(4, "big"), digest_size=HASH, person=PERSON_LEAF)
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(left + right, digest_size=HASH, person=PERSON_NODE).digest()


def file_id(size: int, chunk_size: int, root: bytes) -> bytes:
    """The file id: commits to the size and chunk size as well as the root."""
    return hashlib.blake2b(size.to_bytes(8, "big") + chunk_size.to_bytes(4, "big") + root,
                           digest_size=HASH, person=PERSON_FILE).digest()


def proof_length(index: int, count: int) -> int:
    """Hashes in the proof of leaf ``index`` of ``count``: one per level where the node
    has a sibling (a node carried up has none)."""
    n = 0
    while count > 1:
        if index ^ 1 < count:
            n += 1
        index >>= 1
        count = (count + 1) >> 1
    return n


def root_from_proof(index: int, count: int, leaf: bytes, proof: Sequence[bytes]) -> bytes | None:
    """The root that ``leaf`` at ``index`` and its ``proof`` lead to, or None when the
    proof has the wrong number or size of hashes for that position."""
    h = leaf
    used = 0
    try:
        while count > 1:
            if index & 1:
                sibling = proof[used]
                used += 1
                if len(sibling) != HASH:
                    return None
                h = node_hash(sibling, h)
            elif index + 1 < count:
                sibling = proof[used]
                used += 1
                if len(sibling) != HASH:
                    return None
                h = node_hash(h, sibling)
            index >>= 1
            count = (count + 1) >> 1
    except IndexError:
        return None
    return h if used == len(proof) else None


def check(fid: bytes, size: int, chunk_size: int, index: int, data: bytes,
          proof: Sequence[bytes]) -> bytes | None:
    """``verify``, returning the chunk's leaf hash when it holds (a receiver keeps the
    leaves to serve the file later without hashing it again), else None."""
    if (type(size) is not int or type(chunk_size) is not int or type(index) is not int
            or size < 0 or chunk_size < 1 or len(fid) != HASH):
        return None
    count = chunk_count(size, chunk_size)
    if count - 1 > INDEX_MAX or not 0 <= index < count:
        return None
    expected = chunk_size if index < count - 1 else size - (count - 1) * chunk_size
    if len(data) != expected or len(proof) != proof_length(index, count):
        return None
    leaf = leaf_hash(index, data)
    root = root_from_proof(index, count, leaf, proof)
    return leaf if root is not None and file_id(size, chunk_size, root) == fid else None


def verify(fid: bytes, size: int, chunk_size: int, index: int, data: bytes,
           proof: Sequence[bytes]) -> bool:
    """Is ``data`` chunk ``index`` of the file ``fid`` of ``size`` bytes? Stateless: checks
    the index against the count, the data's exact length, the proof's exact length and
    every hash up to the id. Anything malformed is simply False."""
    return check(fid, size, chunk_size, index, data, proof) is not None


@dataclass(frozen=True, slots=True)
class FileRef:
    """What a node must know of a file to check its chunks: from its manifest."""

    file_id: bytes
    size: int
    chunk_size: int = CHUNK

    @property
    def count(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def check(self, index: int, data: bytes, proof: Sequence[bytes]) -> bytes | None:
        return check(self.file_id, self.size, self.chunk_size, index, data, proof)


@dataclass(frozen=True, slots=True)
class Built:
    """What hashing a whole file gives: its id and what the id commits to."""

    size: int
    chunk_size: int
    count: int
    root: bytes
    file_id: bytes


class TreeBuilder:
    """Hashes a file chunk by chunk in O(log n) memory: a stack of perfect-subtree hashes,
    one per set bit of the count so far (the leaves are handed back, never kept)."""

    def __init__(self, chunk_size: int = CHUNK) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk size {chunk_size}")
        self.chunk_size = chunk_size
        self.size = 0
        self.count = 0
        #: (height, hash), heights strictly decreasing from the bottom of the stack.
        self._stack: list[tuple[int, bytes]] = []
        self._short = False

    def add(self, data: bytes) -> bytes:
        """Take the next chunk (``chunk_size`` bytes, the last may be shorter); returns its
        leaf hash, which a sender keeps to make proofs later (``HashTree``)."""
        if self._short:
            raise ValueError("a chunk after a short one: only the last chunk may be short")
        if len(data) > self.chunk_size:
            raise ValueError(f"a chunk of {len(data)} bytes; chunks are {self.chunk_size}")
        if self.count > INDEX_MAX:
            raise ValueError("over 2^32 chunks")
        if not data and self.count:
            # only an empty file has an empty chunk: a reader's b"" at the end is not one
            raise ValueError("an empty chunk after the first")
        if len(data) < self.chunk_size:
            self._short = True
        leaf = leaf_hash(self.count, data)
        self.count += 1
        self.size += len(data)
        height, h = 0, leaf
        stack = self._stack
        while stack and stack[-1][0] == height:
            h = node_hash(stack.pop()[1], h)
            height += 1
        stack.append((height, h))
        return leaf

    def finish(self) -> Built:
        """The root and id; an empty file (no chunk added) is one empty chunk."""
        if self.count == 0:
            self.add(b"")
        # merge the perfect subtrees right to left: the carry-up rule (module docstring)
        h = self._stack[-1][1]
        for _height, left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return Built(self.size, self.chunk_size, self.count, h,
                     file_id(self.size, self.chunk_size, h))


class HashTree:
    """Every level of a file's tree, packed (64 bytes per chunk in all), to make proofs in
    O(log n). Built from the leaf hashes a sender kept (module docstring)."""

    def __init__(self, size: int, chunk_size: int, levels: list[bytes]) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.count = len(levels[0]) // HASH
        self._levels = levels
        self.root = levels[-1]
        self.file_id = file_id(size, chunk_size, self.root)

    @classmethod
    def from_leaves(cls, leaves: bytes, size: int, chunk_size: int = CHUNK) -> HashTree:
        """``leaves``: the concatenated leaf hashes, in order, of a file of ``size`` bytes."""
        count = chunk_count(size, chunk_size)
        if len(leaves) != count * HASH:
            raise ValueError(f"{len(leaves)} bytes of leaves for {count} chunks")
        levels = [bytes(leaves)]
        level = levels[0]
        while len(level) > HASH:
            n = len(level) // HASH
            up = bytearray()
            for i in range(0, n - 1, 2):
                up += node_hash(level[i * HASH:(i + 1) * HASH],
                                level[(i + 1) * HASH:(i + 2) * HASH])
            if n & 1:
                up += level[(n - 1) * HASH:]  # the odd node is carried up
            level = bytes(up)
            levels.append(level)
        return cls(size, chunk_size, levels)

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index * HASH:(index + 1) * HASH]

    def proof(self, index: int) -> list[bytes]:
        """The sibling hashes of chunk ``index``, leaf to root."""
        if not 0 <= index < self.count:
            raise IndexError(f"chunk {index} of {self.count}")
        out = []
        for level in self._levels[:-1]:
            n = len(level) // HASH
            sibling = index ^ 1
            if sibling < n:
                out.append(level[sibling * HASH:(sibling + 1) * HASH])
            index >>= 1
        return out


def build(data: bytes, chunk_size: int = CHUNK) -> HashTree:
    """The tree of a file held in memory (tests, small files)."""
    count = chunk_count(len(data), chunk_size)
    leaves = b"".join(leaf_hash(i, chunk_of(data, i, chunk_size)) for i in range(count))
    return HashTree.from_leaves(leaves, len(data), chunk_size)


def chunk_of(data: bytes, index: int, chunk_size: int = CHUNK) -> bytes:
    """Chunk ``index`` of a file held in memory."""
    return data[index * chunk_size:(index + 1) * chunk_size]
