"""Open a SQLite file that several processes share (request cache, embedding cache, Ray workers).

Why a helper: switching a new file to WAL mode needs a moment of exclusive access, and SQLite answers
"database is locked" to a second process doing the same at that instant without waiting on its busy
timeout. So the setup statements are retried with a short back-off instead of failing the run.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path


def connect_shared(path: str | Path, schema: str, *, check_same_thread: bool = True,
                   attempts: int = 60) -> sqlite3.Connection:
    """A WAL-mode connection to `path` with `schema` (one CREATE ... IF NOT EXISTS statement) in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute("PRAGMA busy_timeout=60000")
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(schema)
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                conn.close()
                raise
            time.sleep(0.02 + random.random() * 0.05)
    raise AssertionError("unreachable")
