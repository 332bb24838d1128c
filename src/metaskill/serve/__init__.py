"""serve: an OpenAI-compatible server that applies a saved Solver in front of any LM.

``metaskill serve --solver solver.json [--model SPEC] [--task T]`` exposes
``/v1/chat/completions`` (streaming and not) and ``/v1/models``, so any OpenAI client can
use the improved model. See :mod:`metaskill.serve.app` for how a chat request becomes a
Solver call (last user message = input; system prompt passed through; earlier turns
dropped unless ``--history``) and for the error bodies and limits.

FastAPI and uvicorn are imported only when an app is built (the ``serve`` extra).

Example:
    >>> from metaskill.serve import ServeLimits
    >>> ServeLimits().max_n
    4
"""

from metaskill.serve.app import (
    ApiError,
    ServeLimits,
    chat_task,
    check_binding,
    create_app,
    parse_chat_request,
)
from metaskill.serve.server import ServedSolver, ServerThread, free_port, load_served_solver

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
