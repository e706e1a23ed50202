"""Neighbour scores, after gossipsub v1.1's peer scoring (docs/protocol.md, "Peer scoring").

Each neighbour link is scored from what it did, as gossipsub v1.1 scores its
peers; the parameters it uses are named after gossipsub's P1-P7:

* **P1, time linked** (positive): ``time_weight`` per second the link has been up,
  up to ``time_cap`` seconds. An old neighbour is trusted a little more.
* **P2, first deliveries** (positive): ``first_weight`` per envelope it was the first
  to bring us, up to ``first_cap`` (decaying).
* P3 (mesh delivery deficits) has no counterpart: every link carries every message.
* **P4, invalid envelopes** (negative, squared): ``invalid_weight`` * count**2 for
  envelopes that fail their signature or their format, which an honest relay never
  forwards (it checks both before relaying). Envelopes outside *our* time window are
  not counted: the relay's clock may differ.
* **P5, application** (negative): a blocked key is not scored, it is refused outright.
* **P6, address colocation** (negative, squared): ``colocation_weight`` * surplus**2
  for each link when more than ``colocation_threshold`` linked keys share its IP
  address (loopback excepted: that is one machine talking to itself, a developer's
  or a test's mesh).
* **P7, behaviour** (negative, squared): ``behaviour_weight`` * count**2 for going over
  a link or address flood limit, flooding as an origin (its own messages over the
  per-origin limit) and malformed router messages.

Counters decay exponentially with time constant ``decay_s`` (gossipsub decays per
interval; the same in continuous time), so a penalty is forgotten in minutes. A
link whose score falls below ``ban_threshold`` is closed and its key refused for
``ban_first_s`` seconds, doubled for each ban within ``ban_memory_s`` of the last
one, up to ``ban_max_s``.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

from .floodlimits import host_of


@dataclass(frozen=True)
class ScoreSettings:
    time_weight: float = 0.01
    time_cap: float = 3600.0
    first_weight: float = 0.5
    first_cap: float = 100.0
    invalid_weight: float = -10.0
    colocation_weight: float = -10.0
    colocation_threshold: int = 4
    behaviour_weight: float = -1.0
    decay_s: float = 300.0
    ban_threshold: float = -100.0
    ban_first_s: float = 60.0
    ban_max_s: float = 3600.0
    ban_memory_s: float = 3600.0

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> ScoreSettings:
        """The ``[scoring]`` config section: keys are the field names."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in raw:
                v = raw[f.name]
                if isinstance(v, bool) or not isinstance(v, int | float) \
                        or not math.isfinite(v):
                    raise ValueError(f"scoring.{f.name} must be a number, got {v!r}")
                values[f.name] = int(v) if f.type == "int" else float(v)
        return cls(**values)


@dataclass
class _Peer:
    address: str | None = None
    linked_at: float | None = None
    linked_for: float = 0.0  # seconds linked before the current link
    first: float = 0.0
    invalid: float = 0.0
    behaviour: float = 0.0
    at: float = 0.0  # when the counters were last decayed
    bans: int = 0
    last_ban: float | None = None


def _host(address: str | None) -> str | None:
    if not address:
        return None
    host = host_of(address).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return None if ip.is_loopback else str(ip)


class PeerScores:
    """Scores of neighbour keys; bounded (the least recently touched are forgotten)."""

    def __init__(self, settings: ScoreSettings | None = None, capacity: int = 4096) -> None:
        self.settings = settings or ScoreSettings()
        self.capacity = capacity
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()

    def _get(self, key: bytes, mono: float) -> _Peer:
        p = self._peers.get(key)
        if p is None:
            p = self._peers[key] = _Peer(at=mono)
            if len(self._peers) > self.capacity:  # forget the stalest unlinked key
                for old, peer in self._peers.items():
                    if peer.linked_at is None and old != key:
                        del self._peers[old]
                        break
        else:
            self._peers.move_to_end(key)
        self._decay(p, mono)
        return p

    def _decay(self, p: _Peer, mono: float) -> None:
        dt = mono - p.at
        if dt > 0:
            f = math.exp(-dt / self.settings.decay_s)
            p.first *= f
            p.invalid *= f
            p.behaviour *= f
            p.at = mono

    # -- what happened -------------------------------------------------------------------

    def linked(self, key: bytes, address: str | None, mono: float) -> None:
        p = self._get(key, mono)
        p.address = address
        if p.linked_at is None:
            p.linked_at = mono

    def unlinked(self, key: bytes, mono: float) -> None:
        p = self._peers.get(key)
        if p is not None and p.linked_at is not None:
            p.linked_for += mono - p.linked_at
            p.linked_at = None

    def first_delivery(self, key: bytes, mono: float, n: int = 1) -> None:
        p = self._get(key, mono)
        p.first = min(self.settings.first_cap, p.first + n)

    def invalid(self, key: bytes, mono: float, n: int = 1) -> None:
        self._get(key, mono).invalid += n

    def misbehaved(self, key: bytes, mono: float, n: int = 1) -> None:
        self._get(key, mono).behaviour += n

    # -- scores ----------------------------------------------------------------------------

    def score(self, key: bytes, mono: float) -> float:
        p = self._peers.get(key)
        if p is None:
            return 0.0
        self._decay(p, mono)
        s = self.settings
        linked = p.linked_for + (mono - p.linked_at if p.linked_at is not None else 0.0)
        total = s.time_weight * min(linked, s.time_cap) + s.first_weight * p.first
        total += s.invalid_weight * p.invalid ** 2 + s.behaviour_weight * p.behaviour ** 2
        surplus = self._colocated(p) - s.colocation_threshold
        if surplus > 0:
            total += s.colocation_weight * surplus ** 2
        return total

    def _colocated(self, p: _Peer) -> int:
        host = _host(p.address)
        if host is None or p.linked_at is None:
            return 0
        return sum(1 for q in self._peers.values()
                   if q.linked_at is not None and _host(q.address) == host)

    def below_threshold(self, mono: float) -> list[tuple[bytes, float]]:
        """Linked keys whose score is under the ban threshold, with their scores."""
        out = []
        for key, p in list(self._peers.items()):
            if p.linked_at is not None:
                sc = self.score(key, mono)
                if sc < self.settings.ban_threshold:
                    out.append((key, sc))
        return out

    def ban(self, key: bytes, mono: float) -> float:
        """Record a ban of ``key``; returns its length in seconds."""
        s = self.settings
        p = self._get(key, mono)
        if p.last_ban is not None and mono - p.last_ban > s.ban_memory_s:
            p.bans = 0
        seconds = min(s.ban_max_s, s.ban_first_s * 2 ** p.bans)
        p.bans += 1
        p.last_ban = mono
        self.unlinked(key, mono)
        return seconds

    def table(self, mono: float) -> list[tuple[bytes, float]]:
        return [(k, self.score(k, mono)) for k in list(self._peers)]

    def __len__(self) -> int:
        return len(self._peers)
