"""Link handshakes per second and handshake latency, against the raw crypto they need.

* in memory: a full handshake (Noise XX, identity proofs, HELLOs) between two
  Links in one process, against the X25519 and Ed25519 operations it needs,
  timed one by one in the same run (the CPU floor);
* over TCP on loopback: connect + handshake + HELLOs until both sides are
  verified, client and server in separate processes (p50/p99 latency), and
  handshakes per second with 8 concurrent clients;
* the identity service's signature of a fresh Noise static key (one per
  gateway start), as a request to a running identity service.

    python -m bench.handshake
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nacl.bindings
import nacl.signing
import zmq

from bench.linkpeer import Identity, LinkProtocol
from bench.report import Figure, print_report
from tazcom.common import codec, noise, rpc
from tazcom.common.keys import DOMAIN_NOISE_STATIC

X25519_PER_HANDSHAKE = 2 * 4  # per side: keygen + 3 DH (ee, es/se, and the other)
VERIFY_PER_HANDSHAKE = 2  # each side verifies the other's identity proof


def per_op(fn, n: int = 2000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def raw_costs() -> dict[str, float]:
    priv, pub = noise.x25519_keypair()
    _, other = noise.x25519_keypair()
    sk = nacl.signing.SigningKey(os.urandom(32))
    vk = sk.verify_key
    msg = DOMAIN_NOISE_STATIC + pub
    sig = sk.sign(msg).signature
    return {
        "x25519": per_op(lambda: nacl.bindings.crypto_scalarmult(priv, other)),
        "sign": per_op(lambda: sk.sign(msg)),
        "verify": per_op(lambda: vk.verify(msg, sig)),
    }


def memory_handshake(a: Identity, b: Identity) -> None:
    la, lb = a.link(True), b.link(False)
    for _ in range(4):
        now = time.monotonic()
        lb.receive_data(la.data_to_send(), now)
        la.receive_data(lb.data_to_send(), now)
    assert la.is_open and lb.is_open


def server(port_q: mp.Queue) -> None:
    async def main() -> None:
        ident = Identity("server")
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: LinkProtocol(ident.link(False)), "127.0.0.1", 0)
        port_q.put(srv.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


async def tcp_handshakes(port: int, n: int, concurrency: int) -> tuple[list[float], float]:
    loop = asyncio.get_running_loop()
    ident = Identity("client")
    latencies: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        transport, proto = await loop.create_connection(
            lambda: LinkProtocol(ident.link(True)), "127.0.0.1", port)
        await proto.verified
        latencies.append(time.perf_counter() - t0)
        transport.close()

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - t0)


def identity_sign_latency() -> float:
    tmp = Path(tempfile.mkdtemp(prefix="tzb", dir="/tmp"))
    env = {**os.environ, "TAZCOM_HOME": str(tmp), "TAZCOM_INTERFACES": "lo"}
    proc = subprocess.Popen([sys.executable, "-m", "tazcom.services.identity"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    try:
        while not (tmp / "run" / "identity.sock").exists():
            time.sleep(0.02)
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"ipc://{tmp}/run/identity.sock")
        _, pub = noise.x25519_keypair()
        samples = []
        for i in range(200):
            t0 = time.perf_counter()
            sock.send(rpc.encode_request(rpc.Sign(domain=DOMAIN_NOISE_STATIC, data=pub), i))
            assert codec.unpack(sock.recv(), 1 << 16)["ok"]
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    finally:
        ctx.destroy(linger=0)
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    raw = raw_costs()
    floor = X25519_PER_HANDSHAKE * raw["x25519"] + VERIFY_PER_HANDSHAKE * raw["verify"]
    a, b = Identity("a"), Identity("b")
    mem = per_op(lambda: memory_handshake(a, b), 300)
    q: mp.Queue = mp.Queue()
    srv = mp.Process(target=server, args=(q,), daemon=True)
    srv.start()
    port = q.get(timeout=10)
    lat, _ = asyncio.run(tcp_handshakes(port, 300, 1))
    _, rate = asyncio.run(tcp_handshakes(port, 800, 8))
    srv.terminate()
    sign = identity_sign_latency()
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    print_report("link handshakes (Noise XX + identity proofs + HELLO)", [
        Figure("handshake CPU, both sides, in memory", mem * 1e3, "ms", floor * 1e3,
               f"{X25519_PER_HANDSHAKE} X25519 + {VERIFY_PER_HANDSHAKE} Ed25519 verify",
               "report"),
        Figure("handshake latency over TCP, p50", p50 * 1e3, "ms", floor * 1e3,
               "raw crypto floor", "report"),
        Figure("handshake latency over TCP, p99", p99 * 1e3, "ms", floor * 1e3,
               "raw crypto floor", "report"),
        Figure("handshakes/s over TCP, 8 concurrent clients", rate, "hs/s", 1 / floor,
               "1 / raw crypto floor", "report"),
        Figure("identity signature of a Noise static key (per gateway start)", sign * 1e3,
               "ms", raw["sign"] * 1e3, "Ed25519 sign in-process", "report"),
    ])
    print(f"raw: X25519 {raw['x25519'] * 1e6:.1f} us, Ed25519 sign {raw['sign'] * 1e6:.1f} us,"
          f" verify {raw['verify'] * 1e6:.1f} us")


if __name__ == "__main__":
    main()
