"""Reproducible splits: a seeded permutation of each source file, then slices.

The protocol (the same for every task that metaskill builds from files):

1. A *source file* holds one record per non-empty line (JSONL), per data row (CSV), or
   per row (HF datasets). Records are numbered ``0 .. N-1`` in file order; a record's id
   is ``"<file name>:<line number>"`` with the 1-based line number an editor shows (for
   CSV the header is line 1, so the first record is line 2; for HF datasets it is the
   1-based row number).
2. For each source file, ``P = numpy.random.default_rng(seed).permutation(N)``.
3. Each split takes a slice ``P[start:stop]`` of one source file's permutation, in that
   order. Splits that share a file take non-overlapping slices, so they are disjoint.

Another program rebuilds the identical split with nothing but numpy and the file::

    import json, numpy as np
    lines = [l for l in open("test.jsonl", encoding="utf-8") if l.strip()]
    P = np.random.default_rng(0).permutation(len(lines))
    test = [json.loads(lines[i]) for i in P[0:300]]

A task records its protocol in ``task.metadata["split_protocol"]`` (see
:func:`protocol_metadata`), and :func:`export_split` writes any split to JSONL for peer
tools (lm-evaluation-harness, DSPy scripts).

Example:
    >>> plan = [SplitSlice("test", "test.jsonl", 0, 3), SplitSlice("train", "test.jsonl", 3, 5)]
    >>> idx = plan_indices(plan, {"test.jsonl": 10}, seed=0)
    >>> idx["test"], idx["train"]
    ([4, 6, 2], [7, 3])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaskill.core.errors import TaskError

PROTOCOL = (
    "For each source file with N records: P = numpy.random.default_rng(seed).permutation(N); "
    "each split takes records P[start:stop] in that order. Record ids are "
    "'<file name>:<1-based line number>'."
)


@dataclass(frozen=True)
class SplitSlice:
    """One split's share of one source file: records ``P[start:stop]`` of its permutation.

    Attributes:
        split: split name (``train``, ``dev``, ``test`` ...).
        file: source file name (the key used for its record count).
        start: first permutation position (0-based, inclusive).
        stop: last permutation position (exclusive); None means to the end.
    """

    split: str
    file: str
    start: int
    stop: int | None


def permutation(n: int, seed: int) -> list[int]:
    """``numpy.random.default_rng(seed).permutation(n)`` as a list of ints.

    Example:
        >>> permutation(5, 0)
        [2, 4, 3, 0, 1]
    """
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def sequential_plan(
    file: str, sizes: dict[str, int | None], *, start: int = 0
) -> list[SplitSlice]:
    """Consecutive slices of one file's permutation, in the order of ``sizes``.

    A size of None takes the rest of the file (only allowed for the last split).

    Example:
        >>> [(s.split, s.start, s.stop) for s in sequential_plan("a", {"test": 3, "train": None})]
        [('test', 0, 3), ('train', 3, None)]
    """
    plan: list[SplitSlice] = []
    pos = start
    names = list(sizes)
    for i, name in enumerate(names):
        size = sizes[name]
        if size is None:
            if i != len(names) - 1:
                raise TaskError(
                    f"split '{name}' has no size but is not the last split; "
                    "only the last split may take 'the rest' (size null)."
                )
            plan.append(SplitSlice(name, file, pos, None))
        else:
            if size < 0:
                raise TaskError(f"split '{name}' has a negative size {size}; use a size >= 1.")
            plan.append(SplitSlice(name, file, pos, pos + size))
            pos += size
    return plan


def plan_indices(
    plan: Sequence[SplitSlice], counts: dict[str, int], seed: int
) -> dict[str, list[int]]:
    """Record indices of each split (0-based, into its source file) under ``plan``.

    Args:
        plan: the slices.
        counts: number of records in each source file.
        seed: the permutation seed.

    Raises:
        TaskError: if a slice runs past the end of its file or a split comes out empty.
    """
    perms: dict[str, list[int]] = {}
    out: dict[str, list[int]] = {}
    for s in plan:
        n = counts[s.file]
        if s.file not in perms:
            perms[s.file] = permutation(n, seed)
        stop = n if s.stop is None else s.stop
        if stop > n:
            raise TaskError(
                f"split '{s.split}' needs records {s.start}..{stop - 1} of '{s.file}' but it "
                f"has only {n}; ask for fewer examples (e.g. n_{s.split}={max(n - s.start, 0)})."
            )
        out.setdefault(s.split, []).extend(perms[s.file][s.start : stop])
        if stop <= s.start:
            raise TaskError(
                f"split '{s.split}' of '{s.file}' is empty (positions {s.start}..{stop}); "
                "give it a size of at least 1."
            )
    return out


def protocol_metadata(
    plan: Sequence[SplitSlice], counts: dict[str, int], seed: int, **extra: Any
) -> dict[str, Any]:
    """The split protocol as plain data, for ``task.metadata["split_protocol"]``.

    Example:
        >>> m = protocol_metadata([SplitSlice("test", "t.jsonl", 0, 2)], {"t.jsonl": 9}, 0)
        >>> m["splits"]["test"]
        [{'file': 't.jsonl', 'start': 0, 'stop': 2, 'n_records': 9}]
    """
    splits: dict[str, list[dict[str, Any]]] = {}
    for s in plan:
        n = counts[s.file]
        splits.setdefault(s.split, []).append(
            {"file": s.file, "start": s.start, "stop": n if s.stop is None else s.stop,
             "n_records": n}
        )
    return {"method": PROTOCOL, "seed": seed, "splits": splits, **extra}


def export_split(task: Any, split: str, path: str | Path) -> Path:
    """Write one split of a Task to JSONL for peer tools; returns the path.

    Each line has ``id``, ``input`` (text or fields), ``text`` (the input as one string),
    ``prompt`` (the rendered template), ``answer``, ``skills`` and ``metadata``. The
    first line of the file is not special: every line is one example, in split order.

    Example:
        >>> from metaskill.tasks import get_task
        >>> import tempfile, os
        >>> p = export_split(get_task("sst2"), "test", os.path.join(tempfile.mkdtemp(), "t.jsonl"))
        >>> sum(1 for _ in open(p))
        300
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in task.examples(split):
            row = {
                "id": ex.id,
                "input": ex.input,
                "text": ex.text,
                "prompt": task.render(ex),
                "answer": ex.answer,
                "skills": ex.skills,
                "metadata": ex.metadata,
            }
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path
