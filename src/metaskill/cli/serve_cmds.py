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
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the LM cache.")] = False,
) -> None:
    """Serve a saved Solver as an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    from metaskill.serve.app import ServeLimits, check_binding, create_app

    check_binding(host, token)  # before anything slow: refuse an open bind at once
    if not 0 < port < 65536:
        raise MetaskillError(f"--port must be in 1..65535, got {port}.")
    limits = ServeLimits(max_tokens=max_tokens, max_input_chars=max_input_chars, max_n=max_n,
                         max_queue=max_queue)
    try:
        import uvicorn
    except ImportError:
        raise MetaskillError("serving needs fastapi and uvicorn; install them with "
                             "pip install 'metaskill[serve]'.") from None
    from metaskill.lm import load_lm
    from metaskill.serve.server import load_served_solver

    lm = load_lm(model, cache=not no_cache) if model is not None else None
    if lm is None and no_cache:
        import json

        try:
            spec = json.loads(solver.read_text()).get("model")
        except (OSError, ValueError, AttributeError):
            spec = None  # load_served_solver reports the unreadable file
        if spec:
            lm = load_lm(str(spec), cache=False)
    served = load_served_solver(solver, task=task, model_id=name, lm=lm)
    app = create_app(served.solver, served.task, model_id=served.model_id, token=token,
                     limits=limits, system_prompt=system_prompt, history=history)
    url_host = f"[{host}]" if ":" in host else host
    typer.echo(f"serving solver {served.solver.kind} ({solver}) on "
               f"{getattr(served.solver.lm, 'spec', '?')} as model '{served.model_id}', "
               f"task {served.task.name} (from {served.task_source}), at "
               f"http://{url_host}:{port}/v1" + (" (bearer token required)" if token else ""))
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except OSError as e:
        raise MetaskillError(f"cannot bind {host}:{port}: {e.strerror or e}.") from None


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the metaskill command line."""
    app.command("serve")(serve_cmd)
