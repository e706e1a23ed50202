"""One log line per offender: the first (source, reason) at WARNING, repeats at DEBUG.

The set of sources already reported is bounded (oldest forgotten first), so a
flood of distinct junk cannot grow memory; the counters let a service report
how much it dropped (python-zeroconf ``_logger.py`` does the same). Sources, reasons
and details come from strangers: they are logged escaped (``common.display.safe``).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict

from .display import safe


class RejectLog:
    def __init__(self, logger: logging.Logger, *, capacity: int = 1024) -> None:
        self.logger = logger
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.counts: Counter[str] = Counter()

    def reject(self, source: str, reason: str, detail: str = "") -> bool:
        """Record a rejected input; returns True when this was logged at WARNING."""
        self.counts[reason] += 1
        key = (source, reason)
        first = key not in self._seen
        if first:
            self._seen[key] = None
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        level = logging.WARNING if first else logging.DEBUG
        if self.logger.isEnabledFor(level):
            suffix = f": {safe(detail)}" if detail else ""
            self.logger.log(level, "rejected input from %s (%s)%s", safe(source), safe(reason),
                            suffix)
        return first

    def statistics(self) -> dict[str, int]:
        return dict(self.counts)
