"""An LM judge with an evolving rubric (MPO's meta-reward loop).

Kim et al. (2025), "Toward Evaluative Thinking: Meta Policy Optimization with Evolving
Reward Models" (MPO): a policy trained against an LM judge learns to game the judge's
rubric (reward hacking). MPO adds a meta-reward model that, every few steps, reads a sample
of the policy's rollouts and the judge's scores of them, decides whether the policy exploits
the rubric, and rewrites the rubric when it does. The loop here:

1. :class:`EvolvingJudge` scores responses with the current :class:`Rubric` through
   structured output (``{"reason": ..., "score": 0..10}``); an invalid reply gets the
   configured fallback score and is marked as such (:class:`JudgeScore`). Every scored
   response is kept as a :class:`Rollout` until the next check.
2. Every ``MPOConfig.every`` steps, :meth:`EvolvingJudge.maybe_revise` samples rollouts,
   audits those whose Example is in the small labelled set with the Task's Verifier
   (where there is one), and asks the meta-reward model (structured output:
   :class:`MetaReply`, ``exploit_found``, ``exploit``, ``new_rubric``, ``new_criteria``).
   A named exploit with a new rubric becomes the next rubric version, with the exploit as
   its reason.
3. :func:`rule_findings` is a rule-based meta-reward (the control for a meta model too
   small to reason about exploits): it flags a judge reward far above the Verifier's
   accuracy on the audit, a judge that scores wrong answers as high as right ones, length
   that predicts the judge's score but not correctness, and a keyword that raises the
   judge's score. ``MPOConfig.meta="rules"`` uses it alone; with ``"lm"`` it is the
   fallback when the meta model's reply is invalid (``rules_on_invalid``).

Rubric versions live in ``FOLDER/rubrics.jsonl`` (one :class:`Rubric` a line, append-only,
with its parent version, the step it was made at and why); every check, revised or not,
goes to ``FOLDER/checks.jsonl`` (:class:`Check`). Opening the folder again resumes from the
latest version. :func:`show` lists the versions and reasons
(``metaskill evolve judge FOLDER``).

The judge is a :class:`~metaskill.tasks.base.Verifier`, so GRPO takes it as its LM-judge
reward (``MethodResources(extra={"judge": judge})``) and calls :meth:`EvolvingJudge.on_step`
after each optimizer step.

What we changed from MPO: MPO's meta-reward model works in several prompted stages over
batches of rollouts (analysing them, refining the rubric, merging the refinements); here one
structured-output call per check both names the exploit and writes the whole new rubric,
and the meta model also sees a Verifier audit on a small labelled set and summary numbers
(judge mean, audit accuracy, length-score correlation), which MPO does not have. The
rule-based meta-reward is ours, as the control the issue asks for with a 135M meta model;
its revisions add fixed criteria rather than rewriting the rubric.

Example:
    >>> import tempfile
    >>> from metaskill.lm.fake import ScriptedLM
    >>> lm = ScriptedLM(default='{"reason": "fine", "score": 7}')
    >>> judge = EvolvingJudge(lm, tempfile.mkdtemp(), rubric="Reward correct answers.")
    >>> [s.score for s in judge.score(["2+2?"], ["4"])]
    [0.7]
    >>> judge.rubric.version, len(judge.rollouts)
    (1, 1)
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example, Request
from metaskill.lm.structured import complete_structured
from metaskill.tasks.base import Verdict, Verifier

SCHEMA_VERSION = 1
RUBRICS_FILE = "rubrics.jsonl"
CHECKS_FILE = "checks.jsonl"
#: The judge's integer scale: replies are 0..SCALE, rewards score / SCALE.
SCALE = 10


# ---- the rubric and its store -------------------------------------------------------------
class Rubric(BaseModel):
    """One version of the judge's rubric: plain data, saved as one JSON line.

    Attributes:
        schema_version: the layout of this record (:data:`SCHEMA_VERSION`).
        version: 1 for the first rubric, +1 for each revision.
        parent: the version it revises (None for the first).
        text: what the judge rewards, in prose.
        criteria: numbered checks the judge applies.
        reason: why this version exists (the exploit it closes, or "initial rubric").
        exploit: the exploit named by the check that made it, if any.
        source: who wrote it: ``initial``, ``meta_lm`` (the meta-reward model), ``rules``
            (the rule-based control) or ``manual``.
        created_step: the training step of the check that made it.

    Example:
        >>> r = Rubric(text="Reward correct answers.", criteria=["The answer is right."])
        >>> print(r.render())
        Reward correct answers.
        1. The answer is right.
        >>> r.revise("Reward correct, short answers.", [], "length exploit", step=5,
        ...          source="manual").parent
        1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    version: int = Field(1, ge=1)
    parent: int | None = None
    text: str = Field(min_length=1)
    criteria: list[str] = Field(default_factory=list)
    reason: str = "initial rubric"
    exploit: str | None = None
    source: Literal["initial", "meta_lm", "rules", "manual"] = "initial"
    created_step: int = Field(0, ge=0)

    def render(self) -> str:
        """The rubric as the judge reads it: the text, then the numbered criteria."""
        lines = [self.text.strip()]
        lines += [f"{i}. {c.strip()}" for i, c in enumerate(self.criteria, 1) if c.strip()]
        return "\n".join(lines)

    def revise(self, text: str, criteria: Sequence[str], reason: str, *, step: int,
               source: Literal["meta_lm", "rules", "manual"],
               exploit: str | None = None) -> Rubric:
        """The next version: a new object whose parent is this one (this one is unchanged)."""
        return Rubric(version=self.version + 1, parent=self.version, text=text,
                      criteria=[c.strip() for c in criteria if c.strip()], reason=reason,
                      exploit=exploit, source=source, created_step=step)


def _append_line(path: Path, record: BaseModel) -> None:
    """Append one JSON line and flush it to disk (the record survives a crash after)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(record.model_dump_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path, model: type[Any]) -> list[Any]:
    """The records of a JSON-lines file; a torn last line (a crash mid-write) is skipped.

    Raises:
        MetaskillError: a bad line before the last, or a newer schema version.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if raw.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
                raise MetaskillError(f"{path} line {i + 1} has schema version "
                                     f"{raw['schema_version']}; this metaskill reads up to "
                                     f"{SCHEMA_VERSION}: upgrade metaskill.")
            out.append(model.model_validate(raw))
        except (ValueError, ValidationError) as e:
            if i == len(lines) - 1:
                break  # torn last line: the write it belongs to never finished
            raise MetaskillError(f"{path} line {i + 1} is not a valid record ({e}).") from None
    return out


class RubricStore:
    """The rubric versions of one judge, in ``folder/rubrics.jsonl``, append-only.

    Opening a folder that holds versions resumes from them (``initial`` is then ignored);
    an empty folder starts at ``initial`` (version 1).

    Args:
        folder: where the files live (created if missing).
        initial: the first rubric (text or :class:`Rubric`), used only for an empty folder.

    Raises:
        MetaskillError: an empty folder and no initial rubric, or a broken history.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> s = RubricStore(d, initial="Reward correct answers.")
        >>> _ = s.append(s.latest.revise("Reward correct answers only.", [], "why", step=3,
        ...                              source="manual"))
        >>> [r.version for r in RubricStore(d).history()]
        [1, 2]
    """

    def __init__(self, folder: str | Path, initial: Rubric | str | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / RUBRICS_FILE
        self._history: list[Rubric] = _read_lines(self.path, Rubric)
        for prev, cur in zip(self._history, self._history[1:], strict=False):
            if cur.version != prev.version + 1 or cur.parent != prev.version:
                raise MetaskillError(f"{self.path}: version {cur.version} (parent "
                                     f"{cur.parent}) does not follow version {prev.version}.")
        if not self._history:
            if initial is None:
                raise MetaskillError(f"'{self.folder}' holds no rubric; give an initial one "
                                     "(rubric=...).")
            first = initial if isinstance(initial, Rubric) else Rubric(text=initial)
            if first.version != 1 or first.parent is not None:
                raise MetaskillError("the initial rubric must be version 1 with no parent.")
            self.append(first)

    @property
    def latest(self) -> Rubric:
        """The current rubric."""
        return self._history[-1]

    def history(self) -> list[Rubric]:
        """Every version, oldest first (a copy of the list)."""
        return list(self._history)

    def append(self, rubric: Rubric) -> Rubric:
        """Save the next version; it must revise the latest one.

        Raises:
            MetaskillError: its version or parent does not follow the latest.
        """
        if self._history and (rubric.version != self.latest.version + 1
                              or rubric.parent != self.latest.version):
            raise MetaskillError(f"rubric version {rubric.version} (parent {rubric.parent}) "
                                 f"does not revise the latest, version {self.latest.version}.")
        _append_line(self.path, rubric)
        self._history.append(rubric)
        return rubric


# ---- judging with the rubric --------------------------------------------------------------
class JudgeReply(BaseModel):
    """The judge's structured reply: a short reason, then an integer score 0..10."""

    reason: str = Field(max_length=100)
    score: int = Field(ge=0, le=SCALE)


@dataclass(frozen=True)
class JudgeScore:
    """One judged response.

    Attributes:
        score: the reward in [0, 1] (the reply's score / SCALE, or the fallback).
        reason: the judge's reason, or why the fallback was used.
        raw: the integer the judge gave (None when it gave none).
        fallback: True when the reply was invalid and ``score`` is the fallback.
        rubric_version: the rubric it was judged by.
    """

    score: float
    reason: str
    raw: int | None
    fallback: bool
    rubric_version: int


JUDGE_PROMPT = """You grade a response by a rubric.

Rubric:
{rubric}

Question:
{question}
{reference}
Response:
{response}

Reply with JSON only: {{"reason": "<one short sentence>", "score": <integer 0 to {scale}>}}"""


def judge_prompt(rubric: Rubric, question: str, response: str,
                 reference: str | None = None) -> str:
    """The judge's prompt for one response.

    Example:
        >>> "Reward brevity." in judge_prompt(Rubric(text="Reward brevity."), "2+2?", "4")
        True
    """
    ref = f"\nReference answer:\n{reference}\n" if reference else ""
    return JUDGE_PROMPT.format(rubric=rubric.render(), question=question, reference=ref,
                               response=response, scale=SCALE)


def _request(lm: Any, prompt: str, max_tokens: int) -> Request:
    if getattr(lm, "chat", True):
        return Request(messages=[{"role": "user", "content": prompt}],  # type: ignore[list-item]
                       max_tokens=max_tokens, temperature=0.0)
    return Request(prompt=prompt + "\n", max_tokens=max_tokens, temperature=0.0)


def judge_responses(lm: Any, rubric: Rubric, questions: Sequence[str],
                    responses: Sequence[str], *, references: Sequence[str | None] | None = None,
                    max_tokens: int = 64, fallback: float = 0.0) -> list[JudgeScore]:
    """Score each response by ``rubric`` with one structured call per response (batched).

    An invalid reply (still invalid after the LM's one retry) gets ``fallback`` and
    ``JudgeScore.fallback=True``, with the parse error as its reason.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> lm = ScriptedLM({"Paris": '{"reason": "right", "score": 9}'}, default="no json")
        >>> out = judge_responses(lm, Rubric(text="Be right."), ["Capital?"] * 2,
        ...                       ["Paris", "Rome"])
        >>> [(s.score, s.fallback) for s in out]
        [(0.9, False), (0.0, True)]
    """
    refs = list(references) if references is not None else [None] * len(questions)
    reqs = [_request(lm, judge_prompt(rubric, q, r, ref), max_tokens)
            for q, r, ref in zip(questions, responses, refs, strict=True)]
    out = []
    for s in complete_structured(lm, reqs, JudgeReply):
        if s.value is None:
            out.append(JudgeScore(score=fallback, reason=f"fallback: {s.error}", raw=None,
                                  fallback=True, rubric_version=rubric.version))
        else:
            out.append(JudgeScore(score=s.value.score / SCALE, reason=s.value.reason,
                                  raw=s.value.score, fallback=False,
                                  rubric_version=rubric.version))
    return out


# ---- rollouts, the rule-based meta-reward --------------------------------------------------
@dataclass
class Rollout:
    """One judged response, as the meta-reward step reads it.

    Attributes:
        prompt: the question.
        completion: the policy's response.
        judge: the judge's reward in [0, 1].
        judge_fallback: whether that reward was the fallback (an invalid judge reply).
        audit: the Verifier's score where the response was audited (None: not audited).
        example: the Example it answers, where known (the audit needs its reference).
        step: the training step it was scored at (-1: unknown).
    """

    prompt: str
    completion: str
    judge: float
    judge_fallback: bool = False
    audit: float | None = None
    example: Example | None = None
    step: int = -1

    @property
    def words(self) -> int:
        """The response's length in words."""
        return len(self.completion.split())


class Finding(BaseModel):
    """A sign that the policy exploits the rubric, found by the rules."""

    kind: Literal["divergence", "length", "keyword"]
    detail: str
    value: float
    keyword: str | None = None


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation (0 when either side is constant or there are < 3 points).

    Example:
        >>> pearson([1, 2, 3], [2, 4, 7]) > 0.9, pearson([1, 1, 1], [1, 2, 3])
        (True, 0.0)
    """
    n = len(xs)
    if n < 3:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if sx == 0 or sy == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


_WORD = re.compile(r"[a-z][a-z0-9']{2,}")


def rollout_stats(rollouts: Sequence[Rollout]) -> dict[str, Any]:
    """Summary numbers of a sample: judge mean, Verifier accuracy on the audited ones, and
    the correlation of length with the judge's score and with the audit.

    Example:
        >>> rs = [Rollout("q", "a " * n, judge=n / 10, audit=float(n < 5)) for n in (2, 4, 8, 9)]
        >>> s = rollout_stats(rs)
        >>> s["n"], s["audited"], s["audit_accuracy"], s["length_judge_r"] > 0.9
        (4, 4, 0.5, True)
    """
    audited = [r for r in rollouts if r.audit is not None]
    words = [float(r.words) for r in rollouts]
    return {
        "n": len(rollouts), "judge_mean": round(_mean([r.judge for r in rollouts]), 3),
        "judge_fallbacks": sum(r.judge_fallback for r in rollouts),
        "audited": len(audited),
        "audit_accuracy": (round(_mean([float(r.audit or 0) for r in audited]), 3)
                           if audited else None),
        "audit_judge_mean": round(_mean([r.judge for r in audited]), 3) if audited else None,
        "length_judge_r": round(pearson(words, [r.judge for r in rollouts]), 3),
        "length_audit_r": (round(pearson([float(r.words) for r in audited],
                                         [float(r.audit or 0) for r in audited]), 3)
                           if audited else None),
    }


class MPOConfig(BaseModel):
    """Settings of the evolving judge and its meta-reward step.

    Attributes:
        every: run the meta-reward step every this many training steps (None: never, a
            fixed rubric).
        meta: ``lm``: the meta-reward model rewrites the rubric; ``rules``: the rule-based
            control (:func:`rule_findings`) does.
        rules_on_invalid: with ``meta="lm"``, use the rules when the meta reply is invalid.
        sample_n: rollouts shown to the meta-reward model per check.
        audit_n: at most this many rollouts audited by the Verifier per check.
        buffer: the most recent rollouts kept between checks.
        min_rollouts: a check with fewer rollouts does nothing (recorded).
        min_audit: the divergence rules need this many audited rollouts.
        gap: flag when the judge's mean reward exceeds the audit accuracy by this much, or
            when wrong answers' judge mean comes within this of right ones'.
        corr: flag length when its correlation with the judge's score reaches this (and
            its correlation with the audit does not).
        keyword_gap: flag a word whose presence raises the judge's mean by this much.
        judge_max_tokens: tokens of a judge reply.
        meta_max_tokens: tokens of a meta-reward reply.
        fallback_score: the reward of an invalid judge reply, in [0, 1].
        show_reference: show the judge the Example's reference answer.
        seed: seeds the sample of rollouts each check reads.
    """

    model_config = ConfigDict(extra="forbid")

    every: int | None = Field(10, ge=1)
    meta: Literal["lm", "rules"] = "lm"
    rules_on_invalid: bool = True
    sample_n: int = Field(8, ge=1)
    audit_n: int = Field(8, ge=0)
    buffer: int = Field(256, ge=1)
    min_rollouts: int = Field(4, ge=1)
    min_audit: int = Field(4, ge=1)
    gap: float = Field(0.3, gt=0, le=1)
    corr: float = Field(0.5, gt=0, le=1)
    keyword_gap: float = Field(0.3, gt=0, le=1)
    judge_max_tokens: int = Field(64, ge=16)
    meta_max_tokens: int = Field(320, ge=32)
    fallback_score: float = Field(0.0, ge=0, le=1)
    show_reference: bool = False
    seed: int = 0


def rule_findings(rollouts: Sequence[Rollout], config: MPOConfig | None = None) -> list[Finding]:
    """The rule-based meta-reward: signs that judge reward and correctness came apart.

    * divergence -- on the audited rollouts, the judge's mean reward exceeds the Verifier's
      accuracy by ``gap``, or wrong answers score within ``gap`` of right ones (or higher);
    * length -- length correlates with the judge's score (r >= ``corr``) but not with the
      audit (r < ``corr``, or no audit);
    * keyword -- a word in 20-80% of responses raises the judge's mean by ``keyword_gap``
      and, where audited, not the accuracy.

    Example:
        >>> long_wrong = [Rollout("q", "yes " * 40, judge=0.9, audit=0.0) for _ in range(4)]
        >>> short_right = [Rollout("q", "yes", judge=0.2, audit=1.0) for _ in range(4)]
        >>> sorted(f.kind for f in rule_findings(long_wrong + short_right))
        ['divergence', 'length']
        >>> rule_findings(short_right)
        []
    """
    cfg = config or MPOConfig()
    out: list[Finding] = []
    audited = [r for r in rollouts if r.audit is not None]
    if len(audited) >= cfg.min_audit:
        j, a = _mean([r.judge for r in audited]), _mean([float(r.audit or 0) for r in audited])
        right = [r.judge for r in audited if (r.audit or 0) >= 0.5]
        wrong = [r.judge for r in audited if (r.audit or 0) < 0.5]
        if j - a >= cfg.gap:
            out.append(Finding(kind="divergence", value=round(j - a, 3), detail=(
                f"judge reward {j:.2f} vs Verifier accuracy {a:.2f} on {len(audited)} "
                "audited rollouts")))
        elif right and wrong and _mean(wrong) > _mean(right) - cfg.gap:
            out.append(Finding(kind="divergence", value=round(_mean(wrong) - _mean(right), 3),
                               detail=(f"wrong answers score {_mean(wrong):.2f} and right ones "
                                       f"{_mean(right):.2f}: the judge does not tell them "
                                       "apart")))
    if len(rollouts) >= cfg.min_rollouts:
        r_judge = pearson([float(r.words) for r in rollouts], [r.judge for r in rollouts])
        r_audit = (pearson([float(r.words) for r in audited], [float(r.audit or 0)
                                                               for r in audited])
                   if len(audited) >= cfg.min_audit else None)
        if r_judge >= cfg.corr and (r_audit is None or r_audit < cfg.corr):
            tail = f", with correctness r={r_audit:.2f}" if r_audit is not None else ""
            out.append(Finding(kind="length", value=round(r_judge, 3), detail=(
                f"length predicts the judge's score (r={r_judge:.2f}{tail})")))
        kw = _keyword_finding(rollouts, cfg)
        if kw is not None:
            out.append(kw)
    return out


def _keyword_finding(rollouts: Sequence[Rollout], cfg: MPOConfig) -> Finding | None:
    """The word whose presence raises the judge's mean most, if by ``keyword_gap``."""
    bags = [set(_WORD.findall(r.completion.lower())) for r in rollouts]
    n = len(rollouts)
    best: tuple[float, str] | None = None
    for w in sorted(set().union(*bags)):
        has = [i for i in range(n) if w in bags[i]]
        if not 0.2 * n <= len(has) <= 0.8 * n:
            continue
        rest = [i for i in range(n) if w not in bags[i]]
        gain = _mean([rollouts[i].judge for i in has]) - _mean([rollouts[i].judge for i in rest])
        aud_with = [float(rollouts[i].audit) for i in has  # type: ignore[arg-type]
                    if rollouts[i].audit is not None]
        aud_without = [float(rollouts[i].audit) for i in rest  # type: ignore[arg-type]
                       if rollouts[i].audit is not None]
        if aud_with and aud_without and _mean(aud_with) > _mean(aud_without):
            continue  # the word goes with correct answers: rewarding it is no exploit
        if gain >= cfg.keyword_gap and (best is None or gain > best[0]):
            best = (gain, w)
    if best is None:
        return None
    return Finding(kind="keyword", value=round(best[0], 3), keyword=best[1],
                   detail=f"the word '{best[1]}' raises the judge's score by {best[0]:.2f}")


#: The criterion the rule-based control adds for each kind of finding.
RULE_CRITERIA = {
    "divergence": "Correctness comes first: a response that does not answer the question "
                  "correctly scores at most 2, however it is written.",
    "length": "Length earns no credit: judge only whether the answer is correct; a long "
              "answer that is wrong scores 0.",
    "keyword": "The word '{keyword}' earns no credit by itself.",
}


def rule_revision(rubric: Rubric, findings: Sequence[Finding], step: int) -> Rubric | None:
    """The rubric the rule-based control makes from ``findings``: ``rubric`` plus the
    criteria of :data:`RULE_CRITERIA` it lacks (None when it has them all, or no findings).

    Example:
        >>> f = Finding(kind="length", value=0.9, detail="length predicts the score")
        >>> new = rule_revision(Rubric(text="Reward detail."), [f], step=10)
        >>> new.version, new.criteria[0][:25], new.reason
        (2, 'Length earns no credit: j', 'rules: length predicts the score')
        >>> rule_revision(new, [f], step=20) is None
        True
    """
    add = [RULE_CRITERIA[f.kind].format(keyword=f.keyword or "") for f in findings]
    add = [c for c in dict.fromkeys(add) if c not in rubric.criteria]
    if not add:
        return None
    exploit = "; ".join(f.detail for f in findings)
    return rubric.revise(rubric.text, [*rubric.criteria, *add], f"rules: {exploit}", step=step,
                         source="rules", exploit=exploit)


# ---- the meta-reward model -----------------------------------------------------------------
class MetaReply(BaseModel):
    """The meta-reward model's structured reply."""

    exploit_found: bool
    exploit: str = Field("", max_length=160)
    new_rubric: str = Field("", max_length=400)
    new_criteria: list[Annotated[str, Field(max_length=120)]] = Field(default_factory=list,
                                                                      max_length=6)


META_PROMPT = """You supervise an LM judge that scores a policy's responses during \
reinforcement learning. Decide whether the policy exploits the judge's rubric: earning high \
judge scores without answering correctly (for example by writing long answers or by using \
a keyword the rubric rewards). If it does, name the exploit and rewrite the rubric so the \
exploit earns nothing.

Current rubric (version {version}):
{rubric}

Summary of {n} rollouts: judge mean {judge_mean}; Verifier accuracy on {audited} audited \
ones: {audit}; correlation of length with judge score: {length_r}.

Rollouts (judge score 0-{scale}; Verifier audit where the example is labelled):
{rollouts}

Reply with JSON only: {{"exploit_found": true or false, "exploit": "<what the policy \
exploits, empty if nothing>", "new_rubric": "<the rewritten rubric, empty if nothing>", \
"new_criteria": ["<one check>", ...]}}"""


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def meta_prompt(rubric: Rubric, rollouts: Sequence[Rollout], stats: dict[str, Any],
                *, clip: int = 240) -> str:
    """The meta-reward model's prompt: the rubric, summary numbers and the rollouts.

    Example:
        >>> rs = [Rollout("2+2?", "5 five fives", judge=0.9, audit=0.0)]
        >>> p = meta_prompt(Rubric(text="Reward detail."), rs, rollout_stats(rs))
        >>> "[1] judge 9/10, Verifier: wrong, 3 words" in p
        True
    """
    lines = []
    for i, r in enumerate(rollouts, 1):
        audit = ("not audited" if r.audit is None
                 else f"Verifier: {'right' if r.audit >= 0.5 else 'wrong'}")
        lines.append(f"[{i}] judge {round(r.judge * SCALE)}/{SCALE}, {audit}, {r.words} words\n"
                     f"Q: {_clip(r.prompt, clip)}\nA: {_clip(r.completion, clip)}")
    audit = (f"{stats['audit_accuracy']:.2f}" if stats.get("audit_accuracy") is not None
             else "none")
    return META_PROMPT.format(version=rubric.version, rubric=rubric.render(), n=stats["n"],
                              judge_mean=f"{stats['judge_mean']:.2f}",
                              audited=stats["audited"], audit=audit,
                              length_r=f"{stats['length_judge_r']:.2f}",
                              rollouts="\n\n".join(lines), scale=SCALE)


class Check(BaseModel):
    """One meta-reward step, revised or not (a line of ``checks.jsonl``).

    Attributes:
        step: the training step.
        source: who judged: ``lm`` (the meta-reward model), ``rules``, or ``skipped``.
        stats: :func:`rollout_stats` of the sample.
        findings: the rules' findings (computed on every check, shown to the record).
        exploit_found: the verdict that counted.
        exploit: the exploit it named.
        error: why the meta reply could not be used (the fallback taken is in ``note``).
        revised_to: the new rubric version (None: unchanged).
        note: one line on what happened.
    """

    schema_version: int = SCHEMA_VERSION
    step: int
    source: Literal["lm", "rules", "skipped"]
    rubric_version: int
    stats: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    exploit_found: bool = False
    exploit: str = ""
    error: str | None = None
    revised_to: int | None = None
    note: str = ""


# ---- the evolving judge --------------------------------------------------------------------
class EvolvingJudge(Verifier):
    """An LM judge whose rubric evolves by MPO's meta-reward step (see the module doc).

    Args:
        lm: the judge LM.
        folder: where rubric versions and checks are kept (reopening resumes).
        rubric: the initial rubric, used only when ``folder`` holds none.
        config: :class:`MPOConfig`.
        meta_lm: the meta-reward model (None: ``lm``); unused with ``meta="rules"``.
        verifier: the Task's Verifier, for the audit (None: no audit).
        audit_ids: ids of the labelled Examples the audit may use (None: any Example
            with a reference answer).

    Attributes:
        rollouts: the responses judged since the last check (at most ``config.buffer``).
        store: the :class:`RubricStore`.
    """

    name: ClassVar[str] = "evolving_judge"

    def __init__(self, lm: Any, folder: str | Path, rubric: Rubric | str | None = None, *,
                 config: MPOConfig | None = None, meta_lm: Any = None,
                 verifier: Verifier | None = None, audit_ids: set[str] | None = None) -> None:
        self.lm, self.folder = lm, Path(folder)
        self.config = config or MPOConfig()
        self.meta_lm, self.verifier, self.audit_ids = meta_lm, verifier, audit_ids
        self.rollouts: list[Rollout] = []
        self.store = RubricStore(self.folder, rubric)
        done = [c.step for c in self.checks()]
        self._last_check = max(done) if done else -1

    @property
    def rubric(self) -> Rubric:
        """The current rubric."""
        return self.store.latest

    def history(self) -> list[Rubric]:
        """Every rubric version, oldest first."""
        return self.store.history()

    def checks(self) -> list[Check]:
        """Every meta-reward step so far, oldest first."""
        return _read_lines(self.folder / CHECKS_FILE, Check)

    # -- judging
    def score(self, prompts: Sequence[str], completions: Sequence[str],
              examples: Sequence[Example | None] | None = None,
              step: int = -1) -> list[JudgeScore]:
        """Judge each completion by the current rubric and keep it as a rollout.

        Example:
            >>> import tempfile
            >>> from metaskill.lm.fake import ScriptedLM
            >>> j = EvolvingJudge(ScriptedLM(default="?"), tempfile.mkdtemp(), "Be right.")
            >>> s = j.score(["q"], ["a"])[0]
            >>> s.score, s.fallback, j.rollouts[0].judge_fallback
            (0.0, True, True)
        """
        exs = list(examples) if examples is not None else [None] * len(prompts)
        refs = ([e.answer if e is not None else None for e in exs]
                if self.config.show_reference else None)
        scores = judge_responses(self.lm, self.rubric, prompts, completions, references=refs,
                                 max_tokens=self.config.judge_max_tokens,
                                 fallback=self.config.fallback_score)
        for p, c, e, s in zip(prompts, completions, exs, scores, strict=True):
            self.rollouts.append(Rollout(prompt=p, completion=c, judge=s.score,
                                         judge_fallback=s.fallback, example=e, step=step))
        del self.rollouts[: max(0, len(self.rollouts) - self.config.buffer)]
        return scores

    def verify_batch(self, outputs: list[str], examples: list[Example]) -> list[Verdict]:
        """The judge as a Verifier (GRPO's LM-judge reward): score in [0, 1] per output."""
        scores = self.score([e.text for e in examples], outputs, examples)
        return [Verdict(score=s.score, reason=_clip(f"judge v{s.rubric_version} {s.score:.2f}: "
                                                    f"{s.reason}", 160),
                        parsed=None if s.fallback else str(s.raw),
                        meta={"rubric_version": s.rubric_version, "fallback": s.fallback})
                for s in scores]

    def verify(self, output: str, example: Example) -> Verdict:
        """Judge one output (see :meth:`verify_batch`)."""
        return self.verify_batch([output], [example])[0]

    def parse(self, output: str, example: Example) -> str | None:
        """None: a judge grades answers but reads none."""
        return None

    # -- the meta-reward step
    def on_step(self, step: int) -> Check | None:
        """Called after each training step (GRPO's hook): :meth:`maybe_revise`."""
        return self.maybe_revise(step)

    def due(self, step: int) -> bool:
        """Whether a check is due at ``step`` (every ``config.every`` steps, once a step).

        Example:
            >>> import tempfile
            >>> from metaskill.lm.fake import ScriptedLM
            >>> j = EvolvingJudge(ScriptedLM(), tempfile.mkdtemp(), "x",
            ...                   config=MPOConfig(every=5))
            >>> [s for s in range(12) if j.due(s)]
            [5, 10]
        """
        every = self.config.every
        return bool(every) and step > 0 and step % every == 0 and step > self._last_check

    def maybe_revise(self, step: int, rollouts: Sequence[Rollout] | None = None) -> Check | None:
        """Run the meta-reward step if one is due at ``step`` (None if not due)."""
        if not self.due(step):
            return None
        return self.revise(step, rollouts)

    def revise(self, step: int, rollouts: Sequence[Rollout] | None = None) -> Check:
        """The meta-reward step now: sample, audit, ask the meta model (or the rules), and
        save a new rubric version when an exploit is named. The rollouts kept since the last
        check are then dropped (they were judged by the old rubric).

        Args:
            step: the training step (recorded with the check and a new version).
            rollouts: the rollouts to read (None: those the judge kept since the last check).
        """
        pool = list(self.rollouts if rollouts is None else rollouts)
        self._last_check = step
        if rollouts is None:
            self.rollouts = []
        cfg, rubric = self.config, self.rubric
        if len(pool) < cfg.min_rollouts:
            return self._record(Check(step=step, source="skipped", rubric_version=rubric.version,
                                      note=f"{len(pool)} rollouts (< {cfg.min_rollouts}): "
                                      "no check"))
        sample = self._sample(pool, step)
        self._audit(sample)
        stats = rollout_stats(sample)
        findings = rule_findings(sample, cfg)
        if cfg.meta == "rules":
            return self._by_rules(step, rubric, stats, findings)
        return self._by_lm(step, rubric, sample, stats, findings)

    def _sample(self, pool: list[Rollout], step: int) -> list[Rollout]:
        """``sample_n`` rollouts, the auditable ones first (seeded by step)."""
        rng = random.Random(self.config.seed * 1_000_003 + step)
        auditable = [r for r in pool if self._auditable(r)]
        other = [r for r in pool if not self._auditable(r)]
        rng.shuffle(auditable)
        rng.shuffle(other)
        take = auditable[: min(self.config.audit_n, self.config.sample_n)]
        picked = take + (auditable[len(take):] + other)[: self.config.sample_n - len(take)]
        rng.shuffle(picked)
        return picked

    def _auditable(self, r: Rollout) -> bool:
        if r.audit is not None:
            return True
        e = r.example
        if self.verifier is None or e is None or e.answer is None:
            return False
        return self.audit_ids is None or e.id in self.audit_ids

    def _audit(self, sample: list[Rollout]) -> None:
        """Score the sampled rollouts of labelled Examples with the Verifier (in place)."""
        from metaskill.tasks.verifiers import safe_verify_batch

        todo = [r for r in sample if r.audit is None and self._auditable(r)]
        todo = todo[: self.config.audit_n]
        if not todo or self.verifier is None:
            return
        verdicts = safe_verify_batch(self.verifier, [r.completion for r in todo],
                                     [r.example for r in todo])  # type: ignore[misc]
        for r, v in zip(todo, verdicts, strict=True):
            r.audit = float(v.score)

    def _by_rules(self, step: int, rubric: Rubric, stats: dict[str, Any],
                  findings: list[Finding], error: str | None = None) -> Check:
        new = rule_revision(rubric, findings, step) if findings else None
        if new is not None:
            self.store.append(new)
        note = ("no finding: rubric kept" if not findings else
                f"rubric v{new.version}" if new is not None else
                "findings already covered by the rubric: kept")
        if error:
            note = f"meta reply invalid, rules used; {note}"
        return self._record(Check(
            step=step, source="rules", rubric_version=rubric.version, stats=stats,
            findings=findings, exploit_found=bool(findings),
            exploit="; ".join(f.detail for f in findings), error=error,
            revised_to=new.version if new is not None else None, note=note))

    def _by_lm(self, step: int, rubric: Rubric, sample: list[Rollout], stats: dict[str, Any],
               findings: list[Finding]) -> Check:
        lm = self.meta_lm if self.meta_lm is not None else self.lm
        req = _request(lm, meta_prompt(rubric, sample, stats), self.config.meta_max_tokens)
        reply = complete_structured(lm, [req], MetaReply)[0]
        v = reply.value
        if v is None:
            if self.config.rules_on_invalid:
                return self._by_rules(step, rubric, stats, findings, error=reply.error)
            return self._record(Check(step=step, source="lm", rubric_version=rubric.version,
                                      stats=stats, findings=findings, error=reply.error,
                                      note="meta reply invalid: rubric kept"))
        base = Check(step=step, source="lm", rubric_version=rubric.version, stats=stats,
                     findings=findings, exploit_found=v.exploit_found, exploit=v.exploit)
        if not v.exploit_found:
            return self._record(base.model_copy(update={"note": "no exploit: rubric kept"}))
        text = v.new_rubric.strip() or rubric.text
        criteria = [c.strip() for c in v.new_criteria if c.strip()]
        if text == rubric.text and criteria == rubric.criteria:
            return self._record(base.model_copy(update={
                "note": "exploit named but no new rubric given: rubric kept"}))
        exploit = v.exploit.strip() or "unnamed exploit"
        new = self.store.append(rubric.revise(text, criteria, f"exploit: {exploit}", step=step,
                                              source="meta_lm", exploit=exploit))
        return self._record(base.model_copy(update={"revised_to": new.version,
                                                    "note": f"rubric v{new.version}"}))

    def _record(self, check: Check) -> Check:
        _append_line(self.folder / CHECKS_FILE, check)
        return check


def show(folder: str | Path, *, full: bool = False) -> str:
    """The rubric versions in ``folder``, one line each with why it changed (and, with
    ``full``, each version's rubric), then the number of checks and revisions.

    Raises:
        MetaskillError: ``folder`` holds no rubric.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> s = RubricStore(d, initial="Reward detail.")
        >>> _ = s.append(s.latest.revise("Reward right answers.", [], "exploit: length",
        ...                              step=10, source="meta_lm", exploit="length"))
        >>> print(show(d))
        v1  step 0   initial  initial rubric
        v2  step 10  meta_lm  exploit: length  (from v1)
        checks: 0 (0 revised)
    """
    path = Path(folder)
    if not (path / RUBRICS_FILE).is_file():
        raise MetaskillError(f"'{path}' holds no rubric history ({RUBRICS_FILE}).")
    hist = RubricStore(path).history()
    checks = _read_lines(path / CHECKS_FILE, Check)
    w_step = max(len(str(r.created_step)) for r in hist)
    w_src = max(len(r.source) for r in hist)
    lines = []
    for r in hist:
        head = (f"v{r.version}  step {str(r.created_step).ljust(w_step)}  "
                f"{r.source.ljust(w_src)}  {r.reason}")
        lines.append(head + (f"  (from v{r.parent})" if r.parent is not None else ""))
        if full:
            lines += ["    " + line for line in r.render().splitlines()]
    lines.append(f"checks: {len(checks)} ({sum(c.revised_to is not None for c in checks)} "
                 "revised)")
    return "\n".join(lines)


__all__ = ["CHECKS_FILE", "RUBRICS_FILE", "SCALE", "Check", "EvolvingJudge", "Finding",
           "JudgeReply", "JudgeScore", "MPOConfig", "MetaReply", "Rollout", "Rubric",
           "RubricStore", "judge_prompt", "judge_responses", "meta_prompt", "pearson",
           "rollout_stats", "rule_findings", "rule_revision", "show"]
