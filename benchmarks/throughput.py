"""Parallel sequences in the embedded llama.cpp backend: throughput against the sequential loop.

Three measurements, side by side in one process, each as a ratio to ``n_parallel=1`` (one
sample decoded after another, the loop the backend had before parallel sequences):

1. Generation tokens/s at 1, 4, 8 and 16 parallel sequences: ``--prompts`` chat prompts
   asking for a story, ``--tokens`` new tokens each, in one ``LM.complete`` call. The rate
   counts generated tokens over the call's wall time (prompt processing included).
2. A ``self_consistency`` evaluation (5 samples at temperature 0.7, zero-shot inner Solver)
   on ``--examples`` sst2 test examples: wall time before (``n_parallel=1``) and after
   (``n_parallel=8``, the default).
3. A 4-shot evaluation on the same sst2 examples: wall time before and after.

Targets (issue 24): >= 2.5x generation throughput at 8 sequences, >= 2x faster
self_consistency. The evaluations use the harness's default batch of 16 examples, no
response cache and no run store; each configuration loads its own model instance.

Usage:
    .venv/bin/python benchmarks/throughput.py [--prompts 32] [--tokens 64] [--examples 100]
        [--parallel 1,4,8,16] [--threads N] [--repeats 1]

Writes benchmarks/results/throughput.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cells import cpu_model

from metaskill.core.types import Request
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import KShot, ZeroShot
from metaskill.lm.llama import LlamaLM, builtin_model_path
from metaskill.methods.self_consistency import SelfConsistencySolver
from metaskill.tasks import get_task

TARGET_GEN = 2.5
TARGET_SC = 2.0
SUBJECTS = ["a lighthouse", "a lost key", "a robot cook", "the first snow", "a river trip",
            "an old map", "a night train", "a chess game", "a bee hive", "a storm at sea",
            "a quiet library", "a mountain hut", "a broken clock", "a market day",
            "a paper boat", "a fox and a crow"]


def make_lm(n_parallel: int, threads: int) -> LlamaLM:
    lm = LlamaLM(builtin_model_path("local"), spec="local", n_parallel=n_parallel,
                 n_threads=threads)
    lm.complete([Request(prompt="Hello", max_tokens=2), Request(prompt="Hi", max_tokens=2)],
                cache=False)  # load the model and (for n_parallel > 1) the parallel context
    return lm


def generation(n_parallel: int, threads: int, prompts: int, tokens: int) -> tuple[float, int]:
    """(generated tokens per wall second, tokens generated) for one complete() call."""
    reqs = [Request(messages=[{"role": "user", "content":
                               f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]} "
                               f"(version {i})."}], max_tokens=tokens)
            for i in range(prompts)]
    lm = make_lm(n_parallel, threads)
    try:
        t0 = time.perf_counter()
        out = lm.complete(reqs, cache=False)
        dt = time.perf_counter() - t0
    finally:
        lm.close()
    n = sum(c.usage.completion_tokens for c in out)
    return n / dt, n


def evaluation(kind: str, n_parallel: int, threads: int, examples: int) -> tuple[float, float]:
    """(wall seconds, accuracy) of a ``kind`` (self_consistency | 4-shot) sst2 evaluation."""
    task = get_task("sst2")
    lm = make_lm(n_parallel, threads)
    try:
        solver: Any
        if kind == "self_consistency":
            solver = SelfConsistencySolver(lm, ZeroShot(lm), n=5, temperature=0.7, seed=0)
        else:
            solver = KShot.for_task(lm, task, k=4, seed=0)
        t0 = time.perf_counter()
        run = evaluate(solver, task, "test", limit=examples, progress=False, batch_size=16)
        dt = time.perf_counter() - t0
    finally:
        lm.close()
    assert run.totals.n == examples
    return dt, run.accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32, help="requests in the generation call")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per request")
    ap.add_argument("--examples", type=int, default=100, help="sst2 test examples per eval")
    ap.add_argument("--parallel", default="1,4,8,16", help="n_parallel values (1 = the loop)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=1, help="median of this many runs each")
    ap.add_argument("--skip-evals", action="store_true", help="generation rates only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.md"))
    args = ap.parse_args()
    levels = sorted({int(x) for x in args.parallel.split(",")} | {1})
    load0 = os.getloadavg()

    gen: dict[int, list[float]] = {p: [] for p in levels}
    made: dict[int, int] = {}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all
        for p in levels:
            rate, n = generation(p, args.threads, args.prompts, args.tokens)
            gen[p].append(rate)
            made[p] = n
            print(f"generation n_parallel={p:2d}: {rate:7.1f} tok/s ({n} tokens)", flush=True)
    rates = {p: statistics.median(v) for p, v in gen.items()}

    evals: list[tuple[str, float, float, float, float]] = []
    if not args.skip_evals:
        for kind in ("self_consistency", "4-shot"):
            before, after, acc_b, acc_a = [], [], 0.0, 0.0
            for _ in range(args.repeats):
                dt, acc_b = evaluation(kind, 1, args.threads, args.examples)
                before.append(dt)
                dt, acc_a = evaluation(kind, 8, args.threads, args.examples)
                after.append(dt)
            b, a = statistics.median(before), statistics.median(after)
            evals.append((kind, b, a, acc_b, acc_a))
            print(f"{kind}: {b:.1f} s -> {a:.1f} s ({b / a:.2f}x), accuracy "
                  f"{acc_b:.3f} -> {acc_a:.3f}", flush=True)
    load1 = os.getloadavg()
    write(args, rates, made, evals, load0, load1)


def write(args: argparse.Namespace, rates: dict[int, float], made: dict[int, int],
          evals: list[tuple[str, float, float, float, float]],
          load0: tuple[float, float, float], load1: tuple[float, float, float]) -> None:
    cmd = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    base = rates[1]
    at8 = rates.get(8)
    sc = next((e for e in evals if e[0] == "self_consistency"), None)

    def verdict(value: float | None, target: float) -> str:
        if value is None:
            return "not measured"
        return f"{value:.2f}x ({'PASS' if value >= target else 'FAIL'})"

    lines = [
        "# Throughput: parallel sequences in the embedded llama.cpp backend",
        "",
        f"Command: `{cmd.strip()}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Machine: {os.cpu_count()} cores, CPU `{cpu_model()}`, {platform.machine()}, "
        f"Python {platform.python_version()}; llama.cpp threads: {args.threads}; "
        f"load average (1, 5, 15 min) {', '.join(f'{x:.1f}' for x in load0)} at the start, "
        f"{', '.join(f'{x:.1f}' for x in load1)} at the end.",
        "Model: SmolLM2-135M-Instruct Q4_1 (`local`). Each configuration loads its own model "
        "instance; no response cache, no run store; median of "
        f"{args.repeats} run(s) each.",
        "",
        f"Targets: >= {TARGET_GEN}x generation throughput at 8 sequences: "
        f"**{verdict(at8 / base if at8 else None, TARGET_GEN)}**; >= {TARGET_SC}x faster "
        f"self_consistency: **{verdict(sc[1] / sc[2] if sc else None, TARGET_SC)}**.",
        "",
        f"## Generation ({args.prompts} chat prompts, up to {args.tokens} new tokens each, "
        "one `complete` call)",
        "",
        "Rate = generated tokens over the call's wall time, prompt processing included "
        "(the prompts share the chat template's system header, which parallel sequences "
        "copy from a running sequence instead of evaluating it again).",
        "",
        "| n_parallel | generated tokens | tokens/s | ratio to the loop |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for p, r in sorted(rates.items()):
        name = "1 (the sequential loop)" if p == 1 else str(p)
        lines.append(f"| {name} | {made[p]} | {r:.1f} | {r / base:.2f} |")
    if evals:
        lines += [
            "",
            f"## Evaluations (sst2 test, {args.examples} examples, batches of 16)",
            "",
            "| evaluation | before: n_parallel=1 (s) | after: n_parallel=8 (s) | speed-up "
            "| accuracy before | accuracy after |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, b, a, acc_b, acc_a in evals:
            label = "self_consistency (5 samples, T=0.7, zero-shot)" if kind.startswith(
                "self") else "4-shot (greedy)"
            lines.append(f"| {label} | {b:.1f} | {a:.1f} | {b / a:.2f}x | {acc_b:.3f} "
                         f"| {acc_a:.3f} |")
    lines += [
        "",
        "Greedy answers of the parallel path equal the loop's except where the top two "
        "logits are a near tie (batched kernels round differently; "
        "tests/test_llama_parallel.py counts them), so accuracies may differ slightly.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
