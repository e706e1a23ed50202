"""A hostile neighbour for tests and benchmarks: it links to a gateway and floods room
messages, signed by itself and by ``--sybils`` other identities, far beyond what people
write. It reconnects whenever the node closes or refuses its link (a ban), until
``--seconds`` have passed. Run inside a test namespace (or on loopback only)::

    python -m tests.flooder ADDRESS --rate 300 --seconds 10 --sybils 3

It prints one JSON object: what it sent, how often it was closed and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections import Counter

import nacl.signing

from tazcom.common import envelope, noise, routing
from tazcom.common.keys import DOMAIN_ENVELOPE, DOMAIN_NOISE_STATIC
from tazcom.common.link import Link, LinkClosed

PER_FRAME = 32


class Flooder:
    def __init__(self, sybils: int) -> None:
        self.me = nacl.signing.SigningKey(os.urandom(32))
        self.origins = [self.me] + [nacl.signing.SigningKey(os.urandom(32))
                                    for _ in range(sybils)]
        self.seq = 0
        self.sent = 0
        self.frames = 0
        self.closes: Counter[str] = Counter()
        self.links = 0
        self.sent_on_link = 0

    def envelopes(self, n: int) -> bytes:
        entries = []
        for _ in range(n):
            self.seq += 1
            origin = self.origins[self.seq % len(self.origins)]
            signed = envelope.signed_bytes(
                kind=envelope.KIND_ROOM, origin=bytes(origin.verify_key), seq=self.seq,
                ts=int(time.time() * 1000), to=None, body=f"flood {self.seq}".encode())
            entries.append((0, signed, origin.sign(DOMAIN_ENVELOPE + signed).signature))
        return routing.encode_envs(entries)

    async def one_link(self, host: str, port: int, rate: float, until: float) -> None:
        static, static_pub = noise.x25519_keypair()
        link = Link(initiator=True, identity_key=bytes(self.me.verify_key),
                    static_private=static,
                    static_sig=self.me.sign(DOMAIN_NOISE_STATIC + static_pub).signature,
                    nickname="flooder", now=time.monotonic())
        reader, writer = await asyncio.open_connection(host, port)
        self.links += 1
        writer.write(link.data_to_send())
        started = time.monotonic()
        try:
            while time.monotonic() < until and not link.closed:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.01)
                except TimeoutError:
                    data = b""
                else:
                    if not data:
                        self.closes["connection_lost"] += 1
                        return
                for ev in link.receive_data(data, time.monotonic()) if data else []:
                    if isinstance(ev, LinkClosed):
                        self.closes[ev.reason] += 1
                if link.is_open:
                    due = int((time.monotonic() - started) * rate) - self.sent_on_link
                    while due > 0:
                        n = min(PER_FRAME, due)
                        link.send_app(routing.KIND, self.envelopes(n), time.monotonic())
                        self.sent += n
                        self.sent_on_link += n
                        self.frames += 1
                        due -= n
                writer.write(link.data_to_send())
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def run(self, address: str, rate: float, seconds: float) -> dict:
        host, port = address.rsplit(":", 1)
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.sent_on_link = 0
            try:
                await self.one_link(host, int(port), rate, until)
            except OSError as e:
                self.closes[f"os:{e.errno}"] += 1
            await asyncio.sleep(0.2)  # noqa: sleep-ok - an attacker's reconnect pace, not a wait
        return {"key": bytes(self.me.verify_key).hex(),
                "origins": [bytes(o.verify_key).hex() for o in self.origins],
                "sent": self.sent, "frames": self.frames, "links": self.links,
                "closes": dict(self.closes)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("--rate", type=float, default=300.0, help="envelopes per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sybils", type=int, default=0, help="other origins it signs for")
    args = ap.parse_args()
    result = asyncio.run(Flooder(args.sybils).run(args.address, args.rate, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
