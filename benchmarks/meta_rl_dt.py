"""Meta-DT vs Prompt-DT vs multi-task DT on Meta-World: zero-shot success on held-out tasks.

Writes ``benchmarks/results/meta_rl_dt.md`` (``--out``) and one HTML report per benchmark
beside the work folder. Issue 25's Meta-DT evidence:

* **ML1 reach** -- train on ``--ml1-train`` goals of ``reach-v3`` (the benchmark's train
  tasks), test zero-shot on ``--ml1-test`` held-out goals (its test tasks).
* **ML10** -- train on ``--ml10-train`` goals of each of the 10 training environments, test
  zero-shot on ``--ml10-test`` goals of each of the 5 test environments.

Data: :func:`metaskill.metalearn.rl.metaworld.collect_dataset` -- the scripted experts with
Gaussian action noise spread from 0 to ``--noise`` over a task's episodes (mixed quality);
the test tasks get one noise-free expert episode each, used only as Prompt-DT's prompt.
Each variant (:mod:`metaskill.metalearn.rl.meta_dt`) trains ``--steps`` transformer steps
(Meta-DT also ``--wm-steps`` world-model steps) for each of ``--seeds`` training seeds;
the test success rate is over test tasks, then mean and 95% t-interval over seeds, and
Meta-DT minus each baseline paired by seed. Meta-DT's score is its second episode on a
test task (the first, prompt-less, supplies its complementary prompt); that first
episode's success is reported too.

A fourth row, ``dt + goal visible (oracle)`` (``--oracle-seeds``), trains the plain DT
with the goal written into its observations in training and at test time: privileged
information, an upper bound that tells how much of any gap is task inference.

Size: the defaults (5000 transformer steps, 1000 world-model steps, 3 seeds, ``--jobs 2``
worker processes of one torch thread) take about an hour on 2 free cores: a transformer
step costs about 42 ms of CPU, a world-model step 5 ms, an evaluation of 13 tasks 10-20 s.

Everything is stored under ``--work`` (datasets, one run folder per arm, resumable); a
rerun skips finished arms. ``--stored-only`` writes the report from the stored runs.

Example::

    nice -n 19 .venv/bin/python benchmarks/meta_rl_dt.py            # about an hour, 2 cores
    .venv/bin/python benchmarks/meta_rl_dt.py --tiny --work /tmp/mrl --out /tmp/mrl.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = ("meta-dt", "prompt-dt", "dt")

#: The authors' Meta-World settings (NJU-RL/Meta-DT, configs/args_reach.py and
#: configs/args_meta_world.py), stated next to ours in the report.
PAPER = {"dt_steps": 300_000, "batch": 128, "d_model": 128, "layers": 3, "horizon": 20,
         "prompt": 5, "context_dim": 16, "wm_epochs": 601, "episode": 500,
         "reach_tasks": "15 train / 5 test goals", "episodes_per_task": 100,
         "hardware": "one GPU"}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval (the mean twice for one value)."""
    from scipy import stats

    m = float(np.mean(xs)) if xs else 0.0
    if len(xs) < 2:
        return m, m, m
    half = stats.t.ppf(0.975, len(xs) - 1) * float(np.std(xs, ddof=1)) / np.sqrt(len(xs))
    return m, m - half, m + half


def cell(xs: list[float]) -> str:
    m, lo, hi = t_interval(xs)
    return f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def diff_cell(a: list[float], b: list[float]) -> str:
    m, lo, hi = t_interval([x - y for x, y in zip(a, b, strict=True)])
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"
    return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({verdict})"


def collect(args: argparse.Namespace, bench: str) -> Path:
    from metaskill.metalearn.rl.metaworld import CollectConfig, collect_dataset

    ml1 = bench == "ML1"
    cfg = CollectConfig(benchmark=bench, env="reach-v3" if ml1 else None,
                        episodes=args.ml1_episodes if ml1 else args.ml10_episodes,
                        noise=args.noise,
                        max_steps=args.ml1_max_steps if ml1 else args.ml10_max_steps,
                        n_train=args.ml1_train if ml1 else args.ml10_train,
                        n_test=args.ml1_test if ml1 else args.ml10_test, seed=args.data_seed)
    root = args.work / f"data-{bench}"
    collect_dataset(cfg, root, progress=not args.quiet, log=print)
    return root


def run_arm(data: Path, out: Path, cfg: Any, threads: int, progress: bool,
            suite: Any = None) -> dict[str, Any]:
    """One training run (a top-level function, so a worker process can run it)."""
    from metaskill.metalearn.rl.meta_dt import train_meta_dt

    print(f"== {out.parent.name} {cfg.variant} seed {cfg.seed} -> {out}", flush=True)
    return train_meta_dt(data, out, cfg, progress=progress,
                         log=lambda m: print(f"[{out.name}] {m}", flush=True),
                         threads=threads, suite=suite)


def oracle_arm(data: Path, out: Path, cfg: Any, threads: int) -> dict[str, Any]:
    """The multi-task DT with the goal written into its observations, in training and at
    test time: privileged, an upper bound that shows how much of the gap is task inference.
    Stored as ``out/oracle.json``; rerun skips it."""
    import torch

    from metaskill.metalearn.rl.meta_dt import Bundle, DTActor, _Aux, _nets, dt_step, prepare
    from metaskill.metalearn.rl.metaworld import load_dataset, load_suite, rollout, success_rate

    path = out / "oracle.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.time()
    torch.set_num_threads(threads)
    ds = load_dataset(data)
    goal = {t["key"]: np.asarray(t["goal"], np.float32) for t in ds.manifest["tasks"]}
    eps = ds.episodes("train")
    for e in eps:
        e.obs = e.obs.copy()
        e.obs[:, -3:] = goal[e.task]
    prep = prepare(eps)
    torch.manual_seed(cfg.seed)
    model = _nets()[1](prep.obs.shape[-1], prep.actions.shape[-1], prep.T, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for step in range(cfg.steps):
        dt_step(model, opt, prep, _Aux(), cfg, step)
    model.eval()
    bundle = Bundle(cfg, model, None, prep.mean, prep.std, prep.scale,
                    float(prep.rtg[:, 0].max()), prep.obs.shape[-1], prep.actions.shape[-1])
    dc = ds.config
    suite = load_suite(dc.benchmark, dc.env, seed=dc.seed, n_train=dc.n_train, n_test=dc.n_test)
    solved = []
    for ref in ds.task_refs("test")[: cfg.eval_test_tasks]:
        actor, g = DTActor(bundle, None), goal[ref.key]

        def act(obs: np.ndarray, r: float, actor: Any = actor, g: Any = g) -> np.ndarray:
            obs = np.array(obs)
            obs[-3:] = g
            return actor(obs, r)

        solved.append(rollout(suite.make_env(ref), act, dc.max_steps, ref.key).solved)
    res = {"seed": cfg.seed, "success": success_rate(solved), "wall_s": time.time() - t0}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return res


def train_all(args: argparse.Namespace, bench: str, data: Path) -> list[dict[str, Any]]:
    from metaskill.metalearn.rl.meta_dt import MetaDTConfig

    base = MetaDTConfig(steps=args.steps, wm_steps=args.wm_steps, batch_size=args.batch_size,
                        eval_every=args.eval_every, eval_train_tasks=args.eval_train_tasks,
                        ckpt_every=max(1, min(250, args.steps)))
    arms = [(args.work / bench / f"{v}-s{seed}", replace(base, variant=v, seed=seed))
            for seed in range(args.seeds) for v in args.variants]
    oracles = [(args.work / bench / f"oracle-s{seed}", replace(base, variant="dt", seed=seed))
               for seed in range(args.oracle_seeds)]
    if args.jobs > 1:  # independent arms, one torch thread each, in worker processes
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_arm, data, out, cfg, args.threads, False)
                       for out, cfg in arms]
            futures += [pool.submit(oracle_arm, data, out, cfg, args.threads)
                        for out, cfg in oracles]
            return [f.result() for f in futures[: len(arms)]]
    from metaskill.metalearn.rl.metaworld import load_dataset, load_suite

    dc = load_dataset(data).config
    suite = load_suite(dc.benchmark, dc.env, seed=dc.seed, n_train=dc.n_train, n_test=dc.n_test)
    runs = [run_arm(data, out, cfg, args.threads, not args.quiet, suite) for out, cfg in arms]
    for out, cfg in oracles:
        oracle_arm(data, out, cfg, args.threads)
    return runs


def stored_runs(args: argparse.Namespace, bench: str) -> list[dict[str, Any]]:
    from metaskill.metalearn.rl.meta_dt import read_run

    folder = args.work / bench
    return [read_run(p) for p in sorted(folder.glob("*-s*")) if (p / "manifest.json").exists()]


def section(bench: str, runs: list[dict[str, Any]], data: dict[str, Any],
            folder: Path) -> list[str]:
    by: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in runs:
        if r.get("complete"):
            by[r["variant"]].append(r)
    for v in by:
        by[v].sort(key=lambda r: r["config"]["seed"])
    cfg = data["config"]
    s = data["summary"]
    lines = [
        f"## {bench}" + (f" ({data['env']})" if data.get("env") else ""),
        "",
        f"Data: {s['train']['tasks']} train tasks x {cfg['episodes']} episodes of "
        f"{cfg['max_steps']} steps, action noise spread 0-{cfg['noise']} (the data's success "
        f"{100 * s['train']['success']:.0f}%, mean return {s['train']['return']:.0f}); "
        f"{s['test']['tasks']} test tasks (train envs: {', '.join(data['train_envs'])}; test "
        f"envs: {', '.join(data['test_envs'])}); collection {data.get('wall_s', 0):.0f} s.",
        "",
        "| variant | seeds | test success % [95% t-interval over seeds] | per seed | "
        "train-task success % | wall s per run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    finals: dict[str, list[float]] = {}
    for v, rs in by.items():
        if not rs:
            continue
        test = [r["evals"][-1]["test"]["success"] for r in rs]
        train = [r["evals"][-1].get("train", {}).get("success", float("nan")) for r in rs]
        finals[v] = test
        per = ", ".join(f"{100 * x:.0f}" for x in test)
        wall = np.mean([r["wall_s"] for r in rs])
        lines.append(f"| {v} | {len(rs)} | {cell(test)} | {per} | {cell(train)} | {wall:.0f} |")
    oracle = [json.loads(p.read_text()) for p in sorted(folder.glob("oracle-s*/oracle.json"))]
    if oracle:
        test = [o["success"] for o in oracle]
        lines.append(f"| dt + goal visible (oracle) | {len(oracle)} | {cell(test)} | "
                     f"{', '.join(f'{100 * x:.0f}' for x in test)} | - | "
                     f"{np.mean([o['wall_s'] for o in oracle]):.0f} |")
    first = [r["evals"][-1]["test"].get("first_success") for r in by["meta-dt"]]
    if first and None not in first:
        lines += ["", f"Meta-DT's first, prompt-less episode on the test tasks: "
                  f"{cell(first)}% (its scored second episode is prompted by this one)."]
    lines += [""]
    for base in ("prompt-dt", "dt"):
        if "meta-dt" in finals and base in finals and len(finals[base]) == len(finals["meta-dt"]):
            lines.append(f"- Meta-DT - {base}: {diff_cell(finals['meta-dt'], finals[base])} "
                         "points, paired by seed.")
    if "meta-dt" in finals:
        holds = all(np.mean(finals["meta-dt"]) >= np.mean(finals[b]) for b in finals)
        lines.append(f"- The paper's claim (Meta-DT >= the baselines, without expert prompts) "
                     f"{'holds (ties included)' if holds else 'does not hold'} in the means "
                     "at this size.")
    return [*lines, ""]


def budget_lines(args: argparse.Namespace) -> list[str]:
    from metaskill.metalearn.rl.meta_dt import MetaDTConfig

    c = MetaDTConfig()
    return [
        "## Budget: ours next to the paper's",
        "",
        "| | ours | paper (authors' code) |",
        "| --- | --- | --- |",
        f"| transformer steps | {args.steps} | {PAPER['dt_steps']:,} "
        f"({PAPER['dt_steps'] / args.steps:.0f}x ours) |",
        f"| batch | {args.batch_size} | {PAPER['batch']} |",
        f"| model | d={c.d_model}, {c.n_layers} layers, {c.n_heads} head | "
        f"d={PAPER['d_model']}, {PAPER['layers']} layers, 1 head |",
        f"| window / prompt | {c.horizon} / {c.prompt_length} | "
        f"{PAPER['horizon']} / {PAPER['prompt']} |",
        f"| world model | {args.wm_steps} steps of {c.wm_batch_size} | "
        f"{PAPER['wm_epochs']} epochs over the data |",
        f"| episode length | {args.ml1_max_steps} (ML1), {args.ml10_max_steps} (ML10) | "
        f"{PAPER['episode']} |",
        f"| data per task | {args.ml1_episodes} (ML1), {args.ml10_episodes} (ML10) episodes "
        f"| {PAPER['episodes_per_task']} episodes (SAC checkpoints) |",
        f"| hardware | {os.cpu_count()} CPU cores; {args.jobs} arms at once, {args.threads} torch "
        f"thread(s) each | "
        f"{PAPER['hardware']} |",
        "",
    ]


def write_md(args: argparse.Namespace, started: float, sections: list[str]) -> None:
    from importlib.metadata import version

    when = dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    head = [
        "# Meta-DT vs Prompt-DT vs multi-task DT on Meta-World (zero-shot)",
        "",
        f"- command: `python benchmarks/{cmd}`",
        f"- date: {when}; cores: {os.cpu_count()}; CPU: {cpu_model()}; total wall "
        f"{time.time() - started:.0f} s",
        f"- metaworld {version('metaworld')}, mujoco {version('mujoco')}, torch "
        f"{version('torch')}; seeds {args.seeds}; work folder `{args.work}`",
        "",
        "Success: the task solved at any step of the scored episode (Meta-World's metric); a "
        "run's success rate is over its test tasks; intervals are 95% Student-t over the "
        "training seeds (few seeds: wide).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([*head, *sections, *budget_lines(args)]) + "\n")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "meta_rl_dt.md")
    ap.add_argument("--work", type=Path, default=HERE / "results" / "meta_rl_dt_work")
    ap.add_argument("--benchmarks", default="ML1,ML10")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--wm-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-train-tasks", type=int, default=3)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--ml1-train", type=int, default=15)
    ap.add_argument("--ml1-test", type=int, default=10)
    ap.add_argument("--ml1-episodes", type=int, default=10)
    ap.add_argument("--ml1-max-steps", type=int, default=150)
    ap.add_argument("--ml10-train", type=int, default=3)
    ap.add_argument("--ml10-test", type=int, default=2)
    ap.add_argument("--ml10-episodes", type=int, default=6)
    ap.add_argument("--ml10-max-steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    ap.add_argument("--jobs", type=int, default=2, help="arms trained at once (processes)")
    ap.add_argument("--oracle-seeds", type=int, default=1,
                    help="seeds of the goal-visible DT (an upper bound; 0: none)")
    ap.add_argument("--tiny", action="store_true", help="smoke size (a minute or two)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--stored-only", action="store_true",
                    help="write the report from the stored runs; train nothing")
    args = ap.parse_args(argv)
    if args.tiny:
        for k, v in dict(seeds=2, steps=6, wm_steps=4, eval_every=0, eval_train_tasks=1,
                         oracle_seeds=1,
                         ml1_train=2, ml1_test=2, ml1_episodes=2, ml1_max_steps=20,
                         ml10_train=1, ml10_test=1, ml10_episodes=2, ml10_max_steps=20).items():
            setattr(args, k, v)
    args.variants = [v for v in args.variants.split(",") if v]
    started = time.time()
    sections = []
    for bench in [b for b in args.benchmarks.split(",") if b]:
        data_root = args.work / f"data-{bench}"
        if not args.stored_only:
            collect(args, bench)
            train_all(args, bench, data_root)
        from metaskill.metalearn.rl.meta_dt import write_report
        from metaskill.metalearn.rl.metaworld import read_manifest

        runs = stored_runs(args, bench)
        if runs:
            write_report(args.work / bench, runs)
            sections += section(bench, runs, read_manifest(data_root), args.work / bench)
    write_md(args, started, sections)


if __name__ == "__main__":
    main()
