"""Peer exchange: verified neighbours tell each other, signed, where the nodes they reach
directly listen, so one static peer or one invite is enough to join a whole LAN whose
multicast is filtered (docs/protocol.md §9, "Peer exchange"). No I/O.

A record is ``msgpack([1, origin, ts_ms, own, entries])``: ``own`` the origin's listening
addresses, ``entries`` ``[[key, address], ...]`` for the neighbours it has a verified link
to, each at an address it has evidence for (it dialled that address and the key was
proven; or the neighbour's own record names it and the link came from that IP). The
origin's long-term key signs ``"tazcom-px:" || record``; the link message ``px`` carries
``msgpack([record, sig])`` to neighbours that said ``px/1`` in their hello.

What is learnt is only a candidate to dial. The dial expects the entry's key (the Noise
handshake proves it or the link is refused), so an address a peer only claimed is never
shown anywhere until a verified link used it. A peer whose candidates keep failing is
not listened to for a while; lists over ``MAX_ENTRIES`` are refused whole; candidates
outside our own networks are not dialled unless routed dialling is configured (so a
peer cannot make us knock on arbitrary hosts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from . import addresses, codec
from .errors import RemoteProtocolError
from .keys import DOMAIN_PX, fingerprint

KIND = "px"
CAP = "px/1"
VERSION = 1
MAX_ENTRIES = 64
MAX_OWN = 8
MAX_ADDRESS = 64
MAX_BODY = 16 * 1024
#: A candidate address is dialled at most this often.
RETRY = 60.0
#: Candidates in flight at once.
MAX_DIALS = 4
#: Failed candidates from one peer before its lists are ignored, and for how long.
MAX_FAILURES = 8
IGNORE_FOR = 600.0
#: A candidate no record lists any more is forgotten after this long.
FORGET = 300.0


def host_of(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def parse_address(text: object) -> str | None:
    """A unicast endpoint (common/addresses.py) in its canonical text, or None."""
    parsed = addresses.split_address(text)
    if parsed is None or len(str(text)) > MAX_ADDRESS:
        return None
    ip = addresses.ip_of(parsed[0])
    if ip.is_multicast or ip.is_unspecified:
        return None
    return addresses.join(*parsed)


@dataclass(frozen=True, slots=True)
class Record:
    origin: bytes
    ts_ms: int
    own: tuple[str, ...]
    entries: tuple[tuple[bytes, str], ...]

    def pack(self) -> bytes:
        return codec.pack([VERSION, self.origin, self.ts_ms, list(self.own),
                           [[k, a] for k, a in self.entries]])


def decode(body: bytes, link_key: bytes) -> Record:
    """The record in a ``px`` message from the verified peer ``link_key``; raises
    ``RemoteProtocolError`` (``bad_message``, ``bad_signature``, ``too_many``...)."""
    outer = codec.unpack(body, MAX_BODY)
    if type(outer) is not list or len(outer) < 2 or type(outer[0]) is not bytes \
            or type(outer[1]) is not bytes or len(outer[1]) != 64:
        raise RemoteProtocolError("px: expected [record, sig]", code="bad_message")
    raw, sig = outer[0], outer[1]
    rec = codec.unpack(raw, MAX_BODY)
    if type(rec) is not list or len(rec) < 5:
        raise RemoteProtocolError("px: a record is [1, origin, ts, own, entries]",
                                  code="bad_message")
    version, origin, ts, own, entries = rec[:5]
    if version != VERSION:
        raise RemoteProtocolError(f"px record version {version!r}; we read 1",
                                  code="bad_version")
    if origin != link_key:
        raise RemoteProtocolError("px record of another node than the link's",
                                  code="bad_message")
    if type(ts) is not int or not 0 <= ts < 2**63 or type(own) is not list \
            or type(entries) is not list:
        raise RemoteProtocolError("px: bad ts, own or entries", code="bad_message")
    if len(entries) > MAX_ENTRIES or len(own) > MAX_OWN:
        raise RemoteProtocolError(f"px list of {len(entries)} entries, {len(own)} own "
                                  f"addresses (at most {MAX_ENTRIES}, {MAX_OWN})",
                                  code="too_many")
    try:
        nacl.signing.VerifyKey(origin).verify(DOMAIN_PX + raw, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise RemoteProtocolError("px record signature is invalid",
                                  code="bad_signature") from None
    own_ok = tuple(a for a in (parse_address(x) for x in own) if a is not None)
    good: list[tuple[bytes, str]] = []
    for item in entries:
        if type(item) is not list or len(item) < 2 or type(item[0]) is not bytes \
                or len(item[0]) != 32:
            raise RemoteProtocolError("px entry: [32-byte key, address]", code="bad_message")
        address = parse_address(item[1])
        if address is not None:
            good.append((item[0], address))
    return Record(origin=origin, ts_ms=ts, own=own_ok, entries=tuple(good))


@dataclass(slots=True)
class Candidate:
    key: bytes
    address: str
    #: Who listed it, with when they last did.
    sources: dict[bytes, float] = field(default_factory=dict)
    next_attempt: float = 0.0
    dialling: bool = False


@dataclass(frozen=True, slots=True)
class DialCandidate:
    key: bytes
    address: str


@dataclass(slots=True)
class Source:
    ts_ms: int = -1
    own: tuple[str, ...] = ()
    failures: int = 0
    ignored_until: float = 0.0


class PeerExchange:
    """What we tell our neighbours, and what we dial from what they tell us."""

    def __init__(self, *, is_local: Callable[[str], bool], routed: bool = False) -> None:
        """``is_local(address)``: on one of our networks (so a dial stays on the LAN)."""
        self.key: bytes | None = None
        self.own: tuple[str, ...] = ()
        self.is_local = is_local
        self.routed = routed
        self.sources: dict[bytes, Source] = {}
        self.candidates: dict[tuple[bytes, str], Candidate] = {}
        self._dials = 0
        self._last_ts = -1

    # -- what we say ---------------------------------------------------------------------

    def neighbours(self, links: Iterable[tuple[bytes, str, str]]) -> tuple[tuple[bytes, str], ...]:
        """Entries for our verified links ``(key, direction, address)``: an ``out`` link's
        dialled address; an ``in`` link's peer at the address its own record names on the
        IP the link came from. Sorted, at most MAX_ENTRIES."""
        out: dict[bytes, str] = {}
        for key, direction, address in links:
            if direction == "out":
                parsed = parse_address(address)
            else:
                host = host_of(address).partition("%")[0]
                own = self.sources.get(key, Source()).own
                parsed = next((a for a in own if host_of(a).partition("%")[0] == host), None)
            if parsed is not None:
                out[key] = parsed
        return tuple(sorted(out.items()))[:MAX_ENTRIES]

    def record(self, entries: tuple[tuple[bytes, str], ...], now_wall: float) -> Record:
        """Our next record: its ``ts_ms`` grows even if our clock steps back."""
        assert self.key is not None
        self._last_ts = max(self._last_ts + 1, int(now_wall * 1000))
        return Record(origin=self.key, ts_ms=self._last_ts, own=self.own[:MAX_OWN],
                      entries=entries)

    def new_link(self, key: bytes) -> None:
        """A new verified link to ``key``: its records count from scratch (its clock may
        have stepped back, or it restarted), but not what it is ignored for."""
        src = self.sources.get(key)
        if src is not None:
            src.ts_ms = -1

    # -- what we hear ----------------------------------------------------------------------

    def receive(self, rec: Record, now: float,
                defer: Callable[[bytes], float] = lambda _k: 0.0,
                scope: str | None = None) -> str | None:
        """Take a decoded record from its (verified) origin; a new candidate waits
        ``defer(key)`` (the higher key of a pair lets the lower dial first). A link-local
        entry is reachable only on the link the record came over: it takes that link's
        ``scope`` (our interface), and is skipped when the link has none. Returns why the
        record was ignored (for the log), or None."""
        src = self.sources.setdefault(rec.origin, Source())
        if rec.ts_ms == src.ts_ms:
            return None  # the same record again (the link came back)
        if rec.ts_ms < src.ts_ms:
            return f"an older record than one already taken (replayed?) ts {rec.ts_ms}"
        src.ts_ms, src.own = rec.ts_ms, rec.own
        if now < src.ignored_until:
            return (f"ignored until {src.ignored_until - now:.0f} s from now: "
                    f"{src.failures} of its addresses did not answer as claimed")
        listed = set()
        for key, address in rec.entries:
            if key == self.key or key == rec.origin:
                continue
            host, port = addresses.split_address(address) or ("", 0)
            if addresses.is_link_local(host):
                if scope is None:
                    continue
                address = addresses.join(addresses.with_scope(host, scope), port)
            if not self.routed and not self.is_local(address):
                continue
            listed.add((key, address))
            c = self.candidates.get((key, address))
            if c is None:
                c = self.candidates[(key, address)] = Candidate(key, address,
                                                                next_attempt=now + defer(key))
            c.sources[rec.origin] = now
        for (key, address), c in list(self.candidates.items()):
            if rec.origin in c.sources and (key, address) not in listed:
                del c.sources[rec.origin]
                if not c.sources and not c.dialling:
                    del self.candidates[(key, address)]
        return None

    # -- dialling --------------------------------------------------------------------------

    def due(self, now: float, verified: set[bytes], busy: set[bytes]) -> list[DialCandidate]:
        """Candidates to dial now: not linked or being dialled by other means, one address
        per key at a time, at most MAX_DIALS in flight."""
        out: list[DialCandidate] = []
        dialling = {c.key for c in self.candidates.values() if c.dialling}
        for (key, address), c in list(self.candidates.items()):
            if not c.dialling and all(now - t > FORGET for t in c.sources.values()):
                del self.candidates[(key, address)]
                continue
            if self._dials >= MAX_DIALS:
                break
            if c.dialling or key in verified or key in busy or key in dialling \
                    or now < c.next_attempt:
                continue
            c.dialling = True
            c.next_attempt = now + RETRY
            self._dials += 1
            dialling.add(key)
            out.append(DialCandidate(key, address))
        return out

    def next_deadline(self, verified: set[bytes]) -> float | None:
        times = [c.next_attempt for c in self.candidates.values()
                 if not c.dialling and c.key not in verified]
        return min(times, default=None)

    def dial_done(self, key: bytes, address: str, proven: bool, now: float) -> str | None:
        """A candidate's dial ended: ``proven`` when its link verified ``key``. A failure
        counts against every peer that listed it; returns a log line when one of them is
        now ignored."""
        c = self.candidates.get((key, address))
        if c is None or not c.dialling:
            return None
        c.dialling = False
        self._dials -= 1
        if proven:
            for origin in c.sources:
                self.sources[origin].failures = 0
            return None
        said = None
        for origin in c.sources:
            src = self.sources[origin]
            src.failures += 1
            if src.failures >= MAX_FAILURES and now >= src.ignored_until:
                src.ignored_until = now + IGNORE_FOR
                src.failures = 0
                said = (f"{fingerprint(origin)}: {MAX_FAILURES} addresses it listed did "
                        f"not answer as claimed; its lists are ignored for {IGNORE_FOR:.0f} s")
                for k in [k for k, cand in self.candidates.items()
                          if set(cand.sources) == {origin} and not cand.dialling]:
                    del self.candidates[k]
        return said
