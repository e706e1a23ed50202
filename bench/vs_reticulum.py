"""TAZCOM against Reticulum/LXMF on the same line A - B - C, in one run.

    pip install -e '.[bench]'        # rns and lxmf, for this benchmark only
    python -m bench.vs_reticulum [--tiny]

The same namespaces (A and C share no bridge; B relays, ip_forward=0) first
run three TAZCOM nodes (real supervisord nodes; messages enter through the
node's own request path, ``router.post``, as the CLI and the chat app use it),
then Reticulum: ``rnsd`` with transport on B and LXMF endpoints on A and C
(bench/rns_side.py). Both send direct messages A -> C (end-to-end encrypted
in both systems; TAZCOM's are signed, sealed, verified at every hop,
committed to the store before they count, and answered by signed receipts).

Figures, each for both systems: launch of A and C until A reaches C; one-way
A -> C latency p50/p99 (200-byte text, stop-and-wait); sustained delivered
messages/s (Reticulum with 1 and 32 submitting threads, its best counts);
CPU time per relayed message at B; CPU time per message at A + C; PSS of the
relay node (all its processes); bytes on the A - B link per message. Plus
PyNaCl Ed25519 verifications/s on one core, in the same run: the ceiling of
any relay that checks every signature. One table, and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.meshlab import post_many
from bench.procstat import busy_seconds, pids_in_netns, pids_with_env, pss_kib
from bench.report import fmt
from tazcom.common import rpc
from tests.harness import BULK, BULK_NOTE, BusTap, Node, request, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

TEXT = 200


def verify_rate() -> float:
    from bench.mesh import verify_rate as rate

    return rate()


def text_of(i: int) -> str:
    head = f"{i}:"
    return head + "x" * (TEXT - len(head))


class Poster:
    """A long-lived DEALER to a node's router, as a client of the node holds one."""

    def __init__(self, node: Node) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(f"ipc://{node.home}/run/router.sock")
        self.n = 0

    def post(self, to: bytes | None, text: str) -> bytes:
        from tazcom.common import codec

        self.n += 1
        self.sock.send(rpc.encode_request(rpc.Post(client_id=os.urandom(16), to=to,
                                                   text=text), self.n))
        if not self.sock.poll(10_000):
            raise TimeoutError("router.post")
        reply = rpc.parse_reply(codec.unpack(self.sock.recv(), 1 << 16), rpc.PostResult)
        return reply.message_id

    def close(self) -> None:
        self.ctx.destroy(linger=0)


class Capture:
    """bench.capture on one interface, inside its namespace."""

    def __init__(self, ns: str, iface: str, workdir: Path, name: str) -> None:
        self.out = workdir / f"capture-{name}.json"
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                      "bench.capture", iface, str(self.out)],
                                     cwd=Path(__file__).resolve().parents[1])
        wait_for(lambda: Path(str(self.out) + ".ready").exists(), 10, "the capture")

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        return json.loads(self.out.read_text())


def identity_key(node: Node) -> str | None:
    """The node's key from its identity service (in-process request, no CLI)."""
    try:
        return request(node, "identity", rpc.GetIdentity(), timeout=0.5).key
    except Exception:  # noqa: BLE001 - not up yet
        return None


def launch_once(net: Lan, b: Node, workdir: Path, k: int) -> tuple[float, Node, Node]:
    """Start fresh nodes on A and C at the same moment; seconds until a DM from A is shown
    at C (A must know C: its profile, relayed by B, carries the key DMs are sealed to)."""
    # fresh nodes, fresh keys, so fresh nicknames (B pins each nickname to its first key)
    a = Node(workdir / f"tz-a{k}", f"tz-a{k}", netns=net.ns("a"),
             interfaces=",".join(net.interfaces["a"]), config=BULK)
    c = Node(workdir / f"tz-c{k}", f"tz-c{k}", netns=net.ns("c"),
             interfaces=",".join(net.interfaces["c"]), config=BULK)
    t0 = time.time()
    # both at the same moment (as the Reticulum side starts its two endpoints), and no
    # CLI process polled meanwhile: it would compete with the nodes for the two cores
    starting = threading.Thread(target=a.start)
    starting.start()
    c.start()
    starting.join()
    wait_for(lambda: (c.home / "run" / "bus-out.sock").exists(), 20, "c's bus",
             interval=0.01)
    tap = BusTap(c, "chat.message")
    try:
        c_key = wait_for(lambda: identity_key(c), 20, "c's key", interval=0.01)
        c._key = c_key
        probe_id = None
        while probe_id is None and time.time() - t0 < 60:
            try:
                probe_id = request(a, "router", rpc.Post(
                    client_id=os.urandom(16), to=bytes.fromhex(c_key), text="probe"),
                    timeout=2).message_id
            except Exception:  # noqa: BLE001 - not up yet, or no route/key yet: try again
                time.sleep(0.005)  # noqa: sleep-ok - polling for reachability
        arrived = tap.wait("chat.message", lambda e: e.id == probe_id.hex(), 30)
    finally:
        tap.close()
    return arrived.ts - t0, a, c


def tazcom_side(net: Lan, workdir: Path, *, latency_count: int, flood_count: int,
                launches: int = 3) -> dict[str, float]:
    b = Node(workdir / "tz-b", "tz-b", netns=net.ns("b"),
             interfaces=",".join(net.interfaces["b"]), config=BULK)
    nodes = [b]
    out: dict[str, float] = {}
    try:
        b.start().wait_up()
        times = []
        for k in range(launches):
            took, a, c = launch_once(net, b, workdir, k)
            times.append(took)
            nodes += [a, c]
            if k < launches - 1:
                a.stop()
                c.stop()
                b.wait_peer(f"tz-a{k}", ("offline",), timeout=20)
        out["launch_s"] = statistics.median(times)
        c_key = c.key
        tap = BusTap(c, "chat.message")
        for n in (a, c):
            n.wait_up(30)
        # one-way latency, stop-and-wait, through one long-lived request socket (as the chat
        # app holds one)
        samples = []
        poster = Poster(a)
        try:
            for i in range(latency_count):
                t_send = time.time()
                msg_id = poster.post(bytes.fromhex(c_key), text_of(i)).hex()
                ev = tap.wait("chat.message", lambda e, m=msg_id: e.id == m, 10,
                              interval=0.0002)
                samples.append(ev.ts - t_send)
        finally:
            poster.close()
        samples.sort()
        out["latency_p50_ms"] = statistics.median(samples) * 1000
        out["latency_p99_ms"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
        # flood: sustained delivered messages/s, CPU, bytes on the wire
        relay_pids = pids_in_netns(net.ns("b"))
        end_pids = pids_in_netns(net.ns("a")) + pids_in_netns(net.ns("c"))
        capture = Capture(net.ns("a"), net.interfaces["a"][0], workdir, "tazcom")
        cpu_b, cpu_ends = busy_seconds(relay_pids), busy_seconds(end_pids)
        before = len(tap.events)
        ids = asyncio.run(post_many(a, [text_of(i) for i in range(flood_count)],
                                    to=bytes.fromhex(c_key)))
        want = {i.hex() for i in ids}
        wait_for(lambda: want <= {e.id for e in tap.events[before:]}, 120,
                 "every flood message at c", interval=0.2)
        # receipts and custody for the last messages are part of the cost: let them land
        wait_for(lambda: all(m.status == "delivered" for m in request(
            a, "store", rpc.StoreHistory(conv=bytes.fromhex(c_key), limit=10)).messages),
            30, "the last receipts at a", interval=0.2)
        cpu_b = busy_seconds(relay_pids) - cpu_b
        cpu_ends = busy_seconds(end_pids) - cpu_ends
        wire = capture.stop()
        got = [(t, e.id) for t, e in tap.arrivals[before:] if e.id in want]
        times = [t for t, _ in got]
        delivered = len({i for _, i in got})
        out["rate"] = delivered / (max(times) - min(times))
        out["delivered_pct"] = delivered / flood_count * 100
        out["duplicates"] = len(got) - delivered
        out["relay_cpu_ms"] = cpu_b / delivered * 1000
        out["endpoint_cpu_ms"] = cpu_ends / delivered * 1000
        out["wire_bytes_per_msg"] = wire["bytes"] / delivered
        out["relay_pss_mib"] = pss_kib(pids_with_env(f"TAZCOM_HOME={b.home}")) / 1024
        tap.close()
    finally:
        for n in nodes:
            n.stop()
    return out


ROWS = [
    ("launch of A and C until A reaches C", "launch_s", "s", "lower"),
    ("A->C latency p50, 200-byte text, stop-and-wait", "latency_p50_ms", "ms", "lower"),
    ("A->C latency p99", "latency_p99_ms", "ms", "lower"),
    ("A->C delivered messages/s, 100 %, no duplicates", "rate", "msg/s", "higher"),
    ("CPU time at the relay per relayed message", "relay_cpu_ms", "ms", "lower"),
    ("CPU time at sender + receiver per message", "endpoint_cpu_ms", "ms", "lower"),
    ("memory (PSS) of the relay node, all processes", "relay_pss_mib", "MiB", "lower"),
    ("bytes on the A-B link per 200-byte message", "wire_bytes_per_msg", "B", "lower"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a few messages (smoke test)")
    ap.add_argument("--only-tazcom", action="store_true", help="skip Reticulum (profiling)")
    args = ap.parse_args()
    reason = why_unavailable()
    if reason:
        raise SystemExit(f"skipped: {reason}")
    if args.only_tazcom:
        workdir = short_tmp("tzvs")
        with lan({"a": [0], "b": [0, 1], "c": [1]}) as net:
            print(json.dumps(tazcom_side(net, workdir, latency_count=100, flood_count=2000)))
        shutil.rmtree(workdir, ignore_errors=True)
        return
    try:
        from bench.rns_side import run_reticulum
    except ImportError as e:
        raise SystemExit(f"skipped: Reticulum/LXMF not installed ({e}); "
                         "pip install -e '.[bench]'") from None
    latency_count, flood_count = (5, 30) if args.tiny else (200, 3000)
    workdir = short_tmp("tzvs")
    try:
        with lan({"a": [0], "b": [0, 1], "c": [1]}) as net:
            ours = tazcom_side(net, workdir, latency_count=latency_count,
                               flood_count=flood_count, launches=1 if args.tiny else 3)
        with lan({"a": [0], "b": [0, 1], "c": [1]}) as net:
            theirs = run_reticulum(net, workdir / "rns", latency_count=latency_count,
                                   flood_count=flood_count, launch_runs=1 if args.tiny else 5)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ceiling = verify_rate()
    threads = sorted(int(k.split("_")[1]) for k in theirs if k.startswith("rate_"))
    theirs["rate"] = max(theirs[f"rate_{t}"] for t in threads)
    rows = [("figure", "TAZCOM", "Reticulum/LXMF", "ratio", "")]
    verdicts = {}
    for label, key, unit, better in ROWS:
        mine, other = ours[key], theirs.get(key, float("nan"))
        ratio = mine / other if other else float("nan")
        ok = (mine < other) if better == "lower" else (mine > other)
        if key == "rate":
            ok = ok and mine >= 0.1 * ceiling and ours["delivered_pct"] == 100 \
                and ours["duplicates"] == 0
        verdicts[key] = ok
        rows.append((label, f"{fmt(mine)} {unit}", f"{fmt(other)} {unit}", f"{ratio:.2f}",
                     "ok" if ok else "MISSED"))
    rows.append(("Reticulum rate by submitting threads", "",
                 ", ".join(f"{t}: {fmt(theirs[f'rate_{t}'])}/s" for t in threads), "", ""))
    rows.append(("PyNaCl Ed25519 verify/s, one core (ceiling)", f"{fmt(ceiling)} /s", "",
                 f"{ours['rate'] / ceiling:.3f}", ">= 0.1"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print(f"\nTAZCOM vs Reticulum/LXMF, line A - B - C in namespaces "
          f"({'tiny' if args.tiny else 'full'} run)")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(BULK_NOTE)
    print(json.dumps({"bench": "vs_reticulum", "tiny": args.tiny, "tazcom": ours,
                      "flood_limits": "raised (tests.harness.BULK)",
                      "reticulum": theirs, "ed25519_verify_per_s": ceiling,
                      "tazcom_better": verdicts}))


if __name__ == "__main__":
    main()
