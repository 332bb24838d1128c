"""Meta-training episodes: an input with its k nearest demonstrations from its own task.

Papers:
    Min, Lewis, Zettlemoyer, Hajishirzi (2022). "MetaICL: Learning to Learn In Context" --
    train on many tasks, each instance being k demonstrations followed by an input, the
    loss on the input's answer.

    Mueller, Narang, Mathias, Wang, Firooz (2023). "Meta-training with Demonstration
    Retrieval for Efficient Few-Shot Learning" -- the demonstrations of each input are
    retrieved for it (dense retrieval) rather than drawn at random.

An episode is rendered exactly as :class:`~metaskill.methods.demos.DemoSolver` renders a
``knn_demos`` prompt at inference (:func:`metaskill.eval.solver.render_prompt`: the task's
instructions, the demos nearest-last, the input), so a model meta-trained on episodes is
used through ``knn_demos`` unchanged. The retriever is the same frozen MiniLM
(:class:`~metaskill.methods.demos.KnnSelector`).

Algorithm (what :func:`build_episodes` does):

1. Collect the text of every example of every held-out task, in every split.
2. For each training task of the protocol (its ``train`` split only): drop unanswered
   examples and any example whose text is also a held-out text (a task in the pool that
   shares data with a held-out one must not leak it).
3. Draw ``per_task`` query inputs from that pool (seeded).
4. For each query: rank the task's pool by MiniLM cosine similarity, skip the query itself
   (same id or same text), take the k nearest, order them nearest last.
5. Render the prompt; drop the least similar demos while it is longer than the token
   budget; the target is the query's reference answer.
6. Check the two invariants (:func:`check_episodes`) and return the episodes.

What we changed: the pool is whatever this machine loads offline (mostly small
classification and BIG-bench multiple-choice tasks), not MetaICL's 142 datasets, and the
model is 135M parameters trained with LoRA, not full fine-tuning of GPT-2 Large.

Example:
    >>> from metaskill.metalearn.pool import LeaveOut, PoolEntry, load_pool
    >>> pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="trec")])
    >>> proto = LeaveOut.of(pool, hold_out=["sst2"])
    >>> eps = build_episodes(pool, proto, EpisodeConfig(k=2, per_task=3, embedder="hash:64"))
    >>> {e.task for e in eps}, len(eps[0].demo_ids)
    ({'trec'}, 2)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message
from metaskill.eval.solver import render_prompt
from metaskill.metalearn.pool import LeaveOut, TaskPool
from metaskill.tasks.base import Task

#: Schema version of an episode row (``episodes.jsonl``).
EPISODE_VERSION = 1


class EpisodeConfig(BaseModel):
    """How episodes are built.

    Attributes:
        k: demonstrations per input (knn_demos' k at inference should match).
        per_task: query inputs per training task (None: every answered train example).
        prompt_format: ``completion`` (one plain prompt, as knn_demos' ``completion``
            format; the better one for the 135M model) or ``chat`` (one user/assistant
            turn per demo).
        instructions: keep the task's instruction preamble in the prompt.
        embedder: embedder spec of the retriever (``minilm``; ``hash:DIM`` for tests).
        max_prompt_tokens: prompt budget; the least similar demos are dropped until the
            prompt fits.
        seed: seeds the choice of query inputs.
    """

    k: int = Field(4, ge=0, le=64)
    per_task: int | None = Field(200, ge=1)
    prompt_format: Literal["completion", "chat"] = "completion"
    instructions: bool = True
    embedder: str = "minilm"
    max_prompt_tokens: int = Field(600, ge=16)
    seed: int = 0


class Episode(BaseModel):
    """One meta-training instance: a prompt (k demos + the input) and its target.

    Attributes:
        task: the training task it comes from.
        query_id: the id of the input asked.
        demo_ids: the ids of the demonstrations, in prompt order (nearest last).
        prompt: the plain-completion prompt (``completion`` format), else None.
        messages: the chat messages (``chat`` format), else None.
        answer: the target (the input's reference answer).
    """

    schema_version: int = EPISODE_VERSION
    task: str
    query_id: str
    demo_ids: list[str]
    prompt: str | None = None
    messages: list[Message] | None = None
    answer: str

    def text(self) -> str:
        """Everything the model reads (prompt or message contents), for checks and counts."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m.content for m in self.messages or [])


def held_out_texts(pool: TaskPool, protocol: LeaveOut) -> set[str]:
    """The normalised text of every example of every held-out task in the pool, any split."""
    out: set[str] = set()
    for name in protocol.held_out:
        task = pool.tasks.get(name)
        for split in (task.splits.values() if task is not None else []):
            out.update(_norm(e.text) for e in split)
    return out


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def train_pool(task: Task, split: str, banned: set[str]) -> list[Example]:
    """A training task's answered examples of ``split`` whose text is not held out."""
    return [e for e in task.splits.get(split, [])
            if e.answer is not None and _norm(e.text) not in banned]


def nearest_demos(pool: Sequence[Example], vectors: Any, query: Example, query_vec: Any,
                  k: int) -> list[Example]:
    """The ``k`` pool examples most similar to ``query``, most similar first, never the
    query itself (same id or same text)."""
    import numpy as np

    sims = np.asarray(vectors) @ np.asarray(query_vec)
    own = _norm(query.text)
    out: list[Example] = []
    for i in np.argsort(-sims, kind="stable"):
        e = pool[int(i)]
        if e.id == query.id or _norm(e.text) == own:
            continue
        out.append(e)
        if len(out) == k:
            break
    return out


def render_episode(task: Task, query: Example, demos: Sequence[Example],
                   config: EpisodeConfig) -> Episode:
    """The episode of ``query`` after ``demos`` (nearest first; shown nearest last)."""
    shown = list(reversed(demos))
    instructions = task.instructions if config.instructions else ""
    ctx = render_prompt(task, query, shown, instructions,
                        chat=config.prompt_format == "chat")
    common = {"task": task.name, "query_id": query.id, "demo_ids": [d.id for d in shown],
              "answer": str(query.answer)}
    if isinstance(ctx, str):
        return Episode(prompt=ctx, **common)
    return Episode(messages=ctx, **common)


def approx_tokens(text: str) -> int:
    """A token count without a tokenizer: about 4 characters a token (rounded up)."""
    return max(1, -(-len(text) // 4))


def build_episodes(
    pool: TaskPool, protocol: LeaveOut, config: EpisodeConfig, *, embedder: Any = None,
    count_tokens: Callable[[str], int] | None = None, progress: bool = False,
) -> list[Episode]:
    """Episodes over the protocol's training tasks (see the module docstring).

    Args:
        pool: the loaded pool.
        protocol: which tasks train and which are held out.
        config: the :class:`EpisodeConfig`.
        embedder: an object with ``encode(texts)``; None loads ``config.embedder``.
        count_tokens: counts the tokens of a prompt (default :func:`approx_tokens`).
        progress: show a progress bar over tasks.

    Raises:
        MethodError: no episodes at all, or a broken invariant (a bug, never data).
    """
    if embedder is None:
        from metaskill.skills.embed import load_embedder

        embedder = load_embedder(config.embedder)
    count = count_tokens or approx_tokens
    banned = held_out_texts(pool, protocol)
    rng = random.Random(config.seed)
    out: list[Episode] = []
    for name in _track(protocol.train_tasks, "building episodes", progress):
        task = pool.tasks[name]
        examples = train_pool(task, protocol.train_split, banned)
        if len(examples) < config.k + 1:
            continue
        n = len(examples) if config.per_task is None else min(config.per_task, len(examples))
        queries = rng.sample(examples, n)
        vectors = embedder.encode([e.text for e in examples])
        qvecs = embedder.encode([q.text for q in queries])
        for q, qv in zip(queries, qvecs, strict=True):
            demos = nearest_demos(examples, vectors, q, qv, config.k)
            ep = render_episode(task, q, demos, config)
            while demos and count(ep.text()) > config.max_prompt_tokens:
                demos = demos[:-1]  # the least similar one
                ep = render_episode(task, q, demos, config)
            out.append(ep)
    if not out:
        raise MethodError(f"no episodes: the training tasks ({', '.join(protocol.train_tasks)}) "
                          f"have fewer than k+1={config.k + 1} answered train examples.")
    check_episodes(out, pool, protocol)
    return out


def check_episodes(episodes: Sequence[Episode], pool: TaskPool, protocol: LeaveOut) -> None:
    """Raise if an episode comes from a held-out task, shows a held-out example (by id or
    text), or shows its input among its own demonstrations (by id or text).

    Example:
        >>> from metaskill.metalearn.pool import PoolEntry, load_pool
        >>> pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="trec")])
        >>> ep = Episode(task="sst2", query_id="x", demo_ids=[], prompt="p", answer="a")
        >>> check_episodes([ep], pool, LeaveOut.of(pool, ["sst2"]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        metaskill.core.errors.MethodError: episode invariant broken: ... held-out task sst2 ...
    """
    banned = held_out_texts(pool, protocol)
    allowed = set(protocol.train_tasks)
    for ep in episodes:
        where = f"episode of {ep.task}:{ep.query_id}"
        if ep.task not in allowed:
            raise MethodError(f"episode invariant broken: {where} comes from held-out task "
                              f"{ep.task} (not a training task).")
        if ep.query_id in ep.demo_ids:
            raise MethodError(f"episode invariant broken: {where} shows its own input as a "
                              "demonstration.")
        by_id = {e.id: e for e in pool.tasks[ep.task].splits.get(protocol.train_split, [])}
        shown = [by_id.get(i) for i in [ep.query_id, *ep.demo_ids]]
        if any(e is None for e in shown):
            raise MethodError(f"episode invariant broken: {where} uses an example outside "
                              f"the {protocol.train_split} split of {ep.task}.")
        texts = [_norm(e.text) for e in shown if e is not None]
        if texts[0] in texts[1:]:
            raise MethodError(f"episode invariant broken: {where} shows its own input (same "
                              "text) as a demonstration.")
        if any(t in banned for t in texts):
            raise MethodError(f"episode invariant broken: {where} shows an example of a "
                              "held-out task.")


def _track(items: list[Any], description: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


__all__ = ["EPISODE_VERSION", "Episode", "EpisodeConfig", "approx_tokens", "build_episodes",
           "check_episodes", "held_out_texts", "nearest_demos", "render_episode", "train_pool"]
