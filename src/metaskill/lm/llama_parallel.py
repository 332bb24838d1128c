"""Parallel sequences for the embedded llama.cpp backend (:class:`~.llama.LlamaLM`).

Decoding one token costs one pass over the weights whether it is for one sequence or for
sixteen, so :class:`ParallelDecoder` decodes the samples of a batch of requests together:
one llama.cpp context with a unified KV cache, one ``llama_decode`` per step holding the
next token of every running sequence (each with its own ``seq_id``, sampler chain and
seed), and a free slot refilled with the next waiting sample as soon as a sequence ends.

Shared prompt KV ("holders"): a prompt asked for several samples (``n > 1``, or the same
prompt in several requests) is evaluated once into a holder sequence, and prompts of the
batch that share a long prefix (the instruction header and demonstrations of a k-shot
prompt) evaluate that prefix once; a sample starts from its holder by ``seq_cp`` (in a
unified cache a copy only tags the holder's cells) and evaluates the rest of its prompt.

What an answer depends on: the whole batch (which prompts share a prefix, which tokens
are decoded together), never what ran before -- the KV cache is cleared before every
batch. Batched matrix kernels may change the last bits of a logit compared with the
one-at-a-time path, so a greedy answer can differ from it where the top two logits are a
near tie; sampled answers use exactly the sampler chain and seed of the one-at-a-time path.

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
"""Prompts of a batch that share at least this many leading tokens evaluate them once."""

MAX_HOLDERS = 64
"""Most holder sequences (shared prompt prefixes) one context keeps at a time."""


@dataclass
class _Holder:
    """A shared prompt prefix evaluated once into its own sequence."""

    tokens: list[int]
    seq: int
    parent: _Holder | None = None
    done: int = 0  # tokens of ``tokens`` already in the KV cache

    @property
    def ready(self) -> bool:
        return self.done == len(self.tokens)


@dataclass
class _Job:
    """One sample of one request: its prompt, its sampler, what it has generated."""

    req: int
    index: int
    tokens: list[int]
    request: Request
    budget: int
    holder: _Holder | None = None
    slot: int = -1
    pos: int = 0  # next position to evaluate
    sampler: Any = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = "length"
    cut: int | None = None
    done: bool = False

    @property
    def start(self) -> int:
        return len(self.holder.tokens) if self.holder else 0


def shared_prefixes(prompts: list[list[int]], min_len: int = MIN_SHARED_PREFIX) -> list[list[int]]:
    """Prefixes worth evaluating once: the longest common prefix of each run of prompts.

    Prompts are sorted; a run is a maximal stretch of neighbours whose common prefix is at
    least ``min_len`` tokens; its prefix stops one token short of its shortest prompt (a
    sample evaluates at least its last prompt token itself, for the logits).

    Example:
        >>> shared_prefixes([[1, 2, 3, 4, 9], [1, 2, 3, 4, 8], [5, 6]], min_len=3)
        [[1, 2, 3, 4]]
        >>> shared_prefixes([[1, 2, 3], [1, 2, 3]], min_len=2)
        [[1, 2]]
    """
    def lcp(a: list[int], b: list[int]) -> int:
        k = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            k += 1
        return k

    order = sorted(prompts)
    out: list[list[int]] = []
    i = 0
    while i < len(order):
        j, common = i, len(order[i])
        while j + 1 < len(order):
            k = min(common, lcp(order[j], order[j + 1]))
            if k < min_len:
                break
            common, j = k, j + 1
        if j > i:
            shortest = min(len(p) for p in order[i : j + 1])
            prefix = order[i][: min(common, shortest - 1)]
            if len(prefix) >= min_len and prefix not in out:
                out.append(prefix)
        i = j + 1
    return out


def plan(toks: list[list[int]], requests: list[Request], budgets: list[int], *,
         n_parallel: int, n_holders: int = MAX_HOLDERS) -> tuple[list[_Job], list[_Holder]]:
    """The jobs of a batch (one per sample) and the holders (shared prefixes) they start from.

    Holders: the prompt (less its last token) of every prompt asked for more than one
    sample, and the :func:`shared_prefixes` of the batch's prompts; at most ``n_holders``
    (the longest), with sequence ids after the ``n_parallel`` decoding slots. A holder
    starts from the longest holder that is a prefix of it, a job from the longest holder
    shorter than its prompt.

    Example:
        >>> reqs = [Request(prompt="a", n=3), Request(prompt="b")]
        >>> jobs, holders = plan([[1, 2, 3], [5, 6]], reqs, [8, 8], n_parallel=4)
        >>> [(h.tokens, h.seq) for h in holders]
        [([1, 2], 4)]
        >>> [(j.req, j.index, j.holder is holders[0]) for j in jobs]
        [(0, 0, True), (0, 1, True), (0, 2, True), (1, 0, False)]
    """
    jobs = [_Job(req=q, index=i, tokens=toks[q], request=r, budget=budgets[q])
            for q, r in enumerate(requests) for i in range(r.n)]
    count: dict[tuple[int, ...], int] = {}
    for j in jobs:
        count[tuple(j.tokens)] = count.get(tuple(j.tokens), 0) + 1
    prefixes = [list(t[:-1]) for t, c in count.items() if c > 1 and len(t) > 1]
    prefixes += [p for p in shared_prefixes([list(t) for t in count]) if p not in prefixes]
    prefixes = sorted(prefixes, key=len)[len(prefixes) - n_holders:] if n_holders else []
    holders: list[_Holder] = []
    for p in prefixes:  # sorted by length: parents (shorter) come first
        parent = max((h for h in holders if p[: len(h.tokens)] == h.tokens),
                     key=lambda h: len(h.tokens), default=None)
        holders.append(_Holder(tokens=p, seq=n_parallel + len(holders), parent=parent))
    for j in jobs:
        j.holder = max((h for h in holders if len(h.tokens) < len(j.tokens)
                        and j.tokens[: len(h.tokens)] == h.tokens),
                       key=lambda h: len(h.tokens), default=None)
    return jobs, holders


class ParallelDecoder:
    """Decodes many sequences at once in one llama.cpp context sharing ``llm``'s weights.

    Args:
        llm: a loaded ``llama_cpp.Llama`` (its model, tokenizer and sampler settings).
        n_parallel: most sequences decoded together.
        n_cells: KV cache cells (tokens) shared by all sequences.
        n_threads: CPU threads.
        lora: ``(adapter pointer, scale)`` to apply to this context too, or None.

    Raises:
        MetaskillError: llama.cpp could not create the context.
    """

    def __init__(self, llm: Any, *, n_parallel: int, n_cells: int, n_threads: int,
                 lora: tuple[Any, float] | None = None) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp import _internals

        self.llm = llm
        self.n_parallel = n_parallel
        self.n_cells = n_cells
        self.n_seq = min(llama_cpp.llama_max_parallel_sequences(), n_parallel + MAX_HOLDERS)
        self.n_batch = int(llm.n_batch)
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_cells
        params.n_seq_max = self.n_seq
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = n_threads
        from llama_cpp._utils import suppress_stdout_stderr

        try:
            # llama.cpp notes that a unified cache's n_ctx_seq may exceed n_ctx_train:
            # positions never do (a sequence stays within the backend's n_ctx)
            with suppress_stdout_stderr(disable=False):
                self.ctx = _internals.LlamaContext(model=llm._model, params=params,
                                                   verbose=False)
        except ValueError as e:
            raise MetaskillError(f"llama.cpp could not create a context for {n_parallel} "
                                 f"parallel sequences and {n_cells} KV cells ({e})") from e
        if lora is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora[0])
            scales = (ctypes.c_float * 1)(lora[1])
            if llama_cpp.llama_set_adapters_lora(self.ctx.ctx, adapters, 1, scales):
                raise MetaskillError("llama.cpp could not apply the LoRA adapter to the "
                                     "parallel context")
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=self.n_seq,
                                           verbose=False)
        self.vocab = llm._model.vocab
        self.n_vocab = int(llm.n_vocab())

    def close(self) -> None:
        """Free the context and the batch (the model stays with ``llm``)."""
        self.batch.close()
        self.ctx.close()

    # ---- planning ----------------------------------------------------------------------
    def fits(self, jobs: list[_Job], holders: list[_Holder]) -> bool:
        """Whether the worst case -- every holder kept, every slot at its longest job -- fits."""
        own = sum(len(h.tokens) - (len(h.parent.tokens) if h.parent else 0) for h in holders)
        longest = max((len(j.tokens) - j.start + j.budget for j in jobs), default=0)
        return own + min(self.n_parallel, len(jobs)) * longest <= self.n_cells

    # ---- decoding ----------------------------------------------------------------------
    def run(self, jobs: list[_Job], holders: list[_Holder], grammar_of: Any) -> None:
        """Decode every job to its end (KV cache cleared first); fills each job's output."""
        self.ctx.kv_cache_clear()
        for h in holders:
            h.done = 0
        free = list(range(self.n_parallel))
        waiting = list(jobs)
        active: list[_Job] = []
        while waiting or active:
            for h in holders:  # a holder starts from its parent's cells once they are ready
                if h.done == 0 and h.parent is not None and h.parent.ready:
                    self.ctx.kv_cache_seq_cp(h.parent.seq, h.seq, -1, -1)
                    h.done = len(h.parent.tokens)
            for j in list(waiting):
                if free and (j.holder is None or j.holder.ready):
                    self._admit(j, free.pop(0), grammar_of)
                    waiting.remove(j)
                    active.append(j)
            wants = self._fill(active, holders)
            if self.batch.batch.n_tokens == 0:
                raise MetaskillError("parallel decoding made no progress (a bug)")
            rc = _decode(self.ctx.ctx, self.batch.batch)
            if rc != 0:
                raise MetaskillError(f"llama_decode returned {rc} with "
                                     f"{self.batch.batch.n_tokens} tokens (KV cache full?)")
            for j, idx in wants:
                self._step(j, idx)
                if j.done:
                    self.ctx.kv_cache_seq_rm(j.slot, -1, -1)
                    active.remove(j)
                    free.append(j.slot)
                    free.sort()

    def _admit(self, j: _Job, slot: int, grammar_of: Any) -> None:
        j.slot = slot
        self.ctx.kv_cache_seq_rm(slot, -1, -1)
        if j.holder is not None:
            self.ctx.kv_cache_seq_cp(j.holder.seq, slot, -1, -1)
        j.pos = j.start
        self.llm.set_seed((j.request.seed + j.index) & 0xFFFFFFFF)
        # the very chain the one-at-a-time path (Llama.generate) builds, so equal logits
        # give equal tokens
        j.sampler = self.llm._init_sampler(
            top_k=0, top_p=j.request.top_p, min_p=0.0, typical_p=1.0,
            temp=j.request.temperature, repeat_penalty=1.0, grammar=grammar_of(j.request))

    def _fill(self, active: list[_Job], holders: list[_Holder]) -> list[tuple[_Job, int]]:
        """Put the next tokens in the batch: one per decoding job, then prompt chunks."""
        b = self.batch.batch
        b.n_tokens = 0
        wants: list[tuple[_Job, int]] = []

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
        for h in holders:
            if not h.ready and (h.parent is None or h.parent.ready):
                if h.parent is not None and h.done == 0:
                    continue  # copied from its parent at the top of the next step
                while not h.ready and b.n_tokens < self.n_batch:
                    add(h.tokens[h.done], h.done, h.seq, False)
                    h.done += 1
        for j in active:
            while j.pos < len(j.tokens) and b.n_tokens < self.n_batch:
                last = j.pos == len(j.tokens) - 1
                i = add(j.tokens[j.pos], j.pos, j.slot, last)
                j.pos += 1
                if last:
                    wants.append((j, i))
        return wants

    def _step(self, j: _Job, idx: int) -> None:
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

    def completions(self, jobs: list[_Job], requests: list[Request],
                    t0: float) -> list[Completion]:
        """One Completion per request from its finished jobs (samples in index order)."""
        out = []
        for q, r in enumerate(requests):
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
                usage=Usage(prompt_tokens=len(mine[0].tokens) if mine else 0,
                            completion_tokens=sum(len(j.ids) for j in mine)),
                latency_s=time.perf_counter() - t0))
            assert len(samples) == r.n
        return out


def _decode(ctx: Any, batch: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_decode(ctx, batch))
