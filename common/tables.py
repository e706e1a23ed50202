"""The tables services mirror from each other, each defined once: who owns it, which
events update it, which request snapshots it, and what one row holds.

=========  ==========  ==================================================  =====================
table      owner       updates (events)                                    snapshot (request)
=========  ==========  ==================================================  =====================
peers      discovery   peer.discovered, peer.updated, peer.lost,           discovery.snapshot
                       peer.forgotten
links      gateway     link.up, peer.verified, link.down                   gateway.links
clock      gateway     clock.offset                                        gateway.clock
mesh       router      mesh.peer                                           router.mesh
policy     router      peer.policy                                         router.policy
health     bus         service.health                                      bus.status
=========  ==========  ==================================================  =====================

A ``Table`` turns those events and replies into ``common.mirror`` updates and
snapshots, so a mirror applies the owner's own values. docs/protocol.md §2,
"Mirrored state".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from . import rpc
from .events import (
    ClockOffset,
    Event,
    LinkDown,
    LinkUp,
    MeshPeer,
    PeerDiscovered,
    PeerForgotten,
    PeerInfo,
    PeerLost,
    PeerPolicy,
    PeerUpdated,
    PeerVerified,
    ServiceHealth,
    ServiceHealthChanged,
)
from .mirror import Update

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Table(Generic[K, V]):
    name: str
    owner: str
    #: Topics of the events that update it (subscribed to by their exact names).
    topics: tuple[str, ...]
    request: rpc.Request
    update: Callable[[Any], Update[K, V] | None]
    snapshot: Callable[[Any], tuple[int, int, Iterable[tuple[K, V]]]]


# -- peers (discovery) ---------------------------------------------------------------


def _peer_update(ev: Event) -> Update[str, PeerInfo] | None:
    if isinstance(ev, PeerDiscovered | PeerUpdated | PeerLost):
        return Update(ev.epoch, ev.seq, ev.peer.key, ev.peer)
    if isinstance(ev, PeerForgotten):
        return Update(ev.epoch, ev.seq, ev.key, None)
    return None


PEERS: Table[str, PeerInfo] = Table(
    name="peers", owner="discovery",
    topics=("peer.discovered", "peer.updated", "peer.lost", "peer.forgotten"),
    request=rpc.GetPeers(), update=_peer_update,
    snapshot=lambda r: (r.epoch, r.seq, [(p.key, p) for p in r.peers]))


# -- links (gateway) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkRow:
    """One link as its mirrors see it."""

    state: Literal["handshake", "open"]
    direction: Literal["in", "out"]
    address: str
    #: The proven key (open), the dialled key (outbound handshake), else None.
    key: str | None
    #: The peer's nickname from its HELLO, once open.
    nickname: str | None = None
    #: The peer's HELLO caps, once open.
    caps: tuple[str, ...] = ()


def link_row(info: rpc.LinkInfo) -> LinkRow:
    """The row of a ``gateway.links`` item (counters and times left out: not mirrored)."""
    return LinkRow(state=info.state, direction=info.direction, address=info.address,
                   key=info.key, nickname=info.nickname if info.state == "open" else None,
                   caps=tuple(info.caps) if info.state == "open" else ())


def _link_update(ev: Event) -> Update[int, LinkRow] | None:
    if isinstance(ev, LinkUp):
        return Update(ev.epoch, ev.seq, ev.link, LinkRow(
            state="handshake", direction=ev.direction, address=ev.address, key=ev.key))
    if isinstance(ev, PeerVerified):
        return Update(ev.epoch, ev.seq, ev.link, LinkRow(
            state="open", direction=ev.direction, address=ev.address, key=ev.key,
            nickname=ev.nickname, caps=tuple(ev.caps)))
    if isinstance(ev, LinkDown):
        return Update(ev.epoch, ev.seq, ev.link, None)
    return None


LINKS: Table[int, LinkRow] = Table(
    name="links", owner="gateway", topics=("link.up", "peer.verified", "link.down"),
    request=rpc.GetLinks(), update=_link_update,
    snapshot=lambda r: (r.epoch, r.seq, [(i.link, link_row(i)) for i in r.links]))


@dataclass(frozen=True, slots=True)
class PeerLink:
    """What the links say about one peer: its strongest link state."""

    state: Literal["none", "connected", "verified"]
    #: Where we reached it (outbound links only: an inbound port says nothing).
    address: str | None = None
    nickname: str | None = None


NO_LINK = PeerLink("none")


def peer_links(rows: Iterable[LinkRow]) -> dict[str, PeerLink]:
    """Per peer key: ``verified`` if a link to it is open, else ``connected`` if one is in
    its handshake, with the address and nickname of that link."""
    out: dict[str, PeerLink] = {}
    for row in rows:
        if row.key is None:
            continue  # an inbound link whose handshake has not named its peer yet
        state = "verified" if row.state == "open" else "connected"
        current = out.get(row.key)
        if current is not None and (current.state == "verified" or state == "connected"):
            continue
        out[row.key] = PeerLink(state, row.address if row.direction == "out" else None,
                                row.nickname)
    return out


def verified_keys(rows: Iterable[LinkRow]) -> set[bytes]:
    return {bytes.fromhex(r.key) for r in rows if r.state == "open" and r.key}


# -- clock (gateway): one row, the mesh clock (common/clock.py) -------------------------


@dataclass(frozen=True, slots=True)
class ClockRow:
    """What this node adds to its wall clock, and on how many neighbours' word."""

    offset: float
    neighbours: int
    samples: int


#: The one key of the clock table.
CLOCK_KEY = "mesh"


def _clock_update(ev: Event) -> Update[str, ClockRow] | None:
    if not isinstance(ev, ClockOffset):
        return None
    return Update(ev.epoch, ev.seq, CLOCK_KEY, ClockRow(ev.offset, ev.neighbours, ev.samples))


CLOCK: Table[str, ClockRow] = Table(
    name="clock", owner="gateway", topics=("clock.offset",), request=rpc.GetClock(),
    update=_clock_update,
    snapshot=lambda r: (r.epoch, r.seq, [(CLOCK_KEY, ClockRow(r.offset, r.neighbours,
                                                              r.samples))]))


def clock_offset(mirror: Any) -> float:
    """The offset a mirror of the clock table holds (0 until it has one)."""
    row = mirror.items.get(CLOCK_KEY) if mirror is not None else None
    return row.offset if row is not None else 0.0


# -- mesh (router) --------------------------------------------------------------------


def _mesh_update(ev: Event) -> Update[str, rpc.MeshEntry] | None:
    if not isinstance(ev, MeshPeer):
        return None
    value = None if ev.hops is None else rpc.MeshEntry(
        key=ev.key, nickname=ev.nickname, hops=ev.hops, enc_key=ev.enc_key)
    return Update(ev.epoch, ev.seq, ev.key, value)


MESH: Table[str, rpc.MeshEntry] = Table(
    name="mesh", owner="router", topics=("mesh.peer",), request=rpc.GetMesh(),
    update=_mesh_update, snapshot=lambda r: (r.epoch, r.seq, [(m.key, m) for m in r.items]))



# -- policy (router): blocks, mutes and bans --------------------------------------------


def _policy_update(ev: Event) -> Update[str, rpc.PolicyEntry] | None:
    if not isinstance(ev, PeerPolicy):
        return None
    value = None if ev.policy is None else rpc.PolicyEntry(
        key=ev.key, policy=ev.policy, since=ev.since, until=ev.until, reason=ev.reason)
    return Update(ev.epoch, ev.seq, ev.key, value)


POLICY: Table[str, rpc.PolicyEntry] = Table(
    name="policy", owner="router", topics=("peer.policy",), request=rpc.GetPolicy(),
    update=_policy_update,
    snapshot=lambda r: (r.epoch, r.seq, [(p.key, p) for p in r.items]))


# -- health (bus) ---------------------------------------------------------------------


def _health_update(ev: Event) -> Update[str, ServiceHealth] | None:
    if not isinstance(ev, ServiceHealthChanged):
        return None
    return Update(ev.epoch, ev.seq, ev.health.service, ev.health)


HEALTH: Table[str, ServiceHealth] = Table(
    name="health", owner="bus", topics=("service.health",), request=rpc.GetStatus(),
    update=_health_update,
    snapshot=lambda r: (r.epoch, r.seq, [(h.service, h.replace(last_heartbeat=None))
                                         for h in r.services]))
