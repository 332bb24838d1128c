"""Baselines of the embedded model on sst2, trec and ag_news (300-example test splits).

Solvers: zero-shot, 4-shot and 8-shot (fixed random demos from the 200-example train pool,
seed 0) by generation with answer extraction, and zero-shot likelihood ranking of the
labels (``LM.score``). Chat format for the instruct model (its chat template), as
``--format auto`` picks; on sst2 the likelihood ranking is also run on the plain-completion
prompt (the form lm-evaluation-harness uses, for the cross-check).

Every evaluation is a stored Run (``metaskill runs show ID``). The script is resumable:
run it again after a kill and it reuses finished runs and resumes unfinished ones.
The LM cache is off, so tokens and wall times are those of real model calls.

Usage:
    .venv/bin/python benchmarks/baselines.py [--model local] [--tasks sst2,trec,ag_news]
        [--limit N] [--store PATH] [--html PATH]

Writes benchmarks/results/baselines.md (keeps a cross-check section written by
benchmarks/lm_eval_crosscheck.py, if there is one).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from metaskill.eval.harness import evaluate
from metaskill.eval.report import human_seconds, interval_text, pct, write_html
from metaskill.eval.run import Run
from metaskill.eval.solvers import KShot, LikelihoodClassifier, ZeroShot
from metaskill.eval.store import RunStore
from metaskill.lm import load_lm
from metaskill.tasks import get_task

RESULTS = Path(__file__).parent / "results"
CROSS_MARK = "<!-- cross-check -->"


def configs(task_name: str) -> list[tuple[str, Any]]:
    """(label, solver factory taking (lm, task)) pairs for one task."""
    out: list[tuple[str, Any]] = [
        ("zero-shot", lambda lm, t: ZeroShot(lm)),
        ("4-shot", lambda lm, t: KShot.for_task(lm, t, k=4, seed=0)),
        ("8-shot", lambda lm, t: KShot.for_task(lm, t, k=8, seed=0)),
        ("likelihood 0-shot", lambda lm, t: LikelihoodClassifier(lm)),
    ]
    if task_name == "sst2":
        out.append(("likelihood 0-shot, completion prompt",
                    lambda lm, t: LikelihoodClassifier(lm, format="completion")))
    return out


def find_run(store: RunStore, task: Any, solver_json: dict[str, Any], model: str,
             limit: int | None) -> Run | None:
    """The latest stored run of this exact task version, split, model, solver and limit."""
    for r in store.list(task=task.name):
        if (r.task_version == str(task.version) and r.split == "test" and r.limit == limit
                and r.model == model and r.solver.get("kind") == solver_json["kind"]
                and r.solver.get("state") == solver_json["state"]):
            return r
    return None


def _deadline(hhmm: str | None) -> float | None:
    if not hhmm:
        return None
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    t = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0, 0, 0, 0))
    return t - time.timezone  # mktime reads local time; we gave UTC


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="local")
    ap.add_argument("--tasks", default="sst2,trec,ag_news")
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default all)")
    ap.add_argument("--store", default=str(Path(__file__).parent / ".baselines.sqlite"))
    ap.add_argument("--out", default=str(RESULTS / "baselines.md"))
    ap.add_argument("--html", default=None, help="also write an HTML report of the runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (1: on a shared 2-core machine, 2 threads "
                         "contend with other jobs and run ~10x slower)")
    ap.add_argument("--chunk", type=int, default=48,
                    help="examples per solver per round-robin pass")
    ap.add_argument("--deadline", default=None,
                    help="UTC time HH:MM after which no new slice starts (runs stay resumable)")
    ap.add_argument("--report-only", action="store_true",
                    help="evaluate nothing; write the table from the stored runs")
    args = ap.parse_args()

    store = RunStore(args.store)
    lm = None if args.report_only else load_lm(args.model, cache=False, **(
        {"n_threads": args.threads} if args.model.startswith(("local", "gguf")) else {}))
    tasks = {name: get_task(name) for name in args.tasks.split(",")}
    plan = [(name, label, make(lm, tasks[name])) for name in tasks
            for label, make in configs(name)]
    results: dict[tuple[str, str], Run] = {}
    deadline = _deadline(args.deadline)
    # Round robin in slices of --chunk examples, so that every solver has results when the
    # deadline stops the work; every slice is committed and the next pass resumes it.
    while True:
        progressed = False
        for name, label, solver in plan:
            task = tasks[name]
            prev = find_run(store, task, solver.to_json(), args.model, args.limit)
            if args.report_only or (prev is not None and prev.status == "done") or (
                    deadline is not None and time.time() > deadline):
                if prev is not None:
                    results[(name, label)] = store.get(prev.id)
                continue
            run = evaluate(solver, task, "test", limit=args.limit, seed=0, store=store,
                           resume=prev.id if prev else None, batch_size=args.batch_size,
                           progress=sys.stderr.isatty(), max_new=args.chunk)
            progressed = True
            results[(name, label)] = run
            print(f"{time.strftime('%H:%M:%S')} {name:8s} {label:38s} n={run.n:3d}/"
                  f"{len(run.selection)} acc {pct(run.accuracy)} "
                  f"{interval_text(*run.interval)} tokens={run.totals.tokens} "
                  f"wall={human_seconds(run.totals.wall_s)}", flush=True)
        if not progressed:
            break
    if lm is not None:
        lm.close()
    rows = [(name, label, results[(name, label)]) for name in tasks
            for label, _ in configs(name) if (name, label) in results]

    n_desc = f"{args.limit} examples" if args.limit else "the 300-example test split"
    cmd = "python benchmarks/baselines.py " + " ".join(sys.argv[1:])
    lines = [
        "# Baselines: the embedded model on sst2, trec and ag_news",
        "",
        f"Model `{args.model}` (SmolLM2-135M-Instruct Q4_1 via llama.cpp for `local`), "
        f"{n_desc} of each task (seeded split protocol of `metaskill.tasks`, seed 0). "
        "Generation is greedy (temperature 0) in the model's chat format; the answer is the "
        "first line of the output, scored by the task's label verifier. k-shot demos are "
        "drawn once at random (seed 0) from the 200-example train pool and are the same for "
        "every test example (earlier user/assistant turns). Likelihood ranks the task's "
        "labels by summed log-probability after the zero-shot prompt. Intervals are Wilson "
        "95%. Tokens = prompt + completion tokens over the whole split, as llama.cpp "
        "counted them (likelihood: prompt once plus each label). Wall = seconds in the "
        "harness on a shared 2-core machine (other jobs were running): compare within a "
        "table, not across machines. The solvers are evaluated round robin in slices of "
        f"{args.chunk} examples until a deadline; a row with `n of 300` is an unfinished "
        "run: its first n examples of the seeded, shuffled test split (itself a random "
        "sample), and running the same command again resumes it.",
        "",
        "| task | solver | accuracy | 95% CI | n | errors | tokens | tokens/ex | wall | run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, label, r in rows:
        n = str(r.n) if r.status == "done" else f"{r.n} of {len(r.selection)} ({r.status})"
        lines.append(
            f"| {name} | {label} | {pct(r.accuracy)} | {interval_text(*r.interval)} | {n} | "
            f"{r.totals.errors} | {r.totals.tokens:,} | {r.tokens_per_example:.0f} | "
            f"{human_seconds(r.totals.wall_s)} | `{r.id}` |"
        )
    missing = [f"{name} {label}" for name in tasks for label, _ in configs(name)
               if (name, label) not in results]
    if missing:
        lines += ["", "Not run before the deadline: " + ", ".join(missing) + "."]
    chance = {"sst2": 2, "trec": 6, "ag_news": 4}
    lines += [
        "",
        "Chance: " + ", ".join(f"{t} {100 / n:.1f}% (uniform over {n} labels)"
                               for t, n in chance.items() if t in args.tasks.split(",")) + ".",
        "",
        f"Command: `{cmd.strip()}` (runs stored in `{Path(args.store).name}`; "
        "`metaskill runs show ID --store ...` shows any of them example by example).",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    out = Path(args.out)
    keep = ""
    if out.exists() and CROSS_MARK in out.read_text():
        keep = out.read_text().split(CROSS_MARK, 1)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + (f"\n{CROSS_MARK}{keep}" if keep else ""))
    print(f"wrote {out}")
    if args.html:
        write_html([r for _, _, r in rows], args.html, title="metaskill baselines")
        print(f"wrote {args.html}")


if __name__ == "__main__":
    main()
