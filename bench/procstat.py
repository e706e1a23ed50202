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
