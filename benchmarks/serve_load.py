"""Load benchmark of ``metaskill serve``: throughput, latency, lost requests, server overhead.

Writes ``benchmarks/results/serve_load.md``. Two parts, in one run:

1. **Fake LM (protocol overhead).** ``--fake-requests`` chat requests (default 200) at
   concurrency ``--concurrency`` (default 8) against an in-process server (uvicorn thread
   on 127.0.0.1) with a scripted LM that echoes its input. Every answer must name its own
   input (nothing lost or mixed up); errors are counted, not hidden. A quarter are streamed.
2. **Real model.** A 4-shot SST-2 Solver (demos drawn with seed 0 from the package's SST-2
   train split) on the embedded SmolLM2-135M, cache off, ``--real-requests`` SST-2 test
   sentences. (a) Each is answered by ``solver.solve`` directly (on a worker thread, as
   the server does) and through the server (one client), back to back, the order
   alternating, so load changes on this shared machine fall on both: the time ratio is
   the server's per-request cost. (b) All of them from ``--concurrency`` concurrent
   clients: throughput, latency, lost requests. Served answers must equal the direct ones
   (greedy, same prompts). Both paths use the same loaded model; two untimed calls
   through each warm it up first.

Usage::

    .venv/bin/python benchmarks/serve_load.py                       # 200 fake + 16 real
    .venv/bin/python benchmarks/serve_load.py --real-requests 8     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from metaskill.core.types import Example
from metaskill.eval.solvers import KShot
from metaskill.lm.fake import ScriptedLM
from metaskill.serve import ServerThread, create_app

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serve_load.md"
MODEL = "bench"


async def _drive(base_url: str, inputs: list[str], concurrency: int, stream_every: int = 0
                 ) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors: list[str] = []

    async def one(i: int, text: str) -> str | None:
        async with sem:
            t0 = time.perf_counter()
            try:
                msgs = [{"role": "user", "content": text}]
                if stream_every and i % stream_every == 0:
                    stream = await client.chat.completions.create(model=MODEL, messages=msgs,
                                                                  stream=True)
                    out = "".join([c.choices[0].delta.content or "" async for c in stream
                                   if c.choices])
                else:
                    r = await client.chat.completions.create(model=MODEL, messages=msgs)
                    out = r.choices[0].message.content or ""
            except openai.OpenAIError as e:
                errors.append(f"{type(e).__name__}: {e}")
                return None
            lat.append(time.perf_counter() - t0)
            return out

    t0 = time.perf_counter()
    try:
        outs = await asyncio.gather(*(one(i, t) for i, t in enumerate(inputs)))
    finally:
        await client.close()
    wall = time.perf_counter() - t0
    return {"outputs": outs, "wall": wall, "lat": sorted(lat), "errors": errors}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def fake_part(n: int, concurrency: int) -> dict[str, Any]:
    lm = ScriptedLM(lambda p, r: "re: " + p.splitlines()[-2])
    from metaskill.eval.solvers import ZeroShot

    app = create_app(ZeroShot(lm, format="chat"), model_id=MODEL)
    inputs = [f"request number {i}" for i in range(n)]
    with ServerThread(app) as srv:
        res = asyncio.run(_drive(srv.base_url, inputs, concurrency, stream_every=4))
    wrong = sum(1 for i, o in enumerate(res["outputs"])
                if o is not None and o != f"re: user: request number {i}")
    lost = sum(1 for o in res["outputs"] if o is None)
    return {**res, "n": n, "wrong": wrong, "lost": lost, "backend_calls": len(lm.calls)}


def real_part(n: int, concurrency: int, threads: int | None) -> dict[str, Any]:
    from metaskill.lm import load_lm
    from metaskill.tasks import get_task

    task = get_task("sst2")
    kwargs = {"n_threads": threads} if threads else {}
    lm = load_lm("local", cache=False, **kwargs)
    solver = KShot.for_task(lm, task, k=4, seed=0)
    inputs = [e.text for e in task.examples("test")[:n]]
    app = create_app(solver, task, model_id=MODEL)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=600)

        def served_one(text: str) -> str:
            r = client.chat.completions.create(model=MODEL,
                                               messages=[{"role": "user", "content": text}])
            return r.choices[0].message.content or ""

        for w in inputs[-2:]:  # untimed warm-up of both paths (the first calls run slow)
            solver.solve(task, [Example(id="warm", input=w)])
            served_one(w)
        # (a) per-request cost: each input answered directly and through the server, one
        # right after the other, the order alternating, so load changes hit both alike.
        # The direct calls run on a worker thread of their own, as the server's do: in
        # earlier runs here, calls from the main thread ran slower under load.
        pool = ThreadPoolExecutor(max_workers=1)
        direct_s: list[float] = []
        served_s: list[float] = []
        direct: list[str] = []
        for i, text in enumerate(inputs):
            for path in (("direct", "served") if i % 2 == 0 else ("served", "direct")):
                t0 = time.perf_counter()
                if path == "direct":
                    ex = Example(id=f"d{i}", input=text)
                    direct.append(pool.submit(solver.solve, task, [ex]).result()[0].output)
                    direct_s.append(time.perf_counter() - t0)
                else:
                    served_one(text)
                    served_s.append(time.perf_counter() - t0)
        client.close()
        pool.shutdown()
        # (b) throughput and loss at the given concurrency.
        res = asyncio.run(_drive(srv.base_url, inputs, concurrency))
    served = res["outputs"]
    same = sum(1 for a, b in zip(direct, served, strict=True) if a == b)
    acc = sum(1 for o, e in zip(served, task.examples("test")[:n], strict=True)
              if o is not None and task.verifier.verify(o, e).score == 1.0)
    lm.close()
    return {"n": n, "wall": res["wall"], "lat": res["lat"], "errors": res["errors"],
            "direct_s": direct_s, "served_s": served_s, "same": same, "accuracy": acc / n,
            "lost": sum(1 for o in served if o is None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fake-requests", type=int, default=200)
    ap.add_argument("--real-requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cmd = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()

    fake = fake_part(args.fake_requests, args.concurrency)
    print(f"fake: {fake['n']} requests in {fake['wall']:.2f} s, lost {fake['lost']}, "
          f"wrong {fake['wrong']}, errors {len(fake['errors'])}")
    real = real_part(args.real_requests, args.concurrency, args.threads) \
        if args.real_requests else None
    if real:
        print(f"real: per request served {sum(real['served_s']):.1f} s vs direct "
              f"{sum(real['direct_s']):.1f} s; concurrent {real['n']} in {real['wall']:.1f} s; "
              f"same answers {real['same']}/{real['n']}")
    load_after = os.getloadavg()

    lines = [
        "# metaskill serve: load benchmark",
        "",
        f"- command: `{cmd.strip()}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} cores (nproc), {platform.machine()}, Python "
        f"{platform.python_version()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (the machine is shared: other jobs ran alongside)",
        f"- concurrency: {args.concurrency} clients (official `openai` AsyncOpenAI client, "
        "loopback)",
        "",
        "## 1. Fake LM: protocol overhead, nothing lost",
        "",
        "| requests | streamed | wall s | req/s | p50 ms | p95 ms | lost | wrong answer | "
        "errors | backend calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {fake['n']} | {len(range(0, fake['n'], 4))} | {fake['wall']:.2f} | "
        f"{fake['n'] / fake['wall']:.1f} | {1000 * _pct(fake['lat'], .5):.1f} | "
        f"{1000 * _pct(fake['lat'], .95):.1f} | {fake['lost']} | {fake['wrong']} | "
        f"{len(fake['errors'])} | {fake['backend_calls']} |",
        "",
    ]
    if fake["errors"]:
        lines += ["First error: `" + fake["errors"][0][:200] + "`", ""]
    if real:
        d, v = real["direct_s"], real["served_s"]
        ratio = sum(v) / sum(d)
        lines += [
            "## 2. Real model: 4-shot SST-2 Solver on SmolLM2-135M (embedded, cache off)",
            "",
            f"(a) Per request, {real['n']} SST-2 test sentences, each answered by "
            "`solver.solve` directly (on a worker thread) and through the server (one "
            "client), back to back, order alternating:",
            "",
            "| path | requests | total s | mean s | median s |",
            "| --- | --- | --- | --- | --- |",
            f"| `solver.solve` directly | {len(d)} | {sum(d):.1f} | {sum(d) / len(d):.2f} | "
            f"{statistics.median(d):.2f} |",
            f"| through `metaskill serve` | {len(v)} | {sum(v):.1f} | {sum(v) / len(v):.2f} | "
            f"{statistics.median(v):.2f} |",
            "",
            f"Served / direct time: **{ratio:.2f}x** (1.0 = the server adds nothing).",
            "",
            f"(b) The same {real['n']} requests from {min(args.concurrency, real['n'])} "
            "concurrent clients:",
            "",
            "| requests | wall s | req/s | p50 s | p95 s | lost | errors |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {real['n']} | {real['wall']:.1f} | {real['n'] / real['wall']:.2f} | "
            f"{_pct(real['lat'], .5):.1f} | {_pct(real['lat'], .95):.1f} | {real['lost']} | "
            f"{len(real['errors'])} |",
            "",
            "LM calls are serialised on one worker thread (llama.cpp is not thread-safe), so "
            "concurrency adds queueing latency, not throughput. Served answers identical to "
            f"direct answers: {real['same']}/{real['n']}; accuracy of the served answers on "
            f"these SST-2 test sentences: {real['accuracy']:.0%}.",
            "",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    if fake["lost"] or fake["wrong"] or fake["errors"] or (real and (real["lost"]
                                                                      or real["errors"])):
        sys.exit(1)


if __name__ == "__main__":
    main()
