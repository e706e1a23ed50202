"""What each process of a node costs to start and to keep: PSS, USS and start-up CPU.

    python -m bench.procmem [--runs 5] [--settle 3] [--conf supervisord.conf] [--env K=V]

One node on loopback (``TAZCOM_INTERFACES=lo``, an mDNS service type of its own so it
hears no other test node), started as a user does (``supervisord -c ...``). At the
moment every service has logged that it is up (it reports ``up`` on the bus at the
same time), the CPU time (user + system, all threads, from ``/proc/<pid>/stat``) of
supervisord and of each service is read: its start-up CPU (supervisord's includes the
process that daemonized it). After ``--settle`` seconds the memory is read from
``/proc/<pid>/smaps_rollup``: PSS (shared pages divided among the processes that map
them: the processes' PSS add up to what the node costs) and USS (private pages: what
stopping the process would free). Each figure is the median over ``--runs`` launches,
after ``--warmup`` launches that are not counted (the first writes the bytecode
caches); the total is the median of the runs' totals. The last line is the same as
JSON.

``--conf`` runs another supervisord.conf (e.g. a copy with other interpreter flags
on the ``command=`` lines); ``--env`` adds to the node's environment.
docs/perf/processes.md has the figures and what changed them.
"""

from __future__ import annotations

import argparse
import configparser
import json
import platform
import re
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import tests.harness as harness
from bench.procstat import cpu_seconds, memory_kib
from tests.harness import Node, short_tmp, wait_for

SERVICE_TYPE = "_tazcomlean._tcp.local."
NODE_CONFIG = f'[discovery]\nservice_type = "{SERVICE_TYPE}"\n'
METRICS = ("pss", "uss", "cpu")


def programs(conf: Path) -> list[str]:
    """The programs of the ``tazcom`` group in a supervisord.conf, in order."""
    parser = configparser.RawConfigParser(strict=False)
    parser.read(conf)
    return [p.strip() for p in parser.get("group:tazcom", "programs").split(",") if p.strip()]


def process_name(pid: int) -> str | None:
    """``supervisord``, a service's program name, or None for anything else."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for arg in argv:
        if arg.startswith("tazcom.services."):
            return arg.rsplit(".", 1)[-1]
    if any(Path(a).name == "supervisord" for a in argv[:2]):
        return "supervisord"
    return None


def _says_up(service: str, log: Path) -> bool:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return re.search(rf"{service} \S+ up \(pid \d+\)", text) is not None


def one_launch(root: Path, services: list[str], settle: float,
               env: dict[str, str]) -> tuple[dict[str, dict[str, float]], float]:
    """Launch a node, measure it, stop it. Returns ({process: metrics}, seconds to up)."""
    node = Node(root, "procmem", config=NODE_CONFIG, env=env)
    try:
        # supervisord daemonizes: the process that starts it (interpreter, the
        # tazcom_env.pth hook, reading the config) exits, and is reaped by node.start().
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        node.start()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        launcher_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert node.started_at is not None
        # Each service logs "<name> <version> up (pid N)" as it reports up on the bus;
        # reading the logs costs the node nothing (asking the bus would cost the bus).
        logs = {s: node.home / "logs" / f"{s}.log" for s in services}
        wait_for(lambda: all(_says_up(s, logs[s]) for s in services), 60, "every service up",
                 interval=0.01)
        up_after = time.monotonic() - node.started_at
        named = {pid: name for pid in node.own_pids() if (name := process_name(pid))}
        cpu = {pid: cpu_seconds(pid) for pid in named}
        wait_for(lambda: all(node.status().get(s, {}).get("state") == "up" for s in services),
                 10, "every service up on the bus too")
        time.sleep(settle)  # noqa: sleep-ok - let start-up work finish before reading memory
        per: dict[str, dict[str, float]] = {}
        for pid, name in named.items():
            mem = memory_kib(pid)
            if not mem or cpu[pid] is None:
                continue
            if name in per:
                raise RuntimeError(f"two processes named {name}: was the node restarted?")
            started = cpu[pid] + (launcher_cpu if name == "supervisord" else 0.0)
            per[name] = {"pss": mem["pss"] / 1024, "uss": mem["uss"] / 1024, "cpu": started}
        missing = {"supervisord", *services} - set(per)
        if missing:
            raise RuntimeError(f"no process found for {sorted(missing)}")
        return per, up_after
    finally:
        node.stop()


def summarize(runs: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    names = list(runs[0])
    per = {n: {m: statistics.median(r[n][m] for r in runs) for m in METRICS} for n in names}
    total = {m: statistics.median(sum(r[n][m] for n in r) for r in runs) for m in METRICS}
    return per, total


def print_table(label: str, per: dict, total: dict, runs: int, up_s: float) -> None:
    print(f"\n{label}: {runs} launch(es), median  ({platform.machine()}, "
          f"Python {sys.version.split()[0]}); every service up after {up_s:.2f} s")
    rows = [("process", "PSS MiB", "USS MiB", "start-up CPU s")]
    rows += [(n, f"{v['pss']:.1f}", f"{v['uss']:.1f}", f"{v['cpu']:.2f}")
             for n, v in per.items()]
    rows.append(("total", f"{total['pss']:.1f}", f"{total['uss']:.1f}", f"{total['cpu']:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        print("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                    zip(r[1:], widths[1:], strict=True)]))
        if i == 0 or i == len(rows) - 2:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1,
                    help="launches first, not counted (bytecode caches written, files warm)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds between 'every service up' and reading memory")
    ap.add_argument("--conf", type=Path, default=harness.CONF,
                    help="the supervisord.conf to launch (default: the repository's)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="add to the node's environment (repeatable)")
    ap.add_argument("--label", default="node")
    args = ap.parse_args()
    harness.CONF = args.conf.resolve()  # Node.start and Node.ctl launch this one
    env = dict(kv.split("=", 1) for kv in args.env)
    services = programs(harness.CONF)
    root = short_tmp("tzm")
    runs: list[dict[str, dict[str, float]]] = []
    ups: list[float] = []
    try:
        for i in range(args.warmup + args.runs):
            per, up_s = one_launch(root / f"n{i}", services, args.settle, env)
            if i >= args.warmup:
                runs.append(per)
                ups.append(up_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per, total = summarize(runs)
    order = ["supervisord", *services]
    per = {n: per[n] for n in order}
    up_s = statistics.median(ups)
    print_table(args.label, per, total, len(runs), up_s)
    print(json.dumps({"bench": "procmem", "label": args.label, "runs": len(runs),
                      "python": sys.version.split()[0], "up_s": round(up_s, 3),
                      "processes": {n: {k: round(v, 3) for k, v in m.items()}
                                    for n, m in per.items()},
                      "total": {k: round(v, 3) for k, v in total.items()},
                      "per_run": runs}))


if __name__ == "__main__":
    main()
