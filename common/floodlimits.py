"""Flood limits sized for people: how much one origin, one neighbour link and one
source address may make this node accept (docs/protocol.md, "Flood limits").

Every limit is a token bucket (``common.gossip.TokenBucket``) on arrival, counted
only for envelopes that passed the cheap checks (not duplicates, in the time
window, well formed). The link and address buckets are spent before the
signature is checked, so a flood costs no Ed25519 work beyond their allowance;
the origin's after, so forged copies cannot spend an honest origin's allowance:

* **per origin and kind**: room messages and DMs are written by people: a few per
  second sustained, small bursts. Receipts follow the DMs they acknowledge,
  profiles the links of their node. An origin's **backlog** (envelopes stamped
  more than ``FRESH_S`` ago: catch-up after a partition or a restart) has its
  own, larger bucket, so history a person wrote over days comes back in a few
  catch-up rounds, while a flood stamped "now" is held to the human rate.
* **per neighbour link**: new envelopes one link brings, all origins together:
  a relay carries everyone's messages, so this is wide, but bounded.
* **per source address**: links from one IP address share one bucket, because
  twenty fresh identities on one host are one sender.

Our own posts are held to the same per-origin room and DM limits
(``own_allowance``): others would refuse the excess, so the user is told at once
instead of being silently dropped down the line.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, fields
from typing import Any

from .envelope import KIND_NAMES, KIND_REVOKE
from .gossip import Buckets, TokenBucket

#: An envelope stamped more than this long before our clock is backlog (catch-up).
FRESH_S = 300.0


@dataclass(frozen=True)
class FloodSettings:
    """Rates in envelopes per second, bursts in envelopes; the ``[router]`` config keys
    are the field names (``room_rate = 2``)."""

    room_rate: float = 2.0
    room_burst: float = 20.0
    dm_rate: float = 2.0
    dm_burst: float = 20.0
    receipt_rate: float = 10.0
    receipt_burst: float = 100.0
    profile_rate: float = 1.0
    profile_burst: float = 30.0
    #: File manifests (the chunks are pulled, and limited by the transfer itself).
    file_rate: float = 1.0
    file_burst: float = 20.0
    #: A private group's control messages: a re-key or an op goes to every member at once
    #: (common/groupcore.py), so the burst is a largest group's worth.
    group_ctl_rate: float = 20.0
    group_ctl_burst: float = 1000.0
    #: Group messages, like the room's.
    group_rate: float = 2.0
    group_burst: float = 20.0
    backlog_rate: float = 4.0
    backlog_burst: float = 500.0
    link_envelope_rate: float = 500.0
    link_envelope_burst: float = 10_000.0
    address_rate: float = 500.0
    address_burst: float = 10_000.0
    #: Catch-up messages per link: summaries (one a minute, and one per link-up), and
    #: ``ids`` messages (answers to our summaries: a chunk per differing bucket).
    summary_rate: float = 0.2
    summary_burst: float = 10.0
    ids_rate: float = 20.0
    ids_burst: float = 1000.0

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> FloodSettings:
        values = {}
        for f in fields(cls):
            if f.name in raw:
                v = float(raw[f.name])
                if not math.isfinite(v) or v <= 0:
                    raise ValueError(f"router.{f.name} must be a positive number, got {v!r}")
                values[f.name] = v
        return cls(**values)

    @classmethod
    def unlimited(cls) -> FloodSettings:
        """Every limit out of reach: for throughput benchmarks, which say so."""
        return cls(**{f.name: 1e12 for f in fields(cls)})

    def rate_of(self, kind: int) -> tuple[float, float]:
        # a revocation is as rare as a profile, and follows its limit
        name = "profile" if kind == KIND_REVOKE else KIND_NAMES[kind]
        return getattr(self, f"{name}_rate"), getattr(self, f"{name}_burst")

    def describe(self) -> str:
        """One line for logs and benchmark output."""
        return (f"room {self.room_rate:g}/s burst {self.room_burst:g}, dm {self.dm_rate:g}/s "
                f"burst {self.dm_burst:g}, backlog {self.backlog_rate:g}/s burst "
                f"{self.backlog_burst:g}, link {self.link_envelope_rate:g}/s, address "
                f"{self.address_rate:g}/s per origin/link/address")


def host_of(address: str) -> str:
    """The IP address of ``host:port`` (``[v6]:port`` too)."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class FloodLimits:
    """The buckets; ``admit`` says which limit an envelope is over, or None."""

    def __init__(self, settings: FloodSettings | None = None) -> None:
        s = self.settings = settings or FloodSettings()
        self.by_kind = {kind: Buckets(*s.rate_of(kind)) for kind in KIND_NAMES}
        self.backlog = Buckets(s.backlog_rate, s.backlog_burst)
        self.links = Buckets(s.link_envelope_rate, s.link_envelope_burst)
        self.addresses = Buckets(s.address_rate, s.address_burst)
        self.summaries = Buckets(s.summary_rate, s.summary_burst)
        self.ids = Buckets(s.ids_rate, s.ids_burst)
        self.counts: dict[str, int] = {"origin": 0, "backlog": 0, "link": 0, "address": 0,
                                       "summary": 0, "ids": 0}

    def admit_link(self, link: bytes, address: str | None, mono: float) -> str | None:
        """Spend a token of the link's and its address's buckets (before the signature is
        checked: a flood costs no Ed25519 work beyond them); the name of the empty one
        (``link``, ``address``), else None."""
        if not self.links.take(link, mono):
            return self._over("link")
        host = host_of(address) if address is not None else None
        # loopback is exempt: nodes on one machine talking to each other are a developer's
        # or a test's mesh (as for the scores' colocation)
        if host is not None and not is_loopback(host) \
                and not self.addresses.take(host.encode(), mono):
            return self._over("address")
        return None

    def admit_origin(self, *, kind: int, origin: bytes, ts_ms: int, now: float, mono: float
                     ) -> str | None:
        """Spend a token of the origin's bucket (after its signature checked: a forged copy
        must not spend an honest origin's allowance); ``origin`` or ``backlog`` when it is
        empty, else None."""
        if ts_ms < (now - FRESH_S) * 1000:
            return None if self.backlog.take(origin, mono) else self._over("backlog")
        buckets = self.by_kind.get(kind)
        if buckets is not None and not buckets.take(origin, mono):
            return self._over("origin")
        return None

    def admit_catchup(self, link: bytes, summary: bool, mono: float) -> str | None:
        """A catch-up message from ``link``: ``summary`` or ``ids`` when over its limit."""
        if summary:
            return None if self.summaries.take(link, mono) else self._over("summary")
        return None if self.ids.take(link, mono) else self._over("ids")

    def _over(self, which: str) -> str:
        self.counts[which] += 1
        return which

    def own_allowance(self, kind: int, origin: bytes, mono: float, n: int = 1) -> float:
        """Seconds until ``n`` more of our own ``kind`` fit the per-origin limit (0: now);
        spends nothing (``take_own`` does)."""
        bucket = self._own_bucket(kind, origin, mono)
        missing = n - bucket.tokens
        if missing <= 0:
            return 0.0
        if n > bucket.burst:
            return math.inf
        return missing / bucket.rate

    def take_own(self, kind: int, origin: bytes, mono: float, n: int = 1) -> bool:
        return self._own_bucket(kind, origin, mono).take(mono, n)

    def _own_bucket(self, kind: int, origin: bytes, mono: float) -> TokenBucket:
        buckets = self.by_kind[kind]
        buckets.take(origin, mono, 0)  # creates it, and refills it to now
        return buckets.bucket(origin)
