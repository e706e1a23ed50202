"""One Reticulum + LXMF endpoint for the side-by-side benchmark (see bench/rns_side.py).

Run only inside a test namespace, with a config directory written by rns_side.py
(TCP interfaces on 10.213.x.y only, never AutoInterface, never a default config):

    ip netns exec NS python -m bench.rns_endpoint receiver --config DIR --out EV.jsonl
    ip netns exec NS python -m bench.rns_endpoint sender --config DIR --out EV.jsonl \\
        --to HASH --mode probe|latency|flood [--method opportunistic|direct] [--count N] \\
        [--threads T] [--window W]
    ip netns exec NS python -m bench.rns_endpoint idle --config RNSD_DIR [--out EV.jsonl]

Events are JSON lines, flushed one by one. Every wait has a deadline; on failure the
program writes one line to stderr and exits non-zero.

Delivery methods (--method):

- ``opportunistic``: in lxmf 1.2.1 a message to a SINGLE destination goes out as one
  encrypted RNS packet (proved by the receiver) when its packed content fits
  LXMessage.ENCRYPTED_PACKET_MAX_CONTENT (287 bytes); a 200-character message does, so
  each message costs one packet (with its own ephemeral X25519 key) + one proof.
- ``direct``: LXMF sets up an RNS Link to the receiver on the first message (path,
  link request, link proof) and sends every message after it as one link packet,
  proved by an explicit proof on the link. The latency and flood modes send one
  warm-up message first, so their figures are those of an established link (as
  TAZCOM's are those of an established encrypted TCP link); the probe mode (launch)
  includes the link set-up.

Floods: --threads T submitting threads, at most --window W messages submitted and not
yet proved (0: no bound, every message handed to LXMF at once). See bench/rns_side.py
for why the bound matters. Both roles count, for the diagnosis, the packets they send
by type, their signature verifications and (sender) the fate of their packet receipts
and LXMF's delivery attempts; these come out as "stats" events.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

MSG_LEN = 200
APP_ASPECTS = "lxmf.delivery"


def die(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr, then leave at once (RNS' exit handlers detach stderr)."""
    try:
        sys.stderr.write(f"rns_endpoint: {message}\n")
        sys.stderr.flush()
    finally:
        os._exit(code)


def new_identity(path: Path) -> str:
    """Create (or load) an identity file; return the hex hash of its LXMF delivery destination.

    Pure key generation, no Reticulum instance: usable by the harness before launch.
    """
    import RNS

    identity = RNS.Identity.from_file(str(path)) if path.exists() else None
    if identity is None:
        identity = RNS.Identity()
        path.parent.mkdir(parents=True, exist_ok=True)
        identity.to_file(str(path))
    return RNS.Destination.hash_from_name_and_identity(APP_ASPECTS, identity).hex()


class Events:
    def __init__(self, path: Path | None) -> None:
        self.lock = threading.Lock()
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def write(self, **event: Any) -> None:
        if self.file is None:
            return
        line = json.dumps(event) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()


class Stats:
    """Diagnostic counters of this process: packets sent by type (retransmissions and
    proofs included), Ed25519 verifications (RNS identities and links) and the packet
    receipts of what was sent. Installed by wrapping three RNS methods; the cost is one
    locked increment per packet or verification (~0.3 us, against ~100 us a verify)."""

    TYPES = {0: "data", 1: "announce", 2: "linkrequest", 3: "proof"}

    def __init__(self) -> None:
        import RNS

        self.lock = threading.Lock()
        self.sent: dict[str, int] = {}  # data packets that carry a message: "message"
        self.verifies = 0
        self.receipts: list[Any] = []
        self.held_max = 0  # most receipts RNS held at once (each is checked per proof)
        stats = self
        send, validate, link_validate = RNS.Packet.send, RNS.Identity.validate, RNS.Link.validate

        def counted_send(packet: Any) -> Any:
            receipt = send(packet)
            kind = stats.TYPES.get(packet.packet_type, str(packet.packet_type))
            if (kind == "data" and packet.context == RNS.Packet.NONE
                    and packet.destination.type in (RNS.Destination.SINGLE,
                                                    RNS.Destination.LINK)):
                kind = "message"  # an LXMF message (not a path request, keepalive, ...)
            with stats.lock:
                stats.sent[kind] = stats.sent.get(kind, 0) + 1
                if receipt:
                    stats.receipts.append(receipt)
                    stats.held_max = max(stats.held_max, len(RNS.Transport.receipts))
            return receipt

        def counted_validate(identity: Any, signature: bytes, message: bytes) -> bool:
            with stats.lock:
                stats.verifies += 1
            return validate(identity, signature, message)

        def counted_link_validate(link: Any, signature: bytes, message: bytes) -> bool:
            with stats.lock:
                stats.verifies += 1
            return link_validate(link, signature, message)

        RNS.Packet.send = counted_send
        RNS.Identity.validate = counted_validate
        RNS.Link.validate = counted_link_validate

    def reset(self) -> None:
        with self.lock:
            self.sent.clear()
            self.verifies = 0
            self.receipts.clear()
            self.held_max = 0

    def snapshot(self) -> dict[str, Any]:
        import RNS

        names = {RNS.PacketReceipt.SENT: "pending", RNS.PacketReceipt.DELIVERED: "proved",
                 RNS.PacketReceipt.FAILED: "timed_out", RNS.PacketReceipt.CULLED: "culled"}
        with self.lock:
            fates: dict[str, int] = {}
            for r in self.receipts:
                name = names.get(r.status, str(r.status))
                fates[name] = fates.get(name, 0) + 1
            out = {"sent": dict(self.sent), "verifies": self.verifies, "receipts": fates,
                   "receipts_held_max": self.held_max}
        queues = getattr(RNS.Transport, "inbound_queues", None)
        if queues is not None and hasattr(queues, "snapshot"):
            out["inbound_dropped"] = sum(queues.snapshot()[2])  # full inbound queue (rns 1.5)
        return out


def wait_until(predicate: Any, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def load_identity(args: argparse.Namespace) -> Any:
    import RNS

    path = Path(args.identity) if args.identity else Path(args.config) / "bench_identity"
    new_identity(path)
    identity = RNS.Identity.from_file(str(path))
    if identity is None:
        die(f"could not load identity {path}")
    return identity


def start_stack(args: argparse.Namespace, *, shared: bool) -> tuple[Any, Any, Any]:
    """Reticulum (from args.config only) + an LXMRouter with one delivery identity."""
    import LXMF
    import RNS

    config = Path(args.config)
    if not (config / "config").is_file():
        die(f"no Reticulum config in {config} (refusing to create a default one)")
    try:
        RNS.Reticulum(configdir=str(config), require_shared_instance=shared)
    except Exception as e:  # noqa: BLE001 - any start-up failure ends this endpoint
        die(f"Reticulum did not start from {config}: {e}")
    identity = load_identity(args)
    storage = config / f"lxmf-{args.role}"
    storage.mkdir(parents=True, exist_ok=True)
    router = LXMF.LXMRouter(identity=identity, storagepath=str(storage))
    delivery = router.register_delivery_identity(identity, display_name=args.name or args.role)
    if delivery is None:
        die("LXMRouter refused the delivery identity")
    return router, identity, delivery


def lifetime_guard(seconds: float) -> None:
    """Never outlive the harness by much, even if nobody sends SIGTERM."""
    def guard() -> None:
        time.sleep(seconds)
        die(f"still running after {seconds:.0f} s, giving up", code=3)
    threading.Thread(target=guard, daemon=True).start()


def stats_writer(stats: Stats, events: Events,
                 extra: Callable[[], dict[str, Any]] = dict) -> None:
    """A "stats" event every 0.25 s while the counters change (the harness reads the last)."""
    def loop() -> None:
        last = None
        while True:
            time.sleep(0.25)
            now = {**stats.snapshot(), **extra()}
            if now != last:
                events.write(event="stats", t=time.time(), **now)
                last = now
    threading.Thread(target=loop, daemon=True).start()


def run_receiver(args: argparse.Namespace, events: Events) -> None:
    stats = Stats()
    router, _identity, delivery = start_stack(args, shared=False)
    stats_writer(stats, events)

    def delivered(message: Any) -> None:
        events.write(event="msg", t=time.time(), title=message.title_as_string(),
                     content=message.content_as_string(),
                     verified=bool(message.signature_validated))

    router.register_delivery_callback(delivered)

    class Senders:
        """Logs each LXMF delivery announce heard: once the sender's is known, its
        messages' signatures can be (and are) checked here."""
        aspect_filter = APP_ASPECTS
        receive_path_responses = True

        def received_announce(self, destination_hash: bytes, announced_identity: Any,
                              app_data: Any) -> None:
            events.write(event="known", t=time.time(), hash=destination_hash.hex())

    import RNS

    RNS.Transport.register_announce_handler(Senders())
    router.announce(delivery.hash)
    events.write(event="ready", hash=delivery.hash.hex())
    # A second announce: a young interface may hold back announces that come too fast.
    time.sleep(1.6)
    router.announce(delivery.hash)
    while True:  # until SIGTERM (LXMRouter's handler persists state and exits)
        time.sleep(1)


def run_idle(args: argparse.Namespace, events: Events) -> None:
    # Attach to rnsd's shared instance only: with require_shared_instance this never
    # becomes an instance of its own (which would try to bring up rnsd's interfaces).
    _router, _identity, delivery = start_stack(args, shared=True)
    events.write(event="ready", hash=delivery.hash.hex())
    while True:
        time.sleep(1)


def run_sender(args: argparse.Namespace, events: Events) -> None:
    import LXMF
    import RNS

    if not args.to:
        die("sender needs --to HASH")
    try:
        dest_hash = bytes.fromhex(args.to)
    except ValueError:
        die(f"bad destination hash {args.to!r}")
    stats = Stats()
    router, _identity, source = start_stack(args, shared=False)
    method = {"opportunistic": LXMF.LXMessage.OPPORTUNISTIC,
              "direct": LXMF.LXMessage.DIRECT}[args.method]

    next_request = 0.0
    deadline = time.monotonic() + args.path_timeout
    while not RNS.Transport.has_path(dest_hash):
        now = time.monotonic()
        if now >= deadline:
            die(f"no path to {args.to} after {args.path_timeout:.0f} s")
        if now >= next_request:
            RNS.Transport.request_path(dest_hash)
            next_request = now + args.path_interval
        time.sleep(0.005)
    if not wait_until(lambda: RNS.Identity.recall(dest_hash) is not None, 10):
        die(f"path to {args.to} known but its identity cannot be recalled")
    recipient = RNS.Identity.recall(dest_hash)
    destination = RNS.Destination(recipient, RNS.Destination.OUT, RNS.Destination.SINGLE,
                                  "lxmf", "delivery")
    if destination.hash != dest_hash:
        die("recalled identity does not match the destination hash")
    # As any LXMF client does: the receiver learns this identity and checks signatures.
    # Sent now that the interface is surely up (a path came through it).
    router.announce(source.hash)
    events.write(event="path", t=time.time(), source=source.hash.hex())

    def message(content: str, title: str | None = None) -> Any:
        return LXMF.LXMessage(destination, source, content,
                              title=args.title if title is None else title,
                              desired_method=method)

    def pad(head: str) -> str:
        return head.ljust(MSG_LEN, "x")[:MSG_LEN] if len(head) < MSG_LEN else head

    if args.mode != "probe" and args.method == "direct":
        # set the link up (and see it work) before anything is measured
        warm = message(pad("warmup:"), title="warmup")
        ready = threading.Event()
        warm.register_delivery_callback(lambda _m: ready.set())
        router.handle_outbound(warm)
        if not ready.wait(args.path_timeout):
            die(f"warm-up message over the link not proved after {args.path_timeout:.0f} s "
                f"(state {warm.state})")
        events.write(event="link", t=time.time())

    if args.go_file:  # the harness waits for C to know us: announce again now and then
        go = Path(args.go_file)
        deadline = time.monotonic() + args.go_timeout
        while not wait_until(go.exists, 5, step=0.002):
            if time.monotonic() >= deadline:
                die(f"no go signal ({go}) after {args.go_timeout:.0f} s")
            router.announce(source.hash)

    if args.mode == "probe":
        msg = message(pad(f"0:{time.time()!r}:"))
        done = threading.Event()
        msg.register_delivery_callback(lambda _m: done.set())
        router.handle_outbound(msg)
        sent_states = (LXMF.LXMessage.SENT, LXMF.LXMessage.SENDING, LXMF.LXMessage.DELIVERED)
        if not wait_until(lambda: msg.state in sent_states, 10):
            die(f"probe message not sent after 10 s (state {msg.state})")
        events.write(event="sent", i=0, t=time.time())
        if done.wait(10):
            events.write(event="delivered", i=0, t=time.time())

    elif args.mode == "latency":
        # Stop-and-wait: the next message once this one's proof is back. The sample is
        # one-way (C's arrival time minus the send time carried in the text); waiting on
        # the proof, not polling C's event file, keeps this process' GIL for RNS.
        lost = 0
        for i in range(args.count):
            proof = threading.Event()
            send_time = time.time()
            msg = message(pad(f"{i}:{send_time!r}:"))
            msg.register_delivery_callback(lambda _m, ev=proof: ev.set())
            router.handle_outbound(msg)
            events.write(event="sent", i=i, t=send_time)
            if not proof.wait(10):
                lost += 1
                events.write(event="timeout", i=i, t=time.time())
        events.write(event="done", t=time.time(), lost=lost)

    elif args.mode == "flood":
        lock = threading.Lock()
        finished: set[int] = set()
        counts = {"delivered": 0, "failed": 0}
        sent: list[Any] = []
        errors: list[str] = []
        window = threading.Semaphore(args.window) if args.window else None

        def lxmf_counts() -> dict[str, int]:
            with lock:
                attempts = [m.delivery_attempts for m in sent]
            return {"lxmf_attempts": sum(attempts),
                    "lxmf_retried": sum(1 for a in attempts if a > 1),
                    "concluded": len(finished)}

        stats_writer(stats, events, lxmf_counts)

        def concluded(i: int, how: str) -> None:
            with lock:
                if i in finished:
                    return
                finished.add(i)
                counts[how] += 1
            if window is not None:
                window.release()

        def worker(start: int) -> None:
            try:
                for i in range(start, args.count, args.threads):
                    if window is not None and not window.acquire(timeout=args.submit_timeout):
                        raise TimeoutError(f"no free slot in the window of {args.window}")
                    msg = message(pad(f"{i}:"))
                    msg.register_delivery_callback(lambda _m, i=i: concluded(i, "delivered"))
                    msg.register_failed_callback(lambda _m, i=i: concluded(i, "failed"))
                    with lock:
                        sent.append(msg)
                    router.handle_outbound(msg)
            except Exception as e:  # noqa: BLE001 - reported below, ends the run
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(k,), daemon=True)
                   for k in range(min(args.threads, args.count))]
        stats.reset()  # count the flood only
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, started + args.submit_timeout - time.time()))
        if any(t.is_alive() for t in threads):
            die(f"flood submission not finished after {args.submit_timeout:.0f} s")
        if errors:
            die(f"flood submission failed: {errors[0]}")
        events.write(event="done", t=time.time(), started=started)
        # Stay up for proofs and LXMF's own retries until all are proved (or linger ends),
        # then until SIGTERM: the harness reads this process' CPU time before stopping it.
        wait_until(lambda: len(finished) >= args.count, args.linger, step=0.05)
        events.write(event="proved", t=time.time(), delivered=counts["delivered"],
                     failed=counts["failed"])
        while True:
            time.sleep(1)
    else:
        die(f"unknown mode {args.mode!r}")
    events.write(event="stats", t=time.time(), **stats.snapshot())
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.rns_endpoint")
    p.add_argument("role", choices=("receiver", "sender", "idle"))
    p.add_argument("--config", required=True, help="Reticulum config directory (written by us)")
    p.add_argument("--out", help="event file (JSON lines)")
    p.add_argument("--identity", help="identity file (default CONFIG/bench_identity)")
    p.add_argument("--name", default="", help="LXMF display name")
    p.add_argument("--to", help="receiver's delivery destination hash (hex)")
    p.add_argument("--mode", choices=("probe", "latency", "flood"), default="probe")
    p.add_argument("--method", choices=("opportunistic", "direct"), default="opportunistic",
                   help="LXMF delivery method")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window", type=int, default=0,
                   help="flood: most messages submitted and not yet proved (0: no bound)")
    p.add_argument("--title", default="", help="message title (the harness tags runs with it)")
    p.add_argument("--go-file", help="after the path is known, wait for this file to exist")
    p.add_argument("--go-timeout", type=float, default=60)
    p.add_argument("--path-timeout", type=float, default=30)
    # Not 1 s: a transport node answers a path request 0.4 s later, from an announce table
    # it scans once a second, and every new request for the same destination replaces the
    # pending answer (and holds back a pending rebroadcast of the announce itself). Asking
    # again every 1.0 s can phase-lock with that scan and starve the answer for good (seen
    # here: rnsd "answering path request" 30 times, nothing sent). 2 s always lets it out.
    p.add_argument("--path-interval", type=float, default=2.0,
                   help="seconds between path requests while no path is known")
    p.add_argument("--submit-timeout", type=float, default=120)
    p.add_argument("--linger", type=float, default=60, help="flood: wait this long for proofs")
    p.add_argument("--max-seconds", type=float, default=900, help="hard lifetime limit")
    args = p.parse_args()
    if args.count < 1 or args.threads < 1 or args.window < 0:
        die("--count and --threads must be >= 1, --window >= 0")
    lifetime_guard(args.max_seconds)
    events = Events(Path(args.out) if args.out else None)
    try:
        {"receiver": run_receiver, "sender": run_sender, "idle": run_idle}[args.role](args, events)
    except KeyboardInterrupt:
        os._exit(130)
    except Exception as e:  # noqa: BLE001 - one clear line instead of a traceback
        die(f"{args.role} failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
