"""How often the hf and llama.cpp backends give the same greedy answer, base model only.

The adapter parity test (``tests/test_adapter.py``) compares HF+adapter with
llama.cpp+adapter. This measures the floor under it: the same base model, no adapter,
through transformers (which dequantizes the GGUF and computes in fp32) and through
llama.cpp on (a) the shipped Q4_1 file and (b) an F32 copy written by
:func:`metaskill.lm.adapters.dequantize_gguf`. Disagreement on (a) is quantization
noise; on (b) there should be none.

Writes ``benchmarks/results/backend_parity.md``.

Usage::

    .venv/bin/python benchmarks/backend_parity.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

from metaskill.core.types import Message, Request
from metaskill.lm.adapters import dequantize_gguf
from metaskill.lm.files import embedded_gguf_path
from metaskill.lm.hf import HFLM
from metaskill.lm.llama import LlamaLM

# The 50 held-out words of the adapter parity test.
WORDS = ("ocean planet violin copper basket desert falcon ginger hammer island jacket "
         "kettle ladder magnet napkin orange parrot quartz rabbit saddle tunnel velvet "
         "walnut yellow zipper anchor bamboo cactus dragon engine feather glider harbor "
         "igloo jungle kitten lizard meadow needle oyster pepper quiver ribbon spider "
         "turtle umpire valley wizard yogurt zebra").split()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="prompts (at most 50)")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/backend_parity.md")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    words = WORDS[: a.n]
    reqs = [Request(messages=[Message(role="user", content=f"Reverse the word: {w}")],
                    max_tokens=a.max_tokens) for w in words]
    src = embedded_gguf_path()
    hf = [c.text.strip() for c in HFLM(src).complete(reqs, cache=False)]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        f32 = dequantize_gguf(src, Path(tmp) / "f32.gguf")
        deq_s = time.perf_counter() - t
        out = {}
        for name, path in (("Q4_1 (shipped)", src), ("F32 copy", f32)):
            lm = LlamaLM(path, n_threads=a.threads)
            try:
                out[name] = [c.text.strip() for c in lm.complete(reqs, cache=False)]
            finally:
                lm.close()

    cmd = "python benchmarks/backend_parity.py " + " ".join(argv or sys.argv[1:])
    lines = [
        "# Base-model agreement between the hf and llama.cpp backends", "",
        f"- command: `{cmd}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; nproc: "
        f"{os.cpu_count()}; threads {a.threads}; load average at start {load0[0]:.1f}; "
        f"total wall {time.perf_counter() - t0:.0f} s",
        f"- model: SmolLM2-135M-Instruct, no adapter; hf = transformers on the GGUF "
        f"dequantized to fp32; {len(words)} chat prompts 'Reverse the word: W', greedy, "
        f"max {a.max_tokens} tokens; an answer agrees when the stripped texts are equal",
        f"- F32 copy written by `dequantize_gguf` in {deq_s:.1f} s", "",
        "| llama.cpp model file | same answer as hf |", "| --- | ---: |",
    ]
    for name, texts in out.items():
        same = sum(x == y for x, y in zip(hf, texts, strict=True))
        lines.append(f"| {name} | {same}/{len(words)} ({100 * same / len(words):.0f}%) |")
    lines += ["", "First disagreements on the Q4_1 file (hf | llama.cpp):", ""]
    diffs = [(w, x, y) for w, x, y in zip(words, hf, out["Q4_1 (shipped)"], strict=True)
             if x != y]
    lines += [f"- {w}: `{x!r}` | `{y!r}`" for w, x, y in diffs[:5]] or ["- none"]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
