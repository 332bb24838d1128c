"""Multiple choice by each example's own choices: every multiple-choice BIG-bench task here.

Writes ``benchmarks/results/multiple_choice.md`` (``--out``): per task, test accuracy with
its Wilson 95% interval for

* ``zero-shot free text`` -- the chat prompt, free generation (``constrain=False``), the
  verifier reads the first choice named in the reply;
* ``zero-shot constrained`` -- the same prompt, the reply held to the example's choices by
  a llama.cpp grammar (``choice_grammar``);
* ``likelihood`` -- the default ``likelihood`` Solver: each example's own choices ranked by
  log-likelihood after the zero-shot prompt (lm-evaluation-harness's way); ``acc`` (summed
  log-probability) and ``acc_norm`` (divided by the choice's length in characters) are
  both computed from the same scores, on dev and test, to pick the default;
* ``knn_demos`` -- nearest training demos, answer by likelihood over the example's choices;
  k among ``--knn-ks`` and the prompt format (chat template, plain completion) chosen on dev;
* ``raml`` -- the LM's likelihoods over the example's choices fused with the nearest
  training examples' votes (shared choices vote directly, other answers vote for the most
  similar choice); LM-side demo count among ``--raml-ks``, prompt variant, fusion weight
  and calibration chosen on dev;

against chance (the mean over test examples of 1 / number of choices), and the paired
bootstrap interval of the best row (highest mean test accuracy over tasks, so chosen on
test among the four non-likelihood rows) minus likelihood.

Data: every folder of ``/work/shared/data/bigbench/tasks`` whose examples carry
``target_scores`` (found by reading each ``task.json``), loaded with
``load_bigbench(mode="multiple_choice", seed=0)`` and its default split (train
min(100, 25%), dev min(50, 10%), the rest test), test cut to the first ``--limit``
examples. Methods fit on train and select on dev (``--dev-limit``); test is scored once.
The model is the embedded SmolLM2-135M-Instruct (llama.cpp, LM cache off). Rows are kept
per task under ``--work`` so an interrupted run resumes.

Example::

    nohup .venv/bin/python benchmarks/multiple_choice.py --threads 1 > /tmp/mc.log 2>&1 &
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

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("METASKILL_BIGBENCH", ROOT.parent / "shared/data/bigbench/tasks"))
ROWS = ["zero-shot free text", "zero-shot constrained", "likelihood", "knn_demos", "raml"]


def cpu_model() -> str:
    """The CPU model name, as lscpu reports it."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), "unknown")


def mc_tasks(root: Path) -> list[str]:
    """Task folders whose examples carry ``target_scores`` (multiple choice)."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.rglob("task.json")):
            exs = json.loads(f.read_text()).get("examples") or []
            if exs and all("target_scores" in e for e in exs):
                found.append(folder.name)
                break
    return found


def load(name: str, limit: int, dev_limit: int) -> tuple[Any, dict[str, list]]:
    from metaskill.tasks.bigbench import load_bigbench

    task = load_bigbench(path=str(DATA / name), mode="multiple_choice", seed=0)
    test = list(task.examples("test"))[:limit]
    # Decontaminate: a train/dev question that contains a test question (navigate's
    # instruction lists nest) would put that test input into fit-time prompts.
    raw = [t.metadata["raw_input"] for t in test]

    def clean(examples: list) -> list:
        return [e for e in examples if not any(r in e.metadata["raw_input"] and
                                               r != e.metadata["raw_input"] for r in raw)]
    return task, {"train": clean(list(task.examples("train"))),
                  "dev": clean(list(task.examples("dev")))[:dev_limit], "test": test}


def scored(solver: Any, task: Any, examples: list) -> tuple[list, list[float], float]:
    from metaskill.methods.demos import run_solver

    t0 = time.perf_counter()
    attempts, scores = run_solver(solver, task, examples, label=task.name)
    return attempts, scores, time.perf_counter() - t0


def named_no_choice(task: Any, attempts: list, examples: list) -> float:
    """Share of outputs that name none of the example's choices."""
    bad = sum(1 for a, e in zip(attempts, examples, strict=True)
              if not task.verifier.parse(a.output, e))
    return bad / max(1, len(examples))


def norm_accuracies(attempts: list, examples: list, chat: bool) -> dict[str, float]:
    """acc (summed log-prob) and acc_norm (per character) from the likelihood scores."""
    out = {"none": 0.0, "chars": 0.0}
    for a, e in zip(attempts, examples, strict=True):
        scores = a.meta.get("scores") or {}
        accepted = {s.casefold() for s in e.metadata.get("answers") or [e.answer]}
        for mode in out:
            def value(c: str, v: float | None, mode: str = mode) -> float:
                v = -1e9 if v is None else v
                return v / max(1, len(c if chat else " " + c)) if mode == "chars" else v
            best = max(scores, key=lambda c: value(c, scores[c]))
            out[mode] += float(best.casefold() in accepted)
    return {k: v / max(1, len(examples)) for k, v in out.items()}


def run_row(row: str, lm: Any, task: Any, splits: dict[str, list], args: Any) -> dict:
    from metaskill.eval.solvers import LikelihoodClassifier, ZeroShot
    from metaskill.methods.compose import MethodResources
    from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig
    from metaskill.methods.raml import Raml, RamlConfig

    test, dev, train = splits["test"], splits["dev"], splits["train"]
    out: dict[str, Any] = {"row": row}
    fit_s = 0.0
    if row == "zero-shot free text":
        solver = ZeroShot(lm, constrain=False)
    elif row == "zero-shot constrained":
        solver = ZeroShot(lm)
    elif row == "likelihood":
        solver = LikelihoodClassifier(lm)
        chat = solver.resolved_format() == "chat"
        dev_att, _, fit_s = scored(solver, task, dev)
        out["dev_norm"] = norm_accuracies(dev_att, dev, chat)
        out["normalize"] = solver.config.normalize
    else:
        res = MethodResources(embedder_spec="minilm")
        t0 = time.perf_counter()
        if row == "knn_demos":
            method: Any = KnnDemos(KnnDemosConfig(k_candidates=args.knn_ks), resources=res)
        else:
            method = Raml(RamlConfig(k_candidates=args.raml_ks), resources=res)
        solver = method.fit(ZeroShot(lm), task, train, dev)
        fit_s = time.perf_counter() - t0
        notes = method.report.notes
        out["fit"] = {k: notes.get(k) for k in ("k", "prompt_format", "instructions",
                                                "dev_accuracy", "weight", "calibrate",
                                                "dev_accuracy_lm_only",
                                                "dev_accuracy_retrieval_only", "choices")
                      if k in notes}
    attempts, scores, test_s = scored(solver, task, test)
    out.update(scores=scores, fit_s=fit_s, test_s=test_s,
               no_choice=named_no_choice(task, attempts, test),
               prompt_tokens=sum(a.usage.prompt_tokens for a in attempts) / len(test),
               errors=sum(1 for a in attempts if a.error))
    if row.startswith("zero-shot"):
        out["constrained"] = sum(bool(a.meta.get("constrained")) for a in attempts) / len(test)
    if row == "likelihood":
        out["test_norm"] = norm_accuracies(attempts, test,
                                           solver.resolved_format() == "chat")
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(results: dict[str, dict], meta: dict[str, Any]) -> str:
    from metaskill.eval.stats import paired_gain, wilson

    lines = [
        "# Multiple choice by each example's own choices (BIG-bench)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['cores']} cores ({meta['cpu']}); llama.cpp threads: "
        f"{meta['threads']}; model: {meta['model']} (embedded, LM cache off); embedder: "
        f"all-MiniLM-L6-v2. Wall time of this pass: {meta['wall_min']:.1f} min (rows stored "
        "by an earlier pass under the work folder are reused, not re-run; each row's own "
        "seconds are in its table).",
        "",
        "Data: every task folder under `../shared/data/bigbench/tasks` whose examples carry "
        "`target_scores`, loaded as multiple choice with the loader's default seeded split; "
        f"test cut to the first {meta['limit']} examples, dev to {meta['dev_limit']}. Methods "
        "fit on train and select on dev; test is scored once. Chance is the mean over test "
        "examples of 1/(number of choices). Accuracy in %, [Wilson 95% interval].",
        "",
    ]
    means = {r: [] for r in ROWS}
    for name, res in results.items():
        first = res[ROWS[0]]
        n = len(first["scores"])
        lines += [f"## {name} (n={n}, {res['_choices']} choices per example, chance "
                  f"{pct(res['_chance'])}%)", "",
                  "| row | accuracy | vs chance | no choice named | prompt tokens/ex | "
                  "fit s | test s | notes |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in ROWS:
            r = res[row]
            k = sum(r["scores"])
            lo, hi = wilson(k, n)
            acc = k / n
            means[row].append(acc)
            notes = ""
            if "constrained" in r:
                notes = f"constrained replies {pct(r['constrained'])}%"
            if row == "likelihood":
                notes = (f"normalize={r['normalize']}; dev acc/acc_norm "
                         f"{pct(r['dev_norm']['none'])}/{pct(r['dev_norm']['chars'])}, test "
                         f"{pct(r['test_norm']['none'])}/{pct(r['test_norm']['chars'])}")
            if "fit" in r:
                notes = ", ".join(f"{a}={pct(b) if 'accuracy' in a else b}"
                                  for a, b in r["fit"].items())
            if r.get("errors"):
                notes += f"; {r['errors']} errors"
            lines.append(f"| {row} | {pct(acc)} [{pct(lo)}, {pct(hi)}] | "
                         f"{100 * (acc - res['_chance']):+.1f} | {pct(r['no_choice'])}% | "
                         f"{r['prompt_tokens']:.0f} | {r['fit_s']:.0f} | {r['test_s']:.0f} | "
                         f"{notes} |")
        lines.append("")
    chance = [res["_chance"] for res in results.values()]
    mean = {r: sum(v) / len(v) for r, v in means.items()}
    others = [r for r in ROWS if r != "likelihood"]
    best = max(others, key=lambda r: mean[r])
    lines += ["## Summary (mean over tasks)", "",
              "| row | mean accuracy | tasks below chance |", "| --- | --- | --- |"]
    for row in ROWS:
        below = [n for n, res in results.items()
                 if sum(res[row]["scores"]) / len(res[row]["scores"]) < res["_chance"]]
        lines.append(f"| {row} | {pct(mean[row])} | {', '.join(below) or 'none'} |")
    lines.append(f"| chance | {pct(sum(chance) / len(chance))} | |")
    lines += ["", f"Best row (highest mean test accuracy among the non-likelihood rows, so "
              f"chosen on test): **{best}**. Paired bootstrap (2000 resamples of test "
              f"examples) of {best} minus likelihood, in points:", "",
              "| task | gain | 95% interval |", "| --- | --- | --- |"]
    pooled_a: list[float] = []
    pooled_b: list[float] = []
    for name, res in results.items():
        a, b = res[best]["scores"], res["likelihood"]["scores"]
        g, lo, hi = paired_gain(a, b)
        pooled_a += a
        pooled_b += b
        lines.append(f"| {name} | {100 * g:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
    g, lo, hi = paired_gain(pooled_a, pooled_b)
    lines.append(f"| all test examples pooled | {100 * g:+.1f} | [{100 * lo:+.1f}, "
                 f"{100 * hi:+.1f}] |")
    gain = mean[best] - mean["likelihood"]
    below_any = [(row, n) for row in ROWS for n, res in results.items()
                 if sum(res[row]["scores"]) / len(res[row]["scores"]) < res["_chance"]]
    lines += ["", "## Targets", "",
              f"- Nothing below chance: **{'met' if not below_any else 'not met'}**"
              + ("" if not below_any else " -- below chance: " + ", ".join(
                  f"{r} on {n}" for r, n in below_any)) + ".",
              f"- Best method >= likelihood + 5 points on average: {best} "
              f"{pct(mean[best])}% vs likelihood {pct(mean['likelihood'])}% "
              f"({100 * gain:+.1f} points): **{'met' if gain >= 0.05 else 'not met'}**.", ""]
    dev = [res["likelihood"]["dev_norm"] for res in results.values()]
    lines += ["## Length normalization of the likelihood ranking (dev)", "",
              f"Mean dev accuracy over tasks: acc (summed log-probability) "
              f"{pct(sum(d['none'] for d in dev) / len(dev))}%, acc_norm (per character) "
              f"{pct(sum(d['chars'] for d in dev) / len(dev))}%. The `likelihood` Solver's "
              f"default is `normalize={results[next(iter(results))]['likelihood']['normalize']}`.",
              ""]
    if meta.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in meta["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="", help="comma-separated folders (default: all MC)")
    ap.add_argument("--limit", type=int, default=50, help="test examples per task")
    ap.add_argument("--dev-limit", type=int, default=20, help="dev examples per task")
    ap.add_argument("--knn-ks", default="4", help="knn_demos k candidates")
    ap.add_argument("--raml-ks", default="0", help="raml LM-side demo counts")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--work", default="benchmarks/results/multiple_choice_work")
    ap.add_argument("--out", default="benchmarks/results/multiple_choice.md")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes")
    args = ap.parse_args()
    args.knn_ks = [int(x) for x in args.knn_ks.split(",")]
    args.raml_ks = [int(x) for x in args.raml_ks.split(",")]
    names = [t for t in args.tasks.split(",") if t] or mc_tasks(DATA)
    from metaskill.lm import load_lm
    from metaskill.lm.llama import builtin_model_path

    t_start = time.perf_counter()
    lm = load_lm("local", cache=False, n_threads=args.threads)
    work = Path(args.work)
    results: dict[str, dict] = {}
    for name in names:
        task, splits = load(name, args.limit, args.dev_limit)
        test = splits["test"]
        res: dict[str, Any] = {
            "_chance": sum(1 / len(e.metadata["choices"]) for e in test) / len(test),
            "_choices": "/".join(str(n) for n in sorted({len(e.metadata["choices"])
                                                         for e in test}))}
        for row in ROWS:
            cache = work / name / f"{row.replace(' ', '_')}.json"
            if cache.exists():
                res[row] = json.loads(cache.read_text())
                continue
            print(f"== {name}: {row}", file=sys.stderr, flush=True)
            res[row] = run_row(row, lm, task, splits, args)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(res[row]))
            print(f"   {row}: {pct(sum(res[row]['scores']) / len(test))}% "
                  f"({res[row]['fit_s'] + res[row]['test_s']:.0f} s)", file=sys.stderr,
                  flush=True)
        results[name] = res
    meta = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
            "cores": os.cpu_count(), "cpu": cpu_model(), "threads": args.threads,
            "model": builtin_model_path("local").name, "limit": args.limit,
            "dev_limit": args.dev_limit, "wall_min": (time.perf_counter() - t_start) / 60,
            "notes": args.note}
    Path(args.out).write_text(report(results, meta))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
