"""The sandbox's modes: bubblewrap by default, refusal without it, the hook-only opt-in, and
the code-execution verifier and the eval records under it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks import sandbox
from metaskill.tasks.base import Task
from metaskill.tasks.sandbox import SandboxUnavailableError, bwrap_problem, run_code, sandbox_mode
from metaskill.tasks.verifiers import CodeVerifier

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None,
                                 reason=f"bubblewrap cannot run here: {bwrap_problem()}")


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``bwrap`` is not on PATH (the probe is re-run, and re-run again afterwards)."""
    real_which = shutil.which

    def which(name: str, *args: object, **kw: object) -> str | None:
        return None if name == "bwrap" else real_which(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sandbox.shutil, "which", which)
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    sandbox.bwrap_problem.cache_clear()
    yield
    sandbox.bwrap_problem.cache_clear()


def test_without_bwrap_code_execution_is_refused_in_one_line(no_bwrap: None,
                                                             tmp_path_factory) -> None:
    with pytest.raises(SandboxUnavailableError) as err:
        run_code("open('ran', 'w')", timeout_s=10)
    msg = str(err.value)
    assert isinstance(err.value, MetaskillError)  # the CLI prints it as one line
    assert "\n" not in msg and "'bubblewrap'" in msg and "METASKILL_SANDBOX=hook-only" in msg
    with pytest.raises(SandboxUnavailableError):  # the verifier does not swallow it
        CodeVerifier(timeout_s=10).verify("print(1)", Example(id="a", input="q", answer="1"))


def test_hook_only_is_an_explicit_opt_in(no_bwrap: None, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run_code("print(6 * 7)", timeout_s=10, mode="hook-only")
    assert r.ok and r.stdout.strip() == "42"
    assert "hook-only" in r.isolation and "bwrap" not in r.isolation
    monkeypatch.setenv(sandbox.ENV_VAR, "hook-only")
    v = CodeVerifier(timeout_s=10).verify("print(1)", Example(id="a", input="q", answer="1"))
    assert v.score == 1.0 and "hook-only" in v.meta["isolation"]
    monkeypatch.setenv(sandbox.ENV_VAR, "none")
    with pytest.raises(SandboxUnavailableError, match="unknown sandbox mode 'none'"):
        run_code("print(1)", timeout_s=10)


def test_namespaces_refused_by_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # a bwrap that cannot set up (as where user namespaces are off) must refuse, not run
    monkeypatch.setattr(sandbox, "_namespace_flags", lambda network: ["--no-such-option"])
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    sandbox.bwrap_problem.cache_clear()
    try:
        if shutil.which("bwrap") is None:
            pytest.skip("bwrap is not installed")
        with pytest.raises(SandboxUnavailableError, match="bubblewrap cannot create"):
            run_code("print(1)", timeout_s=10)
    finally:
        sandbox.bwrap_problem.cache_clear()


def test_sandbox_mode_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    assert sandbox_mode() == "bwrap"
    monkeypatch.setenv(sandbox.ENV_VAR, "hook-only")
    assert sandbox_mode() == "hook-only" and sandbox_mode("bwrap") == "bwrap"


@needs_bwrap
def test_code_verifier_under_bwrap_passes_right_and_fails_wrong(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    v = CodeVerifier(timeout_s=10)
    out = "```python\ndef add(a, b):\n    return a + b\n```"
    right = v.verify(out, Example(id="t", input="q", metadata={"tests": "assert add(2, 3) == 5"}))
    assert right.score == 1.0 and right.reason == "tests passed"
    assert {"bwrap", "mountns", "userns", "audit-hook"} <= set(right.meta["isolation"])
    wrong = v.verify(out.replace("a + b", "a - b"),
                     Example(id="t", input="q", metadata={"tests": "assert add(2, 3) == 5"}))
    assert wrong.score == 0.0 and "AssertionError" in wrong.reason
    stdin = Example(id="s", input="q", answer="cba", metadata={"stdin": "abc"})
    assert v.verify("import sys\nprint(sys.stdin.read()[::-1])", stdin).score == 1.0
    assert v.verify("import sys\nprint(sys.stdin.read())", stdin).score == 0.0
    hostile = v.verify("print(open('/etc/shadow').read())", Example(id="h", input="q",
                                                                    answer="x"))
    assert hostile.score == 0.0 and "PermissionError" in hostile.reason


@needs_bwrap
def test_site_packages_under_bwrap() -> None:
    r = run_code("import yaml\nprint(yaml.safe_dump({'a': 1}).strip())", timeout_s=20,
                 site_packages=True)
    assert r.ok and r.stdout.strip() == "a: 1", r.stderr
    assert "bwrap" in r.isolation and "no-site-packages" not in r.isolation
    r = run_code("import yaml", timeout_s=10)
    assert not r.ok and "ModuleNotFoundError" in r.stderr


@needs_bwrap
def test_every_eval_record_that_ran_code_keeps_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    examples = [Example(id=f"e{i}", input=f"print {i}", answer=str(i)) for i in range(3)]
    task = Task(name="printer", version="1", kind="generative", template="{input}",
                splits={"test": examples}, verifier=CodeVerifier(timeout_s=10))

    def program(prompt: str, request: object) -> str:
        number = prompt.split("print ")[-1].split()[0]
        return f"```python\nprint({number})\n```"

    lm = ScriptedLM(program)
    run = evaluate(ZeroShot(lm), task, progress=False)
    assert run.totals.n == 3 and run.totals.score == 3.0, run.records
    for record in run.records:
        assert "bwrap" in record.meta["verdict"]["isolation"], record.meta


def test_an_eval_that_needs_code_execution_stops_at_once_without_bwrap(no_bwrap: None) -> None:
    examples = [Example(id=f"e{i}", input=f"print {i}", answer=str(i)) for i in range(20)]
    task = Task(name="printer", version="1", kind="generative", template="{input}",
                splits={"test": examples}, verifier=CodeVerifier(timeout_s=10))
    lm = ScriptedLM(lambda prompt, request: "print(1)")
    with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
        evaluate(ZeroShot(lm), task, progress=False)  # not 20 failed records scored 0


@needs_bwrap
def test_meta_prompting_python_expert_records_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    from metaskill.methods.meta_prompting import MetaPromptingSolver

    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)
    lm = ScriptedLM()
    text, layers = MetaPromptingSolver(lm, ZeroShot(lm)).python_with_isolation("print(6 * 7)")
    assert text == "42" and {"bwrap", "mountns", "pidns"} <= set(layers)
