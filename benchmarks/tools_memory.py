"""Tools and experience memory (issue 21): tool_use on arithmetic and GSM8K, memory on a stream.

Writes ``benchmarks/results/tools_memory.md`` (``--out``), the issue's Evidence:

* **Arithmetic** (BIG-bench ``arithmetic`` under ``../shared/data``): by default the
  2-digit addition, subtraction and multiplication subtasks alone, and the whole task (all
  20 subtasks, 1- to 5-digit, the four operations, in one pool: the cheap way to cover the
  other subtasks, and the one where the router sees more than one skill). Rows:
  ``zero-shot`` (the chat prompt, harness defaults), ``knn_demos`` (nearest training
  demos; k among ``--knn-ks``, prompt format chosen on dev) and ``tool_use`` with the
  ``calculator``. Target: tool_use >= 60% on 2-digit addition, subtraction and
  multiplication.
* **GSM8K** (``../shared/data/gsm8k``, the registry's ``gsm8k`` with ``path=``, first
  ``--limit`` test examples): the same rows, tool_use with ``calculator`` and ``python``
  (the sandbox). Reported as it is.
* **Memory across a stream**: :func:`metaskill.evolve.memory.memory_stream` over the
  BIG-bench tasks of ``--stream`` in that order (default: ten of the fifteen folders,
  alphabetical -- see :data:`STREAM` for which and why), each scored on its first
  ``--stream-limit`` test examples without and with the notes the ``memory`` Method
  learnt on the earlier tasks' dev examples (``--stream-dev`` per task); paired bootstrap
  per task and pooled.
* **The router**: per tool_use row, the share of test inputs sent to each route (no tool,
  calculator, python) and the accuracy on each, from the attempts' ``meta["route"]``;
  the dev accuracy of every route the router learnt from; on the whole arithmetic task,
  the route and accuracy per subtask.

Every row fits on train, selects on dev (the first ``--dev-limit`` dev examples of the
harness's default split) and is scored once on test. The model is the embedded
SmolLM2-135M-Instruct (llama.cpp, ``--threads``); the embedder all-MiniLM-L6-v2. Accuracy
gets Wilson 95% intervals, differences paired-bootstrap 95% intervals
(:mod:`metaskill.eval.stats`). Each row is stored as JSON under ``--work`` (an interrupted
run resumes, rows already there are not re-run); every LM call goes through one LM cache
there (``lm_cache.sqlite``), which is also how the stream resumes: it is one call of
``memory_stream``, and a rerun replays the calls it had made from the cache.

Sizes (the default pass: about an hour of an otherwise idle 2-core machine with one
llama.cpp thread, about two while three other benchmarks share it -- measured on tiny
runs): test n=100 per arithmetic and GSM8K row; dev 30 per task; the stream 30 test and 10
dev per task, not 100: its cost is two test passes, a dev pass and a distillation call per
dev example for each of ten tasks, and at n=100 the stream alone would take about as long
as all the other rows together.

Example::

    nohup .venv/bin/python benchmarks/tools_memory.py --threads 1 > /tmp/tm.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import acc_cell, gain_cell, mean, pct
from multiple_choice import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METASKILL_SHARED_DATA", ROOT.parent / "shared/data"))
BIGBENCH = SHARED / "bigbench/tasks"
ROWS = ("zero-shot", "knn_demos", "tool_use")
TASKS = ("arithmetic/2_digit_addition,arithmetic/2_digit_subtraction,"
         "arithmetic/2_digit_multiplication,arithmetic,gsm8k")
TARGET_SUBTASKS = ("2_digit_addition", "2_digit_subtraction", "2_digit_multiplication")
STREAM = ("arithmetic,cause_and_effect,modified_arithmetic,navigate,object_counting,"
          "odd_one_out,operators,simple_arithmetic_json,sports_understanding,"
          "word_unscrambling")
"""The default stream: the BIG-bench folders of ``../shared/data`` in alphabetical order (a
fixed order chosen before any result, the loader's own order of subtask folders), leaving
out the five whose zero-shot replies run to the 256-token limit (linguistic_mappings,
list_functions, repeat_copy_logic, simple_text_editing, word_sorting: 3.5 to 6 s per
answer here, each as costly as three to ten of the others). All fifteen load."""
STREAM_LEFT_OUT = ("linguistic_mappings", "list_functions", "repeat_copy_logic",
                   "simple_text_editing", "word_sorting")


# ---- data ------------------------------------------------------------------------------
def load(name: str, limit: int, dev_limit: int) -> tuple[Any, dict[str, list]]:
    """The task and its train / dev (cut) / test (cut) examples.

    ``gsm8k`` is the registry's task on ``../shared/data/gsm8k``; ``FOLDER`` a BIG-bench
    folder; ``FOLDER/SUBTASK`` one of its subtasks. Default splits and seed throughout.
    """
    if name == "gsm8k":
        from metaskill.tasks.registry import get_task

        task = get_task("gsm8k", path=str(SHARED / "gsm8k"))
    else:
        from metaskill.tasks.bigbench import load_bigbench

        folder, _, sub = name.partition("/")
        task = load_bigbench(path=str(BIGBENCH / folder), subtasks=[sub] if sub else None,
                             seed=0)
    return task, {"train": list(task.examples("train")),
                  "dev": list(task.examples("dev"))[:dev_limit],
                  "test": list(task.examples("test"))[:limit]}


def slug(name: str) -> str:
    return name.replace("/", "__")


# ---- one row ---------------------------------------------------------------------------
def trace_examples(examples: list, attempts: list, scores: list[float], n: int = 2
                   ) -> list[dict[str, Any]]:
    """A few tool-routed attempts: input, calls (arguments, result or error), answer."""
    out = []
    for e, a, s in zip(examples, attempts, scores, strict=True):
        if a.meta.get("route", "none") == "none" or len(out) >= n:
            continue
        out.append({"input": e.text[:160], "reference": e.answer, "score": s,
                    "calls": [{"tool": c["tool"], "args": c["args"], "result": c["result"],
                               "error": c["error"]} for c in a.meta.get("tool_trace", [])],
                    "answer": a.output[:80], "fallback": a.meta.get("fallback")})
    return out


def run_row(row: str, lm: Any, task: Any, splits: dict[str, list], res: Any,
            args: Any) -> dict[str, Any]:
    """Fit ``row`` on train/dev (zero-shot: nothing to fit) and score it on test."""
    from metaskill.eval.solvers import ZeroShot
    from metaskill.methods.demos import run_solver
    from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig
    from metaskill.methods.tool_use import ToolUse, ToolUseConfig

    train, dev, test = splits["train"], splits["dev"], splits["test"]
    out: dict[str, Any] = {"row": row}
    t0 = time.perf_counter()
    solver: Any = ZeroShot(lm)
    if row != "zero-shot":
        method: Any
        if row == "knn_demos":
            method = KnnDemos(KnnDemosConfig(k_candidates=args.knn_ks), resources=res)
        else:
            tools = ["calculator"] if task.name != "gsm8k" else ["calculator", "python"]
            method = ToolUse(ToolUseConfig(tools=tools, k=args.tool_k), resources=res)
        solver = method.fit(solver, task, train, dev)
        notes = method.report.notes
        keep = ("k", "prompt_format", "dev_accuracy", "demos", "routes", "router_default",
                "route_shares")
        out["fit"] = {k: notes[k] for k in keep if k in notes}
        out["fit_lm_calls"] = method.report.lm_calls
        if row == "tool_use":
            out["tools"] = tools
            skills = sorted({s for e in dev for s in e.skills})
            out["router_by_skill"] = {s: solver.router.route([s]) for s in skills}
    out["fit_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    attempts, scores = run_solver(solver, task, test, label=f"{task.name} {row}")
    out.update(
        scores=scores, test_s=time.perf_counter() - t1,
        subtask=[e.metadata.get("subtask", "") for e in test],
        lm_calls=sum(int(a.meta.get("lm_calls", 1)) for a in attempts) / len(test),
        prompt_tokens=sum(a.usage.prompt_tokens for a in attempts) / len(test),
        errors=sum(1 for a in attempts if a.error))
    if row == "tool_use":
        out["route"] = [str(a.meta.get("route", "none")) for a in attempts]
        out["fallback"] = [a.meta.get("fallback") for a in attempts]
        out["tool_errors"] = sum(1 for a in attempts for c in a.meta.get("tool_trace", [])
                                 if c.get("error"))
        out["examples"] = trace_examples(test, attempts, scores)
    return out


def run_task(name: str, lm: Any, args: Any) -> dict[str, Any]:
    """Every row of one task, each stored as soon as it is done."""
    from metaskill.methods.base import MethodResources

    task, splits = load(name, args.limit, args.dev_limit)
    res = MethodResources(embedder_spec="minilm")
    work = Path(args.work) / slug(name)
    out: dict[str, Any] = {"_sizes": {k: len(v) for k, v in splits.items()}}
    sizes = {"n_test": len(splits["test"]), "n_dev": len(splits["dev"])}
    for row in args.rows:
        path = work / f"{row}.json"
        stale = path.exists() and any(json.loads(path.read_text()).get(k) != v
                                      for k, v in sizes.items())
        if stale:
            print(f"   {name} {row}: stored with other sizes, run again", file=sys.stderr)
        if stale or not path.exists():
            print(f"== {name}: {row}", file=sys.stderr, flush=True)
            r = {**run_row(row, lm, task, splits, res, args), **sizes}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r))
            print(f"   {row}: {pct(sum(r['scores']) / len(r['scores']))}% "
                  f"(fit {r['fit_s']:.0f} s, test {r['test_s']:.0f} s)", file=sys.stderr,
                  flush=True)
        out[row] = json.loads(path.read_text())
    return out


def stream_notes(path: Path, embedder: Any) -> dict[str, Any]:
    """What the stream's knowledge base holds: notes by source, the template fallbacks'
    reasons, the notes shown most often (with their help record)."""
    from metaskill.skills.knowledge import KnowledgeBase

    notes = KnowledgeBase(str(path), embedder=embedder).notes()
    by: dict[str, int] = {}
    why: dict[str, int] = {}
    for n in notes:
        by[n.source] = by.get(n.source, 0) + 1
        if n.error:
            why[n.error[:80]] = why.get(n.error[:80], 0) + 1
    top = sorted(notes, key=lambda n: (-n.retrieved, n.id))[:4]
    return {"by_source": by, "template_reasons": why,
            "top": [{"task": n.task, "source": n.source, "text": n.text,
                     "retrieved": n.retrieved, "helped": n.helped} for n in top]}


def run_stream(lm: Any, args: Any) -> dict[str, Any]:
    """memory_stream over the stream's tasks (one call; resumed through the LM cache)."""
    from metaskill.evolve.memory import memory_stream
    from metaskill.skills.embed import load_embedder
    from metaskill.tasks.bigbench import load_bigbench

    path = Path(args.work) / "stream.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["tasks"] == args.stream and stored["n_test"] == args.stream_limit \
                and stored["n_dev"] == args.stream_dev:
            return stored  # type: ignore[no-any-return]
    print(f"== memory stream: {', '.join(args.stream)}", file=sys.stderr, flush=True)
    tasks = [load_bigbench(path=str(BIGBENCH / n), seed=0) for n in args.stream]
    kb = Path(args.work) / "stream_kb.sqlite"  # empty at the start of every (re)run
    for f in (kb, kb.with_name(kb.name + "-wal"), kb.with_name(kb.name + "-shm")):
        f.unlink(missing_ok=True)
    kb.parent.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder("minilm")
    t0 = time.perf_counter()
    result = memory_stream(tasks, lm, str(kb), embedder, n_dev=args.stream_dev,
                           n_test=args.stream_limit)
    out = {"tasks": args.stream, "n_test": args.stream_limit, "n_dev": args.stream_dev,
           "wall_s": time.perf_counter() - t0, **result.model_dump(),
           "notes": stream_notes(kb, embedder)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    print(f"   pooled gain {100 * result.gain:+.1f} [{100 * result.low:+.1f}, "
          f"{100 * result.high:+.1f}] ({out['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return out


# ---- the report ------------------------------------------------------------------------
def accuracy_table(results: dict[str, dict]) -> list[str]:
    lines = ["| task | n test | zero-shot | knn_demos | tool_use | tool_use - zero-shot | "
             "tool_use - knn_demos |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        cells = [acc_cell(r[row]["scores"]) if row in r else "-" for row in ROWS]
        diffs = [gain_cell(r["tool_use"]["scores"], r[o]["scores"])
                 if "tool_use" in r and o in r else "-" for o in ("zero-shot", "knn_demos")]
        lines.append(f"| {name} | {r['_sizes']['test']} | {' | '.join(cells)} | "
                     f"{' | '.join(diffs)} |")
    return lines


def fit_summary(r: dict[str, Any]) -> str:
    fit = r.get("fit") or {}
    if r["row"] == "knn_demos":
        return (f"k={fit.get('k')}, format={fit.get('prompt_format')}, dev "
                f"{pct(fit.get('dev_accuracy'))}%")
    if r["row"] == "tool_use":
        demos = ", ".join(f"{t} {n}" for t, n in (fit.get("demos") or {}).items())
        return f"verified demos: {demos or 'none'}; routed dev {pct(fit.get('dev_accuracy'))}%"
    return ""


def cost_table(results: dict[str, dict]) -> list[str]:
    lines = ["| task | row | fit s | fit LM calls | test s | LM calls per test input | "
             "prompt tokens per test input | errors | fit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, res in results.items():
        for row in ROWS:
            if row not in res:
                continue
            r = res[row]
            lines.append(f"| {name} | {row} | {r['fit_s']:.0f} | {r.get('fit_lm_calls', 0)} | "
                         f"{r['test_s']:.0f} | {r['lm_calls']:.2f} | {r['prompt_tokens']:.0f} | "
                         f"{r['errors']} | {fit_summary(r)} |")
    return lines


def by_route(r: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """route -> (test inputs, accuracy on them)."""
    out: dict[str, list[float]] = {}
    for route, s in zip(r["route"], r["scores"], strict=True):
        out.setdefault(route, []).append(s)
    return {k: (len(v), mean(v)) for k, v in sorted(out.items())}


def router_table(results: dict[str, dict]) -> list[str]:
    lines = ["| task | tools | dev accuracy by route (what the router learnt from) | router "
             "default | test: share of inputs -> accuracy, by route | fallbacks | tool "
             "errors |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, res in results.items():
        r = res.get("tool_use")
        if not r:
            continue
        routes = (r.get("fit") or {}).get("routes") or {}
        dev = ", ".join(f"{k} {pct(v['dev_accuracy'])}%" for k, v in sorted(routes.items()))
        n = len(r["route"])
        test = ", ".join(f"{k} {pct(c / n)}% -> {pct(a)}%" for k, (c, a) in by_route(r).items())
        falls: dict[str, int] = {}
        for f in r["fallback"]:
            if f:
                falls[f] = falls.get(f, 0) + 1
        fb = ", ".join(f"{k} {v}" for k, v in falls.items()) or "none"
        lines.append(f"| {name} | {', '.join(r['tools'])} | {dev or '-'} | "
                     f"{(r.get('fit') or {}).get('router_default', '-')} | {test} | {fb} | "
                     f"{r['tool_errors']} |")
    return lines


def subtask_table(res: dict[str, Any]) -> list[str]:
    """Per subtask of a mixed task: n, the route taken, zero-shot and tool_use accuracy."""
    r = res["tool_use"]
    zs = res.get("zero-shot")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(r["subtask"]):
        groups.setdefault(s, []).append(i)
    lines = ["| subtask | n test | router's route for the subtask label (unseen on dev: "
             "its other labels decide) | routes taken | zero-shot | tool_use |",
             "| --- | --- | --- | --- | --- | --- |"]
    # by operation, then digits (names are N_digit_OPERATION)
    for sub, idx in sorted(groups.items(), key=lambda kv: (kv[0].split("_")[-1], kv[0])):
        taken: dict[str, int] = {}
        for i in idx:
            taken[r["route"][i]] = taken.get(r["route"][i], 0) + 1
        z = pct(mean([zs["scores"][i] for i in idx])) if zs else "-"
        lines.append(f"| {sub} | {len(idx)} | {r['router_by_skill'].get(sub, 'unseen on dev')} "
                     f"| {', '.join(f'{k} {v}' for k, v in taken.items())} | {z} | "
                     f"{pct(mean([r['scores'][i] for i in idx]))} |")
    return lines


def examples_block(results: dict[str, dict]) -> list[str]:
    lines = []
    for name, res in results.items():
        for ex in (res.get("tool_use") or {}).get("examples", []):
            calls = "; ".join(
                f"{c['tool']}({', '.join(str(v) for v in c['args'].values())}) -> "
                + (f"error: {c['error']}" if c["error"] else str(c["result"]))
                for c in ex["calls"]) or "no call"
            inp = " ".join(ex["input"].split())
            lines.append(f"- {name}: `{inp}` -- {calls}; answer `{ex['answer']}` "
                         f"(reference `{ex['reference']}`, "
                         f"{'right' if ex['score'] >= 1 else 'wrong'}"
                         f"{', fallback: ' + ex['fallback'] if ex['fallback'] else ''})")
    return lines


def stream_section(s: dict[str, Any]) -> list[str]:
    lines = ["| # | task | n test | notes before | test inputs shown notes | without | with "
             "memory | gain [paired 95%] | notes added | dev accuracy while learning |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(s["rows"], 1):
        lines.append(f"| {i} | {r['task']} | {r['n']} | {r['notes_before']} | "
                     f"{pct(r['shown'])}% | {pct(r['without'])} | {pct(r['with_memory'])} | "
                     f"{100 * r['gain']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] "
                     f"| {r['notes_added']} | {pct(r['dev_accuracy'])} |")
    later = s["rows"][1:]
    lines += ["", f"Pooled over all {sum(r['n'] for r in s['rows'])} test inputs of the "
              f"stream (paired bootstrap): **{100 * s['gain']:+.1f} points [{100 * s['low']:+.1f}, "
              f"{100 * s['high']:+.1f}]**. Mean of the per-task gains: "
              f"{100 * mean([r['gain'] for r in s['rows']]):+.1f} points; over the tasks after "
              f"the first (the first has no earlier notes, so its gain is 0 by construction): "
              f"{100 * mean([r['gain'] for r in later]):+.1f} points. Wall time "
              f"{s['wall_s'] / 60:.1f} min."]
    kb = s.get("notes")
    if kb:
        src = ", ".join(f"{k} {v}" for k, v in sorted(kb["by_source"].items()))
        why = "; ".join(f"{k} ({v})" for k, v in kb["template_reasons"].items())
        lines += ["", f"The knowledge base at the end: notes by source: {src or 'none'}"
                  + (f"; why the LM's note was not used: {why}" if why else "") + ". The "
                  "notes retrieved most often in learning (retrieved / helped):", ""]
        lines += [f"- [{n['task']}, {n['source']}, {n['retrieved']} / {n['helped']}] "
                  f"{' '.join(n['text'].split())}" for n in kb["top"]]
    return lines


def targets(results: dict[str, dict], stream: dict[str, Any] | None) -> list[str]:
    lines = []
    tool = {n.split("/")[-1]: mean(r["tool_use"]["scores"]) for n, r in results.items()
            if "tool_use" in r}
    measured = [s for s in TARGET_SUBTASKS if s in tool]
    if measured:
        missed = [s for s in measured if tool[s] < 0.6]
        verdict = "not met" if missed else "met" if len(measured) == len(TARGET_SUBTASKS) \
            else "not measured on all three"
        got = ", ".join(f"{s} {pct(tool[s])}%" for s in measured)
        lines.append(f"- tool_use >= 60% on 2-digit addition, subtraction and multiplication: "
                     f"**{verdict}** ({got}).")
    if "gsm8k" in results:
        g = results["gsm8k"]
        got = ", ".join(f"{row} {pct(mean(g[row]['scores']))}%" for row in ROWS if row in g)
        lines.append(f"- GSM8K (no target; what it reaches): {got}.")
    if stream:
        pos = stream["gain"] > 0
        excl = stream["low"] > 0
        verdict = ("met" if excl else "met in sign only: the gain is not distinguishable "
                   "from zero") if pos else "not met"
        lines.append(f"- Memory across the stream, a positive mean gain with its interval: "
                     f"**{verdict}** (pooled {100 * stream['gain']:+.1f} "
                     f"points, 95% [{100 * stream['low']:+.1f}, {100 * stream['high']:+.1f}]; "
                     f"the interval {'excludes' if excl else 'does not exclude'} zero).")
    return lines or ["- No targeted row was measured in this pass."]


def report(results: dict[str, dict], stream: dict[str, Any] | None,
           meta: dict[str, Any]) -> str:
    lines = [
        "# Tools and experience memory: tool_use and memory with the embedded model",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['cores']} cores ({meta['cpu']}); llama.cpp threads: "
        f"{meta['threads']}; model: {meta['model']} (embedded; one LM cache under the work "
        f"folder); embedder: all-MiniLM-L6-v2. Wall time of this pass: "
        f"{meta['wall_min']:.1f} min (rows stored by an earlier pass under the work folder "
        "are reused, not re-run; each row's own seconds are in the cost table).",
        "",
        "Data: BIG-bench `arithmetic` (`../shared/data/bigbench/tasks`; one subtask, or "
        "`arithmetic` = all 20 subtasks in one pool) and GSM8K (`../shared/data/gsm8k`, the "
        "registry's `gsm8k` task), each with the harness's default seeded split; test cut to "
        f"the first {meta['limit']} examples, dev to the first {meta['dev_limit']}. Methods "
        "fit on train and select on dev; test is scored once. zero-shot is the chat prompt "
        "with the harness defaults; knn_demos chooses k among "
        f"{meta['knn_ks']} and the prompt format on dev; tool_use (k={meta['tool_k']} "
        "verified call demonstrations, the router learnt on dev per skill label, the model "
        "writes only the call under the tool's JSON schema, the result is the answer) offers "
        "the calculator on arithmetic and the calculator and python (sandbox) on GSM8K. "
        "Accuracy in %, [Wilson 95%]; differences in points, [paired bootstrap 95%, 2000 "
        "resamples of test examples].",
        "",
    ]
    if results:
        lines += ["## Test accuracy", "", *accuracy_table(results), "",
                  "## The router", "",
                  "Routes: `none` (the zero-shot Solver answers), or a tool. The router "
                  "keeps each route's dev accuracy per skill label (BIG-bench subtask and "
                  "keywords; GSM8K examples carry none, so every input takes the default: "
                  "the best route on all of dev). Shares and accuracies below are on test, "
                  "from each attempt's `meta[\"route\"]`.", "", *router_table(results), ""]
        mixed = [n for n, r in results.items() if "tool_use" in r
                 and len(set(r["tool_use"]["subtask"])) > 1]
        for name in mixed:
            lines += [f"### {name}: by subtask", "", *subtask_table(results[name]), ""]
        ex = examples_block(results)
        if ex:
            lines += ["### Example tool calls (the first two tool-routed test inputs)", "",
                      *ex, ""]
        lines += ["## What each row spent", "", *cost_table(results), ""]
    if stream:
        left = [t for t in STREAM_LEFT_OUT if t not in stream["tasks"]]
        lines += [
            "## Memory across a stream of tasks", "",
            f"Tasks, in this order: {', '.join(stream['tasks'])}. "
            + ("The default order is alphabetical by folder (fixed before any result); "
               f"left out: {', '.join(left)} -- their zero-shot replies run to the "
               "256-token limit, 3.5 to 6 s each on this machine, and the stream answers "
               "every test input twice. " if left else "")
            + f"Per task: its first {stream['n_test']} test examples answered by zero-shot "
            "without memory and with the notes learnt on the tasks before it (the "
            "`memory` Method, defaults: k=3 notes, min similarity 0.3, notes written by "
            "the LM in constrained JSON with the template as fallback), then the memory "
            f"learns from the task's first {stream['n_dev']} dev examples for the tasks "
            "after it. One knowledge base for the stream, empty at its start.", "",
            *stream_section(stream), ""]
    lines += ["## Targets", "", *targets(results, stream), ""]
    notes = [*meta["notes"]]
    if results:
        stream_sizes = (f"; the stream {stream['n_test']} test and {stream['n_dev']} dev "
                        "per task (fewer where a task's split is smaller)" if stream else "")
        notes += [
            f"Sizes: test n={meta['limit']} per arithmetic and GSM8K row, dev "
            f"n={meta['dev_limit']} per task{stream_sizes}, so that the default pass fits "
            "about an hour of a 2-core machine with one llama.cpp thread.",
            "Seconds are wall time through the shared LM cache: a request another row "
            "already made (tool_use's no-tool route repeats zero-shot's requests) costs no "
            "time, and its LM calls are still counted."]
    lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=TASKS, help="comma-separated: gsm8k, a BIG-bench "
                    "folder, or FOLDER/SUBTASK; '' for none")
    ap.add_argument("--rows", default=",".join(ROWS), help="rows to run")
    ap.add_argument("--stream", default=STREAM, help="BIG-bench folders of the memory "
                    "stream, in order; '' to skip it")
    ap.add_argument("--limit", type=int, default=100, help="test examples per task")
    ap.add_argument("--dev-limit", type=int, default=30, help="dev examples per task")
    ap.add_argument("--stream-limit", type=int, default=30, help="test examples per "
                    "stream task")
    ap.add_argument("--stream-dev", type=int, default=10, help="dev examples learnt from "
                    "per stream task")
    ap.add_argument("--knn-ks", default="4", help="knn_demos k candidates")
    ap.add_argument("--tool-k", type=int, default=4, help="tool_use demonstrations per input")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--work", default="benchmarks/results/tools_memory_work")
    ap.add_argument("--out", default="benchmarks/results/tools_memory.md")
    ap.add_argument("--stored-only", action="store_true", help="report stored rows only")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes")
    args = ap.parse_args()
    args.knn_ks = [int(x) for x in args.knn_ks.split(",")]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose among {', '.join(ROWS)}")
    args.stream = [t for t in args.stream.split(",") if t]
    names = [t for t in args.tasks.split(",") if t]
    from metaskill.lm.llama import builtin_model_path

    t_start = time.perf_counter()
    work = Path(args.work)
    results: dict[str, dict] = {}
    stream: dict[str, Any] | None = None
    if args.stored_only:
        for name in names:
            rows = {r: work / slug(name) / f"{r}.json" for r in ROWS}
            got = {r: json.loads(p.read_text()) for r, p in rows.items() if p.exists()}
            if got:
                n = len(next(iter(got.values()))["scores"])
                results[name] = {"_sizes": {"test": n}, **got}
        if (work / "stream.json").exists():
            stream = json.loads((work / "stream.json").read_text())
    else:
        from metaskill.lm import load_lm
        from metaskill.lm.cache import Cache

        lm = load_lm("local", cache=Cache(work / "lm_cache.sqlite"), n_threads=args.threads)
        for name in names:
            results[name] = run_task(name, lm, args)
        if args.stream:
            stream = run_stream(lm, args)
    meta = {"command": "python " + shlex.join(sys.argv), "date": dt.date.today().isoformat(),
            "cores": os.cpu_count(), "cpu": cpu_model(), "threads": args.threads,
            "model": builtin_model_path("local").name, "limit": args.limit,
            "dev_limit": args.dev_limit, "stream_limit": args.stream_limit,
            "stream_dev": args.stream_dev, "knn_ks": args.knn_ks, "tool_k": args.tool_k,
            "wall_min": (time.perf_counter() - t_start) / 60, "notes": args.note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(results, stream, meta))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
