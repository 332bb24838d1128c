"""CLI verbs of the methods layer: ``metaskill adapt`` and ``metaskill methods ls|show``.

Examples::

    metaskill methods ls
    metaskill methods show dynaicl
    metaskill adapt --task sst2 --model local --method knn_demos --k 4 --out knn.json
    metaskill adapt --task sst2 --model local --method knn_demos,self_refine --out kr.json
    metaskill adapt --task sst2 --model local --method dynaicl --budget-tokens 120 \\
        -o dynaicl.max_train_probe=40 --out dyn.json
    metaskill eval --task sst2 --model local --solver knn.json

``adapt`` fits the methods in order on the task's ``train`` split, selects on ``dev``,
writes the adapted Solver's JSON to ``--out`` and prints each method's fit report
(compile tokens, LM calls, dev accuracy). ``--report-json`` also keeps the full reports.
It also scores the Solver it was given (zero-shot) on the same dev examples, shows both
dev scores, and says in one line when the adapted Solver does not beat it (the paired-
bootstrap 95% interval of the gain holds zero or lies below it); ``--keep-best`` then
saves the given Solver instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from metaskill.core.errors import MetaskillError, MethodError
from metaskill.core.settings import Settings

methods_app = typer.Typer(help="List the adaptation methods and their options.",
                          no_args_is_help=True)


@methods_app.command("ls")
def methods_ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List every registered method, whether it is available, and what it does."""
    from metaskill.methods import METHODS, method_available

    rows = []
    for name in METHODS.names():
        ok, text = method_available(name)
        rows.append({"name": name, "available": ok, "description": text})
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table(title="methods (metaskill adapt --method NAME[,NAME...])")
    table.add_column("method", style="bold")
    table.add_column("description")
    for r in rows:
        table.add_row(r["name"], r["description"] if r["available"]
                      else f"[red]{r['description']}[/]")
    Console().print(table)


@methods_app.command("show")
def methods_show(
    name: Annotated[str, typer.Argument(help="Method name (see `metaskill methods ls`).")],
) -> None:
    """Show a method's options: name, type, default and meaning (for -o METHOD.FIELD=V)."""
    from metaskill.methods import METHODS
    from metaskill.methods.compose import config_class

    cls = METHODS.get(name)
    con = Console()
    doc = (cls.__doc__ or "").strip()
    con.print(f"[bold]{name}[/]: {doc}", highlight=False)
    module_doc = (__import__(cls.__module__, fromlist=["_"]).__doc__ or "").strip()
    if module_doc:
        con.print(module_doc.split("\n\n")[0], highlight=False)
    cfg = config_class(cls)
    if cfg is None:
        con.print("no options")
        return
    table = Table(title=f"options of {name} (-o {name}.FIELD=VALUE)")
    for col in ("option", "type", "default", "meaning"):
        table.add_column(col)
    for field, info in cfg.model_fields.items():
        default = info.get_default(call_default_factory=True)
        ann = info.annotation
        type_name = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        table.add_row(field, type_name, repr(default),
                      info.description or "")
    con.print(table)


def _parse_options(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``["dynaicl.ks=[0,2,4]", "knn_demos.balanced=true"]`` -> per-method option dicts."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise MetaskillError(
                f"bad option '{item}': write METHOD.FIELD=VALUE, e.g. dynaicl.max_dev=50."
            )
        key, raw = item.split("=", 1)
        method, field = key.split(".", 1)
        if method not in methods:
            raise MetaskillError(f"option '{item}' is for '{method}', which is not in "
                                 f"--method ({', '.join(methods)}).")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.setdefault(method, {})[field] = value
    return out


def _resources(methods: list[str], embedder_spec: str, skills: Path | None,
               teacher: str | None, progress: bool, settings: Settings | None = None,
               profile: Path | None = None) -> Any:
    from metaskill.methods.base import MethodResources
    from metaskill.skills.embed import EmbeddingCache, load_embedder

    settings = settings or Settings.from_env()
    home = settings.home
    embedder = load_embedder(embedder_spec, cache=EmbeddingCache(home / "embeddings.sqlite"))
    book = None
    skill_methods = {"skill_demos", "adaptmi"} & set(methods)
    path = skills if skills is not None else Settings.from_env().skills_path
    if skills is not None and not skills.exists():
        raise MethodError(f"{', '.join(sorted(skill_methods)) or 'adapt'}: no SkillBook at "
                          f"{skills}; run `metaskill skills discover --task TASK` first.")
    if skill_methods and path.exists():
        from metaskill.skills.book import SkillBook

        book = SkillBook(path, embedder=embedder)
    teacher_lm = None
    if teacher is not None:
        from metaskill.lm import load_lm

        teacher_lm = load_lm(teacher, settings=settings)
    if profile is not None and not profile.is_file():
        raise MethodError(f"profile file '{profile}' does not exist (build one with "
                          "`metaskill skills profile`).")
    return MethodResources(embedder=embedder, embedder_spec=embedder_spec, skillbook=book,
                           teacher=teacher_lm, progress=progress, settings=settings,
                           profile=profile,
                           log=(lambda line: Console(stderr=True).print(line, highlight=False))
                           if progress else None)


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else ("-" if x is None else str(x))


def adapt_cmd(
    task: Annotated[str, typer.Option("--task", "-t", help="Task name (metaskill tasks ls).")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Model spec: local, local:gemma3-270m, gguf:PATH, "
        "openai:MODEL@URL, fake.")],
    method: Annotated[str, typer.Option(
        "--method", help="Method(s), comma- or '+'-separated, applied in order, parametric "
        "ones (sft, stat, self_evolve) first (metaskill methods ls).")],
    out: Annotated[Path, typer.Option("--out", help="Write the adapted Solver's JSON here.")],
    budget_tokens: Annotated[float | None, typer.Option(
        "--budget-tokens", help="Average prompt tokens per input, for methods with a "
        "budget (dynaicl).")] = None,
    k: Annotated[int | None, typer.Option(
        "--k", help="Demos per input, for methods that take k.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for methods that take one.")
                    ] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="METHOD.FIELD=VALUE (repeatable); see `methods show`.")] = None,
    task_option: Annotated[list[str] | None, typer.Option(
        "--task-option", "-T", help="Task loader option KEY=VALUE (repeatable), e.g. -T "
        "depth=1.")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="Prompt format of the base Solver: auto, chat or completion "
        "(knn_demos and raml choose theirs on dev unless -o METHOD.format_candidates=null).")
                   ] = "auto",
    train_split: Annotated[str, typer.Option("--train-split", help="Split to fit on.")
                           ] = "train",
    dev_split: Annotated[str, typer.Option("--dev-split", help="Split to select on.")] = "dev",
    limit_train: Annotated[int | None, typer.Option(
        "--limit-train", help="Use only the first N train examples.")] = None,
    limit_dev: Annotated[int | None, typer.Option(
        "--limit-dev", help="Use only the first N dev examples.")] = None,
    embedder: Annotated[str, typer.Option(
        "--embedder", help="Embedder spec: minilm, hash:DIM, st:PATH.")] = "minilm",
    skills: Annotated[Path | None, typer.Option(
        "--skills", "--book", help="SkillBook for skill_demos/adaptmi (default: "
        "$METASKILL_HOME/skills.sqlite if it exists).")] = None,
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="Teacher/critic model spec, for methods that use one.")] = None,
    report_json: Annotated[Path | None, typer.Option(
        "--report-json", help="Also write every method's full fit report as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write dynaicl's dev accuracy-vs-prompt-tokens curve (fixed k, "
        "oracle, the controller's budgets) as an SVG file here.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")
                           ] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the LM cache.")] = False,
    keep_best: Annotated[bool, typer.Option(
        "--keep-best/--no-keep-best", help="Save the Solver adapt was given (zero-shot) "
        "instead of the adapted one when the adapted one does not beat it on dev (paired-"
        "bootstrap 95% interval); the warning is shown either way.")] = False,
    profile: Annotated[Path | None, typer.Option(
        "--profile", help="Missing-Skill Profile JSON, for stat (`metaskill skills "
        "profile`).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for llama.cpp and torch (default: "
        "$METASKILL_THREADS, else all cores).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="Ray workers for dev scoring (knn_demos and dynaicl candidates, "
        "the given-vs-adapted check), each holding one replica of the model (1: this "
        "process, Ray unused; more needs pip install 'metaskill[ray]').")] = 1,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="A running Ray cluster (HOST:6379 or ray://HOST:10001) for "
        "the workers; default: a local one.")] = None,
) -> None:
    """Fit methods on a task's train split (selecting on dev) and save the adapted Solver."""
    from metaskill.cli.eval_cmds import check_workers, executor_for
    from metaskill.cli.tasks_cmds import _parse_options as task_options
    from metaskill.eval.solvers import ZeroShot, save_solver
    from metaskill.lm import load_lm
    from metaskill.methods.base import MethodResources
    from metaskill.methods.compose import fit_chain, parse_method_list
    from metaskill.tasks import get_task

    names = parse_method_list(method)
    per_method = _parse_options(option or [], names)
    task_opts = task_options(task_option)
    for name, value in (("--k", k), ("--limit-train", limit_train), ("--limit-dev", limit_dev)):
        if value is not None and value < (0 if name == "--k" else 1):
            raise MetaskillError(f"{name} must be >= {0 if name == '--k' else 1}, got {value}.")
    if budget_tokens is not None and budget_tokens <= 0:
        raise MetaskillError(f"--budget-tokens must be > 0, got {budget_tokens}.")
    if fmt not in ("auto", "chat", "completion"):
        raise MetaskillError(f"--format must be auto, chat or completion, got '{fmt}'.")
    if out.exists() and out.is_dir():
        raise MetaskillError(f"--out {out} is a folder; give a file path like solver.json.")
    check_workers(workers, ray_address)
    task_obj = get_task(task, **task_opts)
    train = list(task_obj.examples(train_split))[:limit_train]
    dev = list(task_obj.examples(dev_split))[:limit_dev]
    if budget_tokens is not None and "dynaicl" not in names:
        raise MethodError(f"--budget-tokens applies to dynaicl, which is not in --method "
                          f"({', '.join(names)}).")
    if plot is not None and "dynaicl" not in names:
        raise MethodError(f"--plot draws dynaicl's accuracy-vs-tokens curve; dynaicl is not "
                          f"in --method ({', '.join(names)}).")
    shared = {"k": k, "seed": seed}
    settings = Settings.from_env(threads=threads)
    resources = _resources(names, embedder, skills, teacher, not no_progress, settings,
                           profile)
    from metaskill.methods.compose import build_method

    methods = [build_method(n, per_method.get(n), resources,
                            shared={**shared, "budget_tokens": budget_tokens})
               for n in names]  # every option checked before the model loads
    lm = load_lm(model, cache=not no_cache, settings=settings)
    con = Console()
    t0 = time.perf_counter()
    try:
        with executor_for(workers, ray_address, lm.spec, threads=threads,
                          cache=not no_cache) as executor:
            resources.executor = executor  # the methods above share this resources object
            check = None if executor is None else MethodResources(executor=executor)
            result = fit_chain(ZeroShot(lm, format=fmt), task_obj, train, dev, methods,
                               check_input=True, keep_best=keep_best, resources=check)
        path = save_solver(result.solver, out)
    finally:
        close = getattr(lm, "close", None)
        if callable(close):
            close()
    wall = time.perf_counter() - t0

    table = Table(title=f"adapt {task} ({len(train)} train, {len(dev)} dev) on {model}")
    for col in ("method", "prompt tokens", "completion tokens", "LM calls", "dev accuracy"):
        table.add_column(col)
    check = result.check
    rows = [(name, rep, rep.notes.get("dev_accuracy"))
            for name, rep in zip(result.methods, result.reports, strict=True)]
    if check is not None:  # both Solvers scored on all the same dev examples
        rows = [(f"given: {check.given_kind}", check.given_report, check.given_accuracy),
                *rows,
                (f"adapted: {check.adapted_kind}", check.adapted_report,
                 check.adapted_accuracy)]
    for name, rep, acc in rows:
        table.add_row(name, str(rep.usage.prompt_tokens), str(rep.usage.completion_tokens),
                      str(rep.lm_calls), _fmt(acc))
    con.print(table)
    if check is None:
        con.print("no dev examples: the adapted Solver was not compared with the one adapt "
                  "was given.", highlight=False, soft_wrap=True)
    else:
        line = check.summary("+".join(result.methods))
        con.print(line if check.beats else f"[yellow]{line}[/]", highlight=False,
                  soft_wrap=True)
    for name, rep in zip(result.methods, result.reports, strict=True):
        details = {key: rep.notes[key] for key in _DETAIL_KEYS.get(name, ())
                   if key in rep.notes}
        if details:
            con.print(f"{name}: " + ", ".join(f"{a}={_fmt(b)}" for a, b in details.items()),
                      highlight=False, soft_wrap=True)
    spent = [*result.reports, *((check.given_report, check.adapted_report) if check else ())]
    total_tokens = sum(r.usage.total_tokens for r in spent)
    con.print(f"compile: {total_tokens} tokens, {sum(r.lm_calls for r in spent)} "
              f"LM calls (the dev check included), {wall:.1f} s. Solver "
              f"({result.solver.kind}) saved to {path}; "
              f"evaluate it with: metaskill eval --task {task} --model {model} "
              f"--solver {path}", highlight=False, soft_wrap=True)
    if plot is not None:
        from metaskill.methods.dynaicl import curve_svg

        rep = result.reports[result.methods.index("dynaicl")]
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_text(curve_svg(rep.notes, title=f"dynaicl on {task} dev "
                                  f"({rep.notes['probe']['dev']} inputs)"))
        con.print(f"dynaicl curve written to {plot}", highlight=False, soft_wrap=True)
    if report_json is not None:
        report_json.parent.mkdir(parents=True, exist_ok=True)
        report_json.write_text(json.dumps({
            "task": task, "model": model, "methods": result.methods, "train": len(train),
            "dev": len(dev), "wall_s": wall, "solver": str(path),
            "reports": [{"method": n, **r.model_dump(mode="json")}
                        for n, r in zip(result.methods, result.reports, strict=True)],
            "check": check.model_dump(mode="json") if check is not None else None,
        }, indent=2))


_DETAIL_KEYS = {
    "knn_demos": ("k", "balanced"),
    "raml": ("dev_accuracy_lm_only", "dev_accuracy_retrieval_only", "weight", "calibrate"),
    "dynaicl": ("budget_tokens", "dev_prompt_tokens", "token_saving_vs_best_fixed"),
    "self_refine": ("inner_dev_accuracy", "fallbacks", "changed"),
    "self_consistency": ("inner_dev_accuracy", "mean_agreement"),
    "adaptmi": ("gate_rate", "gate_precision", "fallbacks"),
    "multi_critique": ("inner_dev_accuracy", "fallbacks"),
    "meta_prompting": ("inner_dev_accuracy", "fallbacks"),
    "skill_demos": ("k",),
}


def register(app: typer.Typer) -> None:
    """Add ``adapt`` and ``methods`` to the metaskill command line."""
    app.command("adapt")(adapt_cmd)
    app.add_typer(methods_app, name="methods")
