"""Chat across a real mesh in network namespaces: a line A - B - C, and a star.

A and C share no bridge (and B does not forward IP), so everything between
them goes through B's router: room messages, sealed DMs, receipts, profiles.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.asyncio

from tazcom.common import envelope, routing, rpc
from tazcom.common.events import event_as_json
from tests.harness import BULK, BusTap, Node, history, post, request, short_tmp, wait_for
from tests.netns import Lan, lan, why_unavailable

REASON = why_unavailable()
SHORT_CERTS = "cert_validity_s = 30\n"
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]




def status_of(node: Node, conv: str, msg_id: bytes) -> str:
    return next((m.status for m in history(node, conv) if m.id == msg_id), "")


class Mesh:
    def __init__(self, net: Lan, root: Path) -> None:
        self.net = net
        self.root = root
        self.nodes: dict[str, Node] = {}

    def node(self, host: str) -> Node:
        if host not in self.nodes:
            # a stream of 500 posts from one node: the per-origin limits out of the way; and
            # certificates of 30 s, so the routers renew them (a fresh key each 15 s) all
            # through these tests
            self.nodes[host] = Node(self.root / host, f"node-{host}", netns=self.net.ns(host),
                                    interfaces=",".join(self.net.interfaces[host]),
                                    config=BULK + SHORT_CERTS)
        return self.nodes[host]

    def stop(self) -> list[str]:
        problems = []
        for n in self.nodes.values():
            n.stop()
            problems += n.tracebacks()
        return problems


def _mesh(links: dict[str, list[int]]) -> Iterator[Mesh]:
    with lan(links) as net:
        mesh = Mesh(net, short_tmp())
        try:
            yield mesh
        finally:
            problems = mesh.stop()
            assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def line() -> Iterator[Mesh]:
    gen = _mesh({"a": [0], "b": [0, 1], "c": [1]})
    mesh = next(gen)
    try:
        for host in ("a", "b", "c"):
            mesh.node(host).start()
        for host in ("a", "b", "c"):
            mesh.node(host).wait_up(30)
        a, _b, c = (mesh.nodes[h] for h in "abc")
        a.wait_peer("node-b", ("verified",), timeout=20)
        c.wait_peer("node-b", ("verified",), timeout=20)
        # A and C know each other only through B
        wait_for(lambda: (p := a.peers().get("node-c")) and p["state"] == "mesh"
                 and p["hops"] == 2, 20, "a to see c over the mesh, 2 hops")
        wait_for(lambda: (p := c.peers().get("node-a")) and p["state"] == "mesh", 20,
                 "c to see a over the mesh")
        yield mesh
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def test_room_message_from_a_is_shown_once_at_c(line: Mesh) -> None:
    a, c = line.nodes["a"], line.nodes["c"]
    tap = BusTap(c, "chat.message")
    try:
        result = post(a, "hello everyone, from the far end")
        assert result.status in ("queued", "sent")
        msg = tap.wait("chat.message", lambda e: e.id == result.message_id.hex(), timeout=10)
        assert msg.text == "hello everyone, from the far end" and msg.hops == 2
        assert msg.origin == a.key and msg.kind == "room"
        time.sleep(1)  # noqa: sleep-ok - give any duplicate the chance to show up
        assert len([e for e in tap.of("chat.message")
                    if e.id == result.message_id.hex()]) == 1
    finally:
        tap.close()
    rows = [m for m in history(c) if m.id == result.message_id]
    assert len(rows) == 1 and rows[0].text == "hello everyone, from the far end"


def test_direct_message_is_sealed_at_the_relay(line: Mesh) -> None:
    a, b, c = (line.nodes[h] for h in "abc")
    secret = f"the key is under the mat {os.urandom(6).hex()}"
    btap = BusTap(b, "")
    try:
        result = post(a, secret, to=c.key)
        wait_for(lambda: any(m.text == secret for m in history(c, a.key)), 15,
                 "the DM at c")
        wait_for(lambda: status_of(a, c.key, result.message_id) == "delivered", 15,
                 "a's DM marked delivered (c's receipt came back)")
    finally:
        btap.close()
    seen_by_b = json.dumps([event_as_json(e) for e in btap.events], default=str)
    assert secret not in seen_by_b
    for path in b.home.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert secret.encode() not in path.read_bytes(), f"{path} holds the DM text"
    assert [m.text for m in history(c, a.key)].count(secret) == 1


def test_message_to_an_offline_peer_waits_and_arrives_once(line: Mesh) -> None:
    a, _b, c = (line.nodes[h] for h in "abc")
    c.stop()
    wait_for(lambda: (p := a.peers().get("node-c")) and p["state"] == "offline", 20,
             "a to see c gone")
    text = f"while you were away {os.urandom(4).hex()}"
    result = post(a, text, to=c.key)
    wait_for(lambda: status_of(a, c.key, result.message_id) == "relayed", 15,
             "b to take custody")
    c.start().wait_up(30)
    wait_for(lambda: status_of(a, c.key, result.message_id) == "delivered", 30,
             "delivery once c is back")
    assert [m.text for m in history(c, a.key)].count(text) == 1
    c.wait_peer("node-b", ("verified",), timeout=20)


async def _stream(a: Node, n: int, on_progress) -> dict[bytes, str]:
    """Post ``n`` room messages, 8 in flight, retrying each on timeout with its client_id."""
    from tazcom.services.busclient import RpcClient
    from tazcom.services.runtime import load_from_env

    ctx = zmq.asyncio.Context()
    client = RpcClient(ctx, load_from_env(a.env), "router")
    accepted: dict[bytes, str] = {}
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        text = f"stream message {i:04d}"
        req = rpc.Post(client_id=i.to_bytes(8, "big") + os.urandom(8), text=text)
        async with sem:
            for _ in range(30):
                try:
                    reply = await client.call(req, timeout=2.0, retries=0)
                except Exception:  # noqa: BLE001 - a killed router: try again, same client_id
                    client._reset()
                    continue
                accepted[reply.message_id] = text
                on_progress(len(accepted))
                return

    await asyncio.gather(*(one(i) for i in range(n)))
    client.close()
    ctx.destroy(linger=0)
    return accepted


def test_kill_9_of_router_identity_and_gateway_during_a_stream(line: Mesh) -> None:
    a, b, c = (line.nodes[h] for h in "abc")
    c.wait_peer("node-b", ("verified",), timeout=20)
    victims = [(100, b, "router"), (200, a, "identity"), (300, b, "gateway"), (400, a, "router")]
    killed: list[str] = []

    def on_progress(count: int) -> None:
        while victims and count >= victims[0][0]:
            _, node, service = victims.pop(0)
            pid = node.pid(service)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{node.nick}:{service}")

    accepted = asyncio.run(_stream(a, 500, on_progress))
    assert len(killed) == 4, killed
    assert len(accepted) == 500, "every post was eventually accepted"

    def arrived() -> int:
        return len({m.id for m in history(c)} & set(accepted))

    wait_for(lambda: arrived() == len(accepted), 120, "every accepted message at c",
             interval=1.0)
    rows = [m for m in history(c) if m.id in accepted]
    assert len(rows) == len(accepted), "none twice"
    assert sorted(m.text for m in rows) == sorted(accepted.values())


def test_forged_room_message_is_dropped_everywhere(line: Mesh) -> None:
    a, b, c = (line.nodes[h] for h in "abc")
    b_port = request(b, "gateway", rpc.GetGatewayInfo()).port
    b_address = f"{line.net.addresses['b'][0]}:{b_port}"
    text = f"forged in alice's name {os.urandom(4).hex()}"
    signed = envelope.signed_bytes(kind=envelope.KIND_ROOM, origin=bytes.fromhex(a.key),
                                   seq=999_999, ts=int(time.time() * 1000), to=None,
                                   body=text.encode())
    forged_sig = os.urandom(64)  # valid framing, wrong signature
    body = routing.encode_envs([(0, signed, forged_sig)])
    tap = BusTap(b, "router.dropped")
    try:
        proc = a.run(["python", "-m", "tests.peer_tool", b_address, "--nick", "mallory",
                      "--send", body.hex(), "--linger", "2"])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["verified"], out
        dropped = tap.wait("router.dropped", lambda e: e.reason == "bad_signature")
        assert "origin" in dropped.source or "peer" in dropped.source
    finally:
        tap.close()
    msg_id = envelope.message_id(signed)
    for node in (a, b, c):
        assert all(m.id != msg_id and m.text != text for m in history(node))


@pytest.fixture
def star() -> Iterator[Mesh]:
    leaves = [f"l{i}" for i in range(10)]
    links = {"hub": list(range(10)), **{leaf: [i] for i, leaf in enumerate(leaves)}}
    yield from _mesh(links)


def test_restarted_discovery_knows_the_mesh_again(line: Mesh) -> None:
    # mesh.peer events are sent on changes only: a restarted discovery missed them all
    # and must take the router's mesh as it is (router.mesh), or C stays "offline" at A
    a = line.nodes["a"]
    a.ctl("restart", "tazcom:discovery")
    a.wait_up(30)
    wait_for(lambda: (p := a.peers().get("node-c")) and p["state"] == "mesh"
             and p["hops"] == 2, 10, "a to see c over the mesh again, 2 hops")
    assert a.peers()["node-b"]["state"] == "verified"


def test_star_every_room_message_reaches_every_node(star: Mesh) -> None:
    hosts = list(star.net.links)
    for host in hosts:
        star.node(host).start()
    for host in hosts:
        star.node(host).wait_up(60)
    hub = star.nodes["hub"]
    for host in hosts[1:]:
        star.nodes[host].wait_peer("node-hub", ("verified",), timeout=40)
    sent: dict[bytes, str] = {}
    for host in hosts:
        text = f"hello from {host}"
        sent[post(star.nodes[host], text).message_id] = text
    for host in hosts:
        node = star.nodes[host]
        wait_for(lambda n=node: set(sent) <= {m.id for m in history(n)}, 60,
                 f"every room message at {host}", interval=0.5)
        rows = [m for m in history(node) if m.id in sent]
        assert len(rows) == len(sent), f"{host} has a duplicate"
    assert hub.peers()["node-l0"]["state"] == "verified"


def _keys(node: Node) -> rpc.SigningKeys:
    return request(node, "router", rpc.GetSigningKeys())


def test_identity_away_during_a_stream_and_the_router_renews_when_it_is_back(line: Mesh
                                                                              ) -> None:
    """Identity is off the message path: with it stopped for longer than half a certificate,
    every post is still signed, delivered once, and the certificate is renewed (a fresh
    key) once identity is back."""
    a, c = line.nodes["a"], line.nodes["c"]
    # stop identity just after a renewal: the key in use has its whole 30 s ahead
    before = _keys(a)
    wait_for(lambda: _keys(a).key != before.key, 30, "a renewal")
    a.ctl("stop", "tazcom:identity")
    first = _keys(a)
    accepted: dict[bytes, str] = {}
    try:
        t0 = time.monotonic()
        i = 0
        # past the point (half of 30 s) where the router asks for a new certificate
        while time.monotonic() - t0 < 17:
            text = f"identity away {i}"
            accepted[post(a, text, c.key).message_id] = text
            i += 1
            time.sleep(0.1)  # noqa: sleep-ok - the pace of a person typing, not a wait
        assert _keys(a).key == first.key, "nobody certified a new key meanwhile"
    finally:
        a.ctl("start", "tazcom:identity")
    renewed = wait_for(lambda: (k := _keys(a)).key != first.key and k.not_after
                       > time.time() + 20 and k, 40, "a fresh certified key")
    assert renewed.key and renewed.not_after > first.not_after
    late = post(a, "after identity came back", c.key)
    accepted[late.message_id] = "after identity came back"
    wait_for(lambda: set(accepted) <= {m.id for m in history(c, a.key)}, 60,
             "every post at c")
    rows = [m for m in history(c, a.key) if m.id in accepted]
    assert len(rows) == len(accepted), "none twice"
    wait_for(lambda: status_of(a, c.key, late.message_id) == "delivered", 30,
             "the signed receipt of the last one")


def test_revoked_key_is_refused_across_the_line(line: Mesh) -> None:
    """A's delegated key is stolen (read from router.keys) and revoked: a message the thief
    signs with it after the revocation is refused at B, counted, and never reaches C;
    A goes on with a fresh key."""
    a, b, c = (line.nodes[h] for h in "abc")
    import msgpack

    ring = msgpack.unpackb((a.home / "router.keys").read_bytes(), raw=False)
    secret64, cert, _nb, _na = ring["signer"]
    stolen = secret64[32:].hex()
    tap_c = BusTap(c, "key.revoked")
    tap_b = BusTap(b, "router.dropped")
    try:
        keys = request(a, "router", rpc.Revoke(key=stolen), timeout=15)
        assert keys.key != stolen and stolen in keys.revoked
        tap_c.wait("key.revoked", lambda e: e.key == stolen and e.origin == a.key, 20)
        dropped_before = request(b, "router", rpc.GetRouterStats()).dropped
        text = f"signed with a stolen key {os.urandom(4).hex()}"
        signed = envelope.signed_bytes(kind=envelope.KIND_ROOM, origin=bytes.fromhex(a.key),
                                       seq=888_888, ts=int(time.time() * 1000), to=None,
                                       body=text.encode(), cert=cert)
        from tazcom.common import certs

        body = routing.encode_envs([(0, signed, certs.sign_envelope(signed, secret64))])
        b_port = request(b, "gateway", rpc.GetGatewayInfo()).port
        proc = a.run(["python", "-m", "tests.peer_tool",
                      f"{line.net.addresses['b'][0]}:{b_port}", "--nick", "thief",
                      "--send", body.hex(), "--linger", "1"])
        assert json.loads(proc.stdout.strip().splitlines()[-1])["verified"]
        tap_b.wait("router.dropped", lambda e: e.reason == "revoked", 15)
        assert request(b, "router", rpc.GetRouterStats()).dropped > dropped_before
    finally:
        tap_c.close()
        tap_b.close()
    msg_id = envelope.message_id(signed)
    honest = post(a, "after the revocation", c.key)
    wait_for(lambda: honest.message_id in {m.id for m in history(c, a.key)}, 20,
             "a's next DM, signed with its fresh key, at c")
    for node in (b, c):
        assert all(m.id != msg_id and m.text != text for m in history(node))


def test_forged_and_misused_certificates_are_refused_counted_and_harmless(line: Mesh) -> None:
    """A forged certificate, a certificate a thief made for someone else's delegated public
    key, and an envelope claiming another origin's delegated key: each refused at B with
    its code, counted, never shown at C, and no service of B restarts."""
    import nacl.bindings

    from tazcom.common import certs
    from tazcom.common.keys import DOMAIN_CERT

    a, b, c = (line.nodes[h] for h in "abc")
    pids = {s: b.pid(s) for s in ("gateway", "router")}
    now = int(time.time())
    thief_pk, thief_sk = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))
    d_pk, d_sk = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))

    def cert_by(signer_sk: bytes, origin: bytes, dkey: bytes) -> bytes:
        part = certs.signed_part(origin, dkey, now - 60, now + 3600)
        return certs.encode(dkey, now - 60, now + 3600,
                            nacl.bindings.crypto_sign(DOMAIN_CERT + part, signer_sk)[:64])

    a_key = bytes.fromhex(a.key)
    a_cert = msgpack_signer(a)[1]
    a_dkey = certs.parse(a_cert).dkey
    cases = {
        # a's origin, a certificate with random bytes for a signature
        "forged": (a_key, certs.encode(d_pk, now - 60, now + 3600, os.urandom(64)), d_sk),
        # the thief certifies a's delegated public key as its own, and signs with its own
        # key: the signature is not a's delegated key's
        "stolen public key": (thief_pk, cert_by(thief_sk, thief_pk, a_dkey), d_sk),
        # the thief's own certificate, claimed for a's origin
        "another origin's": (a_key, cert_by(thief_sk, thief_pk, d_pk), d_sk),
    }
    entries, ids = [], []
    for i, (origin, cert, sk) in enumerate(cases.values()):
        signed = envelope.signed_bytes(kind=envelope.KIND_ROOM, origin=origin, seq=700 + i,
                                       ts=int(time.time() * 1000), to=None,
                                       body=f"bad certificate {i}".encode(), cert=cert)
        entries.append((0, signed, certs.sign_envelope(signed, sk)))
        ids.append(envelope.message_id(signed))
    before = request(b, "router", rpc.GetRouterStats()).dropped
    tap = BusTap(b, "router.dropped")
    try:
        b_port = request(b, "gateway", rpc.GetGatewayInfo()).port
        for i, entry in enumerate(entries):  # one link (and nickname: TOFU pins) each
            proc = a.run(["python", "-m", "tests.peer_tool",
                          f"{line.net.addresses['b'][0]}:{b_port}", "--nick", f"forger{i}",
                          "--send", routing.encode_envs([entry]).hex(), "--linger", "1"])
            assert json.loads(proc.stdout.strip().splitlines()[-1])["verified"]
        wait_for(lambda: request(b, "router", rpc.GetRouterStats()).dropped >= before + 3, 15,
                 "three refusals counted at b")
        reasons = {e.reason for e in tap.of("router.dropped")}
        assert reasons & {"cert_signature", "bad_signature"}, reasons
    finally:
        tap.close()
    assert {s: b.pid(s) for s in pids} == pids, "no service of b restarted"
    for node in (b, c):
        assert not {m.id for m in history(node)} & set(ids)


def msgpack_signer(node: Node) -> tuple[bytes, bytes]:
    """The delegated secret key and certificate in a node's router.keys."""
    import msgpack

    ring = msgpack.unpackb((node.home / "router.keys").read_bytes(), raw=False)
    secret64, cert, _nb, _na = ring["signer"]
    return secret64, cert
