"""Test hosts in network namespaces, built so that nothing can reach the real network.

One "switch" namespace holds the bridges; each host is a namespace joined to
bridges by veth pairs created between the two namespaces, so no interface is
ever created in the root namespace. Hosts have addresses in 10.213.<bridge>.0/24,
a multicast route on each veth and no default route. Names carry the pid of
the test process (``tz<pid>-<host>``) so a later run can remove what a killed
run left behind. See ../shared/NETNS.md.

IPv6 is off in the hosts unless asked for (``Lan(..., ipv6=True)``): then each veth
has a link-local address and a global one in ``fd21:3:<bridge>::<n>/64``, both
without duplicate address detection (no wait, and ``ready()`` checks none is
tentative); ``ipv4=False`` gives a host no IPv4 address at all (an IPv6-only LAN).
The switch namespace never has IPv6: it only bridges.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator


class NetnsUnavailable(Exception):
    pass


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=20)


def _sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings],
                   capture_output=True, check=True, timeout=20)


def _ipv6(ns: str, on: bool, dad: bool = False) -> None:
    """IPv6 on or off for every interface of ``ns`` made from now on (and ``lo``)."""
    off = "0" if on else "1"
    _sysctl(ns, f"net.ipv6.conf.all.disable_ipv6={off}",
            f"net.ipv6.conf.default.disable_ipv6={off}")
    if on:
        _sysctl(ns, f"net.ipv6.conf.default.accept_dad={int(dad)}",
                "net.ipv6.conf.all.forwarding=0")


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

    def __init__(self, links: dict[str, list[int]], *, ipv4: bool = True,
                 ipv6: bool = False) -> None:
        Lan._count += 1  # several LANs may exist at once in one test process
        self.tag = f"tz{os.getpid()}-{Lan._count}"
        self.links = links
        self.ipv4, self.ipv6 = ipv4, ipv6
        assert ipv4 or ipv6, "a LAN needs IPv4 or IPv6"
        self.switch = f"{self.tag}-sw"
        self.created: list[str] = []
        #: Each host's IPv4 addresses, and (``ipv6``) global IPv6 ones, one per bridge.
        self.addresses: dict[str, list[str]] = {h: [] for h in links}
        self.addresses6: dict[str, list[str]] = {h: [] for h in links}
        self.interfaces: dict[str, list[str]] = {h: [] for h in links}

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def build(self) -> Lan:
        _ip("netns", "add", self.switch)
        self.created.append(self.switch)
        _ipv6(self.switch, False)
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
            _ipv6(ns, self.ipv6)
            _ip("link", "set", "lo", "up", ns=ns)
            for b in bs:
                inner, outer = f"veth{b}-{host}"[:15], f"p{b}-{host}"[:15]
                _ip("link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer,
                    "netns", self.switch)
                _ip("link", "set", outer, "master", f"br{b}", "up", ns=self.switch)
                if self.ipv4:
                    address = f"10.213.{b}.{index}"
                    _ip("addr", "add", f"{address}/24", "dev", inner, ns=ns)
                    self.addresses[host].append(address)
                if self.ipv6:  # ff02::fb needs no route: it is link-scoped
                    address6 = str(ipaddress.IPv6Address(f"fd21:3:{b}::{index}"))
                    _ip("-6", "addr", "add", f"{address6}/64", "dev", inner, "nodad", ns=ns)
                    self.addresses6[host].append(address6)
                _ip("link", "set", inner, "up", ns=ns)
                if self.ipv4:
                    # one multicast route per interface (zeroconf picks the interface itself)
                    _ip("route", "add", "224.0.0.0/4", "dev", inner, "metric", str(b), ns=ns)
                self.interfaces[host].append(inner)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv4.ip_forward=0"], capture_output=True, check=True)
        for host in self.links:
            routes = _ip("route", "show", "default", ns=self.ns(host)).stdout.strip()
            assert not routes, f"test host {host} must have no default route: {routes}"
            if self.ipv6:
                routes = _ip("-6", "route", "show", "default", ns=self.ns(host)).stdout.strip()
                assert not routes, f"test host {host} must have no default route: {routes}"
        if self.ipv6:
            self.ready()
        return self

    def link_local(self, host: str, index: int = 0) -> str:
        """The link-local address of ``host``'s ``index``-th interface, scoped by it."""
        dev = self.interfaces[host][index]
        out = _ip("-6", "-o", "addr", "show", "dev", dev, "scope", "link",
                  ns=self.ns(host)).stdout.split()
        return f"{out[out.index('inet6') + 1].split('/')[0]}%{dev}"

    def ready(self, timeout: float = 10.0) -> None:
        """Every host's IPv6 addresses are there and none is tentative (DAD) any more."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [h for h in self.links if _ip(
                "-6", "addr", "show", "tentative", ns=self.ns(h)).stdout.strip()
                or any(" scope link" not in _ip("-6", "addr", "show", "dev", d,
                                                ns=self.ns(h)).stdout
                       for d in self.interfaces[h])]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"IPv6 addresses still tentative on {pending}")
            time.sleep(0.05)  # noqa: sleep-ok - polls the kernel's DAD state under a deadline
    def shape(self, mbit: float) -> None:
        """Every host's side of every link sends at most ``mbit`` Mbit/s (tbf on each veth,
        in the host's namespace): a LAN's speed, not memory's (no sch_netem here)."""
        burst = max(16_000, int(mbit * 1e6 / 8 / 250))  # 4 ms at the rate
        for host, devices in self.interfaces.items():
            for dev in devices:
                subprocess.run(["ip", "netns", "exec", self.ns(host), "tc", "qdisc", "add",
                                "dev", dev, "root", "tbf", "rate", f"{mbit:g}mbit", "burst",
                                str(burst), "latency", "20ms"], check=True, timeout=20,
                               capture_output=True)

    def destroy(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()


NO_MULTICAST = """
table inet tazcom_nomcast {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr 224.0.0.0/4 counter drop
    ip6 daddr ff02::fb counter drop
  }
  chain in {
    type filter hook input priority 0; policy accept;
    ip daddr 224.0.0.0/4 counter drop
    ip6 daddr ff02::fb counter drop
  }
}
"""


def drop_multicast(ns: str) -> None:
    """Drop every IPv4 multicast and IPv6 mDNS packet in and out of namespace ``ns``, as
    Wi-Fi that filters multicast does (nftables; the table dies with the namespace)."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NO_MULTICAST,
                   text=True, capture_output=True, check=True, timeout=20)


def multicast_dropped(ns: str) -> int:
    """Packets the ``drop_multicast`` rules of ``ns`` dropped so far."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet",
                          "tazcom_nomcast"], capture_output=True, text=True, check=True,
                         timeout=20).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


@contextlib.contextmanager
def lan(links: dict[str, list[int]], *, ipv4: bool = True, ipv6: bool = False
        ) -> Iterator[Lan]:
    remove_stale()
    net = Lan(links, ipv4=ipv4, ipv6=ipv6)
    try:
        yield net.build()
    finally:
        net.destroy()
