"""An authenticated fuzzer against a real node: a verified peer that sends mutated frames.

``FuzzClient`` completes the real Noise handshake with a node's gateway (a
fresh identity of its own, so its frames are valid and authenticated), then
sends frames drawn from ``FrameMaker``: random plaintext, msgpack of wrong
shapes, link messages with fields of the wrong type, router messages of any
shape, mutated valid envelopes (forgeries among them), legitimately signed
room messages and DMs, and abusive sequences (rekey storms, duplicate floods,
a second hello, a close with terminal escapes, bytes that are no frame). The
node closes the link on every protocol error; the client reconnects, and, when
refused (banned, blocked), takes a new identity after a pause. The run ends
after ``frames`` frames or ``seconds``, whichever comes first.

``fuzz_node`` runs it against a node with an honest neighbour and measures
what issue 12 asks: no traceback in any log, no service restarted, no forged
message shown (every ``chat.message`` is one that its origin signed: the
fuzzer's legitimate ones, or the honest nodes' own), memory bounded (PSS of
each service), and the node still chats afterwards. Used by
tests/integration/test_link_fuzz.py (10,000 frames) and bench/fuzz_link.py.

Loopback only: nodes run with ``TAZCOM_INTERFACES=lo``; the client connects
to 127.0.0.1 from its own loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nacl.public
import nacl.signing

from tazcom.common import codec, envelope, noise, routing, rpc
from tazcom.common.events import ChatMessage
from tazcom.common.keys import DOMAIN_ENVELOPE, DOMAIN_NOISE_STATIC
from tazcom.common.link import Link, LinkClosed, LinkLimits, LinkVerified, MessageReceived
from tazcom.common.linkmanager import CAPS, LINK_CODES
from tazcom.common.messages import Hello, Ping, Rekey, decode_message, encode_message

#: Closes by the node that are a refusal of us, not of a frame: take a new identity.
REFUSALS = frozenset({"banned", "blocked", "key_changed"})
#: Our own receiving side must never be what ends a link.
CLIENT_LIMITS = LinkLimits(frames_per_second=1e9, frame_burst=1e9, dead_after=60.0)
NASTY_INTS = [0, 1, -1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 17, 255]
NASTY_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 1.0, 1e308, 5e-324]
NASTY_TEXT = ["", "\x1b[2J\x1b]0;owned\x07", "\u202egnp.exe", "\x00", "é" * 40, "app", "close",
              "router", "hello", "x" * 300, "\r\n\t", "%s%n"]
KEYS = ["t", "v", "n", "kind", "body", "reason", "message", "nickname", "versions", "caps"]


class Shapes:
    """Random msgpack values of any shape, and mutations of valid ones (no hypothesis: a
    benchmark runs a million of these)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def leaf(self) -> Any:
        r = self.rng.random()
        rng = self.rng
        if r < 0.08:
            return None
        if r < 0.16:
            return rng.random() < 0.5
        if r < 0.32:
            return rng.choice(NASTY_INTS) if rng.random() < 0.5 else rng.randint(-(2**63),
                                                                               2**64 - 1)
        if r < 0.42:
            return rng.choice(NASTY_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)
        if r < 0.62:
            return rng.randbytes(rng.choice([0, 1, 16, 31, 32, 33, 47, 48, 64, rng.randint(0, 90)]))
        if r < 0.95:
            if rng.random() < 0.5:
                return rng.choice(NASTY_TEXT)
            return "".join(chr(rng.choice([rng.randint(0, 0x7f), rng.randint(0, 0x2fff)]))
                           for _ in range(rng.randint(0, 12)))
        return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 6)))

    def key(self) -> Any:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(KEYS)
        if r < 0.9:
            k = self.leaf()
            return k if isinstance(k, str | bytes | int | None) else "k"
        return self.rng.randint(-5, 5)

    def shape(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth < 4 and r < 0.22:
            return [self.shape(depth + 1) for _ in range(self.rng.randint(0, 4))]
        if depth < 4 and r < 0.40:
            out: dict[Any, Any] = {}
            for _ in range(self.rng.randint(0, 4)):
                k = self.key()
                if isinstance(k, list | dict | msgpack.ExtType):
                    k = "k"
                out[k] = self.shape(depth + 1)
            return out
        return self.leaf()

    def mutate(self, obj: Any, times: int | None = None) -> Any:
        for _ in range(times or self.rng.randint(1, 3)):
            obj = self._once(obj)
        return obj

    def _once(self, obj: Any) -> Any:
        rng = self.rng
        if isinstance(obj, dict) and obj and rng.random() < 0.8:
            obj = dict(obj)
            key = rng.choice(list(obj))
            how = rng.randrange(6)
            if how == 0:
                del obj[key]
            elif how == 1:
                obj[key] = self.shape(2)
            elif how == 2:
                obj[key] = [obj[key]]
            elif how == 3:
                obj[key] = obj[rng.choice(list(obj))]
            elif how == 4:
                obj[key] = self._once(obj[key])
            else:
                obj[self.key() if rng.random() < 0.5 else "extra"] = self.shape(2)
            return obj
        if isinstance(obj, list) and obj and rng.random() < 0.8:
            obj = list(obj)
            i = rng.randrange(len(obj))
            how = rng.randrange(6)
            if how == 0:
                obj[i] = self.shape(2)
            elif how == 1:
                obj[i] = [obj[i]]
            elif how == 2:
                obj[i] = self._once(obj[i])
            elif how == 3:
                del obj[i:]
            elif how == 4:
                obj.append(self.shape(2))
            else:
                j = rng.randrange(len(obj))
                obj[i], obj[j] = obj[j], obj[i]
            return obj
        if isinstance(obj, bytes) and obj:
            b = bytearray(obj)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b) if rng.random() < 0.8 else bytes(b[: rng.randrange(len(b))])
        return self.shape(2) if rng.random() < 0.6 else [obj]

    def pack(self, obj: Any) -> bytes:
        try:
            return msgpack.packb(obj, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return b"\xc1"  # never used by msgpack


class Identity:
    """A fuzzer's identity: an Ed25519 key (it signs envelopes) and a nickname."""

    def __init__(self, n: int, signed_ids: set[bytes]) -> None:
        self.sk = nacl.signing.SigningKey(os.urandom(32))
        self.key = bytes(self.sk.verify_key)
        self.nickname = f"fuzz{n}"
        self.seq = 0
        #: Ids of the envelopes this fuzzer signed honestly, as their origin: the only
        #: ones of its that may be shown (whatever else they hold).
        self.signed_ids = signed_ids

    def link(self) -> Link:
        static, static_pub = noise.x25519_keypair()
        return Link(initiator=True, identity_key=self.key, static_private=static,
                    static_sig=self.sk.sign(DOMAIN_NOISE_STATIC + static_pub).signature,
                    nickname=self.nickname, now=time.monotonic(), limits=CLIENT_LIMITS,
                    caps=CAPS)

    def envelope(self, kind: int, body: bytes, to: bytes | None = None,
                 origin: bytes | None = None) -> tuple[bytes, bytes]:
        """(signed, sig): signed by us, whatever ``origin`` says (a forgery if another)."""
        self.seq += 1
        signed = envelope.signed_bytes(kind=kind, origin=origin or self.key, seq=self.seq,
                                       ts=int(time.time() * 1000), to=to, body=body)
        if origin in (None, self.key):
            self.signed_ids.add(envelope.message_id(signed))
        return signed, self.sk.sign(DOMAIN_ENVELOPE + signed).signature


@dataclass
class Frame:
    """What to send next: link plaintexts (encrypted in order) or raw TCP bytes."""

    label: str
    plain: list[bytes] = field(default_factory=list)
    raw: bytes = b""
    #: The link ends after this: the node closes it with a ``close`` carrying a reject code
    #: (a protocol error), or, when ``ours``, we closed it (our own ``close``).
    fatal: bool = False
    ours: bool = False
    #: We rekey our sending cipher after each plaintext that is a ``rekey``.
    rekeys: bool = False


def app(body: bytes, kind: str = routing.KIND) -> bytes:
    return codec.pack({"t": "app", "v": 1, "kind": kind, "body": body})


class FrameMaker:
    """Frames for one session, by weight; ``legit`` records what we signed honestly."""

    def __init__(self, rng: random.Random, target_key: bytes, target_enc: bytes,
                 honest_keys: list[bytes]) -> None:
        self.rng = rng
        self.shapes = Shapes(rng)
        self.target_key = target_key
        self.target_enc = target_enc
        self.honest_keys = honest_keys
        #: Ids of every envelope we signed as ourselves, honestly (``Identity.signed_ids``).
        self.legit: set[bytes] = set()
        self.recent: list[tuple[int, bytes, bytes]] = []
        self.n = 0
        kinds: list[tuple[Callable[[Identity], Frame], float]] = [
            (self.router_shape, 10), (self.router_bytes, 4), (self.router_mutated, 10),
            (self.envs_mutated, 12), (self.envs_forged, 6), (self.legit_room, 3),
            (self.legit_dm, 1), (self.bad_dms, 4), (self.envs_mixed, 4), (self.duplicates, 2),
            (self.unknown_types, 4), (self.keepalive, 3), (self.rekey_storm, 1),
            (self.other_kind, 2),
            # fatal: the node closes the link
            (self.plain_bytes, 2.0), (self.not_a_map, 1.5), (self.t_of_wrong_shape, 2.0),
            (self.mutated_link_message, 2.5), (self.second_hello, 0.5), (self.odd_close, 1.0),
            (self.not_a_frame, 0.7), (self.undecryptable, 0.7), (self.empty_frame, 0.3),
        ]
        self._kinds = [k for k, _ in kinds]
        self._weights = [w for _, w in kinds]

    def next(self, ident: Identity) -> Frame:
        return self.rng.choices(self._kinds, self._weights)[0](ident)

    # -- frames the link survives ---------------------------------------------------------

    def router_shape(self, ident: Identity) -> Frame:
        body = self.shapes.pack([self.rng.randint(-1, 4), *(self.shapes.shape(1) for _ in range(
            self.rng.randint(0, 3)))] if self.rng.random() < 0.7 else self.shapes.shape())
        return Frame("router_shape", [app(body[: routing.MAX_BODY])])

    def router_bytes(self, ident: Identity) -> Frame:
        return Frame("router_bytes", [app(self.rng.randbytes(self.rng.randint(0, 300)))])

    def router_mutated(self, ident: Identity) -> Frame:
        rng = self.rng
        ids = [rng.randbytes(16) for _ in range(rng.randint(1, 5))]
        valid = rng.choice([routing.Custody(ids).to_array(),
                            routing.SummaryMsg([(rng.randint(0, 99), 1, ids[0])]).to_array(),
                            routing.IdsMsg(rng.randint(0, 9), ids).to_array()])
        return Frame("router_mutated", [app(self.shapes.pack(self.shapes.mutate(valid)))])

    def _entry(self, ident: Identity, text: str | None = None) -> tuple[int, bytes, bytes]:
        text = text or f"legit {ident.nickname} {self.n}"
        self.n += 1
        signed, sig = ident.envelope(envelope.KIND_ROOM, text.encode())
        entry = (0, signed, sig)
        self.recent = [*self.recent[-15:], entry]
        return entry

    def envs_mutated(self, ident: Identity) -> Frame:
        """A signed envelope, then mutated: its bytes, its fields re-packed, its signature,
        its hops. None of these may be shown."""
        rng = self.rng
        signed, sig = ident.envelope(envelope.KIND_ROOM, f"mutant {self.n}".encode())
        self.n += 1
        how = rng.randrange(4)
        if how == 0:
            signed = self.shapes.mutate(signed)
        elif how == 1:
            fields = msgpack.unpackb(signed)
            signed = self.shapes.pack(self.shapes.mutate(fields))
        elif how == 2:
            sig = self.shapes.mutate(sig)
        entry: list[Any] = [rng.choice([0, 1, 16, 17, -1, 2**64 - 1]) if how == 3 else 0,
                            signed, sig]
        if rng.random() < 0.3:
            entry = self.shapes.mutate(entry)
        return Frame("envs_mutated", [app(self.shapes.pack([0, [entry]]))])

    def envs_forged(self, ident: Identity) -> Frame:
        """Room messages claiming an honest node's key (or the target's), with our
        signature, a random one, or a replayed one."""
        rng = self.rng
        origin = rng.choice([*self.honest_keys, self.target_key])
        signed, sig = ident.envelope(envelope.KIND_ROOM, f"forged {self.n}".encode(),
                                     origin=origin)
        self.n += 1
        if rng.random() < 0.3:
            sig = rng.randbytes(64)
        elif rng.random() < 0.3 and self.recent:
            sig = rng.choice(self.recent)[2]
        return Frame("envs_forged", [app(routing.encode_envs([(0, signed, sig)]))])

    def legit_room(self, ident: Identity) -> Frame:
        return Frame("legit_room", [app(routing.encode_envs([self._entry(ident)]))])

    def legit_dm(self, ident: Identity) -> Frame:
        text = f"legit dm {ident.nickname} {self.n}"
        self.n += 1
        body = envelope.seal_dm(origin=ident.key, text=text, recipient_enc_key=self.target_enc)
        signed, sig = ident.envelope(envelope.KIND_DM, body, to=self.target_key)
        return Frame("legit_dm", [app(routing.encode_envs([(0, signed, sig)]))])

    def bad_dms(self, ident: Identity) -> Frame:
        """DMs to the node whose box is out of bounds, does not open, or names another
        author; signed validly, so only the box is wrong."""
        rng = self.rng
        how = rng.randrange(3)
        if how == 0:
            body = rng.randbytes(rng.choice([0, 1, 47, 48, 200, envelope.MAX_DM_BODY + 1]))
        elif how == 1:
            body = envelope.seal_dm(origin=rng.choice(self.honest_keys), text="not mine",
                                    recipient_enc_key=self.target_enc)
        else:
            inner = self.shapes.pack(self.shapes.mutate({"from": ident.key, "text": "x"}))
            body = nacl.public.SealedBox(nacl.public.PublicKey(self.target_enc)).encrypt(inner)
        try:
            signed, sig = ident.envelope(envelope.KIND_DM, body[: envelope.MAX_BODY],
                                         to=self.target_key)
        except envelope.EnvelopeError:
            return self.router_bytes(ident)
        return Frame("bad_dms", [app(routing.encode_envs([(0, signed, sig)]))])

    def envs_mixed(self, ident: Identity) -> Frame:
        """A legit envelope among bad entries: the bad ones must not poison it."""
        good = self._entry(ident)
        bad = [self.shapes.mutate(list(good)) for _ in range(self.rng.randint(1, 4))]
        entries = [list(good), *bad]
        self.rng.shuffle(entries)
        return Frame("envs_mixed", [app(self.shapes.pack([0, entries]))])

    def duplicates(self, ident: Identity) -> Frame:
        entry = self.rng.choice(self.recent) if self.recent else self._entry(ident)
        body = routing.encode_envs([entry])
        return Frame("duplicates", [app(body)] * self.rng.randint(5, 30))

    def unknown_types(self, ident: Identity) -> Frame:
        rng = self.rng
        msgs = [{"t": rng.choice(["nope", "x" * 40, "\x1b[2J", "App"]), "v": 1, "a": 1},
                {"t": "ping", "v": rng.choice([2, 1.0, True, [1], {"v": 1}, None]), "n": 1}]
        return Frame("unknown_types", [codec.pack(rng.choice(msgs))
                                       for _ in range(rng.randint(1, 10))])

    def keepalive(self, ident: Identity) -> Frame:
        n = self.rng.choice([0, 1, 2**63 - 1])
        return Frame("keepalive", [encode_message(Ping(n=n))] * self.rng.randint(1, 5))

    def rekey_storm(self, ident: Identity) -> Frame:
        return Frame("rekey_storm", [encode_message(Rekey())] * self.rng.randint(5, 40),
                     rekeys=True)

    def other_kind(self, ident: Identity) -> Frame:
        kind = self.rng.choice(["chat", "x", "z" * 32])
        return Frame("other_kind", [app(self.rng.randbytes(self.rng.randint(0, 64)), kind)])

    # -- frames that end the link -----------------------------------------------------------

    def plain_bytes(self, ident: Identity) -> Frame:
        return Frame("plain_bytes", [self.rng.randbytes(self.rng.randint(1, 200))], fatal=True)

    def not_a_map(self, ident: Identity) -> Frame:
        obj = self.shapes.shape()
        if isinstance(obj, dict):
            obj = [obj]
        return Frame("not_a_map", [self.shapes.pack(obj)], fatal=True)

    def t_of_wrong_shape(self, ident: Identity) -> Frame:
        """The frame that killed the link as connection_lost before issue 12."""
        t = self.rng.choice([["app"], [], {"t": "app"}, None, 5, True, 1.5, b"app",
                             [[["close"]]], self.shapes.shape(3)])
        if isinstance(t, str):
            t = [t]
        msg = {"t": t, "v": 1, "kind": "router", "body": b""}
        return Frame("t_of_wrong_shape", [self.shapes.pack(msg)], fatal=True)

    def mutated_link_message(self, ident: Identity) -> Frame:
        """A valid message with fields of the wrong type (never an unknown type or version,
        which are dropped)."""
        rng = self.rng
        valid = rng.choice([
            {"t": "ping", "v": 1, "n": 1}, {"t": "pong", "v": 1, "n": 2},
            {"t": "app", "v": 1, "kind": "router", "body": b"x"},
            {"t": "hello", "v": 1, "versions": [1, 1], "nickname": "x", "caps": ["app/1"]}])
        for _ in range(20):
            m = self.shapes.mutate({k: v for k, v in valid.items() if k not in ("t", "v")})
            if isinstance(m, dict) and m != {k: v for k, v in valid.items()
                                             if k not in ("t", "v")}:
                m.update(t=valid["t"], v=1)
                try:
                    decode_message(self.shapes.pack(m))
                except Exception:  # noqa: BLE001 - it must be refused: that is the point
                    return Frame("mutated_link_message", [self.shapes.pack(m)], fatal=True)
        return self.t_of_wrong_shape(ident)

    def second_hello(self, ident: Identity) -> Frame:
        return Frame("second_hello", [encode_message(Hello(versions=(1, 1), nickname="x"))],
                     fatal=True)

    def odd_close(self, ident: Identity) -> Frame:
        reason = self.rng.choice(["\x1b[2J\x1b]0;owned\x07", "Ünïcode", "x" * 49, ["list"],
                                  None, 7, "UPPER", "ok_code"])
        plain = codec.pack({"t": "close", "v": 1, "reason": reason, "message": "\x1b[31m"})
        return Frame("odd_close", [plain], fatal=True, ours=True)

    def not_a_frame(self, ident: Identity) -> Frame:
        """Bytes on the TCP stream that are no Noise message of ours, then our end of the
        stream (the node cannot know the frame will never complete)."""
        return Frame("not_a_frame", raw=self.rng.randbytes(self.rng.randint(1, 300)),
                     fatal=True, ours=True)

    def undecryptable(self, ident: Identity) -> Frame:
        """A whole frame of the right length, encrypted by nobody (or a replay)."""
        data = self.rng.randbytes(self.rng.randint(1, 200))
        return Frame("undecryptable", raw=len(data).to_bytes(2, "big") + data, fatal=True)

    def empty_frame(self, ident: Identity) -> Frame:
        return Frame("empty_frame", raw=b"\x00\x00", fatal=True)


class _Conn(asyncio.Protocol):
    def __init__(self, link: Link, on_message: Callable[[MessageReceived], None] | None = None
                 ) -> None:
        self.link = link
        self.on_message = on_message
        loop = asyncio.get_running_loop()
        self.verified: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[LinkClosed | None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.received = 0
        #: How the connection ended: ``eof``, or the error (ConnectionResetError: a reset)
        self.lost = ""
        self.started = time.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()

    def flush(self) -> None:
        data = self.link.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.link.receive_data(data, time.monotonic()):
            if isinstance(ev, LinkVerified) and not self.verified.done():
                self.verified.set_result(True)
            elif isinstance(ev, LinkClosed) and not self.closed.done():
                self.closed.set_result(ev)
            else:
                self.received += 1
                if self.on_message is not None and isinstance(ev, MessageReceived):
                    self.on_message(ev)
        self.flush()
        if self.link.closed and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = type(exc).__name__ if exc is not None else "eof"
        if not self.verified.done():
            self.verified.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class FuzzResult:
    frames: int = 0
    sessions: int = 0
    seconds: float = 0.0
    identities: int = 1
    #: Why the node ended each link: its ``close`` reason, by code.
    closes: Counter[str] = field(default_factory=Counter)
    #: Links the node ended without a ``close`` (a bare TCP close after the handshake: the
    #: bug of issue 12), by the label of the frame that ended them.
    no_close: Counter[str] = field(default_factory=Counter)
    #: Each of those: (our address, wall-clock start and end), to find it in ``link.down``.
    no_close_links: list[tuple[str, float, float]] = field(default_factory=list)
    #: Our own side refused what the node sent (never expected), by our code.
    client_refused: Counter[str] = field(default_factory=Counter)
    #: Links we ended ourselves (a ``close``, our end of a broken stream).
    ours: int = 0
    #: Handshakes the node refused (no link), by what we saw.
    refused: Counter[str] = field(default_factory=Counter)
    #: Fatal frames after which the node did not close in time.
    unanswered: Counter[str] = field(default_factory=Counter)
    by_label: Counter[str] = field(default_factory=Counter)
    #: Ids of the envelopes the fuzzer signed honestly, as their origin.
    legit: set[bytes] = field(default_factory=set)
    keys: list[str] = field(default_factory=list)


class FuzzClient:
    def __init__(self, host: str, port: int, target_key: bytes, target_enc: bytes,
                 honest_keys: list[bytes], *, seed: int = 1, source: str = "127.0.0.66",
                 session_frames: int = 400) -> None:
        self.host, self.port, self.source = host, port, source
        self.rng = random.Random(seed)
        self.maker = FrameMaker(self.rng, target_key, target_enc, honest_keys)
        self.session_frames = session_frames
        self.n_ident = seed * 1000
        self.ident = self._new_identity()
        self.result = FuzzResult(keys=[self.ident.key.hex()])

    def _new_identity(self) -> Identity:
        self.n_ident += 1
        return Identity(self.n_ident, self.maker.legit)

    async def run(self, frames: int, seconds: float,
                  progress: Callable[[FuzzResult], None] | None = None) -> FuzzResult:
        start = time.monotonic()
        deadline = start + seconds
        res = self.result
        backoff = 0.05
        last_report = start
        while res.frames < frames and time.monotonic() < deadline:
            outcome = await self.session(min(frames - res.frames, self.session_frames),
                                         deadline)
            if outcome == "ok":
                backoff = 0.05
                continue
            if outcome == "failed":  # no link: wait a little, then try again as someone else
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                if backoff < 0.4:
                    continue
            # banned or blocked (our score), or no link again and again: be someone else
            self.ident = self._new_identity()
            res.identities += 1
            res.keys.append(self.ident.key.hex())
            backoff = 0.05
            if progress is not None and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                progress(res)
        res.seconds = time.monotonic() - start
        res.legit = set(self.maker.legit)
        return res

    async def session(self, budget: int, deadline: float) -> str:
        """One link: handshake, frames until a fatal one (or the budget), then the close.
        ``ok``; ``refused`` when the node refused us (banned, blocked); ``failed`` when no
        link came up."""
        res = self.result
        loop = asyncio.get_running_loop()
        conn = _Conn(self.ident.link())
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                lambda: conn, self.host, self.port, local_addr=(self.source, 0)), 5)
        except (OSError, TimeoutError) as e:
            res.refused[f"connect:{type(e).__name__}"] += 1
            return "failed"
        res.sessions += 1
        try:
            verified = await asyncio.wait_for(asyncio.shield(conn.verified), 5)
        except TimeoutError:
            verified = False
        if not verified:
            closed = conn.closed.result() if conn.closed.done() else None
            res.refused[closed.reason if closed else "no_link"] += 1
            transport.abort()
            return "refused" if closed is not None and closed.reason in REFUSALS else "failed"
        sent = 0
        last = "(between frames)"
        while sent < budget and not conn.closed.done() and time.monotonic() < deadline:
            frame = self.maker.next(self.ident)
            n = self._send(conn, frame)
            sent += n
            res.frames += n
            res.by_label[frame.label] += n
            if frame.ours:  # we ended the link (what we wrote goes first): nothing to wait for
                res.ours += 1
                transport.close()
                return "ok"
            if frame.fatal:
                last = frame.label
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(conn.closed), 3)
                if not conn.closed.done():
                    res.unanswered[frame.label] += 1
                break
            if sent % 16 == 0 or transport.get_write_buffer_size() > 1 << 18:
                await asyncio.sleep(0)  # noqa: sleep-ok - yield to the loop
                while transport.get_write_buffer_size() > 1 << 20 and not conn.closed.done():
                    await asyncio.sleep(0.005)  # noqa: sleep-ok - backpressure pace
        ended = conn.closed.result() if conn.closed.done() else None
        if conn.closed.done() and ended is None:  # the connection ended without a close
            self._no_close(last, conn)
        elif ended is not None and not ended.by_peer:  # our side refused the node's bytes
            res.client_refused[ended.reason] += 1
        elif ended is not None:
            res.closes[ended.reason] += 1
            if ended.reason in REFUSALS:
                transport.abort()
                return "refused"
        else:  # our budget is spent: leave politely
            conn.link.close("goodbye", "fuzz session over", time.monotonic())
            conn.flush()
            await asyncio.sleep(0)  # noqa: sleep-ok - yield: the close is written
        transport.abort()
        return "ok"

    def _no_close(self, label: str, conn: _Conn) -> None:
        res = self.result
        res.no_close[f"{label} ({conn.lost})"] += 1
        sock = conn.transport.get_extra_info("sockname") if conn.transport else None
        if sock:
            res.no_close_links.append((f"{sock[0]}:{sock[1]}", conn.started, time.time()))

    def _send(self, conn: _Conn, frame: Frame) -> int:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return 0
        now = time.monotonic()
        if frame.raw:
            transport.write(frame.raw)
            return 1
        link = conn.link
        for plain in frame.plain:
            link._write_plain(plain, now)  # encrypted as the next frame, whatever it holds
            if frame.rekeys and plain == REKEY:
                assert link._send is not None
                link._send.rekey()
        conn.flush()
        return len(frame.plain)


REKEY = encode_message(Rekey())


# -- against a node ------------------------------------------------------------------------------


@contextlib.contextmanager
def isolated_pair(root: Path | None = None) -> Iterator[tuple[Any, Any]]:
    """Two loopback nodes, ``target`` and ``honest``, linked, that discover only each other:
    their own mDNS service type, so that other nodes on this host's loopback (other tests,
    other people's) never join the mesh under test and its figures."""
    from tests.harness import Node, short_tmp

    root = root or short_tmp("tzfz")
    service = f"_tzf{os.getpid() % 100000}._tcp.local."
    nodes = [Node(root / nick, nick) for nick in ("target", "honest")]
    try:
        for node in nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            (node.home / "tazcom.toml").write_text(
                f'[discovery]\nservice_type = "{service}"\n')
            node.start()
        for node in nodes:
            node.wait_up()
        nodes[0].wait_peer("honest", ("verified",), timeout=20)
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Figures:
    """What a run measured, beside its limits (bench/fuzz_link.py prints these)."""

    result: FuzzResult
    tracebacks: list[str]
    restarts: dict[str, tuple[int | None, int | None]]
    forged: list[Any]
    pss_before: dict[str, int]
    pss_after: dict[str, int]
    #: A new peer and the node exchange room messages after the run.
    chats_after: bool
    #: "peer to target", "target to peer" (a new peer), "honest to target", "target to
    #: honest" (its honest neighbour): was each message shown there.
    delivered: dict[str, bool]
    #: The node's ``link.down`` reason of each link that ended without a ``close`` at our end.
    no_close_node: Counter[str]
    router_dropped: int
    accepted: int
    router_codes: set[str]
    wire_rejected: set[str]

    @property
    def growth_kib(self) -> dict[str, int]:
        return {s: self.pss_after.get(s, 0) - self.pss_before.get(s, 0) for s in self.pss_before}


def service_pss(node: Any, services: tuple[str, ...]) -> dict[str, int]:
    from bench.procstat import pss_kib

    return {s: pss_kib([pid]) for s in services if (pid := node.pid(s)) is not None}


async def fresh_peer_chats(host: str, port: int, target: Any, tap: Any, signed_ids: set[bytes],
                           posts: set[tuple[str, str]], timeout: float = 15.0
                           ) -> dict[str, bool]:
    """A new, well-behaved peer links to ``target``, says something in the room (shown at
    the target?) and the target posts (does its message reach the peer over the link?).
    What each signs goes into ``signed_ids`` and ``posts``."""
    from tests.harness import request

    ident = Identity(0, signed_ids)
    ident.nickname = f"fresh{os.getpid() % 100000}"
    heard: list[str] = []

    def on_message(ev: MessageReceived) -> None:
        with contextlib.suppress(Exception):
            msg = routing.decode(ev.body)
            for _hops, signed, sig in getattr(msg, "entries", ()):
                env = envelope.parse(signed, sig)
                if env.kind == envelope.KIND_ROOM:
                    heard.append(envelope.room_text(env.body))

    loop = asyncio.get_running_loop()
    conn = _Conn(ident.link(), on_message)
    transport, _ = await loop.create_connection(lambda: conn, host, port,
                                                local_addr=("127.0.0.67", 0))
    try:
        if not await asyncio.wait_for(asyncio.shield(conn.verified), 5):
            return {"peer to target": False, "target to peer": False}
        said = f"hello from a fresh peer {os.urandom(4).hex()}"
        signed, sig = ident.envelope(envelope.KIND_ROOM, said.encode())
        conn.link.send_app(routing.KIND, routing.encode_envs([(0, signed, sig)]),
                           time.monotonic())
        conn.flush()
        answer = f"the target answers {os.urandom(4).hex()}"
        posts.add((target.key, answer))
        await loop.run_in_executor(None, lambda: request(
            target, "router", rpc.Post(client_id=os.urandom(16), text=answer), 10))
        shown = False
        end = time.monotonic() + timeout
        while time.monotonic() < end and not (shown and answer in heard):
            shown = any(e.text == said for e in tap.of(ChatMessage.TOPIC))
            conn.link.handle_timer(time.monotonic())  # keepalive
            conn.flush()
            await asyncio.sleep(0.05)  # noqa: sleep-ok - a poll interval under the deadline above
        return {"peer to target": shown, "target to peer": answer in heard}
    finally:
        conn.link.close("goodbye", "done", time.monotonic())
        conn.flush()
        transport.close()


def fuzz_node(target: Any, honest: Any, frames: int, seconds: float, *, seed: int = 1,
              progress: Callable[[FuzzResult], None] | None = None) -> Figures:
    """Fuzz ``target`` (a running ``tests.harness.Node`` linked to ``honest``)."""
    from tests.harness import SERVICES, BusTap, Timeout, request, wait_for

    target_key = bytes.fromhex(target.key)
    honest_key = bytes.fromhex(honest.key)
    enc = bytes.fromhex(request(target, "identity", rpc.GetIdentity()).enc_key)
    port = request(target, "gateway", rpc.GetGatewayInfo()).port
    pids = {s: target.pid(s) for s in SERVICES}
    tap = BusTap(target, "chat.message", "router.dropped", "wire.rejected", "link.down")
    honest_tap = BusTap(honest, "chat.message")
    try:
        before = request(target, "router", rpc.GetRouterStats())
        # a short first run, so lazily compiled code and caches are in before measuring
        warm = FuzzClient("127.0.0.1", port, target_key, enc, [honest_key, target_key],
                          seed=seed + 1000)
        asyncio.run(warm.run(300, 10))
        pss_before = service_pss(target, SERVICES)
        client = FuzzClient("127.0.0.1", port, target_key, enc, [honest_key, target_key],
                            seed=seed)
        result = asyncio.run(client.run(frames, seconds, progress))
        result.legit |= warm.maker.legit
        # the node still chats: with a new peer, and with its honest neighbour (each posts,
        # and each message is shown at the other)
        posts: set[tuple[str, str]] = set()
        fresh = asyncio.run(fresh_peer_chats("127.0.0.1", port, target, tap, result.legit,
                                             posts))
        text = f"still chatting after {result.frames} frames"
        own = f"and answering after {result.frames} frames"
        request(honest, "router", rpc.Post(client_id=os.urandom(16), text=text), timeout=10)
        request(target, "router", rpc.Post(client_id=os.urandom(16), text=own), timeout=10)
        chats = {"honest to target": lambda: any(e.text == text
                                                  for e in tap.of(ChatMessage.TOPIC)),
                 "target to honest": lambda: any(e.text == own
                                                 for e in honest_tap.of(ChatMessage.TOPIC))}
        with contextlib.suppress(Timeout):
            wait_for(lambda: all(f() for f in chats.values()), 15, "messages both ways")
        delivered = {**fresh, **{way: f() for way, f in chats.items()}}
        time.sleep(0.5)  # noqa: sleep-ok - late events of the run reach the tap
        pss_after = service_pss(target, SERVICES)
        stats = request(target, "router", rpc.GetRouterStats(), timeout=30)  # a busy host
        # every message shown is one its origin signed: ours honestly, or the nodes' own
        posts |= {(honest.key, text), (target.key, own)}
        forged = [e for e in tap.of(ChatMessage.TOPIC)
                  if bytes.fromhex(e.id) not in result.legit and (e.origin, e.text) not in posts]
        codes = {e.reason for e in tap.of("router.dropped")}
        wire = {e.reason for e in tap.of("wire.rejected")}
        no_close_node = _node_side(result, tap.arrivals)
    finally:
        tap.close()
        honest_tap.close()
    restarts = {s: (pids[s], target.pid(s)) for s in SERVICES if pids[s] != target.pid(s)}
    return Figures(result=result, tracebacks=target.tracebacks() + honest.tracebacks(),
                   restarts=restarts, forged=forged, pss_before=pss_before,
                   pss_after=pss_after, chats_after=all(fresh.values()),
                   delivered=delivered,
                   router_dropped=stats.dropped - before.dropped, router_codes=codes,
                   accepted=stats.accepted - before.accepted,
                   wire_rejected=wire, no_close_node=no_close_node)


def _node_side(result: FuzzResult, arrivals: list[tuple[float, Any]]) -> Counter[str]:
    """For each link that ended without a ``close`` at our end, the reason of the node's
    ``link.down`` for it: a code (the node closed it with one, and its ``close`` was lost to
    a TCP reset, as we were still sending) or ``connection_lost`` (the node did not close
    it: the bug of issue 12), ``none`` when no event was found."""
    downs: dict[str, list[tuple[float, str]]] = {}
    for at, ev in arrivals:
        if ev.TOPIC == "link.down":
            downs.setdefault(ev.address, []).append((at, ev.reason))
    found: Counter[str] = Counter()
    for address, start, end in result.no_close_links:
        reasons = [r for at, r in downs.get(address, []) if start - 1 <= at <= end + 5]
        found[reasons[0] if reasons else "none"] += 1
    return found


def known_code(reason: str) -> bool:
    """A reason the node may close a fuzzer's link with."""
    return reason in LINK_CODES or reason in REFUSALS
