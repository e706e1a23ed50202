"""The shell of a ``common.mirror.Mirror``: feeds it from bus events, takes snapshots when
it wants one (docs/protocol.md §2, "Mirrored state").

Services get one from ``Runtime.mirror``, which asks for snapshots only once the
service's bus subscriptions are known to be active; the chat app builds its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from tazcom.common import rpc
from tazcom.common.errors import TazcomError
from tazcom.common.events import Event, ServiceHeartbeat
from tazcom.common.mirror import Change, Mirror
from tazcom.common.rejects import RejectLog
from tazcom.common.tables import Table

LIVE_AGAIN = "our bus subscriptions are (again) active"


class MirrorFeed:
    """Updates and the owner's heartbeats go to the core as they arrive; when the core
    wants a snapshot, one request at a time asks for it (again after a pause, or as soon
    as the owner's heartbeat shows it is there)."""

    RETRY_MIN, RETRY_MAX = 0.05, 1.0

    def __init__(self, table: Table, on_changes: Callable[[list[Change]], None], *,
                 fetch: Callable[[rpc.Request], Awaitable[Any]], log: logging.Logger,
                 spawn: Callable[[Coroutine[Any, Any, None], str], Any] | None = None,
                 live: Callable[[], bool] = lambda: True) -> None:
        self.table = table
        self.core: Mirror = Mirror(table.name)
        self.on_changes = on_changes
        self.fetch = fetch
        self.log = log
        self.spawn = spawn or (lambda coro, _name: asyncio.ensure_future(coro))
        self.live = live
        self.rejects = RejectLog(log)
        self._task: asyncio.Future[None] | None = None
        self._owner_spoke = asyncio.Event()

    def on_event(self, ev: Event) -> None:
        """Any event of the table's topics, or a heartbeat (others are ignored)."""
        if isinstance(ev, ServiceHeartbeat):
            if ev.service == self.table.owner and ev.src == self.table.owner:
                refused = self.core.counts["refused"]
                for version in ev.tables:
                    if version.name == self.table.name:
                        self.core.heartbeat(version.epoch, version.seq)
                self._log_refusal(refused, f"{self.table.owner}'s heartbeat")
                self._owner_spoke.set()
                self._kick()
            return
        update = self.table.update(ev)
        if update is None:
            return
        if ev.src != self.table.owner:
            self.rejects.reject(f"bus source {ev.src!r}", "not_owner",
                                f"{ev.TOPIC} is {self.table.owner}'s to publish")
            return
        refused = self.core.counts["refused"]
        changes = self.core.update(update)
        self._log_refusal(refused, f"bus source {ev.src!r}")
        if changes:
            self.on_changes(changes)
        self._kick()

    def _log_refusal(self, refused_before: int, source: str) -> None:
        if self.core.counts["refused"] > refused_before:
            self.rejects.reject(source, "stale", f"{self.table.name}: refused "
                                f"{self.core.last_refusal}; resyncing")

    def take(self, reply: Any) -> list[Change]:
        """A snapshot reply fetched by someone else (the chat app's start-up)."""
        refused = self.core.counts["refused"]
        changes = self.core.snapshot(*self.table.snapshot(reply))
        self._log_refusal(refused, f"{self.table.owner}'s snapshot")
        if changes:
            self.on_changes(changes)
        return changes

    def resync(self, reason: str) -> None:
        """Take a new snapshot (events may have been missed)."""
        self.core.resync(reason)
        self._kick()

    def _kick(self) -> None:
        if self.core.wanted is None or not self.live():
            return
        if self._task is None or self._task.done():
            self._task = self.spawn(self._sync(), f"snapshot {self.table.name}")

    async def _sync(self) -> None:
        delay = self.RETRY_MIN
        while self.core.wanted is not None:
            reason = self.core.wanted
            try:
                reply = await self.fetch(self.table.request)
            except TazcomError as e:
                self.core.snapshot_failed()
                self.log.debug("no %s snapshot from %s yet: %s", self.table.name,
                               self.table.owner, e.message)
            else:
                changes = self.take(reply)
                if reason not in ("start", LIVE_AGAIN):
                    self.log.info("%s resynced from %s at %d/%d (%s): %d changed",
                                  self.table.name, self.table.owner, self.core.epoch,
                                  self.core.seq, reason, len(changes))
                if self.core.wanted is None:
                    return
            self._owner_spoke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._owner_spoke.wait(), delay)
            delay = min(self.RETRY_MAX, delay * 2)
