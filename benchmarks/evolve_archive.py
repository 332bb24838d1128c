"""Archive evolution (DGM) against the best single chain, and open-ended against greedy.

Writes ``benchmarks/results/evolve_archive.md`` (``--out``). Per task, three arms, each
selected on dev and scored once on test:

* ``best chain`` -- what ``metaskill adapt`` finds over the nine inference-time methods:
  each method fitted alone on the zero-shot Solver with its default options (``metaskill
  adapt --method X`` with no options), every one scored on the whole dev set (adapt's dev
  check), the one with the highest dev accuracy kept (ties: fewer LM calls). Its **budget**
  is the LM calls all nine fits and dev checks made together.
* ``archive (DGM)`` -- :func:`metaskill.evolve.archive.evolve` from the zero-shot Solver with
  the default :class:`EvolveConfig` (DGM parent selection, keep every valid child, staged dev
  evaluation, the 135M model as its own mutator), its chain methods the same nine, stopped
  at the best chain's budget of LM calls (``max_calls``); the node best on dev goes to test.
* ``archive (greedy)`` -- the same with ``selection="greedy"`` and ``keep="better"``: the
  DGM paper's keep-only-improvements ablation, at the same budget.

LM calls are counted alike on every arm (a request counts whether the LM cache answered it
or not), so "the same budget" is the same number of requests. Every arm shares one LM cache
under the work folder: an archive child that refits a chain the baseline fitted costs calls
but no time, and a resumed run recomputes nothing. Test accuracy gets paired-bootstrap 95%
intervals (archive - best chain, DGM - greedy) over the same test examples. The last table
counts, per mutation kind over both archives, the children that were valid and that improved
on their parent's dev score -- the self-modification rows measure the 135M model as its own
mutator.

Data: the registry's sst2, trec and ag_news with their default splits, and two BIG-bench
multiple-choice tasks loaded like ``benchmarks/multiple_choice.py`` (train/dev decontaminated
of nested test inputs); test cut to ``--limit``, dev to ``--dev-limit``. Rows are kept per
task and arm under ``--work``, so an interrupted run resumes (an archive resumes itself).

Example::

    nohup .venv/bin/python benchmarks/evolve_archive.py --threads 1 > /tmp/ea.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import acc_cell, gain_cell, pct
from multiple_choice import cpu_model
from multiple_choice import load as load_mc

NINE = ("knn_demos", "raml", "dynaicl", "self_consistency", "self_refine", "skill_demos",
        "adaptmi", "meta_prompting", "multi_critique")
DEFAULT_TASKS = "sst2,trec,ag_news,bb:arithmetic,bb:sports_understanding"
ARMS = ("best chain", "archive (DGM)", "archive (greedy)")


def load(name: str, limit: int, dev_limit: int) -> tuple[Any, dict[str, list]]:
    """The task and its train / dev (cut) / test (cut) examples."""
    if name.startswith("bb:"):
        task, splits = load_mc(name[3:], limit, dev_limit)
        return task, splits
    from metaskill.tasks.registry import get_task

    task = get_task(name)
    return task, {"train": list(task.splits["train"]),
                  "dev": list(task.splits["dev"])[:dev_limit],
                  "test": list(task.splits["test"])[:limit]}


def resources(task: Any, needs_skills: bool) -> Any:
    from metaskill.methods.base import MethodResources

    res = MethodResources(embedder_spec="minilm")
    if needs_skills:
        from metaskill.skills.book import SkillBook
        from metaskill.skills.discover import discover

        res.skillbook = discover(task, SkillBook(":memory:", embedder=res.get_embedder()),
                                 source="embedding", n_skills=8)
    return res


def fit_one(method: str, lm: Any, task: Any, splits: dict, res: Any) -> dict:
    """``metaskill adapt --method METHOD`` (default options) with its dev check."""
    from metaskill.eval.solvers import ZeroShot
    from metaskill.methods.compose import build_method, fit_chain

    t0 = time.perf_counter()
    try:
        result = fit_chain(ZeroShot(lm), task, splits["train"], splits["dev"],
                           [build_method(method, None, res)], check_input=True)
    except Exception as e:  # a method that refuses the task is a row, not a crash
        return {"method": method, "error": f"{type(e).__name__}: {e}"[:300],
                "fit_s": time.perf_counter() - t0}
    check = result.check
    spent = [*result.reports, check.given_report, check.adapted_report]
    return {"method": method, "dev": check.adapted_accuracy,
            "lm_calls": sum(r.lm_calls for r in spent),
            "tokens": sum(r.usage.total_tokens for r in spent),
            "fit_s": time.perf_counter() - t0, "solver": result.solver.to_json()}


def best_chain(lm: Any, task: Any, splits: dict, work: Path, res: Any) -> dict:
    rows = []
    for method in NINE:
        path = work / "chains" / f"{method}.json"
        if not path.exists():
            print(f"   fitting {method}", file=sys.stderr, flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fit_one(method, lm, task, splits, res)))
        rows.append(json.loads(path.read_text()))
        r = rows[-1]
        print(f"   {method}: dev {r.get('dev')} calls {r.get('lm_calls')} "
              f"{r.get('error', '')}", file=sys.stderr, flush=True)
    ok = [r for r in rows if "error" not in r]
    best = max(ok, key=lambda r: (r["dev"], -r["lm_calls"]))
    return {"rows": rows, "best": best["method"], "dev": best["dev"],
            "budget": sum(r["lm_calls"] for r in ok), "solver": best["solver"]}


def run_archive(arm: str, lm: Any, task: Any, splits: dict, work: Path, res: Any,
                budget: int, args: Any) -> dict:
    from metaskill.eval.solvers import ZeroShot
    from metaskill.evolve.archive import EvolveConfig, evolve

    greedy = arm == "archive (greedy)"
    config = EvolveConfig(methods=NINE, stage_size=args.stage_size, max_children=10_000,
                          max_calls=budget, selection="greedy" if greedy else "dgm",
                          keep="better" if greedy else "all")
    t0 = time.perf_counter()
    archive = evolve(ZeroShot(lm), task, splits["train"], splits["dev"], config,
                     out=work / ("greedy" if greedy else "dgm"), resources=res,
                     log=lambda line: print("   " + line, file=sys.stderr, flush=True))
    node = archive.best_node()
    out = {"dev": node.score, "best_node": node.id, "spend": archive.spend().model_dump(),
           "path": [n.description for n in archive.path_to(node.id)],
           "nodes": [{"id": n.id, "parent": n.parent, "kind": n.kind, "status": n.status,
                      "score": n.score, "reason": n.reason[:200]} for n in archive.nodes()],
           "wall_s": time.perf_counter() - t0, "solver": node.solver}
    archive.close()
    return out


def test_scores(solver_json: dict, lm: Any, task: Any, test: list) -> list[float]:
    from metaskill.eval.solvers import load_solver
    from metaskill.methods.demos import run_solver

    _, scores = run_solver(load_solver(solver_json, lm=lm), task, test, progress=True,
                           label="test")
    return scores


def run_task(name: str, lm: Any, args: Any) -> dict:
    task, splits = load(name, args.limit, args.dev_limit)
    work = Path(args.work) / name.replace(":", "_")
    res = resources(task, needs_skills=True)
    done = work / "result.json"
    result = json.loads(done.read_text()) if done.exists() else {}
    if "best chain" not in result:
        print(f"== {name}: best chain over the nine methods", file=sys.stderr, flush=True)
        result["best chain"] = best_chain(lm, task, splits, work, res)
    budget = result["best chain"]["budget"]
    for arm in ARMS[1:]:
        if arm in result or arm not in args.arms:
            continue
        print(f"== {name}: {arm}, budget {budget} LM calls", file=sys.stderr, flush=True)
        result[arm] = run_archive(arm, lm, task, splits, work, res, budget, args)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(result))
    for arm in ARMS:
        if arm in result and "test" not in result[arm]:
            print(f"== {name}: {arm} on test", file=sys.stderr, flush=True)
            result[arm]["test"] = test_scores(result[arm]["solver"], lm, task,
                                              splits["test"])
            done.write_text(json.dumps(result))
    result["_sizes"] = {k: len(v) for k, v in splits.items()}
    done.write_text(json.dumps(result))
    return result


# ---- the report ------------------------------------------------------------------------
def main_table(results: dict[str, dict]) -> list[str]:
    lines = ["| task | n test | best chain (dev / test) | archive DGM (dev / test) | "
             "archive greedy (dev / test) | DGM - chain | DGM - greedy | budget (LM calls) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        c, d, g = (r.get(a) or {} for a in ARMS)
        cells = [f"{c.get('best', '?')}: {pct(c.get('dev'))} / "
                 + (acc_cell(c["test"]) if "test" in c else "-")]
        for arm in (d, g):
            cells.append(f"{pct(arm.get('dev'))} / " + (acc_cell(arm["test"])
                                                         if "test" in arm else "-"))
        dc = gain_cell(d["test"], c["test"]) if "test" in d and "test" in c else "-"
        dg = gain_cell(d["test"], g["test"]) if "test" in d and "test" in g else "-"
        lines.append(f"| {name} | {r['_sizes']['test']} | {' | '.join(cells)} | {dc} | {dg} "
                     f"| {c.get('budget', '-')} |")
    return lines


def spend_table(results: dict[str, dict]) -> list[str]:
    lines = ["| task | arm | LM calls | tokens | wall s | children | valid | pruned | "
             "invalid | stopped | best node's path |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        c = r.get("best chain") or {}
        ok = [x for x in c.get("rows", []) if "error" not in x]
        lines.append(f"| {name} | best chain | {c.get('budget', '-')} | "
                     f"{sum(x['tokens'] for x in ok)} | {sum(x['fit_s'] for x in ok):.0f} | "
                     f"9 fits | {len(ok)} | - | {len(c.get('rows', [])) - len(ok)} | - | "
                     f"{c.get('best', '-')} |")
        for arm in ARMS[1:]:
            a = r.get(arm)
            if not a:
                continue
            sp, nodes = a["spend"], a["nodes"][1:]
            count = {s: sum(n["status"] == s for n in nodes)
                     for s in ("valid", "pruned", "invalid")}
            lines.append(f"| {name} | {arm} | {sp['lm_calls']} | {sp['tokens']} | "
                         f"{a['wall_s']:.0f} | {sp['children']} | {count['valid']} | "
                         f"{count['pruned']} | {count['invalid']} | {sp['stopped']} | "
                         f"{' -> '.join(a['path'][1:]) or 'the root'} |")
    return lines


def kinds_table(results: dict[str, dict]) -> list[str]:
    stats: dict[str, list[int]] = {}
    for r in results.values():
        for arm in ARMS[1:]:
            nodes = {n["id"]: n for n in (r.get(arm) or {}).get("nodes", [])}
            for n in nodes.values():
                if n["parent"] is None:
                    continue
                s = stats.setdefault(n["kind"], [0, 0, 0])
                parent = nodes.get(n["parent"]) or {}
                s[0] += 1
                s[1] += n["status"] == "valid"
                s[2] += (n["status"] == "valid" and n["score"] is not None
                         and parent.get("score") is not None and n["score"] > parent["score"])
    lines = ["| mutation kind | children | valid | improving on the parent's dev score |",
             "| --- | --- | --- | --- |"]
    for kind, (n, v, i) in sorted(stats.items()):
        lines.append(f"| {kind} | {n} | {v} ({pct(v / n)}%) | {i} ({pct(i / n)}%) |")
    return lines


def chains_table(results: dict[str, dict]) -> list[str]:
    lines = ["| task | " + " | ".join(NINE) + " |", "| --- |" + " --- |" * len(NINE)]
    for name, r in results.items():
        rows = {x["method"]: x for x in (r.get("best chain") or {}).get("rows", [])}
        cells = [("error" if "error" in rows.get(m, {}) else
                  f"{pct(rows[m]['dev'])} ({rows[m]['lm_calls']})") if m in rows else "-"
                 for m in NINE]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def targets(results: dict[str, dict]) -> list[str]:
    from metaskill.eval.stats import paired_gain

    full = {n: r for n, r in results.items() if all("test" in (r.get(a) or {}) for a in ARMS)}
    wins, lines = 0, []
    for name, r in full.items():
        d, _, _ = paired_gain(r[ARMS[1]]["test"], r[ARMS[0]]["test"])
        wins += d >= 0.03
        og, lo, hi = paired_gain(r[ARMS[1]]["test"], r[ARMS[2]]["test"])
        who = "open-ended" if lo > 0 else "greedy" if hi < 0 else \
            f"neither (open-ended {100 * og:+.1f}, interval spans 0)"
        lines.append(f"- {name}: archive - best chain {100 * d:+.1f} points; DGM vs greedy: "
                     f"{who}.")
    met = "met" if wins >= 3 else "not met"
    return [f"- Target archive >= best chain + 3 points on at least 3 of 5 tasks: {met} "
            f"({wins} of {len(full)} tasks measured).", *lines]


def report(results: dict[str, dict], meta: dict[str, Any]) -> str:
    lines = [
        "# Archive evolution (Darwin Gödel Machine) against the best single chain",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['cores']} cores ({meta['cpu']}); llama.cpp threads: "
        f"{meta['threads']}; model: {meta['model']} (embedded, also the mutator); embedder "
        f"all-MiniLM-L6-v2. Test cut to {meta['limit']} examples, dev to "
        f"{meta['dev_limit']}, first evaluation stage {meta['stage_size']} dev examples.",
        "",
        "Arms (see the script's docstring): the best of the nine inference-time methods as "
        "`metaskill adapt --method X` fits them with default options, chosen on dev; the "
        "archive with DGM parent selection keeping every valid child; the archive with "
        "greedy selection keeping only children not below the root (the DGM paper's "
        "ablation). Both archives stop at the LM calls the nine fits spent (the budget). "
        "Accuracy in %, [Wilson 95%]; differences in points, [paired bootstrap 95%].",
        "",
        "## Test accuracy (selected on dev)", "", *main_table(results), "",
        "## Targets", "", *targets(results), "",
        "## What each arm spent", "", *spend_table(results), "",
        "## Mutation kinds (both archives, all tasks)", "", *kinds_table(results), "",
        "## The nine single-method chains: dev accuracy (LM calls)", "",
        *chains_table(results), "",
    ]
    if meta["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in meta["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated; bb:NAME for "
                    "a BIG-bench folder under ../shared/data/bigbench/tasks")
    ap.add_argument("--limit", type=int, default=100, help="test examples per task")
    ap.add_argument("--dev-limit", type=int, default=40, help="dev examples per task")
    ap.add_argument("--stage-size", type=int, default=10, help="first-stage dev examples")
    ap.add_argument("--arms", default=",".join(ARMS[1:]), help="archive arms to run")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    ap.add_argument("--work", default="benchmarks/results/evolve_work")
    ap.add_argument("--out", default="benchmarks/results/evolve_archive.md")
    ap.add_argument("--stored-only", action="store_true", help="report stored tasks only")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes")
    args = ap.parse_args()
    args.arms = args.arms.split(",")
    from metaskill.lm import load_lm
    from metaskill.lm.cache import Cache
    from metaskill.lm.llama import builtin_model_path

    work = Path(args.work)
    lm = None if args.stored_only else load_lm("local", cache=Cache(work / "lm_cache.sqlite"),
                                                n_threads=args.threads)
    results: dict[str, dict] = {}
    for name in args.tasks.split(","):
        stored = work / name.replace(":", "_") / "result.json"
        if args.stored_only:
            if stored.exists():
                results[name] = json.loads(stored.read_text())
            continue
        results[name] = run_task(name, lm, args)
    meta = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
            "cores": os.cpu_count(), "cpu": cpu_model(), "threads": args.threads,
            "model": builtin_model_path("local").name, "limit": args.limit,
            "dev_limit": args.dev_limit, "stage_size": args.stage_size, "notes": args.note}
    Path(args.out).write_text(report(results, meta))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
