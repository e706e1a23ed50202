"""Print benchmark figures next to their limits (ratios, since these machines are noisy)."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    limit: float | None = None
    limit_name: str = ""
    goal: str = ""  # e.g. ">= 0.25 x limit", "< 2 s"
    ok: bool | None = None

    @property
    def ratio(self) -> float | None:
        return self.value / self.limit if self.limit else None


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def print_report(title: str, figures: list[Figure]) -> None:
    print(f"\n{title}  ({platform.machine()}, Python {sys.version.split()[0]})")
    rows = [("figure", "measured", "against", "ratio", "goal", "")]
    for f in figures:
        rows.append((
            f.name,
            f"{fmt(f.value)} {f.unit}",
            f"{fmt(f.limit)} {f.unit} ({f.limit_name})" if f.limit is not None else "-",
            f"{f.ratio:.2f}" if f.ratio is not None else "-",
            f.goal,
            "" if f.ok is None else ("ok" if f.ok else "MISSED"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(json.dumps({"bench": title, "figures": [asdict(f) | {"ratio": f.ratio}
                                                  for f in figures]}))
