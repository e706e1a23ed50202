"""A relay's side of file transfer: answer neighbours' wants from what it has, fetch the
rest from its next hop toward the origin, once per chunk (docs/files.md, "Transfer"). No
I/O: messages come in with ``now``, actions go out.

Theory of operation
-------------------
On a ``want`` from neighbour N, for each chunk (the shell says which it ``has`` and which
``upstream`` neighbour is the next hop toward the origin, and gives the file's ``FileRef``
from its manifest; an unknown file is answered ``none`` whole):

* it has it: ``Serve`` (the shell reads the chunk and its proof and sends ``chunk``);
* someone already waits for it: N is added to the waiters (merged: one upstream want);
* else, with an upstream other than N and room, a *pending* entry and one ``SendWant``
  upstream; without: ``none``.

At most ``RELAY_PENDING`` chunks are pending in all, and at most ``NEIGHBOUR_PENDING``
waited for by one neighbour (so one neighbour cannot take every slot); past either, the
answer is ``none`` (the requester asks elsewhere or later). A pending chunk expires after
``WANT_TIMEOUT``: its waiters get ``none``.

A ``chunk`` from the upstream a pending entry asked is checked against the file id; good,
it yields ``Store`` (the shell caches it if its quota admits: ``filecache``) and a
``SendChunk`` to every waiter; bad, ``Dropped(bad_proof)`` (score the sender) and ``none``
to the waiters. A chunk nobody here asked that neighbour for is ``Dropped(unwanted)``
before any hashing, and counted per neighbour (``unsolicited``).

A node that both downloads a file and relays it offers a chunk first to its ``Download``
(if that asked the sender), then here if ``expects`` says so (with the ``leaf`` the download's
verdict gave, so it is hashed once); only a chunk neither wanted goes to ``on_chunk``
to be dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .download import WANT_TIMEOUT, WINDOW
from .filetree import FileRef
from .filewire import INDICES_MAX, Chunk, NoneMsg, Want

#: Chunks pending upstream at once (12 MiB of 48 KiB chunks in flight through a relay).
RELAY_PENDING = 256
#: Pending chunks one neighbour may wait for: four downloads' windows.
NEIGHBOUR_PENDING = 4 * WINDOW

DropReason = Literal["unwanted", "bad_proof"]


@dataclass(frozen=True, slots=True)
class Serve:
    """Send ``neighbour`` these chunks (and their proofs) from your store."""

    neighbour: bytes
    file_id: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SendWant:
    neighbour: bytes
    msg: Want


@dataclass(frozen=True, slots=True)
class SendNone:
    neighbour: bytes
    msg: NoneMsg


@dataclass(frozen=True, slots=True)
class SendChunk:
    neighbour: bytes
    msg: Chunk


@dataclass(frozen=True, slots=True)
class Store:
    """A verified chunk: cache it (with its proof, to serve it later) if the quota admits;
    ``size``: the file's, as the want that made us fetch it said (the id commits to it)."""

    msg: Chunk
    leaf: bytes
    size: int = 0


@dataclass(frozen=True, slots=True)
class Dropped:
    """A chunk refused from ``neighbour``: for its score and the log."""

    neighbour: bytes
    file_id: bytes
    index: int
    reason: DropReason


Action = Serve | SendWant | SendNone | SendChunk | Store | Dropped


@dataclass(slots=True)
class Pending:
    file: FileRef
    upstream: bytes
    asked: float
    waiters: set[bytes] = field(default_factory=set)


def _nones(by: dict[tuple[bytes, bytes], list[int]]) -> list[Action]:
    """``none`` messages, at most INDICES_MAX indices each."""
    out: list[Action] = []
    for (neighbour, fid), indices in by.items():
        for k in range(0, len(indices), INDICES_MAX):
            out.append(SendNone(neighbour, NoneMsg(fid, tuple(indices[k:k + INDICES_MAX]))))
    return out


class Relay:
    """Every file's chunks in flight through this node."""

    def __init__(self) -> None:
        self.pending: dict[tuple[bytes, int], Pending] = {}
        #: Pending chunks each neighbour waits for.
        self.waiting: Counter[bytes] = Counter()
        #: Chunks dropped unread per neighbour: nobody here asked it for them.
        self.unsolicited: Counter[bytes] = Counter()
        #: Chunks that failed their proof per neighbour.
        self.bad: Counter[bytes] = Counter()

    def on_want(self, neighbour: bytes, want: Want, now: float, *, file: FileRef | None,
                has: Callable[[int], bool], upstream: bytes | None) -> list[Action]:
        """A ``want`` from ``neighbour``. ``file``: from the manifest (None: unknown here);
        ``has(index)``: the chunk is in this node's store; ``upstream``: the next hop
        toward ``want.origin`` (None: no route)."""
        fid = want.file_id
        if file is None or file.file_id != fid:
            return _nones({(neighbour, fid): list(want.indices)})
        serve: list[int] = []
        ask: list[int] = []
        none: list[int] = []
        count = file.count
        for i in want.indices:
            if i >= count:
                none.append(i)
            elif has(i):
                serve.append(i)
            elif (p := self.pending.get((fid, i))) is not None:
                if p.upstream == neighbour:
                    none.append(i)  # a loop: it asks us what we asked it for
                elif neighbour in p.waiters:
                    pass  # asked again (its own timeout): still one waiter, one want
                elif self.waiting[neighbour] >= NEIGHBOUR_PENDING:
                    none.append(i)
                else:
                    p.waiters.add(neighbour)
                    self.waiting[neighbour] += 1
            elif (upstream is None or upstream == neighbour
                  or len(self.pending) >= RELAY_PENDING
                  or self.waiting[neighbour] >= NEIGHBOUR_PENDING):
                none.append(i)
            else:
                self.pending[(fid, i)] = Pending(file, upstream, now, {neighbour})
                self.waiting[neighbour] += 1
                ask.append(i)
        out: list[Action] = []
        if serve:
            out.append(Serve(neighbour, fid, tuple(serve)))
        if ask:
            assert upstream is not None
            out.append(SendWant(upstream, Want(fid, want.origin, want.size, tuple(ask))))
        return out + _nones({(neighbour, fid): none} if none else {})

    def expects(self, neighbour: bytes, file_id: bytes, index: int) -> bool:
        """Did this relay ask ``neighbour`` for that chunk (and still waits)?"""
        p = self.pending.get((file_id, index))
        return p is not None and p.upstream == neighbour

    def _release(self, key: tuple[bytes, int]) -> Pending:
        p = self.pending.pop(key)
        for w in p.waiters:
            self.waiting[w] -= 1
            if self.waiting[w] <= 0:
                del self.waiting[w]
        return p

    def on_chunk(self, neighbour: bytes, chunk: Chunk, now: float, *,
                 leaf: bytes | None = None) -> list[Action]:
        """A ``chunk`` from ``neighbour``. ``leaf``: the caller's own download has just
        checked it against the same file id and gave this leaf (so it is hashed once)."""
        key = (chunk.file_id, chunk.index)
        if not self.expects(neighbour, *key):
            self.unsolicited[neighbour] += 1
            return [Dropped(neighbour, chunk.file_id, chunk.index, "unwanted")]
        p = self._release(key)
        if leaf is None:
            leaf = p.file.check(chunk.index, chunk.data, chunk.proof)
        if leaf is None:
            self.bad[neighbour] += 1
            out: list[Action] = [Dropped(neighbour, chunk.file_id, chunk.index, "bad_proof")]
            return out + _nones({(w, chunk.file_id): [chunk.index] for w in sorted(p.waiters)})
        return [Store(chunk, leaf, p.file.size)] + [SendChunk(w, chunk)
                                                     for w in sorted(p.waiters)]

    def on_none(self, neighbour: bytes, msg: NoneMsg, now: float) -> list[Action]:
        """``neighbour`` cannot give chunks we asked it for: our waiters get ``none``."""
        by: dict[tuple[bytes, bytes], list[int]] = {}
        for i in msg.indices:
            if self.expects(neighbour, msg.file_id, i):
                for w in sorted(self._release((msg.file_id, i)).waiters):
                    by.setdefault((w, msg.file_id), []).append(i)
        return _nones(by)

    def timer(self, now: float) -> list[Action]:
        """Expire chunks pending for WANT_TIMEOUT: their waiters get ``none``."""
        by: dict[tuple[bytes, bytes], list[int]] = {}
        for key in [k for k, p in self.pending.items() if now - p.asked >= WANT_TIMEOUT]:
            for w in sorted(self._release(key).waiters):
                by.setdefault((w, key[0]), []).append(key[1])
        return _nones(by)

    def next_deadline(self) -> float | None:
        return min((p.asked + WANT_TIMEOUT for p in self.pending.values()), default=None)

    def drop_neighbour(self, neighbour: bytes) -> list[Action]:
        """``neighbour``'s link is down: it waits for nothing any more, and what we asked
        of it is answered ``none`` to our waiters (they ask elsewhere)."""
        by: dict[tuple[bytes, bytes], list[int]] = {}
        for key, p in list(self.pending.items()):
            if neighbour in p.waiters:
                p.waiters.discard(neighbour)
                self.waiting[neighbour] -= 1
            if p.upstream == neighbour:
                for w in sorted(self._release(key).waiters):
                    by.setdefault((w, key[0]), []).append(key[1])
        self.waiting.pop(neighbour, None)
        return _nones(by)
