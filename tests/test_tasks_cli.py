"""The ``metaskill tasks`` verbs, run as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_EXE = shutil.which("metaskill", path=str(Path(sys.executable).parent))


def cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [_EXE, *args] if _EXE else [sys.executable, "-m", "metaskill", *args]
    e = {k: v for k, v in os.environ.items() if k != "METASKILL_DATA"}
    e.update({"METASKILL_HOME": str(home), "COLUMNS": "200", **(env or {})})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=120)


def test_tasks_ls(tmp_path: Path) -> None:
    r = cli("tasks", "ls", home=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("sst2", "trec", "ag_news", "gsm8k", "math500", "bigbench", "reasoning_gym"):
        assert name in r.stdout
    assert "200 / 100 / 300" in r.stdout
    assert "needs path=DIR" in r.stdout


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
def test_tasks_ls_with_data(tmp_path: Path) -> None:
    r = cli("tasks", "ls", "--data", str(SHARED), home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "7273 / 200 / 1319" in r.stdout  # gsm8k
    assert "7296 / 200 / 500" in r.stdout   # math500 (4 train items have no answer)


def test_tasks_show(tmp_path: Path) -> None:
    r = cli("tasks", "show", "trec", "--split", "dev", "-n", "2", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Answer type:") == 2 and "answer:" in r.stdout
    assert "labels: abbreviation, entity" in r.stdout
    r = cli("tasks", "show", "reasoning_gym", "-o", "dataset=basic_arithmetic", "-o",
            "n_test=2", "-n", "1", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skills: basic_arithmetic" in r.stdout


def test_tasks_show_errors_are_one_line(tmp_path: Path) -> None:
    r = cli("tasks", "show", "sst", home=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unknown task 'sst'. Did you mean: sst2?" in r.stderr
    r = cli("tasks", "show", "sst2", "--split", "validation", home=tmp_path)
    assert r.returncode == 1 and "has no split 'validation'" in r.stderr
    r = cli("tasks", "show", "gsm8k", home=tmp_path)
    assert r.returncode == 1 and "pass path=DIR" in r.stderr and "Traceback" not in r.stderr
    r = cli("tasks", "show", "sst2", "-o", "n_test", home=tmp_path)
    assert r.returncode == 1 and "KEY=VALUE" in r.stderr


def test_tasks_validate(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i}+{i}", "a": str(2 * i)}) + "\n"
                            for i in range(12)))
    good = tmp_path / "good.yaml"
    good.write_text("name: doubling\nsource:\n  path: d.jsonl\n  fields: {input: q, answer: a}\n"
                    "verifier: numeric\nsplit: {sizes: {train: 4, test: 8}}\n")
    r = cli("tasks", "validate", str(good), home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "train=4, test=8" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: doubling\nsource:\n  path: d.jsonl\n  fields: {input: question}\n")
    r = cli("tasks", "validate", str(bad), home=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "missing field 'question'" in line and "fields there: a, q" in line
    data.write_text('{"q": "1", "a": "2"}\n{"q": oops}\n')
    r = cli("tasks", "validate", str(good), home=tmp_path)
    assert r.returncode == 1 and "d.jsonl:2: malformed JSON" in r.stderr


def test_user_task_dir_is_registered(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.yaml").write_text(
        "name: sst2_small\ndescription: tiny sst2\nsource: {loader: sst2, options: "
        "{n_test: 7}}\n")
    r = cli("tasks", "ls", home=tmp_path)
    assert r.returncode == 0 and "sst2_small" in r.stdout and "tiny sst2" in r.stdout
    r = cli("tasks", "show", "sst2_small", "-n", "1", home=tmp_path)
    assert r.returncode == 0 and "test=7" in r.stdout


def test_tasks_export(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    r = cli("tasks", "export", "sst2", str(out), "--split", "test", home=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["prompt"].endswith("Sentiment:")
