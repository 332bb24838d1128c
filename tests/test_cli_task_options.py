"""`--task-option/-T KEY=VALUE` on `eval` and `adapt`, run as a user would (fake model)."""

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
DEV_D1 = ("-T", "depth=1", "-T", "n_dev=6")  # compose's dev split: 6 depth-1 examples


def cli(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    res = subprocess.run([*METASKILL, *args], capture_output=True, text=True, env=env,
                         timeout=300)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


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


def test_adapt_passes_task_options(home, tmp_path) -> None:
    out = tmp_path / "solver.json"
    res = cli("adapt", "--task", "compose", "-T", "depth=1", "--task-option", "n_train=12",
              "-T", "n_dev=4", "--model", "fake", "--method", "knn_demos", "--k", "2",
              "--embedder", "hash:64", "--no-progress", "--out", str(out), home=home)
    assert "adapt compose (12 train, 4 dev)" in res.stdout, res.stdout
    assert json.loads(out.read_text())["schema_version"] == 1


def test_eval_passes_task_options_and_resume_takes_them_again(home) -> None:
    res = cli("eval", "--task", "compose", *DEV_D1, "--split", "dev", "--model", "fake",
              "--batch-size", "2", "--no-progress", home=home)
    m = re.search(r"run (\S+) .*--resume \1 -T depth=1 -T n_dev=6\)", res.stdout)
    assert m, res.stdout  # the resume hint repeats the options
    rid = m.group(1)
    data = json.loads(cli("runs", "show", rid, "--json", home=home).stdout)
    assert data["task"] == "compose"
    assert data["selection"] == [f"dev-d1-{i}" for i in range(6)]  # default dev mixes d1, d2

    # a process killed after one batch; resumed with the options given again
    db = sqlite3.connect(home / "runs.sqlite")
    db.execute("DELETE FROM records WHERE run_id=? AND idx >= 2", (rid,))
    totals = json.loads(db.execute("SELECT totals FROM progress WHERE run_id=?",
                                   (rid,)).fetchone()[0])
    totals["n"] = 2
    db.execute("UPDATE progress SET totals=? WHERE run_id=?", (json.dumps(totals), rid))
    db.execute("UPDATE runs SET status='running' WHERE id=?", (rid,))
    db.commit()
    db.close()
    # without the options the task is another version (its version names its options):
    # refused in one line, nothing mixed
    res = cli("eval", "--resume", rid, "--no-progress", home=home, check=False)
    one_line_error(res, "resume it with the same task")
    res = cli("eval", "--resume", rid, *DEV_D1, "--no-progress", home=home)
    assert f"resuming run {rid} (2/6 done)" in res.stdout and "status done" in res.stdout
    data = json.loads(cli("runs", "show", rid, "--json", home=home).stdout)
    assert sorted(r["example_id"] for r in data["records"]) == data["selection"]


@pytest.mark.parametrize("verb", ["eval", "adapt"])
@pytest.mark.parametrize("opt, needles", [
    ("depth", ["option 'depth' must look like KEY=VALUE"]),
    ("bogus=1", ["task 'compose' has no option(s) bogus", "depth"]),
    ("depth=9", ["compose depth must be depths from 1 to 4"]),
])
def test_bad_task_option_is_one_line_error(home, tmp_path, verb, opt, needles) -> None:
    rest = (["--split", "dev"] if verb == "eval" else
            ["--method", "knn_demos", "--embedder", "hash:64", "--out", str(tmp_path / "s.json")])
    res = cli(verb, "--task", "compose", "-T", opt, "--model", "fake", "--no-progress", *rest,
              home=home, check=False)
    one_line_error(res, *needles)
