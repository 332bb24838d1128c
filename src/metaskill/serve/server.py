"""Loading a saved Solver for serving, and running the server (foreground or in a thread).

Example:
    >>> from metaskill.eval.solvers import ZeroShot
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.serve.asgi import create_app
    >>> app = create_app(ZeroShot(ScriptedLM(default="ok")), model_id="m")
    >>> with ServerThread(app) as srv:                      # doctest: +SKIP
    ...     print(srv.base_url)
    http://127.0.0.1:54321/v1
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaskill.core.errors import MetaskillError
from metaskill.core.readers import read_json


@dataclass
class ServedSolver:
    """A Solver ready to serve: the Solver, its Task, and where each came from."""

    solver: Any
    task: Any
    model_id: str
    task_source: str


def load_served_solver(
    path: str | Path,
    *,
    model: str | None = None,
    task: str | None = None,
    model_id: str | None = None,
    lm: Any = None,
) -> ServedSolver:
    """Load a saved Solver and the Task whose template/instructions it answers with.

    The Task is, in order: ``task`` (``--task``), the solver JSON's optional top-level
    ``"task"`` field (a task name or task-file path), else the plain chat task (the input
    as-is, no instructions). The Solver's prompt building is checked once on a probe input
    so a Solver that cannot work with that Task fails now, not on the first request.

    Args:
        path: the Solver JSON (from ``metaskill adapt --out``, ``eval --save-solver``...).
        model: an LM spec overriding the JSON's ``model``.
        task: a task name or task file.
        model_id: the id clients send as ``model`` (default: ``metaskill-<file stem>``).
        lm: an already loaded LM (tests); overrides ``model``.

    Raises:
        MetaskillError: unreadable JSON, unknown task, or a Solver that cannot build a
            prompt for the Task (one line that says how to fix it).
    """
    from metaskill.core.types import Example
    from metaskill.eval.solvers import load_solver
    from metaskill.serve.app import chat_task

    p = Path(path)
    data = read_json(p, "solver file", expect=dict)
    if lm is None and model is not None:
        from metaskill.lm import load_lm

        lm = load_lm(model)
    task_name = task or (data.get("task") if isinstance(data.get("task"), str) else None)
    if task_name:
        from metaskill.tasks import get_task

        task_obj = get_task(task_name)
        source = "from --task" if task else "from the solver JSON"
    else:
        task_obj, source = chat_task(), "no --task: the input as-is, no template"
    solver = load_solver(data, lm=lm)
    probe = Example(id="probe", input="probe input")
    try:
        if hasattr(solver, "labels") and callable(solver.labels):
            solver.labels(task_obj)
        if hasattr(solver, "request") and callable(solver.request):
            solver.request(task_obj, probe)
    except MetaskillError as e:
        raise MetaskillError(f"the solver in {p} cannot answer task '{task_obj.name}': {e} "
                             "Pass the task it was fitted on with --task.") from None
    return ServedSolver(solver, task_obj, model_id or f"metaskill-{p.stem}", source)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Runs an ASGI app with uvicorn on a background thread (tests, benchmarks, notebooks).

    Args:
        app: the app (from :func:`~metaskill.serve.asgi.create_app`).
        host: loopback by default.
        port: None picks a free port.

    Use as a context manager; on exit the server shuts down and the thread is joined.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="metaskill-serve",
                                       daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://host:port/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        """Start serving; returns once the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise MetaskillError(f"the server did not start on {self.host}:{self.port}.")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
