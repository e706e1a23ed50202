"""The delivery status of an own message: its vocabulary and its one rule of change.

``queued`` (committed here) → ``sent`` (handed to a link) → ``relayed`` (a
neighbour took custody) → ``delivered`` (the recipient's signed receipt came
back). ``failed`` (it expired undelivered) ends the climb, but a receipt that
arrives after it is proof of delivery, so ``delivered`` still replaces it.
Nothing else ever goes back (docs/protocol.md, "Delivery status").
"""

from __future__ import annotations

from typing import Literal

Status = Literal["queued", "sent", "relayed", "delivered", "failed"]
#: "" is a message with no status (one received, not one of ours).
StatusOrNone = Literal["", "queued", "sent", "relayed", "delivered", "failed"]

STATUSES: tuple[str, ...] = ("queued", "sent", "relayed", "failed", "delivered")
RANK: dict[str, int] = {"": 0} | {s: i + 1 for i, s in enumerate(STATUSES)}


def advance(current: str, new: str) -> bool:
    """May a message at ``current`` move to ``new``? Only forward, never sideways."""
    return RANK[new] > RANK[current]
