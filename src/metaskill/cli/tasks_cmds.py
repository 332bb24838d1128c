"""CLI verbs of the task layer: ``tasks ls``, ``tasks show``, ``tasks validate``, ``tasks export``.

Examples::

    metaskill tasks ls
    metaskill tasks ls --data ../shared/data          # also count gsm8k, math, math500
    metaskill tasks show trec --split test -n 3
    metaskill tasks show bigbench -o path=../shared/data/bigbench/tasks/navigate
    metaskill tasks show reasoning_gym -o dataset=basic_arithmetic -o n_test=5
    metaskill tasks validate my_task.yaml
    metaskill tasks export sst2 --split test out.jsonl

Task files in ``$METASKILL_HOME/tasks/*.yaml`` are registered for every command, so
``metaskill eval --task NAME`` finds them too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from metaskill.core.errors import MetaskillError, TaskError

tasks_app = typer.Typer(
    help="List, show, validate and export tasks (built-in and your task files).",
    no_args_is_help=True,
)


def _registry() -> Any:
    """The built-in registry plus task files from $METASKILL_HOME/tasks."""
    from metaskill.core.settings import Settings
    from metaskill.tasks.registry import TASKS, register_task_file
    from metaskill.tasks.taskfile import read_task_file

    folder = Settings.from_env().home / "tasks"
    if folder.is_dir():
        for f in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                name = read_task_file(f).name
            except TaskError:
                continue  # `tasks validate FILE` reports it; listing goes on
            if name not in TASKS:
                register_task_file(f, TASKS)
    return TASKS


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in options or []:
        if "=" not in item:
            raise MetaskillError(f"option '{item}' must look like KEY=VALUE (e.g. n_test=50).")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _load(name: str, options: dict[str, Any], data: Path | None) -> Any:
    from metaskill.tasks.registry import get_task

    reg = _registry()
    if data is not None and name in reg:
        loader = reg.get(name)
        if loader.data_name and "path" not in options:
            options = {**options, "path": str(data / loader.data_name)}
    return get_task(name, registry=reg, **options)


@tasks_app.command("ls")
def ls(
    data: Annotated[Path | None, typer.Option(
        "--data", help="Folder with gsm8k/, math/ ... (default: $METASKILL_DATA).")] = None,
) -> None:
    """List the tasks: name, kind, examples per split, skills, description."""
    from metaskill.tasks.builtin import data_dir

    reg = _registry()
    data = data or (Path(os.environ["METASKILL_DATA"]) if os.environ.get("METASKILL_DATA")
                    else None)
    table = Table(title="tasks", show_lines=False)
    for col in ("name", "kind", "train/dev/test", "skills", "description"):
        table.add_column(col, overflow="fold")
    for name in reg.names():
        loader = reg.get(name)
        splits, skills, kind = "", "", loader.kind
        can_load = not loader.needs or (
            loader.data_name and ((data is not None and (data / loader.data_name).is_dir())
                                  or data_dir(loader.data_name, None) is not None))
        if can_load:
            try:
                t = _load(name, {}, data)
                splits = " / ".join(str(len(t.splits.get(s, []))) for s in ("train", "dev",
                                                                            "test"))
                extra = [s for s in t.splits if s not in ("train", "dev", "test")]
                splits += "".join(f" +{s}:{len(t.splits[s])}" for s in extra)
                skills = str(len({s for v in t.splits.values() for e in v for s in e.skills}))
                kind = t.kind
            except MetaskillError as e:
                splits = f"[red]error: {e}[/]"
        else:
            splits = f"[dim]needs {loader.needs}[/]"
        table.add_row(name, kind, splits, skills, loader.description)
    Console().print(table)


@tasks_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Task name or task-file path.")],
    split: Annotated[str, typer.Option("--split", "-s", help="Split to show.")] = "test",
    n: Annotated[int, typer.Option("-n", help="Number of examples.")] = 3,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Loader option KEY=VALUE (repeatable), e.g. -o path=DIR.")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Folder with gsm8k/, math/ ... for tasks that load from a path.")] = None,
) -> None:
    """Print a few rendered examples of a split, with answers and skills."""
    if n < 1:
        raise MetaskillError(f"-n must be >= 1, got {n}.")
    t = _load(name, _parse_options(option), data)
    exs = t.examples(split)
    con = Console()
    sizes = ", ".join(f"{k}={len(v)}" for k, v in t.splits.items())
    con.print(f"[bold]{t.name}[/] v{t.version} ({t.kind}) - {t.description}", highlight=False)
    con.print(f"splits: {sizes}; verifier: {t.verifier.to_spec()}", highlight=False)
    if t.labels:
        con.print(f"labels: {', '.join(t.labels)}", highlight=False)
    if t.instructions:
        con.print(f"instructions: {t.instructions}", highlight=False)
    for ex in exs[:n]:
        con.rule(f"{split} {ex.id}")
        con.print(t.render(ex), markup=False, highlight=False)
        con.print(f"[green]answer:[/] {ex.answer}", highlight=False)
        con.print(f"[cyan]skills:[/] {', '.join(ex.skills) or '-'}", highlight=False)


@tasks_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="A YAML task file.")],
) -> None:
    """Check a task file (schema, data, fields, template, labels, splits); exit 1 if bad."""
    from metaskill.tasks.registry import validate_task_file

    t = validate_task_file(file, registry=_registry())
    sizes = ", ".join(f"{k}={len(v)}" for k, v in t.splits.items())
    Console().print(f"[green]ok[/]: {file}: task '{t.name}' v{t.version} ({t.kind}), {sizes}, "
                    f"verifier {t.verifier.name}", highlight=False)


@tasks_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Task name or task-file path.")],
    out: Annotated[Path, typer.Argument(help="Output JSONL file.")],
    split: Annotated[str, typer.Option("--split", "-s", help="Split to export.")] = "test",
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Loader option KEY=VALUE (repeatable).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Folder with gsm8k/, math/ ...")
                    ] = None,
) -> None:
    """Write a split to JSONL (id, input, prompt, answer, skills, metadata) for peer tools."""
    from metaskill.tasks.splits import export_split

    t = _load(name, _parse_options(option), data)
    t.examples(split)
    path = export_split(t, split, out)
    Console().print(f"wrote {len(t.splits[split])} examples of {t.name}/{split} to {path}",
                    highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``tasks`` verb group to the root app, and register the user's task files
    (``$METASKILL_HOME/tasks/*.yaml``) so every verb (``eval --task NAME`` too) sees them."""
    app.add_typer(tasks_app, name="tasks")
    try:
        _registry()
    except MetaskillError:
        pass  # a bad METASKILL_* setting: the command that reads it reports it in one line
