"""Restart and kill -9 of each service: the node recovers by itself."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.harness import SERVICES, Node, wait_for

# Generous deadlines for a loaded CI machine; bench/ measures the real figures.
BACK_WITHIN = 20.0
WHOLE_WITHIN = 5.0


def _peer_list_whole(a: Node) -> bool:
    bob = a.peers().get("bob")
    return bool(bob) and bob["state"] in ("discovered", "connected", "verified")


def _recovered(a: Node, b: Node, service: str, old_pid: int) -> None:
    new_pid = wait_for(lambda: (p := a.pid(service)) and p != old_pid and p, BACK_WITHIN,
                       f"{service} to come back")
    wait_for(lambda: a.status().get(service, {}).get("pid") == new_pid
             and a.status()[service]["state"] == "up", BACK_WITHIN,
             f"{service} reported up on the bus")
    back = time.monotonic()
    wait_for(lambda: a.all_up(), WHOLE_WITHIN, "every service up")
    wait_for(lambda: _peer_list_whole(a), WHOLE_WITHIN, "alice's peer list whole again")
    wait_for(lambda: (p := b.peers().get("alice")) and p["state"] != "offline", 10,
             "bob to see alice again")
    assert a.cli_json("id")[0]["nickname"] == "alice"
    assert time.monotonic() - back < WHOLE_WITHIN


@pytest.mark.parametrize("service", SERVICES)
def test_restart_one_service(pair: tuple[Node, Node], service: str) -> None:
    a, b = pair
    old = a.pid(service)
    others = {s: a.pid(s) for s in SERVICES if s != service}
    a.ctl("restart", f"tazcom:{service}")
    _recovered(a, b, service, old)
    assert {s: a.pid(s) for s in others} == others, "only the one service restarted"


@pytest.mark.parametrize("service", SERVICES)
def test_kill_9_one_service(pair: tuple[Node, Node], service: str) -> None:
    a, b = pair
    old = a.pid(service)
    os.kill(old, signal.SIGKILL)
    _recovered(a, b, service, old)
