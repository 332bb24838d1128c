"""memory: notes distilled from earlier attempts, retrieved into each new prompt.

Paper:
    Qian and Liu (2025). "MetaAgent: toward self-evolving agents via tool meta-learning"
    -- after each task the agent reflects, verifies its answer, distils what worked into
    short text notes placed in the context of later tasks, and keeps a persistent
    knowledge base.

What we do: the notes live in the knowledge base of :mod:`metaskill.skills.knowledge`
(SQLite + MiniLM, ``$METASKILL_HOME/memory.sqlite`` or ``path``), keyed by skill (the
example's skill labels -- its own, or the SkillBook's -- else the task's name), and
persist across tasks and runs. ``fit`` walks the dev examples in batches, in order:

1. For each input, retrieve the ``k`` best notes (:meth:`KnowledgeBase.search`: cosine
   similarity to the question the note was learnt from, a bonus for the same skill, the
   note's help record; demoted notes are left out) and answer with the incoming Solver,
   the notes appended to the task's instructions ("Notes from earlier attempts: ...").
2. Verify each answer. Every note that was shown counts one retrieval, and one help if
   the answer verified (the demotion rule of :class:`~metaskill.skills.knowledge.
   DemotionRule` hides notes that stop helping).
3. Distil each attempt -- question, answer, verdict, the reference answer, and the tool
   calls where the attempt's ``meta`` has them (``tool_trace``, ``tool_calls`` or
   ``trace``) -- into one short note by the LM in constrained JSON (:class:`NoteReply`,
   length-capped). A reply that does not validate, or validates but repeats itself
   (:func:`note_problem`), or ``distill="template"``, gets a note built from the trace by
   :func:`template_note` instead, stored with ``source="template"`` and the reason.
4. Store the notes; the next batch can retrieve them.

The returned :class:`MemorySolver` retrieves notes the same way for every input it
answers later (test, other tasks, other runs) but never changes the counters: only an
attempt whose answer is verified -- in ``fit`` -- can say whether a note helped.

Notes are shown through the task's instructions, so a Solver that replaces them (a demo
method's bare prompts, ``instructions=""``) never shows them; each attempt's
``meta["memory_shown"]`` says whether its prompt held the notes, and only shown notes are
counted.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.methods.base import MethodResources
    >>> from metaskill.eval.solvers import ZeroShot
    >>> from metaskill.tasks.base import Task, Verdict, Verifier
    >>> class Exact(Verifier):
    ...     def verify(self, output, ex):
    ...         return Verdict(score=float(output.strip() == ex.answer))
    >>> dev = [Example(id="d1", input="2+2", answer="4")]
    >>> task = Task(name="sums", splits={"dev": dev}, verifier=Exact(), instructions="Add.")
    >>> lm = ScriptedLM({"lesson": '{"note": "add the two numbers and give only the sum"}'},
    ...                 default="4")
    >>> m = Memory(MemoryConfig(path=":memory:"),
    ...            resources=MethodResources(embedder_spec="hash:64"))
    >>> s = m.fit(ZeroShot(lm), task, [], dev)
    >>> [n.text for n in s.knowledge_base().notes()]
    ['add the two numbers and give only the sum']
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model

from metaskill.core.types import Example, Message, Request
from metaskill.eval.solver import Attempt, Solver
from metaskill.lm.structured import complete_structured, text_chars
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import run_solver
from metaskill.skills.knowledge import DemotionRule, KnowledgeBase, Note, NoteDraft, default_path
from metaskill.tasks.base import Task

NOTES_HEADER = "Notes from earlier attempts at similar questions:"

DISTILL_PROMPT = (
    "You keep a notebook of lessons for answering questions of one kind.\n\n"
    "Kind of question: {skill}\nQuestion:\n{question}\n\nAnswer given:\n{answer}\n"
    "{tools}Verdict: {verdict}{expected}\n\n"
    "Write one short lesson (at most {chars} characters) that would help answer the next "
    "question of this kind correctly, e.g. \"for 2-digit multiplication, call calculator "
    "with a*b; answering directly fails\". Say what to do, not this question's answer. "
    "Reply with JSON: {{\"note\": \"<the lesson>\"}}."
)


# ---- distillation ---------------------------------------------------------------------
class NoteReply(BaseModel):
    """A distilled note, as the LM must write it (constrained JSON)."""

    note: str = Field(min_length=12, max_length=200)


def note_model(max_chars: int) -> type[NoteReply]:
    """:class:`NoteReply` with the note capped at ``max_chars`` characters.

    Example:
        >>> note_model(80).model_fields["note"].metadata[-1].max_length
        80
    """
    return create_model(  # type: ignore[call-overload,no-any-return]
        "NoteReply", __base__=NoteReply, note=(str, Field(min_length=12, max_length=max_chars)))


def tool_calls(attempt: Attempt) -> list[dict[str, Any]]:
    """The tool calls an attempt's ``meta`` records (``tool_trace``, as ``tool_use``
    writes it, else a ``tool_calls`` or ``trace`` list), as dicts with ``tool``, ``args``
    and ``result`` or ``error``; [] when it has none.

    Example:
        >>> a = Attempt(example_id="1", meta={"tool_calls": 1, "tool_trace": [
        ...     {"tool": "calculator", "args": {"expression": "12*34"}, "result": "408"}]})
        >>> tool_calls(a)[0]["tool"]
        'calculator'
    """
    for key in ("tool_trace", "tool_calls", "trace"):  # tool_use's tool_calls is a count
        raw = attempt.meta.get(key)
        if isinstance(raw, list) and raw:
            return [c for c in raw if isinstance(c, dict) and (c.get("tool") or c.get("name"))]
    return []


def render_calls(calls: list[dict[str, Any]], max_chars: int = 200) -> str:
    """Tool calls as one line: ``calculator(12*34) -> 408; python(...) -> error: ...``.

    Example:
        >>> render_calls([{"tool": "calculator", "args": {"expression": "12*34"},
        ...                "result": 408}])
        'calculator(12*34) -> 408'
    """
    parts = []
    for c in calls:
        args = c.get("args", c.get("arguments", ""))
        if isinstance(args, dict):
            args = ", ".join(str(v) for v in args.values())
        got = f"error: {c['error']}" if c.get("error") else str(c.get("result", ""))
        parts.append(f"{c.get('tool') or c.get('name')}({_cut(str(args), 60)}) -> "
                     f"{_cut(got, 60)}")
    return _cut("; ".join(parts), max_chars)


def note_problem(text: str) -> str | None:
    """Why a note that validates under the schema is still no note, or None.

    A small model's constrained reply can be valid JSON and still degenerate: the 135M
    model filled its notes with one phrase over and over ("The answer is 17. The answer
    is 17. ..."). A note in which some four-word sequence occurs three times is refused.

    Example:
        >>> note_problem("The answer is 7. The answer is 7. The answer is 7.")
        'the note repeats itself'
        >>> note_problem("add the ones, carry, then add the tens") is None
        True
    """
    words = text.lower().split()
    grams = [" ".join(words[i : i + 4]) for i in range(len(words) - 3)]
    if any(grams.count(g) >= 3 for g in set(grams)):
        return "the note repeats itself"
    return None


def _cut(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: max(0, n - 3)].rstrip() + "..."


def template_note(skill: str, question: str, answer: str, verified: bool,
                  expected: str | None, calls: list[dict[str, Any]], max_chars: int) -> str:
    """A note built from the trace alone (the fallback when the LM's note does not validate).

    Example:
        >>> t = template_note("multiplication", "What is 12 times 34?", "400", False, "408",
        ...                   [], 160)
        >>> t.startswith("For multiplication questions like 'What is 12 times 34?'")
        True
        >>> t.endswith("answering '400' failed; the answer was '408'.")
        True
    """
    tools = f", calling {render_calls(calls, 70)}" if calls else ""
    said = f"'{_cut(answer, 30)}'"
    if verified:
        body = f"{tools}{' then' if tools else ''} answering {said} was verified correct."
    else:
        body = f"{tools}, answering {said} failed" + (
            f"; the answer was '{_cut(expected, 30)}'." if expected else ".")
    # the question gets what is left: the lesson is in the body
    room = max(16, max_chars - len(body) - len(f"For {skill} questions like ''"))
    return _cut(f"For {skill} questions like '{_cut(question, room)}'" + body, max_chars)


def distill_request(lm: Any, skill: str, question: str, attempt: Attempt, verified: bool,
                    expected: str | None, max_chars: int, max_tokens: int) -> Request:
    """The request that asks the LM for one note about ``attempt``."""
    calls = tool_calls(attempt)
    text = DISTILL_PROMPT.format(
        skill=skill, question=_cut(question, 600), answer=_cut(attempt.output, 200) or "(none)",
        tools=f"Tool calls: {render_calls(calls)}\n" if calls else "",
        verdict="correct" if verified else "wrong",
        expected="" if verified or not expected else f" (the reference answer: {expected})",
        chars=max_chars)
    if getattr(lm, "chat", True):
        return Request(messages=(Message(role="user", content=text),), max_tokens=max_tokens)
    return Request(prompt=text + "\n\nJSON:", max_tokens=max_tokens, stop=("\n\n",))


def distill_notes(lm: Any, items: list[tuple[Example, Attempt, bool, str]], task_name: str,
                  *, use_lm: bool = True, max_chars: int = 160,
                  max_tokens: int = 96) -> tuple[list[NoteDraft], Any]:
    """One note per (example, attempt, verified, skill): the LM's, else the template's.

    Returns the drafts and the LM completions' summed usage and call count as a dict
    ``{"usage": Usage, "calls": int}``.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> ex = Example(id="1", input="What is 12 times 34?", answer="408")
        >>> a = Attempt(example_id="1", output="400")
        >>> drafts, _ = distill_notes(ScriptedLM(default="not json"), [(ex, a, False, "mul")],
        ...                           "arith")
        >>> drafts[0].source, drafts[0].error is not None
        ('template', True)
    """
    from metaskill.core.types import Usage

    spent: dict[str, Any] = {"usage": Usage(), "calls": 0}
    max_chars = min(max_chars, text_chars(max_tokens))  # a reply that fits in max_tokens
    replies: list[Any] = [None] * len(items)
    if use_lm and items:
        reqs = [distill_request(lm, skill, ex.text, a, ok, ex.answer, max_chars, max_tokens)
                for ex, a, ok, skill in items]
        replies = complete_structured(lm, reqs, note_model(max_chars))
        for r in replies:
            spent["usage"] = spent["usage"] + r.completion.usage
            spent["calls"] += 1 + r.completion.retries
    drafts = []
    for (ex, a, ok, skill), r in zip(items, replies, strict=True):
        common = {"skill": skill, "key": _cut(ex.text, 1000), "task": task_name,
                  "example_id": ex.id, "verified": ok}
        problem = None
        if r is not None and r.value is not None:
            note = " ".join(r.value.note.split())
            problem = note_problem(note)
            if problem is None:
                drafts.append(NoteDraft(text=note, source="lm", **common))
                continue
        text = template_note(skill, ex.text, a.output, ok, ex.answer, tool_calls(a), max_chars)
        why = "distill=template" if r is None else (problem or r.error or "invalid reply")
        drafts.append(NoteDraft(text=text, source="template", error=why, **common))
    return drafts, spent


# ---- the Solver ---------------------------------------------------------------------------
def notes_block(notes: list[Note]) -> str:
    """The text appended to the instructions: a header and one line per note.

    Example:
        >>> from metaskill.skills.knowledge import Note
        >>> print(notes_block([Note(id=1, skill="s", text="check the sign", created=0.0)]))
        Notes from earlier attempts at similar questions:
        - check the sign
    """
    return "\n".join([NOTES_HEADER, *(f"- {n.text}" for n in notes)])


class MemorySolver(Solver):
    """An inner Solver whose instructions carry the notes retrieved for each input.

    Args:
        lm: the LM.
        inner: the Solver that answers.
        path: the knowledge base file.
        embedder_spec: the embedder that searches it (see
            :func:`~metaskill.skills.embed.load_embedder`).
        k: notes per input.
        min_similarity: notes less similar than this to the input are not shown.
        skill_bonus: ranking bonus of a note of the input's own skill.
        scope: ``all`` (notes of every task: memory across tasks) or ``task`` (this
            task's notes only).
        rule: the demotion rule (:class:`~metaskill.skills.knowledge.DemotionRule`).
        embedder: a ready embedder (else loaded from ``embedder_spec`` on first use).
    """

    kind: ClassVar[str] = "memory"

    def __init__(self, lm: Any, inner: Solver, path: str, embedder_spec: str = "minilm", *,
                 k: int = 3, min_similarity: float = 0.3, skill_bonus: float = 0.1,
                 scope: str = "all", rule: DemotionRule | None = None,
                 embedder: Any = None, kb: KnowledgeBase | None = None) -> None:
        super().__init__(lm)
        self.inner = inner
        self.path = str(path)
        self.embedder_spec = embedder_spec
        self.k = k
        self.min_similarity = min_similarity
        self.skill_bonus = skill_bonus
        self.scope = scope
        self.rule = rule or DemotionRule()
        self._embedder = embedder
        self._kb = kb

    def knowledge_base(self) -> KnowledgeBase:
        """The knowledge base (opened on first use, with the embedder)."""
        if self._kb is None:
            if self._embedder is None:
                from metaskill.skills.embed import load_embedder

                self._embedder = load_embedder(self.embedder_spec)
            self._kb = KnowledgeBase(self.path, embedder=self._embedder, rule=self.rule)
        return self._kb

    def retrieve(self, task: Task, example: Example) -> list[Note]:
        """The notes shown with ``example`` (best first; read-only: counters unchanged)."""
        hits = self.knowledge_base().search(
            example.text, self.k, skills=example_skill_keys(example, task),
            skill_bonus=self.skill_bonus, min_similarity=self.min_similarity,
            task=task.name if self.scope == "task" else None)
        return [h.note for h in hits]

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer each example with its notes; inputs that get the same notes share one
        call of the inner Solver. ``meta``: ``memory_notes`` (ids) and ``memory_shown``."""
        groups: dict[tuple[int, ...], list[int]] = {}
        notes_of: dict[tuple[int, ...], list[Note]] = {}
        for i, ex in enumerate(examples):
            notes = self.retrieve(task, ex)
            key = tuple(n.id for n in notes)
            groups.setdefault(key, []).append(i)
            notes_of[key] = notes
        out: list[Attempt | None] = [None] * len(examples)
        for key, idx in groups.items():
            block = notes_block(notes_of[key]) if key else ""
            sub = task
            if block:
                base = (task.instructions or "").strip()
                sub = task.model_copy(update={"instructions": f"{base}\n\n{block}".strip()})
            for i, a in zip(idx, self.inner.solve(sub, [examples[i] for i in idx]),
                            strict=True):
                shown = bool(block) and block in a.prompt
                a.meta = {**a.meta, "memory_notes": list(key), "memory_shown": shown}
                out[i] = a
        return [a for a in out if a is not None]

    def state(self) -> dict[str, Any]:
        return {"inner": self.inner.to_json(), "path": self.path,
                "embedder": self.embedder_spec, "k": self.k,
                "min_similarity": self.min_similarity, "skill_bonus": self.skill_bonus,
                "scope": self.scope, "rule": self.rule.model_dump()}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> MemorySolver:
        from metaskill.eval.solvers import load_solver

        return cls(lm, load_solver(state["inner"], lm=lm), state["path"],
                   state.get("embedder", "minilm"), k=state.get("k", 3),
                   min_similarity=state.get("min_similarity", 0.3),
                   skill_bonus=state.get("skill_bonus", 0.1), scope=state.get("scope", "all"),
                   rule=DemotionRule(**state.get("rule", {})))


def example_skill_keys(example: Example, task: Any, book: Any = None) -> list[str]:
    """The skills a note about ``example`` is keyed by: its skill labels (mapped through
    the SkillBook when one is given, as the Profile counts them), else the task's name.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> example_skill_keys(Example(id="1", input="x", skills=["Two digit"]), NS(name="t"))
        ['two_digit']
        >>> example_skill_keys(Example(id="1", input="x"), NS(name="arith"))
        ['arith']
    """
    from metaskill.skills.profile import example_skills

    return example_skills(example, book) or [str(getattr(task, "name", "") or "task")]


# ---- the Method -------------------------------------------------------------------------
class MemoryConfig(MethodConfig):
    """Options of :class:`Memory`."""

    path: str | None = Field(None, description="knowledge base SQLite file (None: "
                                                "$METASKILL_HOME/memory.sqlite)")
    k: int = Field(3, ge=1, le=16, description="notes shown per input")
    min_similarity: float = Field(0.3, ge=-1.0, le=1.0, description="notes less similar "
                                  "than this to the input are not shown")
    skill_bonus: float = Field(0.1, ge=0.0, description="ranking bonus of a note of the "
                                                        "input's own skill")
    scope: Literal["all", "task"] = Field("all", description="retrieve notes of every task "
                                          "(memory across tasks) or of this task only")
    learn: bool = Field(True, description="distil and store notes from the dev attempts "
                                          "(false: only retrieve)")
    distill: Literal["lm", "template"] = Field(
        "lm", description="notes written by the LM in constrained JSON (a reply that does "
                          "not validate gets the template note), or always by the template")
    note_max_chars: int = Field(160, ge=40, le=400, description="longest note")
    note_max_tokens: int = Field(96, ge=24, description="token limit of a distillation "
                                                        "reply")
    batch_size: int = Field(8, ge=1, description="dev examples answered between two "
                                                 "updates of the knowledge base")
    max_dev: int | None = Field(None, ge=1, description="learn from at most this many dev "
                                                        "examples")
    demote_after: int = Field(5, ge=1, description="retrievals before a note can be "
                                                   "demoted")
    demote_below: float = Field(0.2, ge=0.0, le=1.0, description="help rate under which a "
                                "note is demoted (hidden) after demote_after retrievals")


class Memory(Method):
    """Experience memory: notes distilled from verified dev attempts, retrieved per input."""

    name: ClassVar[str] = "memory"
    Config: ClassVar[type[MethodConfig]] = MemoryConfig
    config: MemoryConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> MemorySolver:
        """Answer dev in batches with the notes so far, count which notes helped, distil
        each attempt into a new note (see the module doc); return the retrieving Solver.

        With no dev examples the notes are learnt from ``train``. An open
        :class:`~metaskill.skills.knowledge.KnowledgeBase` in
        ``resources.extra["knowledge_base"]`` is used instead of opening ``path`` (a
        ``":memory:"`` one shared across fits, a stream of tasks). Notes:
        ``dev_accuracy`` (answers with the memory as it grew), ``notes_added``,
        ``lm_notes`` / ``template_notes`` (and ``template_reasons``), ``shown`` (attempts
        whose prompt held notes), ``demoted`` (notes the rule hides now), ``kb``.
        """
        cfg = self.config
        embedder = self.resources.get_embedder()
        kb = self.resources.extra.get("knowledge_base")
        if kb is None:
            rule = DemotionRule(after=cfg.demote_after, below=cfg.demote_below)
            path = cfg.path or str(default_path(self.resources.settings))
            kb = KnowledgeBase(path, embedder=embedder, rule=rule)
        else:  # an open knowledge base, handed over (it keeps its own demotion rule)
            rule, path = kb.rule, kb.path
        wrapped = MemorySolver(solver.lm, solver, path, getattr(embedder, "spec", "minilm"),
                               k=cfg.k, min_similarity=cfg.min_similarity,
                               skill_bonus=cfg.skill_bonus, scope=cfg.scope, rule=rule,
                               embedder=embedder, kb=kb)
        learn_from = [e for e in (dev or train) if e.answer is not None][: cfg.max_dev]
        notes = self.report.notes
        notes.update({"kb": path, "learnt_from": "dev" if dev else "train",
                      "notes_before": len(kb)})
        if not cfg.learn or not learn_from:
            notes["notes_added"] = 0
            return wrapped
        book = self.resources.skillbook
        scores_all: list[float] = []
        counts = {"lm_notes": 0, "template_notes": 0, "shown": 0}
        reasons: dict[str, int] = {}
        for start in range(0, len(learn_from), cfg.batch_size):
            batch = learn_from[start : start + cfg.batch_size]
            # 1. answer with the notes learnt so far
            attempts, scores = run_solver(wrapped, task, batch, self.report,
                                          progress=False, label="memory dev")
            scores_all += scores
            # 2. count retrievals and helps of the notes that were shown
            for a, s in zip(attempts, scores, strict=True):
                if a.meta.get("memory_shown"):
                    counts["shown"] += 1
                    kb.record_use(a.meta.get("memory_notes", []), helped=s >= 1.0)
            # 3. distil each attempt into a note (LM, else template)
            items = [(ex, a, s >= 1.0, example_skill_keys(ex, task, book)[0])
                     for ex, a, s in zip(batch, attempts, scores, strict=True)]
            drafts, spent = distill_notes(
                solver.lm, items, task.name, use_lm=cfg.distill == "lm",
                max_chars=cfg.note_max_chars, max_tokens=cfg.note_max_tokens)
            self.report.usage = self.report.usage + spent["usage"]
            self.report.lm_calls += spent["calls"]
            for d in drafts:
                counts[f"{d.source}_notes"] += 1
                if d.error:
                    reasons[d.error] = reasons.get(d.error, 0) + 1
            # 4. store them; the next batch retrieves them
            kb.add_many(drafts)
            self.resources.say(f"memory: {start + len(batch)}/{len(learn_from)} dev, "
                               f"{len(kb)} notes")
        notes.update({
            "dev_accuracy": sum(scores_all) / len(scores_all), "dev_n": len(scores_all),
            "notes_added": len(kb) - notes["notes_before"], **counts,
            "template_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
            "demoted": sum(kb.is_demoted(n) for n in kb.notes()),
        })
        return wrapped


__all__ = ["NOTES_HEADER", "Memory", "MemoryConfig", "MemorySolver", "NoteReply",
           "distill_notes", "example_skill_keys", "notes_block", "template_note",
           "tool_calls"]
