"""Tasks as data: a YAML task file validated against a schema.

A task file names its data (a built-in loader, or the user's JSONL/CSV/HF-datasets files
with a field mapping), its prompt, its verifier and its split protocol::

    name: my_reviews            # snake_case, unique in the registry
    version: 1
    description: Product reviews, positive or negative
    kind: classification        # classification | multiple_choice | generative
    source:
      path: reviews.jsonl       # one file or a list (pooled); relative to this file
      # splits: {train: train.csv, test: test.csv}   # or files already split
      format: jsonl             # jsonl | csv | hf-datasets (default: from the name)
      fields:
        input: text             # or a list of fields: [title, body]
        answer: label
        skills: topic           # optional: a field with a skill or a list of skills
        id: review_id           # optional: default '<file>:<line>'
        label_map: {"0": negative, "1": positive}
    labels: [negative, positive]
    label_descriptions:         # optional: what each label means, in words (meta-tuning)
      negative: a negative opinion of the product
      positive: a positive opinion of the product
    template: "Review: {input}\\nSentiment:"
    instructions: Answer with one word, positive or negative.
    verifier: {name: label}
    split: {seed: 0, sizes: {train: 200, dev: 100, test: 300}}

Or reuse a built-in loader and change only the prompt::

    name: sst2_terse
    source: {loader: sst2, options: {n_test: 100}}
    template: "{input} ->"

Every problem is one line naming the file, the field and the fix
(:class:`~metaskill.core.errors.TaskError`).

This module reads and checks the file format and builds Tasks from files; loading a task
file by path (which may name a registered loader) is
:func:`metaskill.tasks.registry.load_task_file`, one layer up.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "t.yaml"), "w").write("name: x\\nsource: {loder: sst2}\\n")
    >>> try: read_task_file(os.path.join(d, "t.yaml"))
    ... except TaskError as e: print(str(e).split(": ", 1)[1][:44])
    field 'source.loder': unknown field; allowed
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from metaskill.core.errors import TaskError
from metaskill.core.readers import parse_yaml, read_text
from metaskill.core.types import Example
from metaskill.tasks.base import Task, TaskKind
from metaskill.tasks.sources import FieldMap, FileSource, Format, read_hf_splits, read_records
from metaskill.tasks.sources import records_to_examples as _to_examples
from metaskill.tasks.splits import SplitSlice, plan_indices, protocol_metadata
from metaskill.tasks.verifiers import verifier_from_spec, verifier_spec


class SourceSpec(BaseModel):
    """The ``source`` block: a built-in ``loader`` (with ``options``), or files."""

    model_config = ConfigDict(extra="forbid")

    loader: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    path: str | list[str] | None = None
    splits: dict[str, str] | None = None
    format: Format | None = None
    fields: FieldMap = Field(default_factory=FieldMap)

    @model_validator(mode="after")
    def _one(self) -> SourceSpec:
        given = [k for k in ("loader", "path", "splits") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of loader, path or splits"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class SplitSpec(BaseModel):
    """The ``split`` block: the seed and the size of each split (in slicing order).

    A size of null takes the rest (last split only). Without sizes, a pooled source is
    cut into train min(200, N/3), dev min(100, N/6), test the rest; pre-split files keep
    all their records.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    sizes: dict[str, int | None] | None = None


class TaskFile(BaseModel):
    """The schema of a task file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = "1"
    description: str = ""
    source: SourceSpec
    template: str | None = None
    instructions: str | None = None
    labels: list[str] | None = None
    label_descriptions: dict[str, str] | None = None
    kind: TaskKind | None = None
    verifier: dict[str, Any] | str | None = None
    split: SplitSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            raise ValueError("use snake_case: lowercase letters, digits and '_', starting "
                             "with a letter")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError("give at least two distinct labels")
        return v


_FIXES = {
    "missing": "missing required field",
    "extra_forbidden": "unknown field",
}


def _one_line(path: Path, err: ValidationError) -> TaskError:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-")) or "(top)"
    kind = e["type"]
    if kind == "extra_forbidden":
        parent_model: Any = TaskFile
        for part in e["loc"][:-1]:
            field = parent_model.model_fields.get(str(part)) if hasattr(
                parent_model, "model_fields") else None
            ann = getattr(field, "annotation", None)
            parent_model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if parent_model is None:
                break
        allowed = ", ".join(parent_model.model_fields) if parent_model else ""
        msg = "unknown field" + (f"; allowed here: {allowed}." if allowed else ".")
    elif kind == "missing":
        msg = "missing required field; add it."
    elif kind == "literal_error":
        msg = e["msg"].replace("Input should be", "must be") + "."
    else:
        msg = e["msg"].removeprefix("Value error, ") + "."
    more = f" ({len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return TaskError(f"{path}: field '{loc}': {msg}{more}")


def read_task_file(path: str | Path) -> TaskFile:
    """Parse and schema-check a task file without loading its data.

    Raises:
        TaskError: missing file, invalid YAML (with the line), or a schema problem (the
            field and the fix).
    """
    p = Path(path)
    if not p.exists():
        raise TaskError(f"task file '{p}' does not exist.")
    raw = parse_yaml(read_text(p, "task file", TaskError), str(p), TaskError)
    if not isinstance(raw, dict):
        raise TaskError(f"{p}: a task file is a YAML mapping with at least 'name' and "
                        "'source'.")
    try:
        return TaskFile.model_validate(raw)
    except ValidationError as e:
        raise _one_line(p, e) from None


def _default_sizes(n: int) -> dict[str, int | None]:
    return {"train": min(200, n // 3), "dev": min(100, n // 6), "test": None}


def build_file_task(
    source: FileSource | SourceSpec,
    *,
    name: str,
    base_dir: Path | None = None,
    split: SplitSpec | None = None,
    version: str = "1",
    description: str = "",
    template: str | None = None,
    instructions: str | None = None,
    labels: list[str] | None = None,
    kind: TaskKind | None = None,
    verifier: dict[str, Any] | str | None = None,
    metadata: dict[str, Any] | None = None,
    lm: Any = None,
    label_descriptions: dict[str, str] | None = None,
) -> Task:
    """Build a Task from the user's files (the ``path``/``splits`` form of a source)."""
    base = base_dir or Path.cwd()
    split = split or SplitSpec()

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    splits: dict[str, list[Example]] = {}
    if source.path is not None:
        paths = [source.path] if isinstance(source.path, str) else list(source.path)
        records = []
        for p in paths:
            records.extend(read_records(resolve(p), source.format))
        examples = _to_examples(records, source.fields)
        n = len(examples)
        if n == 0:
            raise TaskError(f"{', '.join(paths)}: no records; the data file is empty.")
        sizes = split.sizes or _default_sizes(n)
        plan, pos = [], 0
        names = list(sizes)
        for i, sp in enumerate(names):
            size = sizes[sp]
            if size is None and i != len(names) - 1:
                raise TaskError(f"split.sizes.{sp}: only the last split may be null (the rest).")
            plan.append(SplitSlice(sp, "pool", pos, None if size is None else pos + size))
            pos += size or 0
        idx = plan_indices(plan, {"pool": n}, split.seed)
        splits = {sp: [examples[i] for i in idx[sp]] for sp in names}
        proto = protocol_metadata(plan, {"pool": n}, split.seed,
                                  pool=f"records of {', '.join(paths)} in that order")
    else:
        assert source.splits is not None
        plan, counts = [], {}
        per_file: dict[str, list[Example]] = {}
        for sp, p in source.splits.items():
            fp = resolve(p)
            fmt = source.format
            if fmt == "hf-datasets" or (fmt is None and (fp.is_dir() or fp.suffix in (
                    ".parquet", ".arrow"))):
                parts = read_hf_splits(fp) if fp.exists() else {}
                recs = parts.get(sp) or (parts.get("") if len(parts) == 1 else None)
                if recs is None and not fp.exists():
                    recs = read_records(fp, fmt)  # raises the missing-file error
                if recs is None:
                    raise TaskError(f"{fp}: no split '{sp}' (it has: {', '.join(parts)}); "
                                    "map source.splits to the names it has.")
            else:
                recs = read_records(fp, fmt)
            per_file[sp] = _to_examples(recs, source.fields)
            counts[sp] = len(per_file[sp])
            size = (split.sizes or {}).get(sp)
            plan.append(SplitSlice(sp, sp, 0, size))
            if counts[sp] == 0:
                raise TaskError(f"{fp}: split '{sp}' is empty; the data file has no records.")
        idx = plan_indices(plan, counts, split.seed)
        splits = {sp: [per_file[sp][i] for i in idx[sp]] for sp in source.splits}
        proto = protocol_metadata(plan, counts, split.seed,
                                  files={sp: str(p) for sp, p in source.splits.items()})
        all_ids = [e.id for v in splits.values() for e in v]
        if len(set(all_ids)) != len(all_ids):
            # ids repeat across pre-split files: prefix them with the split name
            splits = {sp: [e.model_copy(update={"id": f"{sp}/{e.id}"}) for e in v]
                      for sp, v in splits.items()}
    kind = kind or ("classification" if labels else "generative")
    if verifier is None:
        vspec: dict[str, Any] | str = {"name": "label", "labels": labels} if labels else "exact"
    else:
        vspec = verifier
    if isinstance(vspec, str):
        vspec = {"name": vspec}
    if vspec.get("name") in ("label",) and "labels" not in vspec and labels:
        vspec = {**vspec, "labels": labels}
    task = Task(name=name, version=version, description=description, splits=splits,
                template=template or "{input}", instructions=instructions or "",
                labels=labels, kind=kind, verifier=verifier_from_spec(vspec, lm=lm),
                label_descriptions=label_descriptions,
                metadata={**(metadata or {}), "split_protocol": proto})
    check_task(task)
    return task


def template_fields(template: str) -> set[str]:
    """The ``{field}`` names a template uses.

    Example:
        >>> sorted(template_fields("Title: {title}\\n{input}:"))
        ['input', 'title']
    """
    return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template)
            if f is not None and f != ""}


def check_task(task: Task, where: str | None = None) -> None:
    """Check a Task: every split non-empty, the template renders, labels cover answers.

    Raises:
        TaskError: naming the split, example or field and the fix.
    """
    at = f"{where}: " if where else ""
    for sp, exs in task.splits.items():
        if not exs:
            raise TaskError(f"{at}split '{sp}' of task '{task.name}' is empty; give it a size "
                            ">= 1 or remove it.")
        ex = exs[0]
        have = {"input"} | (set(ex.input) if isinstance(ex.input, dict) else set())
        missing = template_fields(task.template) - have
        if missing:
            raise TaskError(f"{at}template field(s) {', '.join(sorted(missing))} are not input "
                            f"fields; available: {', '.join(sorted(have))}. Fix 'template' or "
                            "fields.input.")
        try:
            task.render(ex)
        except (ValueError, IndexError, KeyError) as e:
            raise TaskError(f"{at}template does not render ({e}); escape literal braces as "
                            "{{ and }}.") from None
    if task.labels:
        allowed = {x.casefold() for x in task.labels}
        for sp, exs in task.splits.items():
            for e in exs:
                if e.answer is not None and e.answer.casefold() not in allowed:
                    raise TaskError(
                        f"{at}example '{e.id}' ({sp}) has answer '{e.answer}', not one of the "
                        f"labels {', '.join(task.labels)}; add it to labels or map it with "
                        "fields.label_map.")


def apply_task_file(spec: TaskFile, base: Task, path: str | Path, lm: Any = None) -> Task:
    """A copy of ``base`` (loaded by the file's ``source.loader``) with the file's changes.

    The file's name, version and description replace the base's; its template,
    instructions, labels, kind and verifier replace them where given.

    Args:
        spec: the task file, as :func:`read_task_file` returns it.
        base: the Task its ``source.loader`` loaded (with ``source.options``).
        path: the file (for messages and ``metadata['task_file']``).
        lm: an LM for verifiers that need one (``judge``).

    Raises:
        TaskError: a ``split`` field (a built-in loader splits its own data) or a Task
            the changes make inconsistent.

    Example:
        >>> from metaskill.tasks.registry import get_task
        >>> spec = TaskFile.model_validate({"name": "terse", "source": {"loader": "sst2"},
        ...                                 "template": "{input} ->"})
        >>> t = apply_task_file(spec, get_task("sst2", n_test=5), "terse.yaml")
        >>> t.name, t.template, t.metadata["loader"]
        ('terse', '{input} ->', 'sst2')
    """
    p = Path(path)
    if spec.split is not None:
        raise TaskError(f"{p}: field 'split': a built-in loader splits its own data; "
                        "pass seed and sizes in source.options (e.g. n_test: 100).")
    updates: dict[str, Any] = {"name": spec.name, "version": spec.version,
                               "description": spec.description or base.description}
    for key in ("template", "instructions", "labels", "label_descriptions", "kind"):
        if getattr(spec, key) is not None:
            updates[key] = getattr(spec, key)
    if spec.verifier is not None:
        vs = spec.verifier if isinstance(spec.verifier, dict) else {"name": spec.verifier}
        labels = updates.get("labels", base.labels)
        if vs.get("name") == "label" and "labels" not in vs and labels:
            vs = {**vs, "labels": labels}
        updates["verifier"] = verifier_from_spec(vs, lm=lm)
    updates["metadata"] = {**base.metadata, **spec.metadata, "task_file": str(p),
                           "loader": spec.source.loader, "loader_options": spec.source.options}
    task = base.model_copy(update=updates)
    check_task(task, str(p))
    return task


def task_to_file_dict(task: Task) -> dict[str, Any]:
    """The parts of a Task a task file can express (for ``tasks show --yaml``)."""
    return {"name": task.name, "version": task.version, "description": task.description,
            "kind": task.kind, "labels": task.labels, "template": task.template,
            "instructions": task.instructions, "verifier": verifier_spec(task.verifier)}
