"""CLI verbs of meta-reinforcement learning: ``metaskill metarl metaworld-data|meta-dt|lpo``.

Each subcommand is added here with ``@metarl_app.command(...)``; the ``metarl`` extra's
libraries (metaworld, mujoco, jax, gymnax, evosax) load inside the commands.
"""

from __future__ import annotations

import typer

metarl_app = typer.Typer(
    help="Meta-reinforcement learning: Meta-World data, Meta-DT, LPO/GROOVE.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``metarl`` group to the root app."""
    app.add_typer(metarl_app, name="metarl")
