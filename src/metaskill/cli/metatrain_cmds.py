"""CLI verbs of meta-training across tasks: ``metaskill metatrain retrieval|tune|localize|gpicl``.

Each subcommand lives next to its module in ``metaskill.metalearn`` and is added here with
``@metatrain_app.command(...)``; heavy libraries load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

metatrain_app = typer.Typer(
    help="Meta-train across tasks: retrieval, tune, localize, gpicl.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``metatrain`` group to the root app."""
    app.add_typer(metatrain_app, name="metatrain")


# ---- gpicl and localize (metaskill.metalearn.gpicl, metaskill.metalearn.localize) ----------
def _number_list(text: str, what: str, kind: type = float) -> list:
    from metaskill.core.errors import MetaskillError

    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MetaskillError(f"{what} must be comma-separated numbers, got '{text}'.") from None
    if not values:
        raise MetaskillError(f"{what} names no value; e.g. {'16,256' if kind is int else '1e-4'}.")
    return values


def _config(cls: type, **fields: object) -> object:
    """A pydantic config, its first validation error as a one-line MetaskillError."""
    from pydantic import ValidationError

    from metaskill.core.errors import MetaskillError

    try:
        return cls(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise MetaskillError(f"{where}: {msg}" if where else msg) from None


@metatrain_app.command("gpicl")
def gpicl_cmd(
    tasks: str = typer.Option("16,256,4096", "--tasks", help="Numbers of meta-training tasks "
                              "to sweep, comma-separated (e.g. 16,256,4096,65536)."),
    steps: int = typer.Option(3000, "--steps", help="Adam steps per number of tasks."),
    out: str = typer.Option(..., "--out", help="Sweep folder (resumable: sweep.json, "
                            "checkpoints, sweep.svg)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sequences per step."),
    seq_len: int = typer.Option(100, "--seq-len", help="Examples per sequence."),
    d_model: int = typer.Option(64, "--d-model", help="Transformer width."),
    layers: int = typer.Option(4, "--layers", help="Transformer blocks."),
    heads: int = typer.Option(4, "--heads", help="Attention heads."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    eval_sequences: int = typer.Option(128, "--eval-sequences",
                                       help="Sequences per evaluation set."),
    unseen: str = typer.Option("wine,breast_cancer", "--unseen", help="Unseen scikit-learn "
                               "datasets (wine, breast_cancer, iris), comma-separated."),
    seed: int = typer.Option(0, "--seed", help="Seed of tasks, data and weights."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """GPICL: meta-train a small transformer from scratch on N random tasks of digits, for
    each N, and measure in-context accuracy on seen tasks, unseen tasks and unseen datasets."""
    import json
    from pathlib import Path

    from rich.console import Console

    from metaskill.metalearn.gpicl import GPICLConfig, run_sweep

    counts = _number_list(tasks, "--tasks", int)
    cfg = _config(GPICLConfig, steps=steps, batch_size=batch_size, seq_len=seq_len,
                  d_model=d_model, n_layers=layers, n_heads=heads, learning_rate=lr,
                  eval_sequences=eval_sequences, seed=seed, threads=threads,
                  unseen_datasets=[u.strip() for u in unseen.split(",") if u.strip()])
    console = Console(stderr=True)
    data = run_sweep(counts, cfg, Path(out), log=lambda s: console.print(s, highlight=False))
    summary = [{"n_tasks": p["n_tasks"],
                **{k: round(v["late_accuracy"], 4) for k, v in p["eval"].items()}}
               for p in data["points"]]
    console.print(f"sweep in {Path(out) / 'sweep.json'}, plot {Path(out) / 'sweep.svg'}",
                  highlight=False)
    typer.echo(json.dumps(summary))


@metatrain_app.command("localize")
def localize_cmd(
    finetuned: str = typer.Option(..., "--finetuned", help="The fine-tune: a PEFT LoRA "
                                  "folder, an HF model folder or a `metaskill train` run."),
    task: str = typer.Option(..., "--task", "-t", help="The task it was fine-tuned on."),
    out: str = typer.Option(..., "--out", help="Output folder (resumable)."),
    base: str = typer.Option("local", "--base", help="Base model: local, gguf:PATH or "
                             "hf:PATH."),
    option: list[str] | None = typer.Option(None, "--option", "-o",
                                            help="Task loader option KEY=VALUE."),
    sparsity: str = typer.Option("1e-5,1e-4,1e-3,1e-2", "--sparsity", help="Fractions of "
                                 "all parameters in the graft, comma-separated."),
    steps: int = typer.Option(20, "--steps", help="Mask-optimisation steps per sparsity."),
    batch_size: int = typer.Option(8, "--batch-size", help="Training examples per step."),
    n_train: int = typer.Option(128, "--n-train", help="Training examples the mask "
                                "loss draws from."),
    lr: float = typer.Option(1.0, "--lr", help="Mask step size (units of S)."),
    eval_limit: int = typer.Option(50, "--eval-limit", help="Dev examples scored."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Generation budget on dev."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the chosen graft as an "
                              "HF folder, a GGUF and a Solver JSON under OUT/graft."),
    save_sparsity: float | None = typer.Option(None, "--save-sparsity", help="Which level to "
                                               "save (default: the sparsest with >= 90% of "
                                               "the gain, else the best)."),
    compare: str | None = typer.Option(None, "--compare", help="Another localize folder: "
                                       "write the masks' Jaccard overlap per sparsity."),
    seed: int = typer.Option(0, "--seed", help="Seed of the mask and batches."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
) -> None:
    """Skill localization by grafting: learn sparse masks over the fine-tuning deltas and
    report the share of the fine-tuning gain each sparsity recovers on dev."""
    import json

    from rich.console import Console

    from metaskill.cli.train_cmds import _options
    from metaskill.core.settings import Settings
    from metaskill.metalearn.localize import LocalizeConfig, run_localize

    cfg = _config(LocalizeConfig, sparsities=_number_list(sparsity, "--sparsity"),
                  steps=steps, batch_size=batch_size, n_train=n_train, learning_rate=lr,
                  seed=seed, threads=threads)
    console = Console(stderr=True)
    data = run_localize(task, base, finetuned, cfg, out, task_options=_options(option),
                        eval_limit=eval_limit, max_tokens=max_tokens, save=save,
                        save_sparsity=save_sparsity, compare=compare,
                        settings=Settings.from_env(threads=threads),
                        log=lambda s: console.print(s, highlight=False))
    rows = [{k: lv.get(k) for k in ("sparsity", "k", "acc", "gain", "acc_topk", "gain_topk")}
            for lv in data["levels"]]
    typer.echo(json.dumps({"acc_base": data["acc_base"], "acc_finetuned": data["acc_finetuned"],
                           "levels": rows, "graft": data.get("graft"),
                           "overlap": data.get("overlap")}))


# ---- retrieval and tune (metaskill.metalearn.retrieval, metaskill.metalearn.tune) ----------
def _names(values: list[str] | None) -> list[str] | None:
    """Repeatable, comma-separated names -> a list (None when none were given)."""
    out = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    return out or None


def _run_config(out: Any, given: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """The run's config: the one given now, or (resume) the one in ``OUT/manifest.json``."""
    from metaskill.core.errors import MetaskillError
    from metaskill.metalearn.retrieval import read_manifest

    stored = read_manifest(out)
    if stored is not None and stored.get("kind") != kind:
        raise MetaskillError(f"'{out}' holds a {stored.get('kind')} run, not {kind}; use "
                             "another --out.")
    if given is None:
        if stored is None:
            raise MetaskillError(f"--hold-out is required (no run to resume in '{out}').")
        return dict(stored["config"], _base=stored["base_model"])
    return given


def _check_same(out: Any, kind: str, config: Any, base: str) -> None:
    from metaskill.core.errors import MetaskillError
    from metaskill.metalearn.retrieval import read_manifest

    stored = read_manifest(out)
    if stored is None:
        return
    now = {**config.model_dump(mode="json"), "_base": base}
    old = {**stored.get("config", {}), "_base": stored.get("base_model")}
    diff = sorted(k for k in set(now) | set(old) if now.get(k) != old.get(k))
    if diff:
        raise MetaskillError(f"'{out}' holds a {kind} run with other {', '.join(diff)}; use "
                             "another --out, or give only --out to resume it as it was.")


def _validate(cls: Any, args: dict[str, Any]) -> Any:
    """``cls.model_validate(args)``, a bad value answered in one line."""
    from pydantic import ValidationError

    from metaskill.core.errors import MetaskillError

    try:
        return cls.model_validate(args)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ())) or "options"
        raise MetaskillError(f"bad option {field}: {err.get('msg')}.") from None


def _report(manifest: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console()
    proto = manifest["protocol"]
    tr = manifest["train"]
    con.print(f"[bold]{manifest['kind']}[/]: trained on {', '.join(proto['train_tasks'])}; "
              f"held out {', '.join(proto['held_out'])}; {tr['steps']} steps in "
              f"{tr['seconds']:.0f} s, final loss {tr['losses'][-1] if tr['losses'] else '-'}",
              highlight=False, soft_wrap=True)
    con.print(f"adapter: {manifest['adapter']}  (model spec {manifest['model']})",
              highlight=False, soft_wrap=True)
    for line in manifest.get("usage", []):
        con.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)


@metatrain_app.command("retrieval")
def retrieval_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumable).")],
    hold_out: Annotated[list[str] | None, typer.Option(
        "--hold-out", help="Task(s) never trained on, comma-separated or repeated "
        "(omit to resume the run in --out).")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Base model: local, gguf:PATH or hf:PATH.")] = "local",
    steps: Annotated[int, typer.Option("--steps", help="LoRA optimizer steps.")] = 200,
    k: Annotated[int, typer.Option("--k", help="Retrieved demonstrations per input.")] = 4,
    per_task: Annotated[int, typer.Option(
        "--per-task", help="Episodes (query inputs) per training task.")] = 200,
    kinds: Annotated[str, typer.Option(
        "--kinds", help="Task kinds in the pool (classification, multiple_choice, "
        "generative), comma-separated.")] = "classification,multiple_choice",
    tasks: Annotated[list[str] | None, typer.Option(
        "--tasks", help="Keep only these pool tasks (comma-separated or repeated).")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Shared data folder with bigbench/ (default $METASKILL_DATA).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="Episode prompt format: completion or chat (use the same with "
        "knn_demos).")] = "completion",
    embedder: Annotated[str, typer.Option(
        "--embedder", help="Retriever: minilm, hash:DIM, st:PATH.")] = "minilm",
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Episodes per step.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of episodes and training.")] = 0,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="torch CPU threads (default $METASKILL_THREADS, else all).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")
                           ] = False,
) -> None:
    """Meta-train a LoRA adapter on retrieval episodes (Mueller et al. 2023); use it with
    knn_demos. Prints the adapter and the `metaskill eval` line of each held-out task."""
    from metaskill.core.settings import Settings
    from metaskill.metalearn.retrieval import RetrievalConfig, meta_train_retrieval

    held = _names(hold_out)
    given = None if held is None else {
        "hold_out": held, "kinds": _names([kinds]), "tasks": _names(tasks), "data": data,
        "episodes": {"k": k, "per_task": per_task, "prompt_format": fmt, "embedder": embedder,
                     "seed": seed},
        "lora": {"steps": steps, "rank": rank, "alpha": 2.0 * rank, "learning_rate": lr,
                 "batch_size": batch_size, "seed": seed}, "_base": model}
    args = _run_config(out, given, "meta_train_retrieval")
    base = args.pop("_base")
    config = _validate(RetrievalConfig, args)
    _check_same(out, "meta_train_retrieval", config, base)
    settings = Settings.from_env(threads=threads)
    manifest = meta_train_retrieval(base, config, out, settings=settings,
                                    progress=not no_progress, log=typer.echo)
    _report(manifest)


@metatrain_app.command("tune")
def tune_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumable).")],
    hold_out: Annotated[list[str] | None, typer.Option(
        "--hold-out", help="Task(s) never trained on, comma-separated or repeated "
        "(omit to resume the run in --out).")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Base model: local, gguf:PATH or hf:PATH.")] = "local",
    steps: Annotated[int, typer.Option("--steps", help="LoRA optimizer steps.")] = 200,
    per_task: Annotated[int, typer.Option(
        "--per-task", help="Training examples per task.")] = 200,
    negatives: Annotated[int, typer.Option(
        "--negatives", help="'no' questions per example (other labels).")] = 1,
    kinds: Annotated[str, typer.Option(
        "--kinds", help="Task kinds in the pool, comma-separated (tasks without a label "
        "set are dropped).")] = "classification,multiple_choice",
    tasks: Annotated[list[str] | None, typer.Option(
        "--tasks", help="Keep only these pool tasks (comma-separated or repeated).")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Shared data folder with bigbench/ (default $METASKILL_DATA).")] = None,
    teacher: Annotated[str | None, typer.Option(
        "--teacher", help="Model spec that describes labels a task does not describe.")
                       ] = None,
    questions: Annotated[str | None, typer.Option(
        "--questions", help="Reuse the questions.json of an earlier run.")] = None,
    score: Annotated[str, typer.Option(
        "--score", help="yes_vs_no (P(yes) normalised against no) or yes.")] = "yes_vs_no",
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Questions per step.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of data and training.")] = 0,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="torch CPU threads (default $METASKILL_THREADS, else all).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")
                           ] = False,
) -> None:
    """Meta-tune on yes/no label questions (Zhong et al. 2021); answer held-out tasks
    zero-shot. Prints the adapter and the `metaskill eval` line of each held-out task."""
    from metaskill.core.settings import Settings
    from metaskill.metalearn.tune import TuneConfig, meta_tune

    held = _names(hold_out)
    given = None if held is None else {
        "hold_out": held, "kinds": _names([kinds]), "tasks": _names(tasks), "data": data,
        "per_task": per_task, "negatives": negatives, "teacher": teacher,
        "questions_file": questions, "score": score, "seed": seed,
        "lora": {"steps": steps, "rank": rank, "alpha": 2.0 * rank, "learning_rate": lr,
                 "batch_size": batch_size, "seed": seed}, "_base": model}
    args = _run_config(out, given, "meta_tune")
    base = args.pop("_base")
    config = _validate(TuneConfig, args)
    _check_same(out, "meta_tune", config, base)
    settings = Settings.from_env(threads=threads)
    manifest = meta_tune(base, config, out, settings=settings, progress=not no_progress,
                         log=typer.echo)
    _report(manifest)
