"""The knowledge base of experience notes: what earlier attempts taught, keyed by skill.

MetaAgent (Qian and Liu 2025, "MetaAgent: toward self-evolving agents via tool
meta-learning") distils each finished task into short text notes and keeps them in a
persistent knowledge base that later tasks read. This module is that store; the ``memory``
Method (:mod:`metaskill.methods.memory`) writes and reads it, ``metaskill memory
ls|show|clear`` manages it, and the across-task stream lives in
:mod:`metaskill.evolve.memory`. It sits in the skills layer, beside the SkillBook it
resembles (one SQLite file in WAL mode, MiniLM vectors, brute-force cosine search), so
every layer above -- methods (``memory``, ``tool_use``'s ``retrieve`` tool), evolve, the
CLI -- can open it without an upward import.

A :class:`Note` holds its text, its skill (a skill label, or the task's name where the
example has none), the question it was learnt from (``key``: what a new input is compared
with), its source task and example, how it was written (``lm``: a validated structured
reply; ``template``: built from the trace because the LM's reply did not validate, or
because distillation by LM was off), whether the attempt it came from was verified, its
date, and two counters: ``retrieved`` (how often it was put into a prompt whose answer
was then verified) and ``helped`` (how often that answer was correct).

Demotion (the documented rule, :class:`DemotionRule`): a note retrieved at least
``after`` times (default 5) whose help rate ``helped / retrieved`` is below ``below``
(default 0.2) is *demoted*: :meth:`KnowledgeBase.search` no longer returns it (``memory
ls --all`` still lists it, marked). Among the others the ranking adds
``rate_weight * (smoothed_rate - 0.5)`` to the cosine similarity, where
``smoothed_rate = (helped + 1) / (retrieved + 2)``: a new note starts neutral, a note
that keeps helping rises, one that stops helping sinks before it is hidden.

Example:
    >>> from metaskill.skills.embed import HashEmbedder
    >>> kb = KnowledgeBase(":memory:", embedder=HashEmbedder(dim=64))
    >>> n = kb.add(NoteDraft(skill="multiplication", text="use the calculator for a*b",
    ...                      key="What is 12 times 34?", task="arith"))
    >>> [(h.note.id, h.note.skill) for h in kb.search("What is 21 times 43?", k=1)]
    [(1, 'multiplication')]
    >>> kb.record_use([n.id], helped=False); kb.get(n.id).retrieved
    1
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from metaskill.core.errors import MetaskillError, NotFoundError
from metaskill.core.sqlite import ThreadConnections

#: Version of the SQLite layout.
SCHEMA_VERSION = 1

#: The knowledge base's file name under ``METASKILL_HOME``.
FILE_NAME = "memory.sqlite"

NoteSource = Literal["lm", "template"]

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    skill TEXT NOT NULL,
    text TEXT NOT NULL,
    key TEXT NOT NULL,
    task TEXT NOT NULL,
    example_id TEXT NOT NULL,
    source TEXT NOT NULL,
    verified INTEGER NOT NULL,
    error TEXT,
    created REAL NOT NULL,
    retrieved INTEGER NOT NULL DEFAULT 0,
    helped INTEGER NOT NULL DEFAULT 0,
    vec BLOB,
    UNIQUE (skill, text)
);
CREATE INDEX IF NOT EXISTS notes_skill ON notes(skill);
"""

_COLS = ("id, skill, text, key, task, example_id, source, verified, error, created, "
         "retrieved, helped")


def default_path(settings: Any = None) -> Path:
    """The knowledge base file: ``$METASKILL_HOME/memory.sqlite`` (``settings.home`` when
    settings are given).

    Example:
        >>> from metaskill.core.settings import Settings
        >>> str(default_path(Settings.from_env({"METASKILL_HOME": "/tmp/ms"})))
        '/tmp/ms/memory.sqlite'
    """
    from metaskill.core.settings import Settings

    return (settings or Settings.from_env()).home / FILE_NAME


class DemotionRule(BaseModel):
    """When a note stops being offered, and how its record moves its rank.

    Attributes:
        after: retrievals before a note can be demoted.
        below: a note whose ``helped / retrieved`` is under this, after ``after``
            retrievals, is demoted (hidden from search).
        rate_weight: weight of the smoothed help rate in the ranking.

    Example:
        >>> r = DemotionRule()
        >>> r.demoted(retrieved=5, helped=0), r.demoted(retrieved=5, helped=1)
        (True, False)
        >>> r.demoted(retrieved=4, helped=0)
        False
    """

    after: int = Field(5, ge=1, description="retrievals before a note can be demoted")
    below: float = Field(0.2, ge=0.0, le=1.0, description="help rate under which it is")
    rate_weight: float = Field(0.2, ge=0.0, description="weight of the help rate in ranking")

    def demoted(self, retrieved: int, helped: int) -> bool:
        """Whether a note with these counters is demoted."""
        return retrieved >= self.after and helped < self.below * retrieved

    def bonus(self, retrieved: int, helped: int) -> float:
        """What the note's record adds to its similarity: ``rate_weight * (rate - 0.5)``
        with the Laplace-smoothed rate ``(helped + 1) / (retrieved + 2)``.

        Example:
            >>> DemotionRule().bonus(0, 0), round(DemotionRule().bonus(8, 8), 2)
            (0.0, 0.08)
        """
        return self.rate_weight * ((helped + 1) / (retrieved + 2) - 0.5)


class NoteDraft(BaseModel):
    """A note before it is stored (what :meth:`KnowledgeBase.add` takes).

    Attributes:
        skill: the skill it is about (a skill label, or the task's name).
        text: the lesson, one or two short sentences.
        key: the question it was learnt from (new inputs are compared with it).
        task: the source task's name.
        example_id: the source example's id.
        source: ``lm`` (validated structured reply) or ``template`` (built from the trace).
        verified: whether the attempt it was learnt from was verified correct.
        error: why the LM's note was not used, for a template note written as fallback.
    """

    skill: str = Field(min_length=1)
    text: str = Field(min_length=1)
    key: str = ""
    task: str = ""
    example_id: str = ""
    source: NoteSource = "lm"
    verified: bool = False
    error: str | None = None


class Note(NoteDraft):
    """A stored note, with its id, date and counters."""

    id: int
    created: float
    retrieved: int = 0
    helped: int = 0

    @property
    def help_rate(self) -> float | None:
        """``helped / retrieved``; None before the first retrieval."""
        return self.helped / self.retrieved if self.retrieved else None


class Hit(BaseModel):
    """One search result: the note, its cosine similarity and its ranking score."""

    note: Note
    similarity: float
    score: float


class KnowledgeBase:
    """Experience notes in one SQLite file, searched by embedding similarity.

    Args:
        path: the SQLite file (created if missing) or ``":memory:"``.
        embedder: an :class:`~metaskill.skills.embed.Embedder`; needed only to add or
            search notes (listing, showing and clearing never load a model). The file
            records the embedder's model; another model is an error (clear the file or
            use the recorded one).
        rule: the :class:`DemotionRule`; it is recorded in the file, and a knowledge
            base opened without one applies the recorded rule (the default rule if none).

    Raises:
        MetaskillError: the file is not a knowledge base of a supported version, or its
            vectors were made by another embedder.
    """

    def __init__(self, path: str | Path = ":memory:", embedder: Any = None,
                 rule: DemotionRule | None = None) -> None:
        self.path = str(path)
        self._db = ThreadConnections(self.path, label="knowledge base")
        try:
            self._db.get().executescript(_TABLES)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise MetaskillError(f"{self.path} is not a knowledge base (SQLite error: {e}).") \
                from None
        version = self._meta("schema_version")
        if version is None:
            self._set_meta("schema_version", str(SCHEMA_VERSION))
        elif not version.isdigit() or int(version) > SCHEMA_VERSION:
            raise MetaskillError(f"knowledge base {self.path} has schema version {version}; "
                                 f"this metaskill reads up to {SCHEMA_VERSION}.")
        self._embedder = embedder
        # the rule is the file's: one given is recorded, so `memory ls` applies it too
        if rule is not None:
            self._set_meta("rule", rule.model_dump_json())

    @property
    def rule(self) -> DemotionRule:
        """The file's demotion rule (read each time: another process may have set it)."""
        saved = self._meta("rule")
        return DemotionRule.model_validate_json(saved) if saved else DemotionRule()

    # ---- plumbing ------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.get().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.get().execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)",
                               (key, value))

    @property
    def embedder_spec(self) -> str | None:
        """The spec of the embedder the stored vectors were made with (None: no vectors)."""
        return self._meta("embedder")

    def _need_embedder(self) -> Any:
        if self._embedder is None:
            raise MetaskillError("this knowledge base was opened without an embedder; pass "
                                 "one to add or search notes.")
        recorded = self._meta("embedder_model")
        model = getattr(self._embedder, "model_id", "embedder")
        if recorded is None or (recorded != model and len(self) == 0):
            self._set_meta("embedder_model", model)
            self._set_meta("embedder", getattr(self._embedder, "spec", model))
        elif recorded != model and len(self) > 0:
            raise MetaskillError(
                f"knowledge base {self.path} holds vectors of '{recorded}' but the embedder "
                f"is '{model}'; use embedder '{self._meta('embedder')}' or clear it "
                "(`metaskill memory clear`).")
        return self._embedder

    @staticmethod
    def _note(row: Sequence[Any]) -> Note:
        (nid, skill, text, key, task, ex, source, verified, error, created, ret, helped) = row
        return Note(id=nid, skill=skill, text=text, key=key, task=task, example_id=ex,
                    source=source, verified=bool(verified), error=error, created=created,
                    retrieved=ret, helped=helped)

    # ---- writing ---------------------------------------------------------------------------
    def add(self, draft: NoteDraft) -> Note:
        """Store a note (with the embedding of its ``key``, else of its text).

        A note with the same skill and text as a stored one is not stored twice: the
        stored one is returned.
        """
        return self.add_many([draft])[0]

    def add_many(self, drafts: Sequence[NoteDraft]) -> list[Note]:
        """Store several notes in one transaction; returns them in order (see :meth:`add`)."""
        if not drafts:
            return []
        emb = self._need_embedder()
        vecs = np.asarray(emb.encode([d.key or d.text for d in drafts]), dtype=np.float32)
        now = time.time()
        ids = []
        with self._db.transaction() as conn:
            for d, v in zip(drafts, vecs, strict=True):
                conn.execute(
                    "INSERT OR IGNORE INTO notes(skill, text, key, task, example_id, source,"
                    " verified, error, created, vec) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (d.skill, d.text, d.key, d.task, d.example_id, d.source, int(d.verified),
                     d.error, now, v.tobytes()))
                row = conn.execute("SELECT id FROM notes WHERE skill=? AND text=?",
                                   (d.skill, d.text)).fetchone()
                ids.append(int(row[0]))
        return [self.get(i) for i in ids]

    def record_use(self, ids: Iterable[int], *, helped: bool) -> None:
        """Count one retrieval of each note in ``ids``, and one help if ``helped`` (the
        attempt that showed them was verified correct)."""
        rows = [(int(helped), int(i)) for i in dict.fromkeys(ids)]
        if not rows:
            return
        with self._db.transaction() as conn:
            conn.executemany("UPDATE notes SET retrieved = retrieved + 1,"
                             " helped = helped + ? WHERE id=?", rows)

    def remove(self, ids: Iterable[int]) -> int:
        """Delete notes by id; returns how many were deleted."""
        rows = [(int(i),) for i in ids]
        with self._db.transaction() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM notes WHERE id=?", rows)
            return conn.total_changes - before

    def clear(self, *, task: str | None = None, skill: str | None = None) -> int:
        """Delete all notes, or those of one task and/or skill; returns how many."""
        where, args = self._filter(task, skill)
        with self._db.transaction() as conn:
            n = int(conn.execute(f"SELECT COUNT(*) FROM notes{where}", args).fetchone()[0])
            conn.execute(f"DELETE FROM notes{where}", args)
            if task is None and skill is None:
                conn.execute("DELETE FROM meta WHERE key IN ('embedder', 'embedder_model')")
        return n

    # ---- reading -----------------------------------------------------------------------------
    @staticmethod
    def _filter(task: str | None, skill: str | None) -> tuple[str, list[str]]:
        conds, args = [], []
        if task is not None:
            conds.append("task=?")
            args.append(task)
        if skill is not None:
            conds.append("skill=?")
            args.append(skill)
        return (" WHERE " + " AND ".join(conds) if conds else ""), args

    def __len__(self) -> int:
        return int(self._db.get().execute("SELECT COUNT(*) FROM notes").fetchone()[0])

    def get(self, note_id: int) -> Note:
        """One note by id.

        Raises:
            NotFoundError: no such note.
        """
        row = self._db.get().execute(f"SELECT {_COLS} FROM notes WHERE id=?",
                                     (int(note_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"no note {note_id} in {self.path} (`metaskill memory ls`).")
        return self._note(row)

    def notes(self, *, task: str | None = None, skill: str | None = None,
              include_demoted: bool = True) -> list[Note]:
        """Stored notes (oldest first), optionally of one task and/or skill."""
        where, args = self._filter(task, skill)
        rows = self._db.get().execute(f"SELECT {_COLS} FROM notes{where} ORDER BY id", args)
        out = [self._note(r) for r in rows]
        rule = self.rule
        return out if include_demoted else [n for n in out
                                            if not rule.demoted(n.retrieved, n.helped)]

    def is_demoted(self, note: Note) -> bool:
        """Whether the :class:`DemotionRule` hides ``note`` from search."""
        return self.rule.demoted(note.retrieved, note.helped)

    def search(self, query: str, k: int = 3, *, skills: Sequence[str] = (),
               skill_bonus: float = 0.1, min_similarity: float = -1.0,
               task: str | None = None) -> list[Hit]:
        """The ``k`` best notes for ``query``, best first; demoted notes are left out.

        Score = cosine(query, note key) + ``skill_bonus`` if the note's skill is one of
        ``skills`` + the rule's help-rate bonus (:meth:`DemotionRule.bonus`). Notes under
        ``min_similarity`` are left out.

        Args:
            query: the new input's text.
            k: how many notes.
            skills: the input's skill labels.
            skill_bonus: added for a note of one of those skills.
            min_similarity: the lowest cosine similarity a note may have.
            task: only notes of this task (None: every task -- memory across tasks).
        """
        if k < 1:
            return []
        where, args = self._filter(task, None)
        rows = self._db.get().execute(
            f"SELECT {_COLS}, vec FROM notes{where} ORDER BY id", args).fetchall()
        cands = [(self._note(r[:-1]), r[-1]) for r in rows if r[-1] is not None]
        rule = self.rule
        cands = [(n, v) for n, v in cands if not rule.demoted(n.retrieved, n.helped)]
        if not cands:
            return []
        q = np.asarray(self._need_embedder().encode([query])[0], dtype=np.float32)
        matrix = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in cands])
        if matrix.shape[1] != q.shape[0]:
            raise MetaskillError(f"knowledge base {self.path}: stored vectors have "
                                 f"{matrix.shape[1]} dims, the embedder gives {q.shape[0]}.")
        sims = matrix @ q
        wanted = set(skills)
        hits = []
        for (n, _), s in zip(cands, sims, strict=True):
            if float(s) < min_similarity:
                continue
            score = (float(s) + (skill_bonus if n.skill in wanted else 0.0)
                     + rule.bonus(n.retrieved, n.helped))
            hits.append(Hit(note=n, similarity=float(s), score=score))
        hits.sort(key=lambda h: (-h.score, h.note.id))
        return hits[:k]

    def summary(self) -> dict[str, Any]:
        """Counts for ``memory ls``: notes, demoted, by source, tasks, skills, embedder."""
        notes, rule = self.notes(), self.rule
        return {
            "path": self.path, "notes": len(notes),
            "demoted": sum(rule.demoted(n.retrieved, n.helped) for n in notes),
            "lm": sum(n.source == "lm" for n in notes),
            "template": sum(n.source == "template" for n in notes),
            "tasks": sorted({n.task for n in notes}),
            "skills": sorted({n.skill for n in notes}),
            "embedder": self.embedder_spec,
        }

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()


__all__ = ["FILE_NAME", "SCHEMA_VERSION", "DemotionRule", "Hit", "KnowledgeBase", "Note",
           "NoteDraft", "NoteSource", "default_path"]
