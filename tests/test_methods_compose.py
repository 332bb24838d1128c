"""Composition: method chains, shared options, no mutation, full-chain JSON round trips."""

from __future__ import annotations

import itertools

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import MethodResources, adapt, build_method, fit_chain
from metaskill.methods.demos import DemoSolver
from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import LabelVerifier

GOOD = ["great", "lovely", "wonderful"]
BAD = ["awful", "boring", "dull"]
NOUNS = ["film", "plot", "cast", "music", "ending"]


def toy_task(skills: bool = False) -> Task:
    rows = []
    for i, (adj, noun) in enumerate(itertools.product(GOOD + BAD, NOUNS)):
        label = "positive" if adj in GOOD else "negative"
        rows.append(Example(id=f"x{i}", input=f"{adj} {noun}", answer=label,
                            skills=[f"judging the {noun}"] if skills else []))
    return Task(name="toy", splits={"train": rows[::2], "dev": rows[1::2]},
                template="Review: {input}\nSentiment:", labels=["negative", "positive"],
                kind="classification", verifier=LabelVerifier(labels=["negative", "positive"]))


def model(prompt: str, request) -> str:
    """Answers with the label of the demo right before the question; critiques say CORRECT."""
    if "Proposed answer" in prompt:
        return "Fine.\nVERDICT: CORRECT"
    labels = [(prompt.rfind(f"assistant: {w}"), w) for w in ("positive", "negative")]
    pos, label = max(labels)
    return label if pos >= 0 else "positive"


def resources() -> MethodResources:
    return MethodResources(embedder=HashEmbedder(dim=128))


def test_chain_of_three_round_trips_and_does_not_mutate() -> None:
    task = toy_task()
    lm = ScriptedLM(model)
    start = ZeroShot(lm)
    before = start.to_json()
    result = fit_chain(start, task, task.splits["train"], task.splits["dev"],
                       ["knn_demos", ("self_consistency", {"n": 3}), "self_refine"],
                       options={"k": 2, "seed": 1}, resources=resources())
    assert start.to_json() == before
    assert result.methods == ["knn_demos", "self_consistency", "self_refine"]
    solver = result.solver
    assert solver.kind == "self_refine" and solver.inner.kind == "self_consistency"
    assert solver.inner.inner.kind == "demos" and solver.inner.inner.k == 2
    assert solver.inner.seed == 1  # the shared seed reached the method that has one
    assert all(r.lm_calls > 0 for r in result.reports)
    data = solver.to_json()
    again = load_solver(data, lm=lm)
    assert again.to_json() == data
    a1 = solver.solve(task, task.splits["dev"][:4])
    a2 = again.solve(task, task.splits["dev"][:4])
    assert [a.output for a in a1] == [a.output for a in a2]
    assert [a.prompt for a in a1] == [a.prompt for a in a2]


def test_adapt_returns_solver_and_keeps_earlier_demo_solver_intact() -> None:
    task = toy_task()
    lm = ScriptedLM(model)
    first = adapt(ZeroShot(lm), task, task.splits["train"], task.splits["dev"], ["knn_demos"],
                  resources=resources(), options={"k": 4})
    second = adapt(first, task, task.splits["train"], task.splits["dev"],
                   [KnnDemos(KnnDemosConfig(k=1), resources=resources())])
    assert isinstance(second, DemoSolver) and second is not first
    assert first.k == 4 and second.k == 1


def test_budget_reaches_dynaicl_only() -> None:
    task = toy_task()
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), task, task.splits["train"], task.splits["dev"],
                       ["knn_demos", ("dynaicl", {"ks": [0, 1, 2]})], budget_tokens=25,
                       options={"k": 2}, resources=resources())
    assert result.solver.kind == "dynaicl" and result.solver.budget_tokens == 25
    # dynaicl inherited knn_demos's selector
    assert result.solver.selector.kind == "knn"


def test_dynaicl_over_skill_demos() -> None:
    task = toy_task(skills=True)
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), task, task.splits["train"], task.splits["dev"],
                       ["skill_demos", ("dynaicl", {"ks": [0, 2], "selector": "skill"})],
                       options={"k": 2}, resources=resources())
    solver = result.solver
    assert solver.kind == "dynaicl" and solver.selector.kind == "skill"
    again = load_solver(solver.to_json(), lm=lm)
    assert again.selector.kind == "skill"
    dev = task.splits["dev"][:5]
    assert again.ks_for(task, dev) == solver.ks_for(task, dev)


def test_bad_chains() -> None:
    task = toy_task()
    lm = ScriptedLM(model)
    with pytest.raises(MethodError, match="adapt: name at least one method"):
        fit_chain(ZeroShot(lm), task, [], [], [])
    with pytest.raises(MethodError, match="self_refine: bad option 'n'"):
        build_method("self_refine", {"n": 3})
    with pytest.raises(MethodError, match="self_consistency: cannot sample"):
        fit_chain(ZeroShot(lm), task, task.splits["train"], None,
                  ["self_refine", "self_consistency"])


def confused_by_demos(prompt: str, request) -> str:
    """Right on its own; any demo in the prompt makes it answer the opposite label."""
    reviews = prompt.split("Review:")
    label = "positive" if reviews[-1].split()[0] in GOOD else "negative"
    if len(reviews) > 2:
        return "negative" if label == "positive" else "positive"
    return label


def test_keep_best_returns_the_given_solver_when_the_method_makes_it_worse() -> None:
    task = toy_task()
    lm = ScriptedLM(confused_by_demos)
    start = ZeroShot(lm)
    dev = task.splits["dev"]
    kept = fit_chain(start, task, task.splits["train"], dev, ["knn_demos"],
                     options={"k": 2}, resources=resources(), keep_best=True)
    check = kept.check
    assert check is not None and check.n_dev == len(dev)
    assert check.given_accuracy == 1.0 and check.adapted_accuracy == 0.0
    assert check.verdict == "worse" and check.gain_high < 0 and not check.beats
    assert check.returned == "given" and kept.solver is start
    assert isinstance(kept.adapted, DemoSolver)  # the chain's output stays at hand
    assert check.given_report.lm_calls == len(dev) == check.adapted_report.lm_calls
    line = check.summary("knn_demos")
    assert line.startswith("warning: knn_demos does not beat the Solver it was given "
                           "(zero-shot)")
    assert "100.0%" in line and "below zero" in line and "returned the given Solver" in line
    assert len(line.splitlines()) == 1

    # without keep_best the check still warns, and the adapted Solver is returned
    plain = fit_chain(start, task, task.splits["train"], dev, ["knn_demos"],
                      options={"k": 2}, resources=resources(), check_input=True)
    assert plain.check.verdict == "worse" and plain.check.returned == "adapted"
    assert plain.solver is plain.adapted and isinstance(plain.solver, DemoSolver)
    assert "keep-best would return the given one" in plain.check.summary("knn_demos")

    # no check unless asked for (no extra LM calls for existing callers)
    assert fit_chain(start, task, task.splits["train"], dev, ["knn_demos"],
                     options={"k": 2}, resources=resources()).check is None


def test_keep_best_returns_the_adapted_solver_when_it_is_better() -> None:
    task = toy_task()
    lm = ScriptedLM(model)  # zero-shot always says "positive"; with demos it copies the nearest
    start = ZeroShot(lm)
    result = fit_chain(start, task, task.splits["train"], task.splits["dev"], ["knn_demos"],
                       options={"k": 2}, resources=resources(), keep_best=True)
    check = result.check
    dev = task.splits["dev"]
    assert check.given_accuracy == sum(e.answer == "positive" for e in dev) / len(dev)
    assert check.adapted_accuracy > 0.8
    assert check.verdict == "better" and check.gain_low > 0 and check.beats
    assert check.returned == "adapted" and result.solver is result.adapted
    assert isinstance(result.solver, DemoSolver)
    assert check.summary("knn_demos").startswith("knn_demos beats the Solver it was given")


def test_a_tie_is_not_a_win_and_no_dev_means_no_check() -> None:
    task = toy_task()
    lm = ScriptedLM(default="positive")  # the same answers with or without demos
    start = ZeroShot(lm)
    result = fit_chain(start, task, task.splits["train"], task.splits["dev"], ["knn_demos"],
                       options={"k": 2}, resources=resources(), keep_best=True)
    assert result.check.gain == 0.0 and result.check.verdict == "within_noise"
    assert result.solver is start and "holds zero" in result.check.summary("knn_demos")
    none = fit_chain(start, task, task.splits["train"], [], ["knn_demos"],
                     options={"k": 2}, resources=resources(), keep_best=True)
    assert none.check is None and none.solver is none.adapted
