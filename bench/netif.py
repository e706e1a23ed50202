"""Following interfaces: netlink against polling (issue 14: "netlink or polling; your
choice, measured").

    python -m bench.netif [--rounds 10]

In a network namespace of its own (created and removed here; nothing touches the root
namespace), a veth interface's address is added and removed ``rounds`` times while
``services.netif.AddressWatcher`` follows it, once listening to netlink and once polling
(every 2 s, the fallback). Reported: how long after the change the watcher saw it
(against the 5 s within which links must be back), and what following costs an idle node
(CPU per check times checks per second, against the 0.2 % of a core the whole idle node
may use, issue 10). Netlink wakes only on a change, so its idle cost is zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from bench.report import Figure, print_report

LINKS_BACK = 5.0  # s: links back within 5 s of an address returning (issue 14)
IDLE_GOAL = 0.2  # % of one core, the whole idle node (issue 10)


def _ns(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True,
                   timeout=20)


async def _follow(poll: bool, rounds: int, ns: str) -> list[float]:
    from tazcom.services import netif

    seen: asyncio.Queue[float] = asyncio.Queue()
    watcher = netif.AddressWatcher(("v0",), [], lambda _now: seen.put_nowait(
        time.monotonic()), poll=poll)
    out = []
    try:
        for i in range(rounds):
            verb = "add" if i % 2 == 0 else "del"
            t0 = time.monotonic()
            await asyncio.to_thread(_ns, ns, "ip", "addr", verb, "10.231.0.1/24", "dev", "v0")
            out.append(await asyncio.wait_for(seen.get(), 10) - t0)
    finally:
        watcher.close()
    return out


def child(mode: str, rounds: int, ns: str) -> None:
    """Runs inside the namespace: prints the reaction times, then the cost of one check."""
    from tazcom.services import netif

    times = asyncio.run(_follow(mode == "poll", rounds, ns))
    n, c0 = 300, time.process_time()
    for _ in range(n):
        netif.usable_addresses(("v0",))
    per_check = (time.process_time() - c0) / n
    print(" ".join(f"{t:.4f}" for t in times), per_check)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--child", choices=["netlink", "poll"])
    p.add_argument("--ns")
    args = p.parse_args()
    if args.child:
        child(args.child, args.rounds, args.ns)
        return
    ns = f"tzb{os.getpid()}-netif"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        _ns(ns, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ns(ns, "ip", "link", "set", "v0", "up")
        _ns(ns, "ip", "link", "set", "v1", "up")
        results: dict[str, tuple[list[float], float]] = {}
        for mode in ("netlink", "poll"):
            out = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.netif", "--child",
                 mode, "--rounds", str(args.rounds), "--ns", ns],
                check=True, capture_output=True, text=True, timeout=120).stdout.split()
            results[mode] = ([float(x) for x in out[:-1]], float(out[-1]))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
    from tazcom.services.netif import POLL

    figures = []
    for mode, (times, _) in results.items():
        figures.append(Figure(f"{mode}: change seen, median", statistics.median(times), "s",
                              LINKS_BACK, "links back", "< limit",
                              statistics.median(times) < LINKS_BACK))
        figures.append(Figure(f"{mode}: change seen, worst", max(times), "s", LINKS_BACK,
                              "links back", "< limit", max(times) < LINKS_BACK))
    per_check = results["poll"][1]
    figures.append(Figure("one check of the addresses (CPU)", per_check * 1000, "ms"))
    for mode, rate in (("netlink", 0.0), ("poll", 1 / POLL)):
        # discovery and gateway each follow the set
        cost = 2 * per_check * rate * 100
        figures.append(Figure(f"{mode}: idle cost, 2 services", cost, "% core", IDLE_GOAL,
                              "idle node", "< limit", cost < IDLE_GOAL))
    print_report("bench.netif: following interfaces", figures)


if __name__ == "__main__":
    main()
