"""Parallel sequences in the llama.cpp backend against the one-at-a-time path.

The planning tests run without a model; the rest load SmolLM2-135M-Instruct twice (one
instance decoding one sample at a time, one decoding 8 sequences together) and are slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from metaskill.core.errors import InvalidParameterError
from metaskill.core.types import Request
from metaskill.lm.llama_parallel import plan, shared_prefixes

NEAR_TIE = 0.5
"""Largest top-2 logit gap (of the one-at-a-time path) at which a greedy mismatch is allowed:
batched kernels (and the changed batch split of the prompt) move this Q4 model's logits by
up to a few tenths."""

SUBJECTS = ["cats", "the moon", "rain", "bread", "chess", "rivers", "music", "glass",
            "trains", "honey", "winter", "maps", "bees", "salt", "clocks", "paper", "wolves",
            "copper", "tea", "volcanoes", "kites", "owls", "ice", "soap", "bridges"]


def hundred_prompts() -> list[Request]:
    """100 short requests: 50 chat, 50 plain, 16 new tokens each."""
    reqs = []
    for s in SUBJECTS:
        reqs.append(Request(messages=[{"role": "user", "content": f"Say one fact about {s}."}],
                            max_tokens=16))
        reqs.append(Request(messages=[{"role": "user", "content": f"What colour is {s}?"}],
                            max_tokens=16))
        reqs.append(Request(prompt=f"Q: What are {s} made of?\nA:", max_tokens=16))
        reqs.append(Request(prompt=f"A short poem about {s}:\n", max_tokens=16))
    return reqs


# ---- planning (no model) -------------------------------------------------------------------
def test_shared_prefixes_groups_runs_and_leaves_one_token_per_prompt():
    header = list(range(100, 120))
    prompts = [[*header, 1, 2], [*header, 3], [*header, 4, 5, 6], [7] * 30, [7] * 30 + [8]]
    got = shared_prefixes(prompts, min_len=16)
    assert header in got
    assert [7] * 29 in got  # stops one short of the shortest prompt of its run
    assert shared_prefixes([[1, 2, 3], [4, 5, 6]], min_len=2) == []


def test_plan_nests_holders_and_points_jobs_at_the_longest():
    header = list(range(100, 120))
    toks = [[*header, 1, 2, 3], [*header, 4], [*header, 5, 6]]
    reqs = [Request(prompt="x", n=3), Request(prompt="y"), Request(prompt="z")]
    jobs, holders = plan(toks, reqs, [4, 4, 4], n_parallel=8)
    by_len = {len(h.tokens): h for h in holders}
    assert sorted(by_len) == [20, 22]  # the shared header; request 0's prompt less a token
    assert by_len[22].parent is by_len[20] and by_len[20].parent is None
    assert [h.seq for h in holders] == [8, 9]
    assert [j.holder is by_len[22] for j in jobs[:3]] == [True] * 3
    assert jobs[3].holder is by_len[20] and jobs[4].holder is by_len[20]
    assert [(j.req, j.index) for j in jobs] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]
    _, none = plan(toks, reqs, [4, 4, 4], n_parallel=8, n_holders=0)
    assert none == []


# ---- against the model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def lms():
    pytest.importorskip("llama_cpp")
    from metaskill.lm.llama import LlamaLM, builtin_model_path

    path = builtin_model_path("local")
    seq = LlamaLM(path, spec="local", n_parallel=1, n_threads=1)
    par = LlamaLM(path, spec="local", n_parallel=8, n_threads=1)
    yield seq, par
    seq.close()
    par.close()


def greedy_gap(lm, prompt: str, text_b: str, max_tokens: int) -> float | None:
    """Top-2 logit gap, under the one-at-a-time path, at the first token where its greedy
    answer stops being a prefix of ``text_b`` (None: no difference within ``max_tokens``)."""
    llm = lm.llm
    toks = lm.tokenize(prompt)
    ids: list[int] = []
    with lm._lock:
        llm.reset()
        llm.eval(toks)
        for _ in range(max_tokens):
            row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            top2 = np.sort(row)[-2:]
            tok = int(np.argmax(row))
            ids.append(tok)
            text = llm.detokenize(ids, prev_tokens=toks).decode("utf-8", "ignore")
            if not text_b.startswith(text):
                return float(top2[1] - top2[0])
            llm.eval([tok])
        llm.reset()
    return None


@pytest.mark.slow
def test_greedy_matches_one_at_a_time_on_100_prompts_but_near_ties(lms, capsys):
    seq, par = lms
    reqs = hundred_prompts()
    a = seq.complete(reqs, cache=False)
    b = par.complete(reqs, cache=False)
    again = par.complete(reqs, cache=False)
    assert [c.texts for c in again] == [c.texts for c in b]  # same batch, same answers
    differ = [i for i in range(len(reqs)) if a[i].text != b[i].text]
    gaps = [greedy_gap(seq, seq.prompt_of(reqs[i]), b[i].text, 16) for i in differ]
    with capsys.disabled():
        print(f"\n[parallel greedy] {len(reqs) - len(differ)}/{len(reqs)} identical; "
              f"{len(differ)} differ, top-2 logit gaps at the first differing token: "
              f"{[round(g, 3) if g is not None else None for g in gaps]}")
    for i, g in zip(differ, gaps, strict=True):
        if g is None:  # b is the longer-or-cut variant: the same tokens, another ending
            assert a[i].text.startswith(b[i].text) or b[i].text.startswith(a[i].text)
            continue
        assert g <= NEAR_TIE, (reqs[i], a[i].text, b[i].text, g)
    for x, y in zip(a, b, strict=True):
        assert x.usage.prompt_tokens == y.usage.prompt_tokens
        assert y.usage.completion_tokens == len(y.logprobs or [])
        assert y.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_seeded_samples_reproducible_and_n_shares_the_prompt(lms, capsys):
    seq, par = lms
    reqs = [Request(prompt="Write a word:", max_tokens=6, temperature=1.0, seed=7, n=5),
            Request(messages=[{"role": "user", "content": "Name an animal."}], max_tokens=8,
                    temperature=0.8, top_p=0.9, seed=3, n=5)]
    one = par.complete(reqs, cache=False)
    par.complete([Request(prompt="Something else", max_tokens=3, n=2)], cache=False)
    two = par.complete(reqs, cache=False)
    assert [c.texts for c in one] == [c.texts for c in two]  # same batch -> same samples
    assert all(len(set(c.texts)) > 1 for c in one)  # seed + i: the samples differ
    ref = seq.complete(reqs, cache=False)
    same = sum(x == y for c, d in zip(one, ref, strict=True)
               for x, y in zip(c.texts, d.texts, strict=True))
    with capsys.disabled():
        print(f"\n[parallel sampling] {same}/10 samples equal to the one-at-a-time path's")
    assert same >= 5  # the same sampler chain and seeds; only logit rounding differs
    for c in one:
        assert c.usage.completion_tokens == sum(len(s.logprobs or []) for s in c.samples)


@pytest.mark.slow
def test_grammar_stop_and_fallbacks_in_the_parallel_path(lms):
    from metaskill.lm.llama import LlamaLM

    seq, par = lms
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"]}
    reqs = [Request(prompt=f"{k} + {k} = ? Reply in JSON.\n", json_schema=schema,
                    max_tokens=12) for k in range(3)]
    reqs.append(Request(prompt="1, 2, 3, 4,", max_tokens=20, stop=[" 7"]))
    out = par.complete(reqs, cache=False)
    for c in out[:3]:  # per-sequence grammar samplers
        assert isinstance(json.loads(c.text)["answer"], int)
    assert out[3].finish_reason == "stop" and " 7" not in out[3].text and "6" in out[3].text
    assert [c.text for c in out] == [c.text for c in seq.complete(reqs, cache=False)]
    # a parallel cache too small for the batch's worst case: split, then one by one
    tiny = LlamaLM(par.model_path, n_ctx=128, n_parallel=4, parallel_cells=128, n_threads=1)
    try:
        small = [Request(prompt=f"Q: What are {s} made of?\nA:", max_tokens=60)
                 for s in SUBJECTS[:3]]
        small.append(small[0].model_copy(update={"n": 3}))  # alone too big: one by one
        got = tiny.complete(small, cache=False)
        alone = [tiny.complete([r], cache=False)[0] for r in small]
        assert [c.texts for c in got] == [c.texts for c in alone]
        assert len(alone[3].texts) == 3 and alone[3].texts[0] == alone[0].text
        assert all(c.text for c in got)
    finally:
        tiny.close()


def test_n_parallel_and_cells_are_validated(tmp_path):
    from metaskill.lm.llama import LlamaLM

    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    with pytest.raises(InvalidParameterError, match="n_parallel"):
        LlamaLM(f, n_parallel=0)
    with pytest.raises(InvalidParameterError, match="parallel_cells"):
        LlamaLM(f, n_ctx=1024, parallel_cells=512)
    assert LlamaLM(f).n_parallel == 8
