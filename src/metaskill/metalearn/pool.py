"""The task pool (every Task the registry loads offline) and the leave-tasks-out protocol.

Meta-training learns across tasks, so what it may see must be explicit. A :class:`TaskPool`
holds the Tasks that load on this machine without a network: the built-in classification
tasks (sst2, trec, ag_news), the registry's other option-free loaders (word_reversal,
compose), every BIG-bench JSON task under ``<data>/bigbench`` (``data`` is ``--data`` or
``METASKILL_DATA``, e.g. ``../shared/data``), a few reasoning-gym generators, and the math
sets where their data is there. A :class:`LeaveOut` protocol splits the pool's task names
into the tasks trained on and the tasks held out; every result JSON of
:mod:`metaskill.metalearn` carries it (``protocol``), so a reader never has to guess
whether a number is on a task the model was meta-trained on.

Loading never stops at one bad task: a task that does not load (missing data, a BIG-bench
folder that mixes kinds, reasoning-gym not installed) is listed in ``TaskPool.skipped``
with the one-line reason.

Example:
    >>> pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="trec")])
    >>> sorted(pool.tasks)
    ['sst2', 'trec']
    >>> proto = LeaveOut.of(pool, hold_out=["sst2"])
    >>> proto.train_tasks, proto.held_out
    (['trec'], ['sst2'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from metaskill.core.errors import MetaskillError, MethodError
from metaskill.tasks.base import Task, TaskKind

#: Schema version of the protocol JSON (:meth:`LeaveOut.to_json`).
PROTOCOL_VERSION = 1

#: reasoning-gym generators in the default pool (generative; one Task each).
DEFAULT_RGYM = ("basic_arithmetic", "spell_backward", "letter_counting")

#: registry loaders never put in a pool: they need a path or are a wrapper of others.
_NOT_POOLED = {"file", "bigbench", "reasoning_gym"}


class PoolEntry(BaseModel):
    """One task of the pool: a registry loader and its options.

    Example:
        >>> PoolEntry(loader="bigbench", options={"path": "/data/bigbench/tasks/navigate"}).label
        'bigbench:navigate'
    """

    loader: str = Field(description="registry name (metaskill tasks ls)")
    options: dict[str, Any] = Field(default_factory=dict, description="loader options")

    def task_args(self) -> str:
        """How ``metaskill eval``/``adapt`` name this task on the command line.

        Example:
            >>> PoolEntry(loader="bigbench", options={"path": "/d/navigate"}).task_args()
            '--task bigbench -T path=/d/navigate'
        """
        import shlex

        opts = "".join(f" -T {shlex.quote(f'{k}={v}')}" for k, v in self.options.items())
        return f"--task {self.loader}{opts}"

    @property
    def label(self) -> str:
        """A short name for messages (the task's own name is known only once loaded)."""
        for key in ("path", "dataset"):
            if key in self.options:
                return f"{self.loader}:{Path(str(self.options[key])).name}"
        return self.loader


def data_root(data: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder with the shared data sets: ``data``, else ``$METASKILL_DATA``, else None.

    Example:
        >>> str(data_root("/data"))
        '/data'
    """
    if data is not None:
        return Path(data).expanduser()
    env = os.environ.get("METASKILL_DATA")
    return Path(env).expanduser() if env else None


def bigbench_folders(root: Path | None) -> list[Path]:
    """The BIG-bench task folders under ``root/bigbench`` (``tasks/*`` or ``*``), sorted."""
    if root is None:
        return []
    base = root / "bigbench"
    base = base / "tasks" if (base / "tasks").is_dir() else base
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "task.json").exists())


def pool_specs(data: str | os.PathLike[str] | None = None, *,
               rgym: Sequence[str] = DEFAULT_RGYM) -> list[PoolEntry]:
    """Every task the registry can load offline here, as pool entries (not loaded yet).

    Args:
        data: the shared data folder (default ``$METASKILL_DATA``); BIG-bench tasks and
            the math sets come from there.
        rgym: reasoning-gym datasets to add, one Task each.

    Example:
        >>> [e.loader for e in pool_specs(data="/nonexistent", rgym=())][:3]
        ['ag_news', 'compose', 'sst2']
    """
    from metaskill.tasks.registry import TASKS

    root = data_root(data)
    out: list[PoolEntry] = []
    for name in TASKS.names():
        loader = TASKS.get(name)
        if name in _NOT_POOLED:
            continue
        if not loader.needs:
            out.append(PoolEntry(loader=name))
        elif loader.data_name and root is not None and (root / loader.data_name).is_dir():
            out.append(PoolEntry(loader=name, options={"path": str(root / loader.data_name)}))
    out += [PoolEntry(loader="bigbench", options={"path": str(p)})
            for p in bigbench_folders(root)]
    out += [PoolEntry(loader="reasoning_gym", options={"dataset": d}) for d in rgym]
    return out


class TaskPool(BaseModel):
    """Loaded Tasks by name, and the entries that did not load (with why).

    Attributes:
        tasks: task name -> Task.
        skipped: entry label -> one-line reason it is not in the pool.
        sources: task name -> the entry that loaded it (how to load it again).
    """

    model_config = {"arbitrary_types_allowed": True}

    tasks: dict[str, Task] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    sources: dict[str, PoolEntry] = Field(default_factory=dict)

    def names(self) -> list[str]:
        """Task names, sorted."""
        return sorted(self.tasks)

    def summary(self) -> dict[str, Any]:
        """Plain JSON: per task its kind, version, label count and split sizes; the skips."""
        return {
            "tasks": {n: {"kind": t.kind, "version": t.version,
                          "labels": len(t.labels) if t.labels else None,
                          "sizes": {s: len(v) for s, v in t.splits.items()},
                          "source": self.sources[n].model_dump() if n in self.sources else None}
                      for n, t in sorted(self.tasks.items())},
            "skipped": dict(sorted(self.skipped.items())),
        }


def load_pool(entries: Sequence[PoolEntry], *, kinds: Sequence[TaskKind] | None = None,
              names: Sequence[str] | None = None, progress: bool = False) -> TaskPool:
    """Load the pool's Tasks; those that fail or are filtered out go to ``skipped``.

    Args:
        entries: what to load (:func:`pool_specs`).
        kinds: keep only Tasks of these kinds (None: all).
        names: keep only Tasks with these names (None: all).
        progress: show a progress bar.

    Example:
        >>> pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="word_reversal")],
        ...                  kinds=["classification"])
        >>> pool.names(), pool.skipped
        (['sst2'], {'word_reversal': 'kind generative not in classification'})
    """
    from metaskill.tasks.registry import TASKS, get_task

    pool = TaskPool()
    for entry in _track(list(entries), "loading the task pool", progress):
        declared = TASKS.get(entry.loader).kind if entry.loader in TASKS else ""
        if kinds is not None and declared and declared not in kinds:
            pool.skipped[entry.label] = f"kind {declared} not in {', '.join(kinds)}"
            continue
        try:
            task = get_task(entry.loader, **entry.options)
        except (MetaskillError, ImportError, OSError) as e:
            pool.skipped[entry.label] = str(e).splitlines()[0] if str(e) else type(e).__name__
            continue
        if kinds is not None and task.kind not in kinds:
            pool.skipped[entry.label] = f"kind {task.kind} not in {', '.join(kinds)}"
        elif names is not None and task.name not in names:
            pool.skipped[entry.label] = f"task {task.name} not asked for"
        elif task.name in pool.tasks:
            pool.skipped[entry.label] = f"another entry already loaded a task '{task.name}'"
        elif not any(e.answer is not None for e in task.splits.get("train", [])):
            pool.skipped[entry.label] = "no answered train examples"
        else:
            pool.tasks[task.name] = task
            pool.sources[task.name] = entry
    if names is not None:
        missing = sorted(set(names) - set(pool.tasks))
        if missing:
            raise MethodError(f"task(s) {', '.join(missing)} are not in the pool; it has: "
                              f"{', '.join(pool.names()) or 'none'}.")
    return pool


class LeaveOut(BaseModel):
    """The leave-tasks-out protocol: which tasks are trained on and which are held out.

    Held-out tasks contribute nothing to training, in any split; the results on them are
    the numbers that count. Written into every result JSON as ``protocol``.

    Attributes:
        schema_version: :data:`PROTOCOL_VERSION`.
        train_tasks: the pool's tasks meta-training may use (their ``train`` split only).
        held_out: tasks never trained on (evaluated on their own splits).
        train_split: the split of a training task that episodes and questions come from.
        versions: task name -> version, for every task named above that was loaded.
    """

    schema_version: int = PROTOCOL_VERSION
    train_tasks: list[str]
    held_out: list[str]
    train_split: str = "train"
    versions: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, pool: TaskPool, hold_out: Sequence[str], *,
           outside_ok: Sequence[str] = ()) -> LeaveOut:
        """The protocol that trains on every pool task except ``hold_out``.

        Args:
            pool: the loaded pool.
            hold_out: task names to hold out; each must be in the pool unless also listed
                in ``outside_ok`` (a user's task that never was in it).
            outside_ok: held-out names allowed to be absent from the pool.

        Raises:
            MethodError: a held-out name that is not in the pool (a typo would otherwise
                leave the task in training), or nothing left to train on.
        """
        unknown = [n for n in hold_out if n not in pool.tasks and n not in outside_ok]
        if unknown:
            raise MethodError(
                f"held-out task(s) {', '.join(unknown)} are not in the pool, so holding them "
                f"out would change nothing; pool tasks: {', '.join(pool.names())}."
            )
        held = list(dict.fromkeys(hold_out))
        train = [n for n in pool.names() if n not in held]
        if not train:
            raise MethodError("every pool task is held out; nothing is left to meta-train on.")
        versions = {n: pool.tasks[n].version for n in [*train, *held] if n in pool.tasks}
        return cls(train_tasks=train, held_out=held, versions=versions)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (what result files store under ``protocol``)."""
        return self.model_dump(mode="json")


def _track(items: list[Any], description: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


__all__ = ["DEFAULT_RGYM", "PROTOCOL_VERSION", "LeaveOut", "PoolEntry", "TaskPool",
           "bigbench_folders", "data_root", "load_pool", "pool_specs"]
