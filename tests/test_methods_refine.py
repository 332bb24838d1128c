"""self_refine: early stop, refinement, unparseable feedback -> retry -> counted fallback.

Critiques are constrained JSON on a schema backend (ScriptedLM, llama.cpp) and free text
with a VERDICT line elsewhere (a ScriptedLM with no ``constraints``); both paths are tested.
"""

from __future__ import annotations

import json

import pytest

from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import fit_chain
from metaskill.methods.self_refine import SelfRefine, SelfRefineConfig, SelfRefineSolver
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier


def task() -> Task:
    dev = [Example(id="a", input="capital of France", answer="Paris"),
           Example(id="b", input="capital of Peru", answer="Lima"),
           Example(id="c", input="capital of Chad", answer="N'Djamena")]
    return Task(name="caps", splits={"train": dev, "dev": dev}, template="Q: {input}\nA:",
                kind="generative", verifier=ExactVerifier())


def model(prompt: str, request) -> str:
    """France: right at once. Peru: wrong, fixed after feedback. Chad: feedback never parses.

    Critiques come as JSON when the request carries a schema, else as free text.
    """
    if "Previous answer" in prompt:  # refine step
        return "Lima"
    if "Proposed answer" in prompt:  # feedback step
        if "France" in prompt or "Lima" in prompt:
            critique, verdict = "Looks right.", "correct"
        elif "Peru" in prompt:
            critique, verdict = "Lima is the capital, not Cusco.", "wrong"
        else:
            return "hmm, maybe"  # neither JSON nor a verdict line, even when asked again
        if request.json_schema is not None:
            return json.dumps({"critique": critique, "verdict": verdict})
        return f"{critique}\nVERDICT: {verdict.upper()}"
    if "France" in prompt:
        return "Paris"
    if "Peru" in prompt:
        return "Cusco"
    return "Ndjamena"


def free_text_lm(script, **kw) -> ScriptedLM:
    """A scripted LM whose backend enforces no schema (the free-text path)."""
    lm = ScriptedLM(script, **kw)
    lm.constraints = frozenset()
    return lm


@pytest.mark.parametrize("structured", [True, False])
def test_rounds_early_stop_and_fallback_counting(structured: bool) -> None:
    t = task()
    lm = ScriptedLM(model) if structured else free_text_lm(model)
    solver = SelfRefineSolver(lm, ZeroShot(lm), rounds=3)
    assert solver.structured is structured
    a, b, c = solver.solve(t, t.splits["dev"])
    assert a.output == "Paris" and a.meta["stopped"] == "self-check passed"
    assert a.meta["lm_calls"] == 2  # answer + one critique
    assert b.output == "Lima" and b.meta["refined"] and len(b.meta["rounds"]) == 2
    assert b.meta["rounds"][0]["verdict"] == "wrong" and b.meta["rounds"][1]["verdict"] == "correct"
    assert c.meta["fallback"] and c.output == "Ndjamena"
    assert c.meta["stopped"] == "unparseable feedback"
    assert c.meta["lm_calls"] == 3  # answer + critique + one retry, then fallback
    reminders = [p for p in lm.calls if "End your reply with the line" in p]
    # JSON: LM.complete asks again by itself (same prompt); free text: one reminder
    assert len(reminders) == (0 if structured else 1)
    asked_json = [p for p in lm.calls if "Reply with JSON" in p]
    assert len(asked_json) == (5 if structured else 0)  # France, Peru x2, Chad x2


def test_json_critique_is_used_and_a_broken_one_is_a_recorded_fallback() -> None:
    t = task()
    lm = ScriptedLM(model)
    b, c = SelfRefineSolver(lm, ZeroShot(lm), rounds=1).solve(t, t.splits["dev"][1:])
    assert b.meta["rounds"][0]["feedback"] == "Lima is the capital, not Cusco."
    assert b.meta["rounds"][0]["verdict"] == "wrong" and b.output == "Lima"
    refine_prompt = next(p for p in lm.calls if "Previous answer" in p)
    assert "Feedback on the previous answer:\nLima is the capital, not Cusco." in refine_prompt
    assert c.meta["fallback"] and c.meta["rounds"][0]["feedback"] == "hmm, maybe"


def test_method_report_and_round_trip() -> None:
    t = task()
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), t, t.splits["train"], t.splits["dev"],
                       [("self_refine", {"rounds": 2})])
    notes = result.reports[0].notes
    assert notes["inner_dev_accuracy"] == 1 / 3 and notes["dev_accuracy"] == 2 / 3
    assert notes["fallbacks"] == 1 and notes["changed"] == 1 and notes["early_stops"] == 2
    assert notes["structured"] is True
    assert result.reports[0].lm_calls == 2 + 4 + 3
    again = load_solver(result.solver.to_json(), lm=lm)
    assert isinstance(again, SelfRefineSolver) and again.rounds == 2
    assert [x.output for x in again.solve(t, t.splits["dev"])] == ["Paris", "Lima", "Ndjamena"]


def test_one_round_limit() -> None:
    t = task()
    lm = ScriptedLM(model)
    method = SelfRefine(SelfRefineConfig(rounds=1))
    solver = method.fit(ZeroShot(lm), t, [], None)
    b = solver.solve(t, [t.splits["dev"][1]])[0]
    assert b.output == "Lima" and b.meta["stopped"] == "round limit"


@pytest.mark.parametrize("structured", [True, False])
def test_choose_verdict_replaces_the_retry_and_never_falls_back(structured: bool) -> None:
    t = task()

    def scores(prompt: str, continuation: str) -> float:
        # Chad's critique has no verdict line; of the two lines, WRONG is the likelier
        assert "Critique:\nhmm, maybe" in prompt
        return -1.0 if continuation == "VERDICT: WRONG" else -3.0

    lm = ScriptedLM(model, scores=scores) if structured else free_text_lm(model, scores=scores)
    solver = SelfRefineSolver(lm, ZeroShot(lm), rounds=1, verdict="choose")
    a, b, c = solver.solve(t, t.splits["dev"])
    assert a.output == "Paris" and a.meta["rounds"][0]["verdict_by"] == "critique"
    assert b.output == "Lima" and b.meta["rounds"][0]["verdict_by"] == "critique"
    assert not c.meta["fallback"] and c.meta["rounds"][0]["verdict"] == "wrong"
    assert c.meta["rounds"][0]["verdict_by"] == "choice"
    assert c.output == "Lima" and c.meta["refined"]  # the scripted refine answer
    # answer + critique (+ LM.complete's own retry of a broken JSON reply) + choice + refine
    assert c.meta["lm_calls"] == (5 if structured else 4)
    assert not [p for p in lm.calls if "End your reply with the line" in p]  # no retry
    again = load_solver(solver.to_json(), lm=lm)
    assert isinstance(again, SelfRefineSolver) and again.verdict == "choose"


def test_bad_verdict_mode_is_a_clear_error() -> None:
    import pytest

    from metaskill.core.errors import MethodError

    lm = ScriptedLM(model)
    with pytest.raises(MethodError, match="self_refine: verdict must be one of parse, choose"):
        SelfRefineSolver(lm, ZeroShot(lm), verdict="vote")


@pytest.mark.slow
def test_real_model_critiques_always_parse_on_sst2(local_lm) -> None:
    """SmolLM2-135M wrote a VERDICT line on 0 of 50 sst2 dev inputs as free text; as
    constrained JSON every critique parses (no fallback)."""
    from metaskill.tasks import get_task

    t = get_task("sst2")
    dev = t.splits["dev"][:6]
    solver = SelfRefineSolver(local_lm, ZeroShot(local_lm), rounds=1)
    assert solver.structured
    attempts = solver.solve(t, dev)
    verdicts = [a.meta["rounds"][0]["verdict"] for a in attempts]
    assert all(v in ("correct", "wrong") for v in verdicts), verdicts
    assert sum(bool(a.meta["fallback"]) for a in attempts) == 0


def test_refined_answers_are_held_to_the_labels_on_a_grammar_backend() -> None:
    """A classification task's refine request carries a grammar of the example's choices
    (its labels), so a refined answer cannot be free text; ``refine_choices=False`` and a
    backend without grammars leave the request free."""
    ex = Example(id="r", input="great film", answer="positive")
    t = Task(name="sent", splits={"dev": [ex]}, template="Review: {input}\nSentiment:",
             kind="classification", labels=["positive", "negative"], verifier=ExactVerifier())
    lm = ScriptedLM(default="negative")
    held = SelfRefineSolver(lm, ZeroShot(lm)).refine_request(t, ex, "negative", "wrong")
    assert held.grammar is not None and '"positive"' in held.grammar
    assert '"negative"' in held.grammar
    free = SelfRefineSolver(lm, ZeroShot(lm), refine_choices=False)
    assert free.refine_request(t, ex, "negative", "wrong").grammar is None
    assert SelfRefineSolver(free_text_lm(None), ZeroShot(lm)).refine_request(
        t, ex, "negative", "wrong").grammar is None
    gen = task()
    assert SelfRefineSolver(lm, ZeroShot(lm)).refine_request(
        gen, gen.splits["dev"][0], "Paris", "ok").grammar is None
    again = load_solver(SelfRefineSolver(lm, ZeroShot(lm)).to_json(), lm=lm)
    assert again.refine_choices is True
