"""adaptmi: skill-targeted demos for the hard inputs only (AdaptMI and AdaptMI+).

Paper:
    He, Panigrahi, Lin, Arora et al. (2025). "AdaptMI: Adaptive Skill-based In-context
    Math Instructions for Small Language Models". Skill-based demos help large models
    but can overload small ones on easy questions; AdaptMI first answers every question
    plainly, flags the difficult ones with a reward model, and re-asks only those with
    skill-based exemplars. AdaptMI+ asks a stronger LLM which skills are *missing* from
    the small model's first answer and shows exemplars of exactly those skills.

What we changed: the difficulty gate is reference-free and configurable -- agreement of
``n`` sampled answers (self-consistency), the likelihood margin between the two most
likely labels (classification), or an LM-judge score (the teacher, else the model
itself) -- instead of a process reward model. Skills and exemplars come from a
:class:`~metaskill.skills.book.SkillBook` (see :mod:`metaskill.methods.skill_demos`).
The gate threshold can be chosen on dev from candidates. The judge's and the teacher's
replies are *constrained* where the backend enforces JSON schemas (``"json_schema" in
lm.constraints``): the judge writes ``{"reason": ..., "score": 0-10}``, the teacher
``{"missing": [...]}`` with names from an enum of that input's candidate skills, so both
always parse (SmolLM2-135M's free-text "Missing:" and "Score: N" lines mostly did not).
A reply that breaks the schema on both of ``LM.complete``'s tries -- or, on a backend
without schemas, a free-text reply that still names no known skill or score after one
reminder -- falls back: the judge's input counts as not hard, the teacher's keeps its
first answer; both are counted (``judge_fallbacks``, ``teacher_fallbacks``).

The gate never reads the reference: the Solver blanks every example's ``answer`` before
anything else happens, so nothing downstream can see it. Each Attempt's ``meta["gate"]``
records the signal, its value, the threshold and whether it fired, plus the first
answer, so :func:`gate_report` can measure the gate's firing rate and its precision
against the verifier afterwards.

Algorithm (what :class:`AdaptMISolver` does for a batch):

1. Blank the references. First pass: the cheap Solver answers every input.
2. Gate: compute the difficulty signal of each input; it is *hard* if the value is
   below the threshold (an unparseable judge reply counts as not hard).
3. AdaptMI+: for each hard input a teacher names the skills missing from the first
   answer (JSON from the input's candidates; else keep the first answer, counted).
4. Re-ask the hard inputs with k exemplars of their skills (matched by the SkillBook, or
   the teacher's missing skills); easy inputs keep their first answer.

Example:
    >>> from metaskill.core.types import Example
    >>> gate_decision(0.6, 0.8), gate_decision(None, 0.8)
    (True, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message, Request, Usage
from metaskill.eval.solver import Attempt, Solver
from metaskill.eval.solvers import example_choices
from metaskill.lm.structured import parse_reply, schema_text
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import (
    DemoSolver,
    charge,
    demo_options_from,
    parse_answer,
)
from metaskill.methods.self_consistency import sample_outputs, sampling_requests, vote
from metaskill.methods.skill_demos import SkillSelector, require_book
from metaskill.tasks.base import Task

Gate = Literal["agreement", "margin", "judge"]
DEFAULT_THRESHOLD: dict[str, float] = {"agreement": 1.0, "margin": 0.3, "judge": 0.7}

JUDGE_PROMPT = (
    "{question}\n\nProposed answer: {answer}\n\n"
    "Is the proposed answer correct? Think briefly, then end with one line "
    "'Score: N' where N is an integer from 0 (surely wrong) to 10 (surely right)."
)
TEACHER_PROMPT = (
    "A student answered this question.\n\n{question}\n\nStudent's answer: {answer}\n\n"
    "Which of these skills does the student's answer lack or apply wrongly?\n{skills}\n\n"
    "Reply with one line 'Missing: ' followed by up to {n} skill names from the list, "
    "comma-separated, written exactly as in the list."
)
JUDGE_JSON_PROMPT = (
    "{question}\n\nProposed answer: {answer}\n\n"
    "Is the proposed answer correct? Reply with JSON: {{\"reason\": \"<one short "
    "sentence>\", \"score\": N}} where N is an integer from 0 (surely wrong) to 10 (surely "
    "right)."
)
TEACHER_JSON_PROMPT = (
    "A student answered this question.\n\n{question}\n\nStudent's answer: {answer}\n\n"
    "Which of these skills does the student's answer lack or apply wrongly?\n{skills}\n\n"
    "Reply with JSON: {{\"missing\": [up to {n} skill names from the list, written exactly "
    "as in the list]}}."
)


class JudgeReply(BaseModel):
    """The judge gate's constrained reply (the reason is cut to fit ``max_tokens``)."""

    reason: str = Field(max_length=200)
    score: int = Field(ge=0, le=10)


def judge_model(max_tokens: int) -> type[JudgeReply]:
    """:class:`JudgeReply` with the reason cut to what fits in ``max_tokens`` (about 2.5
    characters a token after ~16 tokens of JSON).

    Example:
        >>> judge_model(64).model_validate_json('{"reason": "ok", "score": 7}').score
        7
    """
    chars = max(8, min(200, int(2.5 * (max_tokens - 16))))
    return create_model(  # type: ignore[call-overload,no-any-return]
        "JudgeReply", __base__=JudgeReply, reason=(str, Field(max_length=chars)))


def missing_model(candidates: Sequence[str], most: int) -> type[BaseModel]:
    """The teacher's constrained reply for one input: 1..``most`` of its ``candidates``.

    Example:
        >>> m = missing_model(["carry_over", "place_value"], 1)
        >>> m.model_validate_json('{"missing": ["place_value"]}').missing
        ['place_value']
    """
    name = Literal.__getitem__(tuple(candidates))  # type: ignore[attr-defined]
    return create_model(  # type: ignore[call-overload,no-any-return]
        "MissingSkills", missing=(list[name], Field(min_length=1, max_length=most)))


def structured(lm: Any) -> bool:
    """Whether ``lm`` enforces JSON schemas (judge and teacher replies are then JSON)."""
    return "json_schema" in getattr(lm, "constraints", frozenset())


def gate_decision(value: float | None, threshold: float) -> bool:
    """Whether the gate fires (the input is hard): a known value below the threshold."""
    return value is not None and value < threshold


def chat_or_prompt(lm: Any, user: str, *, max_tokens: int, seed: int = 0,
                   history: Sequence[tuple[str, str]] = ()) -> Request:
    """A greedy request for ``user`` (after ``history`` turns), chat if the LM has a template."""
    msgs = [Message(role=r, content=c) for r, c in history]  # type: ignore[arg-type]
    msgs.append(Message(role="user", content=user))
    if getattr(lm, "chat", True):
        return Request(messages=tuple(msgs), max_tokens=max_tokens, seed=seed)
    text = "\n\n".join(m.content for m in msgs) + "\n\n"
    return Request(prompt=text, max_tokens=max_tokens, seed=seed)


def ask_with_retry(lm: Any, asks: dict[int, str], retry: str,
                   parse: Callable[[int, str], Any], *, max_tokens: int,
                   usages: list[Usage], calls: list[int]) -> tuple[dict[int, Any], list[int]]:
    """Ask each prompt once; re-ask the unparseable ones once more with ``retry``.

    ``parse(i, text)`` returns None when the reply for ``asks[i]`` cannot be used; the retry
    keeps the first exchange in the conversation. Usage and call counts are added into
    ``usages[i]`` and ``calls[i]``.

    Returns:
        The parsed values by index, and the indices that failed both tries (callers fall
        back to the unadapted answer for those and count it).

    Example:
        >>> got, failed = ask_with_retry(lm, {0: "Score this"}, "Score: N only",
        ...     lambda i, t: parse_judge_score(t, 10), max_tokens=32,
        ...     usages=[Usage()], calls=[0])   # doctest: +SKIP
    """
    got: dict[int, Any] = {}
    history: dict[int, list[tuple[str, str]]] = {i: [] for i in asks}
    todo = list(asks)
    for attempt in range(2):  # the first try and one retry
        if not todo:
            break
        user = {i: asks[i] if attempt == 0 else retry for i in todo}
        comps = lm.complete([chat_or_prompt(lm, user[i], history=history[i],
                                            max_tokens=max_tokens) for i in todo])
        left = []
        for i, c in zip(todo, comps, strict=True):
            usages[i] = usages[i] + c.usage
            calls[i] += 1
            value = parse(i, c.text)
            if value is None:
                history[i] += [("user", user[i]), ("assistant", c.text)]
                left.append(i)
            else:
                got[i] = value
        todo = left
    return got, todo


def ask_json(lm: Any, asks: dict[int, str], models: dict[int, type[BaseModel]], *,
             max_tokens: int, usages: list[Usage], calls: list[int]
             ) -> tuple[dict[int, BaseModel], list[int]]:
    """Ask each prompt for JSON valid under its own model (``LM.complete`` asks twice at
    most); usage and calls are added like :func:`ask_with_retry`'s.

    Returns:
        The parsed replies by index, and the indices whose reply broke the schema twice.
    """
    idx = list(asks)
    reqs = [chat_or_prompt(lm, asks[i], max_tokens=max_tokens).model_copy(
        update={"json_schema": schema_text(models[i])}) for i in idx]
    got: dict[int, BaseModel] = {}
    failed = []
    for i, c in zip(idx, lm.complete(reqs) if reqs else [], strict=True):
        usages[i] = usages[i] + c.usage
        calls[i] += 1 + c.retries
        value, _ = parse_reply(c.text, models[i])
        if value is None:
            failed.append(i)
        else:
            got[i] = value
    return got, failed


def question_text(task: Any, example: Example) -> str:
    """The question as the task presents it (instructions and rendered input)."""
    head = getattr(task, "instructions", "") or ""
    body = task.render(example) if hasattr(task, "render") else example.text
    return f"{head}\n\n{body}".strip()


def parse_skill_names(text: str, candidates: Sequence[str]) -> list[str]:
    """Candidate skill names mentioned in ``text`` (as written, or with spaces), in order.

    Example:
        >>> parse_skill_names("Missing: carry over, place value", ["place_value", "carry_over"])
        ['carry_over', 'place_value']
    """
    low = text.lower()
    hits = []
    for name in candidates:
        pos = [low.find(v) for v in {name.lower(), name.replace("_", " ").lower()}]
        pos = [p for p in pos if p >= 0]
        if pos:
            hits.append((min(pos), name))
    return [n for _, n in sorted(hits)]


# ---------------------------------------------------------------------------------------
# The Solver
# ---------------------------------------------------------------------------------------
class AdaptMISolver(Solver):
    """Answer plainly; re-ask only the inputs a reference-free gate calls hard.

    Args:
        lm: the LM.
        first: the cheap first-pass Solver (zero-shot, k-shot, a DemoSolver ...).
        second: the DemoSolver with a :class:`SkillSelector` used for hard inputs.
        gate: ``agreement``, ``margin`` or ``judge``.
        threshold: hard if the gate's value is below it.
        n_samples: samples for the agreement gate.
        temperature: their temperature.
        plus: AdaptMI+ (a teacher names the missing skills).
        teacher: LM for the judge gate and AdaptMI+; None uses ``lm``.
        missing_skills: most skills the teacher may name.
        teacher_candidates: skills shown to the teacher (the input's nearest ones).
        max_tokens_teacher: length of judge and teacher replies.
        force_all: re-ask every input (used on dev to price every threshold at once).
        seed: sampling seed.
    """

    kind: ClassVar[str] = "adaptmi"

    def __init__(self, lm: Any, first: Solver, second: DemoSolver, *, gate: Gate = "agreement",
                 threshold: float | None = None, n_samples: int = 5, temperature: float = 0.7,
                 plus: bool = False, teacher: Any = None, missing_skills: int = 2,
                 teacher_candidates: int = 8, max_tokens_teacher: int = 64,
                 force_all: bool = False, seed: int = 0) -> None:
        super().__init__(lm)
        if not isinstance(second.selector, SkillSelector):
            raise MethodError("adaptmi: the second-pass Solver needs a skill selector.")
        self.first = first
        self.second = second
        self.gate = gate
        self.threshold = DEFAULT_THRESHOLD[gate] if threshold is None else threshold
        self.n_samples = n_samples
        self.temperature = temperature
        self.plus = plus
        self.teacher = teacher
        self.missing_skills = missing_skills
        self.teacher_candidates = teacher_candidates
        self.max_tokens_teacher = max_tokens_teacher
        self.force_all = force_all
        self.seed = seed

    @property
    def teacher_lm(self) -> Any:
        """The teacher (judge gate, AdaptMI+), or the Solver's own LM."""
        return self.teacher if self.teacher is not None else self.lm

    # ---- the Solver verb: the algorithm box ---------------------------------------------
    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """First pass, gate, (teacher), second pass for the hard inputs only."""
        # 1. Blank the references: nothing below can read them.
        blind = [e.model_copy(update={"answer": None}) for e in examples]
        first = self.first.solve(task, blind)
        # 2. The difficulty gate.
        values, usages, calls, extra = self.difficulty(task, blind, first)
        hard = [self.force_all or gate_decision(v, self.threshold) for v in values]
        # 3. AdaptMI+: the teacher names the missing skills of each hard input.
        targets: dict[str, list[str]] = {}
        teacher_failed: set[str] = set()
        if self.plus:
            idx = [i for i, h in enumerate(hard) if h and first[i].error is None]
            named, t_usage, t_calls = self.missing(task, [blind[i] for i in idx],
                                                   [first[i] for i in idx])
            for j, i in enumerate(idx):
                usages[i] = usages[i] + t_usage[j]
                calls[i] += t_calls[j]
                if named[j]:
                    targets[blind[i].id] = named[j]
                else:
                    teacher_failed.add(blind[i].id)
        # 4. Re-ask the hard inputs with skill-targeted demos.
        redo = [i for i, h in enumerate(hard)
                if h and first[i].error is None and blind[i].id not in teacher_failed]
        second = self.second
        if targets:
            assert isinstance(second.selector, SkillSelector)
            second = DemoSolver.from_state(second.state(), second.lm)
            second.selector = self.second.selector.with_targets(targets)  # type: ignore[union-attr]
        redone = dict(zip(redo, second.solve(task, [blind[i] for i in redo]) if redo else [],
                          strict=True))
        out = []
        for i, ex in enumerate(blind):
            a = first[i]
            meta: dict[str, Any] = {
                "gate": {"signal": self.gate, "value": values[i], "threshold": self.threshold,
                         "hard": gate_decision(values[i], self.threshold), **extra[i]},
                "first_output": a.output, "adapted": i in redone,
                "teacher_fallback": ex.id in teacher_failed,
            }
            usage = a.usage + usages[i]
            lm_calls = int(a.meta.get("lm_calls", 1)) + calls[i]
            output, prompt, error = a.output, a.prompt, a.error
            if i in redone:
                b = redone[i]
                usage = usage + b.usage
                lm_calls += int(b.meta.get("lm_calls", 1))
                meta.update({"second_output": b.output, "demos": b.meta.get("demos", []),
                             "skills": (targets.get(ex.id)
                                        or second.selector.last_skills.get(ex.id, []))})  # type: ignore[union-attr]
                if b.error is None:
                    output, prompt = b.output, b.prompt
            meta["lm_calls"] = lm_calls
            out.append(Attempt(example_id=ex.id, prompt=prompt, output=output, usage=usage,
                               latency_s=a.latency_s, error=error, meta=meta))
        return out

    # ---- step 2: the gates ----------------------------------------------------------------
    def difficulty(
        self, task: Any, blind: list[Example], first: list[Attempt]
    ) -> tuple[list[float | None], list[Usage], list[int], list[dict[str, Any]]]:
        """Per input: the gate's value (higher = easier), its usage, LM calls and details."""
        n = len(blind)
        if self.gate == "agreement":
            answers, usages, _ = sample_outputs(self.first, task, blind, self.n_samples,
                                                self.temperature, self.seed)
            values: list[float | None] = []
            extra: list[dict[str, Any]] = []
            for ex, a, outs in zip(blind, first, answers, strict=True):
                _, agreement, votes = vote([a.output, *outs],
                                           lambda t, ex=ex: parse_answer(task, t, ex))
                values.append(agreement)
                extra.append({"votes": votes})
            return values, usages, [self.n_samples] * n, extra
        if self.gate == "margin":
            return self._margins(task, blind)
        return self._judge(task, blind, first)

    def _margins(self, task: Any, blind: list[Example]) -> tuple[
            list[float | None], list[Usage], list[int], list[dict[str, Any]]]:
        # Each input's candidates: its own choices (multiple choice), else the task's labels.
        per_input = [example_choices(task, e) for e in blind]
        short = next((e for e, c in zip(blind, per_input, strict=True) if len(c) < 2), None)
        if short is not None:
            raise MethodError(f"adaptmi: gate 'margin' needs a classification task with "
                              f"labels or examples with choices; task '{task.name}' has none "
                              f"for example '{short.id}' (use gate 'agreement').")
        requests = sampling_requests(self.first, task, blind)
        values: list[float | None] = []
        usages, extra = [], []
        for r, labels in zip(requests, per_input, strict=True):
            context: Any = r.prompt if r.prompt is not None else list(r.messages or ())
            conts = [f" {lab}" for lab in labels] if r.prompt is not None else labels
            lls = self.lm.score(context, conts)
            top = max(lls)
            probs = sorted((math.exp(v - top) for v in lls), reverse=True)
            z = sum(probs)
            values.append((probs[0] - probs[1]) / z)
            n_prompt = self.lm.count_tokens(self.lm.prompt_of(r))
            usages.append(Usage(prompt_tokens=n_prompt + sum(self.lm.count_tokens(c)
                                                             for c in conts)))
            extra.append({"label_logprobs": dict(zip(labels, lls, strict=True))})
        return values, usages, [1] * len(blind), extra

    def _judge(self, task: Any, blind: list[Example], first: list[Attempt]) -> tuple[
            list[float | None], list[Usage], list[int], list[dict[str, Any]]]:
        from metaskill.tasks.verifiers import parse_judge_score

        lm = self.teacher_lm
        n = len(blind)
        values: list[float | None] = [None] * n
        usages = [Usage() for _ in range(n)]
        calls = [0] * n
        extra: list[dict[str, Any]] = [{"judge_fallback": False} for _ in range(n)]
        prompt = JUDGE_JSON_PROMPT if structured(lm) else JUDGE_PROMPT
        asks = {i: prompt.format(question=question_text(task, e), answer=first[i].output)
                for i, e in enumerate(blind) if first[i].error is None}
        if structured(lm):
            model = judge_model(self.max_tokens_teacher)
            replies, failed = ask_json(lm, asks, dict.fromkeys(asks, model),
                                       max_tokens=self.max_tokens_teacher, usages=usages,
                                       calls=calls)
            got = {i: r.score / 10 for i, r in replies.items()}  # type: ignore[attr-defined]
        else:
            got, failed = ask_with_retry(
                lm, asks, "Reply with one line only: Score: N (N an integer from 0 to 10).",
                lambda i, text: parse_judge_score(text, 10),
                max_tokens=self.max_tokens_teacher, usages=usages, calls=calls)
        for i, score in got.items():
            values[i] = score
        for i in failed:
            extra[i]["judge_fallback"] = True  # not hard: keeps the first answer
        return values, usages, calls, extra

    # ---- step 3: the teacher (AdaptMI+) -----------------------------------------------------
    def missing(self, task: Any, blind: list[Example], first: list[Attempt]) -> tuple[
            list[list[str]], list[Usage], list[int]]:
        """Skills the teacher says each first answer lacks ([] if it never named one)."""
        selector = self.second.selector
        assert isinstance(selector, SkillSelector)
        book = selector.book
        lm = self.teacher_lm
        cands = [[s.name for s, _ in book.nearest_skills(e, k=self.teacher_candidates)]
                 or book.names() for e in blind]
        prompt = TEACHER_JSON_PROMPT if structured(lm) else TEACHER_PROMPT
        asks = []
        for e, a, cs in zip(blind, first, cands, strict=True):
            listing = "\n".join(f"- {n}: {book.get(n).description}".rstrip(": ") for n in cs)
            asks.append(prompt.format(question=question_text(task, e), answer=a.output,
                                      skills=listing, n=self.missing_skills))
        named: list[list[str]] = [[] for _ in blind]
        usages = [Usage() for _ in blind]
        calls = [0] * len(blind)
        if structured(lm):  # one enum of skill names per input: its own candidates
            models = {i: missing_model(cs, self.missing_skills) for i, cs in enumerate(cands)}
            replies, _ = ask_json(lm, dict(enumerate(asks)), models,
                                  max_tokens=self.max_tokens_teacher, usages=usages,
                                  calls=calls)
            got = {i: list(dict.fromkeys(r.missing))  # type: ignore[attr-defined]
                   for i, r in replies.items()}
        else:
            got, _ = ask_with_retry(
                lm, dict(enumerate(asks)),
                "Reply with one line: 'Missing: ' and skill names from the list above.",
                lambda i, text: parse_skill_names(text, cands[i])[: self.missing_skills]
                or None, max_tokens=self.max_tokens_teacher, usages=usages, calls=calls)
        for i, found in got.items():
            named[i] = found
        return named, usages, calls

    # ---- JSON ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "first": self.first.to_json(), "second": self.second.to_json(),
            "gate": self.gate, "threshold": self.threshold, "n_samples": self.n_samples,
            "temperature": self.temperature, "plus": self.plus,
            "teacher": getattr(self.teacher, "spec", None),
            "missing_skills": self.missing_skills,
            "teacher_candidates": self.teacher_candidates,
            "max_tokens_teacher": self.max_tokens_teacher, "seed": self.seed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any, teacher: Any = None) -> AdaptMISolver:
        """Rebuild; a teacher other than ``lm`` is loaded from its spec when not given."""
        from metaskill.eval.solvers import load_solver

        if teacher is None and state.get("teacher") and state["teacher"] != getattr(
                lm, "spec", None):
            from metaskill.lm import load_lm

            teacher = load_lm(state["teacher"])
        second = load_solver(state["second"], lm=lm)
        return cls(lm, load_solver(state["first"], lm=lm), second,  # type: ignore[arg-type]
                   gate=state["gate"], threshold=state["threshold"],
                   n_samples=state.get("n_samples", 5),
                   temperature=state.get("temperature", 0.7), plus=state.get("plus", False),
                   teacher=teacher, missing_skills=state.get("missing_skills", 2),
                   teacher_candidates=state.get("teacher_candidates", 8),
                   max_tokens_teacher=state.get("max_tokens_teacher", 64),
                   seed=state.get("seed", 0))


# ---------------------------------------------------------------------------------------
# Measuring the gate afterwards (this is where the reference is read)
# ---------------------------------------------------------------------------------------
def gate_report(task: Any, examples: Sequence[Example], attempts: Sequence[Attempt]
                ) -> dict[str, Any]:
    """How often the gate fired and its precision/recall against the verifier.

    A fired gate is *right* when the first answer was wrong. Precision = share of fired
    inputs whose first answer was wrong; recall = share of wrong first answers it caught.

    Example:
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class Exact(Verifier):
        ...     def verify(self, output, ex):
        ...         return Verdict(score=float(output == ex.answer))
        >>> t = Task(name="t", splits={}, verifier=Exact())
        >>> ex = [Example(id="a", input="x", answer="1"), Example(id="b", input="y", answer="2")]
        >>> at = [Attempt(example_id="a", meta={"first_output": "0", "gate": {"hard": True}}),
        ...       Attempt(example_id="b", meta={"first_output": "2", "gate": {"hard": False}})]
        >>> r = gate_report(t, ex, at); r["fire_rate"], r["precision"], r["recall"]
        (0.5, 1.0, 1.0)
    """
    by_id = {e.id: e for e in examples}
    rows = [(a, by_id[a.example_id]) for a in attempts
            if a.example_id in by_id and "gate" in a.meta]
    if not rows:
        return {"n": 0, "fired": 0, "fire_rate": None, "precision": None, "recall": None}
    verdicts = task.verifier.verify_batch([a.meta.get("first_output", "") for a, _ in rows],
                                          [e for _, e in rows])
    fired = [bool(a.meta["gate"]["hard"]) for a, _ in rows]
    wrong = [v.score < 1.0 for v in verdicts]
    tp = sum(f and w for f, w in zip(fired, wrong, strict=True))
    n_fired, n_wrong = sum(fired), sum(wrong)
    return {
        "n": len(rows), "fired": n_fired, "fire_rate": n_fired / len(rows),
        "precision": tp / n_fired if n_fired else None,
        "recall": tp / n_wrong if n_wrong else None,
        "first_pass_accuracy": 1.0 - n_wrong / len(rows),
        "teacher_fallbacks": sum(bool(a.meta.get("teacher_fallback")) for a, _ in rows),
        "judge_fallbacks": sum(bool(a.meta["gate"].get("judge_fallback")) for a, _ in rows),
    }


# ---------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------
class AdaptMIConfig(MethodConfig):
    """Options of :class:`AdaptMI`."""

    gate: Gate = Field("agreement", description="difficulty signal: agreement, margin or judge")
    threshold: float | None = Field(
        None, description="hard if the signal is below this; None: 1.0 agreement, "
        "0.3 margin, 0.7 judge"
    )
    threshold_candidates: list[float] | None = Field(
        None, description="if given (and dev is), choose the threshold on dev among these"
    )
    n_samples: int = Field(4, ge=1, le=32, description="samples for the agreement gate")
    temperature: float = Field(0.7, gt=0.0, le=2.0, description="their temperature")
    plus: bool = Field(False, description="AdaptMI+: a teacher names the missing skills")
    k: int = Field(4, ge=1, le=32, description="skill demos for a hard input")
    skills_per_input: int = Field(2, ge=1, le=8, description="skills matched per input")
    missing_skills: int = Field(2, ge=1, le=8, description="most skills the teacher names")
    teacher_candidates: int = Field(8, ge=1, le=64, description="skills shown to the teacher")
    max_tokens_teacher: int = Field(64, ge=4, description="length of judge/teacher replies")
    seed: int = Field(0, description="sampling seed")
    max_dev: int | None = Field(None, ge=1, description="score at most this many dev examples")

    @model_validator(mode="after")
    def _check(self) -> AdaptMIConfig:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1] (all three signals are)")
        return self


class AdaptMI(Method):
    """Re-ask only the inputs a reference-free gate calls hard, with skill demos."""

    name: ClassVar[str] = "adaptmi"
    Config: ClassVar[type[MethodConfig]] = AdaptMIConfig
    config: AdaptMIConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> AdaptMISolver:
        """Wrap ``solver`` as the first pass; with dev, pick the threshold and report the gate."""
        cfg = self.config
        if cfg.gate in ("agreement", "margin"):
            sampling_requests(solver, task, [])  # fail early on a Solver without prompts
        book = require_book(self.name, self.resources, train)
        options = demo_options_from(solver)
        if options.get("answer_mode") == "choices" and cfg.gate == "agreement":
            options["answer_mode"] = "generate"
        second = DemoSolver(solver.lm, SkillSelector(book, cfg.skills_per_input),
                            k=cfg.k, **options)

        def build(threshold: float | None, force_all: bool = False) -> AdaptMISolver:
            return AdaptMISolver(
                solver.lm, solver, second, gate=cfg.gate, threshold=threshold,
                n_samples=cfg.n_samples, temperature=cfg.temperature, plus=cfg.plus,
                teacher=self.resources.teacher, missing_skills=cfg.missing_skills,
                teacher_candidates=cfg.teacher_candidates,
                max_tokens_teacher=cfg.max_tokens_teacher, force_all=force_all,
                seed=cfg.seed)

        dev_set = list(dev or [])[: cfg.max_dev]
        if not dev_set:
            return build(cfg.threshold)
        # On dev: run once re-asking everything, then price each threshold without new calls.
        probe = build(cfg.threshold, force_all=True)
        attempts = [a for i in range(0, len(dev_set), 32)
                    for a in probe.solve(task, dev_set[i : i + 32])]
        charge(self.report, attempts)
        v = task.verifier
        first_ok = [s.score for s in v.verify_batch(
            [a.meta["first_output"] for a in attempts], dev_set)]
        second_ok = [s.score for s in v.verify_batch(
            [a.meta.get("second_output", a.meta["first_output"]) for a in attempts], dev_set)]
        values = [a.meta["gate"]["value"] for a in attempts]
        default = DEFAULT_THRESHOLD[cfg.gate] if cfg.threshold is None else cfg.threshold
        table = []
        for t in sorted(set(cfg.threshold_candidates or []) | {default}):
            hard = [gate_decision(x, t) for x in values]
            acc = sum(s if h else f for f, s, h in zip(first_ok, second_ok, hard, strict=True))
            fired = sum(hard)
            tp = sum(h and f < 1.0 for h, f in zip(hard, first_ok, strict=True))
            table.append({"threshold": t, "dev_accuracy": acc / len(dev_set),
                          "fire_rate": fired / len(dev_set),
                          "precision": tp / fired if fired else None})
        best = (max(table, key=lambda r: (r["dev_accuracy"], -r["fire_rate"]))
                if cfg.threshold_candidates else next(r for r in table
                                                       if r["threshold"] == default))
        self.report.notes.update({
            "gate": cfg.gate, "plus": cfg.plus, "threshold": best["threshold"],
            "dev_accuracy": best["dev_accuracy"], "gate_fire_rate": best["fire_rate"],
            "gate_precision": best["precision"],
            "first_pass_dev_accuracy": sum(first_ok) / len(dev_set),
            "all_skill_demos_dev_accuracy": sum(second_ok) / len(dev_set),
            "teacher_fallbacks": sum(bool(a.meta.get("teacher_fallback")) for a in attempts),
            "judge_fallbacks": sum(bool(a.meta["gate"].get("judge_fallback"))
                                   for a in attempts),
            "thresholds": table,
        })
        return build(best["threshold"])
