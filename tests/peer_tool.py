"""A scriptable TAZCOM peer for tests: link to a gateway, send router bodies, leave.

Run inside a test namespace: ``python -m tests.peer_tool ADDRESS --send HEX ...``. It
makes a fresh identity, completes the real handshake (so its frames are valid
and authenticated), sends each ``--send`` body as an ``app`` message of kind
``router``, waits ``--linger`` seconds, then closes and prints what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import nacl.signing

from tazcom.common import noise
from tazcom.common.keys import DOMAIN_NOISE_STATIC
from tazcom.common.link import Link, LinkClosed, LinkVerified, MessageReceived


async def run(address: str, nick: str, bodies: list[bytes], linger: float) -> dict:
    sk = nacl.signing.SigningKey(os.urandom(32))
    static, static_pub = noise.x25519_keypair()
    link = Link(initiator=True, identity_key=bytes(sk.verify_key), static_private=static,
                static_sig=sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature,
                nickname=nick, now=time.monotonic())
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    out = {"verified": False, "received": 0, "closed": None}
    writer.write(link.data_to_send())
    deadline = time.monotonic() + 10 + linger
    sent = False
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.2)
        except TimeoutError:
            data = b""
        else:
            if not data:
                break
        for ev in link.receive_data(data, time.monotonic()) if data else []:
            if isinstance(ev, LinkVerified):
                out["verified"] = True
            elif isinstance(ev, MessageReceived):
                out["received"] += 1
            elif isinstance(ev, LinkClosed):
                out["closed"] = ev.reason
        if link.is_open and not sent:
            for body in bodies:
                link.send_app("router", body, time.monotonic())
            sent = True
            deadline = time.monotonic() + linger
        writer.write(link.data_to_send())
        if link.closed:
            break
    writer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("--nick", default="mallory")
    ap.add_argument("--send", action="append", default=[], help="router body, hex")
    ap.add_argument("--linger", type=float, default=2.0)
    args = ap.parse_args()
    result = asyncio.run(run(args.address, args.nick, [bytes.fromhex(h) for h in args.send],
                             args.linger))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
