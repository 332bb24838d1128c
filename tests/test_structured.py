"""Structured outputs: Request constraints, validation with one retry, parsing, the cache,
and the llama.cpp grammar path with the embedded model."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

from metaskill.core.errors import InvalidParameterError, MethodError
from metaskill.core.types import Request
from metaskill.lm.base import as_request
from metaskill.lm.cache import Cache
from metaskill.lm.fake import ScriptedLM
from metaskill.lm.structured import (
    choice_grammar,
    complete_structured,
    extract_json,
    parse_reply,
    schema_error,
    schema_text,
)


class Critique(BaseModel):
    correct: bool
    reason: str = Field(max_length=60)


def test_request_takes_one_constraint_and_canonical_schema_text():
    a = Request(prompt="x", json_schema=Critique)
    b = Request(prompt="x", json_schema=json.dumps(Critique.model_json_schema(), indent=2))
    assert a.json_schema == b.json_schema == schema_text(Critique)
    assert a.constrained and not Request(prompt="x").constrained
    with pytest.raises(InvalidParameterError, match="at most one constraint"):
        as_request({"prompt": "x", "json_schema": Critique, "choices": ["a"]})
    with pytest.raises(InvalidParameterError, match="json_schema: not JSON"):
        as_request({"prompt": "x", "json_schema": "{oops"})
    with pytest.raises(InvalidParameterError, match="json_schema: must be a JSON object"):
        as_request({"prompt": "x", "json_schema": "[1]"})


def test_parse_is_lenient_about_fences_but_strict_about_the_schema():
    assert extract_json("no json here") is None
    assert parse_reply('```json\n{"correct": false, "reason": "r"}\n```', Critique)[0] == \
        Critique(correct=False, reason="r")
    value, err = parse_reply('{"correct": "maybe"}', Critique)
    assert value is None and err.startswith("correct:")
    assert schema_error(schema_text(Critique), '{"correct": true}') == \
        "'reason' is a required property"


def test_invalid_reply_gets_one_retry_then_a_recorded_fallback():
    seen: list[Request] = []

    def script(prompt: str, r: Request) -> str:
        seen.append(r)
        return "I think it is right."

    out = complete_structured(ScriptedLM(script), [Request(prompt="q", seed=3)], Critique)
    assert [r.seed for r in seen] == [3, 4] and seen[1].temperature >= 0.7
    assert seen[0].json_schema == schema_text(Critique)
    assert out[0].value is None and out[0].completion.finish_reason == "invalid"
    assert "broke the JSON schema twice" in out[0].error and out[0].completion.retries == 1


def test_retry_that_succeeds_is_used():
    def script(prompt: str, r: Request) -> str:
        return '{"correct": true, "reason": "ok"}' if r.seed == 1 else "nope"

    out = complete_structured(ScriptedLM(script), [Request(prompt="q")], Critique)
    assert out[0].value == Critique(correct=True, reason="ok")
    assert out[0].completion.retries == 1 and out[0].completion.finish_reason == "stop"


def test_cache_keeps_constrained_and_free_replies_apart(tmp_path):
    def script(prompt: str, r: Request) -> str:
        return '{"correct": true, "reason": "x"}' if r.json_schema else "free text"

    lm = ScriptedLM(script, cache=Cache(tmp_path / "c.sqlite"))
    free = Request(prompt="same prompt")
    constrained = Request(prompt="same prompt", json_schema=Critique)
    gram = Request(prompt="same prompt", grammar=choice_grammar(["a", "b"]))
    texts = [c.text for c in lm.complete([free, constrained, gram])]
    assert texts[:2] == ["free text", '{"correct": true, "reason": "x"}']
    again = lm.complete([free, constrained, gram])
    assert all(c.cached for c in again) and [c.text for c in again] == texts
    assert len({lm.request_key(r) for r in (free, constrained, gram)}) == 3


def test_backend_without_the_constraint_refuses_in_one_line():
    class Plain(ScriptedLM):
        constraints = frozenset()

    with pytest.raises(MethodError, match="cannot enforce a json_schema constraint"):
        Plain().complete([Request(prompt="q", json_schema=Critique)])
    # complete_structured falls back to free text on such a backend, and says so
    out = complete_structured(Plain(default='{"correct": false, "reason": "r"}'),
                              [Request(prompt="q")], Critique)
    assert out[0].value == Critique(correct=False, reason="r") and not out[0].constrained


def test_choice_grammar_escapes():
    g = choice_grammar(['a "b"', "c\\d", "e\nf", "a \"b\""])
    assert g == 'root ::= "a \\"b\\"" | "c\\\\d" | "e\\nf"'
    with pytest.raises(InvalidParameterError):
        choice_grammar([])


@pytest.mark.slow
def test_llama_grammar_path_with_the_embedded_model(local_lm):
    """The real model, constrained: a JSON reply valid under the schema (no retry), and a
    grammar reply that is one of the choices, also on prompts where free text is not."""
    out = complete_structured(local_lm, [Request(
        messages=[{"role": "user", "content": "Is '2 + 2 = 5' correct? Reply in JSON."}],
        max_tokens=64)], Critique)
    assert out[0].error is None and out[0].completion.retries == 0, out[0].text
    choices = ["entity", "location", "number", "human"]
    prompts = ["How far is the moon?", "Who wrote Hamlet?", "Tell me a story about a cat."]
    reqs = [Request(messages=[{"role": "user", "content": p}], max_tokens=8,
                    grammar=choice_grammar(choices)) for p in prompts]
    free = [Request(messages=[{"role": "user", "content": p}], max_tokens=8) for p in prompts]
    got = [c.text for c in local_lm.complete(reqs)]
    assert all(t in choices for t in got), got
    assert not all(c.text in choices for c in local_lm.complete(free))
    with pytest.raises(InvalidParameterError, match="cannot compile the grammar"):
        local_lm.complete([Request(prompt="x", grammar="root ::= (")])


@pytest.mark.slow
def test_property_order_is_the_order_the_reply_writes(local_lm):
    class ReasonFirst(BaseModel):
        reason: str = Field(max_length=40)
        correct: bool

    out = complete_structured(local_lm, [Request(
        messages=[{"role": "user", "content": "Is 2 + 2 = 5? Reply in JSON."}],
        max_tokens=64)], ReasonFirst)
    assert out[0].value is not None, out[0].text
    assert out[0].text.index('"reason"') < out[0].text.index('"correct"')
