"""Missing-Skill Profile with a ScriptedLM solver and teacher on a tiny task."""

from __future__ import annotations

import io
import re

import pytest

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Completion, Example, Sample
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.skills.book import Skill, SkillBook
from metaskill.skills.discover import discover_from_labels
from metaskill.skills.embed import HashEmbedder
from metaskill.skills.profile import (
    Profile,
    ProfileConfig,
    apply_to_book,
    build_profile,
    print_profile,
    profile_section,
    profile_section_builder,
    profile_section_html,
)
from metaskill.tasks.base import Task, Verdict, Verifier

CFG = ProfileConfig(progress=False)


class Exact(Verifier):
    name = "exact"

    def verify(self, output, example):
        ok = output.strip() == (example.answer or "")
        return Verdict(score=float(ok), reason="match" if ok else "mismatch",
                       parsed=output.strip())


def _task() -> Task:
    def ex(i, q, a, skill):
        return Example(id=i, input=q, answer=a, skills=[skill])

    train = [ex("t1", "What is 2 plus 2?", "4", "addition"),
             ex("t2", "What is 3 times 3?", "9", "multiplication"),
             ex("t3", "Sort: b a", "a b", "sorting")]
    dev = [ex("d1", "What is 5 plus 1?", "6", "addition"),
           ex("d2", "What is 7 plus 2?", "9", "addition"),
           ex("d3", "What is 4 times 2?", "8", "multiplication"),
           ex("d4", "What is 6 times 3?", "18", "multiplication"),
           ex("d5", "Sort: c b a", "a b c", "sorting")]
    return Task(name="toy", splits={"train": train, "dev": dev}, verifier=Exact(),
                template="{input}")


# the model adds correctly, fails multiplication and sorting
MODEL = ScriptedLM({"5 plus 1": "6", "7 plus 2": "9", "4 times 2": "6", "6 times 3": "9",
                    "Sort: c b a": "c b a"}, default="?")


def _book(task: Task) -> SkillBook:
    book = discover_from_labels(task.examples("train"), SkillBook(embedder=HashEmbedder(128)),
                                task_name="toy")
    book.add_skill(Skill(name="carrying", description="carry digits when multiplying"))
    return book


def _teacher_script(prompt: str, request) -> str:
    if request.json_schema is not None:  # a teacher that enforces JSON schemas
        if "Which 1 to 3 of these skills" not in prompt or "Sort:" in prompt:
            return "I really could not say."  # breaks the schema, also on the retry
        return '{"skills": ["multiplication", "carrying"]}'
    if "Which 1 to 3 skills" not in prompt:
        return "?"
    nums = {m.group(2): m.group(1) for m in re.finditer(r"^(\d+)\. (\w+):", prompt, re.M)}
    if "Sort:" in prompt:
        return "I really could not say."  # unparseable, also on retry
    return f"{nums['multiplication']}, {nums['carrying']}"


def test_profile_without_teacher_uses_labels():
    task = _task()
    p = build_profile(ZeroShot(MODEL), task, config=CFG)
    assert p.n == 5 and p.n_difficult == 3 and p.accuracy == pytest.approx(0.4)
    assert p.teacher is None
    assert {d.example_id for d in p.difficult} == {"d3", "d4", "d5"}
    assert all(d.source == "labels" for d in p.difficult)
    mult = p.skill("multiplication")
    assert (mult.n, mult.accuracy, mult.missing) == (2, 0.0, 2)
    assert mult.missing_rate == pytest.approx(2 / 3)
    assert p.skill("addition").accuracy == 1.0 and p.skill("addition").missing_rate == 0
    assert [s.skill for s in p.weakest()] == ["multiplication", "sorting", "addition"]


class FreeTextLM(ScriptedLM):
    """A teacher backend without JSON-schema support: the free-text path."""

    constraints = frozenset()


@pytest.mark.parametrize("teacher_cls", [ScriptedLM, FreeTextLM], ids=["json", "free_text"])
def test_profile_with_teacher_and_book(tmp_path, teacher_cls):
    task = _task()
    book = _book(task)
    teacher = teacher_cls(_teacher_script)
    p = build_profile(ZeroShot(MODEL), task, book=book, teacher=teacher, config=CFG)
    by_id = {d.example_id: d for d in p.difficult}
    assert by_id["d3"].missing == ["multiplication", "carrying"]
    assert by_id["d3"].source == "teacher"
    # unparseable teacher answer: asked twice, then the example's own labels
    assert by_id["d5"].missing == ["sorting"]
    assert by_id["d5"].source == "labels_after_unparseable_teacher"
    assert sum("Sort: c b a" in c for c in teacher.calls) == 2
    assert p.teacher_log["unparseable"] == 1
    carrying = p.skill("carrying")
    assert carrying.n == 0 and carrying.accuracy is None
    assert carrying.missing_rate == pytest.approx(2 / 3)
    # dev examples are not in the book: labels come from Example.skills mapped on the book
    assert by_id["d3"].skills == ["multiplication"]
    # the teacher saw the question, the model's answer and the reference
    first = next(c for c in teacher.calls if "4 times 2" in c)
    assert "Student's answer: 6" in first and "Reference answer: 8" in first

    # save / load round trip
    path = p.save(tmp_path / "profile.json")
    q = Profile.load(path)
    assert q == p
    # write stats into the book
    assert apply_to_book(p, book) >= 3
    assert book.get("multiplication").stats.accuracy == 0.0
    assert book.get("carrying").stats.missing_rate == pytest.approx(2 / 3)


def test_profile_reuses_a_run_and_labels_unlabelled_examples_by_embedding():
    from metaskill.eval.harness import evaluate

    task = _task()
    unl = [e.model_copy(update={"skills": []}) for e in task.examples("dev")]
    task2 = task.model_copy(update={"splits": {"train": task.splits["train"], "dev": unl}})
    run = evaluate(ZeroShot(MODEL), task2, "dev", progress=False)
    book = _book(task)
    p = build_profile(ZeroShot(MODEL), task2, book=book, config=CFG, run=run)
    assert p.run_id == run.id
    assert p.skill("addition").n >= 1  # nearest skill by embedding


class Wobbly(ScriptedLM):
    """Samples disagree on questions mentioning 'poem'."""

    def _complete(self, requests):
        out = []
        for r in requests:
            prompt = self.prompt_of(r)
            self.calls.append(prompt)
            if "poem" in prompt:
                texts = [f"line {i}" for i in range(r.n)]
            else:
                texts = ["same"] * r.n
            out.append(Completion(samples=[Sample(text=t) for t in texts]))
        return out


def test_reference_less_examples_use_sample_disagreement():
    dev = [Example(id="a", input="Write a poem", skills=["poetry"]),
           Example(id="b", input="Say the word same", skills=["copying"])]
    task = Task(name="open", splits={"dev": dev}, verifier=Exact())
    p = build_profile(ZeroShot(Wobbly()), task, config=CFG)
    assert [d.example_id for d in p.difficult] == ["a"]
    assert "agree" in p.difficult[0].reason
    assert p.skill("copying").accuracy == 1.0 and p.skill("poetry").accuracy == 0.0


def test_display_and_html():
    task = _task()
    p = build_profile(ZeroShot(MODEL), task, config=CFG)
    from rich.console import Console

    buf = io.StringIO()
    print_profile(p, Console(file=buf, width=120))
    text = buf.getvalue()
    assert text.index("multiplication") < text.index("addition")
    body = profile_section_html(p)
    assert "<svg" in body and "multiplication" in body and "d3" in body
    sec = profile_section(p)
    assert sec.id == "profile-toy"
    from metaskill.eval.report import DEFAULT_SECTIONS, render_html

    page = render_html([], sections=(*DEFAULT_SECTIONS, profile_section_builder(p)))
    assert "Missing-Skill Profile (toy)" in page


def test_load_errors(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"kind": "other"}')
    with pytest.raises(MetaskillError, match="not a metaskill profile"):
        Profile.load(f)
    f.write_text('{"kind": "metaskill.profile", "schema_version": 7, "task": "t"}')
    with pytest.raises(MetaskillError, match="schema version 7"):
        Profile.load(f)
    with pytest.raises(MetaskillError, match="not found"):
        Profile.load(tmp_path / "none.json")
