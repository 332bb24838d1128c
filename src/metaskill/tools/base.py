"""A tool: a typed function with a name, a description and a JSON-schema argument.

A Solver lets the model call tools through structured output: the model's reply is one
JSON object valid under :func:`call_schema` (the tool's name and its arguments, or a
final answer), :func:`parse_call` reads it, :func:`call_tool` runs the tool and returns
a :class:`ToolCall` -- the record that goes into the attempt's trace and whose
:meth:`ToolCall.observation` goes back into the model's context. A tool that raises, runs
past its time limit or gets malformed arguments gives a ToolCall with ``error`` set;
nothing here raises for what a model wrote.

This layer sits beside ``lm/`` and ``tasks/`` and imports neither: the loop that asks the
model lives in the method that uses the tools (``methods/tool_use.py``,
``methods/meta_prompting.py``), and tools that need a sandbox or a searcher take it as a
callable (:mod:`metaskill.tools.python`, :mod:`metaskill.tools.retrieve`).

Example:
    >>> from pydantic import BaseModel
    >>> class Echo(BaseModel):
    ...     text: str
    >>> echo = Tool("echo", "repeat the text", Echo, lambda a: a.text.upper())
    >>> call = call_tool(echo, {"text": "hi"})
    >>> call.result, call.error, call.observation()
    ('HI', None, 'echo returned: HI')
    >>> call_tool(echo, {"txt": "hi"}).error.startswith("malformed arguments")
    True
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from metaskill.core.errors import InvalidParameterError

#: The longest result text kept (in the trace and in the model's context).
MAX_RESULT_CHARS = 1000
#: The name a final answer takes in a call schema (no tool may be called that).
ANSWER = "answer"


@dataclass(frozen=True)
class Tool:
    """A function the model may call.

    Attributes:
        name: what the model writes to call it (``[a-z_][a-z0-9_]*``, not ``answer``).
        description: one line the model is shown.
        args: the pydantic model of its argument (its JSON schema constrains the reply).
        fn: ``fn(args) -> str`` (or ``(str, info dict)``); may raise (recorded as the
            call's error; an exception's ``info`` dict is kept in the call's ``info``).
        timeout_s: wall-time limit of one call (the call is abandoned, not killed, when a
            plain function overruns; tools that run code enforce their own limit too).

    Example:
        >>> class N(BaseModel):
        ...     n: int
        >>> Tool("double", "twice n", N, lambda a: str(2 * a.n)).name
        'double'
    """

    name: str
    description: str
    args: type[BaseModel]
    fn: Callable[[Any], str]
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        ok = self.name and self.name[0].isalpha() and self.name.replace("_", "a").isalnum()
        if not ok or self.name != self.name.lower() or self.name == ANSWER:
            raise InvalidParameterError(
                f"tool name {self.name!r}: use lower-case letters, digits and '_' (not "
                f"{ANSWER!r}, which names the final answer).")
        if self.timeout_s <= 0:
            raise InvalidParameterError(f"tool {self.name}: timeout_s must be > 0.")

    def line(self) -> str:
        """``name(arg, ...): description`` -- how the tool is listed in a prompt.

        Example:
            >>> class E(BaseModel):
            ...     expression: str
            >>> Tool("calc", "evaluates arithmetic", E, str).line()
            'calc(expression): evaluates arithmetic'
        """
        return f"{self.name}({', '.join(self.args.model_fields)}): {self.description}"


@dataclass
class ToolCall:
    """One call, as recorded in a trace.

    Attributes:
        tool: the tool's name (as the model wrote it).
        args: the arguments the model wrote (raw JSON data).
        result: the tool's text (clipped), or None when the call failed.
        error: why the call failed (malformed call, unknown tool, the tool's exception,
            a timeout), or None.
        seconds: wall time of the call.
        info: extra facts from the tool (e.g. the sandbox layers that applied).
    """

    tool: str
    args: dict[str, Any]
    result: str | None = None
    error: str | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The tool returned a result."""
        return self.error is None and self.result is not None

    def observation(self) -> str:
        """The text put back into the model's context.

        Example:
            >>> ToolCall("calc", {}, error="timed out").observation()
            'calc failed: timed out'
        """
        if self.ok:
            return f"{self.tool} returned: {self.result}"
        return f"{self.tool} failed: {self.error}"

    def to_json(self) -> dict[str, Any]:
        """Plain data for the attempt's ``meta["tool_trace"]``."""
        out: dict[str, Any] = {"tool": self.tool, "args": self.args, "result": self.result,
                               "error": self.error, "seconds": round(self.seconds, 4)}
        if self.info:
            out["info"] = self.info
        return out


def _run_with_timeout(fn: Callable[[], Any], timeout_s: float
                      ) -> tuple[Any, str | None, dict[str, Any]]:
    """Run ``fn`` in a daemon thread: (result, None, info), or (None, why it failed, info
    from the exception's ``info`` attribute)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # a tool's failure of any kind is a recorded error
            box["error"] = f"{type(e).__name__}: {e}"[:MAX_RESULT_CHARS]
            box["info"] = getattr(e, "info", None)

    thread = threading.Thread(target=target, daemon=True, name="metaskill-tool")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return None, f"timed out after {timeout_s:g} s", {}
    if "error" in box:
        return None, box["error"], dict(box.get("info") or {})
    return box.get("result"), None, {}


def call_tool(tool: Tool, raw_args: dict[str, Any] | str | None) -> ToolCall:
    """Validate ``raw_args`` against the tool's argument model and run it.

    Args:
        tool: the tool.
        raw_args: its arguments as a dict or JSON text (what the model wrote).

    Returns:
        A :class:`ToolCall`; ``error`` is set for malformed arguments, an exception in the
        tool, a non-text result or a timeout. Never raises.

    Example:
        >>> class N(BaseModel):
        ...     n: int
        >>> boom = Tool("boom", "fails", N, lambda a: str(1 // 0))
        >>> call_tool(boom, '{"n": 1}').error
        'ZeroDivisionError: integer division or modulo by zero'
    """
    start = time.perf_counter()
    if isinstance(raw_args, str):
        try:
            raw_args = json.loads(raw_args)
        except json.JSONDecodeError as e:
            return ToolCall(tool.name, {"raw": raw_args[:200]}, error=f"malformed arguments: {e}")
    args_data = raw_args if isinstance(raw_args, dict) else {}
    try:
        args = tool.args.model_validate(args_data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "arguments"
        return ToolCall(tool.name, args_data,
                        error=f"malformed arguments: {loc}: {first.get('msg', 'invalid')}")
    result, error, info = _run_with_timeout(lambda: tool.fn(args), tool.timeout_s)
    if isinstance(result, tuple):  # (text, info) from tools that report extra facts
        result, info = result
    if error is None and not isinstance(result, str):
        error, result = f"the tool returned {type(result).__name__}, not text", None
    if result is not None:
        result = result.strip()[:MAX_RESULT_CHARS]
    return ToolCall(tool.name, args_data, result=result, error=error,
                    seconds=time.perf_counter() - start, info=info)


# ---- the call schema -------------------------------------------------------------------------
class Call(BaseModel):
    """A parsed model reply: a tool call (``tool`` and its ``args``) or a final answer."""

    model_config = ConfigDict(frozen=True)

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    answer: str | None = None

    @property
    def final(self) -> bool:
        """Whether the reply is the final answer rather than a tool call."""
        return self.tool == ANSWER


def call_schema(tools: Sequence[Tool], *, allow_answer: bool = True,
                answer_chars: int = 200) -> type[BaseModel]:
    """The pydantic model of one reply: ``{"tool": <name>, <the tool's args>}`` for one
    of ``tools``, or ``{"tool": "answer", "answer": <text>}``.

    Each alternative is a flat object (the tool's name first, then its arguments), which
    a small model copies from a demonstration more reliably than a nested one.

    Args:
        tools: the tools the reply may call (one tool and no answer: the model only fills
            in that tool's arguments).
        allow_answer: whether a final answer is an alternative.
        answer_chars: the longest final answer.

    Raises:
        InvalidParameterError: no alternative at all, or two tools with one name.

    Example:
        >>> class E(BaseModel):
        ...     expression: str
        >>> calc = Tool("calculator", "arithmetic", E, str)
        >>> m = call_schema([calc])
        >>> parse_call(m.model_validate_json('{"tool": "calculator", "expression": "1+2"}'))
        Call(tool='calculator', args={'expression': '1+2'}, answer=None)
    """
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"two tools share a name: {names}")
    kinds: list[type[BaseModel]] = []
    for t in tools:
        fields: dict[str, Any] = {"tool": (Literal[t.name], ...)}  # type: ignore[valid-type]
        for name, info in t.args.model_fields.items():
            fields[name] = (info.annotation, info)
        kinds.append(create_model(f"Call_{t.name}", __config__=ConfigDict(extra="forbid"),
                                  **fields))
    if allow_answer:
        kinds.append(create_model(
            "Call_answer", __config__=ConfigDict(extra="forbid"),
            tool=(Literal[ANSWER], ...),  # type: ignore[valid-type]
            answer=(str, Field(max_length=answer_chars))))
    if not kinds:
        raise InvalidParameterError("call_schema needs a tool or allow_answer=True.")
    if len(kinds) == 1:
        return kinds[0]
    from pydantic import RootModel

    union: Any = kinds[0]
    for k in kinds[1:]:
        union = union | k
    return RootModel[union]  # type: ignore[valid-type]


def parse_call(value: BaseModel | dict[str, Any] | None) -> Call | None:
    """A reply parsed by :func:`call_schema`'s model (or raw JSON data) as a :class:`Call`;
    None when it names no tool.

    Example:
        >>> parse_call({"tool": "answer", "answer": "42"})
        Call(tool='answer', args={}, answer='42')
        >>> parse_call({"expression": "1+1"}) is None
        True
    """
    if value is None:
        return None
    data = value.model_dump() if isinstance(value, BaseModel) else value
    if isinstance(data, dict) and "root" in data and len(data) == 1:
        data = data["root"]
    if not isinstance(data, dict) or not isinstance(data.get("tool"), str):
        return None
    name = data["tool"]
    if name == ANSWER:
        return Call(tool=ANSWER, answer=str(data.get("answer", "")))
    return Call(tool=name, args={k: v for k, v in data.items() if k != "tool"})


def run_call(tools: Sequence[Tool], call: Call) -> ToolCall:
    """Run a parsed call against ``tools``; an unknown tool is a recorded error.

    Example:
        >>> run_call([], Call(tool="nope")).error
        "unknown tool 'nope'"
    """
    by_name = {t.name: t for t in tools}
    if call.tool not in by_name:
        return ToolCall(call.tool, dict(call.args), error=f"unknown tool {call.tool!r}")
    return call_tool(by_name[call.tool], dict(call.args))


def call_json(tool: str, args: dict[str, Any]) -> str:
    """The JSON text of a call, as a demonstration shows it (name first).

    Example:
        >>> call_json("calculator", {"expression": "2 + 3"})
        '{"tool": "calculator", "expression": "2 + 3"}'
    """
    return json.dumps({"tool": tool, **args}, ensure_ascii=False)
