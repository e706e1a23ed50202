"""One Reticulum + LXMF endpoint for the side-by-side benchmark (see bench/rns_side.py).

Run only inside a test namespace, with a config directory written by rns_side.py
(TCP interfaces on 10.213.x.y only, never AutoInterface, never a default config):

    ip netns exec NS python -m bench.rns_endpoint receiver --config DIR --out EV.jsonl
    ip netns exec NS python -m bench.rns_endpoint sender --config DIR --out EV.jsonl \\
        --to HASH --mode probe|latency|flood [--count N] [--threads T] [--peer-file F]
    ip netns exec NS python -m bench.rns_endpoint idle --config RNSD_DIR [--out EV.jsonl]

Events are JSON lines, flushed one by one. Every wait has a deadline; on failure the
program writes one line to stderr and exits non-zero.

Delivery method: LXMF OPPORTUNISTIC. In lxmf 1.2.1 a message to a SINGLE destination
goes out as one encrypted RNS packet (proved by the receiver) when its packed content
fits LXMessage.ENCRYPTED_PACKET_MAX_CONTENT (287 bytes); a 200-character message does,
so no link set-up (DIRECT) is needed and each message costs exactly one packet + one
proof, the same shape as a chat message on TAZCOM's side. LXMessage.pack() would fall
back to DIRECT by itself if the content ever grew too big.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
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


class PeerFile:
    """Reads the receiver's event file incrementally; indexes of messages seen so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        self.seen: set[int] = set()

    def poll(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return
        data = self.partial + chunk
        lines = data.split("\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "msg":
                head = str(ev.get("content", "")).split(":", 1)[0]
                if head.isdigit():
                    self.seen.add(int(head))


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


def run_receiver(args: argparse.Namespace, events: Events) -> None:
    router, _identity, delivery = start_stack(args, shared=False)

    def delivered(message: Any) -> None:
        events.write(event="msg", t=time.time(), title=message.title_as_string(),
                     content=message.content_as_string())

    router.register_delivery_callback(delivered)
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
    router, _identity, source = start_stack(args, shared=False)

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
    events.write(event="path", t=time.time())

    def message(content: str) -> Any:
        return LXMF.LXMessage(destination, source, content, title=args.title,
                              desired_method=LXMF.LXMessage.OPPORTUNISTIC)

    def pad(head: str) -> str:
        return head.ljust(MSG_LEN, "x")[:MSG_LEN] if len(head) < MSG_LEN else head

    if args.go_file:
        go = Path(args.go_file)
        if not wait_until(go.exists, args.go_timeout, step=0.002):
            die(f"no go signal ({go}) after {args.go_timeout:.0f} s")

    if args.mode == "probe":
        msg = message(pad(f"0:{time.time()!r}:"))
        done = threading.Event()
        msg.register_delivery_callback(lambda _m: done.set())
        router.handle_outbound(msg)
        sent_states = (LXMF.LXMessage.SENT, LXMF.LXMessage.DELIVERED)
        if not wait_until(lambda: msg.state in sent_states, 10):
            die(f"probe message not sent after 10 s (state {msg.state})")
        events.write(event="sent", i=0, t=time.time())
        if done.wait(10):
            events.write(event="delivered", i=0, t=time.time())

    elif args.mode == "latency":
        peer = PeerFile(Path(args.peer_file)) if args.peer_file else None
        lost = 0
        for i in range(args.count):
            proof = threading.Event()
            send_time = time.time()
            msg = message(pad(f"{i}:{send_time!r}:"))
            msg.register_delivery_callback(lambda _m, ev=proof: ev.set())
            router.handle_outbound(msg)
            events.write(event="sent", i=i, t=send_time)

            def arrived(i: int = i, proof: threading.Event = proof) -> bool:
                if proof.is_set():
                    return True
                if peer is not None:
                    peer.poll()
                    return i in peer.seen
                return False

            if not wait_until(arrived, 10, step=0.0005):
                lost += 1
                events.write(event="timeout", i=i, t=time.time())
        events.write(event="done", t=time.time(), lost=lost)

    elif args.mode == "flood":
        delivered = 0
        lock = threading.Lock()
        errors: list[str] = []

        def on_delivered(_m: Any) -> None:
            nonlocal delivered
            with lock:
                delivered += 1

        def worker(start: int) -> None:
            try:
                for i in range(start, args.count, args.threads):
                    msg = message(pad(f"{i}:"))
                    msg.register_delivery_callback(on_delivered)
                    router.handle_outbound(msg)
            except Exception as e:  # noqa: BLE001 - reported below, ends the run
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(k,), daemon=True)
                   for k in range(min(args.threads, args.count))]
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
        wait_until(lambda: delivered >= args.count, args.linger, step=0.05)
        events.write(event="proved", t=time.time(), delivered=delivered)
        while True:
            time.sleep(1)
    else:
        die(f"unknown mode {args.mode!r}")
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
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--title", default="", help="message title (the harness tags runs with it)")
    p.add_argument("--peer-file", help="receiver's event file, polled for arrivals (latency)")
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
    if args.count < 1 or args.threads < 1:
        die("--count and --threads must be >= 1")
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
