"""raml: label fusion of LM likelihoods and retrieved neighbours, fitted on dev."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import MethodResources, fit_chain
from metaskill.methods.demos import KnnSelector
from metaskill.methods.raml import Raml, RamlConfig, RamlSolver, fuse
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier, LabelVerifier

POS = ["great acting", "lovely music", "great story", "wonderful cast", "lovely film",
       "great ending"]
NEG = ["awful plot", "boring scenes", "awful dialogue", "dull pacing", "boring film",
       "awful ending"]


def toy_task() -> Task:
    train = [Example(id=f"p{i}", input=t, answer="positive") for i, t in enumerate(POS)]
    train += [Example(id=f"n{i}", input=t, answer="negative") for i, t in enumerate(NEG)]
    dev = [Example(id="d0", input="great finale", answer="positive"),
           Example(id="d1", input="awful finale", answer="negative"),
           Example(id="d2", input="boring finale", answer="negative"),
           Example(id="d3", input="lovely finale", answer="positive"),
           Example(id="d4", input="dull finale", answer="negative"),
           Example(id="d5", input="wonderful finale", answer="positive")]
    return Task(name="toy", splits={"train": train, "dev": dev, "test": dev},
                template="Review: {input}\nSentiment:", labels=["negative", "positive"],
                kind="classification", verifier=LabelVerifier(labels=["negative", "positive"]))


def biased_scores(prompt: str, cont: str) -> float:
    """An LM that knows 'awful' and 'boring' are negative but leans to 'positive' otherwise."""
    question = prompt.rsplit("Review:", 1)[-1]
    neg = any(w in question for w in ("awful", "boring"))
    if cont.strip() == "negative":
        return -0.5 if neg else -2.0
    return -1.0


def resources() -> MethodResources:
    return MethodResources(embedder=HashEmbedder(dim=256))


def test_fuse_endpoints() -> None:
    lm = np.array([[0.9, 0.1]])
    ret = np.array([[0.2, 0.8]])
    assert np.allclose(fuse(lm, ret, 0.0), lm, atol=1e-6)
    assert np.allclose(fuse(lm, ret, 1.0), ret, atol=1e-6)
    prior = np.array([0.75, 0.25])
    assert fuse(lm, ret, 0.0, prior)[0, 0] < 0.9  # calibration lowers the favoured label


def test_fit_reports_three_accuracies_and_picks_weight_on_dev() -> None:
    task = toy_task()
    lm = ScriptedLM(scores=biased_scores)
    method = Raml(RamlConfig(k_neighbours=4, calibrate=False, format_candidates=None,
                             try_no_instructions=False, k_candidates=None),
                  resources=resources())
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    notes = method.report.notes
    # The LM misses 'dull' (leans positive); retrieval knows 'dull pacing' is negative.
    assert notes["dev_accuracy_lm_only"] == pytest.approx(5 / 6)
    assert notes["dev_accuracy_fused"] >= max(notes["dev_accuracy_lm_only"],
                                              notes["dev_accuracy_retrieval_only"])
    grid = {r["weight"]: r["dev_accuracy"] for r in notes["grid"]}
    assert grid[0.0] == notes["dev_accuracy_lm_only"]
    assert grid[1.0] == notes["dev_accuracy_retrieval_only"]
    assert solver.weight == notes["weight"]
    assert method.report.lm_calls == len(task.splits["dev"])
    assert method.report.usage.prompt_tokens > 0
    # Every attempt keeps the three predictions.
    atts = solver.solve(task, task.splits["test"])
    for a in atts:
        assert {"pred_lm", "pred_retrieval", "pred_fused"} <= set(a.meta)
        assert a.output == a.meta["pred_fused"]
    assert [a.meta["pred_lm"] for a in atts].count("positive") == 4


def test_round_trip_gives_identical_answers() -> None:
    task = toy_task()
    lm = ScriptedLM(scores=biased_scores)
    result = fit_chain(ZeroShot(lm), task, task.splits["train"], task.splits["dev"],
                       [("raml", {"k_neighbours": 4})], resources=resources())
    solver = result.solver
    data = solver.to_json()
    assert data["kind"] == "raml"
    again = load_solver(data, lm=lm)
    assert isinstance(again, RamlSolver)
    assert again.weight == solver.weight and again.prior == solver.prior
    a1 = solver.solve(task, task.splits["test"])
    a2 = again.solve(task, task.splits["test"])
    assert [a.meta["p_fused"] for a in a1] == [a.meta["p_fused"] for a in a2]


def test_prompt_demos_inherited_from_knn_demos() -> None:
    task = toy_task()
    lm = ScriptedLM(scores=biased_scores)
    result = fit_chain(ZeroShot(lm), task, task.splits["train"], task.splits["dev"],
                       ["knn_demos", "raml"], options={"k": 2}, resources=resources())
    assert result.methods == ["knn_demos", "raml"]
    assert result.solver.k == 2 and result.reports[1].notes["k"] == 2
    att = result.solver.solve(task, task.splits["test"][:1])[0]
    assert att.meta["k"] == 2 and att.prompt.count("Review:") == 3


def test_generative_task_is_a_clear_error() -> None:
    task = toy_task()
    gen = Task(name="qa", splits=task.splits, verifier=ExactVerifier())
    with pytest.raises(MethodError, match=r"raml: needs a classification task.*'qa'"):
        Raml(resources=resources()).fit(ZeroShot(ScriptedLM()), gen, gen.splits["train"],
                                        gen.splits["dev"])
    with pytest.raises(MethodError, match=r"raml: needs dev examples"):
        Raml(resources=resources()).fit(ZeroShot(ScriptedLM()), task, task.splits["train"], [])


def test_prompt_variant_chosen_by_fused_dev_accuracy() -> None:
    """format_candidates/try_no_instructions: chat is worse, bare completion ties -> bare."""
    task = toy_task()

    def by_format(prompt: str, cont: str) -> float:
        if "assistant:" in prompt or "user:" in prompt:  # chat: always 'positive'
            return -1.0 if cont.strip() == "positive" else -3.0
        return biased_scores(prompt, cont)

    lm = ScriptedLM(scores=by_format)
    task.instructions = "Say positive or negative."
    cfg = RamlConfig(k=0, k_neighbours=4, calibrate=False, weights=[0.0],
                     format_candidates=["chat", "completion"], try_no_instructions=True)
    method = Raml(cfg, resources=resources())
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    variants = method.report.notes["variants"]
    assert [(v["prompt_format"], v["instructions"]) for v in variants] == [
        ("chat", True), ("completion", True), ("completion", False)]
    assert variants[0]["dev_accuracy_fused"] == 0.5
    assert variants[1]["dev_accuracy_fused"] == variants[2]["dev_accuracy_fused"] == 5 / 6
    assert variants[2]["prompt_tokens"] < variants[1]["prompt_tokens"]
    assert method.report.lm_calls == 3 * len(task.splits["dev"])
    assert solver.instructions == "" and not solver.uses_chat()
    assert method.report.notes["instructions"] is False
    again = load_solver(solver.to_json(), lm=lm)
    a1, a2 = solver.solve(task, task.splits["dev"]), again.solve(task, task.splits["dev"])
    assert [a.prompt for a in a1] == [a.prompt for a in a2]
    assert not any("Say positive" in a.prompt for a in a1)


def test_prompt_variant_keeps_instructions_when_they_help() -> None:
    task = toy_task()
    task.instructions = "Say positive or negative."

    def needs_instructions(prompt: str, cont: str) -> float:
        if "Say positive" in prompt:  # a perfect reader of instructions
            q = prompt.rsplit("Review:", 1)[-1]
            neg = any(w in q for w in ("awful", "boring", "dull"))
            return -0.1 if (cont.strip() == "negative") == neg else -3.0
        return biased_scores(prompt, cont)

    lm = ScriptedLM(scores=needs_instructions)
    cfg = RamlConfig(k=0, k_neighbours=4, calibrate=False, weights=[0.0],
                     format_candidates=["completion"], try_no_instructions=True)
    method = Raml(cfg, resources=resources())
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert method.report.notes["dev_accuracy_fused"] == 1.0
    assert method.report.notes["instructions"] is True and solver.instructions is None
    with pytest.raises(MethodError, match="raml: try_no_instructions applies"):
        Raml(RamlConfig(format_candidates=["chat"], try_no_instructions=True),
             resources=resources()).fit(ZeroShot(lm), task, task.splits["train"],
                                        task.splits["dev"])


def demo_helps(prompt: str, cont: str) -> float:
    """An LM that reads the right label off a demo of the same adjective, else is biased."""
    *demos, question = prompt.split("Review:")
    adjective = question.split()[0] if question.split() else ""
    for d in demos:
        if adjective and adjective in d:
            return -0.1 if cont.strip() in d else -3.0
    return biased_scores(prompt, cont)


def test_k_candidates_chosen_by_fused_dev_accuracy() -> None:
    task = toy_task()
    lm = ScriptedLM(scores=demo_helps)
    cfg = RamlConfig(k_candidates=[0, 2], k_neighbours=4, calibrate=False, weights=[0.0],
                     format_candidates=None, try_no_instructions=False)
    method = Raml(cfg, resources=resources())
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    variants = method.report.notes["variants"]
    assert [v["k"] for v in variants] == [0, 2]
    assert variants[0]["prompt_tokens"] < variants[1]["prompt_tokens"]
    assert variants[1]["dev_accuracy_fused"] > variants[0]["dev_accuracy_fused"]
    assert solver.k == 2 and method.report.notes["k"] == 2
    assert method.report.lm_calls == 2 * len(task.splits["dev"])


def test_token_cap_skips_dear_variants_without_calling_the_lm() -> None:
    task = toy_task()
    lm = ScriptedLM(scores=demo_helps)
    cheap = RamlSolver(lm, KnnSelector(task.splits["train"], embedder=HashEmbedder(dim=256)),
                       task.labels, k=0)
    k0_cost = cheap.prompt_cost(task, task.splits["dev"])
    cfg = RamlConfig(k_candidates=[0, 2], k_neighbours=4, calibrate=False, weights=[0.0],
                     format_candidates=None, try_no_instructions=False,
                     max_prompt_tokens=k0_cost + 0.5)
    method = Raml(cfg, resources=resources())
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert solver.k == 0
    assert method.report.lm_calls == len(task.splits["dev"])  # k=2 was never scored
    (skipped,) = method.report.notes["over_token_cap"]
    assert skipped["k"] == 2 and skipped["prompt_tokens"] > k0_cost + 0.5
    # the counted cost is what the LM side is charged at test time
    attempts = solver.solve(task, task.splits["dev"])
    assert sum(a.usage.prompt_tokens for a in attempts) / len(attempts) == pytest.approx(k0_cost)

    calls = len(lm.calls)
    with pytest.raises(MethodError, match=r"raml: no prompt variant fits max_prompt_tokens=1;"
                                          r" the cheapest needs"):
        Raml(RamlConfig(k_candidates=[0, 2], max_prompt_tokens=1), resources=resources()).fit(
            ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert len(lm.calls) == calls  # over the cap everywhere: no LM call spent
    with pytest.raises(ValidationError, match="k_candidates must be demo counts"):
        RamlConfig(k_candidates=[-1, 2])
