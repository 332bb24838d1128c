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
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from metaskill.core.guard import check_examples, guard_fit
from metaskill.core.types import Example, Usage

if TYPE_CHECKING:
    from metaskill.eval.solver import Solver
    from metaskill.tasks.base import Task


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

    #: The method's config class; a method built without a config gets its defaults.
    Config: ClassVar[type[MethodConfig] | None] = None

    def __init__(self, config: MethodConfig | None = None, *,
                 resources: Any | None = None) -> None:
        """The preamble every method shares.

        Args:
            config: the method's config (an instance of its ``Config``); None: the defaults.
            resources: embedder, SkillBook, teacher ... (a :class:`MethodResources`);
                None: an empty one (an embedder is then loaded on first use).

        ``report`` starts empty, and every ``fit`` starts a new one (see ``_guarded``).
        """
        cls = type(self).Config
        self.config = config if config is not None or cls is None else cls()
        if resources is None:
            from metaskill.methods.compose import MethodResources

            resources = MethodResources()
        self.resources = resources
        self.report = FitReport()

    @abstractmethod
    def fit(
        self, solver: Solver, task: Task, train: list[Example], dev: list[Example] | None = None
    ) -> Solver:
        """Return a new, adapted Solver built from ``solver`` and ``train`` (select on dev).

        The subclass's ``fit`` runs with a fresh :attr:`report` (cost and notes of this fit)
        inside the no-test-data guard.
        """


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
            self.report = FitReport()  # each fit reports its own cost and findings
            return fit(self, solver, task, train, dev, *args, **kwargs)

    return wrapper
