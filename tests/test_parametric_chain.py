"""Parametric methods in the chain: `knn_demos+sft` trains first, then retrieves demos for the
trained model; the trained Solver's JSON carries its adapter; STAT builds its data once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.base import MethodResources
from metaskill.methods.compose import fit_chain
from metaskill.methods.demos import DemoSolver
from metaskill.methods.sft import TrainResult
from metaskill.methods.stat import STATConfig, build_data
from metaskill.skills.profile import DifficultExample, Profile
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import LabelVerifier


def make_task() -> Task:
    def ex(split: str, i: int) -> Example:
        label = "positive" if i % 2 else "negative"
        word = "good" if i % 2 else "bad"
        return Example(id=f"{split}{i}", input=f"a {word} film number {split}{i}",
                       answer=label, skills=[f"{label}_cue"])

    return Task(name="mini", splits={"train": [ex("tr", i) for i in range(8)],
                                     "dev": [ex("dv", i) for i in range(4)],
                                     "test": [ex("te", i) for i in range(4)]},
                template="Review: {input}\nSentiment:", kind="classification",
                labels=["positive", "negative"], verifier=LabelVerifier(["positive", "negative"]))


def trained_answer(prompt: str, request: Any) -> str:
    last = prompt.rsplit("Review", 1)[-1]
    return "positive" if "good" in last else "negative"


def recording_trainer(calls: list[dict[str, Any]]) -> Any:
    def train(lm: Any, pairs: list, cfg: Any, out: Path, **kw: Any) -> TrainResult:
        calls.append({"lm": lm.spec, "n": len(pairs), "out": out})
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text("{}")
        for step in range(1, (cfg.steps or 1) + 1):
            if kw.get("on_step") is not None:
                from metaskill.methods.sft import StepInfo

                kw["on_step"](StepInfo(step, cfg.steps, 1.0 / step, 0.0, model=None))
        return TrainResult(adapter_dir=out, steps=cfg.steps, losses=[1.0] * cfg.steps,
                           seconds=0.0, seconds_per_step=0.0, peak_rss_mb=0.0,
                           cpu_seconds=0.0, n_examples=len(pairs))

    return train


def test_chain_trains_first_then_fits_demos_for_the_trained_model(tmp_path: Path) -> None:
    task = make_task()
    trained = ScriptedLM(trained_answer)
    base = ScriptedLM(default="positive", adapted=trained)
    calls: list[dict[str, Any]] = []
    res = MethodResources(embedder_spec="hash:64", work_dir=tmp_path,
                          trainer=recording_trainer(calls))
    out = fit_chain(ZeroShot(base), task, task.examples("train"), task.examples("dev"),
                    ["knn_demos", ("sft", {"steps": 2})], resources=res)
    assert out.methods == ["sft", "knn_demos"]  # parametric first, whatever the order given
    assert calls == [{"lm": "fake", "n": 8, "out": calls[0]["out"]}]
    assert isinstance(out.solver, DemoSolver)
    spec = out.solver.to_json()["model"]
    assert spec == f"fake+adapter:{calls[0]['out']}"
    # knn_demos chose its variant by scoring the trained model on dev
    assert trained.calls == [] and out.reports[1].notes["dev_accuracy"] == 1.0
    # the JSON reloads onto the base LM as base + adapter, and answers like the trained one
    again = load_solver(out.solver.to_json(), lm=base)
    assert again.lm.spec == spec
    assert [a.output for a in again.solve(task, task.examples("test"))] == [
        e.answer for e in task.examples("test")]


def test_sft_reports_a_learning_curve_and_its_data(tmp_path: Path) -> None:
    task = make_task()
    base = ScriptedLM(default="positive", adapted=ScriptedLM(trained_answer))
    res = MethodResources(work_dir=tmp_path, trainer=recording_trainer([]))
    out = fit_chain(ZeroShot(base), task, task.examples("train"), task.examples("dev"),
                    [("sft", {"steps": 4, "eval_every": 2, "curve_n": 4, "n_examples": 6})],
                    resources=res)
    notes = out.reports[0].notes
    assert [p["step"] for p in notes["curve"]] == [0, 2, 4]
    assert notes["curve"][0]["accuracy"] == 0.5 and notes["curve"][-1]["accuracy"] == 1.0
    assert notes["n_examples"] == 6 and notes["data"] == "uniform SFT on 6 training examples"
    assert len((Path(notes["adapter"]).parent / "data.jsonl").read_text().splitlines()) == 6


def test_sft_on_a_model_without_weights_fails_before_any_work(tmp_path: Path) -> None:
    task = make_task()
    lm = ScriptedLM(default="positive")
    with pytest.raises(MethodError, match="cannot tell which model file"):
        fit_chain(ZeroShot(lm), task, task.examples("train"), task.examples("dev"), ["sft"],
                  resources=MethodResources(work_dir=tmp_path))
    assert lm.calls == []


def test_stat_data_one_builder() -> None:
    task = make_task()
    train = task.examples("train")
    profile = Profile(task="mini", difficult=[
        DifficultExample(example_id="dv0", question="q", output="x", missing=["negative_cue"])])
    cfg = STATConfig(steps=2, batch_size=3)
    data, note, method = build_data(task, train, cfg, MethodResources(profile=profile))
    assert method == "stat-sel"
    # sized to steps x batch (6): the 4 train examples of the missing skill, some twice
    assert note.startswith("STAT-Sel: 6 training examples for 1 ") and len(data) == 6
    assert {e.id for e in data} == {"tr0", "tr2", "tr4", "tr6"}
    with pytest.raises(MethodError, match="needs the Missing-Skill Profile"):
        build_data(task, train, cfg, MethodResources())
    with pytest.raises(MethodError, match="needs a teacher LM"):
        build_data(task, train, STATConfig(variant="syn"), MethodResources(profile=profile))
