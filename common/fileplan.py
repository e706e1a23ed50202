"""The file service's decisions about downloads, sans-IO (docs/protocol.md §10,
"Fetching a file"): whom a download asks and in what order, which unasked files are
fetched by themselves, how much disk a download needs, and when one is given up.

``services/files.py`` executes them; the chunk-level decisions are ``common.download``'s
and ``common.filerelay``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: A download that got this many chunks failing their proof and none good is refused: its
#: manifest lies (a size the id does not commit to), or every source does.
BAD_LIMIT = 64
#: Unasked DM files being received at once: per origin, and in all (times auto_accept).
AUTO_PER_ORIGIN = 2
AUTO_BUDGET = 4
#: A download that got no verified chunk for this long fails (``stalled``): its sources
#: are gone, banned or lying; ``files get`` tries again, from what it has.
STALL = 300.0


def sources(upstream: bytes | None, came_from: bytes | None, links: Iterable[bytes]
            ) -> list[bytes]:
    """Whom a download asks, in order: the next hop toward the origin, whoever brought
    the manifest, then every other neighbour by key (each asks its own way toward the
    origin); only current links, each once."""
    linked = set(links)
    out: list[bytes] = []
    for k in [upstream, came_from, *sorted(linked)]:
        if k is not None and k in linked and k not in out:
            out.append(k)
    return out


def may_auto_accept(receiving: Sequence[tuple[bytes, int]], origin: bytes, size: int,
                    auto_accept: int) -> bool:
    """May an unasked DM file (``size`` bytes on the wire, from ``origin``) be fetched
    now, beside the unasked ones being received (``(origin, size)`` each)? Their space
    is taken at once (preallocated), and each origin is a key anyone can make: at most
    AUTO_PER_ORIGIN per origin, and AUTO_BUDGET times ``auto_accept`` bytes in all."""
    if sum(o == origin for o, _ in receiving) >= AUTO_PER_ORIGIN:
        return False
    return sum(s for _, s in receiving) + size <= AUTO_BUDGET * auto_accept


def space_needed(size: int, plain: int, dm: bool) -> int:
    """Free bytes a download needs: chunks are written in place (a DM file's decrypted,
    so its plaintext size), then the file is renamed."""
    return plain if dm else size


def gives_up(bad: int, good: int, idle: float) -> str | None:
    """Why a download is abandoned (``bad_manifest``, ``stalled``), or None: ``bad``
    chunks failed their proof, ``good`` passed, none for ``idle`` seconds."""
    if bad >= BAD_LIMIT and not good:
        return "bad_manifest"
    if idle > STALL:
        return "stalled"
    return None
