"""The run store: Runs and their per-example Records in one SQLite file (WAL mode).

Each batch of records is committed in one transaction together with the run's running
totals, so a process killed mid-run loses at most the batch in flight, and the totals
always agree with the records. Several processes may read and write the same file.

Layout (schema version 1)::

    runs(id PRIMARY KEY, created, updated, task, task_version, split, solver JSON,
         model, status, seed, lim, selection JSON, totals JSON, note)
    records(run_id, example_id, idx, score, error, data JSON, PRIMARY KEY(run_id, example_id))
    progress(run_id PRIMARY KEY, totals JSON, updated)

The running totals live in the small ``progress`` table, so the per-batch write touches
only the new records and one short row (never the run's selection or solver JSON).

Example:
    >>> import tempfile, pathlib
    >>> from metaskill.eval.run import Record, Run, Totals
    >>> store = RunStore(pathlib.Path(tempfile.mkdtemp()) / "runs.sqlite")
    >>> run = store.create(Run(id="r1", task="t", selection=["a"]))
    >>> rec = Record(index=0, example_id="a", score=1.0)
    >>> store.save_batch("r1", [rec], Totals().add([rec]))
    >>> store.get("r1").accuracy
    1.0
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from metaskill.core.errors import MetaskillError, NotFoundError
from metaskill.core.sqlite import ThreadConnections
from metaskill.eval.run import Record, Run, RunStatus, Totals, skill_stats

STORE_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    task TEXT NOT NULL,
    task_version TEXT NOT NULL,
    split TEXT NOT NULL,
    solver TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,
    seed INTEGER NOT NULL,
    lim INTEGER,
    selection TEXT NOT NULL,
    totals TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_task ON runs(task, created);
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    example_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    score REAL NOT NULL,
    error INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, example_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    run_id TEXT PRIMARY KEY,
    totals TEXT NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
"""

_RUN_COLS = ("id, created, updated, task, task_version, split, solver, model, status, seed, "
             "lim, selection, totals, note")
# Runs with their latest totals (from ``progress`` where a batch has been committed).
_SELECT = ("SELECT r.id, r.created, COALESCE(p.updated, r.updated), r.task, r.task_version, "
           "r.split, r.solver, r.model, r.status, r.seed, r.lim, r.selection, "
           "COALESCE(p.totals, r.totals), r.note, r.owner FROM runs r "
           "LEFT JOIN progress p ON p.run_id = r.id")


def owner_id() -> str:
    """``host:pid`` of this process (the owner of the runs it evaluates)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether ``host:pid`` is a live process on this machine (False for other hosts)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(owner: str) -> bool:
    """Whether ``host:pid`` names a process of this machine that is no longer running.

    False for an empty owner and for another host's process (which cannot be checked).

    Example:
        >>> _gone(owner_id()), _gone(""), _gone("some-other-host:1")
        (False, False, False)
    """
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(owner)


def new_run_id() -> str:
    """A fresh run id: UTC date and time plus 4 random hex digits, e.g. 20260128-0152-3fa9."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class SkillDelta(BaseModel):
    """One skill across compared runs: accuracy, interval and n per run, delta vs the first."""

    skill: str
    accuracy: list[float | None]
    low: list[float | None]
    high: list[float | None]
    n: list[int]
    delta: list[float | None]


class Comparison(BaseModel):
    """Runs side by side: overall and per-skill accuracy, deltas against the first run."""

    runs: list[Run]
    overall: SkillDelta
    skills: list[SkillDelta] = Field(default_factory=list)
    shared_examples: int = 0


class RunStore:
    """Runs and records in a SQLite file.

    Args:
        path: the SQLite file (default location: ``Settings.runs_path``); its folder is
            created if missing.
        timeout_s: how long a writer waits for another process's lock.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._db = ThreadConnections(path, timeout_s, label="run store")
        conn = self._db.get()
        conn.executescript(_SCHEMA)
        cols = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        if "owner" not in cols:  # a store made before the owner column existed
            conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                     (str(STORE_SCHEMA_VERSION),))
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(row[0]) > STORE_SCHEMA_VERSION:
            raise MetaskillError(
                f"run store {self.path} has schema version {row[0]}, newer than this "
                f"metaskill understands ({STORE_SCHEMA_VERSION}); upgrade metaskill."
            )

    @classmethod
    def default(cls, settings: Any = None) -> RunStore:
        """The store at ``settings.runs_path`` (``Settings.from_env()`` when not given)."""
        from metaskill.core.settings import Settings

        return cls((settings or Settings.from_env()).runs_path)

    # ---- writing ------------------------------------------------------------------
    def create(self, run: Run) -> Run:
        """Insert a new run (without records) and return it."""
        conn = self._db.get()
        try:
            conn.execute(
                f"INSERT INTO runs({_RUN_COLS}, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run.id, run.created, time.time(), run.task, run.task_version, run.split,
                 json.dumps(run.solver), run.model, run.status, run.seed, run.limit,
                 json.dumps(run.selection), run.totals.model_dump_json(), run.note,
                 owner_id()),
            )
        except sqlite3.IntegrityError as e:
            raise MetaskillError(f"a run with id '{run.id}' already exists.") from e
        return run

    def save_batch(
        self,
        run_id: str,
        records: Sequence[Record],
        totals: Totals,
        status: RunStatus | None = None,
    ) -> None:
        """Commit a batch of records and the run's new totals in one transaction.

        A record for an example already stored in the run replaces it (a batch redone
        after a crash is not counted twice).
        """
        rows = [
            (run_id, r.example_id, r.index, r.score, int(r.error is not None),
             r.model_dump_json())
            for r in records
        ]
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO records(run_id, example_id, idx, score, error, data) "
                "VALUES (?,?,?,?,?,?)",
                rows,
            )
            now = time.time()
            conn.execute("INSERT OR REPLACE INTO progress(run_id, totals, updated) "
                         "VALUES (?,?,?)", (run_id, totals.model_dump_json(), now))
            if status is not None:
                conn.execute("UPDATE runs SET status=?, updated=? WHERE id=?",
                             (status, now, run_id))

    def claim(self, run_id: str) -> None:
        """Mark a run as being evaluated by this process (refused if another live one is).

        The owner is ``host:pid``. A run whose status is ``running`` and whose owner is a
        live process on this machine is being evaluated right now: writing to it from a
        second process would mix two sets of running totals, so that is an error.

        Raises:
            MetaskillError: another live process on this machine owns the run.
        """
        me = owner_id()
        with self._db.transaction() as conn:
            row = conn.execute("SELECT status, owner FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown run '{run_id}' in {self.path}.")
            status, owner = row
            if status == "running" and owner and owner != me and _alive(owner):
                raise MetaskillError(
                    f"run {run_id} is being evaluated right now by process {owner}; wait "
                    "for it to finish or stop it before resuming."
                )
            conn.execute("UPDATE runs SET status='running', owner=?, updated=? WHERE id=?",
                         (me, time.time(), run_id))

    def recount(self, run_id: str) -> Totals:
        """The run's totals recomputed from its stored records (wall time kept)."""
        rid = self.resolve(run_id)
        conn = self._db.get()
        wall = self.get(rid, records=False).totals.wall_s
        recs = [Record.model_validate_json(d) for (d,) in conn.execute(
            "SELECT data FROM records WHERE run_id=?", (rid,))]
        return Totals().add(recs, wall_s=wall)

    def set_status(self, run_id: str, status: RunStatus, note: str = "") -> None:
        """Set a run's status (and why, for failed or interrupted runs)."""
        self._db.get().execute("UPDATE runs SET status=?, note=?, updated=? WHERE id=?",
                             (status, note, time.time(), run_id))

    def delete(self, run_id: str) -> None:
        """Delete a run and its records."""
        rid = self.resolve(run_id)
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM records WHERE run_id=?", (rid,))
            conn.execute("DELETE FROM progress WHERE run_id=?", (rid,))
            conn.execute("DELETE FROM runs WHERE id=?", (rid,))

    # ---- reading ------------------------------------------------------------------
    def resolve(self, run_id: str) -> str:
        """The full id of a run given its id or a unique prefix of it.

        Raises:
            NotFoundError: no run matches (close ids are suggested).
            MetaskillError: the prefix matches several runs.
        """
        conn = self._db.get()
        if conn.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
            return run_id
        like = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY created", (like,))]
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise MetaskillError(
                f"run id '{run_id}' is ambiguous: it matches {', '.join(ids[:5])}"
                f"{' ...' if len(ids) > 5 else ''}; give more characters."
            )
        known = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY created DESC")]
        close = difflib.get_close_matches(run_id, known, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else (
            " See `metaskill runs ls`." if known else " The store has no runs yet.")
        raise NotFoundError(f"unknown run '{run_id}' in {self.path}.{hint}")

    def _run(self, row: tuple[Any, ...]) -> Run:
        """A Run from a row of :data:`_SELECT`.

        A ``running`` run whose owner process on this machine is gone (killed by the OS,
        or by a power cut) is shown as ``interrupted``: nothing is evaluating it, and
        ``eval --resume`` continues it.
        """
        (rid, created, _updated, task, task_version, split, solver, model, status, seed, lim,
         selection, totals, note, owner) = row
        if status == "running" and _gone(owner):
            status = "interrupted"
            note = note or (f"its process {owner} is gone; finish it with `metaskill eval "
                            f"--resume {rid}`")
        return Run(
            id=rid, created=created, task=task, task_version=task_version, split=split,
            solver=json.loads(solver), model=model, status=status, seed=seed, limit=lim,
            selection=json.loads(selection), totals=Totals.model_validate_json(totals),
            note=note,
        )

    def get(self, run_id: str, records: bool = True) -> Run:
        """A run (by id or unique id prefix), with its records in selection order."""
        rid = self.resolve(run_id)
        conn = self._db.get()
        row = conn.execute(f"{_SELECT} WHERE r.id=?", (rid,)).fetchone()
        run = self._run(row)
        if records:
            run.records = [
                Record.model_validate_json(d)
                for (d,) in conn.execute(
                    "SELECT data FROM records WHERE run_id=? ORDER BY idx", (rid,))
            ]
        return run

    def done_ids(self, run_id: str) -> set[str]:
        """Ids of the examples of a run that already have a record."""
        rid = self.resolve(run_id)
        return {r[0] for r in self._db.get().execute(
            "SELECT example_id FROM records WHERE run_id=?", (rid,))}

    def list(self, task: str | None = None, limit: int | None = None) -> list[Run]:
        """Runs, newest first, without their records (optionally of one task)."""
        sql = _SELECT
        args: list[Any] = []
        if task is not None:
            sql += " WHERE r.task=?"
            args.append(task)
        sql += " ORDER BY r.created DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._run(r) for r in self._db.get().execute(sql, args)]

    def compare(self, run_ids: Sequence[str]) -> Comparison:
        """Overall and per-skill accuracy of runs side by side, with deltas vs the first.

        Raises:
            MetaskillError: fewer than two runs, or runs of different tasks.
        """
        if len(run_ids) < 2:
            raise MetaskillError("runs compare needs at least two run ids.")
        runs = [self.get(r) for r in run_ids]
        tasks = {r.task for r in runs}
        if len(tasks) > 1:
            raise MetaskillError(
                "runs compare needs runs of one task; got "
                + ", ".join(f"{r.id} ({r.task})" for r in runs) + "."
            )
        base_acc = runs[0].accuracy
        overall = SkillDelta(
            skill="all",
            accuracy=[r.accuracy for r in runs],
            low=[r.interval[0] for r in runs],
            high=[r.interval[1] for r in runs],
            n=[r.n for r in runs],
            delta=[r.accuracy - base_acc for r in runs],
        )
        per_run = [{s.skill: s for s in r.per_skill} for r in runs]
        names = sorted(set().union(*[set(p) for p in per_run]))
        skills = []
        for name in names:
            stats = [p.get(name) for p in per_run]
            acc = [s.accuracy if s else None for s in stats]
            base = acc[0]
            skills.append(SkillDelta(
                skill=name,
                accuracy=acc,
                low=[s.low if s else None for s in stats],
                high=[s.high if s else None for s in stats],
                n=[s.n if s else 0 for s in stats],
                delta=[(a - base) if (a is not None and base is not None) else None
                       for a in acc],
            ))
        shared = set.intersection(*[{x.example_id for x in r.records} for r in runs])
        return Comparison(runs=runs, overall=overall, skills=skills,
                          shared_examples=len(shared))

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()


__all__ = ["Comparison", "RunStore", "SkillDelta", "new_run_id", "skill_stats"]
