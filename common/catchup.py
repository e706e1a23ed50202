"""Catch-up between two neighbours: find what the other lacks without listing everything.

Each side keeps a ``SyncIndex`` of what it offers (room messages and profiles
of the last 7 days, every held DM and receipt), grouped in one-hour buckets
of the envelope timestamp. A bucket's digest is its count and the XOR of its
message ids (ids are BLAKE2b outputs, so XOR is a fair fingerprint and is
updated in O(1) per message).

1. When a link comes up (and every minute after), each side sends its
   ``summary()``.
2. Each side lists its ids for every bucket whose digest differs
   (``differing()``).
3. For each such list it receives, a side sends the envelopes the other lacks
   (``lacking()``).

Both sides run the same steps, so each learns what it misses from the other
and nothing the other already has is sent again (docs/protocol.md,
"Catch-up").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BUCKET_MS = 3_600_000
MAX_IDS_PER_MESSAGE = 2048


def bucket_of(ts_ms: int) -> int:
    return ts_ms // BUCKET_MS


@dataclass(slots=True)
class _Bucket:
    count: int = 0
    digest: int = 0


Summary = list[tuple[int, int, bytes]]


class SyncIndex:
    """What this node offers in catch-up: id -> (bucket, recipient)."""

    def __init__(self) -> None:
        self._items: dict[bytes, tuple[int, bytes | None]] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._by_bucket: dict[int, set[bytes]] = {}

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def add(self, msg_id: bytes, ts_ms: int, to: bytes | None = None) -> None:
        if msg_id in self._items:
            return
        b = bucket_of(ts_ms)
        self._items[msg_id] = (b, to)
        bucket = self._buckets.setdefault(b, _Bucket())
        bucket.count += 1
        bucket.digest ^= int.from_bytes(msg_id, "big")
        self._by_bucket.setdefault(b, set()).add(msg_id)

    def remove(self, msg_id: bytes) -> None:
        item = self._items.pop(msg_id, None)
        if item is None:
            return
        b = item[0]
        bucket = self._buckets[b]
        bucket.count -= 1
        bucket.digest ^= int.from_bytes(msg_id, "big")
        self._by_bucket[b].discard(msg_id)
        if not bucket.count:
            del self._buckets[b]
            del self._by_bucket[b]

    def recipient(self, msg_id: bytes) -> bytes | None:
        item = self._items.get(msg_id)
        return item[1] if item else None

    def expire(self, before_ms: int, keep: Iterable[bytes] = ()) -> list[bytes]:
        """Drop buckets older than ``before_ms`` except ids in ``keep``; returns dropped ids."""
        keep = set(keep)
        cutoff = bucket_of(before_ms)
        dropped = [i for b in list(self._by_bucket) if b < cutoff
                   for i in list(self._by_bucket[b]) if i not in keep]
        for msg_id in dropped:
            self.remove(msg_id)
        return dropped

    def summary(self) -> Summary:
        return [(b, v.count, v.digest.to_bytes(16, "big"))
                for b, v in sorted(self._buckets.items())]

    def ids_in(self, bucket: int) -> list[bytes]:
        return sorted(self._by_bucket.get(bucket, ()))


def differing(mine: Summary, theirs: Summary) -> list[int]:
    """Buckets whose count or digest differ, including those only one side has."""
    a = {b: (c, d) for b, c, d in mine}
    t = {b: (c, d) for b, c, d in theirs}
    return sorted(b for b in a.keys() | t.keys() if a.get(b) != t.get(b))


def lacking(index: SyncIndex, bucket: int, their_ids: Iterable[bytes],
            lo: bytes | None = None, hi: bytes | None = None) -> list[bytes]:
    """Ids we have in ``bucket`` that the peer did not list, within the part of the bucket
    its list covers: above ``lo`` (exclusive) and up to ``hi`` (inclusive); None: open."""
    theirs = set(their_ids)
    return [i for i in index.ids_in(bucket) if i not in theirs
            and (lo is None or i > lo) and (hi is None or i <= hi)]


def id_lists(ids: list[bytes], size: int) -> list[list[bytes]]:
    """A bucket's ids (ascending) as the id lists that carry them: full lists while more
    follow, and always a last one that is not full (empty if need be), so the receiver
    knows where the whole list ends (``IdCursor``)."""
    out = chunks(ids, size)
    if len(out[-1]) == size:
        out.append([])
    return out


class IdCursor:
    """Where each peer's id list of a bucket has got to: a full list means more follow,
    and covers the ids above the previous list's last up to its own last; a list that is
    not full ends it. Bounded (the oldest positions are forgotten)."""

    def __init__(self, size: int, most: int = 4096) -> None:
        self.size = size
        self.most = most
        self._at: dict[tuple[bytes, int], bytes] = {}

    def span(self, link: bytes, bucket: int, ids: list[bytes]
             ) -> tuple[bytes | None, bytes | None]:
        """The part ``(lo, hi]`` of the bucket that this list of the peer covers."""
        lo = self._at.pop((link, bucket), None)
        if lo is not None and ids and min(ids) <= lo:
            lo = None  # a new list of that bucket began
        if len(ids) < self.size:
            return lo, None
        hi = max(ids)
        self._at[(link, bucket)] = hi
        while len(self._at) > self.most:
            del self._at[next(iter(self._at))]
        return lo, hi


def chunks(ids: list[bytes], size: int = MAX_IDS_PER_MESSAGE) -> list[list[bytes]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]
