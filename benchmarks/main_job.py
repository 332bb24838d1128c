"""The main job (`make run`) as a new user runs it, on this machine and on a slower one.

Runs ``metaskill run --time-budget 14`` from an empty ``METASKILL_HOME`` (no LM cache, no HF
copy of the model) twice: as ``make run`` does, and again with llama.cpp and torch held to
one thread (``--threads 1``: a machine about 2x slower). Each run measures the machine,
plans its stages to the budget and prints the plan; this script records the plan, the wall
time, the final table and what was skipped, and checks the targets of issue 17: both runs
within 15 minutes, word_reversal and trec >= 50% on test in both.

Writes ``benchmarks/results/main_job.md``.

Usage::

    .venv/bin/python benchmarks/main_job.py            # both runs, about 20 minutes
    .venv/bin/python benchmarks/main_job.py --only 1   # one run, one thread
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name, as lscpu reports it."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), "unknown")


def run_job(threads: int | None, work: Path, budget: float) -> dict:
    """One ``metaskill run`` from an empty home; its wall time, result and plan."""
    home, out = work / f"home-{threads or 'all'}", work / f"run-{threads or 'all'}"
    cmd = [str(ROOT / ".venv" / "bin" / "metaskill"), "run", "--time-budget", str(budget),
           "--out", str(out), "--no-progress"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "METASKILL_HOME": str(home)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"metaskill run failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    return {"cmd": " ".join(["metaskill", *cmd[1:]]), "wall_s": wall, "result": result,
            "summary": (out / "summary.md").read_text()}


def test_accuracy(summary: str, task: str) -> float | None:
    """The selected candidate's test accuracy of ``task`` in a summary table."""
    for line in summary.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1] == task and "(selected)" in cells[2]:
            return float(cells[4].split("%")[0]) / 100
    return None


def section(name: str, r: dict) -> list[str]:
    """The Markdown section of one run."""
    plan = r["result"].get("plan") or {}
    sp, sz = plan.get("speeds", {}), plan.get("sizes", {})
    acc = {t: test_accuracy(r["summary"], t) for t in ("trec", "word_reversal")}
    ok = r["wall_s"] <= 15 * 60 and all(a is not None and a >= 0.5 for a in acc.values())
    lines = [f"## {name}", "", f"Command: `{r['cmd']}` (empty `METASKILL_HOME`). Wall time "
             f"{r['wall_s'] / 60:.1f} min. Targets (<= 15 min, trec and word_reversal >= 50% "
             f"on test): **{'met' if ok else 'missed'}**.", "",
             f"Plan: measured {sp.get('prompt_tps', 0):.0f} prompt / {sp.get('gen_tps', 0):.0f}"
             f" generated tokens/s, {sp.get('lora_step_s') or 0:.2f} s per LoRA step (in "
             f"{sp.get('measure_s', 0):.0f} s); sizes dev {sz.get('n_dev')}, test "
             f"{sz.get('n_test')}, chains {sz.get('chains')}, training "
             f"{sz.get('train_steps')} steps (curve every {sz.get('train_eval_every')} on "
             f"{sz.get('train_curve_n')}); estimated {plan.get('estimate_s', 0) / 60:.1f} min "
             f"of {plan.get('budget_s', 0) / 60:.1f}. Changed from the defaults: "
             f"{'; '.join(plan.get('changes') or ['nothing'])}.", "", r["summary"].strip(), ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", type=int, default=None, help="run only with this many threads")
    ap.add_argument("--budget", type=float, default=14.0, help="--time-budget in minutes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/main_job.md"))
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="main_job-"))
    runs = [(f"{a.only} thread(s)", a.only)] if a.only else [
        ("Default (`make run`: all cores)", None), ("Held to 1 thread (`--threads 1`)", 1)]
    load0 = os.getloadavg()[0]
    lines = ["# Main job (`make run`) with a measured time plan", "",
             f"Command: `python benchmarks/main_job.py {' '.join(argv or sys.argv[1:])}`. "
             f"Machine: {cpu_model()}, {os.cpu_count()} cores, load average {load0:.1f} at "
             f"start. Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "Each run starts from an empty home (the first HF conversion of the model "
             "included), measures the machine, sizes its stages to the budget (the plan) and "
             "treats the budget as a hard limit. Selection is on dev only.", ""]
    for name, threads in runs:
        lines += section(name, run_job(threads, work, a.budget))
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
