"""CLI verbs of meta-reinforcement learning: ``metaskill metarl metaworld-data|meta-dt|lpo``.

Each subcommand is added here with ``@metarl_app.command(...)``; the ``metarl`` extra's
libraries (metaworld, mujoco, jax, gymnax, evosax) load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

metarl_app = typer.Typer(
    help="Meta-reinforcement learning: Meta-World data, Meta-DT, LPO/GROOVE.",
    no_args_is_help=True,
)


@metarl_app.command("metaworld-data")
def metaworld_data_cmd(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder (resumable).")],
    benchmark: Annotated[str, typer.Option("--benchmark", help="ML1 or ML10.")] = "ML1",
    env: Annotated[str, typer.Option("--env", help="ML1 environment.")] = "reach-v3",
    episodes: Annotated[int, typer.Option("--episodes", help="Episodes per train task.")] = 10,
    noise: Annotated[float, typer.Option(
        "--noise", help="Largest action-noise std (episodes spread from 0 to it).")] = 0.5,
    fixed_noise: Annotated[bool, typer.Option(
        "--fixed-noise", help="Every episode uses --noise (no spread).")] = False,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Steps per episode.")] = 150,
    n_train: Annotated[int, typer.Option("--n-train", help="Train tasks per env.")] = 10,
    n_test: Annotated[int, typer.Option("--n-test", help="Test tasks per env.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Benchmark and noise seed.")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Collect an offline Meta-World dataset from the scripted experts with action noise."""
    from rich.console import Console

    from metaskill.metalearn.rl.metaworld import CollectConfig, collect_dataset

    console = Console(stderr=True)
    cfg = CollectConfig(benchmark=benchmark, env=env, episodes=episodes, noise=noise,
                        noise_spread=not fixed_noise, max_steps=max_steps, n_train=n_train,
                        n_test=n_test, seed=seed)
    collect_dataset(cfg, out, log=console.print, progress=not no_progress)
    console.print(f"dataset in {out} (manifest.json)")


@metarl_app.command("meta-dt")
def meta_dt_cmd(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (metaworld-data).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumable).")],
    variant: Annotated[str, typer.Option(
        "--variant", help="meta-dt, prompt-dt or dt.")] = "meta-dt",
    steps: Annotated[int, typer.Option("--steps", help="Transformer steps.")] = 2000,
    wm_steps: Annotated[int, typer.Option("--wm-steps", help="World-model steps.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per step.")] = 32,
    eval_every: Annotated[int, typer.Option(
        "--eval-every", help="Steps between evaluations (0: at the end).")] = 500,
    eval_test_tasks: Annotated[int | None, typer.Option(
        "--eval-test-tasks", help="Test tasks evaluated (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads.")] = 1,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Train Meta-DT (or a baseline) on a dataset's train tasks; zero-shot on its test tasks."""
    from rich.console import Console

    from metaskill.metalearn.rl.meta_dt import MetaDTConfig, train_meta_dt

    console = Console(stderr=True)
    cfg = MetaDTConfig(variant=variant, steps=steps, wm_steps=wm_steps,
                       batch_size=batch_size, eval_every=eval_every,
                       eval_test_tasks=eval_test_tasks, seed=seed)
    m = train_meta_dt(data, out, cfg, log=console.print, threads=threads,
                      progress=not no_progress)
    last = m["evals"][-1]
    console.print(f"{variant}: test success {last['test']['success']:.2f} at step "
                  f"{last['step']}; report: {out / 'report.html'}")


@metarl_app.command("lpo")
def lpo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder (resumes a checkpoint there).")],
    env: Annotated[str, typer.Option("--env", help="gymnax env of meta-training.")] = "CartPole-v1",
    generations: Annotated[int, typer.Option("--generations", help="ES generations.")] = 16,
    pop: Annotated[int, typer.Option("--pop", help="ES population (even).")] = 16,
    temporal: Annotated[bool, typer.Option(
        "--temporal/--no-temporal", help="TA-LPO: the drift sees training progress.")] = False,
    sampler: Annotated[str, typer.Option(
        "--sampler", help="Levels: fixed (default params), uniform, or groove (regret).")
                       ] = "fixed",
    levels: Annotated[int, typer.Option("--levels", help="Levels per generation.")] = 1,
    timesteps: Annotated[int, typer.Option(
        "--timesteps", help="Environment steps of each inner PPO/LPO run.")] = 30_000,
    num_envs: Annotated[int, typer.Option("--num-envs", help="Parallel envs per run.")] = 8,
    num_steps: Annotated[int, typer.Option("--num-steps", help="Rollout length.")] = 64,
    sigma: Annotated[float, typer.Option("--sigma", help="ES noise scale.")] = 0.05,
    es_lr: Annotated[float, typer.Option("--es-lr", help="ES Adam learning rate.")] = 0.03,
    seed: Annotated[int, typer.Option("--seed", help="Seed of everything.")] = 0,
    test_env: Annotated[list[str] | None, typer.Option(
        "--test-env", help="Evaluate the learned drift and PPO here afterwards (repeatable).")
                        ] = None,
    test_seeds: Annotated[int, typer.Option("--test-seeds", help="Seeds per test env.")] = 3,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")
                           ] = False,
) -> None:
    """Meta-train an LPO drift function with OpenAI-ES (Lu et al. 2022); --temporal for
    TA-LPO (Jackson et al. 2024), --sampler groove for GROOVE levels (Jackson et al. 2023).
    Writes OUT/manifest.json, OUT/drift.json and OUT/report.html."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from metaskill.metalearn.rl.lpo import (
        LPOConfig,
        PPOConfig,
        evaluate,
        meta_train,
        ppo_as_drift,
    )
    from metaskill.metalearn.rl.lpo_report import save_evals, write_report

    console = Console(stderr=True)
    ppo = PPOConfig(num_envs=num_envs, num_steps=num_steps, total_timesteps=timesteps)
    cfg = LPOConfig(env=env, temporal=temporal, sampler=sampler,  # type: ignore[arg-type]
                    levels_per_generation=levels, generations=generations, pop_size=pop,
                    es_sigma=sigma, es_lr=es_lr, seed=seed, ppo=ppo)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[note]}"), console=console,
                  disable=no_progress) as bar:
        task = bar.add_task("ES generations", total=generations, note="compiling...")

        def tick(s: object) -> None:
            bar.update(task, completed=s.generation + 1,  # type: ignore[attr-defined]
                       note=f"mean {s.mean_return:.1f}  PPO {s.ppo_return:.1f}  "  # type: ignore[attr-defined]
                            f"{s.wall_s:.1f}s")  # type: ignore[attr-defined]

        result = meta_train(cfg, out, progress=tick)
        bar.update(task, completed=len(result.history))
    if result.resumed_from:
        console.print(f"resumed at generation {result.resumed_from}")
    evals = []
    for name in test_env or []:
        learned = "TA-LPO" if temporal else "LPO"
        for drift, label in ((result.drift, learned), (ppo_as_drift(result.drift), "PPO")):
            e = evaluate(drift, name, ppo, seeds=test_seeds, label=label)
            console.print(f"{name} {e.algorithm}: mean final return {e.mean:.1f} "
                          f"over {test_seeds} seeds")
            evals.append(e)
    if evals:
        save_evals(out, evals)
    last = result.history[-1] if result.history else None
    if last is not None:
        console.print(f"generation {last.generation}: ES mean {last.mean_return:.1f}, "
                      f"PPO {last.ppo_return:.1f} on the same levels")
    console.print(f"report: {write_report(out)}")


def register(app: typer.Typer) -> None:
    """Add the ``metarl`` group to the root app."""
    app.add_typer(metarl_app, name="metarl")
