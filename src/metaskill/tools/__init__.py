"""Tools a Solver may call: typed functions with a name, a description and a JSON-schema
argument (:mod:`metaskill.tools.base`), and the built-ins.

* ``calculator`` (:mod:`metaskill.tools.calculator`) -- arithmetic, evaluated safely;
* ``python`` (:mod:`metaskill.tools.python`) -- model-written code in a sandbox runner
  (the methods layer passes :func:`metaskill.tasks.sandbox.run_code`);
* ``retrieve`` (:mod:`metaskill.tools.retrieve`) -- a search passed in (SkillBook, memory).

This layer imports only ``core/``; methods run the call loop (``methods/tool_use.py``).

Example:
    >>> [t.name for t in builtin_tools(["calculator"])]
    ['calculator']
"""

from __future__ import annotations

from collections.abc import Sequence

from metaskill.core.errors import InvalidParameterError
from metaskill.tools.base import ANSWER, Call, Tool, ToolCall, call_schema, call_tool, parse_call
from metaskill.tools.calculator import calculator
from metaskill.tools.python import CodeRunner, python_tool
from metaskill.tools.retrieve import Searcher, retrieve_tool

BUILTIN = ("calculator", "python", "retrieve")


def builtin_tools(names: Sequence[str], *, runner: CodeRunner | None = None,
                  search: Searcher | None = None) -> list[Tool]:
    """The built-in tools called ``names``, in that order.

    Raises:
        InvalidParameterError: an unknown name, ``python`` without a runner or
            ``retrieve`` without a searcher.

    Example:
        >>> try:
        ...     builtin_tools(["abacus"])
        ... except InvalidParameterError as e:
        ...     print(e)
        unknown tool 'abacus'; the built-in tools are: calculator, python, retrieve
    """
    out = []
    for name in names:
        if name == "calculator":
            out.append(calculator())
        elif name == "python":
            if runner is None:
                raise InvalidParameterError(
                    "the python tool needs a sandbox runner (metaskill.tasks.sandbox.run_code).")
            out.append(python_tool(runner))
        elif name == "retrieve":
            if search is None:
                raise InvalidParameterError("the retrieve tool needs a searcher.")
            out.append(retrieve_tool(search))
        else:
            raise InvalidParameterError(
                f"unknown tool {name!r}; the built-in tools are: {', '.join(BUILTIN)}")
    return out


__all__ = ["ANSWER", "BUILTIN", "Call", "Tool", "ToolCall", "builtin_tools", "calculator",
           "call_schema", "call_tool", "parse_call", "python_tool", "retrieve_tool"]
