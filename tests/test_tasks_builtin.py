"""Built-in task loaders: shipped sst2/trec/ag_news, and gsm8k/math/BIG-bench/reasoning-gym.

Loaders that read ../shared/data skip with a clear reason where it is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from metaskill.core.errors import NotFoundError, TaskError
from metaskill.tasks import get_task, list_tasks
from metaskill.tasks.splits import export_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"shared data folder {SHARED} is absent (fresh clone without ../shared)",
)

CLASSIFICATION = ["sst2", "trec", "ag_news"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METASKILL_DATA", raising=False)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_shipped_default_split_sizes_disjoint_and_labelled(name: str) -> None:
    t = get_task(name)
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 200, "dev": 100, "test": 300}
    assert t.kind == "classification" and t.metadata["data"] == "shipped"
    ids = {k: {e.id for e in v} for k, v in t.splits.items()}
    assert all(len(ids[k]) == len(t.splits[k]) for k in ids)
    assert not (ids["train"] & ids["test"] or ids["dev"] & ids["test"] or ids["train"] & ids["dev"])
    assert {e.answer for e in t.splits["test"]} == set(t.labels or [])
    # every rendered prompt ends where the answer starts
    ex = t.splits["test"][0]
    assert t.render(ex).endswith(":") and t.demo(ex).endswith(ex.answer or "")
    assert t.metadata["split_protocol"]["seed"] == 0


def test_labels_are_human_words() -> None:
    assert get_task("trec").labels == ["abbreviation", "entity", "description", "human",
                                       "location", "numeric"]
    assert get_task("ag_news").labels == ["World", "Sports", "Business", "Sci-Tech"]
    assert get_task("sst2").labels == ["negative", "positive"]


def test_reproducible_and_smaller_sizes_are_prefixes() -> None:
    a, b = get_task("sst2"), get_task("sst2")
    assert [e.id for e in a.splits["test"]] == [e.id for e in b.splits["test"]]
    small = get_task("sst2", n_test=50, n_train=20)
    assert [e.id for e in small.splits["test"]] == [e.id for e in a.splits["test"][:50]]
    assert [e.id for e in small.splits["train"]] == [e.id for e in a.splits["train"][:20]]


def test_other_seed_without_full_data_is_a_clear_error() -> None:
    with pytest.raises(TaskError, match=r"needs the full data.*path=DIR"):
        get_task("sst2", seed=1)
    with pytest.raises(TaskError, match="needs the full data"):
        get_task("trec", n_test=400)


@needs_shared
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_shipped_copy_equals_protocol_on_full_data(name: str) -> None:
    """The shipped files are exactly what the documented protocol gives on the originals."""
    shipped = get_task(name)
    full = get_task(name, path=str(SHARED / name))
    assert full.metadata["data"] != "shipped"
    for split in ("train", "dev", "test"):
        assert [e.model_dump() for e in full.splits[split]] == [
            e.model_dump() for e in shipped.splits[split]]


@needs_shared
def test_protocol_rebuilt_by_a_peer_program() -> None:
    """Rebuild sst2's test split with only numpy + json, as the docs say."""
    lines = [ln for ln in (SHARED / "sst2" / "test.jsonl").open(encoding="utf-8") if ln.strip()]
    perm = np.random.default_rng(0).permutation(len(lines))
    peer = [json.loads(lines[i])["sentence"] for i in perm[:300]]
    assert peer == [e.input for e in get_task("sst2").splits["test"]]
    ids = [f"test.jsonl:{i + 1}" for i in perm[:300]]
    assert ids == [e.id for e in get_task("sst2").splits["test"]]


@needs_shared
def test_other_seed_from_full_data_differs_and_is_disjoint() -> None:
    t = get_task("ag_news", seed=1, path=str(SHARED / "ag_news"))
    t0 = get_task("ag_news")
    assert [e.id for e in t.splits["test"]] != [e.id for e in t0.splits["test"]]
    ids = [e.id for v in t.splits.values() for e in v]
    assert len(ids) == len(set(ids)) == 600


@needs_shared
def test_metaskill_data_env_is_used_for_big_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METASKILL_DATA", str(SHARED))
    t = get_task("trec", n_test=500)
    assert len(t.splits["test"]) == 500


def test_export_split_jsonl(tmp_path: Path) -> None:
    t = get_task("ag_news")
    p = export_split(t, "dev", tmp_path / "dev.jsonl")
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    assert len(rows) == 100
    assert rows[0]["id"] == t.splits["dev"][0].id
    assert rows[0]["prompt"] == t.render(t.splits["dev"][0])
    assert rows[0]["answer"] in t.labels


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(NotFoundError, match="Did you mean: ag_news"):
        get_task("agnews")
    assert {"sst2", "trec", "ag_news", "gsm8k", "math", "math500", "bigbench",
            "reasoning_gym", "file"} <= set(list_tasks())


def test_unknown_option_lists_accepted_ones() -> None:
    with pytest.raises(TaskError, match=r"no option.*n_tset.*accepts: seed, n_train"):
        get_task("sst2", n_tset=5)


def test_empty_split_is_refused() -> None:
    with pytest.raises(TaskError, match="empty"):
        get_task("sst2", n_dev=0)
    t = get_task("sst2")
    t.splits["dev"] = []
    with pytest.raises(TaskError, match="split 'dev' of task 'sst2' is empty"):
        t.examples("dev")


def test_path_loaders_fail_clearly_without_data() -> None:
    with pytest.raises(TaskError, match="pass path=DIR"):
        get_task("gsm8k")
    with pytest.raises(TaskError, match="pass path=DIR"):
        get_task("math")


def test_import_stays_light() -> None:
    import subprocess

    code = ("import sys, metaskill, metaskill.tasks; metaskill.tasks.get_task('sst2'); "
            "print(sorted(m for m in ('datasets', 'reasoning_gym', 'math_verify', 'torch', "
            "'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------- shared data ---


@needs_shared
def test_gsm8k_from_path() -> None:
    t = get_task("gsm8k", path=str(SHARED / "gsm8k"), n_test=20, n_train=50)
    assert [len(t.splits[s]) for s in ("train", "dev", "test")] == [50, 200, 20]
    ex = t.splits["test"][0]
    assert ex.answer and ex.answer.lstrip("-").replace(".", "").isdigit()
    assert "####" in ex.metadata["solution"]
    assert t.verifier.verify(ex.metadata["solution"], ex).score == 1.0
    assert t.verifier.verify("The answer is 1234567", ex).score == 0.0
    full = get_task("gsm8k", path=str(SHARED / "gsm8k"))
    assert len(full.splits["test"]) == 1319 and len(full.splits["train"]) == 7473 - 200
    assert not {e.id for e in full.splits["train"]} & {e.id for e in full.splits["dev"]}


@needs_shared
def test_math_skills_and_levels() -> None:
    t = get_task("math", path=str(SHARED / "math"), n_train=100)
    assert len(t.splits["test"]) == 5000
    skills = {s for e in t.splits["test"] for s in e.skills}
    assert skills == {"algebra", "counting_and_probability", "geometry",
                      "intermediate_algebra", "number_theory", "prealgebra", "precalculus"}
    assert all(len(e.skills) == 1 for e in t.splits["test"])
    assert {e.metadata["level"] for e in t.splits["test"]} == {1, 2, 3, 4, 5}
    m5 = get_task("math500", path=str(SHARED / "math"), n_train=10)
    assert len(m5.splits["test"]) == 500 and m5.verifier.name == "math"
    assert {s for e in m5.splits["test"] for s in e.skills} == skills
    lv = get_task("math500", path=str(SHARED / "math"), levels=[5], subjects=["algebra"],
                  n_train=10, n_dev=5)
    assert lv.splits["test"] and all(e.metadata["level"] == 5 and e.skills == ["algebra"]
                                     for e in lv.splits["test"])


@needs_shared
def test_math_reference_answers_verify_against_solutions() -> None:
    pytest.importorskip("math_verify")
    t = get_task("math500", path=str(SHARED / "math"), n_train=10, n_test=25)
    scores = [t.verifier.verify(e.metadata["solution"], e).score for e in t.splits["test"]]
    assert sum(scores) == 25  # each worked solution ends in the boxed reference answer
    wrong = [t.verifier.verify(a.metadata["solution"], b).score
             for a, b in zip(t.splits["test"], t.splits["test"][1:], strict=False)]
    assert sum(wrong) <= 2  # another problem's solution is (almost always) not equivalent


@needs_shared
def test_bigbench_generative_with_subtasks_as_skills() -> None:
    t = get_task("bigbench", path=str(SHARED / "bigbench" / "tasks" / "arithmetic"),
                 subtasks=["1_digit_addition", "2_digit_subtraction"])
    assert t.kind == "generative"
    ex = t.splits["test"][0]
    assert ex.skills[0] in ("1_digit_addition", "2_digit_subtraction")
    assert "arithmetic" in ex.skills  # keywords become skills too
    assert t.render(ex).startswith("Q: ") and t.render(ex).endswith("A:")
    assert t.verifier.verify(f"{ex.answer} is the result", ex).score == 1.0
    total = sum(len(v) for v in t.splits.values())
    assert total == 1100  # 100 + 1000 examples: train 100, dev 50, test the rest (<= 1000)


@needs_shared
def test_bigbench_multiple_choice() -> None:
    t = get_task("bigbench", path=str(SHARED / "bigbench" / "tasks" / "odd_one_out" /
                                      "task.json"))
    assert t.kind == "multiple_choice"
    ex = t.splits["test"][0]
    assert ex.answer in ex.metadata["choices"]
    assert "choice:" not in t.render(ex)  # this task sets append_choices_to_input: false
    assert t.verifier.verify(f"The odd one is {ex.answer}.", ex).score == 1.0
    wrong = next(c for c in ex.metadata["choices"] if c != ex.answer)
    assert t.verifier.verify(wrong, ex).score == 0.0
    cae = get_task("bigbench", path=str(SHARED / "bigbench" / "tasks" / "cause_and_effect"),
                   subtasks=["two_sentences"])
    assert "choice:" in cae.render(cae.splits["test"][0])


@needs_shared
def test_bigbench_bad_inputs() -> None:
    with pytest.raises(TaskError, match="has no subtask"):
        get_task("bigbench", path=str(SHARED / "bigbench" / "tasks" / "arithmetic"),
                 subtasks=["nope"])
    with pytest.raises(TaskError, match="does not exist"):
        get_task("bigbench", path="/nonexistent/task.json")


def test_bigbench_malformed_json(tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text('{"name": "x", "examples": [\n{"input": 1,}]}')
    with pytest.raises(TaskError, match=r"task.json:2: malformed JSON"):
        get_task("bigbench", path=str(tmp_path))


# ------------------------------------------------------------------ reasoning-gym ---


def test_reasoning_gym_generation_and_scoring() -> None:
    pytest.importorskip("reasoning_gym")
    t = get_task("reasoning_gym", dataset=["basic_arithmetic", "word_sorting"], seed=3,
                 n_train=5, n_dev=2, n_test=4)
    assert {s for e in t.splits["test"] for s in e.skills} == {"basic_arithmetic",
                                                               "word_sorting"}
    assert len(t.splits["train"]) == 10
    again = get_task("reasoning_gym", dataset=["basic_arithmetic", "word_sorting"], seed=3,
                     n_train=5, n_dev=2, n_test=4)
    assert [e.input for e in again.splits["test"]] == [e.input for e in t.splits["test"]]
    other = get_task("reasoning_gym", dataset="basic_arithmetic", seed=4, n_train=5, n_dev=2,
                     n_test=4)
    assert [e.input for e in other.splits["test"]] != [
        e.input for e in t.splits["test"] if e.skills == ["basic_arithmetic"]]
    for ex in t.splits["test"]:
        good = t.verifier.verify(f"Let me think.\n<answer>{ex.answer}</answer>", ex)
        assert good.score == 1.0, (ex, good)
        assert t.verifier.verify("<answer>definitely wrong</answer>", ex).score < 1.0
    # the verifier round-trips through its spec and still scores (regenerates entries)
    from metaskill.tasks.verifiers import verifier_from_spec

    v = verifier_from_spec(json.loads(json.dumps(t.verifier.to_spec())))
    ex = t.splits["test"][0]
    assert v.verify(f"Answer: {ex.answer}", ex).score == 1.0


def test_reasoning_gym_unknown_dataset_suggests() -> None:
    pytest.importorskip("reasoning_gym")
    with pytest.raises(TaskError, match="Did you mean: basic_arithmetic"):
        get_task("reasoning_gym", dataset="basic_arithmetc")
