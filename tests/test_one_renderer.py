"""One prompt renderer, one scoring loop, Verifier.parse (issue 17, section 5)."""

from __future__ import annotations

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Request
from metaskill.eval.solver import render_prompt
from metaskill.eval.solvers import KShot, ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import MethodResources
from metaskill.methods.demos import (
    DemoConfig,
    DemoSolver,
    RandomSelector,
    parse_answer,
    run_solver,
)
from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task, Verdict, Verifier
from metaskill.tasks.verifiers import (
    ExactVerifier,
    LabelVerifier,
    NumericVerifier,
    RegexVerifier,
)

POS = ["great acting", "lovely music", "great story", "wonderful cast"]
NEG = ["awful plot", "boring scenes", "awful dialogue", "dull pacing"]


def toy_task(kind: str = "classification", instructions: str = "Say positive or negative.",
             verifier: Verifier | None = None) -> Task:
    train = [Example(id=f"p{i}", input=t, answer="positive") for i, t in enumerate(POS)]
    train += [Example(id=f"n{i}", input=t, answer="negative") for i, t in enumerate(NEG)]
    dev = [Example(id="d0", input="great ending", answer="positive"),
           Example(id="d1", input="awful ending", answer="negative"),
           Example(id="d2", input="boring ending", answer="negative"),
           Example(id="d3", input="lovely ending", answer="positive")]
    labels = ["negative", "positive"]
    return Task(name="toy", splits={"train": train, "dev": dev},
                template="Review: {input}\nSentiment:", instructions=instructions,
                labels=labels if kind != "generative" else None, kind=kind,  # type: ignore[arg-type]
                verifier=verifier or LabelVerifier(labels=labels))


# ---- one renderer ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["chat", "completion", "auto"])
@pytest.mark.parametrize("kind", ["classification", "generative"])
@pytest.mark.parametrize("instructions", ["Say positive or negative.", ""])
@pytest.mark.parametrize("override", [None, "Label the review."])
def test_demo_solver_and_k_shot_render_the_same_prompt(
    fmt: str, kind: str, instructions: str, override: str | None
) -> None:
    task = toy_task(kind, instructions)
    lm = ScriptedLM(default="positive")
    demo_solver = DemoSolver(lm, RandomSelector(task.splits["train"], seed=3), k=3,
                             prompt_format=fmt, order="nearest_first", instructions=override,
                             max_tokens=12, temperature=0.5, seed=7)
    q = task.splits["dev"][1]
    attempt = demo_solver.solve(task, [q])[0]
    by_id = {e.id: e for e in task.splits["train"]}
    demos = [by_id[i] for i in attempt.meta["demos"]]
    assert len(demos) == 3
    k_shot = KShot(lm, k=3, demos=demos, format=fmt, instructions=override, max_tokens=12,
                   temperature=0.5, seed=7)
    other = k_shot.solve(task, [q])[0]
    assert attempt.prompt == other.prompt
    # the whole request, not only the rendered text: stop strings, budget, sampling
    assert demo_solver.request_for(task, q, demos) == k_shot.request(task, q)
    assert demo_solver.config.k == 3 and demo_solver.k == 3


def test_zero_demos_render_as_zero_shot_and_the_renderer_is_shared() -> None:
    task = toy_task()
    lm = ScriptedLM(default="positive")
    q = task.splits["dev"][0]
    for fmt in ("chat", "completion"):
        zs = ZeroShot(lm, format=fmt)
        ds = DemoSolver(lm, None, k=0, prompt_format=fmt)
        assert zs.request(task, q) == ds.request_for(task, q, [])
        assert zs.context(task, q) == render_prompt(task, q, [], task.instructions,
                                                    chat=fmt == "chat")


def test_demo_solver_has_a_typed_config_that_round_trips() -> None:
    task = toy_task()
    cfg = DemoConfig(k=2, order="random", prompt_format="completion", seed=4)
    s = DemoSolver(ScriptedLM(default="positive"), RandomSelector(task.splits["train"]),
                   config=cfg)
    assert s.config == cfg and s.order == "random" and s.prompt_format == "completion"
    # keyword options override the config's fields
    assert DemoSolver(s.lm, s.selector, config=cfg, k=1).config.k == 1
    back = DemoSolver.from_state(s.state(), s.lm)
    assert back.config == s.config
    with pytest.raises(MethodError, match="demos: bad option 'order'"):
        DemoSolver(s.lm, s.selector, order="sideways")
    with pytest.raises(MethodError, match="demos: bad option 'k'"):
        DemoSolver(s.lm, s.selector, k=-1)
    with pytest.raises(MethodError, match="needs a demo selector"):
        DemoSolver(s.lm, None, k=2)


# ---- one scoring loop ----------------------------------------------------------------------
class FlakyLM(ScriptedLM):
    """A scripted LM that raises on any prompt holding ``trigger`` (a broken backend call)."""

    def __init__(self, trigger: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.trigger = trigger

    def _complete(self, requests: list[Request]) -> list:  # type: ignore[override]
        if any(self.trigger in self.prompt_of(r) for r in requests):
            raise RuntimeError("backend hiccup")
        return super()._complete(requests)


def test_a_failing_example_does_not_abort_run_solver() -> None:
    task = toy_task()
    lm = FlakyLM("boring ending", default="positive")
    solver = DemoSolver(lm, None, k=0, prompt_format="completion")
    attempts, scores = run_solver(solver, task, task.splits["dev"], batch_size=4)
    assert [a.example_id for a in attempts] == ["d0", "d1", "d2", "d3"]
    assert scores == [1.0, 0.0, 0.0, 1.0]
    assert attempts[2].error is not None and "backend hiccup" in attempts[2].error
    assert all(a.error is None for i, a in enumerate(attempts) if i != 2)


class PickyVerifier(LabelVerifier):
    """A label verifier that crashes on one example."""

    def verify(self, output: str, example: Example) -> Verdict:
        if example.id == "d1":
            raise ValueError("scorer crashed")
        return super().verify(output, example)


def test_a_failing_example_does_not_abort_a_fit() -> None:
    labels = ["negative", "positive"]
    task = toy_task(verifier=PickyVerifier(labels=labels))
    lm = FlakyLM("boring ending", default="positive")
    method = KnnDemos(KnnDemosConfig(k=2, prompt_format="completion", format_candidates=None,
                                     k_candidates=[1, 2]),
                      resources=MethodResources(embedder=HashEmbedder(dim=64)))
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert isinstance(solver, DemoSolver)
    # d1 (the verifier crashes) and d2 (the LM crashes) count as wrong; the fit went on
    for row in method.report.notes["candidates"]:
        assert row["dev_accuracy"] == 0.5


# ---- Verifier.parse ------------------------------------------------------------------------
def test_verifier_parse_never_reads_the_reference() -> None:
    ex = Example(id="1", input="q", answer="42", metadata={"answers": ["forty-two"]})
    assert NumericVerifier().parse("it is $1,200 or #### 41", ex) == "41"
    assert NumericVerifier().parse("no digits", ex) is None
    assert RegexVerifier(pattern=r"ANSWER: (\w+)").parse("ANSWER: Blue", ex) == "Blue"
    assert ExactVerifier(first_line=True).parse("Paris.\nmore", ex) == "paris"
    assert LabelVerifier(["no", "yes"]).parse("YES!", ex) == "yes"

    seen: list[Example] = []

    class Spy(Verifier):
        def verify(self, output: str, example: Example) -> Verdict:
            seen.append(example)
            return Verdict(score=0.0, parsed=output.strip().upper())

    assert Spy().parse(" ok ", ex) == "OK"
    assert seen[0].answer is None and "answers" not in seen[0].metadata


def test_parse_answer_goes_through_the_verifier() -> None:
    ex = Example(id="1", input="q", answer="7")
    numeric = toy_task("generative", verifier=NumericVerifier())
    assert parse_answer(numeric, "so 3 + 4 = 7.0", ex) == "7"
    assert parse_answer(numeric, "No idea\nat all", ex) == "no idea"  # nothing parsed
    labels = toy_task()
    assert parse_answer(labels, "Clearly POSITIVE.", ex) == "positive"
    assert parse_answer(labels, "unsure", ex) == ""  # names no label

    class Broken(Verifier):
        def verify(self, output: str, example: Example) -> Verdict:
            raise RuntimeError("needs the reference")

    broken = toy_task(verifier=Broken())
    assert parse_answer(broken, " First line\nsecond", ex) == "first line"


# ---- one config base for the demo methods --------------------------------------------------
def test_demo_methods_share_one_prompt_config_base() -> None:
    from metaskill.methods.demos import DemoPromptConfig
    from metaskill.methods.raml import RamlConfig
    from metaskill.methods.skill_demos import SkillDemosConfig

    shared = {"prompt_format", "format_candidates", "try_no_instructions", "max_dev"}
    for cfg in (KnnDemosConfig, RamlConfig, SkillDemosConfig):
        assert issubclass(cfg, DemoPromptConfig)
        assert shared <= set(cfg.model_fields)
    assert SkillDemosConfig(max_dev=2).dev_subset(toy_task().splits["dev"])[-1].id == "d1"


def skill_task() -> Task:
    train = [Example(id=f"p{i}", input=t, answer="positive", skills=["praise"])
             for i, t in enumerate(POS)]
    train += [Example(id=f"n{i}", input=t, answer="negative", skills=["complaint"])
              for i, t in enumerate(NEG)]
    task = toy_task()
    return task.model_copy(update={"splits": {"train": train, "dev": task.splits["dev"]}})


def chat_only_reader(prompt: str, request: Request) -> str:
    """Right with a plain-completion prompt (it reads the input's own words), wrong in chat."""
    if request.messages is not None:
        return "positive"
    last = prompt.rsplit("Review:", 1)[-1]
    return "negative" if any(w in last for w in ("awful", "boring")) else "positive"


def test_skill_demos_chooses_the_prompt_format_on_dev() -> None:
    from metaskill.methods.skill_demos import SkillDemos, SkillDemosConfig

    task = skill_task()
    res = MethodResources(embedder=HashEmbedder(dim=64))
    lm = ScriptedLM(chat_only_reader)
    method = SkillDemos(SkillDemosConfig(k=2, format_candidates=["chat", "completion"]),
                        resources=res)
    solver = method.fit(ZeroShot(lm), task, task.splits["train"], task.splits["dev"])
    assert solver.prompt_format == "completion"
    table = method.report.notes["candidates"]
    assert [r["prompt_format"] for r in table] == ["chat", "completion"]
    assert table[0]["dev_accuracy"] == 0.5 and table[1]["dev_accuracy"] == 1.0
    assert method.report.notes["dev_accuracy"] == 1.0
    # one variant (the default): no candidate table, the incoming format is kept
    plain = SkillDemos(SkillDemosConfig(k=2), resources=res)
    assert plain.fit(ZeroShot(lm, format="chat"), task, task.splits["train"],
                     task.splits["dev"]).prompt_format == "chat"
    assert "candidates" not in plain.report.notes


def test_raml_takes_prompt_format_from_the_shared_base() -> None:
    from metaskill.methods.raml import Raml, RamlConfig

    task = toy_task()
    res = MethodResources(embedder=HashEmbedder(dim=64))
    cfg = RamlConfig(prompt_format="completion", format_candidates=None,
                     try_no_instructions=False, k_candidates=None, k=0, weights=[0.5])
    solver = Raml(cfg, resources=res).fit(ZeroShot(ScriptedLM(default="positive"),
                                                   format="chat"),
                                          task, task.splits["train"], task.splits["dev"])
    assert solver.prompt_format == "completion" and not solver.uses_chat()
