"""The router's decisions, sans-IO: envelopes in, actions out.

Theory of operation (docs/protocol.md §10, "Chat across the mesh")
-------------------------------------------------------------------
``RouterCore`` holds everything the router knows (seen ids, the catch-up
index, the mesh directory, our own messages' statuses, relays waiting) and
decides what to do with each input. It never touches a socket, a database or
a clock: every entry point takes ``now`` (wall-clock seconds, for envelope
timestamps) and ``mono`` (a monotonic clock, for timers), and is a generator
that *yields actions*:

* fire and forget: ``Send`` (a router message to a neighbour), ``Emit`` (a bus
  event), ``Rejected`` (one refused input, to log), ``SetStatus``,
  ``Release``, ``LowerHops`` (store writes);
* requests, whose result the driver sends back into the generator:
  ``Commit`` (store rows, returns ``PutOutcome`` s), ``Fetch`` (stored
  envelopes by id), ``ReserveSeq`` (first of a block of sequence numbers),
  ``Sign`` (identity signatures over envelope bytes), ``Open`` (identity opens
  sealed boxes), and ``Together`` (several requests at once, results in order).

``drive()`` runs a step with a synchronous executor (tests, the simulator);
the router service drives the same generators with ZeroMQ and SQLite.

The order of a batch is the protocol's: parse, hop limit, duplicate, time
window, rate limits, signature (cheap checks first); then relay at once (the
next hop deduplicates), commit, and only after the commit show, acknowledge
(custody) and answer (receipts). An id enters the seen-set only after its
signature checked and its row committed, so a forged copy never marks the
real message and a batch the store refused can come again by catch-up.

Paths (docs/protocol.md, "Forwarding"): a DM or receipt whose recipient is not
a neighbour follows the shortest paths the mesh directory knows: the origin
sends it to up to ``PATH_FANOUT`` neighbours one hop closer, a relay to one.
Each hop waits ``custody_wait`` for the next hop's custody; without it, or
with no path known, the envelope floods from there, as before.
"""

from __future__ import annotations

import random
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.public

from . import catchup, certs, envelope, filecrypt, filemanifest, gossip, routing, rpc, status
from .envelope import (
    ADDRESSED,
    KIND_DM,
    KIND_FILE,
    KIND_GROUP,
    KIND_GROUP_CTL,
    KIND_PROFILE,
    KIND_RECEIPT,
    KIND_REVOKE,
    KIND_ROOM,
    Envelope,
    EnvelopeError,
)
from .errors import RemoteProtocolError
from .events import ChatMessage, ChatStatus, KeyRevoked, MeshPeer, PeerPolicy, PeerScore
from .floodlimits import FloodLimits, FloodSettings
from .keyring import DM_KEY_KEEP
from .keys import fingerprint
from .mirror import Numbering
from .quota import QuotaBook, QuotaSettings, evictable, row_bytes
from .routergroups import CAP_GROUP, GroupRouter, SaveAcks, SaveGroups, StoreReason, StoreText
from .scoring import PeerScores, ScoreSettings

#: A frame of envelopes stays under this many bytes (router messages are <= 65455).
FRAME_BUDGET = 60_000
ANTI_ENTROPY = 60.0
#: Our profile is flooded again this often even when nothing changed (it changes with our
#: links and nickname, and goes out then): every profile reaches every node, so this is the
#: idle traffic of a mesh, O(N) per node (docs/perf/README.md, the simulator's figures).
PROFILE_EVERY = 3600.0
#: A node whose profile has not been refreshed for this long is taken as gone (a safety
#: net: a node that left is unreachable as soon as its neighbours' profiles drop it).
PROFILE_EXPIRES = 3 * PROFILE_EVERY + 300.0
PROFILE_DEBOUNCE = 0.05
#: The mesh directory is recomputed at most this often (a flood of profiles is one step).
RECOMPUTE_DELAY = 0.1
SEQ_BLOCK = 1000
#: Neighbours one hop closer that an origin sends a DM or receipt to (relays send to one).
PATH_FANOUT = 2
MAX_POSTS = 256
#: Receipts' ids remembered when the envelope they acknowledge has not reached us.
ACKED_KEPT = 65_536


# -- actions ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Send:
    link: bytes
    body: bytes


@dataclass(slots=True)
class Emit:
    event: type
    fields: dict[str, Any]


@dataclass(slots=True)
class Rejected:
    source: str
    reason: str
    detail: str = ""


@dataclass(slots=True)
class Commit:
    items: list[rpc.StoredMessage]


@dataclass(slots=True)
class Fetch:
    ids: list[bytes]


@dataclass(slots=True)
class SetStatus:
    updates: list[rpc.StatusUpdate]


@dataclass(slots=True)
class Release:
    ids: list[bytes]


@dataclass(slots=True)
class LowerHops:
    distances: dict[bytes, int]


@dataclass(slots=True)
class ReserveSeq:
    count: int


@dataclass(slots=True)
class Sign:
    items: list[bytes]
    #: Signed by the long-term key (identity), not the delegated one: revocations only.
    long_term: bool = False


@dataclass(slots=True)
class Open:
    boxes: list[bytes]


@dataclass(slots=True)
class FileManifest:
    """A file's manifest was accepted here, a room file's or one sent to us (for the file
    service: it offers or fetches the file). ``secret``: a DM file's opened meta."""

    env: Envelope
    manifest: filemanifest.Manifest
    secret: filemanifest.Secret | None
    hops: int
    came_from: bytes | None


@dataclass(slots=True)
class Together:
    actions: list[Any]


@dataclass(slots=True)
class SavePolicy:
    """Persist a block, mute or ban of ``key`` (``policy`` None: lift it)."""

    key: bytes
    policy: str | None
    since: float = 0.0
    until: float | None = None
    reason: str = ""


@dataclass(slots=True)
class Evict:
    """Delete at least ``size`` bytes of ``origin``'s oldest evictable rows (quota.evictable;
    ``size`` None: all of them); returns ``(id, bytes)`` of each row deleted."""

    origin: bytes
    size: int | None
    #: This node's key: its own messages, and those addressed to it, are never evicted.
    own: bytes


Action = (Send | Emit | Rejected | Commit | Fetch | SetStatus | Release | LowerHops | ReserveSeq
          | Sign | Open | Together | SavePolicy | Evict | FileManifest | StoreText | StoreReason
          | SaveGroups | SaveAcks)
Step = Generator[Action, Any, Any]


def drive(step: Step, execute: Callable[[Action], Any]) -> Any:
    """Run ``step`` to its end with a synchronous ``execute``; returns the step's value.
    An action that fails is raised inside the step, where it was yielded, so the step's
    own cleanup runs (the router service's driver does the same)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            action = step.send(result) if error is None else step.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            result, error = execute(action), None
        except Exception as e:  # noqa: BLE001 - raised in the step, which decides
            result, error = None, e


# -- state --------------------------------------------------------------------------------------


@dataclass
class RouterSettings:
    hop_limit: int = envelope.DEFAULT_HOP_LIMIT
    relay_delay: float = 0.002
    link_rate: float = 5000
    link_burst: float = 20000
    seen_capacity: int = 100_000
    seen_horizon: float = 86_400
    custody_wait: float = 1.0
    profile_every: float = PROFILE_EVERY
    profile_expires: float = PROFILE_EXPIRES
    anti_entropy: float = ANTI_ENTROPY
    #: Neighbours one hop closer an origin sends a DM or receipt to (0: always flood).
    path_fanout: int = PATH_FANOUT
    flood: FloodSettings = field(default_factory=FloodSettings)
    scoring: ScoreSettings = field(default_factory=ScoreSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)

    @classmethod
    def from_config(cls, raw: dict[str, Any], scoring: dict[str, Any] | None = None
                    ) -> RouterSettings:
        """The ``[router]`` config section (and ``[scoring]``)."""
        return cls(hop_limit=min(int(raw.get("hop_limit", envelope.DEFAULT_HOP_LIMIT)),
                                 envelope.MAX_HOPS_LIMIT),
                   relay_delay=float(raw.get("relay_delay_ms", 2)) / 1000,
                   link_rate=float(raw.get("link_rate", 5000)),
                   link_burst=float(raw.get("link_burst", 20000)),
                   seen_capacity=int(raw.get("seen_capacity", 100_000)),
                   seen_horizon=float(raw.get("seen_horizon", 86_400)),
                   custody_wait=float(raw.get("custody_wait_ms", 1000)) / 1000,
                   profile_every=float(raw.get("profile_every_s", PROFILE_EVERY)),
                   profile_expires=float(raw.get("profile_expires_s", PROFILE_EXPIRES)),
                   flood=FloodSettings.from_config(raw),
                   scoring=ScoreSettings.from_config(scoring or {}),
                   quota=QuotaSettings.from_config(raw))


@dataclass
class Accepted:
    env: Envelope
    hops: int  # links travelled to reach us: our distance
    came_from: bytes | None
    text: str | None = None
    secret: filemanifest.Secret | None = None
    #: A group_ctl to us, opened: (type, body).
    ctl: tuple[str, bytes] | None = None


@dataclass
class Directory:
    """A node as its newest signed profile describes it."""

    nickname: str
    enc_key: bytes
    version: tuple[int, int]  # (ts, seq): newer profiles win
    links: frozenset[bytes]
    profile_id: bytes
    received_at: float
    #: The profile itself, and the distance we hold it at (offered when a link comes up).
    env: Envelope
    hops: int
    #: What mesh.peer last said of it: its distance (None: unreachable) and nickname.
    published: tuple[int | None, str] = (None, "")
    #: Since when (unix ms) ``enc_key`` is its DM key (0: its profile does not say).
    enc_since: int = 0


@dataclass
class Awaiting:
    """A DM or receipt sent along a path, until the next hop takes custody."""

    due: float
    entry: tuple[int, bytes, bytes]
    env: Envelope
    came_from: bytes | None
    sent_to: set[bytes]


@dataclass(frozen=True, slots=True)
class FilePost:
    """A file to announce: its id and size (of the ciphertext, for a DM file), what it is
    called, and for a DM file the key it is encrypted with (sealed into the manifest)."""

    file_id: bytes
    size: int
    name: str
    mime: str = ""
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class PostSpec:
    client_id: bytes
    to: bytes | None
    text: str
    #: A file's manifest instead of a text message (``text``: its line in the history).
    file: FilePost | None = None


@dataclass(frozen=True, slots=True)
class PostRefused:
    code: str
    message: str


Entry = tuple[int, bytes, bytes]  # (hops, signed, sig) as in a router ``envs`` message
#: The hello capability of nodes that read envelope version 2.
CAP_ENV2 = "env/2"
#: The hello capability of nodes that read file manifests (kind 6) and carry files.
CAP_FILE = "file/1"


def file_line(name: str, size: int) -> str:
    """A file's line in the history (its ``text``)."""
    amount: float = size
    for unit in ("bytes", "KiB", "MiB"):
        if amount < 1024:
            return f"[file] {name} ({amount:.0f} {unit})" if unit == "bytes" else \
                f"[file] {name} ({amount:.1f} {unit})"
        amount /= 1024
    return f"[file] {name} ({amount:.1f} GiB)"


class RouterCore(GroupRouter):
    def __init__(self, own_key: bytes, enc_key: bytes, nickname: str,
                 settings: RouterSettings | None = None, *, numbering: Numbering | None = None,
                 verify: Callable[[Envelope], None] | None = None,
                 rng: random.Random | None = None,
                 policy_numbering: Numbering | None = None) -> None:
        self.own_key, self.enc_key, self.nickname = own_key, enc_key, nickname
        s = self.settings = settings or RouterSettings()
        self.hop_limit = s.hop_limit
        #: Checks certificates once (cached) and knows the revocations accepted.
        self.verifier = certs.Verifier()
        self.verify = verify or self.verifier
        #: Our delegated key's certificate: our envelopes are version 2 with it (None:
        #: version 1, signed by the long-term key; the simulator's nodes).
        self.cert: bytes | None = None
        #: Since when (unix ms) ``enc_key`` is our DM key, as our profile says.
        self.enc_since = 0
        #: Our DMs not yet delivered -> the recipient's DM key they were sealed to.
        self.sealed_to: dict[bytes, bytes] = {}
        self.relay = gossip.RelayQueue(max_delay=s.relay_delay, rng=rng or random.Random())
        self.link_rate = gossip.Buckets(s.link_rate, s.link_burst)
        self.flood = FloodLimits(s.flood)
        self.scores = PeerScores(s.scoring)
        self.quota = QuotaBook(s.quota)
        #: Blocks, mutes and bans: key -> (policy, since, until, reason); the router's
        #: ``policy`` table, published as peer.policy.
        self.policy: dict[bytes, tuple[str, float, float | None, str]] = {}
        self.policy_numbering = policy_numbering or Numbering(1)
        #: Where each neighbour link comes from (its IP address), for per-address limits.
        self.addresses: dict[bytes, str] = {}
        self._penalized: set[bytes] = set()
        self._score_told: dict[bytes, float] = {}
        #: When the next ban ends (monotonic; 0: check at the first tick, after a load).
        self.ban_ends: float | None = None
        #: Accepted in the batch being processed, not yet committed (id -> its acceptance).
        self.pending: dict[bytes, Accepted] = {}
        #: Distances of what we accepted lately, lowered when a shorter path shows up.
        self.recent = gossip.Recent()
        self._lowered: dict[bytes, int] = {}
        self._shorter: list[tuple[Envelope, int, bytes | None]] = []
        self._dup_custody: dict[bytes, list[bytes]] = defaultdict(list)
        self.seen = gossip.SeenSet(s.seen_capacity, s.seen_horizon)
        self.index = catchup.SyncIndex()
        #: How far each neighbour's id list of a bucket has got (lists of over MAX_IDS).
        self.id_cursor = catchup.IdCursor(routing.MAX_IDS)
        #: Ids a receipt we relayed acknowledged before the envelope itself reached us ->
        #: their recipient: such an envelope is not held (its recipient has it).
        self.acked: OrderedDict[bytes, bytes] = OrderedDict()
        #: Our verified neighbours (the gateway's link table).
        self.links: set[bytes] = set()
        #: Those that did not say ``env/2`` in their hello: they read version 1 only.
        self.old_links: set[bytes] = set()
        #: Those that did not say ``file/1``: they would refuse file manifests as bad_kind.
        self.nofile_links: set[bytes] = set()
        #: The mesh directory (published as mesh.peer), which the router owns.
        self.numbering = numbering or Numbering(1)
        self.directory: dict[bytes, Directory] = {}
        self.profile_origin: dict[bytes, bytes] = {}  # profile id -> its node, in directory
        #: Distances and the neighbours one hop closer, from the last recompute.
        self.dist: dict[bytes, int] = {}
        self.first_hops: dict[bytes, tuple[bytes, ...]] = {}
        #: The farthest node we know, in links (gossip.reach_matters).
        self.eccentricity = 0
        self.own_status: dict[bytes, tuple[str, bytes | None]] = {}  # id -> (status, to)
        self.awaiting: dict[bytes, Awaiting] = {}
        self._delivered: list[bytes] = []  # found at load, applied by the first tick
        self._sent: list[bytes] = []  # posted and handed to a link; see settle_posts
        self.seq_next = self.seq_end = 0
        self.counts = {"accepted": 0, "duplicates": 0, "dropped": 0, "relayed": 0, "posted": 0,
                       "shorter": 0, "path": 0, "no_path": 0, "fallback": 0,
                       "rate_limited": 0, "blocked": 0, "evicted": 0, "banned": 0,
                       "revoked": 0}
        self.recompute_at: float | None = None
        #: When our next profile goes out (monotonic); the first one at start.
        self.profile_at: float | None = 0.0
        self.summary_at: float | None = None
        self.last_profile: Envelope | None = None
        self.init_groups()

    # -- start -----------------------------------------------------------------------------

    def load(self, *, seen: Iterable[bytes], sync: Iterable[rpc.SyncItem],
             profiles: Iterable[rpc.WireEnvelope], outbox: Iterable[tuple[bytes, str,
                                                                             bytes | None]],
             now: float, receipts: Iterable[rpc.WireEnvelope] = (),
             usage: Iterable[tuple[bytes, int]] = (),
             policies: Iterable[tuple[bytes, str, float, float | None, str]] = (),
             revocations: Iterable[rpc.WireEnvelope] = ()) -> None:
        """What the store holds: seen ids (oldest first), the catch-up set, the stored
        profiles, our undelivered messages and the receipts addressed to us (a crash
        between a receipt's commit and its status must not leave a DM short of
        ``delivered``: the first ``tick`` finishes the job), the bytes each origin uses
        against its quota, and the blocks, mutes and bans."""
        for origin, size in usage:
            self.quota.add(origin, size)
        for key, policy, since, until, reason in policies:
            self.policy[key] = (policy, since, until, reason)
            if policy == "ban":
                self.ban_ends = 0.0
        for msg_id in seen:
            self.seen.add(msg_id, now)
        for item in sync:
            self.index.add(item.id, item.ts, None if item.kind == KIND_GROUP else item.to)
        for e in profiles:
            try:
                env = envelope.parse(e.signed, e.sig)
            except EnvelopeError:
                continue
            if env.origin == self.own_key:
                self.last_profile = env  # so that our next one replaces it in catch-up
            self.on_profile(env, e.hops, now)
        for msg_id, st, to in outbox:
            self.own_status[msg_id] = (st, to)
        for e in receipts:
            try:
                env = envelope.parse(e.signed, e.sig)
            except EnvelopeError:
                continue
            self._delivered += [i for i in envelope.receipt_ids(env.body)
                                if self.own_status.get(i, ("", None))[1] == env.origin]
        for e in revocations:
            try:
                env = envelope.parse(e.signed, e.sig)
            except EnvelopeError:
                continue
            self.on_revoke(env)

    # -- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The monotonic time ``tick`` next has work, or None."""
        times = [t for t in (self.relay.next_deadline(), self.recompute_at, self.profile_at,
                             self.summary_at) if t is not None]
        if self.awaiting:
            times.append(min(a.due for a in self.awaiting.values()))
        if self.ban_ends is not None:
            times.append(self.ban_ends)
        return min(times, default=None)

    def tick(self, now: float, mono: float) -> Step:
        """Whatever is due: relays after their delay, the mesh directory, custody waits
        that ran out (flood from here), our profile, the catch-up round."""
        if self._delivered:
            done, self._delivered = self._delivered, []
            yield from self.set_status([(i, "delivered") for i in done])
        yield from self.settle_posts()
        if self.ban_ends is not None and mono >= self.ban_ends:
            yield from self.lift_bans(now, mono)
        per_target: dict[bytes, list[Entry]] = defaultdict(list)
        for _msg_id, targets, entry in self.relay.due(mono):
            for t in targets:
                if t in self.links:
                    per_target[t].append(entry)  # type: ignore[arg-type]
        for target, entries in per_target.items():
            yield from self.send_entries(target, entries)
        if self.recompute_at is not None and mono >= self.recompute_at:
            yield from self.recompute(now)
        late = [k for k, a in self.awaiting.items() if a.due <= mono]
        for msg_id in late:
            yield from self.fall_back(self.awaiting.pop(msg_id), mono)
        if self.profile_at is not None and mono >= self.profile_at:
            wait = self.flood.own_allowance(KIND_PROFILE, self.own_key, mono)
            if wait > 0:
                # links that flap (or a peer that connects and leaves in a loop) must not
                # make us flood profiles past the limit our neighbours hold us to: the
                # changes are coalesced into the next profile the limit allows
                # (a little after the token is back: our neighbours' buckets are no earlier)
                self.profile_at = mono + min(wait + 0.01, self.settings.profile_every)
            else:
                self.flood.take_own(KIND_PROFILE, self.own_key, mono)
                # a little early, at random: nodes started together do not refresh together
                self.profile_at = mono + self.settings.profile_every * \
                    self.relay.rng.uniform(0.9, 1)
                yield from self.publish_profile(now, mono)
        if self.summary_at is not None and mono >= self.summary_at:
            yield from self.anti_entropy(now, mono)

    def anti_entropy(self, now: float, mono: float) -> Step:
        self.summary_at = mono + self.settings.anti_entropy
        self.seen.expire(now)
        for key in [k for k in self._score_told if k not in self.links]:
            del self._score_told[key]
        self.index.expire(int(now * 1000) - gossip.MAX_AGE_MS,
                          keep=[i for i, (st, to) in self.own_status.items()
                                if to and st != "failed"])
        for key in sorted(self.links):
            yield self.summary(key)
        yield from self.keys_gone(now)
        expires = self.settings.profile_expires
        if any(now - d.received_at > expires and d.published[0] is not None
               for d in self.directory.values()):
            yield from self.recompute(now)  # profiles not refreshed in time: their node is gone

    # -- links and identity ----------------------------------------------------------------

    def set_links(self, links: set[bytes], now: float, mono: float,
                  addresses: dict[bytes, str] | None = None) -> Step:
        """Our verified neighbours changed (and the address each comes from): catch-up and
        profiles with each new one."""
        links = {k for k in links if self.refuses_link(k, now) is None}
        added, gone = links - self.links, self.links - links
        self.links = set(links)
        self.addresses = {k: a for k, a in (addresses or {}).items() if k in links}
        for key in links:
            self.scores.linked(key, self.addresses.get(key), mono)
        for key in gone:
            self.scores.unlinked(key, mono)
        for key in sorted(added):
            yield self.summary(key)
            yield from self.send_profiles(key)
        for a in self.awaiting.values():
            if a.sent_to & gone:  # the path broke: do not wait for a custody that cannot come
                a.due = mono
        if added or gone:
            self.schedule_recompute(mono)
            self.want_profile(mono)
        if self.summary_at is None:
            self.summary_at = mono + self.settings.anti_entropy

    def set_caps(self, caps: dict[bytes, tuple[str, ...]]) -> None:
        """What each open link said in its hello: which envelopes it can be sent (version
        1 only without ``env/2``; no file manifests without ``file/1``; no group kinds
        without ``group/1``)."""
        self.old_links = {k for k, c in caps.items() if CAP_ENV2 not in c}
        self.nofile_links = {k for k, c in caps.items() if CAP_FILE not in c}
        self.nogroup_links = {k for k, c in caps.items() if CAP_GROUP not in c}

    def set_nickname(self, nickname: str, mono: float) -> None:
        if nickname != self.nickname:
            self.nickname = nickname
            self.want_profile(mono)

    def set_signer(self, cert: bytes | None) -> None:
        """The certificate of the delegated key the shell signs our envelopes with."""
        self.cert = cert

    def set_enc_key(self, enc_key: bytes, since_ms: int, mono: float) -> None:
        """Our DM key rotated: neighbours learn the new one from our next profile."""
        if (enc_key, since_ms) != (self.enc_key, self.enc_since):
            self.enc_key, self.enc_since = enc_key, since_ms
            self.want_profile(mono)

    def want_profile(self, mono: float) -> None:
        due = mono + PROFILE_DEBOUNCE  # let a burst of link changes settle
        if self.profile_at is None or self.profile_at > due:
            self.profile_at = due

    # -- sending ---------------------------------------------------------------------------

    def summary(self, key: bytes) -> Send:
        return Send(key, routing.encode_summary(self.index.summary()[-routing.MAX_BUCKETS:]))

    def send_entries(self, key: bytes, entries: list[Entry]) -> Step:
        """Envelopes to one neighbour, packed into as few frames as fit; to a neighbour that
        reads version 1 only, version 1 envelopes only (it would refuse the others as
        invalid: docs/protocol.md, "Envelope versions")."""
        if key in self.old_links:
            entries = [e for e in entries if envelope.version_of(e[1]) == 1]
        elif key in self.nofile_links:
            entries = [e for e in entries if envelope.kind_of(e[1]) != KIND_FILE]
        if key in self.nogroup_links:
            entries = [e for e in entries if envelope.kind_of(e[1]) not in envelope.GROUP_KINDS]
        batch: list[Entry] = []
        size = 0
        for entry in entries:
            n = len(entry[1]) + 80
            if batch and (size + n > FRAME_BUDGET or len(batch) >= routing.MAX_ENVS):
                yield Send(key, routing.encode_envs(batch))
                batch, size = [], 0
            batch.append(entry)
            size += n
        if batch:
            yield Send(key, routing.encode_envs(batch))

    def send_profiles(self, key: bytes) -> Step:
        """Every newest profile we hold, at our distance, to a new neighbour: catch-up only
        sends what it lacks; this also tells it of shorter paths (the new link may be one)."""
        entries = [(d.hops, d.env.signed, d.env.sig) for origin, d in self.directory.items()
                   if origin != key and gossip.relays(d.hops, self.hop_limit)]
        if entries:
            yield from self.send_entries(key, entries)

    def path(self, env: Envelope, came_from: bytes | None, distance: int) -> list[bytes] | None:
        """Neighbours one hop closer to a DM's or receipt's recipient, or None to flood."""
        fanout = self.settings.path_fanout
        if env.kind not in ADDRESSED or env.to is None or env.to in self.links \
                or not fanout:
            return None
        closer = [k for k in self.first_hops.get(env.to, ()) if k != came_from]
        if not closer:
            return None
        return closer[: fanout if distance == 0 else 1]

    def forward(self, items: list[tuple[Envelope, int, bytes | None]], mono: float
                ) -> Generator[Action, Any, set[bytes]]:
        """Relay accepted envelopes (``hops`` = our distance); returns ids sent now."""
        per_target: dict[bytes, list[Entry]] = defaultdict(list)
        sent_ids: set[bytes] = set()
        for env, hops, came_from in items:
            if not gossip.relays(hops, self.hop_limit):
                continue
            entry = (hops, env.signed, env.sig)
            targets = self.path(env, came_from, hops)
            if targets is not None:
                self.counts["path"] += 1
                self.awaiting[env.id] = Awaiting(due=mono + self.settings.custody_wait,
                                                 entry=entry, env=env, came_from=came_from,
                                                 sent_to=set(targets))
                for t in targets:
                    per_target[t].append(entry)
                sent_ids.add(env.id)
                continue
            if env.kind in ADDRESSED and env.to is not None and env.to not in self.links:
                self.counts["no_path"] += 1
            targets = gossip.relay_targets(kind=env.kind, to=env.to, origin=env.origin,
                                           came_from=came_from, links=self.links)
            if not targets:
                continue
            self.counts["relayed"] += 1
            # our own go at once: nobody can have them yet, and they are then ``sent``
            if hops == 0 or self.relay.schedule(env.id, targets, mono, hops, entry) is None:
                for t in targets:
                    per_target[t].append(entry)
                sent_ids.add(env.id)
        for target, entries in per_target.items():
            yield from self.send_entries(target, entries)
        return sent_ids

    def fall_back(self, waiting: Awaiting, mono: float) -> Step:
        """No custody from the path: flood from here (all but who had it already)."""
        env = waiting.env
        targets = [k for k in gossip.relay_targets(
            kind=env.kind, to=env.to, origin=env.origin, came_from=waiting.came_from,
            links=self.links) if k not in waiting.sent_to]
        if env.to in self.links:
            targets = [env.to] if env.to not in waiting.sent_to else []
        if targets:
            self.counts["fallback"] += 1
            for t in targets:
                yield from self.send_entries(t, [waiting.entry])

    # -- receiving -------------------------------------------------------------------------

    def reject(self, source: str, reason: str, detail: str = "") -> Rejected:
        self.counts["dropped"] += 1
        return Rejected(source, reason, detail)

    def receive(self, frames: list[list[bytes]], now: float, mono: float) -> Step:
        """A batch of ``[peer key, router message]`` frames from the gateway."""
        accepted: list[Accepted] = []
        for frame in frames:
            if len(frame) != 2 or type(frame[0]) is not bytes or len(frame[0]) != 32 \
                    or type(frame[1]) is not bytes:
                yield self.reject("gateway", "bad_frames")
                continue
            key, body = frame
            refused = self.refuses_link(key, now) if key not in self.links else None
            if refused is not None:  # the gateway is closing its link
                yield self.reject(f"peer {fingerprint(key)}", refused,
                                  f"{refused} here: its link is being closed")
                continue
            if not self.link_rate.take(key, mono):
                self.penalize(key, mono)
                yield self.reject(f"peer {fingerprint(key)}", "rate_limited",
                                  "too many router messages from this link")
                continue
            try:
                msg = routing.decode(body)
            except RemoteProtocolError as e:
                self.penalize(key, mono)
                yield self.reject(f"peer {fingerprint(key)}", e.code, e.message)
                continue
            if isinstance(msg, routing.Envs):
                for code, message in msg.bad:  # refused one by one; the others go on
                    yield self.reject(f"peer {fingerprint(key)}", code, message)
                for hops, signed, sig in msg.entries:
                    acc = yield from self.check(hops, signed, sig, key, now, mono)
                    if acc is not None:
                        accepted.append(acc)
            elif isinstance(msg, routing.Custody):
                yield from self.on_custody(key, msg.ids)
            elif isinstance(msg, routing.SummaryMsg | routing.IdsMsg):
                # catch-up makes us read the store and send: a neighbour gets what the
                # protocol needs (a summary a minute, ids in answer to ours), no more
                over = self.flood.admit_catchup(key, isinstance(msg, routing.SummaryMsg), mono)
                if over is not None:
                    self.penalize(key, mono)
                    self.counts["rate_limited"] += 1
                    yield self.reject(f"peer {fingerprint(key)}", "rate_limited",
                                      f"over the catch-up limit ({over} per link)")
                elif isinstance(msg, routing.SummaryMsg):
                    yield from self.on_summary(key, msg.buckets)
                else:
                    yield from self.on_ids(key, msg.bucket, msg.ids)
        if accepted:
            try:
                yield from self.accept(accepted, now, mono)
            finally:
                for a in accepted:
                    self.pending.pop(a.env.id, None)
        if self._shorter:
            self.counts["shorter"] += len(self._shorter)
            shorter, self._shorter = self._shorter, []
            yield from self.forward(shorter, mono)
        if self._lowered:
            lowered, self._lowered = self._lowered, {}
            yield LowerHops(lowered)
        if self._dup_custody:
            dups, self._dup_custody = self._dup_custody, defaultdict(list)
            for link, ids in dups.items():
                for chunk in catchup.chunks(ids, routing.MAX_CUSTODY):
                    yield Send(link, routing.encode_custody(chunk))
        if self._penalized:
            yield from self.judge(now, mono)

    def check(self, hops: int, signed: bytes, sig: bytes, link: bytes, now: float,
              mono: float) -> Generator[Action, Any, Accepted | None]:
        if not gossip.accepts(hops, self.hop_limit):
            yield self.reject(f"peer {fingerprint(link)}", "hop_limit",
                              f"{hops} hops, limit {self.hop_limit}")
            return None
        # A duplicate is known by its id alone (a hash of the signed bytes): most copies in
        # a mesh are duplicates, and they cost no parsing.
        msg_id = envelope.message_id(signed)
        if msg_id in self.seen or msg_id in self.pending:
            self.counts["duplicates"] += 1
            held = self.held(msg_id)
            kind = held.kind if held is not None else None
            self.relay.heard_from(msg_id, link, hops, closer_matters=kind == KIND_PROFILE
                                  or gossip.reach_matters(hops, self.eccentricity,
                                                          self.hop_limit))
            if held is not None:
                self.shorter_path(held, hops, link)
                if held.kind in ADDRESSED and held.to is not None and held.to != self.own_key \
                        and msg_id in self.seen:
                    # we hold it already: a sender on a path waits for our custody
                    self._dup_custody[link].append(msg_id)
            return None
        try:
            env = envelope.parse(signed, sig)
        except EnvelopeError as e:
            self.penalize(link, mono, invalid=True)
            yield self.reject(f"peer {fingerprint(link)}", e.code, e.message)
            return None
        why = gossip.window(env.ts, now)
        if why is not None:  # not held against the link: its clock may differ from ours
            yield self.reject(f"peer {fingerprint(link)}", why,
                              f"timestamp {env.ts} outside the window")
            return None
        if self.blocked(env.origin):
            self.counts["blocked"] += 1
            yield self.reject(f"origin {fingerprint(env.origin)}", "blocked",
                              "this origin is blocked here")
            return None
        over = self.flood.admit_link(link, self.addresses.get(link), mono)
        if over is not None:
            yield from self.flooded(over, env, link, mono)
            return None
        try:
            self.verify(env)
        except EnvelopeError as e:
            self.penalize(link, mono, invalid=True)
            # the source names the link only: forged origins must not each get a log line
            yield self.reject(f"peer {fingerprint(link)}",
                              e.code, e.message)
            return None
        if env.to is not None and env.to == env.origin:
            self.penalize(link, mono, invalid=True)
            yield self.reject(f"peer {fingerprint(link)}", "bad_recipient",
                              "a message to its own origin")
            return None
        over = self.flood.admit_origin(kind=env.kind, origin=env.origin, ts_ms=env.ts, now=now,
                                       mono=mono)
        if over is not None:
            yield from self.flooded(over, env, link, mono)
            return None
        self.counts["accepted"] += 1
        acc = self.pending[env.id] = Accepted(env=env, hops=hops + 1, came_from=link)
        return acc

    def held(self, msg_id: bytes) -> Envelope | None:
        """An envelope accepted lately, or a profile of the directory, by id."""
        acc = self.pending.get(msg_id)
        if acc is not None:
            return acc.env
        known = self.recent.get(msg_id)
        if known is not None:
            return known[1]  # type: ignore[return-value]
        origin = self.profile_origin.get(msg_id)
        return self.directory[origin].env if origin is not None else None

    def shorter_path(self, env: Envelope, hops: int, link: bytes) -> None:
        """A copy of an accepted envelope came a shorter way: hold it at the shorter
        distance, and relay it again if we now can (common.gossip, "Shortest distances")."""
        acc = self.pending.get(env.id)
        if acc is not None:  # in this very batch: not relayed yet
            if gossip.shorter_path(acc.hops, hops):
                acc.hops, acc.came_from = hops + 1, link
            return
        known = self.recent.get(env.id)
        profile = self.directory.get(env.origin) if env.kind == KIND_PROFILE else None
        if known is None and profile is not None and profile.profile_id == env.id:
            known = (profile.hops, profile.env)
        if known is None or not gossip.shorter_path(known[0], hops):
            return
        held: Envelope = known[1]  # type: ignore[assignment]
        distance = hops + 1
        matters = env.kind == KIND_PROFILE or gossip.reach_matters(
            known[0], self.eccentricity, self.hop_limit)
        self.recent.put(env.id, distance, held)
        if profile is not None and profile.profile_id == env.id:
            profile.hops = distance
        self._lowered[env.id] = distance
        if held.to != self.own_key and gossip.relays(distance, self.hop_limit) and matters:
            self._shorter.append((held, distance, link))

    def accept(self, accepted: list[Accepted], now: float, mono: float) -> Step:
        # Relay at once: a relay promises nothing before it has committed (custody comes
        # after the commit), and the next hop deduplicates; so the commit is not on the path.
        yield from self.forward([(a.env, a.hops, a.came_from) for a in accepted
                                 if a.env.to != self.own_key], mono)
        for a in accepted:
            self.recent.put(a.env.id, a.hops, a.env)
        to_me = [a for a in accepted if a.env.kind in (KIND_DM, KIND_GROUP_CTL)
                 and a.env.to == self.own_key]
        receipts: list[Envelope] = []
        if to_me:
            # Open the DMs and sign their receipts together; receipts are committed with the
            # DMs they acknowledge, so a crash cannot leave a DM received but unacknowledged.
            specs = self.receipt_specs(to_me)
            seqs = yield from self.reserve(len(specs))
            unsigned = self.unsigned(specs, seqs, now)
            plains, sigs = yield Together([Open([a.env.body for a in to_me]), Sign(unsigned)])
            for a, plain in zip(to_me, plains, strict=True):
                try:
                    if plain is None:
                        raise EnvelopeError("the sealed box does not open", code="cannot_open")
                    if a.env.kind == KIND_GROUP_CTL:
                        a.ctl = envelope.group_ctl_inner(plain, a.env.origin)
                    else:
                        a.text = envelope.dm_inner(plain, a.env.origin)
                except EnvelopeError as e:
                    yield self.reject(f"origin {fingerprint(a.env.origin)}", e.code, e.message)
            opened = [a for a in to_me if a.text is not None or a.ctl is not None]
            if len(opened) < len(to_me):  # rare: sign again, for the ones that opened
                receipts = (yield from self.originate(self.receipt_specs(opened), now)) \
                    if opened else []
                accepted = [a for a in accepted
                            if not (a in to_me and a.text is None and a.ctl is None)]
            else:
                receipts = [envelope.parse(sb, sig) for sb, sig in zip(unsigned, sigs,
                                                                       strict=True)]
        files = [a for a in accepted if a.env.kind == KIND_FILE and a.env.to == self.own_key]
        if files:
            unopened = yield from self.open_files(files)
            if unopened:
                accepted = [a for a in accepted if a not in unopened]
        items = [self.stored(a) for a in accepted] + [
            rpc.StoredMessage(id=r.id, kind=r.kind, origin=r.origin, seq=r.seq, ts=r.ts,
                              to=r.to, signed=r.signed, sig=r.sig, hops=0, own=True, held=True)
            for r in receipts]
        # (nothing to commit when the only DMs to us did not open)
        results = (yield Commit(items)) if items else []
        for a in accepted:
            self.seen.add(a.env.id, now)
        fresh = [a for a, r in zip(accepted, results[: len(accepted)], strict=True) if r.new]
        counted = False
        for a in fresh:
            env = a.env
            if a.came_from is not None:
                self.scores.first_delivery(a.came_from, mono)
            if evictable(env.kind, env.origin, env.to, self.own_key):
                self.quota.add(env.origin, row_bytes(env.signed, env.sig))
                counted = True
        yield from self.after_accept(fresh, now, mono)
        if counted:
            yield from self.enforce_quota()
        for r in receipts:
            self.seen.add(r.id, now)
            self.index.add(r.id, r.ts, r.to)
        yield from self.forward([(r, 0, None) for r in receipts], mono)

    def open_files(self, files: list[Accepted]) -> Generator[Action, Any, list[Accepted]]:
        """Open the sealed meta of DM files to us (``secret``); returns those refused."""
        metas = [envelope.file_manifest(a.env.body, dm=True).meta for a in files]
        plains = yield Open(metas)  # type: ignore[arg-type]
        refused = []
        for a, plain in zip(files, plains, strict=True):
            try:
                if plain is None:
                    raise EnvelopeError("the sealed meta does not open", code="cannot_open")
                try:
                    secret = filemanifest.decode_secret(plain)
                except RemoteProtocolError as e:
                    raise EnvelopeError(f"file meta: {e.message}", code=e.code) from None
                if secret.author != a.env.origin:
                    raise EnvelopeError("a file meta sealed by another origin",
                                        code="bad_manifest")
                a.secret = secret
            except EnvelopeError as e:
                refused.append(a)
                yield self.reject(f"origin {fingerprint(a.env.origin)}", e.code, e.message)
        return refused

    @staticmethod
    def receipt_specs(dms: list[Accepted]) -> list[tuple[int, bytes | None, bytes]]:
        by_origin: dict[bytes, list[bytes]] = defaultdict(list)
        for a in dms:
            by_origin[a.env.origin].append(a.env.id)
        return [(KIND_RECEIPT, origin, envelope.receipt_body(chunk))
                for origin, ids in by_origin.items()
                for chunk in catchup.chunks(ids, envelope.MAX_RECEIPT_IDS)]

    def stored(self, a: Accepted) -> rpc.StoredMessage:
        env = a.env
        mine = env.to == self.own_key
        text = a.text
        conv = env.origin if env.kind in (KIND_DM, KIND_FILE) and mine else None
        if env.kind == KIND_ROOM:
            text = envelope.room_text(env.body)
        elif env.kind == KIND_FILE and (mine or env.to is None):
            m = envelope.file_manifest(env.body, dm=env.to is not None)
            name = a.secret.name if a.secret is not None else \
                m.meta.name  # type: ignore[union-attr]
            size = m.size if env.to is None else filecrypt.plain_size(m.size) or 0
            text = file_line(name, size)
        # every receipt is held (offered in catch-up until it expires), also one to us, so
        # catch-up with the neighbours that brought it stays quiet, across restarts too
        held = env.kind == KIND_RECEIPT or (env.kind in (KIND_DM, KIND_FILE, KIND_GROUP_CTL)
                                            and env.to is not None and not mine)
        return rpc.StoredMessage(id=env.id, kind=env.kind, origin=env.origin, seq=env.seq,
                                 ts=env.ts, to=env.to, signed=env.signed, sig=env.sig,
                                 hops=min(a.hops, envelope.MAX_HOPS_LIMIT), conv=conv,
                                 text=text, held=held)

    def after_accept(self, fresh: list[Accepted], now: float, mono: float) -> Step:
        custody: dict[bytes, list[bytes]] = defaultdict(list)
        updates: list[tuple[bytes, str]] = []
        group_in: list[tuple[str, list[Any]]] = []
        released: list[bytes] = []
        acked: list[tuple[Envelope, bytes]] = []
        for a in fresh:
            env = a.env
            mine = env.to == self.own_key
            if env.kind == KIND_GROUP:  # caught up like a room message; members open it
                self.index.add(env.id, env.ts)
                group_in.append((f"origin {fingerprint(env.origin)}", self.group_input(a, None)))
                continue
            if env.kind == KIND_GROUP_CTL and mine:
                group_in.append((f"origin {fingerprint(env.origin)}",
                                 self.group_input(a, a.ctl)))
                continue
            if env.kind == KIND_ROOM:
                self.index.add(env.id, env.ts)
                if not self.muted(env.origin):
                    yield self.message(env, envelope.room_text(env.body), a.hops)
            elif env.kind == KIND_PROFILE:
                self.index.add(env.id, env.ts)
                if self.on_profile(env, a.hops, now):
                    self.schedule_recompute(mono)
                yield from self.keys_gone(now)
                if self.group_outbox:
                    yield from self.flush_group_outbox(env.origin, now, mono)
            elif env.kind == KIND_REVOKE:
                self.index.add(env.id, env.ts)
                if self.on_revoke(env):
                    dkey, at = envelope.revoked_key(env.body)
                    yield Emit(KeyRevoked, dict(origin=env.origin.hex(), key=dkey.hex(), at=at))
            elif env.kind == KIND_DM and mine:
                if not self.muted(env.origin):
                    yield self.message(env, a.text or "", a.hops)
            elif env.kind == KIND_FILE and (mine or env.to is None):
                if env.to is None:
                    self.index.add(env.id, env.ts)
                if not self.muted(env.origin):
                    # no receipt yet: the file service asks for one once every chunk is in
                    yield FileManifest(env, envelope.file_manifest(env.body, dm=mine),
                                       a.secret, a.hops, a.came_from)
            elif env.kind == KIND_RECEIPT and mine:
                # held like every receipt, so catch-up with the neighbours that have it
                # finds nothing to send again; but a group's receipts are held by nobody
                if self.acks_flooded(env):
                    released.append(env.id)
                else:
                    self.index.add(env.id, env.ts, env.to)
                for msg_id in envelope.receipt_ids(env.body):
                    if self.own_status.get(msg_id, ("", None))[1] == env.origin:
                        updates.append((msg_id, "delivered"))
                    elif msg_id in self.group_acks:
                        acked.append((env, msg_id))
            else:  # a DM or receipt for someone else: hold it, relay it, take custody
                if env.to is not None and self.acked.get(env.id) == env.to:
                    released.append(env.id)  # its receipt came first: delivered already
                elif env.kind == KIND_RECEIPT and self.acks_flooded(env):
                    released.append(env.id)  # a group's: nothing held waits for it
                else:
                    self.index.add(env.id, env.ts, env.to)
                if a.came_from is not None:
                    custody[a.came_from].append(env.id)
                if env.kind == KIND_RECEIPT:
                    yield from self.release_delivered(env)
        for link, ids in custody.items():
            for chunk in catchup.chunks(ids, routing.MAX_CUSTODY):
                yield Send(link, routing.encode_custody(chunk))
        if updates:
            yield from self.set_status(updates)
        if released:
            yield Release(released)
        for receipt, msg_id in acked:
            yield from self.group_acked(receipt, msg_id)
        for source, actions in group_in:
            yield from self.group_actions(actions, source, now, mono)

    def acks_flooded(self, receipt: Envelope) -> bool:
        """A receipt for group messages only (flooded, held by nobody): it is passed on
        towards their author, not held and offered in catch-up (docs/protocol.md,
        "Private groups")."""
        ids = envelope.receipt_ids(receipt.body)
        return all(i in self.index and self.index.recipient(i) is None for i in ids)

    def release_delivered(self, receipt: Envelope) -> Step:
        """A relay drops the DMs a receipt acknowledges, if the receipt is their recipient's."""
        ids = envelope.receipt_ids(receipt.body)
        done = [i for i in ids if self.index.recipient(i) == receipt.origin]
        for i in ids:
            if i not in self.index:
                self.acked[i] = receipt.origin
        while len(self.acked) > ACKED_KEPT:
            self.acked.popitem(last=False)
        for msg_id in done:
            self.index.remove(msg_id)
        if done:
            yield Release(done)

    def message(self, env: Envelope, text: str, hops: int, st: str = "") -> Emit:
        return Emit(ChatMessage, dict(
            id=env.id.hex(), kind=env.kind_name, origin=env.origin.hex(),
            to=env.to.hex() if env.to else None, sent=env.ts, text=text,
            own=env.origin == self.own_key, hops=min(hops, envelope.MAX_HOPS_LIMIT), status=st))

    # -- flood limits, scores, blocks, quotas (docs/protocol.md, "Safety among strangers") ---

    def flooded(self, over: str, env: Envelope, link: bytes, mono: float) -> Step:
        self.counts["rate_limited"] += 1
        if over in ("link", "address") or (env.origin == link and env.kind in (KIND_ROOM,
                                                                              KIND_DM)):
            # the neighbour floods, with its own words (not a relay of someone's flood, nor
            # a machine-made receipt or profile: those follow others' actions)
            self.penalize(link, mono)
        source = f"origin {fingerprint(env.origin)}" if over in ("origin", "backlog") \
            else f"peer {fingerprint(link)}"
        yield self.reject(source, "rate_limited", self.flood_detail(over, env.kind))

    def flood_detail(self, over: str, kind: int) -> str:
        f = self.flood.settings
        if over == "origin":
            rate, burst = f.rate_of(kind)
            return f"over {rate:g} {envelope.KIND_NAMES.get(kind, '?')}/s per origin " \
                   f"(burst {burst:g})"
        rate, burst = {"backlog": (f.backlog_rate, f.backlog_burst),
                       "link": (f.link_envelope_rate, f.link_envelope_burst),
                       "address": (f.address_rate, f.address_burst)}[over]
        return f"over {rate:g} envelopes/s per {over} (burst {burst:g})"

    def penalize(self, link: bytes, mono: float, *, invalid: bool = False) -> None:
        if invalid:
            self.scores.invalid(link, mono)
        else:
            self.scores.misbehaved(link, mono)
        self._penalized.add(link)

    def judge(self, now: float, mono: float) -> Step:
        """Scores of the neighbours penalized in this batch: told (at most once a second
        each), and a link under the threshold is banned."""
        penalized, self._penalized = sorted(self._penalized), set()
        threshold = self.scores.settings.ban_threshold
        for key in penalized:
            sc = self.scores.score(key, mono)
            told = self._score_told.get(key)
            below = sc < threshold and key in self.links and self.refuses_link(key, now) is None
            if below or told is None or mono - told >= 1.0:
                self._score_told[key] = mono
                yield Emit(PeerScore, dict(key=key.hex(), score=round(sc, 3),
                                           reason="after a penalty"))
            if below:
                seconds = self.scores.ban(key, mono)
                self.counts["banned"] += 1
                yield self.reject(f"peer {fingerprint(key)}", "banned",
                                  f"score {sc:.0f} below {threshold:g}: link closed, refused "
                                  f"for {seconds:g} s")
                yield from self.set_policy(key, "ban", now, mono, until=now + seconds,
                                           reason=f"score {sc:.0f} below {threshold:g}")

    def refuses_link(self, key: bytes, now: float) -> str | None:
        """``blocked`` or ``banned`` when a link with ``key`` is refused now, else None."""
        p = self.policy.get(key)
        if p is None:
            return None
        if p[0] == "block":
            return "blocked"
        if p[0] == "ban" and (p[2] is None or p[2] > now):
            return "banned"
        return None

    def blocked(self, origin: bytes) -> bool:
        p = self.policy.get(origin)
        return p is not None and p[0] == "block"

    def muted(self, origin: bytes) -> bool:
        p = self.policy.get(origin)
        return p is not None and p[0] in ("block", "mute")

    def set_policy(self, key: bytes, policy: str | None, now: float, mono: float, *,
                   until: float | None = None, reason: str = "") -> Step:
        """Block, mute or ban ``key``, or lift it (None): persisted, published, applied (a
        block also deletes what we stored from that origin for others)."""
        if key == self.own_key:
            return
        old = self.policy.get(key)
        if policy is None:
            if old is None:
                return
            del self.policy[key]
        else:
            if policy == "ban" and old is not None and old[0] == "block":
                return  # a block outranks a ban
            self.policy[key] = (policy, now, until, reason)
        yield SavePolicy(key, policy, now, until, reason)
        yield Emit(PeerPolicy, dict(epoch=self.policy_numbering.epoch,
                                    seq=self.policy_numbering.next(), key=key.hex(),
                                    policy=policy, since=now, until=until, reason=reason))
        if policy == "block":
            yield from self.evict(key, None)
        if key in self.links and self.refuses_link(key, now) is not None:
            yield from self.set_links(self.links - {key}, now, mono, self.addresses)
        if policy == "ban":
            self.ban_ends = 0.0 if self.ban_ends is None else min(self.ban_ends,
                                                                  mono + (until or now) - now)

    def lift_bans(self, now: float, mono: float) -> Step:
        """Bans that ended are lifted (the neighbour may link again)."""
        ended = [k for k, p in self.policy.items() if p[0] == "ban" and (p[2] or 0) <= now]
        for key in ended:
            yield from self.set_policy(key, None, now, mono, reason="ban ended")
        ends = [p[2] for p in self.policy.values() if p[0] == "ban" and p[2] is not None]
        self.ban_ends = mono + max(0.0, min(ends) - now) if ends else None

    def policy_table(self) -> rpc.PolicyTable:
        return rpc.PolicyTable(epoch=self.policy_numbering.epoch, seq=self.policy_numbering.seq,
                               items=tuple(rpc.PolicyEntry(key=k.hex(), policy=p, since=since,
                                                           until=until, reason=reason)
                                           for k, (p, since, until, reason)
                                           in self.policy.items()))

    def score_table(self, now: float, mono: float) -> rpc.Scores:
        items = []
        for key, sc in self.scores.table(mono):
            p = self.policy.get(key)
            banned = p[2] if p is not None and p[0] == "ban" else None
            items.append(rpc.ScoreEntry(key=key.hex(), score=round(sc, 3), banned_until=banned))
        return rpc.Scores(items=tuple(items))

    def evict(self, origin: bytes, size: int | None) -> Step:
        deleted = yield Evict(origin, size, self.own_key)
        freed = 0
        for _msg_id, n in deleted:
            freed += n
        self.quota.remove(origin, freed if deleted and size is not None else
                          self.quota.usage.get(origin, 0))
        self.quota.evicted += freed
        self.counts["evicted"] += len(deleted)

    def enforce_quota(self) -> Step:
        """Over a quota: the oldest messages of the largest origins go (common.quota). Their
        ids stay in the catch-up index (tombstones): neighbours holding them see the same
        digests and do not send them again."""
        for origin, size in self.quota.over():
            yield from self.evict(origin, size)

    # -- the mesh directory ----------------------------------------------------------------

    def on_profile(self, env: Envelope, hops: int, now: float) -> bool:
        """A new, accepted profile: it replaces an older one of the same node. Returns
        whether the mesh directory may change (a refresh that says the same does not:
        at 1,000 nodes that is most profiles, and each would cost a recompute)."""
        if env.origin == self.own_key:
            return False
        known = self.directory.get(env.origin)
        if known is not None and (env.ts, env.seq) <= known.version:
            self.index.remove(env.id)  # an old profile: nothing to offer in catch-up
            return False
        prof = envelope.profile_fields(env.body)
        changed = known is None or (known.links, known.nickname, known.enc_key) != (
            prof.links, prof.nickname, prof.enc_key) \
            or now - known.received_at > self.settings.profile_expires
        if known is not None:
            self.index.remove(known.profile_id)
            self.profile_origin.pop(known.profile_id, None)
        self.profile_origin[env.id] = env.origin
        self.directory[env.origin] = Directory(
            nickname=prof.nickname, enc_key=prof.enc_key, version=(env.ts, env.seq),
            links=prof.links, profile_id=env.id, received_at=now, env=env, hops=hops,
            published=known.published if known else (None, ""), enc_since=prof.since)
        return changed

    def on_revoke(self, env: Envelope) -> bool:
        """A revocation (signed by its origin's long-term key, checked): from now on the
        verifier refuses what that key signed at or after the revocation time."""
        dkey, at = envelope.revoked_key(env.body)
        revoke = getattr(self.verify, "revoke", None) or self.verifier.revoke
        return bool(revoke(env.origin, dkey, at))

    def revoke(self, dkey: bytes, at_ms: int, now: float, mono: float
               ) -> Generator[Action, Any, Envelope]:
        """Our revocation of one of our delegated keys, signed by the long-term key
        (identity), committed and flooded like a profile."""
        [signed] = self.unsigned([(KIND_REVOKE, None, envelope.revoke_body(dkey, at_ms))],
                                 (yield from self.reserve(1)), now, cert=None)
        [sig] = yield Sign([signed], long_term=True)
        env = envelope.parse(signed, sig)
        yield Commit([rpc.StoredMessage(
            id=env.id, kind=env.kind, origin=env.origin, seq=env.seq, ts=env.ts, to=None,
            signed=env.signed, sig=env.sig, hops=0, own=True)])
        self.on_revoke(env)
        self.seen.add(env.id, now)
        self.index.add(env.id, env.ts)
        self.counts["revoked"] += 1
        yield Emit(KeyRevoked, dict(origin=self.own_key.hex(), key=dkey.hex(), at=at_ms))
        yield from self.forward([(env, 0, None)], mono)
        return env

    def keys_gone(self, now: float) -> Step:
        """Our DMs sealed to a key their recipient has erased by now (it rotated more than
        ``DM_KEY_KEEP`` ago) can never be opened: they fail, with the reason."""
        gone = []
        for msg_id, key in list(self.sealed_to.items()):
            st, to = self.own_status.get(msg_id, ("delivered", None))
            if st in ("delivered", "failed") or to is None:
                del self.sealed_to[msg_id]
                continue
            d = self.directory.get(to)
            if d is not None and d.enc_key != key and d.enc_since \
                    and now * 1000 >= d.enc_since + DM_KEY_KEEP * 1000:
                gone.append(msg_id)
                del self.sealed_to[msg_id]
        if gone:
            yield from self.set_status([(i, "failed") for i in gone],
                                       "sealed to a DM key the recipient has since erased "
                                       "(it rotates its keys; send it again)")

    def schedule_recompute(self, mono: float) -> None:
        if self.recompute_at is None:
            self.recompute_at = mono + RECOMPUTE_DELAY

    def recompute(self, now: float) -> Step:
        """Distances over the links both ends confirm; publish the ones that changed."""
        self.recompute_at = None
        links_of = {k: d.links for k, d in self.directory.items()
                    if now - d.received_at <= self.settings.profile_expires}
        self.dist, self.first_hops = gossip.routes(self.own_key, self.links, links_of)
        self.eccentricity = max(self.dist.values(), default=0)
        for key, entry in self.directory.items():
            hops = self.dist.get(key)
            now_entry = (hops, entry.nickname if hops is not None else "")
            if now_entry != entry.published:
                entry.published = now_entry
                yield Emit(MeshPeer, dict(epoch=self.numbering.epoch, seq=self.numbering.next(),
                                          key=key.hex(), nickname=entry.nickname, hops=hops,
                                          enc_key=entry.enc_key.hex()))

    def mesh_table(self) -> rpc.MeshTable:
        return rpc.MeshTable(epoch=self.numbering.epoch, seq=self.numbering.seq,
                             items=tuple(rpc.MeshEntry(key=k.hex(), nickname=d.nickname,
                                                       hops=d.published[0],
                                                       enc_key=d.enc_key.hex())
                                         for k, d in self.directory.items()
                                         if d.published[0] is not None))

    # -- custody and catch-up ---------------------------------------------------------------------

    def on_custody(self, link: bytes, ids: list[bytes]) -> Step:
        for msg_id in ids:
            waiting = self.awaiting.get(msg_id)
            if waiting is not None and link in waiting.sent_to:
                del self.awaiting[msg_id]
        updates = [(i, "relayed") for i in ids
                   if i in self.own_status and self.own_status[i][1] != link]
        if updates:
            yield from self.set_status(updates)

    def on_summary(self, link: bytes, theirs: list[tuple[int, int, bytes]]) -> Step:
        for bucket in catchup.differing(self.index.summary(), theirs)[-routing.MAX_BUCKETS:]:
            for chunk in catchup.id_lists(self.index.ids_in(bucket), routing.MAX_IDS):
                yield Send(link, routing.encode_ids(bucket, chunk))

    def on_ids(self, link: bytes, bucket: int, their_ids: list[bytes]) -> Step:
        lo, hi = self.id_cursor.span(link, bucket, their_ids)
        missing = catchup.lacking(self.index, bucket, their_ids, lo, hi)
        for chunk in catchup.chunks(missing, 512):
            if not chunk:
                continue
            found: list[rpc.WireEnvelope] = yield Fetch(chunk)
            # at the distance we hold each at: catch-up never carries a copy further than
            # the flood would (common.gossip, hop counting)
            entries = [(e.hops, e.signed, e.sig) for e in found
                       if gossip.relays(e.hops, self.hop_limit)]
            if entries:
                yield from self.send_entries(link, entries)
                queued = [(e.id, "sent") for e in found
                          if self.own_status.get(e.id, ("", None))[0] == "queued"]
                if queued:
                    yield from self.set_status(queued)

    # -- status of our own messages --------------------------------------------------------

    def set_status(self, updates: list[tuple[bytes, str]], reason: str = "") -> Step:
        changed = []
        for msg_id, st in updates:
            if msg_id not in self.own_status:
                continue
            current, to = self.own_status[msg_id]
            if not status.advance(current, st):
                continue
            self.own_status[msg_id] = (st, to)
            changed.append((msg_id, st, to))
        if not changed:
            return
        yield SetStatus([rpc.StatusUpdate(id=i, status=s, reason=reason)  # type: ignore[arg-type]
                         for i, s, _ in changed])
        delivered = [i for i, s, _ in changed if s == "delivered"]
        for msg_id in delivered:
            self.index.remove(msg_id)
            self.own_status.pop(msg_id, None)
            self.awaiting.pop(msg_id, None)
        if delivered:
            yield Release(delivered)
        for msg_id, st, to in changed:
            if msg_id in self.quiet:
                if st in ("delivered", "failed"):
                    self.quiet.discard(msg_id)
                continue
            yield Emit(ChatStatus, dict(id=msg_id.hex(), status=st, reason=reason,
                                        to=to.hex() if to else None))

    def expired(self, ids: list[tuple[bytes, str]]) -> Step:
        """Own messages the store gave up on (too old to deliver)."""
        for msg_id, reason in ids:
            # still known as failed: a receipt that comes later proves delivery
            yield from self.set_status([(msg_id, "failed")], reason)

    # -- posting ---------------------------------------------------------------------------

    def refuse_post(self, to: bytes | None, text: str, mono: float | None = None, *,
                    file: bool = False) -> PostRefused | None:
        """Why a post cannot be accepted, before it is queued (None: it can). With ``mono``,
        also our own flood limit (spending nothing: ``post`` does)."""
        if to is not None:
            if to == self.own_key:
                return PostRefused("bad_recipient", "that is this node's own key")
            if self.blocked(to):
                return PostRefused("blocked", f"{fingerprint(to)} is blocked here "
                                   "(tazcom block --remove to unblock)")
            if to not in self.directory:
                return PostRefused(
                    "no_key", f"no encryption key for {fingerprint(to)} yet: its profile has "
                    "not reached us (it appears once the peer is linked or known via the mesh)")
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            return PostRefused("bad_message", "text is not valid Unicode (a lone surrogate)")
        if size > envelope.MAX_TEXT_BYTES:
            return PostRefused("too_large", f"text over {envelope.MAX_TEXT_BYTES} bytes")
        if mono is not None:
            kind = KIND_FILE if file else KIND_ROOM if to is None else KIND_DM
            wait = self.flood.own_allowance(kind, self.own_key, mono)
            if wait > 0:
                return self.own_limit(kind, wait)
        return None

    def own_limit(self, kind: int, wait: float) -> PostRefused:
        rate, burst = self.flood.settings.rate_of(kind)
        what = {KIND_ROOM: "room messages", KIND_FILE: "files",
                KIND_GROUP: "group messages"}.get(kind, "direct messages")
        return PostRefused("rate_limited", f"at most {rate:g} {what} per second (bursts of "
                           f"{burst:g}) leave one node, as every node accepts from one sender; "
                           f"try again in {wait:.1f} s")

    def reserve(self, n: int) -> Generator[Action, Any, list[int]]:
        if self.seq_end - self.seq_next < n:
            block = max(SEQ_BLOCK, n)
            first = yield ReserveSeq(block)
            self.seq_next, self.seq_end = first, first + block
        first = self.seq_next
        self.seq_next += n
        return list(range(first, first + n))

    def unsigned(self, specs: list[tuple[int, bytes | None, bytes]], seqs: list[int],
                 now: float, cert: bytes | bool | None = True) -> list[bytes]:
        """``cert``: True for our certificate (None for version 1 where we have none);
        None for a version 2 envelope the long-term key signs (a revocation)."""
        ts = int(now * 1000)
        if cert is True:
            cert = self.cert
            version = 1 if cert is None else 2
        else:
            version = 2
        return [envelope.signed_bytes(kind=k, origin=self.own_key, seq=s, ts=ts, to=to,
                                      body=body, cert=cert, version=version)  # type: ignore[arg-type]
                for (k, to, body), s in zip(specs, seqs, strict=True)]

    def originate(self, specs: list[tuple[int, bytes | None, bytes]], now: float
                  ) -> Generator[Action, Any, list[Envelope]]:
        """Build and sign our own envelopes: (kind, to, body) each."""
        seqs = yield from self.reserve(len(specs))
        signed = self.unsigned(specs, seqs, now)
        sigs = yield Sign(signed)
        return [envelope.parse(sb, sig) for sb, sig in zip(signed, sigs, strict=True)]

    def post(self, posts: list[PostSpec], now: float, mono: float
             ) -> Generator[Action, Any, list[rpc.PostResult | PostRefused]]:
        """Our own messages, a batch at a time: sealed, signed, committed, sent."""
        specs, ready = [], []
        answers: list[rpc.PostResult | PostRefused] = [PostRefused("no_key", "")] * len(posts)
        for i, p in enumerate(posts):
            refused = self.refuse_post(p.to, p.text, file=p.file is not None)
            kind = KIND_FILE if p.file is not None else KIND_ROOM if p.to is None else KIND_DM
            if refused is None and not self.flood.take_own(kind, self.own_key, mono):
                refused = self.own_limit(kind, self.flood.own_allowance(kind, self.own_key, mono))
            if refused is not None:
                answers[i] = refused
                continue
            if p.file is not None:
                try:
                    body = self.file_body(p.to, p.file)
                except RemoteProtocolError as e:
                    answers[i] = PostRefused(e.code, e.message)
                    continue
                except nacl.exceptions.CryptoError:
                    answers[i] = PostRefused("no_key", f"the encryption key in the profile of "
                                             f"{fingerprint(p.to or b'')} is not usable")
                    continue
                specs.append((KIND_FILE, p.to, body))
            elif p.to is None:
                specs.append((KIND_ROOM, None, p.text.encode()))
            else:
                try:
                    body = envelope.seal_dm(origin=self.own_key, text=p.text,
                                            recipient_enc_key=self.directory[p.to].enc_key)
                except nacl.exceptions.CryptoError:  # its profile's key is a low-order point
                    answers[i] = PostRefused("no_key", f"the encryption key in the profile of "
                                             f"{fingerprint(p.to)} is not usable")
                    continue
                specs.append((KIND_DM, p.to, body))
            ready.append(i)
        sealed = {i: self.directory[posts[i].to].enc_key for i in ready  # type: ignore[index]
                  if posts[i].to is not None}
        if not ready:
            return answers
        self.counts["posted"] += len(ready)
        envs = yield from self.originate(specs, now)
        items = [rpc.StoredMessage(
            id=env.id, kind=env.kind, origin=env.origin, seq=env.seq, ts=env.ts, to=env.to,
            signed=env.signed, sig=env.sig, hops=0, conv=env.to, text=posts[i].text,
            status="queued", own=True, held=env.kind in (KIND_DM, KIND_FILE) and env.to is not None,
            client_id=posts[i].client_id)
            for env, i in zip(envs, ready, strict=True)]
        results: list[rpc.PutOutcome] = yield Commit(items)
        fresh: list[Envelope] = []
        for env, i, outcome in zip(envs, ready, results, strict=True):
            if outcome.new:
                self.seen.add(env.id, now)
                self.index.add(env.id, env.ts, env.to)
                self.own_status[env.id] = ("queued", env.to)
                if i in sealed:
                    self.sealed_to[env.id] = sealed[i]
                fresh.append(env)
                if env.kind != KIND_FILE:  # a file's rows are the file service's
                    yield self.message(env, posts[i].text, 0, "queued")
        sent = yield from self.forward([(env, 0, None) for env in fresh], mono)
        for i, outcome in zip(ready, results, strict=True):
            st = "sent" if outcome.id in sent else \
                self.own_status.get(outcome.id, ("delivered", None))[0]
            answers[i] = rpc.PostResult(message_id=outcome.id, status=st,  # type: ignore[arg-type]
                                        new=outcome.new)
        # "sent" is written after the posts are answered (settle_posts): the commit is
        # done, only the status is late, and the answer does not wait for a second write
        self._sent += sorted(sent)
        return answers

    def file_body(self, to: bytes | None, f: FilePost) -> bytes:
        """A file manifest's body; a DM file's meta sealed to the recipient's DM key."""
        if to is None:
            meta = filemanifest.RoomMeta(name=f.name, mime=f.mime)
            return filemanifest.encode(filemanifest.RoomManifest(f.file_id, f.size,
                                                                 filemanifest.CHUNK, meta))
        assert f.key is not None, "a DM file has a key"
        secret = filemanifest.encode_secret(filemanifest.Secret(
            author=self.own_key, name=f.name, mime=f.mime, key=f.key))
        sealed = nacl.public.SealedBox(nacl.public.PublicKey(
            self.directory[to].enc_key)).encrypt(secret)
        return filemanifest.encode(filemanifest.DMManifest(f.file_id, f.size,
                                                           filemanifest.CHUNK, sealed))

    def file_received(self, manifest_id: bytes, origin: bytes, now: float, mono: float
                      ) -> Step:
        """Every chunk of a DM file to us is verified and stored: its receipt (the origin
        then shows it ``delivered``), committed before it is sent."""
        body = envelope.receipt_body([manifest_id])
        [r] = yield from self.originate([(KIND_RECEIPT, origin, body)], now)
        yield Commit([rpc.StoredMessage(id=r.id, kind=r.kind, origin=r.origin, seq=r.seq,
                                        ts=r.ts, to=r.to, signed=r.signed, sig=r.sig, hops=0,
                                        own=True, held=True)])
        self.seen.add(r.id, now)
        self.index.add(r.id, r.ts, r.to)
        yield from self.forward([(r, 0, None)], mono)

    def settle_posts(self) -> Step:
        """The ``sent`` statuses of the posts just answered."""
        if self._sent:
            sent, self._sent = self._sent, []
            yield from self.set_status([(i, "sent") for i in sent])

    def publish_profile(self, now: float, mono: float) -> Step:
        """Our profile, flooded: at start, when our links change, every ``profile_every``."""
        body = envelope.profile_body(self.nickname, self.enc_key, sorted(self.links),
                                     since=self.enc_since)
        [env] = yield from self.originate([(KIND_PROFILE, None, body)], now)
        yield Commit([rpc.StoredMessage(
            id=env.id, kind=env.kind, origin=env.origin, seq=env.seq, ts=env.ts, to=None,
            signed=env.signed, sig=env.sig, hops=0, own=True)])
        self.seen.add(env.id, now)
        if self.last_profile is not None:
            self.index.remove(self.last_profile.id)
        self.index.add(env.id, env.ts)
        self.last_profile = env
        yield from self.forward([(env, 0, None)], mono)

    def stats(self) -> rpc.RouterStats:
        return rpc.RouterStats(links=len(self.links), pending_relays=len(self.relay),
                               **self.counts)
