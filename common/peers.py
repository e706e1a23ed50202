"""The peer table: what a node knows of every other node, and how states change.

Theory of operation
-------------------
A peer is known by its Ed25519 key. Three sources speak about it:

* mDNS (discovery): live, validated announcements, by instance name;
* links (gateway): a TCP link is ``connected``, or ``verified`` once its
  handshake proved the key;
* the mesh (router, later): the peer is reachable ``hops`` hops away.

The visible ``state`` is derived, strongest first: ``verified``,
``connected``, ``discovered`` (a live announcement), ``mesh``, else
``offline``. Entries are never dropped when a peer goes away, so the user
still sees who was there; only when the table is full is the longest-offline
entry evicted.

Every mutation returns the ``Change`` events to publish, numbered by the
table's ``Numbering`` (one more per change): the table is the owner's side of
a mirrored table (``common.mirror``; docs/protocol.md §2, "Mirrored state").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from .announce import Announcement
from .errors import TazcomError
from .events import Nickname, PeerInfo
from .keys import NodeKey, fingerprint
from .limits import PEER_ADDRESSES_MAX
from .mirror import Numbering
from .schema import clip

LinkState = Literal["none", "connected", "verified"]
ChangeKind = Literal["peer.discovered", "peer.updated", "peer.lost", "peer.forgotten"]
PERSIST_VERSION = 1
MAX_ADDRESSES = PEER_ADDRESSES_MAX


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    seq: int
    peer: PeerInfo


@dataclass(slots=True)
class PeerEntry:
    key: bytes
    nickname: str
    last_seen: float
    since: float = 0.0
    addresses: tuple[str, ...] = ()
    announcements: dict[str, Announcement] = field(default_factory=dict)
    link: LinkState = "none"
    link_address: str | None = None
    hops: int | None = None
    alert: str | None = None

    @property
    def state(self) -> str:
        if self.link != "none":
            return self.link
        if self.announcements:
            return "discovered"
        if self.hops is not None:
            return "mesh"
        return "offline"

    def live_addresses(self) -> tuple[str, ...]:
        found: dict[str, None] = {}
        if self.link_address:
            found[self.link_address] = None
        for ann in sorted(self.announcements.values(), key=lambda a: -a.signed_at):
            for ep in ann.endpoints:
                found[ep] = None
        return tuple(found)[:MAX_ADDRESSES]

    def info(self, now: float) -> PeerInfo:
        state = self.state
        return PeerInfo(
            key=self.key.hex(),
            fingerprint=fingerprint(self.key),
            nickname=self.nickname,
            addresses=self.addresses,
            state=state,  # type: ignore[arg-type]
            last_seen=self.last_seen if state == "offline" else now,
            since=self.since,
            hops=1 if self.link == "verified" else self.hops,
            alert=self.alert,
        )


def _same(a: PeerInfo, b: PeerInfo) -> bool:
    return (a.nickname, a.addresses, a.state, a.hops, a.alert) == (
        b.nickname, b.addresses, b.state, b.hops, b.alert)


class TableFull(Exception):
    """No room for a new peer: every entry is reachable and the table is at its limit."""


class PeerTable:
    """All peers of one node. Pure: time arrives as ``now``."""

    def __init__(self, *, own_key: bytes | None = None, max_peers: int = 1024,
                 numbering: Numbering | None = None) -> None:
        self.own_key = own_key
        self.max_peers = max_peers
        self.numbering = numbering or Numbering(1)
        self._peers: dict[bytes, PeerEntry] = {}
        self._by_name: dict[str, bytes] = {}
        self._evicted: list[Change] = []

    @property
    def seq(self) -> int:
        return self.numbering.seq

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, key: bytes) -> PeerEntry | None:
        return self._peers.get(key)

    def entries(self) -> list[PeerEntry]:
        return list(self._peers.values())

    def snapshot(self, now: float) -> tuple[int, int, tuple[PeerInfo, ...]]:
        """The table at its version: ``(epoch, seq, peers)``."""
        peers = sorted(self._peers.values(), key=lambda p: (p.nickname.lower(), p.key))
        return self.numbering.epoch, self.seq, tuple(p.info(now) for p in peers)

    # -- mutations ---------------------------------------------------------------

    def _entry(self, key: bytes, nickname: str, now: float) -> PeerEntry:
        entry = self._peers.get(key)
        if entry is None:
            if len(self._peers) >= self.max_peers:
                self._evict()
            entry = PeerEntry(key=key, nickname=nickname, last_seen=now)
            self._peers[key] = entry
        return entry

    def _evict(self) -> None:
        offline = [p for p in self._peers.values() if p.state == "offline"]
        if not offline:
            raise TableFull(f"peer table full ({self.max_peers} reachable peers)")
        victim = min(offline, key=lambda p: p.last_seen)
        del self._peers[victim.key]
        for name in [n for n, k in self._by_name.items() if k == victim.key]:
            del self._by_name[name]
        self._evicted.append(Change(kind="peer.forgotten", seq=self.numbering.next(),
                                    peer=victim.info(victim.last_seen)))

    def _drain(self) -> list[Change]:
        evicted, self._evicted = self._evicted, []
        return evicted

    def _finish(self, entry: PeerEntry, before: PeerInfo | None, now: float) -> list[Change]:
        live = entry.live_addresses()
        if live:
            entry.addresses = live
        if entry.state != "offline" or (before is not None and before.state != "offline"):
            entry.last_seen = now
        if before is None or before.state != entry.state:
            entry.since = now
        after = entry.info(now)
        if before is None or before.state == "offline":
            if after.state == "offline":
                if before is not None and _same(before, after):
                    return self._drain()
                kind: ChangeKind = "peer.updated"
            else:
                kind = "peer.discovered"
        elif after.state == "offline":
            kind = "peer.lost"
        elif _same(before, after):
            return self._drain()
        else:
            kind = "peer.updated"
        return [*self._drain(), Change(kind=kind, seq=self.numbering.next(), peer=after)]

    def mdns_seen(self, ann: Announcement, now: float) -> list[Change]:
        """A validated announcement was resolved (new or refreshed)."""
        key = ann.key.raw
        old_key = self._by_name.get(ann.name)
        changes: list[Change] = []
        if old_key is not None and old_key != key:
            changes += self.mdns_gone(ann.name, now)
        entry = self._peers.get(key)
        before = entry.info(now) if entry else None
        entry = self._entry(key, ann.nickname, now)
        current = entry.announcements.get(ann.name)
        if current is not None and current.signed_at > ann.signed_at:
            return changes + self._drain()  # an older record than the one we hold: keep ours
        entry.announcements[ann.name] = ann
        entry.nickname = ann.nickname
        self._by_name[ann.name] = key
        return changes + self._finish(entry, before, now)

    def mdns_gone(self, name: str, now: float) -> list[Change]:
        """An announcement was withdrawn (goodbye) or expired."""
        key = self._by_name.pop(name, None)
        entry = self._peers.get(key) if key else None
        if entry is None or name not in entry.announcements:
            return []
        before = entry.info(now)
        del entry.announcements[name]
        return self._finish(entry, before, now)

    def link_changed(
        self, key: bytes, link: LinkState, now: float, *, address: str | None = None,
        nickname: str | None = None,
    ) -> list[Change]:
        """The gateway reported a link to ``key`` as ``link``."""
        entry = self._peers.get(key)
        if entry is None and link == "none":
            return []
        before = entry.info(now) if entry else None
        entry = self._entry(key, nickname or fingerprint(key), now)
        entry.link = link
        entry.link_address = address if link != "none" else None
        if nickname:
            entry.nickname = nickname
        return self._finish(entry, before, now)

    def mesh_changed(self, key: bytes, hops: int | None, now: float, *,
                     nickname: str | None = None) -> list[Change]:
        """The router learnt (or forgot) a route to ``key`` over ``hops`` hops."""
        entry = self._peers.get(key)
        if entry is None and hops is None:
            return []
        before = entry.info(now) if entry else None
        entry = self._entry(key, nickname or fingerprint(key), now)
        entry.hops = hops
        if nickname and entry.link == "none" and not entry.announcements:
            entry.nickname = nickname
        return self._finish(entry, before, now)

    def set_alert(self, key: bytes, alert: str | None, now: float) -> list[Change]:
        entry = self._peers.get(key)
        if entry is None:
            return []
        before = entry.info(now)
        entry.alert = alert
        return self._finish(entry, before, now)

    # -- persistence ---------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """JSON-able form of what outlives a restart: who, where, when last seen."""
        return {
            "version": PERSIST_VERSION,
            "peers": [
                {"key": p.key.hex(), "nickname": p.nickname, "addresses": list(p.addresses),
                 "last_seen": p.last_seen, "since": p.since, "alert": p.alert}
                for p in self._peers.values()
            ],
        }

    def load(self, data: Any) -> int:
        """Restore entries (all ``offline``) from ``dump()``; returns how many were kept."""
        if not isinstance(data, dict) or data.get("version") != PERSIST_VERSION:
            return 0
        kept = 0
        for row in data.get("peers", [])[: self.max_peers]:
            try:
                key = NodeKey.from_hex(row["key"]).raw
                nickname = clip(Nickname, str(row["nickname"])) or fingerprint(key)
                addresses = tuple(str(a) for a in row.get("addresses", []))[:MAX_ADDRESSES]
                last_seen = float(row["last_seen"])
                alert = row.get("alert")
                entry = PeerEntry(key=key, nickname=nickname, last_seen=last_seen,
                                  since=last_seen, addresses=addresses,
                                  alert=alert if isinstance(alert, str) else None)
                entry.info(last_seen)  # a row that does not make a valid PeerInfo is dropped
            except (KeyError, TypeError, ValueError, AttributeError, TazcomError):
                continue
            if key == self.own_key or key in self._peers:
                continue
            self._peers[key] = entry
            kept += 1
        return kept


class PeerNotFound(Exception):
    """No known peer matches what the user typed."""


class PeerAmbiguous(Exception):
    """Several peers match; ``candidates`` lists them."""

    def __init__(self, query: str, candidates: list[Any]) -> None:
        super().__init__(query)
        self.candidates = candidates


class Named(Protocol):
    """What ``match_peer`` looks at: a PeerInfo, a Target."""

    @property
    def key(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def nickname(self) -> str | None: ...


N = TypeVar("N", bound=Named)
FULL_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Target:
    """A key a person names to block or mute it: a peer of the peer table, a node known
    only through the mesh, or a full key of a node never seen (``nickname`` None)."""

    key: str
    fingerprint: str
    nickname: str | None = None

    @classmethod
    def of(cls, key: str, nickname: str | None = None) -> Target:
        return cls(key, fingerprint(bytes.fromhex(key)), nickname)

    def __str__(self) -> str:
        return f"{self.nickname or 'key ' + self.key[:16]} ({self.fingerprint})"


def resolve_target(query: str, known: Iterable[Target]) -> Target:
    """``match_peer`` among ``known``; a full 64-hex key also names a key not among them."""
    targets = list(known)
    key = query.strip().lower()
    if FULL_KEY.fullmatch(key):
        return next((t for t in targets if t.key == key), None) or Target.of(key)
    return match_peer(query, targets)


def match_peer(query: str, peers: Sequence[N]) -> N:
    """Find the peer a person means by ``query``: a key, a key or fingerprint prefix, or a
    nickname (case-insensitive). Raises PeerNotFound or PeerAmbiguous."""
    q = query.strip()
    if not q:
        raise PeerNotFound(query)
    exact = [p for p in peers if p.key == q.lower()]
    if exact:
        return exact[0]
    by_nick = [p for p in peers if (p.nickname or "").lower() == q.lower()]
    digits = "".join(ch for ch in q.lower() if ch in "0123456789abcdef")
    by_prefix: list[N] = []
    if len(digits) >= 4 and len(digits) == len(q.replace("-", "").replace(" ", "")):
        by_prefix = [p for p in peers if p.fingerprint.replace("-", "").startswith(digits)
                     or (len(digits) >= 8 and p.key.startswith(digits))]
    found = list({p.key: p for p in by_nick + by_prefix}.values())
    if not found:
        raise PeerNotFound(query)
    if len(found) > 1:
        raise PeerAmbiguous(query, found)
    return found[0]
