"""skill_demos: exemplars of the input's skills, clear errors, JSON round trip."""

from __future__ import annotations

import re

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.compose import MethodResources, build_method, fit_chain
from metaskill.methods.demos import DemoSolver
from metaskill.methods.skill_demos import SkillDemos, SkillDemosConfig, SkillSelector
from metaskill.skills.book import Skill, SkillBook
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier

OPS = {"add": lambda a, b: a + b, "multiply": lambda a, b: a * b,
       "subtract": lambda a, b: a - b}
SKILL = {"add": "addition", "multiply": "multiplication", "subtract": "subtraction"}


def ex(i: int, op: str, a: int, b: int, labelled: bool = True) -> Example:
    return Example(id=f"{op}{i}", input=f"{op} the numbers {a} and {b}",
                   answer=str(OPS[op](a, b)), skills=[SKILL[op]] if labelled else [])


def data() -> tuple[list[Example], list[Example]]:
    train = [ex(i, op, i + 2, i + 3) for op in OPS for i in range(4)]
    dev = [ex(10 + i, op, i + 5, 2, labelled=False) for op in OPS for i in range(2)]
    return train, dev


def task(train: list[Example], dev: list[Example]) -> Task:
    return Task(name="arith", splits={"train": train, "dev": dev}, template="Q: {input}\nA:",
                kind="generative", verifier=ExactVerifier())


def model(prompt: str, request) -> str:
    """Solves a question only if a demo of the same operation is in the prompt."""
    qs = re.findall(r"Q: (\w+) the numbers (\d+) and (\d+)", prompt)
    op, a, b = qs[-1]
    if sum(1 for q in qs[:-1] if q[0] == op) >= 1:
        return str(OPS[op](int(a), int(b)))
    return "0"


def test_selector_picks_exemplars_of_matched_skills() -> None:
    train, _ = data()
    res = MethodResources(embedder_spec="hash:128")
    solver = SkillDemos(SkillDemosConfig(k=2, skills_per_input=1), resources=res).fit(
        DemoSolver(ScriptedLM(model), None, k=0), task(train, []), train)
    q = Example(id="q", input="multiply the numbers 9 and 9", answer="WRONG")
    demos = solver.selector.select(q, 2)
    assert len(demos) == 2 and all(d.skills == ["multiplication"] for d in demos)
    assert solver.selector.last_skills["q"] == ["multiplication"]
    # the input itself is never a demo
    assert all(d.id != "multiply0" for d in solver.selector.select(train[4], 4))


def test_skill_demos_beat_zero_shot_on_dev_and_round_trip() -> None:
    train, dev = data()
    t = task(train, dev)
    lm = ScriptedLM(model)
    res = MethodResources(embedder_spec="hash:128")
    result = fit_chain(ZeroShot(lm), t, train, dev, [("skill_demos", {"k": 2})], resources=res)
    assert result.reports[0].notes["dev_accuracy"] == 1.0
    assert result.reports[0].notes["skills"] == 3
    zero = [a.output for a in ZeroShot(lm).solve(t, dev)]
    assert zero == ["0"] * len(dev)
    again = load_solver(result.solver.to_json(), lm=lm)
    assert isinstance(again.selector, SkillSelector)
    assert [a.output for a in again.solve(t, dev)] == [e.answer for e in dev]
    assert ([a.meta["demos"] for a in again.solve(t, dev)]
            == [a.meta["demos"] for a in result.solver.solve(t, dev)])


def test_uses_a_given_skillbook() -> None:
    train, dev = data()
    book = SkillBook(":memory:", embedder=HashEmbedder(128))
    book.add_skills([Skill(name="times", description="multiply numbers")])
    unlabelled = [e.model_copy(update={"skills": []}) for e in train]
    book.add_examples(unlabelled)
    book.label_many({e.id: ["times"] for e in unlabelled if e.id.startswith("multiply")})
    m = build_method("skill_demos", {"k": 1}, MethodResources(skillbook=book))
    s = m.fit(ZeroShot(ScriptedLM(model)), task(unlabelled, dev), unlabelled)
    assert s.selector.select(dev[2], 1)[0].id.startswith("multiply")


def test_without_skills_is_a_clear_error() -> None:
    train, dev = data()
    bare = [e.model_copy(update={"skills": []}) for e in train]
    m = SkillDemos(resources=MethodResources(embedder_spec="hash:64"))
    with pytest.raises(MethodError, match=r"skill_demos: needs skills.*SkillBook"):
        m.fit(ZeroShot(ScriptedLM(model)), task(bare, dev), bare)
    empty = SkillBook(":memory:", embedder=HashEmbedder(64))
    with pytest.raises(MethodError, match="skill_demos: the SkillBook has no skills"):
        SkillDemos(resources=MethodResources(skillbook=empty)).fit(
            ZeroShot(ScriptedLM(model)), task(bare, dev), bare)
    with pytest.raises(MethodError, match="skill_demos: bad option 'k'"):
        build_method("skill_demos", {"k": 0})
    with pytest.raises(MethodError, match="skill_demos: bad option 'nope'"):
        build_method("skill_demos", {"nope": 1})
