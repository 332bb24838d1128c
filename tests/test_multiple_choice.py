"""Multiple choice by each example's own choices: likelihood, constrained generation,
knn_demos, raml, dynaicl and adaptmi on a task whose examples carry their choices."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from metaskill.core.types import Example, Request
from metaskill.eval.solvers import LikelihoodClassifier, ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.lm.structured import choice_grammar
from metaskill.methods.adaptmi import AdaptMI, AdaptMIConfig
from metaskill.methods.compose import MethodResources
from metaskill.methods.demos import DemoSolver, KnnSelector
from metaskill.methods.dynaicl import DynaICL, DynaICLConfig
from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig
from metaskill.methods.raml import Raml, RamlConfig, RamlSolver
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ChoiceVerifier, LabelVerifier

ANIMALS = ["cat", "dog", "horse", "mouse", "owl", "fox", "goat", "duck"]
OTHERS = [["red", "blue"], ["apple", "pear"], ["table", "chair"], ["green", "plum"]]
BIGBENCH = Path(__file__).resolve().parents[2] / "shared/data/bigbench/tasks"


def mc_example(i: int, animal: str, others: list[str]) -> Example:
    choices = [*others[: i % 2], animal, *others[i % 2:]]  # the answer's place varies
    text = "Pick the animal." + "".join(f"\n  choice: {c}" for c in choices)
    return Example(id=f"e{i}", input=text, answer=animal, skills=["animals"],
                   metadata={"choices": choices, "answers": [animal]})


def mc_task() -> Task:
    rows = [mc_example(i, a, OTHERS[i % len(OTHERS)]) for i, a in enumerate(ANIMALS * 3)]
    return Task(name="pick_animal", splits={"train": rows[:12], "dev": rows[12:18],
                                            "test": rows[18:]},
                template="Q: {input}\nA:", kind="multiple_choice", verifier=ChoiceVerifier())


def animal_scores(seen: list[list[str]] | None = None):
    """log p(choice): high for an animal; every call's continuations are recorded."""
    def score(prompt: str, cont: str) -> float:
        if seen is not None:
            seen.append([prompt, cont])
        return -0.5 if cont.strip() in ANIMALS else -3.0 - len(cont) * 0.01
    return score


def conts_per_prompt(seen: list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for prompt, cont in seen:
        out.setdefault(prompt, []).append(cont)
    return out


# ---- likelihood -------------------------------------------------------------------------
def test_likelihood_ranks_each_examples_own_choices() -> None:
    task, seen = mc_task(), []
    test = task.examples("test")
    lm = ScriptedLM(scores=animal_scores(seen))
    out = LikelihoodClassifier(lm, format="completion").solve(task, test)
    assert [a.output for a in out] == [e.answer for e in test]
    for a, e in zip(out, test, strict=True):
        assert list(a.meta["scores"]) == e.metadata["choices"]
    # completion prompts score each choice after a space, as task.demo writes answers
    assert sorted(conts_per_prompt(seen)[out[0].prompt]) == sorted(
        " " + c for c in test[0].metadata["choices"])
    seen.clear()
    chat = LikelihoodClassifier(lm, format="chat").solve(task, test[:1])
    assert chat[0].output == test[0].answer
    assert sorted(c for _, c in seen) == sorted(test[0].metadata["choices"])


def test_likelihood_without_choices_still_ranks_task_labels() -> None:
    ex = [Example(id="a", input="great film", answer="positive")]
    task = Task(name="s", splits={"test": ex}, template="Review: {input}\nSentiment:",
                kind="classification", labels=["negative", "positive"],
                verifier=LabelVerifier(labels=["negative", "positive"]))
    seen: list[list[str]] = []
    lm = ScriptedLM(scores=lambda p, c: (seen.append([p, c]), -1.0 if "pos" in c else -2.0)[1])
    out = LikelihoodClassifier(lm, format="completion").solve(task, ex)
    assert out[0].output == "positive"
    assert [c for _, c in seen] == [" negative", " positive"]


def test_normalize_chars_divides_by_choice_length() -> None:
    ex = Example(id="q", input="x", answer="ab", metadata={"choices": ["ab", "abcdefgh"]})
    task = Task(name="t", splits={"test": [ex]}, kind="multiple_choice",
                verifier=ChoiceVerifier())
    lm = ScriptedLM(scores=lambda p, c: -2.0 if c.strip() == "ab" else -4.0)
    assert LikelihoodClassifier(lm, format="completion").solve(task, [ex])[0].output == "ab"
    norm = LikelihoodClassifier(lm, format="completion", normalize="chars")
    assert norm.solve(task, [ex])[0].output == "abcdefgh"  # -4/9 > -2/3


# ---- constrained generation --------------------------------------------------------------
def recording_lm(cls: type[ScriptedLM] = ScriptedLM) -> tuple[ScriptedLM, list[Request]]:
    requests: list[Request] = []

    def reply(prompt: str, request: Request) -> str:
        requests.append(request)
        return " dog"

    return cls(reply), requests


def test_zero_shot_constrains_the_reply_to_the_examples_choices() -> None:
    task = mc_task()
    test = task.examples("test")[:2]
    lm, reqs = recording_lm()
    out = ZeroShot(lm, format="completion").solve(task, test)
    assert [r.grammar for r in reqs] == [choice_grammar(e.metadata["choices"], prefix=" ")
                                         for e in test]
    assert all(a.meta["constrained"] for a in out)
    reqs.clear()
    ZeroShot(lm, format="chat").solve(task, test[:1])
    assert reqs[0].grammar == choice_grammar(test[0].metadata["choices"])  # no space in chat


def test_constrained_max_tokens_fits_the_longest_choice() -> None:
    long = "a rather long sentence that takes many more than sixteen tokens to write out " * 2
    ex = Example(id="q", input="which?", answer="no", metadata={"choices": ["no", long]})
    task = Task(name="t", splits={"test": [ex]}, kind="multiple_choice",
                verifier=ChoiceVerifier())
    lm, reqs = recording_lm()
    ZeroShot(lm, format="completion").solve(task, [ex])
    assert reqs[0].max_tokens >= lm.count_tokens(" " + long) + 4 > 16


def test_free_text_where_the_backend_has_no_grammar_or_constrain_is_off() -> None:
    class NoGrammar(ScriptedLM):
        constraints = frozenset({"json_schema"})

    task = mc_task()
    test = task.examples("test")[:1]
    lm, reqs = recording_lm(NoGrammar)
    out = ZeroShot(lm, format="completion").solve(task, test)
    assert reqs[0].grammar is None and out[0].meta["constrained"] is False
    assert "no grammar" in out[0].meta["constraint"]
    lm2, reqs2 = recording_lm()
    out2 = ZeroShot(lm2, format="completion", constrain=False).solve(task, test)
    assert reqs2[0].grammar is None and out2[0].meta["constraint"] == "off in the config"


def test_classification_tasks_are_not_constrained() -> None:
    ex = [Example(id="a", input="great film", answer="positive")]
    task = Task(name="s", splits={"test": ex}, kind="classification",
                labels=["negative", "positive"], verifier=LabelVerifier())
    lm, reqs = recording_lm()
    out = ZeroShot(lm, format="completion").solve(task, ex)
    assert reqs[0].grammar is None and "constrained" not in out[0].meta


# ---- knn_demos, dynaicl, adaptmi ---------------------------------------------------------
def res() -> MethodResources:
    return MethodResources(embedder_spec="hash:128")


def test_knn_demos_answers_by_likelihood_over_each_examples_choices() -> None:
    task, seen = mc_task(), []
    lm = ScriptedLM(scores=animal_scores(seen))
    solver = KnnDemos(KnnDemosConfig(k=2, format_candidates=["completion"]),
                      resources=res()).fit(ZeroShot(lm), task, task.examples("train"),
                                           task.examples("dev"))
    assert solver.answer_mode == "choices"
    test = task.examples("test")
    seen.clear()
    out = solver.solve(task, test)
    assert [a.output for a in out] == [e.answer for e in test]
    by_prompt = conts_per_prompt(seen)
    train = {e.id: e for e in task.examples("train")}
    for a, e in zip(out, test, strict=True):
        assert sorted(by_prompt[a.prompt]) == sorted(" " + c for c in e.metadata["choices"])
        for d in a.meta["demos"]:  # each demo shows its own question and its own answer
            assert train[d].input + "\nA: " + str(train[d].answer) in a.prompt


def test_demo_solver_generate_mode_is_grammar_constrained_on_multiple_choice() -> None:
    task = mc_task()
    lm, reqs = recording_lm()
    sel = KnnSelector(task.examples("train"), embedder_spec="hash:64")
    DemoSolver(lm, sel, k=1, prompt_format="completion").solve(task, task.examples("test")[:1])
    assert reqs[0].grammar == choice_grammar(task.examples("test")[0].metadata["choices"],
                                             prefix=" ")


def test_dynaicl_answers_over_each_examples_choices() -> None:
    task, seen = mc_task(), []
    lm = ScriptedLM(scores=animal_scores(seen))
    solver = DynaICL(DynaICLConfig(ks=[0, 1], selector="knn", budget_tokens=500),
                     resources=res()).fit(LikelihoodClassifier(lm, format="completion"), task,
                                          task.examples("train"), task.examples("dev"))
    test = task.examples("test")
    seen.clear()
    out = solver.solve(task, test)
    assert [a.output for a in out] == [e.answer for e in test]
    by_prompt = conts_per_prompt(seen)
    for a, e in zip(out, test, strict=True):
        assert sorted(by_prompt[a.prompt]) == sorted(" " + c for c in e.metadata["choices"])


def test_adaptmi_margin_gate_scores_each_examples_choices() -> None:
    task, seen = mc_task(), []
    lm = ScriptedLM(default="dog", scores=animal_scores(seen))
    solver = AdaptMI(AdaptMIConfig(gate="margin"), resources=res()).fit(
        ZeroShot(lm, format="completion"), task, task.examples("train"))
    test = task.examples("test")[:2]
    seen.clear()
    out = solver.solve(task, test)
    for a, e in zip(out, test, strict=True):
        assert set(a.meta["gate"]["label_logprobs"]) == set(e.metadata["choices"])
        assert a.meta["gate"]["hard"] is False  # a clear margin: the first pass stands


# ---- raml ------------------------------------------------------------------------------
class TableEmbedder:
    """Fixed vectors for known words; every other text (the questions) is one vector."""

    spec = "table"
    vectors: ClassVar[dict[str, list[float]]] = {
        "cat": [0, 1, 0, 0], "dog": [0, 0.9, 0.3, 0], "red": [0, 0, 0, 1], "blue": [0, 0, 0.2, 1]}

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.array([self.vectors.get(t, [1, 0, 0, 0]) for t in texts], dtype=float)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_raml_neighbours_vote_by_shared_choice_else_most_similar_choice() -> None:
    pool = [Example(id="n1", input="pick one", answer="dog",
                    metadata={"choices": ["dog", "blue"]})]
    sel = KnnSelector(pool, embedder=TableEmbedder())
    raml = RamlSolver(ScriptedLM(), sel, [], k_neighbours=4, smoothing=0.0)
    query = Example(id="q", input="pick one", metadata={"choices": ["red", "cat"]})
    p = raml.retrieval_dist([query])[0]
    assert p.tolist() == [0.0, 1.0]  # "dog" is no choice here: its vote goes to "cat"
    shared = Example(id="q2", input="pick one", metadata={"choices": ["blue", "dog"]})
    assert raml.retrieval_dist([shared])[0].tolist() == [0.0, 1.0]  # shared: votes "dog"


def test_raml_fits_on_per_example_choices_and_round_trips() -> None:
    from metaskill.eval.solvers import load_solver

    task, seen = mc_task(), []
    lm = ScriptedLM(scores=animal_scores(seen))
    method = Raml(RamlConfig(k=0, format_candidates=["completion"], try_no_instructions=False),
                  resources=res())
    solver = method.fit(ZeroShot(lm), task, task.examples("train"), task.examples("dev"))
    notes = method.report.notes
    assert notes["choices"] == "per example" and notes["prior"] is None
    assert notes["dev_accuracy_lm_only"] == 1.0
    test = task.examples("test")
    out = solver.solve(task, test)
    assert [a.output for a in out] == [e.answer for e in test]
    for a, e in zip(out, test, strict=True):
        assert len(a.meta["p_lm"]) == len(a.meta["p_ret"]) == len(e.metadata["choices"])
    again = load_solver(solver.to_json(), lm=lm)
    assert [a.output for a in again.solve(task, test)] == [a.output for a in out]


def test_raml_shared_choice_set_is_a_label_set_with_calibration() -> None:
    rows = [Example(id=f"s{i}", input=f"statement {i} {'yes' if i % 2 else 'no'}",
                    answer="True" if i % 2 else "False",
                    metadata={"choices": ["True", "False"]}) for i in range(16)]
    task = Task(name="tf", splits={"train": rows[:10], "dev": rows[10:]}, kind="multiple_choice",
                verifier=ChoiceVerifier())
    lm = ScriptedLM(scores=lambda p, c: -1.0 if c.strip() == "True" else -1.2)
    method = Raml(RamlConfig(k=0, format_candidates=["completion"], try_no_instructions=False),
                  resources=res())
    solver = method.fit(ZeroShot(lm), task, rows[:10], rows[10:])
    assert solver.labels == ["True", "False"]
    assert method.report.notes["choices"] == "labels"
    assert len(method.report.notes["prior"]) == 2


# ---- the real model on a real BIG-bench task ---------------------------------------------
@pytest.mark.slow
def test_real_model_on_bigbench_odd_one_out(local_lm) -> None:
    from metaskill.tasks.bigbench import load_bigbench

    if not (BIGBENCH / "odd_one_out").exists():
        pytest.skip("BIG-bench data not present")
    task = load_bigbench(path=str(BIGBENCH / "odd_one_out"), mode="multiple_choice")
    test = list(task.examples("test"))[:4]
    lik = LikelihoodClassifier(local_lm).solve(task, test)
    assert all(a.output in e.metadata["choices"] for a, e in zip(lik, test, strict=True))
    assert all(set(a.meta["scores"]) == set(e.metadata["choices"])
               for a, e in zip(lik, test, strict=True))
    for fmt in ("chat", "completion"):
        gen = ZeroShot(local_lm, format=fmt).solve(task, test)
        assert all(a.meta["constrained"] for a in gen)
        # the grammar holds the reply to exactly one of the example's choices
        assert all(a.output in e.metadata["choices"] for a, e in zip(gen, test, strict=True))


def test_bigbench_choices_are_shuffled_so_their_order_gives_nothing_away() -> None:
    from metaskill.tasks.bigbench import load_bigbench

    if not (BIGBENCH / "cause_and_effect").exists():
        pytest.skip("BIG-bench data not present")
    # the JSON lists the correct choice first in every cause_and_effect example
    pool = [e for s in ("train", "dev", "test")
            for e in load_bigbench(path=str(BIGBENCH / "cause_and_effect")).examples(s)]
    places = [e.metadata["choices"].index(e.answer) for e in pool]
    assert 0.3 < sum(p == 0 for p in places) / len(places) < 0.7
    again = load_bigbench(path=str(BIGBENCH / "cause_and_effect"))
    assert [e.metadata["choices"] for e in again.examples("test")] == [
        e.metadata["choices"] for e in pool if e.id in {x.id for x in again.examples("test")}]
    listed = [e for e in pool if "choice:" in e.input]  # one subtask lists no choices
    assert listed
    for e in listed:  # the prompt lists the choices in their shuffled order
        assert "".join(f"\n  choice: {c}" for c in e.metadata["choices"]) in e.input
