"""STAT-Sel and STAT-Syn data construction (scripted teacher, fake generator)."""

from __future__ import annotations

from collections import Counter

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Request
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.sft import uniform_sample
from metaskill.methods.stat import (
    stat_sel,
    stat_syn_procedural,
    stat_syn_teacher,
)
from metaskill.skills.profile import DifficultExample, Profile
from metaskill.tasks.base import Task, Verdict, Verifier


class Exact(Verifier):
    name = "exact"

    def verify(self, output: str, example: Example) -> Verdict:
        return Verdict(score=float(output.strip() == example.answer))


TRAIN = [Example(id=f"{s}{i}", input=f"{s} problem {i}", answer=str(i), skills=[s])
         for s in ("add", "sub", "mul") for i in range(5)]
TASK = Task(name="arith", splits={"train": TRAIN}, verifier=Exact())


def profile(missing: list[list[str]]) -> Profile:
    return Profile(task="arith", difficult=[
        DifficultExample(example_id=f"d{i}", question="q", output="x", missing=m)
        for i, m in enumerate(missing)])


def test_sel_weights_by_missing_rate() -> None:
    p = profile([["add"], ["add"], ["add", "sub"]])
    data = stat_sel(p, TRAIN, per_pair=2, seed=0)
    assert Counter(e.skills[0] for e in data) == {"add": 6, "sub": 2}
    assert len({e.id for e in data if e.skills == ["add"]}) == 5  # pool used before repeats
    assert stat_sel(p, TRAIN, per_pair=2, seed=0) == data  # seeded
    # a limit keeps a random subset, not the first pairs' examples: both skills stay
    cut = [e.skills[0] for e in stat_sel(p, TRAIN, per_pair=8, seed=0, limit=12)]
    assert len(cut) == 12 and set(cut) == {"add", "sub"}
    with pytest.raises(MethodError, match="limit must be at least 1"):
        stat_sel(p, TRAIN, limit=0)
    with pytest.raises(MethodError, match="no difficult example"):
        stat_sel(profile([]), TRAIN)
    with pytest.raises(MethodError, match="no training example has any"):
        stat_sel(profile([["div"]]), TRAIN)


def test_uniform_baseline_same_size() -> None:
    data = uniform_sample(TRAIN, 8, seed=1)
    assert len(data) == 8 and len({e.id for e in data}) == 8


def test_syn_teacher_keeps_only_agreeing_questions() -> None:
    def teacher(prompt: str, request: Request) -> str:
        if "Write ONE new problem" in prompt:
            return "add problem 77" if "add" in prompt else "sub problem 99"
        # Solutions: 'add' questions get consistent answers, 'sub' ones disagree.
        if "add problem 77" in prompt:
            return "77"
        return f"guess {request.seed}"

    lm = ScriptedLM(teacher)
    p = profile([["add"], ["sub"]])
    data, stats = stat_syn_teacher(lm, TASK, p, TRAIN, per_pair=1, solutions=3)
    assert stats == {"proposed": 2, "kept": 1, "rejected": 1}
    assert data[0].input == "add problem 77" and data[0].answer == "77"
    assert data[0].skills == ["add"] and data[0].metadata["agreement"] == "3/3"


def test_syn_procedural_uses_the_skill_generator() -> None:
    calls = []

    def gen(skill: str, n: int, seed: int) -> list[Example]:
        calls.append((skill, n, seed))
        return [Example(id=f"{skill}-{i}", input="q", answer="a", skills=[skill])
                for i in range(n)]

    data = stat_syn_procedural(profile([["mul"], ["mul", "add"]]), gen, per_pair=3, seed=5)
    assert calls == [("add", 3, 5), ("mul", 6, 5)]
    assert len(data) == 9
