"""multi_critique: critics -> meta-critic -> one refinement; retries and counted fallbacks."""

from __future__ import annotations

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import build_method, fit_chain
from metaskill.methods.multi_critique import (
    Critic,
    MultiCritiqueSolver,
    fallback_counts,
)
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier

QS = [Example(id="fr", input="capital of France", answer="Paris"),
      Example(id="pe", input="capital of Peru", answer="Lima"),
      Example(id="td", input="capital of Chad", answer="N'Djamena"),
      Example(id="ml", input="capital of Mali", answer="Bamako")]


def task() -> Task:
    return Task(name="caps", splits={"dev": QS}, template="Q: {input}\nA:", kind="generative",
                verifier=ExactVerifier())


def model(prompt: str, request) -> str:
    """France right; Peru wrong and fixed; Chad: critics never parse; Mali: meta never parses."""
    if "A reviewer said" in prompt:
        return "Final answer: Lima" if "Peru" in prompt else "Bamako"
    if "meta-critic" in prompt:
        if "Mali" in prompt:
            return "whatever"
        verdict = "incorrect" if "Peru" in prompt else "correct"
        return f"VERDICT: {verdict}\nCRITIQUE: merged: the capital is Lima."
    if "You are a critic" in prompt:
        if "Chad" in prompt:
            return "hmm"
        if "Peru" in prompt:
            return "VERDICT: incorrect\nCRITIQUE: Cusco was the Inca capital; today it is Lima."
        return "VERDICT: correct\nCRITIQUE: fine."
    for q, a in (("France", "Paris"), ("Peru", "Cusco"), ("Chad", "Ndjamena"),
                 ("Mali", "Timbuktu")):
        if q in prompt:
            return a
    return "?"


def test_critique_aggregate_refine_and_fallbacks() -> None:
    lm = ScriptedLM(model)
    s = MultiCritiqueSolver(lm, ZeroShot(lm))
    fr, pe, td, ml = s.solve(task(), QS)
    assert fr.output == "Paris" and not fr.meta["refined"] and fr.meta["fallback"] is None
    assert fr.meta["lm_calls"] == 1 + 3 + 1  # answer, three critics, meta-critic
    assert pe.output == "Lima" and pe.meta["refined"] and pe.meta["aggregate"][0] == "incorrect"
    assert len(pe.meta["critiques"]) == 3 and pe.meta["first_output"] == "Cusco"
    assert pe.meta["lm_calls"] == 1 + 3 + 1 + 1
    # every critic unparseable: each retried once, then the unadapted answer
    assert td.output == "Ndjamena" and td.meta["fallback"] == "critics_unparseable"
    assert td.meta["critics_dropped"] == 3 and td.meta["lm_calls"] == 1 + 3 * 2
    # meta-critic unparseable: retried once, then the unadapted answer
    assert ml.output == "Timbuktu" and ml.meta["fallback"] == "meta_critic_unparseable"
    assert ml.meta["lm_calls"] == 1 + 3 + 2
    assert fallback_counts([fr, pe, td, ml]) == {"critics_unparseable": 1,
                                                 "meta_critic_unparseable": 1}
    retries = [p for p in lm.calls if p.rstrip().endswith("CRITIQUE: <text>\nassistant:")]
    assert len(retries) == 3 + 1


def test_critics_with_other_models_and_meta_critic_teacher() -> None:
    strict = ScriptedLM(lambda p, r: "VERDICT: incorrect\nCRITIQUE: wrong city")
    lm = ScriptedLM(model)
    teacher = ScriptedLM(lambda p, r: "VERDICT: incorrect\nCRITIQUE: use Lima")
    critics = [Critic(name="a", focus="Check it."), Critic(name="b", focus="Check again.",
                                                           model="strict")]
    s = MultiCritiqueSolver(lm, ZeroShot(lm), critics, meta_critic=teacher,
                            critic_lms={"strict": strict})
    a = s.solve(task(), QS[:1])[0]
    assert [c[1] for c in a.meta["critiques"]] == ["correct", "incorrect"]
    assert a.meta["aggregate"] == ("incorrect", "use Lima") and a.meta["refined"]
    assert len(teacher.calls) == 1 and len(strict.calls) == 1


def test_fit_report_round_trip_and_bad_options() -> None:
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), task(), [], QS, ["multi_critique"])
    notes = result.reports[0].notes
    assert notes["inner_dev_accuracy"] == 0.25 and notes["dev_accuracy"] == 0.5
    assert notes["refined"] == 1 and sum(notes["fallbacks"].values()) == 2
    again = load_solver(result.solver.to_json(), lm=lm)
    assert isinstance(again, MultiCritiqueSolver) and len(again.critics) == 3
    assert [a.output for a in again.solve(task(), QS)] == ["Paris", "Lima", "Ndjamena",
                                                           "Timbuktu"]
    with pytest.raises(MethodError, match="multi_critique: bad option 'critics'"):
        build_method("multi_critique", {"critics": [{"name": "solo", "focus": "x"}]})
    with pytest.raises(MethodError, match="at least two critics"):
        MultiCritiqueSolver(lm, ZeroShot(lm), [Critic(name="a", focus="x")])
