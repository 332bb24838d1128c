"""The task registry: built-in task loaders and the user's task files, by name.

``get_task(name, **options)`` loads a Task; ``list_tasks()`` lists the names. Unknown
names raise :class:`~metaskill.core.errors.NotFoundError` with close names suggested; a
name that is already registered is refused, never shadowed.

Built-ins: ``sst2``, ``trec``, ``ag_news`` (shipped), ``gsm8k``, ``math``, ``math500``
(from a path or ``METASKILL_DATA``), ``bigbench`` (any task.json path),
``reasoning_gym`` (any dataset by name), ``word_reversal`` (a reasoning-gym string skill
for LoRA), ``compose`` (string skills and their compositions, see
:mod:`metaskill.tasks.compose`), ``file`` (the user's JSONL/CSV/HF files).

Example:
    >>> t = get_task("trec", n_test=50)
    >>> len(t.splits["test"]), t.labels[:3]
    (50, ['abbreviation', 'entity', 'description'])
    >>> try: get_task("sst")
    ... except NotFoundError as e: print(str(e).split(".")[0])
    unknown task 'sst'
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaskill.core.errors import MetaskillError, NotFoundError, TaskError
from metaskill.core.registry import Registry
from metaskill.tasks.base import Task
from metaskill.tasks.sources import FieldMap, FileSource
from metaskill.tasks.taskfile import SplitSpec, apply_task_file, build_file_task, read_task_file


@dataclass(frozen=True)
class TaskLoader:
    """A registered way to make a Task.

    Attributes:
        target: a function returning a Task, or a lazy ``"module:function"`` string.
        description: one line for ``tasks ls``.
        needs: what must be given for it to load ("" if it loads with no options),
            e.g. ``"path=DIR"``; shown by ``tasks ls``.
        data_name: the folder name under ``METASKILL_DATA`` that satisfies ``needs``.
        kind: the Task kind, for listings.
    """

    target: Callable[..., Task] | str
    description: str
    needs: str = ""
    data_name: str | None = None
    kind: str = ""

    def function(self) -> Callable[..., Task]:
        """The loader function (imported now if it was lazy)."""
        if callable(self.target):
            return self.target
        module, attr = self.target.split(":", 1)
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    def load(self, name: str, **options: Any) -> Task:
        """Call the loader, checking option names first (unknown ones are listed)."""
        fn = self.function()
        params = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(options) - set(params))
            if unknown:
                raise TaskError(f"task '{name}' has no option(s) {', '.join(unknown)}; it "
                                f"accepts: {', '.join(params) or 'none'}.")
        return fn(**options)


def make_registry() -> Registry[TaskLoader]:
    """A fresh registry holding the built-in loaders (tests use their own)."""
    r: Registry[TaskLoader] = Registry("task")
    b = "metaskill.tasks.builtin"
    r.register("sst2", TaskLoader(f"{b}:load_sst2", "SST-2 movie-review sentiment "
                                  "(negative/positive)", kind="classification"))
    r.register("trec", TaskLoader(f"{b}:load_trec", "TREC question type, 6 coarse classes",
                                  kind="classification"))
    r.register("ag_news", TaskLoader(f"{b}:load_ag_news", "AG News topic "
                                     "(World/Sports/Business/Sci-Tech)", kind="classification"))
    m = "metaskill.tasks.mathtasks"
    r.register("gsm8k", TaskLoader(f"{m}:load_gsm8k", "GSM8K grade-school math word problems",
                                   needs="path=DIR", data_name="gsm8k", kind="generative"))
    r.register("math", TaskLoader(f"{m}:load_math", "MATH competition problems, skill = "
                                  "subject", needs="path=DIR", data_name="math",
                                  kind="generative"))
    r.register("math500", TaskLoader(f"{m}:load_math500", "MATH with the MATH-500 test set",
                                     needs="path=DIR", data_name="math", kind="generative"))
    r.register("bigbench", TaskLoader("metaskill.tasks.bigbench:load_bigbench",
                                      "any BIG-bench JSON task; skills = subtasks + keywords",
                                      needs="path=TASK.json|DIR"))
    r.register("reasoning_gym", TaskLoader("metaskill.tasks.rgym:load_reasoning_gym",
                                           "reasoning-gym generators; skill = dataset name",
                                           needs="dataset=NAME", kind="generative"))
    r.register("word_reversal", TaskLoader("metaskill.tasks.rgym:load_word_reversal",
                                           "reverse a list of 3-8 words (reasoning-gym); a "
                                           "skill learnt by LoRA", kind="generative"))
    r.register("compose", TaskLoader("metaskill.tasks.compose:load_compose",
                                     "string-transformation skills and their compositions "
                                     "f(g(x)), depth 1-4, held-out pairs",
                                     kind="generative"))
    r.register("file", TaskLoader("metaskill.tasks.registry:load_file",
                                  "your JSONL/CSV/HF-datasets file(s) with a field mapping",
                                  needs="path=FILE"))
    return r


TASKS: Registry[TaskLoader] = make_registry()


def get_task(name: str, *, registry: Registry[TaskLoader] | None = None, **options: Any) -> Task:
    """Load the task registered as ``name`` (or a task file, if ``name`` is a YAML path).

    Args:
        name: a registered name, or the path of a ``.yaml``/``.yml`` task file.
        registry: where to look (default: :data:`TASKS`).
        **options: the loader's options (``seed``, ``n_test``, ``path`` ...).

    Raises:
        NotFoundError: an unknown name (close names suggested).
        TaskError: bad options or data.
    """
    reg = TASKS if registry is None else registry
    if name.endswith((".yaml", ".yml")) and name not in reg:
        if options:
            raise TaskError(f"options ({', '.join(options)}) cannot be passed to a task file; "
                            "put them in its source.options.")
        return load_task_file(name, registry=reg)
    return reg.get(name).load(name, **options)


def load_task_file(path: str | Path, *, registry: Registry[TaskLoader] | None = None,
                   lm: Any = None) -> Task:
    """Load a task file into a Task (data included).

    Args:
        path: the YAML file (see :mod:`metaskill.tasks.taskfile` for its fields).
        registry: where a ``source.loader`` name is looked up (default: :data:`TASKS`).
        lm: an LM for verifiers that need one (``judge``).

    Raises:
        TaskError: any problem, as one line naming the file, the field and the fix.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "t.yaml")
        >>> _ = open(p, "w").write("name: sst2_terse\\nsource: {loader: sst2, options: "
        ...                        "{n_test: 10}}\\ntemplate: '{input} ->'\\n")
        >>> t = load_task_file(p)
        >>> t.name, len(t.splits["test"])
        ('sst2_terse', 10)
    """
    p = Path(path)
    spec = read_task_file(p)
    src = spec.source
    try:
        if src.loader is not None:
            base = get_task(src.loader, registry=registry, **src.options)
            return apply_task_file(spec, base, p, lm=lm)
        return build_file_task(
            src, name=spec.name, base_dir=p.parent, split=spec.split, version=spec.version,
            description=spec.description, template=spec.template,
            instructions=spec.instructions, labels=spec.labels, kind=spec.kind,
            verifier=spec.verifier, metadata={**spec.metadata, "task_file": str(p)}, lm=lm,
            label_descriptions=spec.label_descriptions)
    except TaskError as e:
        msg = str(e)
        raise TaskError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    except MetaskillError as e:
        raise TaskError(f"{p}: {e}") from None


def validate_task_file(path: str | Path, *, registry: Registry[TaskLoader] | None = None
                       ) -> Task:
    """Check a task file end to end (schema, data, fields, template, labels, splits).

    Returns the loaded Task; raises :class:`~metaskill.core.errors.TaskError` with a
    one-line message.
    """
    return load_task_file(path, registry=registry)


def list_tasks(registry: Registry[TaskLoader] | None = None) -> list[str]:
    """The registered task names, sorted.

    Example:
        >>> {"sst2", "gsm8k", "reasoning_gym"} <= set(list_tasks())
        True
    """
    return (TASKS if registry is None else registry).names()


def register_task_file(path: str | Path, registry: Registry[TaskLoader] | None = None) -> str:
    """Register a task file under its ``name`` (schema-checked now, data loaded on use).

    Returns:
        The name it was registered under.

    Raises:
        TaskError: an invalid file. MetaskillError: the name is already registered.
    """
    reg = TASKS if registry is None else registry
    p = Path(path).resolve()
    spec = read_task_file(p)
    if spec.name in reg:
        raise TaskError(f"{p}: task '{spec.name}' is already registered; rename it "
                        "(a registered name is never silently shadowed).")
    loader = functools.partial(load_task_file, p, registry=reg)
    reg.register(spec.name, TaskLoader(loader, spec.description or f"task file {p.name}",
                                       kind=spec.kind or ""))
    return spec.name


def register_task_dir(folder: str | Path, registry: Registry[TaskLoader] | None = None
                      ) -> list[str]:
    """Register every ``*.yaml``/``*.yml`` task file in ``folder`` (sorted by name)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    files = sorted([*d.glob("*.yaml"), *d.glob("*.yml")])
    return [register_task_file(f, registry) for f in files]


def load_file(
    *, path: str | list[str] | None = None, splits: dict[str, str] | None = None,
    format: str | None = None, input: str | list[str] = "input",
    answer: str | None = "answer", skills: str | None = None, id: str | None = None,
    label_map: dict[str, str] | None = None, labels: list[str] | None = None,
    name: str = "file_task", template: str = "{input}", instructions: str = "",
    kind: str | None = None, verifier: dict[str, Any] | str | None = None, seed: int = 0,
    sizes: dict[str, int | None] | None = None,
) -> Task:
    """The user's own JSONL/CSV/HF-datasets file(s) as a Task (the ``file`` loader).

    Args:
        path: one file or several (pooled, then split by ``sizes``).
        splits: split name -> file, for data that is already split.
        format: jsonl, csv or hf-datasets (default: from the file name).
        input: the input field, or a list of fields.
        answer: the answer field.
        skills: a field with a skill or list of skills.
        id: a field with unique ids (default ``<file>:<line>``).
        label_map: raw answer -> label word.
        labels: the label set (makes it a classification task).
        name: the Task's name.
        template: the prompt template.
        instructions: the instructions.
        kind: classification, multiple_choice or generative.
        verifier: a verifier spec (default: label with labels, else exact).
        seed: the split seed.
        sizes: split sizes in slicing order (default train min(200, N/3), dev
            min(100, N/6), test the rest).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(p, "w").write("q,a\\n" + "".join(f"{i}+1,{i+1}\\n" for i in range(30)))
        >>> t = load_file(path=p, input="q", answer="a", sizes={"train": 10, "test": None})
        >>> len(t.splits["train"]), len(t.splits["test"])
        (10, 20)
    """
    if (path is None) == (splits is None):
        raise TaskError("the 'file' task needs exactly one of path=FILE or "
                        "splits={split: FILE}.")
    src = FileSource(path=path, splits=splits, format=format,  # type: ignore[arg-type]
                     fields=FieldMap(input=input, answer=answer, skills=skills, id=id,
                                     label_map=label_map))
    return build_file_task(src, name=name, split=SplitSpec(seed=seed, sizes=sizes),
                           template=template, instructions=instructions, labels=labels,
                           kind=kind, verifier=verifier)  # type: ignore[arg-type]


__all__ = ["TASKS", "NotFoundError", "TaskLoader", "get_task", "list_tasks", "load_file",
           "load_task_file", "make_registry", "register_task_dir", "register_task_file",
           "validate_task_file"]
