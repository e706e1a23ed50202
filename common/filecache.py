"""The relay's file cache quota (docs/files.md, "Disk": ``files.cache_quota``). No I/O.

Room files a node relays are cached within one quota of bytes.
A file is admitted with its **whole** announced size reserved, however little of it is
cached yet: chunks then arrive without a check each, and the disk can never hold more
than the quota whatever order they come in. To make room, the least recently used files
are evicted; a file that is *pinned* (being downloaded or served right now) never is,
and a file that cannot fit beside the pinned ones is refused without evicting anything.
The shell deletes what ``admit`` and ``trim`` say, and calls ``touch`` when it serves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    size: int
    last_use: float
    pins: int = 0
    #: Admission order: breaks ties between equal ``last_use``.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """``ok``: the file may be cached; ``evict``: files to delete first (ok or not, these
    are already out of the book)."""

    ok: bool
    evict: tuple[bytes, ...] = ()


class FileCache:
    """Which cached files fit in ``quota`` bytes."""

    def __init__(self, quota: int) -> None:
        self.quota = quota
        self.files: dict[bytes, Entry] = {}
        self.used = 0
        self._seq = 0

    def __contains__(self, file_id: bytes) -> bool:
        return file_id in self.files

    def _add(self, file_id: bytes, size: int, last_use: float) -> None:
        self._seq += 1
        self.files[file_id] = Entry(size, last_use, 0, self._seq)
        self.used += size

    def _evict_for(self, need: int) -> tuple[bytes, ...]:
        """Evict LRU unpinned files until ``need`` more bytes fit; the caller checked they
        can."""
        victims = sorted((e.last_use, e.seq, fid) for fid, e in self.files.items()
                         if e.pins == 0)
        out = []
        for _t, _s, fid in victims:
            if self.used + need <= self.quota:
                break
            self.used -= self.files.pop(fid).size
            out.append(fid)
        return tuple(out)

    def admit(self, file_id: bytes, size: int, now: float) -> Admission:
        """May ``file_id`` (``size`` bytes) be cached? Already cached: yes (and touched)."""
        if size < 0:
            raise ValueError(f"size {size}")
        if file_id in self.files:
            self.touch(file_id, now)
            return Admission(True)
        pinned = sum(e.size for e in self.files.values() if e.pins)
        if pinned + size > self.quota:
            return Admission(False)
        evicted = self._evict_for(size)
        self._add(file_id, size, now)
        return Admission(True, evicted)

    def load(self, file_id: bytes, size: int, last_use: float) -> None:
        """A file found in the cache at start (its size, its mtime); ``trim`` after."""
        if file_id in self.files:
            self.remove(file_id)
        self._add(file_id, size, last_use)

    def trim(self) -> tuple[bytes, ...]:
        """Evict until within quota (after ``load``, or a smaller ``quota``)."""
        return self._evict_for(0)

    def touch(self, file_id: bytes, now: float) -> None:
        e = self.files.get(file_id)
        if e is not None:
            e.last_use = max(e.last_use, now)

    def pin(self, file_id: bytes) -> None:
        """In active use: not evicted until as many ``unpin``."""
        e = self.files.get(file_id)
        if e is not None:
            e.pins += 1

    def unpin(self, file_id: bytes) -> None:
        e = self.files.get(file_id)
        if e is not None and e.pins > 0:
            e.pins -= 1

    def remove(self, file_id: bytes) -> None:
        """The shell deleted it (or gave up on it)."""
        e = self.files.pop(file_id, None)
        if e is not None:
            self.used -= e.size
