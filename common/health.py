"""Service health as seen on the bus: the table behind ``tazcom status``.

Fed with ``service.*`` events; ``report(now)`` derives each service's state:

* ``up`` (or the state the service itself reports: ``starting``, ``failed``)
  while heartbeats arrive within ``3 x interval``;
* ``restarting`` after ``service.stopping`` until the next heartbeat, for at
  most ``restart_window`` seconds;
* ``down`` when its process exited without a goodbye (a crash, a kill -9:
  ``exited()``, which the bus learns at once from the kernel), when heartbeats
  stopped (a hung process, or a platform where the bus cannot watch pids), a
  stop lasted longer than the restart window, or it was never seen.

Heartbeats are few (every ``bus.heartbeat_interval``, default 5 s, so an idle
node stays idle): they only have to catch a process that hangs.

The table is mirrored (docs/protocol.md §2, "Mirrored state"): ``changes(now)``
gives the rows that differ from what was last published (``service.health``),
and ``next_deadline()`` when a row may change by time alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import ServiceHealth, ServiceHeartbeat, ServiceStarted, ServiceStopping


@dataclass(slots=True)
class _Seen:
    pid: int
    state: str
    since: float
    last_heartbeat: float
    detail: str = ""
    stopping_at: float | None = None
    exited_at: float | None = None


class HealthTable:
    def __init__(self, expected: tuple[str, ...], *, interval: float,
                 restart_window: float = 10.0) -> None:
        self.expected = expected
        self.interval = interval
        self.restart_window = restart_window
        self._seen: dict[str, _Seen] = {}
        self._published: dict[str, ServiceHealth] = {}

    def observe(self, ev: ServiceHeartbeat | ServiceStarted | ServiceStopping, now: float) -> None:
        seen = self._seen.get(ev.service)
        if isinstance(ev, ServiceStopping):
            if seen is not None and seen.pid == ev.pid:
                seen.stopping_at = now
            return
        state = ev.state if isinstance(ev, ServiceHeartbeat) else "up"
        detail = ev.detail if isinstance(ev, ServiceHeartbeat) else (
            seen.detail if seen is not None and seen.pid == ev.pid else "")
        if seen is None or seen.pid != ev.pid:
            self._seen[ev.service] = _Seen(pid=ev.pid, state=state, since=now,
                                           last_heartbeat=now, detail=detail)
            return
        if seen.state != state:
            seen.since = now
        seen.state, seen.last_heartbeat, seen.detail = state, now, detail
        seen.stopping_at = None

    def exited(self, service: str, pid: int, now: float) -> None:
        """Process ``pid`` of ``service`` ended (seen by the kernel, not by a message)."""
        seen = self._seen.get(service)
        if seen is not None and seen.pid == pid and seen.exited_at is None:
            seen.exited_at = now

    def changes(self, now: float) -> list[ServiceHealth]:
        """Rows (without ``last_heartbeat``, which every heartbeat moves) that changed since
        the last call: the updates to publish, in order."""
        out = []
        for row in self.report(now):
            row = row.replace(last_heartbeat=None)
            if self._published.get(row.service) != row:
                self._published[row.service] = row
                out.append(row)
        return out

    def next_deadline(self) -> float | None:
        """When a row changes if nothing else happens (a restart window ends, heartbeats
        are overdue); None if none will."""
        times = [seen.stopping_at + self.restart_window if seen.stopping_at is not None
                 else seen.last_heartbeat + 3 * self.interval
                 for seen in self._seen.values() if seen.exited_at is None]
        return min(times, default=None)

    def report(self, now: float) -> tuple[ServiceHealth, ...]:
        names = list(self.expected) + sorted(set(self._seen) - set(self.expected))
        return tuple(self._row(name, now) for name in names)

    def _row(self, name: str, now: float) -> ServiceHealth:
        seen = self._seen.get(name)
        if seen is None:
            return ServiceHealth(service=name, state="down", pid=None)
        if seen.stopping_at is not None:
            state = "restarting" if now - seen.stopping_at <= self.restart_window else "down"
            return ServiceHealth(service=name, state=state, pid=seen.pid, since=seen.stopping_at,
                                 last_heartbeat=seen.last_heartbeat, detail=seen.detail)
        if seen.exited_at is not None:
            return ServiceHealth(service=name, state="down", pid=seen.pid, since=seen.exited_at,
                                 last_heartbeat=seen.last_heartbeat,
                                 detail="its process ended without stopping (crash or kill)")
        if now - seen.last_heartbeat > 3 * self.interval:
            return ServiceHealth(service=name, state="down", pid=seen.pid,
                                 since=seen.last_heartbeat + 3 * self.interval,
                                 last_heartbeat=seen.last_heartbeat, detail="no heartbeat")
        return ServiceHealth(service=name, state=seen.state, pid=seen.pid,  # type: ignore[arg-type]
                             since=seen.since, last_heartbeat=seen.last_heartbeat,
                             detail=seen.detail)
