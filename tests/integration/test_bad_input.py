"""Garbage on the bus, on request sockets and as mDNS records: logged, dropped, nobody falls."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import time

import nacl.signing
import zmq
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from tazcom.common import announce, codec, rpc
from tazcom.common.events import (
    BusPing,
    LinkDown,
    MeshPeer,
    PeerLost,
    ServiceHeartbeat,
    TableVersion,
    encode_event,
)
from tests.harness import SERVICES, Node, request, wait_for

TYPE = "_tazcom._tcp.local."


def _pids(node: Node) -> dict[str, int | None]:
    return {s: node.pid(s) for s in SERVICES}


def _bus_publisher(ctx: zmq.Context, node: Node) -> zmq.Socket:
    """A PUB on the node's bus, once the broker relays what it sends (a ping came back)."""
    run = node.home / "run"
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 2000)
    pub.connect(f"ipc://{run}/bus-in.sock")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"bus.welcome")
    sub.connect(f"ipc://{run}/bus-out.sock")
    assert sub.poll(5000), "the broker greets a new subscriber"
    assert sub.recv_multipart() == [b"bus.welcome"]
    sub.setsockopt(zmq.SUBSCRIBE, b"bus.ping")
    ping = encode_event(BusPing(src="test", ts=1.0, nonce=b"n" * 16))
    wait_for(lambda: pub.send_multipart(ping) or sub.poll(50), 10, "the broker to relay")
    return pub


def test_garbage_on_the_bus_and_request_sockets(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    before = _pids(a)
    run = a.home / "run"
    rng = random.Random(1)
    ctx = zmq.Context()
    try:
        pub = _bus_publisher(ctx, a)
        hb = encode_event(ServiceHeartbeat(src="x", ts=1.0, service="gateway", pid=1,
                                           state="up", uptime=1))
        junk = [
            [b"service.heartbeat"],
            [b"service.heartbeat", b"\xc1\xc1\xc1"],
            [b"service.heartbeat", codec.pack({"v": 1, "service": 7})],
            [b"service.heartbeat", codec.pack({"v": 99})],
            [b"service.heartbeat", hb[1] + b"trailing"],
            [b"service.heartbeat", b"\xdd\xff\xff\xff\xff"],
            [b"peer.discovered", codec.pack([1, 2, 3])],
            [b"gateway.listening", codec.pack({"v": 1, "addresses": ["nonsense"], "port": 0})],
            [b"no.such.topic", b"x"],
            [b"\xff\xfe\xfd", b"x"],
            [b"service.", b"x", b"y", b"z"],
            [b"service.heartbeat", os.urandom(600_000)],  # over ZMQ_MAXMSGSIZE
        ]
        junk += [[b"service.heartbeat", rng.randbytes(rng.randint(0, 300))] for _ in range(200)]
        for frames in junk:
            pub.send_multipart(frames)
        for service in SERVICES:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(f"ipc://{run}/{service}.sock")
            for frames in ([b"\xc1"], [b"a", b"b"], [codec.pack({"v": 1, "id": 1, "op": "x"})],
                           [codec.pack({"v": 1, "id": 2, "op": "identity.sign",
                                        "domain": b"evil", "data": b"x"})],
                           [codec.pack({"v": 1, "id": 3, "op": "ping", "pad": "x" * 10})]):
                dealer.send_multipart(frames)
            assert dealer.poll(5000), f"{service} still answers after junk"
            replies = []
            while dealer.poll(500):
                replies.append(codec.unpack(dealer.recv(), 1 << 20))
            by_id = {r["id"]: r for r in replies}
            assert by_id[3]["ok"] is True and by_id[3]["service"] == service
            assert by_id[1]["ok"] is False and by_id[1]["error"] == "unknown_op"
            assert by_id[2]["ok"] is False  # identity refuses the domain; others the op
            dealer.close()
    finally:
        ctx.destroy(linger=0)
    wait_for(lambda: a.all_up(), 10, "every service still up")
    assert _pids(a) == before, "no service restarted"
    logs = "".join(a.logs().values())
    assert "rejected input" in logs
    assert "Traceback" not in logs


def _junk_infos(victim_txt: dict[bytes, bytes]) -> list[ServiceInfo]:
    def info(name: str | None, over: dict[bytes, bytes] | None = None,
             props: dict[bytes, bytes] | None = None, port: int = 4242) -> ServiceInfo:
        sk = nacl.signing.SigningKey(os.urandom(32))
        key = bytes(sk.verify_key)
        txt = announce.unsigned_txt(key=key, port=4242, nickname="mallory", now=time.time())
        txt[b"s"] = sk.sign(announce.signed_bytes(txt)).signature.hex().encode()
        txt.update(over or {})
        name = name or announce.instance_label(key)
        return ServiceInfo(TYPE, f"{name}.{TYPE}", addresses=[socket.inet_aton("127.0.0.9")],
                           port=port, properties=props if props is not None else txt,
                           server=f"{name}.local.")

    return [
        info("junk-no-txt", props={b"hello": b"world"}),
        info(None, {b"k": b"ab" * 20}),                 # wrong key length
        info(None, {b"s": b"00" * 64}),                 # bad signature
        info(None, {b"n": b"\xff\xfe"}),                # nickname not UTF-8
        info("tz-" + "0" * 16),                         # name does not match the key
        info("tz-replay", props=dict(victim_txt), port=int(victim_txt[b"p"])),  # our own key
    ]


def test_junk_mdns_records_are_ignored(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    before = _pids(a)
    events = a.popen(["tazcom", "events", "--json", "--topic", "discovery.rejected",
                      "--timeout", "30", "--quiet"], stdout=subprocess.PIPE)
    expected = {"bad_txt", "bad_length", "bad_signature", "bad_name", "own_key"}
    seen: set[str] = set()

    def read_rejections() -> None:
        assert events.stdout is not None
        while not expected <= seen:
            line = events.stdout.readline()
            if not line:
                return
            seen.add(json.loads(line)["reason"])

    async def scenario() -> None:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            victim = await zc.async_get_service_info(
                TYPE, f"{announce.instance_label(bytes.fromhex(a.key))}.{TYPE}", 3000)
            assert victim is not None, "the test can resolve alice's own record"
            for info in _junk_infos(dict(victim.properties)):
                await zc.async_register_service(info, cooperating_responders=True,
                                                strict=False)
            # raw garbage datagrams to the mDNS group, on loopback only
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                            socket.inet_aton("127.0.0.1"))
            rng = random.Random(3)
            for _ in range(50):
                sock.sendto(rng.randbytes(rng.randint(1, 1500)), ("224.0.0.251", 5353))
            sock.close()
            # the records stay announced until alice has rejected each of them
            await asyncio.get_running_loop().run_in_executor(None, read_rejections)
            await zc.async_unregister_all_services()
        finally:
            await zc.async_close()

    try:
        asyncio.run(scenario())
    finally:
        events.kill()
        events.wait()
    assert expected <= seen, seen
    assert "mallory" not in a.peers()
    assert _pids(a) == before
    wait_for(lambda: a.all_up(), 10, "every service still up")
    logs = a.logs()["discovery.log"]
    assert "Traceback" not in logs
    # logged once per (record, reason), not once per packet
    assert logs.count("'tz-replay._tazcom._tcp.local.'") == 1


def test_well_formed_lies_on_the_bus_do_not_corrupt_mirrors(pair: tuple[Node, Node]) -> None:
    """Updates of mirrored tables from the wrong source, a stale epoch, a future epoch or
    far ahead, and heartbeats that lie: refused or resynced, never applied."""
    a, _ = pair
    a.wait_peer("bob", ("verified",), timeout=10)
    links = request(a, "gateway", rpc.GetLinks())
    peers = request(a, "discovery", rpc.GetPeers())
    bob = next(p for p in peers.peers if p.nickname == "bob")
    [link] = [lk for lk in links.links if lk.key == bob.key and lk.state == "open"]
    fake = "ee" * 32
    now = time.time()

    def down(src: str, epoch: int, seq: int) -> list[bytes]:
        return encode_event(LinkDown(src=src, ts=now, epoch=epoch, seq=seq, link=link.link,
                                     address=link.address, direction=link.direction,
                                     key=bob.key, reason="timeout"))

    lies = [
        down("mallory", links.epoch, links.seq + 1),      # not the gateway
        down("gateway", links.epoch - 1, links.seq + 1),  # a stale epoch
        down("gateway", links.epoch, links.seq + 10**6),  # far ahead: a gap
        encode_event(PeerLost(src="discovery", ts=now, epoch=peers.epoch + 10**12,
                              seq=1, peer=bob)),         # a future epoch
        encode_event(MeshPeer(src="router", ts=now, epoch=2**62, seq=1, key=fake,
                              nickname="ghost", hops=3, enc_key=fake)),
        encode_event(ServiceHeartbeat(src="gateway", ts=now, service="gateway", pid=1,
                                      state="up", uptime=1, tables=(TableVersion(
                                          name="links", epoch=1, seq=5),))),
    ]
    ctx = zmq.Context()
    try:
        pub = _bus_publisher(ctx, a)
        for frames in lies:
            pub.send_multipart(frames)
    finally:
        ctx.destroy(linger=2000)
    logs = ""

    def refused() -> bool:
        nonlocal logs
        logs = "".join(a.logs().values())
        return "not_owner" in logs and "resynced" in logs

    wait_for(refused, 10, "the lies to be refused and the mirrors resynced")
    # every mirror still holds the owner's truth
    assert a.peers()["bob"]["state"] == "verified"
    assert "ghost" not in a.peers()
    assert request(a, "router", rpc.GetRouterStats()).links == 1
    assert request(a, "gateway", rpc.GetLinks()).links
    assert "Traceback" not in logs
