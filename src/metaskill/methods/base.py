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

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from metaskill.core.guard import check_examples, guard_fit
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
    #: ``inference`` (prompts, demos, refinement) or ``parametric`` (trains the weights);
    #: a chain trains first, then adapts the prompting of the trained model.
    stage: ClassVar[str] = "inference"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each subclass's own ``fit`` in the no-test-data guard."""
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = _guarded(cls.__dict__["fit"])  # type: ignore[method-assign]

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config
        self.report = FitReport()

    @abstractmethod
    def fit(
        self, solver: Any, task: Any, train: list[Example], dev: list[Example] | None = None
    ) -> Any:
        """Return a new, adapted Solver built from ``solver`` and ``train`` (select on dev)."""


def _guarded(fit: Callable[..., Any]) -> Callable[..., Any]:
    """``fit`` run inside :func:`~metaskill.core.guard.guard_fit` with the task's test split.

    While it runs, a test Example reaching the LM, a Verifier or the harness raises
    :class:`~metaskill.core.guard.TestDataLeakError`. Inputs that also occur in another split
    (duplicates across splits) are not treated as test inputs.
    """

    @functools.wraps(fit)
    def wrapper(self: Method, solver: Any, task: Any, train: list[Example],
                dev: list[Example] | None = None, *args: Any, **kwargs: Any) -> Any:
        splits = getattr(task, "splits", None) or {}
        test = splits.get("test") or []
        others = [e for name, xs in splits.items() if name != "test" for e in xs]
        render = getattr(task, "render", None)
        with guard_fit(self.name, test, others, render):
            check_examples([*train, *(dev or [])], where=f"the train/dev given to {self.name}")
            return fit(self, solver, task, train, dev, *args, **kwargs)

    return wrapper
