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

What we changed: the conductor's reply is a *constrained* action. On a backend that
enforces JSON schemas (``"json_schema" in lm.constraints``) it must be one JSON object of
:func:`conductor_model`: ``{"expert": <role>, "instructions": ...}``, ``{"python":
<code>}`` (only with ``allow_python``) or ``{"final_answer": ...}`` -- the final answer one
of the task's labels where it has them, and the only choice left when the final answer is
demanded; string lengths are sized to ``conductor_max_tokens``. SmolLM2-135M, asked for
the free-text protocol, never named an expert or a final answer (100/100 sst2 test inputs
fell back). On a backend without schemas the conductor speaks a small line protocol
(``EXPERT <name>: <instructions>``, a fenced ``python`` block, or ``FINAL ANSWER: ...``)
instead of the paper's triple-quoted free text. Either way its system prompt is a
structure-first template; experts answer in free text (nothing parses their replies).
Python runs in the sandbox of the code-execution verifier
(:func:`metaskill.tasks.sandbox.run_code`: temp dir, rlimits, no network). Limits:
``max_rounds`` conductor turns and ``max_expert_calls`` expert/Python calls per input;
when either is spent the conductor is asked once for its final answer. A reply with no
action (JSON: broke the schema on both of ``LM.complete``'s tries; free text: none after
one reminder) is answered by demanding the final answer (JSON: under the final-only
schema, the labels where the task has them -- a reply too short to be cut off); only when
that fails too does the input fall back to the plain answer of the incoming Solver, and
``meta["fallback"]`` says so (counted in the fit report and by :func:`fallback_rate`).
Every text field of the schema is non-empty (an empty expert instruction used to pass the
schema and then count as unparseable: 3 of 100 ag_news test inputs).

Algorithm (what :class:`MetaPromptingSolver` does per input, batched across inputs):

1. The conductor gets the structure-first template and the question.
2. Each round, parse the conductor's reply:
   EXPERT -> ask a fresh LM instance with only the instructions; append its reply;
   PYTHON -> run it in the sandbox; append stdout/stderr;
   FINAL ANSWER -> stop; unparseable -> demand the final answer (free text: a reminder
   first), fall back if that fails too.
3. At the limits (``max_rounds`` replies, ``max_expert_calls`` calls), demand the final
   answer once (one extra reply); if it does not come, fall back.
4. The answer is post-processed like the incoming Solver's (first line for labels).

Example:
    >>> m = conductor_model(["positive", "negative"], allow_python=False, max_tokens=96)
    >>> action_of(m.model_validate_json('{"final_answer": "negative"}'))
    ('final', '', 'negative')
    >>> parse_action("Let me ask.\\nEXPERT Mathematician: compute 3*4")
    ('expert', 'Mathematician', 'compute 3*4')
    >>> parse_action("FINAL ANSWER: 12")
    ('final', '', '12')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, Field, RootModel, create_model

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message, Request, Usage
from metaskill.eval.solver import Attempt, Solver
from metaskill.lm.structured import complete_structured
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

CONDUCTOR_JSON_PROMPT = """You are the Conductor. You solve problems by consulting experts.
Work in this structure:
1. Understand: what is asked and the answer format.
2. Decompose: split the problem into small subtasks.
3. Delegate: for a subtask, reply {{"expert": "<role>", "instructions": "<complete \
instructions; the expert sees nothing else>"}}{python}
4. Verify: check the experts' results against each other.
5. Answer: reply {{"final_answer": "<the answer, in the format the question asks for>"}}
Reply with one JSON object per step. You have at most {rounds} replies and {calls} \
expert or Python calls."""
PYTHON_JSON = ', or, to compute, {"python": "<code that prints its result>"}'

REMINDER = ("Your reply had no action. Reply with exactly one of: a line 'EXPERT <role>: "
            "<instructions>', a ```python``` block, or a line 'FINAL ANSWER: <answer>'.")
LAST_CALL = "No more experts are available. Reply now with one line: FINAL ANSWER: <answer>"
LAST_CALL_JSON = ('No more experts are available. Reply now with '
                  '{"final_answer": "<answer>"}.')

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


class AskExpert(BaseModel):
    """Conductor action: consult an expert (a fresh instance that sees only this)."""

    expert: str = Field(max_length=24)
    instructions: str = Field(min_length=1)


class RunPython(BaseModel):
    """Conductor action: run code in the sandbox."""

    python: str = Field(min_length=1)


class FinalAnswer(BaseModel):
    """Conductor action: the final answer."""

    final_answer: str


def conductor_model(labels: Sequence[str] | None, *, allow_python: bool, max_tokens: int,
                    final_only: bool = False) -> type[RootModel[Any]]:
    """The JSON schema (a pydantic model) of one conductor reply: one action object.

    Free-text fields are cut to what fits in ``max_tokens`` (about 2.5 characters a token
    after ~32 tokens of JSON and the role); the final answer is one of ``labels`` when
    given; ``final_only`` leaves the final answer as the only action (the demanded reply).
    """
    chars = max(16, int(2.5 * (max_tokens - 32)))
    answer: Any = Literal.__getitem__(tuple(labels)) if labels else str  # type: ignore[attr-defined]
    final = create_model("FinalAnswer", __base__=FinalAnswer,
                         final_answer=(answer, Field(min_length=1, max_length=chars)
                                       if not labels else ...))
    kinds: list[type[BaseModel]] = [final]
    if not final_only:
        kinds.insert(0, create_model("AskExpert", __base__=AskExpert,
                                     instructions=(str, Field(min_length=1,
                                                                    max_length=chars))))
        if allow_python:
            kinds.insert(1, create_model("RunPython", __base__=RunPython,
                                         python=(str, Field(min_length=1,
                                                                max_length=chars))))
    one = Union.__getitem__(tuple(kinds)) if len(kinds) > 1 else kinds[0]  # type: ignore[attr-defined]
    return RootModel[one]  # type: ignore[valid-type,no-any-return]


def action_of(reply: RootModel[Any]) -> tuple[str, str, str] | None:
    """A parsed JSON conductor reply as :func:`parse_action`'s ``(kind, name, body)``;
    None for empty instructions, code or answer."""
    v = reply.root
    if isinstance(v, FinalAnswer):
        kind, name, body = "final", "", str(v.final_answer).strip()
    elif isinstance(v, RunPython):
        kind, name, body = "python", "", v.python.strip()
    else:
        kind, name, body = "expert", v.expert.strip() or "Expert", v.instructions.strip()
    return (kind, name, body) if body else None


def user_request(lm: Any, history: Sequence[tuple[str, str]], *, system: str | None,
                 max_tokens: int, stop: tuple[str, ...] = (),
                 json_schema: type[BaseModel] | None = None) -> Request:
    """A greedy request for a conversation, as chat messages or a plain transcript
    (``json_schema``: the reply must be JSON valid under it)."""
    if getattr(lm, "chat", True):
        msgs = ([Message(role="system", content=system)] if system else []) + [
            Message(role=r, content=c) for r, c in history]  # type: ignore[arg-type]
        return Request(messages=tuple(msgs), max_tokens=max_tokens, stop=stop,
                       json_schema=json_schema)
    lines = [system or ""] + [f"{'Conductor' if r == 'assistant' else 'Input'}: {c}"
                              for r, c in history]
    return Request(prompt="\n\n".join(lines).strip() + "\n\nConductor:",
                   max_tokens=max_tokens, stop=("\n\nInput:", *stop), json_schema=json_schema)


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
        template: the conductor's system prompt (``{rounds}`` and ``{calls}`` filled in);
            None: :data:`CONDUCTOR_JSON_PROMPT` on a schema backend, else
            :data:`CONDUCTOR_PROMPT`.
    """

    kind: ClassVar[str] = "meta_prompting"

    def __init__(self, lm: Any, plain: Solver, *, max_rounds: int = 4,
                 max_expert_calls: int = 3, allow_python: bool = True,
                 conductor_max_tokens: int = 160, expert_max_tokens: int = 160,
                 code_timeout_s: float = 5.0, template: str | None = None) -> None:
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
        self.template = None if template == CONDUCTOR_PROMPT else template

    @property
    def structured(self) -> bool:
        """Whether conductor replies are constrained JSON (the backend enforces schemas)."""
        return "json_schema" in getattr(self.lm, "constraints", frozenset())

    def _conductor_requests(self, task: Any, live: list[_Episode], system: str
                            ) -> tuple[list[Request], type[RootModel[Any]] | None]:
        """One request per live episode and the model its replies parse into (None: free
        text). A demanded final reply may only be a final answer."""
        if not self.structured:
            return [user_request(self.lm, ep.history, system=system,
                                 max_tokens=self.conductor_max_tokens) for ep in live], None
        labels = list(getattr(task, "labels", None) or []) or None
        models = {last: conductor_model(labels, allow_python=self.allow_python,
                                        max_tokens=self.conductor_max_tokens, final_only=last)
                  for last in (False, True)}
        return [user_request(self.lm, ep.history, system=system,
                             max_tokens=self.conductor_max_tokens,
                             json_schema=models[ep.last_call]) for ep in live], models[False]

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Run the conductor loop for every input (batched per round)."""
        structured = self.structured
        template = self.template or (CONDUCTOR_JSON_PROMPT if structured else CONDUCTOR_PROMPT)
        system = template.format(rounds=self.max_rounds, calls=self.max_expert_calls,
                                 python=PYTHON_JSON if self.allow_python else "")
        last_call = LAST_CALL_JSON if structured else LAST_CALL
        eps = [_Episode(e, [("user", self.question(task, e))]) for e in examples]
        # 1-3. Conductor rounds until every episode has an answer or a fallback.
        while True:
            live = [ep for ep in eps if ep.answer is None and ep.fallback is None]
            if not live:
                break
            reqs, model = self._conductor_requests(task, live, system)
            if model is None:
                replies = self.lm.complete(reqs)
                actions = [parse_action(c.text) for c in replies]
            else:
                parsed = complete_structured(self.lm, reqs, model)
                replies = [p.completion for p in parsed]
                actions = [action_of(p.value) if p.value else None for p in parsed]
            experts: list[tuple[_Episode, str, str]] = []
            for ep, c, action in zip(live, replies, actions, strict=True):
                ep.usage = ep.usage + c.usage
                ep.lm_calls += 1 + c.retries
                ep.rounds += 1
                ep.history.append(("assistant", c.text))
                ep.trace.append({"role": "conductor", "content": c.text})
                if ep.last_call:  # the one demanded final reply
                    if action is not None and action[0] == "final":
                        ep.answer = action[2]
                    else:
                        ep.fallback = "unparseable" if ep.retried else "limit"
                    continue
                spent = ep.rounds >= self.max_rounds
                if action is None:  # JSON: LM.complete already asked twice
                    if ep.retried:
                        ep.fallback = "unparseable"
                    elif structured:  # demand the final answer (a label, where there are)
                        ep.retried = ep.last_call = True
                        ep.history.append(("user", last_call))
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
                    ep.history.append(("user", last_call))
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
        """:meth:`run_python`'s text and the sandbox layers that applied (for the trace).
        The code runs through the ``python`` tool (:mod:`metaskill.tools.python`) over the
        sandbox, as in ``tool_use``."""
        from metaskill.tasks.sandbox import run_code
        from metaskill.tools.base import call_tool
        from metaskill.tools.python import python_tool

        tool = python_tool(lambda c, t: run_code(c, timeout_s=t), timeout_s=self.code_timeout_s)
        call = call_tool(tool, {"code": code})
        text = call.result if call.ok else (call.error or "").removeprefix("CodeFailedError: ")
        return (text or "(no output)")[:1000], list(call.info.get("isolation", []))

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
