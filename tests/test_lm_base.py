"""LM interface logic with the scripted fake LM: cache keys, hits, copies, switches."""

from __future__ import annotations

import pytest

from metaskill.core.errors import InvalidParameterError, UnknownSpecError
from metaskill.core.types import Request
from metaskill.lm.cache import Cache
from metaskill.lm.fake import ScriptedLM
from metaskill.lm.spec import BUILTIN_MODELS, load_lm


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "c.sqlite")


def _lm(cache, script=None):
    return ScriptedLM(script or {"France": "Paris", "2+2": "4"}, default="?", cache=cache)


BASE = dict(prompt="capital of France?", max_tokens=8, temperature=0.7, top_p=0.9,
            stop=("\n",), seed=3, n=2)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "capital of Spain?"},
        {"max_tokens": 9},
        {"temperature": 0.8},
        {"top_p": 0.95},
        {"stop": ("\n\n",)},
        {"seed": 4},
        {"n": 3},
        {"choices": ("Paris", "Rome")},
    ],
)
def test_key_changes_with_every_sampling_parameter(cache, change):
    lm = _lm(cache)
    assert lm.request_key(Request(**BASE)) != lm.request_key(Request(**{**BASE, **change}))


def test_key_chat_vs_prompt_differ(cache):
    lm = _lm(cache)
    a = Request(prompt="user: hi\nassistant:")
    b = Request(messages=[{"role": "user", "content": "hi"}])
    assert lm.prompt_of(a) == lm.prompt_of(b)  # same rendered text ...
    assert lm.request_key(a) != lm.request_key(b)  # ... but different requests


def test_key_changes_with_model_identity(cache):
    a, b = _lm(cache, {"x": "1"}), _lm(cache, {"x": "2"})
    r = Request(prompt="x")
    assert a.request_key(r) != b.request_key(r)


def test_seed_ignored_for_greedy_single_sample(cache):
    lm = _lm(cache)
    g = dict(prompt="2+2", temperature=0.0, n=1)
    assert lm.request_key(Request(**g, seed=1)) == lm.request_key(Request(**g, seed=2))
    s = dict(prompt="2+2", temperature=0.5, n=1)
    assert lm.request_key(Request(**s, seed=1)) != lm.request_key(Request(**s, seed=2))
    m = dict(prompt="2+2", temperature=0.0, n=2)
    assert lm.request_key(Request(**m, seed=1)) != lm.request_key(Request(**m, seed=2))


def test_hit_returns_fresh_objects_with_original_usage(cache):
    lm = _lm(cache)
    r = Request(prompt="capital of France?")
    first = lm.complete([r])[0]
    assert not first.cached and first.text == "Paris"
    assert len(lm.calls) == 1
    second = lm.complete([r])[0]
    assert second.cached and len(lm.calls) == 1
    assert second.usage == first.usage and second.usage.total_tokens > 0
    second.samples[0].text = "mutated"
    third = lm.complete([r])[0]
    assert third.text == "Paris" and third is not second


def test_cache_false_per_call_neither_reads_nor_writes(cache):
    lm = _lm(cache)
    r = Request(prompt="2+2")
    lm.complete([r], cache=False)
    assert cache.stats()["entries"] == 0
    lm.complete([r])
    lm.complete([r], cache=False)
    assert len(lm.calls) == 3  # the cached entry was not read by the cache=False call


def test_lm_without_cache(tmp_home):
    lm = ScriptedLM({"a": "b"}, cache=None)
    lm.complete([Request(prompt="a")])
    lm.complete([Request(prompt="a")])
    assert len(lm.calls) == 2
    assert load_lm("fake", cache=False).cache is None
    assert load_lm("fake", cache=None).cache is None
    assert load_lm("fake").cache is not None  # default: the cache under METASKILL_HOME
    assert (tmp_home / "cache.sqlite").exists()


def test_mixed_batch_keeps_order(cache):
    lm = _lm(cache)
    lm.complete([Request(prompt="2+2")])
    out = lm.complete([Request(prompt="France"), Request(prompt="2+2"), Request(prompt="zzz")])
    assert [c.text for c in out] == ["Paris", "4", "?"]
    assert [c.cached for c in out] == [False, True, False]


def test_choices_constraint_uses_score_and_honours_cache_flag(cache):
    lm = _lm(cache)
    r = Request(prompt="capital of France?", choices=("Rome", "Paris"))
    c = lm.complete([r], cache=False)[0]
    assert c.text == "Paris" and c.finish_reason == "choice"
    assert cache.stats()["entries"] == 0
    lm.complete([r])
    assert cache.stats()["entries"] == 2  # the completion and the score


def test_score_cache(cache):
    lm = _lm(cache)
    a = lm.score("capital of France?", ["Paris", "Rome"])
    b = lm.score("capital of France?", ["Paris", "Rome"])
    assert a == b == [0.0, -5.0]
    assert len(lm.calls) == 1
    lm.score("capital of France?", ["Paris", "Rome"], cache=False)
    assert len(lm.calls) == 2


def test_invalid_dict_request_gives_one_line_error(cache):
    lm = _lm(cache)
    with pytest.raises(InvalidParameterError, match=r"temperature must be in \[0, 5\]"):
        lm.complete([{"prompt": "x", "temperature": -1}])
    with pytest.raises(InvalidParameterError, match="top_p"):
        lm.complete([{"prompt": "x", "top_p": 0}])
    with pytest.raises(InvalidParameterError) as e:
        lm.complete([{"prompt": "x", "max_tokens": "many"}])
    assert "\n" not in str(e.value)


def test_unknown_spec_lists_forms():
    with pytest.raises(UnknownSpecError) as e:
        load_lm("gpt4", cache=False)
    msg = str(e.value)
    for form in ("local", "local:gemma3-270m", "gguf:PATH", "openai:MODEL@BASE_URL"):
        assert form in msg
    with pytest.raises(UnknownSpecError):
        load_lm("local:nonexistent", cache=False)


def test_openai_spec_parsing():
    lm = load_lm("openai:llama3.2:1b@http://127.0.0.1:11434", cache=False)
    assert lm.model == "llama3.2:1b" and lm.base_url == "http://127.0.0.1:11434/v1"
    lm = load_lm("openai:org@model@https://example.com/v1", cache=False)
    assert lm.model == "org@model" and lm.base_url == "https://example.com/v1"


def test_builtin_models_table():
    names = [m.name for m in BUILTIN_MODELS]
    assert names == ["local", "local:gemma3-270m"]
    assert all(isinstance(m.is_installed(), bool) for m in BUILTIN_MODELS)


def test_cache_stats_clear_delete(cache):
    a, b = _lm(cache), ScriptedLM({"q": "r"}, cache=cache)
    b.spec = "other"
    a.complete([Request(prompt="France"), Request(prompt="2+2")])
    b.complete([Request(prompt="q")])
    st = cache.stats()
    assert st["entries"] == 3 and st["per_model"] == {"fake": 2, "other": 1}
    assert cache.delete([a.request_key(Request(prompt="France"))]) == 1
    assert cache.clear(model="other") == 1
    assert cache.stats()["entries"] == 1
    assert cache.clear() == 1
