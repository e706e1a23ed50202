"""Trust on first use: which keys a node has accepted for each nickname.

The first key seen verified under a nickname is pinned to it. A later,
different key under the same nickname is *not* accepted silently: the
gateway refuses the link and raises an alert until the user runs ``tazcom
trust PEER`` (which adds the key to that nickname's pins) or removes the pin.
A nickname may carry several trusted keys (two people called Alex), and a
pinned key may change its nickname freely: it is the key that is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .keys import fingerprint

PINS_VERSION = 1


@dataclass(frozen=True, slots=True)
class KeyChanged:
    nickname: str
    key: bytes
    pinned: tuple[bytes, ...]

    def describe(self) -> str:
        old = ", ".join(fingerprint(k) for k in self.pinned)
        return (f"nickname {self.nickname!r} was pinned to {old}; this is a new key "
                f"({fingerprint(self.key)}). Compare safety numbers, then: tazcom trust "
                f"{fingerprint(self.key)}")


class Pins:
    def __init__(self) -> None:
        self._by_nick: dict[str, set[bytes]] = {}
        self._trusted: set[bytes] = set()
        #: Grows with every change: a caller saves when it moved, without comparing dumps
        #: (a stranger after a stranger would make that quadratic).
        self.changes = 0

    def check(self, nickname: str, key: bytes) -> KeyChanged | None:
        """None if ``key`` may be accepted under ``nickname`` (pinning it if new)."""
        if key in self._trusted:
            keys = self._by_nick.setdefault(nickname, set())
            if key not in keys:
                keys.add(key)
                self.changes += 1
            return None
        pinned = self._by_nick.get(nickname)
        if pinned and key not in pinned:
            return KeyChanged(nickname=nickname, key=key, pinned=tuple(sorted(pinned)))
        self.trust(key, nickname)
        return None

    def trust(self, key: bytes, nickname: str | None = None) -> None:
        self.changes += 1
        self._trusted.add(key)
        if nickname:
            self._by_nick.setdefault(nickname, set()).add(key)

    def forget(self, key: bytes) -> bool:
        found = key in self._trusted
        self.changes += 1
        self._trusted.discard(key)
        for keys in self._by_nick.values():
            found |= key in keys
            keys.discard(key)
        return found

    def is_trusted(self, key: bytes) -> bool:
        return key in self._trusted

    def dump(self) -> dict[str, Any]:
        return {"version": PINS_VERSION,
                "trusted": sorted(k.hex() for k in self._trusted),
                "nicknames": {n: sorted(k.hex() for k in keys)
                              for n, keys in sorted(self._by_nick.items()) if keys}}

    def load(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("version") != PINS_VERSION:
            raise ValueError("not a pins file of version 1")
        for hexkey in data.get("trusted", []):
            self._trusted.add(bytes.fromhex(hexkey))
        for nick, keys in data.get("nicknames", {}).items():
            self._by_nick[str(nick)] = {bytes.fromhex(k) for k in keys}
