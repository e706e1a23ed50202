from __future__ import annotations

from tazcom.common.events import ServiceHeartbeat, ServiceStarted, ServiceStopping
from tazcom.common.health import HealthTable


def hb(service: str, pid: int, state: str = "up") -> ServiceHeartbeat:
    return ServiceHeartbeat(src=service, ts=1.0, service=service, pid=pid, state=state, uptime=1)


def states(t: HealthTable, now: float) -> dict[str, tuple[str, int | None]]:
    return {r.service: (r.state, r.pid) for r in t.report(now)}


def test_life_cycle() -> None:
    t = HealthTable(("bus", "identity"), interval=1.0)
    assert states(t, 0) == {"bus": ("down", None), "identity": ("down", None)}
    t.observe(ServiceStarted(src="bus", ts=1, service="bus", pid=10, version="1"), 1)
    t.observe(hb("identity", 11, "starting"), 1)
    assert states(t, 1.5) == {"bus": ("up", 10), "identity": ("starting", 11)}
    t.observe(ServiceStopping(src="bus", ts=2, service="bus", pid=10), 2)
    assert states(t, 3)["bus"] == ("restarting", 10)
    t.observe(hb("bus", 12), 4)
    assert states(t, 4)["bus"] == ("up", 12)
    assert states(t, 8)["identity"] == ("down", 11)  # heartbeats stopped: a crash
    t.observe(ServiceStopping(src="bus", ts=9, service="bus", pid=12), 9)
    assert states(t, 25)["bus"] == ("down", 12)  # stopped for good


def test_stale_stopping_from_old_pid_is_ignored_and_unknown_services_listed() -> None:
    t = HealthTable(("bus",), interval=1.0)
    t.observe(hb("bus", 12), 1)
    t.observe(ServiceStopping(src="bus", ts=1, service="bus", pid=10), 1)
    assert states(t, 1.5) == {"bus": ("up", 12)}
    t.observe(hb("router", 30), 1)
    assert list(states(t, 1.5)) == ["bus", "router"]


def test_a_process_that_ends_without_a_word_is_down_at_once() -> None:
    t = HealthTable(("router",), interval=5.0)
    t.observe(hb("router", 40), 1)
    t.exited("router", 39, 2)  # an older process: nothing to do with the live one
    assert states(t, 2)["router"] == ("up", 40)
    t.exited("router", 40, 2)
    row = t.report(2.1)[0]
    assert (row.state, row.since) == ("down", 2) and "ended" in row.detail
    t.observe(ServiceStarted(src="router", ts=3, service="router", pid=41, version="1"), 3)
    assert states(t, 3)["router"] == ("up", 41)
    t.observe(ServiceStopping(src="router", ts=4, service="router", pid=41), 4)
    t.exited("router", 41, 4.5)  # a goodbye came first: restarting, as supervisord will
    assert states(t, 5)["router"] == ("restarting", 41)


def test_changes_are_the_rows_to_publish_and_deadlines_say_when_time_changes_one() -> None:
    t = HealthTable(("bus", "router"), interval=5.0)
    first = t.changes(0)
    assert [(r.service, r.state) for r in first] == [("bus", "down"), ("router", "down")]
    assert t.next_deadline() is None  # nothing seen: nothing changes by itself
    t.observe(hb("router", 40), 1)
    assert [(r.service, r.state, r.last_heartbeat) for r in t.changes(1)] == [
        ("router", "up", None)]
    t.observe(hb("router", 40), 6)  # a heartbeat moves no mirrored field
    assert t.changes(6) == []
    assert t.next_deadline() == 6 + 15
    assert [(r.service, r.state) for r in t.changes(21.1)] == [("router", "down")]
    t.observe(ServiceStopping(src="router", ts=22, service="router", pid=40), 22)
    assert t.next_deadline() == 22 + 10  # the restart window
    assert [r.state for r in t.changes(22)] == ["restarting"]
