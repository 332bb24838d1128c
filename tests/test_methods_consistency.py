"""self_consistency: voting, normalisation through the verifier, wrapping, JSON."""

from __future__ import annotations

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import KShot, LikelihoodClassifier, ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import build_method
from metaskill.methods.demos import DemoSolver
from metaskill.methods.self_consistency import (
    SelfConsistency,
    SelfConsistencyConfig,
    SelfConsistencySolver,
    vote,
)
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import LabelVerifier


def task() -> Task:
    dev = [Example(id=f"d{i}", input=f"review {i}", answer="positive") for i in range(4)]
    return Task(name="toy", splits={"train": dev, "dev": dev},
                template="Review: {input}\nSentiment:",
                labels=["negative", "positive"], kind="classification",
                verifier=LabelVerifier(labels=["negative", "positive"]))


def noisy(prompt: str, request) -> str:
    """Greedy says 'negative'; samples say 'Positive!' for 3 of every 5 seeds."""
    if request.temperature == 0:
        return "negative"
    return "Positive!" if request.seed % 5 in (0, 2, 4) else "negative, I think"


def test_vote_majority_ties_and_empty() -> None:
    assert vote(["a", "b", "b"])[0] == "b"
    assert vote(["a", "b"])[0] == "a"  # tie: first seen
    assert vote(["", "", "x"])[0] == "x"  # empty answers don't vote
    raw, agreement, counts = vote([])
    assert raw == "" and agreement == 0.0 and counts == {}


def test_votes_are_normalised_by_the_verifier() -> None:
    t = task()
    lm = ScriptedLM(noisy)
    solver = SelfConsistencySolver(lm, ZeroShot(lm), n=5, temperature=0.8, seed=0)
    atts = solver.solve(t, t.splits["dev"])
    assert all(a.output == "Positive!" for a in atts)
    assert atts[0].meta["votes"] == {"positive": 3, "negative": 2}
    assert atts[0].meta["agreement"] == pytest.approx(0.6)
    assert atts[0].meta["lm_calls"] == 5
    # five separate requests per input, seeds 0..4
    assert len(lm.calls) == 5 * len(t.splits["dev"])


def test_method_reports_inner_and_voted_accuracy_and_round_trips() -> None:
    t = task()
    lm = ScriptedLM(noisy)
    method = SelfConsistency(SelfConsistencyConfig(n=5, temperature=0.8))
    wrapped = method.fit(KShot(lm, k=1, demos=[t.splits["train"][0]]), t, t.splits["train"],
                         t.splits["dev"])
    notes = method.report.notes
    assert notes["inner_dev_accuracy"] == 0.0 and notes["dev_accuracy"] == 1.0
    assert method.report.lm_calls == 4 + 4 * 5
    again = load_solver(wrapped.to_json(), lm=lm)
    assert isinstance(again, SelfConsistencySolver) and again.inner.kind == "k-shot"
    assert [a.output for a in again.solve(t, t.splits["dev"])] == ["Positive!"] * 4


def test_cannot_sample_a_likelihood_solver() -> None:
    t = task()
    lm = ScriptedLM(noisy)
    with pytest.raises(MethodError, match="self_consistency"):
        SelfConsistency().fit(LikelihoodClassifier(lm), t, [], None)
    with pytest.raises(MethodError, match=r"self_consistency.*choices"):
        SelfConsistency().fit(DemoSolver(lm, None, k=0, answer_mode="choices"), t, [], None)
    with pytest.raises(MethodError, match="self_consistency: bad option 'temperature'"):
        build_method("self_consistency", {"temperature": 0})
