"""multi_critique: several critics, one meta-critique, one refinement.

Paper:
    Lan, Huang, Fan, Li, Wang, Mao et al. (2024). "Training Language Models to Critique
    With Multi-agent Feedback" (MultiCritique). Several advanced LLMs critique a
    response; a meta-critic aggregates their critiques into one high-quality critique
    (keeping the points that agree and are well-founded); the aggregate is used as
    supervision (SFT, then RL) to train a critic model.

What we changed: we use the pipeline at *inference* time and train nothing. The critics
are prompts with different focus (correctness, format, reasoning) on the Solver's LM,
or other LMs given by spec; the meta-critic (the teacher if given, else the LM) merges
them into one verdict and critique; the answer is refined once from the aggregate, and
only when the aggregate says the answer is wrong. Critic and meta-critic replies are
*constrained*: on a backend that enforces JSON schemas (``"json_schema" in
lm.constraints``) each must be ``{"verdict": "correct" | "incorrect", "critique": "..."}``
(:class:`CritiqueReply`, the critique sized to ``max_tokens``) -- the 135M model, asked
for the free-text protocol, wrote no parseable critique on any of 50 sst2 dev inputs. On
a backend without schemas the reply follows a two-line protocol (``VERDICT:
correct|incorrect`` then ``CRITIQUE: ...``). A reply that does not parse (JSON: broke the
schema on both of ``LM.complete``'s tries; free text: no verdict after one reminder) is
dropped; if every critic or the meta-critic fails, or the refinement is empty, the input
keeps its unadapted answer and ``meta["fallback"]`` says why (counted by the fit report).

Algorithm (what :class:`MultiCritiqueSolver` does for a batch):

1. The incoming Solver answers every input.
2. Each critic critiques each answer (JSON, or free text retried once; a reply that
   still does not parse is dropped).
3. The meta-critic aggregates the parsed critiques into one verdict and critique
   (the same rule; else fall back to the first answer).
4. If the aggregate verdict is ``incorrect``, refine the answer once from the aggregate
   critique; otherwise keep it.

Example:
    >>> CritiqueReply.model_validate_json('{"verdict": "incorrect", "critique": "12"}').verdict
    'incorrect'
    >>> parse_critique("VERDICT: incorrect\\nCRITIQUE: the sum is 12, not 11")
    ('incorrect', 'the sum is 12, not 11')
    >>> parse_critique("looks fine to me") is None
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Usage
from metaskill.eval.solver import Attempt, Solver, answer_max_tokens
from metaskill.lm.structured import complete_structured, text_chars
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import run_solver
from metaskill.methods.meta_prompting import user_request
from metaskill.tasks.base import Task


class Critic(BaseModel):
    """One critic: a name, its focus, and optionally its own model (a spec string)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    focus: str
    model: str | None = Field(None, description="LM spec; None uses the Solver's LM")


DEFAULT_CRITICS = [
    Critic(name="correctness", focus="Is the answer factually and logically correct?"),
    Critic(name="format", focus="Does the answer have exactly the form the question asks "
           "for (e.g. one of the allowed labels, a number)?"),
    Critic(name="reasoning", focus="Re-solve the question yourself step by step and compare "
           "your result with the answer."),
]

CRITIC_PROMPT = (
    "{question}\n\nProposed answer: {answer}\n\nYou are a critic. {focus}\n{reply}"
)
META_PROMPT = (
    "{question}\n\nProposed answer: {answer}\n\nSeveral critics reviewed the answer:\n"
    "{critiques}\n\nYou are the meta-critic. Keep the points that are well-founded and "
    "agree with each other, drop the rest, and give one verdict.\n{reply}"
)
REPLY_LINES = "Reply in two lines:\nVERDICT: correct or incorrect\nCRITIQUE: <{what}>"
REPLY_JSON = ('Reply with JSON: {{"verdict": "correct" or "incorrect", '
              '"critique": "<{what}>"}}')
REFINE_PROMPT = (
    "{question}\n\nA previous answer was: {answer}\nA reviewer said: {critique}\n\n"
    "Write the corrected final answer only, in the form the question asks for."
)
RETRY = "Reply in exactly two lines:\nVERDICT: correct or incorrect\nCRITIQUE: <text>"

_VERDICT = re.compile(r"verdict\s*[:：]\s*\**\s*(correct|incorrect|wrong|right)",
                      re.IGNORECASE)
_CRITIQUE = re.compile(r"critique\s*[:：]\s*(.+)", re.IGNORECASE | re.DOTALL)


class CritiqueReply(BaseModel):
    """A constrained critic or meta-critic reply."""

    verdict: Literal["correct", "incorrect"]
    critique: str = Field(max_length=400)


def critique_model(max_tokens: int) -> type[CritiqueReply]:
    """:class:`CritiqueReply` with the critique cut to what fits in ``max_tokens`` (about
    2.5 characters a token after ~20 tokens of JSON), so a reply is never cut.

    Example:
        >>> critique_model(64).model_fields["critique"].metadata[0].max_length
        110
    """
    chars = text_chars(max_tokens)
    return create_model(  # type: ignore[call-overload,no-any-return]
        "CritiqueReply", __base__=CritiqueReply, critique=(str, Field(max_length=chars)))


def structured(lm: Any) -> bool:
    """Whether ``lm`` enforces JSON schemas (replies are then constrained JSON)."""
    return "json_schema" in getattr(lm, "constraints", frozenset())


def reply_format(lm: Any, what: str) -> str:
    """The reply instructions for ``lm``: JSON on a schema backend, else the two lines."""
    return (REPLY_JSON if structured(lm) else REPLY_LINES).format(what=what)


def parse_critique(text: str) -> tuple[str, str] | None:
    """``(verdict, critique)`` from a critic's reply, or None when it has no verdict."""
    m = _VERDICT.search(text)
    if not m:
        return None
    verdict = "correct" if m.group(1).lower() in ("correct", "right") else "incorrect"
    c = _CRITIQUE.search(text)
    critique = c.group(1).strip() if c else text[m.end():].strip()
    return verdict, critique[:600]


def question_text(task: Any, example: Example) -> str:
    """The question with the task's instructions and, for labels, the label set."""
    head = getattr(task, "instructions", "") or ""
    labels = getattr(task, "labels", None)
    tail = f"\nAllowed answers: {', '.join(labels)}." if labels else ""
    return f"{head}\n\n{task.render(example)}{tail}".strip()


class MultiCritiqueSolver(Solver):
    """Answer, gather several critiques, aggregate them, refine once.

    Args:
        lm: the Solver's LM (answers, refinement, and critics without a model).
        inner: the Solver whose answers are critiqued.
        critics: the critics (at least two).
        meta_critic: LM of the meta-critic; None uses ``lm``.
        critic_lms: LMs of critics that name a model (spec -> LM); loaded when missing.
        max_tokens: length of critic and meta-critic replies.
        refine_max_tokens: length of the refined answer.
    """

    kind: ClassVar[str] = "multi_critique"

    def __init__(self, lm: Any, inner: Solver, critics: Sequence[Critic] | None = None, *,
                 meta_critic: Any = None, critic_lms: dict[str, Any] | None = None,
                 max_tokens: int = 96, refine_max_tokens: int | None = None) -> None:
        super().__init__(lm)
        self.inner = inner
        self.critics = list(critics or DEFAULT_CRITICS)
        if len(self.critics) < 2:
            raise MethodError("multi_critique: needs at least two critics.")
        self.meta_critic = meta_critic
        self.critic_lms = dict(critic_lms or {})
        self.max_tokens = max_tokens
        self.refine_max_tokens = refine_max_tokens

    def critic_lm(self, critic: Critic) -> Any:
        """The LM a critic uses (its own model, loaded once, or the Solver's LM)."""
        if critic.model is None or critic.model == getattr(self.lm, "spec", None):
            return self.lm
        if critic.model not in self.critic_lms:
            from metaskill.lm import load_lm

            self.critic_lms[critic.model] = load_lm(critic.model)
        return self.critic_lms[critic.model]

    # ---- the algorithm box ---------------------------------------------------------------
    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer, critique (several), aggregate, refine once where judged incorrect."""
        blind = [e.model_copy(update={"answer": None}) for e in examples]
        # 1. The unadapted answers.
        first = self.inner.solve(task, blind)
        n = len(blind)
        usage = [a.usage for a in first]
        calls = [int(a.meta.get("lm_calls", 1)) for a in first]
        questions = [question_text(task, e) for e in blind]
        ok = [i for i in range(n) if first[i].error is None]
        # 2. Every critic on every answer (retry once, else drop that critic's critique).
        critiques: list[list[tuple[str, str, str]]] = [[] for _ in range(n)]
        dropped = [0] * n
        for critic in self.critics:
            lm = self.critic_lm(critic)
            reply = reply_format(lm, "one or two sentences")
            asks = {i: CRITIC_PROMPT.format(question=questions[i], answer=first[i].output,
                                            focus=critic.focus, reply=reply) for i in ok}
            got, u, c = self._ask_parsed(lm, asks)
            for i in ok:
                usage[i] = usage[i] + u[i]
                calls[i] += c[i]
                if got.get(i) is None:
                    dropped[i] += 1
                else:
                    critiques[i].append((critic.name, *got[i]))  # type: ignore[misc]
        # 3. The meta-critic aggregates.
        fallback: list[str | None] = [None] * n
        meta_lm = self.meta_critic or self.lm
        meta_reply = reply_format(meta_lm, "the merged critique")
        meta_asks = {}
        for i in ok:
            if not critiques[i]:
                fallback[i] = "critics_unparseable"
                continue
            listing = "\n".join(f"- {name} critic: VERDICT {v}. {text}"
                                for name, v, text in critiques[i])
            meta_asks[i] = META_PROMPT.format(question=questions[i], answer=first[i].output,
                                              critiques=listing, reply=meta_reply)
        aggregate, u, c = self._ask_parsed(meta_lm, meta_asks)
        for i in meta_asks:
            usage[i] = usage[i] + u[i]
            calls[i] += c[i]
            if aggregate.get(i) is None:
                fallback[i] = "meta_critic_unparseable"
        # 4. Refine once where the aggregate verdict is "incorrect".
        refine = [i for i in meta_asks if aggregate.get(i) and aggregate[i][0] == "incorrect"]
        max_tokens = answer_max_tokens(task, self.refine_max_tokens)
        comps = self.lm.complete([
            user_request(self.lm, [("user", REFINE_PROMPT.format(
                question=questions[i], answer=first[i].output, critique=aggregate[i][1]))],
                system=None, max_tokens=max_tokens) for i in refine]) if refine else []
        refined: dict[int, str] = {}
        for i, comp in zip(refine, comps, strict=True):
            usage[i] = usage[i] + comp.usage
            calls[i] += 1
            text = self.postprocess(task, comp.text)
            if text:
                refined[i] = text
            else:
                fallback[i] = "empty_refinement"
        out = []
        for i, a in enumerate(first):
            meta = {"first_output": a.output, "critiques": critiques[i],
                    "critics_dropped": dropped[i], "aggregate": aggregate.get(i),
                    "refined": i in refined, "fallback": fallback[i], "lm_calls": calls[i]}
            out.append(a.model_copy(update={"output": refined.get(i, a.output),
                                            "usage": usage[i], "meta": {**a.meta, **meta}}))
        return out

    def _ask_parsed(self, lm: Any, asks: dict[int, str]) -> tuple[
            dict[int, tuple[str, str] | None], dict[int, Usage], dict[int, int]]:
        """Ask each prompt for a (verdict, critique): constrained JSON where ``lm`` enforces
        schemas (``LM.complete`` asks twice at most), else free text re-asked once with a
        reminder where the reply has no verdict."""
        if structured(lm):
            return self._ask_json(lm, asks)
        got: dict[int, tuple[str, str] | None] = {i: None for i in asks}
        usage = {i: Usage() for i in asks}
        calls = {i: 0 for i in asks}
        history: dict[int, list[tuple[str, str]]] = {i: [("user", q)] for i, q in asks.items()}
        todo = list(asks)
        for _ in range(2):  # the first try and one retry
            if not todo:
                break
            comps = lm.complete([user_request(lm, history[i], system=None,
                                              max_tokens=self.max_tokens) for i in todo])
            left = []
            for i, comp in zip(todo, comps, strict=True):
                usage[i] = usage[i] + comp.usage
                calls[i] += 1
                got[i] = parse_critique(comp.text)
                if got[i] is None:
                    history[i] += [("assistant", comp.text), ("user", RETRY)]
                    left.append(i)
            todo = left
        return got, usage, calls

    def _ask_json(self, lm: Any, asks: dict[int, str]) -> tuple[
            dict[int, tuple[str, str] | None], dict[int, Usage], dict[int, int]]:
        idx = list(asks)
        reqs = [user_request(lm, [("user", asks[i])], system=None, max_tokens=self.max_tokens)
                for i in idx]
        replies = complete_structured(lm, reqs, critique_model(self.max_tokens)) if idx else []
        got: dict[int, tuple[str, str] | None] = {}
        for i, r in zip(idx, replies, strict=True):
            got[i] = (r.value.verdict, r.value.critique.strip()) if r.value else None
        return (got, {i: r.completion.usage for i, r in zip(idx, replies, strict=True)},
                {i: 1 + r.completion.retries for i, r in zip(idx, replies, strict=True)})

    def postprocess(self, task: Any, text: str) -> str:
        """Strip; the first non-empty line for classification / multiple choice."""
        text = re.sub(r"^\s*(final answer|answer)\s*[:：]\s*", "", text.strip(),
                      flags=re.IGNORECASE)
        if getattr(task, "kind", "generative") != "generative":
            return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return text.strip()

    # ---- JSON -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"inner": self.inner.to_json(),
                "critics": [c.model_dump() for c in self.critics],
                "meta_critic": getattr(self.meta_critic, "spec", None),
                "max_tokens": self.max_tokens, "refine_max_tokens": self.refine_max_tokens}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> MultiCritiqueSolver:
        from metaskill.eval.solvers import load_solver

        meta = None
        spec = state.get("meta_critic")
        if spec and spec != getattr(lm, "spec", None):
            from metaskill.lm import load_lm

            meta = load_lm(spec)
        return cls(lm, load_solver(state["inner"], lm=lm),
                   [Critic.model_validate(c) for c in state["critics"]], meta_critic=meta,
                   max_tokens=state.get("max_tokens", 96),
                   refine_max_tokens=state.get("refine_max_tokens"))


def fallback_counts(attempts: Sequence[Attempt]) -> dict[str, int]:
    """How many attempts fell back, by reason."""
    out: dict[str, int] = {}
    for a in attempts:
        reason = a.meta.get("fallback")
        if reason:
            out[reason] = out.get(reason, 0) + 1
    return out


class MultiCritiqueConfig(MethodConfig):
    """Options of :class:`MultiCritique`."""

    critics: list[Critic] = Field(default_factory=lambda: list(DEFAULT_CRITICS),
                                  min_length=2, description="the critics (>= 2)")
    max_tokens: int = Field(96, ge=8, description="length of critic/meta-critic replies")
    refine_max_tokens: int | None = Field(None, ge=1, description="length of the refinement")
    max_dev: int | None = Field(None, ge=1, description="score at most this many dev examples")


class MultiCritique(Method):
    """Several critics, a meta-critic that aggregates them, one refinement."""

    name: ClassVar[str] = "multi_critique"
    Config: ClassVar[type[MethodConfig]] = MultiCritiqueConfig
    config: MultiCritiqueConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> MultiCritiqueSolver:
        """Wrap ``solver``; with dev, report inner vs refined accuracy and fallbacks."""
        cfg = self.config
        wrapped = MultiCritiqueSolver(solver.lm, solver, cfg.critics,
                                      meta_critic=self.resources.teacher,
                                      max_tokens=cfg.max_tokens,
                                      refine_max_tokens=cfg.refine_max_tokens)
        dev_set = list(dev or [])[: cfg.max_dev]
        if dev_set:
            attempts, scores = run_solver(wrapped, task, dev_set, self.report,
                                          progress=self.resources.progress,
                                          label="multi_critique dev")
            firsts = task.verifier.verify_batch([a.meta.get("first_output", a.output)
                                                 for a in attempts], dev_set)
            self.report.notes.update({
                "dev_accuracy": sum(scores) / len(scores),
                "inner_dev_accuracy": sum(v.score for v in firsts) / len(firsts),
                "refined": sum(bool(a.meta.get("refined")) for a in attempts),
                "fallbacks": fallback_counts(attempts),
                "critics_dropped": sum(int(a.meta.get("critics_dropped", 0))
                                       for a in attempts),
                "structured": structured(solver.lm),
            })
        return wrapped
