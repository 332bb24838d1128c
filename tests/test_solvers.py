"""Solvers: prompt formats, demos, answer extraction, likelihood ranking, JSON round trip."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from metaskill.core.errors import MetaskillError, NotFoundError, TaskError
from metaskill.core.types import Example
from metaskill.eval.harness import evaluate
from metaskill.eval.solver import Attempt, Solver
from metaskill.eval.solvers import (
    METHOD_SOLVER_KINDS,
    SOLVERS,
    KShot,
    LikelihoodClassifier,
    PromptConfig,
    ZeroShot,
    load_solver,
    register_solver,
    save_solver,
    select_demos,
    solver_from_name,
)
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.base import Task, Verdict, Verifier


class Label(Verifier):
    name = "label-test"

    def verify(self, output: str, example: Example) -> Verdict:
        got = output.strip().lower().rstrip(".")
        return Verdict(score=float(got == example.answer), reason="", parsed=got)


def sentiment_task() -> Task:
    train = [Example(id=f"tr{i}", input=f"train review {i}",
                     answer="positive" if i % 2 else "negative") for i in range(12)]
    test = [Example(id=f"te{i}", input=f"{'good' if i % 2 else 'bad'} movie {i}",
                    answer="positive" if i % 2 else "negative", skills=["s"]) for i in range(8)]
    return Task(name="senti", kind="classification", labels=["negative", "positive"],
                template="Review: {input}\nSentiment:", instructions="Say positive or negative.",
                splits={"train": train, "test": test}, verifier=Label())


class NoChatLM(ScriptedLM):
    chat = False


def test_zero_shot_chat_prompt_and_extraction():
    lm = ScriptedLM(default="Positive.\nBecause it is good.")
    task = sentiment_task()
    s = ZeroShot(lm)
    assert s.resolved_format() == "chat"
    req = s.request(task, task.splits["test"][1])
    assert req.prompt is None and len(req.messages) == 1
    assert req.messages[0].content == (
        "Say positive or negative.\n\nReview: good movie 1\nSentiment:")
    assert req.max_tokens == 16 and req.stop == ()
    [a] = s.solve(task, [task.splits["test"][1]])
    assert a.output == "Positive." and a.meta["raw"].startswith("Positive.\nBecause")
    assert "user: Say positive" in a.prompt  # rendered by lm.render_chat


def test_completion_format_for_base_models_and_stop():
    task = sentiment_task()
    s = KShot(NoChatLM(default=" positive\nReview: next"), k=2, seed=0)
    assert s.resolved_format() == "completion"
    ex = task.splits["test"][0]
    req = s.request(task, ex)
    demos = select_demos(task, 2, 0)
    assert req.prompt == "\n\n".join(
        ["Say positive or negative.", *[task.demo(d) for d in demos], task.render(ex)])
    assert req.stop == ("\n",)
    [a] = s.solve(task, [ex])
    assert a.output == "positive"  # stopped at the newline by the LM, then stripped


def test_generative_task_defaults():
    task = sentiment_task().model_copy(update={"kind": "generative"})
    s = ZeroShot(NoChatLM(default="line one\nline two"))
    req = s.request(task, task.splits["test"][0])
    assert req.max_tokens == 256 and req.stop == ("\n\n",)
    assert s.extract(task, " a\nb ") == "a\nb"
    assert ZeroShot(NoChatLM(), extract="first_line").extract(task, "\n a\nb") == "a"


def test_kshot_chat_turns_and_fixed_demos():
    task = sentiment_task()
    s = KShot(ScriptedLM(), k=3, seed=5)
    msgs = s.context(task, task.splits["test"][0])
    assert [m.role for m in msgs] == ["user", "assistant"] * 3 + ["user"]
    assert msgs[0].content.startswith("Say positive or negative.\n\nReview: train review")
    assert not msgs[2].content.startswith("Say")  # instructions once
    demos = select_demos(task, 3, 5)
    assert [m.content for m in msgs[1::2][:3]] == [d.answer for d in demos]
    # same demos for every example (fixed k-shot), reproducible by seed
    assert s.demos(task) == KShot(ScriptedLM(), k=3, seed=5).demos(task)
    assert s.demos(task) != KShot(ScriptedLM(), k=3, seed=6).demos(task)
    # given demos are used as is
    given = (task.splits["train"][0],)
    assert KShot(ScriptedLM(), k=1, demos=given).demos(task) == list(given)


def test_select_demos_errors():
    task = sentiment_task()
    with pytest.raises(TaskError, match="fewer than k=20"):
        select_demos(task, 20)
    with pytest.raises(TaskError, match="no split 'dev'"):
        select_demos(task, 2, pool="dev")
    assert select_demos(task, 0) == []


def test_one_complete_call_per_batch():
    task = sentiment_task()
    batches = []

    class Counting(ScriptedLM):
        def _complete(self, requests):
            batches.append(len(requests))
            return super()._complete(requests)

    KShot(Counting(default="positive"), k=2).solve(task, task.splits["test"])
    assert batches == [8]


def test_likelihood_classifier_ranks_labels_with_score():
    task = sentiment_task()
    seen: list[tuple[str, str]] = []

    def scores(prompt: str, cont: str) -> float:
        seen.append((prompt, cont))
        good = "good" in prompt.split("Review:")[-1]
        return -0.5 if (cont.strip() == "positive") == good else -3.0

    lm = NoChatLM(scores=scores)
    s = LikelihoodClassifier(lm)
    run = evaluate(s, task, progress=False)
    assert run.accuracy == 1.0
    # completion format: labels scored with a leading space, after the rendered prompt
    assert {c for _, c in seen} == {" negative", " positive"}
    assert seen[0][0].endswith("Sentiment:")
    rec = run.records[1]
    assert rec.meta["scores"] == {"negative": -3.0, "positive": -0.5}
    assert rec.output == "positive" and rec.usage.prompt_tokens > 0


def test_likelihood_chat_context_and_kshot():
    task = sentiment_task()
    calls: list[Any] = []

    class Spy(ScriptedLM):
        def score(self, context, continuations, *, cache=True):
            calls.append((context, list(continuations)))
            return [-1.0, -2.0]

    s = LikelihoodClassifier(Spy(), k=2, seed=1)
    [a] = s.solve(task, task.splits["test"][:1])
    ctx, conts = calls[0]
    assert conts == ["negative", "positive"]  # chat: no leading space
    assert [m.role for m in ctx] == ["user", "assistant", "user", "assistant", "user"]
    assert a.output == "negative"


def test_likelihood_normalize_chars():
    task = sentiment_task()
    # 'negative' is 8 chars, 'positive' is 8: use labels of different length
    lm = NoChatLM(scores=lambda p, c: -2.0 if c.strip() == "no" else -3.0)
    t2 = task.model_copy(update={"labels": ["no", "absolutely"]})
    assert LikelihoodClassifier(lm).solve(t2, t2.splits["test"][:1])[0].output == "no"
    assert LikelihoodClassifier(lm, normalize="chars").solve(
        t2, t2.splits["test"][:1])[0].output == "absolutely"


def test_likelihood_without_labels_is_clear():
    task = sentiment_task().model_copy(update={"labels": None, "kind": "generative"})
    with pytest.raises(MetaskillError, match="needs labels"):
        LikelihoodClassifier(ScriptedLM()).solve(task, task.splits["test"][:1])


@pytest.mark.parametrize("make", [
    lambda lm: ZeroShot(lm, format="completion", instructions="Be brief.", max_tokens=5),
    lambda lm: KShot(lm, k=3, seed=7, stop=["###"], temperature=0.7),
    lambda lm: KShot.for_task(lm, sentiment_task(), k=2, seed=1),
    lambda lm: LikelihoodClassifier(lm, k=1, normalize="chars", labels=["a", "b"]),
])
def test_json_round_trip_each_kind(make, tmp_path):
    lm = ScriptedLM(default="positive")
    s = make(lm)
    data = s.to_json()
    assert data["schema_version"] == 1 and data["kind"] == s.kind and data["model"] == "fake"
    text = json.dumps(data)  # plain JSON
    back = load_solver(json.loads(text), lm=lm)
    assert type(back) is type(s) and back.to_json() == data
    p = save_solver(s, tmp_path / "sub" / "solver.json")
    back2 = load_solver(p, lm=lm)
    assert back2.to_json() == data
    # same prompts after the round trip
    task = sentiment_task()
    ex = task.splits["test"][0]
    assert back2.context(task, ex) == s.context(task, ex)


def test_for_task_stores_the_demos_themselves():
    task = sentiment_task()
    s = KShot.for_task(ScriptedLM(), task, k=2, seed=3)
    demos = s.to_json()["state"]["demos"]
    assert [d["id"] for d in demos] == [d.id for d in select_demos(task, 2, 3)]
    # reloaded without the train split: same prompt
    bare = task.model_copy(update={"splits": {"test": task.splits["test"]}})
    back = load_solver(s.to_json(), lm=ScriptedLM())
    assert back.context(bare, task.splits["test"][0]) == s.context(task, task.splits["test"][0])


def test_load_solver_uses_model_spec_when_no_lm():
    specs = []

    def loader(spec: str):
        specs.append(spec)
        return ScriptedLM()

    s = load_solver({"schema_version": 1, "kind": "k-shot", "model": "fake",
                     "state": {"k": 2}}, lm_loader=loader)
    assert specs == ["fake"] and s.config.k == 2


def test_load_solver_errors(tmp_path):
    lm = ScriptedLM()
    with pytest.raises(NotFoundError, match="unknown solver 'nope'"):
        load_solver({"kind": "nope", "state": {}}, lm=lm)
    with pytest.raises(MetaskillError, match="schema_version 99"):
        load_solver({"schema_version": 99, "kind": "zero-shot"}, lm=lm)
    with pytest.raises(MetaskillError, match="no 'kind'"):
        load_solver({"state": {}}, lm=lm)
    with pytest.raises(MetaskillError, match="names no model"):
        load_solver({"kind": "zero-shot", "state": {}})
    with pytest.raises(MetaskillError, match="field 'k'"):
        load_solver({"kind": "k-shot", "state": {"k": -1}}, lm=lm)
    with pytest.raises(MetaskillError, match="field 'bogus'"):
        load_solver({"kind": "k-shot", "state": {"bogus": 1}}, lm=lm)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MetaskillError, match="cannot read solver file"):
        load_solver(bad, lm=lm)
    with pytest.raises(MetaskillError, match="does not exist"):
        load_solver(tmp_path / "missing.json", lm=lm)
    with pytest.raises(MetaskillError, match="k=0"):
        ZeroShot(lm, k=2)


def test_registry_accepts_new_kinds_and_load_solver_rebuilds_them():
    @register_solver
    class Upper(Solver):
        """A toy method-made Solver: answers the upper-cased scripted text."""

        kind: ClassVar[str] = "test-upper"

        def __init__(self, lm: Any, shout: int = 1) -> None:
            super().__init__(lm)
            self.shout = shout

        def solve(self, task, examples):
            cs = self.lm.complete([{"prompt": task.render(e)} for e in examples])
            return [Attempt(example_id=e.id, output=c.text.upper() + "!" * self.shout)
                    for e, c in zip(examples, cs, strict=True)]

        def state(self):
            return {"shout": self.shout}

        @classmethod
        def from_state(cls, state, lm):
            return cls(lm, **state)

    assert SOLVERS.get("test-upper") is Upper
    assert register_solver(Upper) is Upper  # same class again: no-op
    back = load_solver(Upper(ScriptedLM(), shout=2).to_json(), lm=ScriptedLM(default="hi"))
    assert isinstance(back, Upper) and back.shout == 2

    class Other(Upper):
        kind: ClassVar[str] = "test-upper"

    with pytest.raises(MetaskillError, match="already registered"):
        register_solver(Other)


def test_every_solver_kind_a_method_makes_is_known_to_load_solver():
    import metaskill.methods

    made: dict[str, str] = {}
    for info in pkgutil.iter_modules(metaskill.methods.__path__):
        module = importlib.import_module(f"metaskill.methods.{info.name}")
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, Solver)
                    and cls.__module__ == module.__name__ and "kind" in cls.__dict__):
                made[cls.kind] = f"{module.__name__}:{name}"
    assert made == METHOD_SOLVER_KINDS
    assert set(made) >= {"demos", "dynaicl", "raml", "self_consistency", "self_refine",
                         "adaptmi", "meta_prompting", "multi_critique"}
    for kind in made:
        assert SOLVERS.get(kind).kind == kind


def test_solver_from_name():
    task = sentiment_task()
    s = solver_from_name("k-shot", ScriptedLM(), task=task, k=2)
    assert s.config.demos is not None and len(s.config.demos) == 2
    assert solver_from_name("zero-shot", ScriptedLM()).kind == "zero-shot"
    with pytest.raises(NotFoundError, match="Did you mean"):
        solver_from_name("kshot", ScriptedLM())


def test_configs_are_immutable_and_with_config_returns_new():
    s = KShot(ScriptedLM(), k=2)
    t = s.with_config(k=3)
    assert s.config.k == 2 and t.config.k == 3 and t is not s
    with pytest.raises(ValidationError):
        s.config.k = 5  # type: ignore[misc]
    assert isinstance(s.config, PromptConfig)
