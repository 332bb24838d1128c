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
