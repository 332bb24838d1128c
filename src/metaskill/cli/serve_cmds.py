"""CLI verb ``metaskill serve``: an OpenAI-compatible server that applies a saved Solver.

Examples::

    metaskill adapt --task sst2 --method knn_demos --out sst2_knn.json
    metaskill serve --solver sst2_knn.json --task sst2            # http://127.0.0.1:8000/v1
    metaskill serve --solver s.json --model openai:llama@http://127.0.0.1:8080 --port 9000
    metaskill serve --solver s.json --host 0.0.0.0 --token "$TOKEN"   # token required

Then, from any OpenAI client::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="TOKEN-or-anything")
    client.chat.completions.create(model="metaskill-sst2_knn",
                                   messages=[{"role": "user", "content": "a gem of a film"}])
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from metaskill.core.errors import MetaskillError


def serve_cmd(
    solver: Annotated[Path, typer.Option(
        "--solver", help="Saved Solver JSON (from `metaskill adapt --out` or "
        "`metaskill eval --save-solver`).")],
    model: Annotated[str | None, typer.Option(
        "--model", help="LM spec (local, gguf:PATH, openai:MODEL@URL, fake); default: the "
        "spec saved in the Solver JSON.")] = None,
    task: Annotated[str | None, typer.Option(
        "--task", help="Task whose template and instructions the Solver answers with "
        "(the one it was fitted on); default: the JSON's 'task' field, else the plain "
        "chat input.")] = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind; anything but loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="METASKILL_SERVE_TOKEN",
        help="Bearer token every /v1 request must carry (env METASKILL_SERVE_TOKEN).")
    ] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Model id clients send as `model` (default metaskill-<file stem>).")
    ] = None,
    history: Annotated[bool, typer.Option(
        "--history/--no-history", help="Pass earlier user/assistant turns to the LM "
        "(default: only the last user message, the Solver's input).")] = False,
    system_prompt: Annotated[bool, typer.Option(
        "--system-prompt/--no-system-prompt", help="Pass the client's system message to "
        "the LM in front of the Solver's prompt.")] = True,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens-limit", help="Largest max_tokens a request may ask for.")] = 2048,
    max_input_chars: Annotated[int, typer.Option(
        "--max-input-chars", help="Most characters in a request's messages.")] = 32_000,
    max_n: Annotated[int, typer.Option("--max-n", help="Most choices (n) per request.")] = 4,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", help="Most requests in flight; more get HTTP 429.")] = 64,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for a llama.cpp model (local, gguf:PATH).")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the LM cache.")] = False,
) -> None:
    """Serve a saved Solver as an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    from metaskill.serve.app import ServeLimits, check_binding

    check_binding(host, token)  # before anything slow: refuse an open bind at once
    if not 0 < port < 65536:
        raise MetaskillError(f"--port must be in 1..65535, got {port}.")
    sock = _bind(host, port)  # before the model loads: a taken port fails at once
    limits = ServeLimits(max_tokens=max_tokens, max_input_chars=max_input_chars, max_n=max_n,
                         max_queue=max_queue)
    try:
        import uvicorn
    except ImportError:
        raise MetaskillError("serving needs fastapi and uvicorn; install them with "
                             "pip install 'metaskill[serve]'.") from None
    from metaskill.core.settings import Settings
    from metaskill.lm import load_lm
    from metaskill.serve.asgi import create_app
    from metaskill.serve.server import load_served_solver

    spec = model
    if spec is None and (no_cache or threads is not None):
        from metaskill.core.readers import read_json

        try:
            spec = read_json(solver, "solver file", expect=dict).get("model")
        except MetaskillError:
            spec = None  # load_served_solver reports the unreadable file
    if threads is not None and (spec is None
                                or not str(spec).startswith(("local", "gguf:", "hf:"))):
        raise MetaskillError("--threads applies to local models (local, gguf:PATH, hf:PATH).")
    settings = Settings.from_env(threads=threads)  # refuses --threads < 1 in one line
    lm = load_lm(str(spec), cache=not no_cache, settings=settings) if spec else None
    served = load_served_solver(solver, task=task, model_id=name, lm=lm)
    app = create_app(served.solver, served.task, model_id=served.model_id, token=token,
                     limits=limits, system_prompt=system_prompt, history=history)
    url_host = f"[{host}]" if ":" in host else host
    typer.echo(f"serving solver {served.solver.kind} ({solver}) on "
               f"{getattr(served.solver.lm, 'spec', '?')} as model '{served.model_id}', "
               f"task {served.task.name} ({served.task_source}), at "
               f"http://{url_host}:{port}/v1" + (" (bearer token required)" if token else ""))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to ``host:port`` (handed to uvicorn, so no race)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise MetaskillError(f"cannot bind {host}:{port}: {e.strerror or e}; pick another "
                             "--port or --host.") from None
    sock.set_inheritable(True)
    return sock


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the metaskill command line."""
    app.command("serve")(serve_cmd)
