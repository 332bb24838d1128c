"""Scale-out: one process with 2 llama.cpp threads against 2 Ray workers with 1 thread each.

Measured on this machine (issue 24, part 2), side by side in one run:

* wall time of an sst2 k-shot evaluation of ``--n`` test examples (default 300) with the
  embedded model (SmolLM2-135M, no response cache) in three configurations:
  A. in this process, llama.cpp with 2 threads (``metaskill eval --threads 2``, the
     ``--workers 1`` path: Ray is not used);
  B. 2 Ray workers with 1 thread each (``--workers 2 --threads 1``), local cluster;
  C. 1 Ray worker with 2 threads (Ray's own overhead against A; ``--skip-ray-one`` skips it);
  the ratio A / B, the machine's load average at the start, and the pool start-up time
  (cluster + model loads) apart from the evaluation;
* the identical-results check: every record of B (and C) equals A's (timing and cache
  flags aside).

On paper (same file): the cost of a 100,000-example evaluation on N GPU workers with vLLM
endpoints, from the measured prompt and completion tokens per example and published vLLM
throughput figures (sources named in the output), or a figure you pass with
``--gpu-tokens-per-s``.

Usage:
    .venv/bin/python benchmarks/scale.py [--n 300] [--k 4] [--batch-size 16]
    .venv/bin/python benchmarks/scale.py --n 8 --k 1 --out /tmp/scale.md   # smoke size

Writes benchmarks/results/scale.md (and ``--json`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from cells import cpu_model

REPO = Path(__file__).resolve().parents[1]

#: Published vLLM throughput figures (generated tokens per second per GPU), each with its
#: source; see the "On paper" section of the output for how they are used.
PUBLISHED: tuple[dict[str, Any], ...] = (
    {"label": "H100, Llama-3.1-8B FP8, vLLM 0.10.0, MLPerf Inference v5.1 Offline",
     "tokens_per_s": 5777.0,
     "source": "Red Hat blog, \"Efficient and reproducible LLM inference: Red Hat MLPerf "
               "Inference v5.1 results\" (executive summary: 5777 tokens/sec Offline on a "
               "single H100); slug efficient-and-reproducible-llm-inference-red-hat-mlperf-"
               "inference-v51-results on redhat.com (read from a mirror copy)"},
    {"label": "L40S, Llama-3.1-8B FP8, vLLM 0.10.0, MLPerf Inference v5.1 Offline",
     "tokens_per_s": 1642.0,
     "source": "same Red Hat post (1642 tokens/sec Offline on a single L40S)"},
    {"label": "H100-80GB, Llama-3.1-8B-Instruct fp16, vLLM 0.21.0, 16 concurrent requests",
     "tokens_per_s": 1384.2,
     "source": "InferenceBench recipe \"concurrency sweep\", "
               "https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/ (table row "
               "conc=16: 1,384.2 tok/s; run of 2026-05-16, chatbot-short workload)"},
)


def comparable(run: Any) -> list[dict[str, Any]]:
    """A run's records without what may differ between two identical runs."""
    out = []
    for r in run.records:
        d = r.model_dump(exclude={"latency_s"})
        d["meta"] = {k: v for k, v in d["meta"].items() if k != "cached"}
        out.append(d)
    return out


def differing(a: Any, b: Any) -> int:
    """How many records of ``b`` differ from ``a``'s (a length mismatch counts them all)."""
    ra, rb = comparable(a), comparable(b)
    if len(ra) != len(rb):
        return max(len(ra), len(rb))
    return sum(x != y for x, y in zip(ra, rb, strict=True))


def run_in_process(solver: Any, task: Any, args: argparse.Namespace) -> tuple[Any, float]:
    """Configuration A: this process, llama.cpp with 2 threads. (run, eval seconds)."""
    from metaskill.core.settings import Settings
    from metaskill.eval.harness import evaluate
    from metaskill.lm import load_lm

    lm = load_lm("local", cache=False, settings=Settings.from_env(threads=2))
    getattr(lm, "llm", None)  # load outside the timing, as the workers do in their start
    try:
        t0 = time.perf_counter()
        run = evaluate(solver.with_lm(lm), task, limit=args.n, batch_size=args.batch_size,
                       progress=False)
        return run, time.perf_counter() - t0
    finally:
        lm.close()


def run_on_ray(solver: Any, task: Any, args: argparse.Namespace, workers: int,
               threads: int) -> tuple[Any, float, float]:
    """Ray workers (a local cluster). (run, eval seconds, pool start seconds)."""
    from metaskill.distributed.executor import RayExecutor, WorkerConfig
    from metaskill.eval.harness import evaluate

    t0 = time.perf_counter()
    ex = RayExecutor(WorkerConfig(workers=workers, lm="local", threads=threads, cache=False))
    try:
        ex.start()
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        run = evaluate(solver, task, limit=args.n, batch_size=args.batch_size, progress=False,
                       executor=ex)
        return run, time.perf_counter() - t1, start_s
    finally:
        ex.close()


def harness_rate() -> str | None:
    """The harness's measured bookkeeping rate (store on), from harness_overhead.md."""
    path = REPO / "benchmarks" / "results" / "harness_overhead.md"
    if not path.exists():
        return None
    m = re.search(r"\*\*([\d,]+)/wall-s", path.read_text())
    return m.group(1) if m else None


def paper(run: Any, args: argparse.Namespace) -> list[str]:
    """The "on paper" section: a 100,000-example eval on N GPU workers with vLLM."""
    n = args.paper_n
    p = run.totals.prompt_tokens / max(1, run.totals.n)
    c = run.totals.completion_tokens / max(1, run.totals.n)
    figures = list(PUBLISHED)
    if args.gpu_tokens_per_s:
        figures.append({"label": args.gpu_label, "tokens_per_s": args.gpu_tokens_per_s,
                        "source": "given with --gpu-tokens-per-s"})
    workers = [int(w) for w in args.paper_workers.split(",")]
    lines = [
        f"## On paper: {n:,} examples on N GPU workers with vLLM endpoints",
        "",
        f"Measured per example (run A above, sst2 {args.k}-shot, SmolLM2's tokenizer): "
        f"**{p:.1f} prompt + {c:.1f} completion tokens**. With `--workers N` each Ray worker "
        "holds an `openai:MODEL@URL` client to its own vLLM server (or one worker spreads "
        "requests over a pool, `openai:MODEL@URL1,URL2`), so the examples split evenly "
        "and the wall time is the GPU time divided by N.",
        "",
        "Formulas, for a published throughput R (generated tokens/s per GPU, measured by its "
        "source on its own prompt/output mix):",
        "",
        f"* decode-bound estimate: GPU-seconds = {n:,} x c / R; wall = that / N;",
        f"* upper bound: GPU-seconds = {n:,} x (p + c) / R (every prompt token priced like a "
        "generated one; prefill is in fact much cheaper per token, so the truth lies between "
        "the two).",
        "",
        "| GPU and source figure | R (tok/s) | GPU-hours (decode-bound) | GPU-hours (upper) | "
        + " | ".join(f"wall, N={w}" for w in workers) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in workers) + " |",
    ]
    for f in figures:
        r = float(f["tokens_per_s"])
        lo, hi = n * c / r, n * (p + c) / r
        walls = [f"{_dur(lo / w)} - {_dur(hi / w)}" for w in workers]
        lines.append(f"| {f['label']} | {r:,.0f} | {lo / 3600:.3g} | {hi / 3600:.3g} | "
                     + " | ".join(walls) + " |")
    lines += ["", "Sources:", ""]
    lines += [f"* {f['label']}: {f['source']}." for f in figures]
    rate = harness_rate()
    lines += [
        "",
        "Caveats: the published figures are for an 8B model; for SmolLM2-135M they are "
        "pessimistic (no published vLLM figure for a model this small was found). Multiply "
        "GPU-hours by your price per GPU-hour for the cost. The driver commits every batch "
        "to the run store; "
        + (f"benchmarks/results/harness_overhead.md measured {rate} examples/s of harness "
           f"bookkeeping with the store on, so {n:,} examples add about "
           f"{n / float(rate.replace(',', '')):.0f} s on the driver, not a bottleneck."
           if rate else "see benchmarks/harness_overhead.py for its rate."),
    ]
    return lines


def _dur(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="sst2 test examples")
    ap.add_argument("--k", type=int, default=4, help="demonstrations per prompt")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-ray-one", action="store_true", help="skip configuration C")
    ap.add_argument("--paper-n", type=int, default=100_000)
    ap.add_argument("--paper-workers", default="1,8,64")
    ap.add_argument("--gpu-tokens-per-s", type=float, default=None,
                    help="your own measured vLLM throughput (generated tokens/s per GPU)")
    ap.add_argument("--gpu-label", default="your GPU (--gpu-tokens-per-s)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.md")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from metaskill.eval.solvers import solver_from_name
    from metaskill.lm import load_lm
    from metaskill.tasks import get_task

    load0 = os.getloadavg()
    task = get_task("sst2")
    draw_lm = load_lm("local", cache=False)  # the demo draw needs no weights
    solver = solver_from_name("k-shot", draw_lm, task=task, k=args.k, seed=0)
    rows: dict[str, dict[str, Any]] = {}
    run_a, a_s = run_in_process(solver, task, args)
    rows["A"] = {"what": "1 process, 2 llama.cpp threads (`--workers 1 --threads 2`)",
                 "eval_s": a_s, "start_s": None, "diff": 0}
    run_b, b_s, b_start = run_on_ray(solver, task, args, workers=2, threads=1)
    rows["B"] = {"what": "2 Ray workers x 1 thread (`--workers 2 --threads 1`)",
                 "eval_s": b_s, "start_s": b_start, "diff": differing(run_a, run_b)}
    if not args.skip_ray_one:
        run_c, c_s, c_start = run_on_ray(solver, task, args, workers=1, threads=2)
        rows["C"] = {"what": "1 Ray worker x 2 threads (Ray's own cost against A)",
                     "eval_s": c_s, "start_s": c_start, "diff": differing(run_a, run_c)}
    load1 = os.getloadavg()
    write(args, rows, run_a, load0, load1)


def write(args: argparse.Namespace, rows: dict[str, dict[str, Any]], run_a: Any,
          load0: tuple[float, float, float], load1: tuple[float, float, float]) -> None:
    cmd = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
    ratio = rows["A"]["eval_s"] / rows["B"]["eval_s"]
    same = all(r["diff"] == 0 for r in rows.values())
    lines = [
        "# Scale-out: Ray workers against one process",
        "",
        f"Command: `{cmd.strip()}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Machine: {os.cpu_count()} cores, CPU `{cpu_model()}`, {platform.machine()}, "
        f"Python {platform.python_version()}; load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.1f}' for x in load0)} at the start, "
        f"{', '.join(f'{x:.1f}' for x in load1)} at the end.",
        f"Workload: sst2 test, {args.n} examples (seeded subset), k-shot with k={args.k} "
        f"(demos drawn once, seed 0), batch {args.batch_size}; SmolLM2-135M-Instruct Q4_1 "
        "(`local`), no response cache, no run store.",
        "",
        f"**A / B wall-time ratio: {ratio:.2f}** (above 1: the 2 workers were faster). "
        f"Identical results: **{'yes' if same else 'NO'}** (every record of each Ray run "
        "equals the in-process run's, timing and cache flags aside).",
        "",
        "| config | evaluation wall (s) | examples/s | pool start (s) | records differing "
        "from A |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, r in rows.items():
        start = "-" if r["start_s"] is None else f"{r['start_s']:.1f}"
        lines.append(f"| {key}. {r['what']} | {r['eval_s']:.1f} | "
                     f"{args.n / r['eval_s']:.2f} | {start} | {r['diff']} |")
    lines += [
        "",
        "The configurations run one after another in this order, each with its own "
        "model instances. Pool start = the local Ray cluster plus each worker loading its "
        "model, paid once "
        "per command (an archive search or the main job reuses the pool for every "
        "evaluation). On a 2-core machine shared with other jobs the ratio measures how "
        "llama.cpp's two threads in one process compare with two single-threaded processes "
        "on the cores the machine had free; it is not a many-machine figure.",
        "",
        *paper(run_a, args),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "ratio": ratio, "identical": same,
                                         "load0": load0, "load1": load1}, indent=1))


if __name__ == "__main__":
    main()
