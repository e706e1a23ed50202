"""Test hosts in network namespaces, built so that nothing can reach the real network.

One "switch" namespace holds the bridges; each host is a namespace joined to
bridges by veth pairs created between the two namespaces, so no interface is
ever created in the root namespace. Hosts have addresses in 10.213.<bridge>.0/24,
a multicast route on each veth and no default route. Names carry the pid of
the test process (``tz<pid>-<host>``) so a later run can remove what a killed
run left behind. See ../shared/NETNS.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator


class NetnsUnavailable(Exception):
    pass


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=20)


def why_unavailable() -> str | None:
    """None if namespaces can be built here, else a one-line reason to skip."""
    if os.geteuid() != 0:
        return "multi-host tests need root (ip netns)"
    if shutil.which("ip") is None:
        return "multi-host tests need iproute2 (ip netns)"
    probe = f"tz{os.getpid()}-probe"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"ip netns unavailable: {proc.stderr.strip()[:100]}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def remove_stale() -> None:
    """Delete tz<pid>-* namespaces whose pid is gone (left by a killed run)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"(tz(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)


class Lan:
    """Hosts on bridges. ``links`` maps host name to the bridges it is plugged into."""

    _count = 0

    def __init__(self, links: dict[str, list[int]]) -> None:
        Lan._count += 1  # several LANs may exist at once in one test process
        self.tag = f"tz{os.getpid()}-{Lan._count}"
        self.links = links
        self.switch = f"{self.tag}-sw"
        self.created: list[str] = []
        self.addresses: dict[str, list[str]] = {h: [] for h in links}
        self.interfaces: dict[str, list[str]] = {h: [] for h in links}

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def build(self) -> Lan:
        _ip("netns", "add", self.switch)
        self.created.append(self.switch)
        bridges = sorted({b for bs in self.links.values() for b in bs})
        for b in bridges:
            _ip("link", "add", f"br{b}", "type", "bridge", ns=self.switch)
            # Snooping would hold multicast back until a querier exists; mDNS needs flooding.
            _ip("link", "set", f"br{b}", "type", "bridge", "mcast_snooping", "0", ns=self.switch)
            _ip("link", "set", f"br{b}", "up", ns=self.switch)
        for index, (host, bs) in enumerate(self.links.items(), start=1):
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
            for b in bs:
                inner, outer = f"veth{b}-{host}"[:15], f"p{b}-{host}"[:15]
                _ip("link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer,
                    "netns", self.switch)
                _ip("link", "set", outer, "master", f"br{b}", "up", ns=self.switch)
                address = f"10.213.{b}.{index}"
                _ip("addr", "add", f"{address}/24", "dev", inner, ns=ns)
                _ip("link", "set", inner, "up", ns=ns)
                # one multicast route per interface (zeroconf picks the interface itself)
                _ip("route", "add", "224.0.0.0/4", "dev", inner, "metric", str(b), ns=ns)
                self.addresses[host].append(address)
                self.interfaces[host].append(inner)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv4.ip_forward=0"], capture_output=True, check=True)
        for host in self.links:
            routes = _ip("route", "show", "default", ns=self.ns(host)).stdout.strip()
            assert not routes, f"test host {host} must have no default route: {routes}"
        return self

    def destroy(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()


@contextlib.contextmanager
def lan(links: dict[str, list[int]]) -> Iterator[Lan]:
    remove_stale()
    net = Lan(links)
    try:
        yield net.build()
    finally:
        net.destroy()
