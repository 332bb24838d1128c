"""STAT-Sel and STAT-Syn versus uniform SFT, same budget, on a multi-skill mix.

The embedded model (SmolLM2-135M) on a mix of reasoning-gym datasets (skill = dataset
name, each with its own generator config and the task's own scorer):

1. Evaluate the base model zero-shot on dev and build the Missing-Skill Profile
   (:func:`metaskill.skills.profile.build_profile`, labels = dataset names).
2. Build three training sets of the same size N = steps x batch:
   - **uniform**: N training answers drawn uniformly from the mix's train pool;
   - **STAT-Sel**: training answers of each (difficult dev example, missing skill) pair,
     so skills the model fails more often get more data (:func:`stat_sel`);
   - **STAT-Syn**: new examples from each missing skill's generator, same weighting,
     seeds far from the task's (:func:`stat_syn_procedural`).
3. LoRA-train each for the same number of steps with the same settings and seed
   (:func:`train_for_lm`, which exports the GGUF adapter).
4. Score base and the three adapters on the same held-out test examples with llama.cpp
   (``local+adapter:...``), per skill, with Wilson 95% intervals.

Writes ``benchmarks/results/stat_vs_uniform.md`` (after each arm, so a cut-short run still
leaves what it measured).

Usage::

    .venv/bin/python benchmarks/stat_vs_uniform.py --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.eval.stats import wilson
from metaskill.lm.files import embedded_gguf_path
from metaskill.lm.llama import LlamaLM
from metaskill.methods.sft import SFTConfig, pairs_from_examples, train_for_lm, uniform_sample
from metaskill.methods.stat import (
    missing_pairs,
    reasoning_gym_generator,
    stat_sel,
    stat_syn_procedural,
)
from metaskill.skills.profile import ProfileConfig, build_profile
from metaskill.tasks import get_task

# dataset -> generator config. Chosen so the base model is weak on some skills and less
# weak on others (STAT's premise): list reversal and sorting of short lists, counting a
# letter in a short phrase.
DEFAULT_MIX = {
    "word_sequence_reversal": {"min_words": 3, "max_words": 5},
    "letter_counting": {"min_words": 3, "max_words": 5},
    "word_sorting": {"min_words": 3, "max_words": 4},
}


def load_mix(mix: dict[str, dict[str, Any]], n_train: int, n_dev: int, n_test: int,
             seed: int) -> Any:
    """One Task holding every dataset of ``mix`` (each with its own config)."""
    parts = [get_task("reasoning_gym", dataset=name, n_train=n_train, n_dev=n_dev,
                      n_test=n_test, seed=seed, config=cfg) for name, cfg in mix.items()]
    splits = {s: [e for t in parts for e in t.splits[s]] for s in ("train", "dev", "test")}
    return parts[0].model_copy(update={
        "name": "rg_stat_mix", "splits": splits,
        "description": "reasoning-gym mix: " + ", ".join(mix),
        "metadata": {**parts[0].metadata, "max_tokens": 40,
                     "mix": {name: cfg for name, cfg in mix.items()}}})


def skill_table(skills: list[str], runs: dict[str, Any],
                extra: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Markdown rows: test accuracy per skill and overall for each named Run, with Wilson
    95% intervals; ``extra`` adds columns before the runs ({column: {skill: text}})."""
    extra = extra or {}
    per = {k: {s.skill: s for s in r.per_skill} for k, r in runs.items()}

    def cell(st: Any) -> str:
        if st is None:
            return ""
        lo, hi = wilson(st.score, st.n)
        return f"{st.accuracy:.1%} [{lo:.0%}, {hi:.0%}]"

    cols = [*extra, *runs]
    lines = ["| skill | " + " | ".join(cols) + " |",
             "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for sk in skills:
        cells = [extra[c].get(sk, "") for c in extra] + [cell(per[k].get(sk)) for k in runs]
        lines.append(f"| {sk} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join([""] * len(extra) + [
        f"**{r.accuracy:.1%}** [{r.interval[0]:.0%}, {r.interval[1]:.0%}]"
        for r in runs.values()]) + " |")
    return lines


def score(task: Any, gguf: Path, lora: Path | None, threads: int) -> Any:
    """The test Run of base (+ adapter) served by llama.cpp, scored by the task."""
    lm = LlamaLM(gguf, lora_path=lora, n_threads=threads)
    try:
        return evaluate(ZeroShot(lm), task, "test", progress=False)
    finally:
        lm.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mix", default=json.dumps(DEFAULT_MIX),
                    help="JSON object: reasoning-gym dataset -> generator config")
    ap.add_argument("--n-train", type=int, default=300, help="train pool per dataset")
    ap.add_argument("--n-dev", type=int, default=20, help="dev (profile) per dataset")
    ap.add_argument("--n-test", type=int, default=30, help="test per dataset")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7, help="task generator seed")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="seed of the training-set draws (default: --seed); vary it to see "
                    "how much accuracy moves with the sample alone")
    ap.add_argument("--arms", default="uniform,stat-sel,stat-syn")
    ap.add_argument("--out", default="benchmarks/results/stat_vs_uniform.md")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="stat_vs_uniform-"))
    work.mkdir(parents=True, exist_ok=True)
    mix = json.loads(a.mix)
    task = load_mix(mix, a.n_train, a.n_dev, a.n_test, a.seed)
    train = task.examples("train")
    gguf = embedded_gguf_path()

    # 1. base model: profile on dev, score on test
    base_lm = LlamaLM(gguf, n_threads=a.threads)
    try:
        profile = build_profile(ZeroShot(base_lm), task,
                                config=ProfileConfig(split="dev", progress=False))
    finally:
        base_lm.close()
    runs: dict[str, Any] = {"base": score(task, gguf, None, a.threads)}
    print(f"base test accuracy {runs['base'].accuracy:.1%}", flush=True)

    # 2. three training sets of the same size
    n = a.steps * a.batch_size
    pairs = missing_pairs(profile)
    if not pairs:
        sys.exit("the profile names no missing skill: the base model passes every dev "
                 "example, so there is nothing for STAT to target")
    per_pair = max(1, -(-n // len(pairs)))
    gens = {name: reasoning_gym_generator(cfg) for name, cfg in mix.items()}

    def generator(skill: str, count: int, seed: int) -> list[Any]:
        return gens[skill](skill, count, seed)

    ds = a.seed if a.data_seed is None else a.data_seed
    data = {
        "uniform": uniform_sample(train, n, seed=ds),
        "stat-sel": stat_sel(profile, train, per_pair=per_pair, seed=ds, limit=n),
        "stat-syn": random.Random(ds).sample(
            stat_syn_procedural(profile, generator, per_pair=per_pair,
                                seed=10_000 + (ds - a.seed)), n),
    }
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    info: dict[str, dict[str, Any]] = {}

    def write() -> None:
        skills = list(mix)
        names = ["base", *[x for x in arms if x in runs]]
        prof = {s.skill: s for s in profile.skills}
        cmd = "python benchmarks/stat_vs_uniform.py " + " ".join(argv or sys.argv[1:])
        lines = [
            "# STAT-Sel and STAT-Syn versus uniform SFT (same budget, multi-skill mix)", "",
            f"- command: `{cmd}`",
            f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
            f"nproc: {os.cpu_count()}; torch and llama.cpp threads: {a.threads}; load "
            f"average at start {load0[0]:.1f}; total wall {time.perf_counter() - t_start:.0f} s",
            "- model: SmolLM2-135M-Instruct Q4_1 GGUF, trained in transformers+peft (fp32), "
            "scored by llama.cpp with the exported GGUF LoRA adapter",
            f"- mix: {json.dumps(mix)} (reasoning-gym, seed {a.seed}); train pool "
            f"{a.n_train}, dev {a.n_dev}, test {a.n_test} per dataset; scored by "
            "reasoning-gym's own scorers (partial credit where the dataset gives it)",
            f"- every arm: {n} training examples, {a.steps} steps x batch {a.batch_size}, "
            f"LoRA rank {a.rank}, lr {a.lr}, seed 0; zero-shot prompt, greedy decoding",
            f"- profile (base, dev): {len(profile.difficult)} difficult examples, "
            f"{len(pairs)} (difficult, missing skill) pairs",
            "", "## Test accuracy per skill (95% Wilson interval)", "",
        ]
        base_dev = {sk: f"{p.accuracy:.1%}" for sk, p in prof.items()
                    if p.accuracy is not None}
        lines += skill_table(skills, {k: runs[k] for k in names},
                             extra={"base dev acc (profile)": base_dev})
        lines += ["", "## Training data and cost", "",
                  "| arm | examples per skill | train s | s/step | peak MiB | final loss |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for k in arms:
            if k not in info:
                continue
            i = info[k]
            comp = ", ".join(f"{s} {c}" for s, c in sorted(i["skills"].items()))
            lines.append(f"| {k} | {comp} | {i['seconds']:.0f} | {i['s_per_step']:.2f} | "
                         f"{i['peak']:.0f} | {i['loss']:.3f} |")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join(lines) + "\n")

    write()
    from metaskill.lm import load_lm

    carrier = load_lm("local")  # train_for_lm reads the base model file from the LM
    for arm in arms:
        examples = data[arm]
        res = train_for_lm(carrier, pairs_from_examples(task, examples),
                           SFTConfig(rank=a.rank, alpha=2.0 * a.rank, learning_rate=a.lr,
                                     steps=a.steps, batch_size=a.batch_size, seed=0,
                                     threads=a.threads),
                           work / arm, progress=sys.stderr.isatty())
        info[arm] = {"skills": dict(Counter(s for e in examples for s in e.skills)),
                     "seconds": res.seconds, "s_per_step": res.seconds_per_step,
                     "peak": res.peak_rss_mb, "loss": res.losses[-1]}
        del res
        runs[arm] = score(task, gguf, work / arm / "adapter.gguf", a.threads)
        print(f"{arm}: test accuracy {runs[arm].accuracy:.1%} ({info[arm]['skills']})",
              flush=True)
        write()
    carrier.close()
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()
