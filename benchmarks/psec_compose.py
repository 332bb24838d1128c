"""PSEC LoRA skill library: routed composition versus single adapters and a uniform merge.

The embedded model (SmolLM2-135M) on the same reasoning-gym mix as
``stat_vs_uniform.py`` (skill = dataset name):

1. Train one LoRA adapter per skill on that skill's training answers
   (:func:`metaskill.methods.lora_library.train_skill_library`), each with the same steps,
   batch and seed; record each skill's centroid of MiniLM input embeddings.
2. On the mixed test set, score with the HF backend:
   - **base**: no adapter;
   - **single:<skill>**: that one adapter for every input;
   - **uniform**: every adapter with weight 1/K;
   - **routed**: weights softmax(cos(embed(x), centroid_k) / T) per input (PSEC's context
     router, training-free).
   Per skill, with Wilson 95% intervals, plus how often the router put most weight on the
   input's own skill.

Writes ``benchmarks/results/psec_compose.md`` (after each arm).

Usage::

    .venv/bin/python benchmarks/psec_compose.py --steps 25 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stat_vs_uniform import DEFAULT_MIX, load_mix, skill_table

from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.files import embedded_gguf_path
from metaskill.lm.hf import HFLM
from metaskill.methods.lora_library import ComposedLM, train_skill_library
from metaskill.methods.sft import SFTConfig, user_text
from metaskill.skills.embed import load_embedder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mix", default=json.dumps(DEFAULT_MIX),
                    help="JSON object: reasoning-gym dataset -> generator config")
    ap.add_argument("--n-train", type=int, default=300, help="train pool per dataset")
    ap.add_argument("--n-test", type=int, default=20, help="test per dataset")
    ap.add_argument("--steps", type=int, default=25, help="steps per skill adapter")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.05, help="router temperature")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/psec_compose.md")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="psec-"))
    mix = json.loads(a.mix)
    task = load_mix(mix, a.n_train, 1, a.n_test, a.seed)
    gguf = embedded_gguf_path()
    embedder = load_embedder("minilm")

    from metaskill.lm import load_lm

    carrier = load_lm("local")  # train_for_lm reads the base model file from it
    t0 = time.perf_counter()
    lib = train_skill_library(carrier, task, task.examples("train"),
                              SFTConfig(rank=a.rank, alpha=2.0 * a.rank, learning_rate=a.lr,
                                        steps=a.steps, batch_size=a.batch_size, seed=0,
                                        threads=a.threads),
                              work / "library", embed=embedder.encode, skills=list(mix),
                              progress=sys.stderr.isatty())
    train_s = time.perf_counter() - t0
    carrier.close()

    hf = HFLM(gguf, threads=a.threads)
    runs: dict[str, Any] = {}
    runs["base"] = evaluate(ZeroShot(hf), task, "test", progress=False)
    print(f"base {runs['base'].accuracy:.1%}", flush=True)
    comp = ComposedLM(hf, lib, embed=embedder.encode, temperature=a.temperature)

    # the router's choice on every test input
    test = task.examples("test")
    top_ok = 0
    mean_own = 0.0
    for e in test:
        comp.mode = "routed"
        w = comp.weights(user_text(task, e))
        own = comp.names.index(e.skills[0])
        top_ok += int(np.argmax(w) == own)
        mean_own += float(w[own]) / len(test)

    arms = [f"single:{s}" for s in comp.names] + ["uniform", "routed"]

    def write() -> None:
        names = ["base", *[x for x in arms if x in runs]]
        cmd = "python benchmarks/psec_compose.py " + " ".join(argv or sys.argv[1:])
        lines = [
            "# PSEC LoRA skill library: routed composition vs single adapters and uniform "
            "merge", "",
            f"- command: `{cmd}`",
            f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
            f"nproc: {os.cpu_count()}; torch threads: {a.threads}; load average at start "
            f"{load0[0]:.1f}; total wall {time.perf_counter() - t_start:.0f} s",
            "- model: SmolLM2-135M-Instruct (HF copy of the Q4_1 GGUF, fp32); adapters "
            "trained in transformers+peft and composed in the HF backend (per-input "
            "weights scale each adapter's LoRA update)",
            f"- mix: {json.dumps(mix)} (reasoning-gym, seed {a.seed}); {a.n_train} train "
            f"and {a.n_test} test examples per dataset; reasoning-gym's own scorers",
            f"- one adapter per skill: {a.steps} steps x batch {a.batch_size} on that "
            f"skill's training answers, LoRA rank {a.rank}, lr {a.lr}, seed 0; "
            f"{train_s:.0f} s for all {len(comp.names)} adapters",
            f"- router: softmax(cos(MiniLM(x), centroid) / {a.temperature}); it put the "
            f"most weight on the input's own skill for {top_ok} of {len(test)} test inputs; "
            f"mean weight on the own skill {mean_own:.2f}",
            "", "## Test accuracy per skill (95% Wilson interval)", "",
        ]
        lines += skill_table(list(mix), {k: runs[k] for k in names})
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join(lines) + "\n")

    write()
    for arm in arms:
        if arm.startswith("single:"):
            comp.mode, comp.skill = "single", arm.split(":", 1)[1]
        else:
            comp.mode, comp.skill = arm, None
        runs[arm] = evaluate(ZeroShot(comp), task, "test", progress=False)
        print(f"{arm}: {runs[arm].accuracy:.1%}", flush=True)
        write()
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()
