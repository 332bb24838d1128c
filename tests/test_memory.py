"""Experience memory: distillation, retrieval into the prompt, counters, demotion,
persistence across processes (scripted fake LM, hash embedder); one real-model test."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metaskill.core.types import Example, Request
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.base import MethodResources
from metaskill.methods.compose import build_method
from metaskill.methods.memory import (
    NOTES_HEADER,
    Memory,
    MemoryConfig,
    MemorySolver,
    distill_notes,
)
from metaskill.skills.embed import HashEmbedder
from metaskill.skills.knowledge import DemotionRule, KnowledgeBase, NoteDraft
from metaskill.tasks.base import Task, Verdict, Verifier

LESSON = "write the sum as digits only, e.g. 7"


class Exact(Verifier):
    def verify(self, output: str, example: Example) -> Verdict:
        return Verdict(score=float(output.strip() == (example.answer or "")))


def sums(n: int, start: int = 0) -> list[Example]:
    return [Example(id=f"s{i}", input=f"What is {i} plus {i + 1}?", answer=str(2 * i + 1))
            for i in range(start, start + n)]


def make_task(dev: list[Example], test: list[Example] | None = None) -> Task:
    return Task(name="sums", splits={"train": [], "dev": dev, "test": test or []},
                verifier=Exact(), instructions="Add the numbers.")


def learner(note_reply: str = json.dumps({"note": LESSON})) -> ScriptedLM:
    """Answers right only when the lesson is in its prompt; distils ``note_reply``."""

    def script(prompt: str, request: Request) -> str:
        if "notebook of lessons" in prompt:
            assert request.json_schema is not None  # the note is a constrained reply
            return note_reply
        if "What is " not in prompt:
            return "no idea"
        q = prompt.rsplit("What is ", 1)[1]
        a, b = (int(x) for x in q.split("?")[0].split(" plus "))
        return str(a + b) if LESSON in prompt else f"the sum is {a + b}"

    return ScriptedLM(script)


def memory(tmp_path: Path, **cfg) -> Memory:
    return Memory(MemoryConfig(path=str(tmp_path / "kb.sqlite"), **cfg),
                  resources=MethodResources(embedder=HashEmbedder(64)))


# ---- distillation -------------------------------------------------------------------------
def test_valid_structured_note_is_stored_as_the_lms() -> None:
    ex = sums(1)[0]
    drafts, spent = distill_notes(learner(), [(ex, _attempt(ex, "the sum is 1"), False, "add")],
                                  "sums")
    d = drafts[0]
    assert (d.source, d.text, d.error, d.verified) == ("lm", LESSON, None, False)
    assert d.skill == "add" and d.key == ex.text and d.task == "sums" and d.example_id == "s0"
    assert spent["calls"] == 1 and spent["usage"].completion_tokens > 0


@pytest.mark.parametrize("reply", ["no json here", json.dumps({"note": "short"}),
                                   json.dumps({"note": "x" * 500}), json.dumps({"n": LESSON})])
def test_invalid_note_falls_back_to_the_template_and_says_why(reply: str) -> None:
    ex = sums(1)[0]
    a = _attempt(ex, "the sum is 1", meta={"tool_calls": [
        {"tool": "calculator", "args": {"expression": "0+1"}, "result": "1"}]})
    drafts, spent = distill_notes(learner(reply), [(ex, a, False, "add")], "sums",
                                  max_chars=150)
    d = drafts[0]
    assert d.source == "template" and d.error and "JSON schema" in d.error
    assert spent["calls"] == 2  # LM.complete asked again once (the retry) before giving up
    assert d.text.startswith("For add questions like 'What is 0 plus 1?'")
    assert "calculator(0+1) -> 1" in d.text and "failed; the answer was '1'" in d.text
    assert len(d.text) <= 150


def test_a_valid_but_degenerate_note_falls_back_to_the_template() -> None:
    ex = sums(1)[0]
    reply = json.dumps({"note": "The answer is 1. The answer is 1. The answer is 1."})
    drafts, _ = distill_notes(learner(reply), [(ex, _attempt(ex, "2"), False, "add")], "sums")
    assert drafts[0].source == "template" and drafts[0].error == "the note repeats itself"


def test_template_only_distillation_calls_no_lm() -> None:
    ex = sums(1)[0]
    lm = learner()
    drafts, spent = distill_notes(lm, [(ex, _attempt(ex, "1"), True, "add")], "sums",
                                  use_lm=False)
    assert lm.calls == [] and spent["calls"] == 0
    assert drafts[0].source == "template" and drafts[0].error == "distill=template"
    assert "was verified correct" in drafts[0].text


# ---- fit: learning, retrieval into the prompt, counters -----------------------------------
def test_fit_learns_a_note_that_later_inputs_retrieve_and_that_helps(tmp_path: Path) -> None:
    task = make_task(sums(6), test=sums(2, start=50))
    m = memory(tmp_path, batch_size=2, min_similarity=0.0)
    solver = m.fit(ZeroShot(learner()), task, [], task.examples("dev"))
    rep = m.report.notes
    # batch 1 has no notes and fails; it distils the lesson; batches 2-3 retrieve it
    assert rep["dev_accuracy"] == pytest.approx(4 / 6)
    assert rep["lm_notes"] == 6 and rep["template_notes"] == 0
    assert rep["notes_added"] == 1  # the same lesson is stored once (skill, text unique)
    assert rep["shown"] == 4
    kb = KnowledgeBase(tmp_path / "kb.sqlite")
    (note,) = kb.notes()
    assert (note.text, note.skill, note.task, note.source) == (LESSON, "sums", "sums", "lm")
    assert (note.retrieved, note.helped) == (4, 4)
    # a new input gets the note in its prompt; answering never changes the counters
    attempts = solver.solve(task, task.examples("test"))
    assert [a.output for a in attempts] == ["101", "103"]
    for a in attempts:
        assert NOTES_HEADER in a.prompt and LESSON in a.prompt
        assert a.meta["memory_notes"] == [note.id] and a.meta["memory_shown"] is True
    assert kb.get(note.id).retrieved == 4


def test_without_memory_the_same_inputs_fail(tmp_path: Path) -> None:
    task = make_task(sums(2), test=sums(2, start=50))
    solver = memory(tmp_path, learn=False).fit(ZeroShot(learner()), task, [],
                                               task.examples("dev"))
    attempts = solver.solve(task, task.examples("test"))
    assert all(NOTES_HEADER not in a.prompt for a in attempts)
    assert [a.meta["memory_notes"] for a in attempts] == [[], []]
    assert [a.output for a in attempts] == ["the sum is 101", "the sum is 103"]


def test_dissimilar_notes_are_not_shown(tmp_path: Path) -> None:
    task = make_task(sums(2))
    solver = memory(tmp_path, min_similarity=0.5).fit(ZeroShot(learner()), task, [],
                                                      task.examples("dev"))
    other = Example(id="o", input="Sort these words: zebra, apple, mango")
    (a,) = solver.solve(task, [other])
    assert a.meta["memory_notes"] == [] and NOTES_HEADER not in a.prompt


def test_notes_that_the_prompt_does_not_show_are_not_counted(tmp_path: Path) -> None:
    kb_path = tmp_path / "kb.sqlite"
    kb = KnowledgeBase(kb_path, embedder=HashEmbedder(64))
    kb.add(NoteDraft(skill="sums", text=LESSON, key="What is 1 plus 2?", task="sums"))
    task = make_task(sums(3))
    bare = ZeroShot(learner(), instructions="")  # replaces the task's instructions
    m = memory(tmp_path, min_similarity=0.0)
    m.fit(bare, task, [], task.examples("dev"))
    assert m.report.notes["shown"] == 0
    assert kb.notes()[0].retrieved == 0


def test_the_solver_saves_and_reloads_reading_the_same_knowledge_base(tmp_path: Path) -> None:
    task = make_task(sums(4), test=sums(1, start=70))
    solver = memory(tmp_path, min_similarity=0.0, k=2).fit(
        ZeroShot(learner()), task, [], task.examples("dev"))
    data = json.loads(json.dumps(solver.to_json()))
    assert data["kind"] == "memory" and data["state"]["embedder"] == "hash:64"
    back = load_solver(data, lm=learner())
    assert isinstance(back, MemorySolver) and back.state() == solver.state()
    assert back.solve(task, task.examples("test"))[0].output == "141"


def test_memory_is_built_by_name_like_every_method(tmp_path: Path) -> None:
    m = build_method("memory", {"path": str(tmp_path / "kb.sqlite"), "k": 2},
                     MethodResources(embedder=HashEmbedder(64)))
    assert isinstance(m, Memory) and m.config.k == 2


def test_default_path_is_under_metaskill_home(tmp_home: Path) -> None:
    task = make_task(sums(1))
    Memory(resources=MethodResources(embedder=HashEmbedder(64))).fit(
        ZeroShot(learner()), task, [], task.examples("dev"))
    assert len(KnowledgeBase(tmp_home / "memory.sqlite")) == 1


# ---- demotion -------------------------------------------------------------------------------
def test_notes_that_stop_helping_are_demoted_and_hidden(tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb.sqlite", embedder=HashEmbedder(64),
                       rule=DemotionRule(after=3, below=0.5))
    good, bad = kb.add_many([
        NoteDraft(skill="sums", text="good note", key="What is 1 plus 2?"),
        NoteDraft(skill="sums", text="bad note", key="What is 1 plus 2?")])
    q = "What is 1 plus 2?"
    for _ in range(2):
        kb.record_use([good.id], helped=True)
        kb.record_use([bad.id], helped=False)
    # not demoted yet (2 < after), but its record already ranks it down
    assert [h.note.text for h in kb.search(q, k=2)] == ["good note", "bad note"]
    kb.record_use([bad.id], helped=True)
    kb.record_use([bad.id], helped=False)  # 1 help in 4 < 0.5
    assert kb.is_demoted(kb.get(bad.id)) and not kb.is_demoted(kb.get(good.id))
    assert [h.note.text for h in kb.search(q, k=2)] == ["good note"]
    assert [n.text for n in kb.notes(include_demoted=False)] == ["good note"]
    assert len(kb.notes()) == 2  # still stored, still listed with --all


def test_fit_demotes_a_note_that_keeps_failing(tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb.sqlite", embedder=HashEmbedder(64))
    kb.add(NoteDraft(skill="sums", text="answer in words", key="What is 1 plus 2?",
                     task="sums"))
    task = make_task(sums(8))
    lm = learner(note_reply="no json")  # the learnt notes are templates; never the lesson
    m = memory(tmp_path, batch_size=1, k=16, min_similarity=0.0, demote_after=3,
               demote_below=0.5)
    m.fit(ZeroShot(lm), task, [], task.examples("dev"))
    old = kb.notes()[0]
    assert old.text == "answer in words" and old.helped == 0
    # shown to 3 of the 8 inputs: then demoted, so hidden from the other 5
    assert old.retrieved == 3 and kb.is_demoted(old)
    assert m.report.notes["demoted"] >= 1 and m.report.notes["template_notes"] == 8


# ---- persistence across processes ---------------------------------------------------------
_CHILD = textwrap.dedent("""
    import sys
    from metaskill.skills.embed import HashEmbedder
    from metaskill.skills.knowledge import KnowledgeBase, NoteDraft
    kb = KnowledgeBase(sys.argv[1], embedder=HashEmbedder(64))
    if sys.argv[2] == "write":
        kb.add(NoteDraft(skill="sums", text="carry the one", key="What is 19 plus 7?",
                         task="arith", example_id="e1", source="template", error="bad"))
    else:
        n = kb.search("What is 18 plus 8?", k=1)[0].note
        print(n.text, n.retrieved, n.helped, n.source, n.task)
""")


def test_the_knowledge_base_persists_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "kb.sqlite")

    def child(mode: str) -> str:
        p = subprocess.run([sys.executable, "-c", _CHILD, path, mode], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    child("write")
    kb = KnowledgeBase(path, embedder=HashEmbedder(64))
    (note,) = kb.notes()
    assert (note.text, note.task, note.example_id, note.error) == (
        "carry the one", "arith", "e1", "bad")
    assert note.created > 0
    kb.record_use([note.id], helped=True)
    kb.record_use([note.id], helped=False)
    assert child("read") == "carry the one 2 1 template arith"


def test_another_embedder_is_refused(tmp_path: Path) -> None:
    from metaskill.core.errors import MetaskillError

    kb = KnowledgeBase(tmp_path / "kb.sqlite", embedder=HashEmbedder(64))
    kb.add(NoteDraft(skill="s", text="a note", key="q"))
    with pytest.raises(MetaskillError, match="hash-v1-64"):
        KnowledgeBase(tmp_path / "kb.sqlite", embedder=HashEmbedder(32)).search("q")


# ---- memory across a stream of tasks --------------------------------------------------------
def test_a_stream_carries_notes_from_one_task_to_the_next(tmp_path: Path) -> None:
    from metaskill.evolve.memory import memory_stream

    first = Task(name="sums_a", splits={"dev": sums(3), "test": sums(2, start=10)},
                 verifier=Exact(), instructions="Add the numbers.")
    second = Task(name="sums_b", splits={"dev": sums(3, start=20), "test": sums(3, start=30)},
                  verifier=Exact(), instructions="Add the numbers.")
    out = memory_stream([first, second], learner(), str(tmp_path / "kb.sqlite"),
                        HashEmbedder(64), options={"min_similarity": 0.0, "batch_size": 1})
    a, b = out.rows
    assert (a.task, a.notes_before, a.without, a.with_memory, a.shown) == (
        "sums_a", 0, 0.0, 0.0, 0.0)
    assert a.notes_added == 1 and a.dev_accuracy == pytest.approx(2 / 3)
    assert (b.task, b.notes_before, b.without, b.with_memory, b.shown) == (
        "sums_b", 1, 0.0, 1.0, 1.0)
    assert b.gain == 1.0 and b.low == 1.0
    assert out.gain == pytest.approx(3 / 5)


# ---- the real embedded model -----------------------------------------------------------------
@pytest.mark.slow
def test_real_model_writes_a_note_that_validates(local_lm) -> None:
    ex = Example(id="m1", input="What is 23 times 47?", answer="1081")
    drafts, spent = distill_notes(local_lm, [(ex, _attempt(ex, "1000"), False,
                                              "two_digit_multiplication")], "arith")
    d = drafts[0]
    assert d.source == "lm", d.error  # a schema-constrained reply parses (issue 20's API)
    assert 12 <= len(d.text) <= 160 and spent["calls"] >= 1


def _attempt(ex: Example, output: str, meta: dict | None = None):
    from metaskill.eval.solver import Attempt

    return Attempt(example_id=ex.id, prompt=ex.text, output=output, meta=meta or {})


def test_a_tool_use_attempts_calls_reach_the_template_note() -> None:
    """tool_use keeps its calls in meta['tool_trace'] (meta['tool_calls'] is their count):
    the note distilled from its attempt names the call."""
    from metaskill.methods.tool_use import Router, ToolUseSolver, build_demos
    from metaskill.tools import calculator

    dev = sums(3)
    task = make_task(dev)
    lm = ScriptedLM(lambda p, r: '{"tool": "calculator", "expression": "2 + 3"}'
                    if r.json_schema else "?")
    solver = ToolUseSolver(lm, ZeroShot(lm), tools=["calculator"],
                           demos=build_demos(task, dev[:2], [calculator()]),
                           router=Router(default="calculator"), embedder_spec="hash:64")
    ex = dev[2]
    a = solver.solve(task, [ex])[0]
    assert a.meta["tool_calls"] == 1 and a.output == "5"
    drafts, _ = distill_notes(lm, [(ex, a, True, "add")], "sums", use_lm=False)
    assert "calling calculator(2 + 3) -> 5" in drafts[0].text, drafts[0].text
