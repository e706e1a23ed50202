"""Discovery time and node memory, on loopback.

* Launch to discovered: from ``supervisord -c supervisord.conf`` of node B to
  the ``peer.discovered`` event for B on an already running node A, against
  python-zeroconf's own probe-and-announce time (register on one AsyncZeroconf
  until a browser on another sees it), measured in the same run. Goal: under
  2 s (the floor is zeroconf's time, about 1.2 s).
* Memory of a whole node: PSS summed over supervisord and every service
  (/proc/PID/smaps_rollup). Goal: under 120 MB.

    python -m bench.discovery_time [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import time

import zmq
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from bench.procstat import pss_kib
from bench.report import Figure, print_report
from tazcom.common.events import PeerDiscovered, decode_event
from tests.harness import Node, short_tmp


async def zeroconf_time(index: int) -> float:
    kind = "_tzbench._tcp.local."
    a = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    b = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    seen = asyncio.Event()
    wanted = f"bench{index}-{time.time_ns()}.{kind}"

    def handler(zeroconf, service_type, name, state_change) -> None:
        if name == wanted and state_change is ServiceStateChange.Added:
            seen.set()

    browser = AsyncServiceBrowser(b.zeroconf, kind, handlers=[handler])
    await asyncio.sleep(0.3)  # let the browser's first queries pass
    info = ServiceInfo(kind, wanted, addresses=[socket.inet_aton("127.0.0.1")], port=9,
                       properties={b"x": b"y"}, server=f"bench{index}.local.")
    t0 = time.perf_counter()
    await a.async_register_service(info)
    await asyncio.wait_for(seen.wait(), 10)
    elapsed = time.perf_counter() - t0
    await a.async_unregister_all_services()
    await browser.async_cancel()
    await a.async_close()
    await b.async_close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = short_tmp("tzb")
    a = Node(root / "a", "bench-a")
    b = Node(root / "b", "bench-b")
    launches: list[float] = []
    try:
        a.start().wait_up()
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"peer.discovered")
        sub.connect(f"ipc://{a.home}/run/bus-out.sock")
        time.sleep(0.3)
        for _ in range(args.rounds):
            t0 = time.time()
            b.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sub.poll(int((deadline - time.monotonic())
                                                                * 1000)):
                ev = decode_event(sub.recv_multipart())
                if isinstance(ev, PeerDiscovered) and ev.peer.nickname == "bench-b":
                    launches.append(ev.ts - t0)
                    break
            b.wait_up()
            b.stop()
            # A must have seen B leave before the next round
            while True:
                p = a.peers().get("bench-b")
                if p and p["state"] == "offline":
                    break
                time.sleep(0.05)
        ctx.destroy(linger=0)
        a_pids = a.own_pids()
        memory_mb = pss_kib(a_pids) * 1024 / 1e6  # smaps counts KiB; the goal is in MB
        zc = [asyncio.run(zeroconf_time(i)) for i in range(args.rounds)]
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(root, ignore_errors=True)
    ours = statistics.median(launches)
    floor = statistics.median(zc)
    print_report("discovery and memory (loopback)", [
        Figure("launch to 'discovered' on a peer, median", ours, "s", floor,
               "zeroconf probe+announce", "< 2 s", ours < 2.0),
        Figure("launch to 'discovered', worst", max(launches), "s", max(zc),
               "zeroconf worst", "< 2 s", max(launches) < 2.0),
        Figure("memory of a whole node (PSS)", memory_mb, "MB", 120.0, "goal", "< 120 MB",
               memory_mb < 120),
    ])


if __name__ == "__main__":
    main()
