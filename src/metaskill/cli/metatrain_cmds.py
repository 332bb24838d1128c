"""CLI verbs of meta-training across tasks: ``metaskill metatrain retrieval|tune|localize|gpicl``.

Each subcommand lives next to its module in ``metaskill.metalearn`` and is added here with
``@metatrain_app.command(...)``; heavy libraries load inside the commands.
"""

from __future__ import annotations

import typer

metatrain_app = typer.Typer(
    help="Meta-train across tasks: retrieval, tune, localize, gpicl.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``metatrain`` group to the root app."""
    app.add_typer(metatrain_app, name="metatrain")
