"""``metaskill run``: the main job (see :mod:`metaskill.pipeline.main_job`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``run`` verb to ``app``."""

    @app.command("run")
    def run(
        task: list[str] = typer.Option(
            None, "--task", "-t",
            help="Task name or YAML path; repeat for several (default: trec, "
            "word_reversal)."),
        model: str = typer.Option("local", "--model", "-m", help="Model spec."),
        teacher: str | None = typer.Option(
            None, help="LM spec that labels skills and names missing ones (default: none)."),
        methods: str | None = typer.Option(
            None, help="Comma-separated candidate chains; join a chain with '+', e.g. "
            "'knn_demos,raml,knn_demos+self_refine' (default: knn_demos,raml on every task "
            "but the LoRA-trained word_reversal)."),
        train: bool | None = typer.Option(
            None, "--train/--no-train",
            help="LoRA-train the model on every task / on none (default: only the tasks "
            "given by --train-task, else the default suite's string skill, word_reversal)."),
        train_task: list[str] = typer.Option(
            None, "--train-task", help="A task to LoRA-train; repeat for several."),
        train_method: str = typer.Option(
            "stat-sel", help="stat-sel (data for the profile's missing skills) or sft "
            "(uniform)."),
        train_steps: int = typer.Option(60, help="Optimiser steps of the training stage."),
        train_batch: int = typer.Option(8, help="Training examples per optimiser step."),
        train_rank: int = typer.Option(16, help="LoRA rank (alpha = 2 x rank)."),
        train_lr: float = typer.Option(1e-3, help="Learning rate of the training stage."),
        budget_tokens: int | None = typer.Option(
            None, help="Most prompt+completion tokens per input a candidate may spend."),
        time_budget: float | None = typer.Option(
            None, help="Wall-clock budget in minutes; later candidates are skipped."),
        n_dev: int = typer.Option(40, help="Dev examples for profiling and selection."),
        n_test: int = typer.Option(100, help="Test examples per task."),
        k: int = typer.Option(4, help="Demonstrations per input for demo methods."),
        seed: int = typer.Option(0, help="Seed of subsets and demo draws."),
        embedder: str = typer.Option("minilm", help="Embedder spec: minilm or hash:DIM."),
        out: Path = typer.Option(Path("metaskill-run"), help="Run folder (resumable)."),
        keep_best: bool = typer.Option(
            True, "--keep-best/--no-keep-best",
            help="A method chain that does not beat zero-shot on dev (paired-bootstrap 95% "
            "interval) hands back zero-shot instead of its adapted Solver."),
        threads: int | None = typer.Option(
            None, "--threads", help="CPU threads for llama.cpp and torch (default: "
            "$METASKILL_THREADS, else all cores)."),
        evolve: bool = typer.Option(
            False, "--evolve/--no-evolve",
            help="Add the archive search over Solvers (Darwin Gödel Machine style) as a "
            "stage: its best Solver on dev is the 'evolve' candidate; its page is "
            "OUT/evolve-TASK/archive.html (off by default: it does not fit 15 minutes)."),
        evolve_calls: int | None = typer.Option(
            300, "--evolve-calls", help="The archive search's LM-call budget per task."),
        evolve_tokens: int | None = typer.Option(
            None, "--evolve-tokens", help="Its token budget per task (default: none)."),
        evolve_seconds: float | None = typer.Option(
            None, "--evolve-seconds", help="Its wall-clock budget per task in seconds "
            "(default: none beyond --time-budget)."),
        evolve_children: int = typer.Option(
            10, "--evolve-children", help="The most children per task's archive."),
        evolve_mutator: str | None = typer.Option(
            None, "--evolve-mutator", help="Model spec of the mutator LM that proposes "
            "self-modifications (default: the model itself)."),
        evolve_selection: str = typer.Option(
            "dgm", "--evolve-selection", help="Parent selection: dgm, greedy or random."),
        evolve_mutations: str | None = typer.Option(
            None, "--evolve-mutations", help="Mutation kinds, comma-separated (default: "
            "all: add_method, remove_method, replace_method, tweak_config, prompt_format, "
            "crossover, self_modify)."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
        workers: int = typer.Option(
            1, "--workers", help="Ray workers for the evaluations, each holding one replica "
            "of the model (1: this process, Ray unused; more needs pip install "
            "'metaskill[ray]')."),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="A running Ray cluster (HOST:6379 or "
            "ray://HOST:10001) for the workers; default: a local one."),
    ) -> None:
        """Measure a model, find its missing skills, adapt and (optionally) train it, and
        write a report. Every stage resumes from --out."""
        from pydantic import ValidationError

        from metaskill.cli.eval_cmds import check_workers, executor_for
        from metaskill.core.errors import InvalidParameterError
        from metaskill.pipeline.main_job import RunConfig, run_job

        check_workers(workers, ray_address)

        values: dict[str, object] = {
            "model": model, "teacher": teacher, "train": train, "train_steps": train_steps,
            "train_method": train_method, "train_batch": train_batch,
            "train_rank": train_rank, "train_lr": train_lr,
            "budget_tokens": budget_tokens, "n_dev": n_dev, "n_test": n_test, "k": k,
            "seed": seed, "embedder": embedder, "out": out, "progress": not no_progress,
            "threads": threads, "evolve": evolve, "evolve_calls": evolve_calls,
            "evolve_tokens": evolve_tokens, "evolve_seconds": evolve_seconds,
            "evolve_children": evolve_children, "evolve_mutator": evolve_mutator,
            "evolve_selection": evolve_selection,
            "time_budget_s": time_budget * 60 if time_budget is not None else None,
        }
        # RunConfig.keep_best reaches fit_chain(keep_best=...) in the adapt stage; until
        # RunConfig has the field the main job keeps every chain's own Solver.
        if "keep_best" in RunConfig.model_fields:
            values["keep_best"] = keep_best
        if task:
            values["tasks"] = task
        if train_task:
            values["train_tasks"] = train_task
        if evolve_mutations:
            values["evolve_mutations"] = [m.strip() for m in evolve_mutations.split(",")
                                          if m.strip()]
        if methods:
            values["methods"] = [m.strip() for m in methods.split(",") if m.strip()]
        try:
            cfg = RunConfig(**values)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            where = f"--{loc.replace('_', '-')}: " if loc else ""
            raise InvalidParameterError(f"{where}{err['msg']}.") from None
        from metaskill.methods import METHODS

        for chain in cfg.method_chains():
            for m in chain:
                METHODS.get(m)  # unknown names fail now, with close-name suggestions
        if cfg.evolve and cfg.evolve_mutations:
            from metaskill.evolve.mutations import MUTATIONS

            for kind in cfg.evolve_mutations:
                MUTATIONS.get(kind)
        with executor_for(workers, ray_address, model, threads=threads) as executor:
            run_job(cfg, executor=executor)
