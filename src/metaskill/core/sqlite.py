"""One way to open the SQLite files that several processes share (cache, runs, skills).

Example:
    >>> conn = connect_wal(":memory:")
    >>> conn.execute("SELECT 1").fetchone()
    (1,)
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect_wal(path: str | Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL journaling and ``synchronous=NORMAL``.

    Switching a new file to WAL needs a moment of exclusive access, and SQLite answers
    "database is locked" at once (without waiting on the busy timeout) when another process
    is creating or switching the same file. So the switch is retried until ``timeout_s``.

    Args:
        path: the database file (``":memory:"`` works too).
        timeout_s: how long to wait for another process's lock, for the switch and for
            every later statement.

    Returns:
        The open connection.

    Raises:
        sqlite3.OperationalError: still locked after ``timeout_s``.
    """
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                conn.close()
                raise
            if time.monotonic() >= deadline:
                conn.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    # NORMAL in WAL mode: a committed transaction survives a killed process (not
    # necessarily a power cut) and a commit costs no fsync.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn
