"""knn_demos and the shared DemoSolver: selection, ordering, balance, prompts, JSON."""

from __future__ import annotations

import re

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import MethodResources, build_method
from metaskill.methods.demos import DemoSolver, KnnSelector, RandomSelector, run_solver
from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier, LabelVerifier

POS = ["great acting", "lovely music", "great story", "wonderful cast", "lovely film"]
NEG = ["awful plot", "boring scenes", "awful dialogue", "dull pacing", "boring film"]


def toy_task() -> Task:
    def ex(prefix: str, i: int, text: str, label: str) -> Example:
        return Example(id=f"{prefix}{i}", input=text, answer=label)

    train = [ex("tr", i, t, "positive") for i, t in enumerate(POS)]
    train += [ex("tr", 10 + i, t, "negative") for i, t in enumerate(NEG)]
    dev = [ex("dv", 0, "great ending", "positive"), ex("dv", 1, "awful ending", "negative"),
           ex("dv", 2, "boring ending", "negative"), ex("dv", 3, "lovely ending", "positive")]
    test = [ex("te", 0, "awful finale", "negative"), ex("te", 1, "wonderful finale", "positive")]
    return Task(name="toy", splits={"train": train, "dev": dev, "test": test},
                template="Review: {input}\nSentiment:", instructions="Say positive or negative.",
                labels=["negative", "positive"], kind="classification",
                verifier=LabelVerifier(labels=["negative", "positive"]))


def copy_last_demo(prompt: str, request) -> str:
    """A scripted 'model' that repeats the label of the demo right before the input."""
    found = re.findall(r"Sentiment: (positive|negative)", prompt)
    found += re.findall(r"assistant: (positive|negative)", prompt)
    if not found:
        return "positive"
    # the last label written before the final question
    positions = [(prompt.rfind(f"Sentiment: {w}"), w) for w in ("positive", "negative")]
    positions += [(prompt.rfind(f"assistant: {w}"), w) for w in ("positive", "negative")]
    return max(positions)[1]


def test_knn_selector_picks_nearest_and_excludes_self() -> None:
    task = toy_task()
    sel = KnnSelector(task.splits["train"], embedder=HashEmbedder(dim=128))
    q = Example(id="q", input="awful ending")
    picked = sel.select(q, 2)
    assert picked[0].input == "awful plot" or picked[0].input == "awful dialogue"
    assert all(p.answer == "negative" for p in picked)
    own = task.splits["train"][0]
    assert own.id not in [p.id for p in sel.select(own, 9)]


def test_balanced_variant_mixes_labels() -> None:
    task = toy_task()
    plain = KnnSelector(task.splits["train"], embedder=HashEmbedder(dim=128))
    bal = KnnSelector(task.splits["train"], embedder=HashEmbedder(dim=128), balanced=True)
    q = Example(id="q", input="awful boring dull film")
    assert [p.answer for p in plain.select(q, 4)].count("negative") == 4
    labels = [p.answer for p in bal.select(q, 4)]
    assert labels.count("negative") == 2 and labels.count("positive") == 2


def test_order_nearest_last_in_prompt() -> None:
    task = toy_task()
    sel = KnnSelector(task.splits["train"], embedder=HashEmbedder(dim=128))
    q = Example(id="q", input="awful ending")
    nearest = sel.select(q, 3)[0]
    last = DemoSolver(ScriptedLM(), sel, k=3, prompt_format="completion")
    first = DemoSolver(ScriptedLM(), sel, k=3, prompt_format="completion",
                       order="nearest_first")
    p_last = last.build_requests(task, [q])[0][0].prompt
    p_first = first.build_requests(task, [q])[0][0].prompt
    assert p_last.rfind(nearest.text) > max(p_last.rfind(d.text) for d in sel.select(q, 3)[1:])
    assert p_first.find(nearest.text) < min(p_first.find(d.text) for d in sel.select(q, 3)[1:])
    assert p_last.endswith("Review: awful ending\nSentiment:")


def test_chat_format_has_one_turn_per_demo() -> None:
    task = toy_task()
    sel = RandomSelector(task.splits["train"], seed=0)
    req = DemoSolver(ScriptedLM(), sel, k=2, prompt_format="chat").build_requests(
        task, task.splits["test"][:1])[0][0]
    roles = [m.role for m in req.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert req.messages[0].content.startswith("Say positive or negative.")


def test_knn_demos_fit_beats_zero_shot_and_round_trips(tmp_path) -> None:
    task = toy_task()
    lm = ScriptedLM(copy_last_demo)
    zs = DemoSolver(lm, None, k=0)
    _, base = run_solver(zs, task, task.splits["dev"])
    method = KnnDemos(KnnDemosConfig(k=2, format_candidates=None),
                      resources=MethodResources(embedder=HashEmbedder(128)))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert method.report.notes["dev_accuracy"] == 1.0 > sum(base) / len(base)
    assert method.report.lm_calls == len(task.splits["dev"])
    assert method.report.usage.prompt_tokens > 0
    # JSON round trip through the harness's loader: same prompts, same answers.
    data = solver.to_json()
    assert data["kind"] == "demos" and data["state"]["selector"]["state"]["embedder"] == "hash:128"
    again = load_solver(data, lm=lm)
    assert isinstance(again, DemoSolver)
    a1 = solver.solve(task, task.splits["test"])
    a2 = again.solve(task, task.splits["test"])
    assert [a.prompt for a in a1] == [a.prompt for a in a2]
    assert [a.output for a in a1] == ["negative", "positive"]
    assert a1[0].meta["k"] == 2 and len(a1[0].meta["demos"]) == 2


def test_k_chosen_on_dev_and_ties_prefer_fewer_demos() -> None:
    task = toy_task()
    lm = ScriptedLM(copy_last_demo)
    method = KnnDemos(KnnDemosConfig(k_candidates=[1, 2, 4], try_balanced=True,
                                     format_candidates=None),
                      resources=MethodResources(embedder=HashEmbedder(128)))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    table = method.report.notes["candidates"]
    assert len(table) == 6
    best = max(r["dev_accuracy"] for r in table)
    assert solver.k == min(r["k"] for r in table if r["dev_accuracy"] == best)


def test_prompt_format_chosen_on_dev_and_saved() -> None:
    """A model that copies demos only from plain-completion prompts: dev picks completion."""
    task = toy_task()

    def completion_only(prompt: str, request) -> str:
        return "positive" if "assistant:" in prompt else copy_last_demo(prompt, request)

    lm = ScriptedLM(completion_only)
    method = KnnDemos(KnnDemosConfig(k=2, format_candidates=["chat", "completion"]),
                      resources=MethodResources(embedder=HashEmbedder(128)))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    table = method.report.notes["candidates"]
    assert [(r["prompt_format"], r["dev_accuracy"]) for r in table] == [
        ("chat", 0.5), ("completion", 1.0)]
    assert solver.prompt_format == "completion" == method.report.notes["prompt_format"]
    assert load_solver(solver.to_json(), lm=lm).prompt_format == "completion"
    assert [a.output for a in solver.solve(task, task.splits["test"])] == [
        "negative", "positive"]


def test_bare_completion_prompt_chosen_on_dev_when_no_worse() -> None:
    """try_no_instructions: a tie on dev goes to the shorter, instruction-free prompt."""
    task = toy_task()
    lm = ScriptedLM(copy_last_demo)
    method = KnnDemos(KnnDemosConfig(k=2, format_candidates=["chat", "completion"],
                                     try_no_instructions=True),
                      resources=MethodResources(embedder=HashEmbedder(128)))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    table = method.report.notes["candidates"]
    # no bare chat candidate: only completion prompts go without instructions
    assert [(r["prompt_format"], r["instructions"]) for r in table] == [
        ("chat", True), ("completion", True), ("completion", False)]
    with_ins, bare = table[1], table[2]
    assert with_ins["dev_accuracy"] == bare["dev_accuracy"] == 1.0
    assert bare["prompt_tokens"] < with_ins["prompt_tokens"]
    assert solver.instructions == "" and method.report.notes["instructions"] is False
    prompt = solver.build_requests(task, task.splits["test"][:1])[0][0].prompt
    assert "Say positive or negative." not in prompt and prompt.startswith("Review:")
    again = load_solver(solver.to_json(), lm=lm)
    assert again.build_requests(task, task.splits["test"][:1])[0][0].prompt == prompt


def test_instructions_kept_when_dev_needs_them() -> None:
    task = toy_task()

    def needs_instructions(prompt: str, request) -> str:
        return copy_last_demo(prompt, request) if "Say positive" in prompt else "positive"

    lm = ScriptedLM(needs_instructions)
    method = KnnDemos(KnnDemosConfig(k=2, prompt_format="completion", try_no_instructions=True),
                      resources=MethodResources(embedder=HashEmbedder(128)))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert solver.instructions is None and method.report.notes["instructions"] is True
    with pytest.raises(MethodError, match="try_no_instructions applies to the plain-completion"):
        KnnDemos(KnnDemosConfig(prompt_format="chat", try_no_instructions=True,
                                format_candidates=None),
                 resources=MethodResources(embedder=HashEmbedder(64))).fit(
            ZeroShot(lm), task, task.splits["train"], task.splits["dev"])


def test_chat_format_candidate_needs_a_chat_model() -> None:
    task = toy_task()
    lm = ScriptedLM(copy_last_demo)
    lm.chat = False
    with pytest.raises(MethodError, match="knn_demos: format_candidates lists 'chat'"):
        KnnDemos(KnnDemosConfig(format_candidates=["chat", "completion"]),
                 resources=MethodResources(embedder=HashEmbedder(64))).fit(
            ZeroShot(lm), task, task.splits["train"], task.splits["dev"])


def test_k_overrides_and_context_trimming() -> None:
    task = toy_task()
    lm = ScriptedLM(copy_last_demo)
    lm.context_window = 40  # tiny window: demos must be dropped to fit
    sel = KnnSelector(task.splits["train"], embedder=HashEmbedder(dim=128))
    solver = DemoSolver(lm, sel, k=8, k_overrides={"te1": 1}, prompt_format="completion",
                        max_tokens=4)
    atts = solver.solve(task, task.splits["test"])
    assert atts[1].meta["k"] <= 1
    for a in atts:
        assert lm.count_tokens(a.prompt) <= 40 - 4


def test_bad_requests_are_method_errors() -> None:
    task = toy_task()
    gen = Task(name="gen", splits=task.splits, verifier=ExactVerifier())
    with pytest.raises(MethodError, match=r"knn_demos.*balanced"):
        KnnDemos(KnnDemosConfig(balanced=True),
                 resources=MethodResources(embedder=HashEmbedder(64))).fit(
            ZeroShot(ScriptedLM()), gen, gen.splits["train"])
    with pytest.raises(MethodError, match=r"knn_demos.*no training examples"):
        KnnDemos(resources=MethodResources(embedder=HashEmbedder(64))).fit(
            ZeroShot(ScriptedLM()), task, [Example(id="x", input="a")])
    with pytest.raises(MethodError, match="knn_demos: bad option 'kk'"):
        build_method("knn_demos", {"kk": 3})
    with pytest.raises(MethodError, match="knn_demos: bad option 'k'"):
        build_method("knn_demos", {"k": 0})


@pytest.mark.slow
def test_knn_demos_with_the_embedded_model_on_sst2(tmp_path) -> None:
    """Real SmolLM2 + MiniLM: knn_demos on 20 sst2 test inputs, saved and reloaded."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sentence_transformers")
    from metaskill.lm import load_lm
    from metaskill.skills.embed import load_embedder
    from metaskill.tasks import get_task

    task = get_task("sst2")
    lm = load_lm("local", cache=False, n_threads=1)  # 1 thread: fastest on a busy machine
    embedder = load_embedder("minilm")
    method = KnnDemos(KnnDemosConfig(k=4), resources=MethodResources(embedder=embedder))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], None)
    test = task.splits["test"][:20]
    attempts, scores = run_solver(solver, task, test)
    assert all(a.meta["k"] == 4 and a.error is None for a in attempts)
    # the demos are the pool examples nearest by MiniLM, the nearest one last
    q = embedder.encode([test[0].text])[0]
    pool = {e.id: e for e in task.splits["train"]}
    sims = [float(embedder.encode([pool[i].text])[0] @ q) for i in attempts[0].meta["demos"]]
    assert sims == sorted(sims)
    others = embedder.encode([e.text for e in task.splits["train"]]) @ q
    assert min(sims) >= sorted(others.tolist())[-4] - 1e-5
    accuracy = sum(scores) / len(scores)
    assert accuracy >= 0.6, accuracy  # SmolLM2 with 4 nearest demos; chance is 0.5
    # the saved Solver reloads and answers the same (greedy decoding)
    again = load_solver(solver.to_json(), lm=lm)
    assert [a.output for a in again.solve(task, test[:5])] == [a.output for a in attempts[:5]]
