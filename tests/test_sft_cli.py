"""`metaskill train` as a user runs it: one-line errors, a resumable run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def metaskill(*args: str, home: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METASKILL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "metaskill", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    r = metaskill("train", "--task", "sst2", "--method", "magic", home=tmp_path)
    assert r.returncode == 1
    assert "unknown --method 'magic'" in r.stderr and "Traceback" not in r.stderr
    r = metaskill("train", "--out", str(tmp_path / "nothing"), home=tmp_path)
    assert r.returncode == 1 and "--task is required" in r.stderr
    r = metaskill("train", "--task", "sst2", "--steps", "0", home=tmp_path)
    assert r.returncode == 1 and "--steps must be >= 1" in r.stderr
    r = metaskill("train", "--task", "sst2", "--method", "stat-sel", home=tmp_path)
    assert r.returncode == 1 and "needs --profile" in r.stderr
    r = metaskill("evolve", "--task", "sst2", "--rounds", "0", home=tmp_path)
    assert r.returncode == 1 and "--rounds must be >= 1" in r.stderr


def test_resume_refuses_changed_arguments(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"task": "sst2", "steps": 5}))
    r = metaskill("train", "--task", "trec", "--out", str(out), home=tmp_path)
    assert r.returncode == 1 and "different" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_train_runs_and_resumes_without_redoing(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    pytest.importorskip("llama_cpp")
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "run"
    args = ("train", "--task", "reasoning_gym", "-o", "dataset=spell_backward",
            "-o", "n_train=8", "-o", "n_dev=3", "-o", "n_test=3", "--model", "local",
            "--steps", "2", "--batch-size", "2", "--eval-limit", "3", "--max-tokens", "8",
            "--out", str(out))
    r = metaskill(*args, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr[-2000:]
    scores = json.loads(r.stdout.strip().splitlines()[-1])
    assert scores["trained"]["n"] == 3 and 0 <= scores["trained"]["accuracy"] <= 1
    assert scores["adapter_spec"].startswith("local+adapter:")
    gguf = Path(scores["adapter_spec"].split("+adapter:", 1)[1])
    assert gguf.name == "adapter.gguf" and gguf.is_file() and out in gguf.parents
    (data,) = out.glob("sft-*/data.jsonl")  # the sft Method's work folder in the run dir
    assert len(data.read_text().splitlines()) == 8
    assert scores["dev"] == "the 3 dev examples given"
    stamp = (out / "stages" / "train.json").stat().st_mtime_ns
    # Resume from the directory alone: every stage is finished, nothing is redone.
    r2 = metaskill("train", "--out", str(out), home=tmp_path / "home")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert (out / "stages" / "train.json").stat().st_mtime_ns == stamp
    assert json.loads(r2.stdout.strip().splitlines()[-1]) == scores
