"""Parametric self-improvement benchmark on the embedded model (SmolLM2-135M) on this CPU.

Section "new skill": a skill the base model lacks (reasoning-gym ``spell_backward``, i.e.
word reversal) is taught by LoRA SFT on the task's training answers within a wall-clock
training budget. Every ``--eval-every`` steps the adapter is saved, exported to a GGUF
LoRA adapter and scored on held-out test examples with the llama.cpp backend
(``local+adapter:...``, the path a user serves), using the task's own verifier. Evaluation
time is not counted as training time. Reports the accuracy curve (vs training seconds and
steps), seconds per step and peak memory, and (``--parity``) how often greedy outputs of
HF+adapter and llama.cpp+adapter agree on the test prompts.

Usage::

    .venv/bin/python benchmarks/self_improve.py --budget-s 300 \
        --out benchmarks/results/self_improve.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from metaskill.core.types import Message, Request
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.adapters import export_gguf
from metaskill.lm.files import embedded_gguf_path
from metaskill.lm.hf import load_hf_model
from metaskill.lm.llama import LlamaLM
from metaskill.methods.sft import SFTConfig, StepInfo, pairs_from_examples, train_lora, user_text
from metaskill.tasks import get_task


def accuracy(task: Any, gguf: Path, lora: Path | None, threads: int, max_tokens: int
             ) -> tuple[float, list[str]]:
    """Test accuracy of base (+ adapter) served by llama.cpp, with the task's verifier."""
    lm = LlamaLM(gguf, lora_path=lora, n_threads=threads)
    try:
        run = evaluate(ZeroShot(lm, max_tokens=max_tokens), task, "test", progress=False)
    finally:
        lm.close()
    outs = [r.output for r in run.records]
    return sum(r.score for r in run.records) / max(1, len(run.records)), outs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="word_sequence_reversal")
    ap.add_argument("--config", default='{"min_words": 3, "max_words": 8}',
                    help="generator parameters (JSON)")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--budget-s", type=float, default=300.0, help="training seconds")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what --budget-s counts: wall-clock seconds, or this process's CPU "
                    "seconds (fair on a shared, oversubscribed machine)")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--parity", action="store_true", help="HF vs llama.cpp agreement")
    ap.add_argument("--out", default="benchmarks/results/self_improve.md")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="self_improve-"))
    work.mkdir(parents=True, exist_ok=True)
    task = get_task("reasoning_gym", dataset=a.dataset, n_train=a.n_train, n_dev=0,
                    n_test=a.n_test, seed=7,
                    config=json.loads(a.config))
    gguf = embedded_gguf_path()
    base_acc, base_outs = accuracy(task, gguf, None, a.threads, a.max_tokens)
    print(f"base accuracy {base_acc:.1%}; sample outputs {base_outs[:4]}", flush=True)

    t_load = time.perf_counter()
    model, tok, _info = load_hf_model(gguf)
    load_s = time.perf_counter() - t_load
    pairs = pairs_from_examples(task, task.examples("train"))
    cfg = SFTConfig(rank=a.rank, alpha=2.0 * a.rank, learning_rate=a.lr, steps=a.max_steps,
                    batch_size=a.batch_size, seed=0, threads=a.threads)
    curve: list[dict[str, Any]] = [{"step": 0, "train_s": 0.0, "cpu_s": 0.0, "loss": None,
                                    "accuracy": base_acc}]

    state: dict[str, Any] = {"res": None, "parity": None}

    def write_report() -> None:
        """Write the results file (also after every checkpoint, so a run cut short by a
        deadline still leaves its curve)."""
        res = state["res"]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        best = max(c["accuracy"] for c in curve)
        reached = next((c for c in curve if c["accuracy"] >= 0.5), None)
        cmd = "python benchmarks/self_improve.py " + " ".join(argv or sys.argv[1:])
        lines = [
            "# Parametric self-improvement: new skill by LoRA SFT",
            "",
            f"- command: `{cmd}`",
            f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
            f"nproc: {os.cpu_count()}; torch threads: {a.threads}",
            f"- load average at start: {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} "
            "(1/5/15 min); the 2 cores were shared with other jobs, so wall seconds are "
            "pessimistic; CPU seconds are this process's own",
            "- model: SmolLM2-135M-Instruct Q4_1 GGUF; trained in transformers+peft (fp32, "
            f"dequantized from the same GGUF; HF copy load {load_s:.1f} s), evaluated by "
            "llama.cpp with the exported GGUF LoRA adapter (`local+adapter:PATH`)",
            f"- task: reasoning-gym `{a.dataset}` ({a.config}), {len(pairs)} training answers, "
            f"{len(task.examples('test'))} held-out test examples, scored by the task's "
            "verifier, greedy decoding",
            f"- LoRA: rank {a.rank}, alpha {2 * a.rank}, all attention+MLP linears, lr {a.lr}, "
            f"batch {a.batch_size}, seed 0; budget {a.budget_s:.0f} s of training "
            f"({a.clock} clock)",
            f"- status: {'finished' if res is not None else 'IN PROGRESS (partial curve)'}",
            "",
            "## Learning curve (test accuracy vs training time)",
            "",
            "| step | training s (wall) | training s (CPU) | loss | test accuracy |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in curve:
            loss = "" if c["loss"] is None else f"{c['loss']:.3f}"
            lines.append(f"| {c['step']} | {c['train_s']:.0f} | {c['cpu_s']:.0f} | {loss} | "
                         f"{c['accuracy']:.1%} |")
        last = curve[-1]
        lines += ["", "## Result", "",
                  f"- base {base_acc:.1%} -> best {best:.1%}; last {last['accuracy']:.1%} "
                  f"after {last['step']} steps / {last['train_s']:.0f} s wall / "
                  f"{last['cpu_s']:.0f} s CPU of training",
                  "- reached 50%: " + (f"yes, at step {reached['step']} "
                                       f"({reached['train_s']:.0f} s wall, "
                                       f"{reached['cpu_s']:.0f} s CPU)" if reached else "no")]
        if res is not None:
            lines.append(
                f"- training cost: {res.seconds_per_step:.2f} s wall and "
                f"{res.cpu_seconds / max(1, res.steps):.2f} s CPU per step (batch "
                f"{a.batch_size}), peak resident memory {peak:.0f} MiB (whole process: HF "
                "model, optimizer, llama.cpp evaluator)")
        elif last["step"]:
            lines.append(f"- training cost so far: {last['train_s'] / last['step']:.2f} s wall "
                         f"and {last['cpu_s'] / last['step']:.2f} s CPU per step, peak "
                         f"resident memory {peak:.0f} MiB")
        if state["parity"] is not None:
            lines.append(f"- parity: greedy outputs of HF+adapter and llama.cpp+adapter agree "
                         f"on {state['parity']:.0%} of the {len(task.examples('test'))} "
                         "test prompts")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join(lines) + "\n")
        if res is not None:
            print("\n".join(lines))

    def checkpoint(s: StepInfo) -> bool:
        over = (s.cpu_s if a.clock == "cpu" else s.elapsed_s) >= a.budget_s
        if s.step % a.eval_every and not over:
            return False
        ck = work / f"ckpt-{s.step}"
        s.model.save_pretrained(str(ck))
        lora = export_gguf(ck, base_gguf=gguf)
        acc, outs = accuracy(task, gguf, lora, a.threads, a.max_tokens)
        curve.append({"step": s.step, "train_s": round(s.elapsed_s, 1),
                      "cpu_s": round(s.cpu_s, 1), "loss": round(s.loss, 4), "accuracy": acc})
        print(json.dumps(curve[-1]), outs[:3], flush=True)
        shutil.rmtree(ck, ignore_errors=True)
        write_report()
        return over

    res = train_lora(model, tok, pairs, cfg, work / "adapter", on_step=checkpoint,
                     progress=sys.stderr.isatty())
    final_lora = export_gguf(res.adapter_dir, base_gguf=gguf)

    if a.parity:
        prompts = [user_text(task, e) for e in task.examples("test")]
        reqs = [Request(messages=[Message(role="user", content=p)], max_tokens=a.max_tokens)
                for p in prompts]
        from metaskill.lm.hf import HFLM

        hf = HFLM(gguf, model=res.model, tokenizer=tok)
        hf_out = [c.text.strip() for c in hf.complete(reqs, cache=False)]
        cpp = LlamaLM(gguf, lora_path=final_lora, n_threads=a.threads)
        cpp_out = [c.text.strip() for c in cpp.complete(reqs, cache=False)]
        cpp.close()
        state["parity"] = sum(x == y for x, y in zip(hf_out, cpp_out, strict=True)) / len(reqs)
    state["res"] = res
    write_report()


if __name__ == "__main__":
    main()
