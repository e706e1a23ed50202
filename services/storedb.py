"""The node's message store, ``store.sqlite``: plain, synchronous SQLite.

One owner: the **router** is the only process that writes ``store.sqlite``. It
opens it with ``Store(path)`` (which creates and checks the schema), commits
every envelope, status and release in its own transactions, reserves our
sequence numbers and runs the maintenance (``Store.maintain``). The **store
service** opens the same file with ``Store(path, reader=True)``: read-only
(``PRAGMA query_only``), never creating anything, and serves ``store.history``
to the CLI and the chat app (docs/protocol.md §1 and §4). In WAL mode its
reads never wait for the router's writes, nor the writes for the reads.

``Store`` is plain, synchronous SQLite (no asyncio, no zmq) so it can be tested
directly; every write is one transaction, committed before the router acts on
it (shows, relays, acknowledges).

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A
committed transaction is in the WAL file (the OS page cache) before the
router acts on it, so it survives any process being killed at any moment, which
is the failure we defend against; only a power cut or kernel crash may lose
the last transactions (never the consistency of the file). ``FULL`` would add
an fsync per transaction for that case.

A file that is not a SQLite database, or is another program's database, or
one written by a newer schema, stops the service with one log line (exit 78);
it is never deleted or rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tazcom.common import envelope, quota, rpc
from tazcom.common.errors import RemoteProtocolError, RequestFailed, TazcomError
from tazcom.common.status import RANK

from .runtime import FatalError

log = logging.getLogger("tazcom.store")

SCHEMA_VERSION = 1
#: PRAGMA application_id: "TAZC", so a foreign SQLite file is recognised as such.
APPLICATION_ID = 0x54415A43
RETENTION_DAYS = 7
PROFILE_KEEP_MS = 24 * 3600 * 1000
MAINTENANCE_INTERVAL = 600.0
MAX_SYNC_ITEMS = 100_000
MAX_LIST = 100_000
#: How long a read waits for a lock (WAL readers rarely wait at all): well under the
#: CLI's 1.5 s, so a busy store answers ``store_error`` instead of not answering.
READER_BUSY_TIMEOUT = 0.5
#: A history reply stays under a client's 8 MiB reply limit (busclient MAX_REPLY_BYTES):
#: at most this many bytes of rows (a row's fixed part, at most 172 bytes encoded, counted as
#: HISTORY_ROW_BYTES, plus its text and reason).
HISTORY_MAX_BYTES = 6 * 1024 * 1024
HISTORY_ROW_BYTES = 180
#: Ids per ``IN (...)`` query, well under SQLite's variable limit.
CHUNK = 500

PENDING = ("queued", "sent", "relayed")

MESSAGE_COLUMNS = ("id", "kind", "origin", "seq", "ts", "to", "signed", "sig", "hops", "conv",
                   "text", "status", "reason", "own", "held", "client_id", "received_at")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          BLOB NOT NULL PRIMARY KEY,  -- BLAKE2b-128 of signed
    kind        INTEGER NOT NULL,           -- 1 room, 2 dm, 3 receipt, 4 profile, 5 revoke, 6 file
    origin      BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    ts          INTEGER NOT NULL,           -- origin's clock, unix milliseconds
    "to"        BLOB,
    signed      BLOB NOT NULL,
    sig         BLOB NOT NULL,
    hops        INTEGER NOT NULL DEFAULT 0,
    conv        BLOB,
    text        TEXT,
    status      TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    own         INTEGER NOT NULL DEFAULT 0,
    held        INTEGER NOT NULL DEFAULT 0,
    client_id   BLOB,
    received_at REAL NOT NULL               -- our clock, unix seconds, set on insert
);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (conv, kind, ts, seq);
CREATE INDEX IF NOT EXISTS messages_arrival ON messages (conv, kind, received_at);
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id ON messages (client_id)
    WHERE client_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_held ON messages (ts) WHERE held = 1;
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_profile ON messages (kind, origin, ts);
CREATE INDEX IF NOT EXISTS messages_origin ON messages (origin, ts, received_at);
CREATE INDEX IF NOT EXISTS messages_outbox ON messages (ts)
    WHERE own = 1 AND status IN ('queued', 'sent', 'relayed');
CREATE TABLE IF NOT EXISTS policy (          -- blocks, mutes and bans (docs/protocol.md)
    key     BLOB NOT NULL PRIMARY KEY,
    policy  TEXT NOT NULL,                     -- 'block', 'mute' or 'ban'
    since   REAL NOT NULL,
    until   REAL,                              -- bans end; blocks and mutes do not
    reason  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value NOT NULL
);
"""

_INSERT = (
    'INSERT INTO messages (id, kind, origin, seq, ts, "to", signed, sig, hops, conv, text, '
    "status, reason, own, held, client_id, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)

#: The newest profile row of each origin (ties: higher seq, then higher id).
_NEWEST_PROFILES = (
    "SELECT * FROM (SELECT id, origin, ts, kind, \"to\", held, hops, signed, sig, "
    "row_number() OVER (PARTITION BY origin ORDER BY ts DESC, seq DESC, id DESC) AS rn "
    "FROM messages WHERE kind = 4) WHERE rn = 1"
)

_PENDING_SQL = "own = 1 AND status IN ('queued', 'sent', 'relayed')"

#: common.quota.evictable, in SQL: not ours, not to us (``:own``), not a profile.
_EVICTABLE_SQL = 'kind IN (1, 2, 3, 6, 7, 8) AND origin != :own AND ("to" IS NULL OR "to" != :own)'


#: A row's ``status.RANK`` (the one rule of change, common/status.py), in SQL.
_RANK_SQL = ("CASE status " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in RANK.items())
             + f" ELSE {len(RANK)} END")


def _chunks(seq: Sequence[bytes], n: int = CHUNK) -> Iterator[Sequence[bytes]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class Store:
    """The message database. Methods take and return the records of common/rpc.py."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time,
                 reader: bool = False) -> None:
        self.path = Path(path)
        self._clock = clock
        #: Commits so far, at the last checkpoint, and when the last one was (monotonic).
        self.commits = self.checkpointed = 0
        self.last_commit = 0.0
        self.reader = reader
        self._conn: sqlite3.Connection | None = None if reader else _open(self.path)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:  # a reader: the router creates the file; until then, empty
            self._conn = _open_reader(self.path)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction, committed when the block ends, rolled back if it raises."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
            self.commits += 1
            self.last_commit = time.monotonic()
        except BaseException:
            if self._db.in_transaction:
                self._db.rollback()
            raise

    def checkpoint(self) -> None:
        """Copy the WAL back into the database (PASSIVE: never waits for a reader)."""
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.checkpointed = self.commits

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM messages").fetchone()[0]

    # -- writes ----------------------------------------------------------------------------

    def put(self, req: rpc.StorePut) -> rpc.PutResult:
        now = self._clock()
        results: list[rpc.PutOutcome] = []
        with self._tx() as cur:
            for m in req.items:
                cur.execute(_INSERT, (m.id, m.kind, m.origin, m.seq, m.ts, m.to, m.signed, m.sig,
                                      m.hops, m.conv, m.text, m.status, m.reason, int(m.own),
                                      int(m.held), m.client_id, now))
                if cur.rowcount == 1:
                    results.append(rpc.PutOutcome(id=m.id, new=True))
                else:
                    results.append(rpc.PutOutcome(id=self._existing(cur, m), new=False))
        return rpc.PutResult(results=tuple(results))

    @staticmethod
    def _existing(cur: sqlite3.Cursor, m: rpc.StoredMessage) -> bytes:
        """The id of the row that made inserting ``m`` a no-op: same id, or same client_id."""
        if cur.execute("SELECT 1 FROM messages WHERE id = ?", (m.id,)).fetchone():
            return m.id
        if m.client_id is not None:
            row = cur.execute("SELECT id FROM messages WHERE client_id = ?",
                              (m.client_id,)).fetchone()
            if row:
                return row[0]
        raise RuntimeError(f"insert of {m.id.hex()} ignored without a conflicting row")

    def set_status(self, req: rpc.StoreSetStatus) -> rpc.Empty:
        """Each update applies where ``status.advance`` allows it (forward only)."""
        with self._tx() as cur:
            cur.executemany(f"UPDATE messages SET status = ?, reason = ? "
                            f"WHERE id = ? AND {_RANK_SQL} < ?",
                            [(u.status, u.reason, u.id, RANK[u.status])
                             for u in req.updates if u.status])
        return rpc.Empty()

    def set_reason(self, msg_id: bytes, reason: str) -> None:
        """A group message's count of receipts ("2 of 3 members"), at the same status."""
        with self._tx() as cur:
            cur.execute("UPDATE messages SET reason = ? WHERE id = ?", (reason, msg_id))

    def set_text(self, msg_id: bytes, conv: bytes, text: str) -> None:
        """A group message opened after its row was written (its text, its group)."""
        with self._tx() as cur:
            cur.execute("UPDATE messages SET conv = ?, text = ? WHERE id = ?",
                        (conv, text, msg_id))

    def lower_hops(self, distances: dict[bytes, int]) -> None:
        """The router found shorter paths to these messages (common.gossip, "Shortest
        distances"): catch-up offers them at the new distance."""
        with self._tx() as cur:
            cur.executemany("UPDATE messages SET hops = ? WHERE id = ? AND hops > ?",
                            [(d, i, d) for i, d in distances.items()])

    def release(self, req: rpc.StoreRelease) -> rpc.Empty:
        with self._tx() as cur:
            cur.executemany("UPDATE messages SET held = 0 WHERE id = ? AND held = 1",
                            [(i,) for i in req.ids])
        return rpc.Empty()

    def reserve_seq(self, req: rpc.StoreReserveSeq) -> rpc.SeqBlock:
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            first = int(row[0]) if row else 1
            cur.execute("INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (first + req.count,))
        return rpc.SeqBlock(first=first)

    def maintain(self, now: float, retention_days: int = RETENTION_DAYS
                 ) -> list[tuple[bytes, bytes | None, str]]:
        """Release and expire what is older than the retention; prune superseded profiles.

        Returns ``(id, to, reason)`` of each own message it marked failed.
        """
        now_ms = int(now * 1000)
        cutoff = now_ms - retention_days * 86400 * 1000
        reason = f"expired: not delivered within {retention_days} days"
        with self._tx() as cur:
            cur.execute("UPDATE messages SET held = 0 WHERE held = 1 AND ts < ?", (cutoff,))
            expired = cur.execute(f'SELECT id, "to" FROM messages WHERE {_PENDING_SQL} '
                                  f"AND ts < ? ORDER BY ts", (cutoff,)).fetchall()
            cur.executemany("UPDATE messages SET status = 'failed', reason = ? WHERE id = ?",
                            [(reason, i) for i, _ in expired])
            cur.execute(f"DELETE FROM messages WHERE kind = 4 AND ts < ? "
                        f"AND id NOT IN (SELECT id FROM ({_NEWEST_PROFILES}))",
                        (now_ms - PROFILE_KEEP_MS,))
        return [(i, to, reason) for i, to in expired]

    def set_policy(self, key: bytes, policy: str | None, since: float = 0.0,
                   until: float | None = None, reason: str = "") -> None:
        """Block, mute or ban ``key``; ``policy`` None lifts whatever it had."""
        with self._tx() as cur:
            if policy is None:
                cur.execute("DELETE FROM policy WHERE key = ?", (key,))
            else:
                cur.execute("INSERT INTO policy (key, policy, since, until, reason) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                            "policy = excluded.policy, since = excluded.since, "
                            "until = excluded.until, reason = excluded.reason",
                            (key, policy, since, until, reason))

    def usage(self, own: bytes) -> list[tuple[bytes, int]]:
        """Bytes each origin uses against its quota (common.quota.evictable rows)."""
        return self._db.execute(
            f"SELECT origin, sum(length(signed) + length(sig)) FROM messages "
            f"WHERE {_EVICTABLE_SQL} GROUP BY origin", {"own": own}).fetchall()

    def evict(self, origin: bytes, size: int | None, own: bytes) -> list[tuple[bytes, int]]:
        """Delete ``origin``'s oldest evictable rows until ``size`` bytes are freed (None:
        all of them), as ``common.quota.pick_oldest`` orders them; returns ``(id, bytes)``
        of each."""
        with self._tx() as cur:
            rows = cur.execute(
                f"SELECT id, ts, received_at, length(signed) + length(sig) FROM messages "
                f"WHERE origin = :origin AND {_EVICTABLE_SQL} ORDER BY ts, received_at",
                {"origin": origin, "own": own})
            gone = quota.pick_oldest(rows, size)
            for chunk in _chunks([i for i, _ in gone]):
                cur.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})",
                            chunk)
        return gone

    def policies(self) -> list[tuple[bytes, str, float, float | None, str]]:
        """Every ``(key, policy, since, until, reason)``."""
        try:
            return self._db.execute(
                "SELECT key, policy, since, until, reason FROM policy ORDER BY since").fetchall()
        except NotYetCreated:
            return []

    # -- reads -----------------------------------------------------------------------------

    def get(self, req: rpc.StoreGet) -> rpc.Envelopes:
        found: dict[bytes, rpc.WireEnvelope] = {}
        for chunk in _chunks(req.ids):
            marks = ",".join("?" * len(chunk))
            for i, signed, sig, hops in self._db.execute(
                    f"SELECT id, signed, sig, hops FROM messages WHERE id IN ({marks})", chunk):
                found[i] = rpc.WireEnvelope(id=i, signed=signed, sig=sig, hops=hops)
        items, seen = [], set()
        for i in req.ids:
            if i in found and i not in seen:
                seen.add(i)
                items.append(found[i])
        return rpc.Envelopes(items=tuple(items))

    def history(self, req: rpc.StoreHistory) -> rpc.History:
        try:
            return self._history(req)
        except NotYetCreated:
            return rpc.History(messages=())

    def _history(self, req: rpc.StoreHistory) -> rpc.History:
        """Newest first by arrival (our clock, then insertion order): an author's ``ts`` is
        its own claim, up to 10 minutes ahead, and must not decide what is newest."""
        # The room is kind 1 with conv NULL (StoredMessage: conv is None for the room).
        # files (kind 6) show in their conversation as a line of their own
        where = 'conv IS NULL AND kind IN (1, 6) AND "to" IS NULL' if req.conv is None else \
            "conv = ? AND kind IN (2, 6, 8)"
        # what the user blocked or muted is not shown (docs/protocol.md, "Blocks and mutes")
        where += " AND origin NOT IN (SELECT key FROM policy WHERE policy IN ('block', 'mute'))"
        args: list[Any] = [] if req.conv is None else [req.conv]
        at = None
        if req.before_id is not None:
            at = self._db.execute("SELECT received_at, rowid FROM messages WHERE id = ?",
                                  (req.before_id,)).fetchone()
        if at is not None:
            where += " AND (received_at < ? OR (received_at = ? AND rowid < ?))"
            args += [at[0], at[0], at[1]]
        elif req.before is not None:
            where += " AND received_at < ?"
            args.append(req.before / 1000)
        entries: list[rpc.HistoryEntry] = []
        size = 0
        cur = self._db.execute(
            f'SELECT id, kind, origin, "to", ts, text, status, reason, own, received_at '
            f"FROM messages WHERE {where} ORDER BY received_at DESC, rowid DESC LIMIT ?",
            (*args, req.limit))
        try:
            for i, kind, origin, to, ts, text, status, reason, own, received in cur:
                size += HISTORY_ROW_BYTES + len(reason.encode()) + len(
                    text.encode(errors="replace") if text else b"")
                if entries and size > HISTORY_MAX_BYTES:
                    break  # the client pages back for the rest (before_id)
                entries.append(rpc.HistoryEntry(
                    id=i, kind=kind, origin=origin, to=to, ts=ts, text=text, status=status,
                    reason=reason, own=bool(own), received=int(received * 1000)))
        finally:
            cur.close()  # a statement left open would hold its snapshot (a stale read)
        entries.reverse()
        return rpc.History(messages=tuple(entries))

    def sync_set(self, req: rpc.StoreSyncSet) -> rpc.SyncSet:
        rows = self._db.execute(
            'SELECT id, ts, kind, "to", held FROM messages '
            "WHERE conv IS NULL AND kind IN (1, 6) AND \"to\" IS NULL AND ts >= :since "
            # a group's messages are flooded and caught up like the room's
            'UNION SELECT id, ts, kind, "to", held FROM messages WHERE kind = 8 AND ts >= :since '
            'UNION SELECT id, ts, kind, "to", held FROM (' + _NEWEST_PROFILES + ") "
            "WHERE ts >= :since "
            'UNION SELECT id, ts, kind, "to", held FROM messages WHERE held = 1 '
            "ORDER BY ts DESC, id DESC LIMIT :cap",
            {"since": req.since, "cap": MAX_SYNC_ITEMS}).fetchall()
        return rpc.SyncSet(items=tuple(
            rpc.SyncItem(id=i, ts=ts, kind=kind, to=to, held=bool(held))
            for i, ts, kind, to, held in rows))

    def outbox(self, _req: rpc.StoreOutbox) -> rpc.Outbox:
        rows = self._db.execute(
            f'SELECT id, kind, "to", ts, status, text, signed, sig FROM messages '
            f"WHERE {_PENDING_SQL} ORDER BY ts, seq, id LIMIT ?", (MAX_LIST,)).fetchall()
        return rpc.Outbox(items=tuple(
            rpc.OwnMessage(id=i, kind=kind, to=to, ts=ts, status=status, text=text,
                           signed=signed, sig=sig)
            for i, kind, to, ts, status, text, signed, sig in rows))

    def profiles(self, _req: rpc.StoreProfiles) -> rpc.Profiles:
        items = []
        for origin, ts, hops, signed, sig in self._db.execute(
                f"SELECT origin, ts, hops, signed, sig FROM ({_NEWEST_PROFILES}) "
                f"ORDER BY ts DESC LIMIT ?", (MAX_LIST,)):
            try:
                # Rows are stored only after the router verified them: parse, do not re-verify.
                prof = envelope.profile_fields(envelope.parse(signed, sig).body)
            except RemoteProtocolError as e:
                log.warning("skipping unreadable profile of %s: %s", origin.hex()[:16], e)
                continue
            items.append(rpc.ProfileInfo(key=origin, nickname=prof.nickname,
                                         enc_key=prof.enc_key, ts=ts, hops=hops))
        return rpc.Profiles(items=tuple(items))

    def recent_ids(self, req: rpc.StoreRecentIds) -> rpc.IdList:
        rows = self._db.execute("SELECT id FROM messages WHERE received_at >= ? "
                                "ORDER BY received_at DESC, rowid DESC LIMIT ?",
                                (req.since, req.limit)).fetchall()
        return rpc.IdList(ids=tuple(r[0] for r in rows))


# -- opening ---------------------------------------------------------------------------------


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise FatalError(f"{path}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FatalError(f"{path}: is not a regular file")
        if st.st_mode & 0o077:  # DM texts are in here in clear: keep it ours only
            os.fchmod(fd, 0o600)
            log.warning("%s had mode %04o; set it to 0600", path, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)
    db = sqlite3.connect(str(path), isolation_level=None, timeout=2.0)
    try:
        _check_and_create_retrying(db, path)
    except sqlite3.DatabaseError as e:
        db.close()
        raise FatalError(f"{path}: not a usable TAZCOM store ({e}); leaving it untouched "
                         f"(move it away to start with an empty store)") from None
    except BaseException:
        db.close()
        raise
    return db


def _open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the router's database, once it has made it."""
    if not path.exists():
        raise NotYetCreated(f"{path}: not created yet (the router creates it)")
    db = sqlite3.connect(str(path), isolation_level=None, timeout=READER_BUSY_TIMEOUT)
    try:
        db.execute("PRAGMA query_only = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.OperationalError:  # locked, busy: this request fails, the next tries again
        db.close()
        raise
    except sqlite3.DatabaseError as e:
        db.close()
        raise FatalError(f"{path}: not a usable TAZCOM store ({e}); leaving it untouched"
                         ) from None
    if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
        db.close()
        if app_id in (0, APPLICATION_ID) and version == 0:
            raise NotYetCreated(f"{path}: schema not created yet (the router creates it)")
        raise FatalError(f"{path}: not a TAZCOM store of schema v{SCHEMA_VERSION}; "
                         "leaving it untouched")
    return db


class NotYetCreated(Exception):
    """The router has not created the database yet: a reader sees it empty."""


def _check_and_create_retrying(db: sqlite3.Connection, path: Path) -> None:
    """The router opens the same database at the same moment (it writes envelopes
    itself); switching to WAL or creating the schema can then find it locked, which
    is not a corrupt file: wait and try again."""
    deadline = time.monotonic() + 10
    while True:
        try:
            _check_and_create(db, path)
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            time.sleep(0.05)  # another process holds the lock for a moment


def _check_and_create(db: sqlite3.Connection, path: Path) -> None:
    # Read-only checks first: nothing is written to a file we do not recognise. They
    # read one snapshot: the router may create the schema between two autocommit reads,
    # and tables without a version would look like another program's database.
    db.execute("BEGIN")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {name: [c[1] for c in db.execute(f"PRAGMA table_info({name})")]
                  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = "
                                            "'table' AND name NOT LIKE 'sqlite_%'").fetchall()}
    finally:
        db.execute("COMMIT")
    foreign = f"{path}: is another program's SQLite database; leaving it untouched"
    if app_id not in (0, APPLICATION_ID):
        raise FatalError(foreign)
    if version > SCHEMA_VERSION:
        raise FatalError(f"{path}: store schema v{version} is newer than this TAZCOM "
                         f"(v{SCHEMA_VERSION}); upgrade TAZCOM")
    if version == 0 and tables:
        raise FatalError(foreign)
    if version not in (0, SCHEMA_VERSION):
        raise FatalError(foreign)
    expected = {"messages": list(MESSAGE_COLUMNS), "meta": ["key", "value"]}
    for name, columns in tables.items():
        if name in expected and columns != expected[name]:
            raise FatalError(f"{path}: table {name} has unexpected columns; leaving it untouched")
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        log.warning("%s: journal_mode is %s, not wal", path, mode)
    db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring: durable against kill
    # A checkpoint (WAL pages copied back, and fsynced) ran inside whichever commit crossed
    # 1,000 pages: a message then waited milliseconds. The router checkpoints when quiet
    # instead (Store.checkpoint).
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; "
                     f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")


def db_failure(e: sqlite3.DatabaseError, path: Path) -> TazcomError | None:
    """What a SQLite error means for the service: fatal (corrupt), a failed request, or a bug."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return FatalError(f"{path}: database is corrupt ({e}); leaving it untouched")
    if isinstance(e, sqlite3.OperationalError):  # disk full, I/O error, locked by someone else
        return RequestFailed(f"store: {e}", code="store_error")
    return None
