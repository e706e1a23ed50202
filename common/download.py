"""A receiver's download of one file: which chunks to ask for, from whom, and what to keep
(docs/files.md, "Transfer"). No I/O: time comes in as ``now``, wants go out as ``Ask``s.

Theory of operation
-------------------
The download knows the file (id, size, chunk size, from the manifest) and a bitmap of the
chunks it has verified (``have``, persisted by the shell next to the partial file, so a
restart asks only for what is missing). The shell calls:

* ``wants(now, sources)`` after anything happened: it returns the wants to send, at most
  ``WINDOW`` chunks outstanding in all (so memory and the data in flight are bounded
  whatever the size, and a slow receiver slows the sender). Chunks are asked lowest index
  first (a partial file fills from the front: previews, and sequential writes), each from
  the first of ``sources`` (in preference order: the next hop toward the origin, then
  neighbours that announced the file) not skipped for that chunk;
* ``on_chunk`` for every ``chunk`` message of this file: checked against the file id,
  it is refused as ``unwanted`` (never asked from that source: dropped unread, before any
  hashing), ``duplicate`` (already verified) or ``bad_proof``; or taken: the shell writes
  ``data`` at ``offset``, and only once that write is durable persists ``have``;
* ``on_none`` when a source says it cannot give chunks, ``timer`` at ``next_deadline()``,
  ``drop_source`` when a link goes down.

A source that answers ``none`` or stays silent ``WANT_TIMEOUT`` is skipped for that chunk
for ``SKIP`` seconds, one that sends a bad chunk for ``BAD_SKIP``: the chunk goes to the
next source, or back to the same one once its skip ends (a relay that could not get a
chunk may get it later). A chunk that arrives after its want timed out is still taken
within ``LATE`` of the ask (it is as good as any, and was paid for). Each call looks at
most ``SCAN`` missing chunks past those outstanding, so a stalled download (no source
has anything) costs O(WINDOW) per call, not O(file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import LocalProtocolError
from .filetree import CHUNK, check, chunk_count

#: Chunks outstanding at once per download: 1.5 MiB of 48 KiB chunks.
WINDOW = 32
#: Silence after which a want is asked of another source.
WANT_TIMEOUT = 5.0
#: How long a source that said ``none`` or timed out is not asked for that chunk again.
SKIP = WANT_TIMEOUT
#: How long a source that sent a bad chunk is not asked for that chunk again.
BAD_SKIP = 60.0
#: A chunk answering a timed-out want is still taken this long after the ask.
LATE = 2 * WANT_TIMEOUT
#: Missing chunks looked at per ``wants`` call beyond those outstanding.
SCAN = 4 * WINDOW

Reason = Literal["bad_proof", "unwanted", "duplicate"]


@dataclass(frozen=True, slots=True)
class Ask:
    """Send ``source`` a ``want`` for ``indices`` (at most WINDOW: one message)."""

    source: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``on_chunk`` decided: taken (``reason`` None: write the data at ``offset``;
    ``leaf`` is its leaf hash, kept to serve the file later) or refused, with why."""

    reason: Reason | None
    offset: int = 0
    leaf: bytes = b""

    @property
    def ok(self) -> bool:
        return self.reason is None


def bitmap_bytes(count: int) -> int:
    return (count + 7) >> 3


class Download:
    """The state of one file being received."""

    def __init__(self, file_id: bytes, size: int, chunk_size: int = CHUNK,
                 have: bytes | None = None) -> None:
        """``have``: the bitmap a previous run persisted (bit ``i`` is bit ``i % 8`` of
        byte ``i // 8``); one of the wrong length or with bits past the end is refused
        (``LocalProtocolError``: the shell starts over)."""
        self.file_id = file_id
        self.size = size
        self.chunk_size = chunk_size
        self.count = chunk_count(size, chunk_size)
        n = bitmap_bytes(self.count)
        if have is None:
            self._have = bytearray(n)
        else:
            if len(have) != n or (self.count & 7 and have[-1] >> (self.count & 7)):
                raise LocalProtocolError(f"a bitmap of {len(have)} bytes for {self.count} "
                                         "chunks, or bits past the last chunk")
            self._have = bytearray(have)
        self.verified = sum(bin(b).count("1") for b in self._have)
        last = self.size - (self.count - 1) * self.chunk_size
        self.progress = self.verified * self.chunk_size
        if self._bit(self.count - 1):
            self.progress -= self.chunk_size - last
        #: The lowest chunk that may be missing.
        self._cursor = 0
        self._advance()
        #: index -> (source, asked at): the wants in flight, at most WINDOW.
        self._out: dict[int, tuple[bytes, float]] = {}
        #: index -> {source: taken until}: wants that timed out, whose answer is still taken.
        self._late: dict[int, dict[bytes, float]] = {}
        #: index -> {source: not asked until}.
        self._skip: dict[int, dict[bytes, float]] = {}

    # -- state --------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.verified == self.count

    @property
    def have(self) -> bytes:
        """The bitmap of verified chunks, to persist once their data is durable."""
        return bytes(self._have)

    @property
    def outstanding(self) -> int:
        return len(self._out)

    def has(self, index: int) -> bool:
        return 0 <= index < self.count and self._bit(index)

    def offset(self, index: int) -> int:
        return index * self.chunk_size

    def _bit(self, i: int) -> bool:
        return bool(self._have[i >> 3] >> (i & 7) & 1)

    def _advance(self) -> None:
        have, i = self._have, self._cursor
        while i < self.count:
            if have[i >> 3] == 0xFF:
                i = (i | 7) + 1
            elif have[i >> 3] >> (i & 7) & 1:
                i += 1
            else:
                break
        self._cursor = min(i, self.count)

    # -- asking -------------------------------------------------------------------------

    def wants(self, now: float, sources: Sequence[bytes]) -> list[Ask]:
        """The wants to send now (expiring those that timed out first)."""
        self.timer(now)
        free = WINDOW - len(self._out)
        if free <= 0 or not sources or self.done:
            return []
        batches: dict[bytes, list[int]] = {}
        have, out, skip = self._have, self._out, self._skip
        looked = 0
        i = self._cursor
        while i < self.count and free > 0 and looked < SCAN:
            if have[i >> 3] == 0xFF:
                i = (i | 7) + 1
                continue
            if not have[i >> 3] >> (i & 7) & 1 and i not in out:
                looked += 1
                skipped = skip.get(i, {})
                source = next((s for s in sources if skipped.get(s, 0.0) <= now), None)
                if source is not None:
                    out[i] = (source, now)
                    batches.setdefault(source, []).append(i)
                    free -= 1
            i += 1
        return [Ask(s, tuple(ix)) for s, ix in batches.items()]

    def timer(self, now: float) -> list[tuple[int, bytes]]:
        """Expire wants silent for WANT_TIMEOUT (their source is skipped for that chunk)
        and forget old skips; returns the expired ``(index, source)`` (a slow source)."""
        expired = [(i, s) for i, (s, t) in self._out.items() if now - t >= WANT_TIMEOUT]
        for i, s in expired:
            t = self._out.pop(i)[1]
            self._skip.setdefault(i, {})[s] = now + SKIP
            self._late.setdefault(i, {})[s] = t + LATE
        for table in (self._skip, self._late):
            for i, m in list(table.items()):
                for s in [s for s, u in m.items() if u <= now]:
                    del m[s]
                if not m:
                    del table[i]
        return expired

    def next_deadline(self) -> float | None:
        """When ``timer`` (then ``wants``) has something to do: a want times out, or a
        skipped source may be asked again. After ``timer(now)`` it is later than ``now``."""
        times = [t + WANT_TIMEOUT for _s, t in self._out.values()]
        times += [u for m in self._skip.values() for u in m.values()]
        return min(times, default=None)

    # -- answers ------------------------------------------------------------------------

    def _asked(self, index: int, source: bytes, now: float) -> bool:
        ask = self._out.get(index)
        if ask is not None and ask[0] == source:
            return True
        return self._late.get(index, {}).get(source, 0.0) > now

    def on_chunk(self, index: int, data: bytes, proof: Sequence[bytes], source: bytes,
                 now: float) -> Verdict:
        """A ``chunk`` of this file from ``source``: refused with a reason, or taken."""
        if not 0 <= index < self.count:
            return Verdict("unwanted")
        if self._bit(index):
            return Verdict("duplicate")
        if not self._asked(index, source, now):
            return Verdict("unwanted")  # dropped unread: a push costs us no hashing
        leaf = check(self.file_id, self.size, self.chunk_size, index, data, proof)
        if leaf is None:
            if self._out.get(index, (b"",))[0] == source:
                del self._out[index]
            self._late.get(index, {}).pop(source, None)
            self._skip.setdefault(index, {})[source] = now + BAD_SKIP
            return Verdict("bad_proof")
        self._have[index >> 3] |= 1 << (index & 7)
        self.verified += 1
        self.progress += len(data)
        self._out.pop(index, None)  # taken from whoever: another source's answer is late
        self._late.pop(index, None)
        self._skip.pop(index, None)
        if index == self._cursor:
            self._advance()
        return Verdict(None, index * self.chunk_size, leaf)

    def on_none(self, source: bytes, indices: Sequence[int], now: float) -> list[int]:
        """``source`` cannot give these chunks now: they go to the next source. Returns
        the indices that were waiting on it."""
        freed = []
        for i in indices:
            ask = self._out.get(i)
            mine = ask is not None and ask[0] == source
            if mine:
                del self._out[i]
                freed.append(i)
            late = self._late.get(i, {}).pop(source, None) is not None
            if mine or late:
                self._skip.setdefault(i, {})[source] = now + SKIP
        return freed

    def drop_source(self, source: bytes) -> list[int]:
        """``source``'s link is down: its wants are asked elsewhere at the next ``wants``
        (not skipped: the caller no longer lists it)."""
        freed = [i for i, (s, _t) in self._out.items() if s == source]
        for i in freed:
            del self._out[i]
        return freed
