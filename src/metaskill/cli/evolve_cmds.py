"""CLI verbs of the archive search: ``evolve archive`` (resumable) and ``evolve show``.

Registered by :mod:`metaskill.cli.train_cmds` under the ``evolve`` verb group, next to
``evolve self`` (SELF rounds). Examples::

    metaskill evolve archive --task sst2 --model local --budget-calls 2000 --out runs/arch
    metaskill evolve archive --out runs/arch --budget-calls 4000   # resume, larger budget
    metaskill evolve show runs/arch --html runs/arch/archive.html
    metaskill evolve judge runs/mpo/judge --full   # an evolving judge's rubric versions

``evolve archive`` also writes the archive page (:mod:`metaskill.evolve.report`: the tree,
best dev score against LM calls, each mutation kind's valid and improving shares) to
``OUT/archive.html`` when it ends; ``evolve show --html`` writes it anywhere, at any time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from metaskill.cli.eval_cmds import RayAddressOpt, WorkersOpt, check_workers, executor_for
from metaskill.cli.tasks_cmds import _parse_options as task_options
from metaskill.core.errors import MetaskillError

#: Options that may change when an archive is resumed (its budget).
_BUDGET = ("budget_calls", "budget_tokens", "budget_seconds", "max_children")


def _run_args(out: Path, given: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The run's arguments (given now, or stored in ``run.json``) and whether it resumes."""
    path = out / "run.json"
    stored = None
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise MetaskillError(f"cannot read {path}: {e}.") from None
    if given.get("task") is None:
        if stored is None:
            raise MetaskillError(f"--task is required (no archive to resume in '{out}').")
        args = {**stored, **{k: given[k] for k in _BUDGET if given.get(k) is not None}}
    else:
        if stored is not None:
            diff = sorted(k for k in given if k not in _BUDGET and stored.get(k) != given[k])
            if diff:
                raise MetaskillError(
                    f"'{out}' holds an archive made with different {', '.join(diff)}; use "
                    "another --out, or give only --out (and a budget) to resume it.")
        args = {**(stored or {}), **{k: v for k, v in given.items() if v is not None}}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(args, indent=1))
    tmp.replace(path)
    return args, stored is not None


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def archive_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder (archive.sqlite, cache, "
                                      "best.json); an archive there is resumed.")],
    task: Annotated[str | None, typer.Option(
        "--task", "-t", help="Task name (see `metaskill tasks ls`).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model spec of every Solver (local, gguf:PATH, "
        "openai:MODEL@URL, fake); default local.")] = None,
    mutator: Annotated[str | None, typer.Option(
        "--mutator", help="Model spec of the mutator LM that proposes self-modifications "
        "(default: the same model).")] = None,
    budget_calls: Annotated[int | None, typer.Option(
        "--budget-calls", help="Stop once the archive has spent this many LM calls.")] = None,
    budget_tokens: Annotated[int | None, typer.Option(
        "--budget-tokens", help="Stop once it has spent this many tokens.")] = None,
    budget_seconds: Annotated[float | None, typer.Option(
        "--budget-seconds", help="Stop once it has run this many seconds.")] = None,
    max_children: Annotated[int | None, typer.Option(
        "--max-children", help="Stop after this many children (default 20).")] = None,
    selection: Annotated[str | None, typer.Option(
        "--selection", help="Parent selection: dgm (default), greedy or random.")] = None,
    keep: Annotated[str | None, typer.Option(
        "--keep", help="all (default: every valid child may be a parent) or better.")] = None,
    mutations: Annotated[str | None, typer.Option(
        "--mutations", help="Mutation kinds, comma-separated (default: every registered "
        "one).")] = None,
    methods: Annotated[str | None, typer.Option(
        "--methods", help="Methods a chain may hold, comma-separated (default: knn_demos, "
        "raml, dynaicl, self_consistency, self_refine).")] = None,
    stage_size: Annotated[int | None, typer.Option(
        "--stage-size", help="Dev examples of the first evaluation stage (default 10).")
                          ] = None,
    margin: Annotated[float | None, typer.Option(
        "--margin", help="A child gets the full dev set within this of its parent's small-"
        "stage score (default 0.1).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Search seed (default 0).")
                    ] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Task loader option KEY=VALUE (repeatable).")] = None,
    limit_train: Annotated[int | None, typer.Option(
        "--limit-train", help="Use only the first N train examples.")] = None,
    limit_dev: Annotated[int | None, typer.Option(
        "--limit-dev", help="Use only the first N dev examples.")] = None,
    embedder: Annotated[str | None, typer.Option(
        "--embedder", help="Embedder spec for retrieval methods: minilm, hash:DIM.")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Prompt format of the root zero-shot Solver: auto, chat, "
        "completion.")] = None,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="No line per child on stderr.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for llama.cpp (default: $METASKILL_THREADS, else "
        "all cores).")] = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
) -> None:
    """Grow an archive of Solvers (Darwin Gödel Machine style) and save the best on dev.

    With ``--workers N`` each child's dev examples are scored on N Ray workers (children
    are still made one after another, and the chains' methods fit here).
    """
    check_workers(workers, ray_address)
    given: dict[str, Any] = {
        "task": task, "options": task_options(option) if task else None, "model": model,
        "mutator": mutator, "budget_calls": budget_calls, "budget_tokens": budget_tokens,
        "budget_seconds": budget_seconds, "max_children": max_children,
        "selection": selection, "keep": keep, "mutations": _names(mutations),
        "methods": _names(methods), "stage_size": stage_size, "margin": margin, "seed": seed,
        "limit_train": limit_train, "limit_dev": limit_dev, "embedder": embedder,
        "format": fmt}
    if task is not None:
        given = {**{"model": "local", "embedder": "minilm", "format": "auto",
                    "max_children": 20}, **{k: v for k, v in given.items() if v is not None}}
    args, resumed = _run_args(out, given)
    _archive_run(out, args, resumed, threads, not no_progress, (workers, ray_address))


def _config(args: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from metaskill.evolve.archive import EvolveConfig

    fields = {"selection": args.get("selection"), "keep": args.get("keep"),
              "mutations": args.get("mutations"), "methods": args.get("methods"),
              "stage_size": args.get("stage_size"), "margin": args.get("margin"),
              "seed": args.get("seed"), "max_children": args.get("max_children"),
              "max_calls": args.get("budget_calls"), "max_tokens": args.get("budget_tokens"),
              "max_seconds": args.get("budget_seconds")}
    try:
        return EvolveConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise MetaskillError(f"bad evolve setting '{loc}': {err['msg']}.") from None


def _archive_run(out: Path, args: dict[str, Any], resumed: bool, threads: int | None,
                 progress: bool, pool: tuple[int, str | None] = (1, None)) -> None:
    from metaskill.core.settings import Settings
    from metaskill.eval.solvers import ZeroShot, save_solver
    from metaskill.evolve.archive import evolve
    from metaskill.evolve.mutations import MUTATIONS
    from metaskill.lm import load_lm
    from metaskill.lm.cache import Cache
    from metaskill.methods.base import MethodResources
    from metaskill.methods.compose import parse_method_list
    from metaskill.tasks import get_task

    config = _config(args)
    for name in config.mutations:
        MUTATIONS.get(name)  # an unknown kind: one line naming close matches
    if config.methods:
        parse_method_list(",".join(config.methods))
    if args.get("format") not in ("auto", "chat", "completion"):
        raise MetaskillError(f"--format must be auto, chat or completion, got "
                             f"'{args.get('format')}'.")
    settings = Settings.from_env(threads=threads)
    task = get_task(args["task"], **(args.get("options") or {}))
    train = list(task.examples("train"))[: args.get("limit_train")]
    if not task.splits.get("dev"):
        raise MetaskillError(f"task '{task.name}' has no dev split to select on.")
    dev = list(task.examples("dev"))[: args.get("limit_dev")]
    console = Console(stderr=True)
    cache = Cache(out / "cache.sqlite")
    lm = load_lm(args["model"], cache=cache, settings=settings)
    mut = args.get("mutator")
    mutator_lm = load_lm(mut, cache=cache, settings=settings) if mut and mut != args[
        "model"] else lm
    resources = MethodResources(embedder_spec=args.get("embedder") or "minilm",
                                settings=settings, work_dir=out / "adapters")
    if resumed:
        console.print(f"resuming the archive in {out}", highlight=False)
    try:
        with executor_for(*pool, lm.spec, threads=threads) as executor:
            archive = evolve(ZeroShot(lm, format=args.get("format") or "auto"), task, train,
                             dev, config, out=out, resources=resources, mutator=mutator_lm,
                             log=(lambda line: console.print(
                                 line, highlight=False, markup=False, soft_wrap=True))
                             if progress else None, executor=executor)
        best = archive.best_node()
        path = save_solver(archive.best(), out / "best.json")
    finally:
        for m in {id(lm): lm, id(mutator_lm): mutator_lm}.values():
            close = getattr(m, "close", None)
            if callable(close):
                close()
    nodes = archive.nodes()
    counts = {s: sum(n.status == s for n in nodes[1:]) for s in ("valid", "pruned", "invalid")}
    spend = archive.spend()
    con = Console()
    con.print(f"archive of {task.name} in {out}: {len(nodes)} nodes (root + "
              f"{counts['valid']} valid, {counts['pruned']} pruned, {counts['invalid']} "
              f"invalid children)", highlight=False, soft_wrap=True)
    con.print(f"spent: {spend.line()}", highlight=False, soft_wrap=True, markup=False)
    con.print(f"best: node {best.id}, dev {best.score:.3f} on {best.n_scored} (root "
              f"{nodes[0].score:.3f}): {best.recipe.describe()}", highlight=False,
              soft_wrap=True, markup=False)
    con.print(f"best Solver ({archive.best().kind}) saved to {path}; evaluate it with: "
              f"metaskill eval --task {task.name} --model {args['model']} --solver {path}",
              highlight=False, soft_wrap=True, markup=False)
    page = _write_page(archive, out / "archive.html", console)
    if page is not None:
        con.print(f"archive page: {page}", highlight=False, soft_wrap=True, markup=False)


def _write_page(archive: Any, path: Path, console: Console) -> Path | None:
    """Write the archive page; without matplotlib (the ``report`` extra) say so and go on."""
    from metaskill.evolve.report import write_archive_html

    try:
        return write_archive_html(archive, path)
    except MetaskillError as e:
        if "matplotlib" not in str(e):
            raise
        console.print(f"notice: no archive page written: {e}", highlight=False, markup=False)
        return None


def show_cmd(
    out: Annotated[Path, typer.Argument(help="Run folder of `metaskill evolve archive`.")],
    html_path: Annotated[Path | None, typer.Option(
        "--html", help="Also write the archive page (tree coloured by dev score, best dev "
        "score against LM calls, mutation kinds' valid and improving shares) to this "
        "self-contained HTML file.")] = None,
) -> None:
    """Print an archive's tree (scores, statuses, mutations) and its best path."""
    from rich.markup import escape
    from rich.tree import Tree

    from metaskill.evolve.archive import ARCHIVE_FILE, Archive

    if not (out / ARCHIVE_FILE).is_file():
        raise MetaskillError(f"'{out}' holds no archive ({ARCHIVE_FILE}); make one with "
                             "`metaskill evolve archive --out DIR`.")
    archive = Archive(out)
    nodes = archive.nodes()
    if not nodes:
        raise MetaskillError(f"the archive in '{out}' has no node yet.")
    try:
        best = archive.best_node()
        on_path = {n.id for n in archive.path_to(best.id)}
    except MetaskillError:
        best, on_path = None, set()

    def label(n: Any) -> str:
        score = f"dev {n.score:.3f} (n={n.n_scored})" if n.score is not None else "no score"
        text = (f"#{n.id} {escape(f'[{n.kind}]')} {escape(n.description or '')} -- {score}, "
                f"{n.lm_calls} calls")
        if n.status == "invalid":
            return f"[red]{text} INVALID: {escape(n.reason)}[/]"
        if n.status == "pruned":
            return f"[dim]{text} pruned: {escape(n.reason)}[/]"
        if n.id in on_path:
            return f"[bold green]{text}{' * best' if best and n.id == best.id else ''}[/]"
        return text

    tree = Tree(label(nodes[0]))
    branches = {nodes[0].id: tree}
    for n in nodes[1:]:
        branches[n.id] = branches.get(n.parent, tree).add(label(n))
    con = Console()
    con.print(tree)
    con.print(f"spent: {archive.spend().line()}", highlight=False, markup=False,
              soft_wrap=True)
    if best is not None:
        con.print("best path:", highlight=False)
        for n in archive.path_to(best.id):
            con.print(f"  #{n.id} dev {n.score:.3f} (n={n.n_scored}) {n.recipe.describe()}",
                      highlight=False, markup=False, soft_wrap=True)
    if html_path is not None:
        from metaskill.evolve.report import write_archive_html

        con.print(f"archive page: {write_archive_html(archive, html_path)}",
                  highlight=False, markup=False, soft_wrap=True)


def judge_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of an evolving judge (rubrics.jsonl).")],
    full: Annotated[bool, typer.Option("--full", help="Also print each version's rubric.")
                    ] = False,
) -> None:
    """List an evolving judge's rubric versions (MPO) and why each changed."""
    from metaskill.evolve.judge import show

    Console().print(show(folder, full=full), highlight=False, markup=False, soft_wrap=True)


__all__ = ["archive_cmd", "judge_cmd", "show_cmd"]
