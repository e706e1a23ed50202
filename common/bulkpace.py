"""When a link carrying bulk may take its next burst (docs/files.md, "Priorities on a link").

A chat frame written on a link waits behind every byte of bulk already handed to the
transport and the kernel: the transport's buffer, the socket's unsent bytes, the bytes in
flight and whatever queue the path's bottleneck holds (a router, a shaper). TCP's own
window fills that last queue (the bytes in flight grow until loss or until BBR's estimate
says stop), so the gateway bounds the whole of it itself: the next burst of bulk goes
out only once what is queued, unsent or unacknowledged (``queued``: the transport's
buffer plus the socket's ``SIOCOUTQ``), is down to ``TARGET`` seconds of the link's rate.
A chat frame then waits behind at most that and the burst (one ``part`` of a file chunk,
at most 16 KiB, to a peer that said ``part/1``; one whole chunk to an older one).

The rate is measured from the same figure: between two looks at a queue that never ran
dry, the bytes that left it over the time taken are what the path delivers (pacing the
socket from ``tcpi_delivery_rate`` instead would measure its own pacing, and each
refresh below the last would lower it for good). A look that finds the queue empty
means the last wait was too long (the rate was underestimated, or the timer late): the
rate is raised, so that it cannot stay low for good.

Pure: the shell (``services/gateway.py``, ``services/sendqueue.py``) reads the socket
and keeps the timer.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds of the link's rate left queued when the next burst goes (a timer's wakeup is
#: late by up to a millisecond: less and the link would go idle between bursts).
TARGET = 0.001
#: Bytes queued below which bulk always goes, whatever the rate (a slow link still gets
#: a burst behind a nearly drained queue).
FLOOR = 4 * 1024
#: ... and above which it always waits (a fast link: the kernel's queue stays bounded).
CEILING = 512 * 1024
#: The rate assumed before the first measurement, bytes/s (100 Mbit/s).
FIRST_RATE = 12.5e6
#: Bounds of the estimate, bytes/s: a peer that stops reading does not drive it to 0.
MIN_RATE, MAX_RATE = 64e3, 10e9
#: A measurement spans at least this long (acknowledgements come in bunches).
MIN_SPAN = 0.002
#: Weight of a new measurement in the estimate.
GAIN = 0.25
#: The estimate grows by this much when a wait let the queue run dry.
RAISE = 1.25
#: Waits are at least a timer's resolution and at most this (then look again).
MIN_WAIT, MAX_WAIT = 0.0005, 0.05


@dataclass
class BulkGate:
    """One link's gate, kept while the link lives (its rate outlasts a pause in bulk)."""

    rate: float = FIRST_RATE
    #: The look that began the current measurement (None: none running): when, and the
    #: bytes queued then plus the bytes written since.
    _since: float | None = None
    _queued: int = 0
    #: The last look made bulk wait.
    _waited: bool = False

    def limit(self) -> int:
        """Bytes queued at most for the next burst to go."""
        return int(min(CEILING, max(FLOOR, self.rate * TARGET)))

    def wait(self, now: float, queued: int) -> float:
        """Seconds until the next burst may go (0: now), ``queued`` bytes being queued."""
        self._measure(now, queued)
        excess = queued - self.limit()
        self._waited = excess > 0
        if excess <= 0:
            return 0.0
        return min(MAX_WAIT, max(MIN_WAIT, excess / self.rate))

    def wrote(self, before: int, after: int) -> None:
        """A burst took the queue from ``before`` to ``after`` bytes."""
        if self._since is not None:
            self._queued += max(0, after - before)

    def restart(self) -> None:
        """Bulk starts again after none: what the queue did meanwhile measures nothing."""
        self._since, self._queued, self._waited = None, 0, False

    def _measure(self, now: float, queued: int) -> None:
        if queued <= 0:
            if self._waited:  # ran dry while we waited: the wait was too long
                self.rate = min(MAX_RATE, self.rate * RAISE)
            self._since = None
            return
        if self._since is None:
            self._since, self._queued = now, queued
            return
        span = now - self._since
        if span < MIN_SPAN:
            return
        left = self._queued - queued
        if left > 0:
            sample = left / span
            self.rate = min(MAX_RATE, max(MIN_RATE, self.rate + GAIN * (sample - self.rate)))
        self._since, self._queued = now, queued
