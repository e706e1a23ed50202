"""CPU time and memory of groups of processes, from /proc."""

from __future__ import annotations

import os
from pathlib import Path


def busy_seconds(pids: list[int]) -> float:
    """Time these processes' threads spent on a CPU, from the scheduler (nanosecond
    resolution: idle processes use a few milliseconds a minute, below clock ticks)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def pids_with_env(needle: str) -> list[int]:
    """Processes whose environment contains ``needle`` (e.g. ``TAZCOM_HOME=/x/b``)."""
    want = needle.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if want in (entry / "environ").read_bytes() + b"\0":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def pids_in_netns(ns: str) -> list[int]:
    """Processes living in network namespace ``ns`` (as created by ``ip netns add``)."""
    try:
        target = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == target:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (all its threads), from /proc/<pid>/stat,
    in seconds (clock-tick resolution); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """One process's memory from /proc/<pid>/smaps_rollup, KiB: ``rss``, ``pss`` and ``uss``
    (private clean + private dirty: what ending the process would free); {} if it is gone."""
    vals: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                vals[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    if "Pss" not in vals:
        return {}
    return {"rss": vals.get("Rss", 0), "pss": vals["Pss"],
            "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


def program_name(pid: int) -> str:
    """A short name for a process: ``router`` for ``python -m tazcom.services.router`` (or
    ``python -m tazcom.supervisor_env tazcom.services.router``),
    else the base name of its script or executable (``supervisord``, ``rnsd``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if "-m" in argv[:-1]:
        i = argv.index("-m") + 1
        if argv[i] == "tazcom.supervisor_env" and i + 1 < len(argv):  # the services' launcher
            i += 1
        return argv[i].rsplit(".", 1)[-1]
    for arg in argv:
        base = os.path.basename(arg)
        if not arg.startswith("-") and not base.startswith("python"):
            return base
    return os.path.basename(argv[0]) if argv else "?"


def pss_kib_by_program(pids: list[int]) -> dict[str, int]:
    """PSS of each process, by program_name (processes of one name added up)."""
    out: dict[str, int] = {}
    for pid in pids:
        name = program_name(pid)
        out[name] = out.get(name, 0) + pss_kib([pid])
    return out
