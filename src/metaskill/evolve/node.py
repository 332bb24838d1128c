"""What one archive node holds: a Recipe, the Solver JSON it builds, scores, cost, status.

A node's **Solver** is plain Solver JSON (``Solver.to_json()``, schema-versioned), so the
archive's best node loads with :func:`metaskill.eval.solvers.load_solver` and runs anywhere
a Solver does (``metaskill eval --solver``, ``serve``, the main job). Its **Recipe** says how
that JSON was made from the Solver the search started from (the root):

* ``base`` -- changes to the root Solver's state before any method runs (prompt format,
  temperature, ``max_tokens``...; validated by the root kind's config when it loads);
* ``chain`` -- the methods fitted on top, in order, with their options
  (:func:`metaskill.methods.compose.fit_chain`; parametric methods run first);
* ``edits`` -- direct edits of the fitted Solver's JSON state (new instructions), applied
  after the chain without refitting;
* ``custom`` -- a prompt template and Python code (``render`` / ``postprocess`` sources),
  wrapped around the result last as a ``custom`` Solver
  (:class:`~metaskill.eval.custom.CustomSolver`: the code runs only in the sandbox).

``json_diff`` is a small RFC 6902-style diff (``add`` / ``remove`` / ``replace`` operations
with JSON-pointer paths), written here instead of taking the ``jsonpatch`` dependency for
the one direction we need (recording what a mutation changed; nothing applies patches).

Example:
    >>> for op in json_diff({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2, 3], "c": None}):
    ...     print(op)
    {'op': 'replace', 'path': '/a', 'value': 2}
    {'op': 'add', 'path': '/b/2', 'value': 3}
    {'op': 'add', 'path': '/c', 'value': None}
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from metaskill.core.errors import MetaskillError
from metaskill.core.hashing import stable_hash

#: Schema version of a node (and its Recipe) as stored in the archive. 2: ``Recipe.custom``
#: (a version-1 node loads unchanged: no custom parts).
NODE_SCHEMA_VERSION = 2

NodeStatus = Literal["valid", "invalid", "pruned"]

#: What ``Recipe.custom`` may hold (the parts of a ``custom`` Solver).
CUSTOM_PARTS = ("template", "render", "postprocess")


class Step(BaseModel):
    """One method of a chain: its registered name and config options."""

    model_config = ConfigDict(extra="forbid")

    method: str
    options: dict[str, Any] = Field(default_factory=dict)


class Recipe(BaseModel):
    """How a node's Solver is built from the root Solver (see the module doc).

    Example:
        >>> r = Recipe(chain=[Step(method="knn_demos", options={"k": 2})])
        >>> r.describe()
        'root + knn_demos(k=2)'
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = NODE_SCHEMA_VERSION
    base: dict[str, Any] = Field(default_factory=dict)
    chain: list[Step] = Field(default_factory=list)
    edits: dict[str, Any] = Field(default_factory=dict)
    custom: dict[str, str] = Field(default_factory=dict)

    @field_validator("custom")
    @classmethod
    def _custom_keys(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(CUSTOM_PARTS))
        if unknown:
            raise ValueError(f"unknown custom part(s) {unknown}; use {list(CUSTOM_PARTS)}")
        return v

    def fingerprint(self) -> str:
        """A hash of the recipe: two nodes with the same one build the same Solver."""
        exclude = {"schema_version"} | (set() if self.custom else {"custom"})
        return stable_hash(self.model_dump(mode="json", exclude=exclude))

    def describe(self) -> str:
        """One short line: root changes, the chain with its options, the edits."""
        def kv(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}={_short(v)}" for k, v in sorted(d.items()))

        parts = [f"root({kv(self.base)})" if self.base else "root"]
        parts += [f"{s.method}({kv(s.options)})" if s.options else s.method for s in self.chain]
        if self.edits:
            parts.append(f"edit({kv(self.edits)})")
        if self.custom:
            parts.append(f"custom({', '.join(sorted(self.custom))})")
        return " + ".join(parts)


def _short(v: Any, n: int = 24) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


class Score(BaseModel):
    """A dev score and the number of examples behind it (``stage``: ``small`` or ``full``)."""

    stage: Literal["small", "full"]
    n: int
    score: float


class Node(BaseModel):
    """One Solver of the archive.

    Attributes:
        id: 0 for the root; children are numbered in the order they were made.
        parent: the parent's id (None for the root).
        parent2: the second parent of a crossover child.
        status: ``valid`` (fully scored on dev; a parent candidate), ``pruned`` (scored
            on the small dev subset only, too far below its parent; or dropped by
            ``keep="better"``) or ``invalid`` (could not be built or scored; ``reason``).
        reason: why a node is invalid or pruned.
        kind: the mutation that made it (``root`` for the root).
        description: what the mutation changed, in words.
        recipe: how the Solver is built from the root (:class:`Recipe`).
        solver: the Solver JSON (None for an invalid node).
        recipe_diff: :func:`json_diff` of the parent's recipe to this one.
        solver_diff: :func:`json_diff` of the parent's Solver JSON to this one.
        scores: staged dev scores, each with its number of examples.
        per_example: dev example id -> score, for every example scored.
        failures: a few failed dev examples (input, reference, output) for the mutator.
        lm_calls: LM calls this node cost (building, scoring, the mutator's proposal).
        prompt_tokens: prompt tokens this node cost.
        completion_tokens: completion tokens this node cost.
        wall_s: seconds spent making it.
        notes: fit-report notes of its methods, the mutator's rationale ...
    """

    schema_version: int = NODE_SCHEMA_VERSION
    id: int
    parent: int | None = None
    parent2: int | None = None
    status: NodeStatus = "valid"
    reason: str = ""
    kind: str = "root"
    description: str = ""
    recipe: Recipe = Field(default_factory=Recipe)
    solver: dict[str, Any] | None = None
    recipe_diff: list[dict[str, Any]] = Field(default_factory=list)
    solver_diff: list[dict[str, Any]] = Field(default_factory=list)
    scores: list[Score] = Field(default_factory=list)
    per_example: dict[str, float] = Field(default_factory=dict)
    failures: list[dict[str, Any]] = Field(default_factory=list)
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    notes: dict[str, Any] = Field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """The latest (largest-stage) dev score, or None when it was never scored."""
        return self.scores[-1].score if self.scores else None

    @property
    def n_scored(self) -> int:
        """Dev examples behind :attr:`score`."""
        return self.scores[-1].n if self.scores else 0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def subset_score(self, ids: list[str]) -> float | None:
        """Mean score over ``ids`` (None if any of them was not scored).

        Example:
            >>> Node(id=0, per_example={"a": 1.0, "b": 0.0}).subset_score(["a", "b"])
            0.5
        """
        if not ids or any(i not in self.per_example for i in ids):
            return None
        return sum(self.per_example[i] for i in ids) / len(ids)


def json_diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902-style operations that turn ``old`` into ``new`` (dicts by key, lists by index).

    Example:
        >>> json_diff({"k": [1, 2, 3]}, {"k": [1]})
        [{'op': 'remove', 'path': '/k/2'}, {'op': 'remove', 'path': '/k/1'}]
        >>> json_diff(1, 1)
        []
    """
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for k in old:
            p = f"{path}/{_escape(str(k))}"
            if k not in new:
                ops.append({"op": "remove", "path": p})
            else:
                ops += json_diff(old[k], new[k], p)
        ops += [{"op": "add", "path": f"{path}/{_escape(str(k))}", "value": new[k]}
                for k in new if k not in old]
        return ops
    if isinstance(old, list) and isinstance(new, list):
        ops = []
        for i in range(min(len(old), len(new))):
            ops += json_diff(old[i], new[i], f"{path}/{i}")
        ops += [{"op": "add", "path": f"{path}/{i}", "value": new[i]}
                for i in range(len(old), len(new))]
        ops += [{"op": "remove", "path": f"{path}/{i}"}
                for i in reversed(range(len(new), len(old)))]
        return ops
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path or "", "value": new}]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def apply_edits(solver_json: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``solver_json`` with each edited key set wherever its state holds that key.

    A wrapping Solver (self-refine around demos ...) keeps the inner Solver's state nested
    in its own; an edit of ``instructions`` reaches every level that has instructions.

    Raises:
        MetaskillError: the state holds an edited key nowhere.

    Example:
        >>> j = {"kind": "zero-shot", "state": {"instructions": None, "k": 0}}
        >>> apply_edits(j, {"instructions": "Answer yes or no."})["state"]["instructions"]
        'Answer yes or no.'
    """
    out = copy.deepcopy(solver_json)
    for key, value in edits.items():
        if not _set_everywhere(out.get("state"), key, value):
            raise MetaskillError(f"a '{out.get('kind')}' Solver has no '{key}' in its state "
                                 "to edit.")
    return out


def _set_everywhere(obj: Any, key: str, value: Any) -> bool:
    found = False
    if isinstance(obj, dict):
        if key in obj:
            obj[key] = copy.deepcopy(value)
            found = True
        for k, v in obj.items():
            if k != key:
                found = _set_everywhere(v, key, value) or found
    elif isinstance(obj, list):
        for v in obj:
            found = _set_everywhere(v, key, value) or found
    return found


__all__ = ["CUSTOM_PARTS", "NODE_SCHEMA_VERSION", "Node", "NodeStatus", "Recipe", "Score", "Step",
           "apply_edits", "json_diff"]
