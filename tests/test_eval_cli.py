"""The eval/runs/report CLI, run as a user would (subprocess), with the fake model on sst2."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).parent / "metaskill"
METASKILL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "metaskill"]


def cli(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    res = subprocess.run([*METASKILL, *args], capture_output=True,
                         text=True, env=env, timeout=300)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def run_id_of(out: str) -> str:
    m = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", out)
    assert m, out
    return m.group(1)


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr
    assert err.startswith("error:"), err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def two_runs(home) -> tuple[str, str]:
    a = cli("eval", "--task", "sst2", "--model", "fake", "--limit", "20", "--no-progress",
            home=home)
    b = cli("eval", "--task", "sst2", "--model", "fake", "--solver", "k-shot", "--k", "2",
            "--limit", "20", "--no-progress", "--save-solver", str(home / "kshot.json"),
            home=home)
    return run_id_of(a.stdout), run_id_of(b.stdout)


def test_eval_prints_run_accuracy_table_tokens_time(home, two_runs):
    res = cli("eval", "--task", "sst2", "--model", "fake", "--limit", "12", "--seed", "3",
              "--failures", "2", home=home)
    out = res.stdout
    rid = run_id_of(out)
    assert f"--resume {rid}" in out
    assert re.search(r"accuracy \d+\.\d% \(95% CI \[\d+\.\d, \d+\.\d\]\) on 12 examples", out)
    assert "per-skill accuracy" in out and re.search(r"tokens [\d,]+ \(", out)
    assert "wall " in out and out.count("reference '") == 2
    assert "acc" in res.stderr  # the progress bar (ETA, running accuracy) goes to stderr


def test_runs_ls_show_compare_report(home, two_runs, tmp_path):
    a, b = two_runs
    ls = cli("runs", "ls", home=home).stdout
    assert a in ls and b in ls and "k-shot k=2" in ls
    lines = cli("runs", "ls", "--json", home=home).stdout.splitlines()
    rows = [json.loads(x) for x in lines]
    assert {a, b} <= {r["id"] for r in rows} and all(r["n"] > 0 for r in rows)
    show = cli("runs", "show", a, "--failures", "3", home=home).stdout
    assert a in show and "zero-shot" in show and show.count("reference") == 3
    data = json.loads(cli("runs", "show", a[:-1], "--json", home=home).stdout)
    assert data["id"] == a and len(data["records"]) == 20 and "interval" in data
    cmp = cli("runs", "compare", a, b, home=home).stdout
    assert "delta vs the first run" in cmp and a in cmp and b in cmp
    html = tmp_path / "out" / "report.html"
    rep = cli("report", a, b, "--html", str(html), home=home).stdout
    assert "wrote" in rep and html.is_file()
    page = html.read_text()
    assert page.count("<svg") == 2 and a in page and b in page


def test_saved_solver_json_reloads(home, two_runs):
    spec = json.loads((home / "kshot.json").read_text())
    assert spec["kind"] == "k-shot" and spec["model"] == "fake"
    assert len(spec["state"]["demos"]) == 2 and spec["schema_version"] == 1
    res = cli("eval", "--task", "sst2", "--model", "fake", "--solver", str(home / "kshot.json"),
              "--limit", "5", "--no-progress", home=home)
    rid = run_id_of(res.stdout)
    data = json.loads(cli("runs", "show", rid, "--json", home=home).stdout)
    assert data["solver"]["state"]["demos"] == spec["state"]["demos"]


def test_resume_via_cli_finishes_a_partial_run(home):
    res = cli("eval", "--task", "sst2", "--model", "fake", "--limit", "30", "--batch-size", "8",
              "--no-progress", home=home)
    rid = run_id_of(res.stdout)
    # Simulate a process killed after two batches: drop the later records, as the store
    # would hold them, and put the totals back to what the second commit wrote.
    db = sqlite3.connect(home / "runs.sqlite")
    db.execute("DELETE FROM records WHERE run_id=? AND idx >= 16", (rid,))
    totals = json.loads(db.execute("SELECT totals FROM progress WHERE run_id=?",
                                   (rid,)).fetchone()[0])
    totals["n"] = 16
    db.execute("UPDATE progress SET totals=? WHERE run_id=?", (json.dumps(totals), rid))
    db.execute("UPDATE runs SET status='running' WHERE id=?", (rid,))
    db.commit()
    db.close()
    res = cli("eval", "--resume", rid, "--no-progress", home=home)
    assert f"resuming run {rid} (16/30 done)" in res.stdout
    assert "on 30 examples" in res.stdout and "status done" in res.stdout
    data = json.loads(cli("runs", "show", rid, "--json", home=home).stdout)
    assert len(data["records"]) == 30 and data["totals"]["n"] == 30


@pytest.mark.parametrize("args, needles", [
    (["eval", "--task", "sst", "--model", "fake"], ["unknown task 'sst'", "Did you mean: sst2"]),
    (["eval", "--task", "sst2", "--model", "fake", "--split", "nosuch"], ["no split 'nosuch'"]),
    (["eval", "--task", "sst2", "--model", "nonsense"], ["unknown model spec"]),
    (["eval", "--task", "sst2", "--model", "fake", "--limit", "0"], ["--limit must be >= 1"]),
    (["eval", "--task", "sst2", "--model", "fake", "--solver", "kshot"],
     ["unknown solver 'kshot'", "k-shot"]),
    (["eval", "--task", "sst2", "--model", "fake", "--k", "3"], ["--solver k-shot"]),
    (["eval", "--task", "sst2", "--model", "fake", "--solver", "k-shot", "--k", "500"],
     ["fewer than k=500"]),
    (["eval", "--task", "sst2", "--model", "fake", "--format", "xml"], ["--format"]),
    (["eval", "--task", "sst2"], ["needs --task and --model"]),
    (["eval", "--resume", "nope"], ["unknown run 'nope'"]),
    (["eval", "--task", "sst2", "--model", "fake", "--solver", "missing.json"],
     ["does not exist"]),
    (["runs", "show", "nope"], ["unknown run 'nope'"]),
    (["runs", "compare", "nope", "nada"], ["unknown run"]),
    (["report", "nope"], ["unknown run 'nope'"]),
])
def test_bad_input_is_one_line_error(home, args, needles):
    one_line_error(cli(*args, home=home, check=False), *needles)


def test_bad_solver_file_and_compare_one(home, two_runs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    one_line_error(cli("eval", "--task", "sst2", "--model", "fake", "--solver", str(bad),
                       home=home, check=False), "cannot read solver file", str(bad))
    one_line_error(cli("runs", "compare", two_runs[0], home=home, check=False),
                   "at least two")
