"""Storage quotas: how much of other people's messages a node keeps (docs/protocol.md,
"Storage quotas").

A node stores room messages for history and catch-up, and holds DMs and receipts
for others until they are delivered. Without a bound, one origin fills every
disk on the LAN. ``QuotaBook`` counts the bytes each origin uses among the
**evictable** rows: every room message, DM and receipt that is not our own and
not addressed to us (``evictable``). A message the user wrote, or one addressed
to them, is never counted and never evicted; profiles (one per origin) neither.

``over()`` says what to evict: first each origin over ``origin_bytes``, down to
it; then, while the total is over ``total_bytes``, the largest origin, down to the
next largest or as far as needed. The store deletes that many bytes of that
origin's **oldest** rows (by claimed time, then arrival); the ids stay in the
catch-up index as tombstones, so neighbours that hold them do not send them
again (docs/protocol.md, "Storage quotas").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .envelope import KIND_DM, KIND_FILE, KIND_GROUP, KIND_GROUP_CTL, KIND_RECEIPT, KIND_ROOM

MIB = 1 << 20


@dataclass(frozen=True)
class QuotaSettings:
    origin_bytes: int = 16 * MIB
    total_bytes: int = 512 * MIB

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> QuotaSettings:
        """``[router]`` ``quota_origin_mib`` and ``quota_total_mib``."""
        values = {}
        for key, name in (("quota_origin_mib", "origin_bytes"),
                          ("quota_total_mib", "total_bytes")):
            if key in raw:
                v = raw[key]
                if isinstance(v, bool) or not isinstance(v, int | float) \
                        or not math.isfinite(v) or v <= 0:
                    raise ValueError(f"router.{key} must be a positive number, got {v!r}")
                values[name] = int(v * MIB)
        return cls(**values)


def evictable(kind: int, origin: bytes, to: bytes | None, own_key: bytes) -> bool:
    return kind in (KIND_ROOM, KIND_DM, KIND_RECEIPT, KIND_FILE, KIND_GROUP_CTL, KIND_GROUP) \
        and origin != own_key \
        and to != own_key


def row_bytes(signed: bytes, sig: bytes) -> int:
    """What a row costs against its origin's quota (its envelope)."""
    return len(signed) + len(sig)


def oldest_first(row: tuple[bytes, int, float, int]) -> tuple[int, float]:
    """The order rows ``(id, ts, arrival, bytes)`` are evicted in: claimed time, arrival."""
    return row[1], row[2]


def pick_oldest(rows: Iterable[tuple[bytes, int, float, int]], size: int | None
                ) -> list[tuple[bytes, int]]:
    """Which of one origin's evictable rows, given ``oldest_first``, go to free ``size``
    bytes (None: all). Every store (SQLite, the tests' and the simulator's in-memory ones)
    deletes these; it reads no further than it needs."""
    out: list[tuple[bytes, int]] = []
    freed = 0
    for msg_id, _ts, _at, n in rows:
        if size is not None and freed >= size:
            break
        out.append((msg_id, n))
        freed += n
    return out


class QuotaBook:
    def __init__(self, settings: QuotaSettings | None = None) -> None:
        self.settings = settings or QuotaSettings()
        self.usage: dict[bytes, int] = {}
        self.total = 0
        self.evicted = 0  # bytes evicted since start

    def add(self, origin: bytes, n: int) -> None:
        self.usage[origin] = self.usage.get(origin, 0) + n
        self.total += n

    def remove(self, origin: bytes, n: int) -> None:
        left = self.usage.get(origin, 0) - n
        self.total -= min(n, self.usage.get(origin, 0))
        if left > 0:
            self.usage[origin] = left
        else:
            self.usage.pop(origin, None)

    def over(self) -> list[tuple[bytes, int]]:
        """``(origin, bytes)`` to evict, in order, to get back under both quotas."""
        s = self.settings
        plan: dict[bytes, int] = {}
        after = dict(self.usage)
        for origin, used in self.usage.items():
            if used > s.origin_bytes:
                plan[origin] = used - s.origin_bytes
                after[origin] = s.origin_bytes
        excess = sum(after.values()) - s.total_bytes
        if excess > 0:
            # water-filling: the largest origins are cut down to one common level
            values = sorted(after.values(), reverse=True)
            level, cum = 0.0, 0
            for i, used in enumerate(values):
                cum += used
                nxt = values[i + 1] if i + 1 < len(values) else 0
                if cum - (i + 1) * nxt >= excess:
                    level = (cum - excess) / (i + 1)
                    break
            for origin, used in after.items():
                if used > level:
                    plan[origin] = plan.get(origin, 0) + math.ceil(used - level)
        return [(o, n) for o, n in sorted(plan.items()) if n > 0]
