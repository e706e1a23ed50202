"""Peer exchange against a hostile neighbour (issue 14, "Bad input"): a real node with its
own key links to alice and sends her px records that are oversized, forged, for someone
else, or full of addresses where nobody answers. Each is refused or ignored with one log
line naming the peer; the link and alice's other neighbour carry on; nothing a record only
claimed shows up in alice's peer table."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import nacl.signing

from tazcom.common import codec, noise, peerexchange, rpc
from tazcom.common.keys import DOMAIN_NOISE_STATIC, DOMAIN_PX
from tazcom.common.link import Link, LinkClosed, LinkVerified
from tazcom.common.peerexchange import Record
from tests.harness import request, wait_for


def signed(sk: nacl.signing.SigningKey, rec: Record) -> bytes:
    raw = rec.pack()
    return codec.pack([raw, sk.sign(DOMAIN_PX + raw).signature])


async def hostile_neighbour(port: int, victim: bytes, done: Callable[[], bool]
                            ) -> dict[str, int]:
    """Link as mallory, send the records, keep the link up until ``done()`` (or 15 s)."""
    sk = nacl.signing.SigningKey.generate()
    me = bytes(sk.verify_key)
    static_private, static_public = noise.x25519_keypair()
    link = Link(initiator=True, identity_key=me, static_private=static_private,
                static_sig=sk.sign(DOMAIN_NOISE_STATIC + static_public).signature,
                nickname="mallory", now=time.monotonic(), expected_key=victim,
                caps=("app/1", peerexchange.CAP))
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.0.0.7", 0))
    writer.write(link.data_to_send())
    out = {"verified": 0, "closed": 0}
    other = nacl.signing.SigningKey.generate()
    nobody = [(os.urandom(32), f"127.0.0.{50 + i}:9") for i in range(12)]
    records = [
        # more entries than a record may hold
        signed(sk, Record(me, 1, (), tuple((os.urandom(32), f"127.0.0.{i % 200 + 20}:9")
                                           for i in range(peerexchange.MAX_ENTRIES + 1)))),
        # a record of someone else, signed by them, relayed by us
        signed(other, Record(bytes(other.verify_key), 2, (), nobody[:1])),
        # ours, with a bad signature
        codec.pack([Record(me, 3, (), nobody[:1]).pack(), b"\x01" * 64]),
        b"\xc1 not msgpack",
        # well formed, naming twelve nodes where nothing listens
        signed(sk, Record(me, 4, ("127.0.0.7:9",), tuple(nobody))),
    ]
    sent = False
    end = time.monotonic() + 15
    while time.monotonic() < end and not (sent and done()):
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            data = None
        now = time.monotonic()
        if data == b"":
            break
        events = link.receive_data(data, now) if data else link.handle_timer(now)
        for ev in events:
            if isinstance(ev, LinkVerified):
                out["verified"] += 1
            elif isinstance(ev, LinkClosed):
                out["closed"] += 1
        if link.is_open and not sent:
            for body in records:
                link.send_app(peerexchange.KIND, body, now)
            sent = True
        writer.write(link.data_to_send())
        await writer.drain()
    writer.close()
    return out


def test_hostile_px_records_are_refused_and_nothing_claimed_is_shown(make_node) -> None:
    private = '[discovery]\nservice_type = "_tazcomph._tcp.local."\n'
    a = make_node("px-alice", config=private).start().wait_up()
    b = make_node("px-bob", config=private).start().wait_up()
    a.wait_peer("px-bob", ("verified",))
    port = request(a, "gateway", rpc.GetGatewayInfo()).port
    outcome = asyncio.run(hostile_neighbour(
        port, bytes.fromhex(a.key), lambda: "its lists are ignored" in a.logs()["gateway.log"]))
    assert outcome == {"verified": 1, "closed": 0}, "the link itself stays up"
    log = a.logs()["gateway.log"]
    for code in ("too_many", "bad_message", "bad_signature", "bad_encoding"):
        assert f"({code}): px:" in log, f"no px {code} line in the gateway log"
    wait_for(lambda: "its lists are ignored" in a.logs()["gateway.log"], 10,
             "mallory ignored after 8 of its candidates failed")
    rows = a.peers()
    assert set(rows) == {"px-bob", "mallory"} and not rows["mallory"]["addresses"], rows
    assert rows["px-bob"]["state"] == "verified"
    assert not a.tracebacks() and not b.tracebacks()
