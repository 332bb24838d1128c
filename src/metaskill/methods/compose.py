"""Composing methods: apply a chain of methods in order, each adapting the previous Solver.

``adapt(solver, task, train, dev, methods=["knn_demos", "self_refine"])`` fits
``knn_demos`` on the base Solver, then ``self_refine`` on the result, and returns the last
Solver. Every method gets the same train and dev examples and the same
:class:`MethodResources` (embedder, SkillBook, teacher LM); shared options such as ``k``,
``seed`` and ``budget_tokens`` reach every method whose config has that field.
"Dynaicl over skill_demos" is ``["skill_demos", "dynaicl"]``: dynaicl keeps the incoming
DemoSolver's selector and only decides how many demos each input gets.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.methods.demos import DemoSolver
    >>> from metaskill.tasks.base import Task, Verdict, Verifier
    >>> class Exact(Verifier):
    ...     def verify(self, output, ex):
    ...         return Verdict(score=float(output.strip() == ex.answer), parsed=output.strip())
    >>> data = [Example(id=str(i), input=f"good film {i}", answer="positive") for i in range(6)]
    >>> task = Task(name="t", splits={}, verifier=Exact(), kind="classification",
    ...             labels=["positive", "negative"])
    >>> result = fit_chain(DemoSolver(ScriptedLM(default="positive"), None, k=0), task,
    ...                    data[:4], data[4:], ["knn_demos"], options={"k": 2},
    ...                    resources=MethodResources(embedder_spec="hash:64"))
    >>> result.solver.kind, result.reports[0].notes["dev_accuracy"]
    ('demos', 1.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.methods import METHODS
from metaskill.methods.base import FitReport, Method, MethodConfig


@dataclass
class MethodResources:
    """Things methods need besides data, passed explicitly (never through globals).

    Attributes:
        embedder: a ready embedder (``encode(texts)``); None loads ``embedder_spec``.
        embedder_spec: spec for :func:`metaskill.skills.embed.load_embedder`.
        skillbook: a SkillBook, for skill-based methods (skill_demos, adaptmi).
        teacher: a stronger LM for teacher/critic roles, where a method has one.
        progress: show progress bars on stderr during fitting.
        extra: anything else a method documents that it reads.
    """

    embedder: Any = None
    embedder_spec: str = "minilm"
    skillbook: Any = None
    teacher: Any = None
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def get_embedder(self) -> Any:
        """The embedder, loaded once from ``embedder_spec`` if none was given."""
        if self.embedder is None:
            from metaskill.skills.embed import load_embedder

            self.embedder = load_embedder(self.embedder_spec)
        return self.embedder


@dataclass
class AdaptResult:
    """The adapted Solver and one fit report per method, in order."""

    solver: Any
    reports: list[FitReport]
    methods: list[str]


def config_class(method_cls: type[Method]) -> type[MethodConfig] | None:
    """The config class a method declares as ``Config`` (None if it has none)."""
    cfg = getattr(method_cls, "Config", None)
    return cfg if isinstance(cfg, type) and issubclass(cfg, BaseModel) else None


def build_method(
    name: str,
    options: dict[str, Any] | None = None,
    resources: MethodResources | None = None,
    *,
    shared: dict[str, Any] | None = None,
) -> Method:
    """A method instance from its registered name and options.

    Args:
        name: a name in :data:`metaskill.methods.METHODS`.
        options: config fields for this method (unknown fields are an error).
        resources: embedder, SkillBook, teacher ... handed to the method's constructor
            if it takes a ``resources`` argument.
        shared: options offered to every method (``k``, ``seed``, ``budget_tokens``);
            each is applied only where the method's config has that field.

    Raises:
        MethodError: unknown option or invalid value, naming the method and the field.

    Example:
        >>> build_method("knn_demos", {"k": 2}).config.k
        2
    """
    cls = METHODS.get(name)
    cfg_cls = config_class(cls)
    values: dict[str, Any] = {}
    if cfg_cls is not None:
        fields = cfg_cls.model_fields
        values.update({k: v for k, v in (shared or {}).items()
                       if k in fields and v is not None})
        values.update(options or {})
        try:
            config = cfg_cls(**values)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "config"
            raise MethodError(f"{name}: bad option '{loc}': {err['msg']}.") from None
    else:
        if options:
            raise MethodError(f"{name}: takes no options, got {', '.join(options)}.")
        config = None
    params = inspect.signature(cls.__init__).parameters
    if "resources" in params:
        return cls(config, resources=resources or MethodResources())
    return cls(config)


def fit_chain(
    solver: Any,
    task: Any,
    train: list[Example],
    dev: list[Example] | None,
    methods: Sequence[str | tuple[str, dict[str, Any]] | Method],
    *,
    budget_tokens: int | None = None,
    options: dict[str, Any] | None = None,
    resources: MethodResources | None = None,
) -> AdaptResult:
    """Apply ``methods`` in order, each to the Solver the previous one returned.

    Args:
        solver: the starting Solver (not mutated).
        task: the task (its verifier scores dev answers during fitting).
        train: examples to learn from (demo pools, controller training).
        dev: examples to select on (k, fusion weights, budgets); never the test split.
        methods: names, ``(name, options)`` pairs, or ready Method instances.
        budget_tokens: average prompt-token budget per input, for methods that take one.
        options: shared options (``k``, ``seed`` ...) for every method that has the field.
        resources: shared embedder, SkillBook, teacher.

    Returns:
        An :class:`AdaptResult` with the final Solver and every method's fit report.
    """
    if not methods:
        raise MethodError("adapt: name at least one method (see `metaskill methods ls`).")
    resources = resources or MethodResources()
    shared = dict(options or {})
    if budget_tokens is not None:
        shared["budget_tokens"] = budget_tokens
    reports: list[FitReport] = []
    names: list[str] = []
    current = solver
    for item in methods:
        if isinstance(item, Method):
            method = item
        elif isinstance(item, tuple):
            method = build_method(item[0], item[1], resources, shared=shared)
        else:
            method = build_method(item, None, resources, shared=shared)
        current = method.fit(current, task, train, dev)
        reports.append(method.report)
        names.append(method.name)
    return AdaptResult(solver=current, reports=reports, methods=names)


def adapt(
    solver: Any,
    task: Any,
    train: list[Example],
    dev: list[Example] | None,
    methods: Sequence[str | tuple[str, dict[str, Any]] | Method],
    budget_tokens: int | None = None,
    **kwargs: Any,
) -> Any:
    """Apply ``methods`` in order and return the final Solver (see :func:`fit_chain`)."""
    return fit_chain(solver, task, train, dev, methods, budget_tokens=budget_tokens,
                     **kwargs).solver


def parse_method_list(text: str) -> list[str]:
    """``"knn_demos,self_refine"`` -> ``["knn_demos", "self_refine"]``, checked by name.

    Example:
        >>> parse_method_list("knn_demos, self_refine")
        ['knn_demos', 'self_refine']
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise MethodError("adapt: --method is empty; name one or more methods, comma-separated.")
    for n in names:
        if n not in METHODS:
            METHODS.get(n)  # raises NotFoundError naming close matches
    return names
