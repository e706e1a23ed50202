"""What an idle node costs: CPU of every process of one node doing nothing.

    python -m bench.idle [--seconds 60]

One node on loopback (``TAZCOM_INTERFACES=lo``), alone, measured after it has
settled, per process (supervisord and each service, all their threads) from the
scheduler's counters. Goal (issue 10): at most 0.2 % of one core for the whole
node. The mesh figure (16 nodes at idle) is in ``python -m bench.mesh converge``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench.procstat import busy_seconds
from bench.report import Figure, print_report
from tests.harness import Node, short_tmp

GOAL = 0.2  # % of one core, whole node


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return "?"
    service = next((a.rsplit(".", 1)[-1] for a in argv if "tazcom.services." in a), None)
    return service or ("supervisord" if any("supervisord" in a for a in argv) else argv[0])


def measure(node: Node, seconds: float) -> dict[str, float]:
    """% of one core per process of ``node`` over ``seconds``."""
    pids = node.own_pids()
    before = {p: busy_seconds([p]) for p in pids}
    time.sleep(seconds)  # noqa: sleep-ok - the measurement window
    return {process_name(p): (busy_seconds([p]) - before[p]) / seconds * 100 for p in pids}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settle", type=float, default=10)
    args = ap.parse_args()
    root = short_tmp("tzi")
    node = Node(root / "idle", "idle")
    try:
        node.start().wait_up()
        time.sleep(args.settle)  # noqa: sleep-ok - let start-up work finish
        per = measure(node, args.seconds)
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)
    total = sum(per.values())
    figures = [Figure(f"idle node, all processes ({args.seconds:g} s)", total, "% of a core",
                      GOAL, "goal", f"<= {GOAL} %", total <= GOAL)]
    figures += [Figure(f"  {name}", value, "% of a core", None, "", "report")
                for name, value in sorted(per.items(), key=lambda kv: -kv[1])]
    print_report("idle node (loopback)", figures)


if __name__ == "__main__":
    main()
