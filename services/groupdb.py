"""groups.sqlite: this node's private groups, one row per group (``GroupCore.dump``), the
control messages waiting for a member's profile (``outbox``), and who has acknowledged
each of our newest group messages (``acks``).

The rows hold the groups' sender keys (secret), so the file is the node's alone (0600), as
store.sqlite and files.sqlite are. A row is written when its group's state changed: the
router saves after every step that touched a group (``SaveGroups``), and only the groups
whose bytes differ from what it last wrote.
"""

from __future__ import annotations

from pathlib import Path

from .privatedb import open_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id BLOB PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY,
    recipient BLOB NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS acks (
    id BLOB PRIMARY KEY,
    grp BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    acked BLOB NOT NULL
);
"""
#: Our group messages whose receipts are counted (routergroups.ACKS_KEPT).
ACKS_KEPT = 4096


class GroupDB:
    def __init__(self, path: Path) -> None:
        self.db = open_private(path, SCHEMA)
        self._written: dict[bytes, bytes] = {}
        self._outbox: list[tuple[bytes, str, bytes]] = []

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

    def save_outbox(self, items: list[tuple[bytes, str, bytes]]) -> None:
        """Control messages waiting for their recipient's profile (its DM key), in order;
        written when they changed."""
        if items == self._outbox:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM outbox")
            self.db.executemany("INSERT INTO outbox (recipient, kind, body) VALUES (?, ?, ?)",
                                items)
        self._outbox = list(items)

    def outbox(self) -> list[tuple[bytes, str, bytes]]:
        self._outbox = [(bytes(r), k, bytes(b)) for r, k, b in self.db.execute(
            "SELECT recipient, kind, body FROM outbox ORDER BY n")]
        return list(self._outbox)

    def save_acks(self, msg_id: bytes, group: bytes, epoch: int, acked: list[bytes]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO acks (id, grp, epoch, acked) "
                            "VALUES (?, ?, ?, ?)", (msg_id, group, epoch, b"".join(acked)))
            self.db.execute("DELETE FROM acks WHERE rowid <= (SELECT max(rowid) FROM acks) - ?",
                            (ACKS_KEPT,))

    def acks(self) -> list[tuple[bytes, bytes, int, list[bytes]]]:
        rows = self.db.execute("SELECT id, grp, epoch, acked FROM acks ORDER BY rowid")
        return [(bytes(i), bytes(g), e, [bytes(a[k:k + 32]) for k in range(0, len(a), 32)])
                for i, g, e, a in rows]

    def close(self) -> None:
        self.db.close()
