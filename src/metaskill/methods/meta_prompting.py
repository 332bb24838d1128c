"""meta_prompting: a conductor decomposes the problem and consults experts (the same LM).

Papers:
    Suzgun, Kalai (2024). "Meta-Prompting: Enhancing Language Models with
    Task-Agnostic Scaffolding". One LM acts as a *conductor*: it breaks the problem into
    subtasks, writes instructions for *expert* instances of itself (each sees only its
    own instructions, a fresh context), may run Python, checks and integrates the
    experts' outputs, and ends with a final answer. Rounds are capped.

    Zhang, Yuan, Yao (2023/2024). "Meta Prompting for AI Systems" (also titled "Meta
    Prompting for AGI Systems"). Structure-first prompts: a task-agnostic template that
    fixes the *shape* of the reasoning (understand -> decompose -> solve -> verify ->
    answer) instead of content examples.

What we changed: the conductor speaks a small line protocol that a 135M model can hit
(``EXPERT <name>: <instructions>``, a fenced ``python`` block, or ``FINAL ANSWER: ...``)
instead of the paper's triple-quoted free text; its system prompt is a structure-first
template. Python runs in the sandbox of the code-execution verifier
(:func:`metaskill.tasks.sandbox.run_code`: bubblewrap, rlimits, no network). Limits:
``max_rounds`` conductor turns and ``max_expert_calls`` expert/Python calls per input;
when either is spent the conductor is asked once for its final answer. A conductor
reply with no action is retried once with a reminder; after that the input falls back to
the plain answer of the incoming Solver, and ``meta["fallback"]`` says so (counted in the
fit report and by :func:`fallback_rate`).

Algorithm (what :class:`MetaPromptingSolver` does per input, batched across inputs):

1. The conductor gets the structure-first template and the question.
2. Each round, parse the conductor's reply:
   EXPERT -> ask a fresh LM instance with only the instructions; append its reply;
   PYTHON -> run it in the sandbox; append stdout/stderr;
   FINAL ANSWER -> stop; unparseable -> remind once, then fall back.
3. At the limits (``max_rounds`` replies, ``max_expert_calls`` calls), demand the final
   answer once (one extra reply); if it does not come, fall back.
4. The answer is post-processed like the incoming Solver's (first line for labels).

Example:
    >>> parse_action("Let me ask.\\nEXPERT Mathematician: compute 3*4")
    ('expert', 'Mathematician', 'compute 3*4')
    >>> parse_action("FINAL ANSWER: 12")
    ('final', '', '12')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message, Request, Usage
from metaskill.eval.solver import Attempt, Solver
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import run_solver
from metaskill.tasks.base import Task

CONDUCTOR_PROMPT = """You are the Conductor. You solve problems by consulting experts.
Work in this structure:
1. Understand: restate what is asked and the answer format.
2. Decompose: split the problem into small subtasks.
3. Delegate: for a subtask, write one line
   EXPERT <role>: <complete instructions; the expert sees nothing else>
   or, to compute, write a Python block (```python ... ```) that prints its result.
4. Verify: check the experts' results against each other.
5. Answer: write one line
   FINAL ANSWER: <the answer, in the format the question asks for>
Do one step per reply. You have at most {rounds} replies and {calls} expert or Python calls."""

REMINDER = ("Your reply had no action. Reply with exactly one of: a line 'EXPERT <role>: "
            "<instructions>', a ```python``` block, or a line 'FINAL ANSWER: <answer>'.")
LAST_CALL = "No more experts are available. Reply now with one line: FINAL ANSWER: <answer>"

_FINAL = re.compile(r"final\s+answer\s*[:：]\s*(.+)", re.IGNORECASE | re.DOTALL)
_EXPERT = re.compile(r"^\W*expert\s+([^:\n]{1,60}?)\s*[:：]\s*(.+)", re.IGNORECASE | re.MULTILINE
                     | re.DOTALL)
_PYTHON = re.compile(r"```(?:python|py)\s*\n(.*?)```", re.IGNORECASE | re.DOTALL)


def parse_action(text: str) -> tuple[str, str, str] | None:
    """The conductor's action: ``(kind, name, body)`` with kind ``final``, ``expert`` or
    ``python``; None when the reply has none. A final answer wins over other actions."""
    m = _FINAL.search(text)
    if m and m.group(1).strip():
        return "final", "", m.group(1).strip().splitlines()[0].strip()
    code = _PYTHON.search(text)
    expert = _EXPERT.search(text)
    if code and (not expert or code.start() < expert.start()):
        return "python", "", code.group(1).strip()
    if expert and expert.group(2).strip():
        body = expert.group(2).strip()
        return "expert", expert.group(1).strip().strip("*"), body
    return None


def user_request(lm: Any, history: Sequence[tuple[str, str]], *, system: str | None,
                 max_tokens: int, stop: tuple[str, ...] = ()) -> Request:
    """A greedy request for a conversation, as chat messages or a plain transcript."""
    if getattr(lm, "chat", True):
        msgs = ([Message(role="system", content=system)] if system else []) + [
            Message(role=r, content=c) for r, c in history]  # type: ignore[arg-type]
        return Request(messages=tuple(msgs), max_tokens=max_tokens, stop=stop)
    lines = [system or ""] + [f"{'Conductor' if r == 'assistant' else 'Input'}: {c}"
                              for r, c in history]
    return Request(prompt="\n\n".join(lines).strip() + "\n\nConductor:",
                   max_tokens=max_tokens, stop=("\n\nInput:", *stop))


@dataclass
class _Episode:
    """One input's conversation with the conductor."""

    example: Example
    history: list[tuple[str, str]]
    rounds: int = 0
    calls: int = 0
    lm_calls: int = 0
    python_runs: int = 0
    retried: bool = False
    last_call: bool = False
    answer: str | None = None
    fallback: str | None = None
    usage: Usage = field(default_factory=Usage)
    trace: list[dict[str, str]] = field(default_factory=list)


class MetaPromptingSolver(Solver):
    """A conductor LM that consults expert instances of itself and a Python sandbox.

    Args:
        lm: the LM (conductor and experts).
        plain: the incoming Solver, whose answer is the fallback.
        max_rounds: conductor replies per input (>= 1).
        max_expert_calls: expert plus Python calls per input.
        allow_python: let the conductor run Python in the sandbox.
        conductor_max_tokens: length of a conductor reply.
        expert_max_tokens: length of an expert reply.
        code_timeout_s: wall-time limit of one Python run.
        template: the conductor's system prompt (``{rounds}`` and ``{calls}`` filled in).
    """

    kind: ClassVar[str] = "meta_prompting"

    def __init__(self, lm: Any, plain: Solver, *, max_rounds: int = 4,
                 max_expert_calls: int = 3, allow_python: bool = True,
                 conductor_max_tokens: int = 160, expert_max_tokens: int = 160,
                 code_timeout_s: float = 5.0, template: str = CONDUCTOR_PROMPT) -> None:
        super().__init__(lm)
        if max_rounds < 1:
            raise MethodError("meta_prompting: max_rounds must be >= 1.")
        if max_expert_calls < 0:
            raise MethodError("meta_prompting: max_expert_calls must be >= 0.")
        self.plain = plain
        self.max_rounds = max_rounds
        self.max_expert_calls = max_expert_calls
        self.allow_python = allow_python
        self.conductor_max_tokens = conductor_max_tokens
        self.expert_max_tokens = expert_max_tokens
        self.code_timeout_s = code_timeout_s
        self.template = template

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Run the conductor loop for every input (batched per round)."""
        system = self.template.format(rounds=self.max_rounds, calls=self.max_expert_calls)
        eps = [_Episode(e, [("user", self.question(task, e))]) for e in examples]
        # 1-3. Conductor rounds until every episode has an answer or a fallback.
        while True:
            live = [ep for ep in eps if ep.answer is None and ep.fallback is None]
            if not live:
                break
            reqs = [user_request(self.lm, ep.history, system=system,
                                 max_tokens=self.conductor_max_tokens) for ep in live]
            replies = self.lm.complete(reqs)
            experts: list[tuple[_Episode, str, str]] = []
            for ep, c in zip(live, replies, strict=True):
                ep.usage = ep.usage + c.usage
                ep.lm_calls += 1
                ep.rounds += 1
                ep.history.append(("assistant", c.text))
                ep.trace.append({"role": "conductor", "content": c.text})
                action = parse_action(c.text)
                if ep.last_call:  # the one demanded final reply
                    if action is not None and action[0] == "final":
                        ep.answer = action[2]
                    else:
                        ep.fallback = "limit"
                    continue
                spent = ep.rounds >= self.max_rounds
                if action is None:
                    if ep.retried:
                        ep.fallback = "unparseable"
                    elif spent:
                        ep.last_call = True
                        ep.history.append(("user", LAST_CALL))
                    else:
                        ep.retried = True
                        ep.history.append(("user", REMINDER))
                    continue
                kind, name, body = action
                if kind == "final":
                    ep.answer = body
                elif spent or ep.calls >= self.max_expert_calls:
                    ep.last_call = True
                    ep.history.append(("user", LAST_CALL))
                elif kind == "python" and not self.allow_python:
                    ep.history.append(("user", "Python is not available. Ask an EXPERT."))
                elif kind == "python":
                    ep.calls += 1
                    ep.python_runs += 1
                    result, isolation = self.python_with_isolation(body)
                    ep.history.append(("user", f"Python output:\n{result}"))
                    ep.trace.append({"role": "python", "content": result,
                                     "isolation": isolation})
                else:
                    ep.calls += 1
                    experts.append((ep, name, body))
            # Experts: fresh context, only their own instructions.
            if experts:
                comps = self.lm.complete([
                    user_request(self.lm, [("user", body)],
                                 system=f"You are {name}. Answer concisely and precisely.",
                                 max_tokens=self.expert_max_tokens)
                    for _, name, body in experts])
                for (ep, name, _), c in zip(experts, comps, strict=True):
                    ep.usage = ep.usage + c.usage
                    ep.lm_calls += 1
                    ep.history.append(("user", f"{name} replied:\n{c.text.strip()}"))
                    ep.trace.append({"role": f"expert:{name}", "content": c.text})
        # Fallbacks: the plain Solver's answer.
        plain_by_id: dict[str, Attempt] = {}
        fell = [ep.example for ep in eps if ep.answer is None]
        if fell:
            plain_by_id = {a.example_id: a for a in self.plain.solve(task, fell)}
        out = []
        for ep in eps:
            meta: dict[str, Any] = {
                "rounds": ep.rounds, "expert_calls": ep.calls - ep.python_runs,
                "python_runs": ep.python_runs, "retried": ep.retried,
                "fallback": ep.fallback, "trace": ep.trace,
            }
            usage, lm_calls, output = ep.usage, ep.lm_calls, ep.answer or ""
            if ep.answer is None:
                p = plain_by_id[ep.example.id]
                usage = usage + p.usage
                lm_calls += int(p.meta.get("lm_calls", 1))
                output = p.output
            else:
                output = self.postprocess(task, output)
            meta["lm_calls"] = lm_calls
            out.append(Attempt(example_id=ep.example.id, prompt=ep.history[0][1],
                               output=output, usage=usage, meta=meta))
        return out

    # ---- pieces ---------------------------------------------------------------------------
    def question(self, task: Any, example: Example) -> str:
        """The question with the task's instructions and, for labels, the label set."""
        head = getattr(task, "instructions", "") or ""
        labels = getattr(task, "labels", None)
        tail = f"\nAnswer with one of: {', '.join(labels)}." if labels else ""
        return f"{head}\n\n{task.render(example)}{tail}".strip()

    def run_python(self, code: str) -> str:
        """Run conductor code in the code verifier's sandbox; stdout or the error, clipped."""
        return self.python_with_isolation(code)[0]

    def python_with_isolation(self, code: str) -> tuple[str, list[str]]:
        """:meth:`run_python`'s text and the sandbox layers that applied (for the trace)."""
        from metaskill.tasks.sandbox import run_code

        r = run_code(code, timeout_s=self.code_timeout_s)
        text = r.stdout.strip() if r.ok else f"{r.summary()}\n{r.stderr.strip()[-400:]}"
        return text[:1000] or "(no output)", r.isolation

    def postprocess(self, task: Any, text: str) -> str:
        """Strip; the first non-empty line for classification / multiple choice."""
        text = text.strip().strip("*").strip()
        if getattr(task, "kind", "generative") != "generative":
            return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return text

    # ---- JSON ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"plain": self.plain.to_json(), "max_rounds": self.max_rounds,
                "max_expert_calls": self.max_expert_calls, "allow_python": self.allow_python,
                "conductor_max_tokens": self.conductor_max_tokens,
                "expert_max_tokens": self.expert_max_tokens,
                "code_timeout_s": self.code_timeout_s, "template": self.template}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> MetaPromptingSolver:
        from metaskill.eval.solvers import load_solver

        opts = {k: state[k] for k in ("max_rounds", "max_expert_calls", "allow_python",
                                      "conductor_max_tokens", "expert_max_tokens",
                                      "code_timeout_s", "template") if k in state}
        return cls(lm, load_solver(state["plain"], lm=lm), **opts)


def fallback_rate(attempts: Sequence[Attempt]) -> float:
    """Share of attempts that fell back to the plain answer (0.0 for none)."""
    if not attempts:
        return 0.0
    return sum(a.meta.get("fallback") is not None for a in attempts) / len(attempts)


class MetaPromptingConfig(MethodConfig):
    """Options of :class:`MetaPrompting`."""

    max_rounds: int = Field(4, ge=1, le=20, description="conductor replies per input")
    max_expert_calls: int = Field(3, ge=0, le=20, description="expert + Python calls per input")
    allow_python: bool = Field(True, description="the conductor may run sandboxed Python")
    conductor_max_tokens: int = Field(160, ge=8, description="length of a conductor reply")
    expert_max_tokens: int = Field(160, ge=8, description="length of an expert reply")
    code_timeout_s: float = Field(5.0, gt=0, le=60, description="limit of one Python run")
    max_dev: int | None = Field(None, ge=1, description="score at most this many dev examples")


class MetaPrompting(Method):
    """Conductor + experts (Meta-Prompting) with a structure-first template."""

    name: ClassVar[str] = "meta_prompting"
    Config: ClassVar[type[MethodConfig]] = MetaPromptingConfig
    config: MetaPromptingConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> MetaPromptingSolver:
        """Wrap ``solver`` (kept as the fallback); with dev, report accuracy and fallbacks."""
        cfg = self.config
        wrapped = MetaPromptingSolver(
            solver.lm, solver, max_rounds=cfg.max_rounds, max_expert_calls=cfg.max_expert_calls,
            allow_python=cfg.allow_python, conductor_max_tokens=cfg.conductor_max_tokens,
            expert_max_tokens=cfg.expert_max_tokens, code_timeout_s=cfg.code_timeout_s)
        dev_set = list(dev or [])[: cfg.max_dev]
        if dev_set:
            attempts, scores = run_solver(wrapped, task, dev_set, self.report,
                                          progress=self.resources.progress,
                                          label="meta_prompting dev")
            self.report.notes.update({
                "dev_accuracy": sum(scores) / len(scores),
                "fallbacks": sum(a.meta.get("fallback") is not None for a in attempts),
                "fallback_rate": fallback_rate(attempts),
                "mean_rounds": sum(a.meta.get("rounds", 0) for a in attempts) / len(attempts),
            })
        return wrapped
