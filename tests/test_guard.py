"""No test data during fit: every registered method fits on a fake LM with the guard on,
and the guard catches each way test data can leak (prompt, Verifier, evaluate, arguments)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from metaskill.core.guard import TestDataLeakError, active_guard, check_text, guard_fit
from metaskill.core.settings import Settings
from metaskill.core.types import Example, Request
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.methods import METHODS
from metaskill.methods.base import FitReport, Method, MethodResources
from metaskill.methods.compose import build_method, fit_chain
from metaskill.skills.profile import DifficultExample, Profile
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier, LabelVerifier

WORDS = {"positive": ["good", "great"], "negative": ["bad", "dull"]}


def ex(split: str, i: int, label: str) -> Example:
    word = WORDS[label][i % 2]
    return Example(id=f"{split}-{label}{i}", input=f"a {word} film, review {split} {i}",
                   answer=label, skills=[f"{label}_words"])


def make_task() -> Task:
    def split(name: str, n: int) -> list[Example]:
        return [ex(name, i, label) for label in WORDS for i in range(n)]

    return Task(name="reviews", splits={"train": split("train", 6), "dev": split("dev", 3),
                                        "test": split("test", 3)},
                template="Review: {input}\nSentiment:", kind="classification",
                labels=list(WORDS), verifier=LabelVerifier(labels=list(WORDS)),
                instructions="Answer positive or negative.")


def make_sums() -> Task:
    """For tool_use (its demonstrations need a task a tool can solve): '<a> plus <b>'."""
    def split(name: str, start: int, n: int) -> list[Example]:
        return [Example(id=f"{name}-{i}", input=f"What is {i} plus {i + 17}?",
                        answer=str(2 * i + 17), skills=["addition"])
                for i in range(start, start + n)]

    return Task(name="sums", splits={"train": split("train", 10, 6), "dev": split("dev", 30, 3),
                                     "test": split("test", 50, 3)},
                template="Q: {input}\nA:", kind="generative", verifier=ExactVerifier())


def answer(prompt: str, request: Request) -> str:
    """Right about the last review in the prompt; critiques say CORRECT; a tool call
    adds the last question's two numbers."""
    if request.json_schema and "calculator" in request.json_schema:
        a, b = re.findall(r"\d+", prompt.rsplit("What is", 1)[-1])[:2]
        return f'{{"tool": "calculator", "expression": "{a} + {b}"}}'
    if "VERDICT" in prompt or "critique" in prompt.lower():
        return "The answer is fine.\nVERDICT: CORRECT"
    last = prompt.rsplit("Review", 1)[-1]
    return "negative" if any(w in last for w in WORDS["negative"]) else "positive"


class LeakWatchLM(ScriptedLM):
    """The fake LM that also records every prompt, so the test can check them itself."""

    def __init__(self) -> None:
        super().__init__(answer)

    def with_adapter(self, adapter: Any) -> ScriptedLM:
        lm = super().with_adapter(adapter)
        lm.calls = self.calls  # one record across the base and its adapters
        return lm


def fake_trainer(lm: Any, pairs: list, cfg: Any, out: Path, **kw: Any) -> Any:
    from metaskill.methods.sft import TrainResult

    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text("{}")
    return TrainResult(adapter_dir=out, steps=cfg.steps or 1, losses=[1.0], seconds=0.0,
                       seconds_per_step=0.0, peak_rss_mb=0.0, cpu_seconds=0.0,
                       n_examples=len(pairs))


def resources(task: Task, tmp: Path) -> MethodResources:
    from metaskill.skills.book import Skill, SkillBook
    from metaskill.skills.embed import HashEmbedder

    emb = HashEmbedder(64)
    book = SkillBook(tmp / "skills.sqlite", embedder=emb)
    book.add_skills([Skill(name=f"{n}_words", description=f"{n} words") for n in WORDS]
                    + [Skill(name="addition", description="adding two numbers")])
    book.add_examples(task.examples("train"))
    book.label_many({e.id: list(e.skills) for e in task.examples("train")})
    profile = Profile(task="reviews", difficult=[
        DifficultExample(example_id=e.id, question=e.text, output="?", missing=list(e.skills))
        for e in task.examples("dev")])
    return MethodResources(embedder=emb, skillbook=book, teacher=LeakWatchLM(),
                           profile=profile, trainer=fake_trainer, work_dir=tmp / "work",
                           settings=Settings(home=tmp / "home"))  # memory's knowledge base


#: Small settings so every method's fit is quick on the fake LM.
OPTIONS: dict[str, dict[str, Any]] = {
    "sft": {"steps": 2, "eval_every": 1, "curve_n": 2},
    "stat": {"steps": 2, "eval_every": 1, "curve_n": 2},
    "grpo": {"steps": 2, "eval_every": 1, "curve_n": 2},
    "self_evolve": {"rounds": 1, "samples": 2, "n_train": 4, "steps": 1},
}


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_fits_without_touching_test(name: str, tmp_path: Path) -> None:
    task = make_sums() if name == "tool_use" else make_task()
    lm = LeakWatchLM()
    res = resources(task, tmp_path)
    method = build_method(name, OPTIONS.get(name, {}), res)
    solver = method.fit(ZeroShot(lm), task, task.examples("train"), task.examples("dev"))
    assert solver is not None and active_guard() is None
    # independent of the guard: no prompt of the fit holds a test input
    prompts = [*lm.calls, *res.teacher.calls]
    assert prompts, f"{name} never called the LM"
    for e in task.examples("test"):
        assert not any(e.text in p for p in prompts), (name, e.text)
    # the adapted Solver then answers test like any other (outside the fit: allowed)
    run = evaluate(solver, task, "test", progress=False)
    assert len(run.records) == len(task.examples("test"))


class ScoresOnTest(Method):
    """The bug class: selecting on the test split."""

    name: ClassVar[str] = "scores_on_test"

    def fit(self, solver: Any, task: Any, train: list[Example],
            dev: list[Example] | None = None) -> Any:
        evaluate(solver, task, "test", progress=False)
        return solver


class PromptsTest(Method):
    """Reads a test input into a prompt by hand (no harness involved)."""

    name: ClassVar[str] = "prompts_test"

    def fit(self, solver: Any, task: Any, train: list[Example],
            dev: list[Example] | None = None) -> Any:
        e = task.splits["test"][0]
        solver.lm.complete([Request(prompt=f"Q: {e.text}\nA:")])
        return solver


class VerifiesTest(Method):
    """Scores a test example with the task's Verifier."""

    name: ClassVar[str] = "verifies_test"

    def fit(self, solver: Any, task: Any, train: list[Example],
            dev: list[Example] | None = None) -> Any:
        e = task.splits["test"][0]
        task.verifier.verify(e.answer or "", e)
        self.report = FitReport()
        return solver


@pytest.mark.parametrize(("method", "where"), [
    (ScoresOnTest(), "evaluate"), (PromptsTest(), "LeakWatchLM.complete"),
    (VerifiesTest(), "LabelVerifier.verify")])
def test_each_kind_of_leak_is_an_error(method: Method, where: str) -> None:
    task = make_task()
    with pytest.raises(TestDataLeakError, match=f"Test data reached {re.escape(where)} "
                                                f"during {method.name}.fit"):
        fit_chain(ZeroShot(LeakWatchLM()), task, task.examples("train"),
                  task.examples("dev"), [method])
    assert active_guard() is None  # the guard is gone once the fit ends, even by an error
    # outside a fit the same calls are fine
    evaluate(ZeroShot(LeakWatchLM()), task, "test", progress=False)


def test_test_examples_passed_as_dev_are_refused() -> None:
    task = make_task()
    with pytest.raises(TestDataLeakError, match="train/dev given to knn_demos"):
        fit_chain(ZeroShot(LeakWatchLM()), task, task.examples("train"),
                  task.examples("test"), ["knn_demos"],
                  resources=MethodResources(embedder_spec="hash:64"))


def test_inputs_shared_with_another_split_and_word_boundaries() -> None:
    same = Example(id="t", input="add the numbers 2 and 3")
    with guard_fit("m", [same], others=[Example(id="d", input="add the numbers 2 and 3")]):
        check_text("Q: add the numbers 2 and 3", where="LM")  # a train input too: allowed
    with guard_fit("m", [Example(id="t", input="add the numbers 2 and 3")]):
        check_text("Q: add the numbers 2 and 33", where="LM")  # another number: allowed
        with pytest.raises(TestDataLeakError):
            check_text("Q: add the numbers 2 and 3\nA:", where="LM")
        with pytest.raises(TestDataLeakError):  # chat messages are checked too
            LeakWatchLM().complete([Request(messages=[
                {"role": "user", "content": "Q: add the numbers 2 and 3"}])])
