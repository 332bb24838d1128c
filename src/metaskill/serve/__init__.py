"""serve: an OpenAI-compatible server that applies a saved Solver in front of any LM.

``metaskill serve --solver solver.json [--model SPEC] [--task T]`` exposes
``/v1/chat/completions`` (streaming and not) and ``/v1/models``, so any OpenAI client can
use the improved model. See :mod:`metaskill.serve.app` for how a chat request becomes a
Solver call (last user message = input; system prompt passed through; earlier turns
dropped unless ``--history``) and for the error bodies and limits.

FastAPI and uvicorn are imported only when an app is built (the ``serve`` extra):
``create_app`` (from :mod:`metaskill.serve.asgi`) is imported on first use.

Example:
    >>> from metaskill.serve import ServeLimits
    >>> ServeLimits().max_n
    4
"""

from __future__ import annotations

from typing import Any

from metaskill.serve.app import (
    ApiError,
    ServeLimits,
    chat_task,
    check_binding,
    parse_chat_request,
)
from metaskill.serve.server import ServedSolver, ServerThread, free_port, load_served_solver


def __getattr__(name: str) -> Any:
    if name == "create_app":  # the ASGI side imports fastapi: only on first use
        from metaskill.serve.asgi import create_app

        return create_app
    raise AttributeError(f"module 'metaskill.serve' has no attribute '{name}'")


__all__ = [
    "ApiError",
    "ServeLimits",
    "ServedSolver",
    "ServerThread",
    "chat_task",
    "check_binding",
    "create_app",
    "free_port",
    "load_served_solver",
    "parse_chat_request",
]
