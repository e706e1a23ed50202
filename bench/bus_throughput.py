"""Events per second through the bus broker, against raw PUSH/PULL of the same events.

Both runs send the same two-frame msgpack events from one process to another
over ipc:// sockets, as fast as the sender can; the broker keeps its real
high-water marks, so any event it drops is counted. Goal: the broker path
reaches at least 0.25 of the raw path, and delivers every event.

    python -m bench.bus_throughput [--events N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bench.report import Figure, print_report
from tazcom.common.events import PeerUpdated, decode_event, encode_event
from tazcom.common.keys import fingerprint


def sample_frames() -> list[bytes]:
    from tazcom.common.events import PeerInfo

    key = b"\x42" * 32
    peer = PeerInfo(key=key.hex(), fingerprint=fingerprint(key), nickname="benchmark",
                    addresses=("10.0.0.7:4242",), state="verified", last_seen=time.time(),
                    since=time.time(), hops=1)
    frames = encode_event(PeerUpdated(src="discovery", ts=time.time(), epoch=1, seq=1, peer=peer))
    decode_event(frames)  # it is a valid event
    return frames


def receiver(kind: str, endpoint: str, ack: str, n: int, out: mp.Queue) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if kind == "bus" else zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    if kind == "bus":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    back = ctx.socket(zmq.PUSH)
    back.connect(ack)
    got = 0
    first = 0.0
    if kind != "bus":
        back.send(b"ready")
    while got < n and sock.poll(3000):
        frames = sock.recv_multipart()
        if frames[0] == b"bus.welcome":
            back.send(b"ready")
            continue
        if frames[0] == b"probe":
            back.send(b"probe")
            continue
        if got == 0:
            first = time.perf_counter()
        got += 1
    out.put((got, time.perf_counter() - first))
    back.close(linger=1000)
    ctx.destroy(linger=0)


def run_path(kind: str, send_to: str, recv_from: str, bind: bool, n: int,
             frames: list[bytes], tmp: Path) -> tuple[int, float]:
    """Send ``n`` events as fast as one process can; count what arrives and how fast."""
    ctx = zmq.Context()
    ack_ep = f"ipc://{tmp}/ack-{kind}.sock"
    ack = ctx.socket(zmq.PULL)
    ack.bind(ack_ep)
    out: mp.Queue = mp.Queue()
    sender = ctx.socket(zmq.PUB if kind == "bus" else zmq.PUSH)
    sender.setsockopt(zmq.SNDHWM, 0)
    if bind:
        sender.bind(send_to)
    else:
        sender.connect(send_to)
    proc = mp.Process(target=receiver, args=(kind, recv_from, ack_ep, n, out))
    proc.start()
    assert ack.poll(10000), "receiver not ready"
    ack.recv()
    if kind == "bus":
        # the receiver's subscription must have reached the broker before we start
        while True:
            sender.send_multipart([b"probe", b""])
            if ack.poll(20):
                ack.recv()
                break
    for _ in range(n):
        sender.send_multipart(frames)
    got, elapsed = out.get(timeout=120)
    proc.join()
    ctx.destroy(linger=0)
    return got, elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    n = args.events
    frames = sample_frames()
    tmp = Path(tempfile.mkdtemp(prefix="tzb", dir="/tmp"))
    env = {**os.environ, "TAZCOM_HOME": str(tmp / "home"), "TAZCOM_INTERFACES": "lo",
           "TAZCOM_NICK": "bench"}
    (tmp / "home").mkdir()
    bus = subprocess.Popen([sys.executable, "-m", "tazcom.services.bus"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = tmp / "home" / "run"
        deadline = time.monotonic() + 10
        while not (run_dir / "bus-out.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        raw_got, raw_t = run_path("raw", f"ipc://{tmp}/raw.sock", f"ipc://{tmp}/raw.sock",
                                  True, n, frames, tmp)
        bus_got, bus_t = run_path("bus", f"ipc://{run_dir}/bus-in.sock",
                                  f"ipc://{run_dir}/bus-out.sock", False, n, frames, tmp)
    finally:
        bus.terminate()
        bus.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    raw_rate = raw_got / raw_t
    bus_rate = bus_got / bus_t
    print_report(f"bus throughput, {len(frames[1])}-byte events", [
        Figure("events/s through the bus broker", bus_rate, "ev/s", raw_rate,
               "raw PUSH/PULL", ">= 0.25 x raw", bus_rate >= 0.25 * raw_rate),
        Figure("events delivered (broker)", bus_got, "ev", n, "sent", "all", bus_got >= n),
    ])


if __name__ == "__main__":
    main()
