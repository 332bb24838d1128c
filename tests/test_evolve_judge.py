"""The evolving judge (MPO): rubric versions and resume, the judge's fallback, the
meta-reward step with a scripted meta model, the rule-based control, and the GRPO hook."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example
from metaskill.evolve.judge import (
    CHECKS_FILE,
    RUBRICS_FILE,
    EvolvingJudge,
    MPOConfig,
    Rollout,
    Rubric,
    RubricStore,
    rule_findings,
    show,
)
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.verifiers import ExactVerifier

GAMEABLE = "Reward detailed, thorough answers: the more explanation, the better."
FIX = "Length earns nothing; score only whether the answer is correct."


def length_judge(prompt: str, request: object) -> str:
    """A judge that games easily: long responses score 9, short ones 2 -- until the
    rubric says length earns nothing, then it scores correctness (the reference '4')."""
    response = prompt.split("Response:\n", 1)[1].split("\n\nReply with JSON", 1)[0]
    if FIX in prompt:
        return json.dumps({"reason": "correctness", "score": 9 if response.strip() == "4" else 1})
    return json.dumps({"reason": "detail", "score": 9 if len(response.split()) > 5 else 2})


def exploit_spotter(prompt: str, request: object) -> str:
    """A scripted meta model that names the length exploit only when its prompt shows a
    high-scored response the Verifier marked wrong, with many words."""
    seen = re.search(r"judge (9|10)/10, Verifier: wrong, (\d+) words", prompt)
    if seen and int(seen.group(2)) > 5:
        return json.dumps({"exploit_found": True, "exploit": "long answers score high though "
                           "wrong (length)", "new_rubric": FIX,
                           "new_criteria": ["A wrong answer scores 0 whatever its length."]})
    return json.dumps({"exploit_found": False, "exploit": "", "new_rubric": "",
                       "new_criteria": []})


def examples(n: int) -> list[Example]:
    return [Example(id=f"e{i}", input="What is 2+2?", answer="4") for i in range(n)]


def planted(judge: EvolvingJudge, n: int = 8) -> None:
    """Score n rollouts: half long and wrong, half short and right."""
    exs = examples(n)
    outs = ["Let me explain this at great length, the answer is surely five"
            if i % 2 else "4" for i in range(n)]
    judge.score([e.text for e in exs], outs, exs, step=1)


def honest(judge: EvolvingJudge, n: int = 8) -> None:
    """Score n rollouts where the judge agrees with the Verifier and length tells nothing."""
    exs = examples(n)
    outs = ["4" if i % 2 else "five" for i in range(n)]  # all short: judge 2 on each
    judge.score([e.text for e in exs], outs, exs, step=1)


def make(tmp_path: Path, **cfg: object) -> EvolvingJudge:
    return EvolvingJudge(ScriptedLM(length_judge), tmp_path / "judge", GAMEABLE,
                         config=MPOConfig(every=5, **cfg),  # type: ignore[arg-type]
                         meta_lm=ScriptedLM(exploit_spotter), verifier=ExactVerifier())


# ---- versions and resume ------------------------------------------------------------------
def test_versions_are_saved_and_a_reopened_folder_resumes(tmp_path: Path) -> None:
    store = RubricStore(tmp_path, initial=Rubric(text="v1 text", criteria=["c1"]))
    store.append(store.latest.revise("v2 text", ["c2"], "exploit: length", step=10,
                                     source="meta_lm", exploit="length"))
    again = RubricStore(tmp_path, initial="ignored: the folder has a history")
    assert [r.version for r in again.history()] == [1, 2]
    assert again.latest.text == "v2 text" and again.latest.parent == 1
    assert again.latest.reason == "exploit: length" and again.latest.created_step == 10
    with pytest.raises(MetaskillError, match="does not revise the latest"):
        again.append(again.history()[0].revise("stale", [], "r", step=11, source="manual"))
    with pytest.raises(MetaskillError, match="holds no rubric"):
        RubricStore(tmp_path / "empty")


def test_a_torn_last_line_is_skipped_and_a_newer_schema_refused(tmp_path: Path) -> None:
    RubricStore(tmp_path, initial="first")
    path = tmp_path / RUBRICS_FILE
    with path.open("a") as f:
        f.write('{"schema_version": 1, "version": 2, "par')  # a crash mid-write
    assert [r.version for r in RubricStore(tmp_path).history()] == [1]
    path.write_text(json.dumps({"schema_version": 99, "version": 1, "text": "x"}) + "\n\n")
    with pytest.raises(MetaskillError, match="schema version 99"):
        RubricStore(tmp_path)


def test_checks_resume_so_a_step_is_not_checked_twice(tmp_path: Path) -> None:
    judge = make(tmp_path)
    assert [s for s in range(1, 12) if judge.due(s)] == [5, 10]
    planted(judge)
    assert judge.on_step(4) is None and judge.on_step(5) is not None
    again = make(tmp_path)
    assert again.rubric.version == 2 and not again.due(5) and again.due(10)
    assert len(again.checks()) == 1


# ---- the judge's structured reply and its fallback -----------------------------------------
def test_invalid_judge_replies_get_the_recorded_fallback(tmp_path: Path) -> None:
    lm = ScriptedLM({"good": '{"reason": "ok", "score": 8}',
                     "range": '{"reason": "too high", "score": 42}'}, default="Score: 7 maybe")
    judge = EvolvingJudge(lm, tmp_path, "Be right.", config=MPOConfig(fallback_score=0.25))
    out = judge.score(["q"] * 3, ["good", "range", "prose"])
    assert [s.score for s in out] == [0.8, 0.25, 0.25]
    assert [s.fallback for s in out] == [False, True, True]
    assert out[0].raw == 8 and out[1].raw is None
    assert out[1].reason.startswith("fallback:") and "score" in out[1].reason
    assert [r.judge_fallback for r in judge.rollouts] == [False, True, True]
    verdicts = judge.verify_batch(["prose"], examples(1))
    assert verdicts[0].score == 0.25 and verdicts[0].meta["fallback"] is True
    assert verdicts[0].meta["rubric_version"] == 1


# ---- the meta-reward step ------------------------------------------------------------------
def test_meta_step_names_the_planted_length_exploit_and_the_rubric_changes(
        tmp_path: Path) -> None:
    judge = make(tmp_path)
    planted(judge)
    assert [r.judge for r in judge.rollouts[:2]] == [0.2, 0.9]  # the exploit pays
    check = judge.on_step(5)
    assert check is not None and check.source == "lm" and check.exploit_found
    assert check.revised_to == 2 and check.stats["audit_accuracy"] == 0.5
    new = judge.rubric
    assert new.version == 2 and new.parent == 1 and new.source == "meta_lm"
    assert "length" in new.reason and new.text == FIX and new.created_step == 5
    assert judge.rollouts == []  # judged by the old rubric: dropped
    # the meta model was shown the judge's scores and the Verifier's audit
    shown = judge.meta_lm.calls[-1]
    assert "Verifier: wrong" in shown and "Verifier: right" in shown and GAMEABLE in shown
    # the new rubric stops paying for length
    out = judge.score(["What is 2+2?"] * 2, ["Let me explain at great length: five", "4"])
    assert [s.score for s in out] == [0.1, 0.9] and out[0].rubric_version == 2
    lines = show(judge.folder).splitlines()
    assert lines[1].startswith("v2  step 5") and "length" in lines[1]
    assert lines[-1] == "checks: 1 (1 revised)"


def test_rules_detect_the_same_exploit(tmp_path: Path) -> None:
    judge = make(tmp_path, meta="rules")
    planted(judge)
    check = judge.on_step(5)
    assert check is not None and check.source == "rules"
    assert {f.kind for f in check.findings} >= {"divergence", "length"}
    assert judge.rubric.source == "rules" and "length predicts" in judge.rubric.reason
    assert any(c.startswith("Length earns no credit") for c in judge.rubric.criteria)
    assert judge.meta_lm.calls == []  # rules only: the meta model is never asked
    planted(judge)  # same findings again: the criteria are already there
    again = judge.on_step(10)
    assert again is not None and again.revised_to is None and judge.rubric.version == 2


def test_keyword_exploit_is_flagged_by_the_rules() -> None:
    rs = [Rollout("q", "Certainly! the answer is 5", judge=0.9, audit=0.0) for _ in range(4)]
    rs += [Rollout("q", "the answer is 4", judge=0.3, audit=1.0) for _ in range(4)]
    kw = [f for f in rule_findings(rs) if f.kind == "keyword"]
    assert len(kw) == 1 and kw[0].keyword == "certainly"


@pytest.mark.parametrize("meta", ["lm", "rules"])
def test_no_revision_when_nothing_diverges(tmp_path: Path, meta: str) -> None:
    def fair_judge(prompt: str, request: object) -> str:
        right = "Response:\n4\n" in prompt
        return json.dumps({"reason": "r", "score": 9 if right else 1})

    judge = EvolvingJudge(ScriptedLM(fair_judge), tmp_path, GAMEABLE,
                          config=MPOConfig(every=5, meta=meta),  # type: ignore[arg-type]
                          meta_lm=ScriptedLM(exploit_spotter), verifier=ExactVerifier())
    honest(judge)
    check = judge.on_step(5)
    assert check is not None and check.findings == [] and not check.exploit_found
    assert check.revised_to is None and check.stats["audited"] == 8
    assert judge.rubric.version == 1 and len(judge.history()) == 1
    assert (tmp_path / CHECKS_FILE).read_text().count("\n") == 1


def test_invalid_meta_reply_falls_back_to_the_rules_and_says_so(tmp_path: Path) -> None:
    judge = EvolvingJudge(ScriptedLM(length_judge), tmp_path, GAMEABLE,
                          config=MPOConfig(every=5), meta_lm=ScriptedLM(default="I think so"),
                          verifier=ExactVerifier())
    planted(judge)
    check = judge.on_step(5)
    assert check is not None and check.source == "rules" and check.error
    assert check.note.startswith("meta reply invalid, rules used")
    assert judge.rubric.version == 2 and judge.rubric.source == "rules"


def test_audit_uses_only_the_labelled_set_and_few_rollouts_skip(tmp_path: Path) -> None:
    judge = EvolvingJudge(ScriptedLM(length_judge), tmp_path, GAMEABLE,
                          config=MPOConfig(every=5, meta="rules"), verifier=ExactVerifier(),
                          audit_ids={"e0", "e1"})
    planted(judge)
    check = judge.on_step(5)
    assert check is not None and check.stats["audited"] == 2
    assert not any(f.kind == "divergence" for f in check.findings)  # < min_audit audited
    judge.score(["q"], ["4"])
    skipped = judge.on_step(10)
    assert skipped is not None and skipped.source == "skipped"


# ---- handed to GRPO from above ------------------------------------------------------------
def test_grpo_uses_the_evolving_judge_and_calls_its_step_hook(tmp_path: Path) -> None:
    from metaskill.eval.solvers import ZeroShot
    from metaskill.methods.base import MethodResources
    from metaskill.methods.grpo import GRPO, GRPOConfig, GRPOResult, reward_sources
    from metaskill.methods.sft import StepInfo
    from metaskill.tasks.base import Task

    exs = examples(8)
    task = Task(name="add", splits={"train": exs, "dev": exs[:2]}, kind="generative",
                verifier=ExactVerifier(), metadata={"max_tokens": 16})
    judge = make(tmp_path)
    cfg = GRPOConfig(steps=5, verifier_weight=0.0, judge_weight=1.0)
    srcs = reward_sources(task, exs, cfg, None, judge)
    long = "Let me explain this at great length, the answer is surely five"
    assert [s.name for s in srcs] == ["judge"]
    assert srcs[0]([], [long, "4"], example_id=["e1", "e0"]) == [0.9, 0.2]
    assert len(judge.rollouts) == 2 and judge.rollouts[0].example.id == "e1"

    def trainer(lm, pairs, config, out, **kw):  # the rollouts of 5 steps, then the hook
        for step in range(1, 6):
            planted(judge, 2)
            kw["on_step"](StepInfo(step, 5, 0.0, float(step), None))
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text("{}")
        return GRPOResult(adapter_dir=out, steps=5, losses=[0.0] * 5, seconds=1.0,
                          seconds_per_step=0.2, peak_rss_mb=0.0, cpu_seconds=1.0,
                          n_examples=len(pairs))

    method = GRPO(cfg, resources=MethodResources(trainer=trainer, work_dir=tmp_path / "w",
                                                 extra={"judge": judge}))
    method.fit(ZeroShot(ScriptedLM(default="4")), task, exs, exs[:2])
    assert method.report.notes["rewards"] == {"judge": 1.0}
    assert [c.step for c in judge.checks()] == [5]
    assert judge.rubric.version == 2 and judge.rubric.created_step == 5


def test_cli_lists_versions_and_reasons(tmp_path: Path) -> None:
    import subprocess
    import sys

    judge = make(tmp_path)
    planted(judge)
    judge.on_step(5)
    run = subprocess.run([sys.executable, "-m", "metaskill", "evolve", "judge",
                          str(judge.folder), "--full"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("v1  step 0") and "initial rubric" in lines[0]
    assert any(ln.startswith("v2  step 5  meta_lm  exploit: long answers") for ln in lines)
    assert f"    {FIX}" in lines and lines[-1] == "checks: 1 (1 revised)"
    bad = subprocess.run([sys.executable, "-m", "metaskill", "evolve", "judge",
                          str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "holds no rubric history" in bad.stderr + bad.stdout
