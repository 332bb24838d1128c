"""meta_prompting: experts with fresh context, sandboxed Python, limits, counted fallbacks."""

from __future__ import annotations

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import build_method, fit_chain
from metaskill.methods.meta_prompting import (
    MetaPrompting,
    MetaPromptingConfig,
    MetaPromptingSolver,
    fallback_rate,
    parse_action,
)
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier

QS = [Example(id="e", input="What is 6 times 7?", answer="42"),
      Example(id="p", input="What is 2 to the power 10?", answer="1024"),
      Example(id="x", input="Say something odd.", answer="odd")]


def task() -> Task:
    return Task(name="q", splits={"dev": QS}, template="Q: {input}\nA:", kind="generative",
                verifier=ExactVerifier())


def model(prompt: str, request) -> str:
    if "You are Mathematician" in prompt:  # an expert: sees only its instructions
        assert "Conductor" not in prompt and "6 times 7" not in prompt
        return "The product is 42."
    if "You are the Conductor" in prompt:
        if "6 times 7" in prompt:
            if "Mathematician replied" in prompt:
                return "Verified.\nFINAL ANSWER: 42"
            return "Step 2.\nEXPERT Mathematician: multiply six by seven"
        if "power 10" in prompt:
            if "Python output:\n1024" in prompt:
                return "FINAL ANSWER: 1024"
            return "```python\nprint(2 ** 10)\n```"
        return "I am thinking about it."  # never an action
    return "plain"


def test_expert_python_and_fallback() -> None:
    lm = ScriptedLM(model)
    s = MetaPromptingSolver(lm, ZeroShot(lm), max_rounds=4, max_expert_calls=3)
    e, p, x = s.solve(task(), QS)
    assert e.output == "42" and e.meta["expert_calls"] == 1 and e.meta["lm_calls"] == 3
    assert e.meta["fallback"] is None and e.meta["rounds"] == 2
    assert p.output == "1024" and p.meta["python_runs"] == 1 and p.meta["lm_calls"] == 2
    assert any(t["role"] == "python" and t["content"] == "1024" for t in p.meta["trace"])
    # unparseable: one reminder, then the plain answer (counted)
    assert x.output == "plain" and x.meta["fallback"] == "unparseable"
    assert x.meta["retried"] and x.meta["lm_calls"] == 2 + 1
    assert fallback_rate([e, p, x]) == pytest.approx(1 / 3)


def test_round_and_call_limits_are_enforced() -> None:
    asked: list[str] = []

    def greedy_conductor(prompt: str, request) -> str:
        if "You are the Conductor" in prompt:
            if "No more experts" in prompt and "comply" in prompt:
                return "FINAL ANSWER: done"
            return "EXPERT Helper: think more"
        asked.append(prompt)
        return "more thoughts"

    lm = ScriptedLM(greedy_conductor)
    s = MetaPromptingSolver(lm, ZeroShot(lm), max_rounds=10, max_expert_calls=2)
    a = s.solve(task(), QS[:1])[0]
    assert sum("You are Helper" in q for q in asked) == 2  # then the final reply fails
    assert a.output == "more thoughts"  # the plain Solver's answer
    assert a.meta["expert_calls"] == 2 and a.meta["fallback"] == "limit"
    assert a.meta["rounds"] == 4  # 2 with experts, 1 over the call limit, 1 demanded final
    # round limit: 1 round, the demanded final answer is honoured
    comply = ScriptedLM(lambda p, r: "FINAL ANSWER: 7" if "No more experts" in p
                        else "EXPERT Helper: go" if "Conductor" in p else "ok")
    b = MetaPromptingSolver(comply, ZeroShot(comply), max_rounds=1).solve(task(), QS[:1])[0]
    assert b.output == "7" and b.meta["expert_calls"] == 0 and b.meta["fallback"] is None


def test_python_can_be_switched_off_and_is_sandboxed() -> None:
    lm = ScriptedLM(model)
    s = MetaPromptingSolver(lm, ZeroShot(lm), allow_python=False, max_rounds=2)
    p = s.solve(task(), [QS[1]])[0]
    assert p.meta["python_runs"] == 0 and p.meta["fallback"] == "limit"
    out = MetaPromptingSolver(lm, ZeroShot(lm)).run_python(
        "import socket\nsocket.socket().connect(('127.0.0.1', 9))")
    assert "exit" in out  # the sandbox refuses sockets


def test_fit_report_round_trip_and_bad_options() -> None:
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), task(), [], QS, [("meta_prompting", {"max_rounds": 3})])
    notes = result.reports[0].notes
    assert notes["dev_accuracy"] == pytest.approx(2 / 3) and notes["fallbacks"] == 1
    assert result.reports[0].lm_calls == 3 + 2 + 3
    again = load_solver(result.solver.to_json(), lm=lm)
    assert isinstance(again, MetaPromptingSolver) and again.max_rounds == 3
    assert [a.output for a in again.solve(task(), QS)] == ["42", "1024", "plain"]
    with pytest.raises(MethodError, match="meta_prompting: bad option 'max_rounds'"):
        build_method("meta_prompting", {"max_rounds": 0})
    assert MetaPrompting(MetaPromptingConfig()).name == "meta_prompting"


def test_parse_action() -> None:
    assert parse_action("**Expert Poet**: write a haiku")[0:2] == ("expert", "Poet")
    assert parse_action("nothing here") is None
    assert parse_action("```python\nprint(1)\n```\nFINAL ANSWER: 1") == ("final", "", "1")


@pytest.mark.slow
def test_real_model_respects_limits_and_counts_fallbacks(local_lm) -> None:
    """SmolLM2-135M as conductor and experts: every input ends answered or counted."""
    from metaskill.tasks.registry import get_task

    t = get_task("sst2")
    qs = t.splits["test"][:2]
    s = MetaPromptingSolver(local_lm, ZeroShot(local_lm), max_rounds=2, max_expert_calls=1,
                            allow_python=False, conductor_max_tokens=48,
                            expert_max_tokens=32)
    out = s.solve(t, qs)
    assert len(out) == 2
    for a in out:
        assert a.usage.prompt_tokens > 0 and a.output is not None
        assert a.meta["expert_calls"] <= 1
        # 2 rounds + 1 demanded final reply, 1 expert, and the plain answer at most
        assert a.meta["lm_calls"] <= 2 + 1 + 1 + 1
        assert a.meta["fallback"] in (None, "unparseable", "limit")
        assert (a.meta["fallback"] is None) or a.meta["lm_calls"] >= 2
