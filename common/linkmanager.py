"""The gateway's decisions, sans-IO: connections, bytes, peers and ``now`` in; actions out.

Theory of operation (docs/protocol.md §9, "Links between nodes")
-----------------------------------------------------------------
``LinkManager`` owns every ``common.link.Link`` of one gateway and decides
everything about them; the gateway service (``services/gateway.py``) only
moves bytes, runs timers and dials. Each input returns a list of actions for
the shell to carry out, in order:

* ``Send`` bytes on a connection, ``CloseConnection`` (after the bytes sent so
  far), ``SetTimer`` (call ``link_timer``/``dial_timer`` back at a time);
* ``Dial`` an address (the result comes back as ``connection_made`` or
  ``dial_failed``);
* ``Emit`` a bus event, ``ToRouter`` (an ``app`` message for the router),
  ``SavePins``;
* ``Refused``: an input the core would not take (unknown connection, a value of
  the wrong type, a request it refuses), with its reject code. The core never
  raises on bad input.

What it decides:

1. Admission (``connection_made``): an inbound connection is refused
   (``too_many_links``, ``too_many_handshakes``) while the links (open, in
   handshake, or being dialled) are at ``max_links``, the handshakes in
   progress at ``max_handshakes``, or those from its address at
   ``max_handshakes_per_address``.
2. One link per pair (``prefer``): of two verified links to one peer, both
   ends keep the one dialled by the lower key; when one side dialled both, the
   one with the lower Noise handshake hash (the same at both ends). The other
   is closed with ``duplicate``.
3. Trust on first use (``common.pins``): a key that differs from those pinned
   for its nickname is refused (``key_changed``, ``peer.key_changed``) and not
   dialled until trusted.
4. Dialling: a peer with addresses is dialled unless a link to it exists or is
   being made; the higher key of a pair waits ``DIAL_DEFER``; failures back off
   from ``BACKOFF_MIN`` to ``BACKOFF_MAX``; a link that lasted ``STABLE_LINK``
   is redialled at once when it drops. Only addresses on our own networks are
   dialled, from our address on that network, one at a time: IPv4 first, then
   global IPv6, then link-local IPv6 (IPv6 first with ``prefer_ipv6``); a
   dual-stack peer still ends with one link (2.).
5. What a closed link says: ``link.down`` carries a reject code (a peer's
   ``close`` reason that is not a reject code becomes ``bad_close``, logged once with
   the peer's value escaped; a well-formed code we do not know, ``unknown_reason``;
   text from a peer is bounded and printable), and ``wire.rejected`` is published once per
   (address, reason): per peer IP address, as the source port of an inbound
   connection is new with every connection.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import routing, rpc
from .addresses import LocalNetwork, local_for, ordered, split_address
from .clock import MAX_OFFSET as CLOCK_OFFSET_MAX
from .errors import TazcomError
from .events import (
    Event,
    LinkDown,
    LinkMessage,
    LinkUp,
    PeerKeyChanged,
    PeerTrusted,
    PeerVerified,
    WireRejected,
)
from .filewire import KIND as FILE_KIND
from .keys import fingerprint
from .limits import APP_BODY_MAX, KIND_MAX, PART_BODY_MAX, UNIX_TIME_MAX
from .link import (
    BAD_CLOSE,
    PART_CAP,
    Link,
    LinkClosed,
    LinkLimits,
    LinkVerified,
    MessageDropped,
    MessageReceived,
)
from .mirror import Numbering
from .peerexchange import CAP as PX_CAP
from .peerexchange import KIND as PX_KIND
from .pins import Pins
from .rejects import RejectLog

MAX_HANDSHAKES = 64
MAX_HANDSHAKES_PER_ADDRESS = 8
MAX_LINKS = 256
#: A peer that does not read: bytes waiting to be sent to it before the link is closed.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
#: Bulk messages (file chunks) are written only while the socket takes them: in bursts of
#: this many bytes, and not while the transport holds more than this unsent (the gateway
#: pauses us there, and TCP_NOTSENT_LOWAT bounds what the kernel holds). A chat message
#: written meanwhile waits behind at most this much bulk, not behind a whole file.
BULK_HIGH = 16 * 1024
#: Bulk bytes queued per link at most; beyond, ``queue`` answers ``busy`` (the sender's
#: window of outstanding chunks keeps it far under).
BULK_QUEUE_MAX = 4 * 1024 * 1024
DIAL_TIMEOUT = 3.0
#: The higher key of a pair waits this long before dialling, so simultaneous
#: dials (and the duplicate that one of them must then close) are rare.
DIAL_DEFER = 1.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: A link verified this long ago counts as having worked: redial at once if it drops.
STABLE_LINK = 10.0
#: Jitter added to a quick redial, so two nodes that lost each other do not redial in step.
REDIAL_JITTER = 0.2
#: Hello ``caps`` (docs/protocol.md §9, "Link messages"): we take ``app`` messages, v1, and
#: envelopes of version 2 (a node that does not say ``env/2`` is sent version 1 only).
#: ``file/1``: reads file manifests (envelope kind 6) and carries ``file`` messages.
#: ``group/1``: reads private-group envelopes (kinds 7 and 8, common/routergroups.py).
#: ``part/1``: takes a bulk message in ``part`` messages (common/link.py).
CAPS = ("app/1", "env/2", PX_CAP, "file/1", PART_CAP, "group/1")
#: The reason of our normal close (the gateway stops).
GOODBYE = "goodbye"
#: A peer's ``close`` reason that is not a reject code we know.
UNKNOWN_REASON = "unknown_reason"
#: Closes that are not the peer's fault, so no wire.rejected (``shutdown``: older goodbye).
ORDINARY_CLOSES = frozenset({"duplicate", GOODBYE, "shutdown", "timeout", "connection_lost"})
#: Every reject code a link can be closed or refused with (docs/protocol.md §8).
LINK_CODES = ORDINARY_CLOSES | frozenset({
    "bad_frame", "bad_handshake", "decrypt_failed", "nonce_exhausted", "bad_signature",
    "wrong_key", "own_key", "unsupported_version", "bad_state", "bad_message", "bad_encoding",
    "bad_version", "too_large", "unknown_type", "handshake_timeout", "slow_sender",
    "rate_limited", "slow_reader", "too_many_handshakes", "too_many_links", "key_changed",
    "blocked", "banned",
    UNKNOWN_REASON, BAD_CLOSE,
})
MAX_REASON = 48
MAX_DETAIL = 200


# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` on connection ``conn``."""

    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close connection ``conn`` once what was sent on it is written; forget it."""

    conn: int


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``link_timer(conn)`` (``conn`` None: ``dial_timer``) at ``at``; None: never.

    Calling back earlier is harmless: the core answers with the next ``SetTimer``.
    """

    conn: int | None
    at: float | None


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a TCP connection to ``host:port`` from ``local_ip``, giving up after ``timeout``.

    ``host`` and ``local_ip`` are IP addresses as text; a link-local IPv6 one carries the
    scope (``fe80::1%eth0``) of our interface it is reached through."""

    key: bytes
    address: str
    host: str
    port: int
    local_ip: str
    timeout: float = DIAL_TIMEOUT


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish the bus event ``event`` with ``fields``."""

    event: type[Event]
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToRouter:
    """``app`` messages of kind ``router`` (``file``: of kind ``file``, for the router's
    file service) from the verified peer ``key``, in order."""

    key: bytes
    bodies: list[bytes]
    file: bool = False


@dataclass(frozen=True, slots=True)
class WantWrite:
    """Bulk waits on link ``conn``, or a burst of it was just written: call ``write_more``
    soon (once this batch of writes is done; the shell may hold it back, by
    ``write_paused``, while the kernel's queue drains); a paused transport is resumed by
    ``write_resumed`` instead."""

    conn: int


@dataclass(frozen=True, slots=True)
class Exchange:
    """A peer-exchange message (kind ``px``) from the verified peer ``key``: the gateway's
    own (common/peerexchange.py), never published."""

    key: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class SavePins:
    """Persist the pins (``Pins.dump()``) to ``pins.json``: at once when ``urgent`` (the
    user's trust or untrust, answered only once written), else within a second."""

    data: dict[str, Any]
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The input was not taken; ``reason`` is a reject code (a request's error code)."""

    reason: str
    detail: str = ""


Action = (Send | CloseConnection | SetTimer | Dial | Emit | ToRouter | Exchange | SavePins
          | WantWrite | Refused)


# -- state --------------------------------------------------------------------------------


@dataclass(slots=True)
class PeerDial:
    """What the dialler knows of one peer."""

    addresses: tuple[str, ...] = ()
    nickname: str = ""
    next_attempt: float = 0.0
    backoff: float = BACKOFF_MIN
    #: While a dial is under way: the addresses still to try after the current one.
    dialling: list[str] | None = None
    #: Key-change alert: never dialled until trusted.
    blocked: bool = False


@dataclass(slots=True, eq=False)
class Conn:
    """One TCP connection and its link."""

    id: int
    direction: str
    address: str
    host: str
    link: Link
    opened: float
    #: The proven key, once verified and kept (not refused, not a duplicate).
    key: bytes | None = None
    verified_at: float | None = None
    handshake_hash: bytes = b""
    #: Counted among the handshakes in progress.
    handshaking: bool = True
    #: Bulk ``app`` messages (kind, body, None) not yet encrypted: encrypted when written,
    #: so chat queued later still goes first. To a peer that said ``part/1`` one over
    #: PART_BODY_MAX is queued as its ``part`` messages (kind, piece, last), written one
    #: burst each, so chat goes between them too.
    bulk: deque[tuple[str, bytes, bool | None]] = field(default_factory=deque)
    bulk_bytes: int = 0
    #: The transport holds over BULK_HIGH unsent: no bulk until it drains.
    write_paused: bool = False


@dataclass(frozen=True, slots=True)
class Identity:
    """What a link needs of this node: its key, and a Noise static key bound to it."""

    key: bytes
    static_private: bytes
    static_sig: bytes


def printable(text: Any, limit: int) -> str:
    """``text`` as at most ``limit`` printable characters (from a peer: never trusted)."""
    s = text if isinstance(text, str) else repr(text)
    s = s[: limit * 2]
    return "".join(ch if ch.isprintable() else "?" for ch in s)[:limit]


def _key(value: Any) -> bytes | None:
    """A 32-byte key from bytes or 64 hex characters, else None."""
    if type(value) is bytes:
        return value if len(value) == 32 else None
    if type(value) is str and len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            return None
    return None


def _good_nickname(nickname: Any) -> bool:
    return type(nickname) is str and nickname.isprintable() \
        and 1 <= len(nickname.encode("utf-8", "replace")) <= 32


def _offset(value: float | None) -> float | None:
    """A hello's clock offset as ``peer.verified`` carries it (None: unsaid or absurd)."""
    return value if value is not None and math.isfinite(value) \
        and abs(value) <= CLOCK_OFFSET_MAX else None


def _good_now(now: Any) -> bool:
    return (type(now) is float or type(now) is int) and math.isfinite(now)


class LinkManager:
    """Every link of one gateway and every decision about them. Pure: time arrives as ``now``."""

    def __init__(
        self, *, networks: Sequence[LocalNetwork | ipaddress.IPv4Interface
                                    | ipaddress.IPv6Interface | str] = (),
        numbering: Numbering | None = None, nickname: str = "node",
        limits: LinkLimits | None = None, log: logging.Logger | None = None,
        rng: random.Random | None = None, max_links: int = MAX_LINKS,
        max_handshakes: int = MAX_HANDSHAKES,
        max_handshakes_per_address: int = MAX_HANDSHAKES_PER_ADDRESS,
        ephemeral: Callable[[], bytes] | None = None, prefer_ipv6: bool = False,
    ) -> None:
        #: Our addresses and their networks: only peers on them are dialled.
        self.networks = [LocalNetwork.of(n) for n in networks]
        #: Dial a peer's IPv6 addresses before its IPv4 ones (default: IPv4 first).
        self.prefer_ipv6 = prefer_ipv6
        self.numbering = numbering or Numbering(1)
        self.nickname = nickname
        self.limits = limits or LinkLimits()
        self.log = log or logging.getLogger("tazcom.linkmanager")
        self.rejects = RejectLog(self.log)
        self.rng = rng or random.Random()
        self.max_links = max_links
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        #: Where Noise ephemeral keys come from: the OS's CSPRNG (None), or, in tests and
        #: the simulator only, a seeded source so that a run can be replayed.
        self.ephemeral = ephemeral
        self.identity: Identity | None = None
        self.pins = Pins()
        self._saved_pins: dict[str, Any] | None = None
        self._saved_changes = 0
        self.conns: dict[int, Conn] = {}
        #: The one kept link of each verified peer.
        self.verified: dict[bytes, Conn] = {}
        self.peers: dict[bytes, PeerDial] = {}
        self._dialling: set[bytes] = set()
        self._handshakes_by_host: Counter[str] = Counter()
        self._handshakes = 0
        self._next_id = 1
        #: Links closed so far: an input that closed one plans the dials again.
        self._closes = 0
        #: Links with bytes queued by ``queue`` but not yet flushed.
        self._dirty: dict[int, Conn] = {}
        #: Keys the router's policy table refuses: ``blocked`` (until None) or ``banned``
        #: until a time (``now``'s clock).
        self.refused: dict[bytes, tuple[str, float | None]] = {}

    # -- set-up ------------------------------------------------------------------------

    def set_identity(self, key: bytes, static_private: bytes, static_sig: bytes,
                     nickname: str) -> list[Action]:
        """Our key and Noise static key (from the identity service); needed before any link."""
        if type(key) is not bytes or len(key) != 32 or type(static_private) is not bytes \
                or len(static_private) != 32 or type(static_sig) is not bytes \
                or len(static_sig) != 64:
            return [Refused("bad_message", "identity: a 32-byte key and static key, 64-byte sig")]
        refused = self.set_nickname(nickname)
        if refused:
            return refused
        self.identity = Identity(key, static_private, static_sig)
        self.peers.pop(key, None)
        return []

    def set_nickname(self, nickname: str) -> list[Action]:
        """Our nickname, said in the HELLO of every new link."""
        if not _good_nickname(nickname):
            return [Refused("bad_message", "a nickname is 1..32 bytes of printable UTF-8")]
        self.nickname = nickname
        return []

    def load_pins(self, data: Any) -> str | None:
        """Take the content of ``pins.json``; returns why it is unusable, or None."""
        pins = Pins()
        try:
            pins.load(data)
        except (ValueError, TypeError, AttributeError) as e:
            return str(e) or type(e).__name__
        self.pins = pins
        self._saved_pins = pins.dump()
        self._saved_changes = pins.changes
        return None

    # -- connections -------------------------------------------------------------------

    def admit(self, host: str) -> str | None:
        """Reason to refuse an inbound connection from ``host`` now, or None."""
        if type(host) is not str:
            return "bad_message"
        if len(self.conns) + len(self._dialling) >= self.max_links:
            return "too_many_links"
        if self._handshakes >= self.max_handshakes:
            return "too_many_handshakes"
        if self._handshakes_by_host[host] >= self.max_handshakes_per_address:
            return "too_many_handshakes"
        return None

    def connection_made(self, direction: str, address: str, now: float,
                        key: bytes | None = None) -> tuple[int | None, list[Action]]:
        """A TCP connection is up: ``out`` to ``key`` at ``address`` (which we dialled), or
        ``in`` from ``address``. Returns its id, or None when refused (the shell aborts it)."""
        parsed = split_address(address)
        if direction not in ("in", "out") or parsed is None or not _good_now(now) or (
                key is not None and _key(key) is None) or (direction == "in" and key is not None):
            return None, [Refused("bad_message", "connection: direction in/out, an a.b.c.d:port "
                                  "or [v6]:port address, a finite now, a 32-byte key for "
                                  "out only")]
        if self.identity is None:
            return None, [Refused("bad_state", "no identity yet")]
        host = parsed[0]
        actions: list[Action] = []
        if direction == "out" and key in self._dialling:
            self._dialling.discard(key)  # this dial's slot becomes the link's
            self.peers[key].dialling = None
        else:
            refused = self.admit(host)
            if refused is not None:
                self._reject(address, refused, "connection refused at accept", None, actions)
                return None, actions
        ident = self.identity
        link = Link(initiator=direction == "out", identity_key=ident.key,
                    static_private=ident.static_private, static_sig=ident.static_sig,
                    nickname=self.nickname, now=now, expected_key=key, caps=CAPS,
                    limits=self.limits,
                    ephemeral_private=self.ephemeral() if self.ephemeral else None)
        conn = Conn(id=self._next_id, direction=direction, address=address, host=host,
                    link=link, opened=now)
        self._next_id += 1
        self.conns[conn.id] = conn
        self._handshakes += 1
        self._handshakes_by_host[host] += 1
        self._emit_link(actions, LinkUp, link=conn.id, address=address, direction=direction,
                        key=key.hex() if key else None,
                        peer_state=self.peer_state(key) if key else "connected")
        self._flush(conn, actions)
        if direction == "out":
            self._schedule(now, actions)
        return conn.id, actions

    def data_received(self, conn: int, data: bytes, now: float,
                      wall: float | None = None) -> list[Action]:
        """Bytes arrived on connection ``conn``; ``wall``: our wall clock (unix s), said in
        our hello and compared with the peer's (``peer.verified``'s ``clock_offset``)."""
        c = self.conns.get(conn) if type(conn) is int else None
        if c is None or type(data) is not bytes or not _good_now(now):
            return [Refused("bad_message" if c else "no_link", "data for no open connection")]
        actions: list[Action] = []
        events = c.link.receive_data(data, now, wall)
        if events:
            closes = self._closes
            self._link_events(c, events, now, actions)
            if self._closes != closes:
                self._schedule(now, actions)
        if c.id in self.conns:
            self._flush(c, actions)
        return actions

    def link_timer(self, conn: int, now: float) -> list[Action]:
        """A link's timer (``SetTimer(conn, ...)``) is due."""
        c = self.conns.get(conn) if type(conn) is int else None
        if c is None or not _good_now(now):
            return [Refused("bad_message" if c else "no_link", "timer of no open connection")]
        actions: list[Action] = []
        events = c.link.handle_timer(now)
        if events:
            self._link_events(c, events, now, actions)
            self._schedule(now, actions)
        if c.id in self.conns:
            self._flush(c, actions)
        return actions

    def connection_lost(self, conn: int, now: float) -> list[Action]:
        """The TCP connection ended (by the peer, or after our ``CloseConnection``)."""
        c = self.conns.get(conn) if type(conn) is int else None
        if c is None or not _good_now(now):
            return []  # already finished: we closed it
        closed = c.link.close("connection_lost", "the TCP connection ended", now)
        c.link.data_to_send()  # nowhere to send it
        actions: list[Action] = []
        self._finish(c, closed, now, actions, send=False)
        self._schedule(now, actions)
        return actions

    def write_blocked(self, conn: int, now: float) -> list[Action]:
        """Over ``MAX_WRITE_BUFFER`` bytes wait to be sent on ``conn``: the peer does not read."""
        return self.close(conn, "slow_reader", "the peer does not read what we send", now)

    def write_paused(self, conn: int) -> None:
        """The transport of ``conn`` holds over BULK_HIGH unsent bytes: hold bulk back."""
        c = self.conns.get(conn) if type(conn) is int else None
        if c is not None:
            c.write_paused = True

    def write_resumed(self, conn: int) -> list[Action]:
        """The transport of ``conn`` drained after a pause: the next burst of bulk."""
        c = self.conns.get(conn) if type(conn) is int else None
        if c is None:
            return []
        c.write_paused = False
        return self.write_more(conn)

    def write_more(self, conn: int) -> list[Action]:
        """``WantWrite``'s answer: the next burst of bulk, unless the transport is paused
        (then ``write_resumed`` comes once it drains)."""
        c = self.conns.get(conn) if type(conn) is int else None
        actions: list[Action] = []
        if c is not None and c.bulk and not c.write_paused:
            self._flush(c, actions)
        return actions

    def close(self, conn: int, reason: str, detail: str, now: float) -> list[Action]:
        """Close one link from our side with reject code ``reason``."""
        c = self.conns.get(conn) if type(conn) is int else None
        if c is None or not _good_now(now) or reason not in LINK_CODES:
            return [Refused("bad_message" if c else "no_link", "close of no open connection")]
        actions: list[Action] = []
        self._finish(c, c.link.close(reason, printable(detail, MAX_DETAIL), now), now, actions)
        self._schedule(now, actions)
        return actions

    def close_all(self, now: float) -> list[Action]:
        """The gateway stops: say goodbye on every link."""
        if not _good_now(now):
            return [Refused("bad_message", "now must be a finite number")]
        actions: list[Action] = []
        for c in list(self.conns.values()):
            self._finish(c, c.link.close(GOODBYE, "the gateway is stopping", now), now, actions)
        for key in self._dialling:
            self.peers[key].dialling = None
        self._dialling.clear()
        actions.append(SetTimer(None, None))
        return actions

    # -- what a link says ----------------------------------------------------------------

    def _link_events(self, c: Conn, events: list, now: float, actions: list[Action]) -> None:
        router: list[bytes] | None = None  # one action per read: the hot path
        for ev in events:
            t = type(ev)
            if t is MessageReceived:
                if c.key is None:
                    continue  # a link we refused; its last frames are dropped
                if ev.kind == routing.KIND:
                    if router is None:
                        router = []
                        actions.append(ToRouter(c.key, router))
                    router.append(ev.body)
                elif ev.kind == FILE_KIND:
                    actions.append(ToRouter(c.key, [ev.body], file=True))
                elif ev.kind == PX_KIND:
                    actions.append(Exchange(c.key, ev.body))
                else:
                    actions.append(Emit(LinkMessage, {"key": c.key.hex(), "kind": ev.kind,
                                                      "body": ev.body}))
            elif t is LinkVerified:
                self._verified(c, ev, now, actions)
            elif t is MessageDropped:
                self.rejects.reject(f"peer {c.host}", ev.reason, f"{ev.detail} [{c.address}]")
            elif t is LinkClosed:
                self._finish(c, ev, now, actions)

    def _handshake_over(self, c: Conn) -> None:
        if c.handshaking:
            c.handshaking = False
            self._handshakes -= 1
            self._handshakes_by_host[c.host] -= 1
            if not self._handshakes_by_host[c.host]:
                del self._handshakes_by_host[c.host]

    def _verified(self, c: Conn, ev: LinkVerified, now: float, actions: list[Action]) -> None:
        self._handshake_over(c)
        c.handshake_hash = ev.handshake_hash
        changed = self.pins.check(ev.nickname, ev.key)
        if changed is not None:
            alert = printable(changed.describe(), MAX_DETAIL)
            actions.append(Emit(PeerKeyChanged, {
                "key": ev.key.hex(), "nickname": ev.nickname,
                "pinned": tuple(k.hex() for k in changed.pinned)[:64],
                "address": c.address, "alert": alert}))
            self.peers.setdefault(ev.key, PeerDial()).blocked = True
            self._finish(c, c.link.close("key_changed", alert, now), now, actions)
            return
        refusal = self.refusal(ev.key, now)
        if refusal is not None:
            self._finish(c, c.link.close(refusal, f"{refusal} by this node", now), now, actions)
            return
        if self.pins.changes != self._saved_changes:  # check() pins on first use: save it
            self._saved_changes = self.pins.changes
            self._saved_pins = self.pins.dump()
            actions.append(SavePins(self._saved_pins))
        existing = self.verified.get(ev.key)
        drop: Conn | None = None
        if existing is not None and existing is not c:
            keep, drop = self.prefer(existing, c, ev.key)
            if keep is existing:
                self._finish(c, c.link.close("duplicate", "already linked to this peer", now),
                             now, actions)
                return
        c.key = ev.key
        c.verified_at = now
        self.verified[ev.key] = c
        self.log.info("link %d %s %s verified: %s (%s), version %d", c.id,
                      "to" if c.direction == "out" else "from", c.address,
                      printable(ev.nickname, 32), fingerprint(ev.key), ev.version)
        self._emit_link(actions, PeerVerified, link=c.id, key=ev.key.hex(),
                        nickname=ev.nickname, address=c.address, direction=c.direction,
                        version=ev.version, caps=ev.caps, clock_offset=_offset(ev.clock_offset))
        if drop is not None:  # after the new link is in place, so the peer never looks unlinked
            self._finish(drop, drop.link.close("duplicate", "already linked to this peer", now),
                         now, actions)

    def prefer(self, a: Conn, b: Conn, key: bytes) -> tuple[Conn, Conn]:
        """Of two verified links to the peer ``key``, ``(kept, dropped)``, the same at both ends.

        The link dialled by the lower key is kept. When the same side dialled both, the one
        with the lower Noise handshake hash, which both ends share, is kept.
        """
        assert self.identity is not None
        wanted = "out" if self.identity.key < key else "in"
        if a.direction != b.direction:
            return (a, b) if a.direction == wanted else (b, a)
        return (a, b) if a.handshake_hash <= b.handshake_hash else (b, a)

    def _finish(self, c: Conn, closed: LinkClosed, now: float, actions: list[Action],
                send: bool = True) -> None:
        """The link of ``c`` closed: forget it, say so, and plan the redial."""
        if self.conns.pop(c.id, None) is None:
            return
        self._closes += 1
        self._dirty.pop(c.id, None)
        self._handshake_over(c)
        if send:
            data = c.link.data_to_send()
            if data:
                actions.append(Send(c.id, data))
        actions.append(CloseConnection(c.id))
        key = c.key or c.link.peer_key or c.link.expected_key
        if c.key is not None and self.verified.get(c.key) is c:
            del self.verified[c.key]
        reason, detail = closed.reason, printable(closed.detail, MAX_DETAIL)
        if closed.by_peer and reason not in LINK_CODES:
            detail = printable(f"{printable(reason, MAX_REASON)}: {detail}", MAX_DETAIL)
            reason = UNKNOWN_REASON
        if reason == BAD_CLOSE and closed.by_peer:  # the peer's reason, escaped, logged once
            self.rejects.reject(f"peer {c.host}", reason, f"{detail} [{c.address}]")
        elif reason not in ORDINARY_CLOSES:
            if closed.by_peer:  # the peer refused us (e.g. unsupported_version): say so, once
                self.rejects.reject(f"peer {c.host}", f"refused_by_peer:{reason}",
                                    f"{detail} [{c.address}]")
            else:
                self._reject(c.address, reason, detail, c.link.peer_key, actions)
        if c.key is not None:
            self.log.info("link %d %s closed: %s%s", c.id, c.address, reason,
                          " (by the peer)" if closed.by_peer else "")
        self._emit_link(actions, LinkDown, link=c.id, address=c.address,
                        direction=c.direction, key=key.hex() if key else None, reason=reason,
                        detail=detail, by_peer=closed.by_peer, peer_state=self.peer_state(key))
        dial = self.peers.get(key) if key is not None else None
        if dial is not None and not dial.blocked:
            if c.verified_at is not None and now - c.verified_at >= STABLE_LINK:
                # a link that had worked for a while ended: come back quickly
                dial.backoff = BACKOFF_MIN
                dial.next_attempt = now + self.defer(key) \
                    + self.rng.uniform(0, REDIAL_JITTER)  # type: ignore[arg-type]
            else:  # refused or short-lived: back off, so a broken pair cannot storm
                dial.next_attempt = max(dial.next_attempt, now + dial.backoff)
                dial.backoff = min(BACKOFF_MAX, dial.backoff * 2)

    def _reject(self, address: str, reason: str, detail: str, key: bytes | None,
                actions: list[Action]) -> None:
        """Log and publish a refused peer, once per (IP address, reason)."""
        host = address.rpartition(":")[0]
        who = f" ({fingerprint(key)})" if key else ""
        if self.rejects.reject(f"peer {host}", reason, f"{detail} [{address}]{who}"):
            actions.append(Emit(WireRejected, {
                "address": address[:64], "reason": reason[:MAX_REASON],
                "detail": printable(detail, MAX_DETAIL), "key": key.hex() if key else None}))

    def _flush(self, c: Conn, actions: list[Action]) -> None:
        data, burst = c.link.data_to_send(), b""
        if c.bulk and not c.write_paused and c.link.is_open:
            burst = self._bulk_burst(c)
        if data or burst:
            actions.append(Send(c.id, data + burst if burst else data))
        if (c.bulk or burst) and c.link.is_open:
            actions.append(WantWrite(c.id))
        actions.append(SetTimer(c.id, c.link.next_deadline()))

    def _bulk_burst(self, c: Conn) -> bytes:
        """Encrypt up to BULK_HIGH bytes of ``c``'s bulk, behind whatever was queued."""
        now, budget, out = c.link.last_sent, BULK_HIGH, []
        while c.bulk and budget > 0:
            kind, body, last = c.bulk.popleft()
            c.bulk_bytes -= len(body)
            budget -= len(body)
            try:
                if last is None:
                    c.link.send_app(kind, body, now)
                else:
                    c.link.send_part(kind, body, last, now)
            except TazcomError as e:  # a kind the schema refuses: that message only
                self.rejects.reject("gateway", e.code, f"bulk {kind!r}: {e.message}")
                while last is False and c.bulk:  # and the rest of its parts
                    _, rest, last = c.bulk.popleft()
                    c.bulk_bytes -= len(rest)
                continue
            out.append(c.link.data_to_send())
        return b"".join(out)

    def _emit_link(self, actions: list[Action], cls: type[Event], **fields: Any) -> None:
        """A change of the link table (link.up, peer.verified, link.down), numbered."""
        fields["epoch"] = self.numbering.epoch
        fields["seq"] = self.numbering.next()
        actions.append(Emit(cls, fields))

    def peer_state(self, key: bytes | None) -> str:
        """``verified``, ``connected`` (a link we dialled is in its handshake) or ``none``."""
        if type(key) is not bytes:
            return "none"
        if key in self.verified:
            return "verified"
        if any(c.link.expected_key == key and not c.link.closed for c in self.conns.values()):
            return "connected"
        return "none"

    # -- sending -------------------------------------------------------------------------

    def queue(self, key: bytes, kind: str, body: bytes, now: float, *,
              bulk: bool = False) -> str | None:
        """Queue an ``app`` message to the verified peer ``key``; ``flush()`` sends it.
        A ``bulk`` one (a file chunk) is sent after everything else queued on that link,
        and only as fast as the socket takes it (docs/files.md, "Priorities on a link").

        Returns the reject code when it cannot be sent (``no_link``, ``too_large``;
        ``busy`` when the link's bulk queue is full).
        """
        c = self.verified.get(key) if type(key) is bytes else None
        if c is None or not c.link.is_open:
            return "no_link"
        if not _good_now(now):
            return "bad_message"
        if bulk:
            if type(kind) is not str or type(body) is not bytes or len(body) > APP_BODY_MAX \
                    or not 0 < len(kind.encode()) <= KIND_MAX:
                return "too_large"
            if c.bulk_bytes + len(body) > BULK_QUEUE_MAX:
                return "busy"
            n = len(body)
            if n > PART_BODY_MAX and PART_CAP in c.link.peer_caps:
                c.bulk.extend((kind, body[i : i + PART_BODY_MAX], i + PART_BODY_MAX >= n)
                              for i in range(0, n, PART_BODY_MAX))
            else:
                c.bulk.append((kind, body, None))
            c.bulk_bytes += n
            self._dirty[c.id] = c
            return None
        try:
            c.link.send_app(kind, body, now)
        except TazcomError as e:
            return e.code
        self._dirty[c.id] = c
        return None

    def flush(self) -> list[Action]:
        """The bytes of every link written to by ``queue`` since the last flush."""
        actions: list[Action] = []
        for c in self._dirty.values():
            self._flush(c, actions)
        self._dirty.clear()
        return actions

    def send(self, key: str, kind: str, body: bytes, now: float,
             bulk: bool = False) -> list[Action]:
        """The ``gateway.send`` request: one ``app`` message, sent now (``bulk``: behind
        everything else, as the socket takes it)."""
        raw = _key(key)
        if raw is None:
            return [Refused("bad_message", "a key is 64 hex characters")]
        refused = self.queue(raw, kind, body, now, bulk=bulk)
        if refused is not None:
            what = f"no verified link to {key[:16]}" if refused == "no_link" else \
                "the link's bulk queue is full; retry" if refused == "busy" else \
                "kind must be 1..32 characters and body a bytes of at most the app limit"
            return [Refused(refused, what)]
        return self.flush()

    # -- the link table ----------------------------------------------------------------

    def links(self, now: float, wall: float) -> rpc.LinkList:
        """The ``gateway.links`` snapshot; ``wall`` is the unix time at ``now``."""
        if not (_good_now(now) and _good_now(wall)):  # no clock: ages unknown, shown as 0
            now = wall = 0.0
        out = []
        for c in self.conns.values():
            key = c.key or c.link.expected_key
            out.append(rpc.LinkInfo(
                link=c.id, address=c.address, direction=c.direction,  # type: ignore[arg-type]
                state="open" if c.link.is_open else "handshake",
                since=min(UNIX_TIME_MAX, max(0.0, wall - (now - c.opened))),
                key=key.hex() if key else None,
                nickname=c.link.peer_nickname, version=c.link.version,
                frames_in=c.link.frames_in, frames_out=c.link.frames_out,
                caps=c.link.peer_caps if c.link.is_open else ()))
        return rpc.LinkList(epoch=self.numbering.epoch, seq=self.numbering.seq,
                            links=tuple(out))

    # -- trust -----------------------------------------------------------------------------

    def trust(self, key: str, nickname: str | None, now: float) -> list[Action]:
        """``gateway.trust``: accept ``key`` (pin it), clear its alert, dial it again."""
        raw = _key(key)
        if raw is None or not _good_now(now) or (nickname is not None
                                                    and not _good_nickname(nickname)):
            return [Refused("bad_message", "trust: a 64-hex key and a nickname of 1..32")]
        dial = self.peers.setdefault(raw, PeerDial())
        self.pins.trust(raw, nickname or dial.nickname or None)
        self._saved_pins = self.pins.dump()
        self._saved_changes = self.pins.changes
        dial.blocked = False
        dial.next_attempt = now
        actions: list[Action] = [SavePins(self._saved_pins, urgent=True),
                                 Emit(PeerTrusted, {"key": raw.hex(), "trusted": True})]
        self._schedule(now, actions)
        return actions

    def untrust(self, key: str) -> list[Action]:
        """``gateway.untrust``: remove every pin of ``key``."""
        raw = _key(key)
        if raw is None:
            return [Refused("bad_message", "a key is 64 hex characters")]
        if not self.pins.forget(raw):
            return [Refused("not_pinned", f"{fingerprint(raw)} is not pinned")]
        self._saved_pins = self.pins.dump()
        self._saved_changes = self.pins.changes
        return [SavePins(self._saved_pins, urgent=True),
                Emit(PeerTrusted, {"key": raw.hex(), "trusted": False})]

    # -- dialling ------------------------------------------------------------------------

    def defer(self, key: bytes) -> float:
        """How long we wait before dialling ``key``: the lower key of a pair dials first."""
        if self.identity is None or self.identity.key < key:
            return 0.0
        return DIAL_DEFER

    def peers_changed(self, changes: Iterable[Any], now: float) -> list[Action]:
        """Discovery's peer table changed (``common.mirror.Change`` of ``PeerInfo``)."""
        actions: list[Action] = []
        if not _good_now(now):
            return [Refused("bad_message", "now must be a finite number")]
        try:
            items = list(changes)
        except TypeError:
            return [Refused("bad_message", "peer changes must be iterable")]
        for change in items:
            refused = self._peer_changed(getattr(change, "key", None),
                                         getattr(change, "new", None), now)
            if refused is not None:
                actions.append(refused)
        self._schedule(now, actions)
        return actions

    def _peer_changed(self, key_hex: Any, peer: Any, now: float) -> Refused | None:
        key = _key(key_hex) if type(key_hex) is str else None
        if key is None:
            return Refused("bad_message", "a peer key is 64 hex characters")
        if self.identity is not None and key == self.identity.key:
            return None
        dial = self.peers.get(key)
        if peer is None:  # forgotten by discovery
            if dial is not None:
                dial.addresses = ()
            return None
        addresses = getattr(peer, "addresses", None)
        state = getattr(peer, "state", None)
        nickname = getattr(peer, "nickname", None)
        if not isinstance(addresses, tuple | list) or type(state) is not str \
                or type(nickname) is not str:
            return Refused("bad_message", "a peer has addresses, a state and a nickname")
        # one address at a time, in this order (``_dial_next``): IPv4 first unless told
        good = ordered((a for a in addresses[:16] if type(a) is str), self.prefer_ipv6)
        if dial is None:
            if len(self.peers) >= 4 * self.max_links + 1024:
                return Refused("table_full", "too many peers to dial")
            dial = self.peers[key] = PeerDial(next_attempt=now + self.defer(key))
        dial.addresses = good if state != "offline" else ()
        dial.nickname = nickname[:32]
        return None

    def policy_changed(self, refused: dict[bytes, tuple[str, float | None]], now: float
                       ) -> list[Action]:
        """The router's blocks and bans (``{key: (reason, until)}``, until on ``now``'s
        clock): their open links are closed, and they are neither accepted nor dialled."""
        if not _good_now(now):
            return [Refused("bad_message", "now must be a finite number")]
        self.refused = dict(refused)
        actions: list[Action] = []
        for key in list(self.refused):
            c = self.verified.get(key)
            reason = self.refusal(key, now)
            if c is not None and reason is not None:
                self.log.info("link %d to %s closed: %s", c.id, fingerprint(key), reason)
                self._finish(c, c.link.close(reason, f"{reason} by this node", now), now,
                             actions)
        self._schedule(now, actions)
        return actions

    def refusal(self, key: bytes, now: float) -> str | None:
        """``blocked`` or ``banned`` when links with ``key`` are refused now, else None."""
        entry = self.refused.get(key)
        if entry is None or (entry[1] is not None and entry[1] <= now):
            return None
        return entry[0]

    def dial_timer(self, now: float) -> list[Action]:
        """The dialler's timer (``SetTimer(None, ...)``) is due."""
        if not _good_now(now):
            return [Refused("bad_message", "now must be a finite number")]
        actions: list[Action] = []
        self._schedule(now, actions)
        return actions

    def dial_failed(self, key: bytes, address: str, now: float) -> list[Action]:
        """A ``Dial`` did not connect (refused, unreachable, timed out).

        A result for no dial under way (its peer connected meanwhile, or we are stopping)
        changes nothing.
        """
        if type(key) is not bytes or not _good_now(now):
            return [Refused("bad_message", "dial result: a key and a finite now")]
        dial = self.peers.get(key)
        if dial is None or dial.dialling is None:
            return []
        actions: list[Action] = []
        remaining = dial.dialling
        if key not in self.verified and remaining and self._dial_next(key, dial, actions):
            return actions
        dial.dialling = None
        self._dialling.discard(key)
        if key not in self.verified:
            dial.next_attempt = now + dial.backoff
            dial.backoff = min(BACKOFF_MAX, dial.backoff * 2)
        self._schedule(now, actions)
        return actions

    def _dial_next(self, key: bytes, dial: PeerDial, actions: list[Action]) -> bool:
        """Dial the next of ``dial.dialling`` that is on our networks; False if none is."""
        assert dial.dialling is not None
        while dial.dialling:
            address = dial.dialling.pop(0)
            parsed = split_address(address)
            found = local_for(self.networks, parsed[0]) if parsed else None
            if parsed is None or found is None:
                self.log.debug("not dialling %s: outside our networks", address)
                continue
            local, host = found  # host: a link-local one with our interface as its scope
            actions.append(Dial(key, address, host, parsed[1], local))
            return True
        return False

    def local_ip_for(self, host: str) -> str | None:
        """Our address on the network of ``host``; None when it is on none of ours (or is
        no IP address). A link-local IPv6 ``host`` is on our network only with our
        interface as its scope (docs/protocol.md §1, "Addresses").

        Only addresses on our configured interfaces' networks are dialled, never via a
        default route: a LAN mesh talks to its LAN (and a test node never leaves its net).
        """
        parsed = split_address(f"[{host}]:1" if ":" in str(host) else f"{host}:1")
        found = local_for(self.networks, parsed[0]) if parsed else None
        return found[0] if found else None

    def _schedule(self, now: float, actions: list[Action]) -> None:
        """Start every dial that is due; arm the dialler's timer for the next one."""
        if self.identity is None:
            return
        busy = {k for c in self.conns.values()
                for k in (c.link.expected_key, c.link.peer_key) if k is not None}
        room = self.max_links - len(self.conns) - len(self._dialling)
        soonest: float | None = None
        for key, dial in self.peers.items():
            if dial.blocked or dial.dialling is not None or not dial.addresses \
                    or key in self.verified or key in busy:
                continue
            refusal = self.refused.get(key)
            if refusal is not None and self.refusal(key, now) is not None:
                if refusal[1] is not None:  # a ban: dial again once it ends
                    soonest = refusal[1] if soonest is None else min(soonest, refusal[1])
                continue
            if now < dial.next_attempt:
                soonest = dial.next_attempt if soonest is None else min(soonest,
                                                                        dial.next_attempt)
                continue
            if room <= 0:
                continue  # a closing link frees a slot, and schedules again
            dial.dialling = list(dial.addresses)
            if self._dial_next(key, dial, actions):
                self._dialling.add(key)
                room -= 1
            else:  # nothing on our networks: try again later
                dial.dialling = None
                dial.next_attempt = now + dial.backoff
                dial.backoff = min(BACKOFF_MAX, dial.backoff * 2)
                soonest = dial.next_attempt if soonest is None else min(soonest,
                                                                        dial.next_attempt)
        actions.append(SetTimer(None, soonest))

    # -- introspection -------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {"links": len(self.conns), "verified": len(self.verified),
                "handshakes": self._handshakes, "dialling": len(self._dialling),
                "peers": len(self.peers), "rejected": self.rejects.statistics()}

