"""Adversaries for the simulator: a node that floods, and relays that drop or corrupt what
they forward (issue 12: "safe among strangers").

* ``Flooder``: one node originates room messages (and, optionally, DMs) far beyond
  the human rate, with honest timestamps. It is hostile, so its own core's
  outgoing limit is not asked: it builds and signs its envelopes itself and hands
  them to every neighbour it is linked to as a router ``envs`` message. The rest
  of the node (profiles, catch-up, relaying others) is its ordinary core.
* ``BadRelay``: an outgoing filter (``Net.filters``) on a node whose core is
  honest: each ``envs`` frame it sends is, with probability ``tamper``, either
  dropped or corrupted (one byte of each forwarded envelope's signed bytes or
  signature flipped: an invalid envelope), chosen per frame at random (seeded), or
  always the one or the other (``mode``).
  Its own envelopes (its profile) go out untouched, so the mesh still knows it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tazcom.common import envelope, routing
from tazcom.common.errors import RemoteProtocolError
from tazcom.common.routercore import FRAME_BUDGET

from .engine import EPOCH, Net, Node, sealed


@dataclass
class Flooder:
    net: Net
    node: Node
    #: Room messages and DMs per second (DMs to ``victims``, in turn).
    rate: float
    dm_rate: float = 0.0
    victims: list[Node] = field(default_factory=list)
    #: For the DMs' ephemeral keys (the same run makes the same bytes).
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    text_bytes: int = 100
    #: Seconds its timestamps are set back (0: honest; past ``FRESH_S`` they are backlog).
    age: float = 0.0
    #: A tick of the flood: what is due is sent together (one frame per neighbour).
    interval: float = 0.02
    made: int = 0  # envelopes made
    offered: int = 0  # copies handed to neighbours (links up)
    ids: set[bytes] = field(default_factory=set)
    _due: float = 0.0
    _due_dm: float = 0.0
    _end: float = 0.0

    def start(self, duration: float) -> None:
        self._end = self.net.loop.now + duration
        self.net.loop.at(self.net.loop.now, self._tick)

    def _tick(self) -> None:
        net, node = self.net, self.node
        now = net.loop.now
        if now >= self._end or not node.up:
            return
        self._due += self.rate * self.interval
        self._due_dm += self.dm_rate * self.interval
        rooms, dms = int(self._due), int(self._due_dm)
        self._due -= rooms
        self._due_dm -= dms
        entries = self.envelopes(rooms, dms, now)
        if entries:
            linked = [p for p in net.neighbours(node) if net.pair(node, p) in net.link_up]
            for peer in linked:
                for frame in _frames(entries):
                    net.transmit(node, peer.key, routing.encode_envs(frame), now)
                self.offered += len(entries)
        net.loop.at(now + self.interval, self._tick)

    def envelopes(self, rooms: int, dms: int, now: float) -> list[tuple[int, bytes, bytes]]:
        """Signed by the flooder, stamped now (honest timestamps) or ``age`` earlier; its own
        core marks them seen, so copies that come back are duplicates to it."""
        node, store = self.node, self.node.store
        ts = int((EPOCH + now - self.age) * 1000)
        specs: list[tuple[int, bytes | None, bytes]] = []
        for _ in range(rooms):
            specs.append((envelope.KIND_ROOM, None,
                          envelope.room_body(f"flood {self.made + len(specs)} ".ljust(
                              self.text_bytes, "x"))))
        for _ in range(dms if self.victims else 0):
            victim = self.victims[(self.made + len(specs)) % len(self.victims)]
            specs.append((envelope.KIND_DM, victim.key, sealed(
                envelope.dm_plaintext(origin=node.key, text="x" * self.text_bytes),
                bytes(victim.box.public_key), self.rng.randbytes(32))))
        signed = []
        for kind, to, body in specs:
            signed.append(envelope.signed_bytes(kind=kind, origin=node.key, seq=store.seq,
                                                ts=ts, to=to, body=body))
            store.seq += 1
        sigs = self.net.sign(node, signed)
        for sb in signed:
            msg_id = envelope.message_id(sb)
            self.ids.add(msg_id)
            node.core.seen.add(msg_id, EPOCH + now)
        self.made += len(signed)
        return [(0, sb, sig) for sb, sig in zip(signed, sigs, strict=True)]


def _frames(entries: list[tuple[int, bytes, bytes]]) -> list[list[tuple[int, bytes, bytes]]]:
    """Entries packed into frames as the core packs them (``send_entries``)."""
    frames: list[list[tuple[int, bytes, bytes]]] = [[]]
    size = 0
    for entry in entries:
        n = len(entry[1]) + 80
        if frames[-1] and (size + n > FRAME_BUDGET or len(frames[-1]) >= routing.MAX_ENVS):
            frames.append([])
            size = 0
        frames[-1].append(entry)
        size += n
    return frames


@dataclass
class BadRelay:
    """``Net.filters[i]`` of a relay that drops or corrupts what it forwards."""

    rng: random.Random
    tamper: float = 1.0
    #: ``either`` (drop or corrupt, at random per frame), ``drop`` or ``corrupt``.
    mode: str = "either"
    dropped: int = 0  # envelopes
    corrupted: int = 0

    def __call__(self, node: Node, _to: bytes, body: bytes) -> bytes | None:
        try:
            msg = routing.decode(body)
        except RemoteProtocolError:
            return body
        if not isinstance(msg, routing.Envs) or self.rng.random() >= self.tamper:
            return body
        own = [e for e in msg.entries if _origin(e[1]) == node.key]
        forwarded = [e for e in msg.entries if _origin(e[1]) != node.key]
        if not forwarded:
            return body
        if self.mode == "drop" or (self.mode == "either" and self.rng.random() < 0.5):
            self.dropped += len(forwarded)
            return routing.encode_envs(own) if own else None
        self.corrupted += len(forwarded)
        return routing.encode_envs(own + [self._corrupt(e) for e in forwarded])

    def _corrupt(self, entry: tuple[int, bytes, bytes]) -> tuple[int, bytes, bytes]:
        hops, signed, sig = entry
        if self.rng.random() < 0.5:
            return hops, _flip(signed, self.rng), sig
        return hops, signed, _flip(sig, self.rng)


def _flip(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ rng.randrange(1, 256)]) + data[i + 1:]


def _origin(signed: bytes) -> bytes | None:
    try:
        return envelope.parse(signed, bytes(64)).origin
    except envelope.EnvelopeError:
        return None
