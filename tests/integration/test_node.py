"""One and two real nodes on loopback: discovery, the CLI, the bus, departures."""

from __future__ import annotations

import json
import re
import time

from tests.harness import SERVICES, Node


def test_two_nodes_discover_each_other_and_the_cli_reports_them(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    [ident] = a.cli_json("id")
    assert set(ident) >= {"key", "fingerprint", "nickname"}
    assert re.fullmatch(r"[0-9a-f]{64}", ident["key"])
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}", ident["fingerprint"])
    assert ident["nickname"] == "alice"
    human = a.cli("id").stdout
    assert ident["fingerprint"] in human and ident["key"] in human

    bob = a.peers()["bob"]
    assert bob["key"] == b.key
    assert bob["state"] in ("discovered", "connected", "verified")
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", addr) for addr in bob["addresses"])
    assert abs(bob["last_seen"] - time.time()) < 60
    assert "bob" in a.cli("peers").stdout

    status = a.status()
    assert set(status) >= set(SERVICES)
    for service in SERVICES:
        assert status[service]["state"] == "up"
        assert status[service]["pid"] == a.pid(service)
    assert "identity" in a.cli("status").stdout


def test_events_tail_filters_by_topic_and_prints_json(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    proc = a.cli("events", "--json", "--topic", "service.heartbeat", "--count", "4",
                 "--timeout", "10")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(events) == 4
    assert {e["topic"] for e in events} == {"service.heartbeat"}
    assert all(e["v"] == 1 and e["pid"] > 0 for e in events)
    human = a.cli("events", "--topic", "service.", "--count", "2", "--timeout", "10").stdout
    assert human.count("service.") >= 2


def test_stopped_node_turns_offline_and_stays_listed(make_node) -> None:
    a = make_node("carol").start()
    d = make_node("dave").start()
    a.wait_up()
    a.wait_peer("dave", ("discovered", "connected", "verified"), timeout=10)
    d.stop()
    stopped = time.monotonic()
    gone = a.wait_peer("dave", ("offline",), timeout=10)
    assert time.monotonic() - stopped <= 10
    assert gone["addresses"], "an offline peer keeps its last known addresses"
    assert "offline" in a.cli("peers").stdout
    # and the entry survives a restart of the whole node
    a.stop()
    a.start().wait_up()
    assert a.peers()["dave"]["state"] == "offline"


def test_cli_says_clearly_when_the_node_is_not_running(make_node) -> None:
    n = make_node("nobody")
    n.home.mkdir(parents=True)
    for cmd in ("id", "peers"):
        proc = n.cli(cmd, check=False)
        assert proc.returncode == 3
        assert "not running" in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = n.cli("status", "--json", check=False)
    assert proc.returncode == 0
    assert {json.loads(x)["state"] for x in proc.stdout.splitlines()} == {"down"}
