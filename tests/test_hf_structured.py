"""The hf backend's constrained replies: JSON schema and GBNF grammars through llguidance."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from metaskill.core.errors import InvalidParameterError, MethodError, ModelNotFoundError
from metaskill.core.settings import Settings
from metaskill.core.types import Request
from metaskill.lm import hf
from metaskill.lm.structured import choice_grammar


class _FakeTok:
    chat_template = None
    eos_token_id = 0
    unk_token_id = None

    def convert_tokens_to_ids(self, t: str) -> int:
        return -1


@pytest.mark.parametrize("constraint", [{"json_schema": {"type": "object"}},
                                        {"grammar": 'root ::= "yes" | "no"'}])
def test_refused_in_one_line_without_llguidance(monkeypatch: pytest.MonkeyPatch,
                                                constraint: dict[str, Any]) -> None:
    monkeypatch.setattr(hf, "constraint_library_available", lambda: False)
    lm = hf.HFLM("unused", model=object(), tokenizer=_FakeTok())
    assert lm.constraints == frozenset()
    with pytest.raises(MethodError, match=r"install the 'structured' extra") as e:
        lm.complete([Request(prompt="Q: ", **constraint)], cache=False)
    assert "\n" not in str(e.value)
    assert next(iter(constraint)) in str(e.value)


def test_constraints_follow_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "constraint_library_available", lambda: True)
    lm = hf.HFLM("unused", model=object(), tokenizer=_FakeTok())
    assert lm.constraints == {"json_schema", "grammar"}


class _ScriptedMatcher:
    """Allows tokens 1 and 3 out of 6; records what it was fed."""

    def __init__(self, error: bool = False) -> None:
        self.fed: list[int] = []
        self.error = error

    def consume_token(self, tok: int) -> bool:
        self.fed.append(tok)
        return True

    def is_error(self) -> bool:
        return self.error

    def compute_logit_bias(self) -> bytes:
        return bytes([0, 200, 0, 200, 0, 0])


def test_grammar_mask_feeds_new_tokens_and_masks_the_rest() -> None:
    torch = pytest.importorskip("torch", reason="the hf backend needs torch")
    m = _ScriptedMatcher()
    mask = hf.GrammarMask(m, prompt_len=2, stop_ids=[5])
    scores = torch.zeros(1, 7)  # the model's vocabulary may be larger than the tokenizer's
    out = mask(torch.tensor([[9, 9]]), scores)
    assert m.fed == [] and torch.isfinite(out[0]).tolist() == [False, True, False, True,
                                                               False, False, False]
    mask(torch.tensor([[9, 9, 3]]), scores)
    mask(torch.tensor([[9, 9, 3, 1]]), scores)
    assert m.fed == [3, 1]  # each generated token once, never the prompt
    broken = hf.GrammarMask(_ScriptedMatcher(error=True), prompt_len=0, stop_ids=[5])
    left = torch.isfinite(broken(torch.tensor([[4]]), scores)[0])
    assert left.nonzero().flatten().tolist() == [5]  # a matcher in error: only end the reply


class _Inner(BaseModel):
    properties: int  # a field named like the keyword stays a field


class _Outer(BaseModel):
    inner: _Inner
    tags: dict[str, int]


def test_closed_objects_closes_every_object_with_properties() -> None:
    schema = _Outer.model_json_schema()
    closed = hf.closed_objects(schema)
    assert closed["additionalProperties"] is False
    inner = closed["$defs"]["_Inner"]
    assert inner["additionalProperties"] is False and set(inner["properties"]) == {"properties"}
    assert closed["properties"]["tags"]["additionalProperties"] == {"type": "integer"}
    assert "additionalProperties" not in schema  # the caller's schema is not changed
    assert hf.closed_objects({"type": "object"}) == {"type": "object"}  # any object stays open


class Review(BaseModel):
    sentiment: Literal["positive", "negative"]
    stars: int = Field(ge=1, le=5)


class Flag(BaseModel):
    ok: bool


@pytest.fixture(scope="module")
def hf_lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hf.HFLM]:
    """SmolLM2-135M-Instruct dequantized from the embedded GGUF (as tests/test_hf.py does)."""
    pytest.importorskip("transformers", reason="the hf backend needs torch and transformers")
    pytest.importorskip("llguidance", reason="constrained decoding needs the 'structured' extra")
    try:
        gguf = hf.embedded_gguf_path()
    except ModelNotFoundError:
        pytest.skip("embedded model not installed")
    home = Path(tmp_path_factory.mktemp("hf_home"))
    lm = hf.HFLM(gguf, settings=Settings(home=home))
    yield lm
    lm.close()


REVIEW = [{"role": "user", "content": "Review: 'I loved this film, a delight.' Reply in JSON "
                                      "with sentiment (positive or negative) and stars (1-5)."}]


@pytest.mark.slow
def test_json_schema_reply_validates(hf_lm: hf.HFLM) -> None:
    r = Request(messages=REVIEW, json_schema=Review, max_tokens=40)
    c = hf_lm.complete([r], cache=False)[0]
    assert c.finish_reason == "stop" and c.retries == 0, c.text
    Review.model_validate_json(c.text)
    assert c.text == json.dumps(json.loads(c.text))  # compact: one space after , and :
    assert hf_lm.complete([r], cache=False)[0].text == c.text  # greedy stays deterministic
    sampled = hf_lm.complete([Request(messages=REVIEW, json_schema=Flag, max_tokens=12, n=3,
                                      temperature=1.0, seed=7)], cache=False)[0]
    assert len(sampled.samples) == 3 and sampled.retries == 0
    for s in sampled.samples:
        Flag.model_validate_json(s.text)


@pytest.mark.slow
def test_choice_grammar_reply_is_a_choice(hf_lm: hf.HFLM) -> None:
    choices = ["positive", "negative", "neutral"]
    chat = hf_lm.complete([Request(messages=REVIEW, grammar=choice_grammar(choices),
                                   max_tokens=8)], cache=False)[0]
    assert chat.text in choices and chat.finish_reason == "stop"
    plain = hf_lm.complete([Request(prompt="Review: 'Dull and far too long.'\nSentiment:",
                                    grammar=choice_grammar(choices, prefix=" "),
                                    max_tokens=8)], cache=False)[0]
    assert plain.text in [f" {c}" for c in choices]
    # Stop strings still cut a constrained reply.
    cut = hf_lm.complete([Request(messages=REVIEW, grammar=choice_grammar(["yes.", "no."]),
                                  stop=["."], max_tokens=8)], cache=False)[0]
    assert cut.text in ("yes", "no") and cut.finish_reason == "stop"


@pytest.mark.slow
def test_bad_grammar_is_refused_in_one_line(hf_lm: hf.HFLM) -> None:
    for g in ['root ::= ("a"', 'answer ::= "a"']:
        with pytest.raises(InvalidParameterError, match="llguidance cannot compile") as e:
            hf_lm.complete([Request(prompt="x", grammar=g, max_tokens=2)], cache=False)
        assert "\n" not in str(e.value)
