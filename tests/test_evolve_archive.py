"""The archive search (evolve/archive.py): selection, staged evaluation, resume, invalid
children, budget, the guard, the CLI -- with a scripted fake LM; one run on the real model."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from metaskill.core.guard import TestDataLeakError
from metaskill.core.types import Example
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot, load_solver
from metaskill.evolve.archive import (
    Archive,
    EvolveConfig,
    choose,
    evolve,
    selection_probabilities,
)
from metaskill.evolve.mutations import (
    MUTATIONS,
    Child,
    MutationContext,
    new_value,
    tweak_config,
)
from metaskill.evolve.node import Node, Recipe, Score, Step, json_diff
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.base import MethodResources
from metaskill.tasks.base import Task, Verdict, Verifier


class Exact(Verifier):
    def verify(self, output, example):
        return Verdict(score=float(output.strip() == example.answer), parsed=output.strip())


def make_task(n_dev: int = 20) -> Task:
    def ex(split: str, i: int) -> Example:
        return Example(id=f"{split}{i}", input=f"{split} item number {i}",
                       answer="yes" if i % 2 == 0 else "no")

    return Task(name="toy", verifier=Exact(), kind="classification", labels=["yes", "no"],
                instructions="Answer yes or no.",
                splits={"train": [ex("train", i) for i in range(12)],
                        "dev": [ex("dev", i) for i in range(n_dev)],
                        "test": [ex("test", i) for i in range(6)]})


def answer(prompt: str, request) -> str:
    """The toy model: right with the instruction GOOD, wrong with BAD, else always 'yes'."""
    if request.json_schema:
        return PROPOSAL
    last = prompt.rsplit("item number", 1)[-1]
    digits = "".join(c for c in last if c.isdigit())
    right = "yes" if digits and int(digits) % 2 == 0 else "no"
    if "GOOD" in prompt:
        return right
    if "BAD" in prompt:
        return "no" if right == "yes" else "yes"
    return "yes"


PROPOSAL = json.dumps({"rationale": "be precise", "instructions": "GOOD: answer yes or no.",
                       "prompt_format": None, "config": []})


def edit(text: str):
    """A mutation that sets the instructions to ``text`` (a direct edit, no refit)."""
    def mutation(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
        recipe = parent.recipe.model_copy(deep=True)
        recipe.edits["instructions"] = f"{text} {rng.randrange(10**6)}"
        return Child("edit", f"instructions {text}", recipe, rebuild=False)
    return mutation


def scored(i: int, score: float, parent: int | None = None, status: str = "valid") -> Node:
    return Node(id=i, parent=parent, status=status,
                scores=[Score(stage="full", n=10, score=score)])


# ---- selection ------------------------------------------------------------------------
def test_dgm_selection_probabilities_are_exact() -> None:
    nodes = [scored(0, 0.2), scored(1, 0.5, 0), scored(2, 0.8, 0), scored(3, 0.9, 2),
             scored(4, 0.99, 2, status="invalid"), scored(5, 0.7, 1, status="pruned")]
    cfg = EvolveConfig(lam=10, alpha0=0.5)
    sig = [1 / (1 + math.exp(-10 * (s - 0.5))) for s in (0.2, 0.5, 0.8, 0.9)]
    # children that were scored (valid or pruned) count; invalid ones do not
    w = [sig[0] / 3, sig[1] / 2, sig[2] / 2, sig[3] / 1]
    probs = selection_probabilities(nodes, cfg)
    assert set(probs) == {0, 1, 2, 3}  # invalid and pruned nodes are never parents
    for i, wi in enumerate(w):
        assert probs[i] == pytest.approx(wi / sum(w), abs=1e-12)
    # other constants change them as the formula says
    probs2 = selection_probabilities(nodes, EvolveConfig(lam=1, alpha0=0.0))
    w2 = [1 / (1 + math.exp(-s)) / k for s, k in zip((0.2, 0.5, 0.8, 0.9), (3, 2, 2, 1),
                                                     strict=True)]
    assert probs2[3] == pytest.approx(w2[3] / sum(w2), abs=1e-12)
    assert selection_probabilities(nodes, EvolveConfig(selection="greedy")) == {
        0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0}
    assert selection_probabilities(nodes, EvolveConfig(selection="random")) == {
        i: 0.25 for i in range(4)}


def test_choose_draws_with_the_given_probabilities() -> None:
    probs = {0: 0.1, 1: 0.6, 2: 0.3}
    rng = random.Random(5)
    draws = [choose(probs, rng) for _ in range(20000)]
    for i, p in probs.items():
        assert abs(draws.count(i) / len(draws) - p) < 0.015
    assert choose(probs, random.Random(1), exclude=1) in {0, 2}
    assert choose({0: 1.0}, random.Random(1), exclude=0) is None
    # the same seed draws the same parent
    assert [choose(probs, random.Random(9)) for _ in range(3)] == [choose(
        probs, random.Random(9))] * 3


# ---- mutations --------------------------------------------------------------------------
def test_config_tweaks_stay_inside_declared_bounds() -> None:
    from metaskill.methods.knn_demos import KnnDemos
    from metaskill.methods.self_refine import SelfRefine

    k = KnnDemos.Config.model_fields["k"]
    rounds = SelfRefine.Config.model_fields["rounds"]
    rng = random.Random(0)
    ks = {new_value(k, 4, rng) for _ in range(300)}
    assert 4 not in ks and min(ks) >= 1 and max(ks) <= 64 and len(ks) > 20
    assert {new_value(rounds, 2, rng) for _ in range(200)} <= set(range(1, 9)) - {2}
    ctx = MutationContext(methods=("knn_demos",), root_kind="zero-shot")
    parent = Node(id=0, recipe=Recipe(chain=[Step(method="knn_demos")]))
    for seed in range(40):
        child = tweak_config(parent, ctx, random.Random(seed))
        cfg_target, _, _ = child.description.partition(".")
        assert cfg_target in {"base", "knn_demos"}
        if child.recipe.chain[0].options:  # every value validates against the schema
            KnnDemos.Config(**child.recipe.chain[0].options)
        if child.recipe.base:  # the zero-shot root accepts it (no k > 0)
            ZeroShot(ScriptedLM(), **child.recipe.base)
        assert "seed" not in child.description


def test_every_mutation_is_registered_with_a_docstring() -> None:
    names = set(MUTATIONS.names())
    assert {"add_method", "remove_method", "replace_method", "tweak_config", "prompt_format",
            "crossover", "self_modify"} <= names
    assert all(MUTATIONS.get(n).__doc__ for n in names)


def test_json_diff_records_what_changed() -> None:
    ops = json_diff({"state": {"instructions": None, "k": 0}},
                    {"state": {"instructions": "GOOD", "k": 0}})
    assert ops == [{"op": "replace", "path": "/state/instructions", "value": "GOOD"}]


# ---- the loop ---------------------------------------------------------------------------
def run(tmp: Path, config: EvolveConfig, mutations=None, lm=None, **kw) -> Archive:
    task = make_task(kw.pop("n_dev", 20))
    lm = lm or ScriptedLM(answer)
    return evolve(ZeroShot(lm, format="completion"), task, task.splits["train"],
                  task.splits["dev"], config, out=tmp, mutations=mutations,
                  resources=MethodResources(embedder_spec="hash:64"), **kw)


def test_staged_evaluation_a_bad_child_never_gets_full_dev(tmp_path: Path) -> None:
    lm = ScriptedLM(answer)
    cfg = EvolveConfig(mutations=("bad",), stage_size=6, margin=0.1, max_children=3)
    arch = run(tmp_path, cfg, mutations={"bad": edit("BAD")}, lm=lm)
    nodes = arch.nodes()
    root = nodes[0]
    assert root.score == 0.5 and [s.stage for s in root.scores] == ["small", "full"]
    for child in nodes[1:]:
        assert child.status == "pruned" and "below its parent" in child.reason
        assert [(s.stage, s.n) for s in child.scores] == [("small", 6)]
        assert len(child.per_example) == 6
    bad_prompts = [p for p in lm.calls if "BAD" in p]
    assert len(bad_prompts) == 3 * 6  # 3 children x the small subset, never the rest
    # a child within the margin gets the full dev set and becomes a parent candidate
    good = run(tmp_path / "g", cfg.model_copy(update={"mutations": ("good",)}),
               mutations={"good": edit("GOOD")})
    child = good.nodes()[1]
    assert child.status == "valid" and child.score == 1.0
    assert [(s.stage, s.n) for s in child.scores] == [("small", 6), ("full", 20)]
    assert good.best_node().id == child.id
    assert json_diff(good.nodes()[0].solver, child.solver) == child.solver_diff
    assert child.solver_diff and child.solver_diff[0]["path"] == "/state/instructions"


def test_best_is_a_solver_usable_everywhere(tmp_path: Path) -> None:
    cfg = EvolveConfig(mutations=("self_modify", "add_method"), methods=("knn_demos",),
                       stage_size=20, max_children=4)
    arch = run(tmp_path, cfg)
    best = arch.best()
    assert best.to_json()["state"]["instructions"].startswith("GOOD")
    again = load_solver(json.loads(json.dumps(arch.best_node().solver)), lm=ScriptedLM(answer))
    task = make_task()
    assert evaluate(again, task, "dev", progress=False).accuracy == 1.0
    kinds = {n.kind for n in arch.nodes()}
    assert "self_modify" in kinds
    sm = next(n for n in arch.nodes() if n.kind == "self_modify")
    assert sm.notes["rationale"] == "be precise" and sm.lm_calls >= 1 + 20


def test_resume_after_a_crash_gives_the_same_archive(tmp_path: Path) -> None:
    cfg = EvolveConfig(mutations=("tweak_config", "prompt_format", "self_modify",
                                  "add_method", "crossover", "remove_method"),
                       methods=("knn_demos", "self_consistency"), stage_size=8,
                       max_children=7, seed=3)
    whole = run(tmp_path / "whole", cfg)

    calls = {"n": 0}

    def crashing(name):
        real = MUTATIONS.get(name)

        def mutation(parent, ctx, rng):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt  # the process dies mid-child
            return real(parent, ctx, rng)
        return mutation

    crash_dir = tmp_path / "crash"
    with pytest.raises(KeyboardInterrupt):
        run(crash_dir, cfg, mutations={n: crashing(n) for n in cfg.mutations})
    assert 1 < len(Archive(crash_dir)) < len(whole)  # what was done is kept
    resumed = run(crash_dir, cfg)

    def key(n: Node) -> dict:
        return n.model_dump(exclude={"wall_s", "notes"})

    assert [key(n) for n in resumed.nodes()] == [key(n) for n in whole.nodes()]
    assert resumed.spend().lm_calls == whole.spend().lm_calls
    # a finished archive resumed with the same budget makes nothing new
    assert len(run(crash_dir, cfg)) == len(whole)
    # another config is refused, a larger budget grows it
    with pytest.raises(Exception, match="different config"):
        run(crash_dir, cfg.model_copy(update={"margin": 0.3}))
    assert len(run(crash_dir, cfg.model_copy(update={"max_children": 9}))) == 10


def test_invalid_children_are_recorded_with_reasons_and_not_retried(tmp_path: Path) -> None:
    attempts: list[str] = []

    def bad_config(parent, ctx, rng):
        attempts.append("bad_config")
        recipe = parent.recipe.model_copy(deep=True)
        recipe.base["temperature"] = -1.0 - rng.random()
        return Child("bad_config", "temperature below 0", recipe)

    def crash(parent, ctx, rng):
        attempts.append("crash")
        raise RuntimeError("boom")

    def bad_method(parent, ctx, rng):
        attempts.append("bad_method")
        recipe = parent.recipe.model_copy(deep=True)
        recipe.chain.append(Step(method="knn_demos", options={"k": 999 + rng.randrange(9)}))
        return Child("bad_method", "k out of bounds", recipe)

    garbage = ScriptedLM(default="not json at all")
    cfg = EvolveConfig(mutations=("bad_config", "crash", "bad_method", "self_modify"),
                       max_children=12)
    arch = run(tmp_path, cfg, mutations={"bad_config": bad_config, "crash": crash,
                                         "bad_method": bad_method,
                                         "self_modify": MUTATIONS.get("self_modify")},
               mutator=garbage)
    children = arch.nodes()[1:]
    assert len(children) == 12 and all(n.status == "invalid" for n in children)
    reasons = {n.kind: n.reason for n in children}
    assert "temperature" in reasons["bad_config"]
    assert reasons["crash"] == "the mutation failed: RuntimeError: boom"
    assert "knn_demos" in reasons["bad_method"] and "'k'" in reasons["bad_method"]
    assert "not a proposal" in reasons["self_modify"]
    # each attempt is one child: recorded once, never tried again
    made = [n.kind for n in children if n.kind != "self_modify"]
    assert made == attempts
    sm = [n for n in children if n.kind == "self_modify"]
    assert all(n.lm_calls == 2 for n in sm)  # the reply and its one schema retry
    assert len(garbage.calls) == 2 * len(sm)
    assert arch.best_node().id == 0  # the root stays the best valid node


def test_budget_is_respected_and_reported(tmp_path: Path) -> None:
    cfg = EvolveConfig(mutations=("good",), stage_size=5, max_calls=70, max_children=50)
    arch = run(tmp_path, cfg, mutations={"good": edit("GOOD")})
    nodes = arch.nodes()
    spend = arch.spend()
    assert spend.lm_calls == sum(n.lm_calls for n in nodes) >= 70
    assert sum(n.lm_calls for n in nodes[:-1]) < 70  # it stopped at the first check over
    assert spend.stopped.startswith("max_calls=70")
    assert spend.children == len(nodes) - 1 == 3  # root 20 calls, each child 20
    tok = run(tmp_path / "t", cfg.model_copy(update={"max_calls": None, "max_tokens": 1}),
              mutations={"good": edit("GOOD")})
    assert tok.spend().children == 0 and tok.spend().stopped.startswith("max_tokens=1")
    none = run(tmp_path / "n", cfg.model_copy(update={"max_calls": None, "max_children": 0}),
               mutations={"good": edit("GOOD")})
    assert len(none) == 1 and none.best_node().id == 0


def test_the_guard_catches_test_data(tmp_path: Path) -> None:
    task = make_task()
    leaky_dev = [*task.splits["dev"][:5], task.splits["test"][0]]
    with pytest.raises(TestDataLeakError):
        evolve(ZeroShot(ScriptedLM(answer)), task, task.splits["train"], leaky_dev,
               EvolveConfig(max_children=1), out=tmp_path / "a")

    def peek_at_test(parent, ctx, rng):
        evaluate(ZeroShot(ScriptedLM(answer)), ctx.task, "test", progress=False)
        raise AssertionError("unreachable: the guard stops a run on test")

    with pytest.raises(TestDataLeakError):  # fatal, never recorded as an invalid child
        run(tmp_path / "b", EvolveConfig(mutations=("peek",), max_children=2),
            mutations={"peek": peek_at_test})
    assert len(Archive(tmp_path / "b")) == 1


# ---- the command line -----------------------------------------------------------------
_SCRIPT = Path(sys.executable).parent / "metaskill"
METASKILL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "metaskill"]


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*METASKILL, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_archive_resume_and_show(tmp_path: Path) -> None:
    out = tmp_path / "arch"
    base = ("evolve", "archive", "--out", str(out), "--budget-calls", "400")
    res = cli(*base, "--task", "sst2", "--model", "fake", "--mutator", "fake",
              "--limit-dev", "12", "--limit-train", "30", "--embedder", "hash:64",
              "--stage-size", "6", home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "best Solver" in res.stdout and "stopped: max_calls=400" in res.stdout
    assert "root: dev" in res.stderr and "child 1 of 0" in res.stderr
    n1 = len(Archive(out))
    solver = json.loads((out / "best.json").read_text())
    assert solver["schema_version"] == 1 and solver["model"] == "fake"
    # resume with only --out and a larger budget: the archive grows, nothing is redone
    res = cli("evolve", "archive", "--out", str(out), "--budget-calls", "800",
              home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming the archive" in res.stderr and f"child {n1} of" in res.stderr
    assert "child 1 of 0" not in res.stderr and len(Archive(out)) > n1
    show = cli("evolve", "show", str(out), home=tmp_path)
    assert show.returncode == 0, show.stderr
    assert "#0 [root]" in show.stdout and "best path:" in show.stdout
    assert "* best" in show.stdout
    best = Archive(out).best_node()
    assert f"#{best.id} dev {best.score:.3f}" in show.stdout
    # a different task into the same folder is refused in one line
    res = cli(*base, "--task", "trec", "--model", "fake", home=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().startswith("error:")
    assert "different" in res.stderr and "Traceback" not in res.stderr
    res = cli("evolve", "show", str(tmp_path / "nothing"), home=tmp_path)
    assert res.returncode == 1 and "holds no archive" in res.stderr


def test_cli_old_evolve_spelling_still_runs_self(tmp_path: Path) -> None:
    old = cli("evolve", "--task", "sst2", "--rounds", "0", home=tmp_path)
    new = cli("evolve", "self", "--task", "sst2", "--rounds", "0", home=tmp_path)
    for res in (old, new):
        assert res.returncode == 1 and "--rounds must be >= 1" in res.stderr
    notice = [line for line in old.stderr.splitlines() if line.startswith("notice:")]
    assert len(notice) == 1 and "evolve self" in notice[0]
    assert "notice:" not in new.stderr
    helped = cli("evolve", "--help", home=tmp_path)
    assert helped.returncode == 0 and all(w in helped.stdout for w in ("self", "archive",
                                                                       "show"))


# ---- the real model -------------------------------------------------------------------
@pytest.mark.slow
def test_real_model_small_archive(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from metaskill.lm import load_lm
    from metaskill.lm.cache import Cache
    from metaskill.tasks import get_task

    task = get_task("sst2")
    lm = load_lm("local", cache=Cache(tmp_path / "cache.sqlite"))
    cfg = EvolveConfig(mutations=("self_modify", "prompt_format", "tweak_config"),
                       stage_size=4, max_children=2, max_calls=60, mutator_max_tokens=200)
    arch = evolve(ZeroShot(lm, max_tokens=8), task, task.splits["train"][:20],
                  task.splits["dev"][:8], cfg, out=tmp_path / "arch")
    nodes = arch.nodes()
    for n in nodes:
        print(n.id, n.kind, n.status, n.score, n.lm_calls, n.reason[:120], n.description[:80])
    assert 2 <= len(nodes) <= 3 and nodes[0].n_scored == 8
    assert all(n.status in ("valid", "pruned", "invalid") for n in nodes)
    assert all(n.reason for n in nodes if n.status != "valid")
    best = arch.best()
    assert evaluate(best, task, examples=task.splits["dev"][:8], progress=False).n == 8
    # resumed: nothing is recomputed (every answer is in the cache)
    before = Cache(tmp_path / "cache.sqlite").stats()
    again = evolve(ZeroShot(lm, max_tokens=8), task, task.splits["train"][:20],
                   task.splits["dev"][:8], cfg, out=tmp_path / "arch")
    assert len(again) == len(nodes)
    assert Cache(tmp_path / "cache.sqlite").stats() == before
