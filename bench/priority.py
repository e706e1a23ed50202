"""Files never starve chat: a chat message's latency while bulk saturates the link.

    python -m bench.priority [--messages 100] [--rate 50] [--cc reno]

Two nodes in network namespaces, A - B, with A's side of the link shaped to ``--rate``
Mbit/s (tbf, inside A's namespace; ``--rate 0``: not shaped, the veth pair as fast as the
CPU moves it) and A's TCP congestion control ``--cc`` (the system's by default; a
namespace may choose one of the host's ``net.ipv4.tcp_allowed_congestion_control``). Room
messages posted at A are timed until B's bus shows them, stop and wait: first on the idle
link, then while A's gateway sends B bulk ``app`` messages of 48 KiB (file chunks,
``gateway.send`` with ``bulk``) as fast as the link takes them. Goal (issue 15): the
loaded p99 under 2x the idle p99. The same run also reports the bulk throughput against
the shaped rate.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import subprocess
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

from bench.meshlab import lab, post_many
from bench.report import Figure, print_report
from tazcom.common import rpc
from tazcom.common.errors import TazcomError
from tests.harness import BULK_NOTE, BusTap, Node, request, wait_for

CHUNK = 48 * 1024


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def chat_latency(a: Node, tap: BusTap, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.time()  # the tap stamps arrivals with the wall clock
        [msg_id] = asyncio.run(post_many(a, [f"ping {i}"]))
        key = msg_id.hex()
        wait_for(lambda k=key: any(e.id == k for _, e in tap.arrivals), 10, "ping at B",
                 interval=0.0005)
        out.append(next(t for t, e in tap.arrivals if e.id == key) - t0)
    return out


def bulk_sender(a: Node, b_key: str, stop: Event, sent: Synchronized, busy: Synchronized,
                chunk: int = CHUNK) -> None:
    """Keeps A's bulk queue to B full until ``stop`` (a process of its own: a thread would
    take the GIL from the tap that times the chat messages)."""
    body = bytes(chunk)
    while not stop.is_set():
        try:
            request(a, "gateway", rpc.SendToPeer(key=b_key, kind="bulk", body=body, bulk=True))
            sent.value += 1
        except TazcomError as e:
            if e.code != "busy":
                raise
            busy.value += 1
            stop.wait(0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--rate", type=int, default=50,
                    help="Mbit/s of A's side of the link (0: not shaped)")
    ap.add_argument("--cc", help="A's TCP congestion control (net.ipv4.tcp_congestion_control "
                                 "in A's namespace; default: the system's)")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="bytes of each bulk message")
    ap.add_argument("--queue", type=int, default=50,
                    help="ms of queue the shaper holds at most (a router's buffer)")
    args = ap.parse_args()
    with lab({"a": [0], "b": [0]}) as mesh:
        dev, ns = mesh.net.interfaces["a"][0], mesh.net.ns("a")
        if args.rate:
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                            "tbf", "rate", f"{args.rate}mbit", "burst", "32kbit", "latency",
                            f"{args.queue}ms"], check=True, timeout=20)
        if args.cc:
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            f"net.ipv4.tcp_congestion_control={args.cc}"], check=True, timeout=20)
        mesh.start()
        mesh.wait_links([("a", "b")])
        a, b = mesh.nodes["a"], mesh.nodes["b"]
        tap = BusTap(b, "chat.message")
        downs = BusTap(a, "link.down")
        try:
            chat_latency(a, tap, 10)  # warm up
            idle = chat_latency(a, tap, args.messages)
            stop, sent, busy = mp.Event(), mp.Value("q", 0), mp.Value("q", 0)
            sender = mp.Process(target=bulk_sender, args=(a, b.key, stop, sent, busy,
                                                                 args.chunk))
            sender.start()
            try:
                # flowing: the link's bulk queue has filled (the gateway answers busy);
                # not shaped, the link may outrun the sender: then once 20 MiB went
                wait_for(lambda: busy.value > 0 or (not args.rate
                                                    and sent.value * args.chunk > 20 << 20),
                         30, "bulk filling the link")
                t0, n0 = time.monotonic(), sent.value
                loaded = chat_latency(a, tap, args.messages)
                secs, got = time.monotonic() - t0, sent.value - n0
            finally:
                stop.set()
                sender.join(10)
        finally:
            for ev in downs.of("link.down"):
                print(f"link down at A: {ev.reason} ({ev.detail})")
            tap.close()
            downs.close()
    ms = 1000
    mbit = got * args.chunk * 8 / secs / 1e6
    idle99, loaded99 = pct(idle, 0.99), pct(loaded, 0.99)
    print_report("bench.priority: chat while a file saturates the link", [
        Figure("chat latency, idle link, p50", statistics.median(idle) * ms, "ms"),
        Figure("chat latency, idle link, p99", idle99 * ms, "ms"),
        Figure("chat latency, link saturated by bulk, p50", statistics.median(loaded) * ms,
               "ms"),
        Figure("chat latency, link saturated by bulk, p99", loaded99 * ms, "ms",
               2 * idle99 * ms, "2 x idle p99", "< limit", loaded99 < 2 * idle99),
        Figure("bulk throughput meanwhile", mbit, "Mbit/s", float(args.rate) or None,
               "shaped rate" if args.rate else "", "report"),
    ])
    print(BULK_NOTE)


if __name__ == "__main__":
    main()
