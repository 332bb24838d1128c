"""Templates and code children of the archive search: the ``custom`` Solver (eval/custom.py)
and the ``self_modify`` template / ``self_modify_code`` mutations, with a scripted fake LM."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example
from metaskill.eval import custom
from metaskill.eval.custom import CustomSolver, check_code, check_template, customised
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot, load_solver, save_solver
from metaskill.evolve.archive import Archive, EvolveConfig, evolve
from metaskill.evolve.node import Recipe
from metaskill.lm.fake import ScriptedLM
from metaskill.methods.base import MethodResources
from metaskill.tasks import sandbox
from metaskill.tasks.base import Task, Verdict, Verifier


class Exact(Verifier):
    def verify(self, output, example):
        return Verdict(score=float(output.strip() == example.answer), parsed=output.strip())


def make_task() -> Task:
    def ex(split: str, i: int) -> Example:
        return Example(id=f"{split}{i}", input=f"{split} item number {i}",
                       answer="yes" if i % 2 == 0 else "no")

    return Task(name="toy", verifier=Exact(), kind="classification", labels=["yes", "no"],
                instructions="Answer yes or no.", template="{input}\nAnswer:",
                splits={"train": [ex("train", i) for i in range(6)],
                        "dev": [ex("dev", i) for i in range(8)],
                        "test": [ex("test", i) for i in range(4)]})


def toy(reply: str):
    """The toy model: right when the prompt says GOOD, else always 'yes'; the mutator's
    structured requests get ``reply``."""
    def answer(prompt: str, request) -> str:
        if request.json_schema:
            return reply
        digits = "".join(c for c in prompt.rsplit("item number", 1)[-1] if c.isdigit())
        right = "yes" if digits and int(digits) % 2 == 0 else "no"
        return right if "GOOD" in prompt else "yes"
    return answer


def search(tmp: Path, kind: str, reply: dict, children: int = 1) -> Archive:
    task = make_task()
    lm = ScriptedLM(toy(json.dumps(reply)))
    return evolve(ZeroShot(lm, format="completion"), task, task.splits["train"],
                  task.splits["dev"], EvolveConfig(mutations=(kind,), stage_size=4,
                                                   max_children=children),
                  out=tmp, resources=MethodResources(embedder_spec="hash:64"))


RENDER_GOOD = "def render(input, prompt):\n    return prompt.replace('Answer:', 'GOOD Answer:')\n"
POST_LOWER = ("import re\n\ndef postprocess(output):\n"
              "    return re.sub(r'\\s+', '', output).lower()\n")


# ---- templates (no code, no sandbox) ----------------------------------------------------
def test_template_checks() -> None:
    assert check_template("Q: {input}\n{title}:") == {"input", "title"}
    for bad, why in [("{0}", "plain field"), ("{input.__class__}", "plain field"),
                     ("{input[0]}", "plain field"), ("no field", "no field"),
                     ("{input", "does not parse"), ("{input:{w}}", "nested")]:
        with pytest.raises(MetaskillError, match=why):
            check_template(bad)


def test_old_solver_json_is_unchanged_and_loads() -> None:
    lm = ScriptedLM(default="yes")
    data = ZeroShot(lm).to_json()
    assert data["schema_version"] == 1 and "template" not in data["state"]
    assert load_solver({"schema_version": 1, "kind": "zero-shot", "state": {}},
                       lm=lm).kind == "zero-shot"
    assert customised(ZeroShot(lm)).kind == "zero-shot"  # nothing to customise
    with pytest.raises(MetaskillError, match="schema_version 3"):
        load_solver({**CustomSolver(lm, ZeroShot(lm), template="{input}").to_json(),
                     "schema_version": 3}, lm=lm)


def test_self_modify_proposes_a_template(tmp_path: Path) -> None:
    reply = {"rationale": "say GOOD", "instructions": None,
             "template": "GOOD {input}\nAnswer:", "prompt_format": None, "config": []}
    arch = search(tmp_path, "self_modify", reply)
    child = arch.nodes()[1]
    assert child.status == "valid" and child.score == 1.0, child.reason
    assert child.recipe.custom == {"template": "GOOD {input}\nAnswer:"}
    assert child.solver["kind"] == "custom" and child.solver["schema_version"] == 2
    assert arch.nodes()[0].score == 0.5
    best = arch.best(lm=ScriptedLM(toy("")))
    assert best.template == "GOOD {input}\nAnswer:"
    run = evaluate(best, make_task(), "dev", progress=False)
    assert run.accuracy == 1.0 and run.records[0].prompt.startswith("Answer yes or no.\n\nGOOD")


@pytest.mark.parametrize(("template", "why"), [
    ("{input} {title}\nAnswer:", "field(s) title"),          # an unknown field
    ("{input.upper}\nAnswer:", "not a plain field name"),
])
def test_an_invalid_template_is_an_invalid_child(tmp_path: Path, template: str,
                                                 why: str) -> None:
    reply = {"rationale": "", "instructions": None, "template": template,
             "prompt_format": None, "config": []}
    child = search(tmp_path, "self_modify", reply).nodes()[1]
    assert child.status == "invalid" and why in child.reason and child.lm_calls == 1


def test_a_template_that_does_not_render_is_an_invalid_child(tmp_path: Path) -> None:
    reply = {"rationale": "", "instructions": None, "template": "GOOD {input!z}\nAnswer:",
             "prompt_format": None, "config": []}
    child = search(tmp_path, "self_modify", reply).nodes()[1]
    assert child.status == "invalid"
    assert "custom code failed on 4 input(s)" in child.reason and "template:" in child.reason
    assert "does not render" in child.reason and not any(s.stage == "full" for s in child.scores)


# ---- code (the sandbox) -------------------------------------------------------------------
@pytest.mark.sandbox
def test_valid_render_and_postprocess_child_round_trips(tmp_path: Path) -> None:
    reply = {"rationale": "mark prompts", "render": RENDER_GOOD, "postprocess": POST_LOWER}
    arch = search(tmp_path, "self_modify_code", reply)
    child = arch.nodes()[1]
    assert child.kind == "self_modify_code" and child.status == "valid", child.reason
    assert child.score == 1.0 and child.description == "new render (2 lines), postprocess (4 lines)"
    assert child.notes["rationale"] == "mark prompts" and child.lm_calls == 1 + 8
    # the Solver JSON holds the code as plain strings; it reloads and evaluates elsewhere
    path = save_solver(arch.best(), tmp_path / "best.json")
    again = load_solver(path, lm=ScriptedLM(toy("")))
    assert isinstance(again, CustomSolver) and again.render == RENDER_GOOD
    assert again.postprocess == POST_LOWER and again.has_code
    run = evaluate(again, make_task(), "dev", progress=False)
    assert run.accuracy == 1.0
    assert "GOOD Answer:" in run.records[0].prompt
    assert run.records[0].meta["before_postprocess"] in ("yes", "no")


@pytest.mark.sandbox
@pytest.mark.parametrize(("code", "why"), [
    ("def postprocess(output):\n    return output[10**6]\n", "IndexError"),
    ("def render(input, prompt):\n    while True:\n        pass\n", "timed out after 2 s"),
    ("def postprocess(output):\n    return len(output)\n", "returned int, not str"),
    ("import no_such_module\ndef postprocess(output):\n    return output\n",
     "does not load: ModuleNotFoundError"),
])
def test_code_that_fails_is_an_invalid_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             code: str, why: str) -> None:
    monkeypatch.setattr(custom, "DEFAULT_TIMEOUT_S", 2.0)
    name = "render" if "def render" in code else "postprocess"
    child = search(tmp_path, "self_modify_code", {"rationale": "", name: code}).nodes()[1]
    assert child.status == "invalid" and why in child.reason, child.reason
    assert "custom code failed on 4 input(s)" in child.reason and name in child.reason
    assert [s.stage for s in child.scores] == []  # never scored, never a parent


def test_code_with_a_syntax_error_never_runs(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(sandbox, "run_code", lambda *a, **k: ran.append("x"))
    monkeypatch.setattr(custom, "sandbox_problem", lambda: None)
    reply = {"rationale": "", "render": "def render(input, prompt)\n    return prompt\n"}
    child = search(tmp_path, "self_modify_code", reply).nodes()[1]
    assert child.status == "invalid" and "syntax error at line 1" in child.reason
    assert child.lm_calls == 1 and not ran
    wrong = {"rationale": "", "postprocess": "def postprocess(text, extra=1):\n    return text"}
    child = search(tmp_path / "w", "self_modify_code", wrong).nodes()[1]
    assert "postprocess must take (output)" in child.reason and not ran


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which",
                        lambda name, *a, **k: None if name == "bwrap" else real_which(name))
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    sandbox.bwrap_problem.cache_clear()
    yield
    sandbox.bwrap_problem.cache_clear()


def test_without_bwrap_code_children_are_refused(tmp_path: Path, no_bwrap: None) -> None:
    reply = {"rationale": "", "render": RENDER_GOOD}
    arch = search(tmp_path, "self_modify_code", reply, children=2)
    for child in arch.nodes()[1:]:
        assert child.status == "invalid" and child.reason.startswith("code child refused:")
        assert "'bubblewrap'" in child.reason and "\n" not in child.reason
        assert child.lm_calls == 0  # the mutator was not even asked
    # a coded recipe reached another way (crossover, a structural child) is refused too
    task = make_task()
    lm = ScriptedLM(toy(""))
    coded = customised(ZeroShot(lm), render=RENDER_GOOD)
    attempts = coded.solve(task, task.splits["dev"][:2])  # serving: falls back, recorded
    assert [a.output for a in attempts] == ["yes", "yes"]
    assert "refused" in attempts[0].meta["custom_fallback"]["render"]


@pytest.mark.sandbox
def test_serving_falls_back_per_input_in_one_sandbox_run_per_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    real = sandbox.run_code

    def counting(*a, **k):
        runs.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sandbox, "run_code", counting)
    task = make_task()
    post = "def postprocess(output):\n    if output == 'no':\n        raise ValueError('no!')\n" \
           "    return output.upper()\n"
    s = CustomSolver(ScriptedLM(toy("")), ZeroShot(ScriptedLM(toy("")), format="completion"),
                     render=RENDER_GOOD, postprocess=post)
    attempts = s.solve(task, task.splits["dev"][:4])
    assert len(runs) == 2  # one render run and one postprocess run for the 4 inputs
    assert [a.output for a in attempts] == ["YES", "no", "YES", "no"]
    assert "custom_fallback" not in attempts[0].meta
    assert attempts[1].meta["custom_fallback"] == {"postprocess": "postprocess: ValueError: no!"}


def test_recipes_carry_custom_parts() -> None:
    assert Recipe().fingerprint() == Recipe(custom={}).fingerprint()
    assert Recipe(custom={"template": "{input}"}).describe() == "root + custom(template)"
    with pytest.raises(ValueError, match="unknown custom part"):
        Recipe(custom={"code": "x"})
    check_code("render", "import re\n\ndef render(input, prompt, /):\n    return prompt")
