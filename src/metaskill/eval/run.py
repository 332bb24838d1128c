"""Run: one evaluation of a Solver on a Task split, stored example by example.

A :class:`Run` holds its per-example :class:`Record` list and running :class:`Totals`;
accuracy, its Wilson 95% interval and the per-skill table are computed from them.

Example:
    >>> r = Run(id="r1", task="t", split="test", solver={"kind": "zero-shot"}, model="fake",
    ...         records=[Record(index=0, example_id="a", score=1.0, skills=["x"]),
    ...                  Record(index=1, example_id="b", score=0.0, skills=["x", "y"])])
    >>> r.accuracy
    0.5
    >>> [(s.skill, s.n, s.accuracy) for s in r.per_skill]
    [('x', 2, 0.5), ('y', 1, 0.0)]
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from metaskill.core.types import Usage
from metaskill.eval.stats import wilson

RunStatus = Literal["running", "done", "failed", "interrupted"]
NO_SKILL = "(none)"


class Record(BaseModel):
    """What happened on one example.

    Attributes:
        index: position of the example in the run's selection.
        example_id: the Example's id.
        prompt: the prompt as the LM saw it (chat rendered with the model's template).
        raw: the LM's raw text.
        output: the Solver's answer (after answer extraction), given to the Verifier.
        parsed: the answer the Verifier parsed from ``output``.
        reference: the Example's reference answer.
        score: the Verifier's score in [0, 1] (0 for an example that errored).
        reason: the Verifier's short reason (or the error).
        skills: the skills the example exercises.
        usage: tokens the Solver spent on it.
        latency_s: seconds the Solver spent on it.
        error: set when the Solver or the Verifier raised; the example counts as wrong.
        meta: solver-specific details (e.g. label scores of a likelihood classifier).
    """

    index: int
    example_id: str
    prompt: str = ""
    raw: str = ""
    output: str = ""
    parsed: str | None = None
    reference: str | None = None
    score: float = 0.0
    reason: str = ""
    skills: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Totals(BaseModel):
    """Running totals of a run, updated with every committed batch."""

    n: int = 0
    score: float = 0.0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    latency_s: float = 0.0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def add(self, records: Iterable[Record], wall_s: float = 0.0) -> Totals:
        """A new Totals with ``records`` and ``wall_s`` added."""
        n, score, errors, pt, ct, lat = 0, 0.0, 0, 0, 0, 0.0
        for r in records:
            n += 1
            score += r.score
            errors += r.error is not None
            pt += r.usage.prompt_tokens
            ct += r.usage.completion_tokens
            lat += r.latency_s
        return Totals(n=self.n + n, score=self.score + score, errors=self.errors + errors,
                      prompt_tokens=self.prompt_tokens + pt,
                      completion_tokens=self.completion_tokens + ct,
                      wall_s=self.wall_s + wall_s, latency_s=self.latency_s + lat)


class SkillStat(BaseModel):
    """Accuracy on the examples that exercise one skill, with its Wilson 95% interval."""

    skill: str
    n: int
    score: float
    low: float
    high: float

    @property
    def accuracy(self) -> float:
        """Mean score (0 when n = 0)."""
        return self.score / self.n if self.n else 0.0


def skill_stats(records: Iterable[Record]) -> list[SkillStat]:
    """Per-skill accuracy with Wilson intervals, sorted by skill name.

    Examples without skills are grouped as ``(none)`` when some other example has a skill;
    when no example has one, the list is empty.
    """
    recs = list(records)
    if not any(r.skills for r in recs):
        return []
    n: dict[str, int] = {}
    k: dict[str, float] = {}
    for r in recs:
        for s in dict.fromkeys(r.skills or [NO_SKILL]):
            n[s] = n.get(s, 0) + 1
            k[s] = k.get(s, 0.0) + r.score
    out = []
    for s in sorted(n):
        lo, hi = wilson(k[s], n[s])
        out.append(SkillStat(skill=s, n=n[s], score=k[s], low=lo, high=hi))
    return out


class Run(BaseModel):
    """One evaluation of a Solver on a Task split.

    Attributes:
        id: the run id (``runs show ID``).
        created: Unix time the run started.
        task, task_version, split: what was evaluated.
        solver: the Solver's schema-versioned JSON.
        model: the LM's spec string.
        status: running, done, failed (stopped by ``max_errors``) or interrupted.
        selection: ids of the examples the run covers, in order (after ``limit``).
        seed, limit: how the selection was drawn.
        totals: running totals over the records committed so far.
        records: per-example records (empty when listed without them).
        note: why a run failed or was interrupted.
    """

    id: str
    created: float = Field(default_factory=time.time)
    task: str
    task_version: str = "1"
    split: str = "test"
    solver: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    status: RunStatus = "running"
    selection: list[str] = Field(default_factory=list)
    seed: int = 0
    limit: int | None = None
    totals: Totals = Field(default_factory=Totals)
    records: list[Record] = Field(default_factory=list)
    note: str = ""

    @model_validator(mode="after")
    def _fill_totals(self) -> Run:
        # A Run built from records alone (not from the store) gets its totals from them.
        if self.records and self.totals.n == 0:
            self.totals = Totals().add(self.records)
        return self

    @property
    def kind(self) -> str:
        """The Solver kind (``zero-shot``, ``k-shot`` ...)."""
        return str(self.solver.get("kind", "?"))

    @property
    def label(self) -> str:
        """A short label for tables and plots: solver kind and k where it has one."""
        state = self.solver.get("state", {}) or {}
        k = state.get("k")
        return f"{self.kind}" + (f" k={k}" if k else "")

    @property
    def n(self) -> int:
        """Examples finished."""
        return self.totals.n

    @property
    def accuracy(self) -> float:
        """Mean score over finished examples (errors count as 0)."""
        return self.totals.score / self.totals.n if self.totals.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of :attr:`accuracy`."""
        return wilson(self.totals.score, self.totals.n)

    @property
    def per_skill(self) -> list[SkillStat]:
        """Per-skill accuracy with Wilson intervals (needs the records)."""
        return skill_stats(self.records)

    @property
    def tokens_per_example(self) -> float:
        """Mean tokens (prompt + completion) per finished example."""
        return self.totals.tokens / self.totals.n if self.totals.n else 0.0

    @property
    def failures(self) -> list[Record]:
        """Records that scored below 1 (errors first)."""
        bad = [r for r in self.records if r.score < 1.0]
        return sorted(bad, key=lambda r: (r.error is None, r.index))
