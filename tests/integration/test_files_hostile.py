"""Hostile file transfers against a real node (issue 15, "Bad input").

Bob is the node under attack; Alice is his honest neighbour. Both run on loopback with
their own mDNS service type (nothing else joins their mesh), and Bob's ``files/`` is a
small tmpfs mounted before he starts, so that a full disk is real and ``files/`` usage is
measured exactly (``statvfs``). Bob's ``[scoring]`` counts a bad chunk lightly, so that a
liar stays linked long enough for the file service's own limits (``BAD_LIMIT``) to act
(with the default weights a neighbour is banned after about four bad chunks, long before
BAD_LIMIT); every bad chunk still shows as a ``peer.score`` penalty.

The attackers are Python peers (``Hostile``) speaking the link protocol themselves: the
Noise handshake bound to their own Ed25519 identity, a hello with ``env/2`` and
``file/1``, manifests (envelope kind 6, version 2, signed with a delegated key they
certify themselves) and ``file`` messages (``common.filewire``) with whatever bytes they
like. Each case uses a fresh attacker on its own loopback address (127.0.0.x), so each
one's refusals are their own ``router.dropped`` events (one per source and reason).

After every attack Bob still chats with Alice both ways, and at the end no service of
either node logged a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.public
import nacl.signing
import pytest

from tazcom.common import (
    certs,
    codec,
    envelope,
    filecrypt,
    filemanifest,
    filewire,
    noise,
    routing,
    rpc,
)
from tazcom.common.download import WANT_TIMEOUT
from tazcom.common.errors import RequestFailed
from tazcom.common.fileplan import BAD_LIMIT
from tazcom.common.filetree import CHUNK, FILE_MAX, HashTree, build, chunk_of
from tazcom.common.filewire import Chunk, NoneMsg, Want
from tazcom.common.keys import DOMAIN_CERT, DOMAIN_NOISE_STATIC, fingerprint
from tazcom.common.link import Link, LinkClosed, LinkLimits, LinkVerified, MessageReceived
from tazcom.common.linkmanager import CAPS
from tests.harness import BusTap, Node, post, request, short_tmp, wait_for

MiB = 1024 * 1024
#: Bob's files/ (a tmpfs), his largest file, and how lightly a bad chunk counts.
TMPFS = 16 * MiB
MAX_SIZE = 12 * MiB
BOB_CONFIG = f"""
[files]
max_size = {MAX_SIZE}

[scoring]
invalid_weight = -0.01
"""
#: Our side of an attacker's link never closes it.
ATTACKER_LIMITS = LinkLimits(frames_per_second=1e9, frame_burst=1e9, dead_after=120.0)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


# -- the attacker ------------------------------------------------------------------------------


@dataclass
class Served:
    """A file an attacker can serve: the bytes its tree is over (ciphertext for a DM)."""

    data: bytes
    tree: HashTree

    def chunk(self, index: int) -> Chunk:
        return Chunk(self.tree.file_id, index, chunk_of(self.data, index),
                     tuple(self.tree.proof(index)))


class _Conn(asyncio.Protocol):
    def __init__(self, owner: Hostile, name: str, link: Link) -> None:
        self.owner, self.name, self.link = owner, name, link
        loop = asyncio.get_running_loop()
        self.verified: asyncio.Future[bool] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.closed: LinkClosed | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()

    def flush(self) -> None:
        data = self.link.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.link.receive_data(data, time.monotonic(), time.time()):
            if isinstance(ev, LinkVerified) and not self.verified.done():
                self.verified.set_result(True)
            elif isinstance(ev, LinkClosed):
                self.closed = ev
            elif isinstance(ev, MessageReceived) and ev.kind == filewire.KIND:
                self.owner.on_file(self, filewire.decode(ev.body))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.verified.done():
            self.verified.set_result(False)
        if self.closed is None:
            self.closed = LinkClosed("connection_lost", repr(exc), True)

    def send(self, kind: str, body: bytes) -> None:
        if self.link.is_open:
            self.link.send_app(kind, body, time.monotonic())
            self.flush()


#: What an attacker answers a ``want`` with: (its neighbour's name, the want) -> messages.
Answer = Callable[[str, Want], list[filewire.FileMessage]]


class Hostile:
    """A neighbour that speaks the link protocol itself, from its own loopback address,
    with its own identity (and a delegated key it certifies for itself, as a node's
    identity service does). Its asyncio loop runs in a thread, so it answers pings and
    wants while the test waits; ``answer`` decides what it sends for each want."""

    def __init__(self, nick: str, host: str) -> None:
        self.nick, self.host = nick, host
        self.sk = nacl.signing.SigningKey(os.urandom(32))
        self.key = bytes(self.sk.verify_key)
        self.source = f"peer {fingerprint(self.key)}"
        dkey, self._dsecret = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))
        now = int(time.time())
        part = certs.signed_part(self.key, dkey, now - 60, now + 3600)
        self.cert = certs.encode(dkey, now - 60, now + 3600,
                                 self.sk.sign(DOMAIN_CERT + part).signature)
        self.seq = 0
        self.files: dict[bytes, Served] = {}
        #: Every want received: (from whom, the want).
        self.wants: list[tuple[str, Want]] = []
        #: Every chunk and none received: (from whom, the message).
        self.got: list[tuple[str, filewire.FileMessage]] = []
        self.answer: Answer = self.honest
        self.conns: dict[str, _Conn] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._closed = False
        self._ticking: asyncio.Task[None] = self.run(lambda: self.loop.create_task(self._tick()))

    # -- running in the attacker's loop -------------------------------------------------

    def run(self, fn: Callable[[], Any], timeout: float = 15.0) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    async def _tick(self) -> None:
        while True:
            for conn in list(self.conns.values()):
                conn.link.handle_timer(time.monotonic())
                conn.flush()
            await asyncio.sleep(0.3)  # noqa: sleep-ok - the peer's own keepalive clock

    def on_file(self, conn: _Conn, msg: filewire.FileMessage) -> None:
        if isinstance(msg, Want):
            self.wants.append((conn.name, msg))
            for out in self.answer(conn.name, msg):
                conn.send(filewire.KIND, filewire.encode(out))
        else:
            self.got.append((conn.name, msg))

    def honest(self, _name: str, want: Want) -> list[filewire.FileMessage]:
        served = self.files.get(want.file_id)
        if served is None:
            return [NoneMsg(want.file_id, want.indices)]
        return [served.chunk(i) for i in want.indices if i < served.tree.count]

    # -- links --------------------------------------------------------------------------

    def link(self, node: Node, name: str) -> None:
        """Link to ``node`` (its gateway on 127.0.0.1) as a verified neighbour."""
        port = request(node, "gateway", rpc.GetGatewayInfo()).port

        async def connect() -> bool:
            static, static_pub = noise.x25519_keypair()
            link = Link(initiator=True, identity_key=self.key, static_private=static,
                        static_sig=self.sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature,
                        nickname=self.nick, now=time.monotonic(), caps=CAPS,
                        limits=ATTACKER_LIMITS, expected_key=bytes.fromhex(node.key))
            conn = _Conn(self, name, link)
            await self.loop.create_connection(lambda: conn, "127.0.0.1", port,
                                              local_addr=(self.host, 0))
            self.conns[name] = conn
            return await asyncio.wait_for(conn.verified, 10)

        assert asyncio.run_coroutine_threadsafe(connect(), self.loop).result(15), \
            f"{self.nick} could not link to {node.nick}"

    def send(self, name: str, msg: filewire.FileMessage) -> None:
        self.run(lambda: self.conns[name].send(filewire.KIND, filewire.encode(msg)))

    def send_many(self, name: str, msgs: list[filewire.FileMessage]) -> None:
        """Many messages at once, written as the socket takes them."""
        async def flood() -> None:
            conn = self.conns[name]
            assert conn.transport is not None
            for msg in msgs:
                conn.send(filewire.KIND, filewire.encode(msg))
                while conn.transport.get_write_buffer_size() > 4 * MiB:
                    await asyncio.sleep(0.005)  # noqa: sleep-ok - waiting for the socket

        asyncio.run_coroutine_threadsafe(flood(), self.loop).result(60)

    def is_linked(self, name: str) -> bool:
        conn = self.conns.get(name)
        return conn is not None and conn.closed is None and conn.link.is_open

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            for conn in self.conns.values():
                if not conn.link.closed:
                    conn.link.close("goodbye", "done", time.monotonic())
                    conn.flush()
                if conn.transport is not None:
                    conn.transport.close()
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    # -- manifests ----------------------------------------------------------------------

    def envelope(self, body: bytes, to: bytes | None = None) -> tuple[bytes, bytes]:
        """A file manifest signed as a node signs it: version 2, our delegated key."""
        self.seq += 1
        signed = envelope.signed_bytes(kind=envelope.KIND_FILE, origin=self.key, seq=self.seq,
                                       ts=int(time.time() * 1000), to=to, body=body,
                                       cert=self.cert)
        return signed, certs.sign_envelope(signed, self._dsecret)

    def room_file(self, data: bytes, name: str, *, size: int | None = None,
                  file_id: bytes | None = None) -> tuple[str, bytes, bytes]:
        """A room file's manifest (``size`` and ``file_id`` may lie); returns the manifest
        id (hex), the file id and the envelope's router message."""
        tree = build(data)
        self.files[tree.file_id] = Served(data, tree)
        meta = filemanifest.RoomMeta(name=name, mime="application/octet-stream")
        body = filemanifest.encode(filemanifest.RoomManifest(
            file_id or tree.file_id, tree.size if size is None else size, CHUNK, meta))
        signed, sig = self.envelope(body)
        return envelope.message_id(signed).hex(), file_id or tree.file_id, \
            routing.encode_envs([(0, signed, sig)])

    def dm_file(self, plain: bytes, name: str, to: Node, enc_key: bytes, *,
                size: int | None = None) -> tuple[str, bytes, bytes]:
        """A DM file to ``to`` (its meta sealed to ``enc_key``), encrypted as a node does."""
        key = os.urandom(filecrypt.KEY_BYTES)
        sealed = filecrypt.encrypt_file(key, plain)
        tree = build(sealed)
        self.files[tree.file_id] = Served(sealed, tree)
        secret = filemanifest.encode_secret(filemanifest.Secret(
            author=self.key, name=name, mime="", key=key))
        box = nacl.public.SealedBox(nacl.public.PublicKey(enc_key)).encrypt(secret)
        body = filemanifest.encode(filemanifest.DMManifest(
            tree.file_id, tree.size if size is None else size, CHUNK, box))
        signed, sig = self.envelope(body, to=bytes.fromhex(to.key))
        return envelope.message_id(signed).hex(), tree.file_id, \
            routing.encode_envs([(0, signed, sig)])

    def announce(self, name: str, router_message: bytes) -> None:
        self.run(lambda: self.conns[name].send(routing.KIND, router_message))


# -- the lab: Bob (files/ on a tmpfs) and Alice --------------------------------------------------


@dataclass
class Lab:
    root: Path
    alice: Node
    bob: Node
    alice_tap: BusTap
    bob_tap: BusTap
    bob_enc: bytes
    keep: Path
    keep_sha: str
    attackers: list[Hostile] = field(default_factory=list)
    hosts: Iterator[int] = field(default_factory=lambda: iter(range(40, 250)))

    @property
    def files(self) -> Path:
        return self.bob.home / "files"

    def attacker(self, nick: str) -> Hostile:
        h = Hostile(nick, f"127.0.0.{next(self.hosts)}")
        self.attackers.append(h)
        return h


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dm(sender: Node, to: Node, text: str) -> bool:
    """Post a DM, or False while the sender does not know the recipient's DM key yet."""
    try:
        post(sender, text, to.key)
    except RequestFailed as e:
        if e.code == "no_key":
            return False
        raise
    return True


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    root = short_tmp("tzfh")
    own = f'[discovery]\nservice_type = "_tzfh{os.getpid() % 100000}._tcp.local."\n'
    alice = Node(root / "alice", "alice", config=own)
    bob = Node(root / "bob", "bob", config=own + BOB_CONFIG)
    files = bob.home / "files"
    files.mkdir(parents=True)
    mounted = False
    taps: list[BusTap] = []
    problems: list[str] = []
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS},mode=0700", "tmpfs",
                        str(files)], check=True)
        mounted = True
        keep = files / "keep.bin"  # the user's file, there before any attack
        keep.write_bytes(os.urandom(200_000))
        alice.start()
        bob.start()
        alice.wait_up()
        bob.wait_up()
        bob.wait_peer("alice", ("verified",), timeout=20)
        taps = [BusTap(alice, "chat.message", "file.status"),
                BusTap(bob, "chat.message", "file.status", "router.dropped", "peer.score",
                       "link.down")]
        # each knows the other's DM key (profiles exchanged)
        wait_for(lambda: _dm(alice, bob, "hello bob"), 20, "alice to know bob's DM key")
        wait_for(lambda: _dm(bob, alice, "hello alice"), 20, "bob to know alice's DM key")
        enc = bytes.fromhex(request(bob, "identity", rpc.GetIdentity()).enc_key)
        lab = Lab(root, alice, bob, taps[0], taps[1], enc, keep, _sha(keep))
        yield lab
        for h in lab.attackers:
            h.close()
        assert _sha(keep) == lab.keep_sha, "the user's file in files/ changed"
    finally:
        for tap in taps:
            tap.close()
        for node in (alice, bob):
            node.stop()
            problems += node.tracebacks()
        if mounted and subprocess.run(["umount", str(files)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(files)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert not problems, "tracebacks in node logs:\n" + "\n".join(problems)


# -- helpers --------------------------------------------------------------------------------------


def rows(node: Node) -> list[Any]:
    return list(request(node, "router", rpc.ListFiles(), timeout=10).files)


def row(node: Node, manifest_id: str) -> Any | None:
    return next((r for r in rows(node) if r.id == manifest_id), None)


def wait_row(node: Node, manifest_id: str, statuses: tuple[str, ...], timeout: float = 20
             ) -> Any:
    return wait_for(lambda: (r := row(node, manifest_id)) is not None and r.status in statuses
                    and r, timeout, f"{node.nick}'s file {manifest_id[:12]} to be {statuses}")


def get(node: Node, manifest_id: str) -> Any:
    return request(node, "router", rpc.GetFile(file=manifest_id), timeout=10).file


def dropped(lab: Lab, h: Hostile, reason: str, timeout: float = 15) -> Any:
    """Bob's ``router.dropped`` event for ``reason`` from the attacker's link."""
    return lab.bob_tap.wait("router.dropped",
                            lambda e: e.source == h.source and e.reason == reason, timeout)


def logged(lab: Lab, h: Hostile, reason: str) -> bool:
    """Bob's router logged the refusal: one line per (source, reason)."""
    log = lab.bob.logs().get("router.log", "")
    return f"rejected input from {h.source} ({reason})" in log


def partials(lab: Lab, file_id: bytes) -> list[str]:
    return sorted(p.name for p in (lab.files / ".partial").glob(f"{file_id.hex()}*"))


def chat_works(lab: Lab, after: str) -> None:
    """Bob and Alice still talk, both ways: a room message and a DM."""
    tag = os.urandom(3).hex()
    room = f"room after {after} {tag}"
    post(lab.bob, room)
    lab.alice_tap.wait("chat.message", lambda e: e.text == room, 15)
    dm = f"dm after {after} {tag}"
    post(lab.alice, dm, lab.bob.key)
    lab.bob_tap.wait("chat.message", lambda e: e.text == dm and e.kind == "dm", 15)


def settled_usage(lab: Lab) -> int:
    """Bytes used in Bob's files/ once nothing is being written (two equal readings)."""
    last: list[int] = [-1]

    def same() -> int | None:
        now = _used(lab.files)
        ok = now == last[0]
        last[0] = now
        return now if ok else None

    return wait_for(same, 10, "files/ usage to settle", interval=0.2)


# -- the cases ------------------------------------------------------------------------------------


def test_bad_proof_chunks_are_dropped_counted_and_asked_elsewhere(lab: Lab) -> None:
    """1. Every chunk the origin sends Bob has a wrong byte (the proof fails): each is
    dropped before it is written, counted (``router.dropped`` bad_proof, a ``peer.score``
    penalty) and asked from Alice, who relays the true chunk: the file arrives whole."""
    x = lab.attacker("liar1")
    x.link(lab.bob, "bob")
    x.link(lab.alice, "alice")
    sent_bad: list[int] = []

    def answer(name: str, want: Want) -> list[filewire.FileMessage]:
        good = x.honest(name, want)
        if name != "bob":
            return good
        bad = []
        for c in good:
            assert isinstance(c, Chunk)
            data = bytearray(c.data)
            data[len(data) // 2] ^= 0xFF
            bad.append(Chunk(c.file_id, c.index, bytes(data), c.proof))
            sent_bad.append(c.index)
        return bad

    x.answer = answer
    data = os.urandom(9 * CHUNK + 1234)
    mid, _fid, msg = x.room_file(data, "photo.jpg")
    x.announce("bob", msg)
    wait_row(lab.bob, mid, ("offered",))
    get(lab.bob, mid)
    done = wait_row(lab.bob, mid, ("received", "failed"), 30)
    assert done.status == "received", done.reason
    assert Path(done.path).read_bytes() == data, "not a corrupted byte reached the file"
    assert sent_bad, "Bob asked the liar first"
    dropped(lab, x, "bad_proof")
    assert logged(lab, x, "bad_proof")
    # counted against the neighbour that sent it (peer scoring: lightly, in this lab)
    lab.bob_tap.wait("peer.score", lambda e: e.key == x.key.hex()
                     and e.reason == "after a penalty")
    assert any(n == "alice" for n, _w in x.wants), "Alice relayed the chunks from the origin"
    chat_works(lab, "bad proofs")
    x.close()


def test_a_manifest_that_lies_about_the_size_fails_as_bad_manifest(lab: Lab) -> None:
    """2. The id commits to the size, so a manifest with another size fails every proof:
    after BAD_LIMIT bad chunks and none good the download fails (bad_manifest), and what
    it had preallocated for the claimed size is given back."""
    x = lab.attacker("liar2")
    x.link(lab.bob, "bob")
    data = os.urandom(3 * CHUNK)
    tree = build(data)
    claimed = 4 * MiB  # 86 chunks: room for BAD_LIMIT bad ones from one source

    def answer(_name: str, want: Want) -> list[filewire.FileMessage]:
        # the true chunks where there are some, filler past the true end: all fail
        return [Chunk(want.file_id, i, chunk_of(data, i % 3), tuple(tree.proof(i % 3)))
                for i in want.indices]

    x.answer = answer
    before = settled_usage(lab)
    mid, fid, msg = x.room_file(data, "movie.mkv", size=claimed)
    assert fid == tree.file_id
    x.announce("bob", msg)
    wait_row(lab.bob, mid, ("offered",))
    get(lab.bob, mid)
    failed = wait_row(lab.bob, mid, ("failed", "received"), 30)
    assert failed.status == "failed" and failed.reason.startswith("bad_manifest"), failed
    assert failed.done == 0
    bob_wants = sum(len(w.indices) for n, w in x.wants if n == "bob")
    assert bob_wants >= BAD_LIMIT
    dropped(lab, x, "bad_proof")
    assert logged(lab, x, "bad_proof")
    assert not partials(lab, fid), "the preallocated partial of the lie is removed"
    assert settled_usage(lab) <= before
    chat_works(lab, "a lying manifest")
    x.close()


def test_duplicate_and_endless_chunks_are_dropped_and_take_no_disk(lab: Lab) -> None:
    """3. Each chunk sent twice: the copies are dropped (duplicate), the file is whole.
    Then a flood of chunks nobody asked for (of that file, now complete, and of files
    that do not exist): dropped unread (unwanted), and files/ does not grow by a byte."""
    x = lab.attacker("flood3")
    x.link(lab.bob, "bob")
    x.answer = lambda name, want: [m for m in x.honest(name, want) for _ in (0, 1)]
    data = os.urandom(6 * CHUNK + 77)
    mid, fid, msg = x.room_file(data, "twice.bin")
    x.announce("bob", msg)
    wait_row(lab.bob, mid, ("offered",))
    get(lab.bob, mid)
    done = wait_row(lab.bob, mid, ("received", "failed"), 20)
    assert done.status == "received", done.reason
    assert Path(done.path).read_bytes() == data
    dropped(lab, x, "duplicate")
    assert logged(lab, x, "duplicate")
    before = settled_usage(lab)
    served = x.files[fid]
    flood: list[filewire.FileMessage] = []
    for k in range(360):
        if k % 3 == 0:
            flood.append(served.chunk(k % served.tree.count))  # true, but not asked
        else:
            flood.append(Chunk(os.urandom(32), k, os.urandom(CHUNK), ()))
    x.send_many("bob", flood)
    # Bob serves his copy of the room file: an answer after the flood, so he read it all
    probe = Want(fid, x.key, len(data), (0,))
    x.send("bob", probe)
    wait_for(lambda: any(isinstance(m, Chunk) and m.file_id == fid for _n, m in x.got), 30,
             "Bob to answer a want sent after the flood")
    dropped(lab, x, "unwanted")
    assert logged(lab, x, "unwanted")
    assert x.is_linked("bob"), "a flood of unwanted chunks is dropped, not a reason to hang up"
    assert settled_usage(lab) == before, "files/ grew under a flood of unwanted chunks"
    assert not list((lab.files / ".cache").iterdir())
    chat_works(lab, "a chunk flood")
    x.close()


def test_a_manifest_over_the_quota_is_refused_and_nothing_preallocated(lab: Lab) -> None:
    """4. A DM file over files.max_size (under auto_accept, so it would start at once)
    fails too_large; a room file over it is refused when asked for; a manifest over
    FILE_MAX is refused at the door. Nothing is preallocated, nothing asked."""
    x = lab.attacker("big4")
    x.link(lab.bob, "bob")
    before = settled_usage(lab)
    big_plain = MAX_SIZE + MiB
    big = filecrypt.cipher_size(big_plain)
    dm_id, dm_fid, dm_msg = x.dm_file(b"small", "huge.iso", lab.bob, lab.bob_enc, size=big)
    x.announce("bob", dm_msg)
    failed = wait_row(lab.bob, dm_id, ("failed", "receiving", "received"))
    assert failed.status == "failed" and failed.reason.startswith("too_large"), failed
    room_id, room_fid, room_msg = x.room_file(b"small", "huge2.iso", size=big_plain)
    x.announce("bob", room_msg)
    wait_row(lab.bob, room_id, ("offered",))
    with pytest.raises(RequestFailed) as refused:
        get(lab.bob, room_id)
    assert refused.value.code == "too_large"
    assert row(lab.bob, room_id).reason.startswith("too_large")
    # over FILE_MAX: the manifest itself is refused (too_large), from its origin
    meta = filemanifest.RoomMeta(name="4gib.bin", mime="")
    body = codec.pack([1, os.urandom(32), FILE_MAX + 1, CHUNK, meta.to_dict()])
    signed, sig = x.envelope(body)
    x.announce("bob", routing.encode_envs([(0, signed, sig)]))
    lab.bob_tap.wait("router.dropped", lambda e: e.reason == "too_large"
                     and fingerprint(x.key) in e.source)
    assert row(lab.bob, envelope.message_id(signed).hex()) is None
    assert not partials(lab, dm_fid) and not partials(lab, room_fid)
    assert not [w for _n, w in x.wants], "nothing asked of a file refused"
    assert settled_usage(lab) == before
    chat_works(lab, "manifests over the quota")
    x.close()


def test_chunks_for_a_file_nobody_asked_for_are_dropped_unread(lab: Lab) -> None:
    """5. Chunks of a file offered but not fetched, and of a file Bob never heard of:
    unwanted, nothing written."""
    x = lab.attacker("push5")
    x.link(lab.bob, "bob")
    before = settled_usage(lab)
    data = os.urandom(2 * CHUNK)
    mid, fid, msg = x.room_file(data, "pushed.bin")
    x.announce("bob", msg)
    wait_row(lab.bob, mid, ("offered",))
    served = x.files[fid]
    x.send_many("bob", [served.chunk(0), served.chunk(1),
                        Chunk(os.urandom(32), 0, os.urandom(1000), ())])
    dropped(lab, x, "unwanted")
    assert logged(lab, x, "unwanted")
    wait_for(lambda: row(lab.bob, mid) is not None, 5, "the row")
    assert row(lab.bob, mid).status == "offered" and row(lab.bob, mid).done == 0
    assert not partials(lab, fid)
    assert settled_usage(lab) == before
    chat_works(lab, "pushed chunks")
    x.close()


def test_a_slowloris_source_is_left_for_another_after_the_want_timeout(lab: Lab) -> None:
    """6. The origin never answers Bob's wants (it answers Alice's): after WANT_TIMEOUT Bob
    asks Alice, who relays from the origin, and the file arrives; meanwhile Bob answers
    requests and chats as usual."""
    x = lab.attacker("slow6")
    x.link(lab.bob, "bob")
    x.link(lab.alice, "alice")
    x.answer = lambda name, want: [] if name == "bob" else x.honest(name, want)
    data = os.urandom(10 * CHUNK + 5)
    mid, _fid, msg = x.room_file(data, "slow.bin")
    x.announce("bob", msg)
    wait_row(lab.bob, mid, ("offered",))
    get(lab.bob, mid)
    wait_for(lambda: any(n == "bob" for n, _w in x.wants), 10, "Bob to ask the slow origin")
    asked = time.monotonic()
    # Bob is stuck on nobody: he answers at once and chats while the want hangs
    started = time.monotonic()
    assert row(lab.bob, mid).status == "receiving"
    assert time.monotonic() - started < 2
    chat_works(lab, "a silent source")
    done = wait_row(lab.bob, mid, ("received", "failed"), 4 * WANT_TIMEOUT)
    assert done.status == "received", done.reason
    assert Path(done.path).read_bytes() == data
    assert time.monotonic() - asked >= WANT_TIMEOUT * 0.8, "Alice was asked after the timeout"
    assert any(n == "alice" for n, _w in x.wants), "the chunks came through Alice"
    x.close()


def test_file_names_with_path_tricks_land_inside_files_under_safe_names(lab: Lab) -> None:
    """7. Announced names with ``..``, separators, control and bidi characters, a name
    that exists: each file lands in files/ under a safe name, nothing outside, nothing
    overwritten."""
    x = lab.attacker("names7")
    x.link(lab.bob, "bob")
    names = ["../../etc/passwd", "a/b", "a/b", "..", "ctl\x00\x1b[2J\x07\nx\u202egnp.exe",
             "keep.bin", ".partial", "/abs/olute"]
    outside = {lab.root / "etc", lab.bob.home / "etc", lab.bob.home / "abs",
               lab.root / "passwd", lab.bob.home / "passwd", lab.bob.home / "a"}
    sent: dict[str, bytes] = {}
    for n in names:
        data = os.urandom(300) + n.encode()
        mid, _fid, msg = x.room_file(data, n)
        sent[mid] = data
        x.announce("bob", msg)
    # a DM file with a path trick goes through the DM path (decrypted, then placed)
    dm_data = os.urandom(5000)
    dm_id, _dm_fid, dm_msg = x.dm_file(dm_data, "../../../dm-escape", lab.bob, lab.bob_enc)
    x.announce("bob", dm_msg)
    for mid in sent:
        wait_row(lab.bob, mid, ("offered",))
        get(lab.bob, mid)
    sent[dm_id] = dm_data
    files = lab.files.resolve()
    placed = []
    for mid, data in sent.items():
        done = wait_row(lab.bob, mid, ("received", "failed"), 20)
        assert done.status == "received", (done.name, done.reason)
        path = Path(done.path)
        assert path.resolve().parent == files, path
        assert path.read_bytes() == data
        name = path.name
        assert not name.startswith(".") and "/" not in name and name != ".."
        assert all(ch.isprintable() for ch in name), repr(name)
        placed.append(name)
    assert len(set(placed)) == len(placed), "no file written over another"
    assert "keep.bin" not in placed and _sha(lab.keep) == lab.keep_sha
    assert not [p for p in outside if p.exists()], "a file outside files/"
    assert (lab.files / ".partial").is_dir() and not (lab.files / ".partial").is_file()
    chat_works(lab, "tricky names")
    x.close()


def test_a_full_disk_fails_the_transfer_clearly_and_harms_nothing_else(lab: Lab) -> None:
    """8. Bob's files/ is a 16 MiB tmpfs, filled up to 5 MiB free. A 10 MiB DM file
    from Alice does not fit: it fails with "disk full" before a byte is fetched. Then a DM
    file that fits when it starts, whose disk fills up while it arrives (another program
    takes the space): its space was taken (preallocated) when it started, so it still
    arrives whole, the user's file is intact, and chat goes on."""
    alice, bob = lab.alice, lab.bob
    src = lab.root / "big-video.mp4"
    src.write_bytes(os.urandom(10 * MiB))
    filler = lab.files / "someone-elses-data"
    filler.write_bytes(bytes(max(0, shutil.disk_usage(lab.files).free - 5 * MiB)))
    sent = request(alice, "router", rpc.SendFile(client_id=os.urandom(16), path=str(src),
                                                 to=bytes.fromhex(bob.key)), timeout=60).file
    full = wait_row(bob, sent.id, ("failed", "received", "receiving"), 30)
    assert full.status == "failed" and full.reason.startswith("disk full"), full
    filler.unlink()
    chat_works(lab, "a file too big for the disk")

    # the disk fills while a file arrives
    x = lab.attacker("fill8")
    x.link(lab.bob, "bob")
    held: list[Want] = []

    def hold(_name: str, want: Want) -> list[filewire.FileMessage]:
        held.append(want)
        return []

    x.answer = hold
    plain = os.urandom(MiB)
    mid, _fid, msg = x.dm_file(plain, "notes.pdf", lab.bob, lab.bob_enc)
    x.announce("bob", msg)
    wait_row(bob, mid, ("receiving",))
    wait_for(lambda: held, 10, "Bob to ask for the chunks")
    filler = lab.files / "someone-elses-download.tmp"
    with open(filler, "wb") as f:  # all but 64 KiB: nothing more would fit now
        os.posix_fallocate(f.fileno(), 0, max(0, _free(lab.files) - 64 * 1024))
    try:
        def release() -> None:  # from now on every want is answered, the held ones first
            x.answer = x.honest
            for want in held:
                for m in x.honest("bob", want):
                    x.conns["bob"].send(filewire.KIND, filewire.encode(m))

        x.run(release)
        done = wait_row(bob, mid, ("failed", "received"), 20)
        assert done.status == "received", done
        assert Path(done.path).read_bytes() == plain
        assert not list((lab.files / ".partial").iterdir()), "nothing is left behind"
        assert _sha(lab.keep) == lab.keep_sha
        chat_works(lab, "a disk that filled up")
    finally:
        filler.unlink()
    x.close()
