"""CLI verbs of self-improvement: ``train`` (LoRA SFT) and the ``evolve`` group (``self``:
SELF rounds; ``archive`` / ``show``: :mod:`metaskill.cli.evolve_cmds`).

Examples::

    metaskill train --task reasoning_gym -o dataset=spell_backward --model local \\
        --steps 150 --out runs/reverse
    metaskill train --out runs/reverse          # resume: finished stages are not redone
    metaskill train --task reasoning_gym -o dataset=spell_backward --launcher accelerate \\
        --num-processes 4 --out runs/rev4       # data-parallel LoRA, one process per GPU
    metaskill train --task math -o path=DIR --method stat-sel --profile profile.json
    metaskill evolve self --task reasoning_gym -o dataset=spell_backward --rounds 3 --out runs/self
    metaskill evolve archive --task sst2 --model local --budget-calls 2000 --out runs/arch

A run directory holds ``run.json`` (the arguments), ``stages/*.json`` (each finished stage,
keyed by a hash of its inputs), the training data (``data.jsonl``), the adapter (PEFT
folder plus ``adapter.gguf``) and the dev scores of the base and the trained model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from metaskill.core.errors import MetaskillError
from metaskill.core.readers import read_json

METHODS = ("sft", "stat-sel", "stat-syn")


def _options(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise MetaskillError(f"option '{item}' must look like KEY=VALUE "
                                 "(e.g. -o dataset=spell_backward).")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _run_args(out: Path, given: dict[str, Any]) -> dict[str, Any]:
    """Arguments of the run: those given now, or those stored in ``run.json`` (resume)."""
    path = out / "run.json"
    stored = read_json(path, "run arguments", expect=dict) if path.exists() else None
    if given.get("task") is None:
        if stored is None:
            raise MetaskillError(f"--task is required (no run to resume in '{out}').")
        return stored
    if stored is not None:
        diff = sorted(k for k in given if stored.get(k) != given[k])
        if diff:
            raise MetaskillError(
                f"'{out}' holds a run with different {', '.join(diff)}; use another --out, or "
                "run without --task to resume it as it was."
            )
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(given, indent=1))
    tmp.replace(path)
    return given


def train_cmd(
    task: Annotated[str | None, typer.Option(
        "--task", "-t", help="Task name (see `metaskill tasks ls`).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Task loader option KEY=VALUE (repeatable).")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Base model: local, gguf:PATH or hf:PATH.")] = "local",
    method: Annotated[str, typer.Option(
        "--method", help=f"Training method: {', '.join(METHODS)}.")] = "sft",
    skills: Annotated[str | None, typer.Option(
        "--skills", help="Train only on examples with these skills (comma-separated).")] = None,
    profile: Annotated[Path | None, typer.Option(
        "--profile", help="Missing-Skill Profile JSON (stat-sel, stat-syn).")] = None,
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="Teacher model spec for stat-syn on a non-procedural task.")] = None,
    per_pair: Annotated[int, typer.Option(
        "--per-pair", help="STAT examples per (difficult example, missing skill).")] = 2,
    steps: Annotated[int, typer.Option("--steps", help="LoRA optimizer steps.")] = 100,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    n_train: Annotated[int | None, typer.Option(
        "--n-train", help="Use at most this many training examples.")] = None,
    eval_limit: Annotated[int | None, typer.Option(
        "--eval-limit", help="Dev examples scored before and after (0 skips).")] = 50,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", help="Generation budget when scoring dev.")] = 64,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (resumable; default under $METASKILL_HOME/train).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for llama.cpp and torch (default: "
        "$METASKILL_THREADS, else all cores).")] = None,
    launcher: Annotated[str | None, typer.Option(
        "--launcher", help="Train in launched processes: accelerate (accelerate launch, "
        "one process per GPU) or torchrun (also several CPU processes); default: in this "
        "process.")] = None,
    num_processes: Annotated[int, typer.Option(
        "--num-processes", help="Processes the launcher starts (data-parallel LoRA).")] = 1,
) -> None:
    """Fine-tune a LoRA adapter on a task's training answers; score dev before and after."""
    from metaskill.core.settings import Settings

    console = Console(stderr=True)
    if method not in METHODS:
        raise MetaskillError(f"unknown --method '{method}'; available: {', '.join(METHODS)}.")
    for name, v in (("--steps", steps), ("--rank", rank), ("--batch-size", batch_size)):
        if v < 1:
            raise MetaskillError(f"{name} must be >= 1, got {v}.")
    if method.startswith("stat") and profile is None and task is not None:
        raise MetaskillError(f"--method {method} needs --profile PROFILE.json (build one with "
                             "the skills profile verb).")
    if profile is not None and not profile.is_file():
        raise MetaskillError(f"profile file '{profile}' does not exist.")
    settings = Settings.from_env(threads=threads)
    trainer = None
    if launcher is not None or num_processes != 1:
        from metaskill.distributed.train_launch import launched_trainer

        trainer = launched_trainer(launcher or "accelerate", num_processes, settings=settings)
    given: dict[str, Any] = {
        "task": task, "options": _options(option), "model": model, "method": method,
        "profile": str(profile) if profile else None, "teacher": teacher,
        "per_pair": per_pair,
        "skills": [s.strip() for s in skills.split(",") if s.strip()] if skills else None,
        "steps": steps, "rank": rank, "lr": lr, "batch_size": batch_size, "seed": seed,
        "n_train": n_train, "eval_limit": eval_limit, "max_tokens": max_tokens,
    }
    if out is None:
        if task is None:
            raise MetaskillError("--task is required (or --out DIR of a run to resume).")
        from metaskill.core.hashing import stable_hash

        out = settings.home / "train" / f"{task}-{method}-{stable_hash(given)[:8]}"
    args = _run_args(out, given)
    _train_run(out, args, settings, console, trainer)


def _train_run(out: Path, args: dict[str, Any], settings: Any, console: Console,
               trainer: Any = None) -> None:
    """Fit the training method through the chain (a registered Method) and score dev."""
    from metaskill.core.stages import StageRunner
    from metaskill.eval.solvers import ZeroShot, load_solver
    from metaskill.lm import load_lm
    from metaskill.lm.cache import Cache
    from metaskill.methods.base import MethodResources, split_dev
    from metaskill.methods.compose import fit_chain
    from metaskill.tasks import get_task

    runner = StageRunner(out)
    task = get_task(args["task"], **args["options"])
    train = task.examples("train")
    if args["skills"]:
        wanted = set(args["skills"])
        train = [e for e in train if wanted & set(e.skills)]
    if args["n_train"]:
        train = train[: args["n_train"]]
    train, dev, dev_note = split_dev(train, task.splits.get("dev"), args["eval_limit"])
    dev = dev[: args["eval_limit"]] if args["eval_limit"] else []
    name, options = _method_options(args)
    lm = load_lm(args["model"], cache=Cache(out / "cache.sqlite"), settings=settings)
    teacher = load_lm(args["teacher"], settings=settings) if args.get("teacher") else None
    base = ZeroShot(lm, max_tokens=args["max_tokens"])
    resources = MethodResources(profile=args.get("profile"), teacher=teacher, progress=True,
                                settings=settings, work_dir=out, log=console.print,
                                trainer=trainer)

    def fit() -> dict[str, Any]:
        result = fit_chain(base, task, train, dev, [(name, options)], resources=resources)
        return {"solver": result.solver.to_json(), "report": result.reports[0].notes}

    fitted = runner.run("train", {k: args.get(k) for k in args if k != "eval_limit"}, fit)
    notes = fitted["report"]
    console.print(f"{notes.get('data', '')}; trained {notes['steps']} steps in "
                  f"{notes['seconds']:.0f} s, final loss {notes['final_loss']:.3f}; adapter in "
                  f"{notes['adapter']}", highlight=False)
    trained = load_solver(fitted["solver"], lm=lm)
    scores: dict[str, Any] = {"adapter_spec": trained.lm.spec, "dev": dev_note}
    for label, solver in (("base", base), ("trained", trained)):
        if dev:
            scores[label] = runner.run(f"eval_{label}", {"solver": solver.to_json(),
                                                        "dev": [e.id for e in dev]},
                                       lambda s=solver: _dev_accuracy(s, task, dev))
    if dev:
        console.print(f"dev accuracy ({dev_note}): base {scores['base']['accuracy']:.1%} -> "
                      f"trained {scores['trained']['accuracy']:.1%} (n={len(dev)})",
                      highlight=False)
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    typer.echo(json.dumps(scores))


def _method_options(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered method and its config for the run's ``--method`` and settings."""
    opts: dict[str, Any] = {"rank": args["rank"], "alpha": 2.0 * args["rank"],
                            "learning_rate": args["lr"], "steps": args["steps"],
                            "batch_size": args["batch_size"], "seed": args["seed"]}
    if args["method"] == "sft":
        return "sft", opts
    variant = args["method"].split("-", 1)[1]
    return "stat", {**opts, "variant": variant, "per_pair": args["per_pair"]}


def _dev_accuracy(solver: Any, task: Any, dev: list[Any]) -> dict[str, Any]:
    from metaskill.eval.harness import evaluate

    run = evaluate(solver, task, examples=dev, progress=True)
    return {"spec": solver.lm.spec, "split": "dev", "n": len(run.records),
            "accuracy": run.accuracy}


class _EvolveGroup(typer.core.TyperGroup):
    """The ``evolve`` group; its old spelling (``evolve --task T --rounds N``, options
    straight after ``evolve``) still runs ``evolve self``, with a one-line notice."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h"):
            typer.echo("notice: `metaskill evolve --task ...` is now `metaskill evolve self "
                       "--task ...` (SELF rounds); the old spelling still works.", err=True)
            args = ["self", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    """Add ``train`` and the ``evolve`` group (``self`` when SELF is available,
    ``archive``, ``show``) to the command line."""
    from metaskill.cli.evolve_cmds import archive_cmd, judge_cmd, show_cmd

    app.command("train")(train_cmd)
    group = typer.Typer(cls=_EvolveGroup, no_args_is_help=True,
                        help="Self-improvement searches: SELF rounds (self), an archive of "
                        "Solvers in the manner of the Darwin Gödel Machine (archive, show), an "
                        "evolving judge's rubric versions (judge).")
    try:
        from metaskill.methods import self_evolve  # noqa: F401
    except ImportError:
        pass
    else:
        group.command("self")(evolve_cmd)
    group.command("archive")(archive_cmd)
    group.command("show")(show_cmd)
    group.command("judge")(judge_cmd)
    app.add_typer(group, name="evolve")


def evolve_cmd(
    task: Annotated[str | None, typer.Option(
        "--task", "-t", help="Task name (see `metaskill tasks ls`).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Task loader option KEY=VALUE (repeatable).")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Base model: local or gguf:PATH.")] = "local",
    rounds: Annotated[int, typer.Option("--rounds", help="SELF rounds (at most).")] = 3,
    samples: Annotated[int, typer.Option("--samples", help="Answers sampled per input.")] = 4,
    steps: Annotated[int, typer.Option("--steps", help="LoRA steps per round.")] = 60,
    n_train: Annotated[int, typer.Option(
        "--n-train", help="Unlabelled training inputs per round.")] = 64,
    eval_limit: Annotated[int, typer.Option("--eval-limit", help="Dev examples.")] = 50,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (resumable).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for llama.cpp and torch (default: "
        "$METASKILL_THREADS, else all cores).")] = None,
) -> None:
    """SELF: rounds of self-answering, self-feedback, curation and LoRA training."""
    from metaskill.core.settings import Settings

    if rounds < 1:
        raise MetaskillError(f"--rounds must be >= 1, got {rounds}.")
    settings = Settings.from_env(threads=threads)
    given: dict[str, Any] = {"task": task, "options": _options(option), "model": model,
                             "rounds": rounds, "samples": samples, "steps": steps,
                             "n_train": n_train, "eval_limit": eval_limit}
    if out is None:
        if task is None:
            raise MetaskillError("--task is required (or --out DIR of a run to resume).")
        from metaskill.core.hashing import stable_hash

        out = settings.home / "evolve" / f"{task}-{stable_hash(given)[:8]}"
    args = _run_args(out, given)
    typer.echo(json.dumps(_evolve_run(out, args, settings, Console(stderr=True))))


def _evolve_run(out: Path, args: dict[str, Any], settings: Any,
                console: Console) -> dict[str, Any]:
    """SELF through the chain: rounds selected on dev (carved from train without one)."""
    from metaskill.eval.solvers import ZeroShot
    from metaskill.lm import load_lm
    from metaskill.lm.cache import Cache
    from metaskill.methods.base import MethodResources
    from metaskill.methods.compose import fit_chain
    from metaskill.tasks import get_task

    task = get_task(args["task"], **args["options"])
    lm = load_lm(args["model"], cache=Cache(out / "cache.sqlite"), settings=settings)
    options = {k: args[k] for k in ("rounds", "samples", "steps", "n_train", "eval_limit")}
    resources = MethodResources(progress=True, settings=settings, work_dir=out,
                                log=console.print)
    result = fit_chain(ZeroShot(lm, max_tokens=64), task, task.examples("train"),
                       task.splits.get("dev"), [("self_evolve", options)], resources=resources)
    notes = result.reports[0].notes
    return {"base": notes["base"], "rounds": notes["rounds"], "best_round": notes["best_round"],
            "best_accuracy": notes["dev_accuracy"], "dev": notes["dev"],
            "model": result.solver.lm.spec}
