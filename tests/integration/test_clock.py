"""Wrong clocks (issue 14): a node 3 days behind and one 2 hours ahead still chat.

Four hosts in network namespaces on one bridge: two with the right time, one run
under libfaketime 3 days behind, one 2 hours ahead (every process of the node,
supervisord included, through ``LD_PRELOAD``; the monotonic clock is left alone).
Each wrong node learns its offset from its verified neighbours' hellos
(docs/protocol.md §9, "Clock offset"), stamps and judges with mesh time, and
re-certifies its signing key; the honest ones never move. Room messages and DMs
flow both ways, and an 8-day-old envelope, correctly signed, is still refused by
the node whose own clock is 3 days behind (by that clock it is only 5 days old).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tazcom.common import certs, envelope, routing, rpc
from tests.harness import BusTap, Node, history, post, request, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

DAY = 86_400.0
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
REASON = why_unavailable() or (None if LIBFAKETIME else
                               "libfaketime not installed (apt-get install faketime)")
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
#: The wrong clocks: libfaketime's offset, and what it is in seconds.
SKEWS = {"late": ("-3d", -3 * DAY), "fast": ("+2h", 2 * 3600.0)}
#: Slack for an offset learnt over a LAN (network delay, process start-up).
SLACK = 30.0


def faketime_env(offset: str) -> dict[str, str]:
    return {"LD_PRELOAD": LIBFAKETIME or "", "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.fixture
def clocks() -> Iterator[dict[str, Node]]:
    root = short_tmp()
    nodes: dict[str, Node] = {}
    hosts = ("a", "b", "late", "fast")
    with lan({h: [0] for h in hosts}) as net:
        try:
            for host in hosts:
                env = faketime_env(SKEWS[host][0]) if host in SKEWS else None
                nodes[host] = Node(root / host, f"node-{host}", netns=net.ns(host),
                                   interfaces=net.interfaces[host][0], env=env)
            nodes["_net"] = net  # type: ignore[assignment]
            yield nodes
        finally:
            problems = []
            for host, node in nodes.items():  # nodes stop before their namespaces go
                if host != "_net":
                    node.stop()
                    problems += node.tracebacks()
            shutil.rmtree(root, ignore_errors=True)
            assert not problems, "\n".join(problems)


def texts(node: Node, conv: str | None = None) -> set[str]:
    return {m.text for m in history(node, conv) if m.text}


def gateway_row(node: Node) -> dict:
    return next(r for r in node.cli_json("status") if r["service"] == "gateway")


def test_nodes_with_wrong_clocks_learn_the_mesh_time_and_chat(
        clocks: dict[str, Node]) -> None:
    net: Lan = clocks.pop("_net")  # type: ignore[assignment]
    nodes = clocks
    for node in nodes.values():
        node.start()
    for node in nodes.values():
        node.wait_up(60)

    # the processes of a faked node really live in another time: the bus's own heartbeat
    for host, node in nodes.items():
        told = node.status()["bus"]["last_heartbeat"]
        skew = SKEWS[host][1] if host in SKEWS else 0.0
        assert abs(told - (time.time() + skew)) < SLACK, (host, told - time.time())

    for host, node in nodes.items():  # every pair linked: each wrong node has 2+ honest
        for other in nodes:
            if other != host:
                node.wait_peer(f"node-{other}", ("verified",), timeout=30)

    # each wrong node adopts the honest pair's clock; the honest ones never move
    for host, (_faked, skew) in SKEWS.items():
        row = wait_for(lambda h=host, s=skew: (r := gateway_row(nodes[h]))
                       and abs(r["clock_offset"] + s) < SLACK and r, 30,
                       f"{host} to learn the mesh time")
        assert row["clock_neighbours"] >= 2 and row["clock_samples"] == 3, row
    for host in ("a", "b"):
        row = gateway_row(nodes[host])
        assert row["clock_offset"] == 0 and row["clock_samples"] == 3, row
    line = nodes["late"].cli("status").stdout
    assert "clock: 3 d 0 h behind the mesh (median of" in line, line
    assert "envelopes stamped with mesh time" in line
    assert "ahead of the mesh" in nodes["fast"].cli("status").stdout
    assert "clock: in step with the mesh" in nodes["a"].cli("status").stdout

    # the wrong nodes certified a fresh signing key by mesh time (a day from real now)
    for host in SKEWS:
        wait_for(lambda h=host: abs(request(nodes[h], "router", rpc.GetSigningKeys())
                                    .not_after - (time.time() + DAY)) < 600, 30,
                 f"{host}'s signing key certified by mesh time")
    # and every node knows every other by its (re-published) profile: DMs can be sealed
    keys = {h: n.key for h, n in nodes.items()}
    for host, node in nodes.items():
        wait_for(lambda n=node, h=host: {bytes.fromhex(k) for o, k in keys.items() if o != h}
                 <= {bytes.fromhex(m.key) for m in request(n, "router", rpc.GetMesh()).items},
                 60, f"{host}'s mesh directory to hold every node")

    # room messages and DMs, both ways between each wrong node and an honest one
    room = {h: f"room from {h} {os.urandom(3).hex()}" for h in nodes}
    for host, text in room.items():
        post(nodes[host], text)
    dms = {("late", "a"), ("a", "late"), ("fast", "b"), ("b", "fast"), ("late", "fast")}
    dm_text = {(s, d): f"dm {s}->{d} {os.urandom(3).hex()}" for s, d in dms}
    for (src, dst), text in dm_text.items():
        post(nodes[src], text, keys[dst])
    for host, node in nodes.items():
        wait_for(lambda n=node: set(room.values()) <= texts(n), 60,
                 f"every room message at {host}")
    for (src, dst), text in dm_text.items():
        wait_for(lambda s=src, d=dst, t=text: t in texts(nodes[d], keys[s]), 60,
                 f"the DM {src} -> {dst}")
    # `tazcom history --json` at the late node shows what the others said, as they sent it
    rows = nodes["late"].cli_json("history")
    assert {room["a"], room["fast"]} <= {r["text"] for r in rows}

    # an 8-day-old envelope, correctly signed by b's certified key, is refused at the node
    # 3 days behind (by its own clock only 5 days old); a fresh one, signed alike, passes
    late = nodes["late"]
    secret64, cert = signer(nodes["b"])
    now_ms = int(time.time() * 1000)
    replay_text = f"replayed {os.urandom(3).hex()}"
    fresh_text = f"fresh {os.urandom(3).hex()}"
    entries = []
    for seq, ts, text in ((990_001, now_ms - int(8 * DAY * 1000), replay_text),
                          (990_002, now_ms, fresh_text)):
        signed = envelope.signed_bytes(kind=envelope.KIND_ROOM, origin=bytes.fromhex(keys["b"]),
                                       seq=seq, ts=ts, to=None, body=text.encode(), cert=cert)
        entries.append((0, signed, certs.sign_envelope(signed, secret64)))
    tap = BusTap(late, "router.dropped")
    try:
        port = request(late, "gateway", rpc.GetGatewayInfo()).port
        proc = nodes["b"].run(["python", "-m", "tests.peer_tool",
                               f"{net.addresses['late'][0]}:{port}", "--nick", "replayer",
                               "--send", routing.encode_envs(entries).hex(), "--linger", "1"])
        assert json.loads(proc.stdout.strip().splitlines()[-1])["verified"]
        dropped = tap.wait("router.dropped", lambda e: e.reason == "too_old", 20)
        assert dropped.source  # named who sent it
        wait_for(lambda: fresh_text in texts(late), 20, "the fresh envelope at late")
    finally:
        tap.close()
    assert replay_text not in texts(late)
    assert any("too_old" in text for name, text in late.logs().items()
               if name.startswith("router")), "the refusal is logged"


def signer(node: Node) -> tuple[bytes, bytes]:
    """The delegated secret key and certificate in a node's router.keys."""
    import msgpack

    ring = msgpack.unpackb((node.home / "router.keys").read_bytes(), raw=False)
    secret64, cert, _nb, _na = ring["signer"]
    return secret64, cert
