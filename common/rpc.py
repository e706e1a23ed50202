"""Requests between local processes: the one definition of each request and reply.

A request is one ZeroMQ frame, a msgpack map ``{"v": 1, "id": n, "op": name,
...arguments}``, sent by a DEALER (or REQ) to the service's ROUTER socket. The
reply echoes ``id`` and carries ``ok``: ``{"v": 1, "id": n, "ok": true,
...result}`` or ``{"v": 1, "id": n, "ok": false, "error": code, "message":
text}``. Requests carry ids so that a client may pipeline many of them on one
socket; replies may come back in any order. docs/protocol.md, "Requests".
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from . import codec
from .errors import RequestFailed, SchemaError
from .events import (
    Address,
    ChatText,
    ClockOffsetS,
    Detail,
    Epoch,
    FileStatus,
    Fingerprint,
    GroupRole,
    HexKey,
    Hops,
    KindName,
    Nickname,
    PeerInfo,
    PolicyName,
    Score,
    Seq,
    ServiceHealth,
    ServiceName,
    UnixTime,
)
from .limits import (
    APP_BODY_MAX,
    CERT_MAX,
    DM_BODY_MAX,
    ENVELOPE_BODY_MAX,
    ERROR_MESSAGE_MAX,
    HOPS_MAX,
    ID_BYTES,
    KEY_BYTES,
    SIG_BYTES,
    SIGNED_MAX,
    TEXT_MAX,
)
from .schema import Clip, Len, Match, Range, Record, record, registry
from .status import StatusOrNone

ENVELOPE_V = 1
#: Rows in one commit of the router's store (one batch: 1024 frames of 64 envelopes).
STORE_BATCH_MAX = 1 << 17
REQUESTS: dict[str, type[Request]] = {}
RequestId = Annotated[int, Range(0, 2**63 - 1)]
ErrorCode = Annotated[str, Match(r"[a-z][a-z0-9_]{0,47}")]
Sig = Annotated[bytes, Len(SIG_BYTES, SIG_BYTES)]


@record
class Request(Record):
    """Base of every request; subclasses set ``OP`` and ``REPLY``."""

    OP: ClassVar[str] = ""
    REPLY: ClassVar[type[Record]]


#: ``@request(op, reply)``: a record class, registered by ``op``, answered by ``reply``.
request = registry(REQUESTS, "OP", "REPLY")


# --- replies -------------------------------------------------------------------------


@record
class Empty(Record):
    """A reply with no fields."""


@record
class ErrorReply(Record):
    """The fields of a failed request's reply (``ok`` false)."""

    error: ErrorCode
    #: For people; a longer one is cut.
    message: Annotated[str, Len(0, ERROR_MESSAGE_MAX), Clip()] = ""


@record
class Pong(Record):
    service: ServiceName
    pid: Annotated[int, Range(0, 2**31)]
    version: Annotated[str, Len(0, 32)]


@record
class IdentityInfo(Record):
    key: HexKey
    fingerprint: Fingerprint
    nickname: Nickname
    #: X25519 public key that DMs to this node are sealed to.
    enc_key: HexKey | None = None


@record
class Opened(Record):
    """One plaintext per box, in order; None where the box did not open."""

    items: Annotated[tuple[Annotated[bytes, Len(0, DM_BODY_MAX)] | None, ...], Len(0, 256)]


@record
class Signature(Record):
    sig: Sig


@record
class Signatures(Record):
    sigs: Annotated[tuple[Sig, ...], Len(0, 1024)]


@record
class StaticPeer(Record):
    """A static peer (docs/protocol.md §9, "Static peers")."""

    #: ``host:port`` (``[v6]:port``), as the gateway dials it.
    address: Annotated[str, Len(1, 300)]
    source: Literal["added", "config", "invite"]
    #: The key its last verified link proved; None until one did.
    key: HexKey | None = None
    nickname: Nickname | None = None
    state: Literal["linked", "dialling", "waiting", "failing"] = "waiting"
    #: Why the last dial or link failed, for people.
    error: Annotated[str, Len(0, 200)] = ""
    #: The key an invite code requires at this address; None: any (pinned on first use).
    expect: HexKey | None = None


@record
class StaticPeerList(Record):
    items: Annotated[tuple[StaticPeer, ...], Len(0, 64)]


@record
class Certificate(Record):
    """A delegated key's certificate (common/certs.py)."""

    cert: Annotated[bytes, Len(1, CERT_MAX)]


@record
class SigningKeys(Record):
    """The router's delegated signing key and DM keys (public halves only)."""

    #: The delegated key envelopes are signed with now, hex.
    key: HexKey | None
    not_before: Annotated[int, Range(0, 2**40)] = 0
    not_after: Annotated[int, Range(0, 2**40)] = 0
    #: The X25519 key DMs are sealed to now, hex, and since when (unix s).
    enc_key: HexKey | None = None
    enc_since: Annotated[int, Range(0, 2**40)] = 0
    #: Older DM keys still held (a DM sealed to one may still arrive), hex.
    old_enc_keys: Annotated[tuple[HexKey, ...], Len(0, 64)] = ()
    #: Delegated keys this node has revoked, hex.
    revoked: Annotated[tuple[HexKey, ...], Len(0, 1024)] = ()


@record
class PeerSnapshot(Record):
    """The full peer table at version ``(epoch, seq)``; later ``peer.*`` events carry
    greater ones (docs/protocol.md §2, "Mirrored state")."""

    epoch: Epoch
    seq: Seq
    peers: Annotated[tuple[PeerInfo, ...], Len(0, 4096)]


@record
class GatewayInfo(Record):
    addresses: Annotated[tuple[Address, ...], Len(0, 16)]
    port: Annotated[int, Range(0, 65535)]


@record
class LinkInfo(Record):
    link: Annotated[int, Range(0, 2**63 - 1)]
    address: Address
    direction: Literal["in", "out"]
    state: Literal["handshake", "open"]
    since: UnixTime
    key: HexKey | None = None
    nickname: Nickname | None = None
    version: Annotated[int, Range(1, 65535)] | None = None
    frames_in: Annotated[int, Range(0, 2**63 - 1)] = 0
    frames_out: Annotated[int, Range(0, 2**63 - 1)] = 0
    #: The peer's hello ``caps``, once open.
    caps: Annotated[tuple[KindName, ...], Len(0, 32)] = ()


@record
class LinkList(Record):
    """Every link at version ``(epoch, seq)`` of the gateway's link table."""

    epoch: Epoch
    seq: Seq
    links: Annotated[tuple[LinkInfo, ...], Len(0, 4096)]


@record
class ClockInfo(Record):
    """The mesh clock at version ``(epoch, seq)`` of the gateway's clock table (the
    fields of ``clock.offset``)."""

    epoch: Epoch
    seq: Seq
    offset: ClockOffsetS
    neighbours: Annotated[int, Range(0, 4096)]
    samples: Annotated[int, Range(0, 4096)]


@record
class StatusReport(Record):
    """The health table at version ``(epoch, seq)``."""

    epoch: Epoch
    seq: Seq
    services: Annotated[tuple[ServiceHealth, ...], Len(0, 64)]


# --- store records ----------------------------------------------------------------------

Id16 = Annotated[bytes, Len(ID_BYTES, ID_BYTES)]
Key32 = Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
Millis = Annotated[int, Range(0, 2**53)]
KindNum = Annotated[int, Range(1, 8)]
Signed = Annotated[bytes, Len(1, SIGNED_MAX)]


@record
class StoredMessage(Record):
    """One envelope as the store keeps it (docs/protocol.md, "Store records")."""

    id: Id16
    kind: KindNum
    origin: Key32
    seq: Annotated[int, Range(0, 2**63 - 1)]
    ts: Millis
    to: Key32 | None = None
    signed: Signed
    sig: Sig
    hops: Hops = 0
    #: The conversation it belongs to: the other party's key for DMs we sent or
    #: received; None for the room and for messages we only relay.
    conv: Key32 | None = None
    #: Plain text, only for room messages and DMs we sent or received.
    text: ChatText | None = None
    status: StatusOrNone = ""
    reason: Detail = ""
    own: bool = False
    #: Kept for store-and-forward (and offered in catch-up) until released.
    held: bool = False
    #: The client's idempotency key for messages we originate.
    client_id: Annotated[bytes, Len(8, 32)] | None = None


@record
class PutOutcome(Record):
    id: Id16
    new: bool


@record
class PutResult(Record):
    results: Annotated[tuple[PutOutcome, ...], Len(0, STORE_BATCH_MAX)]


@record
class StatusUpdate(Record):
    id: Id16
    status: StatusOrNone
    reason: Detail = ""


@record
class WireEnvelope(Record):
    id: Id16
    signed: Signed
    sig: Sig
    hops: Hops


@record
class Envelopes(Record):
    items: Annotated[tuple[WireEnvelope, ...], Len(0, 4096)]


@record
class HistoryEntry(Record):
    id: Id16
    kind: KindNum
    origin: Key32
    to: Key32 | None
    #: When the author says it wrote it (its clock, up to 10 minutes ahead of ours).
    ts: Millis
    text: ChatText | None
    status: StatusOrNone
    reason: Detail = ""
    own: bool = False
    #: When it reached this node's store (our clock), unix milliseconds: history's order.
    received: Millis | None = None


@record
class History(Record):
    messages: Annotated[tuple[HistoryEntry, ...], Len(0, 10000)]


@record
class SyncItem(Record):
    id: Id16
    ts: Millis
    kind: KindNum
    to: Key32 | None = None
    held: bool = False


@record
class SyncSet(Record):
    items: Annotated[tuple[SyncItem, ...], Len(0, 100_000)]


@record
class OwnMessage(Record):
    """One of our own messages that is not yet delivered (for retries after a restart)."""

    id: Id16
    kind: KindNum
    to: Key32 | None
    ts: Millis
    status: StatusOrNone
    text: ChatText | None = None
    signed: Annotated[bytes, Len(0, SIGNED_MAX)] = b""
    sig: Annotated[bytes, Len(0, SIG_BYTES)] = b""


@record
class Outbox(Record):
    items: Annotated[tuple[OwnMessage, ...], Len(0, 100_000)]


@record
class ProfileInfo(Record):
    key: Key32
    nickname: Nickname
    enc_key: Key32
    ts: Millis
    hops: Hops


@record
class Profiles(Record):
    items: Annotated[tuple[ProfileInfo, ...], Len(0, 100_000)]


@record
class PostResult(Record):
    message_id: Id16
    status: StatusOrNone
    reason: Detail = ""
    #: False when this client_id was posted before (this is the original message).
    new: bool = True


@record
class RouterStats(Record):
    """Counters since the router started."""

    accepted: Annotated[int, Range(0, 2**63 - 1)]
    duplicates: Annotated[int, Range(0, 2**63 - 1)]
    dropped: Annotated[int, Range(0, 2**63 - 1)]
    relayed: Annotated[int, Range(0, 2**63 - 1)]
    posted: Annotated[int, Range(0, 2**63 - 1)]
    links: Annotated[int, Range(0, 65535)]
    pending_relays: Annotated[int, Range(0, 2**31)]
    shorter: Annotated[int, Range(0, 2**63 - 1)] = 0
    path: Annotated[int, Range(0, 2**63 - 1)] = 0
    no_path: Annotated[int, Range(0, 2**63 - 1)] = 0
    fallback: Annotated[int, Range(0, 2**63 - 1)] = 0
    #: Envelopes refused over a flood limit, from blocked origins; rows evicted over a
    #: quota; neighbours banned for their score.
    rate_limited: Annotated[int, Range(0, 2**63 - 1)] = 0
    blocked: Annotated[int, Range(0, 2**63 - 1)] = 0
    evicted: Annotated[int, Range(0, 2**63 - 1)] = 0
    banned: Annotated[int, Range(0, 2**63 - 1)] = 0
    #: Our own delegated keys revoked (``router.revoke``).
    revoked: Annotated[int, Range(0, 2**63 - 1)] = 0


@record
class MeshEntry(Record):
    """A node the router reaches through the mesh, as its last ``mesh.peer`` said."""

    key: HexKey
    nickname: Nickname
    hops: Annotated[int, Range(1, HOPS_MAX + 1)]
    enc_key: HexKey


@record
class MeshTable(Record):
    """The mesh directory at version ``(epoch, seq)``."""

    epoch: Epoch
    seq: Seq
    items: Annotated[tuple[MeshEntry, ...], Len(0, 100_000)]


@record
class SeqBlock(Record):
    first: Annotated[int, Range(0, 2**63 - 1)]


@record
class IdList(Record):
    ids: Annotated[tuple[Id16, ...], Len(0, 100_000)]


@record
class PolicyEntry(Record):
    key: HexKey
    policy: PolicyName
    since: UnixTime
    until: UnixTime | None = None
    reason: Detail = ""


@record
class PolicyTable(Record):
    """Every block, mute and ban at version ``(epoch, seq)`` of the router's policy table."""

    epoch: Epoch
    seq: Seq
    items: Annotated[tuple[PolicyEntry, ...], Len(0, 100_000)]


@record
class ScoreEntry(Record):
    key: HexKey
    score: Score
    banned_until: UnixTime | None = None


@record
class Scores(Record):
    items: Annotated[tuple[ScoreEntry, ...], Len(0, 100_000)]


@record
class GroupMember(Record):
    key: HexKey
    #: As its profile says ("" if no profile of it reached us).
    nickname: Annotated[str, Len(0, 32, utf8=True)] = ""
    admin: bool = False
    #: ``member``, or ``invited`` (not accepted yet).
    role: Literal["member", "invited"] = "member"


@record
class GroupInfo(Record):
    """One private group as this node sees it (members only see this: docs/groups.md)."""

    group: Annotated[str, Match(r"[0-9a-f]{64}")]
    name: Annotated[str, Len(0, 64, utf8=True)]
    #: Our role: ``admin``, ``member``, ``invited`` (an invitation to accept or decline),
    #: ``left`` or ``removed``.
    role: GroupRole
    #: Grows at every removal or leave (the members re-key).
    epoch: Annotated[int, Range(0, 2**32 - 1)] = 0
    members: Annotated[tuple[GroupMember, ...], Len(0, 2000)] = ()
    #: Who invited us (for an invitation).
    invited_by: HexKey | None = None


@record
class GroupTable(Record):
    groups: Annotated[tuple[GroupInfo, ...], Len(0, 10000)]
    #: Group inputs refused since the router started, by reject code.
    refused: Annotated[tuple[tuple[str, int], ...], Len(0, 64)] = ()


@record
class GroupAnswer(Record):
    info: GroupInfo


# --- requests ------------------------------------------------------------------------

Domain = Annotated[bytes, Len(1, 32)]
SignData = Annotated[bytes, Len(0, 65536)]


@request("ping", Pong)
class Ping(Request):
    """Every service answers this: who it is and its pid."""


@request("identity.get", IdentityInfo)
class GetIdentity(Request):
    """This node's public key, fingerprint and nickname."""


@request("identity.sign", Signature)
class Sign(Request):
    """Sign ``domain || data``; ``domain`` must be one of keys.SIGNING_DOMAINS."""

    domain: Domain
    data: SignData


@request("identity.sign_many", Signatures)
class SignMany(Request):
    """Sign several ``domain || data[i]`` in one round trip."""

    domain: Domain
    items: Annotated[tuple[SignData, ...], Len(1, 1024)]


@request("identity.certify", Certificate)
class Certify(Request):
    """Certify a delegated signing key (docs/protocol.md, "Delegated signing keys"): the
    long-term key signs ``"tazcom-cert:" || origin || [1, dkey, not_before, not_after,
    purpose]``. Refused (``bad_cert``) for a validity over ``CERT_VALIDITY_MAX`` or one that
    ends in the past."""

    dkey: Annotated[bytes, Len(KEY_BYTES, KEY_BYTES)]
    not_before: Annotated[int, Range(0, 2**40)]
    not_after: Annotated[int, Range(0, 2**40)]
    purpose: Annotated[int, Range(1, 1)] = 1


@request("identity.set_nickname", IdentityInfo)
class SetNickname(Request):
    """Change this node's nickname (kept in ``$TAZCOM_HOME/nickname``; TAZCOM_NICK, when
    set, still wins at the next start). Announced with ``identity.changed``."""

    nickname: Nickname


@request("identity.open", Opened)
class OpenSealed(Request):
    """Open sealed boxes (DMs) addressed to this node's encryption key. A box answers for
    itself: one that does not open, or whose size no DM body has (outside
    ``SEALED_BOX_MIN..DM_BODY_MAX``), is None in the reply; it never fails the others."""

    boxes: Annotated[tuple[Annotated[bytes, Len(0, ENVELOPE_BODY_MAX)], ...], Len(1, 256)]


@request("discovery.snapshot", PeerSnapshot)
class GetPeers(Request):
    """The whole peer table and its sequence number."""


@request("gateway.info", GatewayInfo)
class GetGatewayInfo(Request):
    """Where the gateway listens."""


@request("gateway.send", Empty)
class SendToPeer(Request):
    """Send an ``app`` message to a verified peer. Errors: no_link, too_large; busy (a
    ``bulk`` one, while the link's bulk queue is full: retry later)."""

    key: HexKey
    kind: KindName
    body: Annotated[bytes, Len(0, APP_BODY_MAX)]
    #: Bulk (file chunks): sent behind everything else, as fast as the socket takes it.
    bulk: bool = False


@request("gateway.links", LinkList)
class GetLinks(Request):
    """Every link, in handshake or open."""


@request("gateway.clock", ClockInfo)
class GetClock(Request):
    """The mesh clock: how far this node's wall clock is off (docs/protocol.md §9, "Clock
    offset"); the snapshot of the clock table."""


@request("gateway.connect", StaticPeerList)
class Connect(Request):
    """Add (or with ``remove``, remove) a static peer: dialled at ``HOST[:PORT]`` (default
    port 4270) until linked, kept in ``$TAZCOM_HOME/static_peers.json``. Errors:
    ``bad_address``, ``not_found``, ``too_many``."""

    address: Annotated[str, Len(1, 300)]
    remove: bool = False


@request("gateway.join", StaticPeerList)
class Join(Request):
    """Join the node of an invite code (``tazcom join``): pin ``key`` and dial
    ``addresses`` as static peers that must prove it; a different key there is refused
    (``wrong_key``). Errors: ``bad_address``, ``bad_key`` (our own), ``too_many``."""

    key: HexKey
    addresses: Annotated[tuple[Annotated[str, Len(1, 300)], ...], Len(1, 4)]


@request("gateway.static_peers", StaticPeerList)
class GetStaticPeers(Request):
    """Every static peer and its state."""


@request("gateway.trust", Empty)
class Trust(Request):
    """Accept ``key`` (pin it), clearing a key-change alert. ``nickname`` pins it to a name."""

    key: HexKey
    nickname: Nickname | None = None


@request("gateway.untrust", Empty)
class Untrust(Request):
    """Remove every pin of ``key``. Errors: not_pinned."""

    key: HexKey


@request("router.post", PostResult)
class Post(Request):
    """Post a message: to the room (``to`` None) or a DM to ``to``. Answered once the
    message is committed to the store (accepted). ``client_id`` makes a retry safe: the
    same client_id always names the same message. Errors: no_key (we have no encryption
    key for ``to`` yet), bad_recipient, too_large, rate_limited (over this node's own limit
    for messages per origin: others would refuse it; the message says when to try again),
    blocked (``to`` is blocked)."""

    client_id: Annotated[bytes, Len(8, 32)]
    to: Key32 | None = None
    text: Annotated[str, Len(1, TEXT_MAX, utf8=True)]


@record
class FileCount(Record):
    """How many ``file`` inputs the file service refused with ``code`` since it started."""

    code: ErrorCode
    count: Annotated[int, Range(0, 2**63 - 1)]


@record
class FileTable(Record):
    """Files sent and received here, newest first (each row as ``file.status`` carries)."""

    files: Annotated[tuple[FileStatus, ...], Len(0, 10000)]
    #: What the file service refused, by reject code (bad chunks, unwanted chunks...).
    rejected: Annotated[tuple[FileCount, ...], Len(0, 64)] = ()


@record
class FileAnswer(Record):
    """One file's row (a reply cannot carry a field ``id`` of its own: the request's)."""

    file: FileStatus


@request("files.send", FileAnswer)
class SendFile(Request):
    """Send the file at ``path`` (on this machine, readable by the node) to the room
    (``to`` None) or as a DM file to ``to``: it is hashed (and for a DM encrypted as it is
    served), its manifest is posted like a message, and chunks are served to whoever asks.
    Answered once the manifest is committed (status ``queued``). ``client_id`` makes a
    retry safe. Errors: not_found, not_a_file, too_large, no_key, bad_recipient,
    rate_limited, blocked, io_error."""

    client_id: Annotated[bytes, Len(8, 32)]
    path: Annotated[str, Len(1, 4096)]
    to: Key32 | None = None


@request("files.list", FileTable)
class ListFiles(Request):
    """Files sent and received here, newest first, at most ``limit``."""

    limit: Annotated[int, Range(1, 10000)] = 1000


@request("files.get", FileAnswer)
class GetFile(Request):
    """Fetch a file this node was offered (a room file, or a DM file over the auto-accept
    size): ``file`` is its manifest id or a unique prefix of it (at least 4 hex digits),
    or of its hash. Answered at once with its row (status ``receiving``); progress follows
    as ``file.status`` events. Errors: not_found, ambiguous, too_large (over
    ``[files] max_size``), disk_full."""

    file: Annotated[str, Match(r"[0-9a-f]{4,64}")]


#: A group named by the user: its name (among this node's groups), or its id or a unique
#: prefix of it (at least 4 hex digits).
GroupRef = Annotated[str, Len(1, 64, utf8=True)]


@request("group.create", GroupAnswer)
class CreateGroup(Request):
    """Create a private group with us as its admin. ``client_id`` makes a retry safe: the
    same client_id names the same group (its id is derived from it). Errors: bad_message
    (name)."""

    name: Annotated[str, Len(1, 64, utf8=True)]
    client_id: Annotated[bytes, Len(8, 32)] | None = None


@request("group.invite", GroupAnswer)
class InviteToGroup(Request):
    """Invite ``peer`` (admins only). Errors: not_found, ambiguous, not_admin,
    already_member, already_invited, no_key (no profile of ``peer`` yet), bad_recipient."""

    group: GroupRef
    peer: HexKey


@request("group.accept", GroupAnswer)
class AcceptGroup(Request):
    """Accept an invitation. Errors: not_found, ambiguous, not_invited."""

    group: GroupRef


@request("group.decline", GroupAnswer)
class DeclineGroup(Request):
    """Decline an invitation. Errors: not_found, ambiguous, not_invited."""

    group: GroupRef


@request("group.leave", GroupAnswer)
class LeaveGroup(Request):
    """Leave a group; the others re-key. Errors: not_found, ambiguous, not_member."""

    group: GroupRef


@request("group.remove", GroupAnswer)
class RemoveFromGroup(Request):
    """Remove ``peer`` (admins only); the others re-key, and ``peer`` cannot read what
    follows. Errors: not_found, ambiguous, not_admin, not_member."""

    group: GroupRef
    peer: HexKey


@request("group.say", PostResult)
class GroupSay(Request):
    """Write to a group: encrypted once with our sender key (re-keyed first after a
    membership change), flooded, read by members only. ``client_id`` as for
    ``router.post``. Errors: not_found, ambiguous, not_member, too_large, rate_limited."""

    client_id: Annotated[bytes, Len(8, 32)]
    group: GroupRef
    text: Annotated[str, Len(1, TEXT_MAX, utf8=True)]


@request("group.members", GroupAnswer)
class GroupMembers(Request):
    """One group, with its members. Errors: not_found, ambiguous."""

    group: GroupRef


@request("group.list", GroupTable)
class ListGroups(Request):
    """Every group of ours, invitations included (``role`` says which)."""


@request("router.stats", RouterStats)
class GetRouterStats(Request):
    """The router's counters: envelopes accepted, duplicates heard, dropped, relayed."""


@request("router.mesh", MeshTable)
class GetMesh(Request):
    """Every node the router reaches through the mesh now, with its distance: the state
    that ``mesh.peer`` events announce one change at a time (a subscriber that may have
    missed some asks for it)."""


@request("router.policy", PolicyTable)
class GetPolicy(Request):
    """Every block, mute and ban: the state that ``peer.policy`` events announce."""


@request("router.set_policy", PolicyTable)
class SetPolicy(Request):
    """Block or mute ``key`` (``remove``: lift it); persisted. Answered with the whole table.
    Errors: bad_recipient (this node's own key)."""

    key: HexKey
    policy: Literal["block", "mute"]
    remove: bool = False


@request("router.scores", Scores)
class GetScores(Request):
    """The score of every neighbour the router has scored (docs/protocol.md, "Peer
    scoring")."""


@request("router.keys", SigningKeys)
class GetSigningKeys(Request):
    """The router's delegated signing key, its validity, and its DM keys (public)."""


@request("router.revoke", SigningKeys)
class Revoke(Request):
    """Revoke a delegated key (default: the one in use, which is replaced at once):
    identity signs the revocation, and it floods like a profile. Every node then refuses
    envelopes signed by that key and written at or after ``at`` (unix ms; default now)."""

    key: HexKey | None = None
    at: Annotated[int, Range(0, 2**53 - 1)] | None = None


# -- the router's calls into its store (services/storedb.py ``Store``, in-process) ----------------
# The router is the one writer of store.sqlite: these are arguments of ``Store`` methods,
# not requests; only ``store.history`` crosses a process boundary. One batch of the router
# (up to 1024 frames of 64 envelopes, and their receipts) is one transaction
# (STORE_BATCH_MAX).


@record
class StorePut(Record):
    """Insert messages, idempotent on ``id`` (and on ``client_id`` for our own); one
    transaction, committed before the reply. ``new`` is False for a message already held
    (then ``id`` is the stored one: for a repeated ``client_id``, the original's id)."""

    items: Annotated[tuple[StoredMessage, ...], Len(1, STORE_BATCH_MAX)]


@record
class StoreSetStatus(Record):
    """Move our own messages forward, as ``common.status.advance`` allows: queued < sent <
    relayed < failed < delivered (a receipt after ``failed`` still proves delivery);
    delivered is final. A status never goes back."""

    updates: Annotated[tuple[StatusUpdate, ...], Len(1, STORE_BATCH_MAX)]


@record
class StoreRelease(Record):
    """Stop holding these messages for store-and-forward (delivered, or expired)."""

    ids: Annotated[tuple[Id16, ...], Len(1, STORE_BATCH_MAX)]


@record
class StoreGet(Record):
    """The envelopes with these ids that the store has (to send them to a peer)."""

    ids: Annotated[tuple[Id16, ...], Len(1, STORE_BATCH_MAX)]


@request("store.history", History)
class StoreHistory(Request):
    """A conversation in the order it reached this node, oldest first: the room
    (``conv`` None) or the DMs with ``conv``."""

    conv: Key32 | None = None
    limit: Annotated[int, Range(1, 10000)] = 100
    #: Only messages received before this (unix ms, our clock), to page backwards.
    before: Millis | None = None
    #: Only messages received before this one (exact among messages received in the same
    #: millisecond; ``before`` is used when this id is unknown).
    before_id: Id16 | None = None


@record
class StoreSyncSet(Record):
    """What catch-up offers: room messages and latest profiles since ``since``, and every
    held DM and receipt."""

    since: Millis


@record
class StoreOutbox(Record):
    """Our own messages not yet delivered (status queued, sent or relayed)."""


@record
class StoreProfiles(Record):
    """The newest profile of every origin."""


@record
class StoreReserveSeq(Record):
    """Reserve ``count`` sequence numbers for our own envelopes; never hands one out twice,
    across restarts."""

    count: Annotated[int, Range(1, 1_000_000)]


@record
class StoreRecentIds(Record):
    """Ids of messages received since ``since`` (unix seconds), newest first, at most
    ``limit``: the router's seen-set after a restart."""

    since: UnixTime
    limit: Annotated[int, Range(1, 100_000)] = 100_000


@request("bus.status", StatusReport)
class GetStatus(Request):
    """Each service's health as seen on the bus."""


# --- codec ---------------------------------------------------------------------------


def encode_request(req: Request, req_id: int) -> bytes:
    body = req.to_dict()
    body.update(v=ENVELOPE_V, id=req_id, op=req.OP)
    return codec.pack(body)


def decode_request(body: bytes, max_size: int) -> tuple[int | None, Request]:
    """Parse a request. On failure raises with ``.req_id`` set when it could be read."""
    data = codec.unpack(body, max_size)
    if not isinstance(data, dict):
        raise SchemaError("a request is a map", code="bad_request")
    req_id = data.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool) or not 0 <= req_id < 2**63:
        raise SchemaError("request id missing or invalid", code="bad_request")
    try:
        v = data.get("v")
        if type(v) is not int or v != ENVELOPE_V:
            raise SchemaError(f"unsupported version {ascii(v)[:40]}", code="bad_version")
        op = data.get("op")
        cls = REQUESTS.get(op) if type(op) is str else None
        if cls is None:
            raise SchemaError(f"unknown op {ascii(op)[:80]}", code="unknown_op")
        return req_id, cls.from_dict(data)
    except SchemaError as e:
        e.req_id = req_id  # type: ignore[attr-defined]
        raise


def encode_reply(req_id: int, reply: Record) -> bytes:
    body = reply.to_dict()
    body.update(v=ENVELOPE_V, id=req_id, ok=True)
    return codec.pack(body)


def encode_error(req_id: int | None, code: str, message: str) -> bytes:
    body = ErrorReply(error=code, message=message).to_dict()
    return codec.pack({"v": ENVELOPE_V, "id": req_id, "ok": False, **body})


def peek_reply_id(data: Any) -> int | None:
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            return rid
    return None


def parse_reply(data: Any, reply_cls: type[Record]) -> Record:
    """Turn a decoded reply map into ``reply_cls``; raises ``RequestFailed`` on ``ok: false``."""
    if not isinstance(data, dict) or data.get("v") != ENVELOPE_V:
        raise SchemaError("bad reply envelope", code="bad_reply")
    if data.get("ok") is True:
        return reply_cls.from_dict(data)
    code = data.get("error")
    message = data.get("message")
    raise RequestFailed(
        message if isinstance(message, str) else "request failed",
        code=code if isinstance(code, str) else "failed",
    )


__all__ = [
    "REQUESTS",
    "Address",
    "Certificate",
    "Certify",
    "Connect",
    "Empty",
    "Fingerprint",
    "GatewayInfo",
    "GetGatewayInfo",
    "GetIdentity",
    "GetLinks",
    "GetPeers",
    "GetSigningKeys",
    "GetStaticPeers",
    "GetStatus",
    "HexKey",
    "IdentityInfo",
    "LinkInfo",
    "LinkList",
    "Nickname",
    "PeerSnapshot",
    "Ping",
    "Pong",
    "Request",
    "Revoke",
    "SendToPeer",
    "Sign",
    "SignMany",
    "Signature",
    "Signatures",
    "SigningKeys",
    "StaticPeer",
    "StaticPeerList",
    "StatusReport",
    "Trust",
    "Untrust",
    "decode_request",
    "encode_error",
    "encode_reply",
    "encode_request",
    "parse_reply",
]
