"""Reading the user's data files (JSONL, CSV, HF datasets) into Examples via a field map.

Every bad input ends in a one-line :class:`~metaskill.core.errors.TaskError` that names
the file, the line and the fix: a malformed JSONL line, a missing field (with the fields
that do exist), an unreadable file.

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.jsonl")
    >>> _ = open(p, "w").write('{"q": "2+2", "a": 4}\\n')
    >>> recs = read_records(p)
    >>> recs[0].id, recs[0].data
    ('d.jsonl:1', {'q': '2+2', 'a': 4})
    >>> records_to_examples(recs, FieldMap(input="q", answer="a"))[0].answer
    '4'
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from metaskill.core.errors import TaskError
from metaskill.core.readers import loads
from metaskill.core.types import Example

Format = Literal["jsonl", "csv", "hf-datasets"]


@dataclass(frozen=True)
class Record:
    """One row of a source file.

    Attributes:
        id: ``"<file name>:<1-based line number>"`` (see :mod:`metaskill.tasks.splits`).
        file: the file's path as given.
        line: the 1-based line (or row) number.
        data: the row's fields.
    """

    id: str
    file: str
    line: int
    data: dict[str, Any]


class FieldMap(BaseModel):
    """Which fields of a record make an Example.

    Attributes:
        input: the input field, or a list of fields (the input becomes a mapping of them,
            usable by name in the template).
        answer: the reference-answer field (None for tasks without references).
        skills: a field holding a skill name or a list of skill names.
        id: a field holding a unique id (default: file name and line number).
        label_map: maps raw answer values (as strings) to label words, e.g.
            ``{"0": "negative", "1": "positive"}``.
        metadata: fields copied into the Example's metadata (default: every field not
            used above).
    """

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = "input"
    answer: str | None = "answer"
    skills: str | None = None
    id: str | None = None
    label_map: dict[str, str] | None = None
    metadata: list[str] | None = None


def infer_format(path: str | Path) -> Format:
    """The format a path's name implies: ``.jsonl``/``.json`` -> jsonl, ``.csv``/``.tsv`` ->
    csv, a folder, ``.parquet`` or ``.arrow`` -> hf-datasets.

    Example:
        >>> infer_format("a/train.csv")
        'csv'
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if p.is_dir() or suffix in (".parquet", ".arrow"):
        return "hf-datasets"
    raise TaskError(
        f"cannot tell the format of '{path}' from its name; set source.format to "
        "jsonl, csv or hf-datasets."
    )


def read_records(path: str | Path, format: Format | None = None) -> list[Record]:
    """All records of one file, in file order.

    Raises:
        TaskError: if the file is missing, unreadable, or a JSONL line is malformed.
    """
    p = Path(path)
    fmt = format or infer_format(p)
    if not p.exists():
        raise TaskError(f"data file '{p}' does not exist; check the path (relative paths "
                        "in a task file are relative to that file's folder).")
    if fmt == "jsonl":
        return _read_jsonl(p)
    if fmt == "csv":
        return _read_csv(p)
    if fmt == "hf-datasets":
        return _read_hf(p)
    raise TaskError(f"unknown format '{fmt}' for '{p}'; use jsonl, csv or hf-datasets.")


def _read_jsonl(p: Path) -> list[Record]:
    out: list[Record] = []
    try:
        fh = p.open(encoding="utf-8")
    except OSError as e:
        raise TaskError(f"cannot read '{p}': {e.strerror or e}.") from e
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                data = loads(line, f"{p}:{lineno}", TaskError, hint="fix or remove that "
                             "line (each line must be one JSON object).")
                if not isinstance(data, dict):
                    raise TaskError(
                        f"{p}:{lineno}: expected a JSON object per line, got "
                        f"{type(data).__name__}; wrap the value as {{\"input\": ...}}."
                    )
                out.append(Record(f"{p.name}:{lineno}", str(p), lineno, data))
        except UnicodeDecodeError as e:
            raise TaskError(f"{p}: not UTF-8 text ({e.reason}); re-encode it as UTF-8.") from None
    return out


def _read_csv(p: Path) -> list[Record]:
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    out: list[Record] = []
    try:
        with p.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            if not reader.fieldnames:
                raise TaskError(f"{p}: no header row; the first line must name the columns.")
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise TaskError(
                        f"{p}:{line}: more values than header columns "
                        f"({len(reader.fieldnames)}); quote values that contain '{delimiter}'."
                    )
                if all(v in (None, "") for v in row.values()):
                    continue
                out.append(Record(f"{p.name}:{line}", str(p), line, dict(row)))
    except UnicodeDecodeError as e:
        raise TaskError(f"{p}: not UTF-8 text ({e.reason}); re-encode it as UTF-8.") from None
    except csv.Error as e:
        raise TaskError(f"{p}: malformed CSV ({e}); check quoting.") from None
    except OSError as e:
        raise TaskError(f"cannot read '{p}': {e.strerror or e}.") from None
    return out


def read_hf_splits(p: Path) -> dict[str, list[Record]]:
    """Records of an HF ``datasets`` folder saved with ``save_to_disk`` (Dataset or
    DatasetDict; keys are split names, ``""`` for a single Dataset), or of one
    ``.parquet``/``.arrow`` file. Local files only; the hub is never contacted.
    """
    try:
        import datasets  # noqa: F401  (optional dependency)
    except ImportError:
        raise TaskError(
            f"reading '{p}' needs the 'datasets' package; pip install datasets "
            "(or convert the data to JSONL)."
        ) from None
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        if p.is_dir():
            obj = load_from_disk(str(p))
        elif p.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            obj = Dataset(pq.read_table(str(p)))
        else:
            obj = Dataset.from_file(str(p))
    except Exception as e:  # datasets raises many types for unreadable folders
        raise TaskError(f"cannot read HF dataset '{p}': {type(e).__name__}: {e}".split("\n")[0]
                        ) from None
    parts = dict(obj.items()) if isinstance(obj, DatasetDict) else {"": obj}
    out: dict[str, list[Record]] = {}
    for split, ds in parts.items():
        tag = f"{p.name}/{split}" if split else p.name
        out[split] = [
            Record(f"{tag}:{i + 1}", str(p), i + 1, dict(row)) for i, row in enumerate(ds)
        ]
    return out


def _read_hf(p: Path) -> list[Record]:
    parts = read_hf_splits(p)
    if len(parts) > 1:
        raise TaskError(
            f"'{p}' holds several splits ({', '.join(parts)}); name them in "
            "source.splits (split: path) or point source.path at one of them."
        )
    return next(iter(parts.values()))


def _get(rec: Record, name: str, role: str) -> Any:
    if name not in rec.data:
        have = ", ".join(sorted(rec.data)) or "none"
        raise TaskError(
            f"{rec.file}:{rec.line}: missing field '{name}' (the {role} field); fields there: "
            f"{have}. Set fields.{role} to one of them."
        )
    return rec.data[name]


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def records_to_examples(records: Sequence[Record], fields: FieldMap) -> list[Example]:
    """Turn records into Examples with ``fields``.

    Raises:
        TaskError: a missing field (names the file, line, field and the fields present),
            a label outside ``label_map``, or a duplicate id.
    """
    out: list[Example] = []
    seen: set[str] = set()
    used = {fields.answer, fields.skills, fields.id}
    used.update([fields.input] if isinstance(fields.input, str) else fields.input)
    for rec in records:
        if isinstance(fields.input, str):
            inp: str | dict[str, Any] = _as_text(_get(rec, fields.input, "input"))
        else:
            inp = {k: _as_text(_get(rec, k, "input")) for k in fields.input}
        answer: str | None = None
        if fields.answer is not None:
            raw = _get(rec, fields.answer, "answer")
            answer = None if raw is None else _as_text(raw)
            if fields.label_map is not None and answer is not None:
                if answer not in fields.label_map:
                    raise TaskError(
                        f"{rec.file}:{rec.line}: answer '{answer}' is not in fields.label_map "
                        f"(keys: {', '.join(fields.label_map)}); add it to the map."
                    )
                answer = fields.label_map[answer]
        skills: list[str] = []
        if fields.skills is not None:
            raw_s = _get(rec, fields.skills, "skills")
            if isinstance(raw_s, list):
                skills = [_as_text(s) for s in raw_s if s not in (None, "")]
            elif raw_s not in (None, ""):
                skills = [s.strip() for s in _as_text(raw_s).split(";") if s.strip()]
        ex_id = rec.id if fields.id is None else _as_text(_get(rec, fields.id, "id"))
        if ex_id in seen:
            raise TaskError(
                f"{rec.file}:{rec.line}: duplicate id '{ex_id}'; ids must be unique "
                "(drop fields.id to use file:line ids)."
            )
        seen.add(ex_id)
        keep = fields.metadata if fields.metadata is not None else [
            k for k in rec.data if k not in used
        ]
        meta = {k: rec.data[k] for k in keep if k in rec.data}
        meta["source_id"] = rec.id
        out.append(Example(id=ex_id, input=inp, answer=answer, skills=skills, metadata=meta))
    return out


class FileSource(BaseModel):
    """Where a file-backed task's data lives (the ``source`` block of a task file).

    Exactly one of ``path`` (one file or several, pooled and then split by the split
    protocol) or ``splits`` (split name -> file, already split) is set.
    """

    model_config = ConfigDict(extra="forbid")

    path: str | list[str] | None = None
    splits: dict[str, str] | None = None
    format: Format | None = None
    fields: FieldMap = Field(default_factory=FieldMap)
