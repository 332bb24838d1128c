"""Skill and SkillBook: the persistent library of skills, with embedding retrieval.

A :class:`Skill` is a named competence (snake_case name, description, exemplar example
ids, statistics, an optional parent and an optional LoRA adapter path). A
:class:`SkillBook` keeps skills, the examples they were found on, and the example -> skills
labels in one SQLite file (WAL mode, so a reader and a writer can share it), and answers
two questions by cosine similarity over embeddings:

* :meth:`SkillBook.nearest_skills` -- which skills does this text need?
* :meth:`SkillBook.exemplars` -- which examples carrying this skill are closest to a query?

Search is brute force with numpy over vectors held in memory (rebuilt lazily after
writes). That is exact and fast up to about 100k vectors (a 100k x 384 float32 matrix is
150 MB and one query is a ~10 ms matrix-vector product). Beyond that, put the vectors in
an approximate nearest-neighbour index -- FAISS (``IndexFlatIP`` / ``IndexHNSWFlat``) or
hnswlib -- behind the same two methods.

A SkillBook exports to JSON with a schema version (:meth:`SkillBook.to_json`) and imports
on another machine (:meth:`SkillBook.from_json`); vectors can travel along or be
re-embedded there.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.skills.embed import HashEmbedder
    >>> book = SkillBook(":memory:", embedder=HashEmbedder(dim=64))
    >>> _ = book.add_skill(Skill(name="addition", description="add whole numbers"))
    >>> book.add_examples([Example(id="1", input="What is 2 plus 3?", answer="5")])
    >>> book.label("1", ["addition"])
    >>> [e.id for e in book.exemplars("addition", k=1)]
    ['1']
    >>> book.nearest_skills("add numbers", k=1)[0][0].name
    'addition'
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

from metaskill.core.errors import MetaskillError, NotFoundError
from metaskill.core.readers import read_json
from metaskill.core.sqlite import ThreadConnections
from metaskill.core.types import Example
from metaskill.skills.embed import Embedder, load_embedder

#: Version of the SQLite layout and of the JSON export.
SCHEMA_VERSION = 1

_SNAKE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")


def to_snake(text: str, max_words: int = 6) -> str:
    """Turn free text into a snake_case skill name (empty string if nothing is left).

    Example:
        >>> to_snake("Solving Linear Equations!")
        'solving_linear_equations'
        >>> to_snake("  2-digit addition ")
        '2_digit_addition'
    """
    text = re.sub(r"([a-z])([A-Z])", r"\1_\2", text)
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "_".join(words[:max_words])


class SkillStats(BaseModel):
    """Statistics of a skill.

    Attributes:
        n_examples: how many examples in the book carry the skill (kept up to date).
        accuracy: the last profiled model's accuracy on dev examples with the skill.
        missing_rate: share of that model's difficult dev examples in which the skill was
            named missing (see :mod:`metaskill.skills.profile`).
    """

    n_examples: int = 0
    accuracy: float | None = None
    missing_rate: float | None = None


class Skill(BaseModel):
    """A named competence.

    Attributes:
        name: unique snake_case name (use :func:`to_snake` on free text).
        description: one or two sentences on what the skill is.
        exemplars: ids of examples chosen to illustrate the skill (curated first picks of
            :meth:`SkillBook.exemplars`).
        stats: counts, accuracy and missing rate.
        parent: name of a broader skill (a shallow hierarchy), or None.
        adapter: path of a LoRA adapter trained for this skill, or None.
        source: how the skill was found: ``labels``, ``metacognitive``, ``catalog``,
            ``embedding`` or ``manual``.
        metadata: anything else (cluster members, teacher spec ...).
    """

    name: str
    description: str = ""
    exemplars: list[str] = Field(default_factory=list)
    stats: SkillStats = Field(default_factory=SkillStats)
    parent: str | None = None
    adapter: str | None = None
    source: str = "manual"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name", "parent")
    @classmethod
    def _snake(cls, v: str | None) -> str | None:
        if v is not None and not _SNAKE.match(v):
            raise ValueError(
                f"skill name '{v}' is not snake_case (lowercase letters, digits and single "
                f"underscores); try '{to_snake(v) or 'a_name'}'"
            )
        return v

    def text(self) -> str:
        """The text embedded for this skill: its name in words and its description."""
        words = self.name.replace("_", " ")
        return f"{words}: {self.description}" if self.description else words


def make_skill(**fields: Any) -> Skill:
    """Build a :class:`Skill`, turning validation errors into a one-line MetaskillError."""
    try:
        return Skill(**fields)
    except ValidationError as e:
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise MetaskillError(f"invalid skill: {msgs}") from None


_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS skills (
    name TEXT PRIMARY KEY, data TEXT NOT NULL, vec BLOB, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS examples (
    id TEXT PRIMARY KEY, data TEXT NOT NULL, vec BLOB, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    example_id TEXT NOT NULL, skill TEXT NOT NULL, PRIMARY KEY (example_id, skill));
CREATE INDEX IF NOT EXISTS labels_by_skill ON labels(skill);
"""


class _Index:
    """Ids and a matrix of unit vectors, with id -> row."""

    def __init__(self, ids: list[str], matrix: np.ndarray) -> None:
        self.ids = ids
        self.matrix = matrix
        self.row = {i: n for n, i in enumerate(ids)}


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties broken by position)."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < scores.shape[0]:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(scores.shape[0])
    return part[np.lexsort((part, -scores[part]))]


class SkillBook:
    """The persistent library of Skills, with example labels and embedding retrieval.

    Args:
        path: the SQLite file (created if missing) or ``":memory:"``.
        embedder: the :class:`~metaskill.skills.embed.Embedder`; None loads the one the
            book was built with (recorded in the file; ``minilm`` for a new book) on first
            use, so listing skills never loads a model.

    Raises:
        MetaskillError: if the file is not a SkillBook of a supported schema, or
            ``embedder`` differs from the one the book's vectors were made with (open it
            without an embedder, or call :meth:`reindex`).
    """

    def __init__(self, path: str | Path = ":memory:", embedder: Embedder | None = None) -> None:
        self.path = str(path)
        self._db = ThreadConnections(self.path)
        try:
            self._db.get().executescript(_TABLES)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise MetaskillError(f"{self.path} is not a SkillBook (SQLite error: {e}).") from None
        version = self._meta("schema_version")
        if version is None:
            self._set_meta("schema_version", str(SCHEMA_VERSION))
            self._set_meta("created", str(time.time()))
        elif int(version) > SCHEMA_VERSION:
            raise MetaskillError(
                f"SkillBook {self.path} has schema version {version}; this metaskill reads "
                f"up to {SCHEMA_VERSION}. Upgrade metaskill."
            )
        self._embedder = embedder
        recorded = self._meta("embedder_model")
        if embedder is not None:
            if recorded is None or not self._has_vectors():
                self._set_meta("embedder", embedder.spec)
                self._set_meta("embedder_model", embedder.model_id)
            elif recorded != embedder.model_id:
                raise MetaskillError(
                    f"SkillBook {self.path} was embedded with '{recorded}' but the embedder "
                    f"passed is '{embedder.model_id}'; open it without an embedder (it loads "
                    f"'{self._meta('embedder')}') or call reindex(embedder)."
                )
        self._invalidate()
        self._seen_version = self._data_version()

    # ---- plumbing ----------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.get().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.get().execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    def _has_vectors(self) -> bool:
        c = self._db.get()
        return bool(
            c.execute("SELECT 1 FROM skills WHERE vec IS NOT NULL LIMIT 1").fetchone()
            or c.execute("SELECT 1 FROM examples WHERE vec IS NOT NULL LIMIT 1").fetchone()
        )

    def _data_version(self) -> int:
        return int(self._db.get().execute("PRAGMA data_version").fetchone()[0])

    def _invalidate(self) -> None:
        self._skill_index = None
        self._example_index = None
        self._labels_cache: dict[str, list[str]] | None = None

    def _fresh(self) -> None:
        """Drop in-memory indexes if another connection changed the file."""
        v = self._data_version()
        if v != self._seen_version:
            self._seen_version = v
            self._invalidate()

    def _write(self, sql_rows: list[tuple[str, Sequence[Any] | list[Sequence[Any]], bool]]) -> None:
        """Run statements in one transaction: (sql, params, many)."""
        with self._db.transaction() as conn:
            for sql, params, many in sql_rows:
                if many:
                    conn.executemany(sql, params)  # type: ignore[arg-type]
                else:
                    conn.execute(sql, params)
        self._invalidate()

    @property
    def embedder(self) -> Embedder:
        """The embedder (loaded on first use from the spec recorded in the book)."""
        if self._embedder is None:
            self._embedder = load_embedder(self._meta("embedder") or "minilm")
            self._set_meta("embedder", self._embedder.spec)
            self._set_meta("embedder_model", self._embedder.model_id)
        return self._embedder

    @property
    def embedder_spec(self) -> str:
        """Spec of the embedder the book uses (without loading it)."""
        if self._embedder is not None:
            return self._embedder.spec
        return self._meta("embedder") or "minilm"

    def info(self) -> dict[str, Any]:
        """Counts and provenance: skills, examples, labelled examples, embedder, discovery."""
        c = self._db.get()
        disc = self._meta("discovery")
        return {
            "path": self.path,
            "schema_version": SCHEMA_VERSION,
            "skills": int(c.execute("SELECT COUNT(*) FROM skills").fetchone()[0]),
            "examples": int(c.execute("SELECT COUNT(*) FROM examples").fetchone()[0]),
            "labelled": int(
                c.execute("SELECT COUNT(DISTINCT example_id) FROM labels").fetchone()[0]
            ),
            "embedder": self.embedder_spec,
            "discovery": json.loads(disc) if disc else None,
        }

    def set_discovery(self, record: dict[str, Any]) -> None:
        """Record how the book was discovered (source, teacher, counts, usage)."""
        self._set_meta("discovery", json.dumps(record, sort_keys=True))

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()

    # ---- skills ------------------------------------------------------------------------
    def add_skill(self, skill: Skill, *, replace: bool = False) -> Skill:
        """Add a skill (its text is embedded now).

        Args:
            skill: the skill; its ``parent``, if any, must already be in the book.
            replace: overwrite a skill of the same name instead of raising.

        Returns:
            The skill as stored.

        Raises:
            MetaskillError: if the name is taken (and not ``replace``) or the parent is unknown.
        """
        return self.add_skills([skill], replace=replace)[0]

    def add_skills(self, skills: Sequence[Skill], *, replace: bool = False) -> list[Skill]:
        """Add many skills in one transaction and one embedding batch (see :meth:`add_skill`)."""
        names = [s.name for s in skills]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise MetaskillError(f"duplicate skill names in one call: {', '.join(sorted(dup))}.")
        existing = set(self.names())
        if not replace:
            taken = [n for n in names if n in existing]
            if taken:
                raise MetaskillError(
                    f"skill '{taken[0]}' already exists in {self.path}; pass replace=True "
                    "or choose another name."
                )
        known = existing | set(names)
        for s in skills:
            if s.parent is not None and s.parent not in known:
                raise MetaskillError(
                    f"skill '{s.name}' has parent '{s.parent}', which is not in the book; "
                    "add the parent first."
                )
        if not skills:
            return []
        vecs = self.embedder.encode([s.text() for s in skills])
        start = int(self._db.get().execute("SELECT COALESCE(MAX(position), -1) FROM skills")
                    .fetchone()[0]) + 1
        rows = [
            (s.name, s.model_dump_json(), v.tobytes(), start + i)
            for i, (s, v) in enumerate(zip(skills, vecs, strict=True))
        ]
        self._write([(
            "INSERT INTO skills(name, data, vec, position) VALUES (?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET data=excluded.data, vec=excluded.vec",
            rows, True,
        )])
        return [self.get(n) for n in names]

    def update_skill(self, name: str, **changes: Any) -> Skill:
        """Change fields of a stored skill (re-embedded if name words or description change).

        Example: ``book.update_skill("algebra", stats={"accuracy": 0.4}, adapter="a.gguf")``;
        ``stats`` is merged into the existing statistics.
        """
        old = self.get(name)
        data = old.model_dump()
        if "stats" in changes:
            stats = changes.pop("stats")
            data["stats"].update(stats.model_dump() if isinstance(stats, SkillStats) else stats)
        if "name" in changes and changes["name"] != name:
            raise MetaskillError("update_skill cannot rename; remove and add the skill instead.")
        data.update(changes)
        new = make_skill(**data)
        if new.parent is not None and new.parent not in self:
            raise MetaskillError(f"parent '{new.parent}' of '{name}' is not in the book.")
        if new.text() != old.text():
            vec = self.embedder.encode([new.text()])[0].tobytes()
            self._write([("UPDATE skills SET data=?, vec=? WHERE name=?",
                          (new.model_dump_json(), vec, name), False)])
        else:
            self._write([("UPDATE skills SET data=? WHERE name=?",
                          (new.model_dump_json(), name), False)])
        return self.get(name)

    def remove_skill(self, name: str) -> None:
        """Delete a skill and its labels (children lose their parent)."""
        self.get(name)
        children = [s for s in self.skills() if s.parent == name]
        ops: list[tuple[str, Any, bool]] = [
            ("DELETE FROM skills WHERE name=?", (name,), False),
            ("DELETE FROM labels WHERE skill=?", (name,), False),
        ]
        for ch in children:
            ch.parent = None
            ops.append(("UPDATE skills SET data=? WHERE name=?",
                        (ch.model_dump_json(), ch.name), False))
        self._write(ops)

    def get(self, name: str) -> Skill:
        """The skill called ``name`` (with up-to-date ``stats.n_examples``).

        Raises:
            NotFoundError: with close names, if there is no such skill.
        """
        row = self._db.get().execute("SELECT data FROM skills WHERE name=?", (name,)).fetchone()
        if row is None:
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise NotFoundError(
                f"no skill '{name}' in {self.path}.{hint} See `metaskill skills ls`."
            )
        skill = Skill.model_validate_json(row[0])
        skill.stats.n_examples = int(self._db.get().execute(
            "SELECT COUNT(*) FROM labels WHERE skill=?", (name,)).fetchone()[0])
        return skill

    def skills(self) -> list[Skill]:
        """All skills, in the order they were added, with up-to-date example counts."""
        c = self._db.get()
        counts = dict(c.execute("SELECT skill, COUNT(*) FROM labels GROUP BY skill"))
        out = []
        for (data,) in c.execute("SELECT data FROM skills ORDER BY position"):
            s = Skill.model_validate_json(data)
            s.stats.n_examples = int(counts.get(s.name, 0))
            out.append(s)
        return out

    def names(self) -> list[str]:
        """Skill names, in the order they were added."""
        return [r[0] for r in self._db.get().execute("SELECT name FROM skills ORDER BY position")]

    def __contains__(self, name: object) -> bool:
        return bool(self._db.get().execute(
            "SELECT 1 FROM skills WHERE name=?", (name,)).fetchone())

    def __len__(self) -> int:
        return int(self._db.get().execute("SELECT COUNT(*) FROM skills").fetchone()[0])

    # ---- examples and labels --------------------------------------------------------------
    def add_examples(self, examples: Iterable[Example], *, progress: bool = False) -> None:
        """Store examples (embedded in batches). An id already stored is replaced.

        Labels are kept separately; ``Example.skills`` is stored as given but the book's
        labels come only from :meth:`label`.
        """
        exs = list(examples)
        if not exs:
            return
        vecs = self.embedder.encode([e.text for e in exs], progress=progress)
        start = int(self._db.get().execute("SELECT COALESCE(MAX(position), -1) FROM examples")
                    .fetchone()[0]) + 1
        rows = [
            (e.id, e.model_dump_json(), v.tobytes(), start + i)
            for i, (e, v) in enumerate(zip(exs, vecs, strict=True))
        ]
        self._write([(
            "INSERT INTO examples(id, data, vec, position) VALUES (?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET data=excluded.data, vec=excluded.vec",
            rows, True,
        )])

    def get_example(self, example_id: str) -> Example:
        """A stored example.

        Raises:
            NotFoundError: if it is not in the book.
        """
        row = self._db.get().execute(
            "SELECT data FROM examples WHERE id=?", (example_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no example '{example_id}' in SkillBook {self.path}.")
        return Example.model_validate_json(row[0])

    def has_example(self, example_id: str) -> bool:
        """Whether the example is stored."""
        return bool(self._db.get().execute(
            "SELECT 1 FROM examples WHERE id=?", (example_id,)).fetchone())

    def example_ids(self) -> list[str]:
        """Ids of stored examples, in the order they were added."""
        return [r[0] for r in self._db.get().execute("SELECT id FROM examples ORDER BY position")]

    def label(self, example_id: str, skills: Iterable[str]) -> None:
        """Set the skills of a stored example (replacing its previous labels).

        Raises:
            NotFoundError: if the example or a skill is not in the book.
        """
        self.label_many({example_id: list(skills)})

    def label_many(self, labels: dict[str, list[str]]) -> None:
        """Set the skills of many stored examples in one transaction (see :meth:`label`)."""
        names = set(self.names())
        for ex_id, skills in labels.items():
            for s in skills:
                if s not in names:
                    raise NotFoundError(
                        f"cannot label '{ex_id}' with unknown skill '{s}'; add it first."
                    )
        stored = set(self.example_ids()) if labels else set()
        missing = [i for i in labels if i not in stored]
        if missing:
            raise NotFoundError(
                f"cannot label example '{missing[0]}': it is not in the book "
                "(add_examples first)."
            )
        ids = list(labels)
        ops: list[tuple[str, Any, bool]] = [
            ("DELETE FROM labels WHERE example_id=?", [(i,) for i in ids], True),
            ("INSERT OR IGNORE INTO labels(example_id, skill) VALUES (?,?)",
             [(i, s) for i in ids for s in dict.fromkeys(labels[i])], True),
        ]
        self._write(ops)

    def labels(self, example_id: str) -> list[str]:
        """Skills of an example, in book order (empty if unlabelled or unknown)."""
        return [r[0] for r in self._db.get().execute(
            "SELECT l.skill FROM labels l JOIN skills s ON s.name=l.skill "
            "WHERE l.example_id=? ORDER BY s.position", (example_id,))]

    def all_labels(self) -> dict[str, list[str]]:
        """example id -> skills, for every stored example (unlabelled ones map to [])."""
        out: dict[str, list[str]] = {i: [] for i in self.example_ids()}
        for ex_id, skill in self._db.get().execute(
            "SELECT l.example_id, l.skill FROM labels l JOIN skills s ON s.name=l.skill "
            "ORDER BY s.position"
        ):
            out.setdefault(ex_id, []).append(skill)
        return out

    def examples_of(self, skill: str) -> list[str]:
        """Ids of stored examples labelled with ``skill``, in the order they were added."""
        self.get(skill)
        return [r[0] for r in self._db.get().execute(
            "SELECT e.id FROM labels l JOIN examples e ON e.id=l.example_id "
            "WHERE l.skill=? ORDER BY e.position", (skill,))]

    def unlabelled(self) -> list[str]:
        """Ids of stored examples with no skill."""
        return [r[0] for r in self._db.get().execute(
            "SELECT id FROM examples WHERE id NOT IN (SELECT example_id FROM labels) "
            "ORDER BY position")]

    # ---- retrieval -----------------------------------------------------------------------
    def _skills_idx(self) -> _Index:
        self._fresh()
        if self._skill_index is None:
            rows = self._db.get().execute(
                "SELECT name, vec FROM skills WHERE vec IS NOT NULL ORDER BY position").fetchall()
            self._skill_index = _stack(rows, self.embedder.dim)
        return self._skill_index

    def _examples_idx(self) -> _Index:
        self._fresh()
        if self._example_index is None:
            rows = self._db.get().execute(
                "SELECT id, vec FROM examples WHERE vec IS NOT NULL ORDER BY position").fetchall()
            self._example_index = _stack(rows, self.embedder.dim)
        return self._example_index

    def _query_vec(self, query: str | Example | np.ndarray) -> np.ndarray:
        if isinstance(query, np.ndarray):
            return query.astype(np.float32).ravel()
        text = query.text if isinstance(query, Example) else query
        return self.embedder.encode([text])[0]

    def nearest_skills(
        self,
        text: str | Example | np.ndarray,
        k: int = 3,
        *,
        via: Literal["auto", "description", "examples"] = "auto",
        neighbours: int = 20,
    ) -> list[tuple[Skill, float]]:
        """The ``k`` skills a text most likely needs, best first, with scores.

        Args:
            text: a question (string or Example) or an already-embedded unit vector.
            k: how many skills.
            via: ``description`` compares the text with each skill's name and description
                (cosine similarity); ``examples`` votes over the ``neighbours`` nearest
                labelled examples (score = similarity-weighted share of neighbours carrying
                the skill); ``auto`` uses examples when the book has labelled ones.
            neighbours: examples consulted with ``via="examples"``.

        Returns:
            (skill, score) pairs; empty if the book has no skills.
        """
        if k < 1 or len(self) == 0:
            return []
        q = self._query_vec(text)
        if via == "auto":
            has_labels = self._db.get().execute("SELECT 1 FROM labels LIMIT 1").fetchone()
            via = "examples" if has_labels else "description"
        if via == "description":
            idx = self._skills_idx()
            if not idx.ids:
                return []
            scores = idx.matrix @ q
            return [(self.get(idx.ids[i]), float(scores[i])) for i in _top(scores, k)]
        if via != "examples":
            raise MetaskillError(f"via must be 'auto', 'description' or 'examples', got '{via}'.")
        idx = self._examples_idx()
        if self._labels_cache is None:
            self._labels_cache = self.all_labels()
        labels = self._labels_cache
        rows = [idx.row[i] for i, s in labels.items() if s and i in idx.row]
        if not rows:
            return []
        rows_arr = np.array(rows)
        sims = idx.matrix[rows_arr] @ q
        top = _top(sims, neighbours)
        weights = np.clip(sims[top], 0.0, None) + 1e-6
        votes: dict[str, float] = {}
        for w, r in zip(weights, rows_arr[top], strict=True):
            for s in labels[idx.ids[r]]:
                votes[s] = votes.get(s, 0.0) + float(w)
        total = float(weights.sum())
        order = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [(self.get(name), v / total) for name, v in order]

    def exemplars(
        self,
        skill: str,
        k: int = 4,
        *,
        query: str | Example | np.ndarray | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Example]:
        """Up to ``k`` stored examples that carry ``skill``.

        Args:
            skill: the skill name.
            k: how many.
            query: if given, the examples nearest to it (cosine) come first; otherwise the
                skill's curated ``exemplars`` come first, then the most typical examples
                (nearest the centroid of the skill's examples).
            exclude: example ids never to return (e.g. the question being answered).

        Raises:
            NotFoundError: if the skill is not in the book.
        """
        s = self.get(skill)
        banned = set(exclude)
        ids = [i for i in self.examples_of(skill) if i not in banned]
        if not ids or k < 1:
            return []
        idx = self._examples_idx()
        ids = [i for i in ids if i in idx.row]
        mat = idx.matrix[np.array([idx.row[i] for i in ids])]
        if query is not None:
            order = [ids[j] for j in _top(mat @ self._query_vec(query), k)]
        else:
            curated = [i for i in s.exemplars if i in set(ids)]
            centroid = mat.mean(axis=0)
            rest = [ids[j] for j in _top(mat @ centroid, len(ids)) if ids[j] not in curated]
            order = (curated + rest)[:k]
        return [self.get_example(i) for i in order]

    def reindex(self, embedder: Embedder, *, progress: bool = False) -> None:
        """Re-embed every skill and example with ``embedder`` and make it the book's."""
        self._embedder = embedder
        self._set_meta("embedder", embedder.spec)
        self._set_meta("embedder_model", embedder.model_id)
        skills = self.skills()
        svec = embedder.encode([s.text() for s in skills])
        ids = self.example_ids()
        exs = [self.get_example(i) for i in ids]
        evec = embedder.encode([e.text for e in exs], progress=progress)
        self._write([
            ("UPDATE skills SET vec=? WHERE name=?",
             [(v.tobytes(), s.name) for s, v in zip(skills, svec, strict=True)], True),
            ("UPDATE examples SET vec=? WHERE id=?",
             [(v.tobytes(), i) for i, v in zip(ids, evec, strict=True)], True),
        ])

    # ---- export / import --------------------------------------------------------------------
    def to_json(self, *, include_vectors: bool = False) -> dict[str, Any]:
        """The whole book as JSON-able data with a schema version.

        Args:
            include_vectors: also carry the embeddings (base64 float32), so the importing
                machine need not re-embed when it uses the same embedder model.
        """
        labels = self.all_labels()
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "metaskill.skillbook",
            "embedder": self.embedder_spec,
            "embedder_model": self._meta("embedder_model"),
            "discovery": self.info()["discovery"],
            "skills": [s.model_dump(mode="json") for s in self.skills()],
            "examples": [
                {"example": self.get_example(i).model_dump(mode="json"), "skills": labels[i]}
                for i in self.example_ids()
            ],
        }
        if include_vectors:
            c = self._db.get()
            out["vectors"] = {
                "skills": {n: base64.b64encode(v).decode() for n, v in c.execute(
                    "SELECT name, vec FROM skills WHERE vec IS NOT NULL")},
                "examples": {i: base64.b64encode(v).decode() for i, v in c.execute(
                    "SELECT id, vec FROM examples WHERE vec IS NOT NULL")},
            }
        return out

    def export(self, path: str | Path, *, include_vectors: bool = False) -> Path:
        """Write :meth:`to_json` to a file; returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(include_vectors=include_vectors), indent=1))
        return p

    @classmethod
    def from_json(
        cls,
        data: dict[str, Any] | str | Path,
        path: str | Path = ":memory:",
        *,
        embedder: Embedder | None = None,
        replace: bool = False,
        progress: bool = False,
    ) -> SkillBook:
        """Build a SkillBook at ``path`` from :meth:`to_json` output (a dict or a JSON file).

        Vectors that came along are used when ``embedder`` (default: the one named in the
        export) has the same model id; otherwise everything is re-embedded.

        Raises:
            MetaskillError: for a file that is not a SkillBook export, a newer schema, or a
                non-empty target book (unless ``replace``).
        """
        if not isinstance(data, dict):
            p = Path(data)
            if not p.exists():
                raise MetaskillError(f"SkillBook export not found: {p}")
            data = read_json(p, "SkillBook export", expect=dict)
        if not isinstance(data, dict) or data.get("kind") != "metaskill.skillbook":
            raise MetaskillError("not a SkillBook export (missing kind 'metaskill.skillbook').")
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version < 1 or version > SCHEMA_VERSION:
            raise MetaskillError(
                f"SkillBook export has schema version {version}; this metaskill reads "
                f"1..{SCHEMA_VERSION}."
            )
        try:
            skills = [Skill.model_validate(s) for s in data.get("skills", [])]
            items = [(Example.model_validate(x["example"]), list(x.get("skills", [])))
                     for x in data.get("examples", [])]
        except (ValidationError, KeyError, TypeError, AttributeError) as e:
            raise MetaskillError(f"malformed SkillBook export: {str(e).splitlines()[0]}") from None
        emb = embedder or load_embedder(str(data.get("embedder") or "minilm"))
        if path != ":memory:" and Path(path).exists() and not replace:
            existing = cls(path)
            if len(existing) or existing.example_ids():
                raise MetaskillError(
                    f"{path} already holds a SkillBook; pass replace=True (--replace) or "
                    "choose another path."
                )
            existing.close()
        if path != ":memory:" and replace:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        book = cls(path, embedder=emb)
        vectors = data.get("vectors") if data.get("embedder_model") == emb.model_id else None
        ordered = _parents_first(skills)
        if vectors:
            _insert_with_vectors(book, ordered, [e for e, _ in items], vectors)
        else:
            book.add_skills(ordered)
            book.add_examples([e for e, _ in items], progress=progress)
        book.label_many({e.id: s for e, s in items if s})
        if data.get("discovery"):
            book.set_discovery(data["discovery"])
        return book


def _stack(rows: list[tuple[str, bytes]], dim: int) -> _Index:
    if not rows:
        return _Index([], np.zeros((0, dim), dtype=np.float32))
    mat = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows])
    return _Index([r[0] for r in rows], mat)


def _parents_first(skills: list[Skill]) -> list[Skill]:
    names = {s.name for s in skills}
    done: set[str] = set()
    out: list[Skill] = []
    pending = list(skills)
    while pending:
        nxt = []
        for s in pending:
            if s.parent is None or s.parent in done or s.parent not in names:
                if s.parent is not None and s.parent not in names:
                    s.parent = None
                out.append(s)
                done.add(s.name)
            else:
                nxt.append(s)
        if len(nxt) == len(pending):  # a cycle: break it
            for s in nxt:
                s.parent = None
            out.extend(nxt)
            break
        pending = nxt
    return out


def _insert_with_vectors(
    book: SkillBook, skills: list[Skill], examples: list[Example], vectors: dict[str, Any]
) -> None:
    svec = vectors.get("skills", {})
    evec = vectors.get("examples", {})
    if any(s.name not in svec for s in skills) or any(e.id not in evec for e in examples):
        book.add_skills(skills)
        book.add_examples(examples)
        return
    book._write([
        ("INSERT INTO skills(name, data, vec, position) VALUES (?,?,?,?)",
         [(s.name, s.model_dump_json(), base64.b64decode(svec[s.name]), i)
          for i, s in enumerate(skills)], True),
        ("INSERT INTO examples(id, data, vec, position) VALUES (?,?,?,?)",
         [(e.id, e.model_dump_json(), base64.b64decode(evec[e.id]), i)
          for i, e in enumerate(examples)], True),
    ])
