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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from metaskill.core.errors import MethodError
from metaskill.core.guard import check_examples, guard_fit
from metaskill.core.types import Example, Usage

if TYPE_CHECKING:
    from metaskill.eval.solver import Solver
    from metaskill.tasks.base import Task


class MethodConfig(BaseModel):
    """Base of every method's config: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodResources:
    """Things methods need besides data, passed explicitly (never through globals).

    Attributes:
        embedder: a ready embedder (``encode(texts)``); None loads ``embedder_spec``.
        embedder_spec: spec for :func:`metaskill.skills.embed.load_embedder`.
        skillbook: a SkillBook, for skill-based methods (skill_demos, adaptmi).
        teacher: a stronger LM for teacher/critic roles, where a method has one.
        profile: the Missing-Skill Profile of the Solver being adapted (STAT).
        progress: show progress bars on stderr during fitting.
        settings: where state lives (``METASKILL_HOME``); None reads the environment.
        work_dir: where parametric methods write adapters and rounds (one sub-folder per
            method and input); None: ``METASKILL_HOME/adapters``.
        trainer: the LoRA trainer of parametric methods (default
            :func:`metaskill.methods.sft.train_for_lm`); tests pass a fake one.
        deadline: a ``time.monotonic()`` value; parametric methods stop training by then
            (the adapter is saved either way).
        log: called with one line per notable step (None: silent).
        executor: where dev scoring runs (None: here; a
            :class:`metaskill.distributed.executor.RayExecutor`: Ray workers); passed to
            :func:`metaskill.methods.demos.run_solver` by the methods that probe many
            candidates (knn_demos, dynaicl) and by the chain's dev check.
        extra: anything else a method documents that it reads.
    """

    embedder: Any = None
    embedder_spec: str = "minilm"
    skillbook: Any = None
    teacher: Any = None
    profile: Any = None
    progress: bool = False
    settings: Any = None
    work_dir: Path | None = None
    trainer: Callable[..., Any] | None = None
    deadline: float | None = None
    log: Callable[[str], None] | None = None
    executor: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get_embedder(self) -> Any:
        """The embedder, loaded once from ``embedder_spec`` if none was given."""
        if self.embedder is None:
            from metaskill.skills.embed import load_embedder

            self.embedder = load_embedder(self.embedder_spec)
        return self.embedder

    def say(self, line: str) -> None:
        """Report one line of progress (to :attr:`log`, if set)."""
        if self.log is not None:
            self.log(line)

    def past_deadline(self) -> bool:
        """Whether :attr:`deadline` has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def work_dir_for(self, method: str, key: Any) -> Path:
        """A folder for ``method``'s artefacts, named by a hash of ``key`` (its inputs).

        Example:
            >>> MethodResources(work_dir=Path("/tmp/w")).work_dir_for("sft", {"a": 1}).parent
            PosixPath('/tmp/w')
        """
        from metaskill.core.hashing import stable_hash

        if self.work_dir is not None:
            root = Path(self.work_dir)
        else:
            from metaskill.core.settings import Settings

            root = (self.settings or Settings.from_env()).home / "adapters"
        return root / f"{method}-{stable_hash(key)[:10]}"


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
                 resources: MethodResources | None = None) -> None:
        """The preamble every method shares.

        Args:
            config: the method's config (an instance of its ``Config``); None: the defaults.
            resources: embedder, SkillBook, teacher ... (a :class:`MethodResources`);
                None: an empty one (an embedder is then loaded on first use).

        ``report`` starts empty, and every ``fit`` starts a new one (see ``_guarded``).
        """
        cls = type(self).Config
        self.config = config if config is not None or cls is None else cls()
        self.resources = resources if resources is not None else MethodResources()
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


def split_dev(train: list[Example], dev: list[Example] | None,
              size: int | None) -> tuple[list[Example], list[Example], str]:
    """``(train, dev, note)``: the given dev, or one carved from the end of train.

    Example:
        >>> xs = [Example(id=str(i), input=str(i)) for i in range(10)]
        >>> t, d, note = split_dev(xs, None, 3)
        >>> len(t), len(d), note
        (7, 3, 'no dev examples were given: the last 3 of 10 training examples became dev')
    """
    if dev:
        return list(train), list(dev), f"the {len(dev)} dev examples given"
    n = max(1, size or 0, len(train) // 5)
    if len(train) < n + 1:
        raise MethodError(f"{len(train)} training examples are too few to carve a dev "
                            "set from; give dev examples.")
    note = (f"no dev examples were given: the last {n} of {len(train)} training examples "
            "became dev")
    return list(train[:-n]), list(train[-n:]), note
