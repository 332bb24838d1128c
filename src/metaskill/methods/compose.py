"""Composing methods: apply a chain of methods in order, each adapting the previous Solver.

``adapt(solver, task, train, dev, methods=["knn_demos", "self_refine"])`` fits
``knn_demos`` on the base Solver, then ``self_refine`` on the result, and returns the last
Solver. Every method gets the same train and dev examples and the same
:class:`MethodResources` (embedder, SkillBook, teacher LM); shared options such as ``k``,
``seed`` and ``budget_tokens`` reach every method whose config has that field.
"Dynaicl over skill_demos" is ``["skill_demos", "dynaicl"]``: dynaicl keeps the incoming
DemoSolver's selector and only decides how many demos each input gets.

``check_input=True`` also scores the Solver the chain was given on the same dev examples as
the adapted one (:func:`compare_with_input`); ``keep_best=True`` returns the given Solver
when the adapted one does not beat it (a paired-bootstrap 95% interval of the dev gain that
is not wholly above zero), so adapting never hands back something worse than it was given.

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
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.stats import paired_gain
from metaskill.methods import METHODS
from metaskill.methods.base import FitReport, Method, MethodConfig, MethodResources

CheckVerdict = Literal["better", "within_noise", "worse"]


class InputCheck(BaseModel):
    """The adapted Solver against the Solver the chain was given, on the same dev examples.

    Attributes:
        n_dev: dev examples both Solvers were scored on.
        given_kind: the given Solver's kind (``zero-shot`` ...).
        adapted_kind: the adapted Solver's kind.
        given_accuracy: the given Solver's dev accuracy.
        adapted_accuracy: the adapted Solver's dev accuracy (scored again here, on all of
            ``dev``; a method's own ``dev_accuracy`` may come from a subset).
        gain: ``adapted_accuracy - given_accuracy``.
        gain_low: low end of the gain's paired-bootstrap 95% interval.
        gain_high: high end of that interval.
        verdict: ``better`` (the whole interval above 0), ``worse`` (wholly below 0) or
            ``within_noise`` (the interval holds 0).
        returned: which Solver the chain returned, ``adapted`` or ``given``.
        given_report: the cost of scoring the given Solver on dev.
        adapted_report: the cost of scoring the adapted Solver on dev.
    """

    n_dev: int
    given_kind: str
    adapted_kind: str
    given_accuracy: float
    adapted_accuracy: float
    gain: float
    gain_low: float
    gain_high: float
    verdict: CheckVerdict
    returned: Literal["adapted", "given"]
    given_report: FitReport = FitReport()
    adapted_report: FitReport = FitReport()

    @property
    def beats(self) -> bool:
        """Whether the adapted Solver beats the given one beyond the interval."""
        return self.verdict == "better"

    def summary(self, chain: str) -> str:
        """One line for a person: both dev scores, the interval, and what was returned.

        Example:
            >>> c = InputCheck(n_dev=60, given_kind="zero-shot", adapted_kind="demos",
            ...                given_accuracy=0.367, adapted_accuracy=0.25, gain=-0.117,
            ...                gain_low=-0.2, gain_high=-0.033, verdict="worse",
            ...                returned="given")
            >>> print(c.summary("knn_demos"))  # doctest: +NORMALIZE_WHITESPACE
            warning: knn_demos does not beat the Solver it was given (zero-shot) on 60 dev
            examples: 25.0% vs 36.7%, -11.7 points (paired-bootstrap 95% CI -20.0 to -3.3,
            below zero); returned the given Solver (keep-best).
        """
        scores = (f"{100 * self.adapted_accuracy:.1f}% vs {100 * self.given_accuracy:.1f}%, "
                  f"{100 * self.gain:+.1f} points (paired-bootstrap 95% CI "
                  f"{100 * self.gain_low:+.1f} to {100 * self.gain_high:+.1f}")
        if self.beats:
            return (f"{chain} beats the Solver it was given ({self.given_kind}) on "
                    f"{self.n_dev} dev examples: {scores}).")
        where = "below zero" if self.verdict == "worse" else "holds zero"
        what = ("returned the given Solver (keep-best)" if self.returned == "given" else
                "returned the adapted Solver anyway (keep-best would return the given one)")
        return (f"warning: {chain} does not beat the Solver it was given ({self.given_kind}) "
                f"on {self.n_dev} dev examples: {scores}, {where}); {what}.")


@dataclass
class AdaptResult:
    """The returned Solver, one fit report per method (in order) and the input check.

    Attributes:
        solver: the Solver to use: the chain's output, or with ``keep_best`` the given
            Solver where the chain's output did not beat it.
        reports: one fit report per method, in order.
        methods: the methods' names, in order.
        check: the adapted Solver against the given one on dev (None when not asked
            for, or when there were no dev examples).
        adapted: the chain's output, whichever Solver was returned.
    """

    solver: Any
    reports: list[FitReport]
    methods: list[str]
    check: InputCheck | None = None
    adapted: Any = None


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
    check_input: bool = False,
    keep_best: bool = False,
) -> AdaptResult:
    """Apply ``methods`` in order, each to the Solver the previous one returned.

    Parametric methods (``sft``, ``stat``, ``self_evolve``: they train the weights) run
    before inference-time ones, so every prompt-level choice is made for the trained model.

    Args:
        solver: the starting Solver (not mutated).
        task: the task (its verifier scores dev answers during fitting).
        train: examples to learn from (demo pools, controller training).
        dev: examples to select on (k, fusion weights, budgets); never the test split.
        methods: names, ``(name, options)`` pairs, or ready Method instances.
        budget_tokens: average prompt-token budget per input, for methods that take one.
        options: shared options (``k``, ``seed`` ...) for every method that has the field.
        resources: shared embedder, SkillBook, teacher.
        check_input: also score ``solver`` and the adapted Solver on ``dev`` and compare
            them (:func:`compare_with_input`); the result's ``check`` holds both scores.
        keep_best: return ``solver`` itself when the adapted Solver does not beat it on
            dev (implies ``check_input``).

    Returns:
        An :class:`AdaptResult` with the returned Solver, every method's fit report and,
        when asked for, the check against the given Solver.
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
    built = [item if isinstance(item, Method) else
             build_method(item[0], item[1], resources, shared=shared) if isinstance(item, tuple)
             else build_method(item, None, resources, shared=shared) for item in methods]
    # Parametric methods first (stable): "knn_demos+sft" trains the model, then retrieves
    # demos for the trained model, whatever the order the chain was written in.
    for method in sorted(built, key=lambda m: m.stage != "parametric"):
        current = method.fit(current, task, train, dev)
        reports.append(method.report)
        names.append(method.name)
    result = AdaptResult(solver=current, reports=reports, methods=names, adapted=current)
    if check_input or keep_best:
        result.check = compare_with_input(solver, current, task, dev, keep_best=keep_best,
                                          seed=int(shared.get("seed") or 0),
                                          progress=resources.progress,
                                          executor=resources.executor)
        if result.check is not None and result.check.returned == "given":
            result.solver = solver
    return result


def compare_with_input(
    given: Any,
    adapted: Any,
    task: Any,
    dev: Sequence[Example] | None,
    *,
    keep_best: bool = False,
    seed: int = 0,
    progress: bool = False,
    executor: Any = None,
) -> InputCheck | None:
    """Score the given and the adapted Solver on the same dev examples and compare them.

    The adapted Solver "beats" the given one when the paired-bootstrap 95% interval of its
    dev gain lies wholly above zero; inside the interval or below, it does not, and with
    ``keep_best`` the given Solver is to be returned: it is the cheaper of the two, and its
    dev score, unlike the adapted one's, was not the target of any selection on dev.

    Args:
        given: the Solver the chain was given.
        adapted: the chain's output.
        task: the task (its verifier scores the answers).
        dev: the dev examples (never the test split); None or empty: no check.
        keep_best: mark the given Solver as the one to return when it is not beaten.
        seed: seed of the bootstrap resampling.
        progress: show progress bars.
        executor: where the two dev runs are solved (None: here; e.g. Ray workers).

    Returns:
        The :class:`InputCheck`, or None without dev examples.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> from metaskill.methods.demos import DemoSolver
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class Exact(Verifier):
        ...     def verify(self, output, ex):
        ...         return Verdict(score=float(output.strip() == ex.answer))
        >>> task = Task(name="t", splits={}, verifier=Exact())
        >>> dev = [Example(id=str(i), input=f"q{i}", answer="y") for i in range(8)]
        >>> good = DemoSolver(ScriptedLM(default="y"), None, k=0)
        >>> bad = DemoSolver(ScriptedLM(default="n"), None, k=0)
        >>> check = compare_with_input(good, bad, task, dev, keep_best=True)
        >>> check.verdict, check.returned, check.given_accuracy, check.adapted_accuracy
        ('worse', 'given', 1.0, 0.0)
    """
    from metaskill.methods.demos import run_solver

    examples = list(dev or [])
    if not examples:
        return None
    given_report, adapted_report = FitReport(), FitReport()
    _, before = run_solver(given, task, examples, given_report, progress=progress,
                           label="scoring the given Solver on dev", executor=executor)
    _, after = run_solver(adapted, task, examples, adapted_report, progress=progress,
                          label="scoring the adapted Solver on dev", executor=executor)
    gain, low, high = paired_gain(after, before, seed=seed)
    verdict: CheckVerdict = "better" if low > 0 else ("worse" if high < 0 else "within_noise")
    return InputCheck(
        n_dev=len(examples), given_kind=str(getattr(given, "kind", type(given).__name__)),
        adapted_kind=str(getattr(adapted, "kind", type(adapted).__name__)),
        given_accuracy=sum(before) / len(before), adapted_accuracy=sum(after) / len(after),
        gain=gain, gain_low=low, gain_high=high, verdict=verdict,
        returned="given" if keep_best and verdict != "better" else "adapted",
        given_report=given_report, adapted_report=adapted_report)


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

    A chain may also be joined with ``+``, as ``metaskill run --methods`` writes it.

    Example:
        >>> parse_method_list("knn_demos, self_refine")
        ['knn_demos', 'self_refine']
        >>> parse_method_list("knn_demos+sft")
        ['knn_demos', 'sft']
    """
    names = [t.strip() for t in text.replace("+", ",").split(",") if t.strip()]
    if not names:
        raise MethodError("adapt: --method is empty; name one or more methods, comma-separated.")
    for n in names:
        if n not in METHODS:
            METHODS.get(n)  # raises NotFoundError naming close matches
    return names
