"""`metaskill adapt` and `metaskill methods`, run as a user would (subprocess, fake model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).parent / "metaskill"
METASKILL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "metaskill"]


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


def test_methods_ls_lists_every_method(home) -> None:
    out = cli("methods", "ls", "--json", home=home).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    names = {r["name"] for r in rows}
    assert {"knn_demos", "raml", "dynaicl", "self_refine", "self_consistency",
            "skill_demos", "adaptmi", "meta_prompting", "multi_critique"} <= names
    assert all(r["available"] for r in rows if r["name"] in {"knn_demos", "raml", "dynaicl"})
    show = cli("methods", "show", "dynaicl", home=home).stdout
    assert "budget_tokens" in show and "max_train_probe" in show


def test_adapt_saves_solver_that_eval_loads(home, tmp_path) -> None:
    out = tmp_path / "solver.json"
    rep = tmp_path / "fit.json"
    res = cli("adapt", "--task", "sst2", "--model", "fake", "--method", "knn_demos,self_refine",
              "--k", "2", "--embedder", "hash:128", "--limit-dev", "8", "--no-progress",
              "--out", str(out), "--report-json", str(rep), home=home)
    assert "knn_demos" in res.stdout and "self_refine" in res.stdout
    assert "LM calls" in res.stdout and "dev accuracy" in res.stdout
    data = json.loads(out.read_text())
    assert data["kind"] == "self_refine" and data["schema_version"] == 1
    assert data["state"]["inner"]["kind"] == "demos"
    assert data["state"]["inner"]["state"]["k"] == 2
    fit = json.loads(rep.read_text())
    assert [r["method"] for r in fit["reports"]] == ["knn_demos", "self_refine"]
    # 8 dev inputs x the two prompt formats knn_demos chooses between by default
    assert fit["reports"][0]["lm_calls"] == 16
    assert fit["reports"][0]["usage"]["prompt_tokens"] > 0
    ev = cli("eval", "--task", "sst2", "--model", "fake", "--solver", str(out), "--limit", "3",
             "--no-progress", home=home)
    assert "self_refine" in ev.stdout


def test_dynaicl_with_budget_and_options(home, tmp_path) -> None:
    out = tmp_path / "dyn.json"
    plot = tmp_path / "plots" / "dyn.svg"
    res = cli("adapt", "--task", "sst2", "--model", "fake", "--method", "dynaicl",
              "--budget-tokens", "80", "-o", "dynaicl.ks=[0,2]",
              "-o", "dynaicl.max_train_probe=8", "--embedder", "hash:64", "--limit-dev", "6",
              "--no-progress", "--out", str(out), "--plot", str(plot), home=home)
    data = json.loads(out.read_text())
    assert data["kind"] == "dynaicl" and data["state"]["budget_tokens"] == 80
    assert data["state"]["controller"]["ks"] == [0, 2]
    # the dev curve: fixed k=0 and k=2, the controller's budgets, the oracle, the kept point
    svg = plot.read_text()
    assert svg.startswith("<svg") and "dynaicl curve written to" in res.stdout
    for label in ("fixed k", "oracle", "kept budget", "k=0", "k=2", "dynaicl on sst2 dev"):
        assert label in svg, label


def test_bad_requests_are_one_line_errors(home, tmp_path) -> None:
    out = str(tmp_path / "x.json")
    base = ("--model", "fake", "--embedder", "hash:64", "--out", out, "--no-progress")
    one_line_error(cli("adapt", "--task", "sst2", "--method", "knn_demo", *base, home=home,
                       check=False), "unknown method 'knn_demo'", "knn_demos")
    one_line_error(cli("adapt", "--task", "sst2", "--method", "skill_demos", *base, home=home,
                       check=False), "skill_demos", "SkillBook")
    one_line_error(cli("adapt", "--task", "sst2", "--method", "knn_demos", "-o",
                       "knn_demos.kk=1", *base, home=home, check=False),
                   "knn_demos: bad option 'kk'")
    one_line_error(cli("adapt", "--task", "sst2", "--method", "knn_demos", "-o", "k=1", *base,
                       home=home, check=False), "METHOD.FIELD=VALUE")
    one_line_error(cli("adapt", "--task", "sst2", "--method", "knn_demos", "--budget-tokens",
                       "50", *base, home=home, check=False), "--budget-tokens", "dynaicl")
    one_line_error(cli("adapt", "--task", "sst2", "--method", "knn_demos", "--plot",
                       str(tmp_path / "c.svg"), *base, home=home, check=False),
                   "--plot", "dynaicl is not in --method")
    # raml on a generative task names the method and the missing piece
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"what is {i}+0?", "a": str(i)}) + "\n"
                            for i in range(30)))
    spec = tmp_path / "qa.yaml"
    spec.write_text(
        "name: qa_toy\nkind: generative\n"
        f"source: {{path: {data}, fields: {{input: q, answer: a}}}}\n"
        "verifier: {name: exact}\nsplit: {seed: 0, sizes: {train: 10, dev: 10, test: 10}}\n")
    one_line_error(cli("adapt", "--task", str(spec), "--method", "raml", *base, home=home,
                       check=False), "raml", "classification", "qa_toy")
    assert not Path(out).exists()


def test_adapt_scores_the_given_solver_and_keep_best_saves_it(home, tmp_path) -> None:
    # the fake model answers "" to everything: knn_demos cannot beat zero-shot on dev
    base = ("adapt", "--task", "sst2", "--model", "fake", "--method", "knn_demos", "--k", "2",
            "--embedder", "hash:64", "--limit-dev", "6", "--no-progress")
    out, rep = tmp_path / "adapted.json", tmp_path / "fit.json"
    res = cli(*base, "--out", str(out), "--report-json", str(rep), home=home)
    assert "given: zero-shot" in res.stdout and "adapted: demos" in res.stdout
    warning = [line for line in res.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, res.stdout
    assert warning[0].startswith("warning: knn_demos does not beat the Solver it was given "
                                 "(zero-shot) on 6 dev examples: 0.0% vs 0.0%")
    assert "keep-best would return the given one" in warning[0]
    assert json.loads(out.read_text())["kind"] == "demos"  # --keep-best is off for adapt
    check = json.loads(rep.read_text())["check"]
    assert check["verdict"] == "within_noise" and check["returned"] == "adapted"
    assert check["n_dev"] == 6 and check["given_report"]["lm_calls"] == 6

    kept = tmp_path / "kept.json"
    res = cli(*base, "--keep-best", "--out", str(kept), home=home)
    assert "returned the given Solver (keep-best)" in res.stdout
    assert "Solver (zero-shot) saved to" in res.stdout
    assert json.loads(kept.read_text())["kind"] == "zero-shot"
