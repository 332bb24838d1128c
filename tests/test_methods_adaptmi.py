"""adaptmi: reference-free gates, hard inputs only, AdaptMI+ teacher, gate precision.

Judge and teacher replies are constrained JSON on a schema backend (ScriptedLM, llama.cpp)
and free text elsewhere (a ScriptedLM with no ``constraints``); both paths are tested.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.adaptmi import AdaptMI, AdaptMIConfig, AdaptMISolver, gate_report
from metaskill.methods.compose import MethodResources, fit_chain
from metaskill.tasks.base import Task, Verdict, Verifier
from metaskill.tasks.verifiers import ExactVerifier

OPS = {"add": lambda a, b: a + b, "multiply": lambda a, b: a * b}
SKILL = {"add": "addition", "multiply": "multiplication"}
RES = MethodResources(embedder_spec="hash:128")


def ex(i: int, op: str, a: int, b: int, labelled: bool = True) -> Example:
    return Example(id=f"{op}{i}", input=f"{op} the numbers {a} and {b}",
                   answer=str(OPS[op](a, b)), skills=[SKILL[op]] if labelled else [])


TRAIN = [ex(i, op, i + 2, i + 3) for op in OPS for i in range(4)]
# add questions are easy (answered right at once); multiply ones are hard
DEV = [ex(10, "add", 5, 6, False), ex(11, "add", 7, 1, False),
       ex(12, "multiply", 5, 6, False), ex(13, "multiply", 7, 3, False)]


def task(verifier: Verifier | None = None) -> Task:
    return Task(name="arith", splits={"train": TRAIN, "dev": DEV}, template="Q: {input}\nA:",
                kind="generative", verifier=verifier or ExactVerifier())


def model(prompt: str, request) -> str:
    """add: always right. multiply: right only after a multiplication demo; else random."""
    if "Which of these skills" in prompt:  # teacher
        skill = "multiplication" if "multiply" in prompt else "addition"
        if request.json_schema is not None:
            return json.dumps({"missing": [skill]})
        return f"Missing: {skill}"
    if "Is the proposed answer correct?" in prompt:  # judge
        score = 9 if "add the" in prompt else 2
        if request.json_schema is not None:
            return json.dumps({"reason": "checked", "score": score})
        return f"Score: {score}"
    qs = re.findall(r"Q: (\w+) the numbers (\d+) and (\d+)", prompt)
    op, a, b = qs[-1]
    right = str(OPS[op](int(a), int(b)))
    if op == "add" or any(q[0] == "multiply" for q in qs[:-1]):
        return right
    return str(request.seed * 7 + 1) if request.temperature > 0 else "0"


def solver(**kw: Any) -> AdaptMISolver:
    return AdaptMI(AdaptMIConfig(**kw), resources=RES).fit(ZeroShot(ScriptedLM(model)),
                                                           task(), TRAIN)


def test_only_hard_inputs_are_re_asked_with_skill_demos() -> None:
    s = solver(n_samples=3)
    lm = s.lm
    out = s.solve(task(), DEV)
    assert [a.output for a in out] == [e.answer for e in DEV]
    assert [a.meta["gate"]["hard"] for a in out] == [False, False, True, True]
    assert [a.meta["adapted"] for a in out] == [False, False, True, True]
    assert out[2].meta["skills"][0] == "multiplication"
    assert out[2].meta["demos"][-1].startswith("multiply")  # most relevant demo last
    assert out[2].meta["first_output"] == "0"
    # easy: 1 greedy + 3 samples; hard: + 1 re-ask
    assert [a.meta["lm_calls"] for a in out] == [4, 4, 5, 5]
    demo_prompts = [p for p in lm.calls if p.count("Q: ") > 1]
    assert len(demo_prompts) == 2


class PeekingVerifier(Verifier):
    """Parses every output as the reference when it can see one: a gate that read the
    reference through the verifier would see full agreement and never fire."""

    def verify(self, output: str, example: Example) -> Verdict:
        parsed = example.answer if example.answer is not None else output.strip()
        return Verdict(score=float(output.strip() == example.answer), parsed=parsed)


def test_gate_never_reads_the_reference() -> None:
    t = task(PeekingVerifier())
    s = AdaptMI(AdaptMIConfig(n_samples=3), resources=RES).fit(
        ZeroShot(ScriptedLM(model)), t, TRAIN)
    with_ref = s.solve(t, DEV)
    other = [e.model_copy(update={"answer": "999"}) for e in DEV]
    without = s.solve(t, [e.model_copy(update={"answer": None}) for e in DEV])
    changed = s.solve(t, other)
    gates = [[a.meta["gate"] for a in run] for run in (with_ref, without, changed)]
    assert gates[0] == gates[1] == gates[2]
    assert [g["hard"] for g in gates[0]] == [False, False, True, True]
    # and the reference never reaches any prompt
    assert not any("999" in p for p in s.lm.calls)


def test_margin_gate_uses_label_likelihoods() -> None:
    labels = ["positive", "negative"]
    pool = [Example(id=f"t{i}", input=f"{w} movie {i}", answer=lab, skills=[f"{lab}_words"])
            for i, (w, lab) in enumerate([("great", "positive"), ("awful", "negative")] * 3)]
    t = Task(name="sent", splits={"train": pool}, template="Review: {input}\nSentiment:",
             kind="classification", labels=labels, verifier=ExactVerifier())

    def scores(prompt: str, cont: str) -> float:
        last = prompt.rsplit("Review:", 1)[-1]
        if "clear" in last:
            return 0.0 if "positive" in cont else -6.0
        return -0.7 if "positive" in cont else -0.8  # near tie: hard

    lm = ScriptedLM(default="positive", scores=scores)
    s = AdaptMI(AdaptMIConfig(gate="margin"), resources=RES).fit(ZeroShot(lm), t, pool)
    qs = [Example(id="q1", input="a clear winner", answer="positive"),
          Example(id="q2", input="hmm so so", answer="negative")]
    out = s.solve(t, qs)
    assert [a.meta["gate"]["hard"] for a in out] == [False, True]
    assert out[0].meta["gate"]["value"] > 0.9 > 0.3 > out[1].meta["gate"]["value"]
    gen = task()
    with pytest.raises(MethodError, match="adaptmi: gate 'margin' needs a classification"):
        AdaptMI(AdaptMIConfig(gate="margin"), resources=RES).fit(
            ZeroShot(ScriptedLM(model)), gen, TRAIN).solve(gen, DEV[:1])


def free_text_lm(script: Any) -> ScriptedLM:
    """A scripted LM whose backend enforces no schema (the free-text path)."""
    lm = ScriptedLM(script)
    lm.constraints = frozenset()
    return lm


@pytest.mark.parametrize("structured", [True, False])
def test_judge_gate_and_unparseable_judge_is_counted(structured: bool) -> None:
    make = ScriptedLM if structured else free_text_lm
    s = AdaptMI(AdaptMIConfig(gate="judge"), resources=RES).fit(
        ZeroShot(make(model)), task(), TRAIN)
    out = s.solve(task(), DEV)
    assert [a.meta["gate"]["hard"] for a in out] == [False, False, True, True]
    assert [a.meta["gate"]["value"] for a in out] == [0.9, 0.9, 0.2, 0.2]
    assert [a.output for a in out] == [e.answer for e in DEV]

    def mute_judge(prompt: str, request) -> str:
        return ("I cannot say." if "Is the proposed answer correct?" in prompt
                else model(prompt, request))

    s2 = AdaptMI(AdaptMIConfig(gate="judge"), resources=RES).fit(
        ZeroShot(make(mute_judge)), task(), TRAIN)
    out2 = s2.solve(task(), DEV)
    assert all(a.meta["gate"]["judge_fallback"] for a in out2)
    assert not any(a.meta["adapted"] for a in out2)
    # answer + judge + one retry (JSON: by LM.complete; free text: a reminder)
    assert [a.meta["lm_calls"] for a in out2] == [3, 3, 3, 3]
    assert gate_report(task(), DEV, out2)["judge_fallbacks"] == 4


@pytest.mark.parametrize("structured", [True, False])
def test_adaptmi_plus_teacher_targets_missing_skills_with_fallback(structured: bool) -> None:
    calls: list[str] = []

    def teacher_fn(prompt: str, request) -> str:
        calls.append(prompt)
        if "multiply" not in prompt:
            return "no idea"
        if request.json_schema is not None:  # an enum of this input's candidate skills
            assert '"enum":["addition","multiplication"]' in request.json_schema \
                or '"enum":["multiplication","addition"]' in request.json_schema
            return '{"missing": ["multiplication"]}'
        return "Missing: multiplication"

    teacher = ScriptedLM(teacher_fn) if structured else free_text_lm(teacher_fn)
    res = MethodResources(embedder_spec="hash:128", teacher=teacher)
    s = AdaptMI(AdaptMIConfig(plus=True, gate="agreement", n_samples=3, threshold=1.0),
                resources=res).fit(ZeroShot(ScriptedLM(model)), task(), TRAIN)
    out = s.solve(task(), DEV)
    assert out[2].meta["skills"] == ["multiplication"] and out[2].output == "30"
    assert len(calls) == 2  # only the two hard inputs reach the teacher
    # a teacher that never names a skill: retried once, then the first answer is kept
    s.teacher = ScriptedLM(default="dunno")
    if not structured:
        s.teacher.constraints = frozenset()
    out2 = s.solve(task(), DEV)
    assert [a.meta["teacher_fallback"] for a in out2] == [False, False, True, True]
    assert out2[2].output == "0" and not out2[2].meta["adapted"]
    assert out2[2].meta["lm_calls"] == 1 + 3 + 2
    assert gate_report(task(), DEV, out2)["teacher_fallbacks"] == 2


def test_fit_on_dev_reports_gate_precision_and_round_trips() -> None:
    lm = ScriptedLM(model)
    result = fit_chain(ZeroShot(lm), task(), TRAIN, DEV,
                       [("adaptmi", {"n_samples": 3, "threshold_candidates": [0.0, 1.0]})],
                       resources=RES)
    notes = result.reports[0].notes
    assert notes["threshold"] == 1.0 and notes["dev_accuracy"] == 1.0
    assert notes["first_pass_dev_accuracy"] == 0.5
    assert notes["gate_fire_rate"] == 0.5 and notes["gate_precision"] == 1.0
    assert result.reports[0].lm_calls > 0 and result.reports[0].usage.total_tokens > 0
    again = load_solver(result.solver.to_json(), lm=lm)
    assert isinstance(again, AdaptMISolver) and again.threshold == 1.0
    out = again.solve(task(), DEV)
    assert [a.output for a in out] == [e.answer for e in DEV]
    rep = gate_report(task(), DEV, out)
    assert rep["fire_rate"] == 0.5 and rep["precision"] == 1.0 and rep["recall"] == 1.0


def test_bad_config_and_missing_skills_are_clear() -> None:
    bare = [e.model_copy(update={"skills": []}) for e in TRAIN]
    with pytest.raises(MethodError, match="adaptmi: needs skills"):
        AdaptMI(resources=RES).fit(ZeroShot(ScriptedLM(model)), task(), bare)
    with pytest.raises(Exception, match="threshold"):
        AdaptMIConfig(threshold=2.0)
    with pytest.raises(Exception, match="gate"):
        AdaptMIConfig(gate="oracle")


@pytest.mark.slow
def test_real_model_judge_and_teacher_always_parse_on_sst2(local_lm) -> None:
    """SmolLM2-135M as judge and AdaptMI+ teacher: constrained JSON, nothing falls back."""
    from metaskill.skills.book import SkillBook
    from metaskill.skills.discover import discover_by_embedding
    from metaskill.skills.embed import HashEmbedder
    from metaskill.tasks import get_task

    t = get_task("sst2")
    book = discover_by_embedding(t.splits["train"][:40], SkillBook(embedder=HashEmbedder(dim=64)),
                                 n_skills=4, labels=t.labels)
    res = MethodResources(skillbook=book, teacher=local_lm)
    s = AdaptMI(AdaptMIConfig(gate="judge", plus=True, threshold=1.0, k=2, max_tokens_teacher=64),
                resources=res).fit(ZeroShot(local_lm), t, t.splits["train"][:40])
    dev = t.splits["dev"][:5]
    out = s.solve(t, dev)
    assert all(a.meta["gate"]["value"] is not None for a in out)  # every judge reply parsed
    report = gate_report(t, dev, out)
    assert report["judge_fallbacks"] == 0 and report["teacher_fallbacks"] == 0
    assert all(set(a.meta["skills"]) <= set(book.names()) for a in out if a.meta["adapted"])
