"""SELF self-evolution rounds on the embedded model: dev accuracy per round.

Runs the ``self_evolve`` Method through the chain (``fit_chain``, the code behind
``metaskill evolve``) on a task with a verifier, given the task's train and dev splits
(selection on dev only; the test split is read after the fit, never during it): each
round the current model answers training inputs (sampled), critiques each answer and
refines the ones it judges wrong; answers the task's verifier accepts are kept (rounds
accumulate) and the model is LoRA-trained on them, continuing from the previous round's
adapter; every round is scored on dev with llama.cpp + the exported adapter. Then the base
and the best round are scored on the test split.

Writes ``benchmarks/results/self_rounds.md``.

Usage::

    .venv/bin/python benchmarks/self_rounds.py --task sst2 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.lm import load_lm
from metaskill.methods.base import MethodResources
from metaskill.methods.compose import fit_chain
from metaskill.methods.self_evolve import SelfEvolveConfig
from metaskill.tasks import get_task


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=40, help="inputs answered per round")
    ap.add_argument("--steps", type=int, default=30, help="LoRA steps per round")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--eval-limit", type=int, default=100, help="dev examples per round")
    ap.add_argument("--test-limit", type=int, default=200)
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/self_rounds.md")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="self_rounds-"))
    task = get_task(a.task)
    cfg = SelfEvolveConfig(rounds=a.rounds, samples=a.samples, n_train=a.n_train,
                           steps=a.steps, max_tokens=a.max_tokens, eval_limit=a.eval_limit,
                           refine=not a.no_refine, patience=a.rounds)
    base = load_lm("local")
    result = fit_chain(ZeroShot(base, max_tokens=a.max_tokens), task, task.examples("train"),
                       task.splits.get("dev"), [("self_evolve", cfg.model_dump())],
                       resources=MethodResources(work_dir=work, progress=sys.stderr.isatty(),
                                                 log=print))
    notes = result.reports[0].notes
    summary = {**notes, "best_accuracy": notes["dev_accuracy"]}
    rounds_dir = Path(notes["run_dir"])
    # held-out test, after the fit: base and the Solver the fit returned (best round)
    test = {"base": evaluate(ZeroShot(base, max_tokens=a.max_tokens), task, "test",
                             limit=a.test_limit, progress=False)}
    if summary["best_round"]:
        test[f"round {summary['best_round']}"] = evaluate(result.solver, task, "test",
                                                         limit=a.test_limit, progress=False)
        result.solver.lm.close()
    base.close()

    cmd = "python benchmarks/self_rounds.py " + " ".join(argv or sys.argv[1:])
    lines = [
        "# SELF self-evolution rounds", "",
        f"- command: `{cmd}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; nproc: "
        f"{os.cpu_count()}; load average at start {load0[0]:.1f}; total wall "
        f"{time.perf_counter() - t0:.0f} s",
        f"- model: SmolLM2-135M-Instruct (llama.cpp for answers and scoring, "
        f"transformers+peft for training); task `{a.task}`",
        f"- per round: {a.n_train} training inputs x {a.samples} sampled answers "
        f"(temperature {cfg.temperature}), self-feedback and refinement "
        f"{'off' if a.no_refine else 'on'}, curation by the task's verifier, LoRA "
        f"{a.steps} steps (rank {cfg.rank}, lr {cfg.learning_rate}, batch {cfg.batch_size}) "
        f"on everything curated so far, continuing from the previous adapter; dev "
        f"accuracy on {a.eval_limit} examples ({summary['dev']})",
        "", "## Dev accuracy per round", "",
        "| round | dev accuracy | n | curated this round | trained on | self-verdicts |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
        f"| 0 (base) | {summary['base']['accuracy']:.1%} | {summary['base'].get('n')} | | | |",
    ]
    for r in summary["rounds"]:
        verdicts = json.loads((rounds_dir / f"round-{r['round']}" / "candidates.json").read_text())
        counts: dict[str, int] = {}
        for c in verdicts.values():
            for v in c["verdicts"]:
                counts[str(v)] = counts.get(str(v), 0) + 1
        lines.append(f"| {r['round']} | {r['accuracy']:.1%} | {r.get('n')} | {r['curated']} | "
                     f"{r['trained_on']} | {json.dumps(counts)} |")
    lines += ["", f"Best round on dev: {summary['best_round']} "
              f"({summary['best_accuracy']:.1%}).", "", "## Test (held out)", "",
              "| model | test accuracy [95% CI] | n |", "| --- | ---: | ---: |"]
    for k, run in test.items():
        lo, hi = run.interval
        lines.append(f"| {k} | {run.accuracy:.1%} [{lo:.1%}, {hi:.1%}] | {run.n} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
