"""meta_prompting: experts with fresh context, sandboxed Python, limits, counted fallbacks.

Conductor replies are constrained JSON actions on a schema backend (ScriptedLM, llama.cpp)
and the free-text line protocol elsewhere (a ScriptedLM with no ``constraints``).
"""

from __future__ import annotations

import json

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
    action_of,
    conductor_model,
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


def act(request, kind: str, body: str, name: str = "") -> str:
    """A conductor action: JSON when the request carries a schema, else the line protocol."""
    if request.json_schema is not None:
        obj = ({"final_answer": body} if kind == "final" else {"python": body}
               if kind == "python" else {"expert": name, "instructions": body})
        return json.dumps(obj)
    if kind == "final":
        return f"Verified.\nFINAL ANSWER: {body}"
    if kind == "python":
        return f"```python\n{body}\n```"
    return f"Step 2.\nEXPERT {name}: {body}"


def model(prompt: str, request) -> str:
    if "You are Mathematician" in prompt:  # an expert: sees only its instructions
        assert "Conductor" not in prompt and "6 times 7" not in prompt
        assert request.json_schema is None  # experts answer in free text
        return "The product is 42."
    if "You are the Conductor" in prompt:
        if "6 times 7" in prompt:
            if "Mathematician replied" in prompt:
                return act(request, "final", "42")
            return act(request, "expert", "multiply six by seven", "Mathematician")
        if "power 10" in prompt:
            if "Python output:\n1024" in prompt:
                return act(request, "final", "1024")
            return act(request, "python", "print(2 ** 10)")
        return "I am thinking about it."  # never an action
    return "plain"


def free_text_lm(script) -> ScriptedLM:
    """A scripted LM whose backend enforces no schema (the free-text path)."""
    lm = ScriptedLM(script)
    lm.constraints = frozenset()
    return lm


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.sandbox
def test_expert_python_and_fallback(structured: bool) -> None:
    lm = ScriptedLM(model) if structured else free_text_lm(model)
    s = MetaPromptingSolver(lm, ZeroShot(lm), max_rounds=4, max_expert_calls=3)
    assert s.structured is structured
    e, p, x = s.solve(task(), QS)
    assert e.output == "42" and e.meta["expert_calls"] == 1 and e.meta["lm_calls"] == 3
    assert e.meta["fallback"] is None and e.meta["rounds"] == 2
    assert p.output == "1024" and p.meta["python_runs"] == 1 and p.meta["lm_calls"] == 2
    assert any(t["role"] == "python" and t["content"] == "1024" for t in p.meta["trace"])
    # unparseable: asked twice (JSON: by LM.complete, then the final answer is demanded,
    # twice again; free text: one reminder), then the plain answer (counted)
    assert x.output == "plain" and x.meta["fallback"] == "unparseable"
    assert x.meta["retried"] and x.meta["lm_calls"] == (2 + 2 + 1 if structured else 2 + 1)
    assert fallback_rate([e, p, x]) == pytest.approx(1 / 3)
    reminders = [q for q in lm.calls if "Your reply had no action" in q]
    assert len(reminders) == (0 if structured else 1)


def test_conductor_schema_labels_python_and_the_demanded_final_reply() -> None:
    m = conductor_model(["positive", "negative"], allow_python=False, max_tokens=96)
    assert action_of(m.model_validate_json('{"expert": "Critic", "instructions": "rate"}')) \
        == ("expert", "Critic", "rate")
    with pytest.raises(ValueError):  # not a label
        m.model_validate_json('{"final_answer": "maybe"}')
    with pytest.raises(ValueError):  # Python is off
        m.model_validate_json('{"python": "print(1)"}')
    only = conductor_model(None, allow_python=True, max_tokens=96, final_only=True)
    with pytest.raises(ValueError):
        only.model_validate_json('{"expert": "Critic", "instructions": "rate"}')
    assert action_of(only.model_validate_json('{"final_answer": " 7 "}')) == ("final", "", "7")
    for empty in ('{"final_answer": ""}', '{"expert": "C", "instructions": ""}'):
        with pytest.raises(ValueError):  # every text field is non-empty
            conductor_model(None, allow_python=True, max_tokens=96).model_validate_json(empty)


def test_json_unparseable_reply_gets_the_final_answer_demanded() -> None:
    """A conductor reply that breaks the schema twice is followed by the demanded final
    answer (final-only schema, labels); it counts as a fallback only if that fails too."""
    def lost(prompt: str, request) -> str:
        if "You are the Conductor" in prompt:
            if "No more experts" in prompt:
                return act(request, "final", "42")
            return "{\"expert\": \"M\", \"instruc"  # cut off: breaks the schema
        return "plain"

    lm = ScriptedLM(lost)
    a = MetaPromptingSolver(lm, ZeroShot(lm)).solve(task(), QS[:1])[0]
    assert a.output == "42" and a.meta["fallback"] is None and a.meta["retried"]
    assert a.meta["lm_calls"] == 2 + 1  # the broken reply and its retry, the answer


def test_round_and_call_limits_are_enforced() -> None:
    asked: list[str] = []

    def greedy_conductor(prompt: str, request) -> str:
        if "You are the Conductor" in prompt:
            if "No more experts" in prompt and "comply" in prompt:
                return "FINAL ANSWER: done"
            return "EXPERT Helper: think more"
        asked.append(prompt)
        return "more thoughts"

    # the free-text path (the JSON path forbids anything but a final answer there)
    lm = free_text_lm(greedy_conductor)
    s = MetaPromptingSolver(lm, ZeroShot(lm), max_rounds=10, max_expert_calls=2)
    a = s.solve(task(), QS[:1])[0]
    assert sum("You are Helper" in q for q in asked) == 2  # then the final reply fails
    assert a.output == "more thoughts"  # the plain Solver's answer
    assert a.meta["expert_calls"] == 2 and a.meta["fallback"] == "limit"
    assert a.meta["rounds"] == 4  # 2 with experts, 1 over the call limit, 1 demanded final
    # round limit: 1 round, the demanded final answer is honoured
    comply = ScriptedLM(lambda p, r: act(r, "final", "7") if "No more experts" in p
                        else act(r, "expert", "go", "Helper") if "Conductor" in p else "ok")
    b = MetaPromptingSolver(comply, ZeroShot(comply), max_rounds=1).solve(task(), QS[:1])[0]
    assert b.output == "7" and b.meta["expert_calls"] == 0 and b.meta["fallback"] is None


def test_json_demanded_final_reply_may_only_be_an_answer() -> None:
    """At the limit the schema leaves only {"final_answer": ...}: a conductor that still
    asks for an expert breaks it twice and falls back ('limit'), counted."""
    def greedy(prompt: str, request) -> str:
        if "You are the Conductor" in prompt:
            if "No more experts" in prompt:
                assert '"final_answer"' in request.json_schema
                assert '"expert"' not in request.json_schema
            return act(request, "expert", "think more", "Helper")
        return "more thoughts"

    lm = ScriptedLM(greedy)
    a = MetaPromptingSolver(lm, ZeroShot(lm), max_rounds=10, max_expert_calls=1).solve(
        task(), QS[:1])[0]
    assert a.meta["fallback"] == "limit" and a.output == "more thoughts"
    # expert ask, its expert, one over the call limit, the demanded reply twice, plain
    assert a.meta["lm_calls"] == 1 + 1 + 1 + 2 + 1


@pytest.mark.sandbox
def test_python_can_be_switched_off_and_is_sandboxed() -> None:
    lm = free_text_lm(model)
    s = MetaPromptingSolver(lm, ZeroShot(lm), allow_python=False, max_rounds=2)
    p = s.solve(task(), [QS[1]])[0]
    assert p.meta["python_runs"] == 0 and p.meta["fallback"] == "limit"
    # JSON: a python action breaks the schema without Python, asked twice, then counted
    lm = ScriptedLM(model)
    p = MetaPromptingSolver(lm, ZeroShot(lm), allow_python=False).solve(task(), [QS[1]])[0]
    assert p.meta["python_runs"] == 0 and p.meta["fallback"] == "unparseable"
    assert '"python"' not in next(q for q in lm.calls if "Conductor" in q).split("Work in")[0]
    out = MetaPromptingSolver(lm, ZeroShot(lm)).run_python(
        "import socket\nsocket.socket().connect(('127.0.0.1', 9))")
    assert "exit" in out  # the sandbox refuses sockets


@pytest.mark.sandbox
def test_fit_report_round_trip_and_bad_options() -> None:
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), task(), [], QS, [("meta_prompting", {"max_rounds": 3})])
    notes = result.reports[0].notes
    assert notes["dev_accuracy"] == pytest.approx(2 / 3) and notes["fallbacks"] == 1
    assert result.reports[0].lm_calls == 3 + 2 + 5
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
def test_real_model_respects_limits_and_never_falls_back(local_lm) -> None:
    """SmolLM2-135M as conductor and experts: its free-text conductor never named an expert
    or a final answer (100/100 sst2 test inputs fell back); constrained, none falls back."""
    from metaskill.tasks.registry import get_task

    t = get_task("sst2")
    qs = t.splits["dev"][:5]
    s = MetaPromptingSolver(local_lm, ZeroShot(local_lm), max_rounds=2, max_expert_calls=1,
                            allow_python=False, conductor_max_tokens=64,
                            expert_max_tokens=32)
    assert s.structured
    out = s.solve(t, qs)
    assert len(out) == 5
    for a in out:
        assert a.usage.prompt_tokens > 0
        assert a.meta["expert_calls"] <= 1
        assert a.meta["fallback"] is None, a.meta["trace"]
        assert a.output in t.labels  # the final answer is constrained to the labels
