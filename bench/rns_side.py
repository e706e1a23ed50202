"""Reticulum + LXMF half of the side-by-side chat benchmark, on the line A - B - C.

B runs ``rnsd`` (transport node, shared instance, one TCPServerInterface per bridge)
plus an idle LXMF client attached to it; A and C run bench/rns_endpoint.py with their
own config directories and one TCPClientInterface to B each. A and C share no bridge
and B does not forward IP, so every message crosses Reticulum transport on B.

Network rule: every Reticulum process runs inside a test namespace (``ip netns exec``)
with a config directory written here that holds only TCP interfaces on the namespace's
own 10.213.x.y addresses (no AutoInterface, no default config, nothing on 0.0.0.0).

    python -m bench.rns_side [--latency N] [--flood N] [--threads 1,32] [--keep DIR]

prints the figures as JSON (progress on stderr). TZ_RNS_LOGLEVEL=7 puts Reticulum's own
path/announce log into DIR/logs (with --keep) when a path will not come.

Variance to expect: launch_s is path discovery through rnsd; it answers from an announce
table it scans once a second, so single launches range from ~0.75 s to ~2-3 s (median of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from bench.procstat import busy_seconds, pids_in_netns, pss_kib
from tests.netns import Lan, lan, why_unavailable

REPO = Path(__file__).resolve().parents[1]
PORT = 4242
LINE = {"a": [0], "b": [0, 1], "c": [1]}
LAUNCH_RUNS = 5  # launch_s is their median


class BenchError(RuntimeError):
    pass


def progress(message: str) -> None:
    print(f"[rns] {message}", file=sys.stderr, flush=True)


def lan_address(address: str) -> str:
    if not address.startswith("10.213."):
        raise BenchError(f"refusing to use {address}: not a test-namespace address")
    return address


def write_config(directory: Path, *, transport: bool, share: bool, instance: str,
                 interfaces: dict[str, dict[str, str]]) -> Path:
    """A complete Reticulum config: explicit [reticulum] options, TCP interfaces only."""
    yes = {True: "Yes", False: "No"}
    lines = [
        "[reticulum]",
        f"  enable_transport = {yes[transport]}",
        f"  share_instance = {yes[share]}",
        f"  instance_name = {instance}",
        "  shared_instance_type = unix",
        "  panic_on_interface_error = Yes",
        "  respond_to_probes = No",
        "",
        "[logging]",
        f"  loglevel = {os.environ.get('TZ_RNS_LOGLEVEL', '2')}",
        "",
        "[interfaces]",
    ]
    for name, options in interfaces.items():
        if options["type"] not in ("TCPServerInterface", "TCPClientInterface"):
            raise BenchError(f"interface type {options['type']} not allowed here")
        lines.append(f"  [[{name}]]")
        lines += [f"    {k} = {v}" for k, v in options.items()]
        lines.append("    enabled = Yes")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text("\n".join(lines) + "\n")
    return directory


class Procs:
    """Processes started by this run (in namespaces); stopped by pid, never by name."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen, Path]] = []
        self.files: list[IO[bytes]] = []

    def start(self, name: str, ns: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.out", "wb")  # noqa: SIM115 - closed in stop_all
        err_path = self.logdir / f"{name}.err"
        err = open(err_path, "wb")  # noqa: SIM115
        self.files += [out, err]
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.running.append((name, proc, err_path))
        return proc

    def name_of(self, proc: subprocess.Popen) -> tuple[str, Path]:
        for name, p, err in self.running:
            if p is proc:
                return name, err
        return "?", Path("/dev/null")

    def check(self, proc: subprocess.Popen) -> None:
        """Raise if ``proc`` ended with an error (its last stderr line tells why)."""
        rc = proc.poll()
        if rc is not None and rc != 0:
            name, err = self.name_of(proc)
            tail = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
            raise BenchError(f"{name} exited with {rc}: {tail[-1] if tail else 'no stderr'}")

    def stop(self, proc: subprocess.Popen, timeout: float = 5) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for _name, proc, _err in reversed(self.running):
            try:
                self.stop(proc)
            except (OSError, subprocess.TimeoutExpired) as e:
                progress(f"could not stop pid {proc.pid}: {e}")
        self.running.clear()
        for f in self.files:
            f.close()
        self.files.clear()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines written so far (a partly written last line is left out)."""
    try:
        data = path.read_text()
    except OSError:
        return []
    events = []
    for line in data.split("\n")[:-1]:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, procs: Procs,
             watch: Iterable[subprocess.Popen] = (), step: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for proc in watch:
            procs.check(proc)
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def first_event(path: Path, kind: str, **match: Any) -> Callable[[], dict | None]:
    def find() -> dict | None:
        for ev in read_events(path):
            if ev.get("event") == kind and all(ev.get(k) == v for k, v in match.items()):
                return ev
        return None
    return find


def listening(pid: int, addresses: list[str], port: int, unix_name: str) -> bool:
    """rnsd (pid) listens on every address:port of its namespace and on its shared socket."""
    try:
        tcp = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
        unix = Path(f"/proc/{pid}/net/unix").read_text()
    except OSError:
        return False
    found = set()
    for row in tcp:
        fields = row.split()
        local, state = fields[1], fields[3]
        ip_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16))))
    return set(addresses) <= found and f"@rns/{unix_name}" in unix


def messages(path: Path, title: str) -> list[dict[str, Any]]:
    return [ev for ev in read_events(path) if ev.get("event") == "msg"
            and ev.get("title") == title]


def index_of(ev: dict[str, Any]) -> int | None:
    head = str(ev.get("content", "")).split(":", 1)[0]
    return int(head) if head.isdigit() else None


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def run_reticulum(net: Lan, workdir: Path, *, latency_count: int, flood_count: int,
                  launch_runs: int = LAUNCH_RUNS,
                  thread_counts: tuple[int, ...] = (1, 32)) -> dict[str, float]:
    """Run the Reticulum/LXMF figures on a built Lan for {"a": [0], "b": [0, 1], "c": [1]}."""
    from bench.rns_endpoint import new_identity  # imports RNS: key generation only

    for host, bridges in LINE.items():
        if net.links.get(host) != bridges:
            raise BenchError(f"run_reticulum needs the line {LINE}, got {net.links}")
    workdir = Path(workdir)
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ns = {h: net.ns(h) for h in LINE}
    b_addresses = [lan_address(a) for a in net.addresses["b"]]
    instance = f"tzrns{os.getpid()}"
    python = sys.executable
    rnsd = Path(sys.executable).parent / "rnsd"
    if not rnsd.exists():
        raise BenchError(f"rnsd not found next to {sys.executable}")
    procs = Procs(logdir)
    endpoint = [python, "-m", "bench.rns_endpoint"]
    results: dict[str, float] = {}

    def b_address_for(host: str) -> str:
        shared = [b for b in net.links[host] if b in net.links["b"]]
        return b_addresses[net.links["b"].index(shared[0])]

    def endpoint_config(run: str, host: str) -> Path:
        return write_config(workdir / run / host, transport=False, share=False,
                            instance=f"{instance}{run}{host}", interfaces={
                                f"to B on {host}'s bridge": {
                                    "type": "TCPClientInterface",
                                    "target_host": b_address_for(host),
                                    "target_port": str(PORT)}})

    def start_receiver(run: str) -> tuple[subprocess.Popen, Path, str]:
        config = endpoint_config(run, "c")
        dest = new_identity(config / "bench_identity")
        out = workdir / run / "c.jsonl"
        proc = procs.start(f"{run}-c", ns["c"], [*endpoint, "receiver", "--config", str(config),
                                                 "--out", str(out), "--name", "C"])
        return proc, out, dest

    def start_sender(run: str, dest: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        config = endpoint_config(run, "a")
        new_identity(config / "bench_identity")
        out = workdir / run / "a.jsonl"
        proc = procs.start(f"{run}-a", ns["a"], [*endpoint, "sender", "--config", str(config),
                                                 "--out", str(out), "--name", "A",
                                                 "--to", dest, *extra])
        return proc, out

    try:
        # --- B: rnsd (transport, shared instance) and an idle LXMF client on it -----------
        b_dir = write_config(workdir / "b", transport=True, share=True, instance=instance,
                             interfaces={f"bridge{i}": {"type": "TCPServerInterface",
                                                        "listen_ip": address,
                                                        "listen_port": str(PORT)}
                                         for i, address in enumerate(b_addresses)})
        rnsd_proc = procs.start("rnsd", ns["b"], [str(rnsd), "--config", str(b_dir)])
        wait_for(lambda: listening(rnsd_proc.pid, b_addresses, PORT, instance), 30,
                 "rnsd to listen", procs, [rnsd_proc])
        idle_out = workdir / "b" / "idle.jsonl"
        idle = procs.start("idle", ns["b"], [*endpoint, "idle", "--config", str(b_dir),
                                             "--identity", str(b_dir / "idle_identity"),
                                             "--out", str(idle_out), "--name", "B idle"])
        wait_for(first_event(idle_out, "ready"), 30, "the idle LXMF client", procs, [idle])
        progress(f"rnsd up on B ({', '.join(b_addresses)}:{PORT}), idle client attached")

        # --- launch: A (probe sender) and C (receiver) start together -----------------------
        launches = []
        for k in range(launch_runs):
            run = f"launch{k}"
            (workdir / run).mkdir(parents=True, exist_ok=True)
            # keys and configs exist before t0; starting the two then costs a few ms
            dest = new_identity(endpoint_config(run, "c") / "bench_identity")
            new_identity(endpoint_config(run, "a") / "bench_identity")
            t0 = time.time()
            a, _a_out = start_sender(run, dest, "--mode", "probe", "--title", run)
            c, c_out, _dest = start_receiver(run)
            ev = wait_for(lambda out=c_out, t=run: (m := messages(out, t)) and m[0], 30,
                          "the probe message at C", procs, [a, c])
            launches.append(ev["t"] - t0)
            progress(f"launch {k}: probe reached C {launches[-1]:.3f} s after start")
            try:  # A exits by itself once the proof is back (it logs "sent", "delivered")
                a.wait(12)
            except subprocess.TimeoutExpired:
                progress(f"launch {k}: the probe sender did not finish, stopping it")
            procs.check(a)
            procs.stop(a)
            procs.stop(c)
        results["launch_s"] = statistics.median(launches)
        results["launch_s_min"] = min(launches)
        results["launch_s_max"] = max(launches)

        # --- latency: stop-and-wait A -> C ---------------------------------------------------
        run = "latency"
        c, c_out, dest = start_receiver(run)
        wait_for(first_event(c_out, "ready"), 30, "C ready", procs, [c])
        a, a_out = start_sender(run, dest, "--mode", "latency", "--count", str(latency_count),
                                "--title", run, "--peer-file", str(c_out))
        wait_for(first_event(a_out, "done"), latency_count * 10.5 + 60, "the latency run",
                 procs, [a, c], step=0.05)
        samples = {}
        for ev in messages(c_out, run):
            i = index_of(ev)
            if i is not None and i not in samples:
                samples[i] = (ev["t"] - float(ev["content"].split(":")[1])) * 1000
        if not samples:
            raise BenchError("no latency message reached C")
        values = list(samples.values())
        results["latency_p50_ms"] = percentile(values, 50)
        results["latency_p99_ms"] = percentile(values, 99)
        results["latency_received_pct"] = 100 * len(samples) / latency_count
        progress(f"latency: {len(samples)}/{latency_count} messages, "
                 f"p50 {results['latency_p50_ms']:.1f} ms, p99 {results['latency_p99_ms']:.1f} ms")
        procs.stop(a)
        procs.stop(c)

        # --- floods: T threads submit flood_count messages as fast as they can ---------------
        runs: dict[int, dict[str, float]] = {}
        for threads in thread_counts:
            run = f"flood{threads}"
            c, c_out, dest = start_receiver(run)
            wait_for(first_event(c_out, "ready"), 30, "C ready", procs, [c])
            c_ready_at = time.time()
            go = workdir / run / "go"
            a, a_out = start_sender(run, dest, "--mode", "flood", "--count", str(flood_count),
                                    "--threads", str(threads), "--title", run,
                                    "--go-file", str(go), "--linger", "60")
            wait_for(first_event(a_out, "path"), 40, "A to find a path to C", procs, [a, c])
            cap_json = workdir / run / "capture.json"
            cap = procs.start(f"{run}-capture", ns["a"], [python, "-m", "bench.capture",
                                                          net.interfaces["a"][0], str(cap_json)])
            wait_for(lambda p=Path(f"{cap_json}.ready"): p.exists(), 10, "the capture", procs,
                     [cap])
            # let C's second announce (1.6 s after start) pass before the window opens
            time.sleep(max(0.0, c_ready_at + 2.0 - time.time()))

            def endpoint_pids(cap_pid: int = cap.pid) -> list[int]:
                return [p for p in pids_in_netns(ns["a"]) + pids_in_netns(ns["c"])
                        if p != cap_pid]

            relay_pids = pids_in_netns(ns["b"])
            end_pids = endpoint_pids()
            relay0, end0 = busy_seconds(relay_pids), busy_seconds(end_pids)
            go.touch()
            t_go = time.time()
            deadline = t_go + 90
            last_count, last_change, all_at = -1, time.time(), None
            while True:
                for p in (a, c):
                    procs.check(p)
                got = {index_of(ev) for ev in messages(c_out, run)}
                now = time.time()
                if len(got) != last_count:
                    last_count, last_change = len(got), now
                a_events = {ev.get("event") for ev in read_events(a_out)}
                if len(got) >= flood_count:
                    all_at = all_at or now
                    if "proved" in a_events or now - all_at > 3:
                        break
                elif "done" in a_events and now - last_change > 15:
                    break  # quiet for longer than LXMF's retry wait: the rest is lost
                if now > deadline:
                    progress(f"{run}: deadline reached with {len(got)} delivered")
                    break
                time.sleep(0.02)
            relay1, end1 = busy_seconds(relay_pids), busy_seconds(end_pids)
            procs.stop(cap)
            wire = json.loads(cap_json.read_text()) if cap_json.exists() else {"bytes": 0}

            arrivals: dict[int, float] = {}
            total = 0
            for ev in messages(c_out, run):
                i = index_of(ev)
                if i is None or not 0 <= i < flood_count:
                    continue
                total += 1
                arrivals.setdefault(i, ev["t"])
            delivered = len(arrivals)
            times = sorted(arrivals.values())
            span = times[-1] - times[0] if delivered > 1 else 0.0
            rate = (delivered / span) if span > 0 else 0.0
            runs[threads] = {
                "rate": rate,
                "delivered": delivered,
                "relay_cpu_ms": (relay1 - relay0) * 1000 / delivered if delivered else 0.0,
                "endpoint_cpu_ms": (end1 - end0) * 1000 / delivered if delivered else 0.0,
                "wire_bytes_per_msg": wire["bytes"] / delivered if delivered else 0.0,
            }
            results[f"rate_{threads}"] = rate
            results[f"delivered_pct_{threads}"] = 100 * delivered / flood_count
            results[f"duplicates_{threads}"] = float(total - delivered)
            progress(f"{run}: {delivered}/{flood_count} delivered, {rate:.1f} msg/s, "
                     f"{total - delivered} duplicates, relay "
                     f"{runs[threads]['relay_cpu_ms']:.2f} ms/msg, endpoints "
                     f"{runs[threads]['endpoint_cpu_ms']:.2f} ms/msg, "
                     f"{runs[threads]['wire_bytes_per_msg']:.0f} B/msg on A's link")
            procs.stop(a)
            procs.stop(c)

        best = max(runs, key=lambda t: runs[t]["rate"])
        results["best_threads"] = float(best)
        for key in ("relay_cpu_ms", "endpoint_cpu_ms", "wire_bytes_per_msg"):
            results[key] = runs[best][key]
        results["relay_pss_mib"] = pss_kib(pids_in_netns(ns["b"])) / 1024
        progress(f"relay PSS (rnsd + idle LXMF client): {results['relay_pss_mib']:.1f} MiB")
        return results
    finally:
        procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rns_side")
    parser.add_argument("--latency", type=int, default=50, help="stop-and-wait messages")
    parser.add_argument("--flood", type=int, default=300, help="messages per flood run")
    parser.add_argument("--threads", default="1,32", help="thread counts, comma-separated")
    parser.add_argument("--keep", help="work in this directory and keep it (logs, events)")
    args = parser.parse_args()
    reason = why_unavailable()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    thread_counts = tuple(int(t) for t in args.threads.split(","))
    with lan(LINE) as net, tempfile.TemporaryDirectory(prefix="tzrns") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        try:
            figures = run_reticulum(net, workdir, latency_count=args.latency,
                                    flood_count=args.flood, thread_counts=thread_counts)
        except BenchError as e:
            raise SystemExit(f"rns_side: {e}") from None
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
