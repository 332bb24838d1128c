"""The ``compose`` task family: atomic string skills, compositions of depth 1-4, held-out
pairs; determinism, hand-checked values, options, registry/CLI, zero-shot evaluation and
a fit of every registered method on the fake LM."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metaskill.core.errors import TaskError
from metaskill.core.types import Request
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.compose import (
    ATOMIC_SKILLS,
    VOCABULARY,
    adjacent_pairs,
    apply_steps,
    held_out_pairs,
    load_compose,
    prompt_text,
    skill,
    skill_names,
)
from metaskill.tasks.registry import get_task, list_tasks

# ---- the atomic functions, checked by hand -----------------------------------------------


@pytest.mark.parametrize(("name", "text", "want"), [
    ("reverse_words", "Red fox runs", "runs fox Red"),
    ("reverse_letters", "Red fox", "deR xof"),
    ("sort_words", "tree Apple bird", "Apple bird tree"),
    ("sort_letters", "Lemon star", "eLmno arst"),
    ("swap_case", "Red FOX", "rED fox"),
    ("uppercase", "Red fox", "RED FOX"),
    ("capitalize", "rED fOX", "Red Fox"),
    ("drop_vowels", "Apple tree", "ppl tr"),
    ("rotate_words", "a b c", "b c a"),
    ("rot1", "Zebra yak", "Afcsb zbl"),
    ("rot13", "Hello World", "Uryyb Jbeyq"),
])
def test_atomic_skills_on_hand_checked_inputs(name: str, text: str, want: str) -> None:
    assert skill(name)(text) == want


def test_every_skill_has_a_definition_and_its_examples_hold() -> None:
    assert len(ATOMIC_SKILLS) >= 8 and len(set(skill_names())) == len(ATOMIC_SKILLS)
    for s in ATOMIC_SKILLS:
        assert s.definition and "\n" not in s.definition and ";" not in s.definition
        assert len(s.examples) >= 2
        for x, y in s.examples:
            assert s(x) == y, (s.name, x, y, s(x))


@pytest.mark.parametrize(("steps", "text", "want"), [
    # f(g(x)) is [g, f]: g first
    (["reverse_words", "swap_case"], "red fox", "FOX RED"),
    (["swap_case", "reverse_words"], "Red fox", "FOX rED"),
    (["drop_vowels", "reverse_letters"], "lemon tree", "nml rt"),
    (["sort_letters", "uppercase", "rotate_words"], "dog cat", "ACT DGO"),
    (["rot1", "sort_words", "capitalize", "reverse_words"], "zoo Bat", "Cbu App"),
    (["rot13", "rot13"], "Moon", "Moon"),
])
def test_compositions_on_hand_checked_inputs(steps: list[str], text: str, want: str) -> None:
    assert apply_steps(steps, text) == want


def test_prompt_states_the_definitions_in_order() -> None:
    p = prompt_text(["reverse_words", "swap_case"], "red fox")
    assert p == ("Apply, in order: reverse the order of the words; then swap the case of "
                 "every letter.\nInput: red fox")
    assert prompt_text(["uppercase"], "cat").startswith("Apply: write every letter")
    assert '(e.g. "Red fox" -> "RED FOX")' in prompt_text(["uppercase"], "x",
                                                          show_examples=True)


def test_unknown_skill_is_one_line() -> None:
    with pytest.raises(TaskError, match="no atomic skill 'reverse'; it has: reverse_words"):
        skill("reverse")


# ---- the task ----------------------------------------------------------------------------


def test_defaults_sizes_depths_labels_and_verifier() -> None:
    t = load_compose()
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 200, "dev": 50, "test": 100}
    assert t.kind == "generative" and t.labels is None and t.template == "{input}\nOutput:"
    assert t.instructions and t.metadata["max_tokens"] >= 32
    depth = {s: sorted({e.metadata["depth"] for e in v}) for s, v in t.splits.items()}
    assert depth == {"train": [1, 2], "dev": [1, 2], "test": [2, 3, 4]}
    ids = [e.id for v in t.splits.values() for e in v]
    assert len(ids) == len(set(ids))
    words = set(VOCABULARY)
    for v in t.splits.values():
        for e in v:
            steps = e.metadata["steps"]
            assert len(steps) == e.metadata["depth"]
            assert e.skills == list(dict.fromkeys(steps)) and set(e.skills) <= set(skill_names())
            assert e.answer == apply_steps(steps, e.metadata["text"])
            assert e.input == prompt_text(steps, e.metadata["text"])
            assert 2 <= len(e.metadata["text"].split()) <= 5
            assert {w.lower() for w in e.metadata["text"].split()} <= words
            assert all(a != b for a, b in adjacent_pairs(steps))  # no step twice in a row
            assert e.metadata["noop_steps"] == 0
    # every atomic skill is trained, alone and in pairs
    train = t.splits["train"]
    assert {e.metadata["steps"][0] for e in train if e.metadata["depth"] == 1} == set(
        skill_names())
    # case-sensitive exact match after whitespace normalisation, on the first line
    e = t.splits["test"][0]
    assert t.verifier.verify(f"  {e.answer.replace(' ', '   ')} \nmore text", e).score == 1.0
    assert t.verifier.verify(e.answer.swapcase(), e).score == 0.0


def test_same_seed_same_task_other_seed_other_task() -> None:
    a, b, c = load_compose(), load_compose(), load_compose(seed=1)
    assert a.splits == b.splits and a.metadata == b.metadata
    assert [e.input for e in a.splits["train"]] != [e.input for e in c.splits["train"]]
    assert a.metadata["held_out_pairs"] != c.metadata["held_out_pairs"]
    # the same in a fresh interpreter (string seeds, not hash randomization)
    code = ("from metaskill.tasks.compose import load_compose; t = load_compose(); "
            "print(repr([(e.input, e.answer) for e in t.splits['test'][:5]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, check=True).stdout
    assert out.strip() == repr([(e.input, e.answer) for e in a.splits["test"][:5]])


def test_test_options_do_not_change_train() -> None:
    a = load_compose()
    b = load_compose(n_test=40, test_depths=[4], test_pairs="all")
    assert a.splits["train"] == b.splits["train"] and a.splits["dev"] == b.splits["dev"]


def test_no_held_out_pair_in_train_or_dev_and_depth2_test_is_held_out() -> None:
    t = load_compose(depth=[1, 2, 3, 4], n_train=400)
    held = {tuple(p) for p in t.metadata["held_out_pairs"]}
    n = len(skill_names())
    assert len(held) == round(0.25 * n * (n - 1))
    for split in ("train", "dev"):
        for e in t.splits[split]:
            assert not set(adjacent_pairs(e.metadata["steps"])) & held, (split, e.id)
            assert e.metadata["unseen_pairs"] == 0
    d2 = [e for e in t.splits["test"] if e.metadata["depth"] == 2]
    assert d2 and all(tuple(e.metadata["steps"]) in held for e in d2)
    assert all(e.metadata["unseen_pairs"] == 1 for e in d2)
    # every skill still appears in train as first and as second step of a pair
    pairs = {tuple(e.metadata["steps"]) for e in t.splits["train"] if e.metadata["depth"] == 2}
    assert {a for a, _ in pairs} == {b for _, b in pairs} == set(skill_names())
    # no test prompt is also a train or dev prompt
    seen = {e.input for s in ("train", "dev") for e in t.splits[s]}
    assert not seen & {e.input for e in t.splits["test"]}


def test_held_out_pairs_keep_every_skill_composable() -> None:
    names = skill_names()
    hold = held_out_pairs(names, 0.5, seed=3)
    rest = [(a, b) for a in names for b in names if a != b and (a, b) not in hold]
    for n in names:
        assert sum(a == n for a, _ in rest) >= 2 and sum(b == n for _, b in rest) >= 2
    assert held_out_pairs(names, 0.0, seed=3) == []


def test_depth_options() -> None:
    t = load_compose(depth=2, test_depths=[3, 4], n_train=30, n_dev=6, n_test=11)
    assert {e.metadata["depth"] for e in t.splits["train"] + t.splits["dev"]} == {2}
    assert [e.metadata["depth"] for e in t.splits["test"]] == [3] * 6 + [4] * 5
    atomic = load_compose(depth=1, n_train=22, n_dev=0, n_test=3, test_depths=1,
                          test_pairs="all")
    assert all(len(e.metadata["steps"]) == 1 for e in atomic.splits["train"])
    assert len(atomic.splits["dev"]) == 0
    # each skill exactly twice in 22 depth-1 examples (shuffled passes over the skills)
    counts = {n: sum(e.skills == [n] for e in atomic.splits["train"]) for n in skill_names()}
    assert set(counts.values()) == {2}


def test_test_pairs_seen_and_no_holdout() -> None:
    t = load_compose(test_pairs="seen", test_depths=2, n_test=20)
    held = {tuple(p) for p in t.metadata["held_out_pairs"]}
    assert all(tuple(e.metadata["steps"]) not in held for e in t.splits["test"])
    none = load_compose(holdout=0, test_pairs="all", n_test=10)
    assert none.metadata["held_out_pairs"] == []
    assert all(e.metadata["unseen_pairs"] == 0 for e in none.splits["test"])


def test_skill_subset_and_examples_in_prompt() -> None:
    t = load_compose(skills=["reverse_words", "uppercase", "rot1"], holdout=0.2,
                     n_train=12, n_dev=3, n_test=6, show_examples=True)
    used = {s for v in t.splits.values() for e in v for s in e.skills}
    assert used == {"reverse_words", "uppercase", "rot1"}
    assert '(e.g. "' in t.splits["train"][0].input


@pytest.mark.parametrize(("options", "message"), [
    ({"depth": 5}, "depths from 1 to 4"),
    ({"test_depths": []}, "depths from 1 to 4"),
    ({"holdout": 0}, "needs holdout > 0"),
    ({"holdout": 1.0}, r"holdout must be in \[0, 1\)"),
    ({"test_pairs": "unseen"}, "heldout, seen or all"),
    ({"skills": ["uppercase", "nope"]}, "no atomic skill 'nope'"),
    ({"skills": ["uppercase"]}, "at least 2 skills"),
    ({"min_words": 4, "max_words": 2}, "min_words <= max_words"),
    ({"n_test": 0}, "n_test >= 1"),
])
def test_bad_options_are_one_line_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError, match=message) as e:
        load_compose(**options)
    assert "\n" not in str(e.value)


# ---- registry and CLI --------------------------------------------------------------------


def test_registered_with_options() -> None:
    assert "compose" in list_tasks()
    t = get_task("compose", depth=2, n_train=8, n_dev=2, n_test=3, seed=4)
    assert t.name == "compose" and {e.metadata["depth"] for e in t.splits["train"]} == {2}
    assert t.splits == load_compose(depth=2, n_train=8, n_dev=2, n_test=3, seed=4).splits
    with pytest.raises(TaskError, match="has no option"):
        get_task("compose", depths=2)


def test_task_file_with_loader_options(tmp_path: Path) -> None:
    from metaskill.tasks.registry import load_task_file

    f = tmp_path / "c.yaml"
    f.write_text("name: compose_d2\nsource: {loader: compose, options: {depth: 2, n_train: 6, "
                 "n_dev: 2, n_test: 4, test_depths: [3]}}\n")
    t = load_task_file(f)
    assert t.name == "compose_d2" and len(t.splits["test"]) == 4
    assert {e.metadata["depth"] for e in t.splits["train"]} == {2}
    assert {e.metadata["depth"] for e in t.splits["test"]} == {3}


_EXE = shutil.which("metaskill", path=str(Path(sys.executable).parent))


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    cmd = [_EXE, *args] if _EXE else [sys.executable, "-m", "metaskill", *args]
    env = {k: v for k, v in os.environ.items() if k != "METASKILL_DATA"}
    env.update({"METASKILL_HOME": str(home), "COLUMNS": "200"})
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_cli_ls_and_show(tmp_path: Path) -> None:
    r = cli("tasks", "ls", home=tmp_path)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.strip("│ ").startswith("compose"))
    assert "200 / 50 / 100" in row and "generative" in row
    r = cli("tasks", "show", "compose", "-o", "depth=3", "-o", "n_train=4", "--split", "train",
            "-n", "2", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Apply, in order:") == 2 and r.stdout.count("; then ") >= 4
    assert "skills:" in r.stdout and "'casefold': False" in r.stdout
    r = cli("tasks", "show", "compose", "-o", "depth=7", home=tmp_path)
    assert r.returncode == 1 and "depths from 1 to 4" in r.stderr and "Traceback" not in r.stderr


# ---- evaluation with the scripted fake LM ------------------------------------------------

_DEFINITION = {s.definition: s.name for s in ATOMIC_SKILLS}


def solve_prompt(prompt: str, depth_limit: int = 4) -> str | None:
    """What a model that follows the last 'Apply' block of the prompt answers (None if it
    finds none); it applies at most ``depth_limit`` steps."""
    if "Apply" not in prompt:
        return None
    m = re.match(r"Apply(?:, in order)?: (.*)\.\nInput: (.*)", prompt[prompt.rindex("Apply"):])
    if not m:
        return None
    steps = [_DEFINITION[d] for d in m.group(1).split("; then ")]
    return apply_steps(steps[:depth_limit], m.group(2).strip())


def oracle(prompt: str, request: Request) -> str:
    if "VERDICT" in prompt or "critique" in prompt.lower():
        return "The answer is fine.\nVERDICT: CORRECT"
    return solve_prompt(prompt) or "ok"


def test_zero_shot_through_the_harness() -> None:
    t = load_compose(n_train=10, n_dev=4, n_test=30)
    run = evaluate(ZeroShot(ScriptedLM(oracle)), t, "test", progress=False)
    assert run.accuracy == 1.0 and run.totals.n == 30
    assert all(r.error is None for r in run.records)
    assert t.instructions in run.records[0].prompt
    # a model that only manages one step: right on depth 1, wrong on deeper chains
    t1 = load_compose(n_train=4, n_dev=2, n_test=30, test_depths=[1, 2, 3])
    one = ScriptedLM(lambda p, r: solve_prompt(p, depth_limit=1) or "")
    recs = evaluate(ZeroShot(one), t1, "test", progress=False).records
    depth = {e.id: e.metadata["depth"] for e in t1.splits["test"]}
    by = {d: [r.score for r in recs if depth[r.example_id] == d] for d in (1, 2, 3)}
    assert by[1] == [1.0] * 10 and sum(by[2]) == 0 and sum(by[3]) == 0


def _resources(task: Any, tmp: Path) -> Any:
    from metaskill.core.settings import Settings
    from metaskill.methods.base import MethodResources
    from metaskill.skills.book import Skill, SkillBook
    from metaskill.skills.embed import HashEmbedder
    from metaskill.skills.profile import DifficultExample, Profile

    emb = HashEmbedder(64)
    book = SkillBook(tmp / "skills.sqlite", embedder=emb)
    book.add_skills([Skill(name=s.name, description=s.definition) for s in ATOMIC_SKILLS])
    book.add_examples(task.examples("train"))
    book.label_many({e.id: list(e.skills) for e in task.examples("train")})
    profile = Profile(task="compose", difficult=[
        DifficultExample(example_id=e.id, question=e.text, output="?", missing=list(e.skills))
        for e in task.examples("dev")])
    return MethodResources(embedder=emb, skillbook=book, teacher=ScriptedLM(oracle),
                           profile=profile, trainer=_fake_trainer, work_dir=tmp / "work",
                           settings=Settings(home=tmp / "home"))


def _fake_trainer(lm: Any, pairs: list, cfg: Any, out: Path, **kw: Any) -> Any:
    from metaskill.methods.sft import TrainResult

    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text("{}")
    return TrainResult(adapter_dir=out, steps=cfg.steps or 1, losses=[1.0], seconds=0.0,
                       seconds_per_step=0.0, peak_rss_mb=0.0, cpu_seconds=0.0,
                       n_examples=len(pairs))


_SMALL = {"sft": {"steps": 2, "eval_every": 1, "curve_n": 2},
          "stat": {"steps": 2, "eval_every": 1, "curve_n": 2},
          "self_evolve": {"rounds": 1, "samples": 2, "n_train": 4, "steps": 1}}


def _method_names() -> list[str]:
    from metaskill.methods import METHODS

    return METHODS.names()


#: Methods that refuse this task by design, with the reason their one-line error gives.
REFUSE = {"raml": "needs a classification task",  # ranks labels; compose is generative
          "tool_use": "no tool call verified"}  # calculator/python demos need a tool task


@pytest.mark.parametrize("name", _method_names())
def test_every_method_fits_and_answers_compose(name: str, tmp_path: Path) -> None:
    from metaskill.core.errors import MethodError
    from metaskill.methods.compose import build_method

    task = load_compose(n_train=12, n_dev=4, n_test=6)
    res = _resources(task, tmp_path)
    method = build_method(name, _SMALL.get(name, {}), res)
    if name in REFUSE:
        with pytest.raises(MethodError, match=REFUSE[name]) as e:
            method.fit(ZeroShot(ScriptedLM(oracle)), task, task.examples("train"),
                       task.examples("dev"))
        assert "\n" not in str(e.value)
        return
    solver = method.fit(ZeroShot(ScriptedLM(oracle)), task, task.examples("train"),
                        task.examples("dev"))
    run = evaluate(solver, task, "test", progress=False)
    assert len(run.records) == 6
    assert all(r.error is None for r in run.records), [r.reason for r in run.records]
    assert run.accuracy == 1.0, (name, [(r.output, r.reference) for r in run.records])
