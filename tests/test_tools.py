"""tools/: calling a tool records every failure (malformed, raised, timed out, unknown)
instead of raising; the calculator is safe; the call schema is what constrained decoding
enforces; the python tool goes through the sandbox runner it is given."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from metaskill.core.errors import InvalidParameterError
from metaskill.lm.structured import schema_error, schema_text
from metaskill.tools import builtin_tools, calculator
from metaskill.tools.base import Call, Tool, call_schema, call_tool, parse_call, run_call
from metaskill.tools.calculator import calculate
from metaskill.tools.python import python_tool
from metaskill.tools.retrieve import retrieve_tool


class N(BaseModel):
    n: int


def test_calculator_evaluates_arithmetic_and_refuses_the_rest() -> None:
    assert calculate("58 + 55") == "113"
    assert calculate("12 - 58") == "-46"
    assert calculate("-(3 * 4) ** 2") == "-144"
    assert calculate("7 // 2 + 7 % 2") == "4"
    for bad in ("__import__('os').system('x')", "open('f')", "'a' * 10", "x + 1",
                "(1).__class__", "9 ** 9 ** 9", "1 / 0", "[1, 2]"):
        with pytest.raises(ValueError):
            calculate(bad)


def test_calculator_schema_allows_only_arithmetic_characters() -> None:
    m = call_schema([calculator()], allow_answer=False)
    s = schema_text(m)
    assert schema_error(s, '{"tool": "calculator", "expression": "3 * (4 + 5)"}') is None
    assert schema_error(s, '{"tool": "calculator", "expression": "print(1)"}') is not None
    assert schema_error(s, '{"tool": "python", "expression": "1"}') is not None
    assert schema_error(s, '{"tool": "answer", "answer": "1"}') is not None  # no answer here


def test_call_tool_records_each_failure_and_never_raises() -> None:
    boom = Tool("boom", "raises", N, lambda a: (_ for _ in ()).throw(RuntimeError("kaput")))
    slow = Tool("slow", "sleeps", N, lambda a: time.sleep(3) or "late", timeout_s=0.2)
    notext = Tool("notext", "returns a number", N, lambda a: 5)  # type: ignore[arg-type,return-value]
    assert call_tool(boom, {"n": 1}).error == "RuntimeError: kaput"
    t0 = time.perf_counter()
    late = call_tool(slow, {"n": 1})
    assert late.error == "timed out after 0.2 s" and time.perf_counter() - t0 < 2
    assert call_tool(notext, {"n": 1}).error == "the tool returned int, not text"
    assert call_tool(boom, "{not json").error.startswith("malformed arguments")
    assert call_tool(boom, {"n": "one"}).error.startswith("malformed arguments: n:")
    assert run_call([boom], Call(tool="nope")).error == "unknown tool 'nope'"
    for c in (late, call_tool(boom, {"n": 1})):
        assert not c.ok and c.observation().endswith(c.error)
        json.dumps(c.to_json())  # the trace entry is plain data


def test_call_schema_over_tools_and_answer() -> None:
    calc = calculator()
    double = Tool("double", "twice n", N, lambda a: str(2 * a.n))
    m = call_schema([calc, double])
    got = parse_call(m.model_validate_json('{"tool": "double", "n": 4}'))
    assert got == Call(tool="double", args={"n": 4})
    assert run_call([calc, double], got).result == "8"
    assert parse_call(m.model_validate_json('{"tool": "answer", "answer": "8"}')).final
    with pytest.raises(InvalidParameterError):
        call_schema([calc, calc])
    with pytest.raises(InvalidParameterError):
        Tool("answer", "reserved", N, str)
    with pytest.raises(InvalidParameterError):
        Tool("Bad Name", "no", N, str)


def test_python_tool_uses_the_runner_and_records_its_failures() -> None:
    seen = []

    def runner(code: str, timeout_s: float):
        seen.append((code, timeout_s))
        if "loop" in code:
            return SimpleNamespace(ok=False, stdout="", stderr="", summary=lambda: "timed out",
                      isolation=["fake"])
        return SimpleNamespace(ok=True, stdout="42\n", stderr="", summary=lambda: "exited 0",
                  isolation=["fake"])

    tool = python_tool(runner, timeout_s=1.5)
    ok = call_tool(tool, {"code": "print(6 * 7)"})
    assert ok.result == "42" and ok.info == {"isolation": ["fake"]}
    assert call_tool(tool, {"code": "loop()"}).error == "CodeFailedError: timed out"
    assert seen[0] == ("print(6 * 7)", 1.5)


@pytest.mark.sandbox
def test_python_tool_in_the_real_sandbox() -> None:
    from metaskill.tasks.sandbox import bwrap_problem, run_code

    if bwrap_problem():
        pytest.skip(bwrap_problem())
    tool = python_tool(lambda code, t: run_code(code, timeout_s=t), timeout_s=2.0)
    assert call_tool(tool, {"code": "print(17 * 23)"}).result == "391"
    assert "bwrap" in call_tool(tool, {"code": "print(1)"}).info["isolation"]
    escaped = call_tool(tool, {"code": "open('/etc/owned', 'w')"})
    assert not escaped.ok
    assert "timed out" in call_tool(tool, {"code": "while True: pass"}).error


def test_retrieve_and_builtin_tools() -> None:
    tool = retrieve_tool(lambda q, k: [f"note {i} on {q}" for i in range(5)], k=2)
    assert call_tool(tool, {"query": "sums"}).result == "1. note 0 on sums\n2. note 1 on sums"
    with pytest.raises(InvalidParameterError):
        builtin_tools(["python"])
    with pytest.raises(InvalidParameterError):
        builtin_tools(["retrieve"])
    assert [t.name for t in builtin_tools(["calculator", "retrieve"],
                                          search=lambda q, k: [])] == ["calculator", "retrieve"]
