"""File transfer: TAZCOM against a plain TCP copy and Reticulum's rncp, in one run (issue 15).

    python -m bench.files [--sizes 20,100] [--big] [--quick] [--skip-rns] [--skip-tazcom]
        [--rns-sizes 8,20,100] [--rncp-compress] [--tcp-runs 3] [--topologies link,relay]
        [--rate MBIT]

Two topologies, each built once in network namespaces (tests/netns.py) and used by
every method in turn: one link A - B (a file A -> B), and a line A - B - C (a file
A -> C; A and C share no bridge and B does not forward IP, so every byte crosses a
program on B). Each size is a file of random bytes (incompressible, as photos are),
written once in /tmp and sent by:

* **plain TCP**, the physical limit: a tiny Python sender (``socket.sendfile``) and
  receiver (``recv_into``, written to a file); on the line, a forwarder on B that moves
  the bytes from A's connection to C's with ``os.splice`` (no copy through Python).
  Timed from the sender's own start (just before ``connect``: without Python's start-up)
  to the receiver's file closed; the best of ``--tcp-runs``.
* **rncp**, Reticulum's file transfer (``pip install rns``): ``rncp -l`` at the receiver
  with a Reticulum instance of its own, ``rnsd`` (transport) on B on the line, TCP
  interfaces on the namespaces' addresses only (the configs of bench/rns_side.py).
  With ``-C``: the data is random, and rncp's default bz2 pass over it only costs time
  (``--rncp-compress`` measures that default). Timed from launching the sending
  ``rncp`` to the file in the receiver's save directory, so with its start-up, path
  request and link set-up; cut at ``--rns-timeout`` s (the rate is then from the share
  it reported done). Sizes: 8 MiB and those of ``--sizes`` up to 100 MiB.
* **TAZCOM**: real nodes (supervisord; the flood limits of tests.harness.BULK), a DM
  file sent with ``tazcom send-file PEER PATH --json`` at A, timed from launching that
  command to the receiver's ``file.status`` event ``received`` (its bus, subscribed
  from here; ``tazcom files --json`` is polled every 5 s as a fallback). A file left
  ``offered`` (over the receiver's auto-accept size) is fetched with ``tazcom files get
  ID``, inside the timing. Then the receiver's ``tazcom files --json`` row must say
  ``received`` with a path under $TAZCOM_HOME/files/.

TCP and TAZCOM send rncp's sizes too, for like-for-like comparisons. Every transfer
checks the received file's SHA-256 against the original. Per node: CPU milliseconds per
MiB over the transfer, all its processes (TAZCOM: the services, from their scheduler
counters, plus the ``send-file`` command at A; rncp: ``rnsd``, ``rncp -l``, and the
sending ``rncp`` with its start-up; TCP: each helper's own CPU during the copy, kernel
time included), and peak memory, sampled every 0.1 s during the transfer: PSS summed
over the node's processes (the TCP helpers: their peak RSS, VmHWM).

Goals, printed with a verdict in the same run: TAZCOM >= 0.5 x plain TCP over one link
and >= 0.4 x through the relay; >= 10 x rncp; memory flat in the file size (each
node's peak at the largest size <= 1.1 x its peak at the smallest; ``--big`` adds
1 GiB); a 20 MiB file through the relay within 2 s of plain TCP's time. Exits non-zero,
after printing what was measured, if a transfer failed.

Unshaped, a veth pair moves bytes at memory speed (plain TCP: 1-3 GiB/s here), which no
program that encrypts and hashes every byte approaches; ``--rate 1000`` shapes every
link to gigabit Ethernet (tbf), where the link is the limit, as on a real LAN.

Needs root and ``ip netns``. Nothing is sent outside the test namespaces; every process
started here is stopped (by pid) and every namespace, node home and file removed at the
end, also on failure or SIGTERM. ``--quick``: sizes 4 and 20 MiB, one TCP run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only light imports at the top: the TCP helpers run this module too (python -m
# bench.files tcp-helper ...), and their memory is one of the figures.

MiB = 1 << 20
TCP_PORT = 4271
LINK = {"a": [0], "b": [0]}
RELAY = {"a": [0], "b": [0, 1], "c": [1]}
#: topology -> (links, sender, receiver)
TOPOLOGIES: dict[str, tuple[dict[str, list[int]], str, str]] = {
    "link": (LINK, "a", "b"),
    "relay": (RELAY, "a", "c"),
}
TCP_GOAL = {"link": 0.5, "relay": 0.4}  # TAZCOM's rate >= this x plain TCP's
RNS_GOAL = 10.0  # TAZCOM's rate >= this x rncp's
MEM_GOAL = 1.1  # peak memory at the largest size <= this x the peak at the smallest
RELAY_SLACK_S = 2.0  # a 20 MiB file through the relay within this of plain TCP's time
RELAY_SLACK_MIB = 20
SAMPLE_S = 0.1
RNS_MAX_MIB = 100  # rncp's files by default: 8 MiB and the sizes up to this


class BenchError(RuntimeError):
    pass


# -- the plain TCP copy: helper processes, run inside the namespaces --------------------


def _done(**fields: Any) -> None:
    # VmHWM: the peak RSS of this program (ru_maxrss would be the forking parent's)
    status = Path("/proc/self/status").read_text()
    fields["peak_rss_kib"] = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    print(json.dumps(fields), flush=True)


def _listen(address: str, port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((address, port))
    srv.listen(1)
    srv.settimeout(60)
    print(json.dumps({"ready": True}), flush=True)
    return srv


def tcp_helper(argv: list[str]) -> None:
    """``recv ADDR PORT OUT``, ``fwd ADDR PORT TO_ADDR TO_PORT`` or ``send ADDR PORT FILE``.
    Each prints one JSON line at the end: its CPU seconds during the copy, its peak RSS
    and (recv) the time the file was closed or (send) the time just before connect."""
    role, address, port = argv[0], argv[1], int(argv[2])
    if role == "recv":
        srv = _listen(address, port)
        conn, _ = srv.accept()
        conn.settimeout(600)
        cpu0 = time.process_time()
        buf = bytearray(MiB)
        view = memoryview(buf)
        got = 0
        with open(argv[3], "wb", buffering=0) as out:
            while n := conn.recv_into(buf):
                out.write(view[:n])
                got += n
        t_end = time.time()
        conn.close()
        _done(t_end=t_end, bytes=got, cpu=time.process_time() - cpu0)
    elif role == "fwd":
        import fcntl

        srv = _listen(address, port)
        src, _ = srv.accept()
        dst = socket.create_connection((argv[3], int(argv[4])), timeout=10)
        src.setblocking(True)  # os.splice on the descriptors: no Python timeouts
        dst.setblocking(True)
        cpu0 = time.process_time()
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, MiB)
        moved = 0
        while n := os.splice(src.fileno(), w, MiB):
            while n:
                m = os.splice(r, dst.fileno(), n)
                n -= m
                moved += m
        dst.shutdown(socket.SHUT_WR)
        dst.recv(1)  # the receiver closes once its file is closed
        _done(bytes=moved, cpu=time.process_time() - cpu0)
    elif role == "send":
        t0 = time.time()
        conn = socket.create_connection((address, port), timeout=10)
        conn.settimeout(600)
        cpu0 = time.process_time()
        with open(argv[3], "rb") as f:
            sent = conn.sendfile(f)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
        _done(t0=t0, bytes=sent, cpu=time.process_time() - cpu0)
    else:
        raise SystemExit(f"tcp-helper: unknown role {role}")


# -- measurements -------------------------------------------------------------------------


@dataclass
class Source:
    path: Path
    size: int
    sha256: str

    @property
    def mib(self) -> float:
        return self.size / MiB


@dataclass
class Transfer:
    method: str  # "TCP", "rncp", "TAZCOM"
    topology: str
    size: int
    #: start to the whole file at the receiver; None: not complete within the time cap
    seconds: float | None
    cpu: dict[str, float] = field(default_factory=dict)  # host -> CPU seconds
    peak_mib: dict[str, float] = field(default_factory=dict)  # host -> peak memory
    note: str = ""
    #: for a transfer cut by its time cap: the share done (rate = share x size / cap)
    partial: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        """MiB/s, start to the file complete at the receiver."""
        if self.seconds:
            return self.size / MiB / self.seconds
        if self.partial:
            share, secs = self.partial
            return share * self.size / MiB / secs
        return None

    def cpu_ms_per_mib(self, host: str) -> float | None:
        return self.cpu[host] * 1000 / (self.size / MiB) if host in self.cpu else None


def make_source(directory: Path, mib: float) -> Source:
    size = int(mib * MiB)
    path = directory / f"tzfile-{mib:g}MiB-{os.getpid()}.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return Source(path, size, digest.hexdigest())


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class PeakSampler:
    """Every ``SAMPLE_S`` in a thread: each host's memory, PSS summed over the pids its
    callable returns now; ``stop()`` returns each host's peak, MiB."""

    def __init__(self, pids: dict[str, Callable[[], list[int]]]) -> None:
        from bench.procstat import pss_kib

        self._pss = pss_kib
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for host, pids in self.pids.items():
            self.peak[host] = max(self.peak[host], self._pss(pids()))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def start(self) -> PeakSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        return {h: kib / 1024 for h, kib in self.peak.items()}


def reap(proc: subprocess.Popen, timeout: float) -> float | None:
    """Wait for ``proc`` (``ip netns exec`` execs, so it is the program itself) and return
    the CPU seconds it used in all (user + system, from wait4); None if still running."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)  # noqa: sleep-ok - polling a child under a deadline


def exited(proc: subprocess.Popen) -> bool:
    """``proc`` has ended (left unreaped: ``reap`` still gets its CPU time)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def shape(net: Any, mbit: float) -> None:
    """Every link at ``mbit`` Mbit/s (tests.netns.Lan.shape): a LAN's speed, not memory's."""
    net.shape(mbit)


def say(message: str) -> None:
    print(f"[files] {message}", file=sys.stderr, flush=True)


def lan_address(address: str) -> str:
    from bench.rns_side import lan_address as check

    return check(address)


# -- plain TCP ----------------------------------------------------------------------------


def tcp_once(net: Any, topology: str, src: Source, workdir: Path, procs: Any,
             run: int) -> Transfer:
    from bench.rns_side import read_events, wait_for

    _links, sender, receiver = TOPOLOGIES[topology]
    me = [sys.executable, "-m", "bench.files", "tcp-helper"]
    tag = f"tcp-{topology}-{src.mib:g}-{run}"
    out = workdir / f"{tag}.recv"
    recv_addr = lan_address(net.addresses[receiver][0])
    started = []
    rproc = procs.start(f"{tag}-recv", net.ns(receiver),
                        [*me, "recv", recv_addr, str(TCP_PORT), str(out)])
    started.append(rproc)
    logs = {receiver: procs.logdir / f"{tag}-recv.out"}
    target = recv_addr
    if topology == "relay":
        b_in = lan_address(net.addresses["b"][0])
        fproc = procs.start(f"{tag}-fwd", net.ns("b"),
                            [*me, "fwd", b_in, str(TCP_PORT), recv_addr, str(TCP_PORT)])
        started.append(fproc)
        logs["b"] = procs.logdir / f"{tag}-fwd.out"
        target = b_in
    for host, log in logs.items():
        wait_for(lambda p=log: any(e.get("ready") for e in read_events(p)), 20,
                 f"the TCP helper on {host}", procs, started)
    sproc = procs.start(f"{tag}-send", net.ns(sender),
                        [*me, "send", target, str(TCP_PORT), str(src.path)])
    started.append(sproc)
    logs[sender] = procs.logdir / f"{tag}-send.out"

    def finished() -> dict[str, dict]:
        got = {h: [e for e in read_events(p) if "cpu" in e] for h, p in logs.items()}
        return {h: e[0] for h, e in got.items() if e} if all(got.values()) else {}

    ends = wait_for(finished, 60 + src.mib, "the TCP copy", procs, started)
    for p in started:
        procs.stop(p)
    if ends[receiver]["bytes"] != src.size or sha256_of(out) != src.sha256:
        raise BenchError(f"TCP copy {tag}: the received file differs from the original")
    out.unlink()
    return Transfer("TCP", topology, src.size, ends[receiver]["t_end"] - ends[sender]["t0"],
                    cpu={h: e["cpu"] for h, e in ends.items()},
                    peak_mib={h: e["peak_rss_kib"] / 1024 for h, e in ends.items()})


def tcp_side(net: Any, topology: str, sources: list[Source], workdir: Path,
             runs: int) -> list[Transfer]:
    from bench.rns_side import Procs

    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir / "logs")
    out = []
    try:
        for src in sources:
            tries = [tcp_once(net, topology, src, workdir, procs, k) for k in range(runs)]
            best = min(tries, key=lambda t: t.seconds or float("inf"))
            best.note = f"best of {runs}; peak = RSS"
            say(f"TCP {topology} {src.mib:g} MiB: "
                + ", ".join(f"{t.rate:.0f}" for t in tries if t.rate) + " MiB/s")
            out.append(best)
    finally:
        procs.stop_all()
    return out


# -- Reticulum's rncp -------------------------------------------------------------------


RNS_PORT = 4242


def rncp_side(net: Any, topology: str, src: Source, workdir: Path, timeout: float,
              compress: bool = False) -> Transfer:
    """One file with rncp: a listener at the receiver, rnsd on B on the line."""
    import RNS

    from bench.rns_side import Procs, listening, wait_for, write_config

    _links, sender, receiver = TOPOLOGIES[topology]
    binary = Path(sys.executable).parent
    rncp, rnsd = binary / "rncp", binary / "rnsd"
    if not rncp.exists() or not rnsd.exists():
        raise BenchError(f"rncp/rnsd not found next to {sys.executable}: pip install rns")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir / "logs")
    instance = f"tzfiles{os.getpid()}{topology}{src.size}"
    save = workdir / "save"
    save.mkdir(parents=True, exist_ok=True)
    long_lived: dict[str, list[int]] = {}
    try:
        if topology == "relay":
            b_addresses = [lan_address(a) for a in net.addresses["b"]]
            b_dir = write_config(workdir / "b", transport=True, share=True, instance=instance,
                                 interfaces={f"bridge{i}": {
                                     "type": "TCPServerInterface", "listen_ip": address,
                                     "listen_port": str(RNS_PORT)}
                                     for i, address in enumerate(b_addresses)})
            relay = procs.start("rnsd", net.ns("b"), [str(rnsd), "--config", str(b_dir)])
            wait_for(lambda: listening(relay.pid, b_addresses, RNS_PORT, instance), 30,
                     "rnsd to listen", procs, [relay])
            long_lived["b"] = [relay.pid]
            recv_iface = {"type": "TCPClientInterface",
                          "target_host": b_addresses[1], "target_port": str(RNS_PORT)}
            send_target = b_addresses[0]
        else:
            b_address = lan_address(net.addresses["b"][0])
            recv_iface = {"type": "TCPServerInterface", "listen_ip": b_address,
                          "listen_port": str(RNS_PORT)}
            send_target = b_address
        r_dir = write_config(workdir / receiver, transport=False, share=False,
                             instance=f"{instance}{receiver}",
                             interfaces={"the LAN": recv_iface})
        identity = RNS.Identity()
        identity.to_file(str(r_dir / "rncp_identity"))
        dest = RNS.Destination.hash_from_name_and_identity("rncp.receive", identity).hex()
        # -v: it logs "rncp listening on" (at Reticulum's info level) once it listens
        listener = procs.start(f"rncp-{topology}-listen", net.ns(receiver), [
            sys.executable, "-u", str(rncp), "-l", "-v", "--config", str(r_dir),
            "-i", str(r_dir / "rncp_identity"), "-n", "-b", "0", "-s", str(save)])
        listen_log = procs.logdir / f"rncp-{topology}-listen.out"
        wait_for(lambda: "rncp listening on" in listen_log.read_text(errors="replace"), 30,
                 "rncp -l to listen", procs, [listener])
        long_lived[receiver] = [listener.pid]
        if topology == "relay":
            time.sleep(1.0)  # noqa: sleep-ok - C's start-up announce reaches rnsd
        s_dir = write_config(workdir / sender, transport=False, share=False,
                             instance=f"{instance}{sender}", interfaces={"the LAN": {
                                 "type": "TCPClientInterface", "target_host": send_target,
                                 "target_port": str(RNS_PORT)}})
        from bench.procstat import busy_seconds

        cpu0 = {h: busy_seconds(p) for h, p in long_lived.items()}
        t0 = time.time()
        send = procs.start(f"rncp-{topology}-send", net.ns(sender), [
            sys.executable, "-u", str(rncp), "--config", str(s_dir),
            *([] if compress else ["-C"]), "-w", "30", str(src.path), dest])
        sampler = PeakSampler({**{h: (lambda p=p: p) for h, p in long_lived.items()},
                               sender: lambda: [send.pid]}).start()
        arrived = save / src.path.name
        deadline = t0 + timeout
        t_end = send_cpu = None
        while time.time() < deadline:
            if arrived.exists() and arrived.stat().st_size == src.size:
                t_end = time.time()
                break
            if send_cpu is None and exited(send):
                send_cpu = reap(send, 1)
                procs.check(send)  # raises if it failed
                # done at the sender (the receiver proved the file): it is being moved into
                # the save directory
                deadline = min(deadline, time.time() + 10)
            time.sleep(0.02)  # noqa: sleep-ok - polling the save directory
        peaks = sampler.stop()
        cpu = {h: busy_seconds(p) - cpu0[h] for h, p in long_lived.items()}
        send_out = procs.logdir / f"rncp-{topology}-send.out"
        if t_end is None:
            if send_cpu is not None:
                raise BenchError(f"rncp {topology}: the sender ended, no file at the receiver")
            procs.stop(send)
            share = _rncp_share(send_out.read_text(errors="replace"))
            say(f"rncp {topology}: cut at {timeout:g} s with {share * 100:.1f} % done")
            return Transfer("rncp", topology, src.size, None, cpu=cpu, peak_mib=peaks,
                            partial=(share, timeout),
                            note=f"cut at {timeout:g} s, {share * 100:.0f} % done")
        if send_cpu is None:
            send_cpu = reap(send, 15)
            if send_cpu is None:  # the file is there: only its CPU figure is lost
                procs.stop(send)
            else:
                procs.check(send)
        cpu[sender] = send_cpu if send_cpu is not None else float("nan")
        if sha256_of(arrived) != src.sha256:
            raise BenchError(f"rncp {topology}: the received file differs from the original")
        arrived.unlink()
        t = Transfer("rncp", topology, src.size, t_end - t0, cpu=cpu, peak_mib=peaks,
                     note=("compression on" if compress else "-C")
                     + "; the sender's CPU with its start-up")
        say(f"rncp {topology} {src.mib:g} MiB: {t.seconds:.1f} s, {t.rate:.2f} MiB/s")
        return t
    finally:
        procs.stop_all()


def _rncp_share(text: str) -> float:
    found = re.findall(r"(\d+(?:\.\d+)?)% - ", text)
    return float(found[-1]) / 100 if found else 0.0


# -- TAZCOM -----------------------------------------------------------------------------


def tazcom_missing() -> str | None:
    """Why the TAZCOM part cannot run yet (the CLI lacks send-file or files), or None."""
    from tests.harness import tool

    for command in ("send-file", "files"):
        proc = subprocess.run([tool("tazcom"), command, "--help"], capture_output=True,
                              text=True, timeout=30)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return f"`tazcom {command}` is not there yet ({last})"
    return None


def _json_rows(text: str) -> list[dict[str, Any]]:
    """``tazcom files --json``: a JSON array, or one object per line."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


class SendFile:
    """``tazcom --json send-file PEER PATH`` at a node, its JSON lines read as they come."""

    def __init__(self, node: Any, peer: str, path: Path) -> None:
        from tests.harness import tool

        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.bad: list[str] = []
        self.proc = node.popen([tool("tazcom"), "--json", "send-file", peer, str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                self.lines.append((time.time(), json.loads(line)))
            except ValueError:
                self.bad.append(line.rstrip())

    def join(self) -> None:
        self._thread.join(2)

    def last(self) -> dict[str, Any]:
        return self.lines[-1][1] if self.lines else {}

    def when(self, status: str) -> float | None:
        return next((t for t, row in self.lines if row.get("status") == status), None)

    def ids(self) -> set[str]:
        return {str(row[k]) for _, row in self.lines for k in ("id", "hash") if row.get(k)}

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(Exception):
            return self.proc.stderr.read()
        return ""


SEND_KEYS = {"id", "name", "size", "hash", "done", "status"}
FILES_KEYS = {"id", "name", "size", "from", "to", "hash", "status", "done", "path"}


def tazcom_once(lab: Any, topology: str, src: Source) -> Transfer:
    from bench.procstat import busy_seconds
    from tests.harness import BusTap

    _links, sender, receiver = TOPOLOGIES[topology]
    a, r = lab.nodes[sender], lab.nodes[receiver]
    services = {h: n.own_pids() for h, n in lab.nodes.items()}
    timeout = 60 + src.mib  # at least 1 MiB/s
    tap = BusTap(r, "file.status")
    cli: list[SendFile] = []  # the command, once started (the sampler counts it)

    def pids_of(host: str) -> Callable[[], list[int]]:
        if host != sender:
            return lambda: services[host]
        return lambda: services[host] + [c.proc.pid for c in cli if c.proc.returncode is None]

    sampler = PeakSampler({h: pids_of(h) for h in services})
    try:
        cpu0 = {h: busy_seconds(p) for h, p in services.items()}
        sampler.start()
        t0 = time.time()
        send = SendFile(a, r.key, src.path)
        cli.append(send)
        t_recv, how, fetched, last_poll = None, "", False, time.monotonic()
        cli_cpu: float | None = None

        def mine(row: dict[str, Any]) -> bool:
            return (row.get("name") == src.path.name or str(row.get("id")) in send.ids()
                    or str(row.get("hash")) in send.ids())

        while t_recv is None and time.time() - t0 < timeout:
            for t, ev in list(tap.arrivals):
                if ev.direction != "in" or not mine({"name": ev.name, "id": ev.id,
                                                     "hash": ev.hash}):
                    continue
                if ev.status == "received":
                    t_recv, how = t, "file.status event"
                    break
                if ev.status == "failed":
                    raise BenchError(f"the receiver failed the file: {ev.reason}")
                if ev.status == "offered" and not fetched:
                    fetched = _files_get(r, ev.id)
            if t_recv is not None:
                break
            if send.last().get("status") == "failed":
                raise BenchError(f"send-file says failed: {send.last()}")
            if cli_cpu is None and exited(send.proc):
                cli_cpu = reap(send.proc, 1) or 0.0
                if send.proc.returncode != 0:
                    send.join()
                    raise BenchError(f"`tazcom send-file` exited with {send.proc.returncode}: "
                                     f"{_tail(send.stderr())}")
            if time.monotonic() - last_poll > 5:  # the fallback: the CLI's table
                last_poll = time.monotonic()
                row = _receiver_row(r, mine)
                if row and row.get("status") == "received":
                    t_recv, how = time.time(), "polling `tazcom files` (to 5 s)"
                elif row and row.get("status") == "offered" and not fetched:
                    fetched = _files_get(r, str(row["id"]))
            time.sleep(0.02)  # noqa: sleep-ok - polling the tap under a deadline
        if t_recv is None:
            raise BenchError(f"not received within {timeout:g} s (the sender's last line: "
                             f"{send.last()}; the receiver's row: {_receiver_row(r, mine)})")
        if cli_cpu is None:  # the receipt back, as the sender shows it (send-file then ends)
            cli_cpu = reap(send.proc, 30)
            if cli_cpu is None:
                say(f"TAZCOM {topology}: send-file did not end within 30 s of the file's "
                    f"arrival (its last line: {send.last()}); stopped")
                send.proc.kill()
                cli_cpu = reap(send.proc, 5) or 0.0
        send.join()
        peaks = sampler.stop()
        cpu = {h: busy_seconds(p) - cpu0[h] for h, p in services.items()}
        cpu[sender] += cli_cpu
        if odd := [row for _, row in send.lines if not set(row) >= SEND_KEYS]:
            say(f"TAZCOM {topology}: send-file lines without {sorted(SEND_KEYS)}: {odd[:2]}")
        delivered = send.when("delivered")
        row = _receiver_row(r, mine)
        _check_received(r, row, src)
        assert row is not None
        with contextlib.suppress(OSError):
            Path(row["path"]).unlink()
        t = Transfer("TAZCOM", topology, src.size, t_recv - t0, cpu=cpu, peak_mib=peaks,
                     note=f"timed by {how}" + (", fetched with `files get`" if fetched else "")
                     + (f"; `delivered` at A after {delivered - t0:.2f} s" if delivered else
                        "; never `delivered` at A"),
                     extra={"cli_cpu_s": cli_cpu,
                            "delivered_s": delivered - t0 if delivered else None})
        say(f"TAZCOM {topology} {src.mib:g} MiB: {t.seconds:.2f} s, {t.rate:.1f} MiB/s")
        return t
    except BenchError as e:
        raise BenchError(f"TAZCOM {topology} {src.mib:g} MiB: {e}") from None
    finally:
        sampler.stop()
        tap.close()
        for c in cli:
            if c.proc.returncode is None and c.proc.poll() is None:
                c.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(5)


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output on stderr"


def _receiver_row(node: Any, mine: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    proc = node.cli("--json", "files", check=False)
    if proc.returncode != 0:
        raise BenchError(f"`tazcom files --json` at the receiver exited with "
                         f"{proc.returncode}: {_tail(proc.stderr)}")
    try:
        rows = _json_rows(proc.stdout)
    except ValueError:
        raise BenchError(f"`tazcom files --json` printed no JSON: {proc.stdout[:200]!r}") \
            from None
    return next((row for row in rows if isinstance(row, dict) and mine(row)), None)


def _files_get(node: Any, file_id: str) -> bool:
    proc = node.cli("--json", "files", "get", file_id, check=False)
    if proc.returncode != 0:
        raise BenchError(f"the file waits as `offered` at the receiver and `tazcom files get "
                         f"{file_id}` exited with {proc.returncode}: {_tail(proc.stderr)}")
    return True


def _check_received(node: Any, row: dict[str, Any] | None, src: Source) -> None:
    if row is None:
        raise BenchError("not in the receiver's `tazcom files --json`")
    if missing := FILES_KEYS - set(row):
        raise BenchError(f"`tazcom files --json` row lacks {sorted(missing)}: {row}")
    if row["status"] != "received" or row["size"] != src.size:
        raise BenchError(f"the receiver's row says {row['status']}, size {row['size']} "
                         f"(sent {src.size})")
    path = Path(row["path"]).resolve()
    files = (node.home / "files").resolve()
    if files not in path.parents:
        raise BenchError(f"received at {path}, not under {files}")
    if sha256_of(path) != src.sha256:
        raise BenchError("the received file's SHA-256 differs from the original")


def tazcom_side(net: Any, topology: str, sources: list[Source], workdir: Path,
                ) -> tuple[list[Transfer], str | None]:
    """Nodes started once on the topology, then each size in turn. Returns the transfers
    done and, if one failed, why (the others' figures are still printed)."""
    from bench.meshlab import Lab
    from tazcom.common import rpc
    from tests.harness import request, wait_for

    _links, sender, receiver = TOPOLOGIES[topology]
    lab = Lab(net, workdir / "nodes")
    out: list[Transfer] = []
    why = None
    try:
        lab.start()
        lab.wait_links([(h, "b") for h in lab.nodes if h != "b"])
        lab.wait_mesh(sender, [receiver])
        r_key = lab.nodes[receiver].key
        wait_for(lambda: any(e.key == r_key for e in request(
            lab.nodes[sender], "router", rpc.GetMesh()).items), 30,
            f"{sender} to know {receiver}'s DM key")
        for src in sources:
            out.append(tazcom_once(lab, topology, src))
    except BenchError as e:
        why = str(e)
    except Exception as e:  # noqa: BLE001 - reported beside the figures measured
        why = f"TAZCOM {topology}: {type(e).__name__}: {e}"
    finally:
        for node in lab.nodes.values():
            node.stop()
    crashes = []
    for node in lab.nodes.values():
        for tb in node.tracebacks():  # "<log name>:\n<the log>": its last traceback
            name, _, text = tb.partition(":\n")
            last = text[text.rindex("Traceback"):][:3000].rstrip()
            say(f"{node.nick}'s {name}, last traceback:\n{last}")
            error = next((ln for ln in last.splitlines()[1:] if not ln.startswith(" ")), "?")
            crashes.append(f"{node.nick}'s {name}: {error}")
    if why and crashes:
        why += f" [tracebacks in the node logs: {'; '.join(crashes)}]"
    return out, why


# -- report -----------------------------------------------------------------------------


def _cell(x: float | None, unit: str = "") -> str:
    from bench.report import fmt

    return "-" if x is None or x != x else f"{fmt(x)}{unit}"


def print_transfers(transfers: list[Transfer], rate: float = 0) -> None:
    from bench.vs_reticulum import print_table

    rows = [("topology", "method", "size MiB", "time s", "MiB/s", "CPU ms/MiB A, B, C",
             "peak MiB A, B, C", "note")]
    order = {"TCP": 0, "TAZCOM": 1, "rncp": 2}
    for t in sorted(transfers, key=lambda t: (list(TOPOLOGIES).index(t.topology), t.size,
                                              order[t.method])):
        hosts = [h for h in ("a", "b", "c") if h in TOPOLOGIES[t.topology][0]]
        rows.append((
            f"{t.topology} ({' - '.join(h.upper() for h in hosts)})", t.method,
            f"{t.size / MiB:g}", _cell(t.seconds), _cell(t.rate),
            ", ".join(_cell(t.cpu_ms_per_mib(h)) for h in hosts),
            ", ".join(_cell(t.peak_mib.get(h)) for h in hosts), t.note))
    links = f"links shaped to {rate:g} Mbit/s" if rate else "unshaped veth links"
    print(f"\nFile transfers in network namespaces, {links} (peak: PSS of every process of "
          "the node, sampled every 0.1 s; TCP helpers: RSS)")
    print_table(rows)


def goal_figures(transfers: list[Transfer], topologies: list[str]) -> list[Any]:
    from bench.report import Figure

    def find(method: str, topology: str, size: int) -> Transfer | None:
        return next((t for t in transfers if t.method == method and t.topology == topology
                     and t.size == size), None)

    figures = []
    for topology in topologies:
        sender, receiver = TOPOLOGIES[topology][1:]
        route = f"{sender.upper()}->{receiver.upper()}"
        ours = sorted((t for t in transfers if t.method == "TAZCOM" and t.topology == topology),
                      key=lambda t: t.size)
        for t in ours:
            tcp = find("TCP", topology, t.size)
            if tcp is None or not (t.rate and tcp.rate):
                continue
            goal = TCP_GOAL[topology]
            figures.append(Figure(f"{topology}: TAZCOM {t.size / MiB:g} MiB {route}", t.rate,
                                  "MiB/s", tcp.rate, "plain TCP", f">= {goal} x",
                                  t.rate >= goal * tcp.rate))
        for rn in (t for t in transfers if t.method == "rncp" and t.topology == topology):
            mine = find("TAZCOM", topology, rn.size)
            if mine and mine.rate and rn.rate:
                figures.append(Figure(f"{topology}: TAZCOM {rn.size / MiB:g} MiB {route}",
                                      mine.rate, "MiB/s", rn.rate, "rncp", f">= {RNS_GOAL:g} x",
                                      mine.rate >= RNS_GOAL * rn.rate))
        if len(ours) > 1:
            small, big = ours[0], ours[-1]
            for host in sorted(big.peak_mib):
                if small.peak_mib.get(host):
                    figures.append(Figure(
                        f"{topology}: peak PSS of node {host.upper()}, "
                        f"{big.size / MiB:g} MiB file", big.peak_mib[host], "MiB",
                        small.peak_mib[host], f"{small.size / MiB:g} MiB file",
                        f"<= {MEM_GOAL:g} x", big.peak_mib[host] <= MEM_GOAL
                        * small.peak_mib[host]))
        if topology == "relay":
            mine = find("TAZCOM", topology, RELAY_SLACK_MIB * MiB)
            tcp = find("TCP", topology, RELAY_SLACK_MIB * MiB)
            if mine and tcp and mine.seconds and tcp.seconds:
                figures.append(Figure(f"relay: TAZCOM {RELAY_SLACK_MIB} MiB A->C, time",
                                      mine.seconds, "s", tcp.seconds, "plain TCP",
                                      f"<= TCP + {RELAY_SLACK_S:g} s",
                                      mine.seconds <= tcp.seconds + RELAY_SLACK_S))
        # for the record: rncp against the physical limit
        for rn in (t for t in transfers if t.method == "rncp" and t.topology == topology):
            tcp = find("TCP", topology, rn.size)
            if tcp and tcp.rate and rn.rate:
                figures.append(Figure(f"{topology}: rncp {rn.size / MiB:g} MiB {route}",
                                      rn.rate, "MiB/s", tcp.rate, "plain TCP", "report"))
    return figures


# -- main -------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[float]:
    sizes = [float(x) for x in text.split(",") if x.strip()]
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes in MiB, e.g. 20,100")
    return sizes


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "tcp-helper":
        tcp_helper(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(prog="python -m bench.files",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="file sizes in MiB (default 20,100; --quick: 4,20)")
    ap.add_argument("--big", action="store_true", help="add a 1024 MiB file")
    ap.add_argument("--quick", action="store_true",
                    help="sizes 4,20 MiB (rncp too), one TCP run: a smoke test")
    ap.add_argument("--skip-rns", action="store_true", help="no rncp comparison")
    ap.add_argument("--skip-tazcom", action="store_true",
                    help="only the plain TCP (and rncp) figures")
    ap.add_argument("--rns-sizes", type=parse_sizes, default=None,
                    help=f"MiB of rncp's files (default: 8 and the sizes up to {RNS_MAX_MIB})")
    ap.add_argument("--rncp-compress", action="store_true",
                    help="let rncp try bz2 first, as it does by default (slower on random "
                         "data: 8 MiB took 1.5 s instead of 0.4 s)")
    ap.add_argument("--rns-timeout", type=float, default=240,
                    help="seconds rncp gets per transfer (then its rate is from its progress)")
    ap.add_argument("--tcp-runs", type=int, default=None,
                    help="plain TCP copies per size, the best counts (default 3; --quick: 1)")
    ap.add_argument("--topologies", default="link,relay", help="link, relay or both")
    ap.add_argument("--rate", type=float, default=0,
                    help="Mbit/s of every link (tbf on each veth), e.g. 1000 for gigabit "
                         "Ethernet; default: unshaped (veth: memory speed)")
    args = ap.parse_args()
    sizes = args.sizes or ([4.0, 20.0] if args.quick else [20.0, 100.0])
    if args.big:
        sizes.append(1024.0)
    rns_sizes = [] if args.skip_rns else (args.rns_sizes or sorted(
        ({8.0} if not args.quick else set()) | {s for s in sizes if s <= RNS_MAX_MIB}))
    tcp_runs = args.tcp_runs or (1 if args.quick else 3)
    topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    if unknown := set(topologies) - set(TOPOLOGIES):
        raise SystemExit(f"unknown topologies {sorted(unknown)}: link, relay")

    from tests.netns import lan, why_unavailable

    reason = why_unavailable()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    if not args.skip_rns:
        import importlib.util

        if importlib.util.find_spec("RNS") is None:
            raise SystemExit("Reticulum is not installed: pip install rns (or --skip-rns)")
    if not args.skip_tazcom and (missing := tazcom_missing()):
        raise SystemExit(f"bench.files: the TAZCOM part cannot run: {missing}. It needs "
                         "`tazcom send-file PEER PATH --json` and `tazcom files --json`; "
                         "--skip-tazcom measures plain TCP and rncp only.")
    # SIGTERM unwinds like Ctrl-C, so every finally below runs (processes, namespaces, files)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tests.harness import BULK_NOTE, short_tmp

    workdir = short_tmp("tzfiles")
    transfers: list[Transfer] = []
    failures: list[str] = []
    try:
        # TCP and TAZCOM also send rncp's files: like-for-like comparisons
        by_mib = {mib: make_source(workdir, mib) for mib in sorted(set(sizes) | set(rns_sizes))}
        all_sources = list(by_mib.values())
        for topology in topologies:
            links = TOPOLOGIES[topology][0]
            with lan(links) as net:
                say(f"{topology}: namespaces {', '.join(net.ns(h) for h in links)}")
                if args.rate:
                    shape(net, args.rate)
                transfers += tcp_side(net, topology, all_sources, workdir / f"tcp-{topology}",
                                      tcp_runs)
                for mib in rns_sizes:
                    try:
                        transfers.append(rncp_side(net, topology, by_mib[mib],
                                                   workdir / f"rns-{topology}-{mib:g}",
                                                   args.rns_timeout, args.rncp_compress))
                    except Exception as e:  # noqa: BLE001 - reported with the other figures
                        failures.append(f"rncp {topology} {mib:g} MiB: {e}")
                        say(failures[-1])
                if not args.skip_tazcom:
                    done, why = tazcom_side(net, topology, all_sources,
                                            workdir / f"tz-{topology}")
                    transfers += done
                    if why:
                        failures.append(why)
                        say(why)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    from bench.report import print_report

    print_transfers(transfers, args.rate)
    figures = goal_figures(transfers, topologies)
    if figures:
        print_report("bench.files: file transfer, TAZCOM against plain TCP and rncp"
                     + (f", links at {args.rate:g} Mbit/s" if args.rate else ""), figures)
    if not args.skip_tazcom:
        print(BULK_NOTE)
    print(json.dumps({"bench": "files", "rate_mbit": args.rate or None, "sizes_mib": sizes,
                      "rns_sizes_mib": rns_sizes,
                      "failures": failures,
                      "transfers": [{"method": t.method, "topology": t.topology,
                                     "size": t.size, "seconds": t.seconds, "mib_s": t.rate,
                                     "cpu_s": t.cpu, "peak_mib": t.peak_mib, "note": t.note,
                                     **t.extra} for t in transfers]}))
    if failures:
        raise SystemExit("bench.files: " + "; ".join(failures))


if __name__ == "__main__":
    main()
