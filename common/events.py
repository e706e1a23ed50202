"""Bus events: the one definition of every event on a node's local bus.

An event travels as two ZeroMQ frames, ``[topic, body]``: ``topic`` is the
UTF-8 event name (subscribers filter on its prefix) and ``body`` a msgpack map
holding ``v`` (the event's version), ``src`` (the publishing service), ``ts``
(unix seconds) and the event's own fields. docs/protocol.md, "Events", lists
them all; ``tests/unit/test_protocol_doc.py`` keeps the two in step.

Receivers call ``decode_event``: it rejects anything that is not exactly two
frames, an unknown topic, a body that is not a msgpack map within the size
limit, a ``v`` it does not know, or a field of the wrong type or size. Unknown
*fields* are ignored, so a newer publisher may add optional fields without a
version bump (docs/protocol.md, "Versions").
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from . import codec
from .errors import SchemaError
from .limits import (
    ADDRESS_TEXT_MAX,
    APP_BODY_MAX,
    CODE_MAX,
    DETAIL_MAX,
    DNS_NAME_MAX,
    HOPS_MAX,
    KIND_MAX,
    NICK_MAX,
    PEER_ADDRESSES_MAX,
    SOURCE_MAX,
    TEXT_MAX,
    TOPIC_MAX,
    UNIX_TIME_MAX,
)
from .schema import HEX32, Clip, Len, Match, Printable, Range, Record, record, registry
from .status import Status, StatusOrNone

#: Sent alone (one frame) by the broker to each new subscriber (ZMQ_XPUB_WELCOME_MSG).
WELCOME_TOPIC = "bus.welcome"
MAX_TOPIC = TOPIC_MAX
DEFAULT_MAX_EVENT_BYTES = 262144

ServiceName = Annotated[str, Match(r"[a-z][a-z0-9_-]{0,31}")]
HexKey = Annotated[str, HEX32]
#: ``a.b.c.d:port``, ``[v6]:port`` or, link-local, ``[fe80::1%ifname]:port``
#: (common/addresses.py; docs/protocol.md §1, "Addresses").
Address = Annotated[str, Match(r"\d{1,3}(\.\d{1,3}){3}:\d{1,5}"
                               r"|\[[0-9a-f:]{2,39}(%[A-Za-z0-9_.@+-]{1,15})?\]:\d{1,5}"),
                    Len(7, 63)]
#: A nickname: 1..32 bytes of printable UTF-8, wherever it appears (HELLO, profile, mDNS).
Nickname = Annotated[str, Len(1, NICK_MAX, utf8=True), Printable()]
#: A reject code (docs/protocol.md §8).
RejectCode = Annotated[str, Len(1, CODE_MAX)]
#: Text for people; a longer one is cut when the record is built.
Detail = Annotated[str, Len(0, DETAIL_MAX), Clip()]
#: A chat text: at most 4096 bytes of UTF-8.
ChatText = Annotated[str, Len(0, TEXT_MAX, utf8=True)]
#: Links a copy travelled (0 for our own), at most the largest hop limit.
Hops = Annotated[int, Range(0, HOPS_MAX)]
#: Unix seconds.
UnixTime = Annotated[float, Range(0, UNIX_TIME_MAX)]
#: A clock offset, seconds (about 100 years either way: common/clock.py ``MAX_OFFSET``).
ClockOffsetS = Annotated[float, Range(-3.2e9, 3.2e9)]
#: A service kind (``router``) or a capability name.
KindName = Annotated[str, Len(1, KIND_MAX)]
Fingerprint = Annotated[str, Match(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}")]
PeerStateName = Literal["discovered", "connected", "verified", "mesh", "offline"]
ServiceStateName = Literal["up", "starting", "stopping", "restarting", "down", "failed"]
Seq = Annotated[int, Range(0, 2**63 - 1)]
#: The owner's process generation of a mirrored table (docs/protocol.md §2, "Mirrored state").
Epoch = Annotated[int, Range(1, 2**63 - 1)]

EVENTS: dict[str, type[Event]] = {}


def _check_topic(topic: str) -> None:
    if not 0 < len(topic.encode()) <= MAX_TOPIC:
        raise TypeError(f"bad topic {topic!r}")


#: ``@event(topic, v=1)``: a record class, registered by topic (``common.schema.registry``).
event = registry(EVENTS, "TOPIC", "V", check=_check_topic, V=1)


@record
class Event(Record):
    """Base of every bus event; subclasses set ``TOPIC`` and ``V``."""

    TOPIC: ClassVar[str] = ""
    V: ClassVar[int] = 1

    src: ServiceName
    ts: UnixTime


# --- shared records -------------------------------------------------------------


@record
class PeerInfo(Record):
    """What this node knows of one peer (docs/protocol.md, "PeerInfo")."""

    key: HexKey
    fingerprint: Fingerprint
    nickname: Nickname
    addresses: Annotated[tuple[Address, ...], Len(0, PEER_ADDRESSES_MAX)]
    state: PeerStateName
    last_seen: UnixTime
    #: When the peer entered its current state (unix seconds).
    since: UnixTime = 0.0
    #: Hop count over the mesh; 1 for a direct neighbour, None if unknown.
    hops: Annotated[int, Range(0, 255)] | None = None
    #: Set when the key differs from the one pinned for this nickname/fingerprint.
    alert: Detail | None = None


@record
class TableVersion(Record):
    """The version of a table a service owns (docs/protocol.md §2, "Mirrored state")."""

    name: Annotated[str, Match(r"[a-z][a-z0-9_]{0,15}")]
    epoch: Epoch
    seq: Seq


@record
class ServiceHealth(Record):
    """One row of ``tazcom status``."""

    service: ServiceName
    state: ServiceStateName
    pid: Annotated[int, Range(0, 2**31)] | None
    since: UnixTime | None = None
    last_heartbeat: UnixTime | None = None
    detail: Detail = ""


# --- bus and service life -----------------------------------------------------------


@event("bus.ping")
class BusPing(Event):
    """Published by a client to itself to prove its subscription is live."""

    nonce: Annotated[bytes, Len(8, 32)]


@event("service.started")
class ServiceStarted(Event):
    """A service finished starting and serves requests."""

    service: ServiceName
    pid: Annotated[int, Range(0, 2**31)]
    version: Annotated[str, Len(0, 32)]


@event("service.heartbeat")
class ServiceHeartbeat(Event):
    """Every ``heartbeat_interval`` seconds from every service."""

    service: ServiceName
    pid: Annotated[int, Range(0, 2**31)]
    state: ServiceStateName
    uptime: UnixTime
    detail: Detail = ""
    #: The version of every table this service owns, so a mirror notices lost updates.
    tables: Annotated[tuple[TableVersion, ...], Len(0, 8)] = ()


@event("service.stopping")
class ServiceStopping(Event):
    """A service received SIGTERM and is closing."""

    service: ServiceName
    pid: Annotated[int, Range(0, 2**31)]


@event("service.health")
class ServiceHealthChanged(Event):
    """A row of the bus's health table changed (the table behind ``tazcom status``)."""

    epoch: Epoch
    seq: Seq
    #: The row now (``last_heartbeat`` is not part of the mirrored table: nil).
    health: ServiceHealth


# --- peers ---------------------------------------------------------------------------


@event("peer.discovered")
class PeerDiscovered(Event):
    """A peer became reachable (a valid signed record was seen, or a link came up)."""

    epoch: Epoch
    seq: Seq
    peer: PeerInfo


@event("peer.updated")
class PeerUpdated(Event):
    """Something visible about a reachable peer changed (addresses, nickname, state)."""

    epoch: Epoch
    seq: Seq
    peer: PeerInfo


@event("peer.lost")
class PeerLost(Event):
    """A peer became unreachable; it stays in the table as ``offline``."""

    epoch: Epoch
    seq: Seq
    peer: PeerInfo


@event("peer.forgotten")
class PeerForgotten(Event):
    """The table, full, dropped the peer offline for longest (no longer listed)."""

    epoch: Epoch
    seq: Seq
    key: HexKey


@event("discovery.rejected")
class DiscoveryRejected(Event):
    """An mDNS record was ignored (logged once per name and reason)."""

    name: Annotated[str, Len(0, DNS_NAME_MAX), Clip()]
    address: Annotated[str, Len(0, ADDRESS_TEXT_MAX), Clip()]
    reason: RejectCode


# --- gateway -------------------------------------------------------------------------


@event("gateway.listening")
class GatewayListening(Event):
    """The gateway accepts TCP connections on these addresses."""

    addresses: Annotated[tuple[Address, ...], Len(1, 16)]
    port: Annotated[int, Range(1, 65535)]


# --- links (gateway) ------------------------------------------------------------------

LinkPeerState = Literal["none", "connected", "verified"]
Direction = Literal["in", "out"]
LinkId = Annotated[int, Range(0, 2**63 - 1)]
OptKey = Annotated[str, HEX32] | None


@event("link.up")
class LinkUp(Event):
    """A TCP connection to or from a peer is up (its handshake has not finished yet)."""

    epoch: Epoch
    seq: Seq
    link: LinkId
    address: Address
    direction: Direction
    #: The key we dialled (outbound), else None until the handshake proves one.
    key: OptKey = None
    #: The peer's link state after this change (none, connected, verified).
    peer_state: LinkPeerState = "connected"


@event("link.down")
class LinkDown(Event):
    """A link closed (by us, by the peer, or the connection was lost)."""

    epoch: Epoch
    seq: Seq
    link: LinkId
    address: Address
    direction: Direction
    key: OptKey = None
    reason: RejectCode
    detail: Detail = ""
    by_peer: bool = False
    peer_state: LinkPeerState = "none"


@event("peer.verified")
class PeerVerified(Event):
    """A link's handshake proved the peer's key and HELLOs were exchanged."""

    epoch: Epoch
    seq: Seq
    link: LinkId
    key: HexKey
    nickname: Nickname
    address: Address
    direction: Direction
    version: Annotated[int, Range(1, 65535)]
    caps: Annotated[tuple[KindName, ...], Len(0, 32)] = ()
    peer_state: LinkPeerState = "verified"
    #: The peer's wall clock minus ours when its hello arrived (seconds); None when its
    #: hello did not say the time. The gateway's mesh clock sample (``clock.offset``).
    clock_offset: ClockOffsetS | None = None


@event("peer.key_changed")
class PeerKeyChanged(Event):
    """A peer proved a key that differs from the one pinned for its nickname: link refused."""

    key: HexKey
    nickname: Nickname
    pinned: Annotated[tuple[HexKey, ...], Len(1, 64)]
    address: Address
    alert: Annotated[str, Len(1, DETAIL_MAX), Clip()]


@event("peer.trusted")
class PeerTrusted(Event):
    """The user accepted (or, with ``trusted`` false, removed the pin of) a key."""

    key: HexKey
    trusted: bool = True


@event("wire.rejected")
class WireRejected(Event):
    """A connection or message from a peer was refused; the link was closed."""

    address: Annotated[str, Len(0, ADDRESS_TEXT_MAX), Clip()]
    reason: RejectCode
    detail: Detail = ""
    key: OptKey = None


@event("link.message")
class LinkMessage(Event):
    """An ``app`` message from a verified peer, for the local service named by ``kind``."""

    key: HexKey
    kind: KindName
    body: Annotated[bytes, Len(0, APP_BODY_MAX)]


@event("clock.offset")
class ClockOffset(Event):
    """The gateway's mesh clock changed (common/clock.py): what this node adds to its own
    wall clock to stamp envelopes, judge their times and date certificates."""

    epoch: Epoch
    seq: Seq
    #: Seconds to add to this node's wall clock (0: not corrected).
    offset: ClockOffsetS
    #: Verified neighbours whose clocks agree with the offset.
    neighbours: Annotated[int, Range(0, 4096)]
    #: Verified neighbours whose hello said their time.
    samples: Annotated[int, Range(0, 4096)]


@event("identity.changed")
class IdentityChanged(Event):
    """This node's nickname changed (``identity.set_nickname``)."""

    key: HexKey
    nickname: Nickname


# --- chat (router, store) --------------------------------------------------------------

MessageIdHex = Annotated[str, Match(r"[0-9a-f]{32}")]


@event("chat.message")
class ChatMessage(Event):
    """A message entered this node's history: received, or posted here."""

    id: MessageIdHex
    kind: Literal["room", "dm", "group"]
    origin: HexKey
    #: The recipient for a DM, the group's id for a group message; None for the room.
    to: OptKey = None
    #: When it was written (origin's clock), unix milliseconds.
    sent: Annotated[int, Range(0, 2**53)]
    text: ChatText
    own: bool = False
    hops: Hops = 0
    status: StatusOrNone = ""


FileIdHex = Annotated[str, Match(r"[0-9a-f]{64}")]
#: An outgoing file's status is a message's (common/status.py); an incoming one is
#: ``offered`` (announced, waiting for ``files get`` or the auto-accept), ``receiving``,
#: ``received`` (every chunk verified and the file in place) or ``failed``.
FileStatusName = Literal["queued", "sent", "relayed", "delivered", "failed", "offered",
                         "receiving", "received"]


@event("file.status")
class FileStatus(Event):
    """A file sent or received here changed: its status, or its progress (at most a few
    times a second per file). The whole row, so a subscriber needs nothing else."""

    #: The id of the file's manifest envelope (as a message's id).
    id: MessageIdHex
    name: Annotated[str, Len(0, 255, utf8=True), Clip()]
    size: Annotated[int, Range(0, 2**53)]
    mime: Annotated[str, Len(0, 64), Clip()] = ""
    #: The file id: its hash (docs/protocol.md, "Files").
    hash: FileIdHex
    origin: HexKey
    #: The recipient of a DM file; None for a room file.
    to: OptKey = None
    direction: Literal["out", "in"]
    status: FileStatusName
    reason: Detail = ""
    #: Bytes verified and stored here (in), or served at least once (out).
    done: Annotated[int, Range(0, 2**53)] = 0
    #: Where the file is on this node: the original (out), or under files/ once received.
    path: Annotated[str, Len(0, 4096), Clip()] = ""
    #: When it was written (origin's clock), unix milliseconds.
    sent: Annotated[int, Range(0, 2**53)] = 0


@event("chat.status")
class ChatStatus(Event):
    """The delivery status of one of our own messages moved forward."""

    id: MessageIdHex
    status: Status
    reason: Detail = ""
    to: OptKey = None
    #: A group message's: how many members acknowledged it, of how many it was for.
    delivered: Annotated[int, Range(0, 100_000)] | None = None
    members: Annotated[int, Range(0, 100_000)] | None = None


GroupRole = Literal["admin", "member", "invited", "left", "removed"]


@event("group.changed")
class GroupChanged(Event):
    """A private group of ours changed: created, joined, invited to, a member came or
    went, we were removed (``group.list`` answers with the whole table)."""

    group: Annotated[str, HEX32]
    name: Annotated[str, Len(0, 64, utf8=True)]
    #: Our role in it.
    role: GroupRole
    epoch: Annotated[int, Range(0, 2**32 - 1)]
    members: Annotated[int, Range(0, 100_000)]
    invited: Annotated[int, Range(0, 100_000)] = 0


@event("mesh.peer")
class MeshPeer(Event):
    """A node known through the mesh (its signed profile), with its distance in hops."""

    epoch: Epoch
    seq: Seq
    key: HexKey
    nickname: Nickname
    #: Links between us and it; None when its profile expired (no longer reachable).
    hops: Annotated[int, Range(1, HOPS_MAX + 1)] | None
    enc_key: Annotated[str, HEX32]


@event("key.revoked")
class KeyRevoked(Event):
    """A node's revocation of one of its delegated signing keys was accepted: envelopes
    that key signed and dated at or after ``at`` are refused from now on."""

    origin: HexKey
    #: The delegated key revoked.
    key: HexKey
    #: Unix milliseconds.
    at: Annotated[int, Range(0, 2**53 - 1)]


#: How this node treats a peer's key: ``block`` (nothing from its origin is shown, stored or
#: relayed; its direct link is refused), ``mute`` (not shown; still stored and relayed),
#: ``ban`` (its score fell below the threshold: its link is closed and refused until
#: ``until``).
PolicyName = Literal["block", "mute", "ban"]
Score = Annotated[float, Range(-1e12, 1e12)]


@event("peer.policy")
class PeerPolicy(Event):
    """A peer's policy changed (the router's ``policy`` table; ``policy`` None: cleared)."""

    epoch: Epoch
    seq: Seq
    key: HexKey
    policy: PolicyName | None
    since: UnixTime = 0.0
    until: UnixTime | None = None
    reason: Detail = ""


@event("peer.score")
class PeerScore(Event):
    """A neighbour's score changed by a penalty (docs/protocol.md, "Peer scoring"); sent at
    most once a second per neighbour, and when it crosses a threshold."""

    key: HexKey
    score: Score
    reason: Detail = ""


@event("router.dropped")
class RouterDropped(Event):
    """Envelopes refused by the router (logged once per source and reason; this counts)."""

    source: Annotated[str, Len(0, SOURCE_MAX), Clip()]
    reason: RejectCode
    detail: Detail = ""
    count: Annotated[int, Range(1, 2**31)] = 1


# --- codec ---------------------------------------------------------------------------


def encode_event(ev: Event) -> list[bytes]:
    """The two frames of ``ev``."""
    body = ev.to_dict()
    body["v"] = ev.V
    return [ev.TOPIC.encode(), codec.pack(body)]


def decode_event(frames: list[bytes], max_size: int = DEFAULT_MAX_EVENT_BYTES) -> Event:
    """Validate frames from the bus; raises ``SchemaError``/``RemoteProtocolError``."""
    if len(frames) != 2:
        raise SchemaError(f"an event is 2 frames, got {len(frames)}", code="bad_frames")
    raw_topic, body = frames
    if len(raw_topic) > MAX_TOPIC:
        raise SchemaError("topic too long", code="bad_topic")
    try:
        topic = raw_topic.decode()
    except UnicodeDecodeError:
        raise SchemaError("topic is not UTF-8", code="bad_topic") from None
    cls = EVENTS.get(topic)
    if cls is None:
        raise SchemaError(f"unknown topic {topic!r}", code="unknown_topic")
    data = codec.unpack(body, max_size)
    if not isinstance(data, dict):
        raise SchemaError("body is not a map", code="bad_message")
    v = data.get("v")
    if v != cls.V or isinstance(v, bool):
        raise SchemaError(f"{topic}: unsupported version {v!r}", code="bad_version")
    return cls.from_dict(data)


def event_as_json(ev: Event) -> dict[str, Any]:
    """JSON object for ``tazcom events --json``: ``topic``, ``v`` and the fields."""
    from .schema import to_jsonable

    return {"topic": ev.TOPIC, "v": ev.V, **to_jsonable(ev.to_dict())}
