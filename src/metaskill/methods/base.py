"""Method: turns data into a better Solver, ``fit(solver, train, dev) -> Solver``.

After DSPy's ``Teleprompter.compile(student, trainset=..., valset=...)``: one verb, and it
returns a NEW Solver (the input Solver is never mutated). Each method has one typed config
(a pydantic model, every field documented, validated early) and lives in its own file under
``metaskill/methods/``, readable top to bottom like its paper's algorithm box.

Example:
    >>> class Identity(Method):
    ...     name = "identity"
    ...     def fit(self, solver, task, train, dev=None):
    ...         return solver
    >>> Identity().name
    'identity'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from metaskill.core.types import Example, Usage


class MethodConfig(BaseModel):
    """Base of every method's config: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class FitReport(BaseModel):
    """What fitting cost and found: compile-time usage, LM calls, notes for the report."""

    usage: Usage = Usage()
    lm_calls: int = 0
    notes: dict[str, Any] = {}


class Method(ABC):
    """Something that turns data into a better Solver."""

    name: ClassVar[str] = "method"

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config
        self.report = FitReport()

    @abstractmethod
    def fit(
        self, solver: Any, task: Any, train: list[Example], dev: list[Example] | None = None
    ) -> Any:
        """Return a new, adapted Solver built from ``solver`` and ``train`` (select on dev)."""
