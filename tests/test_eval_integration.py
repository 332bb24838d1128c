"""Integration on the real embedded model (SmolLM2-135M-Instruct via llama.cpp): 10 sst2
examples through the harness, and a real process killed mid-run then resumed by the CLI."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

llama_cpp = pytest.importorskip("llama_cpp", reason="the local extra (llama-cpp-python) "
                                "is not installed")


@pytest.fixture(scope="module")
def lm():
    from metaskill.lm import load_lm

    # One thread: on a shared 2-core machine, two llama.cpp threads contend with other
    # jobs and run many times slower; on an idle machine one thread is at most 2x slower.
    model = load_lm("local", cache=False, n_threads=1)
    yield model
    model.close()


def test_real_model_zero_shot_and_likelihood_on_sst2(lm, tmp_path):
    from metaskill.eval.harness import evaluate
    from metaskill.eval.solvers import LikelihoodClassifier, ZeroShot
    from metaskill.eval.store import RunStore
    from metaskill.tasks import get_task

    task = get_task("sst2")
    store = RunStore(tmp_path / "runs.sqlite")
    run = evaluate(ZeroShot(lm), task, limit=10, store=store, progress=False, batch_size=4)
    assert run.status == "done" and run.totals.n == 10 and run.totals.errors == 0
    assert len(store.get(run.id).records) == 10
    for r in run.records:
        assert "<|im_start|>user" in r.prompt and r.reference in ("negative", "positive")
        assert r.usage.prompt_tokens > 40 and r.latency_s > 0
        assert r.score in (0.0, 1.0) and r.reason
    # the instruct model answers with a label word most of the time
    assert sum(r.parsed in ("negative", "positive") for r in run.records) >= 7
    assert run.interval[0] <= run.accuracy <= run.interval[1]

    lik = evaluate(LikelihoodClassifier(lm), task, limit=10, progress=False)
    assert lik.totals.errors == 0 and lik.totals.n == 10
    for r in lik.records:
        scores = r.meta["scores"]
        assert set(scores) == {"negative", "positive"}
        assert all(v is not None and math.isfinite(v) and v < 0 for v in scores.values())
        assert r.output == max(scores, key=scores.get)
    # deterministic: the same example scores the same again
    first = lik.records[0]
    ex = next(e for e in task.examples("test") if e.id == first.example_id)
    again = LikelihoodClassifier(lm).solve(task, [ex])[0]
    assert again.meta["scores"] == first.meta["scores"]


def test_killed_cli_run_resumes_losing_at_most_one_batch(tmp_path):
    from metaskill.eval.store import RunStore

    script = Path(sys.executable).parent / "metaskill"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "metaskill"]
    env = {**os.environ, "METASKILL_HOME": str(tmp_path), "COLUMNS": "200"}
    args = ["eval", "--task", "sst2", "--model", "local", "--threads", "1", "--limit", "10",
            "--batch-size", "2", "--no-cache", "--no-progress"]
    proc = subprocess.Popen([*base, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    store_path = tmp_path / "runs.sqlite"
    try:
        deadline = time.time() + 240
        n = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if store_path.exists():
                runs = RunStore(store_path).list()
                n = runs[0].totals.n if runs else 0
                if n >= 4:
                    break
        assert proc.poll() is None, "the run finished before it could be killed"
        assert n >= 4, "no progress within the time limit"
        os.kill(proc.pid, signal.SIGKILL)  # the process we started, nothing else
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    store = RunStore(store_path)
    [run] = store.list()
    killed = store.get(run.id)
    assert killed.status == "interrupted"  # SIGKILL: nobody marked it; its owner is gone
    assert 4 <= len(killed.records) < 10 and len(killed.records) % 2 == 0  # whole batches
    assert killed.totals.n == len(killed.records)

    res = subprocess.run([*base, "eval", "--resume", run.id, "--threads", "1", "--no-cache",
                          "--no-progress"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming run {run.id} ({len(killed.records)}/10 done)" in res.stdout
    done = store.get(run.id)
    assert done.status == "done" and len(done.records) == 10 and done.totals.n == 10
    # the records committed before the kill were kept as they were
    before = {r.example_id: r for r in killed.records}
    assert all(before[r.example_id] == r for r in done.records if r.example_id in before)
