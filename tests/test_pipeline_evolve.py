"""`metaskill run --evolve`: the archive search as a main-job stage (scripted fake LM)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from metaskill.evolve.archive import Archive
from metaskill.lm.fake import ScriptedLM
from metaskill.pipeline.main_job import RunConfig, run_job
from metaskill.pipeline.plan import Sizes, Speeds, TaskCost, size_job, task_estimate
from test_evolve_archive import PROPOSAL

CUES = ("bad", "dull", "worst", "boring", "n't", "fails", "mess", "poor", "lack")


def _lm() -> ScriptedLM:
    """Says 'positive' unless told GOOD (the mutator's proposed instructions), then reads
    the last review's cue words; proposes new GOOD instructions when asked for JSON (never
    the same twice: the archive skips a recipe it holds)."""
    tag = uuid.uuid4().hex[:6]

    def answer(prompt: str, request) -> str:
        if request.json_schema:
            proposal = json.loads(PROPOSAL)
            proposal["instructions"] = f"GOOD {tag}-{len(lm.calls)}: answer."
            return json.dumps(proposal)
        if "GOOD" not in prompt:
            return "positive"
        last = prompt.rsplit("Review", 1)[-1].lower()
        return "negative" if any(w in last for w in CUES) else "positive"

    lm = ScriptedLM(answer)
    return lm


def _cfg(out: Path, **kw: object) -> RunConfig:
    values: dict[str, object] = dict(
        tasks=["sst2"], model="fake", methods=["knn_demos"], n_dev=30, n_test=12,
        embedder="hash:64", out=out, progress=False, evolve=True, evolve_children=2,
        evolve_calls=None, evolve_mutations=["self_modify"])
    values.update(kw)
    return RunConfig(**values)


def test_evolve_stage_adds_a_candidate_and_resumes(tmp_path, tmp_home):
    job = run_job(_cfg(tmp_path / "run"), lm=_lm())
    (t,) = job.tasks
    ev = t.evolve
    assert ev is not None and ev["nodes"] == 3 and ev["spend"]["children"] == 2
    assert ev["best"] != 0 and ev["best_dev"] > ev["root_dev"]
    assert "GOOD" in ev["recipe"]
    cand = next(c for c in t.candidates if c.name == "evolve")
    assert cand.test_run and cand.dev_accuracy == ev["best_dev"]
    assert cand.solver["state"]["instructions"].startswith("GOOD")
    assert cand.eligible == (ev["dev_gain"][1] > 0) and "archive node" in cand.note
    archive = Archive(tmp_path / "run" / "evolve-sst2")
    assert len(archive) == 3 and archive.best_node().id == ev["best"]
    assert (tmp_path / "run" / "evolve-sst2" / "archive.html").is_file()
    report = Path(job.report).read_text()
    assert "<section id='evolve'><h2>Archive search</h2>" in report
    assert "href='evolve-sst2/archive.html'" in report
    evolve_part = report.split("<section id='evolve'>")[1].split("</section>")[0]
    assert evolve_part.count("<svg") == 2  # the tree and the curve, embedded
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "sst2 archive: zero-shot dev" in md
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["tasks"][0]["evolve"]["best"] == ev["best"]

    # a rerun recomputes nothing: the archive's budget is spent, every run is stored
    lm2 = _lm()
    job2 = run_job(_cfg(tmp_path / "run"), lm=lm2)
    assert lm2.calls == [] and all(s["cached"] for s in job2.stage_log)
    assert len(Archive(tmp_path / "run" / "evolve-sst2")) == 3
    # a larger budget grows the same archive; the other stages stay cached
    job3 = run_job(_cfg(tmp_path / "run", evolve_children=3), lm=_lm())
    assert job3.tasks[0].evolve["nodes"] == 4
    assert [s["stage"] for s in job3.stage_log if not s["cached"]] == ["sst2.evolve"]


def test_evolve_is_off_by_default_and_leaves_other_stages_alone(tmp_path, tmp_home):
    cfg = _cfg(tmp_path / "run", evolve=False)
    assert RunConfig().evolve is False
    # the evolve settings are not part of the other stages' identity: turning the
    # search on does not redo them
    assert cfg.identity() == _cfg(tmp_path / "run").identity()
    job = run_job(cfg, lm=_lm())
    assert job.tasks[0].evolve is None and not (tmp_path / "run" / "evolve-sst2").exists()
    assert "id='evolve'" not in Path(job.report).read_text()


def test_the_plan_counts_the_archive_search():
    speeds = Speeds(prompt_tps=300.0, gen_tps=100.0)
    t = TaskCost(name="sst2", prompt_tokens=90, answer_tokens=3, chains=1, trains=False)
    sizes = Sizes(n_dev=40, n_test=100, chains=1, train_steps=60, train_eval_every=20,
                  train_curve_n=20)
    with_evolve = t.model_copy(update={"evolve_calls": 300})
    est = task_estimate(with_evolve, sizes, speeds)
    assert est["evolve"] > 100 and task_estimate(t, sizes, speeds)["evolve"] == 0
    # with a tight budget the other stages shrink to make room; a reserve for the tests
    # after the search is kept
    base = size_job(sizes, [t], speeds, 200.0)
    tight = size_job(sizes, [with_evolve], speeds, 200.0)
    assert (tight.n_test, tight.n_dev) < (base.n_test, base.n_dev) or tight.chains < base.chains
    assert tight.reserve_after_evolve_s["sst2"] > 0 and not base.reserve_after_evolve_s


def test_cli_run_evolve_as_a_user(tmp_path, tmp_home):
    out = tmp_path / "cli-run"
    cmd = [sys.executable, "-m", "metaskill", "run", "-t", "sst2", "--model", "fake",
           "--methods", "knn_demos", "--n-dev", "6", "--n-test", "6", "--embedder", "hash:64",
           "--out", str(out), "--no-progress", "--evolve", "--evolve-calls", "60",
           "--evolve-children", "3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "root: dev" in res.stderr and "child 1 of 0" in res.stderr
    assert "sst2 archive: zero-shot dev" in res.stderr
    page = out / "evolve-sst2" / "archive.html"
    assert page.is_file() and page.read_text().count("<svg") == 3
    assert "href='evolve-sst2/archive.html'" in (out / "report.html").read_text()
    n = len(Archive(out / "evolve-sst2"))
    assert n >= 2
    # rerun: resumed, nothing new made
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "child " not in again.stderr and len(Archive(out / "evolve-sst2")) == n
    saved = json.loads((out / "result.json").read_text())
    assert all(s["cached"] for s in saved["stage_log"])
    # bad settings fail in one line
    for flag, value, word in (("--evolve-selection", "best", "evolve-selection"),
                              ("--evolve-mutations", "self_modfy", "self_modify")):
        bad = subprocess.run([*cmd, flag, value], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
        assert word in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
