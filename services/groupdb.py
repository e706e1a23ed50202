"""groups.sqlite: this node's private groups, one row per group (``GroupCore.dump``).

The rows hold the groups' sender keys (secret), so the file is the node's alone (0600), as
store.sqlite and files.sqlite are. A row is written when its group's state changed: the
router saves after every step that touched a group (``SaveGroups``), and only the groups
whose bytes differ from what it last wrote.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id BLOB PRIMARY KEY,
    state BLOB NOT NULL
);
"""


class GroupDB:
    def __init__(self, path: Path) -> None:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._written: dict[bytes, bytes] = {}

    def load(self) -> list[tuple[bytes, bytes]]:
        rows = [(bytes(i), bytes(s)) for i, s in self.db.execute("SELECT id, state FROM groups")]
        self._written = dict(rows)
        return rows

    def save(self, states: dict[bytes, bytes]) -> int:
        """Write the groups whose state changed; returns how many."""
        changed = [(g, s) for g, s in states.items() if self._written.get(g) != s]
        if changed:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO groups (id, state) VALUES (?, ?)",
                                    changed)
            self._written.update(changed)
        return len(changed)

    def close(self) -> None:
        self.db.close()
