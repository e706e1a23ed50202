"""The bulk gate: bulk goes to the kernel only as its queue drains, at the link's rate
(docs/files.md, "Priorities on a link"), on a simulated link."""

from __future__ import annotations

import math
import random

import pytest

from tazcom.common.bulkpace import CEILING, FLOOR, MAX_WAIT, MIN_RATE, TARGET, BulkGate

CHUNK = 49_198  # a 48 KiB file chunk, framed and encrypted


def run(gate: BulkGate, rate: float, secs: float = 3.0, seed: int = 1,
        chunk: int = CHUNK) -> tuple[float, list[int]]:
    """Keep ``gate``'s link busy with bulk for ``secs``: a link that delivers ``rate``
    bytes/s, timers that fire on the next millisecond and up to 0.5 ms late. Returns the
    share of the time the link was busy and the bytes queued at each burst."""
    rnd = random.Random(seed)
    t, queued, idle, at_burst = 0.0, 0, 0.0, []
    while t < secs:
        wait = gate.wait(t, queued)
        if wait == 0:
            at_burst.append(queued)
            gate.wrote(queued, queued + chunk)
            queued += chunk
            dt = 0.00005  # call_soon: the next turn of the loop
        else:
            dt = math.ceil(wait * 1000) / 1000 + rnd.random() * 0.0005
        left = rate * dt
        if left > queued:
            idle += (left - queued) / rate
        queued = max(0, int(queued - left))
        t += dt
    return 1 - idle / t, at_burst


@pytest.mark.parametrize("mbit", [10, 50, 200, 1000])
def test_the_link_stays_busy_with_little_queued(mbit: int) -> None:
    rate = mbit * 1e6 / 8
    gate = BulkGate()
    busy, at_burst = run(gate, rate)
    assert busy > 0.97
    # the estimate finds the rate (above it where the timers' lateness outlasts a
    # burst: it is raised until the link stays busy)
    assert 0.75 * rate < gate.rate < (1.25 if mbit < 1000 else 2) * rate
    # after the first look, a burst goes only behind what the link sends in about TARGET
    # (timers are late: a little over the limit, never a burst more)
    limit = min(CEILING, max(FLOOR, rate * TARGET))
    assert max(at_burst[20:]) <= 1.5 * limit + rate * 0.0015


def test_an_underestimate_recovers() -> None:
    rate = 6.25e6  # 50 Mbit/s
    gate = BulkGate(rate=MIN_RATE)
    run(gate, rate, secs=3.0)
    assert gate.rate == pytest.approx(rate, rel=0.25)
    busy_later, _ = run(gate, rate, secs=1.0, seed=2)
    assert busy_later > 0.97


def test_first_burst_goes_at_once_then_waits_for_the_drain() -> None:
    gate = BulkGate(rate=1e6)
    assert gate.wait(0.0, 0) == 0
    gate.wrote(0, CHUNK)
    wait = gate.wait(0.0001, CHUNK)
    assert wait == pytest.approx((CHUNK - gate.limit()) / 1e6)
    # a bulk pause and a restart: the queue meanwhile measures nothing
    gate.restart()
    assert gate.wait(5.0, 0) == 0 and gate.rate == 1e6


def test_a_peer_that_stops_reading_gets_nothing_more() -> None:
    gate = BulkGate(rate=6.25e6)
    t, queued = 0.0, 200_000
    for _ in range(100):
        wait = gate.wait(t, queued)
        assert 0 < wait <= MAX_WAIT
        t += wait
    assert gate.rate >= MIN_RATE
