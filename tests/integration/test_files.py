"""Files across the mesh, on real nodes in network namespaces (issue 15).

* a 20 MiB DM file A -> C through B survives ``kill -9`` of the gateway and then the
  router at A, at B and at C, mid-transfer, and arrives whole and hash-equal; A shows
  ``delivered``; neither B's disk nor a capture of B's two links ever shows the file's
  plaintext or its name;
* C offline while A sends: C gets the file when it returns, and A shows ``delivered``;
* a room file fetched by two nodes, the second from B's cache while A is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tazcom.common import rpc
from tazcom.common.errors import RequestFailed
from tests.harness import Node, Timeout, lan_nodes, request, wait_for
from tests.netns import why_unavailable

pytestmark = pytest.mark.skipif(why_unavailable() is not None,
                                reason=str(why_unavailable()))

MiB = 1024 * 1024


def knows(node: Node, other: Node, timeout: float = 30) -> None:
    """``node`` has ``other``'s profile (its DM key): a DM to it can be sealed."""
    wait_for(lambda: any(p["key"] == other.key and p["state"] in ("verified", "mesh")
                         for p in node.cli_json("peers")), timeout,
             f"{node.nick} to know {other.nick}")


def files(node: Node) -> list[Any]:
    return request(node, "router", rpc.ListFiles(), timeout=10).files


def row(node: Node, direction: str, name: str) -> Any | None:
    """The node's row of the file ``name`` going ``direction``; None while its router is
    away (it may be restarting: this polls under a deadline)."""
    with contextlib.suppress(Timeout, RequestFailed, OSError):
        return next((f for f in files(node) if f.direction == direction and f.name == name),
                    None)
    return None


def send(node: Node, path: Path, to: Node | None) -> Any:
    return request(node, "router", rpc.SendFile(
        client_id=os.urandom(16), path=str(path), to=bytes.fromhex(to.key) if to else None),
        timeout=60).file


def get(node: Node, file_id: str) -> Any:
    return request(node, "router", rpc.GetFile(file=file_id), timeout=10).file


def sha(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def kill9(node: Node, service: str) -> None:
    pid = node.pid(service)
    assert pid is not None, f"{node.nick} {service} is not running"
    os.kill(pid, signal.SIGKILL)
    # supervisord starts a new one: wait for it, so the next kill is of the new process
    wait_for(lambda: node.pid(service) not in (None, pid) and node.all_up(), 30,
             f"{node.nick} {service} to be restarted")


def marked(size: int, marker: bytes) -> bytes:
    """Random bytes with ``marker`` every 4 KiB: the plaintext a capture must never show."""
    data = bytearray(os.urandom(size))
    for at in range(0, size - len(marker), 4096):
        data[at:at + len(marker)] = marker
    return bytes(data)


def test_dm_file_through_a_relay_survives_kill_9_at_each_end_and_at_the_relay() -> None:
    marker = b"TAZCOM-PLAINTEXT-MARKER-5b1e"
    name = "secret-plan-7f3a.bin"
    with lan_nodes({"a": [0], "b": [0, 1], "c": [1]}) as (net, nodes):
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        knows(a, c)
        # a LAN's speed, so that the transfer lasts long enough to be killed six times
        net.shape(40)
        pcap = b.home.parent / "b.pcap"
        captures = [subprocess.Popen(
            ["ip", "netns", "exec", net.ns("b"), "tcpdump", "-i", dev, "-s", "0", "-U", "-w",
             f"{pcap}.{dev}", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for dev in net.interfaces["b"]]
        try:
            for proc in captures:  # tcpdump says "listening on" once it captures
                assert proc.stderr is not None
                assert b"listening" in proc.stderr.readline()
            src = a.home.parent / name
            data = marked(20 * MiB, marker)
            src.write_bytes(data)
            sent = send(a, src, c)
            assert sent.status in ("queued", "sent") and sent.size == len(data)
            kills = [(a, "gateway"), (a, "router"), (b, "gateway"), (b, "router"),
                     (c, "gateway"), (c, "router")]
            for k, (node, service) in enumerate(kills, start=1):
                goal = len(data) * k // (len(kills) + 2)
                progress = wait_for(lambda g=goal: (r := row(c, "in", name)) is not None
                                    and (r.done >= g or r.status != "receiving") and r, 90,
                                    f"C to have {goal} bytes")
                assert progress.status == "receiving", \
                    f"the transfer ended before kill {k}: {progress.status} {progress.reason}"
                kill9(node, service)
            done = wait_for(lambda: (r := row(c, "in", name)) is not None
                            and r.status in ("received", "failed") and r, 120,
                            "C to receive the file")
            assert done.status == "received", done.reason
            assert Path(done.path).parent == c.home / "files"
            assert Path(done.path).name == name
            assert sha(done.path) == hashlib.sha256(data).hexdigest()
            wait_for(lambda: (r := row(a, "out", name)) is not None
                     and r.status == "delivered", 60, "A to show delivered")
        finally:
            for proc in captures:
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                proc.kill()
        # B relayed 20 MiB and cached the ciphertext: not a byte of plaintext, not the name
        captured = b"".join(Path(f"{pcap}.{dev}").read_bytes()
                            for dev in net.interfaces["b"])
        assert len(captured) > 20 * MiB, "the capture missed the transfer"
        assert marker not in captured and name.encode() not in captured
        seen = 0
        for path in b.home.rglob("*"):
            if path.is_file() and not path.is_symlink():
                content = path.read_bytes()
                seen += len(content)
                assert marker not in content, f"plaintext in B's {path}"
                assert name.encode() not in content, f"the name in B's {path}"
        assert seen > 0


def test_offline_recipient_gets_the_file_when_it_returns_and_the_sender_sees_delivered(
        ) -> None:
    with lan_nodes({"a": [0], "b": [0, 1], "c": [1]}) as (_net, nodes):
        a, c = nodes["a"], nodes["c"]
        knows(a, c)
        c.stop()
        src = a.home.parent / "minutes.pdf"
        src.write_bytes(os.urandom(3 * MiB + 123))
        send(a, src, c)
        wait_for(lambda: (r := row(a, "out", "minutes.pdf")) is not None
                 and r.status in ("sent", "relayed"), 30, "A to hand the manifest to B")
        c.start().wait_up()
        done = wait_for(lambda: (r := row(c, "in", "minutes.pdf")) is not None
                        and r.status in ("received", "failed") and r, 90,
                        "C to receive the file after it returns")
        assert done.status == "received", done.reason
        assert sha(done.path) == sha(src)
        wait_for(lambda: (r := row(a, "out", "minutes.pdf")) is not None
                 and r.status == "delivered", 60, "A to show delivered")


def test_room_file_is_fetched_by_two_nodes_the_second_from_the_relays_cache() -> None:
    # D's one neighbour is B: with A gone, only B's cache can serve it
    with lan_nodes({"a": [0], "b": [0, 1, 2], "c": [1], "d": [2]}) as (_net, nodes):
        a, b, c, d = nodes["a"], nodes["b"], nodes["c"], nodes["d"]
        knows(c, a)
        knows(d, a)
        src = a.home.parent / "schedule.png"
        src.write_bytes(os.urandom(2 * MiB + 77))
        shared = send(a, src, None)
        offered = {n.nick: wait_for(lambda n=n: (r := row(n, "in", "schedule.png"))
                                    is not None and r, 30, f"{n.nick} to be offered the file")
                   for n in (b, c, d)}
        assert {r.status for r in offered.values()} == {"offered"}, \
            "room files wait for `files get`"
        assert get(c, shared.id[:8]).status == "receiving"
        got = wait_for(lambda: (r := row(c, "in", "schedule.png")) is not None
                       and r.status in ("received", "failed") and r, 60, "C to fetch")
        assert got.status == "received", got.reason
        cached = b.home / "files" / ".cache" / shared.hash
        wait_for(cached.exists, 20, "B to have the file in its cache")
        a.stop()
        assert get(d, shared.hash[:12]).status == "receiving"
        got = wait_for(lambda: (r := row(d, "in", "schedule.png")) is not None
                       and r.status in ("received", "failed") and r, 60,
                       "D to fetch from B's cache")
        assert got.status == "received", got.reason
        assert sha(got.path) == sha(src)
        # B itself never asked for it: it is still only offered there
        assert row(b, "in", "schedule.png").status == "offered"
