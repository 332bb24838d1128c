"""tool_use: route each input to a tool (or none) learnt on dev; the model writes the call.

Papers:
    Qian, Liu (2025). "MetaAgent: toward self-evolving agents via tool meta-learning" --
    an agent starts from a minimal workflow, calls tools when it lacks a competence, and
    learns from experience which tool serves which kind of task.

    Suzgun, Kalai (2024). "Meta-Prompting: Enhancing Language Models with Task-Agnostic
    Scaffolding" -- the conductor may call a Python interpreter as one of its experts
    (here the ``python`` tool; ``meta_prompting`` calls it through the same interface).

What we changed, for a 135M model that cannot add two-digit numbers and cannot be trusted
to decide when to call a tool:

* **The router is learnt, not the model's choice.** On dev, every route (no tool, and each
  tool that has demonstrations) answers every example; the router keeps, per skill label
  (``Example.skills``: BIG-bench subtasks and keywords, or labels from the skills layer),
  the dev accuracy of each route, and sends an input to the route whose mean accuracy over
  the input's skills is highest (inputs without known skills: the best route on all of
  dev). Ties go to no tool, the cheaper route.
* **Demonstrations are built and verified on train**, not written by hand: each tool has
  call templates (the calculator: the input's numbers, in order, joined by each
  combination of ``+ - * /``; the python tool: ``print(<that expression>)``); a call whose
  result the task's Verifier accepts becomes a demonstration ``input -> call``. Per input
  the ``k`` nearest demonstrations of its route are shown (by MiniLM embedding, as
  ``knn_demos``), nearest last.
* **The model only writes the call, under a JSON schema** (constrained decoding): for the
  calculator ``{"tool": "calculator", "expression": ...}`` whose expression may hold only
  digits, operators and parentheses. With ``finish="result"`` (the default) the tool's
  result *is* the answer; with ``finish="model"`` the result goes back into the context
  and the model continues (another call or ``{"tool": "answer", ...}``).
* **Bounded and total.** At most ``max_calls`` calls per input; a failed call (malformed
  arguments, an exception in the tool, a timeout, an unknown tool) is recorded and put
  back into the context for one more try; when the bound is hit or the reply breaks the
  schema, the input falls back to the incoming Solver's answer (``meta["fallback"]``).
  Each attempt's ``meta["tool_trace"]`` holds every call, its arguments, its result or
  error, and ``meta["route"]`` the route taken.

Algorithm (what :meth:`ToolUse.fit` does):

1. Build the tools (``python`` gets the sandbox :func:`metaskill.tasks.sandbox.run_code`,
   ``retrieve`` the SkillBook's search when one is given).
2. Demonstrations: run each tool's call templates on the training examples; keep the
   verified calls.
3. On dev, score each route with demonstrations (and the incoming Solver for no tool).
4. Learn the router: per skill, each route's dev accuracy; the default route.
5. Return a :class:`ToolUseSolver` (plain JSON: demonstrations, router, options).

Example:
    >>> calculator_calls("What is 58 plus 55?")[:2]
    ['58 + 55', '58 - 55']
    >>> r = Router(by_skill={"add": {"none": [0, 4], "calculator": [4, 4]}}, default="none")
    >>> r.route(["add"]), r.route(["poetry"])
    ('calculator', 'none')
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message, Request, Usage
from metaskill.eval.solver import Attempt, Solver, uses_chat
from metaskill.lm.structured import complete_structured
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import (
    KnnSelector,
    PromptFormat,
    examples_from_json,
    examples_to_json,
    run_solver,
)
from metaskill.tasks.base import Task
from metaskill.tools import BUILTIN, builtin_tools
from metaskill.tools.base import (
    ANSWER,
    Tool,
    ToolCall,
    call_json,
    call_schema,
    parse_call,
    run_call,
)

NONE = "none"
"""The route without a tool: the incoming Solver answers."""

Finish = Literal["result", "model"]

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


# ---- 2. call templates ---------------------------------------------------------------------
def calculator_calls(text: str, *, max_numbers: int = 4) -> list[str]:
    """Candidate calculator expressions for an input: its numbers in order (and, for two,
    also reversed) joined by each combination of ``+ - * /``. Empty when the input holds
    no number or more than ``max_numbers``.

    Example:
        >>> calculator_calls("What is 7 times 6?")
        ['7 + 6', '7 - 6', '7 * 6', '7 / 6', '6 + 7', '6 - 7', '6 * 7', '6 / 7']
        >>> calculator_calls("no numbers")
        []
    """
    nums = _NUMBER.findall(text)
    if not nums or len(nums) > max_numbers:
        return []
    if len(nums) == 1:
        return [nums[0]]
    orders = [nums] + ([nums[::-1]] if len(nums) == 2 else [])
    out = []
    for order in orders:
        for ops in itertools.product("+-*/", repeat=len(order) - 1):
            expr = order[0]
            for op, n in zip(ops, order[1:], strict=True):
                expr += f" {op} {n}"
            out.append(expr)
    return list(dict.fromkeys(out))


def template_calls(tool: str, text: str) -> list[dict[str, Any]]:
    """The argument candidates of ``tool``'s call templates for an input (calculator and
    python; other tools have none, so they get no demonstrations).

    Example:
        >>> template_calls("python", "What is 2 plus 3?")[0]
        {'code': 'print(2 + 3)'}
    """
    exprs = calculator_calls(text)
    if tool == "calculator":
        return [{"expression": e} for e in exprs]
    if tool == "python":
        return [{"code": f"print({e})"} for e in exprs]
    return []


def verified(task: Task, example: Example, answer: str) -> bool:
    """Whether the task's Verifier accepts ``answer`` for ``example`` (score 1)."""
    try:
        return task.verifier.verify(answer, example).score >= 1.0
    except Exception:  # a verifier that fails on an odd answer rejects it
        return False


def _value_verifies(task: Task, example: Example, expression: str) -> bool:
    """Whether the calculator's value of ``expression`` verifies (python demos' screen)."""
    from metaskill.tools.calculator import calculate

    try:
        return verified(task, example, calculate(expression))
    except Exception:  # division by zero, a refused power: that expression is no demo
        return False


def build_demos(task: Task, train: Sequence[Example], tools: Sequence[Tool], *,
                max_per_tool: int = 64, max_tries: int = 8) -> dict[str, list[Example]]:
    """Verified tool-call demonstrations per tool: for each training example, the first
    template call whose result the Verifier accepts (its ``answer`` is the call's JSON,
    ``metadata["tool_result"]`` the result).

    Args:
        task: the task (its Verifier checks results).
        train: training examples with answers.
        tools: the tools.
        max_per_tool: demonstrations kept per tool.
        max_tries: template calls tried per example for a tool that runs code (python:
            each try is a sandbox run); the calculator tries all. A python template runs
            ``print(<expression>)``, so only expressions whose value (by the in-process
            calculator) the Verifier accepts are run in the sandbox: on GSM8K train about
            one example in twenty has one among its first eight candidates, and running
            all eight for each example had not found 64 demos after 400 s.

    Example:
        >>> from metaskill.tasks.base import Verdict, Verifier
        >>> class Exact(Verifier):
        ...     def verify(self, output, ex):
        ...         return Verdict(score=float(output.strip() == ex.answer))
        >>> task = Task(name="t", splits={}, verifier=Exact())
        >>> from metaskill.tools import calculator
        >>> d = build_demos(task, [Example(id="a", input="What is 9 minus 4?", answer="5")],
        ...                 [calculator()])
        >>> d["calculator"][0].answer
        '{"tool": "calculator", "expression": "9 - 4"}'
    """
    out: dict[str, list[Example]] = {}
    for tool in tools:
        kept: list[Example] = []
        for ex in train:
            if len(kept) >= max_per_tool or ex.answer is None:
                continue
            cands = template_calls(tool.name, ex.text)
            if tool.name == "python":  # print(<expr>): only expressions whose value verifies
                cands = [a for a, e in zip(cands, calculator_calls(ex.text), strict=True)
                         if _value_verifies(task, ex, e)]
            if tool.name != "calculator":
                cands = cands[:max_tries]
            for args in cands:
                call = run_call([tool], parse_call({"tool": tool.name, **args}))  # type: ignore[arg-type]
                if call.ok and verified(task, ex, call.result or ""):
                    kept.append(ex.model_copy(update={
                        "answer": call_json(tool.name, args),
                        "metadata": {**ex.metadata, "tool": tool.name,
                                     "tool_result": call.result}}))
                    break
        if kept:
            out[tool.name] = kept
    return out


# ---- 4. the router -------------------------------------------------------------------------
class Router(BaseModel):
    """Which route (a tool's name or ``"none"``) helped which skill on dev.

    Attributes:
        by_skill: skill -> route -> ``[score sum, examples]`` on dev.
        default: the route for inputs whose skills were never seen (best on all of dev).
    """

    by_skill: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    default: str = NONE

    def route(self, skills: Sequence[str]) -> str:
        """The route with the highest mean dev accuracy over ``skills`` (ties: the default,
        then no tool); the default when none of them was seen on dev."""
        known = [self.by_skill[s] for s in skills if s in self.by_skill]
        if not known:
            return self.default
        routes = sorted({r for table in known for r in table})
        means = {r: sum(t[r][0] / t[r][1] for t in known if r in t and t[r][1])
                 / sum(1 for t in known if r in t and t[r][1]) for r in routes
                 if any(r in t and t[r][1] for t in known)}
        best = max(means.values())
        winners = [r for r, m in means.items() if m >= best - 1e-12]
        for pref in (self.default, NONE):
            if pref in winners:
                return pref
        return winners[0]

    @classmethod
    def learn(cls, skills: Sequence[Sequence[str]], scores: dict[str, Sequence[float]]
              ) -> Router:
        """Learn from dev: ``skills[i]`` are example i's skills, ``scores[route][i]`` its
        score by that route.

        Example:
            >>> r = Router.learn([["add"], ["add"], ["poem"]],
            ...                  {"none": [0, 0, 1], "calculator": [1, 1, 0]})
            >>> r.route(["add"]), r.route(["poem"]), r.default
            ('calculator', 'none', 'calculator')
        """
        by_skill: dict[str, dict[str, list[float]]] = {}
        for i, sk in enumerate(skills):
            for s in sk:
                table = by_skill.setdefault(s, {})
                for route, sc in scores.items():
                    cell = table.setdefault(route, [0.0, 0.0])
                    cell[0] += float(sc[i])
                    cell[1] += 1.0
        totals = {r: sum(sc) for r, sc in scores.items()}
        best = max(totals.values()) if totals else 0.0
        default = NONE if totals.get(NONE, -1.0) >= best else max(totals, key=totals.__getitem__)
        return cls(by_skill=by_skill, default=default)


# ---- the Solver ----------------------------------------------------------------------------
TOOL_PROMPT = ("Answer by calling a tool. Reply with one JSON object: {example}\n"
               "Tools:\n{tools}")
RETRY = "{observation}. Reply with a corrected call."
CONTINUE = "{observation}. Reply with another call or {{\"tool\": \"answer\", \"answer\": ...}}."


@dataclass
class _Episode:
    """One input's calls."""

    example: Example
    route: str
    history: list[tuple[str, str]]
    calls: list[ToolCall] = field(default_factory=list)
    replies: int = 0
    lm_calls: int = 0
    answer: str | None = None
    fallback: str | None = None
    usage: Usage = field(default_factory=Usage)


class ToolUseSolver(Solver):
    """Routes each input to a tool or to the incoming Solver; the model writes the call.

    Args:
        lm: the LM that writes the calls.
        plain: the incoming Solver: the no-tool route and every fallback.
        tools: names of the built-in tools (``calculator``, ``python``, ``retrieve``).
        demos: tool name -> demonstrations (answer = the call's JSON).
        router: the learnt :class:`Router`.
        k: demonstrations per input.
        max_calls: tool calls per input.
        finish: ``result`` (the tool's result is the answer) or ``model`` (the model
            continues after each result and gives the answer).
        call_max_tokens: length of one reply.
        prompt_format: chat messages or plain completion (``auto``: chat where the model
            has a template).
        embedder_spec: the embedder of the demonstration retrieval.
        force_route: answer every input by this route (used on dev); None: the router.
        runner: the python tool's sandbox (default :func:`metaskill.tasks.sandbox.run_code`).
        search: the retrieve tool's searcher (not saved; without it ``retrieve`` is dropped).
        embedder: a ready embedder (else loaded from ``embedder_spec``).
        custom_tools: your own :class:`~metaskill.tools.base.Tool` objects (functions are
            not saved: a reloaded Solver sends their routes to no tool).
    """

    kind: ClassVar[str] = "tool_use"

    def __init__(self, lm: Any, plain: Solver, *, tools: Sequence[str],
                 demos: dict[str, list[Example]], router: Router | None = None, k: int = 4,
                 max_calls: int = 2, finish: Finish = "result", call_max_tokens: int = 48,
                 prompt_format: PromptFormat = "auto", embedder_spec: str = "minilm",
                 force_route: str | None = None, runner: Any = None, search: Any = None,
                 embedder: Any = None, custom_tools: Sequence[Tool] = ()) -> None:
        super().__init__(lm)
        if max_calls < 1:
            raise MethodError("tool_use: max_calls must be >= 1.")
        if runner is None and "python" in tools:
            from metaskill.tasks.sandbox import run_code

            runner = lambda code, timeout_s: run_code(code, timeout_s=timeout_s)  # noqa: E731
        names = [t for t in tools if t != "retrieve" or search is not None]
        self.tool_names = list(tools)
        self.tools = {t.name: t for t in builtin_tools(names, runner=runner, search=search)}
        self.tools.update({t.name: t for t in custom_tools})
        self.plain = plain
        self.demos = {t: list(d) for t, d in demos.items() if d}
        self.router = router or Router()
        self.k = k
        self.max_calls = max_calls
        self.finish: Finish = finish
        self.call_max_tokens = call_max_tokens
        self.prompt_format: PromptFormat = prompt_format
        self.embedder_spec = embedder_spec
        self.force_route = force_route
        self.runner, self.search = runner, search
        self._selectors = {t: KnnSelector(d, embedder=embedder, embedder_spec=embedder_spec)
                           for t, d in self.demos.items()}
        self._schemas: dict[tuple[str, str], type[BaseModel]] = {}

    # ---- routing --------------------------------------------------------------------------
    def route_of(self, example: Example) -> str:
        """The route of one input: forced, else the router's over its skills; a route whose
        tool is missing (no demonstrations, retrieve without a searcher) is no tool."""
        route = self.force_route or self.router.route(example.skills)
        return route if route in self.tools and route in self.demos else NONE

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer each input by its route; tool routes batched per round."""
        routes = [self.route_of(e) for e in examples]
        eps = [_Episode(e, r, []) for e, r in zip(examples, routes, strict=True) if r != NONE]
        for ep in eps:
            ep.history = self._opening(task, ep)
        self._loop(task, eps)
        need_plain = [e for e, r in zip(examples, routes, strict=True) if r == NONE]
        need_plain += [ep.example for ep in eps if ep.answer is None]
        plain = {a.example_id: a for a in self.plain.solve(task, need_plain)} if need_plain \
            else {}
        by_id = {ep.example.id: ep for ep in eps}
        out = []
        for e in examples:
            ep = by_id.get(e.id)
            if ep is None:
                a = plain[e.id]
                out.append(a.model_copy(update={"meta": {**a.meta, "route": NONE,
                                                         "tool_trace": []}}))
                continue
            meta: dict[str, Any] = {
                "route": ep.route, "tool_trace": [c.to_json() for c in ep.calls],
                "tool_calls": len(ep.calls), "fallback": ep.fallback, "replies": ep.replies}
            usage, lm_calls, output = ep.usage, ep.lm_calls, ep.answer
            if output is None:
                p = plain[e.id]
                usage, output = usage + p.usage, p.output
                lm_calls += int(p.meta.get("lm_calls", 1))
            meta["lm_calls"] = lm_calls
            meta["final_answer"] = output
            out.append(Attempt(example_id=e.id, prompt=ep.history[0][1] if ep.history else "",
                               output=output, usage=usage, meta=meta))
        return out

    # ---- the call loop --------------------------------------------------------------------
    def _opening(self, task: Task, ep: _Episode) -> list[tuple[str, str]]:
        """The first turns: instructions, the route's nearest demonstrations, the input."""
        tool = self.tools[ep.route]
        demos = self._selectors[ep.route].select(ep.example, self.k)[::-1]  # nearest last
        example = demos[-1].answer if demos else call_json(tool.name, {})
        head = TOOL_PROMPT.format(example=example, tools=tool.line())
        turns: list[tuple[str, str]] = []
        for i, d in enumerate(demos):
            turns.append(("user", (head + "\n\n" if i == 0 else "") + task.render(d)))
            turns.append(("assistant", str(d.answer)))
        turns.append(("user", (head + "\n\n" if not demos else "") + task.render(ep.example)))
        return turns

    def _request(self, task: Task, ep: _Episode, schema: type[BaseModel]) -> Request:
        chat = uses_chat(self.lm, self.prompt_format)
        if chat:
            msgs = tuple(Message(role=r, content=c) for r, c in ep.history)  # type: ignore[arg-type]
            return Request(messages=msgs, max_tokens=self.call_max_tokens, json_schema=schema)
        text = "\n\n".join(c if r == "user" else f" {c}".rstrip() for r, c in ep.history)
        text = re.sub(r"\n\n (?=\{)", " ", text)  # a call follows its input on the same line
        return Request(prompt=text, max_tokens=self.call_max_tokens, stop=("\n",),
                       json_schema=schema)

    def _schema(self, ep: _Episode) -> type[BaseModel]:
        """The reply's schema: the route's call; with ``finish="model"`` after a call, the
        call or the answer; at the bound, the answer only (one model per kind, so
        episodes that share it are batched)."""
        if self.finish == "result" or not ep.calls:
            kind = "call"
        elif len(ep.calls) >= self.max_calls:  # the bound: only the answer is left
            kind = "answer"
        else:
            kind = "either"
        key = (ep.route, kind)
        if key not in self._schemas:
            tools = [] if kind == "answer" else [self.tools[ep.route]]
            self._schemas[key] = call_schema(tools, allow_answer=kind != "call")
        return self._schemas[key]

    def _loop(self, task: Task, eps: list[_Episode]) -> None:
        """Ask, call, observe -- until each episode has an answer or a fallback."""
        while True:
            live = [ep for ep in eps if ep.answer is None and ep.fallback is None]
            if not live:
                return
            schemas = [self._schema(ep) for ep in live]
            groups: dict[int, list[int]] = {}
            for i, s in enumerate(schemas):
                groups.setdefault(id(s), []).append(i)
            for idx in groups.values():
                model = schemas[idx[0]]
                replies = complete_structured(self.lm, [self._request(task, live[i], model)
                                                        for i in idx], model)
                for i, rep in zip(idx, replies, strict=True):
                    self._step(live[i], rep.value, rep.completion, rep.error)

    def _step(self, ep: _Episode, value: Any, completion: Any, error: str | None) -> None:
        """Act on one reply: answer, run the call, or fall back."""
        ep.usage = ep.usage + completion.usage
        ep.lm_calls += 1 + completion.retries
        ep.replies += 1
        call = parse_call(value)
        at_bound = len(ep.calls) >= self.max_calls
        if call is None:
            why = error or "no tool named"
            ep.calls.append(ToolCall(ep.route, {"raw": completion.text[:200]},
                                     error=(f"no answer at the call limit: {why}" if at_bound
                                            else f"malformed call: {why}")))
            ep.fallback = "call limit" if at_bound else "malformed"
            return
        if call.tool == ANSWER:
            ep.answer = (call.answer or "").strip()
            if not ep.answer:
                ep.answer, ep.fallback = None, "empty answer"
            return
        if at_bound:
            ep.fallback = "call limit"
            return
        result = run_call(list(self.tools.values()), call)
        ep.calls.append(result)
        ep.history.append(("assistant", completion.text.strip()))
        if result.ok and self.finish == "result":
            ep.answer = result.result
            return
        if len(ep.calls) >= self.max_calls and not (result.ok and self.finish == "model"):
            ep.fallback = "call limit"
            return
        template = CONTINUE if result.ok else RETRY
        ep.history.append(("user", template.format(observation=result.observation())))

    # ---- JSON -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"plain": self.plain.to_json(), "tools": self.tool_names,
                "demos": {t: examples_to_json(d) for t, d in self.demos.items()},
                "router": self.router.model_dump(), "k": self.k, "max_calls": self.max_calls,
                "finish": self.finish, "call_max_tokens": self.call_max_tokens,
                "prompt_format": self.prompt_format, "embedder": self.embedder_spec,
                "force_route": self.force_route}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> ToolUseSolver:
        from metaskill.eval.solvers import load_solver

        return cls(lm, load_solver(state["plain"], lm=lm), tools=state["tools"],
                   demos={t: examples_from_json(d) for t, d in state["demos"].items()},
                   router=Router.model_validate(state["router"]), k=state["k"],
                   max_calls=state["max_calls"], finish=state["finish"],
                   call_max_tokens=state["call_max_tokens"],
                   prompt_format=state["prompt_format"], embedder_spec=state["embedder"],
                   force_route=state.get("force_route"))


def route_shares(attempts: Sequence[Attempt]) -> dict[str, float]:
    """The share of attempts sent to each route.

    Example:
        >>> route_shares([Attempt(example_id="a", meta={"route": "calculator"}),
        ...               Attempt(example_id="b", meta={"route": "none"})])
        {'calculator': 0.5, 'none': 0.5}
    """
    counts: dict[str, int] = {}
    for a in attempts:
        r = str(a.meta.get("route", NONE))
        counts[r] = counts.get(r, 0) + 1
    return {r: n / len(attempts) for r, n in sorted(counts.items())} if attempts else {}


# ---- the Method ----------------------------------------------------------------------------
class ToolUseConfig(MethodConfig):
    """Options of :class:`ToolUse`."""

    tools: list[str] = Field(default_factory=lambda: ["calculator", "python"],
                             description=f"built-in tools to offer ({', '.join(BUILTIN)}); "
                                         "retrieve needs a SkillBook in the resources")
    k: int = Field(4, ge=0, le=32, description="tool-call demonstrations per input")
    max_calls: int = Field(2, ge=1, le=10, description="tool calls per input (the bound)")
    finish: Finish = Field("result", description="result: the tool's result is the answer; "
                                                 "model: the model answers after the results")
    call_max_tokens: int = Field(48, ge=8, le=512, description="length of one reply")
    prompt_format: PromptFormat = Field("auto", description="chat, completion or auto")
    max_demos: int = Field(64, ge=1, description="verified demonstrations kept per tool")
    max_dev: int | None = Field(None, ge=1, description="route on at most this many dev "
                                                         "examples")


class ToolUse(Method):
    """Tool calling (MetaAgent): verified call demos, a router learnt on dev per skill."""

    name: ClassVar[str] = "tool_use"
    Config: ClassVar[type[MethodConfig]] = ToolUseConfig
    config: ToolUseConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> ToolUseSolver:
        """Build verified demonstrations on ``train``, learn the router on ``dev``."""
        cfg = self.config
        unknown = [t for t in cfg.tools if t not in BUILTIN]
        if unknown:
            raise MethodError(f"tool_use: unknown tools {unknown}; use some of {list(BUILTIN)}.")
        # 1. Tools (python: the sandbox; retrieve: the SkillBook's search, if given).
        search = self._searcher()
        names = [t for t in cfg.tools if t != "retrieve" or search is not None]
        runner = None
        if "python" in names:
            from metaskill.tasks.sandbox import run_code

            runner = lambda code, timeout_s: run_code(code, timeout_s=timeout_s)  # noqa: E731
        tools = builtin_tools(names, runner=runner, search=search)
        # 2. Verified demonstrations from train.
        demos = build_demos(task, [e for e in train if e.answer is not None], tools,
                            max_per_tool=cfg.max_demos)
        self.report.notes["demos"] = {t: len(d) for t, d in demos.items()}
        if not demos:
            raise MethodError(
                f"tool_use: no tool call verified on any training example of '{task.name}' "
                f"(tools {names}); the task may not need these tools.")
        embedder = self.resources.get_embedder()

        def build(route: str | None, router: Router | None = None) -> ToolUseSolver:
            return ToolUseSolver(
                solver.lm, solver, tools=names, demos=demos, router=router, k=cfg.k,
                max_calls=cfg.max_calls, finish=cfg.finish, call_max_tokens=cfg.call_max_tokens,
                prompt_format=cfg.prompt_format, embedder_spec=getattr(embedder, "spec",
                                                                       "minilm"),
                force_route=route, runner=runner, search=search, embedder=embedder)

        # 3. Score every route on dev.
        dev_set = list(dev or [])[: cfg.max_dev]
        if not dev_set:
            best = next(iter(demos))
            self.report.notes.update({"router": {"default": best}, "note": "no dev: every "
                                      "input goes to the first tool with demonstrations"})
            return build(None, Router(default=best))
        skills = [self._skills(e) for e in dev_set]
        scores: dict[str, list[float]] = {}
        table = {}
        _, scores[NONE] = run_solver(solver, task, dev_set, self.report,
                                     progress=self.resources.progress, label="tool_use dev none")
        for route in demos:
            attempts, scores[route] = run_solver(build(route), task, dev_set, self.report,
                                                 progress=self.resources.progress,
                                                 label=f"tool_use dev {route}")
            table[route] = {
                "dev_accuracy": sum(scores[route]) / len(dev_set),
                "fallbacks": sum(a.meta.get("fallback") is not None for a in attempts)}
        table[NONE] = {"dev_accuracy": sum(scores[NONE]) / len(dev_set), "fallbacks": 0}
        # 4. The router, and its in-sample dev accuracy (the chosen route's dev scores).
        router = Router.learn(skills, scores)
        chosen = [router.route(sk) for sk in skills]
        routed = [scores[r][i] for i, r in enumerate(chosen)]
        self.report.notes.update({
            "routes": table, "router_default": router.default,
            "route_shares": {r: chosen.count(r) / len(chosen) for r in sorted(set(chosen))},
            "dev_accuracy": sum(routed) / len(routed),
            "dev_accuracy_note": "in-sample: each dev example scored by the route the router "
                                 "learnt from dev",
        })
        # 5. The Solver.
        return build(None, router)

    def _skills(self, example: Example) -> list[str]:
        """An example's skill labels: its own, else the SkillBook's labels of its id."""
        if example.skills:
            return list(example.skills)
        book = self.resources.skillbook
        if book is not None and book.has_example(example.id):
            return list(book.labels(example.id))
        return []

    def _searcher(self) -> Any:
        """The retrieve tool's search over the SkillBook (skill name: description), if any."""
        book = self.resources.skillbook
        if book is None:
            return None

        def search(query: str, k: int) -> list[str]:
            return [f"{s.name}: {s.description}" for s, _ in book.nearest_skills(query, k=k)]

        return search


__all__ = ["NONE", "Router", "ToolUse", "ToolUseConfig", "ToolUseSolver", "build_demos",
           "calculator_calls", "route_shares"]
