"""Structured outputs, before and after: the n=100 rows of self_refine, multi_critique,
meta_prompting and adaptmi on sst2, trec and ag_news, re-run with constrained replies.

"Before" is the stored per-row result of ``benchmarks/vs_dspy.py`` (free-text critiques,
conductor and teacher replies; ``benchmarks/results/vs_dspy_work_100``, measured
2026-11-28/29). "After" runs the same method rows through the same code path
(``vs_dspy.run_method``: same chains and configs, same splits -- harness default cut to the
first 100 test and 50 dev examples --, same in-process llama.cpp model, LM cache off) with
the current package, whose methods ask for JSON-schema-constrained replies. Results are
kept per row under ``--work``, so an interrupted run resumes.

Columns per row: accuracy [Wilson 95%], the paired gain after - before on the same 100
test examples with its bootstrap 95% interval, final-answer parse failures (outputs with
no label word), fallbacks (test inputs where the method's parsed reply was unusable and
the unadapted answer stood; dev fallbacks from the fit report), inference and compile
tokens, and wall seconds.

Example::

    .venv/bin/python benchmarks/structured_outputs.py --tasks sst2 --methods self_refine \\
        --threads 2 --out /tmp/structured.md
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import vs_dspy  # noqa: E402  (the benchmark module next to this one)

METHODS = ["self_refine", "multi_critique", "meta_prompting", "adaptmi"]
BEFORE = ROOT / "benchmarks" / "results" / "vs_dspy_work_100"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def dev_fallbacks(notes: list[dict]) -> str:
    """The dev fallbacks the fit report recorded (as ``n`` or a dict of counts)."""
    for n in notes or []:
        fb = n.get("fallbacks")
        if fb is None:
            continue
        if isinstance(fb, dict):
            return ", ".join(f"{k} {v}" for k, v in fb.items()) or "0"
        return str(fb)
    return "-"


def correct(task: Any, test: list, outputs: list[str]) -> list[float]:
    return [v.score for v in task.verifier.verify_batch(outputs, test)]


def row_cells(task: Any, test: list, r: dict) -> dict:
    s = vs_dspy.score_row(task, test, r["outputs"])
    return {"acc": f"{100 * s['accuracy']:.1f} [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]",
            "parse": f"{100 * s['no_label'] / s['n']:.0f}%",
            "fb": (f"{r['fallbacks']}/{s['n']}" if r.get("fallbacks") is not None else "-")
            + f" (dev: {dev_fallbacks(r.get('notes'))})",
            "tok": r["infer_prompt_tokens"] + r["infer_completion_tokens"],
            "ctok": r["compile_tokens"], "wall": r["compile_s"] + r["infer_s"]}


def run_rows(args: argparse.Namespace) -> dict[str, dict[str, tuple[dict | None, dict]]]:
    from metaskill.lm import load_lm
    from metaskill.methods.compose import MethodResources

    lm = None
    out: dict[str, dict[str, tuple[dict | None, dict]]] = {}
    for name in args.tasks:
        task, splits = vs_dspy.load_splits(name, args.limit, args.dev_limit)
        folder = Path(args.work) / name
        folder.mkdir(parents=True, exist_ok=True)
        res = MethodResources(embedder_spec="minilm")
        out[name] = {}
        for m in args.methods:
            path = folder / f"ms_{m}.json"
            if path.exists():
                after = json.loads(path.read_text())
            elif args.stored_only:
                continue
            else:
                if lm is None:
                    lm = load_lm("local", cache=False, n_threads=args.threads)
                print(f"== {name}: {m}", file=sys.stderr, flush=True)
                after = vs_dspy.run_method(m, lm, task, splits, res, len(splits["dev"]))
                path.write_text(json.dumps(after))
            old = BEFORE / name / f"ms_{m}.json"
            before = json.loads(old.read_text()) if old.exists() else None
            out[name][m] = (before, after)
    return out


def report(args: argparse.Namespace, rows: dict, started: float) -> list[str]:
    from metaskill.eval.stats import paired_gain

    lines = [
        "# Structured outputs: constrained replies, before and after "
        "(SmolLM2-135M-Instruct Q4_1)", "",
        f"Command: `python benchmarks/structured_outputs.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} "
        f"cores, {cpu_model()}, Python {platform.python_version()}; this pass took "
        f"{(time.time() - started) / 60:.0f} min (rows already stored are reused).", "",
        "Before: the stored rows of `benchmarks/vs_dspy.py` (`vs_dspy_work_100`, free-text "
        "replies parsed by regular expressions, one retry). After: the same rows re-run "
        "through the same code path and splits (first 100 test, 50 dev; fit on the train "
        "pool, selection on dev) with the methods asking for JSON-schema-constrained "
        "replies. Gain: after - before on the same test examples, paired bootstrap 95% "
        "interval (2000 resamples).", "",
    ]
    missing = [f"{m} on {t}" for t in args.tasks for m in args.methods
               if m not in rows.get(t, {})]
    for name, per in rows.items():
        if not per:
            continue
        task, splits = vs_dspy.load_splits(name, args.limit, args.dev_limit)
        test = splits["test"]
        lines += [f"## {name}", "",
                  "| method | when | accuracy [95% CI] | gain [95% CI] | answer parse "
                  "failures | fallbacks (test; dev) | infer tokens | compile tokens | wall s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m, (before, after) in per.items():
            gain = "-"
            if before is not None:
                g, lo, hi = paired_gain(correct(task, test, after["outputs"]),
                                        correct(task, test, before["outputs"]))
                gain = f"{100 * g:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            for when, r in (("before", before), ("after", after)):
                if r is None:
                    lines.append(f"| {m} | {when} | not measured | | | | | | |")
                    continue
                c = row_cells(task, test, r)
                lines.append(f"| {m} | {when} | {c['acc']} | {gain if when == 'after' else ''}"
                             f" | {c['parse']} | {c['fb']} | {c['tok']} | {c['ctok']} | "
                             f"{c['wall']:.0f} |")
        lines.append("")
    if missing:
        lines += ["## Not measured in this pass", "", ", ".join(missing) + ".", ""]
    if args.note:
        lines += ["## Notes", "", *[f"- {n}" for n in args.note], ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="sst2,trec,ag_news")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--dev-limit", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "structured_work"))
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--stored-only", action="store_true",
                    help="report only the rows already stored under --work (run nothing)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"
                                         / "structured_outputs.md"))
    args = ap.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.methods = [m for m in args.methods.split(",") if m]
    started = time.time()
    rows = run_rows(args)
    Path(args.out).write_text("\n".join(report(args, rows, started)))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
