"""Solver: an LM plus how to use it. Its state is plain JSON with a schema version.

Every Solver answers a batch of examples of a task with :meth:`Solver.solve`, returning
one :class:`Attempt` per example. ``to_json`` / :func:`load_solver` round-trip its state
without the code that built it (only the registered ``kind`` name is needed).

Example:
    >>> from metaskill.lm.fake import ScriptedLM
    >>> s = ZeroShot(lm=ScriptedLM(default="positive"))   # doctest: +SKIP
    >>> s.to_json()["kind"]                               # doctest: +SKIP
    'zero-shot'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from metaskill.core.types import Example, Usage

SCHEMA_VERSION = 1


class Attempt(BaseModel):
    """What a Solver did for one example."""

    example_id: str
    prompt: str = ""
    output: str = ""
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Solver(ABC):
    """An LM plus how to use it.

    Subclasses set ``kind`` (registered in ``metaskill.eval.solvers.SOLVERS``), hold
    their learned state as plain attributes, and implement :meth:`solve`,
    :meth:`state` and :meth:`from_state`.
    """

    kind: ClassVar[str] = "solver"

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    @abstractmethod
    def solve(self, task: Any, examples: list[Example]) -> list[Attempt]:
        """Answer a batch of examples of ``task``; one Attempt per example, in order."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The learned state as JSON-able data (without the LM)."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> Solver:
        """Rebuild a Solver from :meth:`state`'s output and an LM."""

    def with_lm(self, lm: Any) -> Solver:
        """The same Solver (same state) on another LM, e.g. the model plus an adapter."""
        return type(self).from_state(self.state(), lm)

    def to_json(self) -> dict[str, Any]:
        """Schema-versioned JSON: kind, model spec and state."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "model": getattr(self.lm, "spec", None),
            "state": self.state(),
        }


def answer_max_tokens(task: Any, configured: int | None = None) -> int:
    """The generation budget of an answer to ``task``.

    ``configured`` when given; else the task's ``metadata['max_tokens']``; else 16 for
    classification and multiple choice and 256 for generative tasks.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> answer_max_tokens(NS(kind="generative", metadata={"max_tokens": 48}))
        48
        >>> answer_max_tokens(NS(kind="classification", metadata={}), None)
        16
    """
    if configured:
        return configured
    hint = (getattr(task, "metadata", None) or {}).get("max_tokens")
    if hint:
        return int(hint)
    short = getattr(task, "kind", "generative") in ("classification", "multiple_choice")
    return 16 if short else 256
