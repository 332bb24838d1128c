"""self_refine: early stop, refinement, unparseable feedback -> retry -> counted fallback."""

from __future__ import annotations

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
    """France: right at once. Peru: wrong, fixed after feedback. Chad: feedback never parses."""
    if "Previous answer" in prompt:  # refine step
        return "Lima"
    if "Proposed answer" in prompt:  # feedback step
        if "France" in prompt or "Lima" in prompt:
            return "Looks right.\nVERDICT: CORRECT"
        if "Peru" in prompt:
            return "Lima is the capital, not Cusco.\nVERDICT: WRONG"
        return "hmm, maybe"  # no verdict line, even after the reminder
    if "France" in prompt:
        return "Paris"
    if "Peru" in prompt:
        return "Cusco"
    return "Ndjamena"


def test_rounds_early_stop_and_fallback_counting() -> None:
    t = task()
    lm = ScriptedLM(model)
    solver = SelfRefineSolver(lm, ZeroShot(lm), rounds=3)
    a, b, c = solver.solve(t, t.splits["dev"])
    assert a.output == "Paris" and a.meta["stopped"] == "self-check passed"
    assert a.meta["lm_calls"] == 2  # answer + one critique
    assert b.output == "Lima" and b.meta["refined"] and len(b.meta["rounds"]) == 2
    assert b.meta["rounds"][0]["verdict"] == "wrong" and b.meta["rounds"][1]["verdict"] == "correct"
    assert c.meta["fallback"] and c.output == "Ndjamena"
    assert c.meta["stopped"] == "unparseable feedback"
    assert c.meta["lm_calls"] == 3  # answer + critique + one retry, then fallback
    reminders = [p for p in lm.calls if "End your reply with the line" in p]
    assert len(reminders) == 1


def test_method_report_and_round_trip() -> None:
    t = task()
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), t, t.splits["train"], t.splits["dev"],
                       [("self_refine", {"rounds": 2})])
    notes = result.reports[0].notes
    assert notes["inner_dev_accuracy"] == 1 / 3 and notes["dev_accuracy"] == 2 / 3
    assert notes["fallbacks"] == 1 and notes["changed"] == 1 and notes["early_stops"] == 2
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


def test_choose_verdict_replaces_the_retry_and_never_falls_back() -> None:
    t = task()

    def scores(prompt: str, continuation: str) -> float:
        # Chad's critique has no verdict line; of the two lines, WRONG is the likelier
        assert "Critique:\nhmm, maybe" in prompt
        return -1.0 if continuation == "VERDICT: WRONG" else -3.0

    lm = ScriptedLM(model, scores=scores)
    solver = SelfRefineSolver(lm, ZeroShot(lm), rounds=1, verdict="choose")
    a, b, c = solver.solve(t, t.splits["dev"])
    assert a.output == "Paris" and a.meta["rounds"][0]["verdict_by"] == "critique"
    assert b.output == "Lima" and b.meta["rounds"][0]["verdict_by"] == "critique"
    assert not c.meta["fallback"] and c.meta["rounds"][0]["verdict"] == "wrong"
    assert c.meta["rounds"][0]["verdict_by"] == "choice"
    assert c.output == "Lima" and c.meta["refined"]  # the scripted refine answer
    assert c.meta["lm_calls"] == 4  # answer + critique + verdict choice + refine
    assert not [p for p in lm.calls if "End your reply with the line" in p]  # no retry
    again = load_solver(solver.to_json(), lm=lm)
    assert isinstance(again, SelfRefineSolver) and again.verdict == "choose"


def test_bad_verdict_mode_is_a_clear_error() -> None:
    import pytest

    from metaskill.core.errors import MethodError

    lm = ScriptedLM(model)
    with pytest.raises(MethodError, match="self_refine: verdict must be one of parse, choose"):
        SelfRefineSolver(lm, ZeroShot(lm), verdict="vote")
