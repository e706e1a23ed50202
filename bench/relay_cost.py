"""The router core's cost per relayed envelope, in process: B of a line A - B - C takes
batches of 64 room envelopes (50 origins) from A, checks every signature, commits to an
in-memory store and relays to C. Printed beside one Ed25519 verification (PyNaCl) in the
same run, the floor of that work: the rest is the core's own decisions (dedupe, window,
flood limits, scores, quotas, relay plans).

    python -m bench.relay_cost [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import nacl.signing

from tazcom.common import routing
from tests.corenet import OPEN, Identity, Net, make_envelope

FRAMES = 60
PER_FRAME = 64


def one_run() -> float:
    """Microseconds of B's core per envelope."""
    net = Net(3, settings=OPEN)
    net.set_edges([(0, 1), (1, 2)])
    net.run_for(1.0)
    a, b, _c = net.nodes
    origins = [Identity(bytes([i]) * 4) for i in range(50)]
    frames, seq = [], 0
    for _ in range(FRAMES):
        entries = []
        for _ in range(PER_FRAME):
            seq += 1
            entries.append((0, *make_envelope(origins[seq % 50], seq=seq,
                                              ts=int(net.now * 1000), body=b"x" * 200)))
        frames.append([a.key, routing.encode_envs(entries)])
    start = time.perf_counter()
    for i in range(0, FRAMES, 4):
        b.run(b.core.receive(frames[i:i + 4], net.now, net.mono))
    return (time.perf_counter() - start) / (FRAMES * PER_FRAME) * 1e6


def verify_cost(n: int = 2000) -> float:
    key = nacl.signing.SigningKey(bytes(32))
    signed = key.sign(b"x" * 300)
    start = time.perf_counter()
    for _ in range(n):
        key.verify_key.verify(signed)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    core = statistics.median(one_run() for _ in range(args.runs))
    floor = statistics.median(verify_cost() for _ in range(args.runs))
    print(f"router core per relayed envelope: {core:.1f} us; one Ed25519 verify: {floor:.1f} "
          f"us; ratio {core / floor:.2f} (report)")


if __name__ == "__main__":
    main()
