"""One way to open the SQLite files that several processes share (cache, runs, skills).

:func:`connect_wal` opens one connection; :class:`ThreadConnections` gives each thread its
own (an ``sqlite3`` connection must stay in the thread that made it) and runs write
transactions. The LM cache, the run store, the SkillBook and the embedding cache all
hold one :class:`ThreadConnections`.

Example:
    >>> conn = connect_wal(":memory:")
    >>> conn.execute("SELECT 1").fetchone()
    (1,)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metaskill.core.errors import MetaskillError

MEMORY = ":memory:"


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


class ThreadConnections:
    """One WAL connection per thread to one SQLite file, opened on first use.

    ``":memory:"`` is one database per connection in SQLite, so for it every thread
    shares a single connection (SQLite serialises its use).

    Args:
        path: the database file (its folder is created if missing) or ``":memory:"``.
        timeout_s: how long to wait for another process's lock (see :func:`connect_wal`).
        label: when given, a file SQLite cannot open raises
            :class:`~metaskill.core.errors.MetaskillError` ("cannot open LABEL PATH: ...")
            instead of ``sqlite3.DatabaseError``.

    Example:
        >>> db = ThreadConnections(":memory:")
        >>> _ = db.get().execute("CREATE TABLE t (x INTEGER)")
        >>> with db.transaction() as conn:
        ...     _ = conn.execute("INSERT INTO t VALUES (1)")
        >>> db.get().execute("SELECT x FROM t").fetchall()
        [(1,)]
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0, label: str | None = None
                 ) -> None:
        self.path = str(path)
        self._timeout = timeout_s
        self._label = label
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        if self.path == MEMORY:
            self._shared = sqlite3.connect(MEMORY, isolation_level=None,
                                           check_same_thread=False)
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened now if it has none).

        Raises:
            sqlite3.DatabaseError: the file is not a database or stays locked (a
                :class:`~metaskill.core.errors.MetaskillError` when ``label`` was given).
        """
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = connect_wal(self.path, self._timeout)
            except sqlite3.DatabaseError as e:
                if self._label is None:
                    raise
                raise MetaskillError(f"cannot open {self._label} {self.path}: {e}.") from e
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed at the end, rolled back on error.

        Example:
            >>> db = ThreadConnections(":memory:")
            >>> _ = db.get().execute("CREATE TABLE t (x INTEGER)")
            >>> try:
            ...     with db.transaction() as conn:
            ...         _ = conn.execute("INSERT INTO t VALUES (1)")
            ...         raise ValueError("stop")
            ... except ValueError:
            ...     pass
            >>> db.get().execute("SELECT COUNT(*) FROM t").fetchone()
            (0,)
        """
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (a ``":memory:"`` database stays open: closing
        its one connection would delete it)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


__all__ = ["MEMORY", "ThreadConnections", "connect_wal"]
