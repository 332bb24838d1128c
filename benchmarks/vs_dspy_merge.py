"""Merge the per-pass ``vs_dspy`` tables of one configuration into one table.

``benchmarks/vs_dspy.py`` writes one report per invocation, and a grid too long for one
sitting is run in passes. This script reads those reports (markdown, as vs_dspy.py wrote
them), keeps the latest measurement of each (task, solver) -- files are read in the
order given, so list older files first -- except that a DSPy optimizer measured with
both adapters (ChatAdapter and JSONAdapter, in different passes) keeps the better of the
two, as the issue asks, and the other is listed under the table. It writes one table
with a ``source`` column naming the file each row comes from, then recomputes the
issue's first two targets per task over the merged rows (with :func:`vs_dspy.targets`,
the same code as the per-pass reports). dynaicl's target needs its fit report, which
the markdown does not carry, so its lines are quoted from the source files.

Only reports of one configuration may be merged: every file's split line must name the
same test and dev sizes, or the script stops with an error naming the odd one out.

Example::

    .venv/bin/python benchmarks/vs_dspy_merge.py \\
        benchmarks/results/vs_dspy_sst2_100.md benchmarks/results/vs_dspy_sst2_100_search.md \\
        --out benchmarks/results/vs_dspy.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_SPLIT = re.compile(r"\*\*(\d+) test\*\* and \*\*(\d+) dev\*\*")
_ACC = re.compile(r"([\d.]+) \[([\d.]+), ([\d.]+)\]")
_TOK = re.compile(r"(\d+) \((\d+)\)")
_CALLS = re.compile(r"(\d+) \+ (\d+)")


def _vs_dspy() -> Any:
    spec = importlib.util.spec_from_file_location("vs_dspy", ROOT / "benchmarks/vs_dspy.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_report(path: Path) -> tuple[tuple[int, int], dict[str, list[dict]],
                                      dict[str, list[str]]]:
    """(test n, dev n), rows per task, and the lines to quote per task of one report.

    Quoted: what a task's section says under its table before the targets (the other
    DSPy adapter's accuracy, failures, adaptmi's gate, fallbacks) and dynaicl's target.

    Example:
        >>> # parse_report(Path("benchmarks/results/vs_dspy_sst2_100.md"))  # doctest: +SKIP
    """
    text = path.read_text()
    m = _SPLIT.search(text)
    if not m:
        raise SystemExit(f"{path}: no split line ('**N test** and **M dev**'); is it a "
                         "vs_dspy.py report?")
    n_test, n_dev = int(m.group(1)), int(m.group(2))
    rows: dict[str, list[dict]] = {}
    dyn: dict[str, list[str]] = {}
    task = None
    in_targets = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            name = line[3:].strip()
            task = name if name in ("sst2", "trec", "ag_news") else None
            in_targets = False
            continue
        if task is None:
            continue
        if line.startswith("Targets:"):
            in_targets = True
            continue
        if not in_targets and line.strip() and not line.startswith("| "):
            dyn.setdefault(task, []).append(line)
            continue
        if line.startswith("- **dynaicl matches"):
            dyn.setdefault(task, []).append(line)
            if i + 1 < len(lines) and lines[i + 1].startswith("  On test:"):
                dyn[task].append(lines[i + 1])
            continue
        if not line.startswith("| ") or line.startswith("| side") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        side, solver, adapter, acc, tok, comp, calls, wall, pf = cells[:9]
        row: dict[str, Any] = {"side": side, "name": solver, "adapter": adapter,
                               "n": n_test, "source": path.name, "error": None,
                               "cells": cells, "notes": []}
        am = _ACC.match(acc)
        if am:
            row.update(accuracy=float(am.group(1)) / 100, lo=float(am.group(2)) / 100,
                       hi=float(am.group(3)) / 100)
        else:
            row.update(accuracy=0.0, lo=0.0, hi=0.0, error=acc.removeprefix("failed: "))
        tm, cm = _TOK.match(tok), _CALLS.match(calls)
        if not (tm and cm):
            raise SystemExit(f"{path}: cannot read the row {line!r}")
        row.update(infer_tokens=int(tm.group(1)),
                   infer_prompt_tokens=int(tm.group(2)) * n_test,
                   compile_tokens=int(comp), compile_calls=int(cm.group(1)),
                   infer_calls=int(cm.group(2)), wall_s=float(wall), parse=pf)
        rows.setdefault(task, []).append(row)
    return (n_test, n_dev), rows, dyn


def _better(a: dict, b: dict) -> bool:
    """Whether row ``a`` beats row ``b`` (a failed run loses to any finished one)."""
    return (a["error"] is None, a["accuracy"]) > (b["error"] is None, b["accuracy"])


def _adapter_line(r: dict) -> str:
    acc = f"failed ({r['error']})" if r["error"] else f"{100 * r['accuracy']:.1f}%"
    return (f"Other adapter: {r['name']} {r['adapter']}: {acc}, parse failures "
            f"{r['parse']}, {r['compile_tokens'] + r['infer_tokens']} tokens")


def merge(paths: list[Path]) -> tuple[tuple[int, int], dict[str, list[dict]], dict]:
    """Rows per task, the latest file winning per (task, solver); all files one split.

    A DSPy row whose adapter differs from the stored row's competes with it instead: the
    better accuracy stays in the table and the other becomes a quoted "Other adapter" line.
    """
    split = None
    merged: dict[str, dict[str, dict]] = {}
    dyn: dict[str, list[tuple[str, str]]] = {}
    others: dict[str, dict[tuple[str, str], dict]] = {}
    for p in paths:
        s, rows, d = parse_report(p)
        if split is None:
            split = s
        elif s != split:
            raise SystemExit(f"{p}: split {s[0]} test / {s[1]} dev differs from the first "
                             f"file's {split[0]} / {split[1]}; merge one configuration only.")
        for task, rs in rows.items():
            for r in rs:
                old = merged.setdefault(task, {}).get(r["name"])
                if old is not None and r["side"] == "dspy" and old["adapter"] != r["adapter"]:
                    keep, other = (r, old) if _better(r, old) else (old, r)
                    merged[task][r["name"]] = keep
                    others.setdefault(task, {})[(r["name"], other["adapter"])] = other
                    others[task].pop((r["name"], keep["adapter"]), None)
                    continue
                merged[task][r["name"]] = r  # later file wins
        for task, ls in d.items():
            dyn.setdefault(task, []).extend((p.name, x) for x in ls)
    for task, od in others.items():
        for o in od.values():
            dyn.setdefault(task, []).append((o["source"], _adapter_line(o)))
    order = {"dspy": 0, "baseline": 1, "metaskill": 2}
    out = {t: sorted(rs.values(), key=lambda r: order.get(r["side"], 3))
           for t, rs in merged.items()}
    return split or (0, 0), out, dyn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="vs_dspy.py reports, oldest first")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--note", action="append", default=[], help="a line for Notes")
    args = ap.parse_args()
    missing = [str(p) for p in args.reports if not p.is_file()]
    if missing:
        raise SystemExit(f"no such report: {', '.join(missing)}")
    vs = _vs_dspy()
    (n_test, n_dev), per_task, dyn = merge(args.reports)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rel = [os.path.relpath(p.resolve(), ROOT) for p in args.reports]
    lines = [
        "# metaskill vs DSPy (inference-time adaptation, SmolLM2-135M-Instruct Q4_1), merged",
        "",
        f"Command: `python benchmarks/vs_dspy_merge.py {' '.join(rel)} --out "
        f"{os.path.relpath(args.out.resolve(), ROOT)}"
        f"{' --note ...' * len(args.note)}`"
        f"{' (each --note is a line of Notes)' * bool(args.note)}  ",
        f"Date: {now}; machine: {os.cpu_count()} cores. The rows were measured by "
        "`benchmarks/vs_dspy.py` in the passes named in the `source` column (each source "
        "file gives its command, date and notes); this file only merges them, the latest "
        "file winning where a row was measured twice (for a DSPy optimizer run with both "
        "adapters, the better adapter's row).",
        "",
        f"Split: harness default (train pool 200, dev 100, test 300, seed 0) cut to the "
        f"first **{n_test} test** and **{n_dev} dev** examples; the same cut in every source. "
        "Columns as in the sources: accuracy with 95% Wilson interval; inference tokens "
        "(prompt + completion; in brackets mean prompt tokens per example); compile tokens "
        "(DSPy compile, metaskill dev selection/probing); LM calls; wall seconds (2 cores); "
        "parse failures (outputs with no label word).",
        "",
    ]
    for task in ("sst2", "trec", "ag_news"):
        rows = per_task.get(task)
        if not rows:
            continue
        lines += [f"## {task}", "",
                  "| side | solver | adapter | accuracy [95% CI] | infer tokens (prompt/ex) | "
                  "compile tokens | LM calls (compile + infer) | wall s | parse failures | "
                  "source |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append("| " + " | ".join(r["cells"][:9]) + f" | {r['source']} |")
        tl = [x for x in vs.targets(rows) if not x.startswith("- **dynaicl")]
        lines += ["", "Targets (recomputed over the merged rows):", "", *tl]
        quoted = dyn.get(task, [])
        for src, x in quoted:
            if x.startswith(("- **dynaicl", "  On test:")):
                lines.append(f"{x} [{src}]")
        if not any(x.startswith("- **dynaicl") for _, x in quoted):
            lines.append("- **dynaicl target**: no dynaicl row in the merged reports.")
        other = [(src, x) for src, x in quoted
                 if not x.startswith(("- **dynaicl", "  On test:"))]
        if other:
            lines += ["", "From the sources' notes under their tables:", ""]
            lines += [f"- [{src}] {x.removeprefix('- ')}" for src, x in other]
        lines.append("")
    if args.note:
        lines += ["## Notes", "", *[f"- {n}" for n in args.note], ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
