"""Sender, relay and receiver cores run against each other on a virtual clock, over links
that drop, duplicate, delay, corrupt and lie, with restarts: the file that arrives is
exact (byte-equal, hash-equal) or nothing is accepted; the window and the relay's
pending table stay bounded; and once the links calm down, the download completes.

Topology: receiver D — relay R — sender S (the origin), and for some runs a direct link
D — S as well (D then prefers R, as it would a route's next hop). Every message crosses
the link as bytes (common/filewire.py), so garbage meets the real decoder.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tazcom.common import filecrypt, filewire
from tazcom.common.download import BAD_SKIP, WINDOW, Download
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.filerelay import (
    RELAY_PENDING,
    Relay,
    SendChunk,
    SendNone,
    SendWant,
    Serve,
    Store,
)
from tazcom.common.filetree import FileRef, HashTree, build, chunk_count, chunk_of
from tazcom.common.filewire import Chunk, NoneMsg, Want

S, R, D = b"S" * 32, b"R" * 32, b"D" * 32
KEY = bytes(range(32))


@dataclass
class Faults:
    drop: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    lie: float = 0.0
    delay: float = 0.0
    restart: float = 0.0

    @property
    def calm(self) -> Faults:
        return Faults()


@dataclass(order=True)
class InFlight:
    at: float
    seq: int
    dst: bytes = field(compare=False)
    src: bytes = field(compare=False)
    body: bytes = field(compare=False)


class Mesh:
    def __init__(self, data: bytes, chunk_size: int, direct: bool, faults: Faults,
                 rng: random.Random) -> None:
        self.data, self.chunk_size = data, chunk_size
        self.tree: HashTree = build(data, chunk_size)
        self.ref = FileRef(self.tree.file_id, len(data), chunk_size)
        self.count = chunk_count(len(data), chunk_size)
        self.faults, self.rng = faults, rng
        self.sources = [R, S] if direct else [R]
        self.links = {frozenset((D, R)), frozenset((R, S))} | (
            {frozenset((D, S))} if direct else set())
        self.now = 0.0
        self.heap: list[InFlight] = []
        self.seq = 0
        self.relay = Relay()
        self.cache: dict[int, tuple[bytes, tuple[bytes, ...]]] = {}
        self.download = Download(self.ref.file_id, len(data), chunk_size)
        self.partial = bytearray(len(data))
        self.refused: dict[str, int] = {}
        self.undecodable = 0

    # -- links ----------------------------------------------------------------------------

    def send(self, src: bytes, dst: bytes, msg: filewire.FileMessage) -> None:
        assert frozenset((src, dst)) in self.links
        f, rng = self.faults, self.rng
        if isinstance(msg, Chunk) and msg.data and rng.random() < f.lie:
            # a well-formed chunk with wrong bytes: only the proof can tell
            msg = Chunk(msg.file_id, msg.index, rng.randbytes(len(msg.data)), msg.proof)
        body = filewire.encode(msg)
        copies = 0 if rng.random() < f.drop else (2 if rng.random() < f.dup else 1)
        for _ in range(copies):
            b = body
            if rng.random() < f.corrupt:
                k = rng.randrange(len(b))
                b = b[:k] + bytes([b[k] ^ (1 << rng.randrange(8))]) + b[k + 1:]
            self.seq += 1
            heapq.heappush(self.heap, InFlight(self.now + 0.01 + rng.random() * f.delay,
                                               self.seq, dst, src, b))

    # -- nodes ----------------------------------------------------------------------------

    def deliver(self, m: InFlight) -> None:
        try:
            msg = filewire.decode(m.body)
        except RemoteProtocolError:
            self.undecodable += 1
            return
        {S: self.at_sender, R: self.at_relay, D: self.at_receiver}[m.dst](m.src, msg)

    def at_sender(self, src: bytes, msg: filewire.FileMessage) -> None:
        if isinstance(msg, Want) and msg.file_id == self.ref.file_id:
            for i in msg.indices:
                if i < self.count:
                    self.send(S, src, Chunk(msg.file_id, i, chunk_of(self.data, i,
                                            self.chunk_size), tuple(self.tree.proof(i))))
                else:
                    self.send(S, src, NoneMsg(msg.file_id, (i,)))

    def at_relay(self, src: bytes, msg: filewire.FileMessage) -> None:
        if isinstance(msg, Want):
            known = self.ref if msg.file_id == self.ref.file_id else None
            actions = self.relay.on_want(src, msg, self.now, file=known,
                                         has=self.cache.__contains__, upstream=S)
        elif isinstance(msg, Chunk):
            actions = self.relay.on_chunk(src, msg, self.now)
        else:
            actions = self.relay.on_none(src, msg, self.now)
        self.act(actions)

    def act(self, actions: list) -> None:  # type: ignore[type-arg]
        for a in actions:
            if isinstance(a, Serve):
                for i in a.indices:
                    data, proof = self.cache[i]
                    self.send(R, a.neighbour, Chunk(a.file_id, i, data, proof))
            elif isinstance(a, SendWant | SendNone | SendChunk):
                self.send(R, a.neighbour, a.msg)
            elif isinstance(a, Store):
                # what a relay caches is exact: checked before it is stored
                assert a.msg.data == chunk_of(self.data, a.msg.index, self.chunk_size)
                self.cache[a.msg.index] = (a.msg.data, a.msg.proof)

    def at_receiver(self, src: bytes, msg: filewire.FileMessage) -> None:
        d = self.download
        if msg.file_id != self.ref.file_id:
            return
        if isinstance(msg, Chunk):
            v = d.on_chunk(msg.index, msg.data, msg.proof, src, self.now)
            if v.ok:
                # exact or refused: an accepted chunk is the original, at its place
                assert msg.data == chunk_of(self.data, msg.index, self.chunk_size)
                self.partial[v.offset:v.offset + len(msg.data)] = msg.data
            else:
                assert v.reason is not None
                self.refused[v.reason] = self.refused.get(v.reason, 0) + 1
        elif isinstance(msg, NoneMsg):
            d.on_none(src, msg.indices, self.now)

    # -- the clock ------------------------------------------------------------------------

    def step(self) -> None:
        while self.heap and self.heap[0].at <= self.now:
            self.deliver(heapq.heappop(self.heap))
        if self.download.done:
            return
        if self.rng.random() < self.faults.restart:
            # the receiver restarts: only the persisted bitmap (and the partial file) remain
            self.download = Download(self.ref.file_id, len(self.data), self.chunk_size,
                                     self.download.have)
        if self.rng.random() < self.faults.restart:
            self.relay = Relay()  # the relay restarts; its cache is on disk
        self.act(self.relay.timer(self.now))
        for ask in self.download.wants(self.now, self.sources):
            assert len(ask.indices) <= WINDOW
            self.send(D, ask.source, Want(self.ref.file_id, S, 0, ask.indices))
        assert self.download.outstanding <= WINDOW
        assert len(self.relay.pending) <= RELAY_PENDING
        times = [t for t in (self.download.next_deadline(), self.relay.next_deadline())
                 if t is not None and t > self.now]
        if self.heap:
            times.append(self.heap[0].at)
        self.now = max(min(times, default=self.now + 1.0), self.now)

    def run(self, until: float) -> None:
        while self.now < until and not self.download.done:
            self.step()


def check_exact(mesh: Mesh) -> None:
    d = mesh.download
    assert d.done and d.progress == len(mesh.data)
    assert bytes(mesh.partial) == mesh.data
    assert build(bytes(mesh.partial), mesh.chunk_size).file_id == mesh.ref.file_id


def faults() -> st.SearchStrategy[Faults]:
    p = st.floats(0.0, 0.4)
    return st.builds(Faults, drop=p, dup=p, corrupt=st.floats(0.0, 0.2),
                     lie=st.floats(0.0, 0.3), delay=st.floats(0.0, 8.0),
                     restart=st.floats(0.0, 0.05))


CALM_UNTIL = 3 * BAD_SKIP  # after the chaos: every skip and timeout has long ended


@settings(max_examples=150, deadline=None, derandomize=True)
@given(size=st.integers(0, 300), chunk_size=st.integers(4, 32), direct=st.booleans(),
       f=faults(), rng=st.randoms(use_true_random=False), chaos=st.floats(0.0, 40.0))
def test_through_a_faulty_relay_the_file_is_exact_or_nothing_is_taken(
        size: int, chunk_size: int, direct: bool, f: Faults, rng: random.Random,
        chaos: float) -> None:
    data = rng.randbytes(size)
    mesh = Mesh(data, chunk_size, direct, f, rng)
    mesh.run(chaos)
    if mesh.download.done:
        check_exact(mesh)
        return
    mesh.faults = f.calm
    mesh.run(chaos + CALM_UNTIL)
    check_exact(mesh)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(plain=st.binary(max_size=200), plain_chunk=st.integers(1, 24), f=faults(),
       rng=st.randoms(use_true_random=False))
def test_a_dm_file_arrives_exact_through_the_relay_which_sees_only_ciphertext(
        plain: bytes, plain_chunk: int, f: Faults, rng: random.Random) -> None:
    sealed = filecrypt.encrypt_file(KEY, plain, plain_chunk)
    mesh = Mesh(sealed, plain_chunk + filecrypt.TAG, False, f, rng)
    mesh.run(30.0)
    mesh.faults = f.calm
    mesh.run(30.0 + CALM_UNTIL)
    check_exact(mesh)
    assert filecrypt.decrypt_file(KEY, bytes(mesh.partial), plain_chunk + filecrypt.TAG) == plain
    if len(plain) >= 16:  # the relay's cache holds no plaintext run
        cached = b"".join(d for d, _p in mesh.cache.values())
        assert plain[:16] not in cached


def test_a_clean_transfer_uses_each_link_once_per_chunk() -> None:
    data = bytes(range(256)) * 4
    mesh = Mesh(data, 16, False, Faults(), random.Random(1))
    sent: list[tuple[bytes, bytes, str]] = []
    real_send = mesh.send

    def counting(src: bytes, dst: bytes, msg: filewire.FileMessage) -> None:
        sent.append((src, dst, type(msg).__name__))
        real_send(src, dst, msg)

    mesh.send = counting  # type: ignore[method-assign]
    mesh.run(100.0)
    check_exact(mesh)
    chunks = [(s, d) for s, d, t in sent if t == "Chunk"]
    assert chunks.count((S, R)) == chunks.count((R, D)) == mesh.count == 64
    assert mesh.now < 0.1 and not mesh.refused  # two windows, four hops each
    # a second receiver fetching through the same relay is served from its cache
    second = Download(mesh.ref.file_id, len(data), 16)
    for ask in second.wants(mesh.now, [R]):
        actions = mesh.relay.on_want(D, Want(mesh.ref.file_id, S, 0, ask.indices), mesh.now,
                                     file=mesh.ref, has=mesh.cache.__contains__, upstream=S)
        assert [type(a) for a in actions] == [Serve]


def test_a_lying_relay_is_routed_around_through_the_direct_link() -> None:
    data = bytes(range(200))
    mesh = Mesh(data, 8, True, Faults(), random.Random(2))
    real_send = mesh.send

    def lying(src: bytes, dst: bytes, msg: filewire.FileMessage) -> None:
        if src == R and isinstance(msg, Chunk):
            msg = Chunk(msg.file_id, msg.index, bytes(len(msg.data)), msg.proof)
        real_send(src, dst, msg)

    mesh.send = lying  # type: ignore[method-assign]
    mesh.run(100.0)
    check_exact(mesh)
    assert mesh.refused.get("bad_proof") == mesh.count  # each chunk: once from R, then S
