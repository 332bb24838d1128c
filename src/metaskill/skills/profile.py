"""Missing-Skill Profile: which skills a model lacks, measured on held-out examples.

After STAT (He et al., 2025, "Skill-Targeted Adaptive Training") and AdaptMI+ (He et al.,
2025, "AdaptMI: Adaptive Skill-based In-context Math Instructions for Small Language
Models"):

1. Run a Solver on the dev split through the harness (:func:`metaskill.eval.harness.evaluate`).
2. Find the difficult examples: those the Verifier fails (score below ``pass_score``).
   Where an example has no reference answer, it is difficult when several samples of
   the model disagree (the majority answer's share is below ``min_agreement``).
3. For each difficult example a teacher LM sees the question, the model's answer (and
   the reference, when there is one) and the skill catalog, and names the 1-3 skills the
   model is missing (AdaptMI+). Without a teacher -- or when the teacher's answer cannot
   be read, after one retry -- the missing skills fall back to the example's own labels.
4. Aggregate per skill:

   * ``accuracy``: mean score over dev examples that carry the skill;
   * ``missing_rate``: the share of difficult examples in which the skill was named
     missing (STAT's definition: the rows sum to at least 1 over skills, more when
     several skills are missing together).

An example's own labels are, in order of preference: its labels in the SkillBook (when
the book was built on it), the labels it carries (``Example.skills``, mapped onto the
book's names), else the nearest skills in the book by embedding (``via="examples"``).

A :class:`Profile` is plain data with a schema version; it prints as a rich table
(weakest skills first) and renders as an HTML section with a per-skill chart for the
report (:func:`profile_section`, a section for ``metaskill.eval.report.render_html``).

Example:
    >>> p = Profile(task="t", split="dev", n=4, n_difficult=2, accuracy=0.5, skills=[
    ...     SkillProfile(skill="a", n=2, score=2.0, missing=0, missing_rate=0.0),
    ...     SkillProfile(skill="b", n=2, score=0.0, missing=2, missing_rate=1.0)])
    >>> [s.skill for s in p.weakest()]
    ['b', 'a']
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from metaskill.core.errors import MetaskillError
from metaskill.core.readers import read_json
from metaskill.core.types import Example, Request
from metaskill.skills.book import SkillBook, to_snake
from metaskill.skills.discover import (
    JsonAsk,
    _cut,
    _json_tokens,
    _pick_retry,
    _read_names,
    _TeacherLog,
    _track,
    ask_parsed,
    parse_choices,
    parse_skill_names,
    picks_model,
    skills_model,
)

SCHEMA_VERSION = 1

MissingSource = Literal["teacher", "labels", "labels_after_unparseable_teacher", "none"]


class ProfileConfig(BaseModel):
    """Settings of :func:`build_profile`.

    Attributes:
        split: the split to profile on (held out from discovery and training).
        limit: profile a seeded random subset of this many examples.
        seed: seed of that subset.
        pass_score: an example passes when its verifier score is at least this.
        samples: samples drawn per reference-less example to judge agreement.
        temperature: sampling temperature for those samples.
        min_agreement: a reference-less example is difficult when the most common answer's
            share among its samples (and the greedy answer) is below this.
        max_missing: most skills the teacher may name missing per example (AdaptMI+: 1-3).
        shortlist: catalog entries shown to the teacher per example.
        max_tokens: tokens per teacher answer.
        batch_size: requests per LM call (harness and teacher).
        progress: progress bars on stderr.
    """

    model_config = {"extra": "forbid"}

    split: str = "dev"
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    pass_score: float = Field(1.0, ge=0.0, le=1.0)
    samples: int = Field(3, ge=2)
    temperature: float = Field(0.8, gt=0.0, le=2.0)
    min_agreement: float = Field(0.67, gt=0.0, le=1.0)
    max_missing: int = Field(3, ge=1, le=5)
    shortlist: int = Field(12, ge=2)
    max_tokens: int = Field(60, ge=4)
    batch_size: int = Field(16, ge=1)
    progress: bool = True


class SkillProfile(BaseModel):
    """One skill's row of a Profile.

    Attributes:
        skill: the skill name.
        n: dev examples carrying the skill.
        score: summed scores on them.
        missing: difficult examples in which the skill was named missing.
        missing_rate: ``missing`` / number of difficult examples.
        description: the skill's description (from the SkillBook), for display.
    """

    skill: str
    n: int = 0
    score: float = 0.0
    missing: int = 0
    missing_rate: float = 0.0
    description: str = ""

    @property
    def accuracy(self) -> float | None:
        """Mean score over the examples carrying the skill (None when there are none)."""
        return self.score / self.n if self.n else None


class DifficultExample(BaseModel):
    """A difficult example and the skills named missing.

    Attributes:
        example_id: the Example's id.
        question: the question text.
        output: the model's answer.
        reference: the reference answer (None for reference-less tasks).
        score: the verifier's score (or the agreement for reference-less examples).
        reason: why it counts as difficult.
        skills: the example's own labels.
        missing: skills named missing.
        source: who named them: ``teacher``, ``labels`` (no teacher),
            ``labels_after_unparseable_teacher`` or ``none`` (no labels to fall back on).
    """

    example_id: str
    question: str
    output: str
    reference: str | None = None
    score: float = 0.0
    reason: str = ""
    skills: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    source: MissingSource = "labels"


class Profile(BaseModel):
    """A Missing-Skill Profile of one Solver on one Task split.

    Attributes:
        schema_version: version of this JSON layout.
        task, split: what was profiled.
        model: the LM spec of the Solver.
        solver: the Solver's JSON.
        teacher: the teacher's spec, or None when labels were used.
        run_id: the harness Run the profile was built from.
        n: examples profiled.
        n_difficult: how many were difficult.
        accuracy: mean score over all examples.
        skills: per-skill rows.
        difficult: the difficult examples with their missing skills.
        teacher_log: teacher calls, retries, unparseable answers and tokens.
        created: Unix time.
    """

    schema_version: int = SCHEMA_VERSION
    kind: Literal["metaskill.profile"] = "metaskill.profile"
    task: str
    split: str = "dev"
    model: str | None = None
    solver: dict[str, Any] = Field(default_factory=dict)
    teacher: str | None = None
    run_id: str | None = None
    n: int = 0
    n_difficult: int = 0
    accuracy: float = 0.0
    skills: list[SkillProfile] = Field(default_factory=list)
    difficult: list[DifficultExample] = Field(default_factory=list)
    teacher_log: dict[str, Any] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)

    def weakest(self, k: int | None = None) -> list[SkillProfile]:
        """Skills sorted weakest first: highest missing rate, then lowest accuracy, then name."""
        rows = sorted(self.skills, key=lambda s: (
            -s.missing_rate, s.accuracy if s.accuracy is not None else 2.0, s.skill))
        return rows if k is None else rows[:k]

    def skill(self, name: str) -> SkillProfile:
        """The row of one skill.

        Raises:
            MetaskillError: if the profile has no such skill.
        """
        for s in self.skills:
            if s.skill == name:
                return s
        raise MetaskillError(f"the profile has no skill '{name}'.")

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (folders created); returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile saved with :meth:`save`.

        Raises:
            MetaskillError: for a missing file, bad JSON, a newer schema, or not a profile.
        """
        p = Path(path)
        if not p.exists():
            raise MetaskillError(f"profile file not found: {p}")
        data = read_json(p, "profile file", expect=dict)
        if data.get("kind") != "metaskill.profile":
            raise MetaskillError(f"{p} is not a metaskill profile (no kind 'metaskill.profile').")
        version = data.get("schema_version", 0)
        if not isinstance(version, int):
            raise MetaskillError(f"{p}: 'schema_version' must be a whole number, got "
                                 f"{type(version).__name__}.")
        if version > SCHEMA_VERSION:
            raise MetaskillError(
                f"{p} has profile schema version {data['schema_version']}; this metaskill "
                f"reads up to {SCHEMA_VERSION}. Upgrade metaskill."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise MetaskillError(f"{p}: malformed profile: {str(e).splitlines()[0]}") from None


# ---- labels of dev examples --------------------------------------------------------------

def example_skills(example: Example, book: SkillBook | None) -> list[str]:
    """The skills of an example, as the profile counts them (see the module docstring)."""
    if book is None or len(book) == 0:
        return list(dict.fromkeys(to_snake(s) for s in example.skills if to_snake(s)))
    if book.has_example(example.id):
        own = book.labels(example.id)
        if own:
            return own
    names = set(book.names())
    mapped: list[str] = []
    for raw in example.skills:
        parts = [p for p in raw.replace("::", "/").split("/") if p]
        cands = [to_snake(raw)] + [to_snake(p) for p in parts]
        mapped.extend(c for c in cands if c in names)
    if mapped:
        return list(dict.fromkeys(mapped))
    hits = book.nearest_skills(example, k=1)
    return [hits[0][0].name] if hits else []


# ---- difficulty of reference-less examples -----------------------------------------------

def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _agreement(
    solver: Any, task: Any, records: list[Any], cfg: ProfileConfig
) -> dict[str, tuple[float, list[str]]]:
    """Majority share among the greedy answer and ``cfg.samples`` sampled answers."""
    if not records:
        return {}
    extract = getattr(solver, "extract", None)
    reqs = [Request(prompt=r.prompt, n=cfg.samples, temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens * 4, seed=cfg.seed) for r in records]
    out: dict[str, tuple[float, list[str]]] = {}
    batches = [list(range(i, min(i + cfg.batch_size, len(reqs))))
               for i in range(0, len(reqs), cfg.batch_size)]
    for batch in _track(batches, "sampling for agreement", cfg.progress):
        comps = solver.lm.complete([reqs[i] for i in batch])
        for i, c in zip(batch, comps, strict=True):
            texts = [extract(task, t) if extract else t for t in c.texts]
            answers = [_normalise(records[i].output), *(_normalise(t) for t in texts)]
            share = Counter(answers).most_common(1)[0][1] / len(answers)
            out[records[i].example_id] = (share, texts)
    return out


# ---- the teacher names missing skills ------------------------------------------------------

def _missing_prompt(question: str, output: str, reference: str | None,
                    options: list[tuple[str, str]], max_missing: int) -> str:
    ref = f"Reference answer: {_cut(reference, 200)}\n" if reference else ""
    if options:
        lines = "\n".join(f"{i}. {n}: {_cut(d, 120)}" for i, (n, d) in enumerate(options, 1))
        return (
            "A student answered this question incorrectly.\n"
            f"Skills:\n{lines}\n\nQuestion:\n{_cut(question, 700)}\n"
            f"Student's answer: {_cut(output, 300)}\n{ref}\n"
            f"Which 1 to {max_missing} skills from the list is the student missing? Answer "
            "with numbers from the list, comma-separated, most important first."
        )
    return (
        "A student answered this question incorrectly.\n"
        f"Question:\n{_cut(question, 700)}\nStudent's answer: {_cut(output, 300)}\n{ref}\n"
        f"Name the 1 to {max_missing} skills the student is missing, one per line as "
        "`skill_name: short description`. Write nothing else."
    )


def _missing_json_prompt(question: str, output: str, reference: str | None,
                         options: list[str], max_missing: int) -> str:
    ref = f"Reference answer: {_cut(reference, 200)}\n" if reference else ""
    head = (f"A student answered this question incorrectly.\nQuestion:\n{_cut(question, 700)}"
            f"\nStudent's answer: {_cut(output, 300)}\n{ref}\n")
    if options:
        return (head + f"Skills: {', '.join(options)}\nWhich 1 to {max_missing} of these "
                "skills is the student missing? Reply with JSON: "
                '{"skills": [skill names from the list, most important first]}')
    return (head + f"Name the 1 to {max_missing} skills the student is missing. Reply with "
            'JSON: {"skills": [{"name": "snake_case_name", "description": "one sentence"}]}')


def _missing_json(difficult: list[Any], by_id: dict[str, Example], options: list[list[str]],
                  cfg: ProfileConfig) -> JsonAsk[list[str]]:
    """The constrained ask for missing skills: an enum of each example's shortlist, or
    free snake_case names where there is no catalog."""

    def prompt(i: int) -> str:
        r = difficult[i]
        ex = by_id[r.example_id]
        return _missing_json_prompt(ex.text, r.output, ex.answer, options[i], cfg.max_missing)

    def model(i: int) -> type[BaseModel]:
        if options[i]:
            return picks_model(options[i], cfg.max_missing)
        return skills_model(cfg.max_missing)

    def read(i: int, value: Any) -> list[str] | None:
        if options[i]:
            return list(dict.fromkeys(value.skills)) or None
        got = _read_names(value, cfg.max_missing)
        return [n for n, _ in got] if got else None

    longest = max((len(o) for opts in options for o in opts), default=40)
    return JsonAsk(prompt, model, read, _json_tokens(cfg.max_tokens, items=cfg.max_missing,
                                                     chars_per_item=longest + 4))


def _shortlist(book: SkillBook | None, catalog: list[tuple[str, str]], ex: Example,
               own: list[str], n: int) -> list[tuple[str, str]]:
    if len(catalog) <= n:
        return catalog
    desc = dict(catalog)
    picked = [s for s in own if s in desc][:n]
    if book is not None:
        for skill, _ in book.nearest_skills(ex, k=n, via="description"):
            if skill.name in desc and skill.name not in picked:
                picked.append(skill.name)
    for name, _ in catalog:  # pad deterministically
        if len(picked) >= n:
            break
        if name not in picked:
            picked.append(name)
    order = [name for name, _ in catalog]
    return [(s, desc[s]) for s in sorted(picked[:n], key=order.index)]


# ---- build ---------------------------------------------------------------------------------

def build_profile(
    solver: Any,
    task: Any,
    *,
    book: SkillBook | None = None,
    teacher: Any = None,
    config: ProfileConfig | None = None,
    store: Any = None,
    run: Any = None,
) -> Profile:
    """Build the Missing-Skill Profile of ``solver`` on ``task``.

    Args:
        solver: the Solver to profile (:class:`metaskill.eval.solver.Solver`).
        task: the Task; its ``config.split`` split is evaluated.
        book: the SkillBook whose skills form the catalog and give labels; None uses the
            examples' own labels.
        teacher: an LM that names missing skills (AdaptMI+); None falls back to labels.
        config: see :class:`ProfileConfig`.
        store: a run store for the harness (so the run is kept and resumable).
        run: an existing harness Run of this solver on this split, reused instead of
            evaluating again.

    Returns:
        The Profile.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> from metaskill.eval.solvers import ZeroShot
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class Exact(Verifier):
        ...     def verify(self, output, example):
        ...         return Verdict(score=float(output.strip() == example.answer))
        >>> task = Task(name="t", verifier=Exact(), splits={"dev": [
        ...     Example(id="1", input="2+2", answer="4", skills=["addition"]),
        ...     Example(id="2", input="3*3", answer="9", skills=["multiplication"])]})
        >>> p = build_profile(ZeroShot(ScriptedLM({"2+2": "4"}, default="6")), task,
        ...                   config=ProfileConfig(progress=False))
        >>> [(s.skill, s.accuracy, s.missing_rate) for s in p.weakest()]
        [('multiplication', 0.0, 1.0), ('addition', 1.0, 0.0)]
    """
    cfg = config or ProfileConfig()
    if run is None:
        from metaskill.eval.harness import evaluate

        run = evaluate(solver, task, cfg.split, limit=cfg.limit, seed=cfg.seed, store=store,
                       batch_size=cfg.batch_size, progress=cfg.progress)
    by_id = {e.id: e for e in task.examples(cfg.split)}
    records = [r for r in run.records if r.example_id in by_id]
    if not records:
        raise MetaskillError(f"the run of task '{task.name}' split '{cfg.split}' has no records.")

    # 2. difficult examples
    no_ref = [r for r in records if by_id[r.example_id].answer is None]
    agree = _agreement(solver, task, no_ref, cfg) if no_ref else {}
    scores: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for r in records:
        if r.example_id in agree:
            share = agree[r.example_id][0]
            scores[r.example_id] = 1.0 if share >= cfg.min_agreement else 0.0
            reasons[r.example_id] = f"samples agree {share:.0%}"
        else:
            scores[r.example_id] = float(r.score)
            reasons[r.example_id] = r.error or r.reason or ""
    difficult = [r for r in records if scores[r.example_id] < cfg.pass_score]
    own = {r.example_id: example_skills(by_id[r.example_id], book) for r in records}

    # 3. missing skills of each difficult example
    catalog: list[tuple[str, str]]
    if book is not None and len(book):
        catalog = [(s.name, s.description) for s in book.skills()]
    else:
        names = list(dict.fromkeys(s for r in records for s in own[r.example_id]))
        catalog = [(n, "") for n in names]
    log = _TeacherLog()
    named: list[list[str] | None] = [None] * len(difficult)
    if teacher is not None and difficult:
        prompts, options = [], []
        for r in difficult:
            ex = by_id[r.example_id]
            opts = _shortlist(book, catalog, ex, own[r.example_id], cfg.shortlist)
            options.append([n for n, _ in opts])
            prompts.append(_missing_prompt(ex.text, r.output, ex.answer, opts, cfg.max_missing))

        def parse(i: int, text: str) -> list[str] | None:
            if options[i]:
                return parse_choices(text, options[i], cfg.max_missing)
            got = parse_skill_names(text, cfg.max_missing)
            return [n for n, _ in got] if got else None

        named = ask_parsed(teacher, prompts, parse, _pick_retry, max_tokens=cfg.max_tokens,
                           batch_size=cfg.batch_size, progress=cfg.progress,
                           description="naming missing skills", log=log,
                           json=_missing_json(difficult, by_id, options, cfg))
    hard: list[DifficultExample] = []
    for r, got in zip(difficult, named, strict=True):
        ex = by_id[r.example_id]
        labels = own[r.example_id]
        source: MissingSource
        if got:
            missing, source = got, "teacher"
        elif labels:
            missing = labels
            source = "labels" if teacher is None else "labels_after_unparseable_teacher"
        else:
            missing, source = [], "none"
        hard.append(DifficultExample(
            example_id=r.example_id, question=ex.text, output=r.output, reference=ex.answer,
            score=scores[r.example_id], reason=reasons[r.example_id], skills=labels,
            missing=missing, source=source,
        ))

    # 4. per-skill aggregates
    rows: dict[str, SkillProfile] = {}
    desc = dict(catalog)

    def row(name: str) -> SkillProfile:
        if name not in rows:
            rows[name] = SkillProfile(skill=name, description=desc.get(name, ""))
        return rows[name]

    for name, _ in catalog:
        row(name)
    for r in records:
        for s in own[r.example_id]:
            row(s).n += 1
            row(s).score += scores[r.example_id]
    for d in hard:
        for s in dict.fromkeys(d.missing):
            row(s).missing += 1
    for s in rows.values():
        s.missing_rate = s.missing / len(hard) if hard else 0.0
    used = [s for s in rows.values() if s.n or s.missing]
    total = sum(scores.values())
    return Profile(
        task=task.name, split=cfg.split, model=getattr(solver.lm, "spec", None),
        solver=solver.to_json(), teacher=getattr(teacher, "spec", None) if teacher else None,
        run_id=getattr(run, "id", None), n=len(records), n_difficult=len(hard),
        accuracy=total / len(records), skills=used, difficult=hard,
        teacher_log=log.as_dict() if teacher is not None else {},
    )


def apply_to_book(profile: Profile, book: SkillBook) -> int:
    """Write the profile's accuracy and missing rate into the book's skill statistics.

    Returns:
        How many skills of the book were updated.
    """
    n = 0
    for s in profile.skills:
        if s.skill in book:
            book.update_skill(s.skill, stats={"accuracy": s.accuracy,
                                              "missing_rate": s.missing_rate})
            n += 1
    return n


# ---- display -------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def profile_table(profile: Profile, k: int | None = None) -> Any:
    """A rich Table of the profile, weakest skills first."""
    from rich.table import Table

    t = Table(title=f"Missing-Skill Profile: {profile.task}/{profile.split}, "
                    f"{profile.model or '?'}: accuracy {_pct(profile.accuracy)}, "
                    f"{profile.n_difficult}/{profile.n} difficult")
    t.add_column("skill")
    t.add_column("n", justify="right")
    t.add_column("accuracy", justify="right")
    t.add_column("missing", justify="right")
    t.add_column("missing rate", justify="right")
    for s in profile.weakest(k):
        t.add_row(s.skill, str(s.n), _pct(s.accuracy), str(s.missing), _pct(s.missing_rate))
    return t


def print_profile(profile: Profile, console: Any = None, k: int | None = None) -> None:
    """Print :func:`profile_table` and who named the missing skills."""
    from rich.console import Console

    console = console or Console()
    console.print(profile_table(profile, k))
    src = Counter(d.source for d in profile.difficult)
    if src:
        console.print("missing skills named by: " + ", ".join(
            f"{k} {v}" for k, v in sorted(src.items())), highlight=False)


def profile_svg(profile: Profile, max_skills: int = 40) -> str:
    """Per-skill chart as inline SVG: accuracy and missing rate side by side, weakest on top."""
    from metaskill.eval.report import figure_svg

    rows = profile.weakest(max_skills)
    labels = [f"{s.skill} (n={s.n})" for s in rows]
    height = 1.2 + 0.26 * max(1, len(rows))

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(1, 2, sharey=True)
        ys = list(range(len(rows)))
        ax1.barh(ys, [s.accuracy or 0.0 for s in rows], color="#4C72B0", alpha=0.85)
        ax2.barh(ys, [s.missing_rate for s in rows], color="#C44E52", alpha=0.85)
        ax1.set_yticks(ys)
        ax1.set_yticklabels(labels)
        ax1.invert_yaxis()
        for ax, title in ((ax1, "accuracy"), (ax2, "missing rate (share of difficult)")):
            ax.set_xlim(0, 1)
            ax.set_title(title, fontsize=9)
            ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")

    return figure_svg(draw, (8.0, height), salt="profile")


def profile_section_html(profile: Profile, examples: int = 8) -> str:
    """The HTML body of the profile section: summary, chart, table, difficult examples."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s.skill)}</td><td>{s.n}</td><td>{_pct(s.accuracy)}</td>"
        f"<td>{s.missing}</td><td>{_pct(s.missing_rate)}</td><td>{e(s.description)}</td></tr>"
        for s in profile.weakest()
    )
    who = f"named by teacher <code>{e(profile.teacher)}</code>" if profile.teacher else (
        "from the examples' own labels (no teacher)")
    parts = [
        f"<p>{e(profile.task)}/{e(profile.split)}, model <code>{e(str(profile.model))}</code>: "
        f"accuracy {_pct(profile.accuracy)}, {profile.n_difficult} of {profile.n} examples "
        f"difficult. Missing skills {who}. Missing rate = share of difficult examples in "
        "which the skill was named missing.</p>",
    ]
    if profile.skills:
        parts.append(f"<figure>{profile_svg(profile)}</figure>")
    parts.append(
        "<table><tr><th>skill</th><th>n</th><th>accuracy</th><th>missing</th>"
        f"<th>missing rate</th><th>description</th></tr>{rows}</table>"
    )
    for d in profile.difficult[:examples]:
        tags = "".join(f"<span class='skill'>{e(s)}</span> " for s in d.missing)
        parts.append(
            f"<div class='fail'><b>{e(d.example_id)}</b> missing: {tags or '-'} "
            f"<small>({e(d.source)})</small><pre>{e(_cut(d.question, 600))}</pre>"
            f"<small>answer</small> <code>{e(_cut(d.output, 200))}</code> "
            f"<small>reference</small> <code>{e(str(d.reference))}</code></div>"
        )
    return "".join(parts)


def profile_section(profile: Profile) -> Any:
    """The profile as a :class:`metaskill.eval.report.Section`."""
    from metaskill.eval.report import Section

    return Section(f"profile-{to_snake(profile.task) or 'task'}",
                   f"Missing-Skill Profile ({profile.task})", profile_section_html(profile))


def profile_section_builder(profile: Profile) -> Any:
    """A report section builder ``(runs) -> Section`` for ``render_html(sections=...)``.

    Example: ``render_html(runs, sections=(*DEFAULT_SECTIONS, profile_section_builder(p)))``.
    """
    def build(runs: Sequence[Any]) -> Any:
        return profile_section(profile)

    return build
