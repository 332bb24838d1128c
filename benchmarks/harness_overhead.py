"""Harness overhead: examples per second through ``evaluate`` with the fake LM, store ON.

Measures everything the harness adds around the model: building prompts and requests,
the LM interface (validation, ScriptedLM), answer extraction, verification, records,
per-batch SQLite commits (WAL) of records and totals, and the progress bookkeeping
(the rich bar itself is off: it draws to a terminal). The LM is ScriptedLM, so the model
costs ~nothing and what is left is overhead. Target: >= 5,000 examples/s with the store on.

Also reported, side by side in the same process: the same evaluation with the store off
(``store=None``), so the store's share is visible as a ratio.

Usage:
    .venv/bin/python benchmarks/harness_overhead.py [--n 20000] [--repeats 3]

Writes benchmarks/results/harness_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from metaskill.core.types import Example
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import KShot, ZeroShot
from metaskill.eval.store import RunStore
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.base import Task, Verdict, Verifier

TARGET = 5000.0


class LabelMatch(Verifier):
    """Case-insensitive label match (what a classification verifier does)."""

    name = "bench-label"

    def verify(self, output: str, example: Example) -> Verdict:
        got = output.strip().lower()
        ok = got == (example.answer or "").lower()
        return Verdict(score=float(ok), reason="match" if ok else "mismatch", parsed=got)


def make_task(n: int) -> Task:
    """An sst2-shaped task of n synthetic reviews, each with one of 4 skills."""
    words = ["great", "dull", "moving", "tedious", "fun", "flat", "sharp", "messy"]
    test = [
        Example(
            id=f"e{i}",
            input=f"review {i}: a {words[i % 8]} film with {words[(i * 7) % 8]} pacing .",
            answer="positive" if i % 3 else "negative",
            skills=[f"skill{i % 4}"],
        )
        for i in range(n)
    ]
    train = [Example(id=f"t{i}", input=f"train review {i}", answer="positive") for i in range(50)]
    return Task(name="bench", kind="classification", labels=["negative", "positive"],
                template="Review: {input}\nSentiment:",
                instructions="Answer positive or negative.",
                splits={"train": train, "test": test}, verifier=LabelMatch())


def lm() -> ScriptedLM:
    # A mapping script (the common case in tests): first key found in the prompt.
    return ScriptedLM({"great": "positive", "dull": "negative"}, default="positive")


def measure(solver_factory, task: Task, store_on: bool, batch_size: int
            ) -> tuple[float, float]:
    """(examples per wall second, examples per CPU second of this process)."""
    n = len(task.splits["test"])
    with tempfile.TemporaryDirectory() as d:
        store = RunStore(Path(d) / "runs.sqlite") if store_on else None
        t0, c0 = time.perf_counter(), time.process_time()
        run = evaluate(solver_factory(), task, store=store, progress=False,
                       batch_size=batch_size)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if store is not None:  # the records really are there
            assert len(store.done_ids(run.id)) == n
            store.close()
        assert run.totals.n == n
    return n / dt, n / max(dc, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="examples per evaluation")
    ap.add_argument("--repeats", type=int, default=3, help="evaluations per configuration")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                         "harness_overhead.md"))
    args = ap.parse_args()

    task = make_task(args.n)
    configs = [
        ("zero-shot, chat, batch 16", lambda: ZeroShot(lm(), format="chat"), 16),
        ("zero-shot, completion, batch 16", lambda: ZeroShot(lm(), format="completion"), 16),
        ("4-shot, chat, batch 16", lambda: KShot(lm(), k=4, format="chat"), 16),
        ("zero-shot, chat, batch 64", lambda: ZeroShot(lm(), format="chat"), 64),
    ]
    rows = []
    load0 = os.getloadavg()[0]
    for name, factory, bs in configs:
        res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.repeats):  # interleave on/off so drift hits both alike
            for store_on in (True, False):
                res[store_on].append(measure(factory, task, store_on, bs))
        on = statistics.median(w for w, _ in res[True])
        off = statistics.median(w for w, _ in res[False])
        on_cpu = statistics.median(c for _, c in res[True])
        off_cpu = statistics.median(c for _, c in res[False])
        rows.append((name, on, off, on_cpu, off_cpu))
        print(f"{name:34s} store on {on:7.0f}/s ({on_cpu:7.0f}/cpu-s)   store off {off:7.0f}/s "
              f"({off_cpu:7.0f}/cpu-s)   on/off {on / off:.2f}", flush=True)
    load1 = os.getloadavg()[0]

    headline, headline_cpu = rows[0][1], rows[0][3]
    verdict = "PASS" if headline >= TARGET else "FAIL"
    verdict_cpu = "PASS" if headline_cpu >= TARGET else "FAIL"
    cmd = "python benchmarks/harness_overhead.py " + " ".join(sys.argv[1:])
    lines = [
        "# Harness overhead",
        "",
        f"Examples per second through `metaskill.eval.evaluate` with ScriptedLM (no model), "
        f"{args.n} examples per evaluation, median of {args.repeats} evaluations. "
        "Store on = every batch committed to a fresh SQLite (WAL) run store: the batch's "
        "records and the run's totals in one transaction. Each rate is given per wall "
        "second and per CPU second of the benchmark process (`time.process_time`): on a "
        "machine busy with other jobs the wall rate measures the share of CPU the process "
        "got; the CPU rate is what the harness itself costs, i.e. the wall rate on an idle "
        "core (the harness is single-threaded).",
        "",
        f"Target: >= {TARGET:,.0f} examples/s with the store on (zero-shot, batch 16): "
        f"**{headline:,.0f}/wall-s ({verdict}), {headline_cpu:,.0f}/CPU-s ({verdict_cpu})**; "
        f"1-minute load average {load0:.1f} at the start and {load1:.1f} at the end, on "
        f"{os.cpu_count()} cores.",
        "",
        "| configuration | store on (ex/wall-s) | store on (ex/CPU-s) | store off (ex/wall-s) "
        "| store off (ex/CPU-s) | on / off (wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {on:,.0f} | {onc:,.0f} | {off:,.0f} | {offc:,.0f} | {on / off:.2f} |"
              for n, on, off, onc, offc in rows]
    lines += [
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}; shared with other jobs, so "
        "wall numbers are noisy: compare the on/off ratio and the CPU rates.",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
