"""The gateway's mesh clock: executes ``common.clock.MeshClock`` (samples from the hellos
of verified links, a step of our own wall clock) and owns the clock table it publishes
(``clock.offset``, ``gateway.clock``; docs/protocol.md §9, "Clock offset")."""

from __future__ import annotations

import asyncio
import time
import typing

from tazcom.common import clock, rpc
from tazcom.common.events import ClockOffset, Event, PeerVerified

from .runtime import Runtime

#: How often (s) the gateway looks for a step of its own wall clock.
CLOCK_WATCH = 10.0


class ClockKeeper:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.clock = clock.MeshClock()
        self.numbering = rt.own_table("clock")
        self._said = 0.0

    def on_emit(self, event: type[Event], fields: dict[str, typing.Any]) -> None:
        """A verified link's hello gave a sample; a peer no longer verified takes its away."""
        key = bytes.fromhex(fields["key"]) if fields.get("key") else None
        if key is None:
            return
        if event is PeerVerified:
            offset = fields.get("clock_offset")
            estimate = self.clock.drop(key) if offset is None else self.clock.sample(key, offset)
        elif fields.get("peer_state") != "verified":
            estimate = self.clock.drop(key)
        else:
            return  # a duplicate link closed; the kept one's sample stands
        if estimate is not None:
            self.changed(estimate)

    def changed(self, estimate: clock.Estimate) -> None:
        old = self._said
        self._said = estimate.offset
        if abs(estimate.offset - old) >= clock.THRESHOLD:
            self.rt.log.warning(
                "clock: %s (median of %d of %d neighbours)",
                clock.describe(estimate.offset), estimate.neighbours, estimate.samples)
        self.rt.bus.emit(ClockOffset, epoch=self.numbering.epoch,
                         seq=self.numbering.next(), offset=estimate.offset,
                         neighbours=estimate.neighbours, samples=estimate.samples)

    def info(self) -> rpc.ClockInfo:
        e = self.clock.estimate
        return rpc.ClockInfo(epoch=self.numbering.epoch, seq=self.numbering.seq,
                             offset=e.offset, neighbours=e.neighbours, samples=e.samples)

    async def watch(self) -> None:
        """Tell the mesh clock when our own wall clock is stepped (set by hand, by NTP):
        the wall clock against the boot clock, which counts suspend too, so a resume is
        not taken for a step."""
        boot = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
        last = time.time() - time.clock_gettime(boot)
        while True:
            await asyncio.sleep(CLOCK_WATCH)
            now = time.time() - time.clock_gettime(boot)
            if abs(now - last) >= clock.THRESHOLD:
                self.rt.log.info("our wall clock was stepped by %+.1f s", now - last)
                estimate = self.clock.stepped(now - last)
                if estimate is not None:
                    self.changed(estimate)
            last = now
