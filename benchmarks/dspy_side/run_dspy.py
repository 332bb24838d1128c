"""DSPy side of benchmarks/vs_dspy.py: compile and run DSPy optimizers on exported splits.

Runs inside benchmarks/.venv-dspy (DSPy is a benchmark-only dependency, never imported by
metaskill). It talks to a ``python -m llama_cpp.server`` on 127.0.0.1 that serves the same
GGUF file metaskill uses, with DSPy's cache off, and writes one JSON with, per
(optimizer, adapter): the raw predictions on test, parse failures (calls that raised),
inference and compile tokens and LM calls (from the LM's history), and wall times.
Scoring with the task's verifier happens on the metaskill side, so both sides are scored
by the same code.

Usage (normally started by vs_dspy.py):
    benchmarks/.venv-dspy/bin/python benchmarks/dspy_side/run_dspy.py --config cfg.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPY_CACHEDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) /
                                           "dspy-cache-vs-dspy"))

import dspy


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label_parser(labels: list[str], aliases: dict[str, list[str]]):
    """The same rule as metaskill's LabelVerifier: the first label word (or alias) wins."""

    def parse(text: str) -> str | None:
        best = None
        for lab in labels:
            for word in [lab, *aliases.get(lab, [])]:
                pat = r"(?<![0-9A-Za-z])" + re.escape(word.strip()) + r"(?![0-9A-Za-z])"
                m = re.search(pat, text or "", flags=re.IGNORECASE)
                if m and (best is None or (m.start(), -len(word)) < (best[0], best[1])):
                    best = (m.start(), -len(word), lab)
        return best[2] if best else None

    return parse


def make_signature(cfg: dict[str, Any]) -> type[dspy.Signature]:
    labels = ", ".join(cfg["labels"])

    class Classify(dspy.Signature):
        __doc__ = cfg["instructions"]
        text: str = dspy.InputField(desc=cfg.get("input_desc", "the input"))
        label: str = dspy.OutputField(desc=f"exactly one of: {labels}")

    return Classify


def usage_since(lm: dspy.LM, start: int) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens, calls) of the LM's history entries after ``start``."""
    p = c = 0
    entries = lm.history[start:]
    for h in entries:
        u = h.get("usage") or {}
        p += int(u.get("prompt_tokens") or 0)
        c += int(u.get("completion_tokens") or 0)
    return p, c, len(entries)


def compile_program(name: str, student: dspy.Module, train: list[dspy.Example],
                    dev: list[dspy.Example], metric, cfg: dict[str, Any],
                    proposer: dspy.LM | None = None) -> dspy.Module:
    seed = int(cfg.get("seed", 0))
    if name == "Predict":
        return student
    if name == "LabeledFewShot":
        return dspy.LabeledFewShot(k=8).compile(student, trainset=train)
    if name == "KNNFewShot":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(cfg["minilm_path"], device="cpu")
        emb = dspy.Embedder(lambda texts: model.encode(texts, normalize_embeddings=True))
        return dspy.KNNFewShot(k=4, trainset=train, vectorizer=emb).compile(student)
    if name == "BootstrapFewShot":
        return dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=4,
                                     max_labeled_demos=4).compile(student, trainset=train)
    if name == "BootstrapFewShotWithRandomSearch":
        return dspy.BootstrapFewShotWithRandomSearch(
            metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4,
            num_candidate_programs=int(cfg.get("random_search_candidates", 4)),
            num_threads=1).compile(student, trainset=train, valset=dev)
    if name == "MIPROv2":
        # The proposer is the same 135M model (the only one here), with room to write an
        # instruction; the task model keeps the short answer budget.
        opt = dspy.MIPROv2(metric=metric, auto="light", num_threads=1, seed=seed,
                           prompt_model=proposer, verbose=False)
        return opt.compile(student, trainset=train, valset=dev,
                           max_bootstrapped_demos=4, max_labeled_demos=4)
    raise SystemExit(f"unknown optimizer {name}")


def run_one(name: str, adapter_name: str, cfg: dict[str, Any], data: dict[str, list]) -> dict:
    def make_lm(max_tokens: int) -> dspy.LM:
        return dspy.LM(f"openai/{cfg['model_alias']}", api_base=cfg["base_url"],
                       api_key="local", temperature=0.0, max_tokens=max_tokens,
                       cache=bool(cfg.get("memory_cache")),
                       num_retries=0,
                       # litellm sends max_completion_tokens, which llama_cpp.server ignores
                       # (it then generates up to the context size); send max_tokens as well.
                       extra_body={"max_tokens": max_tokens})

    lm = make_lm(int(cfg.get("max_tokens", 64)))
    proposer = make_lm(int(cfg.get("proposer_max_tokens", 512))) if name == "MIPROv2" else None
    adapter = dspy.ChatAdapter() if adapter_name == "chat" else dspy.JSONAdapter()
    # DSPy's evaluations halt after settings.max_errors (default 10) failed calls; with a
    # 135M model most failures are unparseable answers, so a run may raise the limit.
    extra = {"max_errors": int(cfg["max_errors"])} if cfg.get("max_errors") else {}
    dspy.configure(lm=lm, adapter=adapter, **extra)
    parse = label_parser(cfg["labels"], cfg.get("aliases", {}))

    def metric(example, pred, trace=None) -> bool:
        return parse(getattr(pred, "label", "") or "") == example.label

    def to_ex(r: dict[str, Any]) -> dspy.Example:
        return dspy.Example(text=r["text"], label=r["label"]).with_inputs("text")

    train = [to_ex(r) for r in data["train"]]
    dev = [to_ex(r) for r in data["dev"]]
    student = dspy.Predict(make_signature(cfg))
    out: dict[str, Any] = {"optimizer": name, "adapter": adapter_name, "error": None,
                           "max_errors": dspy.settings.max_errors}
    t0 = time.perf_counter()
    try:
        program = compile_program(name, student, train, dev, metric, cfg, proposer)
    except Exception as e:  # recorded, never hidden
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        out["traceback"] = traceback.format_exc()[-2000:]
        program = None
    out["compile_s"] = time.perf_counter() - t0
    out["compile_prompt_tokens"], out["compile_completion_tokens"], out["compile_calls"] = \
        usage_since(lm, 0)
    if proposer is not None:  # the proposer's calls are compile cost too
        pp, pc, pn = usage_since(proposer, 0)
        out["compile_prompt_tokens"] += pp
        out["compile_completion_tokens"] += pc
        out["compile_calls"] += pn
        out["proposer_calls"] = pn
    mark = len(lm.history)
    preds, failures = [], []
    t1 = time.perf_counter()
    if program is not None:
        for r in data["test"]:
            try:
                p = program(text=r["text"])
                preds.append(str(getattr(p, "label", "") or ""))
                failures.append(None)
            except Exception as e:
                preds.append("")
                failures.append(f"{type(e).__name__}: {str(e)[:160]}")
    out["infer_s"] = time.perf_counter() - t1
    out["infer_prompt_tokens"], out["infer_completion_tokens"], out["infer_calls"] = \
        usage_since(lm, mark)
    out["memory_cache"] = bool(cfg.get("memory_cache"))
    out["cache_hits"] = sum(bool(getattr(h.get("response"), "cache_hit", False))
                            for h in lm.history)
    out["ids"] = [r["id"] for r in data["test"]][: len(preds)]
    out["predictions"] = preds
    out["failures"] = failures
    if program is not None:
        demos = getattr(program, "demos", None)
        out["n_demos"] = len(demos) if demos is not None else None
        out["instructions"] = str(getattr(getattr(program, "signature", None),
                                          "instructions", ""))[:500]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="JSON written by vs_dspy.py")
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    dspy.configure_cache(enable_disk_cache=False,
                         enable_memory_cache=bool(cfg.get("memory_cache")))
    folder = Path(cfg["data_dir"])
    data = {s: read_jsonl(folder / f"{s}.jsonl") for s in ("train", "dev", "test")}
    data["train"] = data["train"][: cfg.get("compile_train_limit") or None]
    data["dev"] = data["dev"][: cfg.get("dev_limit") or None]
    out_path = Path(cfg["out"])
    # Results of earlier invocations over the same work dir are kept; a rerun of the same
    # (optimizer, adapter) replaces its entry.
    results = json.loads(out_path.read_text())["results"] if out_path.exists() else []
    for name in cfg["optimizers"]:
        for adapter in cfg["adapters"]:
            print(f"[dspy] {cfg['task']}: {name} / {adapter}", file=sys.stderr, flush=True)
            result = run_one(name, adapter, cfg, data)
            results = [r for r in results
                       if (r["optimizer"], r["adapter"]) != (name, adapter)] + [result]
            out_path.write_text(json.dumps({"dspy_version": dspy.__version__,
                                            "results": results}, indent=1))
    print(f"[dspy] wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
