"""tool_use: verified demonstrations, a router learnt on dev per skill, and a bounded call
loop in which every failure (a tool that raises, one that times out, a malformed call, a
loop that hits the bound) is a recorded error and a fallback answer."""

from __future__ import annotations

import json
import re
import time

import pytest
from pydantic import BaseModel

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods import METHODS
from metaskill.methods.base import MethodResources
from metaskill.methods.tool_use import (
    NONE,
    Router,
    ToolUse,
    ToolUseConfig,
    ToolUseSolver,
    build_demos,
    route_shares,
)
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier
from metaskill.tools import calculator
from metaskill.tools.base import Tool

HASH = MethodResources(embedder_spec="hash:64")


def add(i: int, a: int, b: int) -> Example:
    return Example(id=f"add{i}", input=f"What is {a} plus {b}?", answer=str(a + b),
                   skills=["addition"])


def colour(i: int, c: str) -> Example:
    return Example(id=f"col{i}", input=f"Name the colour of the sky ({c}).", answer="blue",
                   skills=["colours"])


TRAIN = [add(i, 10 + i, 31 + 2 * i) for i in range(6)] + [colour(i, "day") for i in range(3)]
DEV = [add(10 + i, 40 + i, 17 + i) for i in range(4)] + [colour(10 + i, "noon")
                                                         for i in range(3)]
TEST = [add(20 + i, 23 + i, 68 - i) for i in range(3)] + [colour(20, "morning")]


def task() -> Task:
    return Task(name="mixed", splits={"train": TRAIN, "dev": DEV, "test": TEST},
                template="Q: {input}\nA:", kind="generative", verifier=ExactVerifier())


def last_question(prompt: str) -> str:
    return prompt[prompt.rindex("Q: "):].splitlines()[0]


def call_for(question: str, op: str = "+") -> str:
    nums = re.findall(r"\d+", question)
    return json.dumps({"tool": "calculator", "expression": f" {op} ".join(nums)})


def good_model(prompt: str, request) -> str:
    """Writes the right call under a schema; answers 'blue', or a wrong sum, in free text."""
    q = last_question(prompt)
    if request.json_schema is not None:
        return call_for(q) if re.search(r"\d", q) else '{"tool": "calculator", "expression": "0"}'
    return "blue" if "colour" in q else "7"


def test_build_demos_keeps_only_verified_calls() -> None:
    demos = build_demos(task(), TRAIN, [calculator()])
    assert [d.id for d in demos["calculator"]] == [f"add{i}" for i in range(6)]
    d = demos["calculator"][0]
    assert json.loads(d.answer) == {"tool": "calculator", "expression": "10 + 31"}
    assert d.metadata["tool_result"] == "41"


def test_python_demos_run_the_sandbox_only_on_expressions_that_verify() -> None:
    """A sandbox run per kept demo, not one per candidate: '6 * 7' is the 3rd candidate and
    '9 - 2' the 2nd, and no run for an input none of whose expressions verifies."""
    from types import SimpleNamespace

    from metaskill.tools import builtin_tools
    from metaskill.tools.calculator import calculate

    ran: list[str] = []

    def runner(code: str, timeout_s: float) -> SimpleNamespace:
        ran.append(code)
        out = calculate(code.removeprefix("print(").removesuffix(")"))
        return SimpleNamespace(ok=True, stdout=out + "\n", stderr="",
                               summary=lambda: "exited 0", isolation=["fake"])

    train = [Example(id="m", input="What is 6 times 7?", answer="42"),
             Example(id="s", input="What is 9 minus 2?", answer="7"),
             Example(id="x", input="What is 3 and 4 in words?", answer="seven")]
    demos = build_demos(task(), train, builtin_tools(["python"], runner=runner))
    assert [json.loads(d.answer)["code"] for d in demos["python"]] == ["print(6 * 7)",
                                                                        "print(9 - 2)"]
    assert ran == ["print(6 * 7)", "print(9 - 2)"]


def test_fit_learns_the_router_per_skill_and_round_trips() -> None:
    lm = ScriptedLM(good_model)
    method = ToolUse(ToolUseConfig(tools=["calculator"], k=2), resources=HASH)
    solver = method.fit(ZeroShot(lm), task(), TRAIN, DEV)
    notes = method.report.notes
    assert notes["routes"]["calculator"]["dev_accuracy"] == pytest.approx(4 / 7)
    assert notes["routes"][NONE]["dev_accuracy"] == pytest.approx(3 / 7)
    assert notes["dev_accuracy"] == 1.0  # in-sample: each skill on its best route
    assert solver.router.route(["addition"]) == "calculator"
    assert solver.router.route(["colours"]) == NONE
    out = solver.solve(task(), TEST)
    assert [a.output for a in out] == ["91", "91", "91", "blue"]
    assert [a.meta["route"] for a in out] == ["calculator"] * 3 + [NONE]
    trace = out[0].meta["tool_trace"]
    assert trace == [{"tool": "calculator", "args": {"expression": "23 + 68"}, "result": "91",
                      "error": None, "seconds": trace[0]["seconds"]}]
    assert out[0].meta["final_answer"] == "91" and out[0].meta["fallback"] is None
    assert route_shares(out) == {"calculator": 0.75, NONE: 0.25}
    again = load_solver(json.loads(json.dumps(solver.to_json())), lm=lm)
    assert isinstance(again, ToolUseSolver)
    assert [a.output for a in again.solve(task(), TEST)] == ["91", "91", "91", "blue"]
    assert METHODS.get("tool_use") is ToolUse


def test_no_verified_call_is_a_method_error() -> None:
    with pytest.raises(MethodError, match="no tool call verified"):
        ToolUse(ToolUseConfig(tools=["calculator"]), resources=HASH).fit(
            ZeroShot(ScriptedLM(default="x")), task(), [colour(0, "day")], DEV)


def solver_with(lm: ScriptedLM, **opts) -> ToolUseSolver:
    demos = build_demos(task(), TRAIN, [calculator()])
    return ToolUseSolver(lm, ZeroShot(lm), tools=["calculator"], demos=demos,
                         router=Router(default="calculator"), k=2,
                         embedder_spec="hash:64", **opts)


def test_a_tool_that_raises_is_recorded_and_the_model_retries() -> None:
    def model(prompt: str, request) -> str:
        if request.json_schema is None:
            return "7"
        if "calculator failed" in prompt:  # the error went back into the context
            return call_for(last_question(prompt))
        return call_for(last_question(prompt), op="/ 0 *")  # 23 / 0 * 68: raises

    out = solver_with(ScriptedLM(model)).solve(task(), TEST[:1])[0]
    trace = out.meta["tool_trace"]
    assert trace[0]["error"] == "ValueError: division by zero" and trace[0]["result"] is None
    assert trace[1]["result"] == "91" and out.output == "91"
    assert out.meta["fallback"] is None and out.meta["lm_calls"] == 2


def test_a_call_that_fails_at_the_bound_falls_back_to_the_plain_answer() -> None:
    always_zero = ScriptedLM(lambda p, r: ('{"tool": "calculator", "expression": "1 / 0"}'
                                           if r.json_schema else "plain"))
    out = solver_with(always_zero, max_calls=3).solve(task(), TEST[:2])
    for a in out:
        assert a.output == "plain" and a.meta["fallback"] == "call limit"
        assert len(a.meta["tool_trace"]) == 3
        assert all(c["error"] == "ValueError: division by zero" for c in a.meta["tool_trace"])


class Q(BaseModel):
    question: str


def test_a_tool_that_times_out_is_recorded_and_falls_back() -> None:
    slow = Tool("slow", "thinks for a long time", Q, lambda a: time.sleep(2) or "late",
                timeout_s=0.1)
    demo = TRAIN[0].model_copy(update={"answer": '{"tool": "slow", "question": "x"}'})
    lm = ScriptedLM(lambda p, r: '{"tool": "slow", "question": "sum"}' if r.json_schema
                    else "plain")
    s = ToolUseSolver(lm, ZeroShot(lm), tools=[], demos={"slow": [demo]},
                      router=Router(default="slow"), max_calls=1, embedder_spec="hash:64",
                      custom_tools=[slow])
    t0 = time.perf_counter()
    out = s.solve(task(), TEST[:1])[0]
    assert time.perf_counter() - t0 < 1.5
    assert out.meta["tool_trace"][0]["error"] == "timed out after 0.1 s"
    assert out.output == "plain" and out.meta["fallback"] == "call limit"
    # saved without the function: its route goes to no tool on reload
    again = load_solver(s.to_json(), lm=lm)
    assert again.solve(task(), TEST[:1])[0].meta["route"] == NONE


def test_a_malformed_call_is_recorded_and_falls_back() -> None:
    lm = ScriptedLM(lambda p, r: "sure, let me add those" if r.json_schema else "plain")
    out = solver_with(lm).solve(task(), TEST[:1])[0]
    assert out.output == "plain" and out.meta["fallback"] == "malformed"
    err = out.meta["tool_trace"][0]["error"]
    assert err.startswith("malformed call: the reply broke the JSON schema twice")
    assert out.meta["lm_calls"] == 1 + 1 + 1  # the reply, LM.complete's retry, the plain one


def test_the_model_finishes_after_the_result() -> None:
    def model(prompt: str, request) -> str:
        if "calculator returned: 91" in prompt:
            return '{"tool": "answer", "answer": "91"}'
        return call_for(last_question(prompt)) if request.json_schema else "plain"

    out = solver_with(ScriptedLM(model), finish="model").solve(task(), TEST[:1])[0]
    assert out.output == "91" and out.meta["fallback"] is None
    assert len(out.meta["tool_trace"]) == 1 and out.meta["replies"] == 2


def test_a_call_loop_hits_the_bound_and_falls_back() -> None:
    lm = ScriptedLM(lambda p, r: call_for(last_question(p)) if r.json_schema else "plain")
    out = solver_with(lm, finish="model", max_calls=2).solve(task(), TEST[:2])
    for a in out:
        assert len(a.meta["tool_trace"]) == 3  # two calls and the refused third
        assert [c["result"] for c in a.meta["tool_trace"][:2]] == ["91", "91"]
        assert a.meta["tool_trace"][2]["error"].startswith("no answer at the call limit")
        assert a.output == "plain" and a.meta["fallback"] == "call limit"


@pytest.mark.slow
def test_real_model_writes_calculator_calls(local_lm) -> None:
    """SmolLM2-135M, constrained to the calculator's schema after verified demos, writes
    calls whose results are the sums it cannot compute itself (kept small: ~10 calls)."""
    t = Task(name="adds", splits={}, template="Q: {input}\nA:", kind="generative",
             verifier=ExactVerifier(), metadata={"max_tokens": 8})
    method = ToolUse(ToolUseConfig(tools=["calculator"], k=3), resources=HASH)
    solver = method.fit(ZeroShot(local_lm), t, TRAIN[:6], DEV[:3])
    assert solver.router.route(["addition"]) == "calculator", method.report.notes
    out = solver.solve(t, TEST[:3])
    assert [a.meta["route"] for a in out] == ["calculator"] * 3
    for a in out:
        assert a.meta["tool_trace"] and a.meta["tool_trace"][0]["tool"] == "calculator"
    assert sum(a.output == "91" for a in out) >= 2, [a.meta["tool_trace"] for a in out]


def test_traces_are_kept_in_the_run_and_shown_in_the_report() -> None:
    from metaskill.eval.harness import evaluate
    from metaskill.eval.report import render_html

    run = evaluate(solver_with(ScriptedLM(good_model)), task(), "tool_use", examples=TEST)
    rec = run.records[0]
    assert rec.meta["tool_trace"][0]["args"] == {"expression": "23 + 68"}
    assert rec.meta["route"] == "calculator" and rec.score == 1.0
    html = render_html([run])
    assert "Tool calls" in html and "23 + 68" in html
