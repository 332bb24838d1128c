"""CLI verbs of the experience memory: ``metaskill memory ls|show|clear``.

The notes are written by the ``memory`` method (``metaskill adapt --method memory``) into
the knowledge base ``$METASKILL_HOME/memory.sqlite`` (``--kb`` picks another file).

Examples::

    metaskill memory ls                        # notes that are offered (demoted ones hidden)
    metaskill memory ls --all --task arithmetic
    metaskill memory show 12
    metaskill memory clear --task arithmetic --yes
    metaskill memory clear --yes               # every note
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from metaskill.core.errors import MetaskillError
from metaskill.core.settings import Settings

memory_app = typer.Typer(
    help="List, inspect and clear the experience notes of the memory method.",
    no_args_is_help=True,
)

KbOpt = Annotated[Path | None, typer.Option(
    "--kb", help="Knowledge base SQLite file (default: $METASKILL_HOME/memory.sqlite).")]
TaskOpt = Annotated[str | None, typer.Option("--task", "-t", help="Only this task's notes.")]
SkillOpt = Annotated[str | None, typer.Option("--skill", "-s", help="Only this skill's notes.")]


def _open(path: Path | None, *, must_exist: bool = True) -> Any:
    """The knowledge base (without an embedder: listing never loads a model)."""
    from metaskill.skills.knowledge import KnowledgeBase, default_path

    p = path if path is not None else default_path(Settings.from_env())
    if must_exist and not p.is_file():
        raise MetaskillError(f"no knowledge base at {p}; notes are written by "
                             "`metaskill adapt --method memory ...` (or pass --kb PATH).")
    return KnowledgeBase(p)


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _rate(note: Any) -> str:
    rate = note.help_rate
    return "-" if rate is None else f"{100 * rate:.0f}%"


@memory_app.command("ls")
def ls_cmd(
    kb: KbOpt = None,
    task: TaskOpt = None,
    skill: SkillOpt = None,
    all_notes: Annotated[bool, typer.Option(
        "--all", "-a", help="Also list demoted notes (hidden from retrieval).")] = False,
) -> None:
    """List notes: id, skill, task, source, retrieved, helped, status, date, text."""
    from rich.table import Table

    base = _open(kb)
    notes = base.notes(task=task, skill=skill, include_demoted=all_notes)
    info = base.summary()
    t = Table()
    for col, right in (("id", True), ("skill", False), ("task", False), ("source", False),
                       ("retrieved", True), ("helped", True), ("status", False),
                       ("date", False)):
        t.add_column(col, justify="right" if right else "left", no_wrap=True)
    t.add_column("note", overflow="fold")
    for n in notes:
        t.add_row(str(n.id), n.skill, n.task, n.source, str(n.retrieved),
                  f"{n.helped} ({_rate(n)})", "demoted" if base.is_demoted(n) else "active",
                  _date(n.created), n.text)
    con = Console()
    con.print(f"{base.path}: {info['notes']} notes, {info['demoted']} demoted ({info['lm']} "
              f"by LM, {info['template']} by template)", soft_wrap=True, highlight=False)
    if notes:
        con.print(t)
    else:
        con.print("no notes" + (" (demoted ones are hidden: --all)" if info["demoted"] else ""))


@memory_app.command("show")
def show_cmd(
    note_id: Annotated[int, typer.Argument(help="The note's id (memory ls).")],
    kb: KbOpt = None,
) -> None:
    """Show one note in full: text, skill, source task and example, counters, status."""
    base = _open(kb)
    n = base.get(note_id)
    con = Console()
    rows = [("note", n.text), ("skill", n.skill), ("task", n.task),
            ("example", n.example_id), ("learnt from", n.key),
            ("source", n.source + (f" (LM note not used: {n.error})" if n.error else "")),
            ("attempt verified", str(n.verified)), ("date", _date(n.created)),
            ("retrieved", str(n.retrieved)), ("helped", f"{n.helped} ({_rate(n)})"),
            ("status", "demoted (hidden from retrieval)" if base.is_demoted(n) else "active")]
    for k, v in rows:
        con.print(f"[bold]{k}:[/] ", end="", highlight=False)
        con.print(v, highlight=False, markup=False, soft_wrap=True)


@memory_app.command("clear")
def clear_cmd(
    kb: KbOpt = None,
    task: TaskOpt = None,
    skill: SkillOpt = None,
    note: Annotated[list[int] | None, typer.Option(
        "--id", help="Delete this note (repeatable).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")
                   ] = False,
) -> None:
    """Delete notes: all of them, those of a task and/or skill, or some by id."""
    if note and (task is not None or skill is not None):
        raise MetaskillError("--id deletes notes by id; leave out --task and --skill.")
    base = _open(kb)
    what = (f"notes {', '.join(map(str, note))}" if note else
            "every note" if task is None and skill is None else
            "the notes of " + " and ".join(
                x for x in (f"task '{task}'" if task else "",
                            f"skill '{skill}'" if skill else "") if x))
    if not yes and not typer.confirm(f"delete {what} from {base.path}?"):
        raise typer.Exit(1)
    if note:
        n = base.remove(note)
    else:
        n = base.clear(task=task, skill=skill)
    Console().print(f"deleted {n} note{'s' if n != 1 else ''} from {base.path}",
                    highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``memory`` verb group to the metaskill command line."""
    app.add_typer(memory_app, name="memory")
