"""The SQLite cache under two concurrent processes, and its JSON round trip."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from metaskill.core.hashing import stable_hash
from metaskill.lm.cache import Cache

WORKER = textwrap.dedent(
    """
    import sys, time
    from metaskill.lm.cache import Cache
    path, me, other, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    c = Cache(path)
    seen = 0
    for i in range(n):
        c.put(f"{me}-{i}", {"who": me, "i": i, "usage": {"prompt_tokens": i}}, model=me)
        if i % 10 == 0:
            c.put_many([(f"{me}-batch-{i}-{j}", [j]) for j in range(5)], model=me)
        v = c.get(f"{other}-{i // 2}")
        if v is not None:
            assert v == {"who": other, "i": i // 2, "usage": {"prompt_tokens": i // 2}}, v
            seen += 1
    print(seen)
    """
)


def test_two_processes_write_and_read_one_file(tmp_path):
    path = tmp_path / "shared" / "cache.sqlite"  # neither process finds it existing
    n = 200
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(path), me, other, str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    c = Cache(path)
    st = c.stats()
    assert st["per_model"] == {"a": n + 5 * (n // 10), "b": n + 5 * (n // 10)}
    for who in ("a", "b"):
        for i in range(n):
            assert c.get(f"{who}-{i}") == {"who": who, "i": i, "usage": {"prompt_tokens": i}}
    # The WAL journal is on, so readers never block the writer.
    mode = c._db.get().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_get_returns_fresh_objects(tmp_path):
    c = Cache(tmp_path / "c.sqlite")
    c.put("k", {"a": [1, 2]})
    v = c.get("k")
    v["a"].append(3)
    assert c.get("k") == {"a": [1, 2]}
    assert c.get("missing") is None
    assert c.get_many(["k", "missing"]) == {"k": {"a": [1, 2]}}


def test_stable_hash_is_order_independent():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_connect_wal_waits_for_a_lock_then_gives_up(tmp_path):
    import sqlite3
    import threading

    from metaskill.core.sqlite import connect_wal

    path = tmp_path / "x.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        connect_wal(path, timeout_s=0.3)
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    conn = connect_wal(path, timeout_s=10)  # waits for the holder, then switches to WAL
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
