"""Skill discovery: four ways to fill the same :class:`~metaskill.skills.book.SkillBook`.

1. :func:`discover_from_labels` -- skills the task already carries in ``Example.skills``
   (MATH subjects, BIG-bench subtasks and keywords, reasoning-gym dataset names). A label
   ``parent/child`` (also ``parent::child``) makes a two-level hierarchy; the example is
   labelled with both.
2. :func:`discover_metacognitive` -- metacognitive labelling after Didolkar et al., 2024
   ("Metacognitive Capabilities of LLMs: An Exploration in Mathematical Problem Solving",
   arXiv:2405.12205), as STAT (He et al., 2025, "Skill-Targeted Adaptive Training") and
   AdaptMI (He et al., 2025, "Adaptive Skill-based In-context Math Instructions for Small
   Language Models") use it:

   a. a teacher LM names, in free text, the 1-3 skills each training example needs;
   b. the names are merged into a catalog by clustering their embeddings
      (agglomerative, cosine, average linkage; the number of skills comes from a distance
      threshold or a target count);
   c. the teacher writes a name and a description for each cluster;
   d. every example is relabelled against the final catalog (the teacher picks 1-3).

   What we changed: Didolkar et al. ask the LM itself to merge the fine-grained names; we
   merge by embedding clustering (cheap, deterministic, works with a 135M teacher) and let
   the teacher only name the clusters. In step (d) the teacher sees a shortlist of the
   catalog (the skills its own step-(a) names fell into plus those nearest the question by
   embedding, ``shortlist`` in all) so that prompts fit a small model's context.
3. :func:`discover_from_catalog` -- a user-supplied YAML catalog of names and descriptions;
   the teacher only picks from it (step d).
4. :func:`discover_by_embedding` -- cluster the examples' embeddings (k-means for a target
   count, agglomerative for a threshold) and name each cluster by what its members share
   (:func:`name_clusters`): the majority label of its train members where the task has a
   label set, else a teacher's short name where a teacher is given, else its most
   distinctive TF-IDF terms. Used by ``benchmarks/skills.py`` (terms only) and by the main
   job for tasks without skill labels.

Every skill also carries one typical member's text in ``metadata["example"]``; reports
show it on hover.

Teacher replies are *constrained* where the teacher enforces JSON schemas (``"json_schema"
in teacher.constraints``: llama.cpp, OpenAI-compatible servers): skill names come as
``{"skills": [{"name", "description"}]}``, picks from a catalog as ``{"skills": [...]}``
with an enum of that example's shortlist, cluster names as ``{"name", ...}``, so a small
teacher's reply always parses (:func:`ask_parsed` with a :class:`JsonAsk`). A reply that
breaks the schema on both of ``LM.complete``'s tries -- or, on a teacher without schemas,
free text that cannot be parsed even when asked again with a stricter prompt -- is
recorded: the example stays unlabelled (``SkillBook.unlabelled()``), the cluster keeps a
fallback name, and ``teacher_log["unparseable"]`` counts it. Nothing a teacher writes
crashes a run. Every teacher call goes through ``LM.complete`` and so
through the LM's cache: re-running discovery costs nothing.

:func:`discover` picks the source for a Task and records what it did in the book
(``SkillBook.info()["discovery"]``).

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.skills.book import SkillBook
    >>> from metaskill.skills.embed import HashEmbedder
    >>> exs = [Example(id=str(i), input=f"q{i}", skills=["algebra" if i % 2 else "geometry"])
    ...        for i in range(4)]
    >>> book = discover_from_labels(exs, SkillBook(embedder=HashEmbedder(dim=32)))
    >>> book.names(), len(book.examples_of("algebra"))
    (['algebra', 'geometry'], 2)
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, Field, ValidationError, create_model

from metaskill.core.errors import (
    MetaskillError,
    ModelNotFoundError,
    ServerUnreachableError,
)
from metaskill.core.types import Example, Request, Usage
from metaskill.lm.structured import parse_reply
from metaskill.skills.book import Skill, SkillBook, make_skill, to_snake

T = TypeVar("T")

Source = Literal["auto", "labels", "metacognitive", "catalog", "embedding"]


class DiscoveryConfig(BaseModel):
    """Settings of teacher-based discovery (metacognitive and catalog modes).

    Attributes:
        max_skills: most skills a teacher may name or pick for one example (1-3 in the papers).
        n_skills: target number of skills in the merged catalog; None uses
            ``distance_threshold`` instead.
        distance_threshold: cosine distance under which skill names merge into one cluster
            (0.35 merges paraphrases and near-synonyms with MiniLM).
        shortlist: catalog entries shown to the teacher when relabelling one example.
        max_tokens: tokens the teacher may write per answer.
        batch_size: teacher requests sent per ``LM.complete`` call.
        exemplars_per_skill: curated exemplars stored on each skill (the most typical ones).
        question_chars: a question is cut to this many characters in teacher prompts.
        seed: seed of clustering.
        progress: show progress bars on stderr.
    """

    max_skills: int = Field(3, ge=1, le=10)
    n_skills: int | None = Field(None, ge=1)
    distance_threshold: float = Field(0.35, gt=0.0, le=2.0)
    shortlist: int = Field(12, ge=2)
    max_tokens: int = Field(80, ge=8)
    batch_size: int = Field(16, ge=1)
    exemplars_per_skill: int = Field(4, ge=0)
    question_chars: int = Field(700, ge=50)
    seed: int = 0
    progress: bool = True


class CatalogEntry(BaseModel):
    """One skill of a user catalog."""

    name: str
    description: str = ""
    parent: str | None = None


# ---- teacher plumbing ------------------------------------------------------------------------


class _TeacherLog:
    """Counts teacher calls and tokens (cache hits count as calls with ``cached``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.cached = 0
        self.retries = 0
        self.failures = 0
        self.usage = Usage()

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cached": self.cached, "retries": self.retries,
                "unparseable": self.failures, "usage": self.usage.model_dump()}


def _request(teacher: Any, prompt: str, max_tokens: int,
             schema: type[BaseModel] | None = None) -> Request:
    if getattr(teacher, "chat", True):
        return Request(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                       json_schema=schema)
    stop = ("\n\n",) if schema is None else ()
    return Request(prompt=prompt.rstrip() + "\n", max_tokens=max_tokens, stop=stop,
                   json_schema=schema)


@dataclass(frozen=True)
class JsonAsk(Generic[T]):
    """How :func:`ask_parsed` asks a teacher that enforces JSON schemas.

    Attributes:
        prompt: item index -> the prompt (it describes the wanted JSON).
        model: item index -> the pydantic model the reply must fit (built per item where
            the options differ, e.g. an enum of that item's shortlist).
        read: (item index, parsed reply) -> value, or None when it is still unusable.
        max_tokens: tokens per reply (enough for the longest valid reply).
    """

    prompt: Callable[[int], str]
    model: Callable[[int], type[BaseModel]]
    read: Callable[[int, Any], T | None]
    max_tokens: int


def constrained(teacher: Any) -> bool:
    """Whether ``teacher`` enforces JSON schemas (then :class:`JsonAsk` is used)."""
    return "json_schema" in getattr(teacher, "constraints", frozenset())


def ask_parsed(
    teacher: Any,
    prompts: Sequence[str],
    parse: Callable[[int, str], T | None],
    retry: Callable[[str], str],
    *,
    max_tokens: int = 80,
    batch_size: int = 16,
    progress: bool = False,
    description: str = "asking the teacher",
    log: _TeacherLog | None = None,
    json: JsonAsk[T] | None = None,
) -> list[T | None]:
    """Ask the teacher each prompt, parse each answer, and ask once more where parsing fails.

    With ``json`` and a teacher that enforces schemas (:func:`constrained`), each item is
    asked ``json.prompt(i)`` for a reply valid under ``json.model(i)`` instead (the LM
    asks again itself where a reply breaks the schema; ``log.retries`` counts those), and
    ``json.read`` turns the parsed reply into the value.

    Args:
        teacher: an LM (its cache, if any, is used for every call).
        prompts: one prompt per item.
        parse: (item index, answer text) -> value, or None when the text cannot be read.
        retry: prompt -> a stricter prompt for the second try.
        max_tokens: tokens per answer.
        batch_size: requests per ``complete`` call.
        progress: show a progress bar.
        description: progress bar label.
        log: counts calls, tokens, retries and failures.
        json: how to ask a teacher that enforces JSON schemas (None: always free text).

    Returns:
        One parsed value per prompt; None where both tries failed.
    """
    log = log or _TeacherLog()
    if json is not None and constrained(teacher):
        return _ask_json(teacher, len(prompts), json, batch_size=batch_size,
                         progress=progress, description=description, log=log)
    out: list[T | None] = [None] * len(prompts)

    def run(indices: list[int], texts: list[str], label: str) -> list[int]:
        failed = []
        batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        for batch in _track(batches, label, progress):
            reqs = [_request(teacher, texts[i], max_tokens) for i in batch]
            comps = _complete_safely(teacher, reqs)
            for i, c in zip(batch, comps, strict=True):
                log.calls += 1
                if c is None:
                    failed.append(i)
                    continue
                log.cached += int(c.cached)
                log.usage = log.usage + c.usage
                value = _safe(parse, i, c.text)
                if value is None:
                    failed.append(i)
                else:
                    out[i] = value
        return failed

    idx = list(range(len(prompts)))
    failed = run(idx, list(prompts), description)
    if failed:
        log.retries += len(failed)
        retry_texts = {i: retry(prompts[i]) for i in failed}
        texts = [retry_texts.get(i, "") for i in range(len(prompts))]
        still = run(failed, texts, f"{description} (retry)")
        log.failures += len(still)
    return out


def _ask_json(teacher: Any, n: int, json: JsonAsk[T], *, batch_size: int, progress: bool,
              description: str, log: _TeacherLog) -> list[T | None]:
    """:func:`ask_parsed` for a teacher that enforces JSON schemas (one call per item)."""
    out: list[T | None] = [None] * n
    models = [json.model(i) for i in range(n)]
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    for batch in _track(batches, description, progress):
        reqs = [_request(teacher, json.prompt(i), json.max_tokens, models[i]) for i in batch]
        for i, c in zip(batch, _complete_safely(teacher, reqs), strict=True):
            log.calls += 1
            if c is None:
                log.failures += 1
                continue
            log.cached += int(c.cached)
            log.retries += c.retries
            log.usage = log.usage + c.usage
            value, _ = parse_reply(c.text, models[i])
            out[i] = None if value is None else _safe(json.read, i, value)  # type: ignore[arg-type]
            log.failures += int(out[i] is None)
    return out


def _complete_safely(teacher: Any, reqs: list[Request]) -> list[Any]:
    """``teacher.complete(reqs)``; if the batch fails, one by one, a failure giving None.

    An unreachable server or a missing model still raises: every item would fail.
    """
    try:
        return list(teacher.complete(reqs))
    except (ServerUnreachableError, ModelNotFoundError):
        raise
    except Exception:
        pass
    out: list[Any] = []
    for r in reqs:
        try:
            out.append(teacher.complete([r])[0])
        except (ServerUnreachableError, ModelNotFoundError):
            raise
        except Exception as e:  # e.g. a question longer than the context window
            _warn(f"teacher call failed ({type(e).__name__}: {e}); item left unlabelled")
            out.append(None)
    return out


def _safe(parse: Callable[[int, str], T | None], i: int, text: str) -> T | None:
    try:
        return parse(i, text)
    except Exception:
        return None


def _warn(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]warning:[/] {msg}", highlight=False)


# ---- parsing ---------------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*•>]+|\(?\d+[.):]|\(?[a-z][.)]|skill\s*\d*\s*[:.-])\s*", re.I)
_SENTENCE = {"i", "you", "we", "cannot", "can't", "sorry", "here", "sure", "is", "are", "this",
             "that", "it", "my", "your", "please", "would", "will"}
_GENERIC = {"skill", "skills", "none", "n_a", "na", "answer", "question", "solution",
            "the_answer", "skill_name", "example", "task"}


def parse_skill_names(text: str, max_n: int = 3) -> list[tuple[str, str]] | None:
    """Read skill names (with optional descriptions) out of a teacher's free text.

    Accepts JSON (a list of names, or of ``{"name", "description"}`` objects, or
    ``{"skills": [...]}``), or lines such as ``- fraction_addition: adding fractions``,
    ``1. Solving linear equations - ...``, or one comma-separated line.

    Returns:
        Up to ``max_n`` unique (snake_case name, description) pairs; None if none found.

    Example:
        >>> parse_skill_names("1. Linear equations: solve for x\\n2. fraction_addition")
        [('linear_equations', 'solve for x'), ('fraction_addition', '')]
        >>> parse_skill_names("I cannot help with that request, sorry about it.") is None
        True
    """
    found: list[tuple[str, str]] = []
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            data = data.get("skills", [data] if "name" in data else [])
        if isinstance(data, list):
            for item in data:
                if isinstance(item, str):
                    found.append((item, ""))
                elif isinstance(item, dict) and isinstance(item.get("name"), str):
                    found.append((item["name"], str(item.get("description", ""))))
    if not found:
        lines = [ln for ln in stripped.splitlines() if ln.strip()]
        if len(lines) == 1 and "," in lines[0] and ":" not in lines[0]:
            lines = lines[0].split(",")
        for ln in lines:
            ln = _BULLET.sub("", ln.strip()).strip().strip("`*\"'")
            if not ln:
                continue
            m = re.match(r"^(.{1,80}?)\s*(?::|\s-\s|\s–\s|\s—\s)\s*(.*)$", ln)
            name, desc = (m.group(1), m.group(2)) if m else (ln, "")
            found.append((name.strip().strip("`*\"'"), desc.strip()))
    return clean_names(found, max_n)


def clean_names(found: Sequence[tuple[str, str]], max_n: int = 3
                ) -> list[tuple[str, str]] | None:
    """Usable (snake_case name, description) pairs: no sentences, no generic words such as
    ``skill``, no duplicates; up to ``max_n``. None if none is left.

    Example:
        >>> clean_names([("Linear equations", "solve"), ("skill", ""), ("I cannot", "")])
        [('linear_equations', 'solve')]
    """
    out: list[tuple[str, str]] = []
    for name, desc in found:
        words = re.findall(r"[a-z0-9']+", name.lower())
        if len(words) > 5 or len(name) > 60 or _SENTENCE & set(words):
            continue
        snake = to_snake(name)
        if not snake or snake in _GENERIC or not re.search(r"[a-z]", snake):
            continue
        if snake not in [n for n, _ in out]:
            out.append((snake, desc[:200]))
        if len(out) >= max_n:
            break
    return out or None


def parse_choices(text: str, catalog: Sequence[str], max_n: int = 3) -> list[str] | None:
    """Read picks from a numbered catalog out of a teacher's answer (numbers or names).

    Returns:
        Up to ``max_n`` catalog names, in the order given; None if nothing matched.

    Example:
        >>> parse_choices("2, 3", ["algebra", "geometry", "counting"])
        ['geometry', 'counting']
        >>> parse_choices("Geometry.", ["algebra", "geometry"])
        ['geometry']
    """
    words = re.findall(r"[a-z0-9]+", text.lower())
    joined = "_" + "_".join(words) + "_"
    starts, pos = [], 1
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    hits: list[tuple[int, int, str]] = []  # (start, end, name)
    for name in catalog:
        at = joined.find(f"_{name}_")
        if at >= 0:
            hits.append((at + 1, at + 1 + len(name), name))
    for w, at in zip(words, starts, strict=True):
        if w.isdigit() and 1 <= int(w) <= len(catalog):
            if not any(a <= at < b for a, b, _ in hits):
                hits.append((at, at + len(w), catalog[int(w) - 1]))
    if not hits:  # near-misses of names, e.g. "word sortings"
        for n in range(4, 0, -1):
            for i in range(len(words) - n + 1):
                cand = "_".join(words[i : i + n])
                if len(cand) > 3:
                    close = difflib.get_close_matches(cand, catalog, n=1, cutoff=0.88)
                    if close:
                        hits.append((starts[i], starts[i] + len(cand), close[0]))
    picks: list[str] = []
    for _, _, name in sorted(hits):
        if name not in picks:
            picks.append(name)
    picks = picks[:max_n]
    return picks or None


# ---- constrained replies ---------------------------------------------------------------------

#: A skill name as the schema allows it: one to four lowercase words joined by underscores.
NAME_PATTERN = r"^[a-z]+(_[a-z]+){0,3}$"


class NamedSkill(BaseModel):
    """A skill a teacher names (snake_case by the schema)."""

    name: str = Field(max_length=40, pattern=NAME_PATTERN)
    description: str = Field(max_length=80)


class ClusterLabel(BaseModel):
    """A teacher's name for a cluster of examples."""

    name: str = Field(max_length=40, pattern=NAME_PATTERN)


def skills_model(max_n: int) -> type[BaseModel]:
    """``{"skills": [NamedSkill, ...]}`` with 1 to ``max_n`` entries.

    Example:
        >>> m = skills_model(2)
        >>> m.model_validate_json('{"skills": [{"name": "a_b", "description": "x"}]}').skills
        [NamedSkill(name='a_b', description='x')]
    """
    return create_model(  # type: ignore[call-overload,no-any-return]
        "SkillNames", skills=(list[NamedSkill], Field(min_length=1, max_length=max_n)))


def picks_model(options: Sequence[str], max_n: int) -> type[BaseModel]:
    """``{"skills": [...]}``: 1 to ``max_n`` names, each one of ``options`` (an enum).

    Example:
        >>> picks_model(["algebra", "geometry"], 1).model_validate_json(
        ...     '{"skills": ["geometry"]}').skills
        ['geometry']
    """
    name = Literal.__getitem__(tuple(options))  # type: ignore[attr-defined]
    return create_model(  # type: ignore[call-overload,no-any-return]
        "SkillPicks", skills=(list[name], Field(min_length=1, max_length=max_n)))


def _json_tokens(max_tokens: int, *, items: int, chars_per_item: int) -> int:
    """Tokens enough for ``items`` JSON entries of ``chars_per_item`` characters (about
    2.5 characters a token, plus the braces), or ``max_tokens`` if more."""
    return max(max_tokens, int(items * chars_per_item / 2.5) + 16)


def _read_names(value: Any, max_n: int) -> list[tuple[str, str]] | None:
    """The names of a constrained reply: already snake_case (the schema's pattern), so
    only generic words (``skill``, ``answer`` ...) and repeats are dropped."""
    out: list[tuple[str, str]] = []
    for s in value.skills:
        if s.name not in _GENERIC and s.name not in [n for n, _ in out]:
            out.append((s.name, s.description))
    return out[:max_n] or None


# ---- prompts ---------------------------------------------------------------------------------

def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _label_prompt(ex: Example, task_desc: str, cfg: DiscoveryConfig) -> str:
    ctx = f"Task: {task_desc}\n" if task_desc else ""
    ans = f"Reference answer: {_cut(ex.answer, 200)}\n" if ex.answer else ""
    return (
        "You are labelling the skills a question requires.\n"
        f"{ctx}Question:\n{_cut(ex.text, cfg.question_chars)}\n{ans}\n"
        f"Name the 1 to {cfg.max_skills} most important skills needed to solve it. "
        "Write one skill per line as `skill_name: short description`, where skill_name is "
        "two to four lowercase words joined by underscores. Write nothing else."
    )


def _label_json_prompt(ex: Example, task_desc: str, cfg: DiscoveryConfig) -> str:
    ctx = f"Task: {task_desc}\n" if task_desc else ""
    ans = f"Reference answer: {_cut(ex.answer, 200)}\n" if ex.answer else ""
    return (
        "You are labelling the skills a question requires.\n"
        f"{ctx}Question:\n{_cut(ex.text, cfg.question_chars)}\n{ans}\n"
        f"Name the 1 to {cfg.max_skills} most important skills needed to solve it. Reply "
        'with JSON: {"skills": [{"name": "<two to four lowercase words joined by '
        'underscores>", "description": "<short description>"}]}'
    )


def _label_retry(prompt: str) -> str:
    return (
        prompt + "\nYour previous answer could not be read. Answer ONLY with lines like:\n"
        "fraction_addition: adding fractions with unlike denominators"
    )


def _name_prompt(members: list[str], questions: list[str]) -> str:
    qs = "\n".join(f"- {q}" for q in questions)
    return (
        "These skill names were given to similar questions:\n"
        + ", ".join(members)
        + (f"\nExample questions:\n{qs}" if qs else "")
        + "\n\nGive ONE name for the shared skill and a one-sentence description, as "
        "`skill_name: description` (skill_name: two to four lowercase words joined by "
        "underscores). Write nothing else."
    )


def _name_json_prompt(members: list[str], questions: list[str]) -> str:
    qs = "\n".join(f"- {q}" for q in questions)
    return (
        "These skill names were given to similar questions:\n"
        + ", ".join(members)
        + (f"\nExample questions:\n{qs}" if qs else "")
        + "\n\nGive ONE name for the shared skill and a one-sentence description. Reply "
        'with JSON: {"skills": [{"name": "<two to four lowercase words joined by '
        'underscores>", "description": "<one sentence>"}]}'
    )


def _name_retry(prompt: str) -> str:
    return prompt + "\nAnswer ONLY with one line like:\nlinear_equations: solving for x"


def _pick_prompt(ex: Example, options: list[Skill], cfg: DiscoveryConfig, extra: str = "") -> str:
    lines = "\n".join(
        f"{i}. {s.name}: {_cut(s.description, 120)}" for i, s in enumerate(options, 1)
    )
    return (
        f"Skills:\n{lines}\n\nQuestion:\n{_cut(ex.text, cfg.question_chars)}\n{extra}\n"
        f"Which of the skills above does the question need? Answer with 1 to "
        f"{cfg.max_skills} numbers from the list, comma-separated, most important first."
    )


def _pick_json_prompt(ex: Example, options: list[Skill], cfg: DiscoveryConfig) -> str:
    lines = "\n".join(f"- {s.name}: {_cut(s.description, 120)}" for s in options)
    return (
        f"Skills:\n{lines}\n\nQuestion:\n{_cut(ex.text, cfg.question_chars)}\n\n"
        f"Which of the skills above does the question need? Reply with JSON: "
        f'{{"skills": [1 to {cfg.max_skills} skill names from the list, most important '
        f"first]}}"
    )


def _pick_retry(prompt: str) -> str:
    return prompt + "\nAnswer ONLY with numbers, for example: 2, 5"


# ---- the four sources ------------------------------------------------------------------------

def _prepare(book: SkillBook, examples: Sequence[Example], progress: bool) -> list[Example]:
    exs = list(examples)
    ids = [e.id for e in exs]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise MetaskillError(f"example ids must be unique; '{dup}' occurs more than once.")
    if not exs:
        raise MetaskillError("no examples to discover skills from.")
    book.add_examples(exs, progress=progress)
    return exs


#: Characters of a member example kept in ``Skill.metadata["example"]`` (the report's hover).
EXAMPLE_CHARS = 200


def _finish(book: SkillBook, record: dict[str, Any], per_skill: int) -> SkillBook:
    """Store curated exemplars (the most typical examples), one typical member's text in
    ``metadata["example"]``, and the discovery record."""
    for skill in book.skills():
        typical = book.exemplars(skill.name, k=max(per_skill, 1))
        if not typical:
            continue
        changes: dict[str, Any] = {
            "metadata": {**skill.metadata, "example": _cut(typical[0].text, EXAMPLE_CHARS)}}
        if per_skill > 0:
            changes["exemplars"] = [e.id for e in typical]
        book.update_skill(skill.name, **changes)
    record.setdefault("unlabelled", len(book.unlabelled()))
    record.setdefault("skills", len(book))
    record["created"] = time.time()
    book.set_discovery(record)
    return book


def discover_from_labels(
    examples: Sequence[Example],
    book: SkillBook,
    *,
    task_name: str = "",
    descriptions: dict[str, str] | None = None,
    exemplars_per_skill: int = 4,
    progress: bool = False,
) -> SkillBook:
    """Skills from the labels the examples already carry (``Example.skills``).

    Args:
        examples: training examples; those without labels are stored unlabelled.
        book: the SkillBook to fill.
        task_name: recorded as provenance and used in default descriptions.
        descriptions: optional label -> description.
        exemplars_per_skill: curated exemplars per skill.
        progress: show progress bars.

    Returns:
        ``book``, filled.

    Raises:
        MetaskillError: if no example carries a label.
    """
    t0 = time.perf_counter()
    exs = list(examples)
    raw = {s for e in exs for s in e.skills}
    if not raw:
        raise MetaskillError(
            f"the examples of task '{task_name or '?'}' carry no skill labels; use a teacher "
            "(--teacher SPEC), a catalog (--catalog FILE) or --source embedding."
        )
    descriptions = descriptions or {}
    leaf_of: dict[str, tuple[str, str | None]] = {}
    parts = {r: re.split(r"/|::", r, maxsplit=1) for r in raw}
    leaves = Counter(to_snake(p[-1]) for p in parts.values())
    for r, p in parts.items():
        parent = to_snake(p[0]) if len(p) == 2 else None
        leaf = to_snake(p[-1]) or "unnamed"
        name = leaf if leaves[leaf] == 1 or parent is None else to_snake(r)
        leaf_of[r] = (name, parent)
    skills: dict[str, Skill] = {}
    counts = Counter(s for e in exs for s in e.skills)
    for r in sorted(raw, key=lambda r: (-counts[r], r)):
        name, parent = leaf_of[r]
        where = f" in task '{task_name}'" if task_name else ""
        if parent and parent not in skills:
            skills[parent] = make_skill(
                name=parent, source="labels",
                description=descriptions.get(parent, f"Examples labelled '{parent}'{where}."),
            )
        if name not in skills:
            skills[name] = make_skill(
                name=name, parent=parent, source="labels", metadata={"label": r},
                description=descriptions.get(r, f"Examples labelled '{r}'{where}."),
            )
    ordered = [s for s in skills.values() if s.parent is None] + [
        s for s in skills.values() if s.parent is not None]
    book.add_skills(ordered, replace=True)
    _prepare(book, exs, progress)
    labels: dict[str, list[str]] = {}
    for e in exs:
        names: list[str] = []
        for r in e.skills:
            name, parent = leaf_of[r]
            names.extend([parent, name] if parent else [name])
        labels[e.id] = list(dict.fromkeys(names))
    book.label_many(labels)
    return _finish(book, {"source": "labels", "task": task_name, "examples": len(exs),
                          "seconds": round(time.perf_counter() - t0, 3)}, exemplars_per_skill)


def _cluster(vectors: np.ndarray, n_clusters: int | None, threshold: float) -> np.ndarray:
    """Agglomerative clustering (cosine, average linkage) -> cluster id per row."""
    if vectors.shape[0] == 1:
        return np.zeros(1, dtype=int)
    from sklearn.cluster import AgglomerativeClustering

    if n_clusters is not None:
        n = min(n_clusters, vectors.shape[0])
        model = AgglomerativeClustering(n_clusters=n, metric="cosine", linkage="average")
    else:
        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=threshold, metric="cosine", linkage="average"
        )
    return np.asarray(model.fit_predict(vectors))


def discover_metacognitive(
    examples: Sequence[Example],
    book: SkillBook,
    teacher: Any,
    *,
    config: DiscoveryConfig | None = None,
    task_name: str = "",
    task_description: str = "",
) -> SkillBook:
    """Metacognitive skill discovery: teacher names skills, clustering merges, teacher relabels.

    See the module docstring for the four steps and what we changed from the paper.

    Args:
        examples: training examples.
        book: the SkillBook to fill.
        teacher: any LM (``LM.complete``); its cache makes re-runs free.
        config: clustering and prompting settings.
        task_name: provenance.
        task_description: one line shown to the teacher.

    Returns:
        ``book``, filled; examples whose labels could not be read are unlabelled.
    """
    cfg = config or DiscoveryConfig()
    t0 = time.perf_counter()
    log = _TeacherLog()
    exs = _prepare(book, examples, cfg.progress)

    # (a) free-text skill names for every example
    named = ask_parsed(
        teacher, [_label_prompt(e, task_description, cfg) for e in exs],
        lambda i, t: parse_skill_names(t, cfg.max_skills), _label_retry,
        max_tokens=cfg.max_tokens, batch_size=cfg.batch_size, progress=cfg.progress,
        description="naming skills", log=log,
        json=JsonAsk(lambda i: _label_json_prompt(exs[i], task_description, cfg),
                     lambda i: skills_model(cfg.max_skills),
                     lambda i, v: _read_names(v, cfg.max_skills),
                     _json_tokens(cfg.max_tokens, items=cfg.max_skills, chars_per_item=150)),
    )
    raw_counts: Counter[str] = Counter()
    raw_desc: dict[str, str] = {}
    raw_examples: dict[str, list[str]] = {}
    for e, pairs in zip(exs, named, strict=True):
        for name, desc in pairs or []:
            raw_counts[name] += 1
            raw_examples.setdefault(name, []).append(e.id)
            if desc and name not in raw_desc:
                raw_desc[name] = desc
    if not raw_counts:
        book.set_discovery({"source": "metacognitive", "task": task_name,
                            "teacher": getattr(teacher, "spec", "?"), "examples": len(exs),
                            "teacher_log": log.as_dict(), "raw_names": 0})
        raise MetaskillError(
            f"the teacher '{getattr(teacher, 'spec', '?')}' gave no readable skill names for "
            f"any of {len(exs)} examples; try a stronger teacher (--teacher SPEC) or a "
            "catalog (--catalog FILE)."
        )

    # (b) merge names by clustering their embeddings
    raw_names = sorted(raw_counts, key=lambda n: (-raw_counts[n], n))
    texts = [n.replace("_", " ") for n in raw_names]
    vecs = book.embedder.encode(texts, progress=cfg.progress)
    assign = _cluster(vecs, cfg.n_skills, cfg.distance_threshold)
    clusters: dict[int, list[str]] = {}
    for name, c in zip(raw_names, assign, strict=True):
        clusters.setdefault(int(c), []).append(name)
    groups = sorted(clusters.values(), key=lambda ms: -sum(raw_counts[m] for m in ms))

    # (c) the teacher names and describes each cluster
    by_id = {e.id: e for e in exs}
    shown = []
    for members in groups:
        qids = list(dict.fromkeys(i for m in members for i in raw_examples[m]))[:2]
        shown.append((members[:12], [_cut(by_id[i].text, 200) for i in qids]))
    names = ask_parsed(
        teacher, [_name_prompt(*x) for x in shown], lambda i, t: parse_skill_names(t, 1),
        _name_retry, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
        progress=cfg.progress, description="naming clusters", log=log,
        json=JsonAsk(lambda i: _name_json_prompt(*shown[i]), lambda i: skills_model(1),
                     lambda i, v: _read_names(v, 1),
                     _json_tokens(cfg.max_tokens, items=1, chars_per_item=150)),
    )
    catalog: list[Skill] = []
    member_of: dict[str, str] = {}
    for members, got in zip(groups, names, strict=True):
        if got:
            name, desc, by = got[0][0], got[0][1], "teacher"
        else:  # fall back to the most frequent member name
            name, desc, by = members[0], raw_desc.get(members[0], ""), "fallback"
        base, k = name, 2
        while name in {s.name for s in catalog}:
            name, k = f"{base}_{k}", k + 1
        desc = desc or "Covers: " + ", ".join(m.replace("_", " ") for m in members[:8]) + "."
        catalog.append(make_skill(
            name=name, description=desc, source="metacognitive",
            metadata={"members": members, "named_by": by,
                      "raw_count": sum(raw_counts[m] for m in members)},
        ))
        for m in members:
            member_of[m] = name
    book.add_skills(catalog, replace=True)

    # (d) relabel every example against the final catalog
    hints = [[member_of[n] for n, _ in pairs] if pairs else [] for pairs in named]
    labels = _pick_labels(book, exs, teacher, catalog, cfg, log, hints)
    book.label_many({i: s for i, s in labels.items() if s})
    record = {"source": "metacognitive", "task": task_name,
              "teacher": getattr(teacher, "spec", "?"), "examples": len(exs),
              "raw_names": len(raw_names), "teacher_log": log.as_dict(),
              "config": cfg.model_dump(), "seconds": round(time.perf_counter() - t0, 3)}
    return _finish(book, record, cfg.exemplars_per_skill)


def _pick_labels(
    book: SkillBook,
    exs: list[Example],
    teacher: Any,
    catalog: list[Skill],
    cfg: DiscoveryConfig,
    log: _TeacherLog,
    hints: list[list[str]] | None = None,
) -> dict[str, list[str]]:
    """Teacher picks 1..max_skills catalog entries per example, from a shortlist.

    The shortlist is the catalog itself when it is short; otherwise the entries named in
    ``hints`` (e.g. the clusters of the teacher's own step-(a) names) followed by the
    entries nearest the question by embedding, ``cfg.shortlist`` in all.
    """
    by_name = {s.name: s for s in catalog}
    names = [s.name for s in catalog]
    sims = None
    if len(catalog) > cfg.shortlist:
        cat_vecs = book.embedder.encode([s.text() for s in catalog])
        ex_vecs = book.embedder.encode([e.text for e in exs])
        sims = ex_vecs @ cat_vecs.T
    prompts, options = [], []
    for i, e in enumerate(exs):
        if sims is None:
            opts = names
        else:
            first = list(dict.fromkeys(hints[i] if hints else []))[: cfg.shortlist]
            nearest = [names[j] for j in np.argsort(-sims[i], kind="stable")]
            merged = first + [n for n in nearest if n not in set(first)]
            opts = sorted(merged[: cfg.shortlist], key=names.index)
        options.append(opts)
        prompts.append(_pick_prompt(e, [by_name[n] for n in opts], cfg))
    longest = max((len(n) for n in names), default=8)
    picks = ask_parsed(
        teacher, prompts, lambda i, t: parse_choices(t, options[i], cfg.max_skills),
        _pick_retry, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
        progress=cfg.progress, description="labelling examples", log=log,
        json=JsonAsk(  # an enum of this example's shortlist
            lambda i: _pick_json_prompt(exs[i], [by_name[n] for n in options[i]], cfg),
            lambda i: picks_model(options[i], cfg.max_skills),
            lambda i, v: list(dict.fromkeys(v.skills)),
            _json_tokens(cfg.max_tokens, items=cfg.max_skills, chars_per_item=longest + 4)),
    )
    return {e.id: (picks[i] or []) for i, e in enumerate(exs)}


def load_catalog(path: str | Path) -> list[CatalogEntry]:
    """Read a skill catalog from YAML (or JSON).

    Accepted shapes: a list of ``{name, description[, parent]}`` mappings, a mapping
    ``name: description``, or either under a top-level ``skills:`` key. Names are turned
    into snake_case.

    Raises:
        MetaskillError: for a missing file, bad YAML, or an entry without a name.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = p.write_text("- name: Linear equations\\n  description: solve for x\\n")
        >>> load_catalog(p)[0].name
        'linear_equations'
    """
    from metaskill.core.readers import parse_yaml, read_text

    p = Path(path)
    if not p.exists():
        raise MetaskillError(f"catalog file not found: {p}")
    data = parse_yaml(read_text(p, "skill catalog"), f"catalog {p}")
    if isinstance(data, dict) and "skills" in data:
        data = data["skills"]
    if isinstance(data, dict):
        data = [{"name": k, "description": v or ""} for k, v in data.items()]
    if not isinstance(data, list) or not data:
        raise MetaskillError(
            f"catalog {p} must be a non-empty list of {{name, description}} entries "
            "(or a mapping name: description)."
        )
    out: list[CatalogEntry] = []
    for n, item in enumerate(data, 1):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not str(item.get("name") or "").strip():
            raise MetaskillError(f"catalog {p}: entry {n} has no name.")
        try:
            entry = CatalogEntry(
                name=to_snake(str(item["name"]), max_words=12),
                description=str(item.get("description") or ""),
                parent=to_snake(str(item["parent"]), max_words=12) if item.get("parent") else None,
            )
        except ValidationError as e:
            raise MetaskillError(f"catalog {p}: entry {n}: {e.errors()[0]['msg']}") from None
        if not entry.name:
            raise MetaskillError(f"catalog {p}: entry {n} has no usable name.")
        out.append(entry)
    names = [e.name for e in out]
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise MetaskillError(f"catalog {p}: duplicate skill name '{dup[0]}'.")
    return out


def discover_from_catalog(
    examples: Sequence[Example],
    book: SkillBook,
    teacher: Any,
    catalog: Sequence[CatalogEntry] | str | Path,
    *,
    config: DiscoveryConfig | None = None,
    task_name: str = "",
) -> SkillBook:
    """Skills from a user catalog; the teacher only picks, for each example, from it.

    Args:
        examples: training examples.
        book: the SkillBook to fill.
        teacher: any LM.
        catalog: entries, or the path of a YAML catalog (see :func:`load_catalog`).
        config: prompting settings.
        task_name: provenance.

    Returns:
        ``book``, filled; examples whose picks could not be read are unlabelled.
    """
    cfg = config or DiscoveryConfig()
    t0 = time.perf_counter()
    entries = load_catalog(catalog) if isinstance(catalog, (str, Path)) else list(catalog)
    log = _TeacherLog()
    skills = [make_skill(name=e.name, description=e.description, parent=e.parent,
                         source="catalog") for e in entries]
    from metaskill.skills.book import _parents_first

    book.add_skills(_parents_first(skills), replace=True)
    exs = _prepare(book, examples, cfg.progress)
    labels = _pick_labels(book, exs, teacher, skills, cfg, log)
    book.label_many({i: s for i, s in labels.items() if s})
    record = {"source": "catalog", "task": task_name, "teacher": getattr(teacher, "spec", "?"),
              "examples": len(exs), "teacher_log": log.as_dict(), "config": cfg.model_dump(),
              "seconds": round(time.perf_counter() - t0, 3)}
    return _finish(book, record, cfg.exemplars_per_skill)


def cluster_terms(
    texts: Sequence[str], assign: np.ndarray, n_terms: int = 8
) -> dict[int, list[str]]:
    """The most distinctive TF-IDF terms of each cluster (cluster mean minus overall mean).

    Example:
        >>> t = cluster_terms(["red apple", "green apple", "fast car", "red car"],
        ...                   np.array([0, 0, 1, 1]), n_terms=1)
        >>> t[0], t[1]
        (['apple'], ['car'])
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b",
                          sublinear_tf=True, max_features=50000)
    try:
        x = vec.fit_transform(texts)
    except ValueError:  # empty vocabulary
        return {int(c): [] for c in set(assign.tolist())}
    vocab = np.array(vec.get_feature_names_out())
    overall = np.asarray(x.mean(axis=0)).ravel()
    out: dict[int, list[str]] = {}
    for c in sorted(set(assign.tolist())):
        mean = np.asarray(x[assign == c].mean(axis=0)).ravel()
        score = mean - overall
        top = [int(j) for j in np.argsort(-score, kind="stable")[:n_terms] if mean[j] > 0]
        out[int(c)] = [str(vocab[j]) for j in top]
    return out


def majority_label(
    answers: Sequence[str | None], labels: Sequence[str]
) -> tuple[str, int, int] | None:
    """The most common label among ``answers``, its count, and how many answers are labels.

    Answers match labels case- and space-insensitively; answers outside the label set are
    ignored; a tie goes to the label listed first in ``labels``.

    Returns:
        (label as spelled in ``labels``, its count, answers that are labels), or None when
        no answer is a label.

    Example:
        >>> majority_label(["human", "Human ", "location", None, "n/a"],
        ...                ["location", "human"])
        ('human', 2, 3)
        >>> majority_label(["x"], ["a", "b"]) is None
        True
    """
    canon = {str(lab).strip().lower(): str(lab) for lab in labels}
    got = [canon[a.strip().lower()] for a in answers
           if a is not None and a.strip().lower() in canon]
    if not got:
        return None
    counts = Counter(got)
    order = {lab: i for i, lab in enumerate(canon.values())}
    best = min(counts, key=lambda lab: (-counts[lab], order[lab]))
    return best, counts[best], len(got)


@dataclass(frozen=True)
class ClusterName:
    """The name :func:`name_clusters` gave one cluster.

    Attributes:
        name: a unique snake_case skill name.
        description: one sentence on what the members share.
        named_by: ``label`` (majority label of its members), ``teacher`` or ``terms``.
        metadata: ``terms`` and, for ``label``, ``label``, ``label_count``, ``labelled``.
    """

    name: str
    description: str
    named_by: Literal["label", "teacher", "terms"]
    metadata: dict[str, Any] = field(default_factory=dict)


def _cluster_name_prompt(questions: Sequence[str]) -> str:
    qs = "\n".join(f"- {q}" for q in questions)
    return (
        f"These questions belong to one group:\n{qs}\n\n"
        "Give the group a short name that says what its questions have in common: two to "
        "four lowercase words joined by underscores (for example: questions_about_dates). "
        "Write only the name."
    )


def _cluster_name_json_prompt(questions: Sequence[str]) -> str:
    qs = "\n".join(f"- {q}" for q in questions)
    return (
        f"These questions belong to one group:\n{qs}\n\n"
        "Give the group a short name that says what its questions have in common. Reply "
        'with JSON: {"name": "<two to four lowercase words joined by underscores, for '
        'example questions_about_dates>"}'
    )


def _cluster_name_retry(prompt: str) -> str:
    return prompt + "\nAnswer ONLY with the name, for example: questions_about_dates"


def _teacher_names(
    teacher: Any, clusters: Sequence[Sequence[Example]], log: _TeacherLog, progress: bool
) -> list[str | None]:
    """A teacher's short snake_case name per cluster (None where its reply is unusable)."""
    shown = [[_cut(e.text, 160) for e in members[:5]] for members in clusters]
    got = ask_parsed(
        teacher, [_cluster_name_prompt(qs) for qs in shown],
        lambda i, t: parse_skill_names(t, 1), _cluster_name_retry,
        max_tokens=24, progress=progress, description="naming clusters", log=log,
        json=JsonAsk(lambda i: _cluster_name_json_prompt(shown[i]), lambda i: ClusterLabel,
                     lambda i, v: None if v.name in _GENERIC else [(v.name, "")], 32),
    )
    return [g[0][0] if g else None for g in got]


def _unique_names(bases: Sequence[str], terms: Sequence[Sequence[str]]) -> list[str]:
    """Make names unique, deterministically: a name shared by several clusters gets each
    cluster's first distinctive term not already in it (``human_rockefeller``); what still
    clashes gets ``_2``, ``_3`` ... in cluster order."""
    shared = Counter(bases)
    named: list[str] = []
    for base, words in zip(bases, terms, strict=True):
        extra = next((to_snake(w) for w in words if to_snake(w) and
                      to_snake(w) not in base.split("_")), "")
        named.append(f"{base}_{extra}" if shared[base] > 1 and extra else base)
    out: list[str] = []
    for name in named:
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name}_{k}", k + 1
        out.append(unique)
    return out


def name_clusters(
    clusters: Sequence[Sequence[Example]],
    terms: Sequence[Sequence[str]],
    *,
    labels: Sequence[str] | None = None,
    teacher: Any = None,
    progress: bool = False,
    log: _TeacherLog | None = None,
) -> list[ClusterName]:
    """Name each cluster of examples by what its members share.

    In order of preference: the majority label of the members' reference answers where
    ``labels`` (the task's label set) is given -- pass it only for examples of the training
    pool; else a teacher's short name (free text, read as snake_case, asked once more if
    unusable) where a teacher is given; else the cluster's distinctive ``terms``. Names are
    deterministic (same clusters, same names) and unique (see :func:`_unique_names`).

    Args:
        clusters: the members of each cluster, most typical first (the teacher sees the
            first five).
        terms: the distinctive terms of each cluster (:func:`cluster_terms`).
        labels: the task's label set, or None.
        teacher: an LM, or None.
        progress: show a progress bar while the teacher names.
        log: counts teacher calls.

    Returns:
        One :class:`ClusterName` per cluster, in order.

    Example:
        >>> exs = [Example(id=str(i), input=f"q{i}", answer=a)
        ...        for i, a in enumerate(["human", "human", "numeric", "human"])]
        >>> [n.name for n in name_clusters([exs[:2], exs[2:3], exs[3:]],
        ...                                [["who"], ["year"], ["born"]],
        ...                                labels=["human", "numeric"])]
        ['human_who', 'numeric', 'human_born']
        >>> name_clusters([exs[:2]], [["who", "born"]])[0].name
        'who_born'
    """
    picks: list[tuple[str, int, int] | None] = [
        majority_label([e.answer for e in members], labels) if labels else None
        for members in clusters]
    ask = [i for i, p in enumerate(picks) if p is None]
    by_teacher: dict[int, str | None] = {}
    if teacher is not None and ask:
        got = _teacher_names(teacher, [clusters[i] for i in ask], log or _TeacherLog(),
                             progress)
        by_teacher = dict(zip(ask, got, strict=True))
    bases: list[str] = []
    out: list[tuple[str, Literal["label", "teacher", "terms"], dict[str, Any]]] = []
    for i, (pick, words) in enumerate(zip(picks, terms, strict=True)):
        about = ("; about: " + ", ".join(words[:5])) if words else ""
        meta: dict[str, Any] = {"terms": list(words)}
        label_name = to_snake(pick[0]) if pick else ""
        if pick and label_name:
            label, count, labelled = pick
            bases.append(label_name)
            meta.update(label=label, label_count=count, labelled=labelled)
            out.append((f"Training examples mostly labelled '{label}' ({count} of "
                        f"{labelled}){about}.", "label", meta))
        elif by_teacher.get(i):
            bases.append(str(by_teacher[i]))
            out.append((f"Named by the teacher{about}.", "teacher", meta))
        else:
            bases.append("_".join(to_snake(w) for w in words[:3]) or f"cluster_{i + 1}")
            out.append((("Examples about: " + ", ".join(words) + ".") if words
                        else "An example cluster.", "terms", meta))
    names = _unique_names(bases, terms)
    return [ClusterName(name=n, description=d, named_by=by, metadata=m)
            for n, (d, by, m) in zip(names, out, strict=True)]


def discover_by_embedding(
    examples: Sequence[Example],
    book: SkillBook,
    *,
    n_skills: int | None = None,
    distance_threshold: float = 0.6,
    seed: int = 0,
    exemplars_per_skill: int = 4,
    task_name: str = "",
    progress: bool = False,
    labels: Sequence[str] | None = None,
    teacher: Any = None,
) -> SkillBook:
    """Skills as clusters of the examples' embeddings, named by what their members share.

    With ``n_skills`` k-means (``n_init=4``) makes exactly that many clusters; without it,
    agglomerative clustering (cosine, average linkage) cuts at ``distance_threshold``
    (quadratic memory: keep it to ~20k examples). Each example gets its cluster's skill.
    Clusters are named by :func:`name_clusters`: majority label (with ``labels``), else a
    teacher's name (with ``teacher``), else distinctive terms.

    Args:
        examples: training examples (with ``labels``, their answers name the clusters: pass
            only examples of the training pool).
        book: the SkillBook to fill.
        n_skills: target number of skills, or None to use the threshold.
        distance_threshold: cosine distance cut for agglomerative clustering.
        seed: k-means seed.
        exemplars_per_skill: curated exemplars per skill.
        task_name: provenance.
        progress: show progress bars.
        labels: the task's label set (a classification task), or None.
        teacher: an LM that names clusters without a majority label, or None.

    Returns:
        ``book``, filled.
    """
    t0 = time.perf_counter()
    exs = _prepare(book, examples, progress)
    vecs = book.embedder.encode([e.text for e in exs])
    if n_skills is not None:
        if n_skills < 1:
            raise MetaskillError(f"n_skills must be >= 1, got {n_skills}.")
        k = min(n_skills, len(exs))
        from sklearn.cluster import KMeans

        assign = np.asarray(KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(vecs))
    else:
        assign = _cluster(vecs, None, distance_threshold)
    terms = cluster_terms([e.text for e in exs], assign)
    sizes = Counter(assign.tolist())
    first = {int(c): int(np.argmax(assign == c)) for c in sizes}
    order = sorted(sizes, key=lambda c: (-sizes[c], first[int(c)]))
    members = [_most_typical(exs, vecs, assign == c) for c in order]
    log = _TeacherLog()
    names = name_clusters(members, [terms.get(int(c), []) for c in order], labels=labels,
                          teacher=teacher, progress=progress, log=log)
    skills: list[Skill] = []
    name_of: dict[int, str] = {}
    for c, got in zip(order, names, strict=True):
        name_of[int(c)] = got.name
        skills.append(make_skill(name=got.name, description=got.description, source="embedding",
                                 metadata={"cluster": int(c), "named_by": got.named_by,
                                           **got.metadata}))
    book.add_skills(skills, replace=True)
    book.label_many({e.id: [name_of[int(c)]] for e, c in zip(exs, assign, strict=True)})
    record: dict[str, Any] = {
        "source": "embedding", "task": task_name, "examples": len(exs), "n_skills": n_skills,
        "distance_threshold": None if n_skills else distance_threshold,
        "named_by": dict(Counter(n.named_by for n in names)),
        "seconds": round(time.perf_counter() - t0, 3)}
    if log.calls:
        record.update(teacher=getattr(teacher, "spec", "?"), teacher_log=log.as_dict())
    return _finish(book, record, exemplars_per_skill)


def _most_typical(exs: list[Example], vecs: np.ndarray, mask: np.ndarray) -> list[Example]:
    """The examples under ``mask``, nearest their centroid first (ties in input order)."""
    rows = np.flatnonzero(mask)
    sims = vecs[rows] @ vecs[rows].mean(axis=0)
    return [exs[int(rows[j])] for j in np.argsort(-sims, kind="stable")]


def naming_labels(task: Any, split: str) -> list[str] | None:
    """The label set whose majority names embedding clusters, or None.

    Only a classification task's labels of the ``train`` split: naming must never read the
    answers of dev or test examples, and the option letters of a multiple-choice task say
    nothing about what its questions share.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> t = NS(labels=["human", "numeric"], kind="classification")
        >>> naming_labels(t, "train"), naming_labels(t, "dev")
        (['human', 'numeric'], None)
        >>> naming_labels(NS(labels=["A", "B"], kind="multiple_choice"), "train") is None
        True
    """
    labels = getattr(task, "labels", None)
    if split != "train" or not labels or getattr(task, "kind", None) == "multiple_choice":
        return None
    return [str(lab) for lab in labels]


def discover(
    task: Any,
    book: SkillBook,
    *,
    source: Source = "auto",
    teacher: Any = None,
    catalog: Sequence[CatalogEntry] | str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
    config: DiscoveryConfig | None = None,
    n_skills: int | None = None,
) -> SkillBook:
    """Discover the skills of a Task's split into ``book``, choosing the source.

    ``source="auto"`` picks: the catalog if one is given (teacher picks from it); else
    metacognitive labelling if a teacher is given; else the labels the examples carry;
    else embedding clustering. Embedding clusters are named by their members' majority
    label when the task is a classification task and ``split`` is ``train`` (see
    :func:`naming_labels`), else by the teacher if one is given, else by their terms.

    Args:
        task: a :class:`~metaskill.tasks.base.Task`.
        book: the SkillBook to fill (new skills replace same-named ones).
        source: ``auto``, ``labels``, ``metacognitive``, ``catalog`` or ``embedding``.
        teacher: an LM for ``metacognitive`` and ``catalog``; with ``embedding`` it names
            the clusters that have no majority label.
        catalog: entries or a YAML path, for ``catalog``.
        split: the split to learn from.
        limit: use only the first ``limit`` examples of the split.
        config: teacher-mode settings (also gives ``n_skills`` and ``progress``).
        n_skills: target number of skills (metacognitive, embedding); overrides config.

    Returns:
        ``book``, filled.

    Raises:
        MetaskillError: if the source needs a teacher or catalog that was not given, or the
            split has no labels for ``labels``.
    """
    cfg = (config or DiscoveryConfig()).model_copy()
    if n_skills is not None:
        cfg.n_skills = n_skills
    exs = list(task.examples(split))
    if limit is not None:
        if limit < 1:
            raise MetaskillError(f"--limit must be >= 1, got {limit}.")
        exs = exs[:limit]
    if source == "auto":
        if catalog is not None:
            source = "catalog"
        elif teacher is not None:
            source = "metacognitive"
        elif any(e.skills for e in exs):
            source = "labels"
        else:
            source = "embedding"
    if source in ("metacognitive", "catalog") and teacher is None:
        raise MetaskillError(f"source '{source}' needs a teacher LM (--teacher SPEC).")
    name = getattr(task, "name", "")
    if source == "labels":
        return discover_from_labels(exs, book, task_name=name,
                                    exemplars_per_skill=cfg.exemplars_per_skill,
                                    progress=cfg.progress)
    if source == "metacognitive":
        return discover_metacognitive(exs, book, teacher, config=cfg, task_name=name,
                                      task_description=getattr(task, "description", ""))
    if source == "catalog":
        if catalog is None:
            raise MetaskillError("source 'catalog' needs a catalog (--catalog FILE).")
        return discover_from_catalog(exs, book, teacher, catalog, config=cfg, task_name=name)
    if source == "embedding":
        return discover_by_embedding(exs, book, n_skills=cfg.n_skills, seed=cfg.seed,
                                     exemplars_per_skill=cfg.exemplars_per_skill,
                                     task_name=name, progress=cfg.progress,
                                     labels=naming_labels(task, split), teacher=teacher)
    raise MetaskillError(
        f"unknown source '{source}'; use auto, labels, metacognitive, catalog or embedding."
    )


def _track(items: list[Any], description: str, enabled: bool) -> Any:
    from metaskill.skills.embed import _track as track

    return track(items, description, enabled)
