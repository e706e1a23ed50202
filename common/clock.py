"""The mesh clock: how far this node's wall clock is off, learnt from its neighbours (pure).

Theory of operation (docs/protocol.md §9, "Clock offset")
----------------------------------------------------------
A device with no real-time clock boots days off. Envelopes more than 10 minutes
ahead or 7 days old are refused everywhere, and delegated signing
certificates carry validity times, so such a node could neither be heard nor
judge others. Every link's ``hello`` carries the sender's raw wall clock
(``clock_ms``); the receiver turns it into an *offset sample*: the peer's clock
minus ours when the hello arrived. ``MeshClock`` keeps the latest sample of
each verified neighbour (a sample goes when the neighbour's last link goes
down) and decides the *offset*: what this node adds to its own clock to stamp
envelopes, judge the acceptance window and ask for certificates.

The rule, so that one liar (or one wrong clock) never moves anyone:

1. Our own clock, as we currently correct it (offset ``P``, 0 at start), is a
   sample too.
2. A *group* is a set of samples that agree within ``TOLERANCE`` (all inside
   one window of that width). Our group is the largest group holding our
   sample; a *rival* is a group of neighbours' samples that does not.
3. The largest rival is adopted (its median becomes the offset) only when it
   holds at least ``MIN_NEIGHBOURS`` (2) neighbours, is strictly larger than our
   group, and no other rival as large disagrees with it (a tie between two
   camps moves nothing). Otherwise ``P`` is kept: an adopted offset stays while
   nothing outnumbers it, also when every neighbour has gone (the clock we
   learnt is still the best we know); it goes back to 0 only when a larger
   group of neighbours agrees with our raw clock.
4. An offset under ``THRESHOLD`` is not corrected (0), and a new one within
   ``THRESHOLD`` of the current one keeps the current one (no jitter).

So with a sample of 0 for us, a single neighbour never moves the clock (a rival
of 1), and neither do two liars against two honest neighbours (3 against 2). A
node 3 days behind among two honest neighbours adopts their median (a rival of
2 against our group of 1). Samples are raw clocks, never corrected ones, so
offsets do not feed back from node to node.

Limits: a sample is taken once per link, at its hello. A step of our own clock
after that (the user sets it) leaves the samples stale until the links are made
again; the shell tells ``stepped`` about a step it sees, which shifts them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: Samples within this many seconds of each other agree. Wider than any LAN delay or a
#: clock kept by NTP; far under the 10 minutes the acceptance window allows ahead.
TOLERANCE = 30.0
#: An offset under this many seconds is not corrected.
THRESHOLD = 2.0
#: Neighbours that must agree before the clock moves: one liar never moves it.
MIN_NEIGHBOURS = 2
#: A change of the offset by at least this much makes the router re-certify its signing
#: key and re-publish its profile with corrected times.
MATERIAL = 60.0
#: A sample further off than this (about 100 years) is refused as nonsense.
MAX_OFFSET = 3.2e9
#: Neighbours whose samples are kept (each verified link is one at most).
MAX_SAMPLES = 4096


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the clock decided."""

    #: Seconds to add to our wall clock (0: not corrected).
    offset: float
    #: Neighbours whose samples agree with the offset (the group it stands on).
    neighbours: int
    #: Verified neighbours whose hello said their time.
    samples: int


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def good_offset(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value) \
        and abs(value) <= MAX_OFFSET  # type: ignore[arg-type]


def decide(samples: Iterable[float], current: float = 0.0, *,
           tolerance: float = TOLERANCE, threshold: float = THRESHOLD,
           min_neighbours: int = MIN_NEIGHBOURS) -> tuple[float, int]:
    """The offset to use, given the neighbours' ``samples`` and the ``current`` one, and
    how many neighbours back it (the module docstring's rule)."""
    theirs = sorted(samples)
    # our group: the largest window of width ``tolerance`` that holds ``current``
    ours = 1 + max(_count(theirs, lo, lo + tolerance)
                   for lo in (current - tolerance, current, *theirs)
                   if lo <= current <= lo + tolerance)
    # rivals: windows that start at a neighbour's sample and do not hold ``current``
    best, starts = 0, []
    for lo in theirs:
        if lo <= current <= lo + tolerance:
            continue
        n = _count(theirs, lo, lo + tolerance)
        if n > best:
            best, starts = n, [lo]
        elif n == best:
            starts.append(lo)
    if best < min_neighbours or best <= ours:
        return current, ours - 1
    lo, hi = min(starts), max(starts)
    if hi - lo > tolerance:
        return current, ours - 1  # two camps as large as each other: neither moves us
    # the tied windows overlap: their samples together (none of them is ``current``)
    group = [s for s in theirs if lo <= s <= hi + tolerance]
    offset = median(group)
    if abs(offset) < threshold:
        return 0.0, len(group)
    if abs(offset - current) < threshold:
        return current, len(group)
    return offset, len(group)


def _count(sorted_values: list[float], lo: float, hi: float) -> int:
    return sum(1 for v in sorted_values if lo <= v <= hi)


class MeshClock:
    """The latest offset sample of each verified neighbour, and the offset they give."""

    def __init__(self, *, tolerance: float = TOLERANCE, threshold: float = THRESHOLD,
                 min_neighbours: int = MIN_NEIGHBOURS) -> None:
        self.tolerance = tolerance
        self.threshold = threshold
        self.min_neighbours = min_neighbours
        #: neighbour key -> its clock minus ours (seconds), from its latest hello.
        self.samples: dict[bytes, float] = {}
        self.estimate = Estimate(0.0, 0, 0)

    @property
    def offset(self) -> float:
        return self.estimate.offset

    def sample(self, key: bytes, offset: float) -> Estimate | None:
        """A verified neighbour's hello said its clock is ``offset`` s from ours. Returns
        the new estimate when it changed, else None. A value that is no finite number
        within ``MAX_OFFSET``, or past ``MAX_SAMPLES`` neighbours, is ignored."""
        if type(key) is not bytes or not good_offset(offset):
            return None
        if key not in self.samples and len(self.samples) >= MAX_SAMPLES:
            return None
        self.samples[key] = float(offset)
        return self._decide()

    def drop(self, key: bytes) -> Estimate | None:
        """The neighbour ``key`` is no longer verified: its sample goes."""
        if self.samples.pop(key, None) is None:
            return None
        return self._decide()

    def stepped(self, delta: float) -> Estimate | None:
        """Our own wall clock jumped by ``delta`` s (not time passing): every sample and the
        offset move the other way, so that the mesh time stays where it was."""
        if not good_offset(delta) or delta == 0:
            return None
        self.samples = {k: v - delta for k, v in self.samples.items() if good_offset(v - delta)}
        offset = self.estimate.offset - delta if self.estimate.offset else 0.0
        if abs(offset) < self.threshold:
            offset = 0.0
        self.estimate = Estimate(offset, self.estimate.neighbours, self.estimate.samples)
        return self._decide(force=True)

    def _decide(self, force: bool = False) -> Estimate | None:
        offset, backing = decide(self.samples.values(), self.estimate.offset,
                                 tolerance=self.tolerance, threshold=self.threshold,
                                 min_neighbours=self.min_neighbours)
        new = Estimate(offset, backing, len(self.samples))
        if new == self.estimate and not force:
            return None
        self.estimate = new
        return new


def describe(offset: float) -> str:
    """``offset`` for people: "3 d 0 h behind the mesh", "2 h 5 min ahead of the mesh",
    "in step with the mesh" (0). Our clock is *behind* when the mesh is ahead of it (a
    positive offset)."""
    if not offset:
        return "in step with the mesh"
    s = abs(offset)
    if s >= 86400 - 1800:  # to the nearest hour (a measured offset is a little off)
        hours = round(s / 3600)
        amount = f"{hours // 24} d {hours % 24} h"
    elif s >= 3600 - 30:
        minutes = round(s / 60)
        amount = f"{minutes // 60} h {minutes % 60} min"
    elif s >= 60:
        seconds = round(s)
        amount = f"{seconds // 60} min {seconds % 60} s"
    else:
        amount = f"{s:.1f} s"
    return f"{amount} behind the mesh" if offset > 0 else f"{amount} ahead of the mesh"
