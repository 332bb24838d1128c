"""Open-ended evolution of Solvers: an archive in the manner of the Darwin Gödel Machine.

The Darwin Gödel Machine (DGM; Zhang, Hu, Lu, Lange and Clune, "Darwin Gödel Machine:
Open-Ended Evolution of Self-Improving Agents", arXiv:2505.22954, 2025) keeps an archive
of coding agents. Each iteration it picks parents from the archive with probability
proportional to ``sigmoid(lambda (score - alpha0)) * 1 / (1 + n_children)`` (performance,
and novelty as few children), lets each parent modify a copy of its own code, evaluates the
child in stages (a small task subset first, more tasks only for a promising child), and
adds every child that still works to the archive, better or not; the open-ended archive
beat the "no archive" (always the latest agent) and "keep only improvements" ablations.
Its public code (github.com/jennyzzt/dgm, ``DGM_outer.py``: ``choose_selfimproves`` with
``method='score_child_prop'``, ``lambda=10``, ``alpha0=0.5``; ``update_archive`` with
``keep_all`` / ``keep_better``; ``self_improve_step.py``: the second evaluation stage when
the first clears a threshold) is what :func:`selection_probabilities` follows.

What we took: the archive that keeps every valid child; the parent rule (its constants in
:class:`EvolveConfig`, and ``greedy`` / ``random`` for ablations); staged evaluation;
``keep="better"`` as the keep-only-improvements ablation (against the root's score minus a
noise leeway, as ``update_archive`` does). What we changed: the nodes are **Solvers**
(plain Solver JSON built from a :class:`~metaskill.evolve.node.Recipe`), not coding agents
editing their own repository; children come from registered mutations
(:mod:`metaskill.evolve.mutations`: structural edits of the method chain and configs,
crossover, and the DGM's self-modification as a *mutator* LM's structured proposal); one
child per step, sequentially, each child's randomness seeded by ``(seed, child id)``, so a
resumed run makes the same children; the second stage is gated by a margin to the parent's
score on the same small subset instead of an absolute threshold; DGM's ``best`` option
sorts ascending (it picks the worst) -- our ``greedy`` picks the best. The children count
``n_children`` counts every scored child (valid or pruned), as DGM counts the children
that compiled.

One step of :func:`evolve`::

    parent  <- select(archive)                       (DGM rule, greedy or random)
    child   <- mutate(parent)                        (a registered mutation)
    solver  <- fit_chain(root + recipe) on train/dev  or  parent JSON + edits
    small   <- score(solver, dev subset)             (the harness, through the LM cache)
    if small >= parent's small - margin: full <- score(solver, rest of dev)  -> valid
    else                                                                   -> pruned
    archive <- child, with its scores, cost, status (one SQLite transaction)

Every node is committed in one transaction when it is done, so a process killed (even
``kill -9``) loses only the child in flight, and calling :func:`evolve` again on the same
folder resumes: the stored config must match (the budget may grow), and the LM cache
answers the calls the lost child had made. The whole search runs inside the no-test-data
guard (:mod:`metaskill.core.guard`): train fits, dev selects, the test split is never read.

Templates and code: a recipe's ``custom`` parts (a prompt template, Python ``render`` /
``postprocess`` sources; proposed by ``self_modify`` and ``self_modify_code``) wrap the
built Solver as a ``custom`` Solver (:mod:`metaskill.eval.custom`), whose code runs only in
the sandbox, one sandbox process per batch. A child with code is recorded invalid with the
sandbox's one-line reason where the sandbox cannot run (nothing is run), and invalid with
the first failure when any input fell back (a template that does not render, code that
raises, times out or exceeds its memory) during its evaluation: never retried.

Around it: :mod:`metaskill.evolve.report` draws the archive page (``metaskill evolve show
DIR --html``), ``metaskill run --evolve`` runs the search as a stage of the main job, and
``benchmarks/evolve_archive.py`` compares it with the best single chain.

Not yet:

* a hard per-child timeout: ``child_timeout_s`` is a deadline parametric methods honour and
  a limit checked when a child is done (a slower child is recorded invalid), not a kill.

Example:
    >>> probs = selection_probabilities([Node(id=0, scores=[Score(stage="full", n=4,
    ...                                         score=0.5)])], EvolveConfig())
    >>> probs
    {0: 1.0}
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sqlite3
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from metaskill.core.errors import MetaskillError
from metaskill.core.guard import TestDataLeakError, check_examples, guard_fit
from metaskill.core.hashing import stable_hash
from metaskill.core.sqlite import ThreadConnections
from metaskill.core.types import Example
from metaskill.evolve.mutations import (
    Child,
    InvalidChildError,
    Mutation,
    MutationContext,
    NotApplicable,
    default_mutations,
)
from metaskill.evolve.node import Node, Recipe, Score, apply_edits, json_diff

ARCHIVE_SCHEMA_VERSION = 1
ARCHIVE_FILE = "archive.sqlite"

#: The inference-time methods ``add_method`` draws from by default (cheap to fit on CPU;
#: methods needing a SkillBook or a teacher, and parametric ones, are opt-in).
DEFAULT_METHODS = ("knn_demos", "raml", "dynaicl", "self_consistency", "self_refine")


class EvolveConfig(BaseModel):
    """How the archive search runs. Every field but the budget is fixed for an archive.

    Attributes:
        selection: ``dgm`` (DGM's score-and-children rule), ``greedy`` (the best node
            only) or ``random`` (uniform over valid nodes): the last two for ablations.
        lam: the sigmoid's slope lambda (DGM: 10).
        alpha0: the sigmoid's midpoint alpha0, a dev score (DGM: 0.5).
        keep: ``all`` (every valid child is a parent candidate, DGM's ``keep_all``) or
            ``better`` (a child scoring below the root minus ``noise_leeway`` is pruned,
            DGM's ``keep_better`` ablation).
        noise_leeway: the leeway of ``keep="better"`` (DGM: 0.1).
        mutations: mutation kinds to draw from (uniformly; one that does not apply to a
            parent is skipped for another). The default is every registered kind, code
            children (``self_modify_code``) included: where the sandbox cannot run, such a
            draw is recorded as an invalid child with the sandbox's reason and costs no LM
            call.
        methods: methods ``add_method`` / ``replace_method`` may put in a chain.
        stage_size: dev examples of the first evaluation stage (a seeded subset, the same
            for every node); the whole dev set when it has no more than this.
        margin: a child gets the full dev set only if its small-stage score is at least
            its parent's on the same subset minus this.
        seed: seeds the subset and each child's randomness (``(seed, child id)``).
        n_failures: failed dev examples kept per node for the mutator.
        child_timeout_s: a child taking longer is recorded invalid (see the module doc).
        mutator_max_tokens: the mutator reply's token budget.
        max_children: stop after this many children (invalid ones included).
        max_calls: stop once the archive's LM calls reach this (None: no limit).
        max_tokens: stop once its tokens reach this (None: no limit).
        max_seconds: stop once its wall seconds reach this (None: no limit).
    """

    model_config = ConfigDict(extra="forbid")

    selection: Literal["dgm", "greedy", "random"] = "dgm"
    lam: float = Field(10.0, gt=0)
    alpha0: float = Field(0.5, ge=0, le=1)
    keep: Literal["all", "better"] = "all"
    noise_leeway: float = Field(0.1, ge=0)
    mutations: tuple[str, ...] = ("add_method", "remove_method", "replace_method",
                                  "tweak_config", "prompt_format", "crossover", "self_modify",
                                  "self_modify_code")
    methods: tuple[str, ...] = DEFAULT_METHODS
    stage_size: int = Field(10, ge=1)
    margin: float = Field(0.1, ge=0)
    seed: int = 0
    n_failures: int = Field(4, ge=0)
    child_timeout_s: float = Field(1800.0, gt=0)
    mutator_max_tokens: int = Field(384, ge=16)
    max_children: int = Field(100, ge=0)
    max_calls: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=0)
    max_seconds: float | None = Field(None, ge=0)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed archive must share (all but the budget)."""
        budget = {"max_children", "max_calls", "max_tokens", "max_seconds"}
        return self.model_dump(mode="json", exclude=budget)


class Spend(BaseModel):
    """What an archive has spent, and why the search stopped."""

    children: int = 0
    lm_calls: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    stopped: str = ""

    def line(self) -> str:
        """One line for a person.

        Example:
            >>> Spend(children=3, lm_calls=40, tokens=900, wall_s=2.0).line()
            '3 children, 40 LM calls, 900 tokens, 2.0 s'
        """
        out = (f"{self.children} children, {self.lm_calls} LM calls, {self.tokens} tokens, "
               f"{self.wall_s:.1f} s")
        return out + (f"; stopped: {self.stopped}" if self.stopped else "")


# ---- the store ------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    parent INTEGER,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    score REAL,
    created REAL NOT NULL,
    data TEXT NOT NULL
);
"""


class Archive:
    """The archive: one SQLite file (WAL) of nodes, in the run folder.

    Args:
        path: the run folder (``archive.sqlite`` inside) or the file itself.
        lm: the LM that :meth:`best` loads Solvers onto (None: each Solver JSON's model).

    Example:
        >>> import tempfile
        >>> a = Archive(tempfile.mkdtemp())
        >>> a.add(Node(id=0, scores=[Score(stage="full", n=2, score=1.0)]))
        >>> a.nodes()[0].score, len(a)
        (1.0, 1)
    """

    def __init__(self, path: str | Path, lm: Any = None) -> None:
        p = Path(path)
        self.path = p / ARCHIVE_FILE if p.suffix != ".sqlite" else p
        self.lm = lm
        self._db = ThreadConnections(self.path, label="archive")
        try:
            self._db.get().executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise MetaskillError(f"cannot open archive {self.path}: {e}.") from e

    # ---- meta --------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """A stored meta value (JSON), or None."""
        row = self._db.get().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a meta value (JSON)."""
        with self._db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (key, json.dumps(value)))

    # ---- nodes -------------------------------------------------------------------------
    def add(self, node: Node) -> None:
        """Commit one node (one transaction)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO nodes (id, parent, status, kind, score, created, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (node.id, node.parent, node.status, node.kind, node.score, time.time(),
                 node.model_dump_json()))

    def nodes(self) -> list[Node]:
        """Every node, in id order."""
        rows = self._db.get().execute("SELECT data FROM nodes ORDER BY id").fetchall()
        return [Node.model_validate_json(r[0]) for r in rows]

    def node(self, node_id: int) -> Node:
        """One node by id."""
        row = self._db.get().execute("SELECT data FROM nodes WHERE id = ?",
                                     (node_id,)).fetchone()
        if row is None:
            raise MetaskillError(f"archive {self.path} has no node {node_id}.")
        return Node.model_validate_json(row[0])

    def __len__(self) -> int:
        return int(self._db.get().execute("SELECT COUNT(*) FROM nodes").fetchone()[0])

    # ---- answers -----------------------------------------------------------------------
    def best_node(self) -> Node:
        """The valid node with the highest full-dev score (ties: the earliest).

        Raises:
            MetaskillError: the archive has no valid node.
        """
        valid = [n for n in self.nodes() if n.status == "valid" and n.score is not None]
        if not valid:
            raise MetaskillError(f"archive {self.path} has no valid node yet; run the "
                                 "search (metaskill evolve archive).")
        return max(valid, key=lambda n: (n.score, -n.id))

    def best(self, lm: Any = None) -> Any:
        """The best node's Solver, loaded (:func:`~metaskill.eval.solvers.load_solver`).

        Args:
            lm: the LM to load it onto (default: the archive's, else the JSON's model).
        """
        from metaskill.eval.solvers import load_solver

        return load_solver(self.best_node().solver or {}, lm=lm or self.lm)

    def path_to(self, node_id: int) -> list[Node]:
        """The nodes from the root to ``node_id``, in order."""
        by_id = {n.id: n for n in self.nodes()}
        out = [by_id[node_id]]
        while out[-1].parent is not None:
            out.append(by_id[out[-1].parent])
        return out[::-1]

    def spend(self) -> Spend:
        """What the archive has spent (every node, the root included) and the stop reason."""
        ns = self.nodes()
        return Spend(children=max(0, len(ns) - 1), lm_calls=sum(n.lm_calls for n in ns),
                     tokens=sum(n.tokens for n in ns), wall_s=sum(n.wall_s for n in ns),
                     stopped=self.get_meta("stopped") or "")

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()


# ---- parent selection ---------------------------------------------------------------
def n_children(nodes: Sequence[Node]) -> dict[int, int]:
    """Node id -> number of its scored (valid or pruned) children."""
    counts = {n.id: 0 for n in nodes}
    for n in nodes:
        if n.parent is not None and n.status != "invalid" and n.parent in counts:
            counts[n.parent] += 1
    return counts


def candidates(nodes: Sequence[Node]) -> list[Node]:
    """The nodes that may be parents: valid and scored."""
    return [n for n in nodes if n.status == "valid" and n.score is not None]


def selection_probabilities(nodes: Sequence[Node], config: EvolveConfig) -> dict[int, float]:
    """Each candidate parent's probability of being chosen.

    ``dgm``: ``p_i`` proportional to ``sigmoid(lam * (score_i - alpha0)) / (1 + n_i)``,
    ``n_i`` the node's scored children (DGM_outer.py ``score_child_prop``). ``greedy``: 1
    for the best score (ties: the earliest node). ``random``: uniform.

    Example:
        >>> ns = [Node(id=0, scores=[Score(stage="full", n=10, score=0.5)]),
        ...       Node(id=1, parent=0, scores=[Score(stage="full", n=10, score=0.5)])]
        >>> selection_probabilities(ns, EvolveConfig())  # node 0 has one child
        {0: 0.3333333333333333, 1: 0.6666666666666666}
    """
    pool = candidates(nodes)
    if not pool:
        return {}
    if config.selection == "greedy":
        best = max(pool, key=lambda n: (n.score, -n.id))
        return {n.id: float(n.id == best.id) for n in pool}
    if config.selection == "random":
        return {n.id: 1 / len(pool) for n in pool}
    kids = n_children(nodes)
    weights = {n.id: _sigmoid(config.lam * (float(n.score or 0.0) - config.alpha0))
               / (1 + kids[n.id]) for n in pool}
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def choose(probabilities: Mapping[int, float], rng: random.Random,
           exclude: int | None = None) -> int | None:
    """Draw one id with the given probabilities (``exclude`` left out and the rest
    renormalised); None when nothing is left.

    Example:
        >>> choose({3: 0.0, 7: 1.0}, random.Random(0))
        7
    """
    items = [(i, p) for i, p in probabilities.items() if i != exclude and p > 0]
    total = sum(p for _, p in items)
    if not items or total <= 0:
        return None
    u = rng.random() * total
    for i, p in items:
        u -= p
        if u < 0:
            return i
    return items[-1][0]


# ---- building and scoring a child ------------------------------------------------------
@dataclasses.dataclass
class _Search:
    """Everything one search reads (passed down explicitly)."""

    archive: Archive
    config: EvolveConfig
    task: Any
    train: list[Example]
    dev: list[Example]
    small_ids: list[str]
    root_json: dict[str, Any]
    lm: Any
    resources: Any
    mutations: dict[str, Mutation]
    ctx: MutationContext
    log: Callable[[str], None]
    executor: Any = None


def build_solver(recipe: Recipe, s: _Search, deadline: float | None = None
                 ) -> tuple[Any, list[Any]]:
    """The Solver a recipe makes: root (+ base changes) -> chain -> edits; and the fit
    reports of the chain's methods."""
    from metaskill.eval.solvers import load_solver
    from metaskill.methods.compose import fit_chain

    root = dict(s.root_json)
    root["state"] = {**(root.get("state") or {}), **recipe.base}
    solver = load_solver(root, lm=s.lm)
    reports: list[Any] = []
    if recipe.chain:
        resources = dataclasses.replace(s.resources, deadline=deadline)
        result = fit_chain(solver, s.task, s.train, s.dev,
                           [(st.method, dict(st.options)) for st in recipe.chain],
                           resources=resources)
        solver, reports = result.solver, result.reports
    if recipe.edits:
        solver = load_solver(apply_edits(solver.to_json(), recipe.edits), lm=s.lm)
    return _customised(solver, recipe), reports


def _customised(solver: Any, recipe: Recipe) -> Any:
    """``solver`` with the recipe's custom parts (template, code) around it."""
    from metaskill.eval.custom import customised

    return customised(solver, **recipe.custom) if recipe.custom else solver


def _check_custom(attempts: list[Any]) -> None:
    """Raise InvalidChildError when a custom child fell back on any input (its template or
    code failed): the first reason and how many inputs failed."""
    from metaskill.eval.custom import fallbacks

    failed = fallbacks(attempts)
    if failed:
        raise InvalidChildError(f"custom code failed on {len(failed)} input(s) of its first "
                                f"evaluation; first: {failed[0]}"[:500])


def _score(solver: Any, s: _Search, examples: list[Example], node: Node) -> list[Any]:
    """Score ``examples`` with the harness; charge the cost to and record scores on node;
    the attempts."""
    from metaskill.methods.base import FitReport
    from metaskill.methods.demos import run_solver

    report = FitReport()
    attempts, scores = run_solver(solver, s.task, examples, report, executor=s.executor)
    node.lm_calls += report.lm_calls
    node.prompt_tokens += report.usage.prompt_tokens
    node.completion_tokens += report.usage.completion_tokens
    for e, a, sc in zip(examples, attempts, scores, strict=True):
        node.per_example[e.id] = sc
        if sc < 1.0 and len(node.failures) < s.config.n_failures:
            node.failures.append({"id": e.id, "input": e.text[:500], "reference": e.answer,
                                  "output": (a.output or a.error or "")[:300]})
    return attempts


def _charge_reports(node: Node, reports: list[Any]) -> None:
    notes: dict[str, Any] = {}
    for r in reports:
        node.lm_calls += r.lm_calls
        node.prompt_tokens += r.usage.prompt_tokens
        node.completion_tokens += r.usage.completion_tokens
    for i, r in enumerate(reports):
        notes[f"fit{i}"] = {k: v for k, v in r.notes.items()
                            if isinstance(v, (int, float, str, bool)) or v is None}
    if notes:
        node.notes.update(notes)


def _fatal(e: BaseException) -> bool:
    from metaskill.eval.harness import FATAL_ERRORS

    return isinstance(e, (TestDataLeakError, *FATAL_ERRORS)) or not isinstance(e, Exception)


def _evaluate_root(s: _Search) -> Node:
    node = Node(id=0, kind="root", description="the Solver the search started from",
                recipe=Recipe(), solver=s.root_json)
    t0 = time.monotonic()
    solver, _ = build_solver(node.recipe, s)
    node.solver = solver.to_json()
    _score(solver, s, s.dev, node)
    node.scores = [Score(stage="full", n=len(s.dev), score=_mean(node, s.dev))]
    if len(s.small_ids) < len(s.dev):
        node.scores.insert(0, Score(stage="small", n=len(s.small_ids),
                                    score=node.subset_score(s.small_ids) or 0.0))
    node.wall_s = time.monotonic() - t0
    return node


def _mean(node: Node, examples: list[Example]) -> float:
    return node.subset_score([e.id for e in examples]) or 0.0


def _propose(parent: Node, s: _Search, rng: random.Random, seen: set[str]
             ) -> tuple[str, Child | Exception]:
    """A mutation kind drawn uniformly among those that apply, and its child (or the
    exception it raised). A kind that does not apply, or whose child repeats a recipe in
    ``seen`` (an archive node's), is dropped for another. Raises NotApplicable when no
    kind is left."""
    kinds = [k for k in s.config.mutations if k in s.mutations]
    while kinds:
        kind = rng.choice(kinds)
        try:
            child = s.mutations[kind](parent, s.ctx, rng)
            if child.recipe.fingerprint() in seen:
                raise NotApplicable("a recipe the archive holds")
            return kind, child
        except NotApplicable:
            kinds.remove(kind)
        except Exception as e:
            if _fatal(e):
                raise
            return kind, e
    raise NotApplicable(f"no mutation applies to node {parent.id}")


def make_child(child_id: int, s: _Search, nodes: list[Node]) -> Node | None:
    """Select a parent, mutate, build, score in stages; the finished node (not yet stored).

    None when no parent can be selected or no mutation applies.
    """
    rng = random.Random(f"{s.config.seed}:{child_id}")
    probs = selection_probabilities(nodes, s.config)
    parent_id = choose(probs, rng)
    if parent_id is None:
        return None
    by_id = {n.id: n for n in nodes}
    parent = by_id[parent_id]
    s.ctx.pick_other = lambda pid, r: by_id.get(choose(probs, r, exclude=pid) or -1)
    t0 = time.monotonic()
    node = Node(id=child_id, parent=parent.id, kind="?", status="invalid")
    seen = {n.recipe.fingerprint() for n in nodes if n.status != "invalid"}
    try:
        node.kind, child = _propose(parent, s, rng, seen)
    except NotApplicable:
        return None
    if isinstance(child, Exception):  # recorded with its reason, never retried
        node.reason = (str(child) if isinstance(child, InvalidChildError)
                       else f"the mutation failed: {_error(child)}")
        _add_cost(node, getattr(child, "cost", {}))
        node.wall_s = time.monotonic() - t0
        return node
    node.kind, node.description, node.recipe = child.kind, child.description, child.recipe
    node.parent2, node.notes = child.parent2, dict(child.notes)
    _add_cost(node, {"lm_calls": child.lm_calls, "prompt_tokens": child.prompt_tokens,
                     "completion_tokens": child.completion_tokens})
    node.recipe_diff = json_diff(parent.recipe.model_dump(mode="json"),
                                 child.recipe.model_dump(mode="json"))
    _build_and_score(node, parent, child, s, t0)
    node.wall_s = time.monotonic() - t0
    return node


def _build_and_score(node: Node, parent: Node, child: Child, s: _Search, t0: float) -> None:
    from metaskill.eval.solvers import load_solver

    deadline = t0 + s.config.child_timeout_s
    try:
        if child.rebuild:
            solver, reports = build_solver(child.recipe, s, deadline)
            _charge_reports(node, reports)
        else:  # a direct edit of the parent's Solver JSON
            solver = load_solver(apply_edits(parent.solver or {}, child.recipe.edits), lm=s.lm)
            solver = _customised(solver, child.recipe)
        node.solver = solver.to_json()
        node.solver_diff = json_diff(parent.solver, node.solver)
        if getattr(solver, "has_code", False):
            from metaskill.eval.custom import sandbox_problem

            if problem := sandbox_problem():  # refused: never run outside the sandbox
                raise InvalidChildError(f"code child refused: {problem}")
        small = [e for e in s.dev if e.id in set(s.small_ids)]
        _check_custom(_score(solver, s, small, node))
        mine, theirs = node.subset_score(s.small_ids), parent.subset_score(s.small_ids)
        staged = len(small) < len(s.dev)
        if staged:
            node.scores.append(Score(stage="small", n=len(small), score=mine or 0.0))
        if staged and (mine or 0.0) < (theirs or 0.0) - s.config.margin:
            node.status = "pruned"
            node.reason = (f"small-dev score {mine:.3f} on {len(small)} is more than "
                           f"{s.config.margin} below its parent's {theirs:.3f}")
        else:
            rest = [e for e in s.dev if e.id not in node.per_example]
            _check_custom(_score(solver, s, rest, node))
            node.scores.append(Score(stage="full", n=len(s.dev), score=_mean(node, s.dev)))
            node.status, node.reason = "valid", ""
            root_score = s.archive.node(0).score or 0.0
            if s.config.keep == "better" and node.score is not None and \
                    node.score < root_score - s.config.noise_leeway:
                node.status = "pruned"
                node.reason = (f"keep=better: dev {node.score:.3f} is below the root's "
                               f"{root_score:.3f} minus {s.config.noise_leeway}")
        took = time.monotonic() - t0
        if took > s.config.child_timeout_s:
            node.status, node.reason = "invalid", (
                f"timeout: took {took:.0f} s, over child_timeout_s={s.config.child_timeout_s}")
    except InvalidChildError as e:
        node.status, node.reason = "invalid", str(e)
    except Exception as e:
        if _fatal(e):
            raise
        node.status, node.reason = "invalid", _error(e)
        node.notes["traceback"] = traceback.format_exc(limit=-3)[-2000:]


def _add_cost(node: Node, cost: Mapping[str, int]) -> None:
    node.lm_calls += int(cost.get("lm_calls", 0))
    node.prompt_tokens += int(cost.get("prompt_tokens", 0))
    node.completion_tokens += int(cost.get("completion_tokens", 0))


def _error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}"[:500] if msg else type(e).__name__


def _stop_reason(archive: Archive, config: EvolveConfig, session_start: float,
                 session_wall0: float) -> str:
    sp = archive.spend()
    wall = session_wall0 + (time.monotonic() - session_start)
    if sp.children >= config.max_children:
        return f"max_children={config.max_children} reached"
    if config.max_calls is not None and sp.lm_calls >= config.max_calls:
        return f"max_calls={config.max_calls} reached ({sp.lm_calls} LM calls)"
    if config.max_tokens is not None and sp.tokens >= config.max_tokens:
        return f"max_tokens={config.max_tokens} reached ({sp.tokens} tokens)"
    if config.max_seconds is not None and wall >= config.max_seconds:
        return f"max_seconds={config.max_seconds} reached ({wall:.0f} s)"
    return ""


def _identity(solver_json: dict[str, Any], task: Any, train: list[Example],
              dev: list[Example], config: EvolveConfig) -> dict[str, Any]:
    return {"schema_version": ARCHIVE_SCHEMA_VERSION, "task": getattr(task, "name", "?"),
            "task_version": str(getattr(task, "version", "")),
            "root": stable_hash(solver_json), "train": stable_hash([e.id for e in train]),
            "dev": stable_hash([e.id for e in dev]), "config": config.identity()}


def evolve(
    solver: Any,
    task: Any,
    train: list[Example],
    dev: list[Example],
    config: EvolveConfig | None = None,
    *,
    out: str | Path,
    resources: Any = None,
    mutator: Any = None,
    mutations: Mapping[str, Mutation] | None = None,
    log: Callable[[str], None] | None = None,
    executor: Any = None,
) -> Archive:
    """Grow an archive of Solvers from ``solver`` (resuming the one in ``out``, if any).

    Args:
        solver: the root Solver (its LM answers every child's prompts).
        task: the task (its verifier scores dev; its test split is never read).
        train: examples methods fit on.
        dev: examples children are selected on (staged: a small subset, then the rest).
        config: the search (:class:`EvolveConfig`; default: DGM selection, no budget but
            ``max_children``).
        out: the run folder (``archive.sqlite`` inside); an archive there is resumed.
        resources: :class:`~metaskill.methods.base.MethodResources` for the methods
            (embedder ...); None: the defaults.
        mutator: the LM of ``self_modify`` (default: the root Solver's LM).
        mutations: name -> mutation function (default: :data:`MUTATIONS`).
        log: called with one line per child (None: silent).
        executor: where each child's dev batches are solved (None: here); a
            :class:`metaskill.distributed.executor.RayExecutor` spreads them over its
            workers. Children are still made one after another (each selection reads the
            archive as the previous child left it); the methods of a chain fit here.

    Returns:
        The :class:`Archive` (``archive.best()`` is the best Solver on dev;
        ``archive.spend()`` what it cost and why it stopped).

    Raises:
        MetaskillError: an archive in ``out`` made with another task, root, data or config;
            empty dev.
        TestDataLeakError: a test example among train/dev, or reaching the LM.

    Example:
        >>> import tempfile
        >>> from metaskill.lm.fake import ScriptedLM
        >>> from metaskill.eval.solvers import ZeroShot
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class Exact(Verifier):
        ...     def verify(self, output, ex):
        ...         return Verdict(score=float(output.strip() == ex.answer))
        >>> dev = [Example(id=str(i), input=f"q{i}", answer="yes") for i in range(4)]
        >>> task = Task(name="t", splits={"dev": dev}, verifier=Exact(), kind="classification",
        ...             labels=["yes", "no"])
        >>> arch = evolve(ZeroShot(ScriptedLM(default="yes")), task, [], dev,
        ...               EvolveConfig(mutations=("prompt_format",), max_children=2),
        ...               out=tempfile.mkdtemp())
        >>> arch.best_node().score, arch.spend().children
        (1.0, 2)
    """
    from metaskill.methods.base import MethodResources

    config = config or EvolveConfig()
    if not dev:
        raise MetaskillError("evolve needs dev examples to select on; give some.")
    log = log or (lambda line: None)
    archive = Archive(out, lm=solver.lm)
    root_json = solver.to_json()
    ident = _identity(root_json, task, train, dev, config)
    stored = archive.get_meta("identity")
    if stored is None:
        archive.set_meta("identity", ident)
        archive.set_meta("config", config.model_dump(mode="json"))
        archive.set_meta("root", root_json)
    elif stored != ident:
        diff = sorted(k for k in ident if stored.get(k) != ident[k])
        raise MetaskillError(f"the archive in {out} was made with a different "
                             f"{', '.join(diff)}; use another folder, or the same settings "
                             "to resume it.")
    archive.set_meta("config", config.model_dump(mode="json"))  # the budget may grow
    archive.set_meta("stopped", "")
    from metaskill.eval.harness import select

    small = select(dev, config.stage_size, seed=config.seed)
    ctx = MutationContext(methods=tuple(config.methods), root_kind=str(root_json.get("kind")),
                          task=task, mutator=mutator if mutator is not None else solver.lm,
                          n_failures=config.n_failures,
                          mutator_max_tokens=config.mutator_max_tokens)
    s = _Search(archive=archive, config=config, task=task, train=list(train), dev=list(dev),
                small_ids=[e.id for e in small], root_json=root_json, lm=solver.lm,
                resources=resources or MethodResources(), ctx=ctx, log=log,
                mutations=dict(mutations) if mutations is not None else default_mutations(),
                executor=executor)
    splits = getattr(task, "splits", None) or {}
    others = [e for name, xs in splits.items() if name != "test" for e in xs]
    with guard_fit("evolve", splits.get("test") or [], others, getattr(task, "render", None)):
        check_examples([*train, *dev], where="the train/dev given to evolve")
        _loop(s)
    return archive


def _loop(s: _Search) -> None:
    start = time.monotonic()
    nodes = s.archive.nodes()
    wall0 = sum(n.wall_s for n in nodes)
    if not nodes:
        root = _evaluate_root(s)
        s.archive.add(root)
        s.log(f"root: dev {root.score:.3f} on {root.n_scored}")
        nodes = [root]
    while True:
        reason = _stop_reason(s.archive, s.config, start, wall0)
        if reason:
            break
        child_id = nodes[-1].id + 1
        node = make_child(child_id, s, nodes)
        if node is None:
            reason = "no parent can be selected, or no mutation applies"
            break
        s.archive.add(node)
        nodes.append(node)
        score = f"dev {node.score:.3f} on {node.n_scored}" if node.score is not None else "-"
        s.log(f"child {node.id} of {node.parent} [{node.kind}] {node.status}: {score}"
              + (f" ({node.reason})" if node.reason else "") + f" -- {node.description}")
    s.archive.set_meta("stopped", reason)


__all__ = ["ARCHIVE_FILE", "DEFAULT_METHODS", "Archive", "EvolveConfig", "Spend",
           "build_solver", "candidates", "choose", "evolve", "make_child", "n_children",
           "selection_probabilities"]
