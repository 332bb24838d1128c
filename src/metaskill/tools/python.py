"""The ``python`` tool: runs model-written code in a sandbox and returns what it printed.

The sandbox is not here: the tool takes a *runner*, ``runner(code, timeout_s)`` returning an
object with ``ok``, ``stdout``, ``stderr``, ``summary()`` and ``isolation`` -- in practice
:func:`metaskill.tasks.sandbox.run_code` (bubblewrap: its own namespaces, rlimits, no
network, writes only in its temporary folder), which the methods layer passes in. Tools sit
beside ``tasks/`` in the layers of DESIGN.md, and siblings do not import each other; the
code verifier and this tool share one sandbox this way, and tests can pass a fake runner.

Example:
    >>> from metaskill.tools.base import call_tool
    >>> from types import SimpleNamespace as NS
    >>> fake = lambda code, timeout_s: NS(ok=True, stdout="42\\n", stderr="",
    ...                                   summary=lambda: "exited 0", isolation=["fake"])
    >>> call = call_tool(python_tool(fake), {"code": "print(6 * 7)"})
    >>> call.result, call.info
    ('42', {'isolation': ['fake']})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from metaskill.tools.base import Tool

#: ``runner(code, timeout_s) -> result`` with ``ok``, ``stdout``, ``stderr``, ``summary()``
#: and ``isolation`` (what :func:`metaskill.tasks.sandbox.run_code` returns).
CodeRunner = Callable[[str, float], Any]


class PythonArgs(BaseModel):
    """The python tool's argument."""

    code: str = Field(max_length=600, description="a Python program that prints its result")


class CodeFailedError(RuntimeError):
    """The code did not exit 0 within its limits; ``info`` keeps the sandbox layers."""

    def __init__(self, message: str, info: dict[str, Any]) -> None:
        super().__init__(message)
        self.info = info


def run_python(runner: CodeRunner, code: str, timeout_s: float) -> tuple[str, dict[str, Any]]:
    """Run ``code`` with ``runner``: (stdout, or the failure and the end of stderr; info).

    A run that fails (non-zero exit, time or memory limit) raises :class:`CodeFailedError` with
    the summary and the end of stderr, so the call is recorded as an error.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> bad = lambda code, timeout_s: NS(ok=False, stdout="", stderr="NameError: x",
        ...                                  summary=lambda: "exit 1: NameError: x",
        ...                                  isolation=[])
        >>> run_python(bad, "print(x)", 1.0)
        Traceback (most recent call last):
        ...
        metaskill.tools.python.CodeFailedError: exit 1: NameError: x
        NameError: x
    """
    r = runner(code, timeout_s)
    info = {"isolation": list(getattr(r, "isolation", []) or [])}
    if not r.ok:
        tail = (getattr(r, "stderr", "") or "").strip()[-400:]
        raise CodeFailedError(f"{r.summary()}\n{tail}".strip(), info)
    return (r.stdout.strip() or "(no output)"), info


def python_tool(runner: CodeRunner, timeout_s: float = 5.0) -> Tool:
    """The python :class:`~metaskill.tools.base.Tool` over a sandbox ``runner``.

    The tool's own limit is a little longer than the runner's, which kills the code at
    ``timeout_s``.

    Example:
        >>> python_tool(lambda c, t: None).line()
        'python(code): runs a Python program in a sandbox and returns what it printed'
    """
    return Tool("python", "runs a Python program in a sandbox and returns what it printed",
                PythonArgs, lambda a: run_python(runner, a.code, timeout_s),
                timeout_s=timeout_s + 5.0)
