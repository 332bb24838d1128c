"""Issue 23's evidence for meta-training across tasks: leave-one-out over sst2, trec, ag_news.

Each task of ``--tasks`` is held out in turn; the model is meta-trained on the rest of the
pool (every task that loads offline with the kinds asked, BIG-bench from ``--data``) and
scored on the held-out task's test split (the harness default split, a seeded subset of
``--n-test`` examples, the same examples for every row), with paired-bootstrap 95%
intervals of every gain (:func:`metaskill.eval.stats.paired_gain`).

Parts (``--parts``, comma-separated):

* ``retrieval`` -- :func:`metaskill.metalearn.retrieval.meta_train_retrieval` (LoRA on
  episodes: each input with its k nearest train demonstrations by MiniLM). Rows: base +
  knn_demos and meta-trained + knn_demos with the same demonstrations (one knn_demos Solver
  JSON: fixed k, plain-completion prompts, the held-out task's train split as the pool,
  loaded once on the base model and once on base + adapter). The ``--outside`` BIG-bench
  tasks are held out of every fold too (tasks a user would bring) and scored with each
  fold's adapter.
* ``tune`` -- :func:`metaskill.metalearn.tune.meta_tune` (yes/no questions from label
  descriptions). Rows: base zero-shot (the harness ``zero-shot`` Solver), base likelihood
  ranking of the labels (``likelihood``), base yes/no (the same questions on the untuned
  model), meta-tuned yes/no.

``localize`` and ``gpicl`` have their own script and results
(``benchmarks/metatrain_gpicl_localize.py`` -> ``metatrain_gpicl_localize.md``); this
report links them.

The model is the embedded SmolLM2-135M-Instruct: trained in transformers + peft on the
fp32 copy of its GGUF, served by llama.cpp with the adapter's GGUF export. Everything is
resumable from ``--work``: each fold's run folder (its manifest says which stages are
done) and every scored row (``scores/*.json``); rerun the same command after an
interruption. The markdown is rewritten after every row.

Usage::

    .venv/bin/python benchmarks/metatrain.py --threads 2                  # the full pass
    .venv/bin/python benchmarks/metatrain.py --tasks sst2 --n-test 4 --steps 1 \\
        --per-task 3 --k 2 --outside '' --work /tmp/mt-smoke \\
        --out /tmp/metatrain_smoke.md                                     # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import acc_cell, gain_cell, mean

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
OTHER = "metatrain_gpicl_localize.md"


def cpu_model() -> str:
    """The CPU model name, as lscpu reports it."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), "unknown")


# ---- scoring, stored per row -------------------------------------------------------------
def scored(path: Path, solver_fn: Any, task: Any, n_test: int,
           protocol: dict[str, Any]) -> dict[str, float]:
    """Per-example test scores of a Solver (example id -> score), stored at ``path`` with
    the fold's leave-out protocol."""
    if path.exists():
        return json.loads(path.read_text())["scores"]
    from metaskill.eval.harness import evaluate

    solver = solver_fn()
    t0 = time.perf_counter()
    try:
        run = evaluate(solver, task, "test", limit=n_test, seed=0, progress=sys.stderr.isatty())
    finally:
        solver.lm.close()
    scores = {r.example_id: float(r.score) for r in run.records}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"solver": solver.to_json()["kind"], "model": solver.lm.spec,
                                "seconds": round(time.perf_counter() - t0, 1),
                                "protocol": protocol, "scores": scores}, indent=1))
    print(f"  {path.stem}: {mean(list(scores.values())):.1%} on {len(scores)}", flush=True)
    return scores


def paired(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[float]]:
    """The two score lists over the examples both have, in one order."""
    ids = sorted(set(a) & set(b))
    return [a[i] for i in ids], [b[i] for i in ids]


def lm_for(spec: str, threads: int) -> Any:
    from metaskill.core.settings import Settings
    from metaskill.lm import load_lm

    return load_lm(spec, settings=Settings.from_env(threads=threads))


# ---- part 1: meta-training with demonstration retrieval -------------------------------------
def part_retrieval(a: argparse.Namespace, work: Path) -> list[str]:
    from metaskill.eval.solvers import load_solver
    from metaskill.metalearn.retrieval import RetrievalConfig, knn_solver_json, meta_train_retrieval
    from metaskill.tasks import get_task

    rows: list[dict[str, Any]] = []
    outside_rows: list[dict[str, Any]] = []
    for held in a.tasks:
        run_dir = work / "retrieval" / held
        cfg = RetrievalConfig(
            hold_out=[held, *a.outside], kinds=a.kinds, data=str(a.data),
            episodes={"k": a.k, "per_task": a.per_task, "prompt_format": "completion"},
            lora={"steps": a.steps, "batch_size": a.batch_size, "rank": a.rank,
                  "alpha": 2.0 * a.rank, "learning_rate": a.lr, "threads": a.threads})
        print(f"[retrieval] fold: {held} held out", flush=True)
        m = meta_train_retrieval("local", cfg, run_dir, progress=sys.stderr.isatty(),
                                 log=print)
        for name in [held, *a.outside]:
            task = get_task(name) if name in ("sst2", "trec", "ag_news") else _bigbench(a, name)
            data = knn_solver_json("local", task, a.k, "completion", "minilm")
            base = scored(run_dir / "scores" / f"{name}__base_knn.json",
                          lambda d=data: load_solver(d, lm=lm_for("local", a.threads)),
                          task, a.n_test, m["protocol"])
            meta = scored(run_dir / "scores" / f"{name}__meta_knn.json",
                          lambda d=data, sp=m["model"]: load_solver(d, lm=lm_for(sp, a.threads)),
                          task, a.n_test, m["protocol"])
            row = {"fold": held, "task": name, "train": m["protocol"]["train_tasks"],
                   "steps": m["train"]["steps"], "seconds": m["train"]["seconds"],
                   "pair": paired(meta, base)}
            (rows if name == held else outside_rows).append(row)
            STATE["retrieval"] = retrieval_section(a, rows, outside_rows)
            _write(a)
    return retrieval_section(a, rows, outside_rows)


def retrieval_section(a: argparse.Namespace, rows: list[dict[str, Any]],
                      outside_rows: list[dict[str, Any]]) -> list[str]:
    """The markdown of the retrieval part."""
    lines = [
        "## Meta-training with demonstration retrieval (Mueller et al. 2023)", "",
        f"knn_demos with k={a.k} nearest train demonstrations (MiniLM), plain-completion "
        "prompts, the same demonstrations for both rows; meta-trained: LoRA rank "
        f"{a.rank}, {a.steps} steps x batch {a.batch_size}, lr {a.lr}, on up to "
        f"{a.per_task} episodes per training task (kinds: {', '.join(a.kinds)}). Test "
        f"accuracy in % [Wilson 95%], n = {a.n_test} test examples per task.", "",
        "| held out | trained on | train s | base + knn_demos | meta-trained + knn_demos "
        "| gain, points [paired 95%] |", "|---|---|---|---|---|---|"]
    for r in rows:
        after, before = r["pair"]
        lines.append(f"| {r['task']} | {', '.join(r['train'])} | {r['seconds']:.0f} | "
                     f"{acc_cell(before)} | {acc_cell(after)} | {gain_cell(after, before)} |")
    if rows:
        gains = [mean(r["pair"][0]) - mean(r["pair"][1]) for r in rows]
        lines += ["", f"Mean gain over the {len(rows)} held-out tasks: "
                      f"{100 * mean(gains):+.1f} points (target: +5)."]
    if outside_rows:
        lines += ["", "### BIG-bench tasks outside training (held out of every fold)", "",
                  "| task | adapter of fold | base + knn_demos | meta-trained + knn_demos | "
                  "gain [paired 95%] |", "|---|---|---|---|---|"]
        for r in outside_rows:
            after, before = r["pair"]
            lines.append(f"| {r['task']} | {r['fold']} held out | {acc_cell(before)} | "
                         f"{acc_cell(after)} | {gain_cell(after, before)} |")
    return lines


def _bigbench(a: argparse.Namespace, name: str) -> Any:
    """A pool task by name (BIG-bench ones are named bigbench_<folder>)."""
    from metaskill.metalearn.pool import bigbench_folders
    from metaskill.tasks.bigbench import load_bigbench

    for folder in bigbench_folders(Path(a.data)):
        if f"bigbench_{folder.name}" == name:
            return load_bigbench(path=str(folder))
    raise SystemExit(f"--outside: no BIG-bench task '{name}' under {a.data}/bigbench")


# ---- part 2: meta-tuning for zero-shot ------------------------------------------------------
def part_tune(a: argparse.Namespace, work: Path) -> list[str]:
    from metaskill.eval.solvers import LikelihoodClassifier, ZeroShot, load_solver
    from metaskill.metalearn.tune import TuneConfig, meta_tune
    from metaskill.tasks import get_task

    rows: list[dict[str, Any]] = []
    for held in a.tasks:
        run_dir = work / "tune" / held
        cfg = TuneConfig(hold_out=[held], kinds=a.kinds, data=str(a.data),
                         per_task=a.per_task, negatives=1,
                         lora={"steps": a.steps, "batch_size": 2 * a.batch_size,
                               "rank": a.rank, "alpha": 2.0 * a.rank, "learning_rate": a.lr,
                               "threads": a.threads})
        print(f"[tune] fold: {held} held out", flush=True)
        m = meta_tune("local", cfg, run_dir, progress=sys.stderr.isatty(), log=print)
        task = get_task(held)
        solver_json = json.loads(Path(m["solvers"][held]).read_text())
        base_json = {**solver_json, "model": "local"}
        s = run_dir / "scores"
        proto = m["protocol"]
        arms = {
            "zero-shot": scored(s / "base_zero_shot.json",
                                lambda: ZeroShot(lm_for("local", a.threads)), task, a.n_test,
                                proto),
            "likelihood": scored(s / "base_likelihood.json",
                                 lambda: LikelihoodClassifier(lm_for("local", a.threads)),
                                 task, a.n_test, proto),
            "base yes/no": scored(s / "base_yesno.json",
                                  lambda d=base_json: load_solver(d, lm=lm_for("local", a.threads)),
                                  task, a.n_test, proto),
            "meta-tuned yes/no": scored(
                s / "meta_yesno.json",
                lambda d=solver_json, sp=m["model"]: load_solver(d, lm=lm_for(sp, a.threads)), task,
                a.n_test, proto),
        }
        rows.append({"task": held, "train": m["protocol"]["train_tasks"],
                     "questions": m["questions"], "seconds": m["train"]["seconds"],
                     "arms": arms})
        STATE["tune"] = tune_section(a, rows)
        _write(a)
    return tune_section(a, rows)


def gap(after: dict[str, float], before: dict[str, float]) -> float:
    """Mean paired difference of two score maps."""
    x, y = paired(after, before)
    return mean(x) - mean(y)


def tune_section(a: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    """The markdown of the tune part."""
    lines = [
        "## Meta-tuning for zero-shot (Zhong et al. 2021)", "",
        "Each label's question is `Is this text <description>?` (descriptions from the task; "
        "a task without them asks `Is the answer \"<label>\"?`); the prediction is the label "
        "whose question gets the most likely ` yes` (normalised against ` no`). Meta-tuned: "
        f"LoRA rank {a.rank}, {a.steps} steps x batch {2 * a.batch_size}, on up to "
        f"{a.per_task} examples per training task (one yes and one no question each). "
        f"Test accuracy in % [Wilson 95%], n = {a.n_test}.", "",
        "| held out | trained on | base zero-shot | base likelihood | base yes/no | "
        "meta-tuned yes/no | gain vs zero-shot | gain vs likelihood |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ar = r["arms"]
        meta = ar["meta-tuned yes/no"]
        cells = [acc_cell(paired(ar[k], meta)[0]) for k in
                 ("zero-shot", "likelihood", "base yes/no", "meta-tuned yes/no")]
        g1 = gain_cell(*paired(meta, ar["zero-shot"]))
        g2 = gain_cell(*paired(meta, ar["likelihood"]))
        lines.append(f"| {r['task']} | {', '.join(r['train'])} | {' | '.join(cells)} | {g1} | "
                     f"{g2} |")
    if rows:
        gz = mean([gap(r["arms"]["meta-tuned yes/no"], r["arms"]["zero-shot"]) for r in rows])
        gl = mean([gap(r["arms"]["meta-tuned yes/no"], r["arms"]["likelihood"]) for r in rows])
        lines += ["", f"Mean gain over the {len(rows)} held-out tasks: {100 * gz:+.1f} "
                      f"points vs base zero-shot, {100 * gl:+.1f} vs base likelihood "
                      "(target: +10)."]
    return lines


# ---- the report ---------------------------------------------------------------------------
PARTS = {"retrieval": part_retrieval, "tune": part_tune}
STATE: dict[str, list[str]] = {}


def _write(a: argparse.Namespace) -> None:
    """Write the report: the header, every part's latest section (kept in
    ``WORK/sections.json``, so ``--parts tune`` keeps the retrieval section), the link to
    the localize/gpicl report."""
    sections = Path(a.work) / "sections.json"
    stored = json.loads(sections.read_text()) if sections.exists() else {}
    stored.update(STATE)  # parts not run this time keep their last section
    sections.write_text(json.dumps(stored, indent=1))
    load = os.getloadavg()
    head = [
        "# Meta-training across tasks (issue 23): retrieval and meta-tuning", "",
        f"- command: `python benchmarks/metatrain.py {' '.join(a.argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; cores: "
        f"{os.cpu_count()}; CPU: {cpu_model()}; torch/llama.cpp threads: {a.threads}; load "
        f"average now {load[0]:.1f}",
        "- model: the embedded SmolLM2-135M-Instruct (LoRA trained in transformers + peft on "
        "the fp32 copy of its Q4_1 GGUF; served by llama.cpp with the adapter's GGUF export)",
        f"- protocol: leave one out over {', '.join(a.tasks)} (each held out in turn, "
        f"meta-trained on the rest of the pool: task kinds {', '.join(a.kinds)}, built-ins "
        f"plus BIG-bench from {a.data}); harness default splits; each fold's protocol "
        f"(train tasks, held-out tasks, versions) is in `{a.work}/<part>/<task>/manifest.json`",
        f"- work folder (resumable): `{a.work}`", ""]
    body: list[str] = []
    for name in PARTS:
        body += stored.get(name, []) + ([""] if name in stored else [])
    other = RESULTS / OTHER
    body += ["## Skill localization and GPICL", "",
             f"In `benchmarks/results/{OTHER}` (`benchmarks/metatrain_gpicl_localize.py`)"
             + ("." if other.exists() else "; not run yet."), ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(head + body))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="retrieval,tune", help="retrieval and/or tune")
    ap.add_argument("--tasks", default="sst2,trec,ag_news", help="held out in turn")
    ap.add_argument("--outside", default="bigbench_sports_understanding,bigbench_navigate",
                    help="BIG-bench tasks held out of every retrieval fold and scored too")
    ap.add_argument("--kinds", default="classification,multiple_choice")
    ap.add_argument("--data", default=str(DATA), help="shared data folder (bigbench/)")
    ap.add_argument("--n-test", type=int, default=100, help="test examples per task")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--per-task", type=int, default=200)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(RESULTS / "metatrain_work"))
    ap.add_argument("--out", default=str(RESULTS / "metatrain.md"))
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.tasks = [t for t in a.tasks.split(",") if t]
    a.outside = [t for t in a.outside.split(",") if t]
    a.kinds = [k for k in a.kinds.split(",") if k]
    parts = [p for p in a.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(unknown)} (have {', '.join(PARTS)}; "
                         "localize and gpicl: benchmarks/metatrain_gpicl_localize.py)")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for p in parts:
        STATE[p] = PARTS[p](a, work)
        _write(a)
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()
