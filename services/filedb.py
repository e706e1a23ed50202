"""The file service's rows: every file sent or received here (``$TAZCOM_HOME/files.sqlite``).

One row per file manifest, keyed by the manifest's envelope id: what ``tazcom files`` lists
and ``file.status`` announces, plus what the service needs to go on after a restart (the
original's path and, for a DM file we sent, its key, to serve chunks; the neighbour a
manifest came from, to ask it first). The envelopes themselves live in the router's store
like any message; this is the transfer's own state, written by the router process only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tazcom.common.events import FileStatus

from .privatedb import open_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id        BLOB PRIMARY KEY,   -- the manifest's envelope id (16 bytes)
    file_id   BLOB NOT NULL,      -- the file id (32 bytes): the hash its chunks prove to
    name      TEXT NOT NULL,
    size      INTEGER NOT NULL,   -- bytes on the wire (a DM file's ciphertext)
    plain     INTEGER NOT NULL,   -- bytes of the file itself
    mime      TEXT NOT NULL DEFAULT '',
    origin    BLOB NOT NULL,
    "to"      BLOB,
    direction TEXT NOT NULL,      -- out | in
    status    TEXT NOT NULL,
    reason    TEXT NOT NULL DEFAULT '',
    done      INTEGER NOT NULL DEFAULT 0,
    path      TEXT NOT NULL DEFAULT '',
    key       BLOB,               -- a DM file's key (ours to serve, or to decrypt)
    sent      INTEGER NOT NULL,   -- the manifest's ts (ms)
    came_from BLOB,
    created   REAL NOT NULL,
    stamp     TEXT NOT NULL DEFAULT ''  -- the original's inode, size, mtime when hashed
);
CREATE INDEX IF NOT EXISTS files_by_file ON files (file_id);
"""


@dataclass(slots=True)
class FileRow:
    id: bytes
    file_id: bytes
    name: str
    size: int
    plain: int
    origin: bytes
    to: bytes | None
    direction: str
    status: str
    sent: int
    created: float
    mime: str = ""
    reason: str = ""
    done: int = 0
    path: str = ""
    key: bytes | None = None
    came_from: bytes | None = None
    #: What ``os.stat`` said of the original when it was hashed (``ino:size:mtime_ns``):
    #: while it says the same, chunks are served without hashing them again.
    stamp: str = ""
    #: Fetched without being asked (a DM file under ``auto_accept``): not persisted.
    auto: bool = False

    def event(self) -> dict[str, Any]:
        """The fields of a ``file.status`` event (and of a ``files.list`` row)."""
        return dict(id=self.id.hex(), name=self.name, size=self.plain, mime=self.mime,
                    hash=self.file_id.hex(), origin=self.origin.hex(),
                    to=self.to.hex() if self.to else None, direction=self.direction,
                    status=self.status, reason=self.reason[:200],
                    done=min(self.done, self.plain), path=self.path, sent=self.sent)


    def status_record(self) -> FileStatus:
        """The row as a ``files.*`` reply carries it (an event's record, stamped now)."""
        return FileStatus(src="router", ts=time.time(), **self.event())


COLUMNS = [f.name for f in fields(FileRow) if f.name != "auto"]


class FileDB:
    def __init__(self, path: Path) -> None:
        # it holds DM file keys and names: ours alone, as store.sqlite is
        self.db = open_private(path, SCHEMA)

    def put(self, row: FileRow) -> None:
        values = {k: v for k, v in asdict(row).items() if k in COLUMNS}
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        marks = ", ".join(f":{c}" for c in COLUMNS)
        self.db.execute(f"INSERT OR REPLACE INTO files ({cols}) VALUES ({marks})", values)

    def update(self, row: FileRow, *names: str) -> None:
        sets = ", ".join(f'"{n}" = :{n}' for n in names)
        self.db.execute(f"UPDATE files SET {sets} WHERE id = :id",
                        {n: getattr(row, n) for n in (*names, "id")})

    def rows(self, where: str = "1", args: tuple[Any, ...] = (), limit: int = 100_000
             ) -> list[FileRow]:
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        cur = self.db.execute(f"SELECT {cols} FROM files WHERE {where} "
                              "ORDER BY created DESC, rowid DESC LIMIT ?", (*args, limit))
        return [FileRow(*r) for r in cur]

    def close(self) -> None:
        self.db.close()
