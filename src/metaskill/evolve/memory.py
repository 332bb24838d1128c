"""Experience memory across a stream of tasks (MetaAgent's "grows through experience").

Qian and Liu (2025), "MetaAgent: toward self-evolving agents via tool meta-learning":
the agent meets tasks one after another and carries the notes it distilled from each to
the next. The pieces live below this layer -- the knowledge base in
:mod:`metaskill.skills.knowledge`, the ``memory`` Method and its Solver (retrieval into
the prompt, distillation, counters, demotion) in :mod:`metaskill.methods.memory` -- so
that ``metaskill adapt --method memory`` finds the Method like any other and
``tool_use``'s ``retrieve`` tool can read the same notes. This module is the loop over
tasks, and the experiment that asks whether the loop helps.

:func:`memory_stream`, for each task in the given order:

1. ``without``: the base Solver on the task's test examples;
2. ``with``: the same Solver with the notes of the tasks before it (the ``memory``
   Method with ``learn=False``: it retrieves and never writes);
3. learn: the ``memory`` Method on the task's dev examples writes its notes (and updates
   the counters of the notes it showed), for the tasks after it.

Each row is paired (same test examples); the gain's interval is a paired bootstrap
(:func:`metaskill.eval.stats.paired_gain`), per task and pooled over the stream.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.skills.embed import HashEmbedder
    >>> from metaskill.tasks.base import Task, Verdict, Verifier
    >>> class Exact(Verifier):
    ...     def verify(self, output, ex):
    ...         return Verdict(score=float(output.strip() == ex.answer))
    >>> xs = [Example(id=str(i), input=f"{i}+1", answer=str(i + 1)) for i in range(4)]
    >>> tasks = [Task(name=n, splits={"dev": xs[:2], "test": xs[2:]}, verifier=Exact())
    ...          for n in ("a", "b")]
    >>> rows = memory_stream(tasks, ScriptedLM(default="?"), ":memory:", HashEmbedder(32))
    >>> [(r.task, r.notes_before) for r in rows.rows]
    [('a', 0), ('b', 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.eval.stats import paired_gain
from metaskill.methods.base import MethodResources
from metaskill.methods.memory import Memory, MemoryConfig
from metaskill.skills.knowledge import KnowledgeBase


class StreamRow(BaseModel):
    """One task of the stream: test accuracy without and with the earlier tasks' notes."""

    task: str
    n: int
    without: float
    with_memory: float
    gain: float
    low: float
    high: float
    notes_before: int
    shown: float
    notes_added: int
    dev_accuracy: float | None = None


class StreamResult(BaseModel):
    """All rows and the pooled paired gain over every test example of the stream."""

    rows: list[StreamRow]
    gain: float
    low: float
    high: float


def memory_stream(tasks: Sequence[Any], lm: Any, kb_path: str, embedder: Any, *,
                  n_dev: int | None = None, n_test: int | None = None,
                  options: dict[str, Any] | None = None, base: Any = None,
                  progress: bool = False) -> StreamResult:
    """Run the stream (see the module doc); returns one row per task and the pooled gain.

    Args:
        tasks: the tasks, in the order they are met.
        lm: the model.
        kb_path: the knowledge base (``":memory:"`` for a throwaway one; a file that
            already holds notes starts the stream with them).
        embedder: the embedder of the knowledge base.
        n_dev: dev examples learnt from per task (None: all).
        n_test: test examples scored per task (None: all).
        options: :class:`~metaskill.methods.memory.MemoryConfig` fields (``k``,
            ``min_similarity`` ...), for both the retrieving and the learning fit.
        base: the Solver memory wraps (default: zero-shot on ``lm``).
        progress: progress bars.
    """
    opts = dict(options or {})
    kb = KnowledgeBase(kb_path, embedder=embedder)
    resources = MethodResources(embedder=embedder, extra={"knowledge_base": kb})
    solver = base if base is not None else ZeroShot(lm)
    rows: list[StreamRow] = []
    pooled_a: list[float] = []
    pooled_b: list[float] = []
    for task in tasks:
        test = list(task.examples("test"))[:n_test]
        dev = list(task.examples("dev"))[:n_dev]
        before = len(kb)
        # 1. without memory
        run0 = evaluate(solver, task, "test", examples=test, progress=progress)
        # 2. with the notes of the tasks before this one (retrieve only)
        reader = Memory(MemoryConfig(**{**opts, "learn": False}), resources=resources)
        with_mem = reader.fit(solver, task, [], dev)
        run1 = evaluate(with_mem, task, "test", examples=test, progress=progress)
        # 3. learn from this task's dev, for the tasks after it
        learner = Memory(MemoryConfig(**opts), resources=resources)
        learner.fit(solver, task, [], dev)
        a = [float(r.score) for r in run1.records]
        b = [float(r.score) for r in run0.records]
        gain, lo, hi = paired_gain(a, b)
        shown = [bool(r.meta.get("memory_shown")) for r in run1.records]
        rows.append(StreamRow(
            task=task.name, n=len(a), without=sum(b) / len(b), with_memory=sum(a) / len(a),
            gain=gain, low=lo, high=hi, notes_before=before,
            shown=sum(shown) / len(shown), notes_added=len(kb) - before,
            dev_accuracy=learner.report.notes.get("dev_accuracy")))
        pooled_a += a
        pooled_b += b
    gain, lo, hi = paired_gain(pooled_a, pooled_b)
    return StreamResult(rows=rows, gain=gain, low=lo, high=hi)


__all__ = ["StreamResult", "StreamRow", "memory_stream"]
