"""The main job (`metaskill run`) end to end on the scripted fake LM, plus its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metaskill.lm.fake import ScriptedLM
from metaskill.pipeline.main_job import RunConfig, run_job
from metaskill.pipeline.report import paired_gain, pareto


def _positive_lm() -> ScriptedLM:
    # Says "positive" unless the prompt's last review mentions a negative cue word; with
    # demonstrations the prompt grows, which the harness counts as tokens.
    def answer(prompt: str, request: object) -> str:
        last = prompt.rsplit("Review", 1)[-1].lower()
        bad = any(w in last for w in ("bad", "dull", "worst", "boring", "n't", "fails"))
        return "negative" if bad else "positive"

    return ScriptedLM(answer)


def _cfg(out: Path, **kw: object) -> RunConfig:
    values: dict[str, object] = dict(tasks=["sst2"], model="fake", methods=["knn_demos", "raml"],
                                     n_dev=10, n_test=12, embedder="hash:64", out=out,
                                     progress=False)
    values.update(kw)
    return RunConfig(**values)


def test_paired_gain_and_pareto():
    gain, lo, hi = paired_gain([1, 1, 1, 0], [0, 1, 1, 0], seed=0)
    assert gain == 0.25 and lo <= gain <= hi
    assert paired_gain([1, 0], [1, 0])[1:] == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_gain([1], [1, 0])
    assert pareto([(10, 0.5), (20, 0.7), (30, 0.6), (10, 0.4)]) == [0, 1]


def test_run_job_end_to_end_and_resume(tmp_path, tmp_home):
    lm = _positive_lm()
    job = run_job(_cfg(tmp_path / "run"), lm=lm)
    (t,) = job.tasks
    names = [c.name for c in t.candidates]
    assert names == ["zero-shot", "knn_demos", "raml"]
    assert all(c.test_run for c in t.candidates)
    # selection happened on dev: the selected candidate has the best dev accuracy of those
    # eligible (keep-best: a chain that does not beat zero-shot on dev is not eligible)
    best_dev = max(c.dev_accuracy for c in t.candidates if c.eligible)
    assert all(c.eligible == (c.fit.get("beats_zero_shot") is not False)
               for c in t.candidates)
    assert next(c for c in t.candidates if c.name == t.selected).dev_accuracy == best_dev
    assert t.profile is not None and t.profile["n"] == 10
    assert t.skills, "embedding discovery should give sst2 some skills"
    report = Path(job.report)
    html = report.read_text()
    for title in ("Headline", "Per-skill accuracy, before and after", "Accuracy versus tokens",
                  "Missing-Skill Profile", "Examples fixed and still failing"):
        assert title in html, title
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| sst2 |" in md and "zero-shot" in md and "(selected)" in md
    assert "- sst2: zero-shot" in md
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["schema_version"] == 1 and saved["tasks"][0]["selected"] == t.selected

    # a second run with the same inputs recomputes nothing: every stage is cached and
    # every evaluation is read back from the run store (the LM is never called)
    lm2 = _positive_lm()
    job2 = run_job(_cfg(tmp_path / "run"), lm=lm2)
    assert lm2.calls == []
    assert all(s["cached"] for s in job2.stage_log)
    assert job2.tasks[0].selected == t.selected


def test_time_budget_skips_and_is_reported(tmp_path, tmp_home):
    job = run_job(_cfg(tmp_path / "run", time_budget_s=1e-9), lm=_positive_lm())
    assert any("time budget" in s for s in job.skipped)
    assert job.tasks[0].candidates == [] and job.tasks[0].selected is None
    assert job.plan is not None and job.plan["sizes"]["chains"] == 1  # the plan shrank
    assert job.plan["changes"] and job.plan["sizes"]["train_steps"] == 60  # none trains
    assert "Skipped" in Path(job.report).read_text()


def test_token_budget_makes_expensive_candidates_ineligible(tmp_path, tmp_home):
    job = run_job(_cfg(tmp_path / "run", budget_tokens=80), lm=_positive_lm())
    (t,) = job.tasks
    demo = [c for c in t.candidates if c.name != "zero-shot"]
    assert demo and all(not c.eligible and "over budget" in c.note for c in demo)
    assert t.selected == "zero-shot"


def test_cli_run_as_a_user(tmp_path, tmp_home):
    out = tmp_path / "cli-run"
    cmd = [sys.executable, "-m", "metaskill", "run", "-t", "sst2", "--model", "fake",
           "--methods", "knn_demos", "--n-dev", "6", "--n-test", "6", "--embedder", "hash:64",
           "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "report.html").is_file() and (out / "result.json").is_file()
    assert "report:" in res.stderr and "paired-bootstrap 95% CI" in res.stderr

    bad_cmd = [("knn_demo" if a == "knn_demos" else a) for a in cmd]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and "knn_demos" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    neg = subprocess.run([*cmd, "--n-test", "1"], capture_output=True, text=True, timeout=120)
    assert neg.returncode == 1 and "Traceback" not in neg.stderr and "n-test" in neg.stderr


def test_report_renders_in_chromium(tmp_path, tmp_home, chromium):
    job = run_job(_cfg(tmp_path / "run"), lm=_positive_lm())
    url = Path(job.report).resolve().as_uri()
    dom = chromium(["--dump-dom", url])
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    assert text.count("<svg") >= 2 and "Headline" in text and "Pareto front" in text
    shot = tmp_path / "shot.png"
    res = chromium([f"--screenshot={shot}", "--window-size=1200,1800", url])
    assert res.returncode == 0 and shot.is_file()
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not a blank page


def test_which_tasks_train():
    cfg = RunConfig(tasks=["sst2", "word_reversal"])
    assert [cfg.trains(t) for t in cfg.tasks] == [False, True]  # the default string skill
    assert not any(RunConfig(tasks=cfg.tasks, train=False).trains(t) for t in cfg.tasks)
    assert all(RunConfig(tasks=cfg.tasks, train=True).trains(t) for t in cfg.tasks)
    only = RunConfig(tasks=cfg.tasks, train_tasks=["sst2"])
    assert [only.trains(t) for t in only.tasks] == [True, False]
    with pytest.raises(ValueError, match="not among the tasks"):
        RunConfig(tasks=["sst2"], train_tasks=["trec"])


def test_train_on_a_model_without_weights_is_skipped_with_the_reason(tmp_path, tmp_home):
    # the scripted LM has no weights to train: the job goes on, says why, and reports it
    job = run_job(_cfg(tmp_path / "run", train=True), lm=_positive_lm())
    (t,) = job.tasks
    assert [c.name for c in t.candidates] == ["zero-shot", "knn_demos", "raml"]
    (why,) = [s for s in job.skipped if "LoRA training" in s]
    assert why.startswith("sst2: LoRA training (") and "cannot tell which model" in why
    assert t.training is None
    assert "LoRA training" in Path(job.report).read_text()


def test_cli_train_flags(tmp_path, tmp_home):
    base = [sys.executable, "-m", "metaskill", "run", "-t", "sst2", "--model", "fake",
            "--methods", "knn_demos", "--n-dev", "4", "--n-test", "4", "--embedder",
            "hash:64", "--no-progress"]
    res = subprocess.run([*base, "--out", str(tmp_path / "a"), "--no-train"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["config"]["train"] is False and saved["tasks"][0]["training"] is None
    assert "LoRA" not in res.stderr
    bad = subprocess.run([*base, "--out", str(tmp_path / "b"), "--train-task", "trec"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "not among the tasks" in bad.stderr and "--task" in bad.stderr
    bad_lr = subprocess.run([*base, "--out", str(tmp_path / "c"), "--train-lr", "0"],
                            capture_output=True, text=True, timeout=120)
    assert bad_lr.returncode == 1 and "--train-lr" in bad_lr.stderr


@pytest.mark.slow
def test_main_job_trains_a_lora_adapter_on_the_embedded_model(tmp_path, tmp_home):
    """A tiny but real training stage: SmolLM2 through llama.cpp, PEFT LoRA on CPU, GGUF
    export, a learning curve on dev, and the trained model as a test-set candidate."""
    pytest.importorskip("peft")
    pytest.importorskip("llama_cpp")
    cfg = RunConfig(tasks=["word_reversal"], model="local", methods=["knn_demos"],
                    n_dev=4, n_test=4, k=2, embedder="hash:64", train_steps=4,
                    train_batch=2, train_eval_every=2, train_curve_n=2,
                    out=tmp_path / "run", progress=False)
    job = run_job(cfg)
    (t,) = job.tasks
    tr = t.training
    assert tr is not None, job.skipped
    assert [p["step"] for p in tr["curve"]] == [0, 2, 4]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in tr["curve"])
    assert all(p["loss"] > 0 for p in tr["curve"][1:]) and len(tr["losses"]) == 4
    assert tr["steps"] == 4 and tr["n_examples"] == 8 and tr["peak_rss_mb"] > 100
    assert (Path(tr["adapter"]) / "adapter.gguf").is_file()
    lora = next(c for c in t.candidates if c.name.startswith("lora:"))
    assert lora.test_run and lora.dev_accuracy is not None
    # the trained Solver is plain Solver JSON whose model spec carries its adapter
    assert lora.solver["model"] == f"local+adapter:{tr['adapter']}/adapter.gguf"
    html = Path(job.report).read_text()
    assert "<h3>word_reversal: LoRA (" in html and "s/step, peak memory" in html
    # resuming reruns nothing: training is a cached stage
    job2 = run_job(cfg)
    assert job2.tasks[0].training == tr
    assert all(s["cached"] for s in job2.stage_log)
