"""Recovery after restarting one service, on loopback.

For each service of node A: ``supervisorctl restart tazcom:<service>``, then
the time from the start of the service's new process (so its own start-up
time counts too) until the node is whole again: every service reports ``up``
on the bus, identity answers, and A's peer table shows B reachable. Goal:
within 1 s of the service being back.

    python -m bench.recovery
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import zmq

from bench.report import Figure, print_report
from tazcom.common import codec, rpc
from tests.harness import SERVICES, Node, short_tmp


def ask(ctx: zmq.Context, home: str, service: str, req: rpc.Request) -> object | None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{home}/run/{service}.sock")
    try:
        sock.send(rpc.encode_request(req, 1))
        if not sock.poll(200):
            return None
        return rpc.parse_reply(codec.unpack(sock.recv(), 1 << 22), req.REPLY)
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return None
    finally:
        sock.close()


def process_start(pid: int) -> float:
    """Unix time at which process ``pid`` started (from /proc)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def whole(ctx: zmq.Context, home: str) -> bool:
    status = ask(ctx, home, "bus", rpc.GetStatus())
    if status is None or any(s.state != "up" for s in status.services):
        return False
    if ask(ctx, home, "identity", rpc.GetIdentity()) is None:
        return False
    snap = ask(ctx, home, "discovery", rpc.GetPeers())
    return snap is not None and any(p.nickname == "rec-b" and p.state != "offline"
                                    for p in snap.peers)


def main() -> None:
    root = short_tmp("tzb")
    a, b = Node(root / "a", "rec-a"), Node(root / "b", "rec-b")
    figures = []
    try:
        a.start()
        b.start()
        a.wait_up()
        b.wait_up()
        a.wait_peer("rec-b", ("discovered", "connected", "verified"))
        ctx = zmq.Context()
        home = str(a.home)
        for service in SERVICES:
            old_pid = a.pid(service)
            restart = a.popen(["supervisorctl", "-c", "supervisord.conf", "restart",
                               f"tazcom:{service}"], stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            whole_at = None
            while time.monotonic() < deadline:
                status = ask(ctx, home, "bus", rpc.GetStatus())
                row = {s.service: s for s in status.services}.get(service) if status else None
                if row and row.pid != old_pid and row.state == "up" and whole(ctx, home):
                    whole_at = time.time()
                    back = process_start(row.pid)
                    break
                time.sleep(0.01)
            restart.wait(30)
            assert whole_at is not None and back is not None, f"{service} never came back"
            took = whole_at - back
            figures.append(Figure(f"restart {service}: back to whole node", took, "s", 1.0,
                                  "goal", "< 1 s", took < 1.0))
        ctx.destroy(linger=0)
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(root, ignore_errors=True)
    print_report("recovery after restarting one service (loopback)", figures)


if __name__ == "__main__":
    main()
