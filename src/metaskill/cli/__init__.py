"""The ``metaskill`` command line (typer + rich).

Each verb group lives in its own module and registers itself on :data:`app`. Errors of
type :class:`~metaskill.core.errors.MetaskillError` print as one red line and exit 1;
nothing a user types should end in a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from metaskill import __version__
from metaskill.core.errors import MetaskillError

app = typer.Typer(
    name="metaskill",
    help="Make a language model better at your tasks by itself.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Verb modules; each defines ``register(app)``. A module that does not exist yet is skipped.
_MODULES = ("lm_cmds", "tasks_cmds", "eval_cmds", "skills_cmds", "methods_cmds",
            "train_cmds", "run_cmds", "serve_cmds", "memory_cmds", "metatrain_cmds", "metarl_cmds")


def _version(value: bool) -> None:
    if value:
        print(f"metaskill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """metaskill: measure a model, find its missing skills, and make it better."""


def _register_all() -> None:
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"metaskill.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"metaskill.cli.{name}":
                continue
            raise
        mod.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``metaskill`` command."""
    err = Console(stderr=True)
    try:
        app(args=argv, standalone_mode=True)
    except MetaskillError as e:
        from rich.markup import escape

        # escape: messages name things like "metaskill[local]" that are not rich markup
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
