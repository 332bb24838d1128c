"""CLI verbs of parametric self-improvement: ``train`` (LoRA SFT) and ``evolve`` (SELF).

Examples::

    metaskill train --task reasoning_gym -o dataset=spell_backward --model local \\
        --steps 150 --out runs/reverse
    metaskill train --out runs/reverse          # resume: finished stages are not redone
    metaskill train --task math -o path=DIR --method stat-sel --profile profile.json
    metaskill evolve --task reasoning_gym -o dataset=spell_backward --rounds 3 --out runs/self

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
    stored = json.loads(path.read_text()) if path.exists() else None
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


def _load_any(spec: str, cache: Any = None) -> Any:
    """load_lm, plus the ``hf:`` backend (until lm/spec.py routes ``hf:`` itself)."""
    if spec.startswith("hf:"):
        from metaskill.lm.hf import load_hf

        return load_hf(spec[len("hf:"):], cache=cache)
    from metaskill.lm import load_lm

    return load_lm(spec, cache=cache if cache is not None else False)


def _dev_accuracy(spec: str, task: Any, split: str, limit: int | None, max_tokens: int,
                  cache_dir: Path) -> dict[str, Any]:
    from metaskill.eval.harness import evaluate
    from metaskill.eval.solvers import ZeroShot
    from metaskill.lm.cache import Cache

    lm = _load_any(spec, cache=Cache(cache_dir / "cache.sqlite"))
    try:
        run = evaluate(ZeroShot(lm, max_tokens=max_tokens), task, split, limit=limit,
                       progress=True)
    finally:
        lm.close()
    ok = sum(r.score for r in run.records)
    return {"spec": spec, "split": split, "n": len(run.records), "accuracy":
            ok / max(1, len(run.records))}


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
    settings = Settings.from_env()
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
        from metaskill.lm.cache import stable_hash

        out = settings.home / "train" / f"{task}-{method}-{stable_hash(given)[:8]}"
    args = _run_args(out, given)
    _train_run(out, args, settings, console)


def _train_run(out: Path, args: dict[str, Any], settings: Any, console: Console) -> None:
    from metaskill.methods.adapters import adapter_spec, train_for_lm
    from metaskill.methods.sft import ChatPair, SFTConfig, pairs_from_examples
    from metaskill.pipeline.stages import StageRunner
    from metaskill.tasks import get_task

    runner = StageRunner(out)
    task = get_task(args["task"], **args["options"])
    cfg = SFTConfig(rank=args["rank"], alpha=2.0 * args["rank"], learning_rate=args["lr"],
                    steps=args["steps"], batch_size=args["batch_size"], seed=args["seed"])

    def make_data() -> dict[str, Any]:
        train = task.examples("train")
        if args["skills"]:
            wanted = set(args["skills"])
            train = [e for e in train if wanted & set(e.skills)]
        if args["n_train"]:
            train = train[: args["n_train"]]
        if args["method"] != "sft":
            train = _stat_data(args, task, train)
        pairs = pairs_from_examples(task, train)
        with open(out / "data.jsonl", "w") as f:
            for p in pairs:
                f.write(p.model_dump_json() + "\n")
        return {"n": len(pairs)}

    data = runner.run("data", {k: args.get(k) for k in ("task", "options", "skills", "n_train",
                                                         "method", "profile", "teacher",
                                                         "per_pair")}, make_data)
    console.print(f"training data: {data['n']} examples ({out / 'data.jsonl'})")
    pairs = [ChatPair.model_validate_json(line)
             for line in (out / "data.jsonl").read_text().splitlines() if line.strip()]
    lm = _load_any(args["model"])

    def train() -> dict[str, Any]:
        res = train_for_lm(lm, pairs, cfg, out / "adapter", settings=settings)
        return {"steps": res.steps, "final_loss": res.losses[-1], "seconds": res.seconds,
                "seconds_per_step": res.seconds_per_step, "peak_rss_mb": res.peak_rss_mb}

    trained = runner.run("train", {"data": data, "model": args["model"],
                                   "config": cfg.model_dump(mode="json")}, train)
    console.print(f"trained {trained['steps']} steps in {trained['seconds']:.0f} s, final loss "
                  f"{trained['final_loss']:.3f}; adapter in {out / 'adapter'}")
    tuned = adapter_spec(lm, out / "adapter")
    lm.close()
    scores: dict[str, Any] = {"adapter_spec": tuned}
    if args["eval_limit"] != 0:
        split = "dev" if task.splits.get("dev") else "test"
        for name, spec in (("base", args["model"]), ("trained", tuned)):
            scores[name] = runner.run(
                f"eval_{name}", {"spec": spec, "trained": trained, "split": split,
                                 "limit": args["eval_limit"], "max_tokens": args["max_tokens"]},
                lambda spec=spec: _dev_accuracy(spec, task, split, args["eval_limit"],
                                                args["max_tokens"], out))
        console.print(f"{split} accuracy: base {scores['base']['accuracy']:.1%} -> trained "
                      f"{scores['trained']['accuracy']:.1%} (n={scores['trained']['n']})")
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    typer.echo(json.dumps(scores))


def _stat_data(args: dict[str, Any], task: Any, train: list[Any]) -> list[Any]:
    """STAT-Sel / STAT-Syn training data for the run's profile."""
    from metaskill.methods import stat
    from metaskill.skills.profile import Profile

    prof = Profile.load(args["profile"])
    if args["method"] == "stat-sel":
        return stat.stat_sel(prof, train, args["per_pair"], args["seed"])
    if args["task"] == "reasoning_gym":
        gen = stat.reasoning_gym_generator(args["options"].get("config"))
        return stat.stat_syn_procedural(prof, gen, args["per_pair"], args["seed"] + 10_000)
    if not args.get("teacher"):
        raise MetaskillError("stat-syn on a non-procedural task needs --teacher SPEC.")
    lm = _load_any(args["teacher"])
    try:
        data, _stats = stat.stat_syn_teacher(lm, task, prof, train,
                                             per_pair=args["per_pair"], seed=args["seed"])
    finally:
        lm.close()
    return data


def register(app: typer.Typer) -> None:
    """Add ``train`` (and ``evolve``, when SELF is available) to the command line."""
    app.command("train")(train_cmd)
    try:
        from metaskill.methods import self_evolve  # noqa: F401
    except ImportError:
        return
    app.command("evolve")(evolve_cmd)


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
) -> None:
    """SELF: rounds of self-answering, self-feedback, curation and LoRA training."""
    from metaskill.core.settings import Settings
    from metaskill.methods.self_evolve import SelfEvolveConfig, run_self_evolve

    if rounds < 1:
        raise MetaskillError(f"--rounds must be >= 1, got {rounds}.")
    settings = Settings.from_env()
    given: dict[str, Any] = {"task": task, "options": _options(option), "model": model,
                             "rounds": rounds, "samples": samples, "steps": steps,
                             "n_train": n_train, "eval_limit": eval_limit}
    if out is None:
        if task is None:
            raise MetaskillError("--task is required (or --out DIR of a run to resume).")
        from metaskill.lm.cache import stable_hash

        out = settings.home / "evolve" / f"{task}-{stable_hash(given)[:8]}"
    args = _run_args(out, given)
    cfg = SelfEvolveConfig(rounds=args["rounds"], samples=args["samples"],
                           steps=args["steps"], n_train=args["n_train"],
                           eval_limit=args["eval_limit"])
    result = run_self_evolve(args["task"], args["options"], args["model"], cfg, out,
                             settings=settings)
    typer.echo(json.dumps(result))
