"""Parallel sequences for the embedded llama.cpp backend (:class:`~.llama.LlamaLM`).

Decoding one token reads all the weights whether it is for one sequence or for sixteen,
so :class:`ParallelDecoder` decodes the samples of a batch of requests together: one
llama.cpp context with one KV stream per slot, one ``llama_decode`` per step holding the
next token of every running sequence (each with its own ``seq_id``, sampler chain and
seed), and a slot refilled with the next waiting sample as soon as its sequence ends.

Shared prompt KV: a sample whose prompt shares at least :data:`MIN_SHARED_PREFIX` tokens
with a running sequence (another sample of the same prompt -- ``n > 1`` or
self-consistency's ``n`` requests -- or a k-shot prompt with the same instructions and
demonstrations) starts from a copy of that sequence's KV stream (``llama_memory_seq_cp``,
then ``seq_rm`` past the shared prefix) and evaluates only the rest of its prompt; a
sample that will share with a sequence still evaluating its prompt waits for it.

Why one stream per slot rather than llama.cpp's unified cache: attention sums run over a
stream's cells in cell order, so a sequence whose cells are interleaved with other
sequences' (the unified cache) gets other last bits than the one-at-a-time path. With
streams, a sequence's cells are laid out as they are when decoded alone: on 40 short
prompts the greedy answers differed from the one-at-a-time path's on 1 (15 with the
unified cache). The price is memory: ``n_parallel`` streams of ``n_ctx`` cells each.

What an answer depends on: its batch (which sequences it shares a prefix with, which
tokens are decoded together), never what ran before -- the KV cache is cleared before
every batch. Sampled answers use exactly the sampler chain and seed of the one-at-a-time
path, so they equal its answers wherever the logits do.

Example:
    >>> from metaskill.lm.llama import LlamaLM, builtin_model_path
    >>> lm = LlamaLM(builtin_model_path("local"), n_parallel=8)  # doctest: +SKIP
    >>> reqs = [Request(prompt=f"{k} + {k} =", max_tokens=4) for k in range(16)]
    >>> [c.text for c in lm.complete(reqs)][:2]  # doctest: +SKIP
    [' 0', ' 2']
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Completion, Request, Sample, Usage

MIN_SHARED_PREFIX = 16
"""Fewest shared leading tokens for which a sample copies another sequence's KV stream."""


@dataclass
class Job:
    """One sample of one request: its prompt, its sampler, what it has generated."""

    req: int
    index: int
    tokens: list[int]
    request: Request
    budget: int
    slot: int = -1
    pos: int = 0  # tokens of the sequence (prompt, then generated) already evaluated
    shared: int = 0  # prompt tokens copied from another sequence
    sampler: Any = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = "length"
    cut: int | None = None
    done: bool = False

    def evaluated(self) -> list[int]:
        """The tokens whose KV this job's stream holds."""
        return (self.tokens + self.ids)[: self.pos]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists.

    Example:
        >>> common_prefix([1, 2, 3], [1, 2, 4, 5])
        2
    """
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return k


def jobs_of(toks: list[list[int]], requests: list[Request], budgets: list[int]) -> list[Job]:
    """One job per sample, request by request, sample ``i`` of a request after ``i - 1``.

    Example:
        >>> jobs = jobs_of([[1, 2], [3]], [Request(prompt="a", n=2), Request(prompt="b")],
        ...                [4, 4])
        >>> [(j.req, j.index, j.tokens) for j in jobs]
        [(0, 0, [1, 2]), (0, 1, [1, 2]), (1, 0, [3])]
    """
    return [Job(req=q, index=i, tokens=toks[q], request=r, budget=budgets[q])
            for q, r in enumerate(requests) for i in range(r.n)]


def source_for(job: Job, active: list[Job],
               min_shared: int = MIN_SHARED_PREFIX) -> tuple[Job | None, int, bool]:
    """Where ``job`` should start: ``(source, shared tokens, wait)``.

    The source is the running job whose evaluated tokens share the most with ``job``'s
    prompt less its last token (a sample evaluates at least that token itself, for its
    logits); ``wait`` is True where a job still evaluating its prompt will share more
    once it is done. A share below ``min_shared`` tokens counts as none.

    Example:
        >>> a = Job(req=0, index=0, tokens=[1, 2, 3, 4], request=Request(prompt="a"),
        ...         budget=4, pos=2)
        >>> b = Job(req=1, index=0, tokens=[1, 2, 3, 9], request=Request(prompt="a"),
        ...         budget=4)
        >>> source_for(b, [a], min_shared=2)  # a will share 3 tokens once it has them
        (None, 0, True)
        >>> a.pos = 4
        >>> src, n, wait = source_for(b, [a], min_shared=2)
        >>> (src is a, n, wait)
        (True, 3, False)
    """
    want = job.tokens[:-1]
    best: Job | None = None
    best_n, later = 0, 0
    for k in active:
        n = common_prefix(want, k.evaluated())
        if n > best_n:
            best, best_n = k, n
        if k.pos < len(k.tokens):
            later = max(later, common_prefix(want, k.tokens))
    if later >= min_shared and later > best_n:
        return None, 0, True
    if best_n < min_shared:
        best, best_n = None, 0
    return best, best_n, False


class ParallelDecoder:
    """Decodes many sequences at once in one llama.cpp context sharing ``llm``'s weights.

    Args:
        llm: a loaded ``llama_cpp.Llama`` (its model, tokenizer and sampler settings).
        n_parallel: most sequences decoded together (one KV stream each).
        n_ctx: KV cells of each stream (the backend's context window).
        n_threads: CPU threads.
        lora: ``(adapter pointer, scale)`` to apply to this context too, or None.

    Raises:
        MetaskillError: llama.cpp could not create the context.
    """

    def __init__(self, llm: Any, *, n_parallel: int, n_ctx: int, n_threads: int,
                 lora: tuple[Any, float] | None = None) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self.llm = llm
        self.n_parallel = n_parallel
        self.n_batch = int(llm.n_batch)
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx * n_parallel
        params.n_seq_max = n_parallel
        params.kv_unified = False  # one stream per sequence: see the module's docstring
        params.n_threads = params.n_threads_batch = n_threads
        try:
            with suppress_stdout_stderr(disable=False):
                self.ctx = _internals.LlamaContext(model=llm._model, params=params,
                                                   verbose=False)
        except ValueError as e:
            raise MetaskillError(f"llama.cpp could not create a context for {n_parallel} "
                                 f"parallel sequences of {n_ctx} tokens ({e})") from e
        if lora is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora[0])
            scales = (ctypes.c_float * 1)(lora[1])
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, scales):
                raise MetaskillError("llama.cpp could not apply the LoRA adapter to the "
                                     "parallel context")
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0,
                                           n_seq_max=n_parallel, verbose=False)
        self.vocab = llm._model.vocab
        self.n_vocab = int(llm.n_vocab())

    def close(self) -> None:
        """Free the context and the batch (the model stays with ``llm``)."""
        self.batch.close()
        self.ctx.close()

    # ---- decoding ----------------------------------------------------------------------
    def run(self, jobs: list[Job], grammar_of: Any) -> None:
        """Decode every job to its end (KV cache cleared first); fills each job's output."""
        import llama_cpp

        # cells only: stale values in free cells are masked out (weight exactly 0), as in
        # the one-at-a-time path, which never zeroes its cache either
        llama_cpp.llama_memory_clear(self.ctx.memory, False)
        free = list(range(self.n_parallel))
        waiting = list(jobs)
        active: list[Job] = []
        while waiting or active:
            for j in list(waiting):
                if not free:
                    break
                src, shared, wait = source_for(j, active)
                if wait:
                    continue  # a sequence still evaluating its prompt will share more
                self._admit(j, free.pop(0), src, shared, grammar_of)
                waiting.remove(j)
                active.append(j)
            wants = self._fill(active)
            if self.batch.batch.n_tokens == 0:
                raise MetaskillError("parallel decoding made no progress (a bug)")
            rc = int(_decode(self.ctx.ctx, self.batch.batch))
            if rc != 0:
                raise MetaskillError(f"llama_decode returned {rc} with "
                                     f"{self.batch.batch.n_tokens} tokens")
            for j, idx in wants:
                self._step(j, idx)
                if j.done:
                    active.remove(j)
                    free.append(j.slot)
                    free.sort()

    def _admit(self, j: Job, slot: int, src: Job | None, shared: int, grammar_of: Any) -> None:
        j.slot = slot
        self.ctx.kv_cache_seq_rm(slot, -1, -1)
        if src is not None:  # a copy of the source's stream, cut after the shared prefix
            self.ctx.kv_cache_seq_cp(src.slot, slot, -1, -1)
            self.ctx.kv_cache_seq_rm(slot, shared, -1)
        j.pos = j.shared = shared
        self.llm.set_seed((j.request.seed + j.index) & 0xFFFFFFFF)
        # the very chain the one-at-a-time path (Llama.generate) builds, so equal logits
        # give equal tokens
        j.sampler = self.llm._init_sampler(
            top_k=0, top_p=j.request.top_p, min_p=0.0, typical_p=1.0,
            temp=j.request.temperature, repeat_penalty=1.0, grammar=grammar_of(j.request))

    def _fill(self, active: list[Job]) -> list[tuple[Job, int]]:
        """Put the next tokens in the batch: one per decoding job, then prompt chunks."""
        b = self.batch.batch
        b.n_tokens = 0
        wants: list[tuple[Job, int]] = []

        def add(tok: int, pos: int, seq: int, logits: bool) -> int:
            i = b.n_tokens
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
            b.n_tokens = i + 1
            return i

        for j in active:
            if j.pos >= len(j.tokens):
                wants.append((j, add(j.ids[-1], j.pos, j.slot, True)))
                j.pos += 1
        for j in active:
            while j.pos < len(j.tokens) and b.n_tokens < self.n_batch:
                last = j.pos == len(j.tokens) - 1
                i = add(j.tokens[j.pos], j.pos, j.slot, last)
                j.pos += 1
                if last:
                    wants.append((j, i))
        return wants

    def _step(self, j: Job, idx: int) -> None:
        """Sample job ``j``'s next token from batch row ``idx``; mark it done at its end."""
        import llama_cpp

        tok = int(llama_cpp.llama_sampler_sample(j.sampler.sampler, self.ctx.ctx, idx))
        if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
            j.finish, j.done = "stop", True
            return
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx.ctx, idx),
                                    shape=(self.n_vocab,))
        top = row.max()
        total = float(np.exp(row - top).sum(dtype=np.float64))
        j.logprobs.append(float(row[tok] - top) - math.log(total))
        j.ids.append(tok)
        stops = [s for s in j.request.stop if s]
        if stops:
            text = self.llm.detokenize(j.ids, prev_tokens=j.tokens).decode("utf-8", "ignore")
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                j.cut, j.finish, j.done = min(hits), "stop", True
                return
        if len(j.ids) >= j.budget:
            j.done = True

    def completions(self, jobs: list[Job], requests: list[Request]) -> list[Completion]:
        """One Completion per request from its finished jobs (samples in index order)."""
        out = []
        for q, _ in enumerate(requests):
            mine = sorted((j for j in jobs if j.req == q), key=lambda j: j.index)
            samples = []
            for j in mine:
                text = self.llm.detokenize(j.ids, prev_tokens=j.tokens).decode("utf-8",
                                                                               "ignore")
                if j.cut is not None:
                    text = text[: j.cut]
                samples.append(Sample(text=text, finish_reason=j.finish, logprobs=j.logprobs))
                j.sampler.close()
            out.append(Completion(
                samples=samples,
                usage=Usage(prompt_tokens=len(mine[0].tokens),
                            completion_tokens=sum(len(j.ids) for j in mine)),
                latency_s=0.0))
        return out


def decode_batch(decoder: ParallelDecoder, toks: list[list[int]], requests: list[Request],
                 budgets: list[int], grammar_of: Any) -> list[Completion]:
    """Decode a batch's samples as parallel sequences; one Completion per request.

    Each Completion's ``latency_s`` is the batch's wall time shared evenly among its
    requests (they decode together), so latencies still add up to the time spent.
    """
    t0 = time.perf_counter()
    jobs = jobs_of(toks, requests, budgets)
    decoder.run(jobs, grammar_of)
    out = decoder.completions(jobs, requests)
    per = (time.perf_counter() - t0) / max(1, len(out))
    for c in out:
        c.latency_s = per
    return out


def _decode(ctx: Any, batch: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_decode(ctx, batch))
