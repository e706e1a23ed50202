"""Static peers: nodes dialled at an address the user gave, where mDNS finds nobody
(multicast filtered, client isolation, another site across a VPN). No I/O.

``tazcom connect HOST[:PORT]`` adds one (kept in ``$TAZCOM_HOME/static_peers.json``);
``[gateway] static_peers`` in the configuration lists more. The gateway dials each until
a link to it is verified, backs off from 1 s to 30 s while it fails, and dials again at
once when a link that worked drops. The key behind an address is learnt from the
handshake (and pinned like any other, common/pins.py); a verified link to that key that
came another way (it dialled us, or mDNS found it) counts as linked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
#: The port a static peer is dialled at when none is given: the gateway's first choice
#: when TAZCOM_PORT is not set (services/listen.py).
DEFAULT_PORT = 4270
#: Static peers a node keeps.
STATIC_MAX = 64
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")

Source = Literal["added", "config", "invite"]


def normalize(text: str) -> str:
    """``HOST[:PORT]`` as ``host:port`` (``[v6]:port`` for IPv6 literals); raises
    ``ValueError`` with a message for people."""
    text = text.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [ADDRESS]:PORT")
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
        return f"{host.lower().rstrip('.')}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not 1..65535")
    return int(text)


def split(address: str) -> tuple[str, int]:
    """``(host, port)`` of a normalized address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class Entry:
    source: Source
    #: The key its last verified link proved (None until one did).
    key: bytes | None = None
    nickname: str = ""
    next_attempt: float = 0.0
    backoff: float = BACKOFF_MIN
    dialling: bool = False
    #: The link (its id) verified through this address, if up.
    link: int | None = None
    last_error: str = ""
    #: The key an invite code requires here (the dial refuses any other: ``wrong_key``).
    expect: bytes | None = None


class StaticPeers:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def set_source(self, source: Source, addresses: list[str]) -> None:
        """The addresses of one source now (the file, or the configuration)."""
        for address in [a for a, e in self.entries.items() if e.source == source
                        and a not in addresses]:
            del self.entries[address]
        for address in addresses:
            self.entries.setdefault(address, Entry(source))

    def add(self, address: str) -> bool:
        """True if new; raises ``ValueError`` when full."""
        if address in self.entries:
            return False
        if len(self.entries) >= STATIC_MAX:
            raise ValueError(f"at most {STATIC_MAX} static peers")
        self.entries[address] = Entry("added")
        return True

    def join(self, key: bytes, addresses: list[str]) -> None:
        """The addresses of an invite code, each of which must prove ``key``; raises
        ``ValueError`` when they do not fit. An address already listed now expects it."""
        new = [a for a in addresses if a not in self.entries]
        if len(self.entries) + len(new) > STATIC_MAX:
            raise ValueError(f"at most {STATIC_MAX} static peers")
        for address in addresses:
            e = self.entries.setdefault(address, Entry("invite"))
            if e.source != "config":
                e.source = "invite"
            e.expect = key
            e.next_attempt, e.backoff = 0.0, BACKOFF_MIN

    def remove(self, address: str) -> Entry | None:
        entry = self.entries.get(address)
        if entry is not None and entry.source != "config":
            del self.entries[address]
        return entry

    def added(self) -> list[str | dict[str, str]]:
        """What ``static_peers.json`` keeps: ``host:port``, or for an invite's address
        ``{"address": ..., "key": hex}``."""
        return [a if e.expect is None else {"address": a, "key": e.expect.hex()}
                for a, e in sorted(self.entries.items()) if e.source != "config"]

    def load_added(self, items: list[object]) -> list[str]:
        """Take ``static_peers.json``'s content (from ``added()``); returns what was
        skipped, and why, for the log."""
        problems, plain, joined = [], [], []
        for item in items:
            try:
                if isinstance(item, dict):
                    key = bytes.fromhex(str(item.get("key", "")))
                    if len(key) != 32:
                        raise ValueError("an invite's key is 64 hex characters")
                    joined.append((normalize(str(item.get("address", ""))), key))
                else:
                    plain.append(normalize(str(item)))
            except ValueError as e:
                problems.append(f"{item!r}: {e}")
        configured = {a for a, e in self.entries.items() if e.source == "config"}
        self.set_source("added", [a for a in plain if a not in configured])
        self.set_source("invite", [])
        for address, key in joined:
            if len(self.entries) < STATIC_MAX:
                self.join(key, [address])
        return problems

    # -- the dialler's decisions ---------------------------------------------------------------

    def due(self, now: float, linked_keys: set[bytes]) -> list[str]:
        """The addresses to dial now: not linked (by any link to their key), not being
        dialled, and whose back-off is over."""
        out = []
        # the addresses of one invite are tried one at a time: one link, not one per address
        busy = {e.expect for e in self.entries.values() if e.dialling and e.expect}
        for address, e in self.entries.items():
            if e.dialling or e.link is not None or (e.key is not None and e.key in linked_keys):
                continue
            if e.expect is not None and (e.expect in busy or e.expect in linked_keys):
                continue
            if now >= e.next_attempt:
                e.dialling = True
                out.append(address)
                if e.expect is not None:
                    busy.add(e.expect)
        return out

    def next_deadline(self, linked_keys: set[bytes]) -> float | None:
        busy = {e.expect for e in self.entries.values() if e.dialling and e.expect}
        times = [e.next_attempt for e in self.entries.values()
                 if not e.dialling and e.link is None
                 and not (e.key is not None and e.key in linked_keys)
                 and not (e.expect is not None and (e.expect in busy
                                                    or e.expect in linked_keys))]
        return min(times, default=None)

    def failed(self, address: str, now: float, error: str) -> None:
        e = self.entries.get(address)
        if e is None:
            return
        e.dialling = False
        e.last_error = error
        e.next_attempt = now + e.backoff
        e.backoff = min(BACKOFF_MAX, e.backoff * 2)

    def verified(self, address: str, link: int, key: bytes, nickname: str) -> None:
        e = self.entries.get(address)
        if e is None:
            return
        e.dialling, e.link, e.key, e.nickname, e.last_error = False, link, key, nickname, ""
        e.backoff = BACKOFF_MIN

    def down(self, address: str, now: float, reason: str) -> None:
        """The connection dialled at ``address`` ended: verified and then dropped (dial
        again at once), or before it was verified (back off)."""
        e = self.entries.get(address)
        if e is None:
            return
        worked = e.link is not None
        e.link, e.dialling, e.last_error = None, False, reason
        if worked:
            e.backoff = BACKOFF_MIN
            e.next_attempt = now
        else:
            e.next_attempt = now + e.backoff
            e.backoff = min(BACKOFF_MAX, e.backoff * 2)

    def state(self, address: str, linked_keys: set[bytes]) -> str:
        e = self.entries[address]
        if e.link is not None or (e.key is not None and e.key in linked_keys) \
                or (e.expect is not None and e.expect in linked_keys):
            return "linked"
        return "dialling" if e.dialling else ("failing" if e.last_error else "waiting")
