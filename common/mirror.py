"""State one service owns and others mirror: the zguide's Clone pattern, without sockets.

Theory of operation
-------------------
A service *owns* a table (discovery the peer table, the gateway its links, the
router the mesh directory); other services and tools keep a *mirror* of it.
The owner numbers every change with a version ``(epoch, seq)``: ``epoch`` is
fixed for the life of the owner's process and grows when it restarts; ``seq``
grows by one per change within an epoch (``Numbering``). Each change goes out
on the bus as an *update*: a key and its new value (None: the key is gone). The
owner answers a snapshot request with the whole table and the version it
reflects, and names its current version in every heartbeat.

A ``Mirror``:

1. subscribes to the updates first, and buffers whatever arrives;
2. once its subscriptions are active at the broker, asks for a snapshot
   (``wanted`` says why one is wanted; the shell sends the request);
3. takes the snapshot, drops the buffered updates at or below its ``seq`` and
   applies the later ones in order;
4. from then on applies the update numbered ``seq + 1`` as it comes, ignores one
   it has already applied, and asks for a new snapshot (buffering again) on a
   gap (an update was lost), on a newer epoch (the owner restarted), on a
   heartbeat naming a version it has not seen (the last updates were lost),
   and on anything from an older epoch or a snapshot older than what it holds,
   which it refuses.

Whatever the order in which the snapshot and the updates around it arrive, and
whatever is lost, duplicated or reordered, the mirror ends equal to the owner
(``tests/unit/test_mirror.py`` checks this over random interleavings). A mirror
keeps serving its last table while it resyncs; what changed reaches the service
as ``Change`` items, one per key, when it is applied. docs/protocol.md §2,
"Mirrored state".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Updates kept while waiting for a snapshot. Past this the oldest are dropped: the
#: snapshot reflects them, or the gap they leave asks for another one.
MAX_BUFFERED = 10_000


@dataclass(frozen=True, slots=True)
class Update(Generic[K, V]):
    """One numbered change of the owner's table: ``key`` now holds ``value`` (None: gone)."""

    epoch: int
    seq: int
    key: K
    value: V | None


@dataclass(frozen=True, slots=True)
class Change(Generic[K, V]):
    """What a mirror's table did for one key: ``old`` became ``new`` (None: absent)."""

    key: K
    old: V | None
    new: V | None


class Numbering:
    """The owner's side: its epoch and the number of its last change."""

    def __init__(self, epoch: int) -> None:
        if epoch <= 0:
            raise ValueError("an epoch is a positive number")
        self.epoch = epoch
        self.seq = 0

    def next(self) -> int:
        """Number the next change (call it in the same step that publishes the change)."""
        self.seq += 1
        return self.seq

    @property
    def version(self) -> tuple[int, int]:
        return self.epoch, self.seq


class Mirror(Generic[K, V]):
    """A replica of one owner's table (see the module docstring)."""

    def __init__(self, name: str, *, max_buffered: int = MAX_BUFFERED) -> None:
        self.name = name
        self.items: dict[K, V] = {}
        #: Version of ``items``; epoch 0 until the first snapshot.
        self.epoch = 0
        self.seq = 0
        #: True while updates are applied as they come; False while a snapshot is awaited.
        self.synced = False
        #: Why a snapshot is wanted now (None: none is).
        self.wanted: str | None = "start"
        self.max_buffered = max_buffered
        self._buffer: list[Update[K, V]] = []
        #: Why the last refused input was refused (the shell logs it).
        self.last_refusal = ""
        #: Counters for statistics() and logs.
        self.counts = {"applied": 0, "ignored": 0, "refused": 0, "snapshots": 0, "resyncs": 0}

    # -- inputs ------------------------------------------------------------------------

    def update(self, u: Update[K, V]) -> list[Change[K, V]]:
        """An update from the bus; returns what it changed (nothing while unsynced)."""
        if not self.synced:
            self._keep(u)
            return []
        if u.epoch < self.epoch:
            self._refuse(f"an update from an older epoch ({u.epoch} < {self.epoch})")
            return []
        if u.epoch > self.epoch:
            self._keep(u)
            self.resync("the owner restarted (new epoch)")
            return []
        if u.seq <= self.seq:
            self.counts["ignored"] += 1  # already applied (a duplicate)
            return []
        if u.seq != self.seq + 1:
            self._keep(u)
            self.resync(f"updates {self.seq + 1}..{u.seq - 1} were lost")
            return []
        change = self._apply(u)
        return [change] if change.old != change.new else []

    def snapshot(self, epoch: int, seq: int,
                 items: Iterable[tuple[K, V]]) -> list[Change[K, V]]:
        """The owner's whole table at ``(epoch, seq)``; returns what changed, per key."""
        if epoch <= 0 or seq < 0 or (epoch, seq) < (self.epoch, self.seq):
            self._refuse(f"a snapshot at {epoch}/{seq}, older than ours at "
                         f"{self.epoch}/{self.seq}")
            return []
        self.counts["snapshots"] += 1
        before = self.items
        self.items = dict(items)
        self.epoch, self.seq = epoch, seq
        self.synced = True
        self.wanted = None
        changed: dict[K, V | None] = {}  # key -> value before the snapshot
        for key in before.keys() | self.items.keys():
            if before.get(key) != self.items.get(key):
                changed[key] = before.get(key)
        buffered, self._buffer = sorted(self._buffer, key=lambda u: (u.epoch, u.seq)), []
        for u in buffered:
            if u.epoch < epoch or (u.epoch == epoch and u.seq <= seq):
                continue  # the snapshot already reflects it, or it is from a finished epoch
            if u.epoch > epoch or u.seq != self.seq + 1:
                # A later epoch, or a gap: the updates still buffered are all reflected by
                # the next snapshot, which is asked for after they were published.
                self.resync("the owner restarted (new epoch)" if u.epoch > epoch
                            else f"update {self.seq + 1} was lost")
                break
            old = self.items.get(u.key)
            self._apply(u)
            changed.setdefault(u.key, old)
        return [Change(k, old, self.items.get(k)) for k, old in changed.items()
                if old != self.items.get(k)]

    def heartbeat(self, epoch: int, seq: int) -> None:
        """The owner's current version, from its heartbeat."""
        if not self.synced:
            return
        if epoch > self.epoch:
            self.resync("the owner restarted (new epoch)")
        elif epoch < self.epoch:
            self._refuse(f"a heartbeat from an older epoch ({epoch} < {self.epoch})")
        elif seq > self.seq:
            self.resync(f"the owner is at {seq}, we are at {self.seq}: updates were lost")
        elif seq < self.seq:
            self._refuse(f"a heartbeat at {seq}, behind our {self.seq}")

    def resync(self, reason: str) -> None:
        """Ask for a new snapshot; buffer updates until it arrives."""
        if self.synced or self.wanted is None:
            self.counts["resyncs"] += 1
        self.synced = False
        self.wanted = self.wanted or reason

    def snapshot_failed(self) -> None:
        """The request did not get an answer: one is still wanted."""
        self.wanted = self.wanted or "the snapshot request failed"

    # -- internals ---------------------------------------------------------------------

    def _apply(self, u: Update[K, V]) -> Change[K, V]:
        old = self.items.get(u.key)
        if u.value is None:
            self.items.pop(u.key, None)
        else:
            self.items[u.key] = u.value
        self.seq = u.seq
        self.counts["applied"] += 1
        return Change(u.key, old, u.value)

    def _keep(self, u: Update[K, V]) -> None:
        self._buffer.append(u)
        if len(self._buffer) > self.max_buffered:
            del self._buffer[0]

    def _refuse(self, why: str) -> None:
        self.counts["refused"] += 1
        self.last_refusal = why
        self.resync(f"refused {why}")

    def statistics(self) -> dict[str, int]:
        return {**self.counts, "items": len(self.items), "buffered": len(self._buffer),
                "epoch": self.epoch, "seq": self.seq}
