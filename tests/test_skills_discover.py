"""Skill discovery: labels, metacognitive teacher (ScriptedLM), catalog, embedding-only."""

from __future__ import annotations

import json
import re

import pytest

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example
from metaskill.lm.cache import Cache
from metaskill.lm.fake import ScriptedLM
from metaskill.skills.book import SkillBook
from metaskill.skills.discover import (
    DiscoveryConfig,
    discover,
    discover_by_embedding,
    discover_from_catalog,
    discover_from_labels,
    discover_metacognitive,
    load_catalog,
    majority_label,
    name_clusters,
    naming_labels,
    parse_choices,
    parse_skill_names,
)
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task, Verdict, Verifier

CFG = DiscoveryConfig(progress=False, n_skills=2, exemplars_per_skill=2)


def _book() -> SkillBook:
    return SkillBook(embedder=HashEmbedder(dim=128))


def _examples() -> list[Example]:
    return [
        Example(id="p1", input="What is 12 plus 7?", answer="19"),
        Example(id="p2", input="What is 40 plus 2?", answer="42"),
        Example(id="p3", input="What is 3 plus 5?", answer="8"),
        Example(id="s1", input="Sort alphabetically: pear apple fig", answer="apple fig pear"),
        Example(id="s2", input="Sort alphabetically: dog cat", answer="cat dog"),
        Example(id="BROKEN", input="BROKEN question", answer="?"),
        Example(id="FLAKY", input="FLAKY plus question", answer="?"),
    ]


def _question(prompt: str) -> str:
    m = re.search(r"Question:\n(.*?)\n", prompt, re.S)
    return m.group(1) if m else ""


def _pick(prompt: str, skill: str) -> str:
    for line in prompt.splitlines():
        m = re.match(r"(\d+)\. (\w+):", line)
        if m and m.group(2) == skill:
            return m.group(1)
    return "none"


def free_teacher_script(prompt: str, request) -> str:
    """A teacher that answers the four kinds of discovery prompt in free text."""
    retry = "could not be read" in prompt or "Answer ONLY" in prompt
    if "You are labelling the skills" in prompt:
        q = _question(prompt)
        if "BROKEN" in q:
            return "I am sorry, I cannot help with that."
        if "FLAKY" in q and not retry:
            return "???"
        if "plus" in q:
            return "- Number addition: adding two numbers\n- adding_numbers_mentally: in the head"
        return "1. word sorting: ordering words\n2. sorting words alphabetically: the alphabet"
    if "These skill names were given" in prompt:
        if "number_addition" in prompt:
            return "adding_numbers: adding whole numbers together"
        return "sorting_words: putting words in alphabetical order"
    if "Which of the skills above" in prompt:
        q = _question(prompt)
        if "BROKEN" in q:
            return "no idea"
        return _pick(prompt, "adding_numbers" if "plus" in q else "sorting_words")
    return "?"


def teacher_script(prompt: str, request) -> str:
    """The same teacher, in JSON where the request carries a schema (a constrained reply).

    FLAKY's first JSON reply is broken; LM.complete's own second try (temperature >= 0.7)
    gets a valid one. BROKEN never gives one.
    """
    if request.json_schema is None:
        return free_teacher_script(prompt, request)
    q = _question(prompt)
    if "BROKEN" in q or ("FLAKY" in q and request.temperature < 0.7
                         and "You are labelling" in prompt):
        return "I am sorry, I cannot help with that."
    if "You are labelling the skills" in prompt:
        pairs = ([("number_addition", "adding two numbers"),
                  ("adding_numbers_mentally", "in the head")] if "plus" in q else
                 [("word_sorting", "ordering words"),
                  ("sorting_words_alphabetically", "the alphabet")])
        return json.dumps({"skills": [{"name": n, "description": d} for n, d in pairs]})
    if "These skill names were given" in prompt:
        pair = (("adding_numbers", "adding whole numbers together")
                if "number_addition" in prompt else
                ("sorting_words", "putting words in alphabetical order"))
        return json.dumps({"skills": [{"name": pair[0], "description": pair[1]}]})
    if "Which of the skills above" in prompt:
        assert '"enum":' in request.json_schema  # only this example's shortlist
        return json.dumps({"skills": ["adding_numbers" if "plus" in q else "sorting_words"]})
    return "?"


def free_text(lm: ScriptedLM) -> ScriptedLM:
    """The LM as a backend that enforces no schema (the free-text path)."""
    lm.constraints = frozenset()
    return lm


def test_constrained_names_are_snake_case_by_schema():
    from metaskill.skills.discover import ClusterLabel, skills_model

    with pytest.raises(ValueError):  # the schema's pattern: not a sentence, not Title Case
        ClusterLabel.model_validate_json('{"name": "I cannot name this"}')
    m = skills_model(2)
    v = m.model_validate_json('{"skills": [{"name": "skill", "description": ""}, '
                              '{"name": "place_value", "description": "digits"}]}')
    from metaskill.skills.discover import _read_names

    assert _read_names(v, 2) == [("place_value", "digits")]  # generic names dropped


def test_parsers():
    assert parse_skill_names('["Fraction addition", {"name": "ratios", "description": "r"}]') == [
        ("fraction_addition", ""), ("ratios", "r")]
    assert parse_skill_names("Skill 1: algebra\nSkill 2: counting") == [
        ("algebra", ""), ("counting", "")]
    assert parse_skill_names("skill_name: description") is None
    assert parse_skill_names("a, b_c, d", max_n=2) == [("a", ""), ("b_c", "")]
    assert parse_choices("3", ["a", "b"]) is None
    assert parse_choices("1 and word_sorting", ["addition", "word_sorting"]) == [
        "addition", "word_sorting"]


def test_from_labels_with_hierarchy():
    exs = [
        Example(id="1", input="2+2", skills=["arithmetic/1_digit_addition"]),
        Example(id="2", input="3+3", skills=["arithmetic/1_digit_addition"]),
        Example(id="3", input="9-3", skills=["arithmetic/1_digit_subtraction"]),
        Example(id="4", input="sort b a", skills=["Word Sorting"]),
        Example(id="5", input="no label"),
    ]
    book = discover_from_labels(exs, _book(), task_name="mix", exemplars_per_skill=1)
    assert set(book.names()) == {"arithmetic", "1_digit_addition", "1_digit_subtraction",
                                 "word_sorting"}
    assert book.get("1_digit_addition").parent == "arithmetic"
    assert book.labels("1") == ["arithmetic", "1_digit_addition"]
    assert book.get("arithmetic").stats.n_examples == 3
    assert book.unlabelled() == ["5"]
    assert len(book.get("1_digit_addition").exemplars) == 1
    assert book.info()["discovery"]["source"] == "labels"
    with pytest.raises(MetaskillError, match="carry no skill labels"):
        discover_from_labels([Example(id="x", input="y")], _book())


@pytest.mark.parametrize("structured", [True, False])
def test_metacognitive_discovery(tmp_path, structured):
    cache = Cache(tmp_path / "cache.sqlite")
    teacher = ScriptedLM(teacher_script, cache=cache)
    if not structured:
        free_text(teacher)
    book = discover_metacognitive(_examples(), _book(), teacher, config=CFG, task_name="toy")
    assert sorted(book.names()) == ["adding_numbers", "sorting_words"]
    add = book.get("adding_numbers")
    assert add.description == "adding whole numbers together"
    assert set(add.metadata["members"]) == {"number_addition", "adding_numbers_mentally"}
    assert add.metadata["named_by"] == "teacher"
    assert book.examples_of("adding_numbers") == ["p1", "p2", "p3", "FLAKY"]
    assert book.examples_of("sorting_words") == ["s1", "s2"]
    # unparseable twice -> recorded unlabelled, never a crash
    assert book.unlabelled() == ["BROKEN"]
    rec = book.info()["discovery"]
    assert rec["source"] == "metacognitive" and rec["raw_names"] == 4
    # retried: BROKEN and FLAKY in step a, BROKEN in step d (JSON: by LM.complete itself)
    assert rec["teacher_log"]["retries"] == 3
    assert rec["teacher_log"]["unparseable"] == 2
    # the BROKEN example was asked exactly twice in step (a): first try + one retry
    broken_label_calls = [p for p in teacher.calls
                          if "You are labelling" in p and "BROKEN question" in p]
    assert len(broken_label_calls) == 2
    asked_json = [p for p in teacher.calls if "Reply with JSON" in p]
    assert bool(asked_json) is structured
    # every call went through the LM cache: a second run asks the backend nothing, but a
    # JSON reply that broke its schema is never cached (BROKEN: twice in a, twice in d)
    n = len(teacher.calls)
    again = discover_metacognitive(_examples(), _book(), teacher, config=CFG)
    assert len(teacher.calls) == n + (4 if structured else 0)
    assert again.all_labels() == book.all_labels()


def test_metacognitive_threshold_and_fallback_names():
    def script(prompt, request):
        if "These skill names were given" in prompt:
            return "!!!"  # cluster naming fails -> most frequent member name
        return teacher_script(prompt, request)

    cfg = DiscoveryConfig(progress=False, distance_threshold=0.05)
    book = discover_metacognitive(_examples(), _book(), ScriptedLM(script), config=cfg)
    assert len(book) == 4  # nothing merges at a tiny threshold
    assert all(s.metadata["named_by"] == "fallback" for s in book.skills())
    assert "number_addition" in book.names()


def test_metacognitive_all_unparseable_is_a_clear_error():
    with pytest.raises(MetaskillError, match="no readable skill names"):
        discover_metacognitive(_examples(), _book(), ScriptedLM(default="Sorry, I cannot do that."),
                               config=CFG)


def test_teacher_exceptions_do_not_crash():
    class Flaky(ScriptedLM):
        def _complete(self, requests):
            if any("FLAKY" in self.prompt_of(r) for r in requests):
                raise RuntimeError("boom")
            return super()._complete(requests)

    book = discover_metacognitive(_examples(), _book(), Flaky(teacher_script), config=CFG)
    assert "FLAKY" in book.unlabelled() and "p1" not in book.unlabelled()


def test_catalog_mode(tmp_path):
    cat = tmp_path / "catalog.yaml"
    cat.write_text(
        "skills:\n"
        "  - name: Adding Numbers\n    description: adding whole numbers together\n"
        "  - name: sorting_words\n    description: putting words in alphabetical order\n"
        "  - name: geometry\n    description: shapes and angles\n"
    )
    teacher = ScriptedLM(teacher_script)
    book = discover_from_catalog(_examples(), _book(), teacher, cat,
                                 config=DiscoveryConfig(progress=False))
    assert book.names() == ["adding_numbers", "sorting_words", "geometry"]
    assert book.examples_of("adding_numbers") == ["p1", "p2", "p3", "FLAKY"]
    assert book.get("geometry").stats.n_examples == 0
    assert book.unlabelled() == ["BROKEN"]
    # the teacher never invents names in catalog mode: it is only asked to pick
    assert not any("You are labelling" in p for p in teacher.calls)
    assert book.get("adding_numbers").source == "catalog"


def test_catalog_shortlist_for_long_catalogs():
    entries = [{"name": f"filler_skill_{i}", "description": f"unrelated topic {i}"}
               for i in range(30)]
    from metaskill.skills.discover import CatalogEntry

    cat = [CatalogEntry(**e) for e in entries] + [
        CatalogEntry(name="adding_numbers", description="what is a number plus a number")]
    teacher = ScriptedLM(teacher_script)
    cfg = DiscoveryConfig(progress=False, shortlist=5)
    book = discover_from_catalog(_examples()[:3], _book(), teacher, cat, config=cfg)
    assert book.examples_of("adding_numbers") == ["p1", "p2", "p3"]
    pick_prompts = [p for p in teacher.calls if "Which of the skills" in p]
    assert pick_prompts and all(len(re.findall(r"^- \w+: ", p, re.M)) == 5
                                for p in pick_prompts)
    # free text: the same shortlist, numbered
    teacher = free_text(ScriptedLM(teacher_script))
    book = discover_from_catalog(_examples()[:3], _book(), teacher, cat, config=cfg)
    assert book.examples_of("adding_numbers") == ["p1", "p2", "p3"]
    pick_prompts = [p for p in teacher.calls if "Which of the skills" in p]
    assert pick_prompts and all(len(re.findall(r"^\d+\. ", p, re.M)) == 5
                                for p in pick_prompts)


def test_load_catalog_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algebra: equations\ngeometry: shapes\n")
    assert [e.name for e in load_catalog(p)] == ["algebra", "geometry"]
    p.write_text("- description: no name\n")
    with pytest.raises(MetaskillError, match="no name"):
        load_catalog(p)
    p.write_text("- a\n- A\n")
    with pytest.raises(MetaskillError, match="duplicate"):
        load_catalog(p)
    p.write_text("[unclosed")
    with pytest.raises(MetaskillError, match="invalid YAML"):
        load_catalog(p)
    with pytest.raises(MetaskillError, match="not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_embedding_discovery():
    exs = [Example(id=f"a{i}", input=f"apple banana fruit salad number {i}") for i in range(6)]
    exs += [Example(id=f"c{i}", input=f"engine wheels car garage number {i}") for i in range(6)]
    book = discover_by_embedding(exs, _book(), n_skills=2)
    assert len(book) == 2
    groups = [set(book.examples_of(n)) for n in book.names()]
    assert {f"a{i}" for i in range(6)} in groups and {f"c{i}" for i in range(6)} in groups
    names = " ".join(book.names())
    assert "apple" in names or "banana" in names or "fruit" in names
    assert not book.unlabelled()
    book2 = discover_by_embedding(exs, _book(), distance_threshold=0.8)
    assert len(book2) >= 2


class _Exact(Verifier):
    name = "exact"

    def verify(self, output, example):
        ok = output.strip() == (example.answer or "")
        return Verdict(score=float(ok), parsed=output.strip())


def test_discover_dispatch():
    labelled = [e.model_copy(update={"skills": ["addition" if "plus" in e.text else "sorting"]})
                for e in _examples()]
    task = Task(name="toy", splits={"train": labelled}, verifier=_Exact())
    assert discover(task, _book()).info()["discovery"]["source"] == "labels"
    assert discover(task, _book(), teacher=ScriptedLM(teacher_script),
                    config=CFG).info()["discovery"]["source"] == "metacognitive"
    plain = Task(name="plain", splits={"train": _examples()}, verifier=_Exact())
    book = discover(plain, _book(), n_skills=2, limit=5)
    assert book.info()["discovery"]["source"] == "embedding" and len(book.example_ids()) == 5
    with pytest.raises(MetaskillError, match="needs a teacher"):
        discover(plain, _book(), source="catalog")
    with pytest.raises(MetaskillError, match="has no split"):
        discover(plain, _book(), split="validation")


# ---- readable names for embedding clusters -------------------------------------------------

FRUIT = [f"apple banana fruit salad number {i}" for i in range(6)]
CARS = [f"engine wheels car garage number {i}" for i in range(6)]
PASTA = [f"spaghetti pasta tomato sauce number {i}" for i in range(6)]


def _labelled(texts: list[str], answers: list[str], prefix: str) -> list[Example]:
    return [Example(id=f"{prefix}{i}", input=t, answer=a)
            for i, (t, a) in enumerate(zip(texts, answers, strict=True))]


def _groups(book: SkillBook) -> dict[str, set[str]]:
    return {n: set(book.examples_of(n)) for n in book.names()}


def test_embedding_clusters_named_by_majority_label():
    exs = (_labelled(FRUIT, ["food"] * 5 + ["vehicle"], "a")
           + _labelled(CARS, ["vehicle"] * 6, "c"))
    book = discover_by_embedding(exs, _book(), n_skills=2, labels=["vehicle", "food"])
    assert _groups(book) == {"food": {f"a{i}" for i in range(6)},
                             "vehicle": {f"c{i}" for i in range(6)}}
    food = book.get("food")
    assert food.metadata["named_by"] == "label"
    assert (food.metadata["label_count"], food.metadata["labelled"]) == (5, 6)
    assert "5 of 6" in food.description
    assert book.info()["discovery"]["named_by"] == {"label": 2}
    # every skill carries one of its members' text for the report's hover
    assert food.metadata["example"] in FRUIT
    assert book.get("vehicle").metadata["example"] in CARS


def test_embedding_names_are_stable_and_unique():
    exs = (_labelled(FRUIT, ["food"] * 6, "a") + _labelled(PASTA, ["food"] * 6, "p")
           + _labelled(CARS, ["vehicle"] * 6, "c"))
    runs = [_groups(discover_by_embedding(exs, _book(), n_skills=3, labels=["food", "vehicle"]))
            for _ in range(2)]
    assert runs[0] == runs[1]  # same data, same names, same members
    names = sorted(runs[0])
    assert len(set(names)) == 3 and "vehicle" in names
    food = [n for n in names if n.startswith("food_")]
    assert len(food) == 2  # two clusters share the label: each gets a distinctive term
    by_members = {frozenset(v): k for k, v in runs[0].items()}
    fruit_name = by_members[frozenset(f"a{i}" for i in range(6))]
    pasta_name = by_members[frozenset(f"p{i}" for i in range(6))]
    assert fruit_name.split("_", 1)[1] in FRUIT[0].split()
    assert pasta_name.split("_", 1)[1] in PASTA[0].split()


def test_name_clusters_dedupes_deterministically():
    exs = [Example(id=str(i), input=f"q{i}", answer="yes") for i in range(3)]
    got = name_clusters([exs[:1], exs[1:2], exs[2:]], [["alpha"], [], ["alpha"]],
                        labels=["yes", "no"])
    # a shared label takes each cluster's term; what still clashes gets a number
    assert [g.name for g in got] == ["yes_alpha", "yes", "yes_alpha_2"]
    assert all(g.named_by == "label" for g in got)
    assert majority_label(["No", "yes", "no "], ["yes", "no"]) == ("no", 2, 3)
    assert majority_label(["yes", "no"], ["yes", "no"]) == ("yes", 1, 2)  # tie: label order


def test_unlabelled_clusters_fall_back_to_terms():
    exs = (_labelled(FRUIT, ["?"] * 6, "a") + _labelled(CARS, ["?"] * 6, "c"))
    book = discover_by_embedding(exs, _book(), n_skills=2, labels=["food", "vehicle"])
    assert all(s.metadata["named_by"] == "terms" for s in book.skills())
    names = " ".join(book.names())
    assert "apple" in names or "banana" in names or "fruit" in names
    assert "engine" in names or "car" in names or "garage" in names
    assert book.info()["discovery"]["named_by"] == {"terms": 2}


def test_teacher_names_clusters_without_labels():
    def script(prompt: str, request) -> str:
        if "These questions belong to one group" not in prompt:
            return "unexpected"
        if "apple" in prompt:
            return ('{"name": "fruit_salad_questions"}' if request.json_schema
                    else "Fruit salad questions")
        return "I am sorry, I cannot name this."  # unusable, also on the retry

    teacher = ScriptedLM(script)
    exs = [Example(id=f"a{i}", input=t) for i, t in enumerate(FRUIT)]
    exs += [Example(id=f"c{i}", input=t) for i, t in enumerate(CARS)]
    task = Task(name="plain", splits={"train": exs}, verifier=_Exact())
    book = discover(task, _book(), source="embedding", teacher=teacher, n_skills=2,
                    config=DiscoveryConfig(progress=False))
    groups = _groups(book)
    assert groups["fruit_salad_questions"] == {f"a{i}" for i in range(6)}
    assert book.get("fruit_salad_questions").metadata["named_by"] == "teacher"
    other = next(s for s in book.skills() if s.name != "fruit_salad_questions")
    assert other.metadata["named_by"] == "terms"
    assert set(other.name.split("_")) & {"engine", "wheels", "car", "garage"}
    rec = book.info()["discovery"]
    assert rec["teacher_log"]["retries"] == 1 and rec["teacher_log"]["unparseable"] == 1
    again = discover(task, _book(), source="embedding", teacher=teacher, n_skills=2,
                     config=DiscoveryConfig(progress=False))
    assert _groups(again) == groups  # stable across runs


def test_discover_names_by_train_labels_only():
    train = (_labelled(FRUIT, ["food"] * 6, "a") + _labelled(CARS, ["vehicle"] * 6, "c"))
    dev = (_labelled(FRUIT, ["vehicle"] * 6, "da") + _labelled(CARS, ["food"] * 6, "dc"))
    task = Task(name="cls", splits={"train": train, "dev": dev}, verifier=_Exact(),
                labels=["food", "vehicle"], kind="classification")
    book = discover(task, _book(), n_skills=2, config=DiscoveryConfig(progress=False))
    assert book.info()["discovery"]["source"] == "embedding"
    assert _groups(book)["food"] == {f"a{i}" for i in range(6)}
    # discovering on another split never names by its answers
    on_dev = discover(task, _book(), n_skills=2, split="dev",
                      config=DiscoveryConfig(progress=False))
    assert {s.metadata["named_by"] for s in on_dev.skills()} == {"terms"}
    # option letters of a multiple-choice task are not names
    mc = Task(name="mc", splits={"train": train}, verifier=_Exact(),
              labels=["food", "vehicle"], kind="multiple_choice")
    assert naming_labels(mc, "train") is None
    assert naming_labels(task, "train") == ["food", "vehicle"]


@pytest.mark.slow
def test_real_teacher_replies_always_parse_on_sst2(local_lm):
    """SmolLM2-135M as the discovery teacher: constrained JSON names, cluster names and
    picks from each example's shortlist all parse (no unparseable reply, nobody unlabelled)."""
    from metaskill.tasks import get_task

    exs = get_task("sst2").splits["train"][:6]
    cfg = DiscoveryConfig(progress=False, n_skills=2, max_skills=2)
    book = discover_metacognitive(exs, _book(), local_lm, config=cfg, task_name="sst2",
                                  task_description="movie review sentiment")
    log = book.info()["discovery"]["teacher_log"]
    assert log["unparseable"] == 0, log
    assert book.unlabelled() == []
    assert all(s.metadata["named_by"] == "teacher" for s in book.skills())
