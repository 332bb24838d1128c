"""CLI verbs of the evaluation layer: ``eval``, ``runs ls|show|compare|rm``, ``report``.

Examples::

    metaskill eval --task sst2 --model local --solver k-shot --k 4 --limit 50
    metaskill eval --task compose -T depth=1 --model local  # a task loader option
    metaskill eval --resume 20261128-015905-1d19          # finish a killed run
    metaskill eval --task sst2 --model local --threads 1 --workers 2  # 2 Ray workers
    metaskill runs ls
    metaskill runs show 20261128-015905-1d19 --failures 5
    metaskill runs compare RUN_A RUN_B
    metaskill report RUN_A RUN_B --html report.html
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from metaskill.core.errors import MetaskillError

_BUILTIN_SOLVERS = ("zero-shot", "k-shot", "likelihood")

runs_app = typer.Typer(
    help="List, show, compare and delete stored evaluation runs.",
    no_args_is_help=True,
)

StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Run store SQLite file (default: $METASKILL_HOME/runs.sqlite).")]


WorkersOpt = Annotated[int, typer.Option(
    "--workers", help="Ray workers, each holding one replica of the model (1: this process, "
    "Ray unused; more needs pip install 'metaskill[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="A running Ray cluster (HOST:6379 or ray://HOST:10001) for the "
    "workers; default: a local one on this machine.")]


def check_workers(workers: int, address: str | None) -> bool:
    """Whether ``--workers``/``--ray-address`` ask for Ray; a one-line error when Ray is
    not installed (checked before any model loads)."""
    if workers < 1:
        raise MetaskillError(f"--workers must be >= 1, got {workers}.")
    if workers == 1 and not address:
        return False
    from metaskill.distributed.executor import require_ray

    require_ray()
    return True


def executor_for(workers: int, address: str | None, spec: str, *, threads: int | None = None,
                 cache: bool = True) -> Any:
    """A context manager giving the ``executor`` that ``--workers``/``--ray-address`` ask
    for: None (this process; Ray never imported) for 1 worker and no address, else a pool
    of Ray workers each loading ``spec`` (:mod:`metaskill.distributed`)."""
    import contextlib

    if not check_workers(workers, address):
        return contextlib.nullcontext(None)
    from metaskill.distributed.executor import make_executor

    say = Console(stderr=True).print
    return make_executor(workers, address, lm=spec, threads=threads, cache=cache,
                         log=lambda line: say(line, highlight=False))


def _store(path: Path | None) -> Any:
    from metaskill.eval.store import RunStore

    return RunStore(path) if path is not None else RunStore.default()


def _load_task(name: str, options: list[str] | None = None) -> Any:
    from metaskill.cli.tasks_cmds import _parse_options

    parsed = _parse_options(options)  # a malformed option fails before anything loads
    try:
        from metaskill.tasks import get_task
    except ImportError as e:  # the task layer is not installed in this tree
        raise MetaskillError(f"cannot load tasks: {e}.") from e
    return get_task(name, **parsed)


def _load_lm(spec: str, cache: bool = True, threads: int | None = None) -> Any:
    from metaskill.core.settings import Settings
    from metaskill.lm import load_lm

    if threads is not None and not spec.startswith(("local", "gguf:", "hf:")):
        raise MetaskillError("--threads applies to local models (local, gguf:PATH, hf:PATH).")
    return load_lm(spec, cache=cache, settings=Settings.from_env(threads=threads))


def ready_lm(lm: Any) -> Any:
    """``lm`` with its weights loaded now, before any run is created for it.

    llama.cpp models load on first use; without this a model that cannot load would fail
    inside the harness and leave an empty ``failed`` run in the store.
    """
    getattr(lm, "llm", None)  # LlamaLM.llm loads the model (MetaskillError if it can't)
    return lm


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise MetaskillError(f"{name} must be >= {minimum}, got {value}.")


def _build_solver(
    solver: str, lm: Any, task: Any, k: int | None, demo_seed: int, fmt: str
) -> Any:
    from metaskill.eval.solvers import load_solver, solver_from_name

    if solver.endswith(".json") or Path(solver).is_file():
        if k is not None:
            raise MetaskillError("--k does not apply to a solver loaded from JSON.")
        return load_solver(solver, lm=lm)
    if solver not in _BUILTIN_SOLVERS:
        import difflib

        close = difflib.get_close_matches(solver, _BUILTIN_SOLVERS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise MetaskillError(
            f"unknown solver '{solver}'.{hint} Use one of {', '.join(_BUILTIN_SOLVERS)} "
            "or a solver JSON file."
        )
    config: dict[str, Any] = {"format": fmt}
    if solver == "zero-shot":
        if k:
            raise MetaskillError("--k applies to the k-shot and likelihood solvers; "
                                 "use --solver k-shot.")
    else:
        config["k"] = 4 if (k is None and solver == "k-shot") else (k or 0)
        config["seed"] = demo_seed
    return solver_from_name(solver, lm, task=task, **config)


def eval_cmd(
    task: Annotated[str | None, typer.Option(
        "--task", "-t", help="Task name (see `metaskill tasks ls`).")] = None,
    task_option: Annotated[list[str] | None, typer.Option(
        "--task-option", "-T", help="Task loader option KEY=VALUE (repeatable), e.g. -T "
        "depth=1; --resume needs the same ones again (a run stores only the task name).")
                           ] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model spec: local, local:gemma3-270m, gguf:PATH, "
        "openai:MODEL@URL, fake.")] = None,
    solver: Annotated[str, typer.Option(
        "--solver", "-s", help="zero-shot, k-shot, likelihood, or a solver JSON file.",
    )] = "zero-shot",
    k: Annotated[int | None, typer.Option(
        "--k", help="Demonstrations (k-shot: default 4; likelihood: default 0).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate.")] = "test",
    limit: Annotated[int | None, typer.Option(
        "--limit", "-n", help="Evaluate a seeded random subset of N examples.")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the subset and of the demo draw.")] = 0,
    demo_seed: Annotated[int | None, typer.Option(
        "--demo-seed", help="Seed of the demo draw (default: --seed).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="Prompt format: auto, chat or completion.")] = "auto",
    resume: Annotated[str | None, typer.Option(
        "--resume", help="Finish a stored run, skipping finished examples.")] = None,
    max_errors: Annotated[int | None, typer.Option(
        "--max-errors", help="Stop once more examples than this have failed.")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Examples per LM call and per store commit.")] = 16,
    save_solver_to: Annotated[Path | None, typer.Option(
        "--save-solver", help="Also write the solver's JSON here.")] = None,
    failures: Annotated[int, typer.Option(
        "--failures", help="Print this many failed examples.")] = 0,
    store_path: StoreOpt = None,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="Hide the progress bar.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the LM cache.")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads of a llama.cpp model (default: all cores; use 1 on "
        "a machine busy with other jobs).")] = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
) -> None:
    """Evaluate a solver on a task split; print the run id, accuracy, per-skill table, cost."""
    from metaskill.eval.harness import evaluate
    from metaskill.eval.report import print_run
    from metaskill.eval.solvers import load_solver, save_solver
    from metaskill.eval.store import new_run_id

    _positive("--limit", limit)
    _positive("--batch-size", batch_size)
    _positive("--max-errors", max_errors, minimum=0)
    _positive("--k", k, minimum=0)
    _positive("--threads", threads)
    if fmt not in ("auto", "chat", "completion"):
        raise MetaskillError(f"--format must be auto, chat or completion, got '{fmt}'.")
    out = Console()
    store = _store(store_path)
    check_workers(workers, ray_address)

    if resume is not None:
        prev = store.get(resume, records=False)
        if task is not None and task != prev.task:
            raise MetaskillError(f"run {prev.id} evaluated task '{prev.task}', not '{task}'.")
        task_obj = _load_task(prev.task, task_option)
        spec = model or prev.model
        if not spec:
            raise MetaskillError(f"run {prev.id} names no model; pass --model.")
        lm = ready_lm(_load_lm(spec, cache=not no_cache, threads=threads))
        solver_obj = load_solver(prev.solver, lm=lm)
        split, run_id = prev.split, prev.id
        out.print(f"resuming run [bold]{prev.id}[/] ({prev.totals.n}/{len(prev.selection)} "
                  "done)", highlight=False, soft_wrap=True)
    else:
        if task is None or model is None:
            raise MetaskillError("eval needs --task and --model (or --resume RUN).")
        task_obj = _load_task(task, task_option)
        task_obj.examples(split)  # a missing or empty split fails before the model loads
        lm = ready_lm(_load_lm(model, cache=not no_cache, threads=threads))
        solver_obj = _build_solver(solver, lm, task_obj, k,
                                   seed if demo_seed is None else demo_seed, fmt)
        run_id = new_run_id()
        again = "".join(f" -T {shlex.quote(o)}" for o in task_option or [])
        out.print(f"run [bold]{run_id}[/]  (if stopped, finish it with: metaskill eval "
                  f"--resume {run_id}{escape(again)})", highlight=False, soft_wrap=True)
    if save_solver_to is not None:
        save_solver(solver_obj, save_solver_to)
    pool = executor_for(workers, ray_address, lm.spec, threads=threads, cache=not no_cache)
    try:
        with pool as executor:
            run = evaluate(
                solver_obj, task_obj, split, limit=limit, seed=seed, store=store,
                resume=run_id if resume is not None else None, batch_size=batch_size,
                max_errors=max_errors, progress=not no_progress, run_id=run_id,
                executor=executor,
            )
    finally:
        close = getattr(lm, "close", None)
        if callable(close):
            close()
    print_run(run, out, failures=failures)


@runs_app.command("ls")
def runs_ls(
    task: Annotated[str | None, typer.Option(
        "--task", "-t", help="Only runs of this task.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many runs.")] = 50,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print JSON lines instead of a table.")] = False,
    store_path: StoreOpt = None,
) -> None:
    """List stored runs, newest first."""
    from metaskill.eval.report import runs_table

    runs = _store(store_path).list(task=task, limit=limit)
    if as_json:
        for r in runs:
            print(json.dumps({"id": r.id, "task": r.task, "split": r.split, "solver": r.label,
                              "model": r.model, "status": r.status, "n": r.n,
                              "accuracy": r.accuracy, "interval": list(r.interval),
                              "tokens": r.totals.tokens, "wall_s": r.totals.wall_s}))
        return
    if not runs:
        Console().print("no runs yet: start one with `metaskill eval --task T --model SPEC`.")
        return
    Console().print(runs_table(runs))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="Run id (or a unique prefix).")],
    failures: Annotated[int, typer.Option(
        "--failures", help="Print this many failed examples.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole run as JSON.")] = False,
    store_path: StoreOpt = None,
) -> None:
    """Show one run: accuracy with interval, per-skill table, tokens, failed examples."""
    from metaskill.eval.report import print_run

    run = _store(store_path).get(run_id)
    if as_json:
        data = run.model_dump(mode="json")
        data["accuracy"], data["interval"] = run.accuracy, list(run.interval)
        data["per_skill"] = [s.model_dump() | {"accuracy": s.accuracy} for s in run.per_skill]
        print(json.dumps(data, ensure_ascii=False))
        return
    print_run(run, Console(), failures=failures)


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(metavar="RUN...", help="Two or more run ids.")],
    store_path: StoreOpt = None,
) -> None:
    """Compare runs of one task: accuracy per skill and the delta against the first run."""
    from metaskill.eval.report import comparison_table, runs_table

    cmp = _store(store_path).compare(run_ids)
    con = Console()
    con.print(runs_table(cmp.runs))
    con.print(comparison_table(cmp))
    if cmp.shared_examples < max(r.n for r in cmp.runs):
        con.print(f"note: the runs share {cmp.shared_examples} examples; deltas on "
                  "different examples are less certain.", highlight=False)


@runs_app.command("rm")
def runs_rm(
    run_ids: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run ids to delete.")],
    store_path: StoreOpt = None,
) -> None:
    """Delete runs and their records."""
    store = _store(store_path)
    ids = [store.resolve(r) for r in run_ids]  # all must exist before anything is deleted
    for rid in ids:
        store.delete(rid)
        print(f"deleted {rid}")


def report_cmd(
    run_ids: Annotated[list[str], typer.Argument(metavar="RUN...", help="Run ids to report.")],
    html_path: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report.")] = None,
    store_path: StoreOpt = None,
) -> None:
    """Print a terminal table of runs and optionally write one self-contained HTML report."""
    from metaskill.eval.report import runs_table, skills_table, write_html

    store = _store(store_path)
    runs = [store.get(r) for r in run_ids]
    con = Console()
    con.print(runs_table(runs))
    if len(runs) > 1 and len({r.task for r in runs}) == 1:
        from metaskill.eval.report import comparison_table

        con.print(comparison_table(store.compare([r.id for r in runs])))
    else:
        for r in runs:
            if r.per_skill:
                con.print(skills_table(r))
    if html_path is not None:
        p = write_html(runs, html_path)
        con.print(f"wrote {p} ({p.stat().st_size / 1024:.0f} KiB)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``eval``, ``runs`` and ``report`` to the metaskill command line."""
    app.command("eval")(eval_cmd)
    app.command("report")(report_cmd)
    app.add_typer(runs_app, name="runs")
