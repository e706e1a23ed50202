"""SQLite files that hold keys (files.sqlite, groups.sqlite): the node's user's alone."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_private(path: Path, schema: str) -> sqlite3.Connection:
    """An SQLite file only this node's user reads (0600, made so before anything is in it),
    in WAL mode, with ``schema`` applied: files.sqlite and groups.sqlite hold keys."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db
