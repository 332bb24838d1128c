"""Durable LM cache: SQLite in WAL mode, safe for several processes at once.

The key is a SHA-256 over everything that changes an answer (see :func:`request_key`).
Values are JSON; every ``get`` builds fresh objects, so callers may mutate what they get.
The original usage is stored, so token accounting stays right on cache hits.

Example:
    >>> import tempfile, pathlib
    >>> c = Cache(pathlib.Path(tempfile.mkdtemp()) / "c.sqlite")
    >>> c.put("k", {"a": 1}); c.get("k")
    {'a': 1}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from metaskill.core.sqlite import ThreadConnections

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
"""


class Cache:
    """A key -> JSON value store in one SQLite file.

    Args:
        path: the SQLite file; its folder is created if missing.
        timeout_s: how long a writer waits for another process's lock.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._db = ThreadConnections(path, timeout_s, label="LM cache")
        self._db.get().executescript(_SCHEMA)

    def get(self, key: str) -> Any | None:
        """The value stored under ``key`` (a fresh object), or None."""
        row = self._db.get().execute("SELECT value FROM entries WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        """Values for those of ``keys`` that are stored."""
        out: dict[str, Any] = {}
        conn = self._db.get()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for k, v in conn.execute(
                f"SELECT key, value FROM entries WHERE key IN ({marks})", chunk
            ):
                out[k] = json.loads(v)
        return out

    def put(self, key: str, value: Any, model: str = "") -> None:
        """Store ``value`` (JSON-serialisable) under ``key``."""
        self.put_many([(key, value)], model=model)

    def put_many(self, items: list[tuple[str, Any]], model: str = "") -> None:
        """Store many values in one transaction."""
        if not items:
            return
        now = time.time()
        rows = [(k, json.dumps(v, ensure_ascii=False), model, now) for k, v in items]
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO entries(key, value, model, created) VALUES (?,?,?,?)",
                rows,
            )

    def delete(self, keys: list[str]) -> int:
        """Delete the entries under ``keys``; returns how many existed."""
        conn = self._db.get()
        n = 0
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            cur = conn.execute(
                f"DELETE FROM entries WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            n += cur.rowcount
        return n

    def stats(self) -> dict[str, Any]:
        """Entry counts per model, total entries and file size in bytes."""
        conn = self._db.get()
        per_model = dict(
            conn.execute("SELECT model, COUNT(*) FROM entries GROUP BY model ORDER BY 2 DESC")
        )
        size = sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"))
            if p.exists()
        )
        return {
            "path": str(self.path),
            "entries": sum(per_model.values()),
            "per_model": per_model,
            "bytes": size,
        }

    def clear(self, model: str | None = None) -> int:
        """Delete all entries (or those of one model); returns how many were deleted."""
        conn = self._db.get()
        if model is None:
            cur = conn.execute("DELETE FROM entries")
        else:
            cur = conn.execute("DELETE FROM entries WHERE model=?", (model,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cur.rowcount

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()


__all__ = ["Cache"]
