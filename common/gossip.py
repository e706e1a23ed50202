"""Relay decisions of the router, as plain functions and small state objects.

Theory of operation (docs/protocol.md, "Routing"):

* An envelope is accepted once: ``SeenSet`` remembers accepted ids (bounded
  by count and age) and is only told about an id after its signature checked,
  so a forged copy cannot poison the real message.
* ``window()`` refuses envelopes stamped far in the past or future.
* ``relay_targets()``: room messages and profiles flood to every verified
  neighbour but the one they came from and their origin; a DM or receipt goes
  straight to its recipient when it is a neighbour, else floods the same way.
* Hop counting, defined here once (``accepts``, ``relays``): a copy on the wire
  carries ``hops``, the links it crossed before the one it arrives on; the
  receiver holds the envelope at *distance* ``hops + 1``. A node accepts a copy
  whose distance is at most its hop limit and relays (with ``hops`` = its
  distance) only while its distance is below the limit, so a copy crosses at
  most ``hop_limit`` links, and never one more.
* Shortest distances: the first copy to arrive is not always the one that came
  the shortest way (a relay is late, a link came up after the flood). A
  duplicate that arrives over a strictly shorter path lowers the distance and,
  if the node can relay at the new distance, is relayed again
  (``shorter_path``): so every node within ``hop_limit`` links of the origin,
  over links up now, gets the message, as distance-vector routing converges.
  For messages this is done only where it can matter (``reach_matters``: the
  mesh is not small against the hop limit), so a dense mesh pays nothing;
  profiles, which define the mesh, always.
* ``RelayQueue``: with two or more targets a relay waits a random delay
  first; a copy heard meanwhile from a target, at a distance no worse than ours
  would give it, cancels sending to it, so dense meshes do not echo every
  message over every link. With one target there is nobody to hear from, so it
  goes at once.
* ``TokenBucket``/``Buckets``: rate limits per link and per origin.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .envelope import ADDRESSED

DAY_MS = 86_400_000
#: Catch-up offers 7 days of history; a little slack for clocks.
MAX_AGE_MS = 7 * DAY_MS + 3_600_000
#: Clocks on a LAN disagree; more than this in the future is refused.
MAX_FUTURE_MS = 10 * 60_000


def accepts(hops: int, limit: int) -> bool:
    """May a copy that crossed ``hops`` links before reaching us be accepted?"""
    return hops + 1 <= limit


def relays(distance: int, limit: int) -> bool:
    """May a node holding an envelope at ``distance`` (0: its own) pass it on?"""
    return distance < limit


def shorter_path(known: int | None, hops: int) -> bool:
    """Does a copy that crossed ``hops`` links give a shorter distance than ``known``?"""
    return known is not None and hops + 1 < known


def reach_matters(distance: int, eccentricity: int, limit: int) -> bool:
    """Could a copy held at ``distance`` here miss a node that a copy held closer would
    reach? Not when every node we know (``eccentricity``: the farthest, in links) and any
    one link beyond is within the hops it has left. In a mesh small against the hop
    limit this is never so, and shorter paths need no traffic."""
    return distance + eccentricity + 1 > limit


def window(ts_ms: int, now: float) -> str | None:
    """Reject code for an envelope timestamp outside the window, or None."""
    now_ms = int(now * 1000)
    if ts_ms < now_ms - MAX_AGE_MS:
        return "too_old"
    if ts_ms > now_ms + MAX_FUTURE_MS:
        return "too_new"
    return None


class SeenSet:
    """Accepted message ids, newest last; bounded by ``capacity`` and ``horizon`` seconds."""

    def __init__(self, capacity: int = 100_000, horizon: float = 86_400.0) -> None:
        self.capacity = capacity
        self.horizon = horizon
        self._ids: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, msg_id: bytes, now: float) -> bool:
        """Remember ``msg_id``; False if it was already there."""
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = now
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def expire(self, now: float) -> int:
        """Forget ids older than the horizon (but keep at least... nothing); returns how many."""
        cutoff = now - self.horizon
        dropped = 0
        while self._ids:
            first_id, at = next(iter(self._ids.items()))
            if at >= cutoff:
                break
            del self._ids[first_id]
            dropped += 1
        return dropped


class Recent:
    """Envelopes accepted lately and the distance we hold each at, newest last; bounded,
    because a shorter path shows up within moments of the first copy, if at all."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, tuple[int, object]] = OrderedDict()

    def get(self, msg_id: bytes) -> tuple[int, object] | None:
        return self._items.get(msg_id)

    def put(self, msg_id: bytes, distance: int, payload: object) -> None:
        self._items[msg_id] = (distance, payload)
        self._items.move_to_end(msg_id)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def relay_targets(*, kind: int, to: bytes | None, origin: bytes, came_from: bytes | None,
                  links: Iterable[bytes]) -> list[bytes]:
    """Which neighbours get a copy of an accepted envelope."""
    links = sorted(links)  # the same order in every run (the simulator is deterministic)
    if kind in ADDRESSED and to is not None and to in links:
        return [] if to == came_from else [to]
    return [k for k in links if k != came_from and k != origin]


@dataclass
class _Pending:
    targets: set[bytes]
    due: float
    distance: int
    payload: object = None


@dataclass
class RelayQueue:
    """Relays waiting for their delay; hearing a copy from a target cancels that target."""

    max_delay: float = 0.002
    rng: random.Random = field(default_factory=random.Random)
    _pending: dict[bytes, _Pending] = field(default_factory=dict)

    def schedule(self, msg_id: bytes, targets: list[bytes], now: float, distance: int,
                 payload: object = None) -> float | None:
        """Queue a relay at our ``distance``; returns its due time, or None to send now (one
        target or none). A relay of ``msg_id`` already waiting takes the new distance and
        payload instead (a shorter path was found before it went)."""
        waiting = self._pending.get(msg_id)
        if waiting is not None:
            waiting.targets.update(targets)
            if distance < waiting.distance:
                waiting.distance, waiting.payload = distance, payload
            return waiting.due
        if len(targets) <= 1 or self.max_delay <= 0:
            return None
        due = now + self.rng.uniform(0, self.max_delay)
        self._pending[msg_id] = _Pending(targets=set(targets), due=due, distance=distance,
                                         payload=payload)
        return due

    def heard_from(self, msg_id: bytes, link: bytes, hops: int, *, closer_matters: bool = True
                   ) -> None:
        """``link`` sent us a copy that had crossed ``hops`` links: it holds the envelope at
        distance ``hops``, so it needs ours only if ours would bring it closer, and that
        matters (``reach_matters``)."""
        pending = self._pending.get(msg_id)
        if pending is not None and (hops <= pending.distance + 1 or not closer_matters):
            pending.targets.discard(link)
            if not pending.targets:
                del self._pending[msg_id]

    def due(self, now: float) -> list[tuple[bytes, list[bytes], object]]:
        ready = [(k, p) for k, p in self._pending.items() if p.due <= now]
        for k, _ in ready:
            del self._pending[k]
        return [(k, sorted(p.targets), p.payload) for k, p in ready]

    def next_deadline(self) -> float | None:
        return min((p.due for p in self._pending.values()), default=None)

    def __len__(self) -> int:
        return len(self._pending)


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, now

    def take(self, now: float, n: int = 1) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class Buckets:
    """One token bucket per key (a link, an origin), bounded in number."""

    def __init__(self, rate: float, burst: float, capacity: int = 4096) -> None:
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def take(self, key: bytes, now: float, n: int = 1) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, n)

    def bucket(self, key: bytes) -> TokenBucket:
        return self._buckets[key]


def distances(own: bytes, own_links: set[bytes],
              links_of: dict[bytes, frozenset[bytes]]) -> dict[bytes, int]:
    """Hops from ``own`` to every node reachable over links both ends confirm."""
    return routes(own, own_links, links_of)[0]


def routes(own: bytes, own_links: set[bytes], links_of: dict[bytes, frozenset[bytes]]
           ) -> tuple[dict[bytes, int], dict[bytes, tuple[bytes, ...]]]:
    """Distances, and for each node the neighbours of ``own`` that start a shortest path
    to it (sorted), over links both ends confirm.

    ``own_links`` are our verified links; ``links_of`` maps each other node to the
    links its newest profile lists. An edge X-Y counts when X lists Y and Y lists
    X, so a node that vanished without a word is unreachable as soon as its
    neighbours' new profiles stop listing it.
    """
    dist = {own: 0}
    first: dict[bytes, set[bytes]] = {}
    frontier = [k for k in own_links if k != own]
    for k in frontier:
        dist[k] = 1
        first[k] = {k}
    while frontier:
        nxt = []
        for node in frontier:
            d = dist[node] + 1
            via = first[node]
            for peer in links_of.get(node, ()):
                known = dist.get(peer)
                if known is None:
                    if node in links_of.get(peer, ()):
                        dist[peer] = d
                        first[peer] = set(via)
                        nxt.append(peer)
                elif known == d and node in links_of.get(peer, ()):
                    first[peer] |= via
        frontier = nxt
    del dist[own]
    return dist, {k: tuple(sorted(v)) for k, v in first.items()}
