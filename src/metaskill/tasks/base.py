"""Task and Verifier: the contract every layer above relies on.

A :class:`Task` is a named, versioned set of Examples with splits, a prompt template and a
:class:`Verifier`. A Verifier scores one output against one Example and returns a
:class:`Verdict` (score in [0, 1], a short reason, and the answer it parsed).

Example:
    >>> from metaskill.core.types import Example
    >>> class Exact(Verifier):
    ...     name = "exact"
    ...     def verify(self, output, example):
    ...         ok = output.strip() == (example.answer or "")
    ...         return Verdict(score=float(ok), reason="match" if ok else "mismatch",
    ...                        parsed=output.strip())
    >>> Exact().verify("4", Example(id="1", input="2+2", answer="4")).score
    1.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from metaskill.core.types import Example


class Verdict(BaseModel):
    """A verifier's judgement of one output."""

    score: float = Field(ge=0.0, le=1.0)
    reason: str = ""
    parsed: str | None = None


class Verifier(ABC):
    """Scores an output against an Example. Subclasses set ``name`` and implement verify."""

    name: ClassVar[str] = "verifier"

    @abstractmethod
    def verify(self, output: str, example: Example) -> Verdict:
        """Judge ``output`` (the model's text) against ``example``'s reference."""

    def verify_batch(self, outputs: list[str], examples: list[Example]) -> list[Verdict]:
        """Judge many outputs; verifiers that batch (an LM judge) override this."""
        return [self.verify(o, e) for o, e in zip(outputs, examples, strict=True)]

    def to_spec(self) -> dict[str, Any]:
        """A JSON-able description from which the verifier can be rebuilt."""
        return {"name": self.name}
