"""LM layer overhead: metaskill.lm vs llama_cpp directly, cache serving, HTTP throughput.

Writes ``benchmarks/results/lm_overhead.md``. Three measurements, each in one run:

1. The same prompts (SST-2 dev sentences as "Review: ...\\nSentiment:" prompts, greedy,
   ``--max-tokens`` tokens) answered (a) by ``llama_cpp.Llama.create_completion`` directly
   and (b) by ``LlamaLM.complete`` with the cache off, and (c) with a cold cache (a miss
   plus a write each time), on the *same* loaded model, interleaved prompt by prompt with
   the order rotated, so machine noise falls on all alternatives alike. Each call starts
   from an empty KV cache (``Llama.reset()`` before the direct call; ``LlamaLM`` does it
   itself), so neither side reuses the other's prompt. Texts must match exactly.
2. 1,000 cached requests served by ``LlamaLM.complete`` (entries pre-written to the cache
   with the real completions from step 1, under the real request keys): one batch call,
   and 1,000 single-request calls.
3. The ``openai`` backend against a local ``llama_cpp.server`` (started here on 127.0.0.1,
   stopped by PID) at concurrency 1, 4 and 8.

Usage::

    .venv/bin/python benchmarks/lm_overhead.py            # the full run (several minutes)
    .venv/bin/python benchmarks/lm_overhead.py --prompts 10 --server-requests 8   # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metaskill.core.types import Completion, Request
from metaskill.lm.cache import Cache
from metaskill.lm.llama import LlamaLM, builtin_model_path
from metaskill.lm.openai_compat import OpenAICompatLM

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "lm_overhead.md"
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "dev.jsonl"

FALLBACK = [
    "a gorgeous, witty, seductive movie.", "one long string of cliches.",
    "the acting is superb and the story is moving.", "a dull, lifeless mess.",
    "it's a charming and often affecting journey.",
]


def prompts(n: int) -> list[str]:
    if SST2.exists():
        rows = [json.loads(line)["sentence"] for line in SST2.read_text().splitlines()[:n]]
    else:
        rows = [FALLBACK[i % len(FALLBACK)] + f" ({i})" for i in range(n)]
    return [f"Review: {s}\nSentiment:" for s in rows]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- 1. overhead ---------------------------------------------------------------------------
def overhead(lm: LlamaLM, ps: list[str], max_tokens: int, cache_dir: Path) -> dict:
    llm = lm.llm
    cold = Cache(cache_dir / "cold.sqlite")
    lm.complete([Request(prompt="warm up", max_tokens=4)], cache=False)
    times: dict[str, list[float]] = {"direct": [], "metaskill": [], "metaskill+cache": []}
    texts: dict[str, list[str]] = {k: [] for k in times}
    completions: list[Completion] = []

    def direct(p: str) -> str:
        llm.reset()
        return str(llm.create_completion(p, max_tokens=max_tokens, temperature=0.0)
                   ["choices"][0]["text"])

    def ours(p: str) -> str:
        c = lm.complete([Request(prompt=p, max_tokens=max_tokens)], cache=False)[0]
        completions.append(c)
        return c.text

    def ours_cached(p: str) -> str:
        lm.cache = cold
        try:
            c = lm.complete([Request(prompt=p, max_tokens=max_tokens)])[0]
            assert not c.cached
            return c.text
        finally:
            lm.cache = None

    fns = {"direct": direct, "metaskill": ours, "metaskill+cache": ours_cached}
    order = list(fns)
    for i, p in enumerate(ps):
        rot = order[i % 3 :] + order[: i % 3]
        for name in rot:
            t0 = time.perf_counter()
            texts[name].append(fns[name](p))
            times[name].append(time.perf_counter() - t0)
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(ps)} prompts", flush=True)
    same = texts["direct"] == texts["metaskill"] == texts["metaskill+cache"]
    tokens = sum(c.usage.completion_tokens for c in completions)
    return {"times": times, "same_text": same, "completions": completions,
            "tokens": tokens}


# ---- 2. cached serving ---------------------------------------------------------------------
def cached_serving(lm: LlamaLM, completions: list[Completion], cache_dir: Path,
                   n: int = 1000) -> dict:
    cache = Cache(cache_dir / "served.sqlite")
    reqs = [Request(prompt=f"Review: cached request {i}\nSentiment:", max_tokens=16)
            for i in range(n)]
    cache.put_many(
        [(lm.request_key(r), completions[i % len(completions)].model_dump(mode="json"))
         for i, r in enumerate(reqs)], model=lm.spec)
    lm.cache = cache
    try:
        t0 = time.perf_counter()
        batch = lm.complete(reqs)
        t_batch = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = [lm.complete([r])[0] for r in reqs]
        t_single = time.perf_counter() - t0
    finally:
        lm.cache = None
    assert all(c.cached for c in batch) and all(c.cached for c in single)
    return {"n": n, "batch_s": t_batch, "single_s": t_single}


# ---- 3. HTTP throughput --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def throughput(ps: list[str], n_requests: int, max_tokens: int, log: Path,
               threads: int) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "metaskill.lm.llama", "--model",
           str(builtin_model_path("local")), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads)]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-1000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        reqs = [Request(prompt=ps[i % len(ps)], max_tokens=max_tokens)
                for i in range(n_requests)]
        OpenAICompatLM("smollm2", url, timeout_s=300).complete(reqs[:2])  # warm up
        rows = {}
        for conc in (1, 4, 8):
            lm = OpenAICompatLM("smollm2", url, concurrency=conc, timeout_s=300)
            t0 = time.perf_counter()
            out = lm.complete(reqs)
            wall = time.perf_counter() - t0
            toks = sum(c.usage.completion_tokens for c in out)
            rows[conc] = {"wall": wall, "req_s": len(reqs) / wall, "tok_s": toks / wall}
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--server-requests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="llama.cpp threads, in-process and in the server (default: all)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    started = dt.datetime.now(dt.timezone.utc)
    load0 = os.getloadavg()
    ps = prompts(args.prompts)
    lm = LlamaLM(builtin_model_path("local"), spec="local", n_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        print(f"[1/3] overhead on {len(ps)} prompts ...", flush=True)
        ov = overhead(lm, ps, args.max_tokens, tmpdir)
        print("[2/3] 1,000 cached requests ...", flush=True)
        cs = cached_serving(lm, ov["completions"], tmpdir)
        lm.close()
        print("[3/3] openai backend vs llama_cpp.server ...", flush=True)
        tp = throughput(ps, args.server_requests, args.max_tokens, tmpdir / "server.log",
                        args.threads)
    load1 = os.getloadavg()

    t = ov["times"]
    tot = {k: sum(v) for k, v in t.items()}
    ratio = tot["metaskill"] / tot["direct"]
    ratio_c = tot["metaskill+cache"] / tot["direct"]
    per = [a / b for a, b in zip(t["metaskill"], t["direct"], strict=True)]
    cmd = "python benchmarks/lm_overhead.py " + " ".join(sys.argv[1:])
    lines = [
        "# LM layer overhead",
        "",
        f"- command: `{cmd.strip()}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; `nproc` = {os.cpu_count()}; CPU: {cpu_name()}",
        f"- model: SmolLM2-135M-Instruct Q4_1 (`local`), llama.cpp threads = "
        f"{lm.n_threads} (library default: all {os.cpu_count()} cores), greedy, "
        f"max_tokens = {args.max_tokens}",
        f"- load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} -- the "
        "machine is shared, so absolute times are noisy; the ratios are measured side by "
        "side, prompt by prompt, with the order rotated.",
        f"- threads: {args.threads} of {os.cpu_count()} cores. On an oversubscribed machine "
        "llama.cpp threads that spin-wait against other jobs slow down badly, so fewer "
        "threads can be faster. Slower generation makes the fixed per-token Python cost "
        "(one log-softmax over the 49,152-token vocabulary, ~0.1 ms) a smaller fraction "
        "than at full speed (~1-1.5% at 80-125 tokens/s).",
        "",
        f"## 1. metaskill.lm vs llama_cpp directly ({len(ps)} SST-2 prompts, one run)",
        "",
        "| path | total wall s | median per prompt s | ratio to direct |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k in ("direct", "metaskill", "metaskill+cache"):
        lines.append(f"| {k} | {tot[k]:.2f} | {statistics.median(t[k]):.3f} | "
                     f"{tot[k] / tot['direct']:.3f} |")
    verdict = "meets" if ratio <= 1.05 else "misses"
    lines += [
        "",
        f"Ratio (cache off) = **{ratio:.3f}** ({verdict} the target <= 1.05); with a cold "
        f"cache (lookup miss + write) {ratio_c:.3f}. Median of per-prompt ratios: "
        f"{statistics.median(per):.3f}. Generated texts identical on all paths: "
        f"{'yes' if ov['same_text'] else 'NO'}. {ov['tokens']} tokens generated per path.",
        "",
        "`direct` = `Llama.reset(); Llama.create_completion(prompt, max_tokens, "
        "temperature=0)`; `metaskill` = `LlamaLM.complete([Request(prompt, max_tokens)], "
        "cache=False)`, which also tokenizes, computes each token's log-probability and "
        "builds pydantic objects.",
        "",
        "## 2. Serving cached requests",
        "",
        "| what | requests | wall s | per request ms |",
        "| --- | ---: | ---: | ---: |",
        f"| one `complete()` call with {cs['n']} requests | {cs['n']} | {cs['batch_s']:.3f} | "
        f"{1000 * cs['batch_s'] / cs['n']:.3f} |",
        f"| {cs['n']} `complete()` calls of one request | {cs['n']} | {cs['single_s']:.3f} | "
        f"{1000 * cs['single_s'] / cs['n']:.3f} |",
        "",
        f"Target: 1,000 cached requests in <= 1 s -- batch: "
        f"{'met' if cs['batch_s'] <= 1 else 'missed'}, one by one: "
        f"{'met' if cs['single_s'] <= 1 else 'missed'}. (Entries were written to a fresh "
        "SQLite cache under the real request keys, with real completions from section 1; "
        "each hit is read, JSON-decoded and validated into a new Completion.)",
        "",
        f"## 3. `openai` backend throughput against a local llama_cpp.server "
        f"({args.server_requests} requests, max_tokens = {args.max_tokens})",
        "",
        "| concurrency | wall s | requests/s | completion tokens/s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for conc, row in tp.items():
        lines.append(f"| {conc} | {row['wall']:.2f} | {row['req_s']:.2f} | "
                     f"{row['tok_s']:.1f} |")
    lines += [
        "",
        f"On this {os.cpu_count()}-core machine the server is the bottleneck: "
        f"llama_cpp.server runs one request at a time ({args.threads} llama.cpp thread(s)), "
        "so more concurrency cannot raise throughput here; it only queues requests at the "
        "server. The client's "
        "bounded concurrency pays off against servers that batch (vLLM) or hosted APIs. "
        "(Server started as `python -m metaskill.lm.llama`, i.e. llama_cpp.server with "
        "AMX-safe model loading; see src/metaskill/lm/llama.py.)",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
