"""SELF rounds with a scripted LM and a recording trainer: curation, accumulation,
stopping when dev stops improving, and resuming without redoing a finished round."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from metaskill.core.guard import TestDataLeakError
from metaskill.core.types import Example, Request
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.base import MethodResources
from metaskill.methods.compose import fit_chain
from metaskill.methods.self_evolve import SelfEvolveConfig, curate, self_evolve
from metaskill.methods.sft import TrainingError
from metaskill.tasks.base import Task, Verdict, Verifier


class Exact(Verifier):
    name = "exact"

    def verify(self, output: str, example: Example) -> Verdict:
        return Verdict(score=float(output.strip() == example.answer))


def make_task(n_train: int = 6, n_dev: int = 6, labelled: bool = True) -> Task:
    def ex(i: int) -> Example:
        return Example(id=f"e{i}", input=f"Say number {i}", answer=str(i) if labelled else None)

    return Task(name="say", splits={"train": [ex(i) for i in range(n_train)],
                                    "dev": [ex(100 + i) for i in range(n_dev)]},
                verifier=Exact())


def level_of(adapter: Path | None) -> int:
    """The fake model's skill: 0 for the base, else the round number, capped at 2."""
    if adapter is None:
        return 0
    return min(2, int(re.search(r"round-(\d+)", str(adapter)).group(1)))  # type: ignore[union-attr]


def fake_lm(level: int) -> ScriptedLM:
    """Knows numbers whose last digit is < 2*level + 1; its critique calls 'no' wrong; its
    refinement finds even numbers."""

    def answer(prompt: str, request: Request) -> str:
        n = int(re.findall(r"Say number (\d+)", prompt)[-1])
        if "Proposed answer" in prompt:
            return "VERDICT: WRONG" if "\nno\n" in prompt else "VERDICT: CORRECT"
        if "Feedback on the previous answer" in prompt:
            return str(n) if n % 2 == 0 else "no"
        return str(n) if n % 10 < 2 * level + 1 else "no"

    return ScriptedLM(answer)


def score(lm: Any, task: Task) -> dict[str, Any]:
    dev = task.examples("dev")
    outs = lm.complete([Request(prompt=e.text) for e in dev])
    ok = sum(task.verifier.verify(c.text, e).score for c, e in zip(outs, dev, strict=True))
    return {"accuracy": ok / len(dev), "n": len(dev)}


def run(task: Task, out: Path, cfg: SelfEvolveConfig, calls: list[dict[str, Any]],
        lm_for: Any = None) -> dict:
    def trainer(pairs: list, sft: Any, out_dir: Path, init: Path | None) -> None:
        calls.append({"n": len(pairs), "init": init, "out": out_dir})
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "adapter_config.json").write_text("{}")

    return self_evolve(task, cfg, out, train=task.examples("train"),
                       lm_for=lm_for or (lambda a: fake_lm(level_of(a))),
                       trainer=trainer, score=lambda lm: score(lm, task))


def test_rounds_accumulate_stop_and_resume(tmp_path: Path) -> None:
    task = make_task()
    cfg = SelfEvolveConfig(rounds=5, samples=2, n_train=3, refine=True)
    calls: list[dict[str, Any]] = []
    summary = run(task, tmp_path, cfg, calls)
    accs = [r["accuracy"] for r in summary["rounds"]]
    assert summary["base"]["accuracy"] == pytest.approx(1 / 6)
    assert accs == [pytest.approx(3 / 6), pytest.approx(5 / 6), pytest.approx(5 / 6)]
    assert summary["best_round"] == 2 and summary["best_adapter"].endswith("round-2/adapter")
    # Round 1 (base: knows e0, refines e2 to the truth, e1 stays 'no'): 2 verified answers.
    assert summary["rounds"][0]["verified"] == 2 and summary["rounds"][0]["dropped"] == 1
    # Rounds accumulate their curated data.
    assert [c["n"] for c in calls] == [2, 2 + summary["rounds"][1]["curated"],
                                       2 + summary["rounds"][1]["curated"]
                                       + summary["rounds"][2]["curated"]]
    assert calls[0]["init"] is None and calls[1]["init"] == tmp_path / "round-1" / "adapter"
    for r in (1, 2, 3):
        d = tmp_path / f"round-{r}"
        assert (d / "candidates.json").exists() and (d / "data.jsonl").exists()
        assert (d / "scores.json").exists()
    # Resume: every finished round is reused, nothing is retrained.
    again = run(task, tmp_path, cfg, calls)
    assert len(calls) == 3 and again["rounds"] == summary["rounds"]


def test_curation_majority_without_references() -> None:
    task = make_task(labelled=False)
    cfg = SelfEvolveConfig(samples=3)
    exs = task.examples("train")[:3]
    cands = {exs[0].id: {"answers": ["7", "7", "8"], "refined": []},
             exs[1].id: {"answers": ["1", "2", "3"], "refined": []},
             exs[2].id: {"answers": ["x", "y", "y "], "refined": []}}
    pairs, stats = curate(task, exs, cands, cfg)
    assert [p.answer for p in pairs] == ["7", "y"]
    assert stats == {"verified": 0, "majority": 2, "dropped": 1}


def test_empty_curated_set_is_an_error(tmp_path: Path) -> None:
    task = make_task()
    cfg = SelfEvolveConfig(rounds=2, samples=2, n_train=3, refine=False)
    calls: list[dict[str, Any]] = []
    with pytest.raises(TrainingError, match="curated set is empty"):
        run(task, tmp_path, cfg, calls, lm_for=lambda a: ScriptedLM(default="no"))
    assert calls == []


class LevelLM(ScriptedLM):
    """fake_lm(level) whose adapters are SELF rounds (level = round number, at most 2)."""

    def __init__(self, level: int = 0) -> None:
        super().__init__(fake_lm(level).script)

    def with_adapter(self, adapter: Any) -> ScriptedLM:
        lm = LevelLM(level_of(Path(adapter)) if adapter else 0)
        if adapter:
            lm.spec = f"fake+adapter:{adapter}"
        return lm


def fake_trainer(lm: Any, pairs: list, cfg: Any, out: Path, **_: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text("{}")


def with_test(task: Task, n: int = 6) -> Task:
    test = [Example(id=f"t{i}", input=f"Say number {200 + i}", answer=str(200 + i))
            for i in range(n)]
    return task.model_copy(update={"splits": {**task.splits, "test": test}})


def test_fit_selects_on_the_dev_it_is_given_and_never_reads_test(tmp_path: Path) -> None:
    task = with_test(make_task())
    dev = task.examples("dev")[:4]
    res = MethodResources(work_dir=tmp_path, trainer=fake_trainer)
    out = fit_chain(ZeroShot(LevelLM()), task, task.examples("train"), dev,
                    [("self_evolve", {"rounds": 3, "samples": 2, "n_train": 3})],
                    resources=res)
    notes = out.reports[0].notes
    assert notes["dev"] == "the 4 dev examples given"
    assert notes["base"]["n"] == 4 and all(r["n"] == 4 for r in notes["rounds"])
    assert notes["base"]["accuracy"] == pytest.approx(1 / 4)
    assert notes["best_round"] == 2 and notes["dev_accuracy"] == pytest.approx(1.0)
    # The Solver JSON's model spec carries the adapter, and reloads onto the base LM.
    spec = out.solver.to_json()["model"]
    assert spec.startswith("fake+adapter:") and spec.endswith("round-2/adapter")
    assert load_solver(out.solver.to_json(), lm=LevelLM()).lm.spec == spec


def test_fit_without_dev_carves_it_from_train_and_says_so(tmp_path: Path) -> None:
    task = with_test(make_task(n_train=10))
    res = MethodResources(work_dir=tmp_path, trainer=fake_trainer)
    out = fit_chain(ZeroShot(LevelLM()), task, task.examples("train"), None,
                    [("self_evolve", {"rounds": 1, "samples": 2, "n_train": 3,
                                      "eval_limit": 3})], resources=res)
    notes = out.reports[0].notes
    assert notes["dev"].startswith("no dev examples were given: the last 3 of 10")
    assert notes["base"]["n"] == 3


def test_fit_given_test_examples_as_dev_is_refused(tmp_path: Path) -> None:
    task = with_test(make_task())
    res = MethodResources(work_dir=tmp_path, trainer=fake_trainer)
    with pytest.raises(TestDataLeakError, match="test example 't0'"):
        fit_chain(ZeroShot(LevelLM()), task, task.examples("train"), task.examples("test"),
                  [("self_evolve", {"rounds": 1})], resources=res)
