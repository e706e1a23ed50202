"""Pipelined signatures per second through the identity service, against in-process PyNaCl.

Clients are separate processes, each keeping WINDOW ``identity.sign``
requests in flight on one DEALER socket; the service answers from one asyncio
loop. The limit is PyNaCl signing the same domain-prefixed 200-byte payloads
in one process on one core, in the same run. Goal: at least 0.3 of it.

    python -m bench.identity_sign [--clients 3] [--signatures 20000]
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

import nacl.signing
import zmq

from bench.report import Figure, print_report
from tazcom.common import codec, rpc
from tazcom.common.keys import DOMAIN_BENCH

PAYLOAD = bytes(range(200))
WINDOW = 64


def nacl_rate(seconds: float = 1.5) -> float:
    sk = nacl.signing.SigningKey(os.urandom(32))
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            sk.sign(DOMAIN_BENCH + PAYLOAD)
        n += 200
    return n / (time.perf_counter() - t0)


def client(endpoint: str, n: int, start: mp.Event, out: mp.Queue) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    bodies = [rpc.encode_request(rpc.Sign(domain=DOMAIN_BENCH, data=PAYLOAD), i)
              for i in range(n)]
    start.wait()
    t0 = time.perf_counter()
    sent = done = 0
    while done < n:
        while sent < n and sent - done < WINDOW:
            sock.send(bodies[sent])
            sent += 1
        reply = codec.unpack(sock.recv(), 1 << 16)
        assert reply["ok"], reply
        done += 1
    out.put((n, time.perf_counter() - t0))
    ctx.destroy(linger=0)


def measure(endpoint: str, clients: int, per_client: int) -> float:
    start = mp.Event()
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=client, args=(endpoint, per_client, start, out))
             for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every client connect and pre-encode before the clock starts
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in results) / max(t for _, t in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--signatures", type=int, default=20000, help="per client")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tzb", dir="/tmp"))
    home = tmp / "home"
    home.mkdir()
    env = {**os.environ, "TAZCOM_HOME": str(home), "TAZCOM_INTERFACES": "lo",
           "TAZCOM_NICK": "bench"}
    proc = subprocess.Popen([sys.executable, "-m", "tazcom.services.identity"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (home / "run" / "identity.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        endpoint = f"ipc://{home}/run/identity.sock"
        single = measure(endpoint, 1, args.signatures)
        many = measure(endpoint, args.clients, args.signatures)
        limit = nacl_rate()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print_report("identity service signing (200-byte payloads)", [
        Figure("signatures/s, 1 pipelining client", single, "sig/s", limit,
               "PyNaCl in-process, 1 core", ">= 0.3 x limit", single >= 0.3 * limit),
        Figure(f"signatures/s, {args.clients} pipelining clients", many, "sig/s", limit,
               "PyNaCl in-process, 1 core", ">= 0.3 x limit", many >= 0.3 * limit),
    ])


if __name__ == "__main__":
    main()
