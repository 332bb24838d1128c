"""self_consistency: sample n answers and return the most common one.

Paper:
    Wang, Wei, Schuurmans, Le, Chi, Narang, Chowdhery, Zhou (2023). "Self-Consistency
    Improves Chain of Thought Reasoning in Language Models" (ICLR 2023).

What we changed: answers are compared after normalising them through the task's
verifier (its ``parse``, or the ``parsed`` field of a verdict against the example with
its reference removed -- the reference is never read), so "Positive." and "positive"
vote together; ties go to the answer seen first. Besides the method, the module exports
the pieces other methods reuse: :func:`sample_outputs` (n sampled outputs of any
prompting Solver) and :func:`vote` (majority and agreement), e.g. AdaptMI's
agreement-based difficulty gate.

Algorithm (what :class:`SelfConsistencySolver` does per input):

1. Build the inner Solver's request for the input (its demos, its prompt).
2. Ask for n samples at temperature T (sample i is its own request, seed + i).
3. Normalise each sample's answer; majority vote; output the first sample carrying the
   winning answer. ``meta`` keeps the votes and the agreement (winner's share).

:class:`SelfConsistency` (the Method) wraps the incoming Solver and, given dev examples,
reports the dev accuracy of the inner Solver and of the vote.

Example:
    >>> vote(["Positive", "negative", "positive"], normalise=str.lower)
    ('Positive', 0.6666666666666666, {'positive': 2, 'negative': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Request, Usage
from metaskill.eval.solver import Attempt, Solver
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import DemoSolver, parse_answer, run_solver
from metaskill.tasks.base import Task


def vote(
    answers: Sequence[str], normalise: Callable[[str], str] | None = None
) -> tuple[str, float, dict[str, int]]:
    """Majority vote over answers.

    Args:
        answers: the raw answers.
        normalise: maps an answer to the key answers are compared by (default: strip +
            lower-case). Empty keys do not vote unless every key is empty.

    Returns:
        The first raw answer carrying the winning key, the winner's share of the votes
        (agreement, in [0, 1]), and the vote count per key.
    """
    if not answers:
        return "", 0.0, {}
    norm = normalise or (lambda s: s.strip().lower())
    keys = [norm(a) for a in answers]
    counts = Counter(k for k in keys if k) or Counter(keys)
    best = max(counts.values())
    winner = next(k for k in keys if counts.get(k, 0) == best)  # ties: first seen
    raw = answers[keys.index(winner)]
    return raw, best / len(answers), dict(counts)


def sampling_requests(solver: Any, task: Any, examples: Sequence[Example]) -> list[Request]:
    """The requests a prompting Solver would send for ``examples`` (to resample them).

    Works for :class:`~metaskill.methods.demos.DemoSolver` (and its subclasses) and the
    harness's prompting Solvers (``zero-shot``, ``k-shot``).

    Raises:
        MethodError: the Solver cannot expose its requests (e.g. a likelihood classifier,
            or a wrapper), so its answers cannot be sampled.
    """
    if isinstance(solver, DemoSolver):
        if solver.answer_mode == "choices":
            raise MethodError(
                "self_consistency: the inner Solver picks labels by likelihood "
                "(answer_mode 'choices'), so samples cannot differ; use answer_mode "
                "'generate'."
            )
        return [r for r, _ in solver.build_requests(task, examples)]
    if getattr(solver, "kind", "") == "likelihood":
        raise MethodError(
            "self_consistency: a 'likelihood' Solver ranks labels by likelihood, so samples "
            "cannot differ; start from a generating Solver (zero-shot, k-shot, knn_demos)."
        )
    if hasattr(solver, "request") and hasattr(solver, "extract"):
        return [solver.request(task, e) for e in examples]
    raise MethodError(
        f"self_consistency: cannot sample from a '{getattr(solver, 'kind', type(solver))}' "
        "Solver (it exposes no prompts); apply self_consistency to a prompting Solver "
        "(zero-shot, k-shot, knn_demos, dynaicl ...) before wrappers such as self_refine."
    )


def extract_answer(solver: Any, task: Any, text: str) -> str:
    """The inner Solver's own answer extraction of a raw text."""
    if isinstance(solver, DemoSolver):
        return solver.postprocess(task, text)
    if hasattr(solver, "extract"):
        return str(solver.extract(task, text))
    return text.strip()


def sample_outputs(
    solver: Any,
    task: Any,
    examples: Sequence[Example],
    n: int,
    temperature: float = 0.7,
    seed: int = 0,
) -> tuple[list[list[str]], list[Usage], list[str]]:
    """``n`` sampled answers per example from a prompting Solver.

    Sample ``i`` is its own request (``n=1``, ``seed + i``), so every backend and the
    cache treat samples alike and a scripted LM can vary them by seed.

    Returns:
        Per example: the n extracted answers, the summed usage of its n requests, and
        its prompt.
    """
    requests = sampling_requests(solver, task, examples)
    asked = [r.model_copy(update={"n": 1, "temperature": temperature, "seed": seed + i})
             for r in requests for i in range(n)]
    completions = solver.lm.complete(asked) if asked else []
    answers: list[list[str]] = []
    usages: list[Usage] = []
    for j in range(len(requests)):
        group = completions[j * n : (j + 1) * n]
        answers.append([extract_answer(solver, task, c.text) for c in group])
        total = Usage()
        for c in group:
            total = total + c.usage
        usages.append(total)
    prompts = [solver.lm.prompt_of(r) for r in requests]
    return answers, usages, prompts


class SelfConsistencySolver(Solver):
    """Majority vote over ``n`` sampled answers of an inner prompting Solver.

    Args:
        lm: the LM (shared with the inner Solver).
        inner: the prompting Solver whose requests are sampled.
        n: samples per input (>= 2).
        temperature: sampling temperature (> 0).
        seed: sample i uses ``seed + i``.
    """

    kind: ClassVar[str] = "self_consistency"

    def __init__(self, lm: Any, inner: Solver, n: int = 5, temperature: float = 0.7,
                 seed: int = 0) -> None:
        super().__init__(lm)
        if n < 2:
            raise MethodError(f"self_consistency: n must be >= 2, got {n}.")
        if temperature <= 0:
            raise MethodError("self_consistency: temperature must be > 0 for samples to differ.")
        self.inner = inner
        self.n = n
        self.temperature = temperature
        self.seed = seed

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Sample, normalise, vote. ``meta``: votes, agreement, samples, lm_calls (= n)."""
        answers, usages, prompts = sample_outputs(
            self.inner, task, examples, self.n, self.temperature, self.seed
        )
        out = []
        for ex, outs, usage, prompt in zip(examples, answers, usages, prompts, strict=True):
            winner, agreement, votes = vote(outs, lambda a, ex=ex: parse_answer(task, a, ex))
            out.append(Attempt(
                example_id=ex.id, prompt=prompt, output=winner, usage=usage,
                meta={"votes": votes, "agreement": agreement, "samples": outs,
                      "lm_calls": self.n},
            ))
        return out

    def state(self) -> dict[str, Any]:
        return {"inner": self.inner.to_json(), "n": self.n, "temperature": self.temperature,
                "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> SelfConsistencySolver:
        from metaskill.eval.solvers import load_solver

        inner = load_solver(state["inner"], lm=lm)
        return cls(lm, inner, n=state.get("n", 5), temperature=state.get("temperature", 0.7),
                   seed=state.get("seed", 0))


class SelfConsistencyConfig(MethodConfig):
    """Options of :class:`SelfConsistency`."""

    n: int = Field(5, ge=2, le=64, description="samples per input")
    temperature: float = Field(0.7, gt=0.0, le=2.0, description="sampling temperature")
    seed: int = Field(0, description="sample i uses seed + i")
    max_dev: int | None = Field(
        None, ge=1, description="score at most this many dev examples (cheaper report)"
    )


class SelfConsistency(Method):
    """Majority vote over n sampled answers of the incoming Solver."""

    name: ClassVar[str] = "self_consistency"
    Config: ClassVar[type[MethodConfig]] = SelfConsistencyConfig
    config: SelfConsistencyConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> SelfConsistencySolver:
        """Wrap ``solver``; with dev examples, report inner vs voted dev accuracy."""
        cfg = self.config
        sampling_requests(solver, task, [])  # fail early on a Solver that cannot sample
        wrapped = SelfConsistencySolver(solver.lm, solver, n=cfg.n,
                                        temperature=cfg.temperature, seed=cfg.seed)
        dev_set = list(dev or [])[: cfg.max_dev]
        if dev_set:
            _, base = run_solver(solver, task, dev_set, self.report,
                                 progress=self.resources.progress, label="inner on dev")
            attempts, voted = run_solver(wrapped, task, dev_set, self.report,
                                         progress=self.resources.progress,
                                         label="self_consistency dev")
            self.report.notes.update({
                "inner_dev_accuracy": sum(base) / len(base),
                "dev_accuracy": sum(voted) / len(voted),
                "mean_agreement": sum(a.meta.get("agreement", 0.0) for a in attempts)
                / len(attempts),
            })
        self.report.notes.update({"n": cfg.n, "temperature": cfg.temperature})
        return wrapped
