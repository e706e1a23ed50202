"""TAZCOM against Reticulum/LXMF on the same line A - B - C, in one run.

    pip install -e '.[bench]'        # rns and lxmf, for this benchmark only
    python -m bench.vs_reticulum [--tiny] [--only-tazcom | --only-reticulum]

The same namespaces (A and C share no bridge; B relays, ip_forward=0) first
run three TAZCOM nodes (real supervisord nodes; messages enter through the
node's own request path, ``router.post``, as the CLI and the chat app use it),
then Reticulum: ``rnsd`` with transport on B and LXMF endpoints on A and C
(bench/rns_side.py), once per LXMF delivery method: opportunistic (one packet
per message) and direct (one packet per message over an RNS Link), each on a
fresh rnsd. Both systems send direct messages A -> C (end-to-end encrypted in
both; TAZCOM's are signed, sealed, verified at every hop, committed to the
store before they count, and answered by signed receipts; LXMF's are signed,
checked at C, and proved by C).

Figures, each for TAZCOM and both Reticulum methods: launch of A and C until A
reaches C; one-way A -> C latency p50/p99 and its histogram (200-byte text,
stop-and-wait); sustained delivered messages/s; CPU time per relayed message
at B; CPU time per message at A + C; PSS of the relay node (all its
processes: for TAZCOM supervisord and every service, listed by program; for
Reticulum rnsd and an idle LXMF client); bytes on the A - B link per message.
Reticulum's flood figures are the best of several runs per method (submitting
threads, bound on messages in flight: see bench/rns_side.py for why the bound
matters), and every row holds TAZCOM against the better of the two methods
(the lower, or the higher rate). Plus PyNaCl Ed25519 verifications/s on one
core, in the same run: the ceiling of any relay that checks every signature;
TAZCOM's rate must reach RATE_GOAL of it. One table, a latency histogram, and
one JSON line (its keys: "reticulum" is the opportunistic method, as before;
"reticulum_direct", "reticulum_best", "latency_hist_ms" and
"tazcom_relay_pss_by_program_mib" were added with the direct method).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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
from typing import Any

from bench.meshlab import post_many
from bench.procstat import busy_seconds, pids_in_netns, pids_with_env, pss_kib_by_program
from bench.report import fmt
from bench.rns_side import FLOODS, FLOODS_TINY, HIST_BUCKETS, bucket_label, histogram, percentile
from tazcom.common import rpc
from tests.harness import BULK, BULK_NOTE, BusTap, Node, request, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

TEXT = 200
RATE_GOAL = 0.15  # of the Ed25519 verify ceiling measured in the same run


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
                launches: int = 3) -> dict[str, Any]:
    b = Node(workdir / "tz-b", "tz-b", netns=net.ns("b"),
             interfaces=",".join(net.interfaces["b"]), config=BULK)
    nodes = [b]
    out: dict[str, Any] = {}
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
        samples_ms = [t * 1000 for t in samples]
        # the same estimator as the Reticulum side's (linear between closest ranks)
        out["latency_p50_ms"] = percentile(samples_ms, 50)
        out["latency_p99_ms"] = percentile(samples_ms, 99)
        out["latency_max_ms"] = max(samples_ms)
        out["latency_hist_ms"] = histogram(samples_ms)
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
        # every process of the node: supervisord and the services it runs
        by_program = pss_kib_by_program(pids_with_env(f"TAZCOM_HOME={b.home}"))
        out["relay_pss_mib"] = sum(by_program.values()) / 1024
        out["relay_pss_by_program_mib"] = {name: kib / 1024 for name, kib
                                           in sorted(by_program.items())}
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
MODES = {"opportunistic": "LXMF opportunistic", "direct": "LXMF direct"}


def reticulum_best(theirs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row, the better of the Reticulum methods: {key: {"value": v, "mode": m}}."""
    best = {}
    for _label, key, _unit, better in ROWS:
        values = {m: f[key] for m, f in theirs.items() if isinstance(f.get(key), float | int)}
        if not values:
            continue
        mode = (min if better == "lower" else max)(values, key=values.__getitem__)
        best[key] = {"value": values[mode], "mode": mode}
    return best


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def report(ours: dict[str, Any] | None, theirs: dict[str, dict[str, Any]],
           ceiling: float | None, tiny: bool) -> dict[str, Any]:
    """Print the table and the latency histogram; return what the JSON line adds."""
    modes = [m for m in MODES if m in theirs]
    best = reticulum_best(theirs)
    head = ("figure", "TAZCOM", *(MODES[m] for m in modes), "better of them", "ratio", "goal")
    rows = [head]
    verdicts: dict[str, bool] = {}
    for label, key, unit, better in ROWS:
        other = best.get(key, {"value": float("nan"), "mode": "-"})
        cells = [f"{fmt(theirs[m][key])} {unit}" if key in theirs[m] else "-" for m in modes]
        if ours is None:
            rows.append((label, "-", *cells, other["mode"], "", ""))
            continue
        mine = ours[key]
        ratio = mine / other["value"] if other["value"] else float("nan")
        ok = (mine < other["value"]) if better == "lower" else (mine > other["value"])
        if key == "rate":
            ok = ok and ceiling is not None and mine >= RATE_GOAL * ceiling \
                and ours["delivered_pct"] == 100 and ours["duplicates"] == 0
        verdicts[key] = ok
        rows.append((label, f"{fmt(mine)} {unit}", *cells, other["mode"], f"{ratio:.2f}",
                     f"{better}: " + ("ok" if ok else "MISSED")))
    if ceiling is not None:
        rows.append(("PyNaCl Ed25519 verify/s, one core (ceiling)", f"{fmt(ceiling)} /s",
                     *("" for _ in modes), "",
                     f"{ours['rate'] / ceiling:.3f}" if ours else "", f">= {RATE_GOAL}"))
    print(f"\nTAZCOM vs Reticulum/LXMF, line A - B - C in namespaces "
          f"({'tiny' if tiny else 'full'} run)")
    print_table(rows)
    print("\nReticulum floods (run: submitting threads _w most messages in flight; "
          "per message: sends of it, Ed25519 checks at A)")
    print_table([("method", "run", "delivered", "msg/s", "sends", "checks at A",
                  "receipts held (max)", "relay CPU", "endpoint CPU", "bytes")]
                + [(MODES[m], k, f"{r['delivered_pct']:.0f} %", fmt(r["rate"]),
                    f"{r['data_sends_per_msg']:.2f}", f"{r['sender_verifies_per_msg']:.1f}",
                    str(r["receipts_held_max"]), f"{fmt(r['relay_cpu_ms'])} ms",
                    f"{fmt(r['endpoint_cpu_ms'])} ms", f"{fmt(r['wire_bytes_per_msg'])} B")
                   for m in modes for k, r in theirs[m]["floods"].items()])
    hists = {"tazcom": ours["latency_hist_ms"]} if ours else {}
    hists.update({m: theirs[m]["latency_hist_ms"] for m in modes})
    names = {"tazcom": "TAZCOM", **MODES}
    print("\nA->C latency, stop-and-wait: messages per bucket (ms)")
    print_table([("bucket", *(names[k] for k in hists))]
                + [(f"{bucket_label(lo, hi)} ms", *(str(h[bucket_label(lo, hi)])
                                                    for h in hists.values()))
                   for lo, hi in HIST_BUCKETS]
                + [("max", *(f"{fmt((ours if k == 'tazcom' else theirs[k])['latency_max_ms'])}"
                             for k in hists))])
    if ours:
        pss = ours["relay_pss_by_program_mib"]
        print("\nTAZCOM relay PSS by process (MiB): "
              + ", ".join(f"{name} {mib:.1f}" for name, mib in pss.items())
              + f"; total {ours['relay_pss_mib']:.1f}")
    return {"reticulum_best": best, "tazcom_better": verdicts,
            "latency_hist_ms": {"buckets": [bucket_label(lo, hi) for lo, hi in HIST_BUCKETS],
                                **hists}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a few messages (smoke test)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--only-tazcom", action="store_true", help="skip Reticulum (profiling)")
    only.add_argument("--only-reticulum", action="store_true",
                      help="skip TAZCOM (iterating on the Reticulum side)")
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
    if importlib.util.find_spec("RNS") is None or importlib.util.find_spec("LXMF") is None:
        raise SystemExit("skipped: Reticulum/LXMF not installed; pip install -e '.[bench]'")
    from bench.rns_side import run_reticulum

    latency_count, flood_count = (5, 30) if args.tiny else (200, 3000)
    workdir = short_tmp("tzvs")
    ours = None
    try:
        if not args.only_reticulum:
            with lan({"a": [0], "b": [0, 1], "c": [1]}) as net:
                ours = tazcom_side(net, workdir, latency_count=latency_count,
                                   flood_count=flood_count, launches=1 if args.tiny else 3)
        with lan({"a": [0], "b": [0, 1], "c": [1]}) as net:
            theirs = run_reticulum(net, workdir / "rns", latency_count=latency_count,
                                   flood_count=flood_count, launch_runs=1 if args.tiny else 5,
                                   floods=FLOODS_TINY if args.tiny else FLOODS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ceiling = None if args.only_reticulum else verify_rate()
    added = report(ours, theirs, ceiling, args.tiny)
    if ours is not None:
        print(BULK_NOTE)
    line: dict[str, Any] = {"bench": "vs_reticulum", "tiny": args.tiny}
    if ours is not None:
        line.update({"tazcom": ours, "flood_limits": "raised (tests.harness.BULK)"})
    else:
        line["only_reticulum"] = True
    line["reticulum"] = theirs["opportunistic"]
    line["reticulum_direct"] = theirs["direct"]
    if ceiling is not None:
        line["ed25519_verify_per_s"] = ceiling
        line["rate_goal_of_ceiling"] = RATE_GOAL
    line.update(added)
    if ours is not None:
        line["tazcom_relay_pss_by_program_mib"] = ours["relay_pss_by_program_mib"]
    else:
        del line["tazcom_better"]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
