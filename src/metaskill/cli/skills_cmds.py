"""CLI verbs of the skills layer: ``metaskill skills discover|ls|show|profile|export|import``.

Examples::

    metaskill skills discover --task math                      # the labels MATH carries
    metaskill skills discover --task trec --teacher local      # metacognitive labelling
    metaskill skills discover --task gsm8k --catalog skills.yaml --teacher local
    metaskill skills discover --task trec --source embedding --n-skills 6
    metaskill skills ls
    metaskill skills show algebra
    metaskill skills profile --task trec --model local --limit 30 --out profile.json
    metaskill skills export --out book.json && metaskill skills import book.json --book b.sqlite

The default SkillBook is ``$METASKILL_HOME/skills.sqlite``; ``--book`` picks another.
Embeddings are cached in ``$METASKILL_HOME/embeddings.sqlite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from metaskill.core.errors import MetaskillError
from metaskill.core.settings import Settings

skills_app = typer.Typer(
    help="Discover, list and inspect skills; profile which skills a model lacks.",
    no_args_is_help=True,
)

BookOpt = Annotated[Path | None, typer.Option(
    "--book", help="SkillBook SQLite file (default: $METASKILL_HOME/skills.sqlite).")]
ProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]


def _book_path(path: Path | None) -> Path:
    return path if path is not None else Settings.from_env().skills_path


def _embedder(spec: str) -> Any:
    from metaskill.skills.embed import EmbeddingCache, load_embedder

    cache = EmbeddingCache(Settings.from_env().home / "embeddings.sqlite")
    return load_embedder(spec, cache=cache)


def _open_book(path: Path | None) -> Any:
    """An existing SkillBook (its embedder loads only when a search needs it)."""
    from metaskill.skills.book import SkillBook

    p = _book_path(path)
    if not p.exists():
        raise MetaskillError(
            f"no SkillBook at {p}; run `metaskill skills discover --task TASK` first "
            "(or pass --book PATH)."
        )
    spec = SkillBook(p).embedder_spec
    return SkillBook(p, embedder=_embedder(spec))  # same model, with the embedding cache


def _load_task(name: str) -> Any:
    from metaskill.tasks import get_task

    return get_task(name)


def _load_lm(spec: str, threads: int | None = None) -> Any:
    from metaskill.core.settings import Settings
    from metaskill.lm import load_lm

    return load_lm(spec, settings=Settings.from_env(threads=threads))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _skills_table(book: Any, title: str) -> Any:
    from rich.table import Table

    t = Table(title=title)
    t.add_column("skill", no_wrap=True)
    t.add_column("parent", no_wrap=True)
    for col in ("n", "accuracy", "missing"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("source", no_wrap=True)
    t.add_column("description", overflow="ellipsis", no_wrap=True, max_width=60)
    for s in book.skills():
        t.add_row(s.name, s.parent or "", str(s.stats.n_examples), _pct(s.stats.accuracy),
                  _pct(s.stats.missing_rate), s.source, s.description)
    return t


@skills_app.command("discover")
def discover_cmd(
    task: Annotated[str, typer.Option("--task", "-t", help="Task name or task YAML file.")],
    source: Annotated[str, typer.Option(
        "--source", help="auto, labels, metacognitive, catalog or embedding. auto: catalog "
        "if --catalog, metacognitive if --teacher/--model, else the task's labels, else "
        "embedding clusters.")] = "auto",
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="Teacher model spec that names skills (default: --model).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="The model being improved; the default teacher.")] = None,
    catalog: Annotated[Path | None, typer.Option(
        "--catalog", help="YAML catalog of skill names and descriptions to pick from.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to discover on.")] = "train",
    limit: Annotated[int | None, typer.Option(
        "--limit", "-n", help="Use only the first N examples of the split.")] = None,
    n_skills: Annotated[int | None, typer.Option(
        "--n-skills", help="Target number of skills (metacognitive, embedding).")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="Cosine distance under which skill names merge.")] = 0.35,
    embedder: Annotated[str, typer.Option(
        "--embedder", help="minilm, hash, hash:DIM or st:PATH.")] = "minilm",
    book: BookOpt = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace a book that holds another task's skills.")] = False,
    no_progress: ProgressOpt = False,
) -> None:
    """Discover the skills of a task's training examples into a SkillBook."""
    from metaskill.skills.book import SkillBook
    from metaskill.skills.discover import DiscoveryConfig, discover, load_catalog

    if limit is not None and limit < 1:
        raise MetaskillError(f"--limit must be >= 1, got {limit}.")
    if n_skills is not None and n_skills < 1:
        raise MetaskillError(f"--n-skills must be >= 1, got {n_skills}.")
    if not 0 < threshold <= 2:
        raise MetaskillError(f"--threshold must be in (0, 2], got {threshold}.")
    sources = ("auto", "labels", "metacognitive", "catalog", "embedding")
    if source not in sources:
        raise MetaskillError(f"unknown --source '{source}'; use one of {', '.join(sources)}.")
    entries = load_catalog(catalog) if catalog is not None else None
    the_task = _load_task(task)
    the_task.examples(split)  # a missing split fails before any model loads
    path = _book_path(book)
    if path.exists():
        old = SkillBook(path)
        rec = old.info()
        old.close()
        held = (rec.get("discovery") or {}).get("task")
        if (rec["skills"] or rec["examples"]) and held not in (None, "", the_task.name) \
                and not replace:
            raise MetaskillError(
                f"{path} holds the skills of task '{held}'; pass --replace to overwrite it "
                "or --book PATH for a separate book."
            )
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    teacher_spec = teacher or model
    needs_teacher = source in ("metacognitive", "catalog") or (
        source == "auto" and (catalog is not None or teacher_spec is not None))
    if needs_teacher and teacher_spec is None:
        teacher_spec = "local"
    lm = _load_lm(teacher_spec) if needs_teacher and teacher_spec else None
    cfg = DiscoveryConfig(n_skills=n_skills, distance_threshold=threshold,
                          progress=not no_progress)
    sb = SkillBook(path, embedder=_embedder(embedder))
    discover(the_task, sb, source=source, teacher=lm, catalog=entries,  # type: ignore[arg-type]
             split=split, limit=limit, config=cfg)
    info = sb.info()
    con = Console()
    con.print(_skills_table(sb, f"{info['skills']} skills from {the_task.name}/{split} "
                                f"({info['discovery']['source']})"))
    con.print(f"{info['examples']} examples, {info['labelled']} labelled, "
              f"{info['examples'] - info['labelled']} unlabelled; saved to {path}",
              highlight=False)


@skills_app.command("ls")
def ls_cmd(book: BookOpt = None) -> None:
    """List the skills of a SkillBook with their statistics."""
    sb = _open_book(book)
    info = sb.info()
    con = Console()
    if not info["skills"]:
        con.print(f"{sb.path} has no skills; run `metaskill skills discover --task TASK`.")
        return
    disc = info.get("discovery") or {}
    con.print(_skills_table(sb, f"{info['skills']} skills in {sb.path}"))
    con.print(f"task {disc.get('task') or '?'}, source {disc.get('source') or '?'}, "
              f"{info['examples']} examples ({info['examples'] - info['labelled']} "
              f"unlabelled), embedder {info['embedder']}", highlight=False)


@skills_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="Skill name.")],
    k: Annotated[int, typer.Option("--k", help="Exemplars to show.")] = 3,
    query: Annotated[str | None, typer.Option(
        "--query", "-q", help="Show the exemplars nearest this text.")] = None,
    book: BookOpt = None,
) -> None:
    """Show one skill: description, statistics, members and exemplars."""
    from rich.markup import escape

    if k < 0:
        raise MetaskillError(f"--k must be >= 0, got {k}.")
    sb = _open_book(book)
    s = sb.get(name)
    con = Console()
    con.print(f"[bold]{escape(s.name)}[/]  ({s.source})")
    if s.description:
        con.print(escape(s.description))
    children = [c.name for c in sb.skills() if c.parent == s.name]
    con.print(f"examples {s.stats.n_examples}, accuracy {_pct(s.stats.accuracy)}, missing "
              f"rate {_pct(s.stats.missing_rate)}"
              + (f", parent {s.parent}" if s.parent else "")
              + (f", children {', '.join(children)}" if children else "")
              + (f", adapter {s.adapter}" if s.adapter else ""), highlight=False)
    if s.metadata.get("members"):
        con.print("merged names: " + ", ".join(s.metadata["members"]), highlight=False)
    for ex in sb.exemplars(name, k=k, query=query) if k else []:
        text = ex.text if len(ex.text) <= 300 else ex.text[:297] + "..."
        con.print(f"\n[dim]{escape(ex.id)}[/]\n{escape(text)}\n[green]-> "
                  f"{escape(str(ex.answer))}[/]")


@skills_app.command("profile")
def profile_cmd(
    task: Annotated[str, typer.Option("--task", "-t", help="Task name or task YAML file.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec to profile.")],
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="Teacher spec that names missing skills (default: none, the "
        "examples' own labels).")] = None,
    solver: Annotated[str, typer.Option(
        "--solver", "-s", help="zero-shot, k-shot, likelihood, or a solver JSON file.")
    ] = "zero-shot",
    k: Annotated[int | None, typer.Option("--k", help="Demonstrations for k-shot.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to profile on.")] = "dev",
    limit: Annotated[int | None, typer.Option(
        "--limit", "-n", help="Profile a seeded random subset of N examples.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subset.")] = 0,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the profile JSON here.")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write an HTML page with the profile chart.")] = None,
    book: BookOpt = None,
    no_book: Annotated[bool, typer.Option(
        "--no-book", help="Ignore the SkillBook; use the examples' own labels.")] = False,
    no_progress: ProgressOpt = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for llama.cpp (default: $METASKILL_THREADS, else all "
        "cores).")] = None,
) -> None:
    """Profile which skills a model lacks on a task's dev split, weakest first."""
    from metaskill.eval.solvers import load_solver, solver_from_name
    from metaskill.eval.store import RunStore
    from metaskill.skills.profile import (
        ProfileConfig,
        apply_to_book,
        build_profile,
        print_profile,
    )

    if limit is not None and limit < 1:
        raise MetaskillError(f"--limit must be >= 1, got {limit}.")
    the_task = _load_task(task)
    the_task.examples(split)
    sb = None
    if not no_book:
        path = _book_path(book)
        if book is not None or path.exists():
            sb = _open_book(book)
            held = (sb.info().get("discovery") or {}).get("task")
            if book is None and held not in (None, "", the_task.name):
                sb = None  # the default book belongs to another task
    from metaskill.cli.eval_cmds import ready_lm

    lm = ready_lm(_load_lm(model, threads))  # a model that cannot load leaves no run
    if Path(solver).suffix == ".json" or Path(solver).is_file():
        the_solver = load_solver(solver, lm=lm)
    else:
        if solver not in ("zero-shot", "k-shot", "likelihood"):
            raise MetaskillError(f"unknown solver '{solver}'; use zero-shot, k-shot, "
                                 "likelihood or a solver JSON file.")
        config: dict[str, Any] = {}
        if solver != "zero-shot":
            config["k"] = 4 if (k is None and solver == "k-shot") else (k or 0)
        elif k:
            raise MetaskillError("--k applies to k-shot and likelihood; use --solver k-shot.")
        the_solver = solver_from_name(solver, lm, task=the_task, **config)
    teacher_lm = _load_lm(teacher) if teacher else None
    cfg = ProfileConfig(split=split, limit=limit, seed=seed, progress=not no_progress)
    prof = build_profile(the_solver, the_task, book=sb, teacher=teacher_lm, config=cfg,
                         store=RunStore.default())
    con = Console()
    print_profile(prof, con)
    if sb is not None:
        n = apply_to_book(prof, sb)
        con.print(f"updated the statistics of {n} skills in {sb.path}", highlight=False)
    if out is not None:
        con.print(f"wrote {prof.save(out)}", highlight=False)
    if html is not None:
        from metaskill.eval.report import write_html
        from metaskill.skills.profile import profile_section_builder

        p = write_html([], html, sections=(profile_section_builder(prof),),
                       title=f"Missing-Skill Profile: {prof.task}")
        con.print(f"wrote {p}", highlight=False)
    con.print(f"run {prof.run_id} (see `metaskill runs show {prof.run_id}`)", highlight=False)


@skills_app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON file to write.")],
    vectors: Annotated[bool, typer.Option(
        "--vectors", help="Include the embeddings (no re-embedding on import).")] = False,
    book: BookOpt = None,
) -> None:
    """Export a SkillBook as schema-versioned JSON."""
    sb = _open_book(book)
    p = sb.export(out, include_vectors=vectors)
    print(f"wrote {p} ({len(sb)} skills, {len(sb.example_ids())} examples)")


@skills_app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A JSON file from `skills export`.")],
    book: BookOpt = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Overwrite an existing SkillBook.")] = False,
    no_progress: ProgressOpt = False,
) -> None:
    """Import a SkillBook exported on another machine."""
    from metaskill.core.readers import read_json
    from metaskill.skills.book import SkillBook

    if not file.exists():
        raise MetaskillError(f"SkillBook export not found: {file}")
    data = read_json(file, "SkillBook export", expect=dict)
    spec = data.get("embedder") or "minilm"
    path = _book_path(book)
    sb = SkillBook.from_json(data, path, embedder=_embedder(str(spec)), replace=replace,
                             progress=not no_progress)
    print(f"imported {len(sb)} skills and {len(sb.example_ids())} examples into {path}")


def register(app: typer.Typer) -> None:
    """Add the ``skills`` verb group to the metaskill command line."""
    app.add_typer(skills_app, name="skills")
